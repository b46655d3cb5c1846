"""softmax, log_softmax and logsumexp on dask arrays, chunked along any axis.

Each task runs fastsoftmax kernels on its block. When the reduced axis lies in one chunk, one
``map_blocks`` does the whole job. When it is split over several chunks, the in-memory
algorithm runs distributed, without rechunking the user's array: the row maxima (a dask
reduction), then per block the sums of ``exp((x - max) / T)`` (summed over the chunks of a
row), then per block the normalisation with the row's (max, sum) — the same passes, in the
same arithmetic, as the in-memory kernels.

Threads: dask already runs several tasks at once, so each task's kernel uses ``threads``
threads (default 1: no oversubscription); raise it when dask runs fewer tasks than cores.

Needs the ``dask`` extra: ``pip install 'fastsoftmax[dask]'``.
"""

from __future__ import annotations

import numpy as np

from . import api
from .kernels import softmax as kernels
from .normalize import normalize_axis, normalize_temperature, prepare, resolve_dtypes
from .parallel import threads as thread_limit

__all__ = ["softmax", "log_softmax", "logsumexp"]


def _dask_array():
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastsoftmax.dask needs dask: pip install 'fastsoftmax[dask]'") from exc
    return da


def _inputs(func, x, axis, where, dtype, temperature, threads):
    da = _dask_array()
    x = x if isinstance(x, da.Array) else da.asarray(x)
    compute, result = resolve_dtypes(x.dtype, dtype, func)
    if x.ndim == 0:
        raise ValueError(f"{func}: x must have at least one dimension, got a 0-d array")
    axis = normalize_axis(axis, x.ndim, func)
    inv_t = normalize_temperature(temperature, func, compute)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{func}: threads must be a positive int, got {threads!r}")
    if where is not None:
        where = da.asarray(where)
        if where.dtype != np.bool_:
            raise TypeError(f"{func}: where must be a boolean array, got dtype {where.dtype}")
        try:
            where = da.broadcast_to(where, x.shape).rechunk(x.chunks)
        except ValueError:
            raise ValueError(f"{func}: where has shape {where.shape}, which does not broadcast "
                             f"to the shape of x {x.shape}") from None
    axes = tuple(range(x.ndim)) if axis is None else (axis,)
    single = all(len(x.chunks[a]) == 1 for a in axes)
    return da, x, axis, axes, where, compute, result, inv_t, single


def _with_threads(n, fn, *args, **kwargs):
    with thread_limit(min(n, _max_threads())):
        return fn(*args, **kwargs)


def _max_threads():
    import numba
    return numba.config.NUMBA_NUM_THREADS


def _whole_rows(block, mask=None, *, op, axis, temperature, cast_to, threads):
    fn = getattr(api, op)
    kwargs = {"keepdims": True} if op == "logsumexp" else {"temperature": temperature}
    return _with_threads(threads, fn, block, axis=axis, where=mask, dtype=cast_to, **kwargs)


def _block_max(block, mask=None, *, axis, compute):
    """Row maxima of one block (NaN propagates, -inf where nothing is selected)."""
    return np.max(block.astype(compute, copy=False), axis=axis, keepdims=True,
                  where=True if mask is None else mask, initial=-np.inf)


def _row_values(values, axis):
    """Per-row values (keepdims shape) in the row order of ``prepare`` (axis moved last)."""
    moved = values if axis is None else np.moveaxis(values, axis, -1)
    return np.ascontiguousarray(moved).reshape(-1)


def _from_row_values(flat, like, axis):
    """Inverse of :func:`_row_values`: back to the keepdims shape of ``like``."""
    if axis is None:
        return flat.reshape(like.shape)
    return np.moveaxis(flat.reshape(np.moveaxis(like, axis, -1).shape), -1, axis)


def _block_sums(block, maxima, mask=None, *, axis, compute, inv_t, threads):
    """sum(exp((x - row max) / T)) over this block's part of every row (float64)."""
    batch = prepare("softmax", block, axis, mask, None, compute)
    sums = np.zeros(batch.n_rows)
    if batch.n_rows and batch.n_cols:
        kernel = kernels.split_sum_exp.parallel if threads > 1 else kernels.split_sum_exp.serial
        _with_threads(threads, kernel, batch.x, batch.x_stride, batch.mask, batch.mask_stride,
                      batch.n_rows, batch.n_cols, batch.n_cols, _inv(inv_t, compute),
                      _row_values(maxima, axis).astype(compute), sums)
    return _from_row_values(sums, maxima, axis)


def _inv(inv_t, compute):
    return None if inv_t == 1.0 else np.dtype(compute).type(inv_t)


