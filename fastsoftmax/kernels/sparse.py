"""Row kernels of the sparse family: α-entmax (sparsemax at α = 2, 1.5-entmax, any α >= 1 by
bisection), its backward pass and its Fenchel-Young losses.

Layout, tasks and dtypes as in :mod:`fastsoftmax.kernels.softmax`. The α-entmax of a row is
``p = max(0, (α - 1) * (x - max) - τ) ** (1 / (α - 1))`` with the threshold τ at which ``p``
sums to 1; ``α`` comes per row (``alpha[r * alpha_stride]``; a stride of 0 shares one).

No row is sorted. τ lies in [-1, 0) (in units of ``(α - 1) * (x - max)``), so only elements
above ``max - 1 / (α - 1)`` can be in the support: one pass gathers these candidates (values
in float64, and their columns), and the search for τ reads the candidates alone, dropping
those at or below its lower bound as it rises. A row is then written as zeros, and the
support scattered into it. Rows of logits usually have a handful of candidates, so the cost
is the max pass, the gathering pass and the zeroing pass.

``n_iter``: ``EXACT`` (0) finds τ exactly, for α = 2 and α = 1.5 (``τ`` has a closed form once
the support is known: bisection over the candidates stops as soon as no candidate lies
between its bounds); otherwise ``n_iter`` halvings of the entmax package's bisection and a
renormalisation, for any α. α = 1 is softmax (its rows take softmax's own passes).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import building_block, kernel_pair
from .numerics import (cast_like, cross_entropy_grad_store, fill, next_row, pick, row_dot,
                       row_max, row_of, row_or, row_sum, softmax_grad_store, subtract_at,
                       sum_exp)
from .rows import (backward_row, commit, compute_buffer, load_max, result_row,
                   result_target, row_buffer, task_rows)
from .softmax import softmax_row

EXACT = 0  # n_iter for the exact threshold (α = 2 or 1.5)
# Halvings of [-1, 0) before the bounds of the exact search are adjacent float64 numbers:
# τ <= -(1/n) ** (α - 1), so 53 bits of mantissa and log2(n) of exponent suffice.
MAX_HALVINGS = 128


# --- the threshold ------------------------------------------------------------------------------

@building_block
def tsallis_p(v, power):
    """``max(v, 0) ** power`` (float64), exactly for the powers 1 and 2."""
    if not v > 0.0:
        return 0.0
    if power == 1.0:
        return v
    if power == 2.0:
        return v * v
    return v ** power


@building_block
def count_selected(sel, n):
    """How many of the ``n`` elements of a row ``sel`` selects (all for None)."""
    count = 0
    for j in range(n):
        count += pick(sel, j, 1, 0)
    return count


@building_block
def candidate_buffers(n):
    """A task's scratch for the candidates of rows of ``n``: their values (float64) and their
    columns."""
    return np.empty(n, np.float64), np.empty(n, np.int64)


# In long rows, blocks whose maximum is not a candidate are skipped whole: in rows of logits
# the candidates are a few elements near the maximum, so the gathering pass is then mostly a
# vectorised block max rather than a store of every element. Measured (docs/performance.md,
# "Sparse family"): 256x32000 sparsemax 2.06x -> 1.03x the time of softmax; on 1000-column
# rows the block maxima cost more than they save (entmax15 2.1x -> 2.6x), so short rows
# store every element in one loop as before.
CANDIDATE_BLOCK = 128
CANDIDATE_SKIP_MIN_COLS = 4096


@building_block
def gather_candidates(row, sel, m, scale, cand, index):
    """Write the selected ``z = scale * (row[j] - m) > -1`` to ``cand`` (float64) and their
    columns to ``index``; return how many. ``z`` grows with ``row[j]`` in floating point too,
    so a block whose maximum gives ``z <= -1`` holds none."""
    m64 = np.float64(m)
    if row.size < CANDIDATE_SKIP_MIN_COLS:
        return gather_range(row, sel, m64, scale, cand, index, 0, row.size, 0)
    k = 0
    for start in range(0, row.size, CANDIDATE_BLOCK):
        stop = min(start + CANDIDATE_BLOCK, row.size)
        top = row_max(row[start:stop], row_of(sel, start, stop - start))
        if not (np.float64(top) - m64) * scale <= -1.0:
            k = gather_range(row, sel, m64, scale, cand, index, start, stop, k)
    return k


@building_block
def gather_range(row, sel, m64, scale, cand, index, start, stop, k):
    """:func:`gather_candidates` over ``row[start:stop]``, after ``k`` candidates; branch-free:
    every element is stored, and the count moves on only for a candidate."""
    for j in range(start, stop):
        z = (np.float64(row[j]) - m64) * scale
        cand[k] = z
        index[k] = j
        k += pick(sel, j, z > -1.0, False)
    return k


@building_block
def probe(cand, index, k, lo, hi, tau, power):
    """One pass of a threshold search over ``cand[:k]``: keep the candidates above ``lo``
    (compacted to the front, with their columns); return ``(kept, how many lie strictly
    between lo and hi, sum(max(cand - tau, 0) ** power))``."""
    kept = 0
    between = 0
    total = 0.0
    for i in range(k):
        c = cand[i]
        cand[kept] = c
        index[kept] = index[i]
        kept += c > lo
        between += (c > lo) & (c < hi)
        total += tsallis_p(c - tau, power)
    return kept, between, total


@building_block
def exact_threshold(cand, index, k, power, hi):
    """``(τ, k)``: the exact root of ``sum(max(cand - τ, 0) ** power) = 1`` for power 1
    (sparsemax) or 2 (1.5-entmax), τ below ``hi``; the candidates above the final lower bound
    are left in ``cand[:k]`` (the support, and ties at τ).

    Bisection until no candidate lies strictly between the bounds: the support is then the
    candidates above the lower bound, and τ its closed form (``(sum - 1) / n``, or ``mean -
    sqrt((1 - sum of squared deviations) / n)``). A candidate equal to τ adds 0 to either."""
    lo = -1.0
    for _ in range(MAX_HALVINGS):
        mid = 0.5 * (lo + hi)
        k, between, total = probe(cand, index, k, lo, hi, mid, power)
        if between == 0 or not lo < mid < hi:
            break
        if total >= 1.0:
            lo = mid
        else:
            hi = mid
    n = 0
    total = 0.0
    for i in range(k):
        if cand[i] > lo:
            n += 1
            total += cand[i]
    if power == 1.0:
        return (total - 1.0) / n, k
    mean = total / n
    squares = 0.0
    for i in range(k):
        if cand[i] > lo:
            squares += (cand[i] - mean) * (cand[i] - mean)
    return mean - math.sqrt(max((1.0 - squares) / n, 0.0)), k


@building_block
def bisect_threshold(cand, index, k, power, hi, n_iter):
    """``(τ, k)`` after ``n_iter`` halvings of [-1, hi], as the entmax package's
    ``entmax_bisect``: τ is the last midpoint tried; the lower bound moves up to a midpoint
    where ``sum(max(cand - mid, 0) ** power) >= 1``. Candidates at or below the lower bound,
    which no later midpoint reaches, leave ``cand[:k]``."""
    lo = -1.0
    step = hi - lo
    tau = lo
    for _ in range(n_iter):
        step /= 2.0
        tau = lo + step
        k, _, total = probe(cand, index, k, lo, hi, tau, power)
        if total >= 1.0:
            lo = tau
    return tau, k


@building_block
def probability_sum(cand, k, tau, power):
    """sum(max(cand[:k] - tau, 0) ** power)."""
    total = 0.0
    for i in range(k):
        total += tsallis_p(cand[i] - tau, power)
    return total


@building_block
def solve_row(row, sel, m, alpha, n_iter, cand, index):
    """``(k, τ, power, norm)`` of the α-entmax of a row with a finite max ``m``: the
    probabilities are ``tsallis_p(cand[i] - τ, power) * norm`` at columns ``index[i]``,
    ``i < k``, and 0 elsewhere."""
    power = 1.0 / (alpha - 1.0)
    k = gather_candidates(row, sel, m, alpha - 1.0, cand, index)
    hi = -((1.0 / count_selected(sel, row.size)) ** (alpha - 1.0))
    if n_iter == EXACT:
        tau, k = exact_threshold(cand, index, k, power, hi)
        return k, tau, power, 1.0
    tau, k = bisect_threshold(cand, index, k, power, hi, n_iter)
    return k, tau, power, 1.0 / probability_sum(cand, k, tau, power)


@building_block
def scatter_probabilities(dst, cand, index, k, tau, power, factor):
    """dst[index[i]] = factor * tsallis_p(cand[i] - tau, power), ``i < k``."""
    for i in range(k):
        dst[index[i]] = factor * tsallis_p(cand[i] - tau, power)


@building_block
def fill_selected(dst, sel, value):
    """dst[j] = value where selected, 0 elsewhere."""
    zero = cast_like(dst, 0.0)
    for j in range(dst.size):
        dst[j] = pick(sel, j, value, zero)


# --- the forward pass ---------------------------------------------------------------------------

@kernel_pair
def entmax_rows(x, x_stride, mask, mask_stride, out, out_stride, n_rows, n_cols, alpha,
                alpha_stride, n_iter, n_tasks):
    """out[r] = α-entmax of x[r] (softmax for α = 1); NaN where selected in a row whose max is
    not finite (a NaN, a +inf, only -inf), 0 where not selected."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        cand, index = candidate_buffers(n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            src = x[r * x_stride:r * x_stride + n_cols]
            sel = row_of(mask, r * mask_stride, n_cols)
            dst = row_or(out, r * out_stride, n_cols, src)
            a = alpha[r * alpha_stride]
            row, m = load_max(src, sel, buf)
            if a == 1.0:
                softmax_row(src, row, sel, m, None, row_of(out, r * out_stride, n_cols), dst,
                            next_row(x, r, n_rows, x_stride, n_cols))
                continue
            target = result_row(src, row, dst)
            if math.isfinite(m):
                k, tau, power, norm = solve_row(row, sel, m, a, n_iter, cand, index)
                fill(target, 0.0)
                scatter_probabilities(target, cand, index, k, tau, power, norm)
            else:
                fill_selected(target, sel, cast_like(target, np.nan))
            commit(src, row, dst)


