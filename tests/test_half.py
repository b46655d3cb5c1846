"""float16 and bfloat16: the in-kernel conversions bit by bit, and every function against the
float64 reference within one unit in the last place of the result's format."""

from __future__ import annotations

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import plan
from fastsoftmax.kernels import halfbits
from fastsoftmax.registry import BUILDS

from .cases import ELEMENTWISE, FUNCTIONS
from .inputs import EDGE_ROWS as TABLE, random_logits

try:
    import ml_dtypes
except ImportError:  # the bf16 extra is absent: bfloat16 cases are skipped
    ml_dtypes = None

needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes not installed")
FLOAT16 = pytest.param(np.dtype(np.float16), id="float16")
BFLOAT16 = pytest.param(np.dtype(ml_dtypes.bfloat16) if ml_dtypes else None, id="bfloat16",
                        marks=needs_ml_dtypes)
HALF_DTYPES = [FLOAT16, BFLOAT16]

ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
inf, nan = np.inf, np.nan


def bits_dtype(dtype):
    return halfbits.FLOAT16_BITS if dtype == np.float16 else halfbits.BFLOAT16_BITS


def widen(x_half):
    """float32 values of a half-precision array, through the library's kernel."""
    dst = np.empty(x_half.size, np.float32)
    halfbits.widen(np.ascontiguousarray(x_half).reshape(-1).view(bits_dtype(x_half.dtype)), dst)
    return dst.reshape(x_half.shape)


def narrow(values, dtype):
    """``values`` (float32) rounded to ``dtype``, through the library's kernel."""
    bits = np.empty(values.size, bits_dtype(dtype))
    with np.errstate(all="ignore"):  # pure-Python mode computes discarded lanes too
        halfbits.narrow(np.ascontiguousarray(values, np.float32).reshape(-1), bits)
    return bits.view(dtype).reshape(values.shape)


def same_bits_or_both_nan(got, want):
    """Bitwise equal, except that NaNs need only be NaN with the same sign."""
    got_f, want_f = got.astype(np.float32), want.astype(np.float32)
    nan_ = np.isnan(want_f)
    np.testing.assert_array_equal(np.isnan(got_f), nan_)
    np.testing.assert_array_equal(np.signbit(got_f[nan_]), np.signbit(want_f[nan_]))
    np.testing.assert_array_equal(got.view(np.uint16)[~nan_], want.view(np.uint16)[~nan_])


# --- the conversions ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_widening_is_exact_for_all_65536_bit_patterns(dtype):
    got = widen(ALL_BITS.view(dtype))
    want = ALL_BITS.view(dtype).astype(np.float32)  # NumPy / ml_dtypes
    # every bit of the float32, NaN payloads and signs included
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_narrowing_round_trips_all_65536_bit_patterns(dtype):
    values = ALL_BITS.view(dtype)
    same_bits_or_both_nan(narrow(values.astype(np.float32), dtype), values)


def _rounding_cases(dtype):
    """float32 values where rounding to ``dtype`` is decided: every representable value, its
    float32 neighbours, the midpoints between consecutive values and their neighbours, and
    the extremes."""
    with np.errstate(invalid="ignore"):  # signalling NaNs
        values = ALL_BITS.view(dtype).astype(np.float64)
    values = np.unique(values[np.isfinite(values)])
    mids = (values[1:] + values[:-1]) / 2  # exact in float64, and in float32 for both types
    beyond = values[-1] + (values[-1] - values[-2]) / 2  # the overflow threshold
    points = np.concatenate([values, mids, [beyond, -beyond]]).astype(np.float32)
    up, down = np.float32(inf), np.float32(-inf)
    return np.concatenate([points, np.nextafter(points, up), np.nextafter(points, down),
                           np.array([inf, -inf, nan, -nan, 3.4e38, -3.4e38, 1e-45, -1e-45],
                                    np.float32)])


@pytest.mark.large
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_narrowing_rounds_to_nearest_even_like_numpy(dtype):
    cases = _rounding_cases(dtype)
    random_bits = np.random.default_rng(7).integers(0, 1 << 32, 1_000_000, dtype=np.uint64)
    cases = np.concatenate([cases, random_bits.astype(np.uint32).view(np.float32)])
    with np.errstate(all="ignore"):
        want = cases.astype(dtype)
    same_bits_or_both_nan(narrow(cases, dtype), want)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_narrowing_subnormals_ties_and_overflow(dtype):
    finfo = ml_dtypes.finfo(dtype) if ml_dtypes and dtype.name == "bfloat16" else np.finfo(dtype)
    tiny = float(finfo.smallest_subnormal)
    top = float(finfo.max)
    cases = np.array([tiny, tiny / 2, tiny * 1.5, tiny * 2.5, tiny / 2 * 1.0001, -tiny / 2,
                      top, -top, 1.0, 1.0 + float(finfo.eps) / 2, 1.0 + float(finfo.eps) * 1.5,
                      np.float32(top) * np.float32(1.001), 0.0, -0.0], np.float32)
    with np.errstate(all="ignore"):
        same_bits_or_both_nan(narrow(cases, dtype), cases.astype(dtype))


