"""fastsoftmax.sample: the drawn distribution against reference.sampling_probs (chi-square),
draw-by-draw agreement with reference.sample, determinism, greedy decoding, layouts and every
error path."""

from __future__ import annotations

import os
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import fastsoftmax
from fastsoftmax import plan, reference
from fastsoftmax.kernels import sampling as sampling_kernels

from .conftest import PURE_PYTHON
from .inputs import dtype_of, random_logits

# A small vocabulary whose every token has a large expected count in 20,000 draws, in an
# order that is not sorted (the inverse CDF runs in index order, the filters by value).
SMALL_VOCAB = np.array([0.7, -1.5, 2.0, 1.0, -0.3, 1.5, -3.0, 0.1, 1.2, -0.8, 0.5, -2.0])
N_DRAWS = 20_000
# Each filter of a combination removes tokens the ones before it kept (12 -> 11 -> 8 -> 6 in
# the last one).
FILTERS = [
    dict(temperature=1.0),
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_p=0.9),
    dict(min_p=0.2),
    dict(top_k=6, top_p=0.7),
    dict(min_p=0.1, top_p=0.75),
    dict(temperature=1.5, min_p=0.05, top_k=8, top_p=0.85),
]
MASK = np.array([True, True, False, True, True, True, False, True, True, False, True, True])


def describe(kwargs) -> str:
    return ", ".join(f"{k}={'mask' if k == 'where' else v}" for k, v in kwargs.items()) \
        or "defaults"


def seed_of(kwargs) -> int:
    """A seed of each case's own, so that cases keeping the same tokens draw independently."""
    return zlib.crc32(describe(kwargs).encode())


def chi_square(draws: np.ndarray, probs: np.ndarray):
    """(statistic, degrees of freedom, p-value) of the draws' counts against ``probs``, over the
    tokens the reference can draw; asserts that no other token was drawn, exactly."""
    counts = np.bincount(draws, minlength=probs.size)
    never = probs == 0
    drawn_but_never = np.flatnonzero(never & (counts > 0))
    assert drawn_but_never.size == 0, f"drew filtered-out tokens {drawn_but_never}"
    expected = probs[~never] * draws.size
    statistic = float(np.sum((counts[~never] - expected) ** 2 / expected))
    dof = int((~never).sum()) - 1
    return statistic, dof, float(stats.chi2.sf(statistic, dof))


# --- the drawn distribution ---------------------------------------------------------------------

@pytest.mark.large
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kwargs", FILTERS + [dict(where=MASK, top_p=0.9),
                                              dict(where=MASK, min_p=0.1, top_k=4)],
                         ids=describe)
def test_draws_follow_the_filtered_distribution(kwargs, dtype):
    logits = np.tile(SMALL_VOCAB.astype(dtype), (N_DRAWS, 1))  # one call, 20,000 rows
    draws = fastsoftmax.sample(logits, seed=seed_of(kwargs), **kwargs)
    probs = reference.sampling_probs(SMALL_VOCAB.astype(dtype), **kwargs)
    statistic, dof, p_value = chi_square(draws, probs)
    assert dof >= 2, "a case whose filters leave under 3 tokens tests little"
    assert p_value > 0.001, f"{describe(kwargs)} {dtype.__name__}: chi2 {statistic:.1f}, dof {dof}"


def test_filters_keep_the_expected_tokens():
    # the reference's semantics on a row whose probabilities are easy to follow by hand:
    # p = [0.5, 0.25, 0.125, 0.0625, 0.0625] before filtering
    logits = np.log([8.0, 4.0, 2.0, 1.0, 1.0])
    kept = lambda **kw: np.flatnonzero(reference.sampling_probs(logits, **kw)).tolist()  # noqa
    assert kept(top_k=2) == [0, 1]
    assert kept(top_k=4) == [0, 1, 2, 3, 4]          # ties at the k-th value are all kept
    assert kept(top_p=0.45) == [0]                    # 0.5 reaches 0.45 on its own
    assert kept(top_p=0.55) == [0, 1]                 # mass above token 1: 0.5 < 0.55
    assert kept(top_p=0.9) == [0, 1, 2, 3, 4]         # 0.875 < 0.9: the tied pair stays
    assert kept(min_p=0.25) == [0, 1, 2]              # p >= 0.25 * max
    assert kept(min_p=0.3, top_p=0.7) == [0, 1]       # top_p renormalises over the kept
    assert kept(temperature=0) == [0]