# --- the backward pass --------------------------------------------------------------------------

@building_block
def entmax_weight(y, alpha):
    """``y ** (2 - α)`` for y > 0 (the weights of the entmax Jacobian), 0 off the support, NaN
    for NaN; float64."""
    if not y > 0:
        return np.float64(y) if y != y else 0.0
    if alpha == 2.0:
        return 1.0
    if alpha == 1.5:
        return math.sqrt(np.float64(y))
    return np.float64(y) ** (2.0 - alpha)


@building_block
def entmax_weights(y, alpha, w):
    """w = entmax_weight(y, α), in the dtype of ``w``."""
    for j in range(y.size):
        w[j] = entmax_weight(y[j], alpha)


@kernel_pair
def entmax_backward_rows(g, g_stride, y, y_stride, out, out_stride, n_rows, n_cols, alpha,
                         alpha_stride, n_tasks):
    """out[r] = w * (g[r] - sum(g[r] * w) / sum(w)), w = y[r] ** (2 - α) on the support of
    y[r] and 0 off it (sparsemax, α = 2: g minus its mean over the support; α = 1: softmax's
    backward pass). A row with an empty support gets 0."""
    for task in prange(n_tasks):
        g_buf = row_buffer(g, n_cols)
        y_buf = row_buffer(y, n_cols)
        w = compute_buffer(y, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            grow, ysrc, yrow, dst = backward_row(g, g_stride, y, y_stride, out, out_stride, r,
                                                 n_cols, g_buf, y_buf)
            entmax_weights(yrow, alpha[r * alpha_stride], w)
            weight = row_sum(w)
            mean = row_dot(grow, w) / weight if weight > 0.0 else 0.0
            softmax_grad_store(grow, w, cast_like(w, mean), result_target(ysrc, dst))
            commit(ysrc, w, dst)


# --- the Fenchel-Young losses -------------------------------------------------------------------

@building_block
def row_loss(row, target, m, alpha, n_iter, cand, index):
    """``(loss, k, τ, power, norm)`` of one row of logits with its max ``m``: the
    Fenchel-Young loss ``(1 - sum(p ** α)) / (α (α - 1)) + p . (x - m) - (x[target] - m)``
    with ``p`` as :func:`solve_row` describes it. For α = 1 the cross-entropy, and ``norm``
    1 / sum(exp(x - m)); NaN for a max that is not finite."""
    picked = np.float64(m) - np.float64(row[target])
    if alpha == 1.0:
        s = sum_exp(row, None, m, None, row[:0])
        return math.log(s) + picked, 0, 0.0, 1.0, 1.0 / s
    if not math.isfinite(m):
        return np.nan, 0, 0.0, 1.0, np.nan
    k, tau, power, norm = solve_row(row, None, m, alpha, n_iter, cand, index)
    powers = 0.0
    dot = 0.0
    for i in range(k):
        p = norm * tsallis_p(cand[i] - tau, power)
        powers += p ** alpha
        dot += p * cand[i]
    loss = (1.0 - powers) / (alpha * (alpha - 1.0)) + dot / (alpha - 1.0) + picked
    return loss, k, tau, power, norm


@kernel_pair
def entmax_loss_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, alpha, alpha_stride,
                     n_iter, losses, n_tasks):
    """losses[r] = Fenchel-Young loss of row r (0 for an ignored row)."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        cand, index = candidate_buffers(n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            target = targets[r]
            if target == ignore_index:
                losses[r] = 0.0
                continue
            row, m = load_max(x[r * x_stride:r * x_stride + n_cols], None, buf)
            losses[r] = row_loss(row, target, m, alpha[r * alpha_stride], n_iter, cand,
                                 index)[0]


@kernel_pair
def entmax_loss_grad_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, alpha,
                          alpha_stride, n_iter, scale, losses, grad, grad_stride, n_tasks):
    """losses as :func:`entmax_loss_rows`, and grad[r] = scale * (p - onehot(target)), the
    gradient of ``scale * losses[r]``. ``grad`` None writes it over the logits."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        cand, index = candidate_buffers(n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            src = x[r * x_stride:r * x_stride + n_cols]
            dst = row_or(grad, r * grad_stride, n_cols, src)
            target = targets[r]
            if target == ignore_index:
                losses[r] = 0.0
                fill(dst, 0)
                continue
            row, m = load_max(src, None, buf)
            a = alpha[r * alpha_stride]
            loss, k, tau, power, norm = row_loss(row, target, m, a, n_iter, cand, index)
            losses[r] = loss
            grad_row = result_row(src, row, dst)
            if a == 1.0:
                cross_entropy_grad_store(row, m, cast_like(row, 1.0), cast_like(row, norm),
                                         cast_like(row, scale), cast_like(row, 0.0),
                                         result_target(src, row_of(grad, r * grad_stride,
                                                                   n_cols)))
            else:
                fill(grad_row, 0.0 if math.isfinite(m) else np.nan)
                scatter_probabilities(grad_row, cand, index, k, tau, power, norm * scale)
            subtract_at(grad_row, target, cast_like(row, scale))
            commit(src, row, dst)
