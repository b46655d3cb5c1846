"""Public functions for training: the backward passes of softmax and log_softmax, and a fused
cross-entropy whose gradient can overwrite the logits.

For a large vocabulary the usual path (log_softmax, gather, a separate backward) materialises
several rows x classes arrays; :func:`cross_entropy` reads the logits once for the loss, and
once more to write the gradient (into the logits themselves with ``grad_out=logits``).
"""

from __future__ import annotations

import numbers

import numpy as np

from . import plan
from .interop import accepts_tensors
from .kernels.grad import (cross_entropy_grad_rows, cross_entropy_rows,
                           log_softmax_backward_rows, softmax_backward_rows)
from .normalize import (_as_rows, _move_axis_back, _move_axis_last, normalize_axis,
                        normalize_temperature, resolve_dtypes, row_layout)

__all__ = ["softmax_backward", "log_softmax_backward", "cross_entropy"]
REDUCTIONS = ("mean", "sum", "none")


def _backward(func, kernel, grad, saved, axis, out):
    grad = np.asarray(grad)
    saved = np.asarray(saved)
    if grad.shape != saved.shape:
        raise ValueError(f"{func}: grad has shape {grad.shape} but the saved output has shape "
                         f"{saved.shape}; they must be equal")
    compute, result_dtype = resolve_dtypes(np.result_type(grad.dtype, saved.dtype), None, func)
    if saved.ndim == 0:
        raise ValueError(f"{func}: inputs must have at least one dimension, got 0-d arrays")
    axis = normalize_axis(axis, saved.ndim, func)
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != saved.shape
                            or out.dtype != result_dtype or not out.flags.writeable):
        raise ValueError(f"{func}: out must be a writable array of shape {saved.shape} and "
                         f"dtype {result_dtype}")
    g_moved, s_moved = _move_axis_last(grad, axis), _move_axis_last(saved, axis)
    g_flat, g_stride = _as_rows(g_moved, compute)
    s_flat, s_stride = _as_rows(s_moved, compute)
    n_cols = s_moved.shape[-1]
    n_rows = s_moved.size // n_cols if n_cols else 0
    buffer = np.empty(s_moved.shape, compute)
    if n_rows and n_cols:
        # The kernel reads each element before it writes it: a buffer of its own, then copied
        # into ``out``, keeps any overlap of ``out`` with the inputs harmless.
        plan.launch(kernel, n_rows, n_cols, g_flat, g_stride, s_flat, s_stride,
                    buffer.reshape(-1), n_cols, n_rows, n_cols)
    result = _move_axis_back(buffer, axis, saved.shape)
    if out is None:
        return result if result_dtype == compute else result.astype(result_dtype)
    np.copyto(out, result, casting="unsafe")
    return out


@accepts_tensors("grad", "y", out_args=("out",))
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
    return _backward("softmax_backward", softmax_backward_rows, grad, y, axis, out)


@accepts_tensors("grad", "logp", out_args=("out",))
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
    return _backward("log_softmax_backward", log_softmax_backward_rows, grad, logp, axis, out)


def _check_targets(targets, n_rows, n_classes, ignore_index, one_row):
    func = "cross_entropy"
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{func}: targets must be integer class indices, got dtype {t.dtype}")
    want = () if one_row else (n_rows,)
    if t.shape != want:
        raise ValueError(f"{func}: targets must have shape {want} for logits of "
                         f"{'one row' if one_row else f'{n_rows} rows'}, got {t.shape}")
    t = np.ascontiguousarray(t.reshape(-1), dtype=np.int64)
    bad = (t != ignore_index) & ((t < 0) | (t >= n_classes))
    if bad.any():
        row = int(np.argmax(bad))
        raise IndexError(f"{func}: targets[{row}] = {t[row]} is not a class index in "
                         f"[0, {n_classes}) nor ignore_index={ignore_index}")
    return t


@accepts_tensors("logits", "targets", out_args=("grad_out",))
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
    func = "cross_entropy"
    x = np.asarray(logits)
    compute, result_dtype = resolve_dtypes(x.dtype, None, func)
    if x.ndim not in (1, 2):
        raise ValueError(f"{func}: logits must have shape (rows, classes) or (classes,), "
                         f"got {x.shape}")
    one_row = x.ndim == 1
    rows2d = x.reshape(1, -1) if one_row else x
    n_rows, n_cols = rows2d.shape
    if n_cols == 0:
        raise ValueError(f"{func}: logits must have at least one class")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{func}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if (isinstance(label_smoothing, (bool, np.bool_))
            or not isinstance(label_smoothing, numbers.Real)
            or not 0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"{func}: label_smoothing must be a number in [0, 1], "
                         f"got {label_smoothing!r}")
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index,
                                                                    numbers.Integral):
        raise TypeError(f"{func}: ignore_index must be an int, got {ignore_index!r}")
    inv_t = normalize_temperature(temperature, func, compute)
    t = _check_targets(targets, n_rows, n_cols, int(ignore_index), one_row)
    count = int(np.count_nonzero(t != ignore_index))
    x_flat, x_stride = _as_rows(rows2d, compute)
    losses = np.empty(n_rows)
    smoothing = float(label_smoothing)
    want_grad = return_grad or grad_out is not None
    if not want_grad:
        plan.launch(cross_entropy_rows, n_rows, n_cols, x_flat, x_stride, t, int(ignore_index),
                    n_rows, n_cols, inv_t, smoothing, losses)
        return _reduce(losses, reduction, count, result_dtype, one_row)

    if grad_out is not None:
        if (not isinstance(grad_out, np.ndarray) or grad_out.shape != x.shape
                or grad_out.dtype != compute or not grad_out.flags.writeable
                or not grad_out.flags.c_contiguous):
            raise ValueError(f"{func}: grad_out must be a writable C-contiguous array of shape "
                             f"{x.shape} and dtype {compute} (or logits itself)")
        grad = grad_out
    else:
        grad = np.empty(x.shape, compute)
    grad_flat, grad_stride = row_layout(grad.reshape(n_rows, n_cols))
    in_place = np.may_share_memory(grad_flat, x_flat)
    if in_place and not (grad_flat.ctypes.data == x_flat.ctypes.data and grad_stride == x_stride):
        raise ValueError(f"{func}: grad_out overlaps logits other than exactly")
    scale = (1.0 / count if count else 0.0) if reduction == "mean" else 1.0
    plan.launch(cross_entropy_grad_rows, n_rows, n_cols, x_flat, x_stride, t,
                int(ignore_index), n_rows, n_cols, inv_t, smoothing, scale, losses,
                None if in_place else grad_flat, grad_stride)
    loss = _reduce(losses, reduction, count, result_dtype, one_row)
    if result_dtype != compute:
        grad = grad.astype(result_dtype)
    return loss, grad


def _reduce(losses, reduction, count, dtype, one_row):
    if reduction == "none":
        result = losses.astype(dtype)
        return result[0] if one_row else result
    total = losses.sum()
    if reduction == "sum":
        return dtype.type(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return dtype.type(total / count if count else np.nan)
