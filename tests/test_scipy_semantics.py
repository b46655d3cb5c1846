"""fastsoftmax as a drop-in for scipy.special and jax.nn: weights and signs in logsumexp, tuple
axes, scalars, precision near 0, complex logsumexp, integer input (README, "SciPy and JAX")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastsoftmax
from fastsoftmax import plan, reference
from fastsoftmax.registry import OPERATIONS

from .cases import assert_same_bits, tolerance
from .inputs import dominated_logits, random_logits, threshold_shapes

special = pytest.importorskip("scipy.special")
inf, nan = np.inf, np.nan
FAMILY = ("softmax", "log_softmax", "logsumexp")


def assert_like_scipy(got, want, rtol=1e-12, atol=1e-14):
    """Same shape, same NaN and infinities, values within ``rtol`` or ``atol`` (SciPy's
    log_softmax takes no log1p: near 0 it is the less precise one), tuples item by item."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_like_scipy(g, w, rtol, atol)
        return
    assert np.shape(got) == np.shape(want)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol)


# --- logsumexp with weights and signs ----------------------------------------------------------

# (x, b): the rules of SciPy's b and return_sign, one by one
WEIGHTED = {
    "weights": (np.arange(10.0), np.arange(10.0, 0.0, -1.0)),
    "negative sum": ([1.0, 2.0], [1.0, -1.0]),
    "positive difference": ([1.0, 2.0], [-1.0, 1.0]),
    "exact cancellation": ([3.0, 3.0], [1.0, -1.0]),
    "weight 0 hides +inf": ([inf, 1.0], [0.0, 1.0]),
    "weight 0 hides NaN": ([nan, 1.0], [0.0, 1.0]),
    "+inf": ([inf, 1.0], [1.0, 1.0]),
    "+inf with a negative weight": ([inf, 2.0], [-1.0, 1.0]),
    "+inf - +inf": ([inf, inf], [1.0, -1.0]),
    "all -inf": ([-inf, -inf], [1.0, 1.0]),
    "NaN": ([nan, 1.0], [1.0, 1.0]),
    "near 0": ([0.0, -40.0], [1.0, 1.0]),
    "below -1 after the max": ([0.0, 0.0, -1.0], [1.0, -1.0, 1.0]),
    "cancelling maxima, a rest": ([2.0, 2.0, 0.0], [1.0, -1.0, 3.0]),
    "empty": (np.zeros((3, 0)), np.ones((3, 0))),
}


@pytest.mark.parametrize("case", list(WEIGHTED))
@pytest.mark.parametrize("return_sign", [False, True])
def test_weights_and_signs_as_scipy(case, return_sign):
    x, b = (np.asarray(v, np.float64) for v in WEIGHTED[case])
    with np.errstate(all="ignore"):
        want = special.logsumexp(x, axis=-1, b=b, return_sign=return_sign)
    assert_like_scipy(fastsoftmax.logsumexp(x, b=b, return_sign=return_sign), want, atol=0)
    assert_like_scipy(reference.logsumexp(x, b=b, return_sign=return_sign), want, atol=0)


def test_return_sign_without_weights():
    x = np.array([[0.0, 1.0], [-inf, -inf], [inf, 0.0], [nan, 0.0]])
    with np.errstate(all="ignore"):
        want = special.logsumexp(x, axis=1, return_sign=True)
    assert_like_scipy(fastsoftmax.logsumexp(x, axis=1, return_sign=True), want)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_cols=st.sampled_from([1, 3, 40, 700]),
       dtype=st.sampled_from(["float32", "float64"]), keepdims=st.booleans(),
       axis=st.sampled_from([0, 1, -1, None, (0, 1)]), b_shape=st.sampled_from(["full", "row",
                                                                                "column"]))
def test_weights_against_scipy_on_random_batches(seed, n_cols, dtype, keepdims, axis, b_shape):
    rng = np.random.default_rng(seed)
    x = random_logits(rng, (5, n_cols), dtype)
    x[rng.random(x.shape) < 0.05] = -inf
    shape = {"full": x.shape, "row": (n_cols,), "column": (5, 1)}[b_shape]
    b = rng.choice([-1.0, 0.0, 0.5, 2.0], size=shape).astype(dtype)
    with np.errstate(all="ignore"):
        want = special.logsumexp(x, axis=axis, b=b, keepdims=keepdims, return_sign=True)
        got = fastsoftmax.logsumexp(x, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    assert got[0].dtype == np.dtype(dtype) and got[1].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got[1], want[1])
    # SciPy sums in the input's dtype, fastsoftmax in float64: float32 within its rounding
    np.testing.assert_allclose(got[0], want[0], rtol=50 * tolerance(dtype),
                               atol=100 * np.finfo(dtype).eps)


