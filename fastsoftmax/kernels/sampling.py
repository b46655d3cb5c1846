"""Row kernels that draw one token per row from logits: greedy, and temperature sampling with
the min-p, top-k and top-p filters, fused, and without sorting the row.

Layout, tasks and dtypes as in :mod:`fastsoftmax.kernels.softmax` (flat rows with a row
stride, an optional flat ``where`` mask; half-precision rows widened into the scratch row). ``out[r]`` receives the drawn column, or a negative code for a row that cannot
be sampled (:data:`NAN_ROW`, :data:`EMPTY_ROW`); the public layer turns codes into errors.

Per row, after the max pass, the unnormalised probabilities ``p = exp((x - max) / T)`` are
written once into a scratch row (0 for tokens left out by ``where``), so the max token has
``p = 1``. Every filter keeps the tokens at or above a threshold on ``p``:

- min-p: ``p >= min_p``;
- top-k: ``p >=`` the k-th largest kept ``p`` (a count search);
- top-p: ``p >= t*``, the largest value with ``mass{p >= t*} >= top_p * mass kept so far``
  (a mass search).

A search is a bisection over the bits of ``p`` (for ``p >= 0`` they order like the values), one
vectorised pass over the scratch row a step that sums the weight above the midpoint and counts
the values left in the interval; once at most ``GATHER`` values remain, they are copied out,
sorted and walked: typically 5-8 passes. The draw is an inverse CDF in index order: block masses
first, then element by element inside the block where the cumulative mass passes
``u * kept mass``. The uniform ``u`` of each row comes from the caller, so results do not
depend on threads.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import overload

from .jit import NUMBA_OPTIONS, building_block, kernel_pair, reduction
from .numerics import BLOCK, cast_like, exp_store_sum, next_row, pick, row_of
from .rows import compute_buffer, load_max, result_target, row_buffer, task_rows

# Codes written instead of a column for rows that cannot be sampled.
NAN_ROW = -1     # a selected logit is NaN
EMPTY_ROW = -2   # every selected logit is -inf, or nothing is selected


# --- float bits as ordered integers ------------------------------------------------------------
# For non-negative floats the bit pattern, read as an integer, orders like the value, and
# consecutive integers are consecutive floats: bisection over the integers halves the number of
# representable values in between, whatever their magnitudes.

def order_key(v):
    """The bits of a non-negative float32/float64 ``v`` as an int64 that orders like ``v``."""
    if isinstance(v, np.float32):
        return np.int64(v.view(np.int32))
    return np.int64(np.float64(v).view(np.int64))


def key_value(key, like):
    """The float of ``like``'s dtype whose :func:`order_key` is ``key``."""
    if like.dtype == np.float32:
        return np.int32(key).view(np.float32)
    return np.int64(key).view(np.float64)


def weight(v, unit):
    """What element ``v`` adds to a search's total: ``unit`` (counting), or ``v`` itself for
    None (probability mass)."""
    if unit is None:
        return v
    return unit


if not numba.config.DISABLE_JIT:

    @overload(order_key, jit_options=NUMBA_OPTIONS)
    def _order_key_overload(v):
        if v == types.float32:
            return lambda v: np.int64(np.float32(v).view(np.int32))
        if v == types.float64:
            return lambda v: np.float64(v).view(np.int64)
        return None

    @overload(key_value, jit_options=NUMBA_OPTIONS)
    def _key_value_overload(key, like):
        if like.dtype == types.float32:
            return lambda key, like: np.int32(key).view(np.float32)
        if like.dtype == types.float64:
            return lambda key, like: np.int64(key).view(np.float64)
        return None

    @overload(weight, jit_options=NUMBA_OPTIONS)
    def _weight_overload(v, unit):
        if isinstance(unit, types.NoneType):
            return lambda v, unit: v
        return lambda v, unit: unit


