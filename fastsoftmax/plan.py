"""Planning: which build runs a batch of rows — serial, row-parallel, or rows split across
threads — and running it.

All thresholds live here, so a measurement that moves one changes one line. The plan knows
operations only through the registry (:mod:`fastsoftmax.registry`): their builds and, for those
that can split rows, their last pass. :func:`force_build` makes every call inside it run one
build, whatever the sizes: the tests compare the builds bit for bit with it, and
:func:`fastsoftmax.warmup` compiles each with it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import numba
import numpy as np

from .arguments import ColumnBatch, RowBatch, writable_arguments
from .kernels import softmax as split_kernels
from .kernels.numerics import BLOCK, DOMINATED_SUM
from .parallel import launch_guard, parallel_available
from .registry import BUILDS

# Below this many elements a call runs the serial build: waking the thread pool costs a few
# microseconds (over 100 after an idle pause), more than the whole of a small batch.
SERIAL_MAX_ELEMENTS = 1 << 15
# Rows are split across threads, in chunks of SPLIT_CHUNK elements, when there are fewer rows
# than threads and each row has at least SPLIT_MIN_COLS elements: one 4M-column row would
# otherwise run on one thread. The chunk size is fixed, not derived from the thread count, and
# the chunks' block sums are added in row order, so results do not depend on the threads.
SPLIT_CHUNK = 1 << 16
SPLIT_MIN_COLS = 2 * SPLIT_CHUNK
# Row kernels run tasks of consecutive rows (kernels/rows.py): each allocates its scratch
# once; a few tasks per thread even out uneven progress.
TASKS_PER_THREAD = 4
# Rows along a strided axis run in tiles of adjacent columns (kernels/softmax.py): one cache
# line of each line of the array a tile crosses, narrower only to give every task a tile.
# (Measured on 32000x2048 float32, axis=0: 16 columns 3.8x the time of the same rows along
# the last axis, 8 columns 4.9x, 32 columns 4.5x, 64 columns 5.9x; docs/performance.md.)
COLUMN_TILE_BYTES = 64
# The kernels that read a tile's columns where they are (registry ``columns_read_in_place``)
# take at most this many bytes of each line of the array at a time, and narrower tiles only to
# give each thread one: wide, because each line of a tile costs a new page and a new stream
# for the prefetchers (on 32000x2048 float32, one thread: 256 columns 5.5x the time of the
# rows along the last axis, 1024 columns 3.6x, 2048 2.8x), narrow enough that a chunk of
# lines (kernels/softmax.py, COLUMN_CHUNK) stays in L2 for its second read.
COLUMN_READ_BYTES = 16384

# linear_cross_entropy computes the logits (rows x classes) a chunk of rows at a time: a
# chunk holds at most LINEAR_CHUNK_BYTES of logits (64 MiB: 512 rows of 32000 classes, 128 of
# 128256 in float32), and its gradient overwrites it. The weight's gradient is accumulated in
# blocks of classes of at most LINEAR_BLOCK_BYTES (a temporary of the block's gradient): the
# extra memory stays ~80 MiB whatever the batch, 1/13 of the unfused float32 logits and
# gradient of 4096 x 32000 (docs/performance.md).
LINEAR_CHUNK_BYTES = 1 << 26
LINEAR_BLOCK_BYTES = 1 << 24

_forced_build = contextvars.ContextVar("fastsoftmax_forced_build", default=None)


@contextlib.contextmanager
def force_build(build: str):
    """Run every call in the block with ``build`` ("serial", "parallel" or "split"), whatever
    its size. An operation that has no such build raises ValueError."""
    if build not in BUILDS:
        raise ValueError(f"force_build: build must be one of {BUILDS}, got {build!r}")
    token = _forced_build.set(build)
    try:
        yield
    finally:
        _forced_build.reset(token)


def choose_build(op, n_rows: int, n_cols: int) -> str:
    """The build of ``op`` for ``n_rows`` rows of ``n_cols``: serial for small batches (and
    where threads may not run: a forked child, one thread), rows split across threads for few
    long rows when the operation can split them, serial for one row that is not split (one
    task: a parallel launch would only add the pool's wake-up), else row-parallel."""
    forced = _forced_build.get()
    if forced is not None:
        if forced not in op.builds:
            raise ValueError(f"{op.name} has no {forced} build (it has {', '.join(op.builds)})")
        return forced
    if n_rows * n_cols <= SERIAL_MAX_ELEMENTS or not parallel_available():
        return "serial"
    if "split" in op.builds and n_cols >= SPLIT_MIN_COLS and n_rows < numba.get_num_threads():
        return "split"
    if n_rows == 1:
        return "serial"  # one task: the same work on one thread, without waking the pool
    return "parallel"


def linear_chunk_rows(n_rows: int, n_classes: int, itemsize: int, chunk_size=None) -> int:
    """Rows of logits a linear_cross_entropy chunk holds: ``chunk_size`` when given, else as
    many as LINEAR_CHUNK_BYTES allow (at least 1, at most ``n_rows``)."""
    if chunk_size is None:
        chunk_size = LINEAR_CHUNK_BYTES // max(1, n_classes * itemsize)
    return max(1, min(n_rows, chunk_size))


def linear_block_classes(n_features: int, itemsize: int) -> int:
    """Classes of a block of the weight's gradient accumulated at once (LINEAR_BLOCK_BYTES)."""
    return max(1, LINEAR_BLOCK_BYTES // max(1, n_features * itemsize))


def task_count(parallel: bool, n_rows: int) -> int:
    """How many tasks a row kernel runs: one serial, a few per thread in parallel."""
    if not parallel:
        return 1
    return max(1, min(n_rows, TASKS_PER_THREAD * numba.get_num_threads()))


def launch(kernel_pair, parallel: bool, *args) -> None:
    """Run the serial or the parallel build of a kernel (the latter under the launch guard),
    read-only arrays handed to it as writable ones (arguments.writable_alias: one compiled
    kernel for both)."""
    args = writable_arguments(args)
    if not parallel:
        kernel_pair.serial(*args)
        return
    with launch_guard():
        kernel_pair.parallel(*args)


def run(op, batch):
    """Compute ``batch`` (from :mod:`fastsoftmax.arguments`) with the build the plan picks;
    return its result (``batch.finish()``)."""
    build = choose_build(op, batch.n_rows, batch.n_cols)
    if isinstance(batch, ColumnBatch):
        run_columns(batch, build != "serial")
    elif build == "split" and isinstance(batch, RowBatch):  # other batches' rows never split
        run_split(op, batch)
    else:
        parallel = build == "parallel"
        launch(batch.kernel, parallel, *batch.args, task_count(parallel, batch.n_rows))
    return batch.finish()


def run_contiguous(op, x, out, n_rows: int, n_cols: int) -> None:
    """Compute ``op`` of the softmax family on C-contiguous rows without ``where`` and at
    temperature 1 (``arguments.contiguous_rows``: ``out`` None for in place): :func:`run`
    without building a batch; the serial build through the operation's two-argument entry
    (registry ``contiguous_call``: a few hundred nanoseconds count for one short row)."""
    build = choose_build(op, n_rows, n_cols)
    if build == "serial":
        op.contiguous_call(x, out)
        return
    x_flat = x.reshape(-1)
    out_flat = None if out is None else out.reshape(-1)
    out_stride = 1 if op.reduces else n_cols
    if build == "parallel":
        launch(op.kernels[0], True, x_flat, n_cols, None, 0, out_flat, out_stride, n_rows,
               n_cols, None, task_count(True, n_rows))
    else:
        run_split(op, RowBatch(op.kernels[0], x_flat, n_cols, None, 0, out_flat, out_stride,
                               n_rows, n_cols, None, None))


def run_columns(batch: ColumnBatch, parallel: bool) -> None:
    """Run a batch of rows along a strided axis in tiles of columns (a split build runs it
    parallel: its rows are columns, already as many as the threads)."""
    tasks = task_count(parallel, batch.n_rows)
    if batch.read_in_place:  # tiles as wide as they may be, at least one per thread
        threads = numba.get_num_threads() if parallel else 1
        per_outer = math.ceil(threads / batch.n_outer)  # tiles each outer index needs
        width = max(1, min(COLUMN_READ_BYTES // batch.x.itemsize,
                           math.ceil(batch.n_inner / per_outer)))
    else:
        width = max(1, COLUMN_TILE_BYTES // batch.x.itemsize)
        while width > 1 and batch.n_outer * math.ceil(batch.n_inner / width) < tasks:
            width //= 2
    n_tiles = batch.n_outer * math.ceil(batch.n_inner / width)
    launch(batch.kernel, parallel, batch.x, batch.n_red, batch.n_inner, batch.out, batch.inv_t,
           width, n_tiles, min(tasks, n_tiles))


# --- rows cut into pieces ------------------------------------------------------------------------
# The passes of a split run, also run by fastsoftmax.dask on each block of a dask array (a row
# then spans several blocks, and the maxima and sums of its pieces are combined by dask).
# ``parallel`` None: the plan decides by size, as for a row kernel.

def _pieces(batch, parallel):
    chunk = max(BLOCK, SPLIT_CHUNK // BLOCK * BLOCK)  # whole blocks: the row kernels' sums
    if parallel is None:
        forced = _forced_build.get()
        parallel = forced in ("parallel", "split") if forced else (
            batch.n_rows * batch.n_cols > SERIAL_MAX_ELEMENTS and parallel_available())
    rows = (batch.x, batch.x_stride, batch.mask, batch.mask_stride)
    return parallel, chunk, rows


def row_maxima(batch: RowBatch, parallel=None) -> np.ndarray:
    """The maximum of the selected elements of each row (NaN with a NaN, -inf if none)."""
    parallel, chunk, rows = _pieces(batch, parallel)
    n_chunks = math.ceil(batch.n_cols / chunk)
    chunk_max = np.empty(batch.n_rows * n_chunks, _compute_dtype(batch))
    launch(split_kernels.split_max, parallel, *rows, batch.n_rows, batch.n_cols, chunk,
           chunk_max)
    return chunk_max.reshape(batch.n_rows, n_chunks).max(axis=1, initial=-np.inf)


def row_sums(batch: RowBatch, maxima: np.ndarray, parallel=None, keep=False,
             log_sums=False) -> np.ndarray:
    """sum(exp((row - maxima[r]) * inv_t)) of the selected elements of each row, float64.
    ``keep``: also store the exponentials in ``batch.out`` (float rows), for a last pass
    that scales them. ``log_sums``: their logarithms instead, as the row kernels take them
    (log1p of the other elements' sum where the maximum dominates a row)."""
    parallel, chunk, rows = _pieces(batch, parallel)
    n_blocks = math.ceil(batch.n_cols / BLOCK)
    block_sums = np.empty(batch.n_rows * n_blocks)
    launch(split_kernels.split_sum_exp, parallel, *rows, batch.out, batch.out_stride,
           batch.n_rows, batch.n_cols, chunk, batch.inv_t, maxima, block_sums, keep)
    sums = np.empty(batch.n_rows)
    split_kernels.add_in_order(block_sums, batch.n_rows, sums)
    if not log_sums:
        return sums
    logs = np.empty(batch.n_rows)
    launch(split_kernels.split_log_sums, parallel, *rows, batch.n_rows, batch.n_cols,
           batch.inv_t, maxima, sums, block_sums, logs)
    return logs


def row_rests(batch: RowBatch, maxima: np.ndarray, sums: np.ndarray, parallel=None):
    """For each row whose maximum dominates (given its whole ``sums``), the sum of the
    exponentials of its elements below the maximum in this batch, else 0: added over the
    pieces of a row, its log1p is the row's log sum (fastsoftmax.dask, :func:`log_sums_of`)."""
    parallel, chunk, rows = _pieces(batch, parallel)
    rests = np.empty(batch.n_rows)
    launch(split_kernels.split_rests, parallel, *rows, batch.n_rows, batch.n_cols, batch.inv_t,
           maxima, sums, rests)
    return rests


def log_sums_of(maxima: np.ndarray, sums: np.ndarray, rests: np.ndarray) -> np.ndarray:
    """The log sums of rows from their maxima, sums and :func:`row_rests` added over pieces."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((sums < DOMINATED_SUM) & np.isfinite(maxima), np.log1p(rests),
                        np.log(sums))


def finish_rows(op, batch: RowBatch, maxima: np.ndarray, sums: np.ndarray,
                parallel=None, kept=False) -> None:
    """The last pass of ``op`` given each row's max and sum of exponentials (their logarithms
    for an operation with ``split_log_sum``; ``kept``: the sum pass kept the exponentials,
    see :func:`row_sums`)."""
    parallel, chunk, rows = _pieces(batch, parallel)
    with np.errstate(divide="ignore", invalid="ignore"):
        launch(op.split_finish, parallel, *rows, batch.out, batch.out_stride, batch.n_rows,
               batch.n_cols, chunk, batch.inv_t, maxima.astype(_compute_dtype(batch)), sums,
               kept)


def run_split(op, batch: RowBatch) -> None:
    """``op`` on rows cut into chunks: each pass over all chunks of all rows in parallel."""
    if not (batch.n_rows and batch.n_cols):
        launch(batch.kernel, False, *batch.args, 1)  # nothing to cut
        return
    keep = op.split_keeps_exps
    maxima = row_maxima(batch, parallel=True)
    sums = row_sums(batch, maxima, parallel=True, keep=keep, log_sums=op.split_log_sum)
    finish_rows(op, batch, maxima, sums, parallel=True, kept=keep)


def _compute_dtype(batch) -> np.dtype:
    """float32 for half-precision bits, else the rows' dtype."""
    return np.dtype(np.float32) if batch.x.dtype.kind in "iu" else batch.x.dtype
