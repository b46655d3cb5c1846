"""Public functions for training: the backward passes of softmax and log_softmax, and a fused
cross-entropy whose gradient can overwrite the logits.

For a large vocabulary the usual path (log_softmax, gather, a separate backward) materialises
several rows x classes arrays; :func:`cross_entropy` reads the logits once for the loss, and
once more to write the gradient (into the logits themselves with ``grad_out=logits``).
"""

from __future__ import annotations

from . import arguments, plan
from .registry import OPERATIONS
from .tensors import accepts_tensors

__all__ = ["softmax_backward", "log_softmax_backward", "cross_entropy"]


@accepts_tensors("grad", "y", "out")
def softmax_backward(grad, y, axis=-1, *, out=None):
    """Gradient through softmax: ``y * (grad - sum(grad * y, axis))`` where ``y = softmax(x)``.

    Parameters
    ----------
    grad : array_like
        dL/dy, same shape as ``y``.
    y : array_like
        The softmax output saved from the forward pass.
    axis : int or None, default -1
        The axis the forward softmax used.
    out : ndarray, optional
        Where to write dL/dx (may be ``grad`` itself).

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import softmax, softmax_backward
    >>> y = softmax(np.array([1.0, 2.0, 3.0]))
    >>> softmax_backward(np.array([1.0, 1.0, 1.0]), y).round(12) + 0.0
    array([0., 0., 0.])
    """
    op = OPERATIONS["softmax_backward"]
    return plan.run(op, arguments.prepare_backward(op, grad, y, axis, out, "y"))


@accepts_tensors("grad", "logp", "out")
def log_softmax_backward(grad, logp, axis=-1, *, out=None):
    """Gradient through log_softmax: ``grad - exp(logp) * sum(grad, axis)``.

    Parameters as :func:`softmax_backward`, with ``logp = log_softmax(x)`` saved from the
    forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import log_softmax, log_softmax_backward
    >>> logp = log_softmax(np.array([0.0, 0.0]))
    >>> log_softmax_backward(np.array([1.0, 0.0]), logp)
    array([ 0.5, -0.5])
    """
    op = OPERATIONS["log_softmax_backward"]
    return plan.run(op, arguments.prepare_backward(op, grad, logp, axis, out, "logp"))


@accepts_tensors("logits", "targets", "grad_out")
def cross_entropy(logits, targets, *, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                  temperature=1.0, return_grad=False, grad_out=None):
    """Cross-entropy of ``softmax(logits / temperature)`` against class indices, fused, with
    its gradient on request; semantics of ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    logits : array_like, shape (rows, classes) or (classes,)
        float32 or float64 (other dtypes follow the dtype policy of :func:`softmax`).
    targets : array_like of int, shape (rows,) or ()
        Class indices; rows whose target is ``ignore_index`` contribute nothing, and are left
        out of the mean's denominator. Any other target outside [0, classes) is an IndexError.
    ignore_index : int, default -100
    label_smoothing : float in [0, 1], default 0
        The target distribution is ``(1 - eps) * onehot + eps / classes``.
    reduction : {"mean", "sum", "none"}
        "mean" over the rows not ignored (NaN when every row is ignored, as PyTorch), "sum",
        or "none" (one loss per row, 0 for ignored rows).
    temperature : float, default 1
    return_grad : bool, default False
        Also return the gradient of the (reduced) loss with respect to ``logits``; for
        "none" that of the sum of the per-row losses. Ignored rows get a zero gradient.
    grad_out : ndarray, optional
        Where to write the gradient (implies ``return_grad``): an array of the logits' shape
        and dtype, or ``logits`` itself to overwrite them (no extra rows x classes memory).

    Returns
    -------
    loss : NumPy scalar, or ndarray of shape (rows,) for "none"
    grad : ndarray, only with ``return_grad`` or ``grad_out``

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import cross_entropy
    >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> float(cross_entropy(logits, np.array([0, 2]))).__round__(6)
    0.669079
    >>> loss, grad = cross_entropy(logits, np.array([0, -100]), return_grad=True)
    >>> grad.round(4)
    array([[-0.213 ,  0.1065,  0.1065],
           [ 0.    ,  0.    ,  0.    ]])
    """
    op = OPERATIONS["cross_entropy"]
    return plan.run(op, arguments.prepare_cross_entropy(
        op, logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
        reduction=reduction, temperature=temperature, return_grad=return_grad,
        grad_out=grad_out))
