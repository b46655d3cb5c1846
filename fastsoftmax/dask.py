"""softmax, log_softmax and logsumexp on dask arrays, chunked along any axis.

Each task runs fastsoftmax on its block, through the same argument layer and plan as in-memory
calls. When the reduced axis lies in one chunk, one ``map_blocks`` of the public function does
the whole job. When it is split over several chunks, the split-row passes of the plan run on
the blocks, without rechunking the user's array: the row maxima of each block (combined by a
dask max), the sums of ``exp((x - max) / T)`` of each block given the row maxima (combined by
a dask sum; for log_softmax and logsumexp, where a row's maximum dominates it, also the sum of
the others, whose log1p keeps a result near 0 precise), then the operation's last pass per
block given each row's (max, sum): the same passes as an in-memory row split across threads.
dask adds the sums of a row's pieces in its own order, so float64 results may differ from
in-memory ones in the last bit or two.

Threads: dask already runs several tasks at once, so each task uses ``threads`` threads
(default 1: no oversubscription); raise it when dask runs fewer tasks than cores.

Needs the ``dask`` extra: ``pip install 'fastsoftmax[dask]'``.
"""

from __future__ import annotations

import numpy as np

from . import arguments, plan
from .parallel import threads as thread_limit
from .registry import OPERATIONS

__all__ = ["softmax", "log_softmax", "logsumexp"]


def _dask_array():
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastsoftmax.dask needs dask: pip install 'fastsoftmax[dask]'") from exc
    return da


def _check_threads(threads, func):
    import numba
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{func}: threads must be a positive int, got {threads!r}")
    return min(threads, numba.config.NUMBA_NUM_THREADS)


def _run(op, x, axis, where, dtype, temperature, threads, keepdims=False):
    """The dask graph of ``op`` on dask array ``x`` (arguments checked as in memory)."""
    da = _dask_array()
    func = op.name
    x = x if isinstance(x, da.Array) else da.asarray(x)
    xo = arguments.operand(np.empty(0, x.dtype), func, "x")
    compute, result = arguments.dtype_policy(xo, dtype, func)
    if x.ndim == 0:
        raise ValueError(f"{func}: x must have at least one dimension, got a 0-d array")
    axis = arguments.check_axis(axis, x.ndim, func)
    arguments.check_temperature(temperature, func, compute)
    threads = _check_threads(threads, func)
    if where is not None:
        where = da.asarray(where)
        if where.dtype != np.bool_:
            raise TypeError(f"{func}: where must be a boolean array, got dtype {where.dtype}")
        try:
            where = da.broadcast_to(where, x.shape).rechunk(x.chunks)
        except ValueError:
            raise ValueError(f"{func}: where has shape {where.shape}, which does not broadcast "
                             f"to the shape of x {x.shape}") from None
    masks = [] if where is None else [where]
    axes = tuple(range(x.ndim)) if axis is None else (axis,)
    # (map_blocks takes ``dtype`` for itself: ours travels as ``cast_to``)
    options = dict(op=op, axis=axis, cast_to=dtype, temperature=temperature, threads=threads)
    reduced_chunks = tuple((1,) * len(c) if i in axes else c for i, c in enumerate(x.chunks))
    if all(len(x.chunks[a]) == 1 for a in axes):  # whole rows in every block
        out = da.map_blocks(_whole_rows, x, *masks, **options,
                            chunks=reduced_chunks if op.reduces else x.chunks,
                            meta=np.empty((0,) * x.ndim, result))
    else:
        maxima = da.map_blocks(_block_max, x, *masks, **options, chunks=reduced_chunks,
                               meta=np.empty((0,) * x.ndim, compute)
                               ).max(axis=axes, keepdims=True)
        sums = da.map_blocks(_block_sums, x, maxima, *masks, **options, chunks=reduced_chunks,
                             meta=np.empty((0,) * x.ndim, np.float64)
                             ).sum(axis=axes, keepdims=True)
        if op.split_log_sum:  # log1p of the rest where a row's maximum dominates it
            rests = da.map_blocks(_block_rests, x, maxima, sums, *masks, **options,
                                  chunks=reduced_chunks, meta=np.empty((0,) * x.ndim, np.float64)
                                  ).sum(axis=axes, keepdims=True)
            sums = da.map_blocks(plan.log_sums_of, maxima, sums, rests, dtype=np.float64)
        if op.reduces:  # the result per row needs only its max and sum; computed in the
            # compute dtype of the maxima, then rounded as the in-memory kernel rounds it
            out = da.map_blocks(_block_finish, maxima, maxima, sums, **options,
                                meta=np.empty((0,) * x.ndim, compute)).astype(result)
        else:
            out = da.map_blocks(_block_finish, x, maxima, sums, *masks, **options,
                                meta=np.empty((0,) * x.ndim, result))
    if op.reduces and not keepdims:
        out = out.squeeze(axis=axes)
    return out


