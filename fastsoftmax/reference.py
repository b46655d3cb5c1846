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

__all__ = ["softmax", "log_softmax", "logsumexp", "result_dtype"]


def result_dtype(x_dtype, dtype=None) -> np.dtype:
    """The dtype a function returns for input ``x_dtype`` (the dtype policy of SPEC §2)."""
    if dtype is not None:
        return np.dtype(dtype)
    x_dtype = np.dtype(x_dtype)
    if x_dtype.kind == "f" and x_dtype.itemsize in (2, 4, 8):
        return x_dtype.newbyteorder("=")
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
