"""kl_div and jsd: against PyTorch autograd (every option, float32 and float64, small and
large shapes, each build), the reference and finite differences; the limits beta = 0 and 1;
special values; the mask; the in-place gradient; mixed dtypes; bad input."""

from __future__ import annotations

import math
import tracemalloc
import zlib

import numba
import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import plan, reference
from fastsoftmax.kernels.numerics import log1p_unit

from .cases import assert_same_bits, assert_within
from .inputs import DTYPES, dtype_of, random_logits

pytestmark = pytest.mark.large  # without the JIT these inputs would take minutes as Python

inf, nan = np.inf, np.nan
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}
REDUCTIONS = ("batchmean", "sum", "mean", "none")
# every option of each function: (name, keyword arguments)
SETTINGS = ([("kl_div", dict(reverse=reverse, temperature=T))
             for reverse in (False, True) for T in (1.0, 2.5)]
            + [("jsd", dict(beta=beta, temperature=T))
               for beta in (0.1, 0.5, 0.9) for T in (1.0, 0.7)])
SMALL_SHAPES = [(3, 7), (4, 50), (3, 50000)]  # the last above the serial threshold


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def pair(rng, shape, dtype, scale=3.0):
    """Student and teacher logits: the teacher near the student, as after some training."""
    student = random_logits(rng, shape, np.float64, scale)
    teacher = student + random_logits(rng, shape, np.float64, 1.0)
    return student.astype(dtype_of(dtype)), teacher.astype(dtype_of(dtype))


def torch_loss(torch, name, student, teacher, reduction, temperature=1.0, reverse=False,
               beta=0.5):
    """The loss per row (reduction "none") or reduced, written with torch operations only:
    T**2 * sum over classes of the divergence's terms."""
    F = torch.nn.functional
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    if name == "kl_div":
        if reverse:
            log_p, log_q = log_q, log_p
        rows = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    else:
        m = beta * log_p.exp() + (1 - beta) * log_q.exp()
        rows = (beta * log_p.exp() * (log_p - m.log())
                + (1 - beta) * log_q.exp() * (log_q - m.log())).sum(-1)
    rows = temperature**2 * rows
    n_rows, n_cols = student.shape
    return {"none": rows, "sum": rows.sum(), "batchmean": rows.sum() / n_rows,
            "mean": rows.sum() / (n_rows * n_cols)}[reduction]


def on_serial_and_parallel(function, *args, **kwargs):
    """``function(*args, **kwargs)`` on the serial build, once the parallel build gave the
    same bits."""
    results = {}
    for build in ("serial", "parallel"):
        with plan.force_build(build), np.errstate(all="ignore"):
            results[build] = function(*args, **kwargs)
    assert_same_bits(results["parallel"], results["serial"], f"{function.__name__}: builds")
    return results["serial"]


def check_against_autograd(torch, name, student, teacher, reduction, settings, message):
    """Loss and gradient of both builds against torch's in float64 (from the same values),
    and the loss alone equal to the loss with the gradient, bit for bit."""
    function = getattr(fastsoftmax, name)
    loss, grad = on_serial_and_parallel(function, student, teacher, reduction=reduction,
                                        return_grad=True, **settings)
    assert_same_bits(on_serial_and_parallel(function, student, teacher, reduction=reduction,
                                            **settings), loss, f"{message}: loss alone")
    leaf = torch.from_numpy(student.astype(np.float64)).requires_grad_(True)
    want = torch_loss(torch, name, leaf, torch.from_numpy(teacher.astype(np.float64)),
                      reduction, **settings)
    want.sum().backward()
    dtype = student.dtype.type
    assert loss.dtype == student.dtype and grad.dtype == student.dtype, message
    np.testing.assert_allclose(loss, want.detach().numpy(), err_msg=f"{message}: loss",
                               **TOL[dtype])
    want_grad = leaf.grad.numpy()
    scale = np.abs(want_grad).max()  # the gradient's own scale (it shrinks with the rows)
    np.testing.assert_allclose(grad, want_grad, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * scale, err_msg=f"{message}: gradient")


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, settings", SETTINGS, ids=str)
def test_every_option_matches_torch_autograd(torch, name, settings, reduction, dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"{name} {settings} {dtype} {shape}".encode()))
    student, teacher = pair(rng, shape, dtype)
    check_against_autograd(torch, name, student, teacher, reduction, settings,
                           f"{name} {settings} {reduction} {dtype} {shape}")


