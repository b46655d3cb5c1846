"""Fuzzing every function against the reference: random shapes (0-sized included), dtypes,
strides, axes, ``where`` masks, ``out`` aliasing the input, and special values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .cases import FUNCTIONS, check_against_reference as assert_matches_reference
from .inputs import logits_arrays


@st.composite
def calls(draw):
    name = draw(st.sampled_from(list(FUNCTIONS)))
    x = draw(logits_arrays())
    axis = draw(st.sampled_from([None, *range(-x.ndim, x.ndim)]))
    kwargs = {}
    if draw(st.booleans()):
        mask_shape = x.shape if draw(st.booleans()) else x.shape[-1:]
        kwargs["where"] = draw(hnp.arrays(np.bool_, mask_shape))
    if name != "logsumexp" and draw(st.booleans()):
        kwargs["temperature"] = draw(st.sampled_from([0.5, 3.0]))
    in_place = (name != "logsumexp" and x.dtype in (np.float32, np.float64)
                and x.flags.writeable and draw(st.booleans()))
    return name, x, axis, kwargs, in_place


def check(call):
    name, x, axis, kwargs, in_place = call
    if not in_place:
        assert_matches_reference(name, x, axis=axis, **kwargs)
        return
    want = FUNCTIONS[name][1](x, axis=axis, **kwargs)
    target = x.copy()
    got = FUNCTIONS[name][0](target, axis=axis, out=target, **kwargs)
    assert got is target
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    tol = 2e-5 if x.dtype == np.float32 else 1e-12
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    scale = 1.0 + np.abs(np.nan_to_num(x.astype(np.float64), posinf=0, neginf=0)).max(
        initial=0.0)
    np.testing.assert_allclose(got[finite], want[finite], rtol=tol,
                               atol=(0 if name == "softmax" else 8 * scale) * tol
                               + 2 * np.finfo(x.dtype).tiny)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_fuzz_against_reference(call):
    check(call)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_fuzz_against_reference_2000_examples(call):
    check(call)
