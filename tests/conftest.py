import os

import pytest

from fastsoftmax.registry import OPERATIONS

from .cases import FUNCTIONS

PURE_PYTHON = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


@pytest.fixture(params=list(FUNCTIONS))
def func_name(request):
    """Each public function's name in turn."""
    return request.param


# Most of the suite's time is Numba compiling kernels: one compilation per operation, dtype,
# build and combination of options a test exercises (docs/design.md, "Verification"). CI must
# finish in 15 minutes on a 2-core machine, so `make test` runs every operation in every build
# and option, in float32 and bfloat16 at least, but not every product of them; the rest is
# marked `slow` and runs in `make test-slow`:
# - the build and JAX matrices (tests/test_builds.py, tests/test_interop.py) run the softmax
#   family in float32, float64 and bfloat16 and the other operations in float32 and bfloat16.
#   float16 shares the half-precision path of bfloat16 but for its conversions, which
#   tests/test_half.py checks for every bit pattern (the sparse family's float16 runs in the
#   slow part only);
# - the option matrices of the cross-entropy, the sampler's statistical tests and dask's
#   chunkings run in the dtypes of CI_DTYPES_BY_TEST (each dtype's own compilations of those
#   options, and dask's graphs over again, are what the slow part adds).
# Measured with a recorder of every Numba compilation on a 2-core Zen 3 machine (2026-12-06):
# 1385 s of compiling in 16.4 minutes of pytest before this split (docs/design.md).
MATRIX_FILES = ("test_builds.py", "test_interop.py")
FAMILY = ("softmax", "log_softmax", "logsumexp")
FAMILY_CI_DTYPES = ("float32", "float64", "bfloat16")
CI_DTYPES = ("float32", "bfloat16")
CI_DTYPES_BY_TEST = {
    # float32 and float64: the same options in tests/test_cross_entropy.py's
    # test_options_match_torch_autograd
    "test_options_in_every_dtype": ("bfloat16",),
    "test_classes_on_axis_1_match_torch": CI_DTYPES,
    "test_cross_entropy_matches_torch_autograd_on_every_build": FAMILY_CI_DTYPES,
    # the sampler's statistics: the float64 kernel is the float32 one's body
    "test_draws_follow_the_filtered_distribution": ("float32",),
    "test_draws_agree_with_the_reference": ("float32",),
    # dask's graphs over every chunking: the kernels of each dtype are the in-memory ones
    "test_matches_in_memory_for_every_chunking": CI_DTYPES,
}


def _dtype_of(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    dtype = params.get("dtype", params.get("dtype_name"))
    return None if dtype is None else str(getattr(dtype, "__name__", dtype))


def _outside_the_ci_dtypes(item):
    """True for a test that `make test` leaves to `make test-slow`: a dtype of a matrix or of
    an option matrix outside those CI runs it in (see above)."""
    dtype = _dtype_of(item)
    if dtype is None:
        return False
    if item.originalname in CI_DTYPES_BY_TEST:
        return dtype not in CI_DTYPES_BY_TEST[item.originalname]
    if os.path.basename(str(item.fspath)) not in MATRIX_FILES:
        return False
    name = item.callspec.params.get("name")
    if name not in OPERATIONS:
        return False
    return dtype not in (FAMILY_CI_DTYPES if name in FAMILY else CI_DTYPES)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _outside_the_ci_dtypes(item):
            item.add_marker(pytest.mark.slow)
    # Without the JIT (NUMBA_DISABLE_JIT=1, `make coverage`) kernels run as Python, ~10 µs an
    # element: tests marked `large` are left out there.
    if PURE_PYTHON:
        skip = pytest.mark.skip(reason="large input: too slow without the JIT")
        for item in items:
            if "large" in item.keywords:
                item.add_marker(skip)
