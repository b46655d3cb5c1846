"""Contract of the public functions: worked examples, out=, no mutation, serial == parallel."""

from __future__ import annotations

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import plan
from fastsoftmax.registry import OPERATIONS

from .cases import ELEMENTWISE, FUNCTIONS, assert_same_bits, calls, logits_for
from .inputs import random_logits


def test_worked_examples():
    np.testing.assert_allclose(fastsoftmax.softmax([2.0, 1.0, 0.1]),
                               [0.65900114, 0.24243297, 0.09856589], rtol=1e-7)
    np.testing.assert_array_equal(fastsoftmax.softmax([0.25, 1.23, -0.8]).round(3),
                                  [0.249, 0.664, 0.087])


def test_input_is_never_modified(func_name):
    rng = np.random.default_rng(20)
    x = random_logits(rng, (5, 7), np.float32)
    before = x.copy()
    where = rng.random((5, 7)) > 0.5
    where_before = where.copy()
    FUNCTIONS[func_name][0](x, where=where)
    FUNCTIONS[func_name][0](x, axis=0)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(where, where_before)


def _read_only(value):
    if isinstance(value, np.ndarray):
        value = value.copy()
        value.setflags(write=False)
    return value


def _read_only_signatures():
    """Every compiled signature of every kernel of the package that has a read-only array."""
    import dataclasses
    import importlib
    import pkgutil

    from numba.core import types

    import fastsoftmax.kernels
    from fastsoftmax.kernels.jit import KernelPair

    pairs = set()
    for info in pkgutil.iter_modules(fastsoftmax.kernels.__path__):
        module = importlib.import_module(f"fastsoftmax.kernels.{info.name}")
        pairs |= {v for v in vars(module).values() if isinstance(v, KernelPair)}
    for op in OPERATIONS.values():
        for field in dataclasses.fields(op):
            value = getattr(op, field.name)
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, KernelPair):
                    pairs.add(v)
    builds = [(pair.__name__, build) for pair in pairs for build in (pair.serial, pair.parallel)]
    # the common call's entries (registry contiguous_call) are plain dispatchers
    builds += [(op.name, op.contiguous_call) for op in OPERATIONS.values()
               if hasattr(op.contiguous_call, "signatures")]
    return [(name, sig) for name, build in builds for sig in build.signatures
            if any(isinstance(t, types.Array) and not t.mutable for t in sig)]


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_read_only_inputs_run_the_kernels_of_writable_ones(name):
    # A read-only array is a type of its own to Numba: JAX arrays, broadcast masks and read-only
    # memory maps would each compile every kernel again (arguments.writable_alias).
    op = OPERATIONS[name]
    rng = np.random.default_rng(23)
    x = logits_for(op, rng, (6, 300), np.float32)
    for description, make in calls(op, x, rng):
        if "in place" in description:
            continue  # a read-only array is never out=
        args, kwargs = make()
        ro_args = [_read_only(a) for a in args]
        ro_kwargs = {k: v if k in ("out", "grad_out") else _read_only(v)
                     for k, v in kwargs.items()}
        for build in op.builds:
            with plan.force_build(build), np.errstate(all="ignore"):
                want = op.public()(*args, **dict(kwargs))
                got = op.public()(*ro_args, **ro_kwargs)
            assert_same_bits(got, want, f"{name} {description} {build}")
        for a, ro in zip(args, ro_args):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(ro, a)
    assert _read_only_signatures() == []


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("axis", [-1, 0, None])
def test_out_is_returned_and_filled(name, axis):
    rng = np.random.default_rng(21)
    x = random_logits(rng, (4, 9), np.float64)
    out = np.full_like(x, 7.0)
    got = FUNCTIONS[name][0](x, axis=axis, out=out)
    assert got is out
    np.testing.assert_allclose(out, FUNCTIONS[name][1](x, axis=axis), rtol=1e-12, atol=1e-14)


