"""Row kernels of the backward passes and the fused cross-entropy.

Layout, tasks and dtypes as in :mod:`fastsoftmax.kernels.softmax`: flat buffers with a row
stride per array, ``prange`` over tasks of consecutive rows, one body for float32, float64 and
half-precision bits (:mod:`~fastsoftmax.kernels.rows`).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import overload

from .jit import NUMBA_OPTIONS, building_block, kernel_pair
from .numerics import (cap_slope, capped, cast_like, ce_grad_store, fill,
                       log_softmax_grad_store, row_dot, row_gap, row_sum,
                       softmax_grad_store, subtract_at, sum_exp, weight_of, weighted_sum)
from .rows import (backward_row, commit, compute_buffer, grad_target, load_max,
                   logsumexp_of, result_row, result_target, row_ahead, row_at, row_at_or,
                   row_buffer, task_rows)


@kernel_pair
def softmax_backward_rows(g, g_stride, y, y_stride, out, out_stride, n_rows, n_cols, n_tasks):
    """out[r] = y[r] * (g[r] - sum(g[r] * y[r]))."""
    for task in prange(n_tasks):
        g_buf = row_buffer(g, n_cols)
        y_buf = row_buffer(y, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            grow, ysrc, yrow, dst = backward_row(g, g_stride, y, y_stride, out, out_stride, r,
                                                 n_cols, g_buf, y_buf)
            softmax_grad_store(grow, yrow, cast_like(yrow, row_dot(grow, yrow)),
                               result_target(ysrc, dst))
            commit(ysrc, yrow, dst)


@kernel_pair
def log_softmax_backward_rows(g, g_stride, logp, logp_stride, out, out_stride, n_rows, n_cols,
                              n_tasks):
    """out[r] = g[r] - exp(logp[r]) * sum(g[r])."""
    for task in prange(n_tasks):
        g_buf = row_buffer(g, n_cols)
        logp_buf = row_buffer(logp, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            grow, lsrc, lrow, dst = backward_row(g, g_stride, logp, logp_stride, out,
                                                 out_stride, r, n_cols, g_buf, logp_buf)
            log_softmax_grad_store(grow, lrow, cast_like(lrow, row_sum(grow)),
                                   result_target(lsrc, dst))
            commit(lsrc, lrow, dst)


@building_block
def class_loss(row, target, m, log_s, inv_t, smoothing, w, w_total, p, n_cols):
    """``(loss, mass)`` of one row (scaled logits z = row * inv_t, max m of the row, log_s =
    log(sum(exp(z - m * inv_t)))) against the target distribution q = (1 - eps) * onehot +
    eps / C (or (1 - eps) * p + eps / C, ``p`` a row of probabilities), each class weighted by
    ``w`` (None: 1; ``w_total`` = sum(w), C without weights): sum(w * q * (lse - z)), PyTorch's
    weighted and smoothed cross-entropy. ``mass`` = w[target], or sum(w * p): the softmax's
    factor in the gradient besides the smoothing's.

    lse - v is taken as (m - v) * inv_t + log(s): next to a large max, log(s) would vanish
    from lse itself (1e30 tied logits have a loss of log 2, not 0)."""
    m64 = np.float64(m)
    if p is None:
        mass = weight_of(w, target)
        loss = (1.0 - smoothing) * (mass * ((m64 - np.float64(row[target])) * inv_t + log_s))
    else:
        mass = weighted_sum(p, w)
        loss = (1.0 - smoothing) * (row_gap(row, p, w, m) * inv_t + mass * log_s)
    if smoothing != 0.0:
        loss += smoothing * ((m64 - weighted_sum(row, w) / w_total) * inv_t + log_s) * (
            w_total / n_cols)
    return loss, mass


@building_block
def row_loss(row, target, m, s, inv_t, smoothing, n_cols):
    """Cross-entropy of one row without weights or probability targets (max m of the row, s =
    sum(exp(z - m * inv_t))): :func:`class_loss`."""
    return class_loss(row, target, m, math.log(s), inv_t, smoothing, None, n_cols, None,
                      n_cols)[0]


@kernel_pair
def cross_entropy_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, inv_t, smoothing,
                       w, w_total, p, p_stride, cap, losses, lses, read_ignored, n_tasks):
    """losses[r] = cross-entropy of row r (0 for an ignored row), lses[r] its logsumexp: reads
    the logits once. Options, None when off (compiled away): class weights ``w`` (``w_total``
    their sum, else C), rows of target probabilities ``p`` (then ``targets`` are all 0),
    ``cap`` = (cap, 1 / cap) of a soft cap. ``read_ignored``: the logsumexps of ignored rows
    are wanted too (else those rows are skipped, their lses left as they were; a flag, not a
    None ``lses``, so that the kernel compiles once for both). ``x`` (and ``p``) is flat rows,
    or a 3-D (N, C, D) array with classes on axis 1 (rows.row_at)."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        cap_buf = cap_buffer(x, n_cols, cap)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            target = targets[r]
            ignored = target == ignore_index
            losses[r] = 0.0
            if ignored and not read_ignored:
                continue
            row, m = load_max(row_at(x, x_stride, r, n_cols), None, buf)
            crow, cm = capped(row, m, cap, cap_buf)
            s = sum_exp(crow, None, cm, cast_like(crow, inv_t),
                        row_ahead(x, x_stride, r, n_rows, n_cols))
            log_s = math.log(s)
            lses[r] = logsumexp_of(np.float64(cm) * inv_t, log_s)
            if not ignored:
                losses[r] = class_loss(crow, target, cm, log_s, inv_t, smoothing, w, w_total,
                                       row_at(p, p_stride, r, n_cols), n_cols)[0]


