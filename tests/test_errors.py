"""Every error path: the exception type, and a message that names the argument."""

from __future__ import annotations

import numpy as np
import pytest

from .cases import ELEMENTWISE, FUNCTIONS

x2 = np.zeros((2, 3))

BAD_CALLS = [
    # (args, kwargs, exception, words the message must contain)
    ((np.array([1 + 2j, 3]),), {}, TypeError, ["x", "complex"]),
    ((np.array(["a", "b"]),), {}, TypeError, ["x", "dtype"]),
    ((np.array([object(), object()]),), {}, TypeError, ["x", "object"]),
    ((np.array(["2020-01-01"], dtype="datetime64[D]"),), {}, TypeError, ["x", "datetime"]),
    ((np.float64(3.0),), {}, ValueError, ["x", "0-d"]),
    ((np.array(3.0),), {}, ValueError, ["x", "0-d"]),
    ((x2,), {"axis": 2}, ValueError, ["axis", "2"]),
    ((x2,), {"axis": -3}, ValueError, ["axis", "-3"]),
    ((x2,), {"axis": 1.0}, TypeError, ["axis"]),
    ((x2,), {"axis": (0, 1)}, TypeError, ["axis"]),
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
