import os

import pytest

from fastsoftmax.registry import OPERATIONS

from .cases import FUNCTIONS

PURE_PYTHON = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


@pytest.fixture(params=list(FUNCTIONS))
def func_name(request):
    """Each public function's name in turn."""
    return request.param


def _kernel_group(item):
    """The operation and dtype a test is parametrised by ("softmax-float32"), or None."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    names = [str(v) for v in params.values() if isinstance(v, str) and v in OPERATIONS]
    if not names:
        return None
    dtype = params.get("dtype")
    return f"{names[0]}-{getattr(dtype, '__name__', dtype)}"


def pytest_collection_modifyitems(config, items):
    # Most of the suite's time is Numba compiling kernels, one set per operation and dtype.
    # Under pytest-xdist with --dist loadgroup (`make test`) the tests of one operation and
    # dtype, in every file, run on one worker, which compiles their kernels once; with the
    # default scheduling, consecutive tests alternate between workers and each worker compiled
    # the same kernels (measured: two workers spent 2.2x the CPU time of one process on the
    # same tests, and took longer).
    for item in items:
        group = _kernel_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # Without the JIT (NUMBA_DISABLE_JIT=1, `make coverage`) kernels run as Python, ~10 µs an
    # element: tests marked `large` are left out there.
    if PURE_PYTHON:
        skip = pytest.mark.skip(reason="large input: too slow without the JIT")
        for item in items:
            if "large" in item.keywords:
                item.add_marker(skip)
