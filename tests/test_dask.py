"""fastsoftmax.dask: equality with the in-memory functions for every operation it supports, in
every dtype and for every chunking (bit for bit where the chunks cut rows at whole blocks), the
builds forced around a graph, the task graph, and a LocalCluster with a worker killed
mid-computation."""

from __future__ import annotations

import os
import signal
import time
import zlib

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import plan
from fastsoftmax.kernels.numerics import BLOCK
from fastsoftmax.registry import OPERATIONS

from .cases import assert_same_bits
from .inputs import DTYPES, HALF_DTYPES, dtype_of, hard_logits, mask_for, random_logits

# Without the JIT (make coverage) the graphs here would run kernels as Python for minutes.
pytestmark = pytest.mark.large

da = pytest.importorskip("dask.array")
fsd = pytest.importorskip("fastsoftmax.dask")

# the operations whose rows can be cut into chunks: those fastsoftmax.dask runs
NAMES = tuple(name for name, op in OPERATIONS.items() if op.split_finish is not None)
# for a (13, 50) batch: every chunking has a partial last chunk
CHUNKINGS = {
    "along rows": (2, 50),
    "along the axis": (13, 16),
    "both": (3, 16),
    "irregular": ((1, 4, 2, 6), (5, 20, 25)),
}


def seeded(*words):
    return np.random.default_rng(zlib.crc32(" ".join(map(str, words)).encode()))


def ulps_apart(got, want):
    """Elementwise distance of two half-precision arrays in units in the last place: how
    many values of the format lie between them (0 and -0 are the same place)."""
    def place(a):
        bits = np.asarray(a).view(np.uint16).astype(np.int32)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits & 0x7FFF)
    return np.abs(place(got) - place(want))


