"""Public functions for calibration and uncertainty: per-row confidence statistics of the
softmax (:func:`confidence`), temperature scaling (:func:`fit_temperature`), and the
calibration error of the top label with its reliability diagram (:func:`calibration_error`,
:func:`reliability`).

The usual path computes the full probabilities in NumPy, then the statistics: several passes
and rows x classes temporaries. Here the kernels (:mod:`fastsoftmax.kernels.calibration`) read
each row once and store no probabilities; a temperature is fitted by a safeguarded Newton
iteration in 1/temperature, each step one fused pass over the logits giving the mean negative
log-likelihood and its first two derivatives. Binning works on one value per row.
"""

from __future__ import annotations

import math

import numpy as np

from . import arguments, plan
from .reference import BINNINGS, NORMS, Confidence, Reliability
from .registry import OPERATIONS
from .tensors import accepts_tensors

__all__ = ["confidence", "fit_temperature", "calibration_error", "reliability", "Confidence",
           "Reliability"]

# A safeguard: each Newton step at least halves the bracket or converges quadratically, so a
# fit takes a handful of steps; this only stops a pathological loop.
MAX_FIT_STEPS = 100


@accepts_tensors("logits", "where")
def confidence(logits, axis=-1, *, temperature=1.0, where=None):
    """Per-row confidence statistics of ``softmax(logits / temperature)``, in one pass.

    Parameters
    ----------
    logits : array_like or torch.Tensor
        At least 1-D; each row along ``axis`` is one prediction over classes. Dtypes as
        :func:`fastsoftmax.softmax` (float16 and bfloat16 computed in float32).
    axis : int or None, default -1
        The class axis; None treats the whole array as one row.
    temperature : float, default 1.0
        Positive and finite.
    where : array_like of bool, optional
        Broadcastable to ``logits``: classes left out (False) take no part.

    Returns
    -------
    Confidence
        A named tuple of arrays shaped like ``logits`` without ``axis`` (scalars for one
        row): ``label`` (int64, the first index of the largest logit), ``prob`` (its
        probability), ``margin`` (the largest minus the second largest probability; 0 when the
        largest is tied, 1 for a single class), ``entropy`` (natural log) and ``logsumexp``
        (of ``logits / temperature``); the statistics in the result dtype of the dtype
        policy.

    Notes
    -----
    A row whose softmax is NaN (a NaN, a +inf, only -inf, nothing selected, no class) has
    ``label`` -1 and NaN ``prob``, ``margin`` and ``entropy``; its ``logsumexp`` is that of
    :func:`fastsoftmax.logsumexp` (NaN, +inf, -inf). No probabilities are stored: the row is
    read from memory once.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import confidence
    >>> c = confidence(np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    >>> c.label
    array([0, 0])
    >>> c.prob.round(4), c.margin.round(4), c.entropy.round(4)
    (array([0.6652, 0.3333]), array([0.4205, 0.    ]), array([0.8324, 1.0986]))
    >>> uncertain = c.prob < 0.5          # rows to hand to a human
    >>> np.flatnonzero(uncertain)
    array([1])
    """
    op = OPERATIONS["confidence"]
    return Confidence(*plan.run(op, arguments.prepare_confidence(op, logits, axis, temperature,
                                                                where)))


@accepts_tensors("logits", "labels")
def fit_temperature(logits, labels, *, ignore_index=-100, bounds=(0.05, 20.0), tol=1e-6):
    """The temperature T minimising the mean negative log-likelihood of
    ``softmax(logits / T)`` at ``labels`` (temperature scaling, Guo et al. 2017).

    Parameters
    ----------
    logits : array_like, shape (rows, classes) or (classes,)
        Held-out logits of a trained model.
    labels : array_like of int, shape (rows,) or ()
        The true classes; rows labelled ``ignore_index`` are left out.
    ignore_index : int, default -100
    bounds : (float, float), default (0.05, 20.0)
        The interval T is searched in; an optimum beyond it gives the bound.
    tol : float, default 1e-6
        Relative tolerance on T.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When the log-likelihood is not finite (a row with a NaN or +inf logit, or whose
        label's logit is -inf), naming the rows; when every row is ignored.

    Notes
    -----
    The NLL is convex in u = 1/T, with derivative E[x] - x[label] and second derivative
    Var[x] under the softmax of each row. Each step is one fused pass over the logits (the
    cross-entropy's, with those two moments): a Newton step on u, kept inside a bracket of
    the minimum that every step narrows (bisection in log u when Newton would leave it).

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import fit_temperature
    >>> rng = np.random.default_rng(0)
    >>> calibrated = rng.standard_normal((2000, 10)) * 2
    >>> labels = (rng.random((2000, 1)) > np.cumsum(np.exp(calibrated) /
    ...           np.exp(calibrated).sum(1, keepdims=True), 1)).sum(1)   # drawn from softmax
    >>> round(fit_temperature(calibrated * 3, labels), 1)                # overconfident x3
    3.0
    """
    op = OPERATIONS["fit_temperature"]
    rows, (low, high), tol = arguments.prepare_temperature_fit(op, logits, labels,
                                                                ignore_index, bounds, tol)
    # The bracket [lo, hi] of u = 1/T holds the minimum; an end is "known" once the slope
    # there was seen to point inwards (before that it is only a bound).
    lo, hi = 1.0 / high, 1.0 / low
    lo_known = hi_known = False
    u = min(max(1.0, lo), hi)
    for step in range(MAX_FIT_STEPS):
        (_, slope, curvature), losses = plan.run(op, rows.batch(u))
        if step == 0:
            _check_finite(op.name, losses)
        if slope > 0:
            hi, hi_known = u, True
        elif slope < 0:
            lo, lo_known = u, True
        else:
            break
        if (slope < 0 and u == 1.0 / low) or (slope > 0 and u == 1.0 / high):
            break  # the minimum lies beyond a bound
        new = u - slope / curvature if curvature > 0 else math.inf
        if not lo < new < hi:
            if new >= hi and not hi_known:
                new = hi  # try the bound itself
            elif new <= lo and not lo_known:
                new = lo
            else:
                new = math.sqrt(lo * hi)
        if abs(new - u) <= tol * u:
            u = new
            break
        u = new
    return 1.0 / u


