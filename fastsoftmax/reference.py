"""Plain NumPy reference implementations: the oracle of the tests, the baseline of the
benchmarks.

Same signatures and semantics as the public functions, computed in float64 whatever the input,
written to be read rather than to be fast. No Numba here.

>>> import numpy as np
>>> from fastsoftmax import reference
>>> reference.softmax([2.0, 1.0, 0.1]).round(8)
array([0.65900114, 0.24243297, 0.09856589])
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
           "cross_entropy", "sampling_probs", "sample", "confidence", "fit_temperature",
           "calibration_error", "reliability", "result_dtype", "Confidence", "Reliability",
           "sparsemax", "entmax15", "entmax_bisect", "sparsemax_backward", "entmax_backward",
           "sparsemax_loss", "entmax15_loss", "entmax_bisect_loss", "linear_cross_entropy"]

# The result types of the calibration functions (fastsoftmax.calibration returns them too).
Confidence = namedtuple("Confidence", "label prob margin entropy logsumexp")
Reliability = namedtuple("Reliability", "counts confidence accuracy edges")
BINNINGS = ("uniform", "quantile")
NORMS = ("l1", "l2", "max")


def result_dtype(x_dtype, dtype=None) -> np.dtype:
    """The dtype a function returns for input ``x_dtype`` (the dtype policy: README, "dtypes")."""
    if dtype is not None:
        return np.dtype(dtype)
    x_dtype = np.dtype(x_dtype)
    if x_dtype.kind == "f" and x_dtype.itemsize in (2, 4, 8):
        return x_dtype.newbyteorder("=")
    if x_dtype.kind == "V" and x_dtype.name == "bfloat16":  # ml_dtypes.bfloat16
        return x_dtype
    if x_dtype.kind in "biu":
        return np.dtype(np.float64)
    raise TypeError(f"unsupported dtype {x_dtype}")


def _prepare(x, where, dtype, temperature):
    """Input as float64 (after the conversion ``dtype`` asks for), divided by temperature,
    and the mask of selected elements."""
    x = np.asarray(x)
    out_dtype = result_dtype(x.dtype, dtype)
    if dtype is not None:
        x = x.astype(dtype)
    z = x.astype(np.float64) / float(temperature)
    selected = np.ones(z.shape, bool) if where is None else np.broadcast_to(where, z.shape)
    return z, selected, out_dtype


def _max_and_sum(z, selected, axis):
    """Row max over the selected elements (-inf if none), and sum(exp(z - max))."""
    m = np.max(z, axis=axis, keepdims=True, where=selected, initial=-np.inf)
    e = np.exp(z - m, where=selected, out=np.zeros_like(z))  # 0 where not selected
    return m, e, np.sum(e, axis=axis, keepdims=True)


def _log_sum(z, selected, m, s, axis):
    """log(s), ``s = sum(exp(z - m))``, as SciPy's logsumexp takes it for a finite max ``m``:
    ``log(c) + log1p(rest / c)`` with ``c`` the count of elements equal to the max and
    ``rest`` the sum over the others, so that a result near 0 keeps its relative precision."""
    at_max = selected & (z == m)
    count = np.sum(at_max, axis=axis, keepdims=True)
    rest = np.sum(np.exp(z - m, where=selected & ~at_max, out=np.zeros_like(z)), axis=axis,
                  keepdims=True)
    return np.where(np.isfinite(m), np.log(count) + np.log1p(rest / count), np.log(s))


def _deliver(result, out, out_dtype):
    if out is None:
        return result.astype(out_dtype)
    out[...] = result
    return out


def softmax(x, axis=-1, *, temperature=1.0, where=None, out=None, dtype=None):
    """Reference softmax: ``exp(z - max) / sum(exp(z - max))`` with ``z = x / temperature``."""
    z, selected, out_dtype = _prepare(x, where, dtype, temperature)
    with np.errstate(invalid="ignore", divide="ignore"):
        m, e, s = _max_and_sum(z, selected, axis)
        result = np.where(selected, e / s, 0.0)
    return _deliver(result, out, out_dtype)


def log_softmax(x, axis=-1, *, temperature=1.0, where=None, out=None, dtype=None):
    """Reference log_softmax: ``z - max - log(sum(exp(z - max)))``, the log as in
    :func:`logsumexp`; -inf where not selected."""
    z, selected, out_dtype = _prepare(x, where, dtype, temperature)
    with np.errstate(invalid="ignore", divide="ignore"):
        m, e, s = _max_and_sum(z, selected, axis)
        result = np.where(selected, z - m - _log_sum(z, selected, m, s, axis), -np.inf)
    return _deliver(result, out, out_dtype)


def logsumexp(x, axis=-1, *, b=None, keepdims=False, return_sign=False, where=None, out=None,
              dtype=None):
    """Reference logsumexp: ``max + log(sum(exp(x - max)))``, SciPy's way (``log1p`` of the
    sum of the elements below the max, over their count); the max itself when it is not
    finite (-inf for an empty axis or selection, +inf with a +inf, NaN with a NaN). With
    weights ``b`` or ``return_sign``: :func:`_weighted_logsumexp`; complex ``x``:
    :func:`_complex_logsumexp`."""
    if np.iscomplexobj(x):
        return _complex_logsumexp(x, axis, keepdims, return_sign)
    if b is not None or return_sign:
        return _weighted_logsumexp(x, b, axis, keepdims, return_sign, where, out, dtype)
    z, selected, out_dtype = _prepare(x, where, dtype, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m, e, s = _max_and_sum(z, selected, axis)
        result = np.where(np.isfinite(m), m + _log_sum(z, selected, m, s, axis), m)
    return _reduced(result, axis, keepdims, out, out_dtype)


def _reduced(result, axis, keepdims, out, out_dtype):
    if not keepdims:
        result = np.squeeze(result, axis=axis)
    if out is None:
        result = result.astype(out_dtype)
        return result[()] if result.ndim == 0 else result
    return _deliver(result, out, out_dtype)


def _weighted_logsumexp(x, b, axis, keepdims, return_sign, where, out, dtype):
    """SciPy 1.17's logsumexp with weights ``b`` (None: 1) and ``return_sign``, float64: the
    terms at the maximum (over the elements of non-zero weight) apart, ``log1p`` of the rest
    over them; where that is not finite, ``log|sum(b * exp(x))|`` directly."""
    x = np.asarray(x)
    w = np.ones(()) if b is None else np.asarray(b)
    x, w = np.broadcast_arrays(x, w)
    dtype = dtype if dtype is not None or b is None else np.result_type(x, w)
    z, selected, out_dtype = _prepare(x, where, dtype, 1.0)
    w = w.astype(np.float64)
    keep = selected & (w != 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.max(z, axis=axis, keepdims=True, where=keep, initial=-np.inf)
        at_max = keep & (z == m)
        a = np.sum(np.where(at_max, w, 0.0), axis=axis, keepdims=True)
        rest = np.sum(np.where(keep & ~at_max, w * np.exp(z - m), 0.0), axis=axis,
                      keepdims=True)
        ratio = np.where(rest == 0, 0.0, rest / a)
        sign = np.sign(ratio + 1) * np.sign(a)
        ratio = np.where(ratio < -1, -ratio - 2, ratio)
        value = np.log1p(ratio) + np.log(np.abs(a)) + m
        direct = np.sum(np.where(selected, w * np.exp(z), 0.0), axis=axis, keepdims=True)
        finite = np.isfinite(value)
        value = np.where(finite, value, np.log(np.abs(direct)))
        sign = np.where(finite, sign, np.sign(direct))
    if not return_sign:
        return _reduced(np.where(sign < 0, np.nan, value), axis, keepdims, out, out_dtype)
    if z.size == 0:
        sign = np.full_like(sign, -1.0)  # SciPy: the sign of the -inf of an empty sum
    return (_reduced(value, axis, keepdims, out, out_dtype),
            _reduced(sign, axis, keepdims, None, out_dtype))


def _complex_logsumexp(x, axis, keepdims, return_sign):
    """``log(sum(exp(x)))`` of complex ``x``, in complex256 where the platform has it,
    shifted by the largest real part; where that is not finite, ``log(sum(exp(x)))``
    directly (C99's rules for infinities: SciPy's way). The imaginary part is wrapped into
    (-pi, pi]. With ``return_sign``: ``(log|sum|, sign(sum))`` (``sum / |sum|``), as SciPy."""
    z = np.asarray(x).astype(np.clongdouble)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        shift = np.max(z.real, axis=axis, keepdims=True, initial=-np.inf)
        shift = np.where(np.isfinite(shift), shift, 0)
        value = np.log(np.sum(np.exp(z - shift), axis=axis, keepdims=True)) + shift
        direct = np.sum(np.exp(z), axis=axis, keepdims=True)
        finite = np.isfinite(value)
        # the phase of the direct sum, as SciPy takes it: sum / |sum| (NaN for infinities), 0
        sign = np.where(finite, np.exp(1j * value.imag),
                        np.where(direct == 0, 0, direct / np.abs(direct)))
        value = np.where(finite, value, np.log(direct))
    wrapped = -((np.pi - value.imag) % (2 * np.pi) - np.pi)
    value = value.real + 1j * np.where(np.abs(value.imag) < np.pi, value.imag, wrapped)
    out_dtype = np.result_type(np.asarray(x).dtype, np.complex64)
    if not return_sign:
        return _reduced(value, axis, keepdims, None, out_dtype)
    return (_reduced(value.real, axis, keepdims, None, np.empty(0, out_dtype).real.dtype),
            _reduced(sign, axis, keepdims, None, out_dtype))


def softmax_backward(grad, y, axis=-1, *, out=None):
    """Reference gradient through softmax: ``y * (grad - sum(grad * y))``."""
    g = np.asarray(grad, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    result = y64 * (g - np.sum(g * y64, axis=axis, keepdims=True))
    return _deliver(result, out, result_dtype(np.result_type(np.asarray(grad), np.asarray(y))))


def log_softmax_backward(grad, logp, axis=-1, *, out=None):
    """Reference gradient through log_softmax: ``grad - exp(logp) * sum(grad)``."""
    g = np.asarray(grad, dtype=np.float64)
    lp = np.asarray(logp, dtype=np.float64)
    result = g - np.exp(lp) * np.sum(g, axis=axis, keepdims=True)
    return _deliver(result, out,
                    result_dtype(np.result_type(np.asarray(grad), np.asarray(logp))))


def cross_entropy(logits, targets, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  reduction="mean", temperature=1.0, z_loss=0.0, softcap=None,
                  return_lse=False, return_grad=False, grad_out=None):
    """Reference cross-entropy (PyTorch semantics) and its gradient, in float64.

    Rows of classes (the classes on axis 1 of N-D logits), ``y = softcap * tanh(logits /
    softcap)`` (``logits`` without a cap), ``z = y / temperature``, the target distribution
    ``q = (1 - eps) * onehot(t) + eps / C`` (or ``(1 - eps) * p + eps / C`` for probability
    targets ``p``), weights ``w`` (1 without): per row ``sum(w * q * (lse(z) - z))``, each
    ``lse(z) - z_c`` taken as ``(max(z) - z_c) + log(sum(exp(z - max(z))))`` (so that ``log``
    of the sum is not lost next to a large maximum), plus ``z_loss * lse(z)**2``. "mean"
    divides the losses by the sum of ``w[t]`` over the counted rows (by the rows for
    probability targets), the z-loss by the counted rows. Gradient
    ``(scale * (sum(w * q) * softmax(z) - w * q) + 2 * z_loss * scale_z * lse * softmax(z))
    / temperature * (1 - tanh(logits / softcap)**2)``.
    """
    x = np.asarray(logits)
    one_row = x.ndim == 1
    n_classes = x.shape[0] if one_row else x.shape[1]
    rows = _class_rows(x.astype(np.float64), one_row)
    soft = np.shape(targets) == x.shape and np.asarray(targets).dtype.kind not in "iub"
    eps = float(label_smoothing)
    w = np.ones(n_classes) if weight is None else np.asarray(weight).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y = rows if softcap is None else softcap * np.tanh(rows / softcap)
        z = y / float(temperature)
        m = z.max(axis=-1)
        log_s = np.log(np.exp(z - m[:, None]).sum(axis=-1))
        lse = np.where(np.isfinite(m), m + log_s, m)
        gap = (m[:, None] - z) + log_s[:, None]  # lse - z, from the max
        if soft:
            p = _class_rows(np.asarray(targets).astype(np.float64), one_row)
            q = (1 - eps) * p + eps / n_classes
            kept = np.ones(len(z), bool)
            per_row = np.sum(w * q * gap, axis=-1)
            denominator = float(len(z))
        else:
            t = np.asarray(targets).astype(np.int64).reshape(-1)
            kept = t != ignore_index
            safe_t = np.where(kept, t, 0)
            q = np.full(z.shape, eps / n_classes)
            q[np.arange(len(z)), safe_t] += 1 - eps
            per_row = (1 - eps) * w[safe_t] * gap[np.arange(len(z)), safe_t]
            if eps:
                per_row = per_row + eps / n_classes * np.sum(w * gap, axis=-1)
            denominator = float(w[safe_t][kept].sum())
        count = int(kept.sum())
        z_rows = np.where(kept, z_loss * lse**2, 0.0) if z_loss else np.zeros(len(z))
        per_row = np.where(kept, per_row, 0.0)
        if reduction == "mean":
            scale = 1.0 / denominator if denominator else np.inf  # NaN, as PyTorch
            scale_z = 1.0 / count if count else 0.0
            total = per_row.sum() / denominator + z_rows.sum() / count if count else np.nan
        else:
            scale = scale_z = 1.0
            total = per_row + z_rows if reduction == "none" else (per_row + z_rows).sum()
        probs = np.exp(z - lse[:, None])
        dz = scale * (np.sum(w * q, axis=-1, keepdims=True) * probs - w * q) \
            + (2 * z_loss * scale_z) * lse[:, None] * probs
        grad = dz / float(temperature)
        if softcap is not None:
            grad = grad * (1 - np.tanh(rows / softcap) ** 2)
        grad = np.where(kept[:, None], grad, 0.0)
    out_dtype = result_dtype(x.dtype)
    row_shape = () if one_row else x.shape[:1] + x.shape[2:]
    if reduction == "none":
        loss = total.astype(out_dtype).reshape(row_shape)[()]
    else:
        loss = out_dtype.type(total)
    results = (loss,)
    if return_lse:
        results += (lse.astype(out_dtype).reshape(row_shape)[()],)
    if return_grad or grad_out is not None:
        grad = _class_rows_back(grad, x.shape, one_row)
        if grad_out is not None:
            grad_out[...] = grad
            results += (grad_out,)
        else:
            results += (grad.astype(out_dtype),)
    return results[0] if len(results) == 1 else results


def linear_cross_entropy(hidden, weight, targets, *, bias=None, ignore_index=-100,
                         label_smoothing=0.0, reduction="mean", z_loss=0.0, softcap=None,
                         chunk_size=None, return_grad=False):
    """Reference linear cross-entropy: :func:`cross_entropy` of the float64 logits ``hidden @
    weight.T + bias``, all at once (``chunk_size`` changes nothing here), and the gradients
    ``(g @ weight, g.T @ hidden, g.sum(axis=0))`` of its gradient ``g``."""
    h = np.asarray(hidden).astype(np.float64)
    w = np.asarray(weight).astype(np.float64)
    logits = h @ w.T
    if bias is not None:
        logits = logits + np.asarray(bias).astype(np.float64)
    result = cross_entropy(logits, targets, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction,
                           z_loss=z_loss, softcap=softcap, return_grad=return_grad)
    loss = result[0] if return_grad else result
    loss_dtype = result_dtype(np.asarray(hidden).dtype)
    loss = loss.astype(loss_dtype) if reduction == "none" else loss_dtype.type(loss)
    if not return_grad:
        return loss
    g = result[1]
    grads = (g @ w, g.T @ h, None if bias is None else g.sum(axis=0))
    inputs = (hidden, weight, bias)
    return loss, tuple(None if d is None else d.astype(result_dtype(np.asarray(a).dtype))
                       for d, a in zip(grads, inputs))


def _class_rows(a, one_row):
    """Rows of classes of logits-shaped ``a``: (1, C), (N, C), or (N * d1 * ..., C) with the
    classes of N-D arrays moved from axis 1 to the end."""
    if one_row:
        return a.reshape(1, -1)
    if a.ndim == 2:
        return a
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _class_rows_back(rows, shape, one_row):
    """Inverse of :func:`_class_rows`: rows back to the logits' ``shape``."""
    if one_row or len(shape) == 2:
        return rows.reshape(shape)
    moved = rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],))
    return np.moveaxis(moved, -1, 1)


