"""Row kernels of the calibration family: per-row confidence statistics of the softmax, and the
negative log-likelihood of a temperature with its first two derivatives.

Layout, tasks and dtypes as in :mod:`fastsoftmax.kernels.softmax`: flat rows with a row
stride, ``prange`` over tasks of consecutive rows, one body for float32, float64 and
half-precision bits (:mod:`~fastsoftmax.kernels.rows`). ``inv_t`` is 1/temperature as a
float64, as in the cross-entropy kernels (:mod:`~fastsoftmax.kernels.grad`). Neither kernel
stores probabilities: a row is read from memory once (its max pass) and its other passes run
on it while it is in cache.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .grad import row_loss
from .jit import building_block, kernel_pair, reduction
from .numerics import (BLOCK, cast_like, exp_store_sum, exp_weight, maximum, next_row, pick,
                       prefetch_lines, row_max, row_of)
from .rows import compute_buffer, load_max, row_buffer, task_rows

# The label of a row whose softmax is not defined (a NaN, a +inf, nothing selected or all -inf)
NO_LABEL = -1


# Sums of exponentials go through exp_store_sum (kernels/numerics.py), which stores a block's
# exponentials and adds them in a read-only loop, and the weighted sums below read those
# stored exponentials: each reduction returns one number. A reduction returning several sums
# at once was compiled differently inlined (freshly compiled) and called (loaded from the
# disk cache), which changed the last bits of its sums between processes.

@reduction
def _block_weighted(e, block, m):
    # sum(e * (block - m)), e = 0 (and block - m perhaps -inf) counting for nothing
    acc = cast_like(block, 0.0)
    for j in range(block.size):
        acc += exp_weight(e[j], block[j] - m)
    return acc


@reduction
def _block_weighted_square(e, block, m):
    # sum(e * (block - m)**2), as _block_weighted
    acc = cast_like(block, 0.0)
    for j in range(block.size):
        acc += exp_weight(exp_weight(e[j], block[j] - m), block[j] - m)
    return acc


@building_block
def _first_max(row, sel, m):
    """The first selected index of the row's maximum ``m``: the first block whose max is m
    (by the vectorised max), then a scan of that block."""
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        if row_max(row[start:stop], row_of(sel, start, stop - start)) == m:
            for j in range(start, stop):
                if row[j] == m and pick(sel, j, True, False):
                    return j
    return -1


@building_block
def _runner_up(row, sel, label):
    """The largest selected value but the one at ``label`` (-inf if there is none): the
    second largest, equal to the largest when that is tied."""
    return maximum(row_max(row[:label], row_of(sel, 0, label)),
                   row_max(row[label + 1:], row_of(sel, label + 1, row.size - label - 1)))


@building_block
def exp_moments(row, sel, m, inv_t, scratch, ahead, second):
    """(sum(e), sum(e * d), sum(e * d**2)) as float64 over the selected elements of a row of
    finite max ``m``, with d = row - m, e = exp(d * inv_t): the moments of the row under its
    softmax, unnormalised (E[d] = sum(e * d) / sum(e)), block by block; the last 0 unless
    ``second``. ``scratch``: BLOCK values for a block's e."""
    s = 0.0
    s1 = 0.0
    s2 = 0.0
    for start in range(0, row.size, BLOCK):
        stop = min(start + BLOCK, row.size)
        prefetch_lines(ahead[start:stop])
        block = row[start:stop]
        e = scratch[:stop - start]
        s += exp_store_sum(block, row_of(sel, start, stop - start), m, inv_t, e, row[:0])
        s1 += np.float64(_block_weighted(e, block, m))
        if second:
            s2 += np.float64(_block_weighted_square(e, block, m))
    return s, s1, s2


@kernel_pair
def confidence_rows(x, x_stride, mask, mask_stride, n_rows, n_cols, inv_t, labels, probs,
                    margins, entropies, lses, n_tasks):
    """Per row of ``softmax(x * inv_t)``: labels[r] = first index of the max, probs[r] = its
    probability, margins[r] = it minus the second largest probability, entropies[r] = the
    entropy (natural log), lses[r] = logsumexp(x[r] * inv_t). A row whose softmax is NaN (a
    NaN, a +inf, nothing selected, all -inf) gets NO_LABEL, NaN statistics, and the logsumexp
    of the edge-case table (NaN, +inf, -inf)."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        scratch = compute_buffer(x, BLOCK)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            sel = row_of(mask, r * mask_stride, n_cols)
            row, m = load_max(x[r * x_stride:r * x_stride + n_cols], sel, buf)
            m64 = np.float64(m)
            if not math.isfinite(m64):
                labels[r] = NO_LABEL
                probs[r] = margins[r] = entropies[r] = np.nan
                lses[r] = m64
                continue
            s, s1, _ = exp_moments(row, sel, m, cast_like(row, inv_t), scratch,
                                   next_row(x, r, n_rows, x_stride, n_cols), False)
            label = _first_max(row, sel, m)
            labels[r] = label
            runner_up = np.float64(_runner_up(row, sel, label))
            log_s = math.log(s)
            probs[r] = 1.0 / s
            margins[r] = (1.0 - math.exp((runner_up - m64) * inv_t)) / s
            entropies[r] = max(log_s - inv_t * (s1 / s), 0.0)
            lses[r] = m64 * inv_t + log_s


@kernel_pair
def temperature_nll_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, inv_t, losses,
                         slopes, curvatures, n_tasks):
    """The cross-entropy of each row of ``softmax(x * u)`` (u = inv_t) and its first two
    derivatives in u: losses[r] = u * (m - x[t]) + log(s), slopes[r] = E[x] - x[t],
    curvatures[r] = Var[x] under the softmax (>= 0: the loss is convex in u). 0 for an
    ignored row. One read of the row (max pass), then one pass of exponentials."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        scratch = compute_buffer(x, BLOCK)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            target = targets[r]
            if target == ignore_index:
                losses[r] = slopes[r] = curvatures[r] = 0.0
                continue
            row, m = load_max(x[r * x_stride:r * x_stride + n_cols], None, buf)
            s, s1, s2 = exp_moments(row, None, m, cast_like(row, inv_t), scratch,
                                    next_row(x, r, n_rows, x_stride, n_cols), True)
            losses[r] = row_loss(row, target, m, s, inv_t, 0.0, n_cols)
            mean_d = s1 / s
            slopes[r] = mean_d + (np.float64(m) - np.float64(row[target]))
            curvatures[r] = max(s2 / s - mean_d * mean_d, 0.0)
