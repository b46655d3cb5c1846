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
           "sparsemax_loss", "entmax15_loss", "entmax_bisect_loss", "kl_div", "jsd", "Sampled",
           "linear_cross_entropy"]

# The result types of the calibration functions (fastsoftmax.calibration returns them too).
Confidence = namedtuple("Confidence", "label prob margin entropy logsumexp")
Reliability = namedtuple("Reliability", "counts confidence accuracy edges")
# The result of sampling with return_logprobs (fastsoftmax.sample returns it too).
Sampled = namedtuple("Sampled", "tokens logprobs top_tokens top_logprobs")
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


def _row_values(value, default, n_rows):
    """A sampling parameter (None: ``default``; a number; one value per row) as n_rows floats."""
    value = default if value is None else value
    return np.broadcast_to(np.asarray(value, np.float64), (n_rows,)) if np.ndim(value) == 0 \
        else np.asarray(value, np.float64).reshape(n_rows)


def _bias_table(logit_bias, x_shape, axis, n_rows, n_cols):
    """The biases as a dense float64 array of rows."""
    table = np.zeros((n_rows, n_cols))
    if logit_bias is None:
        return table
    if isinstance(logit_bias, dict) or (isinstance(logit_bias, (list, tuple)) and any(
            isinstance(item, dict) or item is None for item in logit_bias)):
        rows = [logit_bias] * n_rows if isinstance(logit_bias, dict) else logit_bias
        for r, row in enumerate(rows):
            for token, bias in (row or {}).items():
                table[r, token] = bias
        return table
    full = np.broadcast_to(np.asarray(logit_bias).astype(np.float64), x_shape)
    return _rows_of(full, axis)[0].reshape(n_rows, n_cols)


def _history_counts(previous_tokens, n_rows, n_cols):
    """How many times each token appears in each row's history (-1 pads)."""
    counts = np.zeros((n_rows, n_cols))
    if previous_tokens is None:
        return counts
    if isinstance(previous_tokens, (list, tuple)) and all(
            isinstance(t, (int, np.integer)) for t in previous_tokens):
        previous_tokens = [previous_tokens]  # one row's history
    histories = previous_tokens if isinstance(previous_tokens, (list, tuple)) else \
        np.asarray(previous_tokens).reshape(n_rows, -1)
    for r, history in enumerate(histories):
        history = np.asarray(history, np.int64).reshape(-1)
        np.add.at(counts[r], history[history != -1], 1.0)
    return counts


def _edited(rows, counts, bias, repetition, presence, frequency):
    """The logits after the bias, then the penalties of the tokens seen (vLLM's order):
    repetition (a positive logit divided, another multiplied), frequency times the count and
    presence subtracted."""
    with np.errstate(invalid="ignore"):
        v = np.where(bias == -np.inf, -np.inf, rows + bias)  # -inf bans, even +inf or NaN
    seen = counts > 0
    rep = repetition[:, None]
    with np.errstate(invalid="ignore"):
        penalised = np.where(v > 0, v / rep, v * rep)
        penalised = penalised - frequency[:, None] * counts - presence[:, None]
    return np.where(seen, penalised, v)


def _typical(p, typical_p):
    """Hugging Face's TypicalLogitsWarper on the kept probabilities ``p`` (0 elsewhere):
    whether each token stays."""
    kept = p > 0
    q = np.where(kept, p / p.sum(), 0.0)
    log_q = np.log(np.where(kept, q, 1.0))
    entropy = -np.sum(np.where(kept, q * log_q, 0.0))
    distance = np.where(kept, np.abs(-log_q - entropy), np.inf)
    order = np.argsort(distance, kind="stable")
    cumulative = np.cumsum(q[order])
    last = min(int(np.sum(cumulative < typical_p)), int(kept.sum()) - 1)
    return kept & (distance <= distance[order][last])