# --- agreement with the reference, draw by draw -------------------------------------------------

AGREEMENT_FILTERS = FILTERS + [dict(temperature=1.3, top_k=1), dict(min_p=1.0),
                               dict(top_p=0.05), dict(top_k=1000)]


def special_rows(rng, n_rows, n_cols, dtype):
    """Random logits with -inf tokens, tied values and some rows holding +inf."""
    x = random_logits(rng, (n_rows, n_cols), dtype)
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[:, 0] = x[:, 1]                        # ties
    x[::50, 3] = np.inf                      # +inf rows (the max, shared with column 5)
    x[::100, 5] = np.inf
    x[:, 2] = x.max(axis=1)                  # every row keeps a finite or +inf maximum
    return x


def assert_agrees(n_rows, n_cols, dtype, kwargs, min_agreement):
    rng = np.random.default_rng(11)
    x = special_rows(rng, n_rows, n_cols, dtype)
    where = rng.random(n_cols) < 0.9 if "where" in kwargs else None
    kwargs = dict(kwargs, where=where) if where is not None else kwargs
    got = fastsoftmax.sample(x, seed=3, **kwargs)
    want = reference.sample(x, seed=3, **kwargs)
    probs = reference.sampling_probs(x, **kwargs)
    assert np.all(probs[np.arange(n_rows), got] > 0), "drew a token the reference rules out"
    agreement = float(np.mean(got == want))
    assert agreement >= min_agreement, f"{describe(kwargs)}: {agreement:.4f} of draws agree"


@pytest.mark.large
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kwargs", AGREEMENT_FILTERS + [dict(where=True, top_p=0.9)],
                         ids=describe)
def test_draws_agree_with_the_reference(kwargs, dtype):
    assert_agrees(2000, 200, dtype, kwargs, min_agreement=0.999)


@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=3, top_p=0.8, min_p=0.05,
                                                 temperature=0.6)], ids=describe)
def test_draws_agree_with_the_reference_small(kwargs):
    # small enough for pure-Python mode; rows with +inf, -inf and ties included
    assert_agrees(101, 12, np.float64, kwargs, min_agreement=1.0)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_drawn_token_is_always_kept(data):
    n_rows = data.draw(st.integers(1, 4))
    n_cols = data.draw(st.integers(1, 24))
    # logits on a grid of 1/8: ties are exact, and other values at least 1/8 apart (near-ties,
    # a few ulp apart, may tie or not in the compute dtype: the docstring's caveat)
    grid = st.integers(-240, 240).map(lambda i: i / 8)
    values = st.one_of(grid, st.just(-np.inf))
    x = np.array(data.draw(st.lists(values, min_size=n_rows * n_cols,
                                    max_size=n_rows * n_cols))).reshape(n_rows, n_cols)
    x[:, data.draw(st.integers(0, n_cols - 1))] = data.draw(grid)  # one finite
    kwargs = dict(temperature=data.draw(st.sampled_from([0.3, 1.0, 2.0])),
                  top_k=data.draw(st.one_of(st.none(), st.integers(1, 30))),
                  top_p=data.draw(st.one_of(st.none(), st.floats(0.01, 1.0))),
                  min_p=data.draw(st.one_of(st.none(), st.floats(0.0, 1.0))))
    drawn = fastsoftmax.sample(x, seed=data.draw(st.integers(0, 2**32)), **kwargs)
    probs = reference.sampling_probs(x, **kwargs)
    assert np.all(probs[np.arange(n_rows), drawn] > 0), (x, kwargs, drawn)


# --- filters found among candidates gathered from the logits (kernels/sampling.py, PRUNE_BLOCK) -
# A small top-k, or top-p, of a long row gathers its candidates from the logits instead of
# exponentiating the whole row; ties at the threshold, near-ties with the pruning bound, too
# many candidates and a top-k too large for it take the scratch row's way. Both must keep
# exactly what the reference keeps.
PRUNED_TOP_K = [dict(), dict(top_p=0.8), dict(temperature=0.7, min_p=0.02),
                dict(typical_p=0.9), dict(top_n_sigma=2.0), dict(where=True, top_p=0.95)]