@pytest.mark.parametrize("shape", threshold_shapes())
def test_weighted_builds_agree_on_threshold_sizes(shape):
    rng = np.random.default_rng(sum(shape))
    x = random_logits(rng, shape, np.float32)
    b = rng.choice([-1.0, 0.0, 1.0, 3.0], size=shape).astype(np.float32)
    results = {}
    for build in OPERATIONS["logsumexp"].builds:
        with plan.force_build(build):
            results[build] = fastsoftmax.logsumexp(x, b=b, return_sign=True)
    for build, got in results.items():
        assert_same_bits(got, results["serial"], build)
    want = reference.logsumexp(x, b=b, return_sign=True)
    np.testing.assert_array_equal(results["serial"][1], want[1])
    finite = np.isfinite(want[0])
    np.testing.assert_allclose(results["serial"][0][finite], want[0][finite], rtol=1e-5,
                               atol=1e-5)


def test_weights_take_the_wider_dtype_and_tensors():
    x = np.zeros((2, 3), np.float32)
    assert fastsoftmax.logsumexp(x, b=np.ones(3)).dtype == np.float64  # NumPy's promotion
    assert fastsoftmax.logsumexp(x, b=np.ones(3, np.float32)).dtype == np.float32
    torch = pytest.importorskip("torch")
    value, sign = fastsoftmax.logsumexp(torch.zeros(2, 3), b=torch.tensor([1.0, -2.0, 0.0]),
                                        return_sign=True)
    assert isinstance(value, torch.Tensor) and torch.all(sign == -1)
    np.testing.assert_allclose(value.numpy(), 0.0, atol=1e-7)


def test_bad_weights_are_named():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="logsumexp: b has shape"):
        fastsoftmax.logsumexp(x, b=np.ones(4))
    with pytest.raises(TypeError, match="logsumexp: b must be"):
        fastsoftmax.logsumexp(x, b=np.array(["a", "b", "c"]))


# --- tuple axes and scalars --------------------------------------------------------------------

AXES = [(0, 2), (2, 0), (1, 2), (0,), (), (0, 1, 2), (-1, 0)]


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("axis", AXES)
def test_tuple_axes_as_scipy(name, axis):
    x = random_logits(np.random.default_rng(3), (3, 4, 5))
    want = getattr(special, name)(x, axis=axis)
    assert_like_scipy(getattr(fastsoftmax, name)(x, axis=axis), want)
    assert_like_scipy(getattr(reference, name)(x, axis=axis), want)
    # written into a Fortran-ordered out (no view of its rows exists: a temporary)
    if np.ndim(want):
        out = np.asfortranarray(np.zeros(np.shape(want)))
        assert getattr(fastsoftmax, name)(x, axis=axis, out=out) is out
        assert_like_scipy(out, want)
    if name == "logsumexp":
        assert_like_scipy(fastsoftmax.logsumexp(x, axis=axis, keepdims=True),
                          special.logsumexp(x, axis=axis, keepdims=True))


@pytest.mark.parametrize("name", FAMILY)
def test_tuple_axes_with_where_and_temperature(name):
    rng = np.random.default_rng(4)
    x = random_logits(rng, (4, 3, 6), np.float32)
    where = rng.random(x.shape) > 0.2
    kwargs = {} if name == "logsumexp" else {"temperature": 0.5}
    got = getattr(fastsoftmax, name)(x, axis=(0, 2), where=where, **kwargs)
    moved = np.moveaxis(x, 1, 0).reshape(3, -1)
    mask = np.moveaxis(where, 1, 0).reshape(3, -1)
    flat = getattr(fastsoftmax, name)(moved, axis=-1, where=mask, **kwargs)
    if name != "logsumexp":
        flat = np.moveaxis(flat.reshape(3, 4, 6), 0, 1)
    assert_same_bits(got, flat)


@pytest.mark.parametrize("name", FAMILY)
def test_tuple_axes_as_jax(name):
    jax_nn = pytest.importorskip("jax.nn")
    x = random_logits(np.random.default_rng(5), (3, 4, 5), np.float32)
    want = np.asarray(getattr(jax_nn, name)(x, axis=(0, 2)))
    np.testing.assert_allclose(getattr(fastsoftmax, name)(x, axis=(0, 2)), want, rtol=2e-6,
                               atol=1e-6)


def test_scalars_with_axis_none_as_scipy():
    assert fastsoftmax.softmax(1000.0, axis=None) == special.softmax(1000.0) == 1.0
    assert fastsoftmax.logsumexp(1.0, axis=None) == special.logsumexp(1.0) == 1.0
    assert fastsoftmax.log_softmax(3.0, axis=None) == special.log_softmax(3.0) == 0.0
    assert np.isnan(fastsoftmax.softmax(np.nan, axis=None))
    assert fastsoftmax.logsumexp(np.float32(-inf), axis=None) == -inf
    for name in FAMILY:  # NumPy scalars, as SciPy returns
        result = getattr(fastsoftmax, name)(np.array(2.0), axis=None)
        assert isinstance(result, np.float64)
        with pytest.raises(ValueError, match=f"{name}: axis 0 is out of bounds .* dimension 0"):
            getattr(fastsoftmax, name)(2.0, axis=0)


def test_integers_follow_scipy_not_jax():
    x = np.arange(6).reshape(2, 3)
    for name in FAMILY:
        got = getattr(fastsoftmax, name)(x)
        assert got.dtype == np.float64  # SciPy's rule; JAX computes integers in float32
        np.testing.assert_allclose(got, getattr(special, name)(x, axis=-1), rtol=1e-14)


