"""Numerical building blocks shared by every kernel: a vectorisable ``exp`` and the row
reductions (max, sum of exponentials).

Why not ``np.exp``: inside a Numba loop it is a call into libm that LLVM cannot vectorise, and
current Numba wheels have no SVML. The polynomial ``exp`` below is straight-line arithmetic plus
one integer bit trick, so the loops that use it compile to SIMD code (docs/performance.md).

Both ``exp`` variants take arguments ``z <= 0`` (or NaN): every caller subtracts the row
maximum first, so the result never overflows.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from .jit import NUMBA_OPTIONS, building_block, reduction

# --- float32: XNNPACK's "rr2-p5" (also PyTorch's exp_u20, oneDNN's) -------------------------
# n = round(z / ln2) with the magic-bias trick; the bias also carries the exponent bias 127,
# so shifting the bits of n left by 23 builds 2**n directly.
_F32_MAGIC = np.float32(float.fromhex("0x1.8000FEp23"))
_F32_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_F32_MINUS_LN2_HI = np.float32(float.fromhex("-0x1.62E430p-1"))
_F32_MINUS_LN2_LO = np.float32(float.fromhex("0x1.05C610p-29"))
_F32_C1 = np.float32(float.fromhex("0x1.FFFFF6p-1"))
_F32_C2 = np.float32(float.fromhex("0x1.FFFDC6p-2"))
_F32_C3 = np.float32(float.fromhex("0x1.555A80p-3"))
_F32_C4 = np.float32(float.fromhex("0x1.573A1Ap-5"))
_F32_C5 = np.float32(float.fromhex("0x1.0F9F9Cp-7"))
# Below this, exp(z) is subnormal in float32: flushed to zero.
_F32_CUTOFF = np.float32(float.fromhex("-0x1.5D589Ep6"))
_F32_ZERO = np.float32(0.0)
_F32_ONE = np.float32(1.0)


def exp_f32(z):
    """exp(z) for a float32 ``z <= 0``, within about 1e-6 relative error; 0 below -87.34."""
    n = z * _F32_LOG2E + _F32_MAGIC
    scale = np.int32(np.int64(np.float32(n).view(np.int32)) << 23).view(np.float32)
    n = n - _F32_MAGIC
    t = n * _F32_MINUS_LN2_HI + z
    t = n * _F32_MINUS_LN2_LO + t
    p = _F32_C5 * t + _F32_C4
    p = p * t + _F32_C3
    p = p * t + _F32_C2
    p = p * t + _F32_C1
    # (1 + t*p) * scale rather than XNNPACK's t*scale*p + scale: near the cutoff t*scale is
    # subnormal and every SIMD operation on it takes a microcode assist (7x slower rows).
    f = (t * p + _F32_ONE) * scale
    # NaN fails the comparison and passes through as NaN; -inf lands below the cutoff.
    return _F32_ZERO if z < _F32_CUTOFF else f


# --- float64: the same range reduction, degree-12 Taylor polynomial on |t| <= ln2/2 ---------
# The truncation error t**13/13! is below 1.7e-16 relative: the result is within ~2 ulp.
_F64_MAGIC = np.float64(float.fromhex("0x1.8p52") + 1023.0)
_F64_LOG2E = np.float64(1.4426950408889634)
_F64_MINUS_LN2_HI = np.float64(-6.93147180369123816490e-01)
_F64_MINUS_LN2_LO = np.float64(-1.90821492927058770002e-10)
_F64_C = tuple(np.float64(1.0 / np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(13))
(_F64_C0, _F64_C1, _F64_C2, _F64_C3, _F64_C4, _F64_C5, _F64_C6,
 _F64_C7, _F64_C8, _F64_C9, _F64_C10, _F64_C11, _F64_C12) = _F64_C
# Below this, exp(z) is subnormal in float64: flushed to zero.
_F64_CUTOFF = np.float64(-708.3964185322641)
_F64_ZERO = np.float64(0.0)


def exp_f64(z):
    """exp(z) for a float64 ``z <= 0``, within a few ulp; 0 below -708.39."""
    n = z * _F64_LOG2E + _F64_MAGIC
    scale = np.int64(np.float64(n).view(np.int64) << 52).view(np.float64)
    n = n - _F64_MAGIC
    t = n * _F64_MINUS_LN2_HI + z
    t = n * _F64_MINUS_LN2_LO + t
    p = _F64_C12 * t + _F64_C11
    p = p * t + _F64_C10
    p = p * t + _F64_C9
    p = p * t + _F64_C8
    p = p * t + _F64_C7
    p = p * t + _F64_C6
    p = p * t + _F64_C5
    p = p * t + _F64_C4
    p = p * t + _F64_C3
    p = p * t + _F64_C2
    p = p * t + _F64_C1
    f = (p * t + _F64_C0) * scale
    return _F64_ZERO if z < _F64_CUTOFF else f


# --- log1p of r in [0, 1]: fdlibm's log (musl's logf for float32), vectorisable ---------------
# The divergences between two distributions (kernels/distill.py) need log(a + b) of two
# exponentials per element, as max + log1p(r) with r = exp(min - max) in [0, 1]; libm's log
# does not vectorise either. 1 + r = 2**k * (1 + f) with k = 0 or 1 and 1 + f within
# [sqrt(2)/2, sqrt(2)]: f = r exactly for k = 0 (no rounding of 1 + r), (r - 1) / 2 for k = 1;
# then log(1 + f) = f - f**2/2 + s * (f**2/2 + R(s**2)), s = f / (2 + f), with fdlibm's
# minimax R (error below 2**-58.45 in float64, 2**-34.24 for musl's float32 R).
_F32_SQRT2_M1 = np.float32(0.41421356)
_F32_LN2_HI = np.float32(6.9313812256e-01)
_F32_LN2_LO = np.float32(9.0580006145e-06)
_F32_LG1 = np.float32(float.fromhex("0x1.555554p-1"))
_F32_LG2 = np.float32(float.fromhex("0x1.999c26p-2"))
_F32_LG3 = np.float32(float.fromhex("0x1.23d3dcp-2"))
_F32_LG4 = np.float32(float.fromhex("0x1.f13c4cp-3"))
_F32_HALF = np.float32(0.5)
_F32_TWO = np.float32(2.0)


def log1p_unit_f32(r):
    """log(1 + r) for a float32 ``r`` in [0, 1] (NaN gives NaN), within about 1 ulp."""
    big = r > _F32_SQRT2_M1
    f = (r - _F32_ONE) * _F32_HALF if big else r
    k = _F32_ONE if big else _F32_ZERO
    s = f / (_F32_TWO + f)
    z = s * s
    w = z * z
    big_r = z * (_F32_LG1 + w * _F32_LG3) + w * (_F32_LG2 + w * _F32_LG4)
    hfsq = _F32_HALF * f * f
    return s * (hfsq + big_r) + k * _F32_LN2_LO - hfsq + f + k * _F32_LN2_HI


_F64_SQRT2_M1 = np.float64(0.41421356237309503)
_F64_LN2_HI = np.float64(6.93147180369123816490e-01)
_F64_LN2_LO = np.float64(1.90821492927058770002e-10)
_F64_LG = tuple(np.float64(c) for c in (
    6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
    2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
    1.479819860511658591e-01))
_F64_LG1, _F64_LG2, _F64_LG3, _F64_LG4, _F64_LG5, _F64_LG6, _F64_LG7 = _F64_LG
_F64_ONE = np.float64(1.0)
_F64_HALF = np.float64(0.5)
_F64_TWO = np.float64(2.0)


def log1p_unit_f64(r):
    """log(1 + r) for a float64 ``r`` in [0, 1] (NaN gives NaN), within about 1 ulp."""
    big = r > _F64_SQRT2_M1
    f = (r - _F64_ONE) * _F64_HALF if big else r
    k = _F64_ONE if big else _F64_ZERO
    s = f / (_F64_TWO + f)
    z = s * s
    w = z * z
    t1 = w * (_F64_LG2 + w * (_F64_LG4 + w * _F64_LG6))
    t2 = z * (_F64_LG1 + w * (_F64_LG3 + w * (_F64_LG5 + w * _F64_LG7)))
    hfsq = _F64_HALF * f * f
    return s * (hfsq + (t2 + t1)) + k * _F64_LN2_LO - hfsq + f + k * _F64_LN2_HI


def log1p_unit(r):
    """Vectorisable log(1 + r) of a float32 or float64 ``r`` in [0, 1] (type-dispatched)."""
    if isinstance(r, np.float32):
        return log1p_unit_f32(r)
    return log1p_unit_f64(np.float64(r))


def exp(z):
    """Vectorisable exp of a non-positive float32 or float64 scalar (type-dispatched)."""
    if isinstance(z, np.float32):
        return exp_f32(z)
    return exp_f64(np.float64(z))


def prefetch(arr, index):
    """Ask the CPU to start loading ``arr[index]``'s cache line (a no-op without the JIT)."""