@pytest.mark.large
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_in_place(name):
    rng = np.random.default_rng(22)
    x = random_logits(rng, (300, 257), np.float32)
    want = FUNCTIONS[name][0](x)
    got = FUNCTIONS[name][0](x, out=x)
    assert got is x
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_out_with_other_layouts(name):
    rng = np.random.default_rng(23)
    x = random_logits(rng, (6, 10), np.float32)
    want = FUNCTIONS[name][0](x)
    fortran = np.asfortranarray(np.empty_like(x))
    np.testing.assert_array_equal(FUNCTIONS[name][0](x, out=fortran), want)
    padded = np.empty((6, 14), np.float32)[:, 2:12]
    np.testing.assert_array_equal(FUNCTIONS[name][0](x, out=padded), want)
    # out overlapping the input shifted by a row: computed through a temporary
    buffer = np.concatenate([x, x[:1]])
    got = FUNCTIONS[name][0](buffer[:-1], out=buffer[1:])
    np.testing.assert_array_equal(got, want)


def test_out_for_float16_result():
    x = np.array([[1.0, 2.0, 3.0]], np.float16)
    out = np.empty_like(x)
    assert fastsoftmax.softmax(x, out=out) is out
    np.testing.assert_allclose(out, fastsoftmax.reference.softmax(x), rtol=1e-3)


@pytest.mark.parametrize("axis, keepdims", [(0, False), (1, True), (None, False), (None, True)])
def test_logsumexp_out(axis, keepdims):
    rng = np.random.default_rng(24)
    x = random_logits(rng, (3, 4), np.float64)
    want = fastsoftmax.reference.logsumexp(x, axis=axis, keepdims=keepdims)
    out = np.empty(np.shape(want))
    got = fastsoftmax.logsumexp(x, axis=axis, keepdims=keepdims, out=out)
    assert got is out
    np.testing.assert_allclose(out, want, rtol=1e-13)


def test_logsumexp_of_whole_array_is_a_scalar():
    got = fastsoftmax.logsumexp(np.zeros((2, 2)), axis=None)
    assert isinstance(got, np.float64)
    assert got == pytest.approx(np.log(4.0))


@pytest.mark.large
def test_one_huge_row_is_split_across_threads(monkeypatch):
    calls = []
    real = plan.run_split
    monkeypatch.setattr(plan, "run_split",
                        lambda op, batch: calls.append(op.name) or real(op, batch))
    x = random_logits(np.random.default_rng(28), (1, 3 * plan.SPLIT_CHUNK + 5), np.float32)
    for op in FUNCTIONS:
        got = FUNCTIONS[op][0](x)
        np.testing.assert_allclose(got, FUNCTIONS[op][1](x), rtol=2e-5, atol=1e-6)
    if plan.numba.get_num_threads() > 1:
        assert calls == list(FUNCTIONS)


def test_plan_runs_small_batches_serially():
    softmax = OPERATIONS["softmax"]
    assert plan.choose_build(softmax, 1, 1000) == "serial"
    assert plan.choose_build(softmax, 8, 100) == "serial"
    assert plan.choose_build(softmax, 10_000, 1000) != "split"


@pytest.mark.large
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_in_place_through_a_view(name):
    rng = np.random.default_rng(26)
    x = random_logits(rng, (40, 1000), np.float32)
    want = FUNCTIONS[name][0](x)
    view = x[:]
    assert FUNCTIONS[name][0](view, out=x) is x
    np.testing.assert_array_equal(x, want)


def test_numpy_integer_axis_and_float_axis():
    x = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(fastsoftmax.softmax(x, axis=np.int64(1)), np.full((2, 3), 1 / 3,
                                                                                     np.float32))
    with pytest.raises(TypeError, match="axis"):
        fastsoftmax.softmax(x, axis=-1.0)


def test_warmup_compiles_and_validates():
    fastsoftmax.warmup(dtypes=["float32"], functions=["logsumexp"])
    fastsoftmax.warmup(dtypes=["bfloat16", np.float16], functions=["softmax"])
    with pytest.raises(ValueError, match="dtypes"):
        fastsoftmax.warmup(dtypes=["int8"])
    with pytest.raises(ValueError, match="unknown function"):
        fastsoftmax.warmup(dtypes=["float64"], functions=["softplus"])
