"""softmax_backward, log_softmax_backward and cross_entropy: against the reference, PyTorch
autograd (when installed: every gradient, every dtype, small and large shapes, each build) and
finite differences; edge cases; the in-place gradient's memory and bits."""

from __future__ import annotations

import importlib.util
import tracemalloc
import zlib

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import plan, reference

from .cases import assert_same_bits, assert_within
from .inputs import DTYPES, dtype_of, hard_logits, random_logits

# Without the JIT (make coverage) these inputs would take minutes as Python.
pytestmark = pytest.mark.large

HAVE_TORCH = importlib.util.find_spec("torch") is not None
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}


def logits_and_targets(rng, n_rows, n_cols, dtype, ignored=0):
    x = random_logits(rng, (n_rows, n_cols), dtype, scale=3.0)
    t = rng.integers(0, n_cols, n_rows)
    t[:ignored] = -100
    return x, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", [((5, 7), -1), ((5, 7), 0), ((2, 3, 4), 1),
                                         ((4, 3000), -1), ((6,), None)])
def test_backward_passes_match_the_reference(dtype, shape, axis):
    rng = np.random.default_rng(30)
    x = random_logits(rng, shape, dtype, scale=1.0)
    g = random_logits(rng, shape, dtype, scale=1.0)
    y = fastsoftmax.softmax(x, axis=axis)
    logp = fastsoftmax.log_softmax(x, axis=axis)
    np.testing.assert_allclose(fastsoftmax.softmax_backward(g, y, axis=axis),
                               reference.softmax_backward(g, y, axis=axis), **TOL[dtype])
    np.testing.assert_allclose(fastsoftmax.log_softmax_backward(g, logp, axis=axis),
                               reference.log_softmax_backward(g, logp, axis=axis), **TOL[dtype])


def test_backward_out_may_be_grad_itself():
    rng = np.random.default_rng(31)
    x, g = random_logits(rng, (64, 900), scale=1.0), random_logits(rng, (64, 900), scale=1.0)
    y = fastsoftmax.softmax(x)
    want = fastsoftmax.softmax_backward(g, y)
    assert fastsoftmax.softmax_backward(g, y, out=g) is g
    np.testing.assert_array_equal(g, want)


