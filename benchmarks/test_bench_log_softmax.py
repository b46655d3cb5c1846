"""Benchmarks of ``log_softmax`` (parametrised in conftest.py over shapes, dtypes and
implementations)."""


def test_log_softmax(run_benchmark):
    run_benchmark("log_softmax")
