"""The edge-case table of the README ("Values at the edges"), value by value, for each function."""

from __future__ import annotations

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax.kernels import numerics
from fastsoftmax.kernels import sampling as sampling_kernels
from .cases import FUNCTIONS
from .inputs import EDGE_ROWS as TABLE, inf, nan

@pytest.mark.parametrize("case", list(TABLE))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edge_table(case, dtype):
    row, want_softmax, want_log_softmax, want_lse = TABLE[case]
    # The row alone, and in a batch between ordinary rows, so one row's specials stay in it.
    ordinary = [0.0] * len(row)
    batch = np.array([ordinary, row, ordinary], dtype=dtype)
    for name, want in (("softmax", want_softmax), ("log_softmax", want_log_softmax),
                       ("logsumexp", want_lse)):
        ours, ref = FUNCTIONS[name]
        for x, index in ((np.array(row, dtype=dtype), ()), (batch, 1)):
            got = np.asarray(ours(x))[index]
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{name} {case} {dtype}")
            np.testing.assert_allclose(got, np.asarray(ref(x))[index], rtol=1e-6,
                                       err_msg=f"{name} {case} {dtype} vs reference")
        others = np.asarray(ours(batch))[[0, 2]]
        assert np.all(np.isfinite(others)), f"{name} {case}: specials leaked into other rows"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_axis(dtype):
    x = np.zeros((3, 0), dtype)
    assert fastsoftmax.softmax(x).shape == (3, 0)
    assert fastsoftmax.log_softmax(x).shape == (3, 0)
    np.testing.assert_array_equal(fastsoftmax.logsumexp(x), [-inf, -inf, -inf])
    assert fastsoftmax.logsumexp(np.zeros(0, dtype)) == -inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_rows(dtype):
    x = np.zeros((0, 4), dtype)
    for name, (ours, _) in FUNCTIONS.items():
        got = ours(x)
        assert got.shape == ((0,) if name == "logsumexp" else (0, 4))
        assert got.dtype == dtype


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e30), (np.float64, 1e300)])
def test_huge_values_do_not_overflow(dtype, big):
    x = np.array([[big, big, -big], [-big, -big, -big], [big, 0.0, -big]], dtype)
    np.testing.assert_allclose(fastsoftmax.softmax(x), [[0.5, 0.5, 0], [1 / 3] * 3, [1, 0, 0]],
                               rtol=1e-6)
    lse = fastsoftmax.logsumexp(x)
    np.testing.assert_allclose(lse, [big, -big, big], rtol=1e-6)
    ls = fastsoftmax.log_softmax(x)
    np.testing.assert_allclose(ls[0, :2], [-np.log(2)] * 2, rtol=1e-6)
    assert np.all(np.isfinite(ls[:2, :2]))