def numeric_gradient(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


def test_finite_differences():
    rng = np.random.default_rng(32)
    x = random_logits(rng, (3, 5), scale=1.0)
    g = random_logits(rng, (3, 5), scale=1.0)
    np.testing.assert_allclose(
        fastsoftmax.softmax_backward(g, fastsoftmax.softmax(x)),
        numeric_gradient(lambda v: float(np.sum(g * fastsoftmax.softmax(v))), x), atol=1e-7)
    np.testing.assert_allclose(
        fastsoftmax.log_softmax_backward(g, fastsoftmax.log_softmax(x)),
        numeric_gradient(lambda v: float(np.sum(g * fastsoftmax.log_softmax(v))), x),
        atol=1e-7)
    t = np.array([1, -100, 4])
    for reduction in ("mean", "sum", "none"):
        for eps, temperature in ((0.0, 1.0), (0.1, 0.7)):
            def loss(v):
                value = fastsoftmax.cross_entropy(v, t, reduction=reduction,
                                                  label_smoothing=eps, temperature=temperature)
                return float(np.sum(value))
            _, grad = fastsoftmax.cross_entropy(x, t, reduction=reduction, label_smoothing=eps,
                                                temperature=temperature, return_grad=True)
            np.testing.assert_allclose(grad, numeric_gradient(loss, x), atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignored", [0, 3, 8])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_cross_entropy_matches_the_reference(dtype, reduction, eps, ignored, temperature):
    rng = np.random.default_rng(33)
    x, t = logits_and_targets(rng, 8, 1500, dtype, ignored)
    kwargs = dict(reduction=reduction, label_smoothing=eps, temperature=temperature)
    loss, grad = fastsoftmax.cross_entropy(x, t, return_grad=True, **kwargs)
    want_loss, want_grad = reference.cross_entropy(x, t, return_grad=True, **kwargs)
    np.testing.assert_allclose(loss, want_loss, **TOL[dtype])
    np.testing.assert_allclose(grad, want_grad, **TOL[dtype])
    assert grad.dtype == dtype and np.asarray(loss).dtype == dtype
    np.testing.assert_allclose(fastsoftmax.cross_entropy(x, t, **kwargs), want_loss, **TOL[dtype])


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignored", [0, 2, 6])
def test_cross_entropy_matches_torch(reduction, eps, ignored):
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(34)
    x, t = logits_and_targets(rng, 6, 300, np.float64, ignored)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    want = F.cross_entropy(xt, torch.from_numpy(t), reduction=reduction, label_smoothing=eps)
    want.sum().backward()
    loss, grad = fastsoftmax.cross_entropy(x, t, reduction=reduction, label_smoothing=eps,
                                           return_grad=True)
    np.testing.assert_allclose(loss, want.detach().numpy(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_backward_passes_match_torch_autograd():
    import torch
    rng = np.random.default_rng(35)
    x, g = random_logits(rng, (4, 50), scale=1.0), random_logits(rng, (4, 50), scale=1.0)
    for forward, ours in ((torch.softmax, fastsoftmax.softmax_backward),
                          (torch.log_softmax, fastsoftmax.log_softmax_backward)):
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        y = forward(xt, -1)
        y.backward(torch.from_numpy(g))
        np.testing.assert_allclose(ours(g, y.detach().numpy()), xt.grad.numpy(), rtol=1e-10,
                                   atol=1e-14)


def test_cross_entropy_edge_cases():
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    # every row ignored with "mean": NaN loss (as PyTorch), zero gradient
    loss, grad = fastsoftmax.cross_entropy(x, np.array([-100, -100]), return_grad=True)
    assert np.isnan(loss) and not grad.any()
    assert fastsoftmax.cross_entropy(x, np.array([-100, -100]), reduction="sum") == 0.0
    # -inf at a non-target class: finite loss; with smoothing the loss is inf (PyTorch too)
    y = x.copy()
    y[0, 0] = -np.inf
    assert np.isfinite(fastsoftmax.cross_entropy(y, np.array([2, 1])))
    assert fastsoftmax.cross_entropy(y, np.array([2, 1]), label_smoothing=0.1) == np.inf
    _, grad = fastsoftmax.cross_entropy(y, np.array([2, 1]), return_grad=True)
    assert np.all(np.isfinite(grad)) and grad[0, 0] == 0.0
    # huge logits do not overflow
    big = np.array([[1e30, 0.0, -1e30]], np.float32)
    assert fastsoftmax.cross_entropy(big, np.array([0])) == 0.0
    assert fastsoftmax.cross_entropy(big, np.array([1])) == np.float32(1e30)
    # one class: the loss is 0 and so is the gradient
    loss, grad = fastsoftmax.cross_entropy(np.array([[3.0], [-2.0]]), np.array([0, 0]),
                                           return_grad=True)
    assert loss == 0.0 and not grad.any()
    # 1-D logits with a scalar target
    assert fastsoftmax.cross_entropy(np.array([0.0, 0.0]), 1) == pytest.approx(np.log(2))


def test_grad_out_overwrites_the_logits_with_o_rows_extra_memory():
    rng = np.random.default_rng(36)
    x, t = logits_and_targets(rng, 512, 32000, np.float32, ignored=5)
    want_loss, want_grad = fastsoftmax.cross_entropy(x, t, return_grad=True)
    small = x[:2].copy()
    fastsoftmax.cross_entropy(small, t[:2], grad_out=small)  # compile the in-place kernel first
    buffer = x.copy()
    tracemalloc.start()
    try:
        loss, grad = fastsoftmax.cross_entropy(buffer, t, grad_out=buffer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grad is buffer
    assert peak < 64 * 512 + 65536, f"peak {peak} bytes for {x.nbytes} bytes of logits"
    assert loss == want_loss
    np.testing.assert_array_equal(grad, want_grad)


BAD = [
    ((np.zeros((2, 3)), np.array([0, 3])), {}, IndexError, "targets[1] = 3"),
    ((np.zeros((2, 3)), np.array([-1, 0])), {}, IndexError, "targets[0] = -1"),
    ((np.zeros((2, 3)), np.array([0.0, 1.0])), {}, TypeError, "targets must be integer"),
    ((np.zeros((2, 3)), np.array([0, 1, 2])), {}, ValueError, "targets must have shape (2,)"),
    ((np.zeros((2, 3, 4)), np.array([0, 1])), {}, ValueError,
     "targets must have shape (2, 4) for logits of that shape and classes on axis 1"),
    ((np.zeros((2, 3)), np.array([0, 1])), {"reduction": "avg"}, ValueError, "reduction"),
    ((np.zeros((2, 3)), np.array([0, 1])), {"label_smoothing": 1.5}, ValueError,
     "label_smoothing"),
    ((np.zeros((2, 3)), np.array([0, 1])), {"temperature": 0}, ValueError, "temperature"),
    ((np.zeros((2, 3)), np.array([0, 1])), {"grad_out": np.zeros((3, 2))}, ValueError,
     "grad_out"),
    ((np.zeros((2, 3)), np.array([0, 1])), {"ignore_index": 1.5}, TypeError, "ignore_index"),
    ((np.zeros((2, 0)), np.array([0, 1])), {}, ValueError, "at least one class"),
]


@pytest.mark.parametrize("args, kwargs, exc, words", BAD)
def test_cross_entropy_bad_input(args, kwargs, exc, words):
    with pytest.raises(exc, match=None) as info:
        fastsoftmax.cross_entropy(*args, **kwargs)
    assert words in str(info.value) and "cross_entropy" in str(info.value)


def test_backward_bad_input():
    with pytest.raises(ValueError, match="softmax_backward: grad has shape"):
        fastsoftmax.softmax_backward(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="log_softmax_backward: out must have shape"):
        fastsoftmax.log_softmax_backward(np.zeros(3), np.zeros(3), out=np.zeros(4))


@pytest.mark.parametrize("shape", [(3, 50000), (64, 32000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_gradient_is_the_same_serial_and_parallel(shape, dtype):
    # Regression: above the serial threshold the parallel build lost the target's
    # -(1 - eps) * scale / T term (Numba dropped a store into a slice a call returned).
    rng = np.random.default_rng(37)
    x, t = logits_and_targets(rng, *shape, dtype, ignored=1)
    with fastsoftmax.threads(1):
        serial = fastsoftmax.cross_entropy(x, t, label_smoothing=0.1, return_grad=True)
    parallel = fastsoftmax.cross_entropy(x, t, label_smoothing=0.1, return_grad=True)
    np.testing.assert_array_equal(parallel[1], serial[1])
    want = reference.cross_entropy(x, t, label_smoothing=0.1, return_grad=True)
    np.testing.assert_allclose(parallel[1], want[1], **TOL[dtype])
    in_place = x.copy()
    fastsoftmax.cross_entropy(in_place, t, label_smoothing=0.1, grad_out=in_place)
    np.testing.assert_array_equal(in_place, serial[1])


# --- every gradient against PyTorch autograd, in every dtype, on each build -------------------
# The saved forward output (y, logp) comes from torch in float64 and is rounded to the dtype
# under test; the upstream gradient and the logits are drawn in that dtype, so both sides see
# the same values. Each call runs under the serial and the parallel build, which must give the
# same bits, before the comparison with autograd. Module-wide `large` mark: these include the
# big shapes.

# small; rows just above the serial threshold (plan.SERIAL_MAX_ELEMENTS elements); the README's
# training batch (64 x 32000); one long row (these functions never split rows)
TORCH_SHAPES = [(4, 50), (3, 50000), (64, 32000), (1, 140000)]
HALF_ULPS = 2  # half precision: units in the last place of the format (see assert_near_torch)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def shape_id(shape):
    return "x".join(map(str, shape))


def format_eps(dtype) -> float:
    """The distance from 1 to the next value of ``dtype`` (bfloat16: 2**-7)."""
    dtype = dtype_of(dtype)
    return 2.0**-7 if dtype.kind == "V" else float(np.finfo(dtype).eps)


def on_serial_and_parallel(function, *args, **kwargs):
    """``function(*args, **kwargs)`` under the serial build, after checking that the parallel
    build gives the same bits."""
    results = {}
    for build in ("serial", "parallel"):
        with plan.force_build(build), np.errstate(all="ignore"):
            results[build] = function(*args, **kwargs)
    assert_same_bits(results["parallel"], results["serial"],
                     f"{function.__name__}: parallel build != serial build")
    return results["serial"]


def assert_near_torch(got, want, dtype, scale, message):
    """``got`` (in ``dtype``) against torch's float64 ``want``: float32 and float64 within TOL;
    float16 and bfloat16 within HALF_ULPS units in the last place of the format relative to
    ``scale``, the largest |value| of the row (broadcast against ``want``). NaN where NaN and
    infinities equal in every case."""
    dtype = dtype_of(dtype)
    got = np.asarray(got)
    assert got.dtype == dtype and got.shape == np.shape(want), message
    got64 = got.astype(np.float64)
    if dtype.itemsize >= 4:
        np.testing.assert_array_equal(np.isnan(got64), np.isnan(want), err_msg=message)
        np.testing.assert_allclose(got64, want, equal_nan=True, err_msg=message,
                                   **TOL[dtype.type])
    else:
        with np.errstate(invalid="ignore"):
            atol = HALF_ULPS * format_eps(dtype) * np.asarray(scale, np.float64)
        assert_within(got64, want, 0.0, atol, message)


def row_max(values):
    """max |value| of each row of ``values`` (last axis), keepdims; |value| for a scalar."""
    values = np.abs(np.asarray(values, np.float64))
    return values if values.ndim == 0 else values.max(axis=-1, keepdims=True, initial=0.0)


def backward_terms(name, saved, g):
    """The largest |term| of each row of a backward pass: y * g and y * sum(g * y) for
    softmax, g and exp(logp) * sum(g) for log_softmax. Rounding the saved output to half
    precision changes the gradient by a few units in the last place of these, not of the
    (possibly much smaller, after cancellation) result."""
    with np.errstate(invalid="ignore"):
        if name == "softmax_backward":
            dot = np.sum(g * saved, axis=-1, keepdims=True)
            return row_max(np.abs(saved) * (np.abs(g) + np.abs(dot)))
        total = np.sum(g, axis=-1, keepdims=True)
        return np.maximum(row_max(g), row_max(np.exp(saved) * total))


def check_backward_against_autograd(torch, name, x, g, dtype, message):
    """``name`` of the saved output of torch's forward of float64 ``x``, rounded to ``dtype``,
    and of the upstream gradient ``g`` (in ``dtype``), against autograd's dx."""
    forward = {"softmax_backward": torch.softmax, "log_softmax_backward": torch.log_softmax}
    leaf = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    saved = forward[name](leaf, -1)
    g64 = g.astype(np.float64)
    saved.backward(torch.from_numpy(g64))
    want = leaf.grad.numpy()
    saved64 = saved.detach().numpy()
    with np.errstate(over="ignore"):
        saved_in_dtype = saved64.astype(dtype)
    got = on_serial_and_parallel(getattr(fastsoftmax, name), g, saved_in_dtype)
    assert_near_torch(got, want, dtype, backward_terms(name, saved64, g64), message)


@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax_backward", "log_softmax_backward"])
def test_backward_passes_match_torch_autograd_on_every_build(torch, name, dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"{name} {dtype} {shape}".encode()))
    x = random_logits(rng, shape, np.float64, scale=3.0)  # the forward's input
    g = random_logits(rng, shape, dtype, scale=1.0)       # dL/dy, in the dtype under test
    check_backward_against_autograd(torch, name, x, g, dtype_of(dtype),
                                    f"{name} {dtype} {shape}")


def ignored_every_fourth(rng, n_rows, n_cols):
    """Targets with every fourth row ignored (none for a single row)."""
    t = rng.integers(0, n_cols, n_rows)
    if n_rows > 1:
        t[::4] = -100
    return t


CE_SETTINGS = [dict(label_smoothing=0.0, temperature=1.0),
               dict(label_smoothing=0.1, temperature=0.7)]


def check_cross_entropy_against_autograd(torch, x, t, dtype, reduction, settings, message):
    """cross_entropy(x, t) with its gradient on both builds, against F.cross_entropy(x / T)
    and backward() (of the sum of the losses for "none"); the loss alone equals the loss
    computed with the gradient, bit for bit."""
    F = torch.nn.functional
    kwargs = dict(reduction=reduction, **settings)
    loss, grad = on_serial_and_parallel(fastsoftmax.cross_entropy, x, t, return_grad=True,
                                        **kwargs)
    assert_same_bits(on_serial_and_parallel(fastsoftmax.cross_entropy, x, t, **kwargs), loss,
                     f"{message}: the loss alone != the loss with the gradient")
    leaf = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    want = F.cross_entropy(leaf / settings["temperature"], torch.from_numpy(t),
                           reduction=reduction, label_smoothing=settings["label_smoothing"])
    want.sum().backward()
    want_loss, want_grad = want.detach().numpy(), leaf.grad.numpy()
    assert_near_torch(loss, want_loss, dtype, np.abs(want_loss), f"{message}: loss")
    assert_near_torch(grad, want_grad, dtype, row_max(want_grad), f"{message}: gradient")
    assert not grad[t == -100].any(), f"{message}: an ignored row has a gradient"


@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch_autograd_on_every_build(torch, reduction, dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"cross_entropy {reduction} {dtype} {shape}".encode()))
    x = random_logits(rng, shape, dtype, scale=3.0)
    t = ignored_every_fourth(rng, *shape)
    for settings in CE_SETTINGS:
        check_cross_entropy_against_autograd(torch, x, t, dtype_of(dtype), reduction, settings,
                                             f"cross_entropy {dtype} {shape} {reduction} "
                                             f"{settings}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_of_hard_rows_match_torch_autograd(torch, dtype):
    # +inf, NaN, rows of only -inf: NaN rows as in PyTorch (and only those rows); -inf
    # entries, ties and huge values: finite gradients as in PyTorch
    rng = np.random.default_rng(zlib.crc32(f"hard rows {dtype}".encode()))
    x = hard_logits(rng, (13, 50), dtype)
    g = random_logits(rng, x.shape, dtype, scale=1.0)
    for name in ("softmax_backward", "log_softmax_backward"):
        check_backward_against_autograd(torch, name, x.astype(np.float64), g, x.dtype,
                                        f"{name} {dtype} hard rows")
    t = ignored_every_fourth(rng, *x.shape)
    rows = np.arange(x.shape[0])
    on_minus_inf = (t >= 0) & np.isneginf(x[rows, np.maximum(t, 0)].astype(np.float64))
    t[on_minus_inf] += 1  # a -inf target is an infinite loss (the only -inf row stays so)
    for reduction in ("mean", "sum", "none"):
        for settings in CE_SETTINGS:
            check_cross_entropy_against_autograd(torch, x, t, x.dtype, reduction, settings,
                                                 f"cross_entropy {dtype} hard rows "
                                                 f"{reduction} {settings}")


TIED_MAXIMA = [(dtype, big) for dtype in DTYPES for big in (1e4, 1e8, 1e30)
               if big <= float(np.finfo(np.float32 if dtype == "bfloat16" else dtype).max)]


@pytest.mark.parametrize("dtype, big", TIED_MAXIMA, ids=lambda v: str(v))
def test_cross_entropy_of_logits_tied_at_a_huge_maximum(torch, dtype, big):
    # The loss is log(number of tied maxima) when the target is one of them, however large
    # they are: log(2) and log(4) here (PyTorch: (x - max) - log(sum), no cancellation).
    x = np.array([[big, big, 0.0, -big], [big, big, big, big], [big, 0.0, 0.0, 0.0]])
    x = x.astype(dtype_of(dtype))
    t = np.array([0, 3, 0])
    for reduction in ("mean", "none"):
        for settings in CE_SETTINGS:
            check_cross_entropy_against_autograd(torch, x, t, x.dtype, reduction, settings,
                                                 f"cross_entropy {dtype} ties at {big} "
                                                 f"{reduction} {settings}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_gradient_has_the_bits_of_the_out_of_place_one(dtype):
    rng = np.random.default_rng(zlib.crc32(f"in place {dtype}".encode()))
    x = random_logits(rng, (64, 32000), dtype, scale=3.0)
    t = ignored_every_fourth(rng, *x.shape)
    for reduction in ("mean", "sum", "none"):
        kwargs = dict(reduction=reduction, label_smoothing=0.1, temperature=0.7)
        for build in ("serial", "parallel"):
            context = f"{dtype} {reduction} {build}"
            with plan.force_build(build):
                want = fastsoftmax.cross_entropy(x, t, return_grad=True, **kwargs)
                buffer = x.copy()
                loss, grad = fastsoftmax.cross_entropy(buffer, t, grad_out=buffer, **kwargs)
                separate = np.empty_like(x)
                apart = fastsoftmax.cross_entropy(x, t, grad_out=separate, **kwargs)
            assert grad is buffer and apart[1] is separate, context
            assert_same_bits((loss, grad), want, f"{context}: in place != out of place")
            assert_same_bits(apart, want, f"{context}: grad_out != a new gradient")
