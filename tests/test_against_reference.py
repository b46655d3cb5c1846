"""Every function against fastsoftmax.reference on random inputs of many shapes, axes,
layouts and dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from fastsoftmax.registry import OPERATIONS

from .cases import FUNCTIONS, check_against_reference as assert_matches_reference
from .inputs import layouts, random_logits

SHAPES = [(7,), (1, 1), (3, 5), (4, 1), (1, 9), (2, 3, 4), (5, 0), (0, 5), (0,), (2, 0, 3),
          (64, 33), (3, 2, 2, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_axis_and_none(func_name, shape, dtype):
    rng = np.random.default_rng(abs(hash((func_name, shape))) % 2**32)
    x = random_logits(rng, shape, dtype)
    for axis in [None, *range(-len(shape), len(shape))]:
        assert_matches_reference(func_name, x, axis=axis)


@pytest.mark.parametrize("axis", [0, -1, None])
def test_layouts(func_name, axis):
    # every layout against the reference; and the bits of the contiguous array's result, but
    # where one of the two reads its rows along a strided axis with a kernel of its own
    # (registry columns_read_in_place: softmax of float rows along a C-ordered axis 0), which
    # sums in another order than the row kernels
    rng = np.random.default_rng(1)
    own_columns = axis == 0 and OPERATIONS[func_name].columns_read_in_place is not None
    for dtype in (np.float32, np.float64):
        x = random_logits(rng, (6, 11), dtype)
        for description, view in layouts(x):
            got = assert_matches_reference(func_name, view, axis=axis)
            if own_columns:
                continue
            np.testing.assert_array_equal(
                np.asarray(got), np.asarray(FUNCTIONS[func_name][0](x, axis=axis)),
                err_msg=f"{func_name} {description} differs from the contiguous result")


def test_three_d_layouts(func_name):
    rng = np.random.default_rng(2)
    x = random_logits(rng, (3, 4, 5), np.float32)
    for description, view in layouts(x):
        for axis in (0, 1, 2):
            assert_matches_reference(func_name, view, axis=axis)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint16, np.bool_])
def test_integer_and_bool_inputs_compute_in_float64(func_name, dtype):
    rng = np.random.default_rng(3)
    x = random_logits(rng, (4, 6), dtype)
    if np.dtype(dtype).kind == "u":
        x = np.abs(random_logits(rng, (4, 6), np.int64)).astype(dtype)
    got = assert_matches_reference(func_name, x, axis=1)
    assert np.asarray(got).dtype == np.float64


def test_float16_input_returns_float16(func_name):
    rng = np.random.default_rng(4)
    x = random_logits(rng, (5, 40), np.float16)
    got = assert_matches_reference(func_name, x, axis=-1, rtol=2e-3, atol=1e-4)
    assert np.asarray(got).dtype == np.float16


@pytest.mark.parametrize("dtype_arg", [np.float32, np.float64, "float32"])
def test_dtype_argument_converts_first(func_name, dtype_arg):
    rng = np.random.default_rng(5)
    for x in (random_logits(rng, (3, 8), np.float64), random_logits(rng, (3, 8), np.int32)):
        got = assert_matches_reference(func_name, x, dtype=dtype_arg)
        assert np.asarray(got).dtype == np.dtype(dtype_arg)


def test_lists_are_accepted(func_name):
    assert_matches_reference(func_name, [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    assert_matches_reference(func_name, [1, 2, 3])


@pytest.mark.large
@pytest.mark.parametrize("n_cols", [1, 2, 15, 16, 17, 1000, 4099, 65536, 300_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_lengths(func_name, n_cols, dtype):
    rng = np.random.default_rng(n_cols)
    n_rows = max(1, min(8, 400_000 // n_cols))
    x = random_logits(rng, (n_rows, n_cols), dtype)
    assert_matches_reference(func_name, x)


@pytest.mark.large
@pytest.mark.parametrize("n_rows", [1, 2, 3, 50, 2000])
def test_row_counts_cross_the_parallel_threshold(func_name, n_rows):
    rng = np.random.default_rng(n_rows)
    x = random_logits(rng, (n_rows, 97), np.float32)
    assert_matches_reference(func_name, x)


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 2.0, 1e3])
def test_temperature(temperature):
    rng = np.random.default_rng(6)
    for dtype in (np.float32, np.float64):
        x = random_logits(rng, (5, 30), dtype)
        for name in ("softmax", "log_softmax"):
            assert_matches_reference(name, x, temperature=temperature,
                                     rtol=1e-12 if dtype == np.float64 else 5e-5)


@pytest.mark.parametrize("where_shape", [(6, 9), (9,), (6, 1), (1, 9)])
def test_where_broadcasts(func_name, where_shape):
    rng = np.random.default_rng(7)
    x = random_logits(rng, (6, 9), np.float64)
    where = rng.random(where_shape) > 0.4
    for axis in (0, 1, None):
        assert_matches_reference(func_name, x, axis=axis, where=where)


def test_where_on_a_3d_input(func_name):
    rng = np.random.default_rng(8)
    x = random_logits(rng, (3, 4, 5), np.float32)
    where = rng.random((4, 5)) > 0.3
    for axis in (0, 1, 2, None):
        assert_matches_reference(func_name, x, axis=axis, where=where)


def test_keepdims():
    rng = np.random.default_rng(9)
    x = random_logits(rng, (3, 4, 5), np.float64)
    for axis in (0, 1, 2, None):
        assert_matches_reference("logsumexp", x, axis=axis, keepdims=True)