def _loss_rows(logits, targets, ignore_index):
    """Logits as float64 rows, the targets, which rows count, and targets safe to index."""
    z = np.atleast_2d(np.asarray(logits).astype(np.float64))
    t = np.atleast_1d(np.asarray(targets)).astype(np.int64)
    kept = t != ignore_index
    return z, t, kept, np.where(kept, t, 0)


def _reduced_loss(logits, per_row, grad, kept, reduction, return_grad, grad_out):
    """The loss of rows ``per_row`` (0 for ignored rows) reduced, and with ``return_grad`` or
    ``grad_out`` the gradient ``grad`` of the per-row losses scaled as the reduction asks."""
    x = np.asarray(logits)
    out_dtype = result_dtype(x.dtype)
    per_row = np.where(kept, per_row, 0.0)
    count = int(kept.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        if reduction == "none":
            loss = per_row.astype(out_dtype)
            loss = loss[0] if x.ndim == 1 else loss
            scale = 1.0
        elif reduction == "sum":
            loss, scale = out_dtype.type(per_row.sum()), 1.0
        else:
            loss = out_dtype.type(per_row.sum() / count if count else np.nan)
            scale = 1.0 / count if count else 0.0
    if not (return_grad or grad_out is not None):
        return loss
    grad = np.where(kept[:, None], grad * scale, 0.0).reshape(x.shape)
    if grad_out is not None:
        grad_out[...] = grad
        return loss, grad_out
    return loss, grad.astype(out_dtype)


def _rows_of(a, axis):
    """``a`` as a 2-D array of rows along ``axis`` (None: one row), and the shape of the rows."""
    a = np.asarray(a)
    if axis is None:
        return a.reshape(1, -1), ()
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(-1, moved.shape[-1]), moved.shape[:-1]


def _filtered_rows(z, selected, top_k, top_p, min_p):
    """Filtered, renormalised probabilities of rows ``z`` (float64, already divided by the
    temperature), by sorting: min_p, then top_k, then top_p, each keeping its ties."""
    z = np.where(selected, z, -np.inf)
    # A row holding +inf: the limit of logits going to +inf together, the +inf tokens tied
    # at the top and every other one at probability 0 (so the filters keep exactly them).
    inf_rows = np.isposinf(z).any(axis=-1, keepdims=True)
    z = np.where(inf_rows, np.where(np.isposinf(z), 0.0, -np.inf), z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))  # 1 at the max; 0 where not selected
    keep = p > 0
    if min_p:
        keep &= p >= min_p
    if top_k is not None:
        # the k-th largest kept value; every token at or above it stays (HF: scores < kth out)
        ranked = -np.sort(-np.where(keep, p, -1.0), axis=-1)
        kth = ranked[:, min(top_k, z.shape[-1]) - 1:min(top_k, z.shape[-1])]
        keep &= p >= np.where(kth > 0, kth, 0.0)
    p = np.where(keep, p, 0.0)
    if top_p is not None and top_p < 1:
        # HF: a token stays if the mass strictly above it (in descending order) is < top_p;
        # the threshold is the last such token's probability, and its ties stay too.
        order = np.argsort(-p, axis=-1, kind="stable")
        ranked = np.take_along_axis(p, order, axis=-1)
        ranked = ranked / ranked.sum(axis=-1, keepdims=True)
        above = np.cumsum(ranked, axis=-1) - ranked
        last = np.sum(above < top_p, axis=-1) - 1
        threshold = np.take_along_axis(np.take_along_axis(p, order, axis=-1),
                                       last[:, None], axis=-1)
        p = np.where(p >= threshold, p, 0.0)
    return p / p.sum(axis=-1, keepdims=True)


