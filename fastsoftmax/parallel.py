"""Thread control and safety of the parallel kernels: ``threads(n)``, fork and the threading
layers.

Numba runs parallel kernels on a threading layer: TBB when the ``tbb`` package is installed,
else GNU OpenMP on Linux, else its own ``workqueue``. Two of them need care (docs/design.md, "Threads"):

- **fork**: a child forked from a process whose GNU OpenMP thread pool has started is killed by
  libgomp as soon as it starts a parallel region ("fork() called from a process already using
  GNU OpenMP"), so a ``multiprocessing`` pool with the fork start method hangs. A child forked
  after the pool started therefore runs every kernel with its serial build: correct, one thread
  per worker process, which is what a pool of workers wants anyway. TBB children are safe and
  keep their threads. This costs no dependency; users who want parallel kernels inside forked
  workers can install ``tbb`` (Numba then picks it) or use the ``spawn`` start method.
- **workqueue** aborts when two threads launch parallel kernels at once; its launches are
  serialised with a lock.

A user's own ``NUMBA_THREADING_LAYER`` is respected: this module never changes the layer.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numba

_forked_after_openmp = False
_launch_lock = threading.Lock()


def active_layer() -> str | None:
    """The threading layer Numba chose, or None before the first parallel launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _after_fork_in_child() -> None:
    global _forked_after_openmp
    if active_layer() == "omp":
        _forked_after_openmp = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_available() -> bool:
    """True when a parallel build may run here: more than one thread, and not a child forked
    from a process whose OpenMP pool had started."""
    return not _forked_after_openmp and numba.get_num_threads() > 1


def launch_guard():
    """Context for one parallel launch: a lock unless the layer is known to be thread-safe.

    Before the first launch the layer is not known yet; ``workqueue`` aborts under concurrent
    launches, so those are serialised too (a lock costs ~0.1 µs against >30 µs of a launch).
    """
    if active_layer() in ("omp", "tbb"):
        return contextlib.nullcontext()
    return _launch_lock


@contextlib.contextmanager
def threads(n: int):
    """Run the enclosed calls with at most ``n`` threads (in the calling thread).

    Parameters
    ----------
    n : int
        Between 1 and the size of Numba's pool (``NUMBA_NUM_THREADS``, by default the number
        of CPUs). Numba's setting is per Python thread, so other threads are not affected; the
        previous setting is restored on exit, also after an exception.

    Examples
    --------
    >>> import numpy as np, fastsoftmax
    >>> with fastsoftmax.threads(1):
    ...     p = fastsoftmax.softmax(np.zeros((4096, 64)))
    >>> float(p[0, 0])
    0.015625
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"threads: n must be an int between 1 and {limit} "
                         f"(NUMBA_NUM_THREADS), got {n!r}")
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(previous)