def _block_batch(op, block, mask, axis, cast_to, temperature, keepdims=False):
    kwargs = {} if op.reduces else {"temperature": temperature}
    return arguments.prepare_rows(op, block, axis, mask, None, cast_to, keepdims=keepdims,
                                  **kwargs)


def _whole_rows(block, mask=None, *, op, axis, cast_to, temperature, threads):
    """The whole operation on a block holding whole rows."""
    with thread_limit(threads):
        return plan.run(op, _block_batch(op, block, mask, axis, cast_to, temperature,
                                         keepdims=True))


def _block_max(block, mask=None, *, op, axis, cast_to, temperature, threads):
    """Row maxima of one block's part of each row (keepdims shape)."""
    batch = _block_batch(op, block, mask, axis, cast_to, temperature)
    with thread_limit(threads):
        return _from_rows(plan.row_maxima(batch), block, axis)


def _block_sums(block, maxima, mask=None, *, op, axis, cast_to, temperature, threads):
    """sum(exp((x - row max) / T)) over one block's part of each row, float64."""
    batch = _block_batch(op, block, mask, axis, cast_to, temperature)
    with thread_limit(threads):
        return _from_rows(plan.row_sums(batch, _rows(maxima, axis)), block, axis)


def _block_rests(block, maxima, sums, mask=None, *, op, axis, cast_to, temperature, threads):
    """One block's share of the sums below the maximum of the rows it dominates, float64."""
    batch = _block_batch(op, block, mask, axis, cast_to, temperature)
    with thread_limit(threads):
        return _from_rows(plan.row_rests(batch, _rows(maxima, axis), _rows(sums, axis)), block,
                          axis)


def _block_finish(block, maxima, sums, mask=None, *, op, axis, cast_to, temperature, threads):
    """The last pass on a block given its rows' max and sum (for a reducing operation the
    block is the maxima: its rows have one element, and the result one value each)."""
    batch = _block_batch(op, block, mask, axis, cast_to, temperature, keepdims=op.reduces)
    with thread_limit(threads):
        plan.finish_rows(op, batch, _rows(maxima, axis), _rows(sums, axis))
    return batch.finish()


def _rows(values, axis):
    """Per-row values (keepdims shape) in the row order of the argument layer (axis last)."""
    moved = values if axis is None else np.moveaxis(values, axis, -1)
    return np.ascontiguousarray(moved).reshape(-1)


def _from_rows(flat, block, axis):
    """Inverse of :func:`_rows`: back to the keepdims shape of ``block``."""
    if axis is None:
        return flat.reshape((1,) * block.ndim)
    moved = np.moveaxis(block, axis, -1).shape[:-1] + (1,)
    return np.moveaxis(flat.reshape(moved), -1, axis)


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
    return _run(OPERATIONS["softmax"], x, axis, where, dtype, temperature, threads)


def log_softmax(x, axis=-1, *, temperature=1.0, where=None, dtype=None, threads=1):
    """:func:`fastsoftmax.log_softmax` of a dask array, lazily (a dask array)."""
    return _run(OPERATIONS["log_softmax"], x, axis, where, dtype, temperature, threads)


def logsumexp(x, axis=-1, *, keepdims=False, where=None, dtype=None, threads=1):
    """:func:`fastsoftmax.logsumexp` of a dask array, lazily (a dask array)."""
    return _run(OPERATIONS["logsumexp"], x, axis, where, dtype, 1.0, threads, keepdims)
