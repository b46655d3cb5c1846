"""Distillation losses between a student's and a teacher's logits, fused, with the gradient
with respect to the student's logits: :func:`kl_div` (Hinton's distillation term, either
direction) and :func:`jsd` (the generalised Jensen-Shannon divergence of Liger-Kernel and
TRL's GKD trainer).

The usual PyTorch path (two log_softmax, ``F.kl_div``, autograd) keeps several rows x classes
arrays alive; these read each pair of rows twice (kernels/distill.py) and write the gradient
once, over the student's logits with ``grad_out=student_logits``.
"""

from __future__ import annotations

import numpy as np

from . import arguments, plan
from .arguments import is_number
from .kernels.distill import FORWARD, MIXTURE, REVERSE
from .registry import OPERATIONS
from .tensors import accepts_tensors

__all__ = ["kl_div", "jsd"]


@accepts_tensors("student_logits", "teacher_logits", "where", "grad_out")
def kl_div(student_logits, teacher_logits, *, temperature=1.0, reverse=False, where=None,
           reduction="batchmean", return_grad=False, grad_out=None):
    """Hinton's distillation loss ``T**2 * KL(p || q)`` between the teacher's distribution
    ``p = softmax(teacher_logits / T)`` and the student's ``q = softmax(student_logits / T)``
    (``reverse=True``: ``T**2 * KL(q || p)``), fused, with its gradient with respect to the
    student's logits on request.

    ``KL(p || q) = sum(p * (log p - log q))`` over the classes of a row. Without the ``T**2``
    (at ``temperature=1``) the loss is PyTorch's ``F.kl_div(F.log_softmax(s / T, -1),
    F.log_softmax(t / T, -1), reduction=..., log_target=True)``; the factor keeps the
    gradient's scale independent of ``T`` (Hinton, Vinyals & Dean 2015).

    Parameters
    ----------
    student_logits : array_like, shape (rows, classes) or (classes,)
        The student's logits: the gradient is with respect to them. float32 or float64
        (other dtypes follow the dtype policy of :func:`softmax`: float16 and bfloat16 are
        computed in float32, and the loss and the gradient come in the student's dtype).
    teacher_logits : array_like, the same shape
        Fixed; read in the student's compute dtype (a bfloat16 teacher with a float32 student
        is widened as it is read, not copied).
    temperature : float, default 1
        ``T``, which divides both sets of logits.
    reverse : bool, default False
        ``KL(q || p)``, the student's distribution first (mode-seeking).
    where : array_like of bool, optional
        The classes counted, broadcast to the logits: others are left out of both
        distributions, as in :func:`softmax`. A row with no class selected has loss 0.
    reduction : {"batchmean", "sum", "mean", "none"}
        The sum over rows divided by the number of rows (PyTorch's recommended reduction for
        ``kl_div``), the sum, the sum divided by the number of elements (rows x classes,
        PyTorch's "mean"), or one loss per row. For 1-D logits "batchmean" is the loss of
        the one row (PyTorch would divide by the number of classes).
    return_grad : bool, default False
        Also return the gradient of the (reduced) loss with respect to ``student_logits``,
        for "none" that of the sum of the per-row losses: ``T * (q - p)`` for ``KL(p || q)``
        (divided as the reduction says), ``T * q * (log q - log p - KL(q || p))`` reversed.
    grad_out : ndarray, optional
        Where to write the gradient (implies ``return_grad``): an array of the student's
        shape and dtype, or ``student_logits`` itself to overwrite them (no extra rows x
        classes memory). Never the teacher's.

    Returns
    -------
    loss : NumPy scalar, or ndarray of shape (rows,) for "none"
    grad : ndarray, only with ``return_grad`` or ``grad_out``

    Notes
    -----
    A class of probability 0 in the distribution that weights the log-ratio (the teacher's,
    or the student's reversed; a logit at -inf) contributes 0; where the other distribution
    is 0 and it is not, the loss is +inf, as in PyTorch. A NaN, a +inf or a row of only -inf
    (not masked out) makes that row's loss and gradient NaN, as softmax's.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import kl_div
    >>> student = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    >>> teacher = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    >>> round(float(kl_div(student, teacher)), 6)      # the second row's loss is 0
    0.210256
    >>> loss, grad = kl_div(student, teacher, temperature=2.0, return_grad=True)
    >>> grad.round(4)                                  # T * (q - p) / rows
    array([[ 0.1993, -0.1993,  0.    ],
           [ 0.    ,  0.    ,  0.    ]])
    """
    op = OPERATIONS["kl_div"]
    if not isinstance(reverse, (bool, np.bool_)):
        raise TypeError(f"kl_div: reverse must be True or False, got {reverse!r}")
    return plan.run(op, arguments.prepare_distillation(
        op, student_logits, teacher_logits, mode=REVERSE if reverse else FORWARD, beta=0.5,
        temperature=temperature, where=where, reduction=reduction, return_grad=return_grad,
        grad_out=grad_out))


