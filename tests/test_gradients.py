"""softmax_backward, log_softmax_backward and cross_entropy: against the reference, PyTorch
(when installed) and finite differences; edge cases; the in-place gradient's memory."""

from __future__ import annotations

import importlib.util
import tracemalloc

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import reference

# Without the JIT (make coverage) these inputs would take minutes as Python.
pytestmark = pytest.mark.large

HAVE_TORCH = importlib.util.find_spec("torch") is not None
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}


def logits_and_targets(rng, n_rows, n_cols, dtype, ignored=0):
    x = (rng.standard_normal((n_rows, n_cols)) * 3).astype(dtype)
    t = rng.integers(0, n_cols, n_rows)
    t[:ignored] = -100
    return x, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", [((5, 7), -1), ((5, 7), 0), ((2, 3, 4), 1),
                                         ((4, 3000), -1), ((6,), None)])
def test_backward_passes_match_the_reference(dtype, shape, axis):
    rng = np.random.default_rng(30)
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y = fastsoftmax.softmax(x, axis=axis)
    logp = fastsoftmax.log_softmax(x, axis=axis)
    np.testing.assert_allclose(fastsoftmax.softmax_backward(g, y, axis=axis),
                               reference.softmax_backward(g, y, axis=axis), **TOL[dtype])
    np.testing.assert_allclose(fastsoftmax.log_softmax_backward(g, logp, axis=axis),
                               reference.log_softmax_backward(g, logp, axis=axis), **TOL[dtype])


def test_backward_out_may_be_grad_itself():
    rng = np.random.default_rng(31)
    x, g = rng.standard_normal((64, 900)), rng.standard_normal((64, 900))
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
    x = rng.standard_normal((3, 5))
    g = rng.standard_normal((3, 5))
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
    x, g = rng.standard_normal((4, 50)), rng.standard_normal((4, 50))
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
    ((np.zeros((2, 3, 4)), np.array([0, 1])), {}, ValueError, "logits must have shape"),
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
