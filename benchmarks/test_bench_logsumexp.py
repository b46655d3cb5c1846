"""Benchmarks of ``logsumexp`` (parametrised in conftest.py over shapes, dtypes and
implementations)."""


def test_logsumexp(run_benchmark):
    run_benchmark("logsumexp")
