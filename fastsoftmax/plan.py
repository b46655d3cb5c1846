"""Planning: which kernel runs a batch of rows, serial or parallel, whole rows or split rows.

All thresholds live here, so a measurement that moves one changes one line.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np

from .parallel import launch_guard, parallel_available
from .kernels import sampling as sampling_kernels
from .kernels import softmax as kernels

# Below this many elements a call runs the serial build: waking the thread pool costs a few
# microseconds (over 100 after an idle pause), more than the whole of a small batch.
SERIAL_MAX_ELEMENTS = 1 << 15
# Rows are split across threads (chunks of SPLIT_CHUNK elements) when there are fewer rows
# than threads and each row has at least SPLIT_MIN_COLS elements: one 4M-column row would
# otherwise run on one thread. The chunk size is fixed, not derived from the thread count, so
# results do not depend on how many threads run.
SPLIT_CHUNK = 1 << 16
SPLIT_MIN_COLS = 2 * SPLIT_CHUNK

ROW_KERNELS = {
    "softmax": kernels.softmax_rows,
    "log_softmax": kernels.log_softmax_rows,
    "logsumexp": kernels.logsumexp_rows,
}


def use_parallel(n_rows: int, n_cols: int) -> bool:
    """True when a batch is large enough to be worth waking the threads for (and threads may
    run here: see :mod:`fastsoftmax.threads` for forked children)."""
    return n_rows * n_cols > SERIAL_MAX_ELEMENTS and parallel_available()


def use_split(n_rows: int, n_cols: int) -> bool:
    """True when rows are few and long enough that splitting them beats one row per thread."""
    return n_cols >= SPLIT_MIN_COLS and n_rows < numba.get_num_threads()


def run(op: str, batch, *, parallel=None, split=None) -> None:
    """Compute ``op`` ("softmax", "log_softmax", "logsumexp") on ``batch``.

    ``parallel`` and ``split`` force a choice (tests compare them); None lets the plan pick.
    """
    n_rows, n_cols = batch.n_rows, batch.n_cols
    if parallel is None:
        parallel = use_parallel(n_rows, n_cols)
    if split is None:
        split = parallel and use_split(n_rows, n_cols)
    # Temperature 1 is passed as None: the kernels are then compiled without the multiply.
    inv_t = None if batch.inv_t == 1.0 else batch.x.dtype.type(batch.inv_t)
    if split and n_rows and n_cols:
        _run_split(op, batch, parallel, inv_t)
        return
    kernel = ROW_KERNELS[op]
    if not parallel:
        kernel.serial(batch.x, batch.x_stride, batch.mask, batch.mask_stride, batch.out,
                      batch.out_stride, n_rows, n_cols, inv_t)
        return
    with launch_guard():
        kernel.parallel(batch.x, batch.x_stride, batch.mask, batch.mask_stride, batch.out,
                        batch.out_stride, n_rows, n_cols, inv_t)


def run_common(op: str, x_flat, out_flat, n_rows: int, n_cols: int, reduce: bool) -> None:
    """Compute ``op`` on C-contiguous rows (``normalize.common_case``), no mask, T = 1."""
    parallel = use_parallel(n_rows, n_cols)
    if parallel and use_split(n_rows, n_cols):
        from .normalize import RowBatch
        batch = RowBatch(x_flat, n_cols, None, 0, out_flat, 1 if reduce else n_cols,
                         n_rows, n_cols, 1.0, None)
        run(op, batch, parallel=True, split=True)
        return
    kernel = ROW_KERNELS[op]
    if not parallel:
        kernel.serial(x_flat, n_cols, None, 0, out_flat, 1 if reduce else n_cols, n_rows,
                      n_cols, None)
        return
    with launch_guard():
        kernel.parallel(x_flat, n_cols, None, 0, out_flat, 1 if reduce else n_cols, n_rows,
                        n_cols, None)


def _run_split(op: str, b, parallel: bool, inv_t) -> None:
    """Each pass over all chunks of all rows in parallel; per-row combines in between."""
    with launch_guard() if parallel else contextlib.nullcontext():
        _run_split_passes(op, b, parallel, inv_t)


def _run_split_passes(op: str, b, parallel: bool, inv_t) -> None:
    def build(kernel_pair):
        return kernel_pair.parallel if parallel else kernel_pair.serial

    n_rows, n_cols, chunk = b.n_rows, b.n_cols, SPLIT_CHUNK
    n_chunks = math.ceil(n_cols / chunk)
    dtype = b.x.dtype
    chunk_max = np.empty(n_rows * n_chunks, dtype)
    build(kernels.split_max)(b.x, b.x_stride, b.mask, b.mask_stride, n_rows, n_cols, chunk,
                             chunk_max)
    maxima = chunk_max.reshape(n_rows, n_chunks).max(axis=1)  # NaN propagates, as in rows
    chunk_sum = np.empty(n_rows * n_chunks)
    if op == "softmax":
        build(kernels.split_exp_store_sum)(b.x, b.x_stride, b.mask, b.mask_stride, b.out,
                                           b.out_stride, n_rows, n_cols, chunk, inv_t, maxima,
                                           chunk_sum)
    else:
        build(kernels.split_sum_exp)(b.x, b.x_stride, b.mask, b.mask_stride, n_rows, n_cols,
                                     chunk, inv_t, maxima, chunk_sum)
    sums = chunk_sum.reshape(n_rows, n_chunks).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if op == "softmax":
            build(kernels.split_scale)(b.x, b.x_stride, b.mask, b.mask_stride, b.out,
                                       b.out_stride, n_rows, n_cols, chunk,
                                       (1.0 / sums).astype(dtype))
        elif op == "log_softmax":
            build(kernels.split_shift)(b.x, b.x_stride, b.mask, b.mask_stride, b.out,
                                       b.out_stride, n_rows, n_cols, chunk, inv_t, maxima,
                                       np.log(sums).astype(dtype))
        else:  # logsumexp: the max itself where it is not finite, as logsumexp_rows
            finite = np.isfinite(maxima)
            lse = np.where(finite, maxima.astype(np.float64) + np.log(np.where(finite, sums, 1)),
                           maxima)
            b.out[:n_rows * b.out_stride:b.out_stride] = lse


def launch(kernel_pair, n_rows: int, n_cols: int, *args, parallel=None) -> None:
    """Run any row kernel, serial or parallel as the plan decides for ``n_rows`` x ``n_cols``
    (``parallel`` forces the build)."""
    if parallel is None:
        parallel = use_parallel(n_rows, n_cols)
    if parallel:
        with launch_guard():
            kernel_pair.parallel(*args)
    else:
        kernel_pair.serial(*args)


def run_sample(x, x_stride, mask, mask_stride, n_rows: int, n_cols: int, inv_t, min_p: float,
               top_k: int, top_p: float, u: np.ndarray, *, greedy=False,
               parallel=None) -> np.ndarray:
    """Draw one column per row (:mod:`fastsoftmax.kernels.sampling`); returns int64 columns,
    negative codes for rows that cannot be sampled.

    ``inv_t`` is 1/temperature; ``greedy`` ignores it and the filters. Unlike softmax, 1 is
    not passed as None: the multiply is a small part of a draw, and one build fewer halves the
    compile time. The sampling kernel gets one scratch row per thread that may run it (one
    when serial), not one per row. ``parallel`` forces the build (tests compare them); None
    lets the plan pick.
    """
    out = np.empty(n_rows, np.int64)
    if parallel is None:
        parallel = use_parallel(n_rows, n_cols)
    if greedy:
        launch(sampling_kernels.greedy_rows, n_rows, n_cols, x, x_stride, mask, mask_stride,
               n_rows, n_cols, out, parallel=parallel)
    else:
        n_slots = min(n_rows, numba.get_num_threads()) if parallel else min(n_rows, 1)
        workspace = np.empty((n_slots, n_cols + sampling_kernels.GATHER), x.dtype)
        launch(sampling_kernels.sample_rows, n_rows, n_cols, x, x_stride, mask, mask_stride,
               n_rows, n_cols, x.dtype.type(inv_t), float(min_p), int(top_k), float(top_p), u,
               workspace, out, parallel=parallel)
    return out