# --- the search --------------------------------------------------------------------------------
# Once a search has narrowed its interval to at most GATHER values, they are copied out and
# sorted: a few hundred values sort faster than the ~10 more passes that bisection would need.
GATHER = 512


@reduction
def _block_weigh(block, mid, hi, unit):
    # (total weight of the values >= mid, how many lie in [mid, hi)), in the block's dtype:
    # compare-and-select adds, which vectorise
    zero = cast_like(block, 0.0)
    one = cast_like(block, 1.0)
    total = zero
    count = zero
    for j in range(block.size):
        v = block[j]
        total += weight(v, unit) if v >= mid else zero
        count += one if v >= mid and v < hi else zero
    return total, count


@building_block
def weigh(p, mid, hi, unit):
    """One pass over the scratch row ``p``: the total weight of the values ``>= mid`` and how
    many values lie in ``[mid, hi)``, as float64, summed block-wise like ``sum_exp``."""
    total = 0.0
    count = 0.0
    for start in range(0, p.size, BLOCK):
        w, c = _block_weigh(p[start:min(start + BLOCK, p.size)], mid, hi, unit)
        total += np.float64(w)
        count += np.float64(c)
    return total, count


@building_block
def gather_between(p, lo, hi, buffer):
    """Copy the values of ``p`` in ``[lo, hi)`` into ``buffer`` (as many as fit); their number."""
    n = 0
    for j in range(p.size):
        v = p[j]
        if v >= lo and v < hi:
            if n == buffer.size:
                break
            buffer[n] = v
            n += 1
    return n


