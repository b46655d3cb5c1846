"""Mathematical properties, checked with hypothesis over random rows."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastsoftmax

finite = st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False)
batches = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1,
                                                  max_side=40), elements=finite)
rows32 = hnp.arrays(np.float32, st.integers(1, 300),
                    elements=st.floats(-50, 50, width=32, allow_nan=False))

settings.register_profile("default", max_examples=60, deadline=None)
settings.load_profile("default")


@given(batches)
def test_rows_sum_to_one(x):
    np.testing.assert_allclose(fastsoftmax.softmax(x).sum(axis=-1), 1.0, rtol=1e-12)


@given(rows32)
def test_float32_rows_sum_to_one(x):
    assert abs(float(fastsoftmax.softmax(x).astype(np.float64).sum()) - 1.0) <= 1e-5


@given(batches, st.floats(-1e3, 1e3))
def test_shift_invariance(x, shift):
    np.testing.assert_allclose(fastsoftmax.softmax(x + shift), fastsoftmax.softmax(x),
                               rtol=1e-9, atol=1e-300)


@given(batches)
def test_log_softmax_is_x_minus_logsumexp(x):
    lse = fastsoftmax.logsumexp(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(fastsoftmax.log_softmax(x), x - lse, rtol=1e-12, atol=1e-12)


@given(batches)
def test_exp_of_log_softmax_is_softmax(x):
    np.testing.assert_allclose(np.exp(fastsoftmax.log_softmax(x)), fastsoftmax.softmax(x),
                               rtol=1e-12, atol=1e-300)


@given(batches)
def test_order_within_a_row_is_preserved(x):
    y = fastsoftmax.softmax(x)
    order = np.argsort(x, axis=-1, kind="stable")
    sorted_y = np.take_along_axis(y, order, axis=-1)
    assert np.all(np.diff(sorted_y, axis=-1) >= 0)


@given(st.floats(-30, 30, allow_nan=False))
def test_two_columns_give_the_sigmoid(z):
    got = fastsoftmax.softmax(np.array([z, 0.0]))
    np.testing.assert_allclose(got[0], 1.0 / (1.0 + np.exp(-z)), rtol=1e-13)


@given(hnp.arrays(np.float64, st.integers(2, 30), elements=finite, unique=True))
def test_low_temperature_tends_to_one_hot(x):
    gap = np.sort(x)[-1] - np.sort(x)[-2]
    assume(gap > 1e-250)  # temperature = gap / 50 must have a finite reciprocal
    y = fastsoftmax.softmax(x, temperature=gap / 50)
    assert y[np.argmax(x)] > 1 - 1e-15 * len(x) - len(x) * np.exp(-50)
