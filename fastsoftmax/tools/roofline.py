"""Memory-bandwidth probes for the benchmarks: the fastest a pass over the same bytes can go.

``scale_copy`` reads and writes every element once (the floor of softmax and log_softmax);
``sum_all`` only reads (the floor of logsumexp). Both are as simple as a loop can be, so their
speed is the machine's, not the algorithm's.
"""

from __future__ import annotations

from numba import prange

from ..kernels.jit import kernel_pair


@kernel_pair
def scale_copy(src, dst, factor):
    """dst = src * factor over flat arrays."""
    for i in prange(src.size):
        dst[i] = src[i] * factor


@kernel_pair(reduction=True)
def sum_all(src):
    """sum(src) over a flat array."""
    s = 0.0
    for i in prange(src.size):
        s += src[i]
    return s
