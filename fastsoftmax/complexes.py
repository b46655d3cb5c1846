"""logsumexp of complex numbers, as ``scipy.special.logsumexp`` computes it.

Complex input is rare in the softmax family (a sum of complex exponentials: phases in signal
processing, wave functions), so it is computed in NumPy rather than by a kernel, with SciPy
1.17's algorithm. Of each row, the first element of largest real part ``a`` is taken apart,
``log(sum(exp(x))) = a + log1p(sum(exp(others - a)))``; where that is not finite (infinite or
NaN elements), ``log(sum(exp(x)))`` directly, whose infinities follow C99 (the phases of
infinite elements decide). The imaginary part is wrapped into (-pi, pi].
"""

from __future__ import annotations

import math

import numpy as np

from .arguments import check_axis, is_reduced, move_axis_last


def is_complex(x) -> bool:
    """Whether ``x`` (an array, a scalar or a sequence; not a tensor) holds complex numbers."""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, np.dtype):
        return dtype.kind == "c"
    if dtype is not None or isinstance(x, (str, bytes)):
        return False  # a tensor: the tensor adapter's messages apply
    try:
        return np.iscomplexobj(x)
    except (TypeError, ValueError):  # not array-like: the argument layer names the problem
        return False


def complex_logsumexp(x, axis, keepdims: bool, return_sign: bool, func: str = "logsumexp"):
    """``log(sum(exp(x)))`` of complex ``x`` along ``axis`` (an int, a tuple or None); with
    ``return_sign``, ``(log|sum|, sum / |sum|)``."""
    x = np.asarray(x)
    if x.dtype.kind != "c" or x.dtype.itemsize > 16:
        x = x.astype(np.complex128)
    axis = check_axis(axis, x.ndim, func, several=True)
    shape = tuple(1 if is_reduced(i, axis) else n for i, n in enumerate(x.shape))
    rows = move_axis_last(x, axis).reshape(math.prod(shape), -1) if x.size else \
        np.empty((math.prod(shape), 0), x.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if rows.shape[1]:
            top = np.argmax(rows.real, axis=1)[:, None]  # first of the largest real parts
            shift = np.take_along_axis(rows, top, axis=1)
            others = np.exp(rows - shift)
            np.put_along_axis(others, top, 0, axis=1)
            value = np.log1p(np.sum(others, axis=1, keepdims=True)) + shift
        else:
            value = np.full((rows.shape[0], 1), np.nan, x.dtype)
        direct = np.sum(np.exp(rows), axis=1, keepdims=True)
        finite = np.isfinite(value)
        # the phase of the direct sum, as SciPy takes it: sum / |sum| (NaN for infinities), 0
        sign = np.where(finite, np.exp(1j * value.imag),
                        np.where(direct == 0, 0, direct / np.abs(direct)))
        value = np.where(finite, value, np.log(direct))
    if rows.shape[1] == 0:
        sign = np.full_like(sign, -1.0)  # SciPy: the sign of the -inf of an empty sum
    imag = value.imag
    imag = np.where(np.abs(imag) < np.pi, imag, -((np.pi - imag) % (2 * np.pi) - np.pi))
    value = (value.real + 1j * imag).astype(x.dtype).reshape(shape)
    sign = sign.astype(x.dtype).reshape(shape)
    if not keepdims:
        value = np.squeeze(value, axis=axis)
        sign = np.squeeze(sign, axis=axis)
    value, sign = value[()], sign[()]  # NumPy scalars for a 0-d result
    return (value.real, sign) if return_sign else value
