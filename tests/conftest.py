import os

import pytest

from fastsoftmax.registry import OPERATIONS

from .cases import FUNCTIONS

PURE_PYTHON = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


@pytest.fixture(params=list(FUNCTIONS))
def func_name(request):
    """Each public function's name in turn."""
    return request.param


# Most of the suite's time is Numba compiling kernels: one set per operation and dtype, and the
# build matrix (tests/test_builds.py) and the read-only JAX inputs (tests/test_interop.py) each
# compile every build of every operation in every dtype. CI must finish in 15 minutes: `make
# test` runs the matrices for the softmax family in every dtype and for the other operations
# in float32 and bfloat16 (the half-precision path, which float16 shares but for its
# conversions, tested in tests/test_half.py); the rest of the matrices is marked `slow` and
# runs in `make test-slow`. Time measured on 2026-12-02: 22.8 minutes of pytest on a 2-core Zen
# 3 machine; after fewer compiled variants (read-only inputs typed as writable ones), 10.2 on
# a 2-core Zen 5 one, ~2x faster at compiling (docs/design.md, "Verification").
MATRIX_FILES = ("test_builds.py", "test_interop.py")
CI_DTYPES = ("float32", "bfloat16")
FAMILY = ("softmax", "log_softmax", "logsumexp")


def _outside_the_ci_matrix(item):
    """True for a test of the build or JAX matrix of an operation outside the softmax family
    in a dtype outside CI_DTYPES."""
    if os.path.basename(str(item.fspath)) not in MATRIX_FILES:
        return False
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = params.get("name")
    dtype = params.get("dtype", params.get("dtype_name"))
    dtype = getattr(dtype, "__name__", dtype)
    return (name in OPERATIONS and name not in FAMILY and dtype is not None
            and str(dtype) not in CI_DTYPES)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _outside_the_ci_matrix(item):
            item.add_marker(pytest.mark.slow)
    # Without the JIT (NUMBA_DISABLE_JIT=1, `make coverage`) kernels run as Python, ~10 µs an
    # element: tests marked `large` are left out there.
    if PURE_PYTHON:
        skip = pytest.mark.skip(reason="large input: too slow without the JIT")
        for item in items:
            if "large" in item.keywords:
                item.add_marker(skip)
