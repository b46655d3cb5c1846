"""Public function for picking the next token: :func:`sample` draws one index per row of
logits, with temperature, min-p, top-k and top-p filters, in one fused kernel per row.

The usual CPU pipeline (softmax, sort, cumulative sum, mask, multinomial) makes several full
passes and a full sort per row. Here every filter is a threshold on the row's unnormalised
probabilities, found by a bisection over their bits (no sort), and the draw is an inverse CDF
with one uniform number per row (:mod:`fastsoftmax.kernels.sampling`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import plan
from .interop import accepts_tensors
from .kernels.sampling import EMPTY_ROW, NAN_ROW
from .normalize import (_as_mask_rows, _as_rows, _move_axis_last, is_bfloat16,
                        normalize_axis, normalize_temperature, resolve_dtypes)

__all__ = ["sample"]
FUNC = "sample"


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
    x = _as_array(logits)
    if x.dtype.kind not in "biuf" and not is_bfloat16(x.dtype):
        raise TypeError(f"{FUNC}: logits must be real numbers (bool, integer or float), "
                        f"got dtype {x.dtype}")
    compute, _ = resolve_dtypes(x.dtype, None, FUNC)
    if x.ndim == 0:
        raise ValueError(f"{FUNC}: logits must have at least one dimension, got a 0-d array")
    axis = normalize_axis(axis, x.ndim, FUNC)
    greedy = _is_zero(temperature)
    inv_t = 1.0 if greedy else normalize_temperature(temperature, FUNC, compute)
    top_k = _check_top_k(top_k)
    top_p = _check_fraction("top_p", top_p, 1.0, low_open=True)
    min_p = _check_fraction("min_p", min_p, 0.0, low_open=False)
    rng = _generator(seed)

    x_moved = _move_axis_last(x, axis)
    n_cols = x_moved.shape[-1]
    row_shape = () if axis is None else x_moved.shape[:-1]  # None: one row, a scalar result
    n_rows = math.prod(row_shape)
    if n_cols == 0:
        raise ValueError(f"{FUNC}: logits have an empty vocabulary (axis {axis} has length 0)")
    mask, mask_stride = (None, 0) if where is None else _as_mask_rows(where, x.shape, axis, FUNC)
    u = rng.random(n_rows)
    if n_rows == 0:
        return np.empty(row_shape, np.int64)
    x_flat, x_stride = _as_rows(x_moved, compute)
    drawn = plan.run_sample(x_flat, x_stride, mask, mask_stride, n_rows, n_cols, inv_t, min_p,
                            top_k, top_p, u, greedy=greedy)
    _raise_for_bad_rows(drawn, row_shape)
    result = drawn.reshape(row_shape)
    return result[()] if result.ndim == 0 else result


def _as_array(logits):
    if isinstance(logits, np.ndarray):
        return logits
    try:
        return np.asarray(logits)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{FUNC}: logits must be array-like, got {type(logits).__name__}") \
            from exc


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_zero(temperature) -> bool:
    """Temperature 0 (greedy); anything else is left to ``normalize_temperature``."""
    return _is_number(temperature) and temperature == 0


def _check_top_k(top_k) -> int:
    """top_k as an int, 0 for None (no filter)."""
    if top_k is None:
        return 0
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"{FUNC}: top_k must be an int >= 1 or None, got {top_k!r}")
    if top_k < 1:
        raise ValueError(f"{FUNC}: top_k must be an int >= 1 or None, got {top_k!r}")
    return int(top_k)


def _check_fraction(name: str, value, default: float, low_open: bool) -> float:
    """A probability argument as a float (``default`` for None): in (0, 1] when ``low_open``,
    else [0, 1]."""
    interval = "(0, 1]" if low_open else "[0, 1]"
    if value is None:
        return default
    if not _is_number(value):
        raise TypeError(f"{FUNC}: {name} must be a number in {interval} or None, got {value!r}")
    v = float(value)
    if not ((0.0 < v if low_open else 0.0 <= v) and v <= 1.0):
        raise ValueError(f"{FUNC}: {name} must be a number in {interval} or None, "
                         f"got {value!r}")
    return v


def _generator(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, (bool, np.bool_))
                             or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"{FUNC}: seed must be None, an int or a numpy.random.Generator, "
                        f"got {type(seed).__name__}")
    try:
        return np.random.default_rng(seed)
    except ValueError as exc:
        raise ValueError(f"{FUNC}: seed {seed!r} is not valid: {exc}") from None


def _raise_for_bad_rows(drawn: np.ndarray, row_shape) -> None:
    """ValueError naming the rows the kernel could not sample (NaN first)."""
    for code, why in ((NAN_ROW, "a NaN logit"),
                      (EMPTY_ROW, "no token that can be sampled (all -inf or masked out)")):
        bad = np.flatnonzero(drawn == code)
        if bad.size:
            verb = "has" if bad.size == 1 else "have"
            raise ValueError(f"{FUNC}: {_name_rows(bad, row_shape)} {verb} {why}")


def _name_rows(flat_rows: np.ndarray, row_shape, limit: int = 10) -> str:
    """``row 3``, ``rows [3, 7]``, or index tuples for a batch of more than one dimension."""
    if len(row_shape) > 1:
        names = [tuple(int(i) for i in np.unravel_index(r, row_shape)) for r in flat_rows[:limit]]
    else:
        names = [int(r) for r in flat_rows[:limit]]
    more = f" and {flat_rows.size - limit} more" if flat_rows.size > limit else ""
    if flat_rows.size == 1:
        return f"row {names[0]}" if row_shape else "the row"
    return f"rows {names}{more}"