def _block_normalise(block, maxima, sums, mask=None, *, op, axis, compute, inv_t, threads):
    """softmax or log_softmax of one block given its rows' global max and sum."""
    batch = prepare(op, block, axis, mask, None, compute, temperature=1.0 / inv_t)
    if batch.n_rows and batch.n_cols:
        m = _row_values(maxima, axis).astype(compute)
        s = _row_values(sums, axis)
        build = "parallel" if threads > 1 else "serial"
        args = (batch.x, batch.x_stride, batch.mask, batch.mask_stride, batch.out,
                batch.out_stride, batch.n_rows, batch.n_cols, batch.n_cols)
        with np.errstate(divide="ignore", invalid="ignore"):
            if op == "softmax":
                _with_threads(threads, getattr(kernels.split_exp_store_sum, build), *args,
                              _inv(inv_t, compute), m, np.empty(batch.n_rows))
                _with_threads(threads, getattr(kernels.split_scale, build), *args,
                              (1.0 / s).astype(compute))
            else:
                _with_threads(threads, getattr(kernels.split_shift, build), *args,
                              _inv(inv_t, compute), m, np.log(s).astype(compute))
    return batch.finish()


def _reduced_chunks(x, axes):
    return tuple((1,) * len(c) if i in axes else c for i, c in enumerate(x.chunks))


def _row_stats(da, x, axes, axis, where, compute, inv_t, threads):
    """Dask arrays of the row maxima and sums, keepdims-shaped (one chunk along ``axes``)."""
    masks = [] if where is None else [where]
    maxima = da.map_blocks(_block_max, x, *masks, axis=axis, compute=compute,
                           chunks=_reduced_chunks(x, axes),
                           meta=np.empty((0,) * x.ndim, compute)
                           ).max(axis=axes, keepdims=True)
    partial = da.map_blocks(_block_sums, x, maxima, *masks, axis=axis, compute=compute,
                            inv_t=inv_t, threads=threads, chunks=_reduced_chunks(x, axes),
                            meta=np.empty((0,) * x.ndim, np.float64))
    return maxima, partial.sum(axis=axes, keepdims=True)


def _elementwise(name, x, axis, temperature, where, dtype, threads):
    da, x, axis, axes, where, compute, result, inv_t, single = _inputs(
        name, x, axis, where, dtype, temperature, threads)
    meta = np.empty((0,) * x.ndim, result)
    arrays = [x] + ([] if where is None else [where])
    if single:
        return da.map_blocks(_whole_rows, *arrays, op=name, axis=axis, cast_to=dtype,
                             temperature=temperature, threads=threads, meta=meta)
    maxima, sums = _row_stats(da, x, axes, axis, where, compute, inv_t, threads)
    out = da.map_blocks(_block_normalise, x, maxima, sums, *arrays[1:], op=name, axis=axis,
                        compute=compute, inv_t=inv_t, threads=threads,
                        meta=np.empty((0,) * x.ndim, compute))
    return out if result == compute else out.astype(result)


def softmax(x, axis=-1, *, temperature=1.0, where=None, dtype=None, threads=1):
    """:func:`fastsoftmax.softmax` of a dask array, lazily (a dask array).

    Same semantics as the in-memory function; ``threads`` bounds each task's kernel threads.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> import fastsoftmax.dask as fsd
    >>> x = da.from_array(np.log(np.arange(1.0, 7.0)).reshape(2, 3), chunks=(1, 2))
    >>> fsd.softmax(x).compute().round(4)
    array([[0.1667, 0.3333, 0.5   ],
           [0.2667, 0.3333, 0.4   ]])
    """
    return _elementwise("softmax", x, axis, temperature, where, dtype, threads)


def log_softmax(x, axis=-1, *, temperature=1.0, where=None, dtype=None, threads=1):
    """:func:`fastsoftmax.log_softmax` of a dask array, lazily (a dask array)."""
    return _elementwise("log_softmax", x, axis, temperature, where, dtype, threads)


def logsumexp(x, axis=-1, *, keepdims=False, where=None, dtype=None, threads=1):
    """:func:`fastsoftmax.logsumexp` of a dask array, lazily (a dask array)."""
    da, x, axis, axes, where, compute, result, inv_t, single = _inputs(
        "logsumexp", x, axis, where, dtype, 1.0, threads)
    arrays = [x] + ([] if where is None else [where])
    if single:
        out = da.map_blocks(_whole_rows, *arrays, op="logsumexp", axis=axis, cast_to=dtype,
                            temperature=1.0, threads=threads, meta=np.empty((0,) * x.ndim, result),
                            chunks=tuple((1,) if i in axes else c
                                         for i, c in enumerate(x.chunks)))
    else:
        maxima, sums = _row_stats(da, x, axes, axis, where, compute, 1.0, threads)
        with np.errstate(divide="ignore", invalid="ignore"):
            finite = da.isfinite(maxima)
            out = da.where(finite, maxima.astype(np.float64) + da.log(da.where(finite, sums, 1)),
                           maxima).astype(result)
    return out if keepdims else out.squeeze(axis=axes)
