"""The registry of operations: each public function of fastsoftmax described once.

Every layer reads this table instead of naming operations itself: the argument layer takes
an operation's kernels from it, the plan its builds (serial, row-parallel, rows split across
threads) and split passes, :mod:`fastsoftmax.dask` the operations it can run on chunked rows,
:func:`fastsoftmax.warmup` the calls to compile ahead, the benchmark command
(:mod:`fastsoftmax.tools`) the cases and peers to time, and the tests the functions to check
against their references on every build. Adding an operation means a kernel body, a reference
function, the public function, and one entry here (``docs/design.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import arguments, reference
from .kernels import calibration, distill, grad, sampling, softmax, sparse
from .kernels.jit import KernelPair
from .tensors import is_tensor

BUILDS = ("serial", "parallel", "split")


@dataclass(frozen=True)
class Operation:
    """What the layers need to know about one public function.

    name
        The public function: ``fastsoftmax.<name>``.
    reference
        ``fastsoftmax.reference.<name>``: the same signature and semantics, in float64 NumPy.
    kernels
        Its row kernels (:class:`~fastsoftmax.kernels.jit.KernelPair`); each body serves
        float32, float64 and half-precision rows. The argument layer picks the one a call
        needs (the gradient or not, greedy or sampling).
    reduces
        One result per row: the axis goes away (logsumexp, the losses, sampling).
    split_finish
        The last pass of the operation over rows cut into chunks, given each row's maximum
        and sum of exponentials (:mod:`fastsoftmax.kernels.softmax`); None when its rows are
        never split. Operations with one run split across threads, and on dask arrays.
    split_keeps_exps
        The split run's sum pass stores the exponentials in the output, and ``split_finish``
        scales them (softmax), instead of computing them twice.
    split_log_sum
        ``split_finish`` takes the logarithm of each row's sum, computed as the row kernels
        compute it (log1p where the maximum dominates: log_softmax, logsumexp).
    calls
        Example calls on a 2-D batch of logits ``x``: ``call(x) -> (args, kwargs)`` for the
        public function and its reference. One call per kernel: warmup compiles them, the
        tests run them on every build.
    bench
        Benchmark cases: case name -> keyword arguments (or a function of the input batch
        giving them: parameters of one value per row), with the positional arguments of the
        first example call.
    peers
        Other libraries with the same function, timed by the benchmarks
        (:mod:`fastsoftmax.tools.peers` implements each).
    bench_shapes
        The (rows, columns) its benchmark cases run on when they differ from the common
        shapes of :mod:`fastsoftmax.tools.bench` (empty: those).
    bench_reference
        Whether the benchmarks time its NumPy reference too (False where that takes minutes).
    dask_whole_rows
        :mod:`fastsoftmax.dask` runs it on dask arrays whose rows it first rechunks whole
        (an operation without a split pass; with one, rows are never rechunked).
    columns
        Its kernel over rows along a strided axis (``axis=0`` of a C-ordered array), tiles of
        columns through its row kernel (kernels/softmax.py); None: such rows are copied into
        place first.
    columns_read_in_place
        Its kernel over float32/float64 rows along a strided axis that reads the columns where
        they are, vectorised across them, instead of transposing tiles (same results within
        the reference's bounds, not the same bits as the rows moved last); None: ``columns``
        for every dtype.
    contiguous_call
        Its first row kernel's serial build for the most frequent call, ``(x, out)`` of
        C-contiguous arrays (kernels/softmax.py, ``contiguous_call``); None: the operation
        has no such call (the softmax family has).
    bench_call
        ``(x, case keyword arguments) -> (args, kwargs)``: the call its benchmark cases time,
        when not the first example call with the case's arguments (linear_cross_entropy: a
        weight of the case's number of classes).
    """

    name: str
    reference: Callable
    kernels: tuple[KernelPair, ...]
    calls: tuple[Callable, ...]
    reduces: bool = False
    split_finish: KernelPair | None = None
    split_keeps_exps: bool = False
    split_log_sum: bool = False
    bench: dict = field(default_factory=dict)
    peers: tuple[str, ...] = ()
    bench_shapes: tuple = ()
    bench_reference: bool = True
    dask_whole_rows: bool = False
    columns: KernelPair | None = None
    columns_read_in_place: KernelPair | None = None
    contiguous_call: Callable | None = None
    bench_call: Callable | None = None

    @property
    def builds(self) -> tuple[str, ...]:
        """The builds the plan can run this operation with."""
        return BUILDS if self.split_finish is not None else BUILDS[:2]

    def public(self) -> Callable:
        """``fastsoftmax.<name>`` (looked up when asked: the public modules import this one)."""
        import fastsoftmax
        return getattr(fastsoftmax, self.name)


def _rows(x):
    return (x,), {}


def _targets(x) -> np.ndarray:
    """Class indices for the rows of ``x`` (fixed seed): a cross-entropy call's targets."""
    rows = int(np.prod(np.shape(x)[:-1]))
    return np.random.default_rng(1).integers(0, np.shape(x)[-1], rows)


def _weights(x) -> np.ndarray:
    """Weights of both signs, some 0, for the rows of ``x`` (fixed seed): SciPy's ``b``."""
    dtype = getattr(x, "dtype", np.float32)  # x's own (bfloat16 bits: float32)
    dtype = dtype if np.dtype(dtype).kind == "f" or dtype.name == "bfloat16" else np.float32
    return np.random.default_rng(2).choice([-0.5, 0.0, 1.0, 2.0],
                                           size=np.shape(x)[-1]).astype(dtype)


def _class_weights(x) -> np.ndarray:
    """A positive weight per class of ``x`` (fixed seed): a cross-entropy's ``weight``."""
    return np.random.default_rng(3).uniform(0.5, 2.0, np.shape(x)[-1]).astype(np.float32)


def _probabilities(x) -> np.ndarray:
    """A probability distribution over the classes of each row of ``x`` (fixed seed, some
    classes 0): a cross-entropy's probability targets."""
    rng = np.random.default_rng(4)
    p = rng.exponential(size=np.shape(x)) * (rng.random(np.shape(x)) < 0.7)
    p[..., 0] += 1e-3  # no row of zeros
    dtype = np.float64 if getattr(x, "dtype", None) == np.float64 else np.float32
    return (p / p.sum(axis=-1, keepdims=True)).astype(dtype)


def _linear_layer(x, classes=None):
    """(hidden, weight, bias, targets) of a linear cross-entropy of the rows of ``x`` (the
    hidden states, fixed seed): a weight of ``classes`` (LINEAR_CLASSES) classes scaled so
    that the logits spread as logits do, a bias, and class indices."""
    rng = np.random.default_rng(5)
    classes = classes or LINEAR_CLASSES
    features = np.shape(x)[-1]
    dtype = getattr(x, "dtype", np.float32)  # x's own (bfloat16 bits: float32)
    dtype = dtype if np.dtype(dtype).kind == "f" or dtype.name == "bfloat16" else np.float32
    weight = rng.standard_normal((classes, features), np.float32) / np.float32(
        np.sqrt(features))
    bias = rng.uniform(-1.0, 1.0, classes).astype(dtype)
    rows = int(np.prod(np.shape(x)[:-1]))
    return x, weight.astype(dtype, copy=False), bias, rng.integers(0, classes, rows)


def _linear_bench_call(x, kwargs):
    """A benchmark case of linear_cross_entropy: hidden states ``x``, a weight of
    ``kwargs["classes"]`` classes, or fewer when it would hold more than 32 times the
    elements of ``x`` (the cut-down hidden states of a smoke test get a cut-down weight)."""
    kwargs = dict(kwargs)
    classes = min(kwargs.pop("classes"), 32 * int(np.prod(np.shape(x)[:-1])))
    hidden, weight, _, targets = _linear_layer(x, classes)
    return (hidden, weight, targets), kwargs


LINEAR_CLASSES = 37


def _linear_calls():
    """The example calls of linear_cross_entropy: the loss, and the loss and gradients with
    the options."""
    def loss(x):
        hidden, weight, _, targets = _linear_layer(x)
        return (hidden, weight, targets), {}

    def with_grad(x):
        hidden, weight, bias, targets = _linear_layer(x)
        return (hidden, weight, targets), {"bias": bias, "return_grad": True,
                                           "label_smoothing": 0.1, "z_loss": 1e-3,
                                           "softcap": 20.0, "chunk_size": 3}
    return loss, with_grad


def _drawn_labels(x) -> np.ndarray:
    """Class indices drawn from ``softmax(x / 2)`` for the rows of ``x`` (fixed seed, by the
    Gumbel-max trick, a few thousand rows at a time): the labels of a model whose logits are
    twice too confident, so that a fitted temperature lands near 2, not at a bound."""
    values = arguments.widen_bits(x.bits) if isinstance(x, arguments.Bfloat16Bits) else x
    rows = np.asarray(values).reshape(-1, np.shape(x)[-1])
    rng = np.random.default_rng(1)
    labels = np.empty(len(rows), np.int64)
    tiny = np.finfo(np.float32).tiny
    for start in range(0, len(rows), 4096):
        block = rows[start:start + 4096].astype(np.float32)
        uniform = np.clip(rng.random(block.shape, np.float32), tiny, 1 - 2**-24)
        labels[start:start + 4096] = np.argmax(block / 2 - np.log(-np.log(uniform)), axis=-1)
    return labels


def _teacher(x):
    """Teacher logits for the student rows ``x``: its classes rotated by one, in the same
    type and dtype (an ndarray, a tensor, bfloat16 bits), so that each pair of rows differs."""
    if isinstance(x, arguments.Bfloat16Bits):
        return arguments.Bfloat16Bits(np.roll(x.bits, 1, axis=-1))
    if is_tensor(x):
        return x.roll(1, -1)
    return np.roll(x, 1, axis=-1)


def _distillation_calls(*options):
    """The example calls of a distillation loss: the loss, then the loss and its gradient
    with each of ``options``."""
    return ((lambda x: ((x, _teacher(x)), {}),)
            + tuple((lambda x, o=o: ((x, _teacher(x)), dict(o, return_grad=True)))
                    for o in options))


def _row_alphas(x) -> np.ndarray:
    """One α per row of ``x``: softmax's 1, sparsemax's 2 and others between and beyond."""
    rows = np.shape(x)[:-1]
    return np.resize(np.array([1.5, 1.0, 2.0, 1.25, 3.0]), rows)


def _loss_calls(row_alphas=False):
    """The example calls of a loss over rows: the loss, and the loss with its gradient (and
    one α per row with ``row_alphas``)."""
    def with_grad(x):
        options = {"alpha": _row_alphas(x)} if row_alphas else {}
        return (x, _targets(x)), dict(options, return_grad=True)
    return (lambda x: ((x, _targets(x)), {}), with_grad)

def _serving_batch(x, *, penalties=True, logprobs=False) -> dict:
    """Keyword arguments of a serving engine's batch for the rows of ``x`` (fixed seed): a
    different temperature (a greedy row among them), top_p and top_k in every row, one seed
    per row and, with ``penalties``, a 512-token history per row (fewer for short rows) with
    repetition, presence and frequency penalties and a logit bias."""
    n_rows, n_cols = int(np.prod(np.shape(x)[:-1])), np.shape(x)[-1]
    row_shape = np.shape(x)[:-1]
    rng = np.random.default_rng(4)
    per_row = lambda values: values.reshape(row_shape)  # noqa: E731
    temperature = rng.uniform(0.6, 1.2, n_rows)
    temperature[::16] = 0.0  # greedy requests in the batch
    kwargs = dict(temperature=per_row(temperature),
                  top_p=per_row(rng.uniform(0.8, 0.98, n_rows)),
                  top_k=per_row(rng.integers(20, 100, n_rows)),
                  seed=per_row(np.arange(n_rows) + 1000))
    if penalties:
        kwargs.update(
            previous_tokens=rng.integers(0, n_cols, row_shape + (min(512, 2 * n_cols),)),
            repetition_penalty=per_row(rng.uniform(1.05, 1.3, n_rows)),
            presence_penalty=per_row(rng.uniform(0.0, 0.5, n_rows)),
            frequency_penalty=per_row(rng.uniform(0.0, 0.5, n_rows)),
            logit_bias={0: -np.inf, n_cols - 1: 2.0})
    if logprobs:
        kwargs.update(return_logprobs=True, top_logprobs=min(5, n_cols))
    return kwargs


OPERATIONS = {op.name: op for op in (
    Operation(
        "softmax", reference.softmax, (softmax.softmax_rows,), (_rows,),
        split_finish=softmax.softmax_finish, split_keeps_exps=True,
        # softmax_axis0: along the first axis of a C-ordered batch (rows of columns, read in
        # place), timed on the transposed shape of softmax's
        bench={"softmax": {}, "softmax_axis0": {"axis": 0}},
        peers=("scipy", "torch", "jax"), columns=softmax.softmax_columns,
        columns_read_in_place=softmax.softmax_columns_direct,
        contiguous_call=softmax.softmax_call),
    Operation(
        "log_softmax", reference.log_softmax, (softmax.log_softmax_rows,), (_rows,),
        split_finish=softmax.log_softmax_finish, split_log_sum=True, bench={"log_softmax": {}},
        peers=("scipy", "torch", "jax"), columns=softmax.log_softmax_columns,
        contiguous_call=softmax.log_softmax_call),
    Operation(
        "logsumexp", reference.logsumexp,
        (softmax.logsumexp_rows, softmax.weighted_logsumexp_rows),
        (_rows, lambda x: ((x,), {"b": _weights(x), "return_sign": True})), reduces=True,
        split_finish=softmax.logsumexp_finish, split_log_sum=True, bench={"logsumexp": {}},
        peers=("scipy", "torch", "jax"), columns=softmax.logsumexp_columns,
        contiguous_call=softmax.logsumexp_call),
    # the backward passes: any values stand for the saved output as far as the kernels care
    Operation(
        "softmax_backward", reference.softmax_backward, (grad.softmax_backward_rows,),
        (lambda x: ((x, x), {}),)),
    Operation(
        "log_softmax_backward", reference.log_softmax_backward,
        (grad.log_softmax_backward_rows,), (lambda x: ((x, x), {}),)),
    Operation(
        "cross_entropy", reference.cross_entropy,
        (grad.cross_entropy_rows, grad.cross_entropy_grad_rows),
        (lambda x: ((x, _targets(x)), {}),
         lambda x: ((x, _targets(x)), {"return_grad": True, "label_smoothing": 0.1}),
         # the options: compiled in where they are given, away where not
         lambda x: ((x, _targets(x)), {"return_grad": True, "weight": _class_weights(x),
                                       "label_smoothing": 0.05, "z_loss": 1e-3,
                                       "softcap": 20.0, "return_lse": True}),
         lambda x: ((x, _probabilities(x)), {"weight": _class_weights(x), "z_loss": 1e-3,
                                             "softcap": 20.0, "return_lse": True}),
         lambda x: ((x, _probabilities(x)), {"return_grad": True, "label_smoothing": 0.1})),
        reduces=True, bench={"cross_entropy": {}, "cross_entropy_grad": {"return_grad": True}},
        peers=("torch",)),
    Operation(
        "sample", reference.sample, (sampling.sample_rows,),
        (lambda x: ((x,), {"temperature": 0.8, "top_p": 0.9, "seed": 0}),
         lambda x: ((x,), {"temperature": 0}),
         lambda x: ((x,), _serving_batch(x, logprobs=True))),
        reduces=True,
        bench={"sample_top_p": {"temperature": 0.8, "top_p": 0.9, "seed": 0},
               "sample_top_k": {"top_k": 50, "seed": 0},
               "sample": {"temperature": 0.8, "seed": 0},
               # a serving batch: parameters of every row's own, penalties (issue 17), against
               # the same rows with one set of parameters and none
               "sample_uniform": {"temperature": 0.9, "top_p": 0.9, "top_k": 60, "seed": 0},
               "sample_mixed": _serving_batch,
               "sample_mixed_logprobs": lambda x: _serving_batch(x, logprobs=True)},
        peers=("torch",)),
    # the cross-entropy of a linear layer, its logits computed a chunk of rows at a time: the
    # cross-entropy's kernels (the matrix products are NumPy's); x stands for hidden states
    Operation(
        "linear_cross_entropy", reference.linear_cross_entropy,
        (grad.cross_entropy_rows, grad.cross_entropy_grad_rows), _linear_calls(),
        reduces=True,
        # LLM training: 4096 tokens of 1024 features, 32000 and 128256 classes, loss and
        # gradients; against PyTorch's unfused F.cross_entropy(h @ W.T) + backward() and its
        # chunked F.linear_cross_entropy. Seconds a call: not in the quick benchmark.
        bench={"linear_cross_entropy_32k": {"classes": 32000, "return_grad": True},
               "linear_cross_entropy_128k": {"classes": 128256, "return_grad": True}},
        peers=("torch", "torch-chunked"), bench_shapes=((4096, 1024),),
        bench_reference=False, bench_call=_linear_bench_call),
    # calibration: a model's logits (rows of classes) and, but for confidence, labels
    Operation(
        "confidence", reference.confidence, (calibration.confidence_rows,),
        (_rows, lambda x: ((x,), {"temperature": 1.5})), reduces=True,
        bench={"confidence": {}}, peers=("torch",), dask_whole_rows=True),
    Operation(
        "fit_temperature", reference.fit_temperature, (calibration.temperature_nll_rows,),
        (lambda x: ((x, _drawn_labels(x)), {}),), reduces=True,
        bench={"fit_temperature": {}}, peers=("torch",),
        # a validation set: many rows of a classifier's classes (one fit reads it ~5 times);
        # the reference's bisection makes ~50 float64 passes: over a minute a call there
        bench_shapes=((10000, 100), (100000, 1000)), bench_reference=False),
    Operation(
        "calibration_error", reference.calibration_error, (calibration.confidence_rows,),
        (lambda x: ((x, _targets(x)), {}),
         lambda x: ((x, _targets(x)), {"binning": "quantile", "norm": "l2", "n_bins": 4})),
        reduces=True, dask_whole_rows=True),
    Operation(
        "reliability", reference.reliability, (calibration.confidence_rows,),
        (lambda x: ((x, _targets(x)), {"binning": "quantile", "n_bins": 5}),), reduces=True),
    # the sparse family: one kernel for every α, exact threshold (α = 2, 1.5) or bisection
    Operation(
        "sparsemax", reference.sparsemax, (sparse.entmax_rows,), (_rows,),
        bench={"sparsemax": {}}, peers=("entmax",)),
    Operation(
        "entmax15", reference.entmax15, (sparse.entmax_rows,), (_rows,),
        bench={"entmax15": {}}, peers=("entmax",)),
    Operation(
        "entmax_bisect", reference.entmax_bisect, (sparse.entmax_rows,),
        (_rows, lambda x: ((x,), {"alpha": _row_alphas(x)})),
        bench={"entmax_bisect": {}}, peers=("entmax",)),
    Operation(
        "sparsemax_backward", reference.sparsemax_backward, (sparse.entmax_backward_rows,),
        (lambda x: ((x, x), {}),)),
    Operation(
        "entmax_backward", reference.entmax_backward, (sparse.entmax_backward_rows,),
        (lambda x: ((x, x), {}), lambda x: ((x, x), {"alpha": _row_alphas(x)}))),
    Operation(
        "sparsemax_loss", reference.sparsemax_loss,
        (sparse.entmax_loss_rows, sparse.entmax_loss_grad_rows), _loss_calls(), reduces=True),
    Operation(
        "entmax15_loss", reference.entmax15_loss,
        (sparse.entmax_loss_rows, sparse.entmax_loss_grad_rows), _loss_calls(), reduces=True),
    Operation(
        "entmax_bisect_loss", reference.entmax_bisect_loss,
        (sparse.entmax_loss_rows, sparse.entmax_loss_grad_rows),
        _loss_calls(row_alphas=True), reduces=True),
    # distillation: a student's logits (the first argument, the gradient's) and a teacher's
    Operation(
        "kl_div", reference.kl_div, (distill.distill_rows, distill.distill_grad_rows),
        _distillation_calls({"temperature": 2.0}, {"reverse": True}), reduces=True,
        bench={"kl_div": {}, "kl_div_grad": {"return_grad": True}}, peers=("torch",)),
    Operation(
        "jsd", reference.jsd, (distill.distill_rows, distill.distill_grad_rows),
        _distillation_calls({"beta": 0.3, "temperature": 2.0}), reduces=True,
        bench={"jsd": {}, "jsd_grad": {"return_grad": True}}, peers=("torch",)),
)}


def operation(name: str, func: str = "fastsoftmax") -> Operation:
    """The operation called ``name``; ValueError naming the known ones otherwise."""
    try:
        return OPERATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"{func}: unknown function {name!r}; expected one of "
                         f"{', '.join(OPERATIONS)}") from None


def bench_cases() -> dict[str, tuple[Operation, dict]]:
    """Every benchmark case of every operation: case name -> (operation, keyword arguments)."""
    return {case: (op, kwargs) for op in OPERATIONS.values() for case, kwargs in op.bench.items()}
