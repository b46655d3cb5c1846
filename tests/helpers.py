"""Shared test helpers: the registry of functions under test, a generator of hard inputs and
the comparison with the reference."""

from __future__ import annotations

import numpy as np
import fastsoftmax
from fastsoftmax import reference

# One registry: each public function next to its reference (and whether it reduces the axis).
FUNCTIONS = {
    "softmax": (fastsoftmax.softmax, reference.softmax),
    "log_softmax": (fastsoftmax.log_softmax, reference.log_softmax),
    "logsumexp": (fastsoftmax.logsumexp, reference.logsumexp),
}
ELEMENTWISE = ["softmax", "log_softmax"]


def layouts(x: np.ndarray):
    """Yield (description, array) views of ``x`` with the same values in other layouts."""
    yield "C-contiguous", x
    yield "Fortran", np.asfortranarray(x)
    if x.ndim >= 2:
        padded = np.zeros(x.shape[:-1] + (x.shape[-1] + 3,), x.dtype)
        padded[..., 1:-2] = x
        yield "row-padded slice", padded[..., 1:-2]
        yield "transposed copy, transposed back", np.ascontiguousarray(x.swapaxes(0, -1)).swapaxes(0, -1)
    strided = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    strided[..., ::2] = x
    yield "every other column", strided[..., ::2]
    reversed_rows = np.ascontiguousarray(x[::-1])[::-1]
    yield "negative stride", reversed_rows
    swapped = x.astype(x.dtype.newbyteorder(">" if x.dtype.byteorder in "=<" else "<"))
    yield "byte-swapped", swapped
    readonly = x.copy()
    readonly.flags.writeable = False
    yield "read-only", readonly


def random_logits(rng, shape, dtype=np.float64, scale=5.0):
    """Random values of a realistic logit spread, in ``dtype``."""
    x = rng.standard_normal(shape) * scale
    if np.dtype(dtype).kind in "iu":
        return np.round(x).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return x > 0
    return x.astype(dtype)


def context(name, x, axis, **kwargs):
    """A failure message with the whole call: function, dtype, shape, strides, axis, options."""
    extra = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    x = np.asarray(x)
    return (f"{name} | dtype={x.dtype} | shape={x.shape} | strides={x.strides} | "
            f"axis={axis} {extra}")


def default_atol(name, x, result_dtype, temperature=1.0):
    """Absolute slack for results that cancel to near 0 or underflow.

    log_softmax and logsumexp subtract numbers as large as the inputs, so a result near 0
    carries an absolute error of a few ulp of max|x|; softmax flushes results below the
    smallest normal number to 0 where the reference keeps a subnormal.
    """
    finfo = np.finfo(result_dtype)
    if name == "softmax":
        return 2 * float(finfo.tiny)
    finite = np.asarray(x, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    scale = 1.0 + (float(np.abs(finite).max()) / temperature if finite.size else 0.0)
    return 8 * float(finfo.eps) * scale


def assert_matches_reference(name, x, axis=-1, rtol=None, atol=None, **kwargs):
    """Compare the library against the reference (fed the same input) within tolerance."""
    ours, ref = FUNCTIONS[name]
    got = ours(x, axis=axis, **kwargs)
    want = ref(x, axis=axis, **kwargs)
    got_arr, want_arr = np.asarray(got), np.asarray(want)
    msg = context(name, x, axis, **kwargs)
    assert got_arr.shape == want_arr.shape, msg
    assert got_arr.dtype == want_arr.dtype, msg
    if rtol is None:
        rtol = 1e-12 if got_arr.dtype == np.float64 else 2e-5 if got_arr.dtype == np.float32 else 2e-3
    if atol is None:
        atol = default_atol(name, x, got_arr.dtype, kwargs.get("temperature", 1.0))
    np.testing.assert_allclose(got_arr.astype(np.float64), want_arr.astype(np.float64),
                               rtol=rtol, atol=atol, err_msg=msg)
    return got
