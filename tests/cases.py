"""The test registry: for every operation of :mod:`fastsoftmax.registry`, the variants of its
calls the tests run, the inputs it takes, and how its results compare with its reference.

Test files take operations from here, so a new operation is tested on every build, dtype and
threshold size as soon as it has an entry (tests/test_registry.py checks that each has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


from fastsoftmax.registry import OPERATIONS

from .inputs import hard_logits, mask_for, random_logits

IN_PLACE = "in place"  # a variant: the result written over the input (``out=x``/``grad_out=x``)
WHERE = "where"        # a variant: a random ``where`` mask


@dataclass(frozen=True)
class Case:
    """How the tests exercise one operation."""

    variants: tuple          # keyword arguments added to the operation's example calls
    specials: bool = True    # inputs hold special values (+inf, NaN, rows of -inf, ...)
    sampleable: bool = False  # every row can be sampled (no NaN, a finite or +inf maximum)
    # relative tolerance against the reference by the input's itemsize, where the result's
    # dtype does not tell (a float fitted from float32 logits); None: :func:`tolerance`
    rtol: dict | None = None


CASES = {
    "softmax": Case(({}, {WHERE: True}, {"temperature": 0.7}, {IN_PLACE: "out"})),
    "log_softmax": Case(({}, {WHERE: True}, {"temperature": 2.5}, {IN_PLACE: "out"})),
    "logsumexp": Case(({}, {WHERE: True})),
    # Special values in a gradient or a loss only make NaN of everything: tests/test_gradients
    # checks their edge cases one by one.
    "softmax_backward": Case(({},), specials=False),
    "log_softmax_backward": Case(({},), specials=False),
    "cross_entropy": Case(({}, {"temperature": 0.7}, {IN_PLACE: "grad_out"}), specials=False),
    "sample": Case(({}, {WHERE: True}), sampleable=True),
    "confidence": Case(({}, {WHERE: True}, {"temperature": 0.7})),
    # A fitted temperature stops on a Newton step below tol = 1e-6 of T, which leaves an error
    # far below it (quadratic convergence) in float64; sums of float32 exponentials move the
    # minimum itself by about 1e-7. Rows of NaN or +inf have no likelihood or confidence:
    # tests/test_calibration.py checks those errors.
    "fit_temperature": Case(({},), specials=False, rtol={8: 1e-9, 4: 1e-5, 2: 1e-5}),
    "calibration_error": Case(({}, {"temperature": 0.7}), specials=False),
    "reliability": Case(({}, {"temperature": 2.0}), specials=False),
    "sparsemax": Case(({}, {WHERE: True}, {IN_PLACE: "out"})),
    "entmax15": Case(({}, {WHERE: True}, {IN_PLACE: "out"})),
    "entmax_bisect": Case(({}, {WHERE: True}, {"alpha": 2.5}, {IN_PLACE: "out"})),
    "sparsemax_backward": Case(({},), specials=False),
    "entmax_backward": Case(({}, {"alpha": 1.25}), specials=False),
    "sparsemax_loss": Case(({}, {IN_PLACE: "grad_out"}), specials=False),
    "entmax15_loss": Case(({}, {IN_PLACE: "grad_out"}), specials=False),
    "entmax_bisect_loss": Case(({}, {"alpha": 1.75}, {IN_PLACE: "grad_out"}), specials=False),
    # the teacher is the student's row rotated (registry._teacher); tests/test_distill.py
    # checks the special values one by one
    "kl_div": Case(({}, {WHERE: True}, {"temperature": 0.7, "reverse": True},
                    {"reduction": "none"}, {IN_PLACE: "grad_out"}), specials=False),
    "jsd": Case(({}, {WHERE: True}, {"beta": 0.8, "temperature": 0.7}, {"reduction": "mean"},
                 {IN_PLACE: "grad_out"}), specials=False),
    # x stands for hidden states (the registry makes the weight); tests/test_linear_loss.py
    # checks the options against torch autograd
    "linear_cross_entropy": Case(({}, {"reduction": "none"}), specials=False),
}


def logits_for(op, rng, shape, dtype):
    """An input batch suited to ``op``: hard values where it takes them."""
    case = CASES[op.name]
    if case.specials:
        return hard_logits(rng, shape, dtype, sampleable=case.sampleable)
    return random_logits(rng, shape, dtype, scale=3.0)


def calls(op, x, rng):
    """Yield ``(description, make)`` for every call of ``op`` on ``x`` and variant; ``make()``
    gives fresh ``(args, kwargs)`` (a call in place overwrites its input)."""
    case = CASES[op.name]
    for index, call in enumerate(op.calls):
        for variant in case.variants:
            if IN_PLACE in variant and variant[IN_PLACE] == "grad_out" and \
                    not call(x)[1].get("return_grad"):
                continue  # only the call computing a gradient writes one
            if variant and index and IN_PLACE not in variant:
                continue  # the options go with the first call; other calls run plain
            description = f"call {index} " + (", ".join(variant) or "plain")
            mask = mask_for(rng, x.shape, keep_every_row=case.sampleable) \
                if WHERE in variant else None
            yield description, _maker(call, x, variant, mask)


def _maker(call, x, variant, mask):
    options = {k: v for k, v in variant.items() if k not in (IN_PLACE, WHERE)}

    def make():
        data = x.copy() if IN_PLACE in variant else x
        args, kwargs = call(data)
        kwargs = dict(kwargs, **options)
        if mask is not None:
            kwargs["where"] = mask
        if IN_PLACE in variant:
            kwargs[variant[IN_PLACE]] = args[0]
        return args, kwargs

    return make


# --- comparisons -------------------------------------------------------------------------------

def tolerance(dtype) -> float:
    """Relative tolerance against the float64 reference: a few units in the last place of
    the result's format (half precision: one rounding of the float32 result, and the
    reference's own rounding)."""
    return {8: 1e-12, 4: 2e-5}.get(np.dtype(dtype).itemsize,
                                   2e-3 if np.dtype(dtype).kind == "f" else 1.6e-2)


