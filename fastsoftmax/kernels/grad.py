"""Row kernels of the backward passes and the fused cross-entropy.

Same layout as :mod:`fastsoftmax.kernels.softmax`: flat buffers, a row stride per array.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import building_block, kernel_pair
from .numerics import (cast_like, cross_entropy_grad_store, log_softmax_grad_store, next_row,
                       row_dot, row_max, row_of, row_or, row_sum, softmax_grad_store,
                       sum_exp)


@kernel_pair
def softmax_backward_rows(g, g_stride, y, y_stride, out, out_stride, n_rows, n_cols):
    """out[r] = y[r] * (g[r] - sum(g[r] * y[r]))."""
    for r in prange(n_rows):
        grow = g[r * g_stride:r * g_stride + n_cols]
        yrow = y[r * y_stride:r * y_stride + n_cols]
        dot = cast_like(yrow, row_dot(grow, yrow))
        softmax_grad_store(grow, yrow, dot, out[r * out_stride:r * out_stride + n_cols])


@kernel_pair
def log_softmax_backward_rows(g, g_stride, logp, logp_stride, out, out_stride, n_rows, n_cols):
    """out[r] = g[r] - exp(logp[r]) * sum(g[r])."""
    for r in prange(n_rows):
        grow = g[r * g_stride:r * g_stride + n_cols]
        lrow = logp[r * logp_stride:r * logp_stride + n_cols]
        total = cast_like(lrow, row_sum(grow))
        log_softmax_grad_store(grow, lrow, total, out[r * out_stride:r * out_stride + n_cols])


# Stores in a prange body go through building blocks (fill, subtract_at), never straight into
# an array a call returned (``dst`` below): Numba's parallel build drops such a store as dead
# code, because its alias analysis does not see that the returned slice is part of ``grad``
# (the serial build keeps it). That bug once lost the target's term of the parallel gradient.

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
def _row_loss(row, target, m, s, inv_t, smoothing, n_cols):
    """Cross-entropy of one row (scaled logits z = row * inv_t, lse = logsumexp(z)):
    (1 - eps) * (lse - z[target]) + eps * (lse - mean(z))."""
    lse = np.float64(m) * inv_t + math.log(s)
    loss = (1.0 - smoothing) * (lse - np.float64(row[target]) * inv_t)
    if smoothing != 0.0:
        loss += smoothing * (lse - row_sum(row) * inv_t / n_cols)
    return loss


@kernel_pair
def cross_entropy_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, inv_t, smoothing,
                       losses):
    """losses[r] = cross-entropy of row r (0 for an ignored row): reads the logits once."""
    for r in prange(n_rows):
        target = targets[r]
        if target == ignore_index:
            losses[r] = 0.0
            continue
        row = x[r * x_stride:r * x_stride + n_cols]
        m = row_max(row, None)
        s = sum_exp(row, None, m, cast_like(row, inv_t), next_row(x, r, n_rows, x_stride, n_cols))
        losses[r] = _row_loss(row, target, m, s, inv_t, smoothing, n_cols)


@kernel_pair
def cross_entropy_grad_rows(x, x_stride, targets, ignore_index, n_rows, n_cols, inv_t,
                            smoothing, scale, losses, grad, grad_stride):
    """losses as :func:`cross_entropy_rows`, and grad[r] = d(scale * losses[r]) / d(x[r]):
    scale * inv_t * (softmax(z) - eps / C - (1 - eps) * onehot(target)). ``grad`` None
    writes the gradient over the logits (in place)."""
    for r in prange(n_rows):
        row = x[r * x_stride:r * x_stride + n_cols]
        dst = row_or(grad, r * grad_stride, n_cols, row)
        target = targets[r]
        if target == ignore_index:
            losses[r] = 0.0
            fill(dst, 0.0)
            continue
        m = row_max(row, None)
        s = sum_exp(row, None, m, cast_like(row, inv_t), next_row(x, r, n_rows, x_stride, n_cols))
        losses[r] = _row_loss(row, target, m, s, inv_t, smoothing, n_cols)
        factor = scale * inv_t
        cross_entropy_grad_store(row, m, cast_like(row, inv_t), cast_like(row, 1.0 / s),
                                 cast_like(row, factor), cast_like(row, smoothing / n_cols),
                                 row_of(grad, r * grad_stride, n_cols))
        subtract_at(dst, target, cast_like(row, factor * (1.0 - smoothing)))