def maximum(a, b):
    """max(a, b) that propagates NaN (LLVM's ``llvm.maximum``): vectorises as a reduction."""
    if a != a or b != b:
        return a + b
    return a if a >= b else b


if not numba.config.DISABLE_JIT:
    _jit_exp_f32 = building_block(exp_f32)
    _jit_exp_f64 = building_block(exp_f64)

    @overload(exp, jit_options=NUMBA_OPTIONS)
    def _exp_overload(z):
        if z == types.float32:
            return lambda z: _jit_exp_f32(z)
        if z == types.float64:
            return lambda z: _jit_exp_f64(z)
        return None

    _jit_log1p_unit_f32 = building_block(log1p_unit_f32)
    _jit_log1p_unit_f64 = building_block(log1p_unit_f64)

    @overload(log1p_unit, jit_options=NUMBA_OPTIONS)
    def _log1p_unit_overload(r):
        if r == types.float32:
            return lambda r: _jit_log1p_unit_f32(r)
        if r == types.float64:
            return lambda r: _jit_log1p_unit_f64(r)
        return None

    @intrinsic
    def _llvm_maximum(typingctx, a, b):
        # A comparison-and-select max does not vectorise as a reduction unless NaNs are ruled
        # out (the nnan flag we must not use); the llvm.maximum intrinsic does, NaN included.
        if not (isinstance(a, types.Float) and a == b):
            return None

        def codegen(context, builder, signature, args):
            lty = context.get_value_type(a)
            fn = builder.module.declare_intrinsic(
                "llvm.maximum", [lty], ir.FunctionType(lty, [lty, lty]))
            return builder.call(fn, args)

        return a(a, b), codegen

    @intrinsic
    def _llvm_prefetch(typingctx, arr, index):
        if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
            i32 = ir.IntType(32)
            fn = builder.module.declare_intrinsic(
                "llvm.prefetch", [address.type],
                ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]))
            # read, locality 2 (keep in L2), data cache
            builder.call(fn, [address, i32(0), i32(2), i32(1)])
            return context.get_dummy_value()

        return types.void(arr, types.intp), codegen

    @overload(prefetch, jit_options=NUMBA_OPTIONS)
    def _prefetch_overload(arr, index):
        return lambda arr, index: _llvm_prefetch(arr, index)

    @overload(maximum, jit_options=NUMBA_OPTIONS)
    def _maximum_overload(a, b):
        if isinstance(a, types.Float) and a == b:
            return lambda a, b: _llvm_maximum(a, b)
        return None


