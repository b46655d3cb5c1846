"""Row kernels of the softmax family (softmax, log_softmax, logsumexp) and the passes that run
them over rows cut into pieces.

Every kernel sees the same layout, prepared by :mod:`fastsoftmax.arguments`: ``n_rows`` rows of
``n_cols`` contiguous elements, row ``r`` starting at ``r * x_stride`` in the flat input ``x``
(a stride, so sliced and padded rows need no copy), at ``r * out_stride`` in ``out`` and at
``r * mask_stride`` in ``mask`` (the ``where`` argument, or None; a stride of 0 shares one mask
row). ``out`` None means in place: the result overwrites ``x`` (passing the same array twice
instead would make LLVM guard every loop with an overlap check, and fall back to scalar code,
with sums in another order, when the check fails). ``inv_t`` is 1/temperature in the compute
dtype, or None for temperature 1 (the multiply is compiled away). Kernels validate nothing and
allocate nothing but their tasks' scratch rows.

One body per operation serves float32, float64 and half-precision bits: the row helpers of
:mod:`~fastsoftmax.kernels.rows` are chosen by the row's type when Numba compiles the body.
:class:`~fastsoftmax.kernels.jit.KernelPair` builds each body serial and row-parallel.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import KernelPair, building_block, kernel_pair, specialised
from .numerics import (BLOCK, cast_like, exp_shifted, exp_store_sum, flat_view, max_dominates,
                       maximum, next_row, prefetch_lines, rest_of_blocks, row_of, row_or,
                       sum_exp, sum_exp_below, sum_exp_parts, weighted_log_sum_exp)
from .rows import (dominated_log_sum, exps_kept, load, load_max, logsumexp_of, result_target,
                   row_buffer, store_scaled, store_shifted, store_value, task_rows)


@kernel_pair
def softmax_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, inv_t,
                 n_tasks):
    """out[r] = softmax(x[r] * inv_t): max pass, exp-store-sum pass, scale pass."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            src = x[r * x_stride:r * x_stride + n_cols]
            sel = row_of(mask, r * mask_stride, n_cols)
            row, m = load_max(src, sel, buf)
            softmax_row(src, row, sel, m, inv_t, row_of(out, r * out_stride, n_cols),
                        row_or(out, r * out_stride, n_cols, src),
                        next_row(x, r, n_rows, x_stride, n_cols))


@building_block
def softmax_row(src, row, sel, m, inv_t, out_row, dst, ahead):
    """dst = softmax(row * inv_t) of a row read by ``load_max`` (``row``, its max ``m``): the
    exponentials into ``out_row`` (None: in place), then scaled into ``dst`` (the output row
    as stored). ``ahead``: the next row, prefetched meanwhile (numerics.sum_exp)."""
    s = exp_store_sum(row, sel, m, inv_t, result_target(src, out_row), ahead)
    store_scaled(src, row, sel, cast_like(row, np.float64(1.0) / s), dst)


@kernel_pair
def log_softmax_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, inv_t,
                     n_tasks):
    """out[r] = log_softmax(x[r] * inv_t): max pass, sum-exp pass, shift pass."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            src = x[r * x_stride:r * x_stride + n_cols]
            sel = row_of(mask, r * mask_stride, n_cols)
            row, m = load_max(src, sel, buf)
            s, rest, big = sum_exp_parts(row, sel, m, inv_t,
                                         next_row(x, r, n_rows, x_stride, n_cols))
            log_s = np.log(s)
            if max_dominates(m, s):
                log_s = dominated_log_sum(x, r * x_stride, n_cols, mask, r * mask_stride,
                                          buf, m, inv_t, rest, big)
            store_shifted(src, row, sel, m, inv_t, cast_like(row, log_s),
                          row_of(out, r * out_stride, n_cols),
                          row_or(out, r * out_stride, n_cols, src))


@kernel_pair
def logsumexp_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, inv_t,
                   n_tasks):
    """out[r * out_stride] = logsumexp(x[r]): max pass, sum-exp pass (``inv_t``, always None
    as logsumexp takes no temperature, keeps the signature of the family)."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            src = x[r * x_stride:r * x_stride + n_cols]
            sel = row_of(mask, r * mask_stride, n_cols)
            row, m = load_max(src, sel, buf)
            # (a max that is not finite is the answer: logsumexp_of ignores the NaN sums then)
            s, rest, big = sum_exp_parts(row, sel, m, inv_t,
                                         next_row(x, r, n_rows, x_stride, n_cols))
            log_s = np.log(s)
            if max_dominates(m, s):
                log_s = dominated_log_sum(x, r * x_stride, n_cols, mask, r * mask_stride, buf,
                                          m, inv_t, rest, big)
            store_value(out, r * out_stride, logsumexp_of(m, log_s))


