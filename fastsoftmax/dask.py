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

:func:`confidence` and :func:`calibration_error` need whole rows (the top two values of a row,
not sums that combine): the reduced axis is rechunked into one chunk first (the registry's
``dask_whole_rows``), which moves data between workers when it was split. The calibration error
then bins one probability per row, brought together in one task.

Threads: dask already runs several tasks at once, so each task uses ``threads`` threads
(default 1: no oversubscription); raise it when dask runs fewer tasks than cores.

Needs the ``dask`` extra: ``pip install 'fastsoftmax[dask]'``.
"""

from __future__ import annotations

import numpy as np

from . import arguments, plan
from .parallel import threads as thread_limit
from .registry import OPERATIONS

__all__ = ["softmax", "log_softmax", "logsumexp", "confidence", "calibration_error"]


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


def _dask_input(x, func, name, dtype=None):
    """``(x as a dask array, compute dtype, result dtype)``, checked as in memory."""
    da = _dask_array()
    x = x if isinstance(x, da.Array) else da.asarray(x)
    compute, result = arguments.dtype_policy(
        arguments.operand(np.empty(0, x.dtype), func, name), dtype, func)
    if x.ndim == 0:
        raise ValueError(f"{func}: {name} must have at least one dimension, got a 0-d array")
    return x, compute, result


def _mask(where, x, func):
    """``where`` as a boolean dask array of the shape of ``x`` (None stays None)."""
    if where is None:
        return None
    da = _dask_array()
    where = da.asarray(where)
    if where.dtype != np.bool_:
        raise TypeError(f"{func}: where must be a boolean array, got dtype {where.dtype}")
    try:
        return da.broadcast_to(where, x.shape)
    except ValueError:
        raise ValueError(f"{func}: where has shape {where.shape}, which does not broadcast "
                         f"to the shape of x {x.shape}") from None


def _run(op, x, axis, where, dtype, temperature, threads, keepdims=False):
    """The dask graph of ``op`` on dask array ``x`` (arguments checked as in memory)."""
    da = _dask_array()
    func = op.name
    x, compute, result = _dask_input(x, func, "x", dtype)
    axis = arguments.check_axis(axis, x.ndim, func)
    arguments.check_temperature(temperature, func, compute)
    threads = _check_threads(threads, func)
    where = _mask(where, x, func)
    masks = [] if where is None else [where.rechunk(x.chunks)]
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
    """sum(exp((x - row max) / T)) over one block's part of each row, float64. Where the
    in-memory kernel sums the exponentials it has stored (softmax), so does this pass (into
    the block's unused result): a sum of stored values and a sum of values computed in the
    loop are separate loops that LLVM may vectorise in different orders, and the bits of the
    in-memory call are the contract."""
    batch = _block_batch(op, block, mask, axis, cast_to, temperature)
    with thread_limit(threads):
        return _from_rows(plan.row_sums(batch, _rows(maxima, axis), keep=op.split_keeps_exps),
                          block, axis)


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


# --- calibration: whole rows ---------------------------------------------------------------------

def confidence(x, axis=-1, *, temperature=1.0, where=None, threads=1):
    """:func:`fastsoftmax.confidence` of a dask array, lazily: a
    :class:`~fastsoftmax.Confidence` of dask arrays (compute them together, with
    ``dask.compute(*result)``, to read the logits once). The class axis is rechunked whole.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np
    >>> import fastsoftmax.dask as fsd
    >>> x = da.from_array(np.log([[0.7, 0.2, 0.1], [0.5, 0.5, 1e-9]]), chunks=(1, 2))
    >>> label, prob, *_ = dask.compute(*fsd.confidence(x))
    >>> label, prob.round(6)
    (array([0, 0]), array([0.7, 0.5]))
    """
    from .calibration import Confidence
    da = _dask_array()
    func = "confidence"
    x, compute, result = _dask_input(x, func, "logits")
    axis = arguments.check_axis(axis, x.ndim, func)
    arguments.check_temperature(temperature, func, compute)
    threads = _check_threads(threads, func)
    where = _mask(where, x, func)
    squeeze = axis is None
    if squeeze:  # the whole array is one row: 0-d results
        x, axis = x.reshape(1, -1), 1
        where = None if where is None else where.reshape(1, -1)
    rows = da.moveaxis(x, axis, -1).rechunk({x.ndim - 1: -1})
    masks = [] if where is None else [da.moveaxis(where, axis, -1).rechunk(rows.chunks)]
    stacked = da.map_blocks(_confidence_block, rows, *masks, temperature=temperature,
                            threads=threads, chunks=rows.chunks[:-1] + ((5,),),
                            meta=np.empty((0,) * rows.ndim, np.float64))
    fields = [stacked[..., i] for i in range(5)]
    if squeeze:
        fields = [f[0] for f in fields]
    return Confidence(fields[0].astype(np.int64), *(f.astype(result) for f in fields[1:]))


def _confidence_block(block, mask=None, *, temperature, threads):
    """The statistics of a block of whole rows, stacked on a last axis of 5 (float64: labels
    are exact in it)."""
    from .calibration import confidence
    with thread_limit(threads):
        values = confidence(block, temperature=temperature, where=mask)
    return np.stack([np.asarray(v, np.float64) for v in values], axis=-1)


def calibration_error(logits, labels, *, n_bins=15, binning="uniform", norm="l1",
                      temperature=1.0, threads=1):
    """:func:`fastsoftmax.calibration_error` of dask arrays of logits (rows, classes) and
    labels (rows,), lazily (a 0-d dask array). Rows are rechunked whole; each block gives
    its rows' top-label probability and correctness, binned together in one last task.
    Labels out of range are reported when the graph runs.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> import fastsoftmax.dask as fsd
    >>> logits = da.from_array(np.log([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]),
    ...                        chunks=(2, 1))
    >>> round(float(fsd.calibration_error(logits, np.array([0, 1, 0, 0]), n_bins=10)), 6)
    0.4
    """
    import dask
    from .calibration import check_binning
    da = _dask_array()
    func = "calibration_error"
    logits, compute, result = _dask_input(logits, func, "logits")
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"{func}: logits must have shape (rows, classes) with at least one "
                         f"class, got {logits.shape}")
    labels = labels if isinstance(labels, da.Array) else da.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{func}: labels must be integer class indices, got dtype "
                        f"{labels.dtype}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{func}: labels must have shape {logits.shape[:1]} for logits of "
                         f"{logits.shape[0]} rows, got {labels.shape}")
    check_binning(n_bins, binning, func, norm)
    arguments.check_temperature(temperature, func, compute)
    threads = _check_threads(threads, func)
    rows = logits.rechunk({1: -1})
    labels = labels.rechunk((rows.chunks[0],))
    per_row = da.map_blocks(_labelled_block, rows, labels[:, None], temperature=temperature,
                            threads=threads, chunks=(rows.chunks[0], (2,)),
                            meta=np.empty((0, 0), np.float64))
    value = dask.delayed(_error_of_rows)(per_row, n_bins, binning, norm, result)
    return da.from_delayed(value, shape=(), dtype=result)


def _labelled_block(block, labels, *, temperature, threads):
    """(top-label probability, label right) of each row of a block, as float64 columns."""
    from .calibration import labelled
    with thread_limit(threads):
        probs, correct, _, _ = labelled(OPERATIONS["calibration_error"], block, labels[:, 0],
                                        temperature)
    return np.stack([probs, correct], axis=-1)


def _error_of_rows(per_row, n_bins, binning, norm, result):
    from .calibration import error_of
    return error_of(per_row[:, 0], per_row[:, 1].astype(bool), n_bins, binning, norm, result,
                    False)
