"""pytest-benchmark suite: every benchmark case of the registry of operations
(:mod:`fastsoftmax.registry`) on the shapes of the full benchmark (or the case's own),
float32 and float64, for every implementation of :mod:`fastsoftmax.tools.peers` that has the
case and is installed (nothing is generated that could only be skipped). Benchmarks are grouped by
``case|shape|dtype`` so a table compares implementations on the same input; ``extra_info``
carries the bytes moved and GB/s.
"""

from __future__ import annotations

import pytest

from fastsoftmax.tools import bench, peers

DTYPES = ("float32", "float64")


def pytest_generate_tests(metafunc):
    if "implementation" in metafunc.fixturenames:
        combinations = [
            pytest.param(case, implementation, dtype, shape,
                         id=f"{case}-{implementation.replace(' ', '')}-{dtype}-"
                            f"{'x'.join(map(str, shape))}")
            for case in peers.FUNCTIONS
            for implementation in peers.OURS + tuple(peers.installed_peers())
            for dtype in DTYPES if peers.applies(implementation, case, dtype)
            for shape in bench.case_shapes(case, bench.FULL_SHAPES)]
        metafunc.parametrize("case, implementation, dtype, shape", combinations)