def assert_same_bits(got, want, message=""):
    """Bitwise equal results (NaN payloads aside), for arrays, scalars or tuples of them."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), message
        for g, w in zip(got, want):
            assert_same_bits(g, w, message)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, message
    if want.dtype.kind in "fV":
        g, w = got.astype(np.float64), want.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=message)
        keep = ~np.isnan(w)
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}")[keep],
                                      want.view(f"u{want.itemsize}")[keep], err_msg=message)
    else:
        np.testing.assert_array_equal(got, want, err_msg=message)


def assert_matches_reference(op, got, want, x, message="", temperature=1.0, rtol=None,
                             atol=None):
    """``got`` against the reference's ``want``: within :func:`tolerance` relatively, and
    absolutely within 8 units in the last place of the row's magnitude (log_softmax,
    logsumexp, gradients and losses subtract numbers as large as the inputs, so a result near
    0 carries a few ulp of them), or 2 x the smallest normal for softmax (which flushes
    subnormal results to 0)."""
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            assert_matches_reference(op, g, w, x, message, temperature, rtol, atol)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, message
    assert got.dtype == want.dtype, message
    if want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want, err_msg=message)
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    finfo = np.finfo(np.float32 if want.dtype.kind == "V" else want.dtype)
    if atol is not None:
        pass
    elif op.name == "softmax":
        atol = 2 * float(finfo.tiny)
    else:
        eps = float(finfo.eps) if want.dtype.kind != "V" else 2.0**-7
        atol = 8 * eps * row_magnitude(x, w, temperature)
    assert_within(g, w, tolerance(want.dtype) if rtol is None else rtol, atol, message)


def assert_within(got, want, rtol, atol, message=""):
    """|got - want| <= atol + rtol * |want| elementwise (``atol`` may be an array), NaN where
    NaN and infinities equal; the report names the worst element."""
    got, want, atol = np.broadcast_arrays(np.asarray(got, np.float64),
                                          np.asarray(want, np.float64), np.asarray(atol))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=message)
    special = ~np.isfinite(want)
    np.testing.assert_array_equal(got[special & ~np.isnan(want)],
                                  want[special & ~np.isnan(want)], err_msg=message)
    with np.errstate(invalid="ignore"):
        excess = np.abs(got - want) - (atol + rtol * np.abs(want))
    excess = np.where(special, -1.0, excess)
    if excess.size and excess.max() > 0:
        i = np.unravel_index(int(np.argmax(excess)), excess.shape)
        raise AssertionError(f"{message}: {int((excess > 0).sum())} of {excess.size} elements "
                             f"off; worst at {i}: got {got[i]!r}, want {want[i]!r} "
                             f"(rtol {rtol}, atol {atol[i]!r})")


def row_magnitude(x, want, temperature=1.0):
    """1 + the largest finite |value| of each row of ``x`` / temperature and of ``want``,
    shaped to broadcast against ``want`` (rows along the last axis; the whole of ``x`` for a
    result that is not one value a row)."""
    values = np.asarray(x, dtype=np.float64)
    if values.ndim == 0 or want.ndim == 0:
        values, want = values.reshape(1, -1), want.reshape(1, -1)
    rows = np.where(np.isfinite(values), np.abs(values), 0).max(axis=-1, initial=0.0)
    if want.ndim == values.ndim:
        rows = rows[..., None]
        out = np.where(np.isfinite(want), np.abs(want), 0).max(axis=-1, keepdims=True,
                                                                  initial=0.0)
        if rows.shape[:-1] != out.shape[:-1]:  # other rows (a weight's gradient): the
            rows = rows.max(initial=0.0)       # magnitude of the whole input
    else:
        out = np.where(np.isfinite(want), np.abs(want), 0)
        if rows.shape != out.shape[-rows.ndim:]:  # not one result a row (reliability's bins):
            rows = rows.max(initial=0.0)          # the magnitude of the whole input
    return 1.0 + np.maximum(rows / temperature, out)


# --- the softmax family: softmax, log_softmax, logsumexp -----------------------------------------
# (the operations that take x, axis, where, out and dtype, and split rows: the split_finish
# entries of the registry)

FUNCTIONS = {name: (op.public(), op.reference) for name, op in OPERATIONS.items()
             if op.split_finish is not None}
ELEMENTWISE = [name for name in FUNCTIONS if not OPERATIONS[name].reduces]


def context(name, x, axis, **kwargs):
    """A failure message with the whole call: function, dtype, shape, strides, axis, options."""
    extra = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    x = np.asarray(x)
    return (f"{name} | dtype={x.dtype} | shape={x.shape} | strides={x.strides} | "
            f"axis={axis} {extra}")


def check_against_reference(name, x, axis=-1, rtol=None, atol=None, **kwargs):
    """Call ``name`` of the softmax family and its reference on ``x`` and compare (the
    tolerances of :func:`assert_matches_reference` unless given); return the result."""
    ours, ref = FUNCTIONS[name]
    got = np.asarray(ours(x, axis=axis, **kwargs))
    want = np.asarray(ref(x, axis=axis, **kwargs))
    message = context(name, x, axis, **kwargs)
    assert got.shape == want.shape and got.dtype == want.dtype, message
    # rows along the last axis, as the comparison scales its slack row by row
    reduced = want.ndim < np.ndim(x)
    if axis is None:
        x_rows, got_rows, want_rows = np.reshape(x, (1, -1)), got, want
        if not reduced:
            got_rows, want_rows = got.reshape(1, -1), want.reshape(1, -1)
    else:
        x_rows = np.moveaxis(np.asarray(x), axis, -1)
        got_rows, want_rows = (got, want) if reduced else (np.moveaxis(got, axis, -1),
                                                           np.moveaxis(want, axis, -1))
    assert_matches_reference(OPERATIONS[name], got_rows, want_rows, x_rows, message,
                             kwargs.get("temperature", 1.0), rtol, atol)
    return got
