"""Planning: which build of a kernel runs a batch, and with how many threads.

All thresholds live here, so a measurement that moves one changes one line.
"""

from __future__ import annotations

import numba

# Below this many elements a call runs the serial build: waking the thread pool costs a few
# microseconds, more than the whole computation of a small batch.
SERIAL_MAX_ELEMENTS = 1 << 15


def use_parallel(n_rows: int, n_cols: int) -> bool:
    """True when a batch is large enough, and has rows enough, to split across threads."""
    return n_rows > 1 and n_rows * n_cols > SERIAL_MAX_ELEMENTS and numba.get_num_threads() > 1


def run(kernel_pair, batch) -> None:
    """Run ``kernel_pair`` (a :class:`~fastsoftmax.kernels.jit.KernelPair`) on ``batch``."""
    kernel = kernel_pair.build(use_parallel(batch.n_rows, batch.n_cols))
    kernel(batch.x, batch.x_stride, batch.mask, batch.mask_stride, batch.out, batch.out_stride,
           batch.n_rows, batch.n_cols, batch.x.dtype.type(batch.inv_t))