# --- the functions ---------------------------------------------------------------------------

def ulp_of(values, dtype):
    """The spacing of ``dtype`` at each of ``values`` (float64) rounded to ``dtype``."""
    with np.errstate(all="ignore"):
        rounded = np.abs(values).astype(dtype)
    bits = rounded.view(np.uint16)
    above = np.minimum(bits + 1, 0x7F7F if dtype.name == "bfloat16" else 0x7BFF)
    return (above.astype(np.uint16).view(dtype).astype(np.float64)
            - np.minimum(bits, above - 1).astype(np.uint16).view(dtype).astype(np.float64))


def assert_within_one_ulp(name, got, x, dtype, **kwargs):
    """``got`` within one ulp of ``dtype`` of the float64 reference (plus the float32
    cancellation slack of log_softmax/logsumexp near 0, and float32 underflow)."""
    ref = FUNCTIONS[name][1]
    want = np.asarray(ref(np.asarray(x).astype(np.float64), **kwargs), np.float64)
    got = np.asarray(got)
    assert got.dtype == dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    got64 = got.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got64), np.isnan(want), err_msg=name)
    with np.errstate(over="ignore"):  # results beyond the format's range round to inf
        rounded = want.astype(dtype).astype(np.float64)
    finite = np.isfinite(rounded)
    special = ~finite & ~np.isnan(want)
    np.testing.assert_array_equal(got64[special], rounded[special], err_msg=name)
    values = np.asarray(x, np.float64)
    scale = 1.0 + np.max(np.abs(values[np.isfinite(values)]), initial=0.0)
    slack = 2 * float(np.finfo(np.float32).tiny) if name == "softmax" else 8e-7 * scale
    error = np.abs(got64[finite] - want[finite])
    allowed = ulp_of(want[finite], dtype) + slack
    worst = np.argmax(error - allowed) if error.size else None
    assert error.size == 0 or error[worst] <= allowed[worst], (
        f"{name} {dtype}: error {error[worst]} > one ulp {allowed[worst]} at "
        f"{want[finite][worst]}")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 1000), (2, 3, 129), (64, 33)])
def test_against_reference_within_one_ulp(func_name, dtype, shape):
    x = random_logits(np.random.default_rng(sum(shape)), shape, np.float32).astype(dtype)
    assert_within_one_ulp(func_name, FUNCTIONS[func_name][0](x), x, dtype)


