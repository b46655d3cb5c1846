"""Accuracy bounds against the float64 reference computed from the same inputs."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.large

import fastsoftmax
from fastsoftmax import reference

# (dtype, max relative error on elements >= 1e-30, max |row sum - 1|)
BOUNDS = {np.float32: (5e-6, 1e-5), np.float64: (1e-13, 1e-12)}


def hard_rows(rng, dtype):
    """Row batches of different spreads, offsets and lengths."""
    yield "narrow", rng.standard_normal((64, 1000))
    yield "wide spread", rng.standard_normal((64, 1000)) * 20
    yield "huge offset", rng.standard_normal((16, 1000)) + (1e4 if dtype == np.float64 else 1e3)
    yield "very wide", rng.standard_normal((8, 5000)) * 300
    yield "long rows", rng.standard_normal((2, 300_000)) * 5
    yield "one hot-ish", np.where(rng.random((32, 512)) < 0.01, 30.0, 0.0)
    yield "uniform", np.zeros((4, 100_000))
    # values that sweep exp's whole range, including the reduction boundaries k*ln2/2
    yield "exp sweep", -np.linspace(0, 100, 40_001)[None, :] * np.ones((2, 1))


def relative_error(got, want, floor=1e-30):
    keep = want >= floor
    return float((np.abs(got.astype(np.float64) - want)[keep] / want[keep]).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_within_bounds(dtype):
    rel_bound, sum_bound = BOUNDS[dtype]
    rng = np.random.default_rng(10)
    for name, rows in hard_rows(rng, dtype):
        x = rows.astype(dtype)
        got = fastsoftmax.softmax(x)
        want = reference.softmax(x.astype(np.float64))
        err = relative_error(got, want)
        assert err <= rel_bound, f"{name} {dtype.__name__}: relative error {err:.3g}"
        sums = np.abs(got.astype(np.float64).sum(axis=-1) - 1).max()
        assert sums <= sum_bound, f"{name} {dtype.__name__}: row sums off by {sums:.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_and_logsumexp_within_bounds(dtype):
    rel_bound, _ = BOUNDS[dtype]
    rng = np.random.default_rng(11)
    for name, rows in hard_rows(rng, dtype):
        x = rows.astype(dtype)
        x64 = x.astype(np.float64)
        # log_softmax: absolute error relative to the magnitudes subtracted
        scale = 1.0 + np.abs(x64).max(axis=-1, keepdims=True)
        err = np.abs(fastsoftmax.log_softmax(x).astype(np.float64)
                     - reference.log_softmax(x64)) / scale
        assert err.max() <= rel_bound, f"log_softmax {name}: {err.max():.3g}"
        err = np.abs(fastsoftmax.logsumexp(x).astype(np.float64)
                     - reference.logsumexp(x64)) / scale[..., 0]
        assert err.max() <= rel_bound, f"logsumexp {name}: {err.max():.3g}"


def numpy_float32_softmax(x, temperature=1.0):
    z = x / np.float32(temperature)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 0.3, 2.0])
def test_never_worse_than_twice_numpy_float32(temperature):
    rng = np.random.default_rng(12)
    for name, rows in hard_rows(rng, np.float32):
        x = rows.astype(np.float32)
        want = reference.softmax(x, temperature=temperature)
        ours = relative_error(fastsoftmax.softmax(x, temperature=temperature), want)
        numpys = relative_error(numpy_float32_softmax(x, temperature), want)
        assert ours <= max(2 * numpys, 1e-6), f"{name}: ours {ours:.3g}, NumPy {numpys:.3g}"
