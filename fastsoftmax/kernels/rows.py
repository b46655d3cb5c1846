"""Reading and writing rows of every supported dtype, so that one kernel body serves them all.

A kernel sees the input row ``src`` as it is stored: float32 or float64 values, or the integer
view of float16/bfloat16 bits (:mod:`~fastsoftmax.kernels.halfbits`). It computes on ``row``,
the values in the compute type: ``src`` itself for float rows; for half-precision rows, the
values widened into a float32 buffer of the kernel's task (a row of a large batch is 256 KB of
bfloat16, 512 KB widened: it stays in L2). Results go to ``dst``, the output row as stored
(the caller's ``out`` or, in place, ``src``), rounded once at the end for half precision.

Rows of classes along a strided axis (the class axis 1 of a cross-entropy's ``(N, C, d1, ...)``
logits, seen as ``(N, C, D)``: :func:`row_at`) are read the same way: gathered into the task's
buffer, computed there, and scattered into ``dst`` by :func:`commit`. No copy of the batch is made.

Which of the two happens is decided by the row's type when Numba compiles the kernel, as it
picks float32 or float64 code: the helpers below are overloaded on the dtype (without the JIT,
they test the dtype at run time). So a half-precision row costs no copy of the batch, each
element is widened once, and its arithmetic is exactly that of float32 input.

Every kernel that stores a result row follows the same sequence::

    buf = row_buffer(x, n_cols)                 # once per task: scratch for widened rows
    row, m = load_max(src, sel, buf)            # or row = load(src, buf)
    ... compute into result_target(src, out_row) ...   # None: in place, into ``row``
    ... adjust result_row(src, row, dst) ...        # where those results now are
    commit(src, row, dst)                       # half precision: round them into ``dst``
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from .halfbits import decode_block, encode_block, f32_to_bf16, f32_to_f16
from .jit import NUMBA_OPTIONS, building_block
from .numerics import (BLOCK, log1p_of_rest, next_row, row_max, row_of,
                       scale_store, shift_store)


def is_half_bits(arr) -> bool:
    """True for the integer view of float16/bfloat16 bits (the kernels' half-precision rows)."""
    return arr.dtype.kind in "iu"


def is_gathered(arr) -> bool:
    """True for rows read through the task's buffer: half-precision bits, and rows of
    strided elements (a row of a 3-D ``(N, C, D)`` array, or that array itself)."""
    return is_half_bits(arr) or arr.ndim > 1 or not arr.flags.c_contiguous


@building_block
def copy_into(src, dst):
    """dst[:] = src, element by element (a gathered float row back to its strided place, a
    row into a scratch copy)."""
    for j in range(src.size):
        dst[j] = src[j]


# --- the half-precision passes (building blocks of the overloads below) ------------------------

@building_block
def widen_max(bits, sel, dst):
    """dst = float32 values of a half-precision row; returns the max of the selected ones
    (NaN if one is NaN, -inf if none is selected)."""
    # decoded first, then the max of the whole row: row_max takes a long row's as four
    # independent chains, a block's of 512 as one, latency-bound (2.3x slower measured on
    # 128256 bfloat16 elements, docs/performance.md "The max pass")
    for start in range(0, bits.size, BLOCK):
        stop = min(start + BLOCK, bits.size)
        decode_block(bits[start:stop], dst[start:stop])
    return row_max(dst[:bits.size], sel)


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


# --- the protocol: pure-Python bodies (NUMBA_DISABLE_JIT), overloaded by dtype when compiled ---

def row_buffer(x, n):
    """Scratch for ``n`` widened values of the rows of ``x``: a new float32 array for
    half-precision bits, one of the rows' dtype for rows of strided elements (a 3-D ``x``),
    an empty view (nothing allocated) for float rows."""
    if is_half_bits(x):
        return np.empty(n, np.float32)
    if x.ndim > 1:
        return np.empty(n, x.dtype)
    return x[:0]


def compute_buffer(x, n):
    """A new array of ``n`` values in the compute type of the rows of ``x`` (float32 for
    half-precision bits): scratch for a kernel's own intermediate rows."""
    if is_half_bits(x):
        return np.empty(n, np.float32)
    return np.empty(n, x.dtype)


def load(src, buf):
    """The values of ``src`` in the compute type: ``src`` itself, or widened (gathered) into
    ``buf``."""
    if is_half_bits(src):
        decode_block(src, buf[:src.size])
        return buf[:src.size]
    if is_gathered(src):
        copy_into(src, buf[:src.size])
        return buf[:src.size]
    return src


def load_copy(src, buf):
    """The values of ``src`` in the compute type, in ``buf`` (a copy that may be edited)."""
    values = buf[:src.size]
    if is_half_bits(src):
        decode_block(src, values)
    else:
        copy_into(src, values)
    return values


def load_max(src, sel, buf):
    """``(load(src, buf), max of its selected values)`` in one pass."""
    if is_half_bits(src):
        return buf[:src.size], widen_max(src, sel, buf[:src.size])
    row = load(src, buf)
    return row, row_max(row, sel)


def result_target(src, out_row):
    """Where a pass that writes a float result row should write it: the output row (None: in
    place, into the input row) for float rows; None (in place, into the widened or gathered
    row) for half-precision and strided rows, which :func:`commit` stores afterwards."""
    if is_gathered(src):
        return None
    return out_row


def grad_target(src, out_row, cap):
    """:func:`result_target` for a pass that reads a capped copy of the row (``cap`` not
    None: the cross-entropy's soft cap): in place (None) becomes the input row itself."""
    if is_gathered(src):
        return None
    if cap is not None and out_row is None:
        return src
    return out_row


def exps_kept(src, kept):
    """Whether the exponentials a split run's sum pass stored (``kept``) are still there for
    its last pass: in the output, for float rows; half-precision rows stored them in a
    scratch row since thrown away."""
    if is_half_bits(src):
        return False
    return kept


def result_row(src, row, dst):
    """The row holding the float results a pass wrote to :func:`result_target`: ``dst`` for
    float rows, the widened (gathered) ``row`` for half-precision (strided) ones."""
    if is_gathered(src):
        return row
    return dst


def commit(src, row, dst):
    """For half-precision input, round the float32 results (in the widened ``row``) into
    ``dst``: its half-precision format, or float32; for strided rows, copy them into ``dst``;
    for float rows the results are already in ``dst``."""
    if is_half_bits(src):
        encode_block(row, None, None, dst)
    elif is_gathered(src):
        copy_into(row, dst)


def row_at(a, stride, r, n):
    """Row ``r`` of ``n`` elements: ``a[r * stride:r * stride + n]`` of flat rows, or
    ``a[r // D, :, r % D]`` of a 3-D ``(N, C, D)`` array (classes on axis 1); None for None."""
    if a is None:
        return None
    if a.ndim == 3:
        return a[r // a.shape[2], :, r % a.shape[2]]
    return a[r * stride:r * stride + n]


def row_at_or(a, stride, r, n, default):
    """:func:`row_at`, or ``default`` when ``a`` is None (in place: the input row)."""
    if a is None:
        return default
    return row_at(a, stride, r, n)


def row_ahead(x, stride, r, n_rows, n):
    """The next row to prefetch (:func:`~fastsoftmax.kernels.numerics.next_row`) of flat
    rows; nothing (an empty row) for a 3-D array, whose rows are gathered."""
    if x.ndim == 3:
        return x[0, 0, :0]
    return next_row(x, r, n_rows, stride, n)


def store_scaled(src, row, sel, factor, dst):
    """The softmax pass: ``dst`` *= factor for float rows (``dst`` holds the exponentials);
    ``dst`` = row * factor rounded, for half-precision rows (0 where not selected)."""
    if is_half_bits(src):
        scale_narrow(row, sel, factor, dst)
    else:
        scale_store(dst, sel, factor)


def store_shifted(src, row, sel, m, inv_t, log_sum, out_row, dst):
    """The log_softmax pass, (row - m) * inv_t - log_sum (-inf where not selected): into
    ``out_row`` (None: in place) for float rows, rounded into ``dst`` for half-precision."""
    if is_half_bits(src):
        shift_narrow(row, sel, m, inv_t, log_sum, dst)
    else:
        shift_store(row, sel, m, inv_t, log_sum, out_row)


def store_value(out, j, value):
    """out[j] = ``value`` (float64) in the format of ``out``: rounded to its float dtype, or
    to float32 and then to the half-precision format of its bits."""
    if out.dtype == np.uint16:
        out[j] = f32_to_bf16(np.float32(value))
    elif out.dtype == np.int16:
        out[j] = np.uint16(f32_to_f16(np.float32(value))).view(np.int16)
    else:
        out[j] = out.dtype.type(value)


def dominated_log_sum(x, first, n_cols, mask, mask_first, buf, m, inv_t, rest, big):
    """log(s) of a row whose maximum ``m`` dominates it (:func:`~fastsoftmax.kernels.numerics.
    max_dominates`), from ``(rest, big)`` of its sum pass
    (:func:`~fastsoftmax.kernels.numerics.sum_exp_parts`): the row starts at ``x[first]``,
    its mask at ``mask[mask_first]``; ``buf`` is the task's buffer of widened half-precision
    rows (:func:`row_buffer` of the row's length), and gets the block of the maximum widened
    where it is already, when it holds the row.

    It takes the flat arrays and offsets, not the row: a row kernel whose row array stays
    alive until this (rare) call runs 10% slower on every row (reference counting in the
    row loop), even when the call is never made."""
    start = big * BLOCK
    stop = min(start + BLOCK, n_cols)
    block = load(x[first + start:first + stop], buf[start:stop])
    return log1p_of_rest(block, row_of(mask, mask_first + start, stop - start), m, inv_t, rest)


def logsumexp_of(m, log_s):
    """logsumexp of a row from its max ``m`` and ``log_s = log(sum(exp(row - m)))``
    (:func:`dominated_log_sum` where the maximum dominates): ``m + log_s``, or ``m`` itself when it
    is not finite (-inf: nothing selected or only -inf; +inf; NaN)."""
    if math.isfinite(m):
        return np.float64(m) + np.float64(log_s)
    return np.float64(m)


if not numba.config.DISABLE_JIT:
    logsumexp_of = building_block(logsumexp_of)
    dominated_log_sum = building_block(dominated_log_sum)

    def _half(arr_type) -> bool:
        return isinstance(arr_type, types.Array) and isinstance(arr_type.dtype, types.Integer)

    def _strided(arr_type) -> bool:
        # a row of a 3-D (N, C, D) array: Numba types it as of any layout ("A")
        return isinstance(arr_type, types.Array) and (arr_type.ndim > 1
                                                      or arr_type.layout != "C")

    def _gathered(arr_type) -> bool:
        return _half(arr_type) or _strided(arr_type)

    @overload(row_buffer, jit_options=NUMBA_OPTIONS)
    def _row_buffer_overload(x, n):
        if _half(x):
            return lambda x, n: np.empty(n, np.float32)
        if _strided(x):
            return lambda x, n: np.empty(n, x.dtype)
        return lambda x, n: x[:0]

    @overload(row_at, jit_options=NUMBA_OPTIONS)
    def _row_at_overload(a, stride, r, n):
        if isinstance(a, types.NoneType):
            return lambda a, stride, r, n: None
        if a.ndim == 3:
            return lambda a, stride, r, n: a[r // a.shape[2], :, r % a.shape[2]]
        return lambda a, stride, r, n: a[r * stride:r * stride + n]

    @overload(row_at_or, jit_options=NUMBA_OPTIONS)
    def _row_at_or_overload(a, stride, r, n, default):
        if isinstance(a, types.NoneType):
            return lambda a, stride, r, n, default: default
        return lambda a, stride, r, n, default: row_at(a, stride, r, n)

    @overload(row_ahead, jit_options=NUMBA_OPTIONS)
    def _row_ahead_overload(x, stride, r, n_rows, n):
        if x.ndim == 3:
            return lambda x, stride, r, n_rows, n: x[0, 0, :0]
        return lambda x, stride, r, n_rows, n: next_row(x, r, n_rows, stride, n)

    @overload(grad_target, jit_options=NUMBA_OPTIONS)
    def _grad_target_overload(src, out_row, cap):
        if _gathered(src):
            return lambda src, out_row, cap: None
        if not isinstance(cap, types.NoneType) and isinstance(out_row, types.NoneType):
            return lambda src, out_row, cap: src
        return lambda src, out_row, cap: out_row

    @overload(compute_buffer, jit_options=NUMBA_OPTIONS)
    def _compute_buffer_overload(x, n):
        if _half(x):
            return lambda x, n: np.empty(n, np.float32)
        return lambda x, n: np.empty(n, x.dtype)

    def _loaded_with(convert):
        def into_buffer(src, buf):
            values = buf[:src.size]
            convert(src, values)
            return values
        return into_buffer

    @overload(load, jit_options=NUMBA_OPTIONS)
    def _load_overload(src, buf):
        if _half(src):
            return _loaded_with(decode_block)  # widened
        if _strided(src):
            return _loaded_with(copy_into)  # gathered
        return lambda src, buf: src

    @overload(load_copy, jit_options=NUMBA_OPTIONS)
    def _load_copy_overload(src, buf):
        if _half(src):
            return _loaded_with(decode_block)  # widened
        return _loaded_with(copy_into)  # copied

    @overload(load_max, jit_options=NUMBA_OPTIONS)
    def _load_max_overload(src, sel, buf):
        if _half(src):
            def widened(src, sel, buf):
                values = buf[:src.size]
                return values, widen_max(src, sel, values)
            return widened
        if _strided(src):
            def gathered(src, sel, buf):
                values = buf[:src.size]
                copy_into(src, values)
                return values, row_max(values, sel)
            return gathered
        return lambda src, sel, buf: (src, row_max(src, sel))

    @overload(result_target, jit_options=NUMBA_OPTIONS)
    def _result_target_overload(src, out_row):
        if _gathered(src):
            return lambda src, out_row: None
        return lambda src, out_row: out_row

    @overload(exps_kept, jit_options=NUMBA_OPTIONS)
    def _exps_kept_overload(src, kept):
        if _half(src):
            return lambda src, kept: False
        return lambda src, kept: kept

    @overload(result_row, jit_options=NUMBA_OPTIONS)
    def _result_row_overload(src, row, dst):
        if _gathered(src):
            return lambda src, row, dst: row
        return lambda src, row, dst: dst

    @overload(commit, jit_options=NUMBA_OPTIONS)
    def _commit_overload(src, row, dst):
        if _half(src):
            return lambda src, row, dst: encode_block(row, None, None, dst)
        if _strided(src):
            return lambda src, row, dst: copy_into(row, dst)
        return lambda src, row, dst: None

    @overload(store_scaled, jit_options=NUMBA_OPTIONS)
    def _store_scaled_overload(src, row, sel, factor, dst):
        if _half(src):
            return lambda src, row, sel, factor, dst: scale_narrow(row, sel, factor, dst)
        return lambda src, row, sel, factor, dst: scale_store(dst, sel, factor)

    @overload(store_shifted, jit_options=NUMBA_OPTIONS)
    def _store_shifted_overload(src, row, sel, m, inv_t, log_sum, out_row, dst):
        if _half(src):
            return (lambda src, row, sel, m, inv_t, log_sum, out_row, dst:
                    shift_narrow(row, sel, m, inv_t, log_sum, dst))
        return (lambda src, row, sel, m, inv_t, log_sum, out_row, dst:
                shift_store(row, sel, m, inv_t, log_sum, out_row))

    @overload(store_value, jit_options=NUMBA_OPTIONS)
    def _store_value_overload(out, j, value):
        if out.dtype == types.uint16:
            def bfloat16(out, j, value):
                out[j] = f32_to_bf16(np.float32(value))
            return bfloat16
        if out.dtype == types.int16:
            def float16(out, j, value):
                out[j] = np.uint16(f32_to_f16(np.float32(value))).view(np.int16)
            return float16
        if out.dtype == types.float32:
            def single(out, j, value):
                out[j] = np.float32(value)
            return single
        def double(out, j, value):
            out[j] = np.float64(value)
        return double


# --- tasks -------------------------------------------------------------------------------------
# Row kernels loop ``prange(n_tasks)``; task ``t`` handles a run of consecutive rows, so scratch
# (``row_buffer``) is allocated once per task, not per row. The plan picks ``n_tasks`` (1 for
# the serial build); the runs differ in length by at most one row. A row's arithmetic does not
# depend on its task, so every task count gives the same bits.

@building_block
def backward_row(g, g_stride, y, y_stride, out, out_stride, r, n_cols, g_buf, y_buf):
    """Row ``r`` of a backward pass: ``(gradient row, saved output row as stored, saved
    output row in the compute type, output row)``, half precision widened into the buffers."""
    ysrc = y[r * y_stride:r * y_stride + n_cols]
    return (load(g[r * g_stride:r * g_stride + n_cols], g_buf), ysrc, load(ysrc, y_buf),
            out[r * out_stride:r * out_stride + n_cols])


@building_block
def task_rows(task, n_tasks, n_rows):
    """(first row, end row) of task ``task`` of ``n_tasks``."""
    return task * n_rows // n_tasks, (task + 1) * n_rows // n_tasks
