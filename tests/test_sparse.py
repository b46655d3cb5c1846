"""The sparse family (sparsemax, entmax15, entmax_bisect, their backward passes and losses):
properties, edge cases, α per row, and gradients against finite differences and against
PyTorch autograd through the entmax package (skipped when it is not installed).
tests/test_builds.py checks every build, dtype and threshold size against the references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsoftmax
from fastsoftmax import (entmax15, entmax15_loss, entmax_backward, entmax_bisect,
                         entmax_bisect_loss, reference, softmax, sparsemax, sparsemax_backward,
                         sparsemax_loss)

from .inputs import EDGE_ROWS, logits_arrays, random_logits

inf, nan = np.inf, np.nan
FORWARD = {"sparsemax": sparsemax, "entmax15": entmax15, "entmax_bisect": entmax_bisect}
LOSSES = {"sparsemax_loss": (sparsemax_loss, 2.0), "entmax15_loss": (entmax15_loss, 1.5),
          "entmax_bisect_loss": (entmax_bisect_loss, 1.5)}


# --- properties ---------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(x=logits_arrays(dtypes=("float32", "float64")), name=st.sampled_from(list(FORWARD)))
def test_rows_are_distributions_with_exact_zeros(x, name):
    with np.errstate(all="ignore"):
        y = np.asarray(FORWARD[name](x), np.float64)
        want = getattr(reference, name)(x)
    if x.size == 0:
        return
    finite_rows = np.isfinite(np.asarray(x, np.float64)).all(axis=-1)
    rows = y[finite_rows]
    assert (rows >= 0).all()
    np.testing.assert_allclose(rows.sum(axis=-1), 1.0, rtol=1e-5)
    # the same support as the reference, up to elements at the threshold itself
    np.testing.assert_allclose(y, np.asarray(want, np.float64), rtol=2e-5, atol=2e-5)


def test_sparsemax_of_two_is_the_clipped_line():
    z = np.linspace(-3.0, 3.0, 601)
    pairs = np.stack([z, np.zeros_like(z)], axis=-1)
    np.testing.assert_allclose(sparsemax(pairs)[:, 0], np.clip((z + 1) / 2, 0, 1), atol=1e-15)


def test_alpha_two_is_sparsemax_and_alpha_near_one_tends_to_softmax():
    x = random_logits(np.random.default_rng(3), (20, 300), np.float64)
    np.testing.assert_allclose(entmax_bisect(x, alpha=2.0), sparsemax(x), atol=1e-12)
    np.testing.assert_allclose(entmax_bisect(x, alpha=1.5), entmax15(x), atol=1e-12)
    gaps = [np.abs(entmax_bisect(x, alpha=1 + eps) - softmax(x)).max()
            for eps in (1e-1, 1e-2, 1e-3)]
    assert gaps[0] > 5 * gaps[1] > 25 * gaps[2] and gaps[2] < 5e-3  # O(alpha - 1)
    assert (softmax(x) > 0).all()


def test_supports_shrink_as_alpha_grows():
    x = random_logits(np.random.default_rng(4), (50, 1000), np.float64, scale=1.0)
    sizes = [np.count_nonzero(entmax_bisect(x, alpha=a), axis=-1) for a in (1.25, 1.5, 2, 3)]
    for smaller, larger in zip(sizes[1:], sizes):
        assert (smaller <= larger).all()
    assert (sizes[2] == np.count_nonzero(sparsemax(x), axis=-1)).all()
    assert (sizes[1] == np.count_nonzero(entmax15(x), axis=-1)).all()
    assert (sizes[3] < 1000).all() and (sizes[3] >= 1).all()


def test_sparsemax_support_is_where_the_sorted_criterion_holds():
    x = random_logits(np.random.default_rng(5), (30, 500), np.float64, scale=0.3)
    y = sparsemax(x)
    for row, probs in zip(x, y):
        ranked = np.sort(row)[::-1]
        k = np.arange(1, row.size + 1)
        support = np.count_nonzero(1 + k * ranked > np.cumsum(ranked))
        assert np.count_nonzero(probs) == support


def test_ties_at_the_threshold_are_exact():
    assert sparsemax(np.array([1.0, 1.0, 1.0, 1.0])).tolist() == [0.25] * 4
    assert sparsemax(np.array([0.5, 0.5, -0.5])).tolist() == [0.5, 0.5, 0.0]  # -0.5 at tau
    assert sparsemax(np.array([1e30, 1e30, 0.0], np.float32)).tolist() == [0.5, 0.5, 0.0]
    assert entmax15(np.array([2.0, 2.0, 2.0, 2.0])).tolist() == [0.25] * 4
    y = entmax15(np.full(1000, 7.0, np.float32))
    assert (y == np.float32(0.001)).all()


@pytest.mark.parametrize("name", list(FORWARD))
def test_edge_rows(name):
    function = FORWARD[name]
    for label, (row, softmax_row, _, _) in EDGE_ROWS.items():
        got = function(np.array(row))
        if np.isnan(softmax_row).any():
            assert np.isnan(got).all(), label  # +inf, NaN, only -inf: a NaN row
        else:
            assert (got[np.isneginf(row)] == 0).all() and np.isclose(got.sum(), 1), label
    masked = function(np.array([[1.0, 2.0], [3.0, nan]]), where=np.array([[False] * 2,
                                                                          [True, False]]))
    assert masked.tolist() == [[0.0, 0.0], [1.0, 0.0]]  # nothing selected: zeros


def test_alpha_per_row_matches_one_call_per_alpha():
    x = random_logits(np.random.default_rng(6), (4, 3, 50), np.float32)
    alphas = np.array([1.0, 1.3, 2.0, 2.7])
    got = entmax_bisect(x, alpha=alphas[:, None])
    for i, a in enumerate(alphas):
        np.testing.assert_array_equal(got[i], entmax_bisect(x[i], alpha=a))
    # the entmax package's layout: the reduced axis kept with length 1
    np.testing.assert_array_equal(entmax_bisect(x, alpha=alphas[:, None, None]), got)
    np.testing.assert_array_equal(entmax_bisect(x, alpha=np.full((4, 3), 2.0)), sparsemax(x))
    along_0 = entmax_bisect(x, alpha=np.full((3, 50), 1.5), axis=0)
    np.testing.assert_allclose(along_0, entmax15(x, axis=0), atol=1e-6)


def test_alpha_one_is_softmax_itself():
    x = random_logits(np.random.default_rng(7), (5, 40), np.float64)
    np.testing.assert_array_equal(entmax_bisect(x, alpha=1), softmax(x))
    np.testing.assert_allclose(entmax_bisect(x, alpha=np.ones(5)), softmax(x), rtol=1e-15)


@pytest.mark.parametrize("alpha, error, words", [
    (0.5, ValueError, "alpha must be a finite number >= 1"),
    (inf, ValueError, "alpha must be a finite number >= 1"),
    (np.array([1.5, 0.9]), ValueError, "got 0.9 in an array"),
    (np.ones(3), ValueError, "alpha has shape (3,), which does not broadcast"),
    ("1.5", TypeError, "alpha must be"),
    (True, TypeError, "alpha must be"),
])
def test_bad_alpha_is_named(alpha, error, words):
    x = np.zeros((2, 4))
    for call in (lambda: entmax_bisect(x, alpha=alpha),
                 lambda: entmax_backward(x, x, alpha),
                 lambda: entmax_bisect_loss(x, np.array([0, 1]), alpha=alpha)):
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value)
    with pytest.raises(ValueError, match="entmax_bisect: n_iter must be an int >= 1"):
        entmax_bisect(x, n_iter=0)


# --- gradients ----------------------------------------------------------------------------------

def numeric_jacobian_product(f, x, g, h=1e-6):
    """d/dx of sum(g * f(x)) by central differences, element by element."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (np.sum(g * f(x + step)) - np.sum(g * f(x - step))) / (2 * h)
    return grad


