"""Plain NumPy reference implementations: the oracle of the tests, the baseline of the
benchmarks.

Same signatures and semantics as the public functions, computed in float64 whatever the input,
written to be read rather than to be fast. No Numba here.

>>> import numpy as np
>>> from fastsoftmax import reference
>>> reference.softmax([2.0, 1.0, 0.1]).round(8)
array([0.65900114, 0.24243297, 0.09856589])
"""

from __future__ import annotations

import numpy as np

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
           "cross_entropy", "result_dtype"]


def result_dtype(x_dtype, dtype=None) -> np.dtype:
    """The dtype a function returns for input ``x_dtype`` (the dtype policy of SPEC §2)."""
    if dtype is not None:
        return np.dtype(dtype)
    x_dtype = np.dtype(x_dtype)
    if x_dtype.kind == "f" and x_dtype.itemsize in (2, 4, 8):
        return x_dtype.newbyteorder("=")
    if x_dtype.kind == "V" and x_dtype.name == "bfloat16":  # ml_dtypes.bfloat16
        return x_dtype
    if x_dtype.kind in "biu":
        return np.dtype(np.float64)
    raise TypeError(f"unsupported dtype {x_dtype}")


def _prepare(x, where, dtype, temperature):
    """Input as float64 (after the conversion ``dtype`` asks for), divided by temperature,
    and the mask of selected elements."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    out_dtype = result_dtype(x.dtype, dtype)
    if dtype is not None:
        x = x.astype(dtype)
    z = x.astype(np.float64) / float(temperature)
    selected = np.ones(z.shape, bool) if where is None else np.broadcast_to(where, z.shape)
    return z, selected, out_dtype


def _max_and_sum(z, selected, axis):
    """Row max over the selected elements (-inf if none), and sum(exp(z - max))."""
    m = np.max(z, axis=axis, keepdims=True, where=selected, initial=-np.inf)
    e = np.exp(z - m, where=selected, out=np.zeros_like(z))  # 0 where not selected
    return m, e, np.sum(e, axis=axis, keepdims=True)


def _deliver(result, out, out_dtype):
    if out is None:
        return result.astype(out_dtype)
    out[...] = result
    return out


def softmax(x, axis=-1, *, temperature=1.0, where=None, out=None, dtype=None):
    """Reference softmax: ``exp(z - max) / sum(exp(z - max))`` with ``z = x / temperature``."""
    z, selected, out_dtype = _prepare(x, where, dtype, temperature)
    with np.errstate(invalid="ignore", divide="ignore"):
        m, e, s = _max_and_sum(z, selected, axis)
        result = np.where(selected, e / s, 0.0)
    return _deliver(result, out, out_dtype)


def log_softmax(x, axis=-1, *, temperature=1.0, where=None, out=None, dtype=None):
    """Reference log_softmax: ``z - max - log(sum(exp(z - max)))``; -inf where not selected."""
    z, selected, out_dtype = _prepare(x, where, dtype, temperature)
    with np.errstate(invalid="ignore", divide="ignore"):
        m, e, s = _max_and_sum(z, selected, axis)
        result = np.where(selected, z - m - np.log(s), -np.inf)
    return _deliver(result, out, out_dtype)


def logsumexp(x, axis=-1, *, keepdims=False, where=None, out=None, dtype=None):
    """Reference logsumexp: ``max + log(sum(exp(x - max)))``; the max itself when it is not
    finite (-inf for an empty axis or selection, +inf with a +inf, NaN with a NaN)."""
    z, selected, out_dtype = _prepare(x, where, dtype, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m, e, s = _max_and_sum(z, selected, axis)
        result = np.where(np.isfinite(m), m + np.log(s), m)
    if not keepdims:
        result = np.squeeze(result, axis=axis)
    if out is None:
        result = result.astype(out_dtype)
        return result[()] if result.ndim == 0 else result
    return _deliver(result, out, out_dtype)


def softmax_backward(grad, y, axis=-1, *, out=None):
    """Reference gradient through softmax: ``y * (grad - sum(grad * y))``."""
    g = np.asarray(grad, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    result = y64 * (g - np.sum(g * y64, axis=axis, keepdims=True))
    return _deliver(result, out, result_dtype(np.result_type(np.asarray(grad), np.asarray(y))))


def log_softmax_backward(grad, logp, axis=-1, *, out=None):
    """Reference gradient through log_softmax: ``grad - exp(logp) * sum(grad)``."""
    g = np.asarray(grad, dtype=np.float64)
    lp = np.asarray(logp, dtype=np.float64)
    result = g - np.exp(lp) * np.sum(g, axis=axis, keepdims=True)
    return _deliver(result, out,
                    result_dtype(np.result_type(np.asarray(grad), np.asarray(logp))))


def cross_entropy(logits, targets, *, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                  temperature=1.0, return_grad=False, grad_out=None):
    """Reference cross-entropy (PyTorch semantics) and its gradient, in float64.

    Per row: ``loss = (1 - eps) * (lse(z) - z[t]) + eps * (lse(z) - mean(z))`` with
    ``z = logits / temperature``; gradient ``(softmax(z) - (1 - eps) * onehot(t) - eps / C)
    / temperature``, times 1 / (rows not ignored) for "mean".
    """
    x = np.asarray(logits)
    out_dtype = result_dtype(x.dtype)
    z = np.atleast_2d(x.astype(np.float64)) / float(temperature)
    t = np.atleast_1d(np.asarray(targets)).astype(np.int64)
    n_rows, n_classes = z.shape
    kept = t != ignore_index
    safe_t = np.where(kept, t, 0)
    eps = float(label_smoothing)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = logsumexp(z, axis=-1)
        picked = z[np.arange(n_rows), safe_t]
        per_row = (1 - eps) * (lse - picked)
        if eps:
            per_row = per_row + eps * (lse - z.mean(axis=-1))
        per_row = np.where(kept, per_row, 0.0)
        count = int(kept.sum())
        if reduction == "none":
            loss = per_row.astype(out_dtype)
            loss = loss[0] if x.ndim == 1 else loss
            scale = 1.0
        elif reduction == "sum":
            loss, scale = out_dtype.type(per_row.sum()), 1.0
        else:
            loss = out_dtype.type(per_row.sum() / count if count else np.nan)
            scale = 1.0 / count if count else 0.0
        if not (return_grad or grad_out is not None):
            return loss
        target_dist = np.full(z.shape, eps / n_classes)
        target_dist[np.arange(n_rows), safe_t] += 1 - eps
        grad = (softmax(z, axis=-1) - target_dist) * (scale / float(temperature))
        grad[~kept] = 0.0
    grad = grad.reshape(x.shape)
    if grad_out is not None:
        grad_out[...] = grad
        return loss, grad_out
    return loss, grad.astype(out_dtype)