@kernel_pair
def weighted_logsumexp_rows(x, x_stride, b, b_stride, mask, mask_stride, out, out_stride, sign,
                            signed, n_rows, n_cols, n_tasks):
    """out[r * out_stride] = log|sum(b[r] * exp(x[r]))| and sign[r] its sign (float64), as
    :func:`~fastsoftmax.kernels.numerics.weighted_log_sum_exp` takes them; ``b`` holds rows
    of weights in the compute dtype (``b_stride`` 0: one row for all). ``signed`` False: a
    negative sum gives NaN (SciPy without ``return_sign``). Rows are never split."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            row = load(x[r * x_stride:r * x_stride + n_cols], buf)
            value, row_sign = weighted_log_sum_exp(
                row, b[r * b_stride:r * b_stride + n_cols], row_of(mask, r * mask_stride, n_cols))
            if row_sign < 0 and not signed:
                value = np.nan
            store_value(out, r * out_stride, value)
            sign[r] = row_sign


# --- the common call ---------------------------------------------------------------------------

def _contiguous_call(x, out):
    """The serial build of ROW_KERNEL over every row of a C-contiguous ``x`` (rows along its
    last axis, at least one element) into ``out``: C-contiguous, of ``x``'s shape (or without
    its last axis when REDUCES), or None for in place. The most frequent call, with two
    arguments through Numba's dispatcher instead of ten and the arrays flattened here, not in
    Python: a few tenths of a microsecond, which count on a short row (docs/performance.md,
    "The call of one short row")."""
    n_cols = x.shape[-1]
    n_rows = x.size // n_cols
    ROW_KERNEL(x.reshape(x.size), n_cols, None, 0, flat_view(out), 1 if REDUCES else n_cols,
               n_rows, n_cols, None, 1)


def contiguous_call(rows: KernelPair, reduces: bool = False):
    """:func:`_contiguous_call` of the row kernel ``rows`` (its serial build); ``reduces``:
    one result per row."""
    return building_block(specialised(_contiguous_call, rows.__name__ + "_contiguous_call",
                                      ROW_KERNEL=rows.serial, REDUCES=reduces))


softmax_call = contiguous_call(softmax_rows)
log_softmax_call = contiguous_call(log_softmax_rows)
logsumexp_call = contiguous_call(logsumexp_rows, reduces=True)


# --- rows cut into pieces ----------------------------------------------------------------------
# For a batch of few, long rows (one 4M-column row), row-parallelism leaves threads idle. These
# passes cut every row into chunks of ``chunk`` elements (a multiple of BLOCK) and run over all
# chunks in parallel: the row maxima, then the sums of exponentials block by block, then the
# last pass of the operation given each row's (max, sum). The plan combines the chunk maxima
# and adds the block sums of each row in block order, as the row kernels add them, so a split
# row gives the same bits as a whole one. With ``keep`` the sum pass also stores the
# exponentials (into the output for float rows), as softmax's row kernel does, and its last
# pass only scales them (``kept``). fastsoftmax.dask runs the same passes on the blocks of a
# dask array (without keeping). Chunk ``k`` is chunk ``k % n_chunks`` of row ``k // n_chunks``.


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
        chunk_max[k] = load_max(x[r * x_stride + start:r * x_stride + stop],
                                row_of(mask, r * mask_stride + start, stop - start),
                                row_buffer(x, stop - start))[1]


@kernel_pair
def split_sum_exp(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, chunk,
                  inv_t, maxima, block_sums, keep):
    """block_sums[r, b] = sum of exp((block b of row r - maxima[r]) * inv_t); ``block_sums``
    is flat, ``ceil(n_cols / BLOCK)`` blocks a row. ``keep``: the exponentials are stored too
    (into ``out``, None: in place; half-precision rows: a scratch row)."""
    n_chunks = (n_cols + chunk - 1) // chunk
    n_blocks = (n_cols + BLOCK - 1) // BLOCK
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        first = r * n_blocks + start // BLOCK
        src = x[r * x_stride + start:r * x_stride + stop]
        row = load(src, row_buffer(x, stop - start))
        sel = row_of(mask, r * mask_stride + start, stop - start)
        totals = block_sums[first:first + (stop - start + BLOCK - 1) // BLOCK]
        if keep:
            exp_store_sum(row, sel, maxima[r], inv_t,
                          result_target(src, row_of(out, r * out_stride + start, stop - start)),
                          x[:0], totals)
        else:
            sum_exp(row, sel, maxima[r], inv_t, x[:0], totals)


@kernel_pair
def split_log_sums(x, x_stride, mask, mask_stride, n_rows, n_cols, inv_t, maxima, sums,
                   block_sums, log_sums):
    """log_sums[r] = log of row r's sum of exponentials, as the row kernels take it
    (:func:`~fastsoftmax.kernels.rows.dominated_log_sum`) from the same block sums: log1p of the
    other elements' sum where the maximum dominates (its block is read again only then)."""
    n_blocks = (n_cols + BLOCK - 1) // BLOCK
    for r in prange(n_rows):
        if max_dominates(maxima[r], sums[r]):
            rest, big = rest_of_blocks(block_sums[r * n_blocks:(r + 1) * n_blocks])
            log_sums[r] = dominated_log_sum(x, r * x_stride, n_cols, mask, r * mask_stride,
                                            row_buffer(x, n_cols), maxima[r], inv_t, rest, big)
        else:
            log_sums[r] = np.log(sums[r])