PRUNED_TOP_P = [dict(top_p=0.9), dict(temperature=0.6, top_p=0.5),
                dict(temperature=2.0, top_p=0.9), dict(top_p=0.99, typical_p=0.9),
                dict(where=True, top_p=0.8)]


# logits as drawn, and on a grid of 1/4 (ties at every threshold)
ON_GRIDS = pytest.mark.parametrize("grid", [None, 0.25], ids=["spread", "ties"])


def pruning_rows(kwargs, n_cols, grid):
    """16 rows of logits (on a grid of ``grid``: ties at every threshold), one with many
    -inf, one of a single tied value, one peaked; ``kwargs`` with its ``where`` made."""
    rng = np.random.default_rng(n_cols + len(kwargs))
    x = random_logits(rng, (16, n_cols), np.float64, scale=3.0)
    if grid:
        x = np.round(x / grid) * grid
    x[1, rng.integers(0, n_cols, n_cols // 10)] = -np.inf
    x[2, :] = x[2, 0]
    x[3, :5] += 40.0
    if kwargs.get("where"):
        kwargs = dict(kwargs, where=rng.random(n_cols) < 0.8)
    return x, kwargs


def assert_same_draws_as_the_reference(x, kwargs, n_top):
    options = dict(kwargs, return_logprobs=True, top_logprobs=n_top, logprobs_mode="processed",
                   seed=np.arange(x.shape[0]))
    got = fastsoftmax.sample(x, **options)
    want = reference.sample(x, **options)
    message = describe(kwargs)
    np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=message)
    np.testing.assert_array_equal(got.top_tokens, want.top_tokens, err_msg=message)
    np.testing.assert_allclose(got.top_logprobs, want.top_logprobs, atol=1e-12, err_msg=message)


@pytest.mark.large
@ON_GRIDS
@pytest.mark.parametrize("n_cols", [8192, 40000])
@pytest.mark.parametrize("kwargs", PRUNED_TOP_K, ids=describe)
def test_top_k_on_the_logits_keeps_what_the_reference_keeps(kwargs, n_cols, grid):
    x, kwargs = pruning_rows(kwargs, n_cols, grid)
    params = np.ones(sampling_kernels.N_PARAMS)  # with a top-k, only n_cols and k decide
    edge = sampling_kernels.prune_blocks(n_cols, 1, params) // 4  # the largest top-k pruned
    for top_k in (1, 7, edge, edge + 1):
        assert (sampling_kernels.prune_blocks(n_cols, top_k, params) > 0) == (top_k <= edge)
        assert_same_draws_as_the_reference(x, dict(kwargs, top_k=top_k), top_k + 8)


@pytest.mark.large
@ON_GRIDS
@pytest.mark.parametrize("n_cols", [4096, 40000])
@pytest.mark.parametrize("kwargs", PRUNED_TOP_P, ids=describe)
def test_top_p_on_the_logits_keeps_what_the_reference_keeps(kwargs, n_cols, grid):
    x, kwargs = pruning_rows(kwargs, n_cols, grid)
    assert_same_draws_as_the_reference(x, kwargs, 64)


def top_p_bound_outcome(row, temperature, top_p):
    """Which of kernels/sampling.py's top-p bounds (TOP_P_DEPTHS) keeps the nucleus of a
    float64 row, computed here in NumPy: the depth, or "give up" / "too many" when the row
    takes the scratch row's way."""
    n = row.size
    n_blocks = -(-n // sampling_kernels.PRUNE_BLOCK)
    room = min(max(sampling_kernels.PRUNE_CANDIDATES, n // 2), (n - 2 * n_blocks) // 2)
    m = row.max()
    p = np.exp((row - m) / temperature)
    depth = np.log(0.5 * (1.0 - top_p) * p.sum() / n) * temperature
    for step in sampling_kernels.TOP_P_DEPTHS:
        kept = row >= m + step * depth
        if kept.sum() > room:
            return "too many"
        if p[kept].sum() >= top_p * p.sum():
            return step
        if sampling_kernels.TOP_P_GIVE_UP * kept.sum() > room:
            return "give up"
    return "none"


@pytest.mark.large
def test_top_p_at_every_depth_of_its_bound_keeps_what_the_reference_keeps():
    # rows whose nucleus the first, the second, the last bound keeps, and rows that give up or
    # gather too many: each draw as the reference's. The outcomes are computed alongside in
    # NumPy (a mirror of the kernel's rule, not a probe into it), so that the rows keep
    # covering every way when the depths change.
    rng = np.random.default_rng(21)
    x = random_logits(rng, (5, 40000), np.float64, scale=3.0)
    # a few top tokens, then a mass of tokens only the deepest bound reaches
    x[4] = -60.0
    x[4, :10] = 0.0
    x[4, 10:18010] = -9.5 + rng.uniform(0.0, 0.1, 18000)
    outcomes = set()
    for temperature, top_p in [(0.8, 0.9), (0.8, 0.95), (0.6, 0.99), (1.0, 0.9), (3.0, 0.9)]:
        outcomes |= {top_p_bound_outcome(row, temperature, top_p) for row in x}
        assert_same_draws_as_the_reference(x, dict(temperature=temperature, top_p=top_p), 64)
    assert outcomes >= set(sampling_kernels.TOP_P_DEPTHS) | {"give up", "too many"}


@pytest.mark.large
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_top_k_on_the_logits_in_the_compute_dtype(dtype):
    # float32 and half-precision rows (compute float32): ties are decided there, so the draws
    # are checked against the reference's kept set rather than draw by draw
    rng = np.random.default_rng(5)
    x = random_logits(rng, (32, 32000), np.float32, scale=3.0)
    x[::4] = np.round(x[::4] * 4) / 4
    x = x.astype(dtype_of(dtype))
    for kwargs in (dict(top_k=50), dict(top_k=20, top_p=0.9, temperature=0.8),
                   dict(top_p=0.9, temperature=0.8)):
        drawn = fastsoftmax.sample(x, seed=9, **kwargs)
        probs = reference.sampling_probs(np.asarray(x, np.float32), **kwargs)
        assert np.all(probs[np.arange(32), drawn] > 0), describe(kwargs)
        assert np.mean(drawn == reference.sample(np.asarray(x, np.float32), seed=9,
                                                 **kwargs)) >= 0.9


@pytest.mark.large
@pytest.mark.parametrize("kwargs", [dict(temperature=0.8), dict(top_k=50),
                                    dict(temperature=0.8, top_p=0.9),
                                    dict(min_p=0.05, top_p=0.95)], ids=describe)
def test_large_vocabulary(kwargs):
    x = random_logits(np.random.default_rng(12), (8, 128256), np.float32, scale=3.0)
    drawn = fastsoftmax.sample(x, seed=5, **kwargs)
    probs = reference.sampling_probs(x, **kwargs)
    assert np.all(probs[np.arange(8), drawn] > 0)
    assert np.mean(drawn == reference.sample(x, seed=5, **kwargs)) >= 7 / 8


# --- determinism and seeds ----------------------------------------------------------------------

@pytest.mark.large  # above the serial threshold: slow as Python, and without threads there
@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=3, top_p=0.9)], ids=describe)
def test_same_seed_same_tokens_whatever_the_threads(kwargs):
    x = random_logits(np.random.default_rng(13), (600, 60))  # above the serial threshold
    with fastsoftmax.threads(1):
        one_thread = fastsoftmax.sample(x, seed=21, **kwargs)
    assert np.array_equal(fastsoftmax.sample(x, seed=21, **kwargs), one_thread)
    assert np.array_equal(fastsoftmax.sample(x, seed=np.random.default_rng(21), **kwargs),
                          one_thread)


@pytest.mark.large
def test_concurrent_calls_from_python_threads():
    # every call has its own scratch rows: calls at once give what they give alone
    x = random_logits(np.random.default_rng(23), (64, 3000), np.float32)
    kwargs = [dict(seed=s, top_p=0.9, temperature=0.8) for s in range(8)]
    alone = [fastsoftmax.sample(x, **kw) for kw in kwargs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda kw: fastsoftmax.sample(x, **kw), kwargs))
    for want, got in zip(alone, together):
        assert np.array_equal(want, got)


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_serial_and_parallel_builds_agree(temperature):
    x = random_logits(np.random.default_rng(14), (37, 50))
    runs = []
    for build in ("serial", "parallel"):
        with plan.force_build(build):
            runs.append(fastsoftmax.sample(x, temperature=temperature, top_k=5, top_p=0.9,
                                           seed=1))
    assert np.array_equal(*runs)


