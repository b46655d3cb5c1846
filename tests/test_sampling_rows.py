"""fastsoftmax.sample on a serving engine's batch: parameters of every row's own, penalties
from each row's history, logit bias, typical-p and top-n-sigma, seeds per row, and
log-probabilities; against the reference (chi-square per row, formulas on hand-made
histories, log_softmax), Hugging Face's typical-p in PyTorch, and every error path."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsoftmax
from fastsoftmax import arguments, plan, reference

from .inputs import random_logits
from .test_sampling import SMALL_VOCAB, assert_sample_refuses, chi_square

# Eight requests of one batch, each with its own settings; every option appears, and each
# setting leaves at least 3 of the 12 tokens (a chi-square with 2+ degrees of freedom).
REQUESTS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=6, repetition_penalty=1.5),
    dict(temperature=1.3, top_p=0.9, presence_penalty=0.8, frequency_penalty=0.3),
    dict(temperature=1.0, min_p=0.1, logit_bias={1: 3.0, 2: -np.inf}),
    dict(temperature=1.1, typical_p=0.8),
    dict(temperature=0.9, top_n_sigma=1.0, repetition_penalty=0.8),
    dict(temperature=1.5, top_k=9, top_p=0.85, typical_p=0.9, frequency_penalty=-0.4),
    dict(temperature=0.8, top_n_sigma=1.5, min_p=0.02, top_p=0.95, presence_penalty=1.0),
]
HISTORIES = [[2, 2, 5], [0, 3, 3, 3], [8, 2], [], [5, 5, 5, 11], [2, 0], [7, 1, 1], [4]]
NEUTRAL = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
               top_n_sigma=np.inf, repetition_penalty=1.0, presence_penalty=0.0,
               frequency_penalty=0.0)


def batch_of(requests, histories, repeat=1):
    """Keyword arguments of one call whose rows are the ``requests`` in turn (``repeat``
    times over): parameters as arrays of one value per row, histories as a padded table,
    biases as one dict per row."""
    rows = [requests[i % len(requests)] for i in range(len(requests) * repeat)]
    kwargs = {name: np.array([r.get(name, default) for r in rows])
              for name, default in NEUTRAL.items()}
    width = max(len(h) for h in histories) or 1
    table = np.full((len(rows), width), -1)
    for i in range(len(rows)):
        history = histories[i % len(histories)]
        table[i, :len(history)] = history
    kwargs.update(previous_tokens=table,
                  logit_bias=[r.get("logit_bias") for r in rows])
    return kwargs


def random_batch(seed, n_rows, n_cols, dtype=np.float64, history=20):
    """(logits, keyword arguments, one seed per row): random logits whose rows are the
    requests in turn, eight random histories of ``history`` tokens."""
    rng = np.random.default_rng(seed)
    x = random_logits(rng, (n_rows, n_cols), dtype)
    histories = [rng.integers(0, n_cols, history).tolist() for _ in range(8)]
    kwargs = batch_of(REQUESTS, histories, repeat=n_rows // len(REQUESTS))
    return x, kwargs, rng.integers(0, 2**63, n_rows)


def one_request(request, history):
    """The keyword arguments of one request alone (scalars)."""
    return dict(request, previous_tokens=np.array(history, np.int64))


# --- the drawn distribution, row by row -------------------------------------------------------

@pytest.mark.large
@pytest.mark.parametrize("seeds", ["per row", "generator"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_row_follows_its_own_distribution(dtype, seeds):
    n_draws = 20_000
    kwargs = batch_of(REQUESTS, HISTORIES, repeat=n_draws)  # rows interleave the requests
    logits = np.tile(SMALL_VOCAB.astype(dtype), (len(REQUESTS) * n_draws, 1))
    seed = np.arange(logits.shape[0]) * 7919 + 3 if seeds == "per row" else \
        np.random.default_rng(17)
    drawn = fastsoftmax.sample(logits, seed=seed, **kwargs)
    for i, (request, history) in enumerate(zip(REQUESTS, HISTORIES)):
        probs = reference.sampling_probs(SMALL_VOCAB.astype(dtype),
                                         **one_request(request, history))
        statistic, dof, p_value = chi_square(drawn[i::len(REQUESTS)], probs)
        assert dof >= 2, f"request {i} leaves under 3 tokens: it tests little"
        # 32 tests at 0.001: a false alarm about once in 30 runs of the whole set, and the
        # seeds are fixed, so a pass stays a pass
        assert p_value > 0.001, f"request {i} ({request}): chi2 {statistic:.1f}, dof {dof}"


def test_the_batch_distribution_is_each_requests_alone():
    # the reference computes a batch row by row: the same as each request on its own
    kwargs = batch_of(REQUESTS, HISTORIES)
    logits = np.tile(SMALL_VOCAB, (len(REQUESTS), 1))
    together = reference.sampling_probs(logits, **kwargs)
    for i, (request, history) in enumerate(zip(REQUESTS, HISTORIES)):
        alone = reference.sampling_probs(SMALL_VOCAB, **one_request(request, history))
        np.testing.assert_array_equal(together[i], alone)


def test_draws_agree_with_the_reference_draw_by_draw():
    x, kwargs, seed = random_batch(30, 400, 300, history=40)
    got = fastsoftmax.sample(x, seed=seed, **kwargs)
    np.testing.assert_array_equal(got, reference.sample(x, seed=seed, **kwargs))


# --- a row's draw is its own ----------------------------------------------------------------------

def test_a_row_draws_the_same_token_whatever_its_neighbours():
    x, kwargs, seed = random_batch(31, 64, 500, np.float32)
    rng = np.random.default_rng(31)
    first = fastsoftmax.sample(x, seed=seed, **kwargs)
    # other rows get other logits, other settings, and the batch is shuffled
    order = rng.permutation(64)
    y = random_logits(rng, (64, 500), np.float32)
    keep = order[:10]  # these rows are the same requests, elsewhere in the batch
    y[:10] = x[keep]
    shuffled = {name: np.asarray(value)[order] if name != "logit_bias" else
                [value[i] for i in order] for name, value in kwargs.items()}
    for name in ("temperature", "top_p", "top_k"):
        shuffled[name] = shuffled[name].copy()
        shuffled[name][10:] = np.asarray(NEUTRAL[name])  # the other rows change settings
    second = fastsoftmax.sample(y, seed=seed[order], **shuffled)
    np.testing.assert_array_equal(second[:10], first[keep])
    # and alone, as a batch of one row, with its seed as the one per-row seed
    for r in keep[:3]:
        alone = fastsoftmax.sample(x[r:r + 1], seed=seed[r:r + 1],
                                   **{k: np.asarray(v)[r:r + 1] if k != "logit_bias"
                                      else [v[r]] for k, v in kwargs.items()})
        assert alone[0] == first[r]


def test_a_scalar_seed_gives_each_row_its_place_in_the_stream():
    # one stream, rows in order: a row's draw depends on its place, not on its neighbours
    rng = np.random.default_rng(32)
    x = random_logits(rng, (30, 50))
    first = fastsoftmax.sample(x, seed=5, temperature=0.8)
    y = x.copy()
    y[1::2] = random_logits(rng, (15, 50))
    second = fastsoftmax.sample(y, seed=5, temperature=np.where(np.arange(30) % 2, 2.0, 0.8))
    np.testing.assert_array_equal(first[::2], second[::2])


def test_per_row_seeds_follow_splitmix64():
    # SplitMix64's published first output for seed 0 (Java's SplittableRandom): 0xE220A8397B1DCDAF
    u = arguments.splitmix_uniforms(np.array([0, 2**64 - 1], np.uint64))
    assert u[0] == (0xE220A8397B1DCDAF >> 11) / 2.0**53
    assert u[1] == reference._splitmix_uniform(2**64 - 1)
    # a row's token is the inverse CDF of its distribution at its uniform number
    probs = np.array([0.25, 0.5, 0.25])
    logits = np.log(probs)
    seeds = np.arange(200)
    uniforms = arguments.splitmix_uniforms(seeds.astype(np.uint64))
    want = np.searchsorted(np.cumsum(probs), uniforms * probs.sum(), side="right")
    np.testing.assert_array_equal(fastsoftmax.sample(np.tile(logits, (200, 1)), seed=seeds),
                                  want)


def test_serial_and_parallel_builds_agree_with_every_option():
    x, kwargs, seed = random_batch(33, 40, 1200, np.float32)  # above the serial threshold
    for mode in ("raw", "processed"):
        runs = []
        for build in ("serial", "parallel"):
            with plan.force_build(build):
                runs.append(fastsoftmax.sample(x, seed=seed, return_logprobs=True,
                                               top_logprobs=7, logprobs_mode=mode, **kwargs))
        for got, want in zip(*runs):
            assert got.tobytes() == want.tobytes(), mode


# --- greedy rows, penalties and bias on hand-made histories ---------------------------------------

def test_greedy_rows_in_a_sampled_batch_take_the_edited_maximum():
    x = np.array([[1.0, 3.0, 2.0, 0.0]] * 4)
    drawn = fastsoftmax.sample(
        x, temperature=[0.0, 0.0, 0.0, 1.0], top_k=[0, 3, 0, 1], seed=[1, 2, 3, 4],
        previous_tokens=[[1], [1], [], []], repetition_penalty=[1.0, 2.0, 1.0, 1.0],
        logit_bias=[None, None, {3: 5.0}, None])
    # row 0: plain argmax; row 1: 3 / 2 < 2; row 2: 0 + 5 wins; row 3: top_k=1 of a sampled row
    assert drawn.tolist() == [1, 2, 3, 1]


def processed_distribution(x, **kwargs):
    """The distribution ``sample`` draws from, as it reports it: every token's processed
    log-probability (top_logprobs over the whole vocabulary), back in index order."""
    out = fastsoftmax.sample(x, seed=0, return_logprobs=True, top_logprobs=x.shape[-1],
                             logprobs_mode="processed", **kwargs)
    logp = np.empty(out.top_logprobs.shape)
    np.put_along_axis(logp, out.top_tokens, out.top_logprobs, axis=-1)
    return logp


def test_penalties_and_bias_on_a_hand_made_history():
    x = np.array([[2.0, -1.0, 0.5, 0.0, 1.0]])
    history = [[0, 0, 1, -1, -1]]
    # bias first: token 4 gets -3 (1 - 3 = -2) and token 0 gets +1 (3.0); then the penalties
    # of tokens 0 (twice) and 1 (once): repetition 2 (3 / 2 = 1.5, -1 * 2 = -2), frequency
    # 0.5 per occurrence (1.5 - 1 = 0.5, -2 - 0.5 = -2.5), presence 0.25 (0.25, -2.75)
    want = np.array([0.25, -2.75, 0.5, 0.0, -2.0])
    kwargs = dict(previous_tokens=history, logit_bias={4: -3.0, 0: 1.0},
                  repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    np.testing.assert_allclose(processed_distribution(x, **kwargs)[0],
                               reference.log_softmax(want), rtol=0, atol=1e-15)
    np.testing.assert_allclose(reference.sampling_probs(x, **kwargs)[0],
                               reference.softmax(want), rtol=0, atol=1e-16)
    # temperature divides the edited logits
    np.testing.assert_allclose(processed_distribution(x, temperature=0.5, **kwargs)[0],
                               reference.log_softmax(want / 0.5), rtol=0, atol=1e-14)


def test_the_logits_are_never_modified():
    x = random_logits(np.random.default_rng(34), (8, 64), np.float32)
    before = x.copy()
    fastsoftmax.sample(x, previous_tokens=np.arange(8 * 5).reshape(8, 5),
                       repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5,
                       logit_bias={3: -np.inf, 7: 2.0}, seed=0, return_logprobs=True)
    np.testing.assert_array_equal(x, before)


def test_every_form_of_history_and_bias_is_the_same():
    rng = np.random.default_rng(35)
    x = random_logits(rng, (3, 20))
    histories = [np.array([1, 1, 4]), np.array([], np.int64), np.array([19])]
    padded = np.array([[1, 1, 4], [-1, -1, -1], [19, -1, -1]])
    dense = np.zeros(20)
    dense[[2, 5]] = [1.5, -np.inf]
    forms = [dict(previous_tokens=padded, logit_bias={2: 1.5, 5: -np.inf}),
             dict(previous_tokens=histories, logit_bias=dense),
             dict(previous_tokens=[h.tolist() for h in histories],
                  logit_bias=[{2: 1.5, 5: -np.inf}] * 3),
             dict(previous_tokens=padded, logit_bias=np.tile(dense, (3, 1)))]
    results = [processed_distribution(x, repetition_penalty=1.7, frequency_penalty=0.2, **f)
               for f in forms]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
    with np.errstate(divide="ignore"):  # log(0) = -inf: the banned token
        want = np.log(reference.sampling_probs(x, repetition_penalty=1.7,
                                               frequency_penalty=0.2, **forms[0]))
    np.testing.assert_allclose(results[0], want, atol=1e-14)


def test_a_banned_token_is_never_drawn_and_a_row_of_them_is_an_error():
    x = np.zeros((500, 3))
    drawn = fastsoftmax.sample(x, logit_bias={1: -np.inf}, seed=1)
    assert set(drawn.tolist()) == {0, 2}
    with pytest.raises(ValueError, match="row 0 has no token that can be sampled"):
        fastsoftmax.sample(x[:1], logit_bias={0: -np.inf, 1: -np.inf, 2: -np.inf})


# --- typical-p and top-n-sigma -----------------------------------------------------------------

def hugging_face_typical(scores, mass):
    """transformers' TypicalLogitsWarper.__call__ (min_tokens_to_keep=1), in PyTorch: the
    tokens it keeps."""
    torch = pytest.importorskip("torch")
    scores = torch.from_numpy(scores)
    normalized = torch.nn.functional.log_softmax(scores, dim=-1)
    p = torch.exp(normalized)
    ent = -(normalized * p).nansum(-1, keepdim=True)
    shifted_scores = torch.abs((-normalized) - ent)
    sorted_scores, sorted_indices = torch.sort(shifted_scores, descending=False)
    sorted_logits = scores.gather(-1, sorted_indices)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    last_ind = (cumulative_probs < mass).sum(dim=1)
    last_ind.clamp_(max=sorted_scores.shape[-1] - 1)
    sorted_indices_to_remove = sorted_scores > sorted_scores.gather(1, last_ind.view(-1, 1))
    sorted_indices_to_remove[..., :1] = 0
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices,
                                                         sorted_indices_to_remove)
    return ~indices_to_remove.numpy()


@pytest.mark.parametrize("typical_p", [0.2, 0.5, 0.9, 0.99])
def test_typical_p_keeps_what_hugging_face_keeps(typical_p):
    x = random_logits(np.random.default_rng(36), (50, 700), np.float64, scale=2.0)
    kept = reference.sampling_probs(x, typical_p=typical_p) > 0
    np.testing.assert_array_equal(kept, hugging_face_typical(x, typical_p))
    drawn = fastsoftmax.sample(x, typical_p=typical_p, seed=np.arange(50))
    assert kept[np.arange(50), drawn].all()
    # the kernel's kept set: the processed log-probabilities that are finite
    assert np.array_equal(np.isfinite(processed_distribution(x, typical_p=typical_p)), kept)


def test_top_n_sigma_keeps_the_logits_within_n_sigma_of_the_max():
    x = random_logits(np.random.default_rng(37), (20, 400), np.float64)
    x[:, ::9] = -np.inf  # left out of the standard deviation
    for n in (0.5, 1.0, 2.5):
        finite = np.where(np.isfinite(x), x, np.nan)
        want = x >= (np.nanmax(finite, axis=1) - n * np.nanstd(finite, axis=1))[:, None]
        for temperature in (0.5, 1.0, 2.0):  # the kept set does not depend on it
            kept = np.isfinite(processed_distribution(x, top_n_sigma=n,
                                                      temperature=temperature))
            np.testing.assert_array_equal(kept, want)
            np.testing.assert_array_equal(reference.sampling_probs(
                x, top_n_sigma=n, temperature=temperature) > 0, want)


def test_typical_p_on_large_vocabularies_and_ties():
    rng = np.random.default_rng(38)
    x = random_logits(rng, (6, 50_000), np.float32, scale=2.0)
    x[5] = 1.0  # every token tied: all kept
    for typical_p in (0.3, 0.95):
        want = reference.sampling_probs(x, typical_p=typical_p) > 0
        got = np.isfinite(processed_distribution(x, typical_p=typical_p))
        # float32 probabilities may decide a token at the edge of the band otherwise
        assert np.mean(got != want) < 1e-4 and got[5].all()


# --- log-probabilities ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_raw_logprobs_are_log_softmax_of_the_logits(dtype):
    rng = np.random.default_rng(39)
    x = random_logits(rng, (30, 200), dtype)
    where = rng.random(200) < 0.8
    out = fastsoftmax.sample(x, where=where, seed=np.arange(30), return_logprobs=True,
                             top_logprobs=10, temperature=0.7, top_p=0.9,
                             previous_tokens=rng.integers(0, 200, (30, 10)),
                             repetition_penalty=1.2)
    logp = reference.log_softmax(x, where=where).astype(np.float64)
    rows = np.arange(30)
    tol = 1e-13 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(out.logprobs, logp[rows, out.tokens], rtol=tol, atol=tol)
    assert out.logprobs.dtype == dtype and out.top_logprobs.dtype == dtype
    np.testing.assert_array_equal(out.top_tokens, np.argsort(-logp, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(out.top_logprobs, np.sort(logp, axis=1)[:, ::-1][:, :10],
                               rtol=tol, atol=tol)
    assert np.all(np.diff(out.top_logprobs, axis=1) <= 0)  # most likely first


def test_processed_logprobs_are_the_log_of_the_sampled_distribution():
    x, kwargs, _ = random_batch(40, 24, 150, history=12)
    kwargs["temperature"][::5] = 0.0  # greedy rows: 0 on the token, -inf elsewhere
    out = fastsoftmax.sample(x, seed=np.arange(24), return_logprobs=True, top_logprobs=150,
                             logprobs_mode="processed", **kwargs)
    with np.errstate(divide="ignore"):
        logp = np.log(reference.sampling_probs(x, **kwargs))
    np.testing.assert_allclose(out.logprobs, logp[np.arange(24), out.tokens], atol=1e-13)
    want = reference.sample(x, seed=np.arange(24), return_logprobs=True, top_logprobs=150,
                            logprobs_mode="processed", **kwargs)
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_array_equal(out.top_tokens, want.top_tokens)
    np.testing.assert_allclose(out.top_logprobs, want.top_logprobs, atol=1e-13)
    assert np.all(out.logprobs[::5] == 0.0)


def test_logprobs_of_special_rows():
    x = np.array([[np.inf, 0.0, np.inf, 1.0], [-np.inf, 2.0, -np.inf, 2.0],
                  [0.0, 1.0, 2.0, 3.0]])
    for mode in ("raw", "processed"):
        out = fastsoftmax.sample(x, seed=1, return_logprobs=True, top_logprobs=4,
                                 logprobs_mode=mode, top_k=[0, 0, 1])
        want = reference.sample(x, seed=1, return_logprobs=True, top_logprobs=4,
                                logprobs_mode=mode, top_k=[0, 0, 1])
        for got, expected in zip(out, want):
            np.testing.assert_allclose(got, expected, rtol=1e-15)
        # +inf tokens share the probability: -log 2; ties and -inf rank by index
        assert out.top_tokens[0].tolist() == [0, 2, 1, 3]
        assert out.top_tokens[1].tolist() == [1, 3, 0, 2]
    assert out.top_logprobs[2].tolist() == [0.0, -np.inf, -np.inf, -np.inf]  # top_k=1


def test_logprobs_shapes_and_one_row():
    x = random_logits(np.random.default_rng(41), (2, 3, 11))
    out = fastsoftmax.sample(x, seed=0, return_logprobs=True, top_logprobs=4)
    assert isinstance(out, fastsoftmax.Sampled)
    assert out.tokens.shape == (2, 3) and out.logprobs.shape == (2, 3)
    assert out.top_tokens.shape == (2, 3, 4) and out.top_logprobs.shape == (2, 3, 4)
    one = fastsoftmax.sample(x[0, 0], seed=0, return_logprobs=True)
    assert isinstance(one.tokens, np.int64) and np.ndim(one.logprobs) == 0
    assert one.top_tokens.shape == (0,)
    moved = fastsoftmax.sample(x, axis=1, seed=0, return_logprobs=True, top_logprobs=2)
    assert moved.top_tokens.shape == (2, 11, 2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_logits_take_every_option(dtype):
    from .inputs import dtype_of
    x = random_logits(np.random.default_rng(42), (16, 300), np.float32).astype(dtype_of(dtype))
    kwargs = batch_of(REQUESTS, [[1, 2, 3], [299]], repeat=2)
    got = fastsoftmax.sample(x, seed=np.arange(16), return_logprobs=True, top_logprobs=3,
                             **kwargs)
    want = fastsoftmax.sample(x.astype(np.float32), seed=np.arange(16), return_logprobs=True,
                              top_logprobs=3, **kwargs)
    for g, w in zip(got, want):
        assert g.tobytes() == w.tobytes()


def test_tensors_for_every_per_row_argument():
    torch = pytest.importorskip("torch")
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(3))
    kwargs = dict(temperature=torch.linspace(0.5, 1.5, 8), top_k=torch.arange(8) * 5,
                  top_p=torch.full((8,), 0.9), previous_tokens=torch.randint(0, 50, (8, 6)),
                  repetition_penalty=torch.full((8,), 1.2), seed=torch.arange(8))
    out = fastsoftmax.sample(logits, return_logprobs=True, top_logprobs=2, **kwargs)
    assert isinstance(out, fastsoftmax.Sampled) and isinstance(out.tokens, torch.Tensor)
    plain = fastsoftmax.sample(logits.numpy(), return_logprobs=True, top_logprobs=2,
                               **{k: v.numpy() for k, v in kwargs.items()})
    for got, want in zip(out, plain):
        np.testing.assert_array_equal(got.numpy(), want)


# --- properties ----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_drawn_token_is_always_kept_with_per_row_options(data):
    n_rows = data.draw(st.integers(1, 4))
    n_cols = data.draw(st.integers(2, 30))
    grid = st.integers(-160, 160).map(lambda i: i / 8)  # exact ties, no near-ties
    x = np.array(data.draw(st.lists(st.one_of(grid, st.just(-np.inf)), min_size=n_rows * n_cols,
                                    max_size=n_rows * n_cols))).reshape(n_rows, n_cols)
    x[:, 0] = 0.0  # every row keeps a finite token
    column = lambda strategy: np.array([data.draw(strategy) for _ in range(n_rows)])  # noqa
    kwargs = dict(
        temperature=column(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        top_k=column(st.integers(0, 10)),
        top_p=column(st.sampled_from([0.3, 0.8, 1.0])),
        min_p=column(st.sampled_from([0.0, 0.1])),
        typical_p=column(st.sampled_from([0.4, 0.9, 1.0])),
        top_n_sigma=column(st.sampled_from([1.0, np.inf])),
        repetition_penalty=column(st.sampled_from([1.0, 1.5])),
        presence_penalty=column(st.sampled_from([0.0, 0.5])),
        previous_tokens=np.array([data.draw(st.lists(st.integers(-1, n_cols - 1), min_size=3,
                                                     max_size=3)) for _ in range(n_rows)]))
    seed = np.array([data.draw(st.integers(0, 2**64 - 1)) for _ in range(n_rows)], np.uint64)
    drawn = fastsoftmax.sample(x, seed=seed, **kwargs)
    probs = reference.sampling_probs(x, **kwargs)
    assert np.all(probs[np.arange(n_rows), drawn] > 0), (x, kwargs, drawn)


@pytest.mark.large
def test_a_serving_batch_of_a_large_vocabulary():
    from fastsoftmax.registry import _serving_batch
    x = random_logits(np.random.default_rng(43), (16, 128256), np.float32, scale=3.0)
    kwargs = _serving_batch(x, logprobs=True)
    got = fastsoftmax.sample(x, **kwargs)
    want = reference.sample(x, **kwargs)
    assert np.mean(got.tokens == want.tokens) >= 15 / 16
    probs = reference.sampling_probs(x, **{k: v for k, v in kwargs.items() if k not in (
        "seed", "return_logprobs", "top_logprobs")})
    assert np.all(probs[np.arange(16), got.tokens] > 0)
    np.testing.assert_array_equal(got.top_tokens, want.top_tokens)
    np.testing.assert_allclose(got.top_logprobs, want.top_logprobs, rtol=1e-5)


# --- errors ------------------------------------------------------------------------------------

x3 = np.zeros((3, 4))
BAD_CALLS = [
    # (kwargs, exception, words the message must contain)
    (dict(temperature=[0.5, 1.0]), ValueError, ["temperature", "one value per row", "(3,)",
                                                "(2,)"]),
    (dict(temperature=[0.5, -1.0, 1.0]), ValueError, ["temperature[1]", "-1.0"]),
    (dict(temperature=[0.5, np.nan, 1.0]), ValueError, ["temperature[1]"]),
    (dict(top_p=np.array([0.5, 1.0, 1.5])), ValueError, ["top_p[2]", "1.5"]),
    (dict(top_k=[1, -3, 2]), ValueError, ["top_k[1]", "-3"]),
    (dict(top_k=np.array([1.0, 2.0, 3.0])), TypeError, ["top_k[0]", "1.0"]),
    (dict(top_k=[[1, 2, 3]]), ValueError, ["top_k", "(1, 3)"]),
    (dict(min_p=[0.0, 0.1, 2.0]), ValueError, ["min_p[2]"]),
    (dict(typical_p=0.0), ValueError, ["typical_p", "(0, 1]"]),
    (dict(typical_p=[1.0, 1.0, 1.2]), ValueError, ["typical_p[2]"]),
    (dict(top_n_sigma=0.0), ValueError, ["top_n_sigma", "positive"]),
    (dict(top_n_sigma=[1.0, -2.0, 1.0]), ValueError, ["top_n_sigma[1]"]),
    (dict(previous_tokens=[[0]] * 3, repetition_penalty=-1.2), ValueError,
     ["repetition_penalty", "positive", "-1.2"]),
    (dict(previous_tokens=[[0]] * 3, repetition_penalty=[1.0, 0.0, 1.0]), ValueError,
     ["repetition_penalty[1]", "positive"]),
    (dict(previous_tokens=[[0]] * 3, presence_penalty=[0.0, np.inf, 0.0]), ValueError,
     ["presence_penalty[1]", "finite"]),
    (dict(previous_tokens=[[0]] * 3, frequency_penalty="high"), TypeError,
     ["frequency_penalty", "'high'"]),
    (dict(repetition_penalty=1.2), ValueError, ["repetition_penalty", "previous_tokens"]),
    (dict(previous_tokens=[[0, 1], [2, 4], [3]]), ValueError,
     ["previous_tokens[1]", "token id 4", "[0, 4)"]),
    (dict(previous_tokens=np.array([[0, 1], [2, -5], [-1, -1]])), ValueError,
     ["previous_tokens[1]", "-5"]),
    (dict(previous_tokens=np.zeros((2, 5), int)), ValueError, ["previous_tokens", "(2, 5)"]),
    (dict(previous_tokens=[[0], [1]]), ValueError, ["previous_tokens", "one 1-D array per row"]),
    (dict(previous_tokens=np.zeros((3, 2))), TypeError, ["previous_tokens", "float64"]),
    (dict(logit_bias={7: 1.0}), ValueError, ["logit_bias", "token id 7", "[0, 4)"]),
    (dict(logit_bias={1: np.nan}), ValueError, ["logit_bias[1]", "nan"]),
    (dict(logit_bias={"a": 1.0}), TypeError, ["logit_bias", "'a'"]),
    (dict(logit_bias=[{0: 1.0}, None]), ValueError, ["logit_bias", "one dict per row (3)"]),
    (dict(logit_bias=[{0: 1.0}, None, {9: 1.0}]), ValueError, ["logit_bias[2]", "token id 9"]),
    (dict(logit_bias=np.ones(5)), ValueError, ["logit_bias", "(5,)", "(3, 4)"]),
    (dict(logit_bias=np.array([0.0, np.inf, 0.0, 0.0])), ValueError, ["logit_bias", "-inf"]),
    (dict(seed=[1, 2]), ValueError, ["seed", "one int per row", "(2,)"]),
    (dict(seed=[1, -2, 3]), ValueError, ["seed[1]", "-2"]),
    (dict(seed=np.array([1.0, 2.0, 3.0])), TypeError, ["seed", "float64"]),
    (dict(top_logprobs=2), ValueError, ["top_logprobs", "return_logprobs=True"]),
    (dict(return_logprobs=True, top_logprobs=5), ValueError, ["top_logprobs", "4"]),
    (dict(return_logprobs=True, top_logprobs=-1), ValueError, ["top_logprobs", ">= 0"]),
    (dict(return_logprobs=1), TypeError, ["return_logprobs"]),
    (dict(return_logprobs=True, logprobs_mode="log"), ValueError,
     ["logprobs_mode", "'raw'", "'processed'"]),
]


@pytest.mark.parametrize("kwargs, exc, words", BAD_CALLS)
def test_bad_calls(kwargs, exc, words):
    assert_sample_refuses(x3, kwargs, exc, words)


def test_rows_of_a_batch_of_several_dimensions_are_named_by_index():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"temperature\[1, 0\]"):
        fastsoftmax.sample(x, temperature=np.array([[1.0] * 3, [-1.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"previous_tokens\[0, 2\] holds token id 9"):
        fastsoftmax.sample(x, previous_tokens=np.array([[[0], [1], [9]], [[0], [1], [2]]]))


def test_top_k_zero_or_none_is_off():
    x = random_logits(np.random.default_rng(44), (50, 30))
    off = fastsoftmax.sample(x, seed=3)
    np.testing.assert_array_equal(fastsoftmax.sample(x, seed=3, top_k=0), off)
    np.testing.assert_array_equal(fastsoftmax.sample(x, seed=3, top_k=np.zeros(50, int)), off)


def test_a_banned_token_is_banned_whatever_its_logit():
    # +inf + -inf would be NaN (an error): a ban is a ban, as a mask is
    x = np.array([[np.inf, 0.0, 1.0], [np.nan, 0.0, 1.0], [np.inf, np.inf, 0.0]])
    drawn = fastsoftmax.sample(x, logit_bias={0: -np.inf}, seed=np.arange(3), temperature=0)
    assert drawn.tolist() == [2, 2, 1]
    assert reference.sample(x, logit_bias={0: -np.inf}, seed=np.arange(3),
                            temperature=0).tolist() == [2, 2, 1]