def sampling_probs(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, where=None,
                   axis=-1):
    """The distribution :func:`fastsoftmax.sample` draws from: ``softmax(logits /
    temperature)`` after min_p, top_k and top_p (in that order, ties at a threshold kept),
    renormalised, with the logits' shape; temperature 0 gives a one-hot at the first maximum.
    Rows that cannot be sampled (a NaN, nothing selected or all -inf) are ValueError."""
    x = np.asarray(logits)
    selected = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    rows, _ = _rows_of(x.astype(np.float64), axis)
    sel, _ = _rows_of(selected, axis)
    bad = np.isnan(np.where(sel, rows, 0.0)).any(axis=-1) | ~(np.where(sel, rows, -np.inf)
                                                             > -np.inf).any(axis=-1)
    if bad.any():
        raise ValueError(f"sample: rows {np.flatnonzero(bad).tolist()} cannot be sampled")
    if temperature == 0:
        first = np.argmax(np.where(sel, rows, -np.inf), axis=-1)
        probs = np.zeros(rows.shape)
        probs[np.arange(len(rows)), first] = 1.0
    else:
        probs = _filtered_rows(rows / float(temperature), sel, top_k, top_p, min_p)
    if axis is None:
        return probs.reshape(x.shape)
    moved = np.moveaxis(x, axis, -1).shape
    return np.moveaxis(probs.reshape(moved), -1, axis)


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, where=None,
           seed=None, axis=-1):
    """Reference sampling: the inverse CDF, in index order, of :func:`sampling_probs` at one
    uniform number per row (``Generator.random``, rows in order), the same draws as
    :func:`fastsoftmax.sample` makes for the same ``seed``."""
    probs = sampling_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                           min_p=min_p, where=where, axis=axis)
    rows, row_shape = _rows_of(probs, axis)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    u = rng.random(len(rows))
    cdf = np.cumsum(rows, axis=-1)
    chosen = np.array([np.searchsorted(c, ui * c[-1], side="right") for c, ui in zip(cdf, u)],
                      dtype=np.int64)
    # rounding can leave u * total past the last step: the last token with probability > 0
    last = rows.shape[-1] - 1 - np.argmax(rows[:, ::-1] > 0, axis=-1)
    chosen = np.minimum(chosen, last).reshape(row_shape)
    return chosen[()] if chosen.ndim == 0 else chosen


