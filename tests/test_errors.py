"""Every error path: the exception type, and a message that names the argument."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fastsoftmax.registry import OPERATIONS

from .cases import ELEMENTWISE, FUNCTIONS
from .inputs import random_logits

x2 = np.zeros((2, 3))

BAD_CALLS = [
    # (args, kwargs, exception, words the message must contain)
    ((np.array([1 + 2j, 3]),), {}, TypeError, ["x", "complex"]),
    ((np.array(["a", "b"]),), {}, TypeError, ["x", "dtype"]),
    ((np.array([object(), object()]),), {}, TypeError, ["x", "object"]),
    ((np.array(["2020-01-01"], dtype="datetime64[D]"),), {}, TypeError, ["x", "datetime"]),
    # a scalar is one row only with axis=None (SciPy's meaning); the default axis -1 is out
    # of its bounds
    ((np.float64(3.0),), {}, ValueError, ["axis", "dimension 0", "axis=None"]),
    ((np.array(3.0),), {"axis": 0}, ValueError, ["axis", "dimension 0"]),
    ((x2,), {"axis": 2}, ValueError, ["axis", "2"]),
    ((x2,), {"axis": -3}, ValueError, ["axis", "-3"]),
    ((x2,), {"axis": 1.0}, TypeError, ["axis"]),
    ((x2,), {"axis": (0, 1.0)}, TypeError, ["axis"]),
    ((x2,), {"axis": (1, -1)}, ValueError, ["axis", "repeat"]),
    ((x2,), {"axis": (0, 2)}, ValueError, ["axis", "2"]),
    ((x2,), {"where": np.ones((3, 2), bool)}, ValueError, ["where", "(3, 2)", "(2, 3)"]),
    ((x2,), {"where": np.ones((2, 3))}, TypeError, ["where", "bool"]),
    ((x2,), {"dtype": np.int32}, ValueError, ["dtype", "float32"]),
    ((x2,), {"dtype": "nonsense"}, TypeError, ["dtype"]),
    ((x2,), {"out": [0.0] * 6}, TypeError, ["out", "ndarray"]),
    ((x2,), {"out": np.zeros((2, 3), np.float32)}, ValueError, ["out", "float32", "float64"]),
    ((None,), {}, TypeError, ["x", "object"]),
    ((object(),), {}, TypeError, ["x", "object"]),
    (([[1.0, 2.0], [3.0]],), {}, TypeError, ["x"]),
    ((np.array([1, 2], dtype="timedelta64[s]"),), {}, TypeError, ["x", "timedelta"]),
    ((np.array([b"a"]),), {}, TypeError, ["x", "dtype"]),
    ((np.array([1.0], dtype=np.clongdouble),), {}, TypeError, ["x", "complex"]),
    ((x2,), {"axis": "1"}, TypeError, ["axis"]),
    ((x2,), {"axis": np.float64(0.0)}, TypeError, ["axis"]),
    ((x2,), {"axis": 100}, ValueError, ["axis", "100"]),
    ((x2,), {"where": np.ones((2, 3, 1), bool)}, ValueError, ["where", "(2, 3, 1)"]),
    ((x2,), {"where": np.array(["yes"] * 3)}, TypeError, ["where", "bool"]),
    ((x2,), {"where": [1, 0, 1]}, TypeError, ["where", "bool"]),
    ((x2,), {"dtype": np.float16}, ValueError, ["dtype", "float16"]),
    ((x2,), {"dtype": np.complex128}, ValueError, ["dtype", "complex128"]),
    ((x2,), {"out": np.zeros((2, 3), ">f8")}, ValueError, ["out", ">f8"]),
    ((np.zeros((2, 3), np.float16),), {"out": np.zeros((2, 3), np.float32)}, ValueError,
     ["out", "float16"]),
]
ELEMENTWISE_BAD_CALLS = [
    ((x2,), {"out": np.zeros((3, 2))}, ValueError, ["out", "(3, 2)", "(2, 3)"]),
    ((x2,), {"temperature": 0.0}, ValueError, ["temperature"]),
    ((x2,), {"temperature": -1.0}, ValueError, ["temperature"]),
    ((x2,), {"temperature": np.nan}, ValueError, ["temperature"]),
    ((x2,), {"temperature": np.inf}, ValueError, ["temperature"]),
    ((x2,), {"temperature": "hot"}, ValueError, ["temperature"]),
    ((x2,), {"temperature": None}, ValueError, ["temperature"]),
    ((x2,), {"temperature": True}, ValueError, ["temperature"]),
    ((x2,), {"temperature": 1 + 1j}, ValueError, ["temperature"]),
    ((x2,), {"temperature": 1e-310}, ValueError, ["temperature", "too small"]),
    ((x2.astype(np.float32),), {"temperature": 1e-39}, ValueError, ["temperature", "float32"]),
]


def _readonly_out():
    out = np.zeros((2, 3))
    out.flags.writeable = False
    return out


@pytest.mark.parametrize("args, kwargs, exc, words", BAD_CALLS)
def test_bad_calls(func_name, args, kwargs, exc, words):
    if func_name == "logsumexp" and "out" in kwargs and np.shape(kwargs["out"]) == (2, 3):
        # the same mistake with logsumexp's result shape
        kwargs = dict(kwargs, out=np.zeros(2, kwargs["out"].dtype))
    if func_name == "logsumexp" and getattr(args[0], "dtype", np.dtype(object)).kind == "c":
        kwargs = dict(kwargs, where=True)  # complex logsumexp exists (SciPy's), without where
    with pytest.raises(exc) as info:
        FUNCTIONS[func_name][0](*args, **kwargs)
    message = str(info.value)
    assert func_name in message
    for word in words:
        assert word in message, f"{message!r} does not name {word!r}"


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("args, kwargs, exc, words", ELEMENTWISE_BAD_CALLS)
def test_bad_elementwise_calls(name, args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        FUNCTIONS[name][0](*args, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_read_only_out(name):
    with pytest.raises(ValueError, match="out is read-only"):
        FUNCTIONS[name][0](x2, out=_readonly_out())


def test_logsumexp_out_shape():
    with pytest.raises(ValueError, match=r"out must have shape \(2,\)"):
        FUNCTIONS["logsumexp"][0](x2, out=np.zeros(3))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 1\)"):
        FUNCTIONS["logsumexp"][0](x2, keepdims=True, out=np.zeros(2))


# --- the same mistake, the same error, in every public function --------------------------------

def _calls_with(name, mistake):
    """(args, kwargs) of ``name``'s first example call with ``mistake`` applied, or None when
    the function has no such argument."""
    op = OPERATIONS[name]
    args, kwargs = op.calls[0](random_logits(np.random.default_rng(9), (3, 8), np.float64))
    parameters = list(inspect.signature(op.public()).parameters)
    first = parameters[0]
    if mistake == "complex data" and name == "logsumexp":  # as SciPy, without where
        return (args[0].astype(complex),), dict(kwargs, where=True), TypeError, \
            f"{name}: complex x takes no b, where, out or dtype"
    if mistake == "complex data":
        return (args[0].astype(complex),) + args[1:], kwargs, TypeError, \
            f"{name}: {first} must be an array of real numbers"
    if mistake == "not an array":
        return (object(),) + args[1:], kwargs, TypeError, f"{name}: {first} must be"
    if mistake == "a scalar":
        if "targets" in parameters or "teacher_logits" in parameters or name in (
                "confidence", "fit_temperature", "calibration_error", "reliability"):
            return None  # logits of rows of classes: their own message, "at least one
            #              dimension" (and a scalar is the target of 1-D logits there)
        scalars = tuple(np.float64(1.0) if np.shape(a) == np.shape(args[0]) else a for a in args)
        return scalars, kwargs, ValueError, \
            f"{name}: axis -1 is out of bounds for an array of dimension 0 (a scalar: " \
            "axis=None takes it as one row)"
    if mistake == "float axis" and "axis" in parameters:
        return args, dict(kwargs, axis=1.5), TypeError, f"{name}: axis must be an int"
    if mistake == "axis out of range" and "axis" in parameters:
        return args, dict(kwargs, axis=5), ValueError, \
            f"{name}: axis 5 is out of bounds for an array of dimension 2"
    if mistake == "temperature" and "temperature" in parameters:
        return args, dict(kwargs, temperature=-1.0), ValueError, f"{name}: temperature must be"
    if mistake == "where" and "where" in parameters:
        return args, dict(kwargs, where=np.ones((3, 8))), TypeError, \
            f"{name}: where must be a boolean array, got dtype float64"
    if mistake == "out shape":
        out = {"out": "out", "grad_out": "grad_out"}
        names = [p for p in parameters if p in out]
        if names:
            extra = {"return_grad": True} if names[0] == "grad_out" else {}
            return args, dict(kwargs, **extra, **{names[0]: np.zeros((2, 2))}), ValueError, \
                f"{name}: {names[0]} must have shape"
    return None


MISTAKES = ["complex data", "not an array", "a scalar", "float axis", "axis out of range",
            "temperature", "where", "out shape"]


@pytest.mark.parametrize("name, mistake", [
    (name, mistake) for name in OPERATIONS for mistake in MISTAKES
    if _calls_with(name, mistake) is not None])  # the functions that take such an argument
def test_the_same_mistake_gets_the_same_message_everywhere(name, mistake):
    args, kwargs, exception, words = _calls_with(name, mistake)
    with pytest.raises(exception) as info:
        OPERATIONS[name].public()(*args, **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_tensors_that_record_gradients_are_refused_by_name(name):
    torch = pytest.importorskip("torch")
    op = OPERATIONS[name]
    args, kwargs = op.calls[0](random_logits(np.random.default_rng(9), (3, 8), np.float32))
    first = list(inspect.signature(op.public()).parameters)[0]
    tensor = torch.from_numpy(args[0]).requires_grad_(True)
    with pytest.raises(TypeError, match=rf"{name}: {first} requires grad.*detach"):
        op.public()(tensor, *args[1:], **kwargs)