@pytest.mark.parametrize("alpha", [1.0, 1.25, 1.5, 2.0, 3.0])
def test_backward_matches_finite_differences(alpha):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 7)) * 0.7
    g = rng.standard_normal((3, 7))
    forward = {2.0: sparsemax, 1.5: entmax15}.get(
        alpha, lambda v: entmax_bisect(v, alpha=alpha, n_iter=80))
    y = forward(x)
    want = numeric_jacobian_product(forward, x, g)
    np.testing.assert_allclose(entmax_backward(g, y, alpha), want, atol=1e-6)
    if alpha == 2.0:
        np.testing.assert_array_equal(sparsemax_backward(g, y), entmax_backward(g, y, 2.0))


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_gradient_matches_finite_differences(name):
    loss_fn, alpha = LOSSES[name]
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 6))
    t = np.array([0, 5, 2, -100])
    loss, grad = loss_fn(x, t, return_grad=True)
    want = numeric_jacobian_product(lambda v: np.atleast_1d(loss_fn(v, t)), x, np.ones(1))
    np.testing.assert_allclose(grad, want, atol=1e-6)
    assert (loss_fn(x, t, reduction="none") >= -1e-12).all()  # a Fenchel-Young loss
    separated = np.array([[10.0, 0.0, 0.0]])
    assert loss_fn(separated, np.array([0])) == 0.0  # zero once the target wins by a margin


