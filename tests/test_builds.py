"""Every public function on every path a user hits: each build the plan can pick (serial,
row-parallel, rows split across threads), forced on shapes on both sides of every threshold,
in every dtype, gives the same bits as the others and matches the reference.

A test on a small input only runs the serial build, so the builds are forced here: a wrong
gradient once shipped because the parallel build alone dropped a term.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fastsoftmax import plan
from fastsoftmax.registry import OPERATIONS

from .cases import CASES, assert_matches_reference, assert_same_bits, calls, logits_for
from .inputs import DTYPES, threshold_shapes

pytestmark = pytest.mark.large  # without the JIT these sizes would take hours


def run_builds(op, make):
    """{build: result} of one call under every build of ``op``."""
    results = {}
    for build in op.builds:
        args, kwargs = make()
        with plan.force_build(build), np.errstate(all="ignore"):
            results[build] = op.public()(*args, **kwargs)
    return results


@pytest.mark.parametrize("shape", threshold_shapes(), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_builds_agree_bitwise_and_match_the_reference(name, dtype, shape):
    op = OPERATIONS[name]
    rng = np.random.default_rng(zlib.crc32(f"{name} {dtype} {shape}".encode()))
    x = logits_for(op, rng, shape, dtype)
    for description, make in calls(op, x, rng):
        context = f"{name} {dtype} {shape} {description}"
        results = run_builds(op, make)
        for build, result in results.items():
            assert_same_bits(result, results["serial"], f"{context}: {build} != serial")
        args, kwargs = make()
        kwargs.pop("out", None), kwargs.pop("grad_out", None)
        if "grad_out" in description:
            kwargs["return_grad"] = True
        with np.errstate(all="ignore"):
            want = op.reference(*args, **kwargs)
        rtol = CASES[name].rtol
        # the magnitudes of the values compared: logits / temperature (sample's per-row
        # temperatures only scale what it draws; its raw log-probabilities ignore them)
        temperature = kwargs.get("temperature", 1.0)
        temperature = temperature if np.ndim(temperature) == 0 and temperature else 1.0
        assert_matches_reference(op, results["serial"], want, args[0], context, temperature,
                                 rtol=rtol[np.dtype(x.dtype).itemsize] if rtol else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [name for name, op in OPERATIONS.items() if op.split_finish])
def test_rows_of_many_chunks_split_as_they_run_whole(name, dtype, monkeypatch):
    # small chunks: many per row, a partial last one, on a small input
    monkeypatch.setattr(plan, "SPLIT_CHUNK", 1024)
    op = OPERATIONS[name]
    rng = np.random.default_rng(zlib.crc32(f"chunks {name} {dtype}".encode()))
    x = logits_for(op, rng, (5, 5 * 1024 + 300), dtype)
    for description, make in calls(op, x, rng):
        results = run_builds(op, make)
        assert_same_bits(results["split"], results["serial"], f"{name} {dtype} {description}")


def test_the_plan_picks_each_build_where_this_file_expects():
    # the shapes above straddle the thresholds only if the plan's rule is the one they assume
    softmax = OPERATIONS["softmax"]
    assert plan.choose_build(softmax, 1, plan.SERIAL_MAX_ELEMENTS) == "serial"
    threads = plan.numba.get_num_threads()
    many = plan.choose_build(softmax, 3, plan.SERIAL_MAX_ELEMENTS)
    long_row = plan.choose_build(softmax, 1, plan.SPLIT_MIN_COLS)
    if plan.parallel_available():
        assert many == "parallel"
        assert long_row == ("split" if threads > 1 else "serial")
        # an operation without a split build: one row is one task, run without the pool
        cross_entropy = OPERATIONS["cross_entropy"]
        assert plan.choose_build(cross_entropy, 1, plan.SPLIT_MIN_COLS) == "serial"
        assert plan.choose_build(cross_entropy, 2, plan.SPLIT_MIN_COLS) == "parallel"
    with plan.force_build("parallel"):
        assert plan.choose_build(softmax, 1, 10) == "parallel"
    with plan.force_build("split"), pytest.raises(ValueError, match="no split build"):
        plan.choose_build(OPERATIONS["sample"], 1, 10)
    with pytest.raises(ValueError, match="build must be one of"):
        with plan.force_build("gpu"):
            pass


# --- rows along a strided axis ------------------------------------------------------------------
# softmax(x, axis=0) of a C-ordered array runs its columns through the row kernels a tile at a
# time (registry ``columns``, plan.run_columns): the same bits as the rows moved last, at every
# threshold shape (transposed), in every dtype and build, with and without options. A kernel
# that reads float columns where they are (registry ``columns_read_in_place``) sums in another
# order: there, every build gives the same bits as the others, and the reference's results
# within its bounds (NaN and infinities where the rows moved last have them).

COLUMN_OPERATIONS = [name for name, op in OPERATIONS.items() if op.columns is not None]


def _along_axis(x, axis):
    """``x`` with its last axis moved to ``axis``, C-ordered (the rows now run along it)."""
    return np.ascontiguousarray(np.moveaxis(x, -1, axis))


@pytest.mark.parametrize("shape", threshold_shapes() + [(4, 3, 1000)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", COLUMN_OPERATIONS)
def test_rows_along_a_strided_axis_match_the_rows_moved_last(name, dtype, shape):
    op = OPERATIONS[name]
    rng = np.random.default_rng(zlib.crc32(f"columns {name} {dtype} {shape}".encode()))
    x = logits_for(op, rng, (int(np.prod(shape[:-1])), shape[-1]), dtype).reshape(shape)
    axis = 0 if len(shape) == 2 else 1
    strided = _along_axis(x, axis)
    options = [{}, {"out": "new"}, {"out": "in place"}]
    options += [{"keepdims": True}] if op.reduces else [{"temperature": 0.7}]
    read_in_place = op.columns_read_in_place is not None and np.dtype(x.dtype).kind == "f"
    for option in options:
        with np.errstate(all="ignore"):
            want = op.public()(x, **{k: v for k, v in option.items() if k != "out"})
            reference = op.reference(x, **{k: v for k, v in option.items() if k != "out"})
        want = np.moveaxis(want, -1, axis) if not op.reduces or option.get("keepdims") else want
        shape_of_result = want
        if read_in_place:  # the first build against the reference, the others its bits
            reference = np.moveaxis(reference, -1, axis)
            want = None
        for build in op.builds:
            data = strided.copy()
            kwargs = {k: v for k, v in option.items() if k != "out"}
            if option.get("out") == "new":
                kwargs["out"] = np.empty_like(shape_of_result)
            elif option.get("out") == "in place":
                if op.reduces:
                    continue
                kwargs["out"] = data
            with plan.force_build(build), np.errstate(all="ignore"):
                got = op.public()(data, axis=axis, **kwargs)
            if want is None:
                assert_matches_reference(op, got, reference, strided,
                                         f"{name} {dtype} {shape} {option} {build}",
                                         option.get("temperature", 1.0))
                want = got.copy()
            assert_same_bits(got, want, f"{name} {dtype} {shape} {option} {build}")
            if "out" in kwargs:
                assert got is kwargs["out"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows_take_the_column_kernels(dtype, monkeypatch):
    # the test above would pass through a copy too: check that the tiles run where they apply
    ran = []
    monkeypatch.setattr(plan, "run_columns", lambda batch, parallel: ran.append(batch))
    x = logits_for(OPERATIONS["softmax"], np.random.default_rng(0), (6, 50), dtype)
    for name in COLUMN_OPERATIONS:
        OPERATIONS[name].public()(_along_axis(x, 0), axis=0)
        OPERATIONS[name].public()(_along_axis(x, 0), axis=0, out=np.empty(
            (6,) if OPERATIONS[name].reduces else (50, 6), x.dtype))
    assert len(ran) == 2 * len(COLUMN_OPERATIONS)
    OPERATIONS["softmax"].public()(_along_axis(x, 0)[:, ::2], axis=0)  # not C-ordered: a copy
    OPERATIONS["softmax"].public()(_along_axis(x, 0), axis=0, where=x.T > 0)  # a mask: a copy
    assert len(ran) == 2 * len(COLUMN_OPERATIONS)
