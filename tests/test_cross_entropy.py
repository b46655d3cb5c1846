"""cross_entropy's options against PyTorch autograd: class weights, probability targets, N-D
logits with the classes on axis 1, z-loss, soft cap, the logsumexp returned; every
reduction, float32 and float64 (float16 and bfloat16 on the small shape), small and large
shapes, ignored rows, every row ignored; serial and parallel builds bit for bit; the
reference against the same torch expressions; the mistakes.

The z-loss and the soft cap have no PyTorch function: the torch expressions below are those of
Liger-Kernel's tests (``lse_square_scale``: ``F.cross_entropy(...) + z_loss * lse**2`` over
the counted rows, the mean of it over those rows) and of Gemma 2 (``cap * tanh(x / cap)``)."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import reference

from .inputs import DTYPES, dtype_of, random_logits
from .test_gradients import assert_near_torch, on_serial_and_parallel, row_max

pytestmark = pytest.mark.large

REDUCTIONS = ("mean", "sum", "none")
# option sets: weights, smoothing with weights (PyTorch's formula), probability targets (with
# weights and smoothing), z-loss, soft cap, all of them with a temperature
OPTIONS = {
    "weight": dict(weight=True),
    "weight+smoothing": dict(weight=True, label_smoothing=0.1),
    "probabilities": dict(probabilities=True),
    "probabilities+weight+smoothing": dict(probabilities=True, weight=True,
                                           label_smoothing=0.2),
    "z_loss": dict(z_loss=1e-2),
    "softcap": dict(softcap=4.0),
    "all": dict(weight=True, label_smoothing=0.1, z_loss=1e-2, softcap=4.0, temperature=0.7),
    "probabilities+all": dict(probabilities=True, weight=True, label_smoothing=0.1,
                              z_loss=1e-2, softcap=4.0, temperature=0.7),
}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def torch_cross_entropy(torch, x, targets, *, weight=None, label_smoothing=0.0,
                        reduction="mean", temperature=1.0, z_loss=0.0, softcap=None,
                        ignore_index=-100):
    """(loss, lse, d(sum of loss)/dx) by torch autograd in float64: F.cross_entropy of
    ``cap * tanh(x / cap) / temperature`` (classes on axis 1), plus Liger-Kernel's z-loss."""
    F = torch.nn.functional
    leaf = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_(True)
    logits = leaf if softcap is None else softcap * torch.tanh(leaf / softcap)
    z = logits / temperature
    t = torch.from_numpy(np.asarray(targets).astype(
        np.int64 if np.asarray(targets).dtype.kind in "iu" else np.float64))
    w = None if weight is None else torch.from_numpy(np.asarray(weight, np.float64))
    loss = F.cross_entropy(z, t, weight=w, reduction=reduction,
                           label_smoothing=label_smoothing, ignore_index=ignore_index)
    lse = torch.logsumexp(z, dim=1 if z.ndim > 1 else 0)
    if z_loss:
        counted = (t != ignore_index) if not t.is_floating_point() else torch.ones_like(lse,
                                                                                      dtype=bool)
        per_row = torch.where(counted, z_loss * lse**2, 0.0)
        if reduction == "mean":
            loss = loss + per_row.sum() / counted.sum()
        elif reduction == "sum":
            loss = loss + per_row.sum()
        else:
            loss = loss + per_row
    loss.sum().backward()
    return loss.detach().numpy(), lse.detach().numpy(), leaf.grad.numpy()


def make_call(rng, x, n_classes, options, ignored=True):
    """(targets, keyword arguments) of ``options`` for logits ``x`` (classes on axis 1)."""
    kwargs = {k: v for k, v in options.items() if k not in ("weight", "probabilities")}
    if options.get("weight"):
        kwargs["weight"] = rng.uniform(0.2, 2.0, n_classes)
    if options.get("probabilities"):
        p = rng.exponential(size=x.shape) * (rng.random(x.shape) < 0.6) + 1e-4
        targets = p / p.sum(axis=1 if x.ndim > 1 else 0, keepdims=True)
    else:
        shape = x.shape[:1] + x.shape[2:] if x.ndim > 1 else ()
        targets = rng.integers(0, n_classes, shape)
        if ignored and targets.ndim:
            targets.reshape(-1)[::4] = -100
    return targets, kwargs


