"""Public functions of the sparse family: sparsemax (Martins & Astudillo 2016) and α-entmax
(Peters, Niculae & Martins 2019), their backward passes and their Fenchel-Young losses, with
the names and semantics of the ``entmax`` package for PyTorch.

Softmax never gives an exact zero; these do. ``alpha`` interpolates: α = 1 is softmax, α = 2
is sparsemax, and the larger α the fewer the nonzero probabilities. The kernels
(kernels/sparse.py) find each row's threshold without sorting the row.
"""

from __future__ import annotations

from . import arguments, plan
from .api import softmax
from .kernels.sparse import EXACT
from .registry import OPERATIONS
from .tensors import accepts_tensors

__all__ = ["sparsemax", "entmax15", "entmax_bisect", "sparsemax_backward", "entmax_backward",
           "sparsemax_loss", "entmax15_loss", "entmax_bisect_loss"]


@accepts_tensors("x", "where", "out")
def sparsemax(x, axis=-1, *, where=None, out=None, dtype=None):
    """Sparsemax along an axis: the Euclidean projection of each row onto the probability
    simplex, ``max(0, x - tau)`` with ``tau`` such that the row sums to 1.

    Unlike softmax, it gives exact zeros: every element more than 1 below the row's maximum
    gets 0 (and usually many more).

    Parameters
    ----------
    x, axis, where, out, dtype
        As in :func:`fastsoftmax.softmax` (no temperature: scale ``x`` yourself).

    Returns
    -------
    ndarray
        Same shape as ``x``; ``out`` itself when given.

    Notes
    -----
    ``-inf`` elements get 0; a row holding ``+inf`` or NaN, or only ``-inf``, gives NaN (where
    selected); a row with nothing selected is all zeros. The threshold is exact, ties
    included (``tau`` from the support found by bisection over the elements within 1 of the
    maximum, without sorting the row).

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import sparsemax
    >>> sparsemax(np.array([1.0, 0.8, 0.1, -1.0]))
    array([0.6, 0.4, 0. , 0. ])
    >>> sparsemax(np.array([[0.0, 0.0], [5.0, 0.0]]), axis=1)
    array([[0.5, 0.5],
           [1. , 0. ]])
    """
    op = OPERATIONS["sparsemax"]
    return plan.run(op, arguments.prepare_entmax(op, x, axis, where, out, dtype, alpha=2.0,
                                                 n_iter=EXACT))


@accepts_tensors("x", "where", "out")
def entmax15(x, axis=-1, *, where=None, out=None, dtype=None):
    """1.5-entmax along an axis: ``max(0, x / 2 - tau) ** 2`` with ``tau`` such that each row
    sums to 1, exactly. Sparse like sparsemax, but smoother (closer to softmax).

    Parameters, returns and edge cases as :func:`sparsemax`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import entmax15
    >>> entmax15(np.array([1.0, 0.8, 0.1, -3.0])).round(4)
    array([0.5292, 0.3937, 0.077 , 0.    ])
    """
    op = OPERATIONS["entmax15"]
    return plan.run(op, arguments.prepare_entmax(op, x, axis, where, out, dtype, alpha=1.5,
                                                 n_iter=EXACT))


@accepts_tensors("x", "where", "out", "alpha")
def entmax_bisect(x, alpha=1.5, axis=-1, *, n_iter=50, where=None, out=None, dtype=None):
    """α-entmax along an axis: ``max(0, (alpha - 1) * x - tau) ** (1 / (alpha - 1))`` with
    ``tau`` found by bisection, as ``entmax.entmax_bisect``.

    Parameters
    ----------
    x, axis, where, out, dtype
        As in :func:`fastsoftmax.softmax`.
    alpha : float or array_like, default 1.5
        A number >= 1, or one per row: an array that broadcasts to the shape of ``x`` without
        ``axis`` (or with ``axis`` of length 1, as in the entmax package). 1 is softmax (a
        scalar 1 calls :func:`fastsoftmax.softmax`), 2 is sparsemax; larger gives sparser.
    n_iter : int, default 50
        Halvings of the threshold's interval (width at most 1); then the result is divided
        by its sum, so rows sum to 1.

    Returns, edge cases: as :func:`sparsemax`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import entmax_bisect
    >>> x = np.array([[1.0, 0.8, 0.1, -1.0], [1.0, 0.8, 0.1, -1.0]])
    >>> entmax_bisect(x, alpha=np.array([2.0, 1.0])).round(4)
    array([[0.6   , 0.4   , 0.    , 0.    ],
           [0.4236, 0.3468, 0.1722, 0.0573]])
    """
    op = OPERATIONS["entmax_bisect"]
    n_iter = arguments.check_int(n_iter, op.name, "n_iter", minimum=1)
    if arguments.is_number(alpha) and alpha == 1:
        return softmax(x, axis, where=where, out=out, dtype=dtype)
    return plan.run(op, arguments.prepare_entmax(op, x, axis, where, out, dtype, alpha=alpha,
                                                 n_iter=n_iter))


@accepts_tensors("grad", "y", "out")
def sparsemax_backward(grad, y, axis=-1, *, out=None):
    """Gradient through sparsemax: ``grad`` minus its mean over the support of ``y`` (where
    ``y > 0``), and 0 off the support.

    Parameters as :func:`fastsoftmax.softmax_backward`, with ``y`` the output of
    :func:`sparsemax` saved from the forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import sparsemax, sparsemax_backward
    >>> y = sparsemax(np.array([1.0, 0.8, 0.1, -1.0]))
    >>> sparsemax_backward(np.array([1.0, 0.0, 5.0, 5.0]), y)
    array([ 0.5, -0.5,  0. ,  0. ])
    """
    op = OPERATIONS["sparsemax_backward"]
    return plan.run(op, arguments.prepare_entmax_backward(op, grad, y, 2.0, axis, out))