# --- calibration --------------------------------------------------------------------------------

def confidence(logits, axis=-1, *, temperature=1.0, where=None):
    """Reference per-row confidence statistics, from the full float64 softmax: label (first
    argmax; -1 where the softmax is NaN), its probability, the margin to the second largest
    probability, the entropy ``-sum(p log p)`` and the logsumexp of ``logits / temperature``
    (the statistics NaN where the softmax is NaN)."""
    x = np.asarray(logits)
    z, selected, out_dtype = _prepare(x, where, None, temperature)
    z = np.where(selected, z, -np.inf)
    moved = z.reshape(1, -1) if axis is None else np.moveaxis(z, axis, -1)
    row_shape = () if axis is None else moved.shape[:-1]
    n_rows, n_cols = int(np.prod(row_shape)), moved.shape[-1]
    z_rows = moved.reshape(n_rows, n_cols)
    lse = np.asarray(logsumexp(z_rows, axis=-1), np.float64).reshape(n_rows)
    label = np.full(n_rows, -1, np.int64)
    stats = np.full((3, n_rows), np.nan)
    if n_cols:
        with np.errstate(invalid="ignore", divide="ignore"):
            p = softmax(z_rows, axis=-1)
            defined = ~np.isnan(p).any(axis=-1)
            ranked = -np.sort(-p, axis=-1)
            second = ranked[:, 1] if n_cols > 1 else np.zeros(n_rows)
            entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), -1)
        label = np.where(defined, np.argmax(z_rows, axis=-1), -1)
        stats = np.where(defined, np.stack([ranked[:, 0], ranked[:, 0] - second, entropy]),
                         np.nan)
    values = [label.reshape(row_shape)] + [v.astype(out_dtype).reshape(row_shape)
                                           for v in (*stats, lse)]
    return Confidence(*(v[()] if v.ndim == 0 else v for v in values))