@pytest.mark.large
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("shape", [(2, 300_000), (1, 300_000), (128, 4096)])
def test_large_rows_within_one_ulp(func_name, dtype, shape):
    # (1, 300000) splits the row across threads; (2, 300000) runs one row per thread
    x = random_logits(np.random.default_rng(1), shape, np.float32, scale=8.0).astype(dtype)
    assert_within_one_ulp(func_name, FUNCTIONS[func_name][0](x), x, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case", list(TABLE))
def test_edge_table(func_name, dtype, case):
    row = TABLE[case][0]
    x = np.array([[0.0] * len(row), row, [1.0] * len(row)], np.float64).astype(dtype)
    assert_within_one_ulp(func_name, FUNCTIONS[func_name][0](x), x, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_extreme_values_do_not_overflow(func_name, dtype):
    finfo = np.finfo(np.float16) if dtype == np.float16 else ml_dtypes.finfo(dtype)
    top = float(finfo.max)
    x = np.array([[top, top, -top, 0.0], [-top, -top, -top, -top],
                  [float(finfo.smallest_subnormal), 0.0, -0.0, 1.0]]).astype(dtype)
    assert_within_one_ulp(func_name, FUNCTIONS[func_name][0](x), x, dtype)


# The half-precision kernels run the float32 arithmetic on the widened values and round once:
# their results are bit for bit the float32 results rounded to the input's format.

def assert_float32_result_rounded(name, x, **options):
    ours = FUNCTIONS[name][0]
    got = np.asarray(ours(x, **options))
    with np.errstate(all="ignore"):
        want = np.asarray(ours(x.astype(np.float32), **options)).astype(x.dtype)
    same_bits_or_both_nan(got, want)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("options", [
    {}, {"axis": 0}, {"axis": None}, {"where": np.arange(40) % 3 != 0},
])
def test_equals_float32_result_rounded(func_name, dtype, options):
    x = random_logits(np.random.default_rng(2), (6, 40), np.float32).astype(dtype)
    assert_float32_result_rounded(func_name, x, **options)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_with_a_temperature_equals_float32_result_rounded(name, dtype):
    x = random_logits(np.random.default_rng(2), (6, 40), np.float32).astype(dtype)
    assert_float32_result_rounded(name, x, temperature=0.7)


@pytest.mark.large
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("build", BUILDS)
def test_every_build_equals_float32_result_rounded(func_name, dtype, build):
    x = random_logits(np.random.default_rng(3), (3, 70_000), np.float32).astype(dtype)
    with plan.force_build(build):
        assert_float32_result_rounded(func_name, x)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_layouts(func_name, dtype):
    x = random_logits(np.random.default_rng(4), (5, 30), np.float32).astype(dtype)
    want = np.asarray(FUNCTIONS[func_name][0](x))
    padded = np.zeros((5, 64), dtype)
    padded[:, 3:33] = x
    reversed_rows = np.ascontiguousarray(x[::-1])[::-1]
    readonly = x.copy()
    readonly.flags.writeable = False
    views = [padded[:, 3:33], reversed_rows, readonly, np.asfortranarray(x),
             np.repeat(x, 2, axis=1)[:, ::2]]
    if dtype == np.float16:
        views.append(x.astype(">f2"))
    for view in views:
        same_bits_or_both_nan(np.asarray(FUNCTIONS[func_name][0](view)), want)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_out_in_place_and_dtype_float32(dtype):
    x = random_logits(np.random.default_rng(5), (4, 50), np.float32).astype(dtype)
    want = fastsoftmax.softmax(x)
    out = np.empty_like(x)
    assert fastsoftmax.softmax(x, out=out) is out
    same_bits_or_both_nan(out, want)
    y = x.copy()
    assert fastsoftmax.softmax(y, out=y) is y
    same_bits_or_both_nan(y, want)
    wide = fastsoftmax.softmax(x, dtype=np.float32)
    assert wide.dtype == np.float32
    np.testing.assert_array_equal(wide, fastsoftmax.softmax(x.astype(np.float32)))
    lse = np.empty(4, dtype)
    assert fastsoftmax.logsumexp(x, out=lse) is lse
    same_bits_or_both_nan(lse, fastsoftmax.logsumexp(x))
    f64 = fastsoftmax.log_softmax(x, dtype=np.float64)
    np.testing.assert_allclose(f64, fastsoftmax.reference.log_softmax(x.astype(np.float64)),
                               rtol=1e-12, atol=1e-12)
    x_before = x.copy()
    fastsoftmax.log_softmax(x)
    same_bits_or_both_nan(x, x_before)  # not mutated


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_empty_and_scalar_results(dtype):
    assert fastsoftmax.softmax(np.zeros((0, 4), dtype)).shape == (0, 4)
    assert fastsoftmax.log_softmax(np.zeros((3, 0), dtype)).dtype == dtype
    lse = fastsoftmax.logsumexp(np.zeros((2, 0), dtype))
    assert lse.dtype == dtype and np.all(lse.astype(np.float32) == -inf)
    scalar = fastsoftmax.logsumexp(np.zeros(4, dtype))
    assert np.asarray(scalar).shape == () and float(scalar) == pytest.approx(np.log(4), rel=1e-2)


def test_bfloat16_is_recognised_without_importing_it_by_name():
    # normalize.py tells bfloat16 by the dtype's name: any other 2-byte void type is refused
    with pytest.raises(TypeError, match="x must be an array of real numbers"):
        fastsoftmax.softmax(np.zeros(3, "V2"))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_gradients_and_cross_entropy_take_half_precision(dtype):
    # computed in float32 after widening, returned in the input's format
    rng = np.random.default_rng(6)
    logits = random_logits(rng, (8, 30), np.float32).astype(dtype)
    grad = random_logits(rng, (8, 30), np.float32, scale=1.0).astype(dtype)
    y = fastsoftmax.softmax(logits)
    wide = {a: b.astype(np.float32) for a, b in (("g", grad), ("y", y), ("x", logits))}
    cases = [
        (fastsoftmax.softmax_backward(grad, y),
         fastsoftmax.softmax_backward(wide["g"], wide["y"])),
        (fastsoftmax.log_softmax_backward(grad, fastsoftmax.log_softmax(logits)),
         fastsoftmax.log_softmax_backward(
             wide["g"], fastsoftmax.log_softmax(logits).astype(np.float32))),
    ]
    targets = rng.integers(0, 30, 8)
    loss, g = fastsoftmax.cross_entropy(logits, targets, return_grad=True)
    loss32, g32 = fastsoftmax.cross_entropy(wide["x"], targets, return_grad=True)
    cases += [(np.asarray(loss), np.asarray(loss32)), (g, g32)]
    for got, want in cases:
        assert got.dtype == dtype
        same_bits_or_both_nan(got, want.astype(dtype))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_sample_takes_half_precision(dtype):
    logits = random_logits(np.random.default_rng(8), (50, 40), np.float32).astype(dtype)
    for options in ({"top_p": 0.8, "temperature": 0.7}, {"temperature": 0}):
        np.testing.assert_array_equal(
            fastsoftmax.sample(logits, seed=3, **options),
            fastsoftmax.sample(logits.astype(np.float32), seed=3, **options))
