"""The public functions of the softmax family (softmax, log_softmax, logsumexp) and warmup.

Each one hands its arguments to :mod:`fastsoftmax.arguments`, which lays them out as rows, lets
:mod:`fastsoftmax.plan` pick and run a kernel (:mod:`fastsoftmax.kernels`), and returns the
result shaped like the input. Tensors go through :mod:`fastsoftmax.tensors`.
"""

from __future__ import annotations

import numpy as np

from . import arguments, complexes, plan
from .registry import OPERATIONS, operation
from .tensors import accepts_tensors

__all__ = ["softmax", "log_softmax", "logsumexp", "warmup"]
SOFTMAX, LOG_SOFTMAX, LOGSUMEXP = (OPERATIONS[name] for name in
                                   ("softmax", "log_softmax", "logsumexp"))


def softmax(x, axis=-1, *, temperature=1.0, where=None, out=None, dtype=None):
    """Softmax along an axis: ``exp(x / T) / sum(exp(x / T))``, computed without overflow.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Input of real numbers, at least 1-D. Any strides, byte order or read-only flag.
        float32 is computed in float32, float64 in float64, float16 and bfloat16
        (``ml_dtypes``) in float32 inside the kernel (returned in the input's format), bool
        and integers in float64 (returned as float64). A CPU PyTorch tensor is read without
        a copy and the result is a tensor; JAX arrays are read in place, results are NumPy.
    axis : int or None, default -1
        The axis along which the result sums to 1. ``None`` treats the whole array as one
        row (SciPy's meaning). Note that ``scipy.special.softmax`` defaults to ``None``.
    temperature : float, default 1.0
        Positive, finite: the result is ``softmax(x / temperature)``.
    where : array_like of bool, optional
        Broadcastable to ``x``. Entries that are False are left out: they get 0, and the
        others sum to 1. A row with nothing selected is all zeros.
    out : ndarray, optional
        Where to write the result: exact shape and dtype of the result. May be ``x`` itself
        (in place). Nothing is allocated for the result when it is given.
    dtype : {float32, float64}, optional
        Result dtype; ``x`` is converted to it before computing (like ``torch.softmax``).

    Returns
    -------
    ndarray
        Same shape as ``x``; ``out`` itself when given. For ``axis`` other than the last,
        a freshly allocated result may be a view with non-C-ordered strides.

    Notes
    -----
    Rows with ``+inf`` or NaN give NaN rows, rows of only ``-inf`` give NaN (as SciPy and
    PyTorch); ``-inf`` elements get 0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import softmax
    >>> softmax(np.array([2.0, 1.0, 0.1])).round(6)
    array([0.659001, 0.242433, 0.098566])
    >>> softmax(np.array([[1.0, 1.0], [0.0, np.log(3.0)]]), axis=1)
    array([[0.5 , 0.5 ],
           [0.25, 0.75]])
    """
    return _forward(SOFTMAX, x, axis, where, out, dtype, temperature)


def log_softmax(x, axis=-1, *, temperature=1.0, where=None, out=None, dtype=None):
    """Logarithm of the softmax along an axis: ``x/T - logsumexp(x/T)``, accurately.

    Parameters and semantics as :func:`softmax`. Entries left out by ``where`` get
    ``-inf``; a row with nothing selected is all ``-inf``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import log_softmax
    >>> log_softmax(np.array([0.0, np.log(3.0)])).round(6)
    array([-1.386294, -0.287682])
    """
    return _forward(LOG_SOFTMAX, x, axis, where, out, dtype, temperature)


def logsumexp(x, axis=-1, *, b=None, keepdims=False, return_sign=False, where=None, out=None,
              dtype=None):
    """``log(sum(exp(x)))`` along an axis, without overflow; ``log(sum(b * exp(x)))`` with
    weights, as ``scipy.special.logsumexp``.

    Parameters
    ----------
    x, axis, where, dtype
        As in :func:`softmax` (``axis=None`` reduces the whole array, a tuple of axes all of
        them at once). Complex ``x`` follows SciPy (see Notes).
    b : array_like, optional
        Weights broadcastable with ``x``: the result is ``log(sum(b * exp(x)))``. Elements
        with ``b == 0`` are left out, even when ``x`` is infinite or NaN there. Negative
        weights may make the sum negative: the result is then NaN, unless ``return_sign``.
        The dtype of ``x`` and ``b`` together decides the computation (NumPy's promotion).
    keepdims : bool, default False
        Keep the reduced axes with length 1, as in NumPy.
    return_sign : bool, default False
        Also return the sign of the sum: the result is then ``(log|s|, sign(s))``, the sign
        +1, -1, 0 (a sum of 0) or NaN, in the result's dtype (SciPy's convention: -1 for an
        empty axis).
    out : ndarray, optional
        Exact shape and dtype of the (first) result.

    Returns
    -------
    ndarray or scalar, or a tuple of two of them
        ``x``'s shape without ``axis``; a NumPy scalar when that shape is ``()`` and
        ``out`` is not given. ``-inf`` for an empty axis or an empty selection, ``+inf`` if
        a row holds ``+inf``, NaN if it holds NaN. Where the maximum outweighs the other
        terms at least four to one, the result is ``max + log1p(sum of the others)``: precise
        near 0, as SciPy's.

    Notes
    -----
    Complex input (no ``where``, ``out`` or ``dtype``) returns ``log(sum(exp(x)))`` with the
    imaginary part in (-pi, pi], SciPy's algorithm in NumPy; with ``return_sign`` the "sign"
    is the phase ``exp(i * angle)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import logsumexp
    >>> float(logsumexp(np.array([1000.0, 1000.0])).round(6))
    1000.693147
    >>> logsumexp(np.zeros((2, 4)), axis=1, keepdims=True).round(6)
    array([[1.386294],
           [1.386294]])
    >>> float(logsumexp(np.array([0.0, -40.0])))  # log1p(exp(-40)), not 0
    4.248354255291589e-18
    >>> value, sign = logsumexp(np.array([1.0, 2.0]), b=np.array([1.0, -1.0]),
    ...                         return_sign=True)
    >>> float(value.round(6)), float(sign)
    (1.541325, -1.0)
    """
    try:
        if b is None and not return_sign:
            return _forward(LOGSUMEXP, x, axis, where, out, dtype, 1.0, keepdims)
        result = _weighted(LOGSUMEXP, x, b, axis, where, out, dtype, keepdims, return_sign)
    except TypeError:  # the argument layer refuses complex x: checked only then (no cost)
        if not complexes.is_complex(x):
            raise
        if b is not None or where is not None or out is not None or dtype is not None:
            raise TypeError("logsumexp: complex x takes no b, where, out or dtype (SciPy's "
                            "complex logsumexp has none)") from None
        return complexes.complex_logsumexp(x, axis, keepdims, return_sign)
    if out is None and isinstance(result, tuple):
        return tuple(r[()] if isinstance(r, np.ndarray) and not r.ndim else r for r in result)
    if out is None and isinstance(result, np.ndarray) and not result.ndim:
        return result[()]
    return result


