"""Public function for picking the next token: :func:`sample` draws one index per row of
logits, with temperature, min-p, top-k and top-p filters, in one fused kernel per row.

The usual CPU pipeline (softmax, sort, cumulative sum, mask, multinomial) makes several full
passes and a full sort per row. Here every filter is a threshold on the row's unnormalised
probabilities, found by a bisection over their bits (no sort), and the draw is an inverse CDF
with one uniform number per row (:mod:`fastsoftmax.kernels.sampling`).
"""

from __future__ import annotations

from . import arguments, plan
from .registry import OPERATIONS
from .tensors import accepts_tensors

__all__ = ["sample"]


@accepts_tensors("logits", "where")
def sample(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, where=None,
           seed=None, axis=-1):
    """Draw one token index per row from ``softmax(logits / temperature)``, after filters.

    Parameters
    ----------
    logits : array_like
        Real numbers, at least 1-D; each row along ``axis`` is one distribution. float32 is
        computed in float32, float64 in float64, float16 and bfloat16 in float32 (widened
        first), bool and integers in float64. PyTorch tensors give a tensor of indices.
    temperature : float, default 1.0
        Positive and finite, or 0 for greedy decoding: the first index of the maximum
        (filters and ``seed`` then do not change the result).
    top_k : int >= 1, optional
        Keep the tokens whose logit is at least the k-th largest (all tokens tied with it).
    top_p : float in (0, 1], optional
        Nucleus sampling: keep the smallest set of most likely tokens whose probability mass
        reaches ``top_p`` (of what the filters before left), plus any token tied with the
        least likely of them.
    min_p : float in [0, 1], optional
        Keep the tokens whose probability is at least ``min_p`` times the largest one.
    where : array_like of bool, optional
        Broadcastable to ``logits``; False entries are never drawn (constrained decoding).
    seed : None, int or numpy.random.Generator, optional
        The source of randomness; one uniform number is drawn per row, in row order, so the
        same seed gives the same tokens whatever the thread count, and a Generator advances
        by the number of rows.
    axis : int or None, default -1
        The vocabulary axis. None treats the whole array as one row.

    Returns
    -------
    numpy.int64 or ndarray of int64
        The chosen indices along ``axis``: shape ``logits.shape`` without ``axis``; a scalar
        for 1-D input (or ``axis=None``).

    Raises
    ------
    ValueError
        For a NaN among a row's selected logits, or a row with no token that can be drawn
        (all -inf or masked out), naming the rows; for an empty vocabulary; for a bad
        temperature, ``top_k``, ``top_p`` or ``min_p``.

    Notes
    -----
    The filters apply in the order temperature, min_p, top_k, top_p, as Hugging Face
    transformers' logits warpers and vLLM, and each keeps every token tied at its threshold;
    the most likely token always survives. Ties are decided on the probabilities in the
    compute dtype. Tokens at +inf share the draw equally (the limit of the softmax), and
    masked-out NaN is ignored. Tokens whose probability underflows relative to the largest
    (below about exp(-87) in float32) are never drawn.

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
    """
    op = OPERATIONS["sample"]
    batch = arguments.prepare_sample(op, logits, temperature=temperature, top_k=top_k,
                                     top_p=top_p, min_p=min_p, where=where, seed=seed, axis=axis)
    return plan.run(op, batch)
