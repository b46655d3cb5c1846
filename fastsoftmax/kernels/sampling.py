"""Row kernels that draw one token per row from logits, each row with its own parameters:
logit bias and penalties, greedy or temperature sampling with the top-n-sigma, min-p, top-k,
top-p and typical-p filters, and log-probabilities, fused, and without sorting the row.

Layout, tasks and dtypes as in :mod:`fastsoftmax.kernels.softmax` (flat rows with a row
stride, an optional flat ``where`` mask; half-precision rows widened into a scratch row).
``out[r]`` receives the drawn column, or a negative code for a row that cannot be sampled
(:data:`NAN_ROW`, :data:`EMPTY_ROW`); the public layer turns codes into errors.

Per row: a row with biases or penalties is copied into a scratch row and edited there (the
caller's logits are never written; each penalised token once, from a count of the row's
history); then, after the max pass, the unnormalised probabilities ``p = exp((x - max) / T)``
are written once into a second scratch row (0 for tokens left out by ``where``), so the max
token has ``p = 1``. Every filter keeps the tokens in an interval of ``p``:

- top-n-sigma: ``p >= exp(-n * std(x) / T)``; min-p: ``p >= min_p``;
- top-k: ``p >=`` the k-th largest kept ``p`` (a count search);
- top-p: ``p >= t*``, the largest value with ``mass{p >= t*} >= top_p * mass kept so far``
  (a mass search);
- typical-p: ``p`` within a factor ``e**tau`` of ``c = mass e**-H`` (the distance
  ``|-log q - H|`` of Hugging Face's ``TypicalLogitsWarper`` is ``|log(p / c)|``): ``tau`` is
  bisected on the kept mass.

A search is a bisection (over the bits of ``p`` for top-k and top-p: for ``p >= 0`` they order
like the values; over ``tau`` for typical-p), one vectorised pass over the scratch row a step
that sums the weight inside the bounds and counts the values left between them; once at most
``GATHER`` values remain, they are copied out, sorted and walked: typically 5-8 passes. The
draw is an inverse CDF in index order: block masses first, then element by element inside the
block where the cumulative mass passes ``u * kept mass``. The uniform ``u`` of each row comes
from the caller (one of the per-row parameters), so results do not depend on threads. The top
tokens (log-probabilities) are a running list of the best values, a block skipped after a
vectorised max when none of it can enter.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import overload

from .jit import NUMBA_OPTIONS, building_block, kernel_pair, reduction
from .numerics import (BLOCK, cast_like, exp_shifted, exp_store_sum, maximum, next_row, pick,
                        row_max, row_of, sum_exp)
from .rows import compute_buffer, load, load_copy, task_rows

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


@reduction
def _block_band(block, lo, hi, unit):
    # the total weight of the values in [lo, hi], in the block's dtype (compare-and-select
    # adds): their mass (unit None), or their number
    # (two selects, not one on "lo <= v <= hi": LLVM vectorises this form, 4x faster)
    zero = cast_like(block, 0.0)
    total = zero
    for j in range(block.size):
        v = block[j]
        w = weight(v, unit) if v >= lo else zero
        total += w if v <= hi else zero
    return total


@building_block
def band_weight(p, lo, hi, unit):
    """The total weight of the values of ``p`` in ``[lo, hi]``, as float64, summed
    block-wise as :func:`inverse_cdf` adds it up: their mass (``unit`` None) or number."""
    total = 0.0
    for start in range(0, p.size, BLOCK):
        total += np.float64(_block_band(p[start:min(start + BLOCK, p.size)], lo, hi, unit))
    return total


@building_block
def band_mass(p, lo, hi):
    """The mass of the values of ``p`` in ``[lo, hi]``, as float64."""
    return band_weight(p, lo, hi, None)


@building_block
def band_count(p, lo, hi):
    """How many values of ``p`` lie in ``[lo, hi]``, as float64."""
    return band_weight(p, lo, hi, cast_like(p, 1.0))


@building_block
def inverse_cdf(p, lo, hi, target):
    """The first index where the running mass of the values of ``p`` in ``[lo, hi]``, in index
    order, exceeds ``target``: block masses first (the sums of :func:`band_mass`), then element
    by element inside the block that crosses. Where rounding leaves the target unreached, the
    last value in ``[lo, hi]`` of that block (or of the row)."""
    cumulative = 0.0
    for start in range(0, p.size, BLOCK):
        block = p[start:min(start + BLOCK, p.size)]
        w = np.float64(_block_band(block, lo, hi, None))
        if w > 0.0 and cumulative + w > target:
            last = -1
            for j in range(block.size):
                if block[j] >= lo and block[j] <= hi:
                    last = j
                    cumulative += np.float64(block[j])
                    if cumulative > target:
                        return start + j
            return start + last
        cumulative += w
    for j in range(p.size - 1, -1, -1):
        if p[j] >= lo and p[j] <= hi:
            return j
    return EMPTY_ROW  # not reached: the row's max has p = 1 in the band


# --- top-n-sigma and typical sampling -----------------------------------------------------------

@reduction
def _block_count_finite(block, sel):
    zero = 0.0
    total = 0.0
    for j in range(block.size):
        total += pick(sel, j, 1.0 if block[j] > -np.inf else zero, zero)
    return total


@reduction
def _block_deviation(block, sel, centre, square):
    # sum of (v - centre), or of its square, over the selected values above -inf, in float64
    # (a select on the loop-invariant ``square``, not ``** power``: pow does not vectorise)
    zero = 0.0
    one = 1.0
    total = 0.0
    for j in range(block.size):
        v = block[j]
        d = np.float64(v) - centre
        term = d * (d if square else one)
        total += pick(sel, j, term if v > -np.inf else zero, zero)
    return total


@building_block
def finite_std(row, sel, m):
    """The (population) standard deviation of the selected values of ``row`` above -inf
    (``m``, their maximum, is finite): two passes, the mean first."""
    count = 0.0
    total = 0.0
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        count += _block_count_finite(row[start:stop], row_of(sel, start, stop - start))
        total += _block_deviation(row[start:stop], row_of(sel, start, stop - start),
                                  np.float64(m), False)
    mean = np.float64(m) + total / count
    squares = 0.0
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        squares += _block_deviation(row[start:stop], row_of(sel, start, stop - start), mean,
                                    True)
    return np.sqrt(squares / count)


@reduction
def _block_p_log_p(p, row, t, m, inv_t):
    # sum of p * log(p) over the values p >= t, log(p) = (row - m) * inv_t: no log taken
    zero = cast_like(p, 0.0)
    total = zero
    for j in range(p.size):
        total += p[j] * ((row[j] - m) * inv_t) if p[j] >= t else zero
    return total


@building_block
def kept_entropy(p, row, t, m, inv_t, mass):
    """The entropy of the distribution ``p / mass`` over the values ``p >= t`` of the scratch
    row (``p = exp((row - m) * inv_t)``): ``log(mass) - sum(p log p) / mass``."""
    total = 0.0
    for start in range(0, p.size, BLOCK):
        stop = min(start + BLOCK, p.size)
        total += np.float64(_block_p_log_p(p[start:stop], row[start:stop], t, m, inv_t))
    return np.log(mass) - total / mass


@reduction
def _block_smallest_at_least(block, t):
    # the smallest value >= t (+inf if none), as a max of negated values: maximum vectorises
    m = cast_like(block, -np.inf)
    neg_inf = cast_like(block, -np.inf)
    for j in range(block.size):
        v = block[j]
        m = maximum(m, -v if v >= t else neg_inf)
    return m


@building_block
def smallest_at_least(p, t):
    """The smallest value of ``p`` at least ``t`` (+inf if none)."""
    m = cast_like(p, -np.inf)
    for start in range(0, p.size, BLOCK):
        m = maximum(m, _block_smallest_at_least(p[start:min(start + BLOCK, p.size)], t))
    return -m


@building_block
def band_edges(p, c, tau, t):
    """The values of ``p`` whose distance ``|log(p / c)|`` is at most ``tau``: the interval
    ``[max(t, c e**-tau), c e**tau]``, in the dtype of ``p``."""
    return max(t, cast_like(p, c * np.exp(-tau))), cast_like(p, c * np.exp(tau))


@building_block
def typical_band(p, row, t, top, m, inv_t, mass, typical_p, buffer):
    """Locally typical sampling (Meister et al. 2023; Hugging Face's ``TypicalLogitsWarper``)
    over the values of ``p`` in ``[t, top]`` (mass ``mass``): rank them by ``|-log q - H|``
    (``q = p / mass``, ``H`` its entropy) and keep the smallest set of the best ranked
    reaching ``typical_p`` of the mass, and every value tied with the last one. With
    ``c = mass e**-H``, that distance is ``|log(p / c)|``, so the kept values form an
    interval of ``p``: returned as ``(lo, hi)``.

    The interval's half-width ``tau`` (in log space) is bisected, a pass of masses and counts
    a step, until at most ``buffer.size`` values lie between the bounds; those are gathered,
    sorted, and walked in order of distance from both sides of ``c``."""
    target = typical_p * mass
    c = mass * np.exp(-kept_entropy(p, row, t, m, inv_t, mass))
    tau_lo = 0.0
    # the farthest kept value from c: the largest (1) or the smallest (not t: that may be far
    # below every value, e.g. the smallest subnormal)
    smallest = smallest_at_least(p, t)
    tau_hi = max(np.log(1.0 / c), np.log(c / np.float64(smallest)), 0.0) * 1.0000001 + 1e-300
    lo_lo, hi_lo = band_edges(p, c, tau_lo, t)
    w_lo = band_mass(p, lo_lo, hi_lo)
    if w_lo >= target:
        return lo_lo, hi_lo
    lo_hi, hi_hi = t, top  # every value kept so far: the band of tau_hi, whatever the rounding
    inside = band_count(p, lo_hi, hi_hi) - band_count(p, lo_lo, hi_lo)
    while inside > buffer.size:
        tau = 0.5 * (tau_lo + tau_hi)
        lo, hi = band_edges(p, c, tau, t)
        if tau <= tau_lo or tau >= tau_hi or (lo == lo_lo and hi == hi_lo) or (
                lo == lo_hi and hi == hi_hi):
            return lo_hi, hi_hi  # nothing left to split: the values between are tied
        w = band_mass(p, lo, hi)
        count = band_count(p, lo, hi)
        if w >= target:
            inside -= band_count(p, lo_hi, hi_hi) - count
            tau_hi, lo_hi, hi_hi = tau, lo, hi
        else:
            inside -= count - band_count(p, lo_lo, hi_lo)
            tau_lo, lo_lo, hi_lo, w_lo = tau, lo, hi, w
    # the values in the outer band but not the inner one, sorted: below c, then above
    n = 0
    for j in range(p.size):
        v = p[j]
        if v >= lo_hi and v <= hi_hi and not (v >= lo_lo and v <= hi_lo) and n < buffer.size:
            buffer[n] = v
            n += 1
    values = buffer[:n]
    values.sort()
    below = 0
    while below < n and np.float64(values[below]) < c:
        below += 1
    i, k = below - 1, below  # next below c (walking down), next above (walking up)
    total = w_lo
    lo, hi = lo_lo, hi_lo
    reached = -1.0
    while i >= 0 or k < n:
        d_below = np.log(c / np.float64(values[i])) if i >= 0 else np.inf
        d_above = np.log(np.float64(values[k]) / c) if k < n else np.inf
        d = min(d_below, d_above)
        if reached >= 0.0 and d > reached:
            break
        if d_below <= d_above:
            total += np.float64(values[i])
            lo = min(lo, values[i])
            i -= 1
        else:
            total += np.float64(values[k])
            hi = max(hi, values[k])
            k += 1
        if reached < 0.0 and total >= target:
            reached = d  # keep the values tied with this one too
    if reached < 0.0:
        return lo_hi, hi_hi  # rounding: the walk fell short of the outer band's mass
    return lo, hi


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


@building_block
def count_equal(row, sel, value):
    """How many selected elements of ``row`` equal ``value``."""
    count = 0
    for j in range(row.size):
        if pick(sel, j, row[j] == value, False):
            count += 1
    return count


# --- filters -----------------------------------------------------------------------------------

@building_block
def kept_threshold(p, std_row, std_sel, m, inv_t, params, top_k, buffer):
    """The smallest value of ``p`` kept by the filters top-n-sigma, min-p and top-k, in that
    order (the first two are thresholds relative to the maximum: they commute). ``p``: the
    scratch row (max 1, 0 for tokens left out), or the candidates of :func:`draw_pruned`;
    ``std_row``/``std_sel``: the row's logits and ``where``, for top-n-sigma."""
    one = cast_like(p, 1.0)
    above_all = key_value(order_key(one) + 1, p)
    smallest_positive = key_value(1, p)  # p = 0 (masked out, or underflow) is never drawn
    t = max(cast_like(p, params[MIN_P]), smallest_positive)
    n_sigma = params[N_SIGMA]
    if n_sigma < np.inf:  # keep row >= m - n_sigma * std(row)
        t = max(t, cast_like(p, np.exp(-n_sigma * finite_std(std_row, std_sel, m)
                                       * np.float64(inv_t))))
    if top_k > 0:
        count = weigh(p, t, above_all, one)[0]
        if count > top_k:
            t = threshold_search(p, one, np.float64(top_k), t, above_all, count, buffer)
    return t


@building_block
def mass_band(p, row, t, m, inv_t, params, buffer, kept_mass):
    """``(lo, hi, mass, t_p)``: the interval ``[lo, hi]`` of the values of ``p``
    (``p = exp((row - m) * inv_t)``) kept by top-p and then typical-p among those ``>= t``,
    the mass kept, and ``t_p`` the top-p threshold (``t`` without top-p). ``kept_mass``: the
    mass of the whole row's values ``>= t`` when ``p`` holds only candidates for top-p
    (:func:`draw_gathered`), or a negative number: the mass of ``p``'s own."""
    one = cast_like(p, 1.0)
    above_all = key_value(order_key(one) + 1, p)
    if params[TOP_P] < 1.0:
        mass, count = weigh(p, t, above_all, None)
        target = params[TOP_P] * (mass if kept_mass < 0.0 else kept_mass)
        if mass < target:
            return t, above_all, -1.0, t  # rounding left the candidates short: not pruned
        t = threshold_search(p, None, target, t, above_all, count, buffer)
    lo, hi = t, above_all
    if params[TYPICAL_P] < 1.0:
        lo, hi = typical_band(p, row, t, above_all, m, inv_t, band_mass(p, t, above_all),
                              params[TYPICAL_P], buffer)
    return lo, hi, band_mass(p, lo, hi), t


# --- candidates gathered from the logits ---------------------------------------------------------
# A small top-k keeps a few dozen tokens of a 128K row, and top-p rarely keeps more than a few
# thousand, yet the scratch row's way exponentiates, stores and bisects the whole row. Instead,
# after the max pass has taken the maxima of blocks of PRUNE_BLOCK logits, a bound ``tau`` on
# the logits is found below which no token can be kept, the logits ``>= tau`` are gathered
# (reading only the blocks whose maximum reaches tau) and the filters run on those candidates
# alone:
# - top-k: tau is the 2k-th largest block maximum (at least 2k logits are >= tau: the maxima);
# - top-p: with S the sum of the row's p (a read-only pass), a value c = (1 - top_p) S / (2 n)
#   leaves out less than (1 - top_p) S / 2 of mass below it, so the top-p threshold is above
#   c; tau is the logit where p falls below c, a depth log(c) T below the maximum. That
#   bound holds for any row, so it sits far below a usual nucleus (N(0, 3) logits of 128K
#   tokens at T = 0.8: 13% of the tokens are above it, 0.5% in the nucleus); tau is first
#   tried at fractions of that depth (TOP_P_DEPTHS), and a try that fails the checks below
#   (the candidates' mass falls short of top_p S, or the threshold lies too near tau) is
#   deepened.
# Exact: p = exp((x - m) / T) is non-decreasing in x up to the polynomial's error, so every
# logit below tau has p <= p(tau) (1 + PRUNE_MARGIN); when the threshold found among the
# candidates lies above that, no token outside them reaches it, and the kept set is the one
# the whole row gives (min-p and top-n-sigma thresholds apply to the candidates as to the row).
# Otherwise (ties or near-ties with tau, too many candidates, a top-k keeping nearly everything;
# for top-p, when its deepest try fails or a try gives up) the row takes the scratch row's way.
PRUNE_BLOCK = 128
PRUNE_CANDIDATES = 1024     # top-k's candidates at most
PRUNE_MIN_COLS = 4096       # shorter rows take the scratch row's way
PRUNE_MARGIN = 2.0 ** -20   # far above exp's relative error (~1.6e-7 in float32)
NOT_PRUNED = -3             # a pruned draw's answer when the row must take the other way
# Depths tried for top-p's bound, as fractions of the one that always holds (the last): a
# shallower bound gathers fewer candidates (128K N(0, 3) logits, T = 0.8: 874 at 0.625 of the
# depth, 16699 at the full depth) and a failed try costs one gather. A failed try that
# gathered over 1/TOP_P_GIVE_UP of the room ends the search: a deeper one would gather
# several times more, likely more than fit, and the scratch row's way is then the faster.
# (Measured on six temperatures and top-p: docs/performance.md, "Top-p with fewer
# candidates".)
TOP_P_DEPTHS = (0.625, 0.8125, 1.0)
TOP_P_GIVE_UP = 16


@building_block
def prune_blocks(n_cols, top_k, params):
    """How many PRUNE_BLOCK-blocks the maxima of a row of ``n_cols`` take when its filters
    can be found on the logits, else 0: a top-k of at most a quarter of the blocks (so that
    tau is far above most logits), or top-p without top-k, min-p or top-n-sigma."""
    n_blocks = (n_cols + PRUNE_BLOCK - 1) // PRUNE_BLOCK
    if n_cols < max(PRUNE_MIN_COLS, 2 * n_blocks + 2 * PRUNE_CANDIDATES):
        return 0
    if top_k > 0:
        return n_blocks if 4 * top_k <= n_blocks else 0
    if params[TOP_P] < 1.0 and params[MIN_P] == 0.0 and params[N_SIGMA] == np.inf:
        return n_blocks
    return 0


@reduction
def _four_block_maxima(blocks, maxima):
    """maxima[0:4] = the maxima of the four PRUNE_BLOCK-blocks of ``blocks``, taken together:
    four independent chains of NaN-propagating maxima instead of one chain a block, which
    waits on each compare-and-select. The same loop as row_max's quarters, on purpose not
    shared: a building block taking four slices or a runtime stride measured 10-40% slower
    in both places (LLVM vectorised it less well)."""
    m0 = cast_like(blocks, -np.inf)
    m1 = m0
    m2 = m0
    m3 = m0
    for j in range(PRUNE_BLOCK):
        m0 = maximum(m0, blocks[j])
        m1 = maximum(m1, blocks[PRUNE_BLOCK + j])
        m2 = maximum(m2, blocks[2 * PRUNE_BLOCK + j])
        m3 = maximum(m3, blocks[3 * PRUNE_BLOCK + j])
    maxima[0] = m0
    maxima[1] = m1
    maxima[2] = m2
    maxima[3] = m3


@building_block
def block_maxima(row, sel, maxima):
    """maxima[b] = the maximum of the selected values of block ``b`` (PRUNE_BLOCK elements);
    returns the row's maximum, as :func:`~fastsoftmax.kernels.numerics.row_max` does. Without
    a mask, whole blocks are taken four at a time (:func:`_four_block_maxima`)."""
    m = cast_like(row, -np.inf)
    first = 0
    if sel is None:
        first = min(maxima.size, row.size // PRUNE_BLOCK) // 4 * 4
        for b in range(0, first, 4):
            _four_block_maxima(row[b * PRUNE_BLOCK:(b + 4) * PRUNE_BLOCK], maxima[b:b + 4])
            m = maximum(m, maximum(maximum(maxima[b], maxima[b + 1]),
                                   maximum(maxima[b + 2], maxima[b + 3])))
    for b in range(first, maxima.size):
        start = b * PRUNE_BLOCK
        stop = min(start + PRUNE_BLOCK, row.size)
        v = row_max(row[start:stop], row_of(sel, start, stop - start))
        maxima[b] = v
        m = maximum(m, v)
    return m


@building_block
def kth_largest(a, k):
    """The ``k``-th largest value of ``a`` (1 <= k <= a.size, no NaN), by quickselect; ``a``
    is reordered."""
    lo = 0
    hi = a.size - 1
    target = k - 1
    while lo < hi:
        pivot = a[(lo + hi) // 2]
        i = lo
        j = hi
        while i <= j:  # Hoare partition, descending
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return a[target]


# The gather looks at GATHER_CHUNK logits at a time: a chunk none of whose logits reaches tau
# (one vectorised test) is skipped, and one that has some is stored without branches, every
# element written at the next free place and the count advanced by whether it is kept (a
# branch per element, taken at random, mispredicts every few elements). On a 128K row of
# N(0, 3) logits, interleaved timings: 13% of the tokens kept 278 -> 219 us, 0.2% kept 49 ->
# 27 us (docs/performance.md, "Top-p with fewer candidates").
GATHER_CHUNK = 16


@building_block
def any_at_least(chunk, sel, tau):
    """Whether a selected value of ``chunk`` is ``>= tau``."""
    hit = False
    for j in range(chunk.size):
        hit |= pick(sel, j, chunk[j] >= tau, False)
    return hit


@building_block
def gather_at_least(row, sel, maxima, tau, columns, values):
    """The selected values of ``row`` that are ``>= tau``, in column order, into ``values``
    and their columns into ``columns`` (``values`` at least as long), reading only the blocks
    whose maximum reaches ``tau``; their number, or -1 when they do not fit. The places after
    that number are left with whatever the branch-free stores wrote there."""
    n = 0
    for b in range(maxima.size):
        if not maxima[b] >= tau:
            continue
        stop = min((b + 1) * PRUNE_BLOCK, row.size)
        if columns.size - n < PRUNE_BLOCK:  # near the end of the room: one at a time
            for j in range(b * PRUNE_BLOCK, stop):
                if pick(sel, j, row[j] >= tau, False):
                    if n == columns.size:
                        return -1
                    columns[n] = j
                    values[n] = row[j]
                    n += 1
            continue
        for start in range(b * PRUNE_BLOCK, stop, GATHER_CHUNK):
            end = min(start + GATHER_CHUNK, stop)
            if any_at_least(row[start:end], row_of(sel, start, end - start), tau):
                for j in range(start, end):
                    columns[n] = j
                    values[n] = row[j]
                    n += pick(sel, j, row[j] >= tau, False)
    return n


@building_block
def outside_bound(tau, m, scale):
    """The largest p a token below the candidates' bound ``tau`` may have, float64."""
    return np.float64(exp_shifted(tau, m, scale)) * (1.0 + PRUNE_MARGIN)


@building_block
def draw_pruned(row, sel, p, maxima, columns, buffer, params, top_k, mode, tokens, values, m,
                scale, ahead):
    """:func:`draw_row` for a row whose filters are found among candidates gathered from its
    logits (see PRUNE_BLOCK), or ``(NOT_PRUNED, nan)``. ``maxima``: the row's block maxima,
    the start of the scratch row ``p``, whose rest holds the candidates."""
    n_blocks = maxima.size
    if top_k > 0:
        work = p[n_blocks:2 * n_blocks]
        work[:] = maxima
        # the 2k-th largest maximum, not the k-th: when the k largest logits lie in k
        # different blocks, the k-th maximum is the k-th logit itself, and the check in
        # draw_gathered would send the row the other way
        tau = kth_largest(work, min(2 * top_k, n_blocks))
        logits = p[2 * n_blocks:2 * n_blocks + PRUNE_CANDIDATES]
        n = gather_at_least(row, sel, maxima, tau, columns[:PRUNE_CANDIDATES], logits)
        if n < 0:
            return NOT_PRUNED, np.nan
        return draw_gathered(row, sel, p[2 * n_blocks + PRUNE_CANDIDATES:], logits[:n],
                             columns, buffer, params, top_k, mode, tokens, values, m, scale,
                             tau, -1.0)
    kept_mass = sum_exp(row, sel, m, scale, ahead)
    # the distance below the maximum, in logits, where p falls below the bound c
    depth = np.log(0.5 * (1.0 - params[TOP_P]) * kept_mass / row.size) / params[INV_T]
    room = min(columns.size, (p.size - 2 * n_blocks) // 2)
    logits = p[2 * n_blocks:2 * n_blocks + room]
    for step in TOP_P_DEPTHS:
        tau = cast_like(row, np.float64(m) + step * depth)
        n = gather_at_least(row, sel, maxima, tau, columns[:room], logits)
        if n < 0:
            break  # too many candidates: a deeper bound would gather more
        token, logprob = draw_gathered(row, sel, p[2 * n_blocks + room:], logits[:n], columns,
                                       buffer, params, top_k, mode, tokens, values, m, scale,
                                       tau, kept_mass)
        if token != NOT_PRUNED:
            return token, logprob
        if TOP_P_GIVE_UP * n > room:
            break  # the next try would gather several times more: the scratch row's way
    return NOT_PRUNED, np.nan


@building_block
def draw_gathered(row, sel, probs, logits, columns, buffer, params, top_k, mode, tokens,
                  values, m, scale, tau, kept_mass):
    """The draw of :func:`draw_pruned` from the candidates ``logits`` (the row's logits
    ``>= tau``, their columns in ``columns``; ``probs`` room for their p), or
    ``(NOT_PRUNED, nan)`` when a token below ``tau`` could be kept: the threshold found among
    the candidates is not above the largest p below them, or their mass falls short of top-p's
    (``kept_mass``: the row's, negative for top-k)."""
    n = logits.size
    probs = probs[:n]
    for i in range(n):
        probs[i] = exp_shifted(logits[i], m, scale)
    t = kept_threshold(probs, row, sel, m, scale, params, top_k, buffer)
    outside = outside_bound(tau, m, scale)
    if top_k > 0 and not np.float64(t) > outside:
        return NOT_PRUNED, np.nan  # a token outside the candidates may reach the threshold
    lo, hi, mass, t_p = mass_band(probs, logits, t, m, scale, params, buffer, kept_mass)
    if mass < 0.0 or (top_k == 0 and not np.float64(t_p) > outside):
        return NOT_PRUNED, np.nan
    token = columns[inverse_cdf(probs, lo, hi, params[UNIFORM] * mass)]
    log_mass = np.log(mass)
    inv_t = params[INV_T]
    logprob = (np.float64(row[token]) - np.float64(m)) * inv_t - log_mass
    if mode == PROCESSED:
        found = top_between(probs, None, lo, hi, tokens, values)
        for i in range(found):
            tokens[i] = columns[tokens[i]]
            values[i] = (np.float64(row[tokens[i]]) - np.float64(m)) * inv_t - log_mass
        fill_top(tokens, values, found, row.size)
    return token, logprob


# --- the logits a row is drawn from: bias and penalties -------------------------------------------

@building_block
def apply_edits(v, bias_tokens, bias_values, b0, b1, history, h0, h1, counts, params):
    """Edit ``v``, the row's logits in a scratch row (the caller's logits are never written):
    add the biases of ``bias_tokens[b0:b1]`` (-inf: the logit becomes -inf), then penalise
    each distinct token of ``history[h0:h1]`` once, as vLLM does: repetition (CTRL: a
    positive logit divided by the penalty, another multiplied), then the frequency penalty
    times its count and the presence penalty subtracted. Each edit is computed in float64
    and rounded once. ``counts``: zeros of the row's length, left zero."""
    for i in range(b0, b1):
        j = bias_tokens[i]
        bias = bias_values[i]
        # -inf bans the token whatever its logit (+inf + -inf would be NaN: an error)
        v[j] = cast_like(v, np.float64(v[j]) + bias if bias > -np.inf else bias)
    repetition = params[REPETITION]
    presence = params[PRESENCE]
    frequency = params[FREQUENCY]
    if h1 == h0 or (repetition == 1.0 and presence == 0.0 and frequency == 0.0):
        return
    for i in range(h0, h1):
        counts[history[i]] += 1
    for i in range(h0, h1):
        j = history[i]
        c = counts[j]
        if c:
            counts[j] = 0
            value = np.float64(v[j])
            if repetition != 1.0:
                value = value / repetition if value > 0.0 else value * repetition
            value = value - frequency * c
            value = value - presence
            v[j] = cast_like(v, value)


@building_block
def edited(b0, b1, h0, h1, params):
    """Whether a row's logits are edited: it has biases, or a history and a penalty."""
    return b1 > b0 or (h1 > h0 and (params[REPETITION] != 1.0 or params[PRESENCE] != 0.0
                                    or params[FREQUENCY] != 0.0))


# --- log-probabilities ---------------------------------------------------------------------------

@building_block
def top_between(vals, sel, lo, hi, tokens, values):
    """The ``tokens.size`` largest selected values of ``vals`` in ``[lo, hi]`` and above -inf,
    largest first, ties to the lower index: their indices into ``tokens`` and values (float64)
    into ``values``; returns how many were found. A block whose maximum cannot enter the full
    list is skipped after one vectorised max (of all its selected values: a bound)."""
    n = tokens.size
    found = 0
    if n == 0:
        return found
    for start in range(0, vals.size, BLOCK):
        stop = min(start + BLOCK, vals.size)
        block = vals[start:stop]
        bsel = row_of(sel, start, stop - start)
        if found == n and not np.float64(row_max(block, bsel)) > values[n - 1]:
            continue
        for j in range(block.size):
            v = block[j]
            if pick(bsel, j, v >= lo and v <= hi and v > -np.inf, False):
                f = np.float64(v)
                if found < n:
                    i = found
                    found += 1
                elif f > values[n - 1]:
                    i = n - 1
                else:
                    continue
                while i > 0 and values[i - 1] < f:  # after equal values: lower index first
                    tokens[i] = tokens[i - 1]
                    values[i] = values[i - 1]
                    i -= 1
                tokens[i] = start + j
                values[i] = f
    return found


@building_block
def fill_top(tokens, values, found, n_cols):
    """After ``found`` ranked tokens, the lowest indices not among them, at -inf (every other
    token's log-probability: ties go to the lower index)."""
    j = 0
    for i in range(found, tokens.size):
        while j < n_cols:
            member = False
            for k in range(found):
                if tokens[k] == j:
                    member = True
                    break
            if not member:
                break
            j += 1
        tokens[i] = j
        values[i] = -np.inf
        j += 1


@building_block
def raw_logprobs(row, sel, tokens, values):
    """For the raw logits of a row: ``(max, log of its sum of exponentials)``, and its top
    tokens ranked into ``tokens``/``values`` as log-probabilities. A row holding +inf is the
    limit of the softmax: its +inf tokens share the probability (log = -log(count))."""
    m = row_max(row, sel)
    if m == np.inf:
        found = top_between(row, sel, m, m, tokens, values)
        log_s = np.log(np.float64(count_equal(row, sel, m)))
        for i in range(found):
            values[i] = -log_s
    else:
        log_s = np.log(sum_exp(row, sel, m, None, row[:0]))
        found = top_between(row, sel, -np.inf, np.inf, tokens, values)
        for i in range(found):
            values[i] = (values[i] - np.float64(m)) - log_s
    fill_top(tokens, values, found, row.size)
    return m, log_s


@building_block
def raw_logprob_of(value, m, log_s):
    """The raw log-probability of a token of logit ``value`` (see :func:`raw_logprobs`)."""
    if m == np.inf:
        return -log_s if value == np.inf else -np.inf
    return (np.float64(value) - np.float64(m)) - log_s


# --- one row -----------------------------------------------------------------------------------
# The per-row parameters, columns of a float64 array of shape (rows, N_PARAMS) filled by the
# argument layer (neutral values switch a filter or penalty off).
INV_T, MIN_P, TOP_P, TYPICAL_P, N_SIGMA, REPETITION, PRESENCE, FREQUENCY, UNIFORM = range(9)
N_PARAMS = 9
# What a call returns besides the tokens.
NO_LOGPROBS, RAW, PROCESSED = 0, 1, 2


@building_block
def draw_row(row, sel, p, columns, buffer, params, top_k, mode, tokens, values, ahead):
    """The token drawn from the logits ``row`` (already edited), or a negative code; with
    ``mode`` PROCESSED, the log-probabilities of the distribution it is drawn from: the top
    tokens into ``tokens``/``values``, and ``(token, its log-probability)`` returned."""
    n_blocks = prune_blocks(row.size, top_k, params)
    maxima = p[:n_blocks]
    m = block_maxima(row, sel, maxima) if n_blocks else row_max(row, sel)
    code = unsampleable(m)
    if code:
        return code, np.nan
    inv_t = params[INV_T]
    u = params[UNIFORM]
    if m == np.inf or inv_t == 0.0:
        if inv_t == 0.0:
            token = first_equal(row, sel, m)
            logprob = 0.0
            found = 0
            if mode == PROCESSED and tokens.size:
                tokens[0] = token
                values[0] = 0.0
                found = 1
        else:
            token = uniform_among_inf(row, sel, u)
            logprob = -np.log(np.float64(count_equal(row, sel, m)))
            found = top_between(row, sel, m, m, tokens, values) if mode == PROCESSED else 0
            for i in range(found):
                values[i] = logprob
        if mode == PROCESSED:
            fill_top(tokens, values, found, row.size)
        return token, logprob
    scale = cast_like(p, inv_t)
    if n_blocks:
        token, logprob = draw_pruned(row, sel, p, maxima, columns, buffer, params, top_k, mode,
                                     tokens, values, m, scale, ahead)
        if token != NOT_PRUNED:
            return token, logprob
    exp_store_sum(row, sel, m, scale, p, ahead)
    lo, hi, mass, _ = mass_band(p, row, kept_threshold(p, row, sel, m, scale, params, top_k,
                                                        buffer), m, scale, params, buffer, -1.0)
    token = inverse_cdf(p, lo, hi, u * mass)
    log_mass = np.log(mass)
    logprob = (np.float64(row[token]) - np.float64(m)) * inv_t - log_mass
    if mode == PROCESSED:
        found = top_between(p, None, lo, hi, tokens, values)
        for i in range(found):
            values[i] = (np.float64(row[tokens[i]]) - np.float64(m)) * inv_t - log_mass
        fill_top(tokens, values, found, row.size)
    return token, logprob


@building_block
def sample_row(src, sel, values_row, p, columns, buffer, counts, params, top_k, history, h0, h1,
               bias_tokens, bias_values, b0, b1, mode, tokens, values, ahead):
    """``(token or code, log-probability)`` of one row of the caller's logits ``src``: edited
    in the scratch row ``values_row`` when it has biases or penalties (the raw log-probabilities
    taken first), else read where it is."""
    raw_m = 0.0
    raw_log_s = 0.0
    if edited(b0, b1, h0, h1, params):
        edits = load_copy(src, values_row)
        if mode == RAW:
            raw_m, raw_log_s = raw_logprobs(edits, sel, tokens, values)
        apply_edits(edits, bias_tokens, bias_values, b0, b1, history, h0, h1, counts, params)
        token, logprob = draw_row(edits, sel, p, columns, buffer, params, top_k, mode, tokens,
                                  values, ahead)
    else:
        row = load(src, values_row)
        if mode == RAW:
            raw_m, raw_log_s = raw_logprobs(row, sel, tokens, values)
        token, logprob = draw_row(row, sel, p, columns, buffer, params, top_k, mode, tokens,
                                  values, ahead)
    if mode == RAW and token >= 0:
        logprob = raw_logprob_of(load(src[token:token + 1], buffer)[0], raw_m, raw_log_s)
    return token, logprob


# --- the kernel --------------------------------------------------------------------------------
# Layout, tasks and dtypes as in kernels/softmax.py.

@kernel_pair
def sample_rows(x, x_stride, mask, mask_stride, n_rows, n_cols, params, top_k, history,
                history_bounds, bias_tokens, bias_values, bias_bounds, has_history, mode, out,
                logprobs, top_tokens, top_values, n_tasks):
    """out[r] = a token drawn for row r (``params[r]``: its temperature, filters, penalties
    and uniform number; ``top_k[r]``, 0 for none), or a negative code; with ``mode`` RAW or
    PROCESSED, ``logprobs[r]`` its log-probability and ``top_tokens``/``top_values`` (rows
    of ``n_top`` values, flat) the row's most likely tokens. The edits of row r: the tokens
    ``history[history_bounds[r, 0]:history_bounds[r, 1]]`` and the biases
    ``bias_tokens/bias_values[bias_bounds[r, 0]:bias_bounds[r, 1]]``.

    Each task has its scratch: a row of edited logits, the probabilities ``p`` of its current
    row and the candidates at the end of a search (compute type), and token counts (when
    some row has a history).
    """
    n_top = top_tokens.size // max(n_rows, 1)
    for task in prange(n_tasks):
        scratch = compute_buffer(x, 2 * n_cols + GATHER)
        counts = np.zeros(n_cols if has_history else 0, np.int32)
        columns = np.empty(max(PRUNE_CANDIDATES, n_cols // 2), np.int64)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            token, logprob = sample_row(
                x[r * x_stride:r * x_stride + n_cols], row_of(mask, r * mask_stride, n_cols),
                scratch[:n_cols], scratch[n_cols:2 * n_cols], columns, scratch[2 * n_cols:],
                counts, params[r], top_k[r], history, history_bounds[r, 0], history_bounds[r, 1],
                bias_tokens, bias_values, bias_bounds[r, 0], bias_bounds[r, 1], mode,
                top_tokens[r * n_top:(r + 1) * n_top], top_values[r * n_top:(r + 1) * n_top],
                next_row(x, r, n_rows, x_stride, n_cols))
            out[r] = token
            if mode:
                logprobs[r] = logprob