def cast_like(arr, value):
    """``value`` converted to the dtype of ``arr`` (keeps float32 loops in float32)."""
    return arr.dtype.type(value)


def scaled(z, inv_t):
    """``z * inv_t``, or ``z`` itself when ``inv_t`` is None (temperature 1: no multiply)."""
    if inv_t is None:
        return z
    return z * inv_t


def flat_view(a):
    """A C-contiguous array ``a`` as a 1-D view, or None when ``a`` is None (in place)."""
    if a is None:
        return None
    return a.reshape(a.size)


def row_of(flat, start, n):
    """``flat[start:start + n]``, or None when ``flat`` is None (no ``where`` mask)."""
    if flat is None:
        return None
    return flat[start:start + n]


def pick(sel, j, value, fallback):
    """``value`` where element ``j`` is selected (always when ``sel`` is None), else
    ``fallback``: one expression for masked and unmasked loops."""
    if sel is None or sel[j]:
        return value
    return fallback


def row_or(flat, start, n, default):
    """``flat[start:start + n]``, or ``default`` when ``flat`` is None (in place: the input
    row itself, so that LLVM sees one array and vectorises without a runtime overlap check)."""
    if flat is None:
        return default
    return flat[start:start + n]


if not numba.config.DISABLE_JIT:

    @overload(cast_like, jit_options=NUMBA_OPTIONS)
    def _cast_like_overload(arr, value):
        if arr.dtype == types.float32:
            return lambda arr, value: np.float32(value)
        if arr.dtype == types.float64:
            return lambda arr, value: np.float64(value)
        return None

    @overload(scaled, jit_options=NUMBA_OPTIONS)
    def _scaled_overload(z, inv_t):
        if isinstance(inv_t, types.NoneType):
            return lambda z, inv_t: z
        return lambda z, inv_t: z * inv_t

    @overload(pick, jit_options=NUMBA_OPTIONS)
    def _pick_overload(sel, j, value, fallback):
        if isinstance(sel, types.NoneType):
            return lambda sel, j, value, fallback: value
        return lambda sel, j, value, fallback: value if sel[j] else fallback

    @overload(row_or, jit_options=NUMBA_OPTIONS)
    def _row_or_overload(flat, start, n, default):
        if isinstance(flat, types.NoneType):
            return lambda flat, start, n, default: default
        return lambda flat, start, n, default: flat[start:start + n]

    @overload(flat_view, jit_options=NUMBA_OPTIONS)
    def _flat_view_overload(a):
        if isinstance(a, types.NoneType):
            return lambda a: None
        return lambda a: a.reshape(a.size)

    @overload(row_of, jit_options=NUMBA_OPTIONS)
    def _row_of_overload(flat, start, n):
        if isinstance(flat, types.NoneType):
            return lambda flat, start, n: None
        return lambda flat, start, n: flat[start:start + n]


# --- row reductions and passes ---------------------------------------------------------------
# Each takes a contiguous 1-D row and ``sel``: None (every element counts) or the row of the
# boolean ``where`` mask. Numba compiles the ``sel is None`` branch away when ``sel`` is None,
# so the unmasked loops carry no mask test. Elements left out count as -inf in the max, 0 in
# the sums, and are written as 0 (softmax) or -inf (log_softmax). ``inv_t`` is 1/temperature
# in the row's dtype, or None for temperature 1 (the multiply is compiled away).

# Sums of exponentials add BLOCK elements in the row's dtype (SIMD lanes of float32 are twice
# as many as of float64, and the exp before the add runs at that width), then add each block's
# total into a float64 sum: the float32 rounding stays within a block of values <= 1.
BLOCK = 512
# The exponentials are stored STORE_CHUNK elements at a time, then summed a BLOCK at a time:
# the stored values do not depend on the chunk, and a loop per 512 elements paid its set-up
# (alias check, vector prologue and remainder) 63 times on a row of 32000: 3.9 against 3.0 us
# (docs/performance.md, "The max pass"). 8 KB of float32: still in L1 for the sums.
STORE_CHUNK = 4 * BLOCK


