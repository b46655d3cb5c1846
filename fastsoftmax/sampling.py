"""Public function for picking the next token: :func:`sample` draws one index per row of
logits, each row with its own temperature, filters (min-p, top-k, top-p, typical-p,
top-n-sigma), penalties, logit bias and seed, optionally with log-probabilities, in one fused
kernel per row.

The usual CPU pipeline (penalties by scatter, softmax, sort, cumulative sum, mask,
multinomial) makes several full passes and a full sort per row. Here the penalties and biases
edit a scratch copy of the row (the caller's logits are never written), every filter is a
threshold (or, for typical-p, an interval) on the row's unnormalised probabilities, found by a
bisection (no sort), and the draw is an inverse CDF with one uniform number per row
(:mod:`fastsoftmax.kernels.sampling`).
"""

from __future__ import annotations

from . import arguments, plan
from .reference import Sampled
from .registry import OPERATIONS
from .tensors import accepts_tensors

__all__ = ["sample", "Sampled"]


@accepts_tensors("logits", "where", "temperature", "top_k", "top_p", "min_p", "typical_p",
                 "top_n_sigma", "repetition_penalty", "presence_penalty", "frequency_penalty",
                 "previous_tokens", "logit_bias", "seed")
def sample(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, typical_p=None,
           top_n_sigma=None, repetition_penalty=1.0, presence_penalty=0.0,
           frequency_penalty=0.0, previous_tokens=None, logit_bias=None, where=None, seed=None,
           axis=-1, return_logprobs=False, top_logprobs=0, logprobs_mode="raw"):
    """Draw one token index per row from ``softmax(logits / temperature)``, after penalties,
    bias and filters; every parameter is one value for the batch or one per row.

    Parameters
    ----------
    logits : array_like
        Real numbers, at least 1-D; each row along ``axis`` is one distribution. float32 is
        computed in float32, float64 in float64, float16 and bfloat16 in float32 (widened
        first), bool and integers in float64. PyTorch tensors give tensors. Never modified.
    temperature : float or array_like, default 1.0
        Positive and finite, or 0 for greedy decoding of that row: the first index of the
        maximum of its (biased, penalised) logits; its filters and seed then change nothing.
    top_k : int or array_like of int, optional
        Keep the tokens whose probability is at least the k-th largest (all tokens tied with
        it). 0 or None: no top-k (vLLM's convention).
    top_p : float in (0, 1] or array_like, optional
        Nucleus sampling: keep the smallest set of most likely tokens whose probability mass
        reaches ``top_p`` (of what the filters before left), plus any token tied with the
        least likely of them. 1 or None: off.
    min_p : float in [0, 1] or array_like, optional
        Keep the tokens whose probability is at least ``min_p`` times the largest one.
    typical_p : float in (0, 1] or array_like, optional
        Locally typical sampling (Hugging Face's ``TypicalLogitsWarper``): rank the tokens
        left by ``|-log p - H|`` (``H``: the entropy of what is left) and keep the smallest set
        of the best ranked reaching ``typical_p`` of the mass, with the ties of the last one.
        1 or None: off.
    top_n_sigma : positive float or array_like, optional
        Keep the tokens whose logit is at least ``max - top_n_sigma * std``, the standard
        deviation over the row's finite (selected) logits (Tang et al. 2024). inf or None: off.
    repetition_penalty : positive float or array_like, default 1.0
        For each token of ``previous_tokens``: a positive logit divided by it, a negative one
        multiplied (CTRL, Hugging Face, vLLM). 1: off.
    presence_penalty, frequency_penalty : float or array_like, default 0.0
        Subtracted from the logit of each token of ``previous_tokens`` once (presence) and
        once per occurrence (frequency), as in the OpenAI API and vLLM. 0: off.
    previous_tokens : array_like of int, or sequence of 1-D arrays, optional
        The tokens generated so far by each row, whose logits the penalties change: an
        integer array of the row shape plus one axis, padded with -1, or one 1-D array per
        row (rows in C order). Required when a penalty is set.
    logit_bias : dict, sequence of dicts, or array_like, optional
        Added to the logits before the penalties: ``{token: bias}`` for every row, one such
        dict (or None) per row, or an array broadcastable to ``logits``. Biases are finite or
        -inf: a banned token, whose logit becomes -inf whatever it was (+inf or NaN too).
    where : array_like of bool, optional
        Broadcastable to ``logits``; False entries are never drawn (constrained decoding) and
        are left out of every statistic (their log-probability is -inf).
    seed : None, int, numpy.random.Generator, or array_like of int
        The source of randomness: one uniform number per row. An int, None or a Generator
        draws them in row order from one stream (a Generator advances by the number of
        rows; None is the process's own Generator, seeded from the OS once per process and
        again in a forked child). One int per row in [0, 2**64) (an array of the row shape): row ``r`` draws
        ``u = (splitmix64(seed[r]) >> 11) / 2**53``, SplitMix64's output for the counter
        ``seed[r]`` (Java's ``SplittableRandom``), so a request draws the same token whatever
        its neighbours and its place in the batch; give it a new seed at each step (e.g.
        ``request_seed * 2**32 + step``). The same seed gives the same tokens whatever the
        threads.
    axis : int or None, default -1
        The vocabulary axis. None treats the whole array as one row.
    return_logprobs : bool, default False
        Return a :class:`Sampled` named tuple ``(tokens, logprobs, top_tokens,
        top_logprobs)`` instead of the tokens: the log-probability of each drawn token, and
        each row's most likely tokens with theirs (the OpenAI API's ``logprobs`` and
        ``top_logprobs``), computed in the same pass.
    top_logprobs : int >= 0, default 0
        With ``return_logprobs``, the number of most likely tokens reported per row (most
        likely first; ties to the lower index): ``top_tokens`` and ``top_logprobs`` have the
        row shape plus this axis.
    logprobs_mode : {"raw", "processed"}, default "raw"
        "raw" (vLLM's default): ``log_softmax`` of the logits as given (with ``where``).
        "processed": the log of the distribution the token is drawn from, after bias,
        penalties, temperature and filters (``-inf`` for the tokens filtered out; a greedy
        row puts 0 on its token).

    Returns
    -------
    numpy.int64, ndarray of int64, or Sampled
        The chosen indices along ``axis``: shape ``logits.shape`` without ``axis``; a scalar
        for 1-D input (or ``axis=None``). With ``return_logprobs``, a :class:`Sampled` whose
        log-probabilities are float32 for float32 and half-precision logits, else float64.

    Raises
    ------
    ValueError
        For a NaN among a row's selected (biased, penalised) logits, or a row with no token
        that can be drawn (all -inf or masked out), naming the rows; for an empty vocabulary;
        for a bad value of a parameter, naming it and, in an array, its row; for a token id
        outside the vocabulary in ``previous_tokens`` or ``logit_bias``.
    TypeError
        For an argument of the wrong kind (a float ``top_k``, a string ``top_p``, a
        ``seed`` that is not an int).

    Notes
    -----
    Order, as vLLM documents it: logit bias; repetition, then frequency and presence
    penalties; temperature (greedy rows stop here: first argmax); then the filters
    top-n-sigma, min-p (both relative to the maximum: they commute), top-k, top-p, typical-p,
    each keeping every token tied at its threshold; the most likely token always survives.
    Ties are decided on the probabilities in the compute dtype. Tokens at +inf share the draw
    equally (the limit of the softmax), and so their log-probability is ``-log(count)`` in
    both modes; masked-out NaN is ignored. Tokens whose probability underflows relative to the
    largest (below about exp(-87) in float32) are never drawn.

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import sample
    >>> logits = np.array([[1.0, 3.0, 2.0], [0.5, 0.5, -1.0]])
    >>> sample(logits, temperature=0)              # greedy: first index of the maximum
    array([1, 0])
    >>> sample(logits, top_k=1, seed=0)            # only the best token (and its ties) kept
    array([1, 0])
    >>> int(sample([0.0, 0.0, 5.0], where=[True, True, False], temperature=0))
    0
    >>> sample(logits, temperature=[0.0, 1.0], top_k=[0, 1], seed=[7, 8])  # one value a row
    array([1, 1])
    >>> sample(logits, temperature=0, previous_tokens=[[1, -1], [0, 0]],
    ...        repetition_penalty=4.0).tolist()       # 3 / 4 < 2; 0.5 / 4 < 0.5
    [2, 1]
    >>> out = sample(logits, temperature=0, return_logprobs=True, top_logprobs=2)
    >>> out.tokens, out.logprobs.round(3)           # raw: log_softmax of the logits
    (array([1, 0]), array([-0.408, -0.799]))
    >>> out.top_tokens
    array([[1, 2],
           [0, 1]])
    """
    op = OPERATIONS["sample"]
    batch = arguments.prepare_sample(
        op, logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        typical_p=typical_p, top_n_sigma=top_n_sigma, repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
        previous_tokens=previous_tokens, logit_bias=logit_bias, where=where, seed=seed,
        axis=axis, return_logprobs=return_logprobs, top_logprobs=top_logprobs,
        logprobs_mode=logprobs_mode)
    result = plan.run(op, batch)
    return Sampled(*result) if return_logprobs else result