@accepts_tensors("grad", "y", "out", "alpha")
def entmax_backward(grad, y, alpha=1.5, axis=-1, *, out=None):
    """Gradient through α-entmax: ``w * (grad - sum(grad * w) / sum(w))`` with
    ``w = y ** (2 - alpha)`` on the support of ``y`` and 0 off it. ``alpha`` = 2 is
    :func:`sparsemax_backward`, 1 the backward pass of softmax.

    Parameters as :func:`sparsemax_backward`, with ``y`` the output of :func:`entmax15`
    (``alpha`` = 1.5) or :func:`entmax_bisect`, and ``alpha`` as there (one per row allowed).

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import entmax15, entmax_backward
    >>> y = entmax15(np.array([1.0, 0.8, 0.1, -3.0]))
    >>> entmax_backward(np.array([1.0, 0.0, 0.0, 7.0]), y).round(4)
    array([ 0.4033, -0.2796, -0.1237,  0.    ])
    """
    op = OPERATIONS["entmax_backward"]
    return plan.run(op, arguments.prepare_entmax_backward(op, grad, y, alpha, axis, out))


def _loss(name, logits, targets, alpha, n_iter, ignore_index, reduction, return_grad,
          grad_out):
    op = OPERATIONS[name]
    return plan.run(op, arguments.prepare_entmax_loss(
        op, logits, targets, alpha=alpha, n_iter=n_iter, ignore_index=ignore_index,
        reduction=reduction, return_grad=return_grad, grad_out=grad_out))


@accepts_tensors("logits", "targets", "grad_out")
def sparsemax_loss(logits, targets, *, ignore_index=-100, reduction="mean", return_grad=False,
                   grad_out=None):
    """Sparsemax loss (the Fenchel-Young loss of sparsemax) against class indices, with its
    gradient ``sparsemax(logits) - onehot(targets)`` on request, fused in one call.

    Per row, ``(1 - sum(p ** 2)) / 2 + p . z - z[target]`` with ``p = sparsemax(z)``: 0 when
    ``p`` is the one-hot of the target, which (unlike cross-entropy) a finite margin reaches.

    Parameters
    ----------
    logits : array_like, shape (rows, classes) or (classes,)
    targets : array_like of int, shape (rows,) or ()
    ignore_index, reduction, return_grad, grad_out
        As in :func:`fastsoftmax.cross_entropy`: rows whose target is ``ignore_index`` count
        for nothing; "mean" (over the rows not ignored), "sum" or "none"; ``grad_out=logits``
        writes the gradient over the logits.

    Returns
    -------
    loss, grad
        As :func:`fastsoftmax.cross_entropy`: the gradient only with ``return_grad`` or
        ``grad_out``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import sparsemax_loss
    >>> logits = np.array([[3.0, 0.0, 0.0], [1.0, 0.8, 0.1]])
    >>> loss, grad = sparsemax_loss(logits, np.array([0, 1]), reduction="none",
    ...                             return_grad=True)
    >>> loss
    array([0.  , 0.36])
    >>> grad
    array([[ 0. ,  0. ,  0. ],
           [ 0.6, -0.6,  0. ]])
    """
    return _loss("sparsemax_loss", logits, targets, 2.0, EXACT, ignore_index, reduction,
                 return_grad, grad_out)


@accepts_tensors("logits", "targets", "grad_out")
def entmax15_loss(logits, targets, *, ignore_index=-100, reduction="mean", return_grad=False,
                  grad_out=None):
    """1.5-entmax loss (Fenchel-Young): per row ``(1 - sum(p ** 1.5)) / 0.75 + p . z -
    z[target]`` with ``p = entmax15(z)``, and the gradient ``p - onehot(target)``.

    Parameters and returns as :func:`sparsemax_loss`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import entmax15_loss
    >>> loss = entmax15_loss(np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), np.array([0, 2]))
    >>> round(float(loss), 4)
    0.2818
    """
    return _loss("entmax15_loss", logits, targets, 1.5, EXACT, ignore_index, reduction,
                 return_grad, grad_out)


@accepts_tensors("logits", "targets", "grad_out", "alpha")
def entmax_bisect_loss(logits, targets, alpha=1.5, *, n_iter=50, ignore_index=-100,
                       reduction="mean", return_grad=False, grad_out=None):
    """α-entmax loss (Fenchel-Young) with α-entmax by bisection: per row ``(1 - sum(p **
    alpha)) / (alpha (alpha - 1)) + p . z - z[target]``, the cross-entropy for ``alpha`` = 1;
    gradient ``p - onehot(target)``.

    Parameters and returns as :func:`sparsemax_loss`, ``alpha`` (one per row allowed) and
    ``n_iter`` as in :func:`entmax_bisect`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import entmax_bisect_loss
    >>> logits = np.array([[1.0, 0.8, 0.1], [1.0, 0.8, 0.1]])
    >>> entmax_bisect_loss(logits, np.array([1, 1]), alpha=[2.0, 1.0],
    ...                    reduction="none").round(4)
    array([0.36  , 0.9999])
    """
    n_iter = arguments.check_int(n_iter, "entmax_bisect_loss", "n_iter", minimum=1)
    return _loss("entmax_bisect_loss", logits, targets, alpha, n_iter, ignore_index, reduction,
                 return_grad, grad_out)