@accepts_tensors("student_logits", "teacher_logits", "where", "grad_out")
def jsd(student_logits, teacher_logits, *, beta=0.5, temperature=1.0, where=None,
        reduction="batchmean", return_grad=False, grad_out=None):
    """The generalised Jensen-Shannon divergence ``T**2 * JSD_beta(p || q)`` between the
    teacher's distribution ``p = softmax(teacher_logits / T)`` and the student's
    ``q = softmax(student_logits / T)``, fused, with its gradient with respect to the
    student's logits on request.

    ``JSD_beta(p || q) = beta * KL(p || m) + (1 - beta) * KL(q || m)`` with the mixture
    ``m = beta * p + (1 - beta) * q``: Liger-Kernel's ``LigerJSD`` and TRL's
    ``generalized_jsd_loss`` (Agarwal et al. 2024, on-policy distillation), ``beta`` weighing
    the teacher. ``beta=0.5`` is the symmetric Jensen-Shannon divergence, at most log(2).
    As ``beta`` tends to 0 the divergence vanishes as ``beta * KL(p || q)``, and as it tends
    to 1 as ``(1 - beta) * KL(q || p)``; as in Liger-Kernel and TRL, ``beta=0`` and
    ``beta=1`` *are* those limits divided by their factor: ``jsd(s, t, beta=0)`` is
    ``kl_div(s, t)`` (forward KL) and ``jsd(s, t, beta=1)`` is ``kl_div(s, t, reverse=True)``,
    bit for bit.

    Parameters
    ----------
    student_logits, teacher_logits, temperature, where, reduction, return_grad, grad_out
        As in :func:`kl_div`. The loss has the factor ``T**2`` of :func:`kl_div` (so that
        ``beta`` 0 and 1 are its two directions at any temperature; Liger-Kernel applies no
        such factor: divide by ``T**2`` to compare).
    beta : float in [0, 1], default 0.5
        The teacher's weight in the mixture.

    Returns
    -------
    loss : NumPy scalar, or ndarray of shape (rows,) for "none"
    grad : ndarray, only with ``return_grad`` or ``grad_out``: ``T * (dx - q * sum(dx))``
        with ``dx = (1 - beta) * q * (log q - log m)``, divided as the reduction says.

    Notes
    -----
    For 0 < beta < 1 the divergence is finite whatever the logits: a class at -inf in one
    distribution only contributes its share of the other. NaN, +inf and rows of only -inf
    as in :func:`kl_div`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import jsd, kl_div
    >>> student = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    >>> teacher = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    >>> round(float(jsd(student, teacher)), 6)
    0.050478
    >>> bool(jsd(student, teacher, beta=0.0) == kl_div(student, teacher))
    True
    >>> one_hot = np.array([0.0, -np.inf, -np.inf])     # a teacher sure of class 0
    >>> round(float(jsd(np.zeros(3), one_hot)), 6)      # finite, below log(2)
    0.318257
    """
    op = OPERATIONS["jsd"]
    if not is_number(beta):
        raise TypeError(f"jsd: beta must be a number in [0, 1], got {beta!r}")
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"jsd: beta must be a number in [0, 1], got {beta!r}")
    beta = float(beta)
    mode = FORWARD if beta == 0.0 else REVERSE if beta == 1.0 else MIXTURE
    return plan.run(op, arguments.prepare_distillation(
        op, student_logits, teacher_logits, mode=mode, beta=beta, temperature=temperature,
        where=where, reduction=reduction, return_grad=return_grad, grad_out=grad_out))