def _labelled_rows(logits, labels, temperature):
    """(top-label probability, label correct) per row, float64, and the result dtype."""
    x = np.asarray(logits)
    z = np.atleast_2d(x.astype(np.float64)) / float(temperature)
    p = softmax(z, axis=-1)
    if np.isnan(p).any():
        raise ValueError("rows whose softmax is NaN have no confidence")
    correct = np.argmax(z, axis=-1) == np.atleast_1d(labels)
    return p.max(axis=-1), correct, result_dtype(x.dtype)


def _bins(conf, correct, n_bins, binning):
    """Per bin (i holds (edges[i], edges[i + 1]], bin 0 also 0): counts, mean confidence,
    accuracy, edges; a direct loop over the bins."""
    if binning == "uniform" or conf.size == 0:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    counts = np.zeros(n_bins, np.int64)
    mean_conf = np.full(n_bins, np.nan)
    accuracy = np.full(n_bins, np.nan)
    for i in range(n_bins):
        inside = (conf > edges[i]) & (conf <= edges[i + 1])
        if i == 0:
            inside |= conf <= edges[0]
        if i == n_bins - 1:
            inside |= conf > edges[-1]
        counts[i] = inside.sum()
        if counts[i]:
            mean_conf[i] = conf[inside].mean()
            accuracy[i] = correct[inside].mean()
    return counts, mean_conf, accuracy, edges


