"""fastsoftmax.dask: equality with the in-memory functions for every chunking, the task graph,
and a LocalCluster with a worker killed mid-computation."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import fastsoftmax

# Without the JIT (make coverage) the graphs here would run kernels as Python for minutes.
pytestmark = pytest.mark.large

da = pytest.importorskip("dask.array")
fsd = pytest.importorskip("fastsoftmax.dask")

NAMES = ("softmax", "log_softmax", "logsumexp")
CHUNKINGS = {
    "along rows": (2, 50),
    "along the axis": (7, 16),
    "both": (3, 16),
    "irregular": ((1, 4, 2), (5, 20, 25)),
}


def hard_array(rng, shape, dtype=np.float64):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    flat = x.reshape(-1)
    flat[3], flat[17], flat[29] = np.inf, np.nan, -np.inf
    return x


def assert_same(got, want, dtype):
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert got.shape == np.shape(want) and got.dtype == np.asarray(want).dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_in_memory_for_every_chunking(name, chunking, dtype):
    rng = np.random.default_rng(40)
    x = hard_array(rng, (7, 50), dtype)
    x[4] = -np.inf  # a row of only -inf
    where = rng.random(x.shape) > 0.3
    where[5] = False  # a row with nothing selected
    X = da.from_array(x, chunks=CHUNKINGS[chunking])
    W = da.from_array(where, chunks=(3, 10))  # chunks of its own: aligned by fastsoftmax
    for axis in (0, 1, -1, None):
        for kwargs in ({}, {"where": W}):
            memory = {**kwargs, "where": where} if kwargs else {}
            got = getattr(fsd, name)(X, axis=axis, **kwargs).compute()
            assert_same(got, getattr(fastsoftmax, name)(x, axis=axis, **memory), dtype)


@pytest.mark.parametrize("name", NAMES)
def test_three_dimensions_every_axis(name):
    rng = np.random.default_rng(41)
    x = hard_array(rng, (4, 6, 9))
    X = da.from_array(x, chunks=(2, 4, 5))
    for axis in (0, 1, 2, None):
        assert_same(getattr(fsd, name)(X, axis=axis).compute(),
                    getattr(fastsoftmax, name)(x, axis=axis), np.float64)


def test_temperature_keepdims_and_dtype():
    rng = np.random.default_rng(42)
    x = rng.standard_normal((5, 40))
    X = da.from_array(x, chunks=(2, 15))
    for name in ("softmax", "log_softmax"):
        assert_same(getattr(fsd, name)(X, temperature=0.6).compute(),
                    getattr(fastsoftmax, name)(x, temperature=0.6), np.float64)
        assert_same(getattr(fsd, name)(X, dtype=np.float32).compute(),
                    getattr(fastsoftmax, name)(x, dtype=np.float32), np.float32)
    for axis in (0, 1, None):
        assert_same(fsd.logsumexp(X, axis=axis, keepdims=True).compute(),
                    fastsoftmax.logsumexp(x, axis=axis, keepdims=True), np.float64)


def test_lazy_and_no_full_row_is_ever_built():
    x = da.random.default_rng(43).standard_normal((64, 4000), chunks=(16, 500))
    y = fsd.softmax(x)
    assert isinstance(y, da.Array) and y.chunks == x.chunks
    keys = set(map(str, dict(y.__dask_graph__()))) - set(map(str, dict(x.__dask_graph__())))
    assert not any("rechunk" in k or "concatenate" in k for k in keys)
    # per block of the input: a max, a partial sum and a normalisation, plus the (small)
    # tree reductions of the per-row statistics
    blocks = x.numblocks[0] * x.numblocks[1]
    assert {k.split("-")[0].strip("('") for k in keys} >= {"_block_max", "_block_sums",
                                                           "_block_finish"}
    assert len(keys) < 6 * blocks
    np.testing.assert_allclose(y.sum(axis=1).compute(), 1.0, rtol=1e-12)


def test_errors():
    X = da.zeros((2, 3), chunks=1)
    with pytest.raises(ValueError, match="axis"):
        fsd.softmax(X, axis=2)
    with pytest.raises(ValueError, match="temperature"):
        fsd.softmax(X, temperature=0)
    with pytest.raises(ValueError, match="threads"):
        fsd.softmax(X, threads=0)
    with pytest.raises(TypeError, match="where must be a boolean"):
        fsd.softmax(X, where=da.zeros((2, 3)))
    with pytest.raises(TypeError, match="complex"):
        fsd.softmax(da.zeros(3, dtype=complex))


def test_local_cluster_survives_a_killed_worker():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(44)
    x = rng.standard_normal((256, 8000)).astype(np.float32)
    want = fastsoftmax.softmax(x)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        X = da.from_array(x, chunks=(32, 2000))
        pids = client.run(os.getpid)
        future = client.compute(fsd.softmax(X))
        time.sleep(1.0)  # workers are loading kernels and computing
        os.kill(pids[sorted(pids)[0]], signal.SIGKILL)  # its nanny restarts it
        got = future.result(timeout=240)
        assert future.status == "finished"
    with pytest.raises(ProcessLookupError):
        os.kill(pids[sorted(pids)[0]], 0)  # the victim is gone: its tasks were recomputed
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-12)