def test_a_generator_advances_by_one_draw_per_row():
    x = random_logits(np.random.default_rng(15), (500, 8))
    rng = np.random.default_rng(4)
    first = fastsoftmax.sample(x, seed=rng)
    second = fastsoftmax.sample(x, seed=rng)
    assert not np.array_equal(first, second)
    skipped = np.random.default_rng(4)
    skipped.random(500)
    assert np.array_equal(second, fastsoftmax.sample(x, seed=skipped))
    assert np.array_equal(first, reference.sample(x, seed=np.random.default_rng(4)))


# --- greedy decoding ----------------------------------------------------------------------------

def test_greedy_takes_the_first_maximum():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0], [-np.inf, 0.0, -np.inf, 0.0],
                  [0.0, np.inf, 1.0, np.inf]])
    assert fastsoftmax.sample(x, temperature=0).tolist() == [1, 0, 1, 1]
    # the filters and the seed change nothing
    assert fastsoftmax.sample(x, temperature=0, top_k=1, top_p=0.1, min_p=0.9,
                              seed=3).tolist() == [1, 0, 1, 1]


def test_greedy_matches_argmax_and_respects_where():
    x = random_logits(np.random.default_rng(16), (50, 40), np.float32)
    assert np.array_equal(fastsoftmax.sample(x, temperature=0), np.argmax(x, axis=1))
    where = np.arange(40) % 3 == 0
    masked = np.where(where, x, -np.inf)
    assert np.array_equal(fastsoftmax.sample(x, temperature=0, where=where),
                          np.argmax(masked, axis=1))