def calibration_error(logits, labels, *, n_bins=15, binning="uniform", norm="l1",
                      temperature=1.0):
    """Reference calibration error of the top-label confidence: the bins' gaps
    |accuracy - confidence| weighted by their share of rows (l1), the root of the weighted
    squares (l2), or the largest gap (max)."""
    conf, correct, out_dtype = _labelled_rows(logits, labels, temperature)
    counts, mean_conf, accuracy, _ = _bins(conf, correct, n_bins, binning)
    filled = counts > 0
    gaps, weights = np.abs(accuracy - mean_conf)[filled], counts[filled] / max(conf.size, 1)
    if not gaps.size:
        value = np.nan
    else:
        value = {"l1": lambda: np.sum(weights * gaps),
                 "l2": lambda: np.sqrt(np.sum(weights * gaps ** 2)),
                 "max": lambda: gaps.max()}[norm]()
    return out_dtype.type(value)


def reliability(logits, labels, *, n_bins=15, binning="uniform", temperature=1.0):
    """Reference reliability diagram: per bin, counts, mean confidence, accuracy, and the
    edges."""
    conf, correct, out_dtype = _labelled_rows(logits, labels, temperature)
    counts, mean_conf, accuracy, edges = _bins(conf, correct, n_bins, binning)
    return Reliability(counts, *(v.astype(out_dtype) for v in (mean_conf, accuracy, edges)))