# --- precision near 0 --------------------------------------------------------------------------

def test_logsumexp_near_zero_as_scipy_gh_18295():
    assert fastsoftmax.logsumexp(np.array([0.0, -40.0])) == pytest.approx(4.248354255291589e-18,
                                                                           rel=1e-15)
    got = fastsoftmax.logsumexp(np.array([0.0, -20.0], np.float32))
    assert got == pytest.approx(np.log1p(np.exp(-20.0)), rel=1e-6)
    lsm = fastsoftmax.log_softmax(np.array([0.0, -40.0]))
    assert lsm[0] == pytest.approx(-4.248354255291589e-18, rel=1e-15)


@pytest.mark.parametrize("name", ["log_softmax", "logsumexp"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", threshold_shapes())
def test_dominated_rows_keep_relative_precision_on_every_build(name, dtype, shape):
    """Rows where one element dominates, on every build: results near 0 (the logsumexp, the
    log_softmax of the maximum) within a few ulp of their own size, and the same bits."""
    x = dominated_logits(np.random.default_rng(sum(shape)), shape, dtype,
                         gap=12.0 + np.log(shape[-1]))  # the others weigh about 1e-6
    want = getattr(reference, name)(x)
    results = {}
    for build in OPERATIONS[name].builds:
        with plan.force_build(build):
            results[build] = getattr(fastsoftmax, name)(x)
    for build, got in results.items():
        assert_same_bits(got, results["serial"], f"{name} {build}")
    got = results["serial"]
    top = np.argmax(x, axis=-1)[:, None]
    near_zero = got if name == "logsumexp" else np.take_along_axis(got, top, axis=-1)
    wanted = want if name == "logsumexp" else np.take_along_axis(want, top, axis=-1)
    rest = np.sum(np.exp(x.astype(np.float64) - x.max(-1, keepdims=True)), -1) - 1
    assert np.all(rest < 1e-4)  # the case at hand: results dominated by the maximum
    np.testing.assert_allclose(near_zero, wanted, rtol=8 * np.finfo(dtype).eps, atol=0)


def test_dominated_rows_on_dask():
    da = pytest.importorskip("dask.array")
    import fastsoftmax.dask as fsd
    x = dominated_logits(np.random.default_rng(6), (4, 3000), np.float64, gap=30.0)
    for name in ("log_softmax", "logsumexp"):
        got = getattr(fsd, name)(da.from_array(x, chunks=(2, 700))).compute()
        np.testing.assert_allclose(got, getattr(reference, name)(x), rtol=1e-13, atol=0)


# --- complex logsumexp -------------------------------------------------------------------------

COMPLEX_ROWS = {
    "finite": [1 + 2j, 3 - 1j, -2 + 0.5j],
    "phases wrap": [1 + 3j, 1 + 3j],
    "+inf, two phases": [inf + 0j, inf + 1j],
    "+inf and -inf": [inf + 0j, complex(-inf, 1)],
    "-inf only": [complex(-inf, 1), complex(-inf, 2)],
    "-inf and finite": [complex(-inf, 0), 1j],
    "NaN": [complex(nan, 0), 1 + 0j],
    "large": [1000 + 1j, 999 - 2j],
}


@pytest.mark.parametrize("case", list(COMPLEX_ROWS))
@pytest.mark.parametrize("return_sign", [False, True])
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_complex_logsumexp_as_scipy(case, return_sign, dtype):
    x = np.array(COMPLEX_ROWS[case], dtype)
    with np.errstate(all="ignore"):
        want = special.logsumexp(x, return_sign=return_sign)
        got = fastsoftmax.logsumexp(x, return_sign=return_sign)
    rtol = 1e-6 if dtype == np.complex64 else 1e-14
    ref = reference.logsumexp(x.astype(np.complex128), return_sign=return_sign)
    for g, w, r in zip(*((v if return_sign else (v,)) for v in (got, want, ref))):
        assert np.asarray(g).dtype == np.asarray(w).dtype
        for part in (np.real, np.imag):  # apart: an infinite real part with its phase
            np.testing.assert_allclose(part(g), part(w), rtol=rtol, atol=rtol)
            np.testing.assert_allclose(part(g), part(r), rtol=rtol, atol=rtol)


def test_complex_batches_and_axes():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 5)) * 20 + 1j * rng.standard_normal((3, 4, 5)) * 10
    for axis in (None, 0, -1, (0, 2)):
        for keepdims in (False, True):
            want = special.logsumexp(x, axis=axis, keepdims=keepdims)
            np.testing.assert_allclose(fastsoftmax.logsumexp(x, axis=axis, keepdims=keepdims),
                                       want, rtol=1e-13)
            np.testing.assert_allclose(reference.logsumexp(x, axis=axis, keepdims=keepdims),
                                       want, rtol=1e-13)


def test_complex_softmax_is_refused():
    for name in ("softmax", "log_softmax"):
        with pytest.raises(TypeError, match=f"{name}: x must be an array of real numbers"):
            getattr(fastsoftmax, name)(np.array([1j, 2.0]))