# Rows of at least this many elements take their maximum as four independent maxima, one per
# quarter of the row: LLVM vectorises the NaN-propagating maximum as one chain of
# compare-and-selects, bound by their latency, and four chains run 1.9x faster on rows of
# 32000 and 128256 float32 (docs/performance.md, "The max pass"); below 2048 elements the
# plain loop is faster. The maximum does not depend on the order it is taken in.
MAX_QUARTERS_MIN = 2048


@reduction
def row_max(row, sel):
    """Maximum of the selected elements; NaN if one is NaN, -inf if none is selected."""
    m = cast_like(row, -np.inf)
    if sel is None and row.size >= MAX_QUARTERS_MIN:
        q = row.size // 4
        m1 = m
        m2 = m
        m3 = m
        for j in range(q):
            m = maximum(m, row[j])
            m1 = maximum(m1, row[q + j])
            m2 = maximum(m2, row[2 * q + j])
            m3 = maximum(m3, row[3 * q + j])
        for j in range(4 * q, row.size):
            m = maximum(m, row[j])
        return maximum(maximum(m, m1), maximum(m2, m3))
    if sel is None:
        for j in range(row.size):
            m = maximum(m, row[j])
    else:
        neg_inf = cast_like(row, -np.inf)
        for j in range(row.size):
            m = maximum(m, row[j] if sel[j] else neg_inf)
    return m


@building_block
def exp_shifted(v, m, inv_t):
    """exp((v - m) * inv_t) for one element, in exact operation order."""
    return exp(scaled(v - m, inv_t))


@reduction
def _block_sum_exp(block, sel, m, inv_t):
    # One block, summed in the row's dtype (loops index from 0 so that Numba can drop the
    # negative-index wraparound that would otherwise stop LLVM from vectorising).
    acc = cast_like(block, 0.0)
    if sel is None:
        for j in range(block.size):
            acc += exp_shifted(block[j], m, inv_t)
    else:
        zero = cast_like(block, 0.0)
        for j in range(block.size):
            e = exp_shifted(block[j], m, inv_t)
            acc += e if sel[j] else zero
    return acc


# Passes that may write in place come in two loops: into ``dst``, and over one array. With two
# array arguments, LLVM guards a loop with an overlap check that fails when they are the same
# memory and runs the scalar fallback (2-3x slower), so in-place calls must use the one-array
# loop. ``dst`` None selects it; the choice is made when Numba types the call (a branch on
# ``dst is None`` would still type the in-place loop, which fails for a read-only input).

@building_block
def _exp_into(block, sel, m, inv_t, dst):
    zero = cast_like(block, 0.0)
    for j in range(block.size):
        dst[j] = pick(sel, j, exp_shifted(block[j], m, inv_t), zero)


@building_block
def _exp_in_place(block, sel, m, inv_t):
    zero = cast_like(block, 0.0)
    for j in range(block.size):
        block[j] = pick(sel, j, exp_shifted(block[j], m, inv_t), zero)


def _block_exp_store(block, sel, m, inv_t, dst):
    """dst (or ``block``, for None) = exp((block - m) * inv_t), 0 where not selected."""
    if dst is None:
        _exp_in_place(block, sel, m, inv_t)
    else:
        _exp_into(block, sel, m, inv_t, dst)


@reduction
def _block_sum(block):
    acc = cast_like(block, 0.0)
    for j in range(block.size):
        acc += block[j]
    return acc


@building_block
def next_row(x, r, n_rows, x_stride, n_cols):
    """Row ``r + 1`` of the flat rows of ``x``, or an empty array after the last row."""
    if r + 1 >= n_rows:
        return x[:0]
    start = (r + 1) * x_stride
    return x[start:start + n_cols]