def test_one_token_filters_are_greedy():
    x = random_logits(np.random.default_rng(17), (30, 25))
    greedy = np.argmax(x, axis=1)
    for kwargs in (dict(top_k=1), dict(min_p=1.0), dict(top_p=1e-9)):
        assert np.array_equal(fastsoftmax.sample(x, seed=1, **kwargs), greedy), kwargs


# --- special values -----------------------------------------------------------------------------

def test_plus_inf_tokens_share_the_draw():
    x = np.tile([np.inf, 0.0, np.inf, 5.0], (2000, 1))
    drawn = fastsoftmax.sample(x, seed=8, top_k=1)
    assert set(np.unique(drawn)) == {0, 2}
    assert 0.45 < np.mean(drawn == 0) < 0.55
    assert reference.sampling_probs(x[0]).tolist() == [0.5, 0.0, 0.5, 0.0]


def test_neg_inf_and_masked_tokens_are_never_drawn():
    x = np.tile([0.0, -np.inf, 1.0, np.nan, 2.0], (3000, 1))
    where = np.array([True, True, True, False, False])  # the NaN is masked out: no error
    drawn = fastsoftmax.sample(x, where=where, seed=9)
    assert set(np.unique(drawn)) == {0, 2}


def test_huge_logits_do_not_overflow():
    x = np.array([[1e30, 1e30 * (1 - 2**-20), -1e30]], np.float32)
    assert fastsoftmax.sample(x, seed=0).tolist() == [0]  # the others' p underflows to 0
    y = np.array([1e300, 1e300, -1e300])
    assert set(fastsoftmax.sample(np.tile(y, (200, 1)), seed=0).tolist()) == {0, 1}


# --- seed=None ---------------------------------------------------------------------------------

