"""Planning: which kernel runs a batch of rows, serial or parallel, whole rows or split rows.

All thresholds live here, so a measurement that moves one changes one line.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np

from .parallel import launch_guard, parallel_available
from .kernels import half as half_kernels
from .kernels import sampling as sampling_kernels
from .kernels.halfbits import encode_block
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
# float16 and bfloat16 rows, read as the integers of their bits (kernels/half.py)
HALF_ROW_KERNELS = {
    "softmax": half_kernels.half_softmax_rows,
    "log_softmax": half_kernels.half_log_softmax_rows,
    "logsumexp": half_kernels.half_logsumexp_rows,
}
# Tasks per thread of the half-precision row kernels: each task allocates one float32 row
# buffer for its group of rows; a few tasks per thread even out uneven progress.
HALF_TASKS_PER_THREAD = 4


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
    half = is_half(batch.x)
    # Temperature 1 is passed as None: the kernels are then compiled without the multiply.
    compute_type = np.float32 if half else batch.x.dtype.type
    inv_t = None if batch.inv_t == 1.0 else compute_type(batch.inv_t)
    if split and n_rows and n_cols:
        _run_split(op, batch, parallel, inv_t)
        return
    if half:
        tasks = HALF_TASKS_PER_THREAD * numba.get_num_threads() if parallel else 1
        group = max(1, -(-n_rows // tasks))
        args = (batch.x, batch.x_stride, batch.mask, batch.mask_stride, batch.out,
                batch.out_stride, n_rows, n_cols, inv_t, group)
        launch_build(HALF_ROW_KERNELS[op], parallel, *args)
        return
    launch_build(ROW_KERNELS[op], parallel, batch.x, batch.x_stride, batch.mask,
                 batch.mask_stride, batch.out, batch.out_stride, n_rows, n_cols, inv_t)


def run_common(op: str, x_flat, out_flat, n_rows: int, n_cols: int, reduce: bool) -> None:
    """Compute ``op`` on C-contiguous rows (``normalize.common_case``), no mask, T = 1."""
    parallel = use_parallel(n_rows, n_cols)
    if parallel and use_split(n_rows, n_cols):
        from .normalize import RowBatch
        batch = RowBatch(x_flat, n_cols, None, 0, out_flat, 1 if reduce else n_cols,
                         n_rows, n_cols, 1.0, None)
        run(op, batch, parallel=True, split=True)
        return
    launch_build(ROW_KERNELS[op], parallel, x_flat, n_cols, None, 0, out_flat,
                 1 if reduce else n_cols, n_rows, n_cols, None)


def _run_split(op: str, b, parallel: bool, inv_t) -> None:
    """Each pass over all chunks of all rows in parallel; per-row combines in between."""
    with launch_guard() if parallel else contextlib.nullcontext():
        _run_split_passes(op, b, parallel, inv_t)


def is_half(x_flat: np.ndarray) -> bool:
    """True when the rows are float16 or bfloat16 bits (integer views: normalize.py)."""
    return x_flat.dtype.kind in "ui"


def _run_split_passes(op: str, b, parallel: bool, inv_t) -> None:
    """max pass, per-row combine, sum pass, per-row combine, last pass. float32/float64 rows:
    softmax stores the exponentials in the sum pass and scales them last. Half-precision rows
    (kernels/half.py): every pass widens its chunk, and softmax's last pass recomputes the
    exponentials, scales and rounds once (a half-precision ``out`` cannot hold them between)."""
    def build(kernel_pair):
        return kernel_pair.parallel if parallel else kernel_pair.serial

    half = is_half(b.x)
    n_rows, n_cols, chunk = b.n_rows, b.n_cols, SPLIT_CHUNK
    n_chunks = math.ceil(n_cols / chunk)
    dtype = np.dtype(np.float32) if half else b.x.dtype
    rows = (b.x, b.x_stride, b.mask, b.mask_stride)
    rows_out = rows + (b.out, b.out_stride, n_rows, n_cols, chunk)
    chunk_max = np.empty(n_rows * n_chunks, dtype)
    build(half_kernels.half_split_max if half else kernels.split_max)(
        *rows, n_rows, n_cols, chunk, chunk_max)
    maxima = chunk_max.reshape(n_rows, n_chunks).max(axis=1)  # NaN propagates, as in rows
    chunk_sum = np.empty(n_rows * n_chunks)
    if op == "softmax" and not half:
        build(kernels.split_exp_store_sum)(*rows_out, inv_t, maxima, chunk_sum)
    else:
        build(half_kernels.half_split_sum_exp if half else kernels.split_sum_exp)(
            *rows, n_rows, n_cols, chunk, inv_t, maxima, chunk_sum)
    sums = chunk_sum.reshape(n_rows, n_chunks).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if op == "softmax" and half:
            build(half_kernels.half_split_softmax_store)(*rows_out, inv_t, maxima,
                                                         (1.0 / sums).astype(dtype))
        elif op == "softmax":
            build(kernels.split_scale)(*rows_out, (1.0 / sums).astype(dtype))
        elif op == "log_softmax":
            build(half_kernels.half_split_shift if half else kernels.split_shift)(
                *rows_out, inv_t, maxima, np.log(sums).astype(dtype))
        else:
            _store_logsumexp(b, maxima, sums)


def _store_logsumexp(b, maxima, sums) -> None:
    """logsumexp from per-row maxima and sums: the max itself where it is not finite (as
    logsumexp_rows), written in the format of ``b.out`` (float, or half-precision bits)."""
    finite = np.isfinite(maxima)
    lse = np.where(finite, maxima.astype(np.float64) + np.log(np.where(finite, sums, 1)),
                   maxima)
    dst = b.out[:b.n_rows * b.out_stride:b.out_stride]
    if is_half(b.out):
        with np.errstate(over="ignore", invalid="ignore"):  # a few values (few rows): in Python
            encode_block(lse.astype(np.float32), None, None, dst)
    else:
        dst[...] = lse


def launch_build(kernel_pair, parallel: bool, *args) -> None:
    """Run the serial or the parallel build of a kernel (the latter under the launch guard)."""
    if not parallel:
        kernel_pair.serial(*args)
        return
    with launch_guard():
        kernel_pair.parallel(*args)


def launch(kernel_pair, n_rows: int, n_cols: int, *args, parallel=None) -> None:
    """Run any row kernel, serial or parallel as the plan decides for ``n_rows`` x ``n_cols``
    (``parallel`` forces the build)."""
    if parallel is None:
        parallel = use_parallel(n_rows, n_cols)
    launch_build(kernel_pair, parallel, *args)


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
