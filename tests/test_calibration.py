"""Calibration and uncertainty: confidence statistics against NumPy formulas on hard inputs and
the edge-case table, fit_temperature against SciPy's minimize_scalar on the same likelihood and
on data of a known temperature, calibration errors against bins made by hand, the errors for
bad input, tensors and dask. (Every build, dtype and threshold size: tests/test_builds.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsoftmax
from fastsoftmax import calibration_error, confidence, fit_temperature, reference, reliability
from fastsoftmax.registry import OPERATIONS

from .cases import assert_matches_reference, assert_same_bits
from .inputs import EDGE_ROWS, hard_logits, layouts, logits_arrays, mask_for, random_logits

inf, nan = np.inf, np.nan
CONFIDENCE = OPERATIONS["confidence"]


def check_confidence(x, message="", **kwargs):
    got = confidence(x, **kwargs)
    want = reference.confidence(x, **kwargs)
    assert type(got) is fastsoftmax.Confidence and got._fields == want._fields
    moved = np.moveaxis(np.asarray(x), kwargs.get("axis", -1), -1) \
        if kwargs.get("axis", -1) is not None else np.reshape(x, (1, -1))
    assert_matches_reference(CONFIDENCE, got, want, moved, message,
                             kwargs.get("temperature", 1.0))
    return got


# --- confidence ----------------------------------------------------------------------------------

def test_confidence_by_the_numpy_formulas():
    x = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [5.0, 5.0, 1.0], [3.0, -inf, 1.0]])
    c = confidence(x)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top2 = -np.sort(-p, axis=1)[:, :2]
    np.testing.assert_array_equal(c.label, [0, 0, 0, 0])  # ties: the first index
    np.testing.assert_allclose(c.prob, top2[:, 0], rtol=1e-14)
    np.testing.assert_allclose(c.margin, top2[:, 0] - top2[:, 1], rtol=1e-14, atol=1e-15)
    assert c.margin[2] == 0.0  # the largest probability tied
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(p * np.log(p), axis=1)
    np.testing.assert_allclose(c.entropy, entropy, rtol=1e-14)
    np.testing.assert_allclose(c.logsumexp, np.log(np.exp(x).sum(1)), rtol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_confidence_on_hard_inputs_in_every_layout_and_axis(dtype):
    rng = np.random.default_rng(3)
    x = hard_logits(rng, (9, 300), dtype)
    for description, view in layouts(x):
        check_confidence(view, f"{dtype} {description}")
    check_confidence(x, "temperature", temperature=0.3)
    check_confidence(x, "where", where=mask_for(rng, x.shape))
    check_confidence(np.ascontiguousarray(x.T), "axis 0", axis=0)
    check_confidence(x[2], "one row")  # scalars
    check_confidence(x[:1], "axis None", axis=None)


@pytest.mark.parametrize("name", list(EDGE_ROWS))
def test_confidence_of_the_edge_rows(name):
    row, softmax_row, _, lse = EDGE_ROWS[name]
    c = confidence(np.array(row))
    assert_same_bits(c.logsumexp, np.float64(lse), name)  # the logsumexp table
    if np.isnan(softmax_row).any():  # no softmax: no label, NaN statistics
        assert c.label == -1 and np.isnan([c.prob, c.margin, c.entropy]).all(), (name, c)
    else:
        assert c.label == int(np.argmax(row)) and c.prob == pytest.approx(max(softmax_row))
    check_confidence(np.array(row), name)


def test_fully_masked_and_empty_rows_have_no_label():
    x = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    c = confidence(x, where=np.array([[True, True, False], [False, False, False]]))
    assert c.label.tolist() == [1, -1]
    assert np.isnan(c.prob[1]) and c.logsumexp[1] == -inf
    assert c.prob[0] == pytest.approx(np.exp(2) / (np.exp(1) + np.exp(2)))
    empty = confidence(np.zeros((2, 0)))
    assert empty.label.tolist() == [-1, -1] and (empty.logsumexp == -inf).all()
    assert confidence(np.zeros((0, 5))).prob.shape == (0,)


def test_one_class_is_certain():
    c = confidence(np.array([[4.0], [-2.0]]))
    assert c.label.tolist() == [0, 0] and c.prob.tolist() == [1.0, 1.0]
    assert c.margin.tolist() == [1.0, 1.0] and c.entropy.tolist() == [0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(x=logits_arrays(dtypes=("float32", "float64", "float16", "int32")),
       temperature=st.sampled_from([1.0, 0.5, 3.0]))
def test_confidence_matches_the_reference_on_any_input(x, temperature):
    if x.ndim == 0:
        return
    with np.errstate(all="ignore"):
        check_confidence(x, "hypothesis", temperature=temperature)


def test_flagging_uncertain_rows():
    rng = np.random.default_rng(0)
    logits = random_logits(rng, (1000, 10), np.float32, scale=2.0)
    c = confidence(logits)
    flagged = np.flatnonzero(c.prob < 0.5)
    p = reference.softmax(logits.astype(np.float64))
    np.testing.assert_array_equal(flagged, np.flatnonzero(p.max(1) < 0.5))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(1)
    x = hard_logits(rng, (6, 40), np.float32)
    labels = np.arange(6)
    before = x.copy(), labels.copy()
    confidence(x, where=x > 0)
    calibration_error(np.nan_to_num(x, posinf=0, neginf=-5), labels)
    fit_temperature(np.nan_to_num(x, posinf=0, neginf=-5), labels)
    assert_same_bits(x, before[0])
    np.testing.assert_array_equal(labels, before[1])


# --- fit_temperature ----------------------------------------------------------------------------

def calibrated(rng, n_rows, n_classes, scale=2.0):
    """Logits of a calibrated model, and labels drawn from their softmax."""
    logits = rng.standard_normal((n_rows, n_classes)) * scale
    p = reference.softmax(logits)
    labels = (rng.random((n_rows, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, np.minimum(labels, n_classes - 1)


def nll(logits, labels, temperature):
    return float(reference.cross_entropy(logits, labels, temperature=temperature))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_minimises_the_nll_as_scipy_does(dtype, true_t):
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(int(true_t * 10))
    logits, labels = calibrated(rng, 3000, 20)
    scaled = (logits * true_t).astype(dtype)
    got = fit_temperature(scaled, labels)
    x64 = scaled.astype(np.float64)
    # the same NLL, minimised over log T
    best = optimize.minimize_scalar(lambda s: nll(x64, labels, np.exp(s)),
                                    bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                                    options={"xatol": 1e-10})
    assert got == pytest.approx(np.exp(best.x), rel=1e-4)
    assert got == pytest.approx(reference.fit_temperature(scaled, labels), rel=1e-5)


@pytest.mark.parametrize("true_t", [0.4, 1.0, 3.0])
def test_fit_temperature_finds_the_temperature_of_synthetic_data(true_t):
    rng = np.random.default_rng(7)
    logits, labels = calibrated(rng, 20000, 10)
    # logits * true_t are overconfident (true_t < 1: underconfident) by true_t
    assert fit_temperature(logits * true_t, labels) == pytest.approx(true_t, rel=0.03)


def test_fit_temperature_stops_at_a_bound_and_ignores_rows():
    rng = np.random.default_rng(2)
    logits, labels = calibrated(rng, 500, 5)
    # labels the model never gets right: the likelihood wants the flattest softmax
    wrong = np.argmin(logits, axis=1)
    assert fit_temperature(logits, wrong, bounds=(0.1, 7.0)) == 7.0
    assert fit_temperature(logits * 100, labels, bounds=(0.5, 2.0)) == 2.0
    # a model always right wants the sharpest softmax: the lower bound
    assert fit_temperature(logits, np.argmax(logits, axis=1), bounds=(0.2, 5.0)) == 0.2
    assert reference.fit_temperature(logits, np.argmax(logits, axis=1), bounds=(0.2, 5.0)) == 0.2
    # ignored rows count for nothing, whatever their logits
    noisy = np.vstack([logits, rng.standard_normal((50, 5)) * 50])
    ignored = np.concatenate([labels, np.full(50, -7)])
    assert fit_temperature(noisy, ignored, ignore_index=-7) == \
        pytest.approx(fit_temperature(logits, labels), rel=1e-9)


def test_fit_temperature_matches_the_pytorch_lbfgs_recipe():
    torch = pytest.importorskip("torch")
    from fastsoftmax.tools.peers import torch_fit_temperature
    rng = np.random.default_rng(4)
    logits, labels = calibrated(rng, 2000, 10)
    x = (logits * 1.7).astype(np.float32)
    assert torch_fit_temperature(torch.from_numpy(x), torch.from_numpy(labels)) == \
        pytest.approx(fit_temperature(x, labels), rel=1e-4)


def test_fit_temperature_of_rows_without_a_likelihood_names_them():
    x = np.zeros((4, 3))
    x[1, 0], x[3, 2] = nan, -inf
    with pytest.raises(ValueError, match=r"fit_temperature: the log-likelihood of rows \[1, 3\] "
                                         "is not finite"):
        fit_temperature(x, np.array([0, 0, 0, 2]))
    with pytest.raises(ValueError, match="every label is ignore_index"):
        fit_temperature(x, np.full(4, -100))


# --- calibration_error and reliability ----------------------------------------------------------

def hand_made():
    """Eight rows of two classes whose top-label confidences and correctness are chosen."""
    conf = np.array([0.55, 0.65, 0.65, 0.75, 0.85, 0.95, 0.95, 0.95])
    right = np.array([1, 0, 1, 1, 1, 1, 1, 0], bool)
    logits = np.log(np.stack([conf, 1 - conf], axis=1))
    return logits, np.where(right, 0, 1), conf, right


def test_calibration_error_on_bins_made_by_hand():
    logits, labels, conf, right = hand_made()
    # 5 uniform bins over [0, 1]: (0.4, 0.6] holds 0.55; (0.6, 0.8] 0.65, 0.65, 0.75;
    # (0.8, 1] 0.85 and three 0.95
    bins = [([0], 0.55, 1.0), ([1, 2, 3], (0.65 + 0.65 + 0.75) / 3, 2 / 3),
            ([4, 5, 6, 7], (0.85 + 0.95 * 3) / 4, 3 / 4)]
    gaps = np.array([abs(acc - c) for _, c, acc in bins])
    weights = np.array([len(rows) / 8 for rows, _, _ in bins])
    assert calibration_error(logits, labels, n_bins=5) == pytest.approx(np.sum(weights * gaps))
    assert calibration_error(logits, labels, n_bins=5, norm="l2") == \
        pytest.approx(np.sqrt(np.sum(weights * gaps ** 2)))
    assert calibration_error(logits, labels, n_bins=5, norm="max") == pytest.approx(gaps.max())
    r = reliability(logits, labels, n_bins=5)
    assert r.counts.tolist() == [0, 0, 1, 3, 4]
    np.testing.assert_allclose(r.confidence[2:], [c for _, c, _ in bins])
    np.testing.assert_allclose(r.accuracy[2:], [a for _, _, a in bins])
    assert np.isnan(r.confidence[:2]).all() and np.isnan(r.accuracy[:2]).all()
    np.testing.assert_allclose(r.edges, np.linspace(0, 1, 6))
    # one bin: |mean accuracy - mean confidence|
    assert calibration_error(logits, labels, n_bins=1) == \
        pytest.approx(abs(right.mean() - conf.mean()))


def test_quantile_bins_hold_equal_counts():
    rng = np.random.default_rng(5)
    logits, labels = calibrated(rng, 1200, 4)
    r = reliability(logits, labels, n_bins=6, binning="quantile")
    assert r.counts.tolist() == [200] * 6
    assert r.edges[0] == 0 and r.edges[-1] == 1 and np.all(np.diff(r.edges) > 0)
    assert calibration_error(logits, labels, n_bins=6, binning="quantile") == pytest.approx(
        reference.calibration_error(logits, labels, n_bins=6, binning="quantile"), rel=1e-12)


def test_a_calibrated_model_has_no_calibration_error_within_sampling_error():
    rng = np.random.default_rng(6)
    logits, labels = calibrated(rng, 40000, 10)
    # with ~2700 rows a bin, the accuracy of a bin is off by ~0.01 from sampling alone
    assert calibration_error(logits, labels) < 0.015
    assert calibration_error(logits, labels, binning="quantile") < 0.015
    # the same model made overconfident is not calibrated, until its temperature is fitted
    assert calibration_error(logits * 3, labels) > 0.1
    t = fit_temperature(logits * 3, labels)
    assert calibration_error(logits * 3, labels, temperature=t) < 0.015


def test_calibration_error_of_rows_without_confidence_names_them():
    x = np.zeros((3, 4))
    x[2, 1] = inf
    with pytest.raises(ValueError, match=r"calibration_error: row 2 has no confidence"):
        calibration_error(x, np.zeros(3, np.int64))


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("function", [fit_temperature, calibration_error, reliability])
def test_bad_labels_get_clear_errors(function):
    name = function.__name__
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=rf"{name}: labels must have shape \(4,\) for logits "
                                         r"of 4 rows, got \(3,\)"):
        function(x, np.zeros(3, np.int64))
    with pytest.raises(IndexError, match=rf"{name}: labels\[2\] = 3 is not a class index in "
                                         r"\[0, 3\)"):
        function(x, np.array([0, 1, 3, 0]))
    with pytest.raises(IndexError, match=rf"{name}: labels\[0\] = -1 is not a class index"):
        function(x, np.array([-1, 1, 2, 0]))
    with pytest.raises(TypeError, match=rf"{name}: labels must be integer class indices, got "
                                        "dtype float64"):
        function(x, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=rf"{name}: logits must have shape \(rows, classes\)"):
        function(np.zeros((2, 2, 2)), np.zeros(2, np.int64))
    with pytest.raises(TypeError, match=rf"{name}: logits must be an array of real numbers"):
        function(np.zeros((4, 3), complex), np.zeros(4, np.int64))


def test_bad_options_get_clear_errors():
    x, labels = np.zeros((4, 3)), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=r"fit_temperature: bounds must be 0 < low < high"):
        fit_temperature(x, labels, bounds=(2.0, 1.0))
    with pytest.raises(TypeError, match=r"fit_temperature: bounds must be a pair of numbers"):
        fit_temperature(x, labels, bounds=1.0)
    with pytest.raises(ValueError, match=r"fit_temperature: tol must be a number in \(0, 1\)"):
        fit_temperature(x, labels, tol=0)
    with pytest.raises(ValueError, match=r"calibration_error: norm must be one of"):
        calibration_error(x, labels, norm="l3")
    with pytest.raises(ValueError, match=r"reliability: binning must be one of"):
        reliability(x, labels, binning="log")
    with pytest.raises(ValueError, match=r"calibration_error: n_bins must be an int >= 1, "
                                         "got 0"):
        calibration_error(x, labels, n_bins=0)
    with pytest.raises(TypeError, match=r"reliability: n_bins must be an int >= 1, got 2.5"):
        reliability(x, labels, n_bins=2.5)
    with pytest.raises(ValueError, match=r"confidence: temperature must be a positive finite"):
        confidence(x, temperature=0)
    with pytest.raises(ValueError, match=r"confidence: axis 2 is out of bounds"):
        confidence(x, axis=2)
    with pytest.raises(TypeError, match=r"confidence: where must be a boolean array"):
        confidence(x, where=np.ones((4, 3)))


# --- tensors and dask -------------------------------------------------------------------------

def test_tensors_in_give_a_named_tuple_of_tensors():
    torch = pytest.importorskip("torch")
    x = random_logits(np.random.default_rng(8), (5, 30), np.float32)
    labels = np.arange(5)
    got = confidence(torch.from_numpy(x), temperature=0.5)
    assert isinstance(got, fastsoftmax.Confidence)
    assert all(isinstance(v, torch.Tensor) for v in got)
    assert_same_bits(tuple(v.numpy() for v in got), confidence(x, temperature=0.5))
    assert fit_temperature(torch.from_numpy(x), torch.from_numpy(labels)) == \
        fit_temperature(x, labels)
    r = reliability(torch.from_numpy(x), torch.from_numpy(labels), n_bins=3)
    assert isinstance(r, fastsoftmax.Reliability) and isinstance(r.counts, torch.Tensor)


@pytest.mark.large
@pytest.mark.parametrize("chunks", [(2, 40), (5, 16), ((1, 4, 2, 6), (5, 20, 15))])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dask_confidence_and_calibration_error_match_in_memory(chunks, dtype):
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    import fastsoftmax.dask as fsd
    rng = np.random.default_rng(9)
    x = hard_logits(rng, (13, 40), dtype)
    mask = mask_for(rng, x.shape)
    lazy = fsd.confidence(da.from_array(x, chunks=chunks), temperature=0.7, where=mask)
    assert isinstance(lazy, fastsoftmax.Confidence)
    assert_same_bits(tuple(dask.compute(*lazy)), confidence(x, temperature=0.7, where=mask))
    assert_same_bits(tuple(dask.compute(*fsd.confidence(da.from_array(x.T, chunks=chunks[::-1]),
                                                        axis=0))), confidence(x.T, axis=0))
    assert_same_bits(tuple(dask.compute(*fsd.confidence(da.from_array(x, chunks=chunks),
                                                        axis=None))), confidence(x, axis=None))
    finite = random_logits(rng, (13, 40), dtype)
    labels = rng.integers(0, 40, 13)
    for options in ({}, {"binning": "quantile", "norm": "max", "n_bins": 3}):
        got = fsd.calibration_error(da.from_array(finite, chunks=chunks),
                                    da.from_array(labels, chunks=5), **options)
        assert_same_bits(got.compute(), calibration_error(finite, labels, **options))
    with pytest.raises(ValueError, match=r"calibration_error: labels must have shape \(13,\)"):
        fsd.calibration_error(da.from_array(finite), labels[:4])
    with pytest.raises(ValueError, match=r"calibration_error: norm must be one of"):
        fsd.calibration_error(da.from_array(finite), labels, norm="l0")


# --- the same bits from a freshly compiled kernel and from the disk cache ---------------------

_FIT_SCRIPT = """
import numpy as np, fastsoftmax
rng = np.random.default_rng(0)
x = (rng.standard_normal((13, 2570)) * 3).astype(np.float32)
labels = rng.integers(0, 2570, 13)
c = fastsoftmax.confidence(x, temperature=1.3)
print(repr(fastsoftmax.fit_temperature(x, labels)), [v.tobytes().hex() for v in c])
"""


@pytest.mark.large
def test_a_fit_gives_the_same_temperature_compiled_afresh_and_loaded_from_the_cache(tmp_path):
    # Regression: a block reduction returning three sums at once vectorised differently when
    # inlined in a fresh compilation and when called from the disk cache, so that the fitted
    # temperature moved by 1e-7 between processes (and between a NumPy and a JAX input,
    # compiled in turn). Kernels now return one sum per reduction (kernels/calibration.py).
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", _FIT_SCRIPT], env=env, capture_output=True,
                           text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1]