@pytest.mark.parametrize("name, settings", [("kl_div", dict(temperature=2.0)),
                                            ("jsd", dict(beta=0.5, temperature=2.0))], ids=str)
def test_the_training_batch_matches_torch_autograd(torch, name, settings):
    # 2048 x 32000 float32, the benchmark shape; torch in float64 on blocks of rows
    # (the whole batch would take gigabytes there), the loss added over them
    rng = np.random.default_rng(zlib.crc32(f"large {name} {settings}".encode()))
    student, teacher = pair(rng, (2048, 32000), np.float32)
    loss, grad = getattr(fastsoftmax, name)(student, teacher, return_grad=True, **settings)
    total = 0.0
    for start in range(0, len(student), 256):
        rows = slice(start, start + 256)
        leaf = torch.from_numpy(student[rows].astype(np.float64)).requires_grad_(True)
        part = torch_loss(torch, name, leaf, torch.from_numpy(teacher[rows].astype(np.float64)),
                          "sum", **settings) / len(student)
        part.backward()
        total += float(part.detach())
        want = leaf.grad.numpy()
        np.testing.assert_allclose(grad[rows], want, rtol=2e-5, atol=2e-6 * np.abs(want).max(),
                                   err_msg=f"rows {rows}")
    np.testing.assert_allclose(loss, total, rtol=2e-5)
    buffer = student.copy()
    in_place = getattr(fastsoftmax, name)(buffer, teacher, grad_out=buffer, **settings)
    assert in_place[1] is buffer
    assert_same_bits(in_place, (loss, grad), "in place != a new gradient")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_beta_0_and_1_are_the_two_directions_of_kl_div_bit_for_bit(dtype, reduction):
    rng = np.random.default_rng(zlib.crc32(f"limits {dtype} {reduction}".encode()))
    student, teacher = pair(rng, (6, 700), dtype)
    mask = rng.random(student.shape) > 0.2
    for options in ({}, {"temperature": 0.7, "where": mask}):
        for beta, reverse in ((0.0, False), (1.0, True)):
            kwargs = dict(options, reduction=reduction, return_grad=True)
            assert_same_bits(fastsoftmax.jsd(student, teacher, beta=beta, **kwargs),
                             fastsoftmax.kl_div(student, teacher, reverse=reverse, **kwargs),
                             f"beta {beta} {options}")
            assert_same_bits(reference.jsd(student, teacher, beta=beta, **kwargs),
                             reference.kl_div(student, teacher, reverse=reverse, **kwargs),
                             f"reference, beta {beta}")
    # near the limits, the divergence over its factor tends to them
    forward = float(fastsoftmax.kl_div(student.astype(np.float64), teacher.astype(np.float64)))
    near = float(fastsoftmax.jsd(student.astype(np.float64), teacher.astype(np.float64),
                                 beta=1e-6)) / 1e-6
    assert near == pytest.approx(forward, rel=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_mask_equals_dropping_its_classes_in_torch(torch, dtype):
    # the same classes left out of every row: torch on the classes kept
    rng = np.random.default_rng(zlib.crc32(f"mask {dtype}".encode()))
    student, teacher = pair(rng, (5, 300), dtype)
    keep = rng.random(300) > 0.4
    student[:, ~keep] = 1e30  # values there must not matter, even huge or NaN
    teacher[:, ~keep] = nan
    for name, settings in SETTINGS:
        loss, grad = fastsoftmax.__dict__[name](student, teacher, where=keep, return_grad=True,
                                                reduction="sum", **settings)
        leaf = torch.from_numpy(student[:, keep].astype(np.float64)).requires_grad_(True)
        want = torch_loss(torch, name, leaf, torch.from_numpy(teacher[:, keep].astype(
            np.float64)), "sum", **settings)
        want.backward()
        message = f"{name} {settings}"
        np.testing.assert_allclose(loss, want.item(), err_msg=message, **TOL[student.dtype.type])
        np.testing.assert_allclose(grad[:, keep], leaf.grad.numpy(), err_msg=message,
                                   **TOL[student.dtype.type])
        assert not grad[:, ~keep].any(), message


@pytest.mark.parametrize("name, settings", SETTINGS, ids=str)
def test_row_masks_match_the_reference_and_empty_rows_cost_nothing(name, settings):
    rng = np.random.default_rng(zlib.crc32(f"row masks {name} {settings}".encode()))
    student, teacher = pair(rng, (7, 1500), np.float64)
    mask = rng.random(student.shape) > 0.5
    mask[2] = False  # a row with nothing selected: loss 0, gradient 0
    mask[4] = False
    mask[4, 9] = True  # one class: both distributions are 1 there, loss 0
    for build in ("serial", "parallel"):
        with plan.force_build(build):
            got = getattr(fastsoftmax, name)(student, teacher, where=mask, reduction="none",
                                             return_grad=True, **settings)
        want = getattr(reference, name)(student, teacher, where=mask, reduction="none",
                                        return_grad=True, **settings)
        np.testing.assert_allclose(got[0], want[0], **TOL[np.float64])
        np.testing.assert_allclose(got[1], want[1], **TOL[np.float64])
        assert got[0][2] == 0 and not got[1][2].any() and not got[1][~mask].any()
        # (the mixture's log, log(beta + (1 - beta)), is 0 within rounding)
        assert abs(got[0][4]) < 1e-15 and np.abs(got[1][4]).max() < 1e-15


def test_finite_differences():
    rng = np.random.default_rng(40)
    student, teacher = pair(rng, (3, 6), np.float64, scale=1.0)
    h = 1e-6
    for name, settings in SETTINGS:
        for reduction in REDUCTIONS:
            function = getattr(fastsoftmax, name)
            _, grad = function(student, teacher, reduction=reduction, return_grad=True,
                               **settings)
            numeric = np.zeros_like(student)
            for index in np.ndindex(student.shape):
                up, down = student.copy(), student.copy()
                up[index] += h
                down[index] -= h
                numeric[index] = (np.sum(function(up, teacher, reduction=reduction, **settings))
                                  - np.sum(function(down, teacher, reduction=reduction,
                                                    **settings))) / (2 * h)
            np.testing.assert_allclose(grad, numeric, atol=1e-7, err_msg=f"{name} {settings}")


def test_values_at_the_edges():
    kl, jsd = fastsoftmax.kl_div, fastsoftmax.jsd
    s = np.array([[1.0, 2.0, 0.5, -1.0]])
    # a teacher's class at -inf has probability 0: it contributes 0 (PyTorch's log_target
    # form gives NaN there: exp(-inf) * (-inf - x))
    t = np.array([[0.5, -inf, 1.0, 0.0]])
    loss, grad = kl(s, t, return_grad=True)
    want = reference.kl_div(s, t, return_grad=True)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, want[0], **TOL[np.float64])
    np.testing.assert_allclose(grad, want[1], **TOL[np.float64])
    # the student at -inf where the teacher has mass: an infinite loss (as PyTorch), a finite
    # gradient q - p
    loss, grad = kl(t, s, return_grad=True)
    assert loss == inf and np.isfinite(grad).all()
    # reversed, the roles swap; a JSD stays finite either way, below log(2) for beta = 0.5
    assert kl(s, t, reverse=True) == inf and np.isfinite(kl(t, s, reverse=True))
    for a, b in ((s, t), (t, s)):
        value, grad = jsd(a, b, return_grad=True)
        assert 0 < value < math.log(2) and np.isfinite(grad).all()
        np.testing.assert_allclose(value, reference.jsd(a, b), **TOL[np.float64])
    # both at -inf in a class: nothing there, in every divergence (0 within the rounding of
    # the mixture's log for jsd)
    both = np.array([[0.0, -inf, 1.0]])
    for name, settings in SETTINGS:
        value, grad = getattr(fastsoftmax, name)(both, both.copy(), return_grad=True,
                                                 **settings)
        assert abs(value) < 1e-15 and np.abs(grad).max() < 1e-15, (name, settings)
        assert grad[0, 1] == 0, (name, settings)
    # NaN, +inf, or a row of only -inf: that row's loss and gradient are NaN, the others not
    rows = np.array([[0.0, 1.0, 2.0], [nan, 1.0, 0.0], [inf, 0.0, 0.0], [-inf, -inf, -inf]])
    for name, settings in SETTINGS:
        for student, teacher in ((rows, rows[[0, 0, 0, 0]]), (rows[[0, 0, 0, 0]], rows)):
            loss, grad = getattr(fastsoftmax, name)(student, teacher, reduction="none",
                                                    return_grad=True, **settings)
            assert np.isfinite(loss[0]) and np.isfinite(grad[0]).all(), (name, settings)
            assert np.isnan(loss[1:]).all(), (name, settings)
            if student is rows:
                assert np.isnan(grad[1:]).all(), (name, settings)
    # identical distributions (shifted logits): 0, and a zero gradient
    x = np.array([[3.0, 1.0, -2.0, 0.0]])
    for name, settings in SETTINGS:
        value, grad = getattr(fastsoftmax, name)(x, x + 100.0, return_grad=True, **settings)
        assert abs(value) < 1e-12 and np.abs(grad).max() < 1e-12, (name, settings)
    # huge logits do not overflow; one class: 0
    big = np.array([[1e30, 0.0, -1e30]], np.float32)
    assert kl(big, big) == 0
    assert jsd(big, big[:, ::-1]) == pytest.approx(math.log(2), rel=1e-6)  # disjoint: log 2
    assert kl(np.array([[5.0], [1.0]]), np.array([[-3.0], [2.0]])) == 0
    # 1-D logits: one row, a scalar ("batchmean" divides by 1 row, not by the classes)
    one = kl(s[0], t[0], reduction="batchmean")
    assert np.ndim(one) == 0 and one == kl(s, t, reduction="sum")
    # no rows: the mean of nothing is NaN (as PyTorch), the sum 0
    empty = np.zeros((0, 5))
    assert np.isnan(kl(empty, empty)) and kl(empty, empty, reduction="sum") == 0
    assert kl(empty, empty, reduction="none").shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_gradient_overwrites_the_student_with_the_bits_of_a_new_one(dtype):
    rng = np.random.default_rng(zlib.crc32(f"in place {dtype}".encode()))
    student, teacher = pair(rng, (64, 3000), dtype)
    for name, settings in SETTINGS:
        for build in ("serial", "parallel"):
            context = f"{name} {settings} {dtype} {build}"
            with plan.force_build(build):
                want = getattr(fastsoftmax, name)(student, teacher, return_grad=True,
                                                  **settings)
                buffer = student.copy()
                got = getattr(fastsoftmax, name)(buffer, teacher, grad_out=buffer, **settings)
                separate = np.empty_like(student)
                apart = getattr(fastsoftmax, name)(student, teacher, grad_out=separate,
                                                   **settings)
            assert got[1] is buffer and apart[1] is separate, context
            assert_same_bits(got, want, f"{context}: in place")
            assert_same_bits(apart, want, f"{context}: grad_out")