@building_block
def prefetch_lines(arr):
    """Prefetch every cache line of ``arr`` (an empty ``arr`` does nothing)."""
    step = max(64 // arr.itemsize, 1)
    for i in range(0, arr.size, step):
        prefetch(arr, i)


def record(totals, b, value):
    """totals[b] = value, or nothing when ``totals`` is None."""
    if totals is not None:
        totals[b] = value


@building_block
def sum_exp_parts(row, sel, m, inv_t, ahead, totals=None):
    """``(s, rest, big)``: ``s = sum(exp((row - m) * inv_t))`` over the selected elements, as
    float64, block sums added in order; ``rest`` the sum of the blocks that sum to less than
    1, in order, and ``big`` the last block that does not (-1: none). When the maximum ``m``
    dominates the row (:func:`max_dominates`), ``big`` is the block holding it, the only one,
    and ``rows.dominated_log_sum`` needs only that block again. ``totals``: where to record
    each block's sum too (a split row's sum pass; None: nowhere).

    ``ahead``: the next row to work on (or an empty array), prefetched block by block while
    this one computes: in a batch too big for the caches, the next row then streams in from
    memory during the exponentials instead of stalling the following max pass.
    """
    total = 0.0
    rest = 0.0
    big = -1
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        prefetch_lines(ahead[start:stop])
        block_total = np.float64(_block_sum_exp(row[start:stop],
                                                row_of(sel, start, stop - start), m, inv_t))
        record(totals, start // BLOCK, block_total)
        total += block_total
        if block_total < 1.0:
            rest += block_total
        else:
            big = start // BLOCK
    return total, rest, big


@building_block
def sum_exp(row, sel, m, inv_t, ahead, totals=None):
    """``s`` of :func:`sum_exp_parts`."""
    return sum_exp_parts(row, sel, m, inv_t, ahead, totals)[0]


@building_block
def rest_of_blocks(totals):
    """``(rest, big)`` of :func:`sum_exp_parts` from recorded block sums (a split row)."""
    rest = 0.0
    big = -1
    for b in range(totals.size):
        if totals[b] < 1.0:
            rest += totals[b]
        else:
            big = b
    return rest, big


@reduction
def _block_sum_exp_below(block, sel, m, inv_t):
    # As _block_sum_exp, leaving out the elements equal to the maximum ``m``.
    acc = cast_like(block, 0.0)
    zero = cast_like(block, 0.0)
    for j in range(block.size):
        e = exp_shifted(block[j], m, inv_t)
        acc += pick(sel, j, e, zero) if block[j] < m else zero
    return acc


@building_block
def sum_exp_below(row, sel, m, inv_t):
    """sum(exp((row - m) * inv_t)) over the selected elements below ``m``, as float64: a
    piece of a row whose maximum ``m`` dominates it (fastsoftmax.dask; :func:`log1p_of_rest`)."""
    total = 0.0
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        total += np.float64(_block_sum_exp_below(row[start:stop],
                                                 row_of(sel, start, stop - start), m, inv_t))
    return total


@building_block
def weighted_log_sum_exp(row, w, sel):
    """``(log|s|, sign(s))`` of ``s = sum(w * exp(row))`` over the selected elements: SciPy's
    logsumexp with weights ``b``. Elements of weight 0 are left out (even +inf or NaN). The
    terms at the maximum ``m`` are added apart, ``a = sum of their weights``, and
    ``log|s| = m + log|a| + log1p(rest / a)`` (``rest``: the other weighted exponentials),
    precise near 0; where that is not finite (an infinite or NaN maximum, weights at the
    maximum that cancel, a sum that cancels to 0), the direct sum of ``w * exp(row)`` over
    every selected element decides, as in SciPy. Sums in float64."""
    m = cast_like(row, -np.inf)
    for j in range(row.size):
        if pick(sel, j, w[j] != 0, False):
            m = maximum(m, row[j])
    if np.isfinite(m):
        at_max = 0.0
        rest = 0.0
        for j in range(row.size):
            if pick(sel, j, w[j] != 0, False):
                if row[j] == m:
                    at_max += np.float64(w[j])
                else:
                    rest += np.float64(w[j]) * np.float64(exp_shifted(row[j], m, None))
        if at_max != 0.0:
            ratio = rest / at_max
            sign = np.sign(ratio + 1.0) * np.sign(at_max)
            if ratio < -1.0:  # |1 + ratio| = -ratio - 1 = 1 + (-ratio - 2)
                ratio = -ratio - 2.0
            value = np.log1p(ratio) + np.log(abs(at_max)) + np.float64(m)
            if np.isfinite(value):
                return value, sign
    total = 0.0
    for j in range(row.size):
        if pick(sel, j, True, False):
            total += np.float64(w[j]) * np.exp(np.float64(row[j]))
    return np.log(abs(total)), np.sign(total)


# log(s) of a sum of exponentials shifted by the row maximum (which contributes exactly 1) is
# taken as log1p of the other terms below this: there s - 1 has lost more than two bits in s
# (and the float32 sums of a block a few more), so log(s) would be off by many units in the
# last place. Above it log(s) >= 0.22 stays within a few, and the rows skip the extra work:
# with a threshold of 2 (every row the maximum outweighs), 13% of the rows of a random
# 1024x1000 float32 batch (N(0, 3^2)) took the log1p path and the call ran 7-10% slower.
DOMINATED_SUM = 1.25


@building_block
def max_dominates(m, s):
    """Whether the maximum ``m`` of a row dominates it so much that log(s) of
    ``s = sum(exp(row - m))`` loses precision: ``s < DOMINATED_SUM``. Only one block of the
    row then sums to 1 or more: the one holding the maximum."""
    return s < DOMINATED_SUM and np.isfinite(m)


@building_block
def log1p_of_rest(block, sel, m, inv_t, rest):
    """log1p of the sum of the exponentials of a row but its maximum ``m``: ``rest`` (the
    other blocks, :func:`sum_exp_parts`) and ``block``, the one holding ``m``, summed once
    more without it: about 512 exponentials, not another pass over the row."""
    return np.log1p(rest + np.float64(_block_sum_exp_below(block, sel, m, inv_t)))


@building_block
def exp_store_sum(row, sel, m, inv_t, dst, ahead, totals=None):
    """dst = exp((row - m) * inv_t) (0 where not selected); returns sum(dst) as float64:
    block sums added in order, and recorded in ``totals`` unless it is None (see
    :func:`sum_exp`).

    ``dst`` None: in place, into ``row``. ``ahead``: the next row, prefetched meanwhile (see
    :func:`sum_exp`)."""
    total = 0.0
    for start in range(0, row.size, STORE_CHUNK):
        stop = min(start + STORE_CHUNK, row.size)
        prefetch_lines(ahead[start:stop])
        _block_exp_store(row[start:stop], row_of(sel, start, stop - start), m, inv_t,
                         row_of(dst, start, stop - start))
        # Summed block by block in a loop of its own over the elements just written (still
        # in L1): a loop that only reads compiles to the same SIMD reduction in every caller,
        # whereas one that also stores is vectorised differently with and without aliasing
        # (in place, serial, parallel), and a different order of additions changes the last
        # bits. (Both loops inline here: moved into a helper called per block, softmax ran
        # 15-25% slower.)
        for b in range(start, stop, BLOCK):
            end = min(b + BLOCK, stop)
            block_total = np.float64(_block_sum(row_or(dst, b, end - b, row[b:end])))
            record(totals, b // BLOCK, block_total)
            total += block_total
    return total


@building_block
def exp_weight(e, d):
    """e * d, or 0 where e is 0 (d may then be -inf: an element at -inf weighs nothing)."""
    return e * d if e != 0 else e


@building_block
def scale_store(dst, sel, factor):
    """dst *= factor (kept 0 where not selected, even if factor is NaN or inf)."""
    if sel is None:
        for j in range(dst.size):
            dst[j] = dst[j] * factor
    else:
        zero = cast_like(dst, 0.0)
        for j in range(dst.size):
            dst[j] = dst[j] * factor if sel[j] else zero


@building_block
def _shift_into(row, sel, m, inv_t, log_sum, dst):
    neg_inf = cast_like(row, -np.inf)
    for j in range(row.size):
        dst[j] = pick(sel, j, scaled(row[j] - m, inv_t) - log_sum, neg_inf)


@building_block
def _shift_in_place(row, sel, m, inv_t, log_sum):
    neg_inf = cast_like(row, -np.inf)
    for j in range(row.size):
        row[j] = pick(sel, j, scaled(row[j] - m, inv_t) - log_sum, neg_inf)


def shift_store(row, sel, m, inv_t, log_sum, dst):
    """dst (or ``row``, for None) = (row - m) * inv_t - log_sum, -inf where not selected:
    the log_softmax pass."""
    if dst is None:
        _shift_in_place(row, sel, m, inv_t, log_sum)
    else:
        _shift_into(row, sel, m, inv_t, log_sum, dst)


# --- building blocks of the gradients and the cross-entropy ------------------------------------

@reduction
def _block_dot(a, b):
    acc = cast_like(a, 0.0)
    for j in range(a.size):
        acc += a[j] * b[j]
    return acc


@building_block
def row_dot(a, b):
    """sum(a * b) of two rows, block-wise in the row dtype, totals in float64."""
    total = 0.0
    for start in range(0, a.size, BLOCK):
        stop = min(start + BLOCK, a.size)
        total += np.float64(_block_dot(a[start:stop], b[start:stop]))
    return total


@building_block
def row_sum(a):
    """sum(a), block-wise in the row dtype, totals in float64."""
    total = 0.0
    for start in range(0, a.size, BLOCK):
        stop = min(start + BLOCK, a.size)
        total += np.float64(_block_sum(a[start:stop]))
    return total


@building_block
def _softmax_grad_into(g, y, dot, dst):
    for j in range(g.size):
        dst[j] = y[j] * (g[j] - dot)


@building_block
def _softmax_grad_in_place(g, y, dot):
    for j in range(g.size):
        y[j] = y[j] * (g[j] - dot)


def softmax_grad_store(g, y, dot, dst):
    """dst (or ``y``, for None) = y * (g - dot): the softmax backward pass."""
    if dst is None:
        _softmax_grad_in_place(g, y, dot)
    else:
        _softmax_grad_into(g, y, dot, dst)


@building_block
def _log_softmax_grad_into(g, logp, total, dst):
    for j in range(g.size):
        dst[j] = g[j] - exp(logp[j]) * total


@building_block
def _log_softmax_grad_in_place(g, logp, total):
    for j in range(g.size):
        logp[j] = g[j] - exp(logp[j]) * total


def log_softmax_grad_store(g, logp, total, dst):
    """dst (or ``logp``, for None) = g - exp(logp) * total: the log_softmax backward pass
    (logp <= 0)."""
    if dst is None:
        _log_softmax_grad_in_place(g, logp, total)
    else:
        _log_softmax_grad_into(g, logp, total, dst)


# Stores in a prange body go through building blocks (these two, the passes above), never
# straight into an array that a call returned: Numba's parallel build drops such a store as
# dead code, its alias analysis not seeing that the returned slice is part of an argument (the
# serial build keeps it). That once lost the target's term of the parallel cross-entropy
# gradient; tests/test_builds.py compares every kernel's builds bit for bit.

@building_block
def fill(dst, value):
    """dst[:] = value."""
    for j in range(dst.size):
        dst[j] = value


@building_block
def subtract_at(dst, j, value):
    """dst[j] -= value."""
    dst[j] -= value


@building_block
def _ce_grad_into(row, m, inv_t, inv_sum, scale, smooth, dst):
    for j in range(row.size):
        dst[j] = scale * (exp_shifted(row[j], m, inv_t) * inv_sum - smooth)


@building_block
def _ce_grad_in_place(row, m, inv_t, inv_sum, scale, smooth):
    for j in range(row.size):
        row[j] = scale * (exp_shifted(row[j], m, inv_t) * inv_sum - smooth)


def cross_entropy_grad_store(row, m, inv_t, inv_sum, scale, smooth, dst):
    """dst (or ``row``, for None) = scale * (softmax(row * inv_t) - smooth); the target's
    term is added apart."""
    if dst is None:
        _ce_grad_in_place(row, m, inv_t, inv_sum, scale, smooth)
    else:
        _ce_grad_into(row, m, inv_t, inv_sum, scale, smooth, dst)



# --- the options of the cross-entropy: class weights, probability targets, a soft cap ----------
# Each takes None for "off", and Numba compiles the option away then (the overloads below), so
# a call without options runs the arithmetic it always ran. ``w``: the weight of each class;
# ``p``: a row of target probabilities; ``cap``: (cap, 1 / cap) of ``cap * tanh(x / cap)``.

def weighted(v, w, j):
    """``v * w[j]``, or ``v`` when ``w`` is None."""
    if w is None:
        return v
    return v * w[j]


def weight_of(w, j):
    """``w[j]`` as float64, or 1 when ``w`` is None."""
    if w is None:
        return 1.0
    return np.float64(w[j])


def weighted_sum(a, w):
    """``sum(a * w)`` (``sum(a)`` when ``w`` is None), block-wise, totals in float64."""
    if w is None:
        return row_sum(a)
    return row_dot(a, w)


@building_block
def _gap(p, x, m):
    return p * (m - x)


@reduction
def _block_gap(row, p, w, m):
    acc = cast_like(row, 0.0)
    for j in range(row.size):
        acc += weighted(_gap(p[j], row[j], m), w, j)
    return acc


@building_block
def row_gap(row, p, w, m):
    """sum(p * w * (m - row)) (w None: 1), block-wise, totals in float64: the probability
    targets' share of a cross-entropy, measured from the row's maximum ``m`` so that no large
    logit cancels."""
    total = 0.0
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        total += np.float64(_block_gap(row[start:stop], p[start:stop],
                                       row_of(w, start, stop - start), m))
    return total


def target_share(p, pc, c, w, j):
    """The target distribution's element ``j`` times the gradient's factor: ``(pc * p[j] + c)
    * w[j]``, without ``p`` (class-index targets, their own term added apart) ``c * w[j]``,
    without ``w`` unweighted."""
    if p is None:
        return weighted(c, w, j)
    return weighted(pc * p[j] + c, w, j)


def cap_slope(g, y, cap):
    """``g * d(cap * tanh(x / cap))/dx`` at the capped value ``y``: ``g * (1 - t) * (1 + t)``
    with ``t = y / cap``; ``g`` itself without a cap."""
    if cap is None:
        return g
    t = y * cap[1]
    return g * ((1 - t) * (1 + t))


@building_block
def _cap_into(row, cap, inv_cap, dst):
    for j in range(row.size):
        dst[j] = cap * math.tanh(row[j] * inv_cap)


def capped(row, m, cap, buf):
    """``(cap * tanh(row / cap), the same of the maximum m)``, written into ``buf``; ``(row,
    m)`` themselves without a cap. tanh is monotonic: the capped row's maximum is the capped
    maximum."""
    if cap is None:
        return row, m
    out = buf[:row.size]
    _cap_into(row, cap[0], cap[1], out)
    return out, cap[0] * math.tanh(m * cap[1])


@building_block
def _ce_general_into(row, m, inv_t, inv_sum, a, c, pc, p, w, cap, dst):
    for j in range(row.size):
        g = a * (exp_shifted(row[j], m, inv_t) * inv_sum) - target_share(p, pc, c, w, j)
        dst[j] = cap_slope(g, row[j], cap)


@building_block
def _ce_general_in_place(row, m, inv_t, inv_sum, a, c, pc, p, w, cap):
    for j in range(row.size):
        g = a * (exp_shifted(row[j], m, inv_t) * inv_sum) - target_share(p, pc, c, w, j)
        row[j] = cap_slope(g, row[j], cap)


def ce_grad_store(row, m, inv_t, inv_sum, a, c, pc, p, w, cap, dst):
    """dst (or ``row``, for None) = (a * softmax(row * inv_t) - target_share) * cap_slope:
    the cross-entropy's gradient but for the term of a class-index target, added apart."""
    if dst is None:
        _ce_general_in_place(row, m, inv_t, inv_sum, a, c, pc, p, w, cap)
    else:
        _ce_general_into(row, m, inv_t, inv_sum, a, c, pc, p, w, cap, dst)

if not numba.config.DISABLE_JIT:

    @overload(record, jit_options=NUMBA_OPTIONS)
    def _record_overload(totals, b, value):
        if isinstance(totals, (types.NoneType, types.Omitted)):
            return lambda totals, b, value: None

        def store(totals, b, value):
            totals[b] = value
        return store

    @overload(_block_exp_store, jit_options=NUMBA_OPTIONS)
    def _block_exp_store_overload(block, sel, m, inv_t, dst):
        if isinstance(dst, types.NoneType):
            return lambda block, sel, m, inv_t, dst: _exp_in_place(block, sel, m, inv_t)
        return lambda block, sel, m, inv_t, dst: _exp_into(block, sel, m, inv_t, dst)

    @overload(shift_store, jit_options=NUMBA_OPTIONS)
    def _shift_store_overload(row, sel, m, inv_t, log_sum, dst):
        if isinstance(dst, types.NoneType):
            return lambda row, sel, m, inv_t, log_sum, dst: _shift_in_place(row, sel, m, inv_t,
                                                                            log_sum)
        return lambda row, sel, m, inv_t, log_sum, dst: _shift_into(row, sel, m, inv_t,
                                                                    log_sum, dst)

    @overload(softmax_grad_store, jit_options=NUMBA_OPTIONS)
    def _softmax_grad_store_overload(g, y, dot, dst):
        if isinstance(dst, types.NoneType):
            return lambda g, y, dot, dst: _softmax_grad_in_place(g, y, dot)
        return lambda g, y, dot, dst: _softmax_grad_into(g, y, dot, dst)

    @overload(log_softmax_grad_store, jit_options=NUMBA_OPTIONS)
    def _log_softmax_grad_store_overload(g, logp, total, dst):
        if isinstance(dst, types.NoneType):
            return lambda g, logp, total, dst: _log_softmax_grad_in_place(g, logp, total)
        return lambda g, logp, total, dst: _log_softmax_grad_into(g, logp, total, dst)

    @overload(cross_entropy_grad_store, jit_options=NUMBA_OPTIONS)
    def _ce_grad_store_overload(row, m, inv_t, inv_sum, scale, smooth, dst):
        if isinstance(dst, types.NoneType):
            return (lambda row, m, inv_t, inv_sum, scale, smooth, dst:
                    _ce_grad_in_place(row, m, inv_t, inv_sum, scale, smooth))
        return (lambda row, m, inv_t, inv_sum, scale, smooth, dst:
                _ce_grad_into(row, m, inv_t, inv_sum, scale, smooth, dst))


    @overload(weighted, jit_options=NUMBA_OPTIONS)
    def _weighted_overload(v, w, j):
        if isinstance(w, types.NoneType):
            return lambda v, w, j: v
        return lambda v, w, j: v * w[j]

    @overload(weight_of, jit_options=NUMBA_OPTIONS)
    def _weight_of_overload(w, j):
        if isinstance(w, types.NoneType):
            return lambda w, j: 1.0
        return lambda w, j: np.float64(w[j])

    @overload(weighted_sum, jit_options=NUMBA_OPTIONS)
    def _weighted_sum_overload(a, w):
        if isinstance(w, types.NoneType):
            return lambda a, w: row_sum(a)
        return lambda a, w: row_dot(a, w)

    @overload(target_share, jit_options=NUMBA_OPTIONS)
    def _target_share_overload(p, pc, c, w, j):
        if isinstance(p, types.NoneType):
            return lambda p, pc, c, w, j: weighted(c, w, j)
        return lambda p, pc, c, w, j: weighted(pc * p[j] + c, w, j)

    @overload(cap_slope, jit_options=NUMBA_OPTIONS)
    def _cap_slope_overload(g, y, cap):
        if isinstance(cap, types.NoneType):
            return lambda g, y, cap: g

        def slope(g, y, cap):
            t = y * cap[1]
            return g * ((1 - t) * (1 + t))
        return slope

    @overload(capped, jit_options=NUMBA_OPTIONS)
    def _capped_overload(row, m, cap, buf):
        if isinstance(cap, types.NoneType):
            return lambda row, m, cap, buf: (row, m)

        def cap_row(row, m, cap, buf):
            out = buf[:row.size]
            _cap_into(row, cap[0], cap[1], out)
            return out, cap[0] * math.tanh(m * cap[1])
        return cap_row

    @overload(ce_grad_store, jit_options=NUMBA_OPTIONS)
    def _ce_grad_store_general_overload(row, m, inv_t, inv_sum, a, c, pc, p, w, cap, dst):
        if isinstance(dst, types.NoneType):
            return (lambda row, m, inv_t, inv_sum, a, c, pc, p, w, cap, dst:
                    _ce_general_in_place(row, m, inv_t, inv_sum, a, c, pc, p, w, cap))
        return (lambda row, m, inv_t, inv_sum, a, c, pc, p, w, cap, dst:
                _ce_general_into(row, m, inv_t, inv_sum, a, c, pc, p, w, cap, dst))
