"""Row kernels for softmax, log_softmax and logsumexp.

Every kernel sees the same layout, prepared by :mod:`fastsoftmax.plan`: ``n_rows`` rows of
``n_cols`` contiguous elements, row ``r`` starting at ``r * x_stride`` in the flat input
``x`` (a stride, so sliced and padded rows need no copy), at ``r * out_stride`` in ``out``
and at ``r * mask_stride`` in ``mask`` (the ``where`` argument, or None; a stride of 0 shares
one mask row). ``out`` None means in place: the result overwrites ``x`` (passing the same
array twice instead would make LLVM guard every loop with an overlap check, and fall back to
scalar code, with sums in another order, when the check fails). Kernels validate nothing and
allocate nothing.

The outer loop is ``prange``: :class:`~fastsoftmax.kernels.jit.KernelPair` builds each body
once serial and once row-parallel, both with the same per-row code.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import building_block, kernel_pair
from .numerics import (cast_like, exp_store_sum, next_row, row_max, row_of, row_or,
                       scale_store, shift_store, sum_exp)


@kernel_pair
def softmax_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, inv_t):
    """out[r] = softmax(x[r] * inv_t): max pass, exp-store-sum pass, scale pass."""
    for r in prange(n_rows):
        row = x[r * x_stride:r * x_stride + n_cols]
        dst = row_or(out, r * out_stride, n_cols, row)
        sel = row_of(mask, r * mask_stride, n_cols)
        m = row_max(row, sel)
        s = exp_store_sum(row, sel, m, inv_t, row_of(out, r * out_stride, n_cols),
                          next_row(x, r, n_rows, x_stride, n_cols))
        scale_store(dst, sel, cast_like(dst, np.float64(1.0) / s))


@kernel_pair
def log_softmax_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, inv_t):
    """out[r] = log_softmax(x[r] * inv_t): max pass, sum-exp pass, shift pass."""
    for r in prange(n_rows):
        row = x[r * x_stride:r * x_stride + n_cols]
        sel = row_of(mask, r * mask_stride, n_cols)
        m = row_max(row, sel)
        s = sum_exp(row, sel, m, inv_t, next_row(x, r, n_rows, x_stride, n_cols))
        shift_store(row, sel, m, inv_t, cast_like(row, np.log(np.float64(s))),
                    row_of(out, r * out_stride, n_cols))


@kernel_pair
def logsumexp_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, inv_t):
    """out[r * out_stride] = logsumexp(x[r]) (``inv_t``, always None, keeps one signature)."""
    for r in prange(n_rows):
        row = x[r * x_stride:r * x_stride + n_cols]
        sel = row_of(mask, r * mask_stride, n_cols)
        m = row_max(row, sel)
        if math.isfinite(m):
            s = sum_exp(row, sel, m, None, next_row(x, r, n_rows, x_stride, n_cols))
            out[r * out_stride] = cast_like(out, np.float64(m) + np.log(np.float64(s)))
        else:
            # -inf (nothing selected, only -inf, or an empty row), +inf or NaN: the answer
            # is the max itself; the general formula would give log(nan) for the first two.
            out[r * out_stride] = m


# --- rows split across threads ---------------------------------------------------------------
# For a batch of few, long rows (one 4M-column row), row-parallelism leaves threads idle. These
# kernels cut every row into chunks of ``chunk`` elements and run one pass over all chunks in
# parallel; the plan combines the per-chunk maxima and sums of each row in between. Chunk ``k``
# is chunk ``k % n_chunks`` of row ``k // n_chunks``.


@building_block
def chunk_span(k, n_chunks, chunk, n_cols):
    """(row, first column, end column) of chunk ``k``."""
    start = (k % n_chunks) * chunk
    return k // n_chunks, start, min(start + chunk, n_cols)


@kernel_pair
def split_max(x, x_stride, mask, mask_stride, n_rows, n_cols, chunk, chunk_max):
    """chunk_max[k] = max of chunk k (NaN if it holds one, -inf if nothing is selected)."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        chunk_max[k] = row_max(x[r * x_stride + start:r * x_stride + stop],
                               row_of(mask, r * mask_stride + start, stop - start))


@kernel_pair
def split_sum_exp(x, x_stride, mask, mask_stride, n_rows, n_cols, chunk, inv_t, maxima,
                  chunk_sum):
    """chunk_sum[k] = sum(exp((chunk k - row max) * inv_t)) over the selected elements."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        chunk_sum[k] = sum_exp(x[r * x_stride + start:r * x_stride + stop],
                               row_of(mask, r * mask_stride + start, stop - start),
                               maxima[r], inv_t, x[:0])


@kernel_pair
def split_exp_store_sum(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols,
                        chunk, inv_t, maxima, chunk_sum):
    """out = exp((x - row max) * inv_t) chunk by chunk; chunk_sum[k] = the chunk's sum."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        src = x[r * x_stride + start:r * x_stride + stop]
        chunk_sum[k] = exp_store_sum(src, row_of(mask, r * mask_stride + start, stop - start),
                                     maxima[r], inv_t,
                                     row_of(out, r * out_stride + start, stop - start), x[:0])


@kernel_pair
def split_scale(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, chunk,
                factors):
    """out (or x, in place) *= factors[row], chunk by chunk: the last pass of softmax."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        dst = row_or(out, r * out_stride + start, stop - start,
                     x[r * x_stride + start:r * x_stride + stop])
        scale_store(dst, row_of(mask, r * mask_stride + start, stop - start), factors[r])


@kernel_pair
def split_shift(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, chunk, inv_t,
                maxima, log_sums):
    """out = (x - row max) * inv_t - log(row sum), chunk by chunk: the last pass of
    log_softmax."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        src = x[r * x_stride + start:r * x_stride + stop]
        shift_store(src, row_of(mask, r * mask_stride + start, stop - start), maxima[r], inv_t,
                    log_sums[r], row_of(out, r * out_stride + start, stop - start))
