import os

import pytest

from .cases import FUNCTIONS

PURE_PYTHON = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


@pytest.fixture(params=list(FUNCTIONS))
def func_name(request):
    """Each public function's name in turn."""
    return request.param


def pytest_collection_modifyitems(config, items):
    # Without the JIT (NUMBA_DISABLE_JIT=1, `make coverage`) kernels run as Python, ~10 µs an
    # element: tests marked `large` are left out there.
    if PURE_PYTHON:
        skip = pytest.mark.skip(reason="large input: too slow without the JIT")
        for item in items:
            if "large" in item.keywords:
                item.add_marker(skip)