def check_against_torch(torch, x, targets, dtype, reduction, kwargs, message):
    """Ours (loss, lse and gradient on both builds; the loss alone; the reference) against
    torch autograd."""
    loss, lse, grad = on_serial_and_parallel(
        fastsoftmax.cross_entropy, x, targets, reduction=reduction, return_lse=True,
        return_grad=True, **kwargs)
    alone = on_serial_and_parallel(fastsoftmax.cross_entropy, x, targets,
                                   reduction=reduction, **kwargs)
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(loss), err_msg=message)
    want_loss, want_lse, want_grad = torch_cross_entropy(
        torch, x.astype(np.float64), targets, reduction=reduction, **kwargs)
    scale = row_max(np.moveaxis(want_grad, 1, -1))
    scale = np.moveaxis(scale, -1, 1) if want_grad.ndim > 1 else scale
    with np.errstate(all="ignore"):
        ref = reference.cross_entropy(x, targets, reduction=reduction, return_lse=True,
                                      return_grad=True, **kwargs)
    for who, (got_loss, got_lse, got_grad) in (("", (loss, lse, grad)), ("reference ", ref)):
        assert_near_torch(got_loss, want_loss, dtype, np.abs(want_loss),
                          f"{message}: {who}loss")
        assert_near_torch(got_lse, want_lse, dtype, np.abs(want_lse), f"{message}: {who}lse")
        assert_near_torch(got_grad, want_grad, dtype, scale, f"{message}: {who}gradient")


SHAPES = [(6, 50), (3, 50000), (64, 4000)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", list(OPTIONS))
def test_options_match_torch_autograd(torch, options, reduction, dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"{options} {reduction} {dtype} {shape}".encode()))
    x = random_logits(rng, shape, dtype, scale=3.0)
    targets, kwargs = make_call(rng, x, shape[1], OPTIONS[options])
    check_against_torch(torch, x, targets, dtype_of(dtype), reduction, kwargs,
                        f"{options} {reduction} {dtype} {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", list(OPTIONS))
def test_options_in_every_dtype(torch, options, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{options} {dtype}".encode()))
    x = random_logits(rng, (9, 300), dtype, scale=3.0)
    targets, kwargs = make_call(rng, x, 300, OPTIONS[options])
    for reduction in REDUCTIONS:
        check_against_torch(torch, x, targets, dtype_of(dtype), reduction, kwargs,
                            f"{options} {reduction} {dtype}")


ND_SHAPES = [(2, 7, 5), (3, 11, 4, 6), (2, 300, 130)]


@pytest.mark.parametrize("shape", ND_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", ["plain", "probabilities", "all", "probabilities+all"])
def test_classes_on_axis_1_match_torch(torch, options, dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"nd {options} {dtype} {shape}".encode()))
    x = random_logits(rng, shape, dtype, scale=3.0)
    targets, kwargs = make_call(rng, x, shape[1], OPTIONS.get(options, {}))
    for reduction in REDUCTIONS:
        check_against_torch(torch, x, targets, dtype_of(dtype), reduction, kwargs,
                            f"N-D {options} {reduction} {dtype} {shape}")


def test_classes_on_axis_1_are_read_in_place_and_give_the_bits_of_moved_rows():
    # (batch, vocab, seq) logits: the kernels gather each strided row into a buffer of their
    # task; no copy of the logits, and the gradient in place needs no rows x classes memory
    rng = np.random.default_rng(40)
    x = random_logits(rng, (4, 3000, 64), np.float32, scale=3.0)
    t = rng.integers(0, 3000, (4, 64))
    t[0, :5] = -100
    moved = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, 3000)
    for kwargs in ({}, dict(label_smoothing=0.1, z_loss=1e-3, softcap=10.0)):
        loss, grad = fastsoftmax.cross_entropy(x, t, reduction="none", return_grad=True,
                                               **kwargs)
        want_loss, want_grad = fastsoftmax.cross_entropy(moved, t.reshape(-1),
                                                         reduction="none", return_grad=True,
                                                         **kwargs)
        np.testing.assert_array_equal(loss.reshape(-1), want_loss)
        np.testing.assert_array_equal(np.moveaxis(grad, 1, -1).reshape(-1, 3000), want_grad)
        warm = x.copy()  # compiles the in-place kernel of this build first
        fastsoftmax.cross_entropy(warm, t, reduction="none", grad_out=warm, **kwargs)
        buffer = x.copy()
        tracemalloc.start()
        try:
            _, in_place = fastsoftmax.cross_entropy(buffer, t, reduction="none",
                                                    grad_out=buffer, **kwargs)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert in_place is buffer
        assert peak < x.nbytes // 20, f"peak {peak} bytes for {x.nbytes} bytes of logits"
        np.testing.assert_array_equal(in_place, grad)


