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
        if name == "cross_entropy" and "grad_out" in description:
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
        assert long_row == ("split" if threads > 1 else "parallel")
        assert plan.choose_build(OPERATIONS["cross_entropy"], 1, plan.SPLIT_MIN_COLS) == \
            "parallel"  # an operation without a split build
    with plan.force_build("parallel"):
        assert plan.choose_build(softmax, 1, 10) == "parallel"
    with plan.force_build("split"), pytest.raises(ValueError, match="no split build"):
        plan.choose_build(OPERATIONS["sample"], 1, 10)
    with pytest.raises(ValueError, match="build must be one of"):
        with plan.force_build("gpu"):
            pass