def _check_finite(func, losses):
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        rows = arguments.name_rows(bad, (losses.size,))
        raise ValueError(f"{func}: the log-likelihood of {rows} is not finite (a NaN or +inf "
                         "logit, or the label's logit is -inf)")


@accepts_tensors("logits", "labels")
def calibration_error(logits, labels, *, n_bins=15, binning="uniform", norm="l1",
                      temperature=1.0):
    """Calibration error of the top-label confidence of ``softmax(logits / temperature)``.

    Parameters
    ----------
    logits : array_like, shape (rows, classes) or (classes,)
    labels : array_like of int, shape (rows,) or ()
        The true classes, each in [0, classes).
    n_bins : int >= 1, default 15
    binning : {"uniform", "quantile"}
        Bins of equal width in [0, 1], or holding equal numbers of rows (edges at the
        quantiles of the confidences; the outer edges 0 and 1). Bin i holds the
        confidences in (edges[i], edges[i + 1]] (the first one 0 too).
    norm : {"l1", "l2", "max"}
        Expected calibration error (ECE: sum over bins of the fraction of rows times
        |accuracy - confidence|), its root-mean-square version (RMSCE), or the largest gap
        over non-empty bins (MCE).
    temperature : float, default 1.0

    Returns
    -------
    scalar of the result dtype

    Raises
    ------
    ValueError
        For rows whose softmax is NaN (a NaN or +inf logit, only -inf), naming them.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import calibration_error
    >>> logits = np.log([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 0, 0])
    >>> # bins of 0.1: the 0.9s are right half the time, the 0.6s always: |0.5 - 0.9|, |1 - 0.6|
    >>> float(calibration_error(logits, labels, n_bins=10)).__round__(6)
    0.4
    >>> float(calibration_error(logits, labels, n_bins=1))              # 0.75 right at 0.75
    0.0
    """
    check_binning(n_bins, binning, "calibration_error", norm)
    probs, correct, dtype, bits = labelled(OPERATIONS["calibration_error"], logits, labels,
                                            temperature)
    return error_of(probs, correct, n_bins, binning, norm, dtype, bits)


def check_binning(n_bins, binning, func, norm=None):
    """Check the binning arguments (and ``norm`` unless None) of ``func``."""
    arguments.check_int(n_bins, func, "n_bins", minimum=1)
    arguments.check_choice(binning, func, "binning", BINNINGS)
    if norm is not None:
        arguments.check_choice(norm, func, "norm", NORMS)


def error_of(probs, correct, n_bins, binning, norm, dtype, bits):
    """The calibration error of rows of top-label probability ``probs`` (float64), whether
    each was right (``correct``), in ``dtype`` (bfloat16 bits for ``bits``)."""
    counts, confidences, accuracies, _ = _bin(probs, correct, n_bins, binning)
    gaps = np.abs(accuracies - confidences)[counts > 0]
    weights = counts[counts > 0] / probs.size
    if not gaps.size:
        value = np.nan  # no rows
    elif norm == "l1":  # bins added in order (np.sum's order depends on alignment)
        value = np.cumsum(weights * gaps)[-1]
    elif norm == "l2":
        value = np.sqrt(np.cumsum(weights * gaps ** 2)[-1])
    else:
        value = gaps.max()
    return arguments.cast_result(value, dtype, bits)


@accepts_tensors("logits", "labels")
def reliability(logits, labels, *, n_bins=15, binning="uniform", temperature=1.0):
    """The reliability diagram of the top-label confidence: per bin, how many rows, their mean
    confidence and their accuracy (parameters as :func:`calibration_error`).

    Returns
    -------
    Reliability
        A named tuple: ``counts`` (int64, ``n_bins``), ``confidence`` and ``accuracy`` (NaN
        for an empty bin) and ``edges`` (``n_bins + 1``), in the result dtype. A calibrated
        model has accuracy = confidence in every bin.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import reliability
    >>> logits = np.log([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    >>> r = reliability(logits, np.array([0, 1, 0, 0]), n_bins=2)
    >>> r.counts, r.confidence.round(2), r.accuracy
    (array([0, 4]), array([ nan, 0.75]), array([ nan, 0.75]))
    """
    check_binning(n_bins, binning, "reliability")
    probs, correct, dtype, bits = labelled(OPERATIONS["reliability"], logits, labels,
                                            temperature)
    binned = _bin(probs, correct, n_bins, binning)
    return Reliability(binned[0], *(arguments.cast_result(v, dtype, bits) for v in binned[1:]))


def labelled(op, logits, labels, temperature):
    """(top-label probabilities, whether each row's label is the top one, result dtype,
    bits_only) from the confidence kernel."""
    return plan.run(op, arguments.prepare_labelled_confidence(op, logits, labels, temperature))


def _bin(probs, correct, n_bins, binning):
    """(counts, mean confidence, accuracy, edges) of the rows in each bin: float64."""
    n_bins = int(n_bins)
    if binning == "uniform" or probs.size == 0:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.quantile(probs, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    index = np.clip(np.searchsorted(edges, probs, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidences = np.bincount(index, probs, minlength=n_bins) / counts
        accuracies = np.bincount(index, correct, minlength=n_bins) / counts
    return counts, confidences, accuracies, edges
