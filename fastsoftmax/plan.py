"""Planning: which build of a kernel runs a batch.

All thresholds live here, so a measurement that moves one changes one line.
"""

from __future__ import annotations

import numba

# Below this many elements a call runs the serial build: waking the thread pool costs a few
# microseconds (over 100 after an idle pause), more than the whole of a small batch.
SERIAL_MAX_ELEMENTS = 1 << 15


def use_parallel(n_rows: int, n_cols: int) -> bool:
    """True when a batch is large enough, and has rows enough, to split across threads."""
    return n_rows > 1 and n_rows * n_cols > SERIAL_MAX_ELEMENTS and numba.get_num_threads() > 1


def run(kernel_pair, batch, *, parallel=None) -> None:
    """Run ``kernel_pair`` (a :class:`~fastsoftmax.kernels.jit.KernelPair`) on ``batch``.

    ``parallel`` forces the serial (False) or parallel (True) build; None lets the plan pick.
    """
    n_rows, n_cols = batch.n_rows, batch.n_cols
    if parallel is None:
        parallel = use_parallel(n_rows, n_cols)
    # Temperature 1 is passed as None: the kernels are then compiled without the multiply.
    inv_t = None if batch.inv_t == 1.0 else batch.x.dtype.type(batch.inv_t)
    kernel = kernel_pair.parallel if parallel else kernel_pair.serial
    kernel(batch.x, batch.x_stride, batch.mask, batch.mask_stride, batch.out, batch.out_stride,
           n_rows, n_cols, inv_t)


def run_common(kernel_pair, x_flat, out_flat, n_rows: int, n_cols: int, reduce: bool) -> None:
    """Run ``kernel_pair`` on C-contiguous rows (``normalize.common_case``), no mask, T = 1."""
    kernel = kernel_pair.parallel if use_parallel(n_rows, n_cols) else kernel_pair.serial
    kernel(x_flat, n_cols, None, 0, out_flat, 1 if reduce else n_cols, n_rows, n_cols, None)
