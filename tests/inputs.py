"""The one generator of hard inputs for every test file: logits of a realistic spread, special
values, the rows of the edge-case table, layouts (strides, byte order, read-only), dtypes
(bfloat16 included), shapes on both sides of every threshold of the plan, and hypothesis
strategies over all of these."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastsoftmax import plan
from fastsoftmax.kernels.numerics import BLOCK
from fastsoftmax.kernels.sampling import GATHER

try:
    import ml_dtypes
except ImportError:  # the bf16 extra is absent: bfloat16 cases are left out
    ml_dtypes = None

inf, nan = np.inf, np.nan
FLOAT_DTYPES = ("float32", "float64")
HALF_DTYPES = ("float16",) + (("bfloat16",) if ml_dtypes else ())
DTYPES = FLOAT_DTYPES + HALF_DTYPES
# The edge-case table of the README ("Values at the edges"):
# row -> (softmax, log_softmax, logsumexp)
EDGE_ROWS = {
    "finite": ([0.0, np.log(3.0)], [0.25, 0.75], [np.log(0.25), np.log(0.75)], np.log(4.0)),
    "some -inf": ([-inf, 0.0, 0.0], [0.0, 0.5, 0.5], [-inf, np.log(0.5), np.log(0.5)],
                  np.log(2.0)),
    "all -inf": ([-inf, -inf], [nan, nan], [nan, nan], -inf),
    "one +inf": ([inf, 0.0], [nan, nan], [nan, nan], inf),
    "two +inf": ([inf, inf, 1.0], [nan, nan, nan], [nan, nan, nan], inf),
    "+inf and -inf": ([inf, -inf], [nan, nan], [nan, nan], inf),
    "NaN": ([nan, 1.0], [nan, nan], [nan, nan], nan),
    "NaN and +inf": ([inf, nan], [nan, nan], [nan, nan], nan),
    "NaN and -inf": ([-inf, nan], [nan, nan], [nan, nan], nan),
    "single element": ([5.0], [1.0], [0.0], 5.0),
}

# Values that break naive code: infinities, NaN, magnitudes near overflow, subnormals, zeros.
SPECIAL = [inf, -inf, nan, 1e30, -1e30, 5e-324, -1e-310, 1e-40, 0.0, -0.0]


def dtype_of(name) -> np.dtype:
    """A dtype by name, bfloat16 from ml_dtypes."""
    if str(name) == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def random_logits(rng, shape, dtype=np.float64, scale=5.0):
    """Random values of a realistic logit spread, in ``dtype`` (rounded for integers)."""
    x = rng.standard_normal(shape) * scale
    dtype = dtype_of(dtype)
    if dtype.kind in "iu":
        return np.round(x).astype(dtype)
    if dtype.kind == "b":
        return x > 0
    return x.astype(dtype)


def hard_logits(rng, shape, dtype, *, sampleable=False):
    """Random logits of ``shape`` (2-D) with special rows among ordinary ones: a +inf, a row
    of -inf only, a NaN, -inf entries, ties, huge values. ``sampleable``: every row keeps a
    finite or +inf maximum and no NaN (rows ``fastsoftmax.sample`` can draw from)."""
    x = random_logits(rng, shape, np.float64, scale=3.0)
    n_rows, n_cols = shape
    specials = [
        lambda row: row.__setitem__(n_cols // 2, inf),          # a +inf: NaN row / +inf
        lambda row: row.__setitem__(slice(None, None, 3), -inf),  # -inf entries
        lambda row: row.__setitem__(slice(None), row[0]),        # all tied
        lambda row: row.__setitem__(slice(None, None, 7), 1e30),  # huge values
    ]
    if not sampleable:
        specials += [lambda row: row.__setitem__(slice(None), -inf),  # only -inf
                     lambda row: row.__setitem__(n_cols - 1, nan)]    # a NaN
    for r, special in zip(range(1, n_rows, 2), specials):
        special(x[r])
    if n_rows == 1:  # one long row: its results stay meaningful, with some -inf entries
        x[0, 1::5] = -inf
    with np.errstate(over="ignore"):
        return x.astype(dtype_of(dtype))


def dominated_logits(rng, shape, dtype, gap):
    """Rows whose maximum, near 0, outweighs all the others together: every other element at
    least ``gap`` below it (a confident model's log-probabilities). logsumexp of such a row
    is tiny and log_softmax of its maximum too: only log1p of the others keeps them."""
    x = -gap - np.abs(rng.standard_normal(shape)) * 3.0
    top = rng.integers(0, shape[-1], shape[:-1])
    np.put_along_axis(x, top[..., None], rng.uniform(-1e-3, 1e-3, shape[:-1] + (1,)), axis=-1)
    return x.astype(dtype_of(dtype))


def mask_for(rng, shape, *, keep_every_row=False):
    """A random ``where`` mask of ``shape``; its third row selects nothing unless
    ``keep_every_row`` (then every row keeps its first element)."""
    mask = rng.random(shape) > 0.3
    if keep_every_row:
        mask[..., 0] = True
    elif len(shape) == 2 and shape[0] > 2:
        mask[2] = False
    return mask


def layouts(x: np.ndarray):
    """Yield (description, array) views of ``x`` with the same values in other layouts."""
    yield "C-contiguous", x
    yield "Fortran", np.asfortranarray(x)
    if x.ndim >= 2:
        padded = np.zeros(x.shape[:-1] + (x.shape[-1] + 3,), x.dtype)
        padded[..., 1:-2] = x
        yield "row-padded slice", padded[..., 1:-2]
        yield "transposed copy, transposed back", \
            np.ascontiguousarray(x.swapaxes(0, -1)).swapaxes(0, -1)
    strided = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    strided[..., ::2] = x
    yield "every other column", strided[..., ::2]
    yield "negative stride", np.ascontiguousarray(x[::-1])[::-1]
    if x.dtype.kind != "V":  # ml_dtypes has no byte-swapped bfloat16
        yield "byte-swapped", x.astype(x.dtype.newbyteorder(">" if x.dtype.byteorder in "=<"
                                                           else "<"))
    readonly = x.copy()
    readonly.flags.writeable = False
    yield "read-only", readonly


# --- sizes around the thresholds ----------------------------------------------------------------
# Each build is forced on every shape (tests/test_builds.py), and the plan would pick each
# somewhere: serial up to SERIAL_MAX_ELEMENTS, rows split from SPLIT_MIN_COLS columns with
# fewer rows than threads, row-parallel otherwise. The shapes also cross the kernels' own
# boundaries: the BLOCK of a sum, the chunks of a split row, a sampler's GATHER candidates.

def threshold_shapes():
    serial = plan.SERIAL_MAX_ELEMENTS
    split = plan.SPLIT_MIN_COLS
    return [
        (1, 1000),                       # one short row
        (7, BLOCK - 1), (3, BLOCK + 1),  # a partial block
        (1, serial), (1, serial + 1),    # the serial threshold, one row
        (3, serial // 3 + 1),            # just above it, rows across threads
        (5, GATHER * 3 + 17),            # a sampler's candidates gathered
        (1, split - 1), (1, split + 3),  # one row just below and above splitting
        (3, plan.SPLIT_CHUNK + 7),       # several rows of more than one chunk
    ]


# --- hypothesis --------------------------------------------------------------------------------

@st.composite
def logits_arrays(draw, dtypes=("float32", "float64", "float16", "int32", "uint8", "bool"),
                  max_dims=3):
    """Arrays of random logits with a drawn fraction of special values, in a drawn dtype,
    shape (0-sized included) and layout (reversed, transposed, strided, read-only)."""
    dtype = dtype_of(draw(st.sampled_from(dtypes)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=0, max_side=6))
    if draw(st.booleans()):  # now and then a longer last axis
        shape = shape[:-1] + (draw(st.integers(7, 3000)),)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape) * draw(st.sampled_from([0.1, 3.0, 30.0]))
    chosen = rng.random(shape) < draw(st.sampled_from([0.0, 0.01, 0.3]))
    x[chosen] = rng.choice(SPECIAL, size=int(chosen.sum()))
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype.kind in "iub":
            x = np.nan_to_num(x, posinf=0, neginf=0).clip(0 if dtype.kind != "i" else -99, 99)
        x = x.astype(dtype)
    layout = draw(st.sampled_from(["plain", "reversed", "transposed", "strided", "readonly"]))
    if layout == "reversed":
        x = x[::-1]
    elif layout == "transposed" and x.ndim > 1:
        x = np.ascontiguousarray(x.T).T
    elif layout == "strided":
        wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    elif layout == "readonly":
        x = x.copy()
        x.flags.writeable = False
    return x