def test_alpha_one_loss_is_cross_entropy():
    x = random_logits(np.random.default_rng(10), (6, 30), np.float64)
    t = np.arange(6)
    loss, grad = entmax_bisect_loss(x, t, alpha=np.ones(6), return_grad=True)
    want_loss, want_grad = fastsoftmax.cross_entropy(x, t, return_grad=True)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-13)
    np.testing.assert_allclose(grad, want_grad, atol=1e-15)


def test_loss_gradient_in_place_over_the_logits():
    x = random_logits(np.random.default_rng(11), (8, 100), np.float32)
    t = np.arange(8)
    loss, grad = sparsemax_loss(x, t, return_grad=True)
    in_place = x.copy()
    same_loss, same = sparsemax_loss(in_place, t, grad_out=in_place)
    assert same is in_place and same_loss == loss
    np.testing.assert_array_equal(same, grad)


# --- against the entmax package ---------------------------------------------------------------

@pytest.fixture(scope="module")
def entmax():
    return pytest.importorskip("entmax")


@pytest.mark.parametrize("shape", [(5, 9), (3, 2000)])
@pytest.mark.parametrize("name, alpha", [("sparsemax", 2.0), ("entmax15", 1.5),
                                         ("entmax_bisect", 1.3), ("entmax_bisect", 2.5)])
def test_forward_and_gradient_match_pytorch_autograd_through_entmax(entmax, name, alpha,
                                                                    shape):
    import torch
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape) * 2
    g = rng.standard_normal(shape)
    leaf = torch.tensor(x, requires_grad=True)
    if name == "entmax_bisect":
        y_torch = entmax.entmax_bisect(leaf, alpha=alpha, dim=-1)
        y = entmax_bisect(x, alpha=alpha)
    else:
        y_torch = getattr(entmax, name)(leaf, dim=-1)
        y = FORWARD[name](x)
    y_torch.backward(torch.tensor(g))
    np.testing.assert_allclose(y, y_torch.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(entmax_backward(g, y, alpha), leaf.grad.numpy(), atol=1e-10)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_gradient_match_pytorch_autograd_through_entmax(entmax, name):
    import torch
    loss_fn, alpha = LOSSES[name]
    x = random_logits(np.random.default_rng(13), (6, 40), np.float64, scale=1.0)
    t = np.array([0, 3, 39, 7, 7, 1])
    leaf = torch.tensor(x, requires_grad=True)
    torch_loss = getattr(entmax, name)(leaf, torch.tensor(t)).mean()
    torch_loss.backward()
    loss, grad = loss_fn(x, t, return_grad=True)
    np.testing.assert_allclose(loss, torch_loss.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, leaf.grad.numpy(), atol=1e-12)