def test_probability_targets_of_one_hot_rows_are_class_indices():
    rng = np.random.default_rng(41)
    x = random_logits(rng, (20, 37), np.float64, scale=3.0)
    t = rng.integers(0, 37, 20)
    onehot = np.eye(37)[t]
    w = rng.uniform(0.5, 2.0, 37)
    for kwargs in ({}, dict(label_smoothing=0.3), dict(z_loss=1e-2, softcap=3.0)):
        hard = fastsoftmax.cross_entropy(x, t, reduction="none", return_grad=True, **kwargs)
        soft = fastsoftmax.cross_entropy(x, onehot, reduction="none", return_grad=True,
                                         **kwargs)
        np.testing.assert_allclose(soft[0], hard[0], rtol=1e-12)
        np.testing.assert_allclose(soft[1], hard[1], rtol=1e-12, atol=1e-15)
    # the mean of probability targets divides by the rows, not by the weights (PyTorch)
    soft = fastsoftmax.cross_entropy(x, onehot, weight=w)
    per_row = fastsoftmax.cross_entropy(x, t, weight=w, reduction="none")
    assert soft == pytest.approx(per_row.sum() / 20, rel=1e-12)
    assert fastsoftmax.cross_entropy(x, t, weight=w) == pytest.approx(
        per_row.sum() / w[t].sum(), rel=1e-12)


def test_every_row_ignored_and_weights_that_sum_to_zero(torch):
    rng = np.random.default_rng(42)
    x = random_logits(rng, (5, 30), np.float64, scale=3.0)
    none = np.full(5, -100)
    w = rng.uniform(0.5, 2.0, 30)
    for kwargs in ({}, dict(weight=w), dict(z_loss=1e-2, softcap=3.0, label_smoothing=0.1)):
        loss, lse, grad = fastsoftmax.cross_entropy(x, none, return_lse=True,
                                                    return_grad=True, **kwargs)
        want_loss, want_lse, want_grad = torch_cross_entropy(torch, x, none, **kwargs)
        assert np.isnan(loss) and np.isnan(want_loss)
        assert not grad.any() and not want_grad.any()
        np.testing.assert_allclose(lse, want_lse, rtol=1e-12)  # read all the same
        assert fastsoftmax.cross_entropy(x, none, reduction="sum", **kwargs) == 0.0
    # the counted targets all weigh 0: 0 / 0, NaN loss and gradient, as PyTorch
    t = np.array([0, 1, 0, -100, 1])
    zero = w.copy()
    zero[:2] = 0.0
    loss, grad = fastsoftmax.cross_entropy(x, t, weight=zero, return_grad=True)
    want_loss, _, want_grad = torch_cross_entropy(torch, x, t, weight=zero)
    assert np.isnan(loss) and np.isnan(want_loss)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(want_grad))


def test_soft_cap_bounds_infinite_logits_and_lse_is_of_the_capped_logits(torch):
    x = np.array([[np.inf, 0.0, -np.inf], [1e30, 1e30, 0.0], [3.0, 2.0, 1.0]])
    t = np.array([0, 1, 2])
    loss, lse, grad = fastsoftmax.cross_entropy(x, t, softcap=5.0, reduction="none",
                                                return_lse=True, return_grad=True)
    want_loss, want_lse, want_grad = torch_cross_entropy(torch, x, t, softcap=5.0,
                                                         reduction="none")
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-15)
    assert np.all(np.isfinite(grad))


BAD = [
    (dict(weight=np.ones(4)), ValueError, "weight must have shape (3,), one per class"),
    (dict(weight=np.ones(3, complex)), TypeError, "weight must be an array of real numbers"),
    (dict(z_loss=-1.0), ValueError, "z_loss must be a finite number >= 0"),
    (dict(z_loss=np.nan), ValueError, "z_loss must be"),
    (dict(z_loss="big"), ValueError, "z_loss must be"),
    (dict(softcap=0.0), ValueError, "softcap must be a positive finite number or None"),
    (dict(softcap=-30.0), ValueError, "softcap must be"),
    (dict(softcap=np.inf), ValueError, "softcap must be"),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD)
def test_bad_options(kwargs, exc, words):
    with pytest.raises(exc) as info:
        fastsoftmax.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), **kwargs)
    assert words in str(info.value) and "cross_entropy" in str(info.value)


def test_probability_targets_take_no_ignore_index():
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="cross_entropy: ignore_index is not supported for "
                                         "probability targets"):
        fastsoftmax.cross_entropy(np.zeros((2, 3)), p, ignore_index=0)
    # the default (negative) is fine, as in PyTorch
    assert fastsoftmax.cross_entropy(np.zeros((2, 3)), p) == pytest.approx(np.log(3))
    # integers of the logits' shape are not probabilities
    with pytest.raises(ValueError, match="targets must have shape"):
        fastsoftmax.cross_entropy(np.zeros((2, 3)), np.zeros((2, 3), int))
