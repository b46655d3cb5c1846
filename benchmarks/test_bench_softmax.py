"""Benchmarks of ``softmax`` (parametrised in conftest.py over shapes, dtypes and
implementations)."""


def test_softmax(run_benchmark):
    run_benchmark("softmax")
