"""Benchmarks of ``cross_entropy``: the loss alone, and the loss with its gradient (the
training step), parametrised in conftest.py over shapes, dtypes and implementations."""


def test_cross_entropy(run_benchmark):
    run_benchmark("cross_entropy")


def test_cross_entropy_grad(run_benchmark):
    run_benchmark("cross_entropy_grad")