@kernel_pair
def split_rests(x, x_stride, mask, mask_stride, n_rows, n_cols, inv_t, maxima, sums, rests):
    """rests[r] = sum of exp((x - maxima[r]) * inv_t) over the elements of row r below its
    maximum, for the rows whose maximum dominates (given the whole rows' ``sums``), else 0:
    a dask block's share of the sum whose log1p :func:`split_log_sums` takes in memory."""
    for r in prange(n_rows):
        rests[r] = 0.0
        if max_dominates(maxima[r], sums[r]):
            src = x[r * x_stride:r * x_stride + n_cols]
            rests[r] = sum_exp_below(load(src, row_buffer(x, n_cols)),
                                     row_of(mask, r * mask_stride, n_cols), maxima[r], inv_t)


@building_block
def add_in_order(block_sums, n_rows, sums):
    """sums[r] = the block sums of row r added one after another, in block order: as the row
    kernels add them (``block_sums`` is flat, the same number of blocks a row)."""
    n_blocks = block_sums.size // max(n_rows, 1)
    for r in range(n_rows):
        total = 0.0
        for b in range(r * n_blocks, (r + 1) * n_blocks):
            total += block_sums[b]
        sums[r] = total


@kernel_pair
def softmax_finish(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, chunk,
                   inv_t, maxima, sums, kept):
    """out = exp((x - row max) * inv_t) / row sum, chunk by chunk: the exponentials scaled
    where the sum pass kept them, else computed again."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        src = x[r * x_stride + start:r * x_stride + stop]
        sel = row_of(mask, r * mask_stride + start, stop - start)
        row = load(src, row_buffer(x, stop - start))
        if not exps_kept(src, kept):
            exp_store_sum(row, sel, maxima[r], inv_t,
                          result_target(src, row_of(out, r * out_stride + start, stop - start)),
                          x[:0])
        store_scaled(src, row, sel, cast_like(row, 1.0 / sums[r]),
                     row_or(out, r * out_stride + start, stop - start, src))


@kernel_pair
def log_softmax_finish(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, chunk,
                       inv_t, maxima, log_sums, kept):
    """out = (x - row max) * inv_t - log(row sum), chunk by chunk (given the log sums)."""
    n_chunks = (n_cols + chunk - 1) // chunk
    for k in prange(n_rows * n_chunks):
        r, start, stop = chunk_span(k, n_chunks, chunk, n_cols)
        src = x[r * x_stride + start:r * x_stride + stop]
        row = load(src, row_buffer(x, stop - start))
        store_shifted(src, row, row_of(mask, r * mask_stride + start, stop - start),
                      maxima[r], inv_t, cast_like(row, log_sums[r]),
                      row_of(out, r * out_stride + start, stop - start),
                      row_or(out, r * out_stride + start, stop - start, src))


@kernel_pair
def logsumexp_finish(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, chunk,
                     inv_t, maxima, log_sums, kept):
    """out[r * out_stride] = logsumexp of row r from its max and log sum (``x`` is not
    read)."""
    for r in prange(n_rows):
        store_value(out, r * out_stride, logsumexp_of(maxima[r], log_sums[r]))


# --- rows along a strided axis -----------------------------------------------------------------
# softmax(x, axis=0) of a C-ordered (32000, 2048) array: each row of the operation is a column,
# its elements n_inner apart. Rather than moving the axis last (a full transposed copy in, and
# one out), the columns are taken a tile at a time: a tile is ``width`` adjacent columns (one
# cache line of each of the n_red lines it crosses), gathered into a task's scratch as
# contiguous rows, run through the operation's own row kernel (serial build), and the result
# scattered back (or, for a reduction, written where its values go). Each row is computed by
# the same row kernel as on the moved-axis copy, so the bits are the same. The layout:
# ``x`` is a C-ordered (n_outer, n_red, n_inner) array, flat; the result has the same layout
# (``out`` may be ``x`` itself: in place), or (n_outer, n_inner) for a reduction.
# ``TILE_PASS`` and ``ROW_KERNEL`` are globals set per operation (columns_kernel, jit.specialised).

@building_block
def column_tile(t, n_inner, width):
    """(outer index, first column, number of columns) of tile ``t``: tiles run across n_inner
    within one outer index, then on to the next."""
    per_outer = (n_inner + width - 1) // width
    c0 = (t % per_outer) * width
    return t // per_outer, c0, min(width, n_inner - c0)


@building_block
def gather_columns(x, first, n_inner, n_red, w, tile):
    """tile[c * n_red + k] = x[first + k * n_inner + c] for the ``w`` columns of a tile."""
    for k in range(n_red):
        line = x[first + k * n_inner:first + k * n_inner + w]
        for c in range(w):
            tile[c * n_red + k] = line[c]


@building_block
def scatter_columns(tile, first, n_inner, n_red, w, out):
    """The inverse of :func:`gather_columns`."""
    for k in range(n_red):
        line = out[first + k * n_inner:first + k * n_inner + w]
        for c in range(w):
            line[c] = tile[c * n_red + k]


@building_block
def gather_tile(x, t, n_red, n_inner, width, tile):
    """Gather tile ``t`` into ``tile``; return its (outer index, first column, columns)."""
    o, c0, w = column_tile(t, n_inner, width)
    gather_columns(x, o * n_red * n_inner + c0, n_inner, n_red, w, tile)
    return o, c0, w


def _columns(x, n_red, n_inner, out, inv_t, width, n_tiles, n_tasks):
    """TILE_PASS over the tiles of columns of ``x``: the operation along the strided axis."""
    for task in prange(n_tasks):
        first_tile, end_tile = task_rows(task, n_tasks, n_tiles)
        tile = np.empty(width * n_red, x.dtype)
        for t in range(first_tile, end_tile):
            o, c0, w = gather_tile(x, t, n_red, n_inner, width, tile)
            TILE_PASS(tile, n_red, w, inv_t, out, o, c0, n_inner)  # noqa: F821


def _tile_in_place(tile, n_red, w, inv_t, out, o, c0, n_inner):
    """ROW_KERNEL over the rows of a tile, in place, scattered into ``out``."""
    ROW_KERNEL(tile, n_red, None, 0, None, n_red, w, n_red, inv_t, 1)  # noqa: F821
    scatter_columns(tile, o * n_red * n_inner + c0, n_inner, n_red, w, out)


def _tile_reduced(tile, n_red, w, inv_t, out, o, c0, n_inner):
    """ROW_KERNEL over the rows of a tile, one value each into ``out`` (n_outer, n_inner)."""
    ROW_KERNEL(tile, n_red, None, 0, out[o * n_inner + c0:], 1, w, n_red, inv_t, 1)  # noqa: F821


def columns_kernel(name, row_kernel, reduces=False):
    """The kernel of an operation along a strided axis, from its row kernel."""
    tile_pass = building_block(specialised(_tile_reduced if reduces else _tile_in_place,
                                           f"{name}_tile", ROW_KERNEL=row_kernel.serial))
    return KernelPair(specialised(_columns, name, TILE_PASS=tile_pass))


softmax_columns = columns_kernel("softmax_columns", softmax_rows)
log_softmax_columns = columns_kernel("log_softmax_columns", log_softmax_rows)
logsumexp_columns = columns_kernel("logsumexp_columns", logsumexp_rows, reduces=True)


# --- softmax along a strided axis, read where it is ----------------------------------------------
# The tiles above transpose: every element of a tile is moved twice with a stride of a whole
# line of the array (8 KB on a 32000x2048 float32 array: a page, and the same cache sets, for
# each), which made softmax along axis 0 of that array 5-8x the time of axis -1. Here a tile is
# ``width`` adjacent columns, read a line (``width`` contiguous values) at a time, the
# arithmetic vectorised across the columns: per column a running maximum and a float64 sum of
# exponentials, taken COLUMN_CHUNK lines at a time (the chunk's maxima first, the sum rescaled
# once when a maximum grows, then the chunk's exponentials, its lines still in L1), then a
# second read writes exp((v - max) * inv_t) / sum. Two reads and one write of the array, two
# exponentials per element. The sums are in another order than a row's (16 lines at a time,
# then in float64, not blocks of 512), so the bits are not those of the rows moved last; the
# results are within the same bounds of the reference (tests/test_builds.py). float32 and
# float64 only: half-precision bits keep the tiles above.
COLUMN_CHUNK = 16


@building_block
def column_sums(x, first, n_red, n_inner, w, inv_t, m, s, shift, chunk_sum):
    """m[c], s[c] = the maximum of column c of the tile at ``first`` (``w`` columns) and the
    float64 sum of exp((v - m[c]) * inv_t) over it; NaN propagates, an all -inf column sums
    to 0. ``shift`` and ``chunk_sum``: scratch of ``w`` values."""
    neg_inf = cast_like(x, -np.inf)
    zero = cast_like(x, 0.0)
    for c in range(w):
        m[c] = neg_inf
        s[c] = 0.0
    for k0 in range(0, n_red, COLUMN_CHUNK):
        k1 = min(k0 + COLUMN_CHUNK, n_red)
        for k in range(k1, min(k1 + COLUMN_CHUNK, n_red)):  # the next chunk, meanwhile
            prefetch_lines(x[first + k * n_inner:first + k * n_inner + w])
        for c in range(w):
            shift[c] = m[c]
        for k in range(k0, k1):
            line = x[first + k * n_inner:first + k * n_inner + w]
            for c in range(w):
                shift[c] = maximum(shift[c], line[c])
        for c in range(w):
            grown = shift[c]
            if grown != m[c]:  # a larger maximum (or NaN): rescale what was summed, in float64
                s[c] *= exp_shifted(np.float64(m[c]), np.float64(grown), inv_t)
                m[c] = grown
            # the exponentials of an all -inf chunk, -inf - -inf, would be NaN: 0 instead
            shift[c] = zero if grown == neg_inf else grown
            chunk_sum[c] = zero
        for k in range(k0, k1):  # in L1 still; summed in the compute dtype, 16 at a time
            line = x[first + k * n_inner:first + k * n_inner + w]
            for c in range(w):
                chunk_sum[c] += exp_shifted(line[c], shift[c], inv_t)
        for c in range(w):
            s[c] += np.float64(chunk_sum[c])


@building_block
def column_scale(x, first, n_red, n_inner, w, inv_t, m, scale, out):
    """out[v] = exp((v - m[c]) * inv_t) * scale[c] over the tile at ``first`` (``out`` None:
    into ``x``)."""
    for k in range(n_red):
        if k + COLUMN_CHUNK < n_red:  # a chunk ahead
            ahead = first + (k + COLUMN_CHUNK) * n_inner
            prefetch_lines(x[ahead:ahead + w])
        line = x[first + k * n_inner:first + k * n_inner + w]
        target = row_or(out, first + k * n_inner, w, line)  # None: in place, one array
        for c in range(w):
            target[c] = exp_shifted(line[c], m[c], inv_t) * scale[c]


@kernel_pair
def softmax_columns_direct(x, n_red, n_inner, out, inv_t, width, n_tiles, n_tasks):
    """softmax along the strided axis of ``x`` (n_outer, n_red, n_inner), flat, into ``out``
    of the same layout (None: in place), tiles of ``width`` columns read where they are."""
    for task in prange(n_tasks):
        first_tile, end_tile = task_rows(task, n_tasks, n_tiles)
        m = np.empty(width, x.dtype)
        shift = np.empty(width, x.dtype)
        chunk_sum = np.empty(width, x.dtype)
        scale = np.empty(width, x.dtype)
        s = np.empty(width)
        for t in range(first_tile, end_tile):
            o, c0, w = column_tile(t, n_inner, width)
            first = o * n_red * n_inner + c0
            column_sums(x, first, n_red, n_inner, w, inv_t, m, s, shift, chunk_sum)
            for c in range(w):
                scale[c] = cast_like(x, 1.0 / s[c])
            column_scale(x, first, n_red, n_inner, w, inv_t, m, scale, out)
