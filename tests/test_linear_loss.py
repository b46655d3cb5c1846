"""linear_cross_entropy against PyTorch autograd of the unfused ``F.cross_entropy(h @ W.T +
b)`` (with Liger-Kernel's z-loss and Gemma 2's soft cap written in torch, as in
tests/test_cross_entropy.py): every option and reduction, float32 and float64, small and
large shapes, chunks of one row to all rows, ignored rows, every row ignored; the serial and
parallel builds bit for bit; the extra memory bounded by the chunk; the mistakes."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import plan, reference

from .inputs import DTYPES, dtype_of
from .test_gradients import assert_near_torch, on_serial_and_parallel, row_max

pytestmark = pytest.mark.large

OPTIONS = {
    "plain": {},
    "bias": dict(bias=True),
    "smoothing": dict(label_smoothing=0.1),
    "z_loss": dict(z_loss=1e-2),
    "softcap": dict(softcap=5.0),
    "all": dict(bias=True, label_smoothing=0.1, z_loss=1e-2, softcap=5.0),
}
# (rows, features, classes): small; large, in chunks of 128 rows; a large vocabulary. The
# large shapes take every option at once (they take seconds: torch and the reference in
# float64)
SHAPES = [(7, 16, 50), (300, 32, 30000), (16, 64, 128256)]
CASES = [(options, shape) for shape in SHAPES for options in OPTIONS
         if shape == SHAPES[0] or options in ("plain", "all")]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def layer(rng, n_rows, features, classes, dtype, options, ignored=True):
    """(hidden, weight, targets, keyword arguments) of a linear cross-entropy."""
    dtype = dtype_of(dtype)
    hidden = (rng.standard_normal((n_rows, features)) * 2).astype(dtype)
    weight = (rng.standard_normal((classes, features)) / np.sqrt(features)).astype(dtype)
    targets = rng.integers(0, classes, n_rows)
    if ignored:
        targets[::5] = -100
    kwargs = {k: v for k, v in options.items() if k != "bias"}
    if options.get("bias"):
        kwargs["bias"] = rng.uniform(-1, 1, classes).astype(dtype)
    return hidden, weight, targets, kwargs


def torch_linear_cross_entropy(torch, hidden, weight, targets, *, bias=None,
                               label_smoothing=0.0, reduction="mean", z_loss=0.0,
                               softcap=None, ignore_index=-100):
    """(loss, (d_hidden, d_weight, d_bias)) by torch autograd in float64."""
    F = torch.nn.functional
    leaves = [torch.from_numpy(np.asarray(a, np.float64)).requires_grad_(True)
              for a in (hidden, weight) + (() if bias is None else (bias,))]
    logits = leaves[0] @ leaves[1].T
    if bias is not None:
        logits = logits + leaves[2]
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    t = torch.from_numpy(targets)
    loss = F.cross_entropy(logits, t, reduction=reduction, label_smoothing=label_smoothing,
                           ignore_index=ignore_index)
    if z_loss:
        counted = t != ignore_index
        per_row = torch.where(counted, z_loss * torch.logsumexp(logits, dim=-1)**2, 0.0)
        loss = loss + {"mean": lambda: per_row.sum() / counted.sum(),
                       "sum": lambda: per_row.sum(), "none": lambda: per_row}[reduction]()
    loss.sum().backward()
    grads = tuple(leaf.grad.numpy() for leaf in leaves)
    return loss.detach().numpy(), grads + (None,) * (3 - len(grads))


def check(torch, hidden, weight, targets, dtype, reduction, kwargs, message):
    loss, grads = on_serial_and_parallel(fastsoftmax.linear_cross_entropy, hidden, weight,
                                         targets, reduction=reduction, return_grad=True,
                                         **kwargs)
    alone = on_serial_and_parallel(fastsoftmax.linear_cross_entropy, hidden, weight, targets,
                                   reduction=reduction, **kwargs)
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(loss), err_msg=message)
    kwargs = {k: v for k, v in kwargs.items() if k != "chunk_size"}
    want_loss, want_grads = torch_linear_cross_entropy(torch, hidden, weight, targets,
                                                       reduction=reduction, **kwargs)
    with np.errstate(all="ignore"):
        ref_loss, ref_grads = reference.linear_cross_entropy(
            hidden, weight, targets, reduction=reduction, return_grad=True, **kwargs)
    # a gradient is a sum of products: a few ulp of its largest terms (the row's largest
    # |value| times the other factor's), not of itself
    sizes = (row_max(want_grads[0]), row_max(want_grads[1]),
             None if want_grads[2] is None else np.abs(want_grads[2]).max(initial=0.0))
    for who, got_loss, got_grads in (("", loss, grads), ("reference ", ref_loss, ref_grads)):
        assert_near_torch(got_loss, want_loss, dtype, np.abs(want_loss), f"{message}: {who}loss")
        for name, got, want, size in zip(("d_hidden", "d_weight", "d_bias"), got_grads,
                                         want_grads, sizes):
            if want is None:
                assert got is None, f"{message}: {who}{name}"
                continue
            assert_near_torch(got, want, dtype, size, f"{message}: {who}{name}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options, shape", CASES, ids=lambda v: "x".join(map(str, v))
                         if isinstance(v, tuple) else v)
def test_linear_cross_entropy_matches_torch_autograd(torch, options, shape, dtype):
    rng = np.random.default_rng(zlib.crc32(f"linear {options} {dtype} {shape}".encode()))
    hidden, weight, targets, kwargs = layer(rng, *shape, dtype, OPTIONS[options])
    if shape[0] > 128:
        kwargs["chunk_size"] = 128
    for reduction in ("mean", "sum", "none"):
        check(torch, hidden, weight, targets, dtype_of(dtype), reduction, kwargs,
              f"{options} {dtype} {shape} {reduction}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_half_precision_and_chunks_of_every_size(torch, dtype):
    rng = np.random.default_rng(zlib.crc32(f"linear chunks {dtype}".encode()))
    hidden, weight, targets, kwargs = layer(rng, 23, 40, 300, dtype, OPTIONS["all"])
    for chunk_size in (1, 4, 23, 100):
        check(torch, hidden, weight, targets, dtype_of(dtype), "mean",
              dict(kwargs, chunk_size=chunk_size), f"{dtype} chunks of {chunk_size}")


def test_every_row_ignored(torch):
    rng = np.random.default_rng(50)
    hidden, weight, targets, kwargs = layer(rng, 9, 16, 70, "float64", OPTIONS["all"])
    targets[:] = -100
    loss, (d_hidden, d_weight, d_bias) = fastsoftmax.linear_cross_entropy(
        hidden, weight, targets, return_grad=True, chunk_size=4, **kwargs)
    want_loss, _ = torch_linear_cross_entropy(torch, hidden, weight, targets, **kwargs)
    assert np.isnan(loss) and np.isnan(want_loss)
    assert not (d_hidden.any() or d_weight.any() or d_bias.any())
    assert fastsoftmax.linear_cross_entropy(hidden, weight, targets, reduction="sum",
                                            **kwargs) == 0.0


def test_extra_memory_is_one_chunk_not_the_logits():
    # 4096 tokens x 32000 classes: the float32 logits and their gradient are 1 GB; the issue
    # asks for at most 1/8 of that beyond the results (d_hidden, d_weight)
    rng = np.random.default_rng(51)
    hidden, weight, targets, _ = layer(rng, 4096, 32, 32000, "float32", {})
    fastsoftmax.linear_cross_entropy(hidden[:600], weight, targets[:600], return_grad=True)
    tracemalloc.start()
    try:
        loss, grads = fastsoftmax.linear_cross_entropy(hidden, weight, targets,
                                                       return_grad=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    unfused = 2 * 4096 * 32000 * 4
    extra = peak - grads[0].nbytes - grads[1].nbytes
    assert extra <= unfused / 8, f"{extra / 2**20:.0f} MiB beyond the results"
    assert extra <= plan.LINEAR_CHUNK_BYTES + plan.LINEAR_BLOCK_BYTES + 2**20
    want = fastsoftmax.cross_entropy(hidden @ weight.T, targets)
    assert loss == pytest.approx(want, rel=1e-5)


BAD = [
    (dict(hidden=np.zeros(4)), ValueError, "hidden must have shape (rows, features)"),
    (dict(weight=np.zeros((5, 3))), ValueError, "weight must have shape (classes, 4)"),
    (dict(weight=np.zeros((0, 4))), ValueError, "weight must have shape (classes, 4)"),
    (dict(weight=np.zeros((5, 4), complex)), TypeError, "weight must be an array of real"),
    (dict(bias=np.zeros(4)), ValueError, "bias must have shape (5,), one per class"),
    (dict(targets=np.array([0, 5])), IndexError, "targets[1] = 5"),
    (dict(targets=np.array([0.0, 1.0])), TypeError, "targets must be integer"),
    (dict(chunk_size=0), ValueError, "chunk_size must be an int >= 1 or None"),
    (dict(chunk_size=2.0), TypeError, "chunk_size must be an int >= 1 or None"),
    (dict(z_loss=-1.0), ValueError, "z_loss must be"),
    (dict(softcap=0), ValueError, "softcap must be"),
    (dict(reduction="avg"), ValueError, "reduction"),
]


@pytest.mark.parametrize("change, exc, words", BAD)
def test_bad_input(change, exc, words):
    call = dict(hidden=np.zeros((2, 4)), weight=np.zeros((5, 4)), targets=np.array([0, 1]))
    call.update(change)
    args = (call.pop("hidden"), call.pop("weight"), call.pop("targets"))
    with pytest.raises(exc) as info:
        fastsoftmax.linear_cross_entropy(*args, **call)
    assert words in str(info.value) and "linear_cross_entropy" in str(info.value)
