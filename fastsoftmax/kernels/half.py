"""Row kernels for half-precision input: bfloat16 and float16 rows, computed in float32.

The rows arrive as integer views of their bits (``uint16`` bfloat16, ``int16`` float16: see
:mod:`~fastsoftmax.kernels.halfbits`). The first pass over a row widens it, block by block,
into a float32 row buffer of the task (a row of a large batch is 256 KB of bfloat16, 512 KB
widened: it stays in L2) and takes the max on the way; the other passes are the float32
building blocks of :mod:`~fastsoftmax.kernels.numerics` run on that buffer, the last one
rounding each block into ``out``. So no float32 copy of the batch is ever made, each element
is widened once, and the arithmetic is exactly that of float32 input, rounded once at the
end: to the input's format (nearest even) or to nothing for ``dtype=np.float32``.

Row kernels handle ``group`` consecutive rows per task, so that the buffer is allocated once
per task rather than once per row. Layout otherwise as :mod:`fastsoftmax.kernels.softmax`;
``out`` is never None: in place is safe because a row is widened before it is written.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .halfbits import decode_block, encode_block
from .jit import building_block, kernel_pair
from .numerics import (BLOCK, exp_store_sum, maximum, next_row, row_max, row_of,
                       shift_store, sum_exp)
from .softmax import chunk_span

_F32_NEG_INF = np.float32(-np.inf)


@building_block
def widen_max(bits, sel, dst):
    """dst = float32 values of a half-precision row; returns the max of the selected ones
    (NaN if one is NaN, -inf if none is selected)."""
    m = _F32_NEG_INF
    for start in range(0, bits.size, BLOCK):
        stop = min(start + BLOCK, bits.size)
        block = dst[start:stop]
        decode_block(bits[start:stop], block)
        m = maximum(m, row_max(block, row_of(sel, start, stop - start)))
    return m


@building_block
def scale_narrow(row, sel, factor, dst):
    """dst = row * factor (0 where not selected), rounded to the format of ``dst``."""
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        encode_block(row[start:stop], row_of(sel, start, stop - start), factor,
                     dst[start:stop])


@building_block
def shift_narrow(row, sel, m, inv_t, log_sum, dst):
    """dst = (row - m) * inv_t - log_sum (-inf where not selected), rounded to the format of
    ``dst``: the log_softmax pass; ``row`` (float32) is overwritten on the way."""
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        block = row[start:stop]
        shift_store(block, row_of(sel, start, stop - start), m, inv_t, log_sum, None)
        encode_block(block, None, None, dst[start:stop])


@building_block
def store_value(value, buf, dst):
    """dst[0] = ``value`` (float64) in the format of ``dst``; ``buf``: float32 scratch."""
    buf[0] = np.float32(value)
    encode_block(buf[:1], None, None, dst[:1])


@kernel_pair
def half_softmax_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, inv_t,
                      group):
    """out[r] = softmax(x[r] * inv_t): widen-max pass, exp-sum pass, scale-round pass."""
    for g in prange((n_rows + group - 1) // group):
        buf = np.empty(n_cols, np.float32)
        for r in range(g * group, min(n_rows, (g + 1) * group)):
            sel = row_of(mask, r * mask_stride, n_cols)
            m = widen_max(x[r * x_stride:r * x_stride + n_cols], sel, buf)
            s = exp_store_sum(buf, sel, m, inv_t, None, next_row(x, r, n_rows, x_stride, n_cols))
            scale_narrow(buf, sel, np.float32(1.0 / s), out[r * out_stride:r * out_stride + n_cols])


@kernel_pair
def half_log_softmax_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols,
                          inv_t, group):
    """out[r] = log_softmax(x[r] * inv_t): widen-max pass, sum pass, shift-round pass."""
    for g in prange((n_rows + group - 1) // group):
        buf = np.empty(n_cols, np.float32)
        for r in range(g * group, min(n_rows, (g + 1) * group)):
            sel = row_of(mask, r * mask_stride, n_cols)
            m = widen_max(x[r * x_stride:r * x_stride + n_cols], sel, buf)
            s = sum_exp(buf, sel, m, inv_t, next_row(x, r, n_rows, x_stride, n_cols))
            shift_narrow(buf, sel, m, inv_t, np.float32(np.log(s)),
                         out[r * out_stride:r * out_stride + n_cols])


@kernel_pair
def half_logsumexp_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols,
                        inv_t, group):
    """out[r * out_stride] = logsumexp(x[r]); non-finite maxima are the answer themselves
    (``inv_t``, always None, keeps one signature)."""
    for g in prange((n_rows + group - 1) // group):
        buf = np.empty(max(n_cols, 1), np.float32)
        for r in range(g * group, min(n_rows, (g + 1) * group)):
            sel = row_of(mask, r * mask_stride, n_cols)
            row = buf[:n_cols]
            m = widen_max(x[r * x_stride:r * x_stride + n_cols], sel, row)
            lse = np.float64(m)
            if np.isfinite(m):
                lse += np.log(sum_exp(row, sel, m, None,
                                      next_row(x, r, n_rows, x_stride, n_cols)))
            store_value(lse, buf, out[r * out_stride:r * out_stride + 1])


# --- rows split across threads (see kernels/softmax.py) ---------------------------------------
# Each pass widens its chunk again: the passes are separate launches, and keeping a float32
# copy of a few huge rows between them would cost more memory than the widening costs time.

@building_block
def widen_chunk(x, x_stride, mask, mask_stride, r, start, stop):
    """Columns [start, stop) of row ``r``: (their ``where`` mask or None, their float32 values
    in a new buffer, the max of the selected ones)."""
    sel = row_of(mask, r * mask_stride + start, stop - start)
    buf = np.empty(stop - start, np.float32)
    return sel, buf, widen_max(x[r * x_stride + start:r * x_stride + stop], sel, buf)


@kernel_pair
def half_split_max(x, x_stride, mask, mask_stride, n_rows, n_cols, chunk, chunk_max):
    """chunk_max[k] = max of chunk k."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        chunk_max[k] = widen_chunk(x, x_stride, mask, mask_stride, r, start, stop)[2]


@kernel_pair
def half_split_sum_exp(x, x_stride, mask, mask_stride, n_rows, n_cols, chunk, inv_t, maxima,
                       chunk_sum):
    """chunk_sum[k] = sum(exp((chunk k - row max) * inv_t)) over the selected elements."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        sel, buf, _ = widen_chunk(x, x_stride, mask, mask_stride, r, start, stop)
        chunk_sum[k] = sum_exp(buf, sel, maxima[r], inv_t, x[:0])


@kernel_pair
def half_split_softmax_store(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols,
                             chunk, inv_t, maxima, factors):
    """out = exp((x - row max) * inv_t) * factors[row], chunk by chunk."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        sel, buf, _ = widen_chunk(x, x_stride, mask, mask_stride, r, start, stop)
        exp_store_sum(buf, sel, maxima[r], inv_t, None, x[:0])
        scale_narrow(buf, sel, factors[r], out[r * out_stride + start:r * out_stride + stop])


@kernel_pair
def half_split_shift(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, chunk,
                     inv_t, maxima, log_sums):
    """out = (x - row max) * inv_t - log(row sum), chunk by chunk."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        sel, buf, _ = widen_chunk(x, x_stride, mask, mask_stride, r, start, stop)
        shift_narrow(buf, sel, maxima[r], inv_t, log_sums[r],
                     out[r * out_stride + start:r * out_stride + stop])