@accepts_tensors("x", "b", "where", "out")
def _weighted(op, x, b, axis, where, out, dtype, keepdims, return_sign):
    batch = arguments.prepare_weighted_logsumexp(op, x, b, axis, where, out, dtype,
                                                 keepdims=keepdims, return_sign=return_sign)
    return plan.run(op, batch)


def _forward(op, x, axis, where, out, dtype, temperature, keepdims=False):
    """Run one call of the softmax family. The common call (a C-contiguous float32/float64
    ndarray, no options) takes a short path that skips the argument layer's generality and
    the tensor adapter (arguments.contiguous_rows: a tensor never qualifies)."""
    if (where is None and dtype is None and type(temperature) in (float, int)
            and temperature == 1 and not keepdims):
        rows = arguments.contiguous_rows(x, axis, out, op.reduces)
        if rows is not None:
            x_rows, out_rows, n_rows, n_cols, result = rows
            plan.run_contiguous(op, x_rows, out_rows, n_rows, n_cols)
            return result[()] if out is None and not result.ndim else result
    result = _general(op, x, axis, where, out, dtype, temperature, keepdims)
    if out is None and isinstance(result, np.ndarray) and not result.ndim:
        return result[()]  # a NumPy scalar, as NumPy's and SciPy's reductions return
    return result


@accepts_tensors("x", "where", "out")
def _general(op, x, axis, where, out, dtype, temperature, keepdims):
    batch = arguments.prepare_rows(op, x, axis, where, out, dtype, temperature=temperature,
                                   keepdims=keepdims, columns=True)
    return plan.run(op, batch)


def warmup(dtypes=("float32", "float64"), functions=("softmax", "log_softmax", "logsumexp")):
    """Compile (or load from the disk cache) the kernels of the common calls ahead of time.

    Kernels otherwise compile on first use: about 1-3 s for each function and dtype the first
    time on a machine, a fraction of a second from the cache afterwards. Call this at start-up
    to move that cost out of a latency-sensitive path. It covers the common call of each
    function (C-contiguous input, no ``where``, temperature 1, a new result) with every build
    the plan may pick (serial, parallel, rows split across threads); other variants still
    compile on first use.

    Parameters
    ----------
    dtypes : iterable of dtype-like, default ("float32", "float64")
        Also "float16" and "bfloat16" (no ml_dtypes needed).
    functions : iterable of str, default ("softmax", "log_softmax", "logsumexp")
        Any public function: also "softmax_backward", "log_softmax_backward",
        "cross_entropy", "sample" (sampling with top-p, and greedy decoding; about 10 s a
        dtype cold), "confidence", "fit_temperature", "calibration_error", "reliability".

    Examples
    --------
    >>> import fastsoftmax
    >>> fastsoftmax.warmup(dtypes=["float32"], functions=["softmax"])
    """
    ops = [operation(name, "warmup") for name in functions]
    for dtype in dtypes:
        x = _warmup_input(dtype)
        for op in ops:
            function = op.public()
            builds = op.builds if plan.parallel_available() else ("serial",)
            for call in op.calls:
                args, kwargs = call(x)
                for build in builds:
                    with plan.force_build(build):
                        function(*args, **kwargs)


def _warmup_input(dtype):
    """A tiny batch of logits of ``dtype`` (bfloat16 as bits, as a tensor hands it over)."""
    if str(dtype) == "bfloat16" or getattr(dtype, "__name__", "") == "bfloat16":
        return arguments.Bfloat16Bits(np.zeros((2, 8), np.uint16))
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)):
        raise ValueError(f"warmup: dtypes must be float32, float64, float16 or bfloat16, got "
                         f"{dtype}")
    return np.linspace(-1.0, 1.0, 16).reshape(2, 8).astype(dtype)
