"""The public functions: softmax, log_softmax and logsumexp.

Each one normalises its arguments into rows (:mod:`fastsoftmax.normalize`), lets
:mod:`fastsoftmax.plan` pick and run a kernel (:mod:`fastsoftmax.kernels`), and returns the
result shaped like the input.
"""

from __future__ import annotations

import numpy as np

from . import interop, plan
from .interop import is_tensor
from .parallel import parallel_available
from .normalize import common_case, prepare

__all__ = ["softmax", "log_softmax", "logsumexp", "warmup"]


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
    return _compute("softmax", x, axis, where, out, dtype, temperature)


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
    return _compute("log_softmax", x, axis, where, out, dtype, temperature)


def logsumexp(x, axis=-1, *, keepdims=False, where=None, out=None, dtype=None):
    """``log(sum(exp(x)))`` along an axis, without overflow.

    Parameters
    ----------
    x, axis, where, dtype
        As in :func:`softmax` (``axis=None`` reduces the whole array).
    keepdims : bool, default False
        Keep the reduced axis with length 1, as in NumPy.
    out : ndarray, optional
        Exact shape and dtype of the result.

    Returns
    -------
    ndarray or scalar
        ``x``'s shape without ``axis``; a NumPy scalar when that shape is ``()`` and
        ``out`` is not given. ``-inf`` for an empty axis or an empty selection, ``+inf`` if
        a row holds ``+inf``, NaN if it holds NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import logsumexp
    >>> float(logsumexp(np.array([1000.0, 1000.0])).round(6))
    1000.693147
    >>> logsumexp(np.zeros((2, 4)), axis=1, keepdims=True).round(6)
    array([[1.386294],
           [1.386294]])
    """
    result = _compute("logsumexp", x, axis, where, out, dtype, 1.0,
                      reduce=True, keepdims=keepdims)
    if out is None and isinstance(result, np.ndarray) and not result.ndim:
        return result[()]
    return result


def _compute(name, x, axis, where, out, dtype, temperature, reduce=False, keepdims=False):
    """Normalise, plan and run one call; the common case on a short path (see common_case)."""
    if (where is None and dtype is None and type(temperature) in (float, int)
            and temperature == 1 and not keepdims):
        rows = common_case(x, axis, out, reduce)
        if rows is not None:
            x_flat, out_flat, n_rows, n_cols, result = rows
            plan.run_common(name, x_flat, out_flat, n_rows, n_cols, reduce)
            return result
    if is_tensor(x) or is_tensor(out) or is_tensor(where):
        return _compute_tensors(name, x, axis, where, out, dtype, temperature, reduce, keepdims)
    batch = prepare(name, x, axis, where, out, dtype, temperature=temperature, reduce=reduce,
                    keepdims=keepdims)
    plan.run(name, batch)
    return batch.finish()


def _compute_tensors(name, x, axis, where, out, dtype, temperature, reduce, keepdims):
    """:func:`_compute` for PyTorch tensors: NumPy views in, a tensor out (interop.py)."""
    expected = interop.result_dtype(x, dtype)
    bits = False
    tensor_in = is_tensor(x)
    if tensor_in:
        # bfloat16 goes in as its bits unless float64 is asked for (then widened first)
        bits_ok = dtype is None or np.dtype(dtype) == np.float32
        x, bits = interop.tensor_to_numpy(x, name, "x", bits_ok=bits_ok)
        bits = bits and bits_ok
    if is_tensor(where):
        where = interop.tensor_to_numpy(where, name, "where", bits_ok=False)[0]
    out_tensor = out
    if is_tensor(out):
        interop.check_out_tensor(out, expected, name)
        out = interop.tensor_to_numpy(out, name, "out", bits_ok=True)[0]
    batch = prepare(name, x, axis, where, out, dtype, temperature=temperature, reduce=reduce,
                    keepdims=keepdims, bfloat16_bits=bits)
    plan.run(name, batch)
    result = batch.finish()
    if out_tensor is not None and result is out:
        return out_tensor
    return interop.to_tensor(result, False) if tensor_in else result


def warmup(dtypes=("float32", "float64"), functions=("softmax", "log_softmax", "logsumexp")):
    """Compile (or load from the disk cache) the kernels of the common calls ahead of time.

    Kernels otherwise compile on first use: about 1-3 s for each function and dtype the first
    time on a machine, a fraction of a second from the cache afterwards. Call this at start-up
    to move that cost out of a latency-sensitive path. It covers the common call (C-contiguous
    input, no ``where``, temperature 1, with and without ``out``), serial and parallel builds,
    and rows split across threads; other variants still compile on first use.

    Parameters
    ----------
    dtypes : iterable of dtype-like, default ("float32", "float64")
        Also "float16" and "bfloat16" (the half-precision kernels; no ml_dtypes needed).
    functions : iterable of str, default ("softmax", "log_softmax", "logsumexp")
        Also "sample" (sampling without ``where``, and greedy decoding; about 10 s per dtype
        cold; half-precision logits are sampled by the float32 kernels).

    Examples
    --------
    >>> import fastsoftmax
    >>> fastsoftmax.warmup(dtypes=["float32"], functions=["softmax"])
    """
    for dtype in dtypes:
        bfloat16 = str(dtype) == "bfloat16" or getattr(dtype, "__name__", "") == "bfloat16"
        if bfloat16:
            x = np.zeros((2, 8), np.uint16)  # bits, as a bfloat16 tensor is handed over
        else:
            dtype = np.dtype(dtype)
            if dtype not in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)):
                raise ValueError("warmup: dtypes must be float32, float64, float16 or "
                                 f"bfloat16, got {dtype}")
            x = np.zeros((2, 8), dtype)
        for name in functions:
            if name not in ("softmax", "log_softmax", "logsumexp", "sample"):
                raise ValueError(f"warmup: unknown function {name!r}")
            builds = ((False, False), (True, False), (True, True))
            if not parallel_available():
                builds = builds[:1]  # e.g. a forked child of an OpenMP process: serial only
            if name == "sample":
                logits = x if x.dtype.kind == "f" and x.itemsize > 2 else x.astype(np.float32)
                for parallel, greedy in {(p, g) for p, _ in builds for g in (False, True)}:
                    plan.run_sample(logits.reshape(-1), 8, None, 0, 2, 8, 1.0, 0.0, 0, 1.0,
                                    np.zeros(2), greedy=greedy, parallel=parallel)
                continue
            reduce = name == "logsumexp"
            for parallel, split in builds:
                plan.run(name, prepare(name, x, -1, None, None, None, reduce=reduce,
                                       bfloat16_bits=bfloat16),
                         parallel=parallel, split=split)