@building_block
def threshold_search(p, unit, target, lo, hi, count_inside, buffer):
    """The largest value ``t`` of ``p`` with ``weight{p >= t} >= target``.

    Requires ``weight{p >= lo} >= target > 0``, ``hi`` above every value, and
    ``count_inside`` values in ``[lo, hi)``. Bisects the keys while more than ``buffer.size``
    values remain in between (keeping ``weight{p >= hi} < target``), then sorts those and
    walks down from ``hi``, adding weights.
    """
    weight_hi = 0.0
    while count_inside > buffer.size:
        key_lo = order_key(lo)
        key_hi = order_key(hi)
        if key_hi - key_lo <= 1:
            return lo  # one value left in between: it is the answer
        mid = key_value(key_lo + (key_hi - key_lo) // 2, p)
        w, count_upper = weigh(p, mid, hi, unit)
        if w >= target:
            lo, count_inside = mid, count_upper
        else:
            hi, weight_hi, count_inside = mid, w, count_inside - count_upper
    n = gather_between(p, lo, hi, buffer)
    values = buffer[:n]
    values.sort()
    total = weight_hi
    for i in range(n - 1, -1, -1):
        total += np.float64(weight(values[i], unit))
        if total >= target and (i == 0 or values[i - 1] != values[i]):
            return values[i]
    return values[0] if n else lo  # rounding: the sum fell short of weight{p >= lo}


@building_block
def inverse_cdf(p, t, target):
    """The first index where the running mass of the values ``>= t`` of ``p``, in index order,
    exceeds ``target``: block masses first (the same sums as :func:`weigh`), then element by
    element inside the block that crosses. Where rounding leaves the target unreached, the last
    value ``>= t`` of that block (or of the row)."""
    cumulative = 0.0
    for start in range(0, p.size, BLOCK):
        block = p[start:min(start + BLOCK, p.size)]
        w = np.float64(_block_weigh(block, t, t, None)[0])
        if w > 0.0 and cumulative + w > target:
            last = -1
            for j in range(block.size):
                if block[j] >= t:
                    last = j
                    cumulative += np.float64(block[j])
                    if cumulative > target:
                        return start + j
            return start + last
        cumulative += w
    for j in range(p.size - 1, -1, -1):
        if p[j] >= t:
            return j
    return EMPTY_ROW  # not reached: the row's max has p = 1 >= t


@building_block
def filtered_draw(p, min_p, top_k, top_p, u, buffer):
    """Draw from the scratch row ``p`` (max 1, 0 for tokens left out) after the min-p, top-k
    and top-p filters, in that order; ``top_k`` 0 and ``top_p`` 1 mean no such filter.
    ``buffer``: scratch for the end of the searches."""
    one = cast_like(p, 1.0)
    above_all = key_value(order_key(one) + 1, p)
    smallest_positive = key_value(1, p)  # p = 0 (masked out, or underflow) is never drawn
    t = max(cast_like(p, min_p), smallest_positive)
    if top_k > 0:
        count = weigh(p, t, above_all, one)[0]
        if count > top_k:
            t = threshold_search(p, one, np.float64(top_k), t, above_all, count, buffer)
    mass, count = weigh(p, t, above_all, None)
    if top_p < 1.0:
        t = threshold_search(p, None, top_p * mass, t, above_all, count, buffer)
        mass = weigh(p, t, t, None)[0]
    return inverse_cdf(p, t, u * mass)


# --- special rows ------------------------------------------------------------------------------

@building_block
def first_equal(row, sel, value):
    """The first selected index ``j`` with ``row[j] == value`` (-1 if none)."""
    for j in range(row.size):
        if pick(sel, j, row[j] == value, False):
            return j
    return -1


@building_block
def uniform_among_inf(row, sel, u):
    """A uniformly drawn selected index among those holding +inf: the limit of the softmax
    when logits go to +inf together, whatever the filters."""
    inf = cast_like(row, np.inf)
    count = 0
    for j in range(row.size):
        if pick(sel, j, row[j] == inf, False):
            count += 1
    rank = min(int(u * count), count - 1)
    for j in range(row.size):
        if pick(sel, j, row[j] == inf, False):
            if rank == 0:
                return j
            rank -= 1
    return EMPTY_ROW  # not reached: the row's max is +inf


@building_block
def unsampleable(m):
    """The error code of a row whose max is ``m``, or 0 if it can be sampled."""
    if m != m:
        return NAN_ROW
    if m == -np.inf:
        return EMPTY_ROW
    return 0


# --- kernels -----------------------------------------------------------------------------------
# Layout, tasks and dtypes as in kernels/softmax.py; ``out[r]`` receives the drawn column.

@kernel_pair
def greedy_rows(x, x_stride, mask, mask_stride, n_rows, n_cols, out, n_tasks):
    """out[r] = the first selected index of row r's maximum (temperature 0)."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            sel = row_of(mask, r * mask_stride, n_cols)
            row, m = load_max(x[r * x_stride:r * x_stride + n_cols], sel, buf)
            code = unsampleable(m)
            out[r] = code if code else first_equal(row, sel, m)


@kernel_pair
def sample_rows(x, x_stride, mask, mask_stride, n_rows, n_cols, inv_t, min_p, top_k, top_p,
                u, out, n_tasks):
    """out[r] = a token drawn from softmax(x[r] * inv_t) after the filters, with uniform u[r].

    Each task has one scratch row (``n_cols + GATHER`` values of the compute type): the
    probabilities ``p`` of its current row, then the candidates at the end of a search.
    """
    for task in prange(n_tasks):
        scratch = compute_buffer(x, n_cols + GATHER)
        p = scratch[:n_cols]
        buffer = scratch[n_cols:]
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            src = x[r * x_stride:r * x_stride + n_cols]
            sel = row_of(mask, r * mask_stride, n_cols)
            row, m = load_max(src, sel, p)
            code = unsampleable(m)
            if code:
                out[r] = code
            elif m == np.inf:
                out[r] = uniform_among_inf(row, sel, u[r])
            else:
                exp_store_sum(row, sel, m, inv_t, result_target(src, p),
                              next_row(x, r, n_rows, x_stride, n_cols))
                out[r] = filtered_draw(p, min_p, top_k, top_p, u[r], buffer)