def test_in_place_gradient_allocates_o_rows_and_a_few_scratch_rows():
    rng = np.random.default_rng(41)
    student, teacher = pair(rng, (512, 32000), np.float32)
    small = student[:2].copy()
    fastsoftmax.jsd(small, teacher[:2], grad_out=small)  # compile the in-place kernel first
    buffer = student.copy()
    tracemalloc.start()
    try:
        fastsoftmax.jsd(buffer, teacher, grad_out=buffer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # O(rows) for the losses, and two scratch rows per running task (kernels/distill.py)
    scratch = numba.get_num_threads() * (2 * 32000 + 512) * 4
    assert peak < 64 * 512 + 65536 + scratch, \
        f"peak {peak} bytes for {student.nbytes} bytes of logits"


def test_a_teacher_of_another_dtype_is_read_in_the_students():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(42)
    student, teacher = pair(rng, (9, 2000), np.float32)
    for other in (ml_dtypes.bfloat16, np.float16, np.float64, np.int64):
        t = teacher.astype(other)
        for name, settings in SETTINGS[:1] + SETTINGS[-1:]:
            function = getattr(fastsoftmax, name)
            got = function(student, t, return_grad=True, **settings)
            assert_same_bits(got, function(student, t.astype(np.float32), return_grad=True,
                                           **settings), f"{name} teacher {np.dtype(other)}")
    # a half-precision student: computed in float32, loss and gradient in its dtype
    half = student.astype(np.float16)
    loss, grad = fastsoftmax.kl_div(half, teacher, return_grad=True)
    assert loss.dtype == grad.dtype == np.float16
    want = reference.kl_div(half, teacher, return_grad=True)
    assert_within(loss, want[0], 2e-3, 0.0)
    assert_within(grad, want[1], 2.0**-10, 2.0**-10 * float(np.abs(want[1]).max()))


def test_tensors_in_tensors_out(torch):
    rng = np.random.default_rng(43)
    student, teacher = pair(rng, (4, 100), np.float32)
    s, t = torch.from_numpy(student.copy()), torch.from_numpy(teacher).to(torch.bfloat16)
    loss, grad = fastsoftmax.jsd(s, t, grad_out=s)
    assert isinstance(loss, torch.Tensor) and grad is s
    want = fastsoftmax.jsd(student, t.float().numpy(), return_grad=True)
    assert_same_bits((loss.numpy(), grad.numpy()), want, "tensors")


BAD = [
    (("kl_div", np.zeros((2, 3)), np.zeros((3, 2))), {}, ValueError,
     "student_logits has shape (2, 3) but teacher_logits has shape (3, 2)"),
    (("kl_div", np.zeros((2, 3, 4)), np.zeros((2, 3, 4))), {}, ValueError,
     "student_logits must have shape (rows, classes) or (classes,), got (2, 3, 4)"),
    (("jsd", np.zeros((2, 0)), np.zeros((2, 0))), {}, ValueError, "at least one class"),
    (("jsd", np.zeros((2, 3)), np.zeros((2, 3), complex)), {}, TypeError,
     "teacher_logits must be an array of real numbers"),
    (("jsd", np.zeros((2, 3)), np.zeros((2, 3))), {"beta": 1.5}, ValueError,
     "beta must be a number in [0, 1], got 1.5"),
    (("jsd", np.zeros((2, 3)), np.zeros((2, 3))), {"beta": None}, TypeError, "beta must be"),
    (("jsd", np.zeros((2, 3)), np.zeros((2, 3))), {"beta": nan}, ValueError, "beta must be"),
    (("kl_div", np.zeros((2, 3)), np.zeros((2, 3))), {"reverse": "yes"}, TypeError,
     "reverse must be True or False"),
    (("kl_div", np.zeros((2, 3)), np.zeros((2, 3))), {"reduction": "avg"}, ValueError,
     "reduction must be one of ('batchmean', 'sum', 'mean', 'none'), got 'avg'"),
    (("kl_div", np.zeros((2, 3)), np.zeros((2, 3))), {"temperature": 0}, ValueError,
     "temperature must be a positive finite number"),
    (("jsd", np.zeros((2, 3)), np.zeros((2, 3))), {"where": np.ones(2, bool)}, ValueError,
     "where has shape (2,), which does not broadcast"),
    (("jsd", np.zeros((2, 3)), np.zeros((2, 3))), {"grad_out": np.zeros((2, 3), np.float32)},
     ValueError, "grad_out must have shape (2, 3) and dtype float64"),
    (("jsd", np.zeros((2, 3)), np.zeros((2, 3))), {"grad_out": np.zeros((3, 2)).T},
     ValueError, "grad_out must be C-contiguous"),
]


@pytest.mark.parametrize("args, kwargs, exc, words", BAD, ids=lambda v: str(v)[:40])
def test_bad_input_is_named(args, kwargs, exc, words):
    name, *arrays = args
    with pytest.raises(exc) as info:
        getattr(fastsoftmax, name)(*arrays, **kwargs)
    assert f"{name}: " in str(info.value) and words in str(info.value), str(info.value)


def test_grad_out_may_not_be_the_teacher():
    memory = np.ones((3, 3))
    student, teacher = np.zeros((2, 3)), memory[:2]
    for grad_out in (teacher, memory[1:]):
        with pytest.raises(ValueError, match="kl_div: grad_out overlaps teacher_logits"):
            fastsoftmax.kl_div(student, teacher, grad_out=grad_out)
    buffer = np.zeros((3, 3))
    with pytest.raises(ValueError, match="grad_out overlaps student_logits other than exactly"):
        fastsoftmax.jsd(buffer[:2], teacher, grad_out=buffer[1:])
    np.testing.assert_array_equal(memory, 1.0)  # the teacher was never written


@numba.njit
def _log1p_all(r, out):
    for j in range(r.size):
        out[j] = log1p_unit(r[j])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_vectorised_log1p_is_within_two_ulp(dtype):
    tiny = np.finfo(dtype).tiny
    r = np.concatenate([np.linspace(0, 1, 200001), np.geomspace(tiny, 1, 20001),
                        [0.0, 1.0, np.sqrt(2) - 1]]).astype(dtype)
    got = np.empty_like(r)
    _log1p_all(r, got)
    want = np.log1p(r.astype(np.float64))
    ulps = np.abs(got - want) / np.spacing(want.astype(dtype)).astype(np.float64)
    assert ulps.max() <= 2, f"{ulps.max()} ulp at {r[np.argmax(ulps)]!r}"
    nan_out = np.empty(1, dtype)
    _log1p_all(np.array([nan], dtype), nan_out)
    assert np.isnan(nan_out[0])