def fit_temperature(logits, labels, *, ignore_index=-100, bounds=(0.05, 20.0), tol=1e-6):
    """Reference temperature scaling: the T in ``bounds`` minimising the mean NLL of
    ``softmax(logits / T)``, by bisection on the sign of the NLL's derivative in log(1/T)
    (the NLL is convex in 1/T), to far below ``tol``."""
    x = np.atleast_2d(np.asarray(logits).astype(np.float64))
    t = np.atleast_1d(np.asarray(labels)).astype(np.int64)
    kept = t != ignore_index
    x, t = x[kept], t[kept]
    picked = x[np.arange(len(t)), t]

    def slope(u):  # d NLL / du at u = 1/T: E[x] - x[label], averaged
        z = u * x
        p = np.exp(z - z.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return np.mean(np.sum(np.where(p > 0, p * x, 0.0), axis=-1) - picked)

    low, high = float(bounds[0]), float(bounds[1])
    lo, hi = np.log(1.0 / high), np.log(1.0 / low)
    if slope(np.exp(hi)) <= 0:
        return low
    if slope(np.exp(lo)) >= 0:
        return high
    while hi - lo > 1e-14:
        mid = 0.5 * (lo + hi)
        if slope(np.exp(mid)) > 0:
            hi = mid
        else:
            lo = mid
    return float(1.0 / np.exp(0.5 * (lo + hi)))
# --- the sparse family: sparsemax and α-entmax ---------------------------------------------------

def _entmax_row(v, alpha, n_iter):
    """α-entmax of one row of selected values ``v`` (float64): exact by sorting for
    ``n_iter`` None (α = 2 or 1.5), else the entmax package's bisection with ``n_iter``
    halvings and a renormalisation; softmax for α = 1. NaN if the max is not finite."""
    if v.size == 0:
        return v
    m = v.max()
    if not np.isfinite(m) or np.isnan(v).any():
        return np.full(v.shape, np.nan)
    if alpha == 1:
        e = np.exp(v - m)
        return e / e.sum()
    z = (alpha - 1) * (v - m)  # the max at 0, tau in [-1, 0)
    power = 1 / (alpha - 1)
    if n_iter is None:
        ranked = np.sort(z[z > -np.inf])[::-1]  # -inf elements: 0, and out of the sums
        k = np.arange(1, ranked.size + 1)
        mean = np.cumsum(ranked) / k
        if alpha == 2:
            tau = mean - 1 / k
        else:  # the smaller root of sum((ranked[:k] - tau) ** 2) = 1
            squares = np.cumsum(ranked ** 2) / k - mean ** 2
            tau = mean - np.sqrt(np.maximum((1 - k * squares) / k, 0))
        support = np.count_nonzero(tau <= ranked)
        return np.maximum(z - tau[support - 1], 0) ** power
    lo, step = -1.0, -(1 / z.size) ** (alpha - 1) + 1
    for _ in range(n_iter):
        step /= 2
        tau = lo + step
        p = np.maximum(z - tau, 0) ** power
        if p.sum() >= 1:
            lo = tau
    return p / p.sum()


def _row_alphas(alpha, shape, axis):
    """α of each row (the rows of an array of ``shape`` along ``axis``, None: one row), flat."""
    a = np.asarray(alpha, dtype=np.float64)
    row_shape = () if axis is None else tuple(n for i, n in enumerate(shape)
                                              if i != axis % len(shape))
    if axis is not None and a.ndim == len(shape) and a.shape[axis] == 1:
        a = np.squeeze(a, axis)
    return np.broadcast_to(a.reshape(()) if axis is None else a, row_shape).reshape(-1)


def _entmax(x, alpha, n_iter, axis, where, out, dtype):
    z, selected, out_dtype = _prepare(x, where, dtype, 1.0)
    if z.size == 0:
        return _deliver(np.zeros(z.shape), out, out_dtype)
    rows, _ = _rows_of(z, axis)
    chosen, _ = _rows_of(selected, axis)
    alphas = _row_alphas(alpha, z.shape, axis)
    probs = np.zeros(rows.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        for r, (row, sel, a) in enumerate(zip(rows, chosen, alphas)):
            probs[r, sel] = _entmax_row(row[sel], a, n_iter)
    if axis is None:
        result = probs.reshape(z.shape)
    else:
        result = np.moveaxis(probs.reshape(np.moveaxis(z, axis, -1).shape), -1, axis)
    return _deliver(result, out, out_dtype)


def sparsemax(x, axis=-1, *, where=None, out=None, dtype=None):
    """Reference sparsemax (Martins & Astudillo 2016): the Euclidean projection of ``x`` onto
    the probability simplex, ``max(0, x - tau)``, tau found by sorting."""
    return _entmax(x, 2.0, None, axis, where, out, dtype)


def entmax15(x, axis=-1, *, where=None, out=None, dtype=None):
    """Reference 1.5-entmax (Peters, Niculae & Martins 2019): ``max(0, x / 2 - tau) ** 2``,
    tau exact by sorting."""
    return _entmax(x, 1.5, None, axis, where, out, dtype)


def entmax_bisect(x, alpha=1.5, axis=-1, *, n_iter=50, where=None, out=None, dtype=None):
    """Reference α-entmax by bisection, as the entmax package: ``max(0, (alpha - 1) * x -
    tau) ** (1 / (alpha - 1))`` after ``n_iter`` halvings, renormalised; softmax for α = 1."""
    return _entmax(x, alpha, n_iter, axis, where, out, dtype)


def entmax_backward(grad, y, alpha=1.5, axis=-1, *, out=None):
    """Reference gradient through α-entmax: ``w * (grad - sum(grad * w) / sum(w))`` with
    ``w = y ** (2 - alpha)`` on the support of ``y`` (0 off it, and for an empty support)."""
    g = np.asarray(grad, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    a = _row_alphas(alpha, y64.shape, axis).reshape(_rows_of(y64, axis)[1])
    if axis is not None:
        a = np.expand_dims(a, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(y64 > 0, np.abs(y64) ** (2 - a), 0.0)
        w = np.where(np.isnan(y64), np.nan, w)
        total = np.sum(w, axis=axis, keepdims=True)
        mean = np.where(total > 0, np.sum(g * w, axis=axis, keepdims=True) / total, 0.0)
        result = w * (g - mean)
    return _deliver(result, out, result_dtype(np.result_type(np.asarray(grad), np.asarray(y))))


def sparsemax_backward(grad, y, axis=-1, *, out=None):
    """Reference gradient through sparsemax: ``grad`` minus its mean over the support of
    ``y``, 0 off the support."""
    return entmax_backward(grad, y, 2.0, axis, out=out)


def _entmax_loss(logits, targets, alpha, n_iter, ignore_index, reduction, return_grad,
                 grad_out):
    """The Fenchel-Young loss of α-entmax, ``(1 - sum(p ** alpha)) / (alpha (alpha - 1)) +
    p . z - z[t]`` with ``p = entmax(z)`` (cross-entropy for α = 1), gradient ``p -
    onehot(t)``, in float64 (``z`` shifted by its max: ``p . z - z[t]`` loses nothing)."""
    z, t, kept, safe_t = _loss_rows(logits, targets, ignore_index)
    alphas = _row_alphas(alpha, z.shape, -1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        shifted = z - z.max(axis=-1, keepdims=True)
        p = _entmax(z, alphas, n_iter, -1, None, None, None)
        picked = shifted[np.arange(len(z)), safe_t]
        entropy = np.where(alphas == 1, -np.sum(np.where(p > 0, p * np.log(p), 0), axis=-1),
                           (1 - np.sum(p ** alphas[:, None], axis=-1))
                           / (alphas * (alphas - 1)))
        per_row = entropy + np.sum(p * np.where(p > 0, shifted, 0), axis=-1) - picked
        grad = p.copy()
        grad[np.arange(len(z)), safe_t] -= 1
    return _reduced_loss(logits, per_row, grad, kept, reduction, return_grad, grad_out)


def sparsemax_loss(logits, targets, *, ignore_index=-100, reduction="mean", return_grad=False,
                   grad_out=None):
    """Reference sparsemax loss (Fenchel-Young, α = 2) and its gradient ``p - onehot``."""
    return _entmax_loss(logits, targets, 2.0, None, ignore_index, reduction, return_grad,
                        grad_out)


def entmax15_loss(logits, targets, *, ignore_index=-100, reduction="mean", return_grad=False,
                  grad_out=None):
    """Reference 1.5-entmax loss (Fenchel-Young) and its gradient ``p - onehot``."""
    return _entmax_loss(logits, targets, 1.5, None, ignore_index, reduction, return_grad,
                        grad_out)


def entmax_bisect_loss(logits, targets, alpha=1.5, *, n_iter=50, ignore_index=-100,
                       reduction="mean", return_grad=False, grad_out=None):
    """Reference α-entmax loss by bisection (Fenchel-Young; cross-entropy for α = 1) and its
    gradient ``p - onehot``."""
    return _entmax_loss(logits, targets, alpha, n_iter, ignore_index, reduction, return_grad,
                        grad_out)