def _row_probs(v, temperature, min_p, top_k, top_p, typical_p, top_n_sigma):
    """The distribution one row (logits ``v`` after bias and penalties, -inf where not
    selected) is drawn from, by sorting: temperature, then top-n-sigma, min-p, top-k, top-p,
    typical-p, each keeping its ties."""
    if np.isposinf(v).any():
        # the limit of logits going to +inf together: the +inf tokens share the draw
        return np.isposinf(v) / np.isposinf(v).sum()
    if temperature == 0:
        probs = np.zeros(v.shape)
        probs[np.argmax(v)] = 1.0
        return probs
    z = v / temperature
    p = np.exp(z - z.max())  # 1 at the max; 0 where not selected
    keep = p > 0
    if np.isfinite(top_n_sigma):
        finite = v[v > -np.inf]
        keep &= v >= v.max() - top_n_sigma * np.std(finite)
    if min_p:
        keep &= p >= min_p
    if top_k:
        # the k-th largest kept value; every token at or above it stays (HF: scores < kth out)
        ranked = -np.sort(-np.where(keep, p, -1.0))
        kth = ranked[min(int(top_k), v.size) - 1]
        keep &= p >= max(kth, 0.0)
    p = np.where(keep, p, 0.0)
    if top_p < 1:
        # HF: a token stays if the mass strictly above it (in descending order) is < top_p;
        # the threshold is the last such token's probability, and its ties stay too.
        ranked = np.sort(p)[::-1]
        ranked = ranked / ranked.sum()
        above = np.cumsum(ranked) - ranked
        threshold = np.sort(p)[::-1][np.sum(above < top_p) - 1]
        p = np.where(p >= threshold, p, 0.0)
    if typical_p < 1:
        p = np.where(_typical(p, typical_p), p, 0.0)
    return p / p.sum()


def _sampling_rows(logits, temperature, top_k, top_p, min_p, typical_p, top_n_sigma,
                   repetition_penalty, presence_penalty, frequency_penalty, previous_tokens,
                   logit_bias, where, axis):
    """(probabilities, raw logits with -inf where not selected), as rows, and the row shape."""
    x = np.asarray(logits)
    selected = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    rows, row_shape = _rows_of(x.astype(np.float64), axis)
    sel, _ = _rows_of(selected, axis)
    n_rows, n_cols = rows.shape
    values = lambda v, default: _row_values(v, default, n_rows)  # noqa: E731
    v = _edited(rows, _history_counts(previous_tokens, n_rows, n_cols),
                _bias_table(logit_bias, x.shape, axis, n_rows, n_cols),
                values(repetition_penalty, 1.0), values(presence_penalty, 0.0),
                values(frequency_penalty, 0.0))
    v = np.where(sel, v, -np.inf)
    bad = np.isnan(v).any(axis=-1) | ~(v > -np.inf).any(axis=-1)
    if bad.any():
        raise ValueError(f"sample: rows {np.flatnonzero(bad).tolist()} cannot be sampled")
    parameters = zip(values(temperature, 1.0), values(min_p, 0.0), values(top_k, 0),
                     values(top_p, 1.0), values(typical_p, 1.0), values(top_n_sigma, np.inf))
    probs = np.array([_row_probs(row, *p) for row, p in zip(v, parameters)]).reshape(
        rows.shape)
    return probs, np.where(sel, rows, -np.inf), row_shape


def _shaped(rows, x, axis):
    """Rows back to the layout of ``x`` (the vocabulary along ``axis``)."""
    if axis is None:
        return rows.reshape(x.shape)
    moved = np.moveaxis(x, axis, -1).shape
    return np.moveaxis(rows.reshape(moved), -1, axis)


def sampling_probs(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
                   typical_p=None, top_n_sigma=None, repetition_penalty=1.0,
                   presence_penalty=0.0, frequency_penalty=0.0, previous_tokens=None,
                   logit_bias=None, where=None, axis=-1):
    """The distribution :func:`fastsoftmax.sample` draws from, with the logits' shape:
    ``softmax`` of the logits after the bias and penalties, divided by the temperature, after
    top_n_sigma, min_p, top_k, top_p and typical_p (in that order, ties at a threshold kept),
    renormalised; every parameter a number or one value per row; temperature 0 gives a
    one-hot at the first maximum. Rows that cannot be sampled (a NaN, nothing selected or
    all -inf) are ValueError."""
    probs, _, _ = _sampling_rows(logits, temperature, top_k, top_p, min_p, typical_p,
                                 top_n_sigma, repetition_penalty, presence_penalty,
                                 frequency_penalty, previous_tokens, logit_bias, where, axis)
    return _shaped(probs, np.asarray(logits), axis)