@kernel_pair
def cross_entropy_grad_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, inv_t,
                            smoothing, w, w_total, p, p_stride, cap, scale, z_scale, losses,
                            lses, read_ignored, grad, grad_stride, n_tasks):
    """losses as :func:`cross_entropy_rows`, and grad[r] = d(scale * losses[r] + z_scale / 2 *
    lse[r]**2) / d(x[r]): with s = softmax(z), q the target distribution and w the weights,
    inv_t * (scale * (sum(w * q) * s - w * q) + z_scale * lse * s), times the soft cap's
    slope. ``grad`` None writes the gradient over the logits (in place)."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        cap_buf = cap_buffer(x, n_cols, cap)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            src = row_at(x, x_stride, r, n_cols)
            dst = row_at_or(grad, grad_stride, r, n_cols, src)
            target = targets[r]
            ignored = target == ignore_index
            losses[r] = 0.0
            if ignored and not read_ignored:
                fill(dst, 0)
                continue
            row, m = load_max(src, None, buf)
            crow, cm = capped(row, m, cap, cap_buf)
            s = sum_exp(crow, None, cm, cast_like(crow, inv_t),
                        row_ahead(x, x_stride, r, n_rows, n_cols))
            log_s = math.log(s)
            lse = logsumexp_of(np.float64(cm) * inv_t, log_s)
            lses[r] = lse
            if ignored:
                fill(dst, 0)
                continue
            prow = row_at(p, p_stride, r, n_cols)
            loss, mass = class_loss(crow, target, cm, log_s, inv_t, smoothing, w, w_total,
                                    prow, n_cols)
            losses[r] = loss
            factor = scale * inv_t
            a = factor * ((1.0 - smoothing) * mass + smoothing * (w_total / n_cols))
            if z_scale != 0.0:
                a += z_scale * lse * inv_t
            # the class-index target's own term, its slope read before the row is overwritten
            pull = class_pull(p, factor * (1.0 - smoothing) * weight_of(w, target),
                              cap_slope(1.0, np.float64(crow[target]), cap))
            ce_grad_store(crow, cm, cast_like(crow, inv_t), cast_like(crow, 1.0 / s),
                          cast_like(crow, a), cast_like(crow, factor * smoothing / n_cols),
                          cast_like(crow, factor * (1.0 - smoothing)), prow, w, cap,
                          grad_target(src, row_at(grad, grad_stride, r, n_cols), cap))
            subtract_at(result_row(src, crow, dst), target, cast_like(crow, pull))
            commit(src, crow, dst)


def cap_buffer(x, n, cap):
    """Scratch for a capped row (:func:`~fastsoftmax.kernels.numerics.capped`) of the rows of
    ``x``: nothing (an empty view) without a cap."""
    if cap is None:
        return x[:0]
    return compute_buffer(x, n)


def class_pull(p, value, slope):
    """What the gradient of a class-index target's own logit loses: ``value * slope``; 0 for
    probability targets (``p`` not None), whose terms are in every element's."""
    if p is None:
        return value * slope
    return 0.0


if not numba.config.DISABLE_JIT:

    @overload(cap_buffer, jit_options=NUMBA_OPTIONS)
    def _cap_buffer_overload(x, n, cap):
        if isinstance(cap, types.NoneType):
            return lambda x, n, cap: x[:0]
        return lambda x, n, cap: compute_buffer(x, n)

    @overload(class_pull, jit_options=NUMBA_OPTIONS)
    def _class_pull_overload(p, value, slope):
        if isinstance(p, types.NoneType):
            return lambda p, value, slope: value * slope
        return lambda p, value, slope: 0.0