def test_where_nothing_selected():
    x = np.array([[1.0, 2.0, 3.0]])
    nothing = np.zeros_like(x, dtype=bool)
    np.testing.assert_array_equal(fastsoftmax.softmax(x, where=nothing), [[0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(fastsoftmax.log_softmax(x, where=nothing), [[-inf] * 3])
    np.testing.assert_array_equal(fastsoftmax.logsumexp(x, where=nothing), [-inf])


def test_where_left_out_values_do_not_matter():
    x = np.array([[1.0, nan, 3.0, inf]])
    where = np.array([True, False, True, False])
    want = fastsoftmax.softmax(np.array([[1.0, 3.0]]))[0]
    np.testing.assert_allclose(fastsoftmax.softmax(x, where=where)[0], [want[0], 0, want[1], 0])
    np.testing.assert_allclose(fastsoftmax.logsumexp(x, where=where), np.log(np.e + np.e**3))


def test_where_selecting_only_neg_inf_gives_nan():
    x = np.array([[-inf, 0.0]])
    where = np.array([True, False])
    np.testing.assert_array_equal(fastsoftmax.softmax(x, where=where), [[nan, 0.0]])
    np.testing.assert_array_equal(fastsoftmax.log_softmax(x, where=where), [[nan, -inf]])
    np.testing.assert_array_equal(fastsoftmax.logsumexp(x, where=where), [-inf])


def test_subnormal_inputs_are_ordinary_values():
    x = np.array([np.finfo(np.float32).smallest_subnormal, 0.0, -1e-40], np.float32)
    np.testing.assert_allclose(fastsoftmax.softmax(x), [1 / 3] * 3, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [numerics.MAX_QUARTERS_MIN - 1, numerics.MAX_QUARTERS_MIN,
                               numerics.MAX_QUARTERS_MIN + 3, 40003])
def test_the_max_of_every_quarter_counts(dtype, n):
    # long rows take their maximum as four maxima, one per quarter, and the rest after them
    # (kernels/numerics.py): a special value anywhere, in any of them, must decide the row
    rng = np.random.default_rng(n)
    quarter = n // 4
    for where in (0, quarter - 1, quarter, 2 * quarter + 1, 3 * quarter, n - 1):
        for value in (np.nan, np.inf, 1e30, -0.0):
            row = rng.standard_normal(n).astype(dtype) - 10
            row[where] = value
            got = numerics.row_max(row, None)
            want = np.max(row)
            assert (np.isnan(got) and np.isnan(want)) or got == want, (where, value, got)
        assert numerics.row_max(np.full(n, -np.inf, dtype), None) == -np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_blocks", [3, 4, 7, 9])
def test_every_block_maximum_of_the_sampler_counts(dtype, n_blocks):
    # the sampler's pruning takes the maxima of blocks of PRUNE_BLOCK logits four blocks at a
    # time, then the rest one by one (kernels/sampling.py): a special value in any block, at
    # any place in it, must decide that block's maximum and the row's
    size = sampling_kernels.PRUNE_BLOCK
    rng = np.random.default_rng(n_blocks)
    for n in (n_blocks * size, n_blocks * size - 5):
        blocks = -(-n // size)
        for where in (0, size - 1, size + 7, n - 1, 3 * size + 1, 5 * size - 1):
            if where >= n:
                continue
            for value in (np.nan, np.inf, 1e30, -np.inf):
                row = rng.standard_normal(n).astype(dtype) - 10
                row[where] = value
                maxima = np.empty(blocks, dtype)
                got = sampling_kernels.block_maxima(row, None, maxima)
                want = [np.max(row[b * size:(b + 1) * size]) for b in range(blocks)]
                np.testing.assert_array_equal(maxima, want, err_msg=f"{n} {where} {value}")
                assert (np.isnan(got) and np.isnan(np.max(row))) or got == np.max(row)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_along_axis_0_of_columns_with_special_values_anywhere(dtype):
    # softmax along axis 0 of a C-ordered float array reads its columns in place, a running
    # maximum and sum per column taken a chunk of lines at a time (kernels/softmax.py): the
    # special values must act wherever they fall, before the first finite value of a column too
    rng = np.random.default_rng(7)
    x = rng.normal(0, 5, (300, 12)).astype(dtype)
    x[:, 0] = -np.inf                    # all -inf: NaN
    x[150, 1] = np.inf                   # +inf in the middle: NaN
    x[299, 2] = np.nan                   # NaN at the end: NaN
    x[:100, 3] = -np.inf                 # -inf for the first chunks, then finite
    x[299, 4] = 80                       # the maximum in the last line
    x[:, 5] = 0                          # all equal
    x[1:, 6] = -np.inf                   # one finite value, first
    x[:-1, 7] = -np.inf                  # one finite value, last
    x[::2, 8] = 1e30                     # huge ties
    x[5, 9] = -1e30                      # a huge negative
    for temperature in (1.0, 0.7):
        with np.errstate(all="ignore"):
            got = fastsoftmax.softmax(x, axis=0, temperature=temperature)
            want = fastsoftmax.reference.softmax(x, axis=0, temperature=temperature)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        tol = 2e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got[ok], want[ok], rtol=tol, atol=2 * np.finfo(dtype).tiny)