def _splitmix_uniform(seed: int) -> float:
    """SplitMix64's output for counter ``seed`` (Python integers, modulo 2**64), its top 53
    bits over 2**53."""
    mask = 2**64 - 1
    z = (seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return (z >> 11) / 2.0**53


def _uniforms(seed, row_shape):
    """One uniform number per row: from one stream (an int, None, a Generator), rows in
    order, or SplitMix64 of ``seed[r]`` for one int per row."""
    n_rows = int(np.prod(row_shape))
    if isinstance(seed, np.random.Generator):
        return seed.random(n_rows)
    if np.ndim(seed) == 0:
        return np.random.default_rng(seed).random(n_rows)
    return np.array([_splitmix_uniform(int(s)) for s in np.ravel(seed)])


def _log_softmax_rows(z):
    """log_softmax of rows (-inf where not selected); a row holding +inf is the limit:
    -log(count) at its +inf tokens."""
    inf_rows = np.isposinf(z).any(axis=-1, keepdims=True)
    count = np.isposinf(z).sum(axis=-1, keepdims=True)
    finite = np.where(inf_rows, 0.0, z)
    m = finite.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        lp = finite - m - np.log(np.sum(np.exp(finite - m), axis=-1, keepdims=True))
        return np.where(inf_rows, np.where(np.isposinf(z), -np.log(np.maximum(count, 1)),
                                           -np.inf), lp)


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, typical_p=None,
           top_n_sigma=None, repetition_penalty=1.0, presence_penalty=0.0,
           frequency_penalty=0.0, previous_tokens=None, logit_bias=None, where=None, seed=None,
           axis=-1, return_logprobs=False, top_logprobs=0, logprobs_mode="raw"):
    """Reference sampling: the inverse CDF, in index order, of :func:`sampling_probs` at one
    uniform number per row (the rule of :func:`fastsoftmax.sample`), the same draws as it
    makes for the same ``seed``. With ``return_logprobs``: :class:`Sampled`, the
    log-probabilities of ``log_softmax`` of the logits (raw) or the log of
    :func:`sampling_probs` (processed), the top ones by a stable sort."""
    probs, raw, row_shape = _sampling_rows(
        logits, temperature, top_k, top_p, min_p, typical_p, top_n_sigma, repetition_penalty,
        presence_penalty, frequency_penalty, previous_tokens, logit_bias, where, axis)
    u = _uniforms(seed, row_shape)
    cdf = np.cumsum(probs, axis=-1)
    chosen = np.array([np.searchsorted(c, ui * c[-1], side="right") for c, ui in zip(cdf, u)],
                      dtype=np.int64)
    # rounding can leave u * total past the last step: the last token with probability > 0
    last = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    chosen = np.minimum(chosen, last)
    tokens = chosen.reshape(row_shape)
    tokens = tokens[()] if tokens.ndim == 0 else tokens
    if not return_logprobs:
        return tokens
    dtype = np.dtype(np.float32) if np.asarray(logits).dtype.itemsize <= 4 and \
        np.asarray(logits).dtype.kind in "fV" else np.dtype(np.float64)
    with np.errstate(divide="ignore"):
        lp = _log_softmax_rows(raw) if logprobs_mode == "raw" else np.log(probs)
    top = np.argsort(-lp, axis=-1, kind="stable")[:, :top_logprobs]
    picked = lp[np.arange(len(lp)), chosen].astype(dtype).reshape(row_shape)
    return Sampled(tokens, picked[()] if picked.ndim == 0 else picked,
                   top.reshape(row_shape + (top_logprobs,)),
                   np.take_along_axis(lp, top, axis=-1).astype(dtype).reshape(
                       row_shape + (top_logprobs,)))


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


