"""Benchmarks of ``sample``: temperature alone, top-k = 50 and top-p = 0.9 at T = 0.8 (the
cases of :data:`fastsoftmax.peers.SAMPLING`), parametrised in conftest.py over shapes, dtypes
and implementations."""

import pytest

from fastsoftmax import peers


@pytest.mark.parametrize("function", list(peers.SAMPLING))
def test_sample(run_benchmark, function):
    run_benchmark(function)