def test_no_seed_draws_from_one_stream_of_the_process():
    # seed=None takes the process's Generator (seeded from the OS once): calls go on drawing
    # from it, as two fresh Generators would not; 200 single draws over 1000 equal tokens
    x = np.zeros(1000)
    draws = [int(fastsoftmax.sample(x)) for _ in range(200)]
    assert len(set(draws)) > 150
    batch = fastsoftmax.sample(np.zeros((200, 1000)))
    assert len(set(batch.tolist())) > 150


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_a_forked_child_draws_a_stream_of_its_own():
    # a child forked after the process's Generator exists must not repeat the parent's draws
    # (workers forked from one parent would sample alike)
    x = np.zeros((16, 1000))  # one serial task: no thread pool in the child
    fastsoftmax.sample(x)  # the Generator exists before the fork
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python >= 3.12 and JAX (when loaded) warn of fork in
        warnings.simplefilter("ignore")  # a threaded process: the child runs no thread
        pid = os.fork()
    if pid == 0:  # the child: its next draws to the parent, then leave at once
        try:
            with plan.force_build("serial"):
                os.write(write, fastsoftmax.sample(x).tobytes())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = np.frombuffer(pipe.read(), np.int64)
    os.waitpid(pid, 0)
    parent = fastsoftmax.sample(x)
    assert child.shape == parent.shape and not np.array_equal(child, parent)


# --- shapes, axes and dtypes --------------------------------------------------------------------

def test_result_shapes_and_types():
    one = fastsoftmax.sample(np.array([0.0, 1.0, 2.0]), seed=0)
    assert isinstance(one, np.int64)
    x = random_logits(np.random.default_rng(18), (2, 3, 7))
    assert fastsoftmax.sample(x, seed=0).shape == (2, 3)
    assert fastsoftmax.sample(x, seed=0, axis=1).shape == (2, 7)
    assert isinstance(fastsoftmax.sample(x, seed=0, axis=None), np.int64)
    empty = fastsoftmax.sample(np.zeros((0, 5)), seed=0)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert fastsoftmax.sample(x, seed=0).dtype == np.int64


def test_axis_is_the_vocabulary():
    x = random_logits(np.random.default_rng(19), (4, 9, 5))
    moved = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    assert np.array_equal(fastsoftmax.sample(x, axis=1, seed=2, top_p=0.8),
                          fastsoftmax.sample(moved, seed=2, top_p=0.8))
    assert np.array_equal(fastsoftmax.sample(x, axis=1, seed=2, top_p=0.8),
                          reference.sample(x, axis=1, seed=2, top_p=0.8))
    assert fastsoftmax.sample(x, axis=None, seed=2) == reference.sample(x, axis=None, seed=2)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.bool_])
def test_dtypes(dtype):
    x = random_logits(np.random.default_rng(20), (40, 16), dtype)
    drawn = fastsoftmax.sample(x, seed=6, top_k=4)
    assert np.all(reference.sampling_probs(x, top_k=4)[np.arange(40), drawn] > 0)


def test_layouts_give_the_same_tokens_and_inputs_are_not_modified():
    x = random_logits(np.random.default_rng(21), (20, 33))
    want = fastsoftmax.sample(x, seed=4, top_p=0.9)
    padded = np.zeros((20, 40))
    padded[:, 2:35] = x
    strided = np.zeros((20, 66))
    strided[:, ::2] = x
    for layout in (padded[:, 2:35], strided[:, ::2], np.asfortranarray(x),
                   x.astype(">f8")):
        before = layout.copy()
        assert np.array_equal(fastsoftmax.sample(layout, seed=4, top_p=0.9), want)
        assert np.array_equal(layout, before)


def test_where_broadcasts():
    x = random_logits(np.random.default_rng(22), (300, 10))
    where = np.arange(10) >= 6
    drawn = fastsoftmax.sample(x, where=where, seed=1)
    assert drawn.min() >= 6
    assert np.array_equal(drawn, reference.sample(x, where=where, seed=1))


# --- errors -------------------------------------------------------------------------------------

