"""Row kernels of the distillation losses: the divergence between the teacher's distribution
``p = softmax(t / T)`` and the student's ``q = softmax(s / T)``, row by row, and its gradient
with respect to the student logits ``s``.

Layout, tasks and dtypes as in :mod:`fastsoftmax.kernels.softmax`: flat buffers with a row
stride per array, ``prange`` over tasks of consecutive rows, one body for float32, float64 and
half-precision bits (:mod:`~fastsoftmax.kernels.rows`); the student and the teacher may come
in different formats (a bfloat16 teacher, a float32 student) and are computed in one.

Per pair of rows, the two rows are read together twice: the max and sum passes of both (each
row's sum pass keeps its exponentials in a scratch row of the task), then one pass that gives
each element's term of the divergence and of its derivative with respect to the student's
log-probabilities, ``dx``. The gradient with respect to the logits is then
``scale * (dx - q * sum(dx))`` (the backward pass of log_softmax), written from the scratch
rows: into ``grad``, or over the student's logits (``grad`` None). Nothing rows x classes is
allocated: each task holds two scratch rows.

The divergences (``mode``):

- ``FORWARD``: KL(p || q) = sum p (log p - log q); dx = -p, and sum(dx) = -1.
- ``REVERSE``: KL(q || p) = sum q (log q - log p); dx = q (log q - log p).
- ``MIXTURE``: the generalised Jensen-Shannon divergence, with m = beta p + (1 - beta) q,
  beta KL(p || m) + (1 - beta) KL(q || m); dx = (1 - beta) q (log q - log m), and
  log m = max + log1p(exp(min - max)) of the two weighted log-probabilities.

A term weighted by a probability of 0 is 0 (``exp_weight``): a class at -inf in the
distribution that weighs it contributes nothing, even where the other is -inf too.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import building_block, kernel_pair
from .numerics import (BLOCK, cast_like, exp, exp_store_sum, exp_weight, log1p_unit, next_row,
                       pick, row_of, row_or, row_sum)
from .rows import commit, compute_buffer, load_max, result_row, row_buffer, task_rows

FORWARD, REVERSE, MIXTURE = 0, 1, 2


@building_block
def _log_probs(sv, tv, ms, mt, tau, log_ss, log_st):
    """(log p, log q) of one element: the teacher's and the student's log-probabilities."""
    return (tv - mt) * tau - log_st, (sv - ms) * tau - log_ss


# The passes below share their first lines and differ in the terms: a loop for the KL
# divergences (whose direction is a select, not a branch) and one for the mixture (which
# alone needs an exp and a log per element), so that no loop tests the mode per element.
# ``dx`` holds the teacher's exponentials on entry, ``q`` the student's; both leave as (dx, q)
# of the docstring above, 0 where not selected.

@building_block
def _kl_terms(s, t, sel, ms, mt, tau, log_ss, log_st, inv_ss, inv_st, q, dx, terms, reverse):
    zero = cast_like(s, 0.0)
    for j in range(s.size):
        a, b = _log_probs(s[j], t[j], ms, mt, tau, log_ss, log_st)
        p = dx[j] * inv_st
        qj = q[j] * inv_ss
        term = exp_weight(qj, b - a) if reverse else exp_weight(p, a - b)
        terms[j] = pick(sel, j, term, zero)
        dx[j] = pick(sel, j, term if reverse else -p, zero)
        q[j] = pick(sel, j, qj, zero)


@building_block
def _mixture_terms(s, t, sel, ms, mt, tau, log_ss, log_st, inv_ss, inv_st, q, dx, terms,
                   beta, log_beta, log_rest):
    zero = cast_like(s, 0.0)
    rest = cast_like(s, 1.0) - beta
    for j in range(s.size):
        a, b = _log_probs(s[j], t[j], ms, mt, tau, log_ss, log_st)
        p = dx[j] * inv_st
        qj = q[j] * inv_ss
        la = a + log_beta
        lb = b + log_rest
        hi = la if la >= lb else lb
        lo = lb if la >= lb else la
        log_m = hi + log1p_unit(exp(lo - hi))
        g = rest * exp_weight(qj, b - log_m)
        terms[j] = pick(sel, j, beta * exp_weight(p, a - log_m) + g, zero)
        dx[j] = pick(sel, j, g, zero)
        q[j] = pick(sel, j, qj, zero)


@building_block
def task_scratch(s, t, n_cols):
    """A task's scratch: the widened rows of half-precision input (student, teacher), the
    two rows of exponentials, then probabilities and ``dx``, and a block of terms."""
    return (row_buffer(s, n_cols), row_buffer(t, n_cols), compute_buffer(s, n_cols),
            compute_buffer(s, n_cols), compute_buffer(s, BLOCK))


@building_block
def row_divergence(r, s, s_stride, t, t_stride, mask, mask_stride, n_rows, n_cols, scratch,
                   inv_t, mode, beta):
    """``(divergence, sum(dx), student row as stored, student row computed on)`` of row ``r``
    (float64 sums, block sums added in order), leaving the student's probabilities and ``dx``
    in the scratch rows of :func:`task_scratch`. The next rows are prefetched during the sum
    passes."""
    s_buf, t_buf, q, dx, terms = scratch
    ssrc = s[r * s_stride:r * s_stride + n_cols]
    sel = row_of(mask, r * mask_stride, n_cols)
    srow, ms = load_max(ssrc, sel, s_buf)
    trow, mt = load_max(t[r * t_stride:r * t_stride + n_cols], sel, t_buf)
    tau = cast_like(srow, inv_t)
    ss = exp_store_sum(srow, sel, ms, tau, q, next_row(s, r, n_rows, s_stride, n_cols))
    st = exp_store_sum(trow, sel, mt, tau, dx, next_row(t, r, n_rows, t_stride, n_cols))
    log_ss, log_st = cast_like(srow, np.log(ss)), cast_like(srow, np.log(st))
    inv_ss, inv_st = cast_like(srow, 1.0 / ss), cast_like(srow, 1.0 / st)
    beta_c = cast_like(srow, beta)
    log_beta = cast_like(srow, np.log(beta)) if mode == MIXTURE else beta_c
    log_rest = cast_like(srow, np.log1p(-beta)) if mode == MIXTURE else beta_c
    total = 0.0
    d = -1.0
    if mode != FORWARD:
        d = 0.0
    for start in range(0, srow.size, BLOCK):
        stop = min(start + BLOCK, srow.size)
        args = (srow[start:stop], trow[start:stop], row_of(sel, start, stop - start), ms, mt,
                tau, log_ss, log_st, inv_ss, inv_st, q[start:stop], dx[start:stop],
                terms[:stop - start])
        if mode == MIXTURE:
            _mixture_terms(*args, beta_c, log_beta, log_rest)
        else:
            _kl_terms(*args, mode == REVERSE)
        # summed in read-only loops over the blocks just written (docs/design.md, rule 2)
        total += row_sum(terms[:stop - start])
        if mode != FORWARD:
            d += row_sum(dx[start:stop])
    return total, d, ssrc, srow


@building_block
def _grad_store(dx, q, d, c, dst):
    """dst = c * (dx - q * d): the backward pass of log_softmax, scaled."""
    for j in range(dst.size):
        dst[j] = c * (dx[j] - q[j] * d)


@kernel_pair
def distill_rows(s, s_stride, t, t_stride, mask, mask_stride, n_rows, n_cols, inv_t, mode, beta,
                 factor, losses, n_tasks):
    """losses[r] = factor * divergence of row r (``factor``: T**2)."""
    for task in prange(n_tasks):
        scratch = task_scratch(s, t, n_cols)
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            total = row_divergence(r, s, s_stride, t, t_stride, mask, mask_stride, n_rows,
                                   n_cols, scratch, inv_t, mode, beta)[0]
            losses[r] = factor * total


@kernel_pair
def distill_grad_rows(s, s_stride, t, t_stride, mask, mask_stride, n_rows, n_cols, inv_t, mode,
                      beta, factor, scale, losses, grad, grad_stride, n_tasks):
    """losses as :func:`distill_rows`, and grad[r] = d(scale * losses[r]) / d(s[r]) (``scale``
    includes the reduction's; T**2 / T = T is the caller's part of it). ``grad`` None writes
    the gradient over the student's logits (in place)."""
    for task in prange(n_tasks):
        scratch = task_scratch(s, t, n_cols)
        q, dx = scratch[2], scratch[3]
        first, end = task_rows(task, n_tasks, n_rows)
        for r in range(first, end):
            total, d, ssrc, srow = row_divergence(r, s, s_stride, t, t_stride, mask,
                                                  mask_stride, n_rows, n_cols, scratch, inv_t,
                                                  mode, beta)
            losses[r] = factor * total
            dst = row_or(grad, r * grad_stride, n_cols, ssrc)
            _grad_store(dx, q, cast_like(srow, d), cast_like(srow, scale),
                        result_row(ssrc, srow, dst))
            commit(ssrc, srow, dst)
