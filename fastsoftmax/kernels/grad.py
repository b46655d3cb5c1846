"""Row kernels of the backward passes and the fused cross-entropy.

Layout, tasks and dtypes as in :mod:`fastsoftmax.kernels.softmax`: flat buffers with a row
stride per array, ``prange`` over tasks of consecutive rows, one body for float32, float64 and
half-precision bits (:mod:`~fastsoftmax.kernels.rows`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import building_block, kernel_pair
from .numerics import (cast_like, cross_entropy_grad_store, fill, log_softmax_grad_store,
                       next_row, row_dot, row_of, row_or, row_sum, softmax_grad_store,
                       subtract_at, sum_exp)
from .rows import commit, load, load_max, result_row, result_target, row_buffer, task_rows


@kernel_pair
def softmax_backward_rows(g, g_stride, y, y_stride, out, out_stride, n_rows, n_cols, n_tasks):
    """out[r] = y[r] * (g[r] - sum(g[r] * y[r]))."""
    for task in prange(n_tasks):
        g_buf = row_buffer(g, n_cols)
        y_buf = row_buffer(y, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            grow = load(g[r * g_stride:r * g_stride + n_cols], g_buf)
            ysrc = y[r * y_stride:r * y_stride + n_cols]
            yrow = load(ysrc, y_buf)
            dst = out[r * out_stride:r * out_stride + n_cols]
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
            grow = load(g[r * g_stride:r * g_stride + n_cols], g_buf)
            lsrc = logp[r * logp_stride:r * logp_stride + n_cols]
            lrow = load(lsrc, logp_buf)
            dst = out[r * out_stride:r * out_stride + n_cols]
            log_softmax_grad_store(grow, lrow, cast_like(lrow, row_sum(grow)),
                                   result_target(lsrc, dst))
            commit(lsrc, lrow, dst)


@building_block
def row_loss(row, target, m, s, inv_t, smoothing, n_cols):
    """Cross-entropy of one row (scaled logits z = row * inv_t, max m of the row, s =
    sum(exp(z - m * inv_t))): (1 - eps) * (lse - z[target]) + eps * (lse - mean(z)), with
    lse - v taken as (m - v) * inv_t + log(s): next to a large max, log(s) would vanish from
    lse itself (1e30 tied logits have a loss of log 2, not 0)."""
    log_s = math.log(s)
    m64 = np.float64(m)
    loss = (1.0 - smoothing) * ((m64 - np.float64(row[target])) * inv_t + log_s)
    if smoothing != 0.0:
        loss += smoothing * ((m64 - row_sum(row) / n_cols) * inv_t + log_s)
    return loss


@kernel_pair
def cross_entropy_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, inv_t, smoothing,
                       losses, n_tasks):
    """losses[r] = cross-entropy of row r (0 for an ignored row): reads the logits once."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            target = targets[r]
            if target == ignore_index:
                losses[r] = 0.0
                continue
            row, m = load_max(x[r * x_stride:r * x_stride + n_cols], None, buf)
            s = sum_exp(row, None, m, cast_like(row, inv_t),
                        next_row(x, r, n_rows, x_stride, n_cols))
            losses[r] = row_loss(row, target, m, s, inv_t, smoothing, n_cols)


@kernel_pair
def cross_entropy_grad_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, inv_t,
                            smoothing, scale, losses, grad, grad_stride, n_tasks):
    """losses as :func:`cross_entropy_rows`, and grad[r] = d(scale * losses[r]) / d(x[r]):
    scale * inv_t * (softmax(z) - eps / C - (1 - eps) * onehot(target)). ``grad`` None
    writes the gradient over the logits (in place)."""
    for task in prange(n_tasks):
        buf = row_buffer(x, n_cols)
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
            s = sum_exp(row, None, m, cast_like(row, inv_t),
                        next_row(x, r, n_rows, x_stride, n_cols))
            losses[r] = row_loss(row, target, m, s, inv_t, smoothing, n_cols)
            factor = scale * inv_t
            cross_entropy_grad_store(row, m, cast_like(row, inv_t), cast_like(row, 1.0 / s),
                                     cast_like(row, factor), cast_like(row, smoothing / n_cols),
                                     result_target(src, row_of(grad, r * grad_stride, n_cols)))
            subtract_at(result_row(src, row, dst), target,
                        cast_like(row, factor * (1.0 - smoothing)))
            commit(src, row, dst)
