"""pytest-benchmark suite: every function family on the shapes of SPEC §5, float32 and
float64, for every implementation of :mod:`fastsoftmax.peers` (peers not installed are
skipped). Benchmarks are grouped by ``function|shape|dtype`` so a table compares
implementations on the same input; ``extra_info`` carries the bytes moved and GB/s.

In the normal test run (``--benchmark-disable``) each case runs once as a smoke test, on
shapes cut down to at most 2**16 elements so the suite stays quick.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastsoftmax import bench, peers

SMOKE_MAX_ELEMENTS = 1 << 16


def pytest_generate_tests(metafunc):
    if "implementation" in metafunc.fixturenames:
        metafunc.parametrize("implementation", peers.OURS + peers.PEERS)
        metafunc.parametrize("dtype", ["float32", "float64"])
        metafunc.parametrize("shape", bench.FULL_SHAPES, ids=lambda s: "x".join(map(str, s)))


def _smoke_shape(shape):
    rows, cols = shape
    cols = min(cols, SMOKE_MAX_ELEMENTS)
    return max(1, min(rows, SMOKE_MAX_ELEMENTS // cols)), cols


@pytest.fixture
def run_benchmark(benchmark, request, implementation, dtype, shape):
    """Call as ``run_benchmark(function)``: prepares, warms up (compiles), then times."""

    def run(function):
        if not peers.is_installed(implementation):
            pytest.skip(f"{implementation} is not installed")
        timed = not request.config.getoption("benchmark_disable")
        case_shape = shape if timed else _smoke_shape(shape)
        x = (np.random.default_rng(0).standard_normal(case_shape) * 3).astype(dtype)
        try:
            fn = peers.prepare(implementation, function, x)
        except NotImplementedError as exc:
            pytest.skip(f"{implementation}: {exc}")
        fn()  # compilation and first-touch happen here, before timing
        nbytes = peers.result_bytes(function, x)
        benchmark.group = f"{function}|{'x'.join(map(str, shape))}|{dtype}"
        benchmark.extra_info["bytes"] = nbytes
        benchmark.extra_info["elements"] = math.prod(case_shape)
        result = benchmark(fn)
        if benchmark.stats is not None:
            benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.min / 1e9, 3)
        assert result is not None
        return result

    return run