def _distillation_rows(student_logits, teacher_logits, temperature, where):
    """The teacher's and the student's log-probabilities (float64 rows, -inf where not
    selected), the student's probabilities, and the temperature as a float."""
    T = float(temperature)
    s = np.atleast_2d(np.asarray(student_logits).astype(np.float64))
    t = np.atleast_2d(np.asarray(teacher_logits).astype(np.float64))
    mask = None if where is None else np.broadcast_to(
        np.asarray(where), np.shape(student_logits)).reshape(s.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_p = log_softmax(t, temperature=T, where=mask)
        log_q = log_softmax(s, temperature=T, where=mask)
    return log_p, log_q, np.exp(log_q), T


def _weighted(weight, log_ratio):
    """weight * log_ratio, 0 where the weight is 0 (a log ratio of -inf weighs nothing)."""
    return np.where(weight != 0, weight * log_ratio, 0.0)


def _reduced_divergence(student_logits, per_row, dx, q, T, reduction, return_grad, grad_out):
    """T**2 * the divergences of rows ``per_row`` reduced, and with ``return_grad`` or
    ``grad_out`` the gradient T * (dx - q * sum(dx)) scaled as the reduction says."""
    x = np.asarray(student_logits)
    out_dtype = result_dtype(x.dtype)
    per_row = T**2 * per_row
    n_rows, n_cols = q.shape
    divisor = {"batchmean": n_rows, "mean": n_rows * n_cols}.get(reduction, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if reduction == "none":
            loss = per_row.astype(out_dtype)
            loss = loss[0] if x.ndim == 1 else loss
        else:
            loss = out_dtype.type(per_row.sum() / divisor if divisor else np.nan)
        if not (return_grad or grad_out is not None):
            return loss
        total = np.sum(dx, axis=-1, keepdims=True)
        grad = T * (dx - q * total) * (1.0 / divisor if divisor else 0.0)
    grad = grad.reshape(x.shape)
    if grad_out is not None:
        grad_out[...] = grad
        return loss, grad_out
    return loss, grad.astype(out_dtype)


def kl_div(student_logits, teacher_logits, *, temperature=1.0, reverse=False, where=None,
           reduction="batchmean", return_grad=False, grad_out=None):
    """Reference distillation loss ``T**2 * KL(p || q)``, ``p = softmax(teacher / T)``,
    ``q = softmax(student / T)`` (``reverse``: ``KL(q || p)``), and its gradient with respect
    to the student's logits, ``T * (q - p)`` (reversed: ``T * q * (log q - log p - KL)``), in
    float64. A term whose weight (p, or q reversed) is 0 is 0."""
    log_p, log_q, q, T = _distillation_rows(student_logits, teacher_logits, temperature, where)
    with np.errstate(invalid="ignore", divide="ignore"):
        if reverse:
            dx = _weighted(q, log_q - log_p)
            per_row = dx.sum(axis=-1)
        else:
            p = np.exp(log_p)
            per_row = _weighted(p, log_p - log_q).sum(axis=-1)
            dx = -p
    return _reduced_divergence(student_logits, per_row, dx, q, T, reduction, return_grad,
                               grad_out)


def jsd(student_logits, teacher_logits, *, beta=0.5, temperature=1.0, where=None,
        reduction="batchmean", return_grad=False, grad_out=None):
    """Reference generalised Jensen-Shannon divergence ``T**2 * (beta * KL(p || m) + (1 -
    beta) * KL(q || m))``, ``m = beta * p + (1 - beta) * q``, and its gradient with respect to
    the student's logits, in float64; beta 0 and 1 are :func:`kl_div` forward and reversed."""
    if beta in (0, 1):
        return kl_div(student_logits, teacher_logits, temperature=temperature,
                      reverse=beta == 1, where=where, reduction=reduction,
                      return_grad=return_grad, grad_out=grad_out)
    log_p, log_q, q, T = _distillation_rows(student_logits, teacher_logits, temperature, where)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_m = np.logaddexp(log_p + np.log(beta), log_q + np.log1p(-beta))
        dx = (1 - beta) * _weighted(q, log_q - log_m)
        per_row = (beta * _weighted(np.exp(log_p), log_p - log_m) + dx).sum(axis=-1)
    return _reduced_divergence(student_logits, per_row, dx, q, T, reduction, return_grad,
                               grad_out)
