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


@accepts_tensors("logits", "targets", "grad_out", "weight")
def cross_entropy(logits, targets, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  reduction="mean", temperature=1.0, z_loss=0.0, softcap=None,
                  return_lse=False, return_grad=False, grad_out=None):
    """Cross-entropy of ``softmax(logits / temperature)`` against class indices or class
    probabilities, fused, with its gradient on request; semantics of
    ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    logits : array_like, shape (rows, classes), (classes,) or (N, classes, d1, ...)
        float32 or float64 (other dtypes follow the dtype policy of :func:`softmax`). With
        more than two dimensions the classes are on axis 1, as in PyTorch (segmentation maps,
        per-token losses of (batch, vocab, seq) logits); those rows are read where they are,
        strided, without a copy.
    targets : array_like
        Class indices (integers): shape (rows,), () for one row, or (N, d1, ...); rows whose
        target is ``ignore_index`` contribute nothing and are left out of the mean's
        denominator; any other target outside [0, classes) is an IndexError. Or class
        probabilities: floats of the logits' shape (each row a distribution; label smoothing
        applies to them as PyTorch: ``(1 - eps) * p + eps / classes``).
    weight : array_like of shape (classes,), optional
        A weight per class, as PyTorch's: each row's loss is ``sum(w * q * -log_softmax)``
        for its target distribution ``q``; "mean" divides the sum by the sum of the weights
        of the counted targets (by the number of rows for probability targets).
    ignore_index : int, default -100
        Not supported (ValueError) when >= 0 with probability targets, as in PyTorch.
    label_smoothing : float in [0, 1], default 0
        The target distribution is ``(1 - eps) * onehot + eps / classes``.
    reduction : {"mean", "sum", "none"}
        "mean" over the rows not ignored (NaN when every row is ignored, as PyTorch), "sum",
        or "none" (one loss per row, shaped as the targets' rows; 0 for ignored rows).
    temperature : float, default 1
    z_loss : float >= 0, default 0
        Adds ``z_loss * logsumexp(z)**2`` per counted row (PaLM's z-loss, Liger-Kernel's
        ``lse_square_scale``); for "mean" that sum is divided by the number of counted rows.
    softcap : float > 0, optional
        The logits first become ``softcap * tanh(logits / softcap)`` (Gemma 2), then are
        divided by the temperature; the gradient goes through the cap.
    return_lse : bool, default False
        Also return each row's logsumexp of the (capped, scaled) logits, shaped as the loss of
        "none" (ignored rows too).
    return_grad : bool, default False
        Also return the gradient of the (reduced) loss with respect to ``logits``; for
        "none" that of the sum of the per-row losses. Ignored rows get a zero gradient.
    grad_out : ndarray, optional
        Where to write the gradient (implies ``return_grad``): an array of the logits' shape
        and dtype, or ``logits`` itself to overwrite them (no extra rows x classes memory).

    Returns
    -------
    loss : NumPy scalar, or ndarray of the targets' row shape for "none"
    lse : ndarray, only with ``return_lse``
    grad : ndarray, only with ``return_grad`` or ``grad_out`` (last)

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
    >>> soft = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])       # class probabilities
    >>> float(cross_entropy(logits, soft, weight=np.array([1.0, 2.0, 1.0]))).__round__(6)
    1.728965
    >>> loss, lse = cross_entropy(logits, np.array([0, 2]), z_loss=1e-4, softcap=30.0,
    ...                           return_lse=True)
    >>> lse.round(4)
    array([2.2372, 1.0986])
    """
    op = OPERATIONS["cross_entropy"]
    return plan.run(op, arguments.prepare_cross_entropy(
        op, logits, targets, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, reduction=reduction, temperature=temperature,
        z_loss=z_loss, softcap=softcap, return_lse=return_lse, return_grad=return_grad,
        grad_out=grad_out))