x2 = np.zeros((2, 3))
BAD_CALLS = [
    # (logits, kwargs, exception, words the message must contain)
    (np.array([[0.0, np.nan], [1.0, 2.0]]), {}, ValueError, ["row 0", "NaN"]),
    (np.array([[0.0, 1.0], [np.nan, 2.0], [np.nan, 0.0]]), {}, ValueError, ["rows [1, 2]", "NaN"]),
    (np.array([[-np.inf, -np.inf], [0.0, 1.0], [-np.inf, -np.inf]]), {}, ValueError,
     ["rows [0, 2]", "all -inf or masked out"]),
    (np.array([[-np.inf, -np.inf], [0.0, 1.0]]), dict(temperature=0), ValueError,
     ["row 0", "no token"]),
    (x2, dict(where=np.array([[True, True, True], [False, False, False]])), ValueError,
     ["row 1", "masked out"]),
    (np.full((2, 2, 3), -np.inf), {}, ValueError, ["rows [(0, 0), (0, 1), (1, 0), (1, 1)]"]),
    (np.array([-np.inf]), {}, ValueError, ["the row", "no token"]),
    (np.zeros((2, 0)), {}, ValueError, ["empty vocabulary"]),
    (np.float64(1.0), {}, ValueError, ["axis", "dimension 0"]),
    (np.array([1 + 1j, 2]), {}, TypeError, ["logits", "complex"]),
    (["a", "b"], {}, TypeError, ["logits", "<U1"]),
    (x2, dict(temperature=-1.0), ValueError, ["temperature"]),
    (x2, dict(temperature=np.nan), ValueError, ["temperature"]),
    (x2, dict(temperature=np.inf), ValueError, ["temperature"]),
    (x2, dict(temperature="hot"), ValueError, ["temperature"]),
    (x2, dict(temperature=True), ValueError, ["temperature"]),
    (x2, dict(top_k=-2), ValueError, ["top_k", "-2"]),
    (x2, dict(top_k=2.0), TypeError, ["top_k", "2.0"]),
    (x2, dict(top_k=True), TypeError, ["top_k", "True"]),
    (x2, dict(top_p=0.0), ValueError, ["top_p", "(0, 1]"]),
    (x2, dict(top_p=1.5), ValueError, ["top_p", "1.5"]),
    (x2, dict(top_p=np.nan), ValueError, ["top_p", "nan"]),
    (x2, dict(top_p="0.5"), TypeError, ["top_p", "'0.5'"]),
    (x2, dict(min_p=-0.1), ValueError, ["min_p", "[0, 1]"]),
    (x2, dict(min_p=1.01), ValueError, ["min_p", "1.01"]),
    (x2, dict(min_p=False), TypeError, ["min_p", "False"]),
    (x2, dict(seed="abc"), TypeError, ["seed", "str"]),
    (x2, dict(seed=1.5), TypeError, ["seed", "float"]),
    (x2, dict(seed=-1), ValueError, ["seed", "-1"]),
    (x2, dict(seed=np.random.RandomState(0)), TypeError, ["seed", "RandomState"]),
    (x2, dict(where=np.ones((3, 2), bool)), ValueError, ["where", "(3, 2)"]),
    (x2, dict(where=np.ones((2, 3))), TypeError, ["where", "bool"]),
    (x2, dict(axis=2), ValueError, ["axis", "2"]),
    (x2, dict(axis=1.0), TypeError, ["axis"]),
]


def assert_sample_refuses(logits, kwargs, exc, words):
    """``sample(logits, **kwargs)`` raises ``exc`` with a message naming every one of
    ``words``."""
    with pytest.raises(exc) as info:
        fastsoftmax.sample(logits, **kwargs)
    message = str(info.value)
    assert message.startswith("sample: "), message
    for word in words:
        assert word in message, f"{message!r} does not name {word!r}"


@pytest.mark.parametrize("logits, kwargs, exc, words", BAD_CALLS)
def test_bad_calls(logits, kwargs, exc, words):
    assert_sample_refuses(logits, kwargs, exc, words)


def test_reference_rejects_what_sample_rejects():
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        reference.sampling_probs(np.array([[0.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="rows \\[0\\]"):
        reference.sample(np.array([[-np.inf, -np.inf], [0.0, 1.0]]), seed=0)


def test_warmup_compiles_the_samplers():
    fastsoftmax.warmup(dtypes=["float64"], functions=["sample"])
    if not PURE_PYTHON:  # without the JIT there is nothing to compile
        assert sampling_kernels.sample_rows.serial.signatures
