"""The benchmark of one case (parametrised in conftest.py over the registry's cases, shapes,
dtypes and implementations): prepares, warms up (compiles), then times.

In the normal test run (``--benchmark-disable``) each case runs once as a smoke test, on
shapes cut down to at most 2**16 elements so the suite stays quick."""

from __future__ import annotations

import math

import numpy as np

from fastsoftmax.tools import peers

SMOKE_MAX_ELEMENTS = 1 << 16


def _smoke_shape(shape):
    rows, cols = shape
    cols = min(cols, SMOKE_MAX_ELEMENTS)
    return max(1, min(rows, SMOKE_MAX_ELEMENTS // cols)), cols


def test_case(benchmark, request, case, implementation, dtype, shape):
    timed = not request.config.getoption("benchmark_disable")
    case_shape = shape if timed else _smoke_shape(shape)
    x = (np.random.default_rng(0).standard_normal(case_shape) * 3).astype(dtype)
    fn = peers.prepare(implementation, case, x)
    fn()  # compilation and first-touch happen here, before timing
    nbytes = peers.result_bytes(case, x)
    benchmark.group = f"{case}|{'x'.join(map(str, shape))}|{dtype}"
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["elements"] = math.prod(case_shape)
    result = benchmark(fn)
    if benchmark.stats is not None:
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.min / 1e9, 3)
    assert result is not None