def assert_same(got, want, message=""):
    """The dask result against the in-memory one: same shape and dtype; float32 and float64
    within a tolerance, float16 and bfloat16 within one unit in the last place of the format;
    NaN where NaN and infinities equal in every case."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, message
    if want.dtype.itemsize == 2:
        g, w = got.astype(np.float64), want.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=message)
        special = ~np.isfinite(w)
        np.testing.assert_array_equal(g[special & ~np.isnan(w)], w[special & ~np.isnan(w)],
                                      err_msg=message)
        apart = ulps_apart(got[~special], want[~special])
        assert apart.max(initial=0) <= 1, f"{message}: {int((apart > 1).sum())} elements more " \
            f"than 1 ulp apart, up to {apart.max()}"
        return
    tol = 1e-12 if want.dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=message)


def test_fastsoftmax_dask_runs_every_operation_that_splits_rows_or_takes_whole_rows():
    whole_rows = {name for name, op in OPERATIONS.items() if op.dask_whole_rows}
    assert set(fsd.__all__) == set(NAMES) | whole_rows


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_in_memory_for_every_chunking(name, chunking, dtype):
    rng = seeded("chunkings", dtype)
    # rows of every kind: +inf, -inf entries, ties, huge values, only -inf, a NaN
    x = hard_logits(rng, (13, 50), dtype)
    where = mask_for(rng, x.shape)  # its third row selects nothing
    X = da.from_array(x, chunks=CHUNKINGS[chunking])
    W = da.from_array(where, chunks=(3, 10))  # chunks of its own: aligned by fastsoftmax
    for axis in (0, 1, -1, None):
        for kwargs in ({}, {"where": W}):
            memory = {**kwargs, "where": where} if kwargs else {}
            with np.errstate(all="ignore"):
                got = getattr(fsd, name)(X, axis=axis, **kwargs).compute()
                want = getattr(fastsoftmax, name)(x, axis=axis, **memory)
            assert_same(got, want, f"{name} {dtype} {chunking} axis={axis} {list(kwargs)}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_three_dimensions_every_axis(name, dtype):
    x = hard_logits(seeded("3-D", dtype), (12, 18), dtype).reshape(4, 6, 9)
    X = da.from_array(x, chunks=(2, 4, 5))
    for axis in (0, 1, 2, None):
        with np.errstate(all="ignore"):
            assert_same(getattr(fsd, name)(X, axis=axis).compute(),
                        getattr(fastsoftmax, name)(x, axis=axis), f"{name} {dtype} {axis}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_temperature_keepdims_and_dtype(dtype):
    x = random_logits(seeded("options", dtype), (5, 40), dtype, scale=1.0)
    X = da.from_array(x, chunks=(2, 15))
    for name in ("softmax", "log_softmax"):
        assert_same(getattr(fsd, name)(X, temperature=0.6).compute(),
                    getattr(fastsoftmax, name)(x, temperature=0.6), name)
        assert_same(getattr(fsd, name)(X, dtype=np.float32).compute(),
                    getattr(fastsoftmax, name)(x, dtype=np.float32), name)
        assert_same(getattr(fsd, name)(X, dtype=np.float64).compute(),
                    getattr(fastsoftmax, name)(x, dtype=np.float64), name)
    for axis in (0, 1, None):
        assert_same(fsd.logsumexp(X, axis=axis, keepdims=True).compute(),
                    fastsoftmax.logsumexp(x, axis=axis, keepdims=True), f"logsumexp {axis}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_rows_split_over_chunks(name, dtype):
    # Regression: float16 and bfloat16 arrays whose softmax axis spans several chunks raised
    # a raw Numba TypingError.
    x = hard_logits(seeded("half split", name, dtype), (8, 1000), dtype)
    X = da.from_array(x, chunks=(4, 250))
    options = [{}] if OPERATIONS[name].reduces else [{}, {"temperature": 0.7}]
    for kwargs in options:
        with np.errstate(all="ignore"):
            got = getattr(fsd, name)(X, **kwargs).compute()
            want = getattr(fastsoftmax, name)(x, **kwargs)
        assert got.dtype == dtype_of(dtype)
        assert_same(got, want, f"{name} {dtype} {kwargs}")


# Chunks of whole blocks (BLOCK = 512 columns) along the axis: each block's sum of
# exponentials is the one the in-memory kernel takes, and the float64 row sums are rounded to
# float32 (float32, float16, bfloat16 computed in float32), so the results have the same bits.
# (float64 keeps the last bit of its row sum, which dask adds chunk by chunk, in another order
# than the kernel's block after block: within the tolerance of assert_same only.)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ("float32",) + HALF_DTYPES)
def test_chunks_of_whole_blocks_give_the_bits_of_the_in_memory_call(name, dtype):
    assert 1024 % BLOCK == 0
    rng = seeded("whole blocks", name, dtype)
    x = hard_logits(rng, (4, 4096), dtype)
    where = mask_for(rng, x.shape)
    X = da.from_array(x, chunks=(2, 1024))
    options = [{}, {"where": where}]
    if not OPERATIONS[name].reduces:
        options.append({"temperature": 0.7})
    for kwargs in options:
        with np.errstate(all="ignore"):
            got = getattr(fsd, name)(X, **kwargs).compute()
            want = getattr(fastsoftmax, name)(x, **kwargs)
        assert_same_bits(got, np.asarray(want), f"{name} {dtype} {list(kwargs)}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_each_forced_build_runs_the_graph_with_the_same_bits(name, dtype, monkeypatch):
    # the passes of a split axis and the whole-row calls honour plan.force_build around
    # compute(), in dask's worker threads too
    launched = []
    launch = plan.launch

    def spy(kernel_pair, parallel, *args):
        launched.append(parallel)
        return launch(kernel_pair, parallel, *args)

    monkeypatch.setattr(plan, "launch", spy)
    op = OPERATIONS[name]
    x = hard_logits(seeded("forced", name, dtype), (4, 3000), dtype)
    for chunks in ((2, 1000), (2, 3000)):  # the axis split over chunks; whole rows
        X = da.from_array(x, chunks=chunks)
        results = {}
        for build in op.builds:
            launched.clear()
            with plan.force_build(build), np.errstate(all="ignore"):
                results[build] = getattr(fsd, name)(X).compute()
            context = f"{name} {dtype} chunks={chunks} {build}"
            assert launched and set(launched) == {build != "serial"}, context
            assert_same_bits(results[build], results["serial"], context)
        with np.errstate(all="ignore"):
            assert_same(results["serial"], getattr(fastsoftmax, name)(x), f"{name} {chunks}")


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
    x = random_logits(np.random.default_rng(44), (256, 8000), np.float32, scale=1.0)
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
