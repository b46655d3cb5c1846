"""Rooflines for the benchmarks: the fastest a pass over the same data can go.

Memory: ``scale_copy`` reads and writes every element once (the floor of softmax and
log_softmax); ``sum_all`` only reads (the floor of logsumexp). Both are as simple as a loop can
be, so their speed is the machine's, not the algorithm's.

Compute: ``exp_sum`` adds up the exponentials of a flat array with the kernels' own ``exp``
(kernels/numerics.py), vectorised, nothing else. Every function of the softmax family takes at
least one exponential an element, so for a batch that sits in cache, where memory is not the
limit, this loop is the floor.
"""

from __future__ import annotations

from numba import prange

from ..kernels.jit import kernel_pair
from ..kernels.numerics import cast_like, exp


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


@kernel_pair(reduction=True)
def exp_sum(src):
    """sum(exp(src)) over a flat float32/float64 array, in its dtype."""
    s = cast_like(src, 0.0)
    for i in prange(src.size):
        s += exp(src[i])
    return s
