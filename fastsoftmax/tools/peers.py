"""The implementations the benchmarks (``benchmarks/`` and ``python -m fastsoftmax bench``)
compare: fastsoftmax (allocating, and with a preallocated output), the NumPy reference, and
SciPy, PyTorch, JAX and the entmax package (sparsemax and entmax on PyTorch tensors) when they
are installed.

Cases come from the registry of operations (:mod:`fastsoftmax.registry`): each operation's
``bench`` entries, called with the arguments of its first example call and the case's keyword
arguments, and its ``peers``. Each implementation is a *preparer*: given the case and the
input array it does the one-off work (converting to a tensor, allocating ``out``, compiling)
and returns a callable of no arguments that computes the result along the last axis. Optional
libraries are imported only here, lazily, when their implementation is asked for.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from typing import Callable

import numpy as np

from ..registry import bench_cases

CASES = bench_cases()  # case name -> (operation, keyword arguments)
FUNCTIONS = tuple(CASES)
# Cases whose result is a few bytes a row: the input read once is what they move.
READ_ONLY = tuple(case for case, (op, _) in CASES.items() if op.reduces)
OURS = ("fastsoftmax", "fastsoftmax out=")
# "via-float32": for float16/bfloat16 input, the conversion a user would otherwise write
# first (``x.float()`` on a tensor, ``x.astype(np.float32)`` on an array), then fastsoftmax.
# "torch-chunked": PyTorch's F.linear_cross_entropy with its chunked CPU path (options).
PEERS = ("reference", "scipy", "torch", "torch-chunked", "jax", "entmax", "via-float32")


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a benchmark dtype name (bfloat16 comes from ml_dtypes)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError("dtype bfloat16 needs ml_dtypes: pip install 'fastsoftmax[bf16]'")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def is_half(x: np.ndarray) -> bool:
    return x.dtype.itemsize == 2 and x.dtype.kind in "fV"


def as_tensor(x: np.ndarray):
    """A torch tensor over ``x``'s memory (bfloat16 through its bits)."""
    import torch
    if x.dtype.kind == "V":  # ml_dtypes.bfloat16
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def is_installed(name: str) -> bool:
    """True when implementation ``name`` can run here (its library imports)."""
    modules = {"scipy": ("scipy",), "torch": ("torch",), "torch-chunked": ("torch",),
               "jax": ("jax",), "entmax": ("torch", "entmax")}.get(name, ())
    return all(importlib.util.find_spec(module) is not None for module in modules)


def installed_peers() -> list[str]:
    return [name for name in PEERS if is_installed(name)]


def case_kwargs(case: str, x) -> dict:
    """The keyword arguments of ``case`` on the batch ``x`` (a registry entry may be a
    function of the batch: one value per row)."""
    kwargs = CASES[case][1]
    return kwargs(x) if callable(kwargs) else kwargs


def _options(case: str) -> dict:
    """The keyword arguments of ``case`` that do not depend on the batch (a function of the
    batch gives parameters of its rows, never ``return_grad``)."""
    kwargs = CASES[case][1]
    return {} if callable(kwargs) else kwargs


def applies(implementation: str, case: str, dtype: str) -> bool:
    """True when ``implementation`` has a version of ``case`` on ``dtype`` input: the
    reference unless the operation says it is too slow to time, the peers the operation
    lists, fastsoftmax's preallocated variant where the function takes one, the float32
    detour for half precision only, SciPy without bfloat16."""
    op, kwargs = CASES[case][0], _options(case)
    half = dtype in ("float16", "bfloat16")
    if implementation == "fastsoftmax":
        return True
    if implementation == "reference":
        return op.bench_reference
    if implementation == "fastsoftmax out=":
        return _out_argument(op, kwargs) is not None
    if implementation == "via-float32":
        return half
    if implementation == "scipy" and dtype == "bfloat16":
        return False
    return implementation in op.peers


def _out_argument(op, kwargs):
    """The name of the public function's preallocated-output argument for this case, or None:
    ``out``, or ``grad_out`` for a cross-entropy with its gradient."""
    parameters = inspect.signature(op.public()).parameters
    if "out" in parameters:
        return "out"
    if "grad_out" in parameters and kwargs.get("return_grad"):
        return "grad_out"
    return None


def result_bytes(case: str, x: np.ndarray) -> int:
    """Bytes one call moves at least: the inputs of the shape of ``x`` (the logits; a
    teacher's too) read once and the result written once (for cases whose result is a few
    bytes a row, the inputs read once)."""
    op, kwargs = CASES[case][0], _options(case)
    read = sum(np.asarray(a).nbytes for a in op.calls[0](x)[0] if np.shape(a) == x.shape)
    if op.reduces and not kwargs.get("return_grad"):
        return read + (x.size // max(x.shape[-1], 1)) * x.itemsize
    return read + x.nbytes


def case_call(case, x):
    """``(args, kwargs)`` of the case's call on ``x``: the operation's first example call with
    the case's keyword arguments, or its own ``bench_call``."""
    op, kwargs = CASES[case][0], case_kwargs(case, x)
    if op.bench_call is not None:
        return op.bench_call(x, kwargs)
    return op.calls[0](x)[0], kwargs


def _call(function, case, x, make=None):
    """A callable running ``function`` (fastsoftmax's or the reference's) on the case's call
    on ``x``; ``make``: a new input made at every call (the conversion is part of the time)."""
    args, kwargs = case_call(case, x)
    if make is None:
        return lambda: function(*args, **kwargs)
    rest = args[1:]
    return lambda: function(make(), *rest, **kwargs)


def _fastsoftmax(case, x):
    op, _ = CASES[case]
    if is_half(x) and is_installed("torch"):  # half-precision logits usually come as tensors
        return _call(op.public(), case, as_tensor(x))
    return _call(op.public(), case, x)


def _fastsoftmax_out(case, x):
    op, kwargs = CASES[case][0], _options(case)
    name = _out_argument(op, kwargs)
    if name is None:
        raise NotImplementedError(f"{case} has no preallocated-output variant")
    data = as_tensor(x) if is_half(x) and is_installed("torch") else x
    args, kwargs = case_call(case, data)
    function = op.public()
    shape = data.shape[:-1] if op.reduces and name == "out" else data.shape
    if is_half(x) and is_installed("torch"):
        import torch
        out = torch.empty(shape, dtype=data.dtype)
    else:
        out = np.empty(shape, x.dtype)
    options = {k: v for k, v in kwargs.items() if k != "return_grad"}
    return lambda: function(*args, **{name: out}, **options)


def _reference(case, x):
    op, _ = CASES[case]
    if not op.bench_reference:
        raise NotImplementedError(f"the reference of {case} takes minutes: not timed")
    return _call(op.reference, case, x)


def _via_float32(case, x):
    op, _ = CASES[case]
    if not is_half(x):
        raise NotImplementedError("only for float16 and bfloat16 input")
    if is_installed("torch"):
        tensor = as_tensor(x)
        return _call(op.public(), case, x, make=lambda: tensor.float())
    return _call(op.public(), case, x, make=lambda: x.astype(np.float32))


def _scipy(case, x):
    op, _ = CASES[case]
    if "scipy" not in op.peers:
        raise NotImplementedError(f"SciPy has no {case}")
    if x.dtype.kind == "V":
        raise NotImplementedError("SciPy does not take bfloat16")
    from scipy import special
    fn = getattr(special, op.name)
    axis = _options(case).get("axis", -1)
    return lambda: fn(x, axis=axis)


def _torch_sampler(kwargs, tensor):
    """The usual PyTorch CPU pipeline for a sampling case: top-k by ``torch.topk``, softmax
    and multinomial; top-p by softmax, sort, cumsum, mask and multinomial; plain sampling by
    softmax and multinomial; a serving batch (both filters, penalties): :func:`_torch_serving`."""
    import torch
    if "previous_tokens" in kwargs or ("top_k" in kwargs and "top_p" in kwargs):
        return _torch_serving(kwargs, tensor)
    generator = torch.Generator().manual_seed(0)
    temperature = kwargs.get("temperature", 1.0)
    if "top_k" in kwargs:
        def top_k():
            values, indices = torch.topk(tensor, kwargs["top_k"], dim=-1)
            chosen = torch.multinomial(torch.softmax(values / temperature, dim=-1), 1,
                                       generator=generator)
            return torch.gather(indices, -1, chosen)
        return top_k
    if "top_p" in kwargs:
        def top_p():
            probs = torch.softmax(tensor / temperature, dim=-1)
            ranked, order = torch.sort(probs, dim=-1, descending=True)
            above = torch.cumsum(ranked, dim=-1) - ranked  # mass ranked above each token
            ranked = ranked.masked_fill(above >= kwargs["top_p"], 0.0)
            ranked = ranked / ranked.sum(dim=-1, keepdim=True)
            chosen = torch.multinomial(ranked, 1, generator=generator)
            return torch.gather(order, -1, chosen)
        return top_p
    return lambda: torch.multinomial(torch.softmax(tensor / temperature, dim=-1), 1,
                                     generator=generator)


def _torch_serving(kwargs, tensor):
    """A serving engine's sampler in PyTorch, as vLLM writes it: parameters one value per row
    (columns of tensors), penalties from the history by ``scatter_add`` (token counts), then
    repetition, frequency and presence; a logit bias; temperature; one sort for top-k and top-p
    (masks on the sorted rows, softmax, cumsum), and ``multinomial``. With
    ``return_logprobs``: ``log_softmax`` of the logits and ``topk`` of it. One generator for
    the batch (per-row seeds would need a loop over rows: left out, in PyTorch's favour)."""
    import torch
    n_rows, n_cols = tensor.shape

    def column(name, default, dtype=np.float32):
        value = np.asarray(kwargs.get(name, default), dtype).reshape(-1)
        return torch.from_numpy(np.broadcast_to(value, (n_rows,)).copy())[:, None]

    inv_t = column("temperature", 1.0)
    greedy = inv_t == 0
    inv_t = torch.where(greedy, 1.0, 1.0 / inv_t)
    top_p = column("top_p", 1.0)
    top_k = column("top_k", n_cols, np.int64).clamp(1, n_cols)
    history = kwargs.get("previous_tokens")
    if history is not None:
        history = torch.from_numpy(np.asarray(history, np.int64).reshape(n_rows, -1))
        valid = (history >= 0).to(tensor.dtype)
        history = history.clamp(min=0)
        penalties = [column(name, default) for name, default in (
            ("repetition_penalty", 1.0), ("frequency_penalty", 0.0), ("presence_penalty", 0.0))]
    bias = torch.zeros(n_cols, dtype=tensor.dtype)
    for token, value in (kwargs.get("logit_bias") or {}).items():
        bias[token] = value
    top = kwargs.get("top_logprobs", 0)
    generator = torch.Generator().manual_seed(0)

    def serve():
        logits = tensor + bias
        if history is not None:
            repetition, frequency, presence = penalties
            counts = torch.zeros_like(logits).scatter_add_(1, history, valid.expand_as(history))
            seen = counts > 0
            penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
            logits = torch.where(seen, penalised, logits) - frequency * counts - presence * seen
        argmax = logits.argmax(dim=-1, keepdim=True)
        ranked, order = torch.sort(logits * inv_t, dim=-1, descending=True)
        ranked = ranked.masked_fill(ranked < ranked.gather(1, top_k - 1), -torch.inf)
        probs = torch.softmax(ranked, dim=-1)
        probs = probs.masked_fill(torch.cumsum(probs, dim=-1) - probs >= top_p, 0.0)
        chosen = torch.gather(order, -1, torch.multinomial(probs, 1, generator=generator))
        chosen = torch.where(greedy, argmax, chosen)
        if not kwargs.get("return_logprobs"):
            return chosen
        logprobs = torch.log_softmax(tensor, dim=-1)
        best = torch.topk(logprobs, top, dim=-1)
        return chosen, logprobs.gather(1, chosen), best.indices, best.values
    return serve


def _torch_confidence(tensor):
    """What a PyTorch user writes for per-row confidence: softmax, max, topk(2) for the
    margin, and the entropy of the probabilities."""
    import torch

    def confidence():
        probs = torch.softmax(tensor, dim=-1)
        prob, label = probs.max(dim=-1)
        top2 = torch.topk(probs, 2, dim=-1).values
        entropy = torch.special.entr(probs).sum(dim=-1)
        return label, prob, top2[..., 0] - top2[..., 1], entropy
    return confidence


def torch_fit_temperature(logits, labels):
    """Temperature scaling as it is usually written in PyTorch (Guo et al.'s recipe): a
    temperature parameter, LBFGS on the NLL of ``logits / T``, here with a strong-Wolfe line
    search and tolerances tight enough to reach the same T as fastsoftmax."""
    import torch
    import torch.nn.functional as F
    temperature = torch.nn.Parameter(torch.ones(1, dtype=logits.dtype))
    optimizer = torch.optim.LBFGS([temperature], lr=1.0, max_iter=100,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                  tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / temperature, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(temperature.detach())


def torch_distillation(name, student, teacher, *, temperature=1.0, reverse=False, beta=0.5):
    """A distillation loss as it is written in PyTorch, "batchmean": Hinton's ``T**2 *
    F.kl_div(F.log_softmax(s / T), F.log_softmax(t / T), log_target=True)`` (reversed: the
    two swapped), or TRL's ``generalized_jsd_loss`` (the log of the mixture by logsumexp,
    then two ``F.kl_div``)."""
    import torch
    import torch.nn.functional as F
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    rows = student.shape[0]
    if name == "kl_div" or beta in (0.0, 1.0):
        if reverse or (name == "jsd" and beta == 1.0):
            log_q, log_p = log_p, log_q
        divergence = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
    else:
        log_m = torch.logsumexp(torch.stack([log_q + math.log1p(-beta),
                                             log_p + math.log(beta)]), dim=0)
        divergence = (beta * F.kl_div(log_m, log_p, reduction="sum", log_target=True)
                      + (1 - beta) * F.kl_div(log_m, log_q, reduction="sum", log_target=True))
    return temperature**2 * divergence / rows


def _torch(case, x):
    op, kwargs = CASES[case]
    if "torch" not in op.peers:
        raise NotImplementedError(f"no PyTorch peer for {case}")
    import torch
    tensor = as_tensor(x)
    if op.name == "sample":
        return _torch_sampler(case_kwargs(case, x), tensor)
    if op.name == "confidence":
        return _torch_confidence(tensor)
    if op.name == "fit_temperature":
        labels = torch.from_numpy(op.calls[0](x)[0][1])
        return lambda: torch_fit_temperature(tensor, labels)
    if op.name == "linear_cross_entropy":
        return _torch_linear_cross_entropy(case, x, chunked=False)
    if op.name == "cross_entropy":
        import torch.nn.functional as F
        targets = torch.from_numpy(op.calls[0](x)[0][1])
        if not kwargs.get("return_grad"):
            return lambda: F.cross_entropy(tensor, targets)
        leaf = tensor.clone().requires_grad_(True)

        def forward_backward():  # what a training step does: loss, then backward
            leaf.grad = None
            loss = F.cross_entropy(leaf, targets)
            loss.backward()
            return leaf.grad
        return forward_backward
    if op.name in ("kl_div", "jsd"):
        teacher = as_tensor(np.ascontiguousarray(op.calls[0](x)[0][1]))
        options = {k: v for k, v in kwargs.items() if k != "return_grad"}
        if not kwargs.get("return_grad"):
            def loss():  # an evaluation: no graph recorded
                with torch.no_grad():
                    return torch_distillation(op.name, tensor, teacher, **options)
            return loss
        leaf = tensor.clone().requires_grad_(True)

        def forward_backward():  # a training step: loss, then backward to the student
            leaf.grad = None
            torch_distillation(op.name, leaf, teacher, **options).backward()
            return leaf.grad
        return forward_backward
    fn = getattr(torch, op.name)
    dim = kwargs.get("axis", -1)
    return lambda: fn(tensor, dim)


def _torch_linear_cross_entropy(case, x, chunked):
    """A training step's loss and backward() from hidden states: the unfused
    ``F.cross_entropy(h @ W.T)``, or PyTorch's ``F.linear_cross_entropy`` with its chunked
    CPU path (``options=LinearCrossEntropyOptions()``)."""
    import torch
    import torch.nn.functional as F
    (hidden, weight, targets), _ = case_call(case, x)
    h = as_tensor(hidden).clone().requires_grad_(True)
    w = as_tensor(weight).clone().requires_grad_(True)
    t = torch.from_numpy(targets)
    if chunked:
        if not hasattr(F, "linear_cross_entropy"):
            raise NotImplementedError("this PyTorch has no F.linear_cross_entropy")
        options = torch.nn.LinearCrossEntropyOptions()
        loss_of = lambda: F.linear_cross_entropy(h, w, t, options=options)  # noqa: E731
    else:
        loss_of = lambda: F.cross_entropy(h @ w.T, t)  # noqa: E731

    def forward_backward():
        h.grad = w.grad = None
        loss = loss_of()
        loss.backward()
        return loss
    return forward_backward


def _torch_chunked(case, x):
    op, _ = CASES[case]
    if "torch-chunked" not in op.peers:
        raise NotImplementedError(f"no chunked PyTorch peer for {case}")
    return _torch_linear_cross_entropy(case, x, chunked=True)


def _jax(case, x):
    op, _ = CASES[case]
    if "jax" not in op.peers:
        raise NotImplementedError(f"no JAX peer for {case}")
    import jax
    import jax.numpy as jnp
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    array = jax.device_put(jnp.asarray(x))
    fn = jax.jit(getattr(jax.nn, op.name), static_argnames="axis")
    axis = _options(case).get("axis", -1)
    return lambda: fn(array, axis=axis).block_until_ready()


def _entmax(case, x):
    """The entmax package (PyTorch, sorting each row) on a tensor over ``x``."""
    op, kwargs = CASES[case]
    if "entmax" not in op.peers:
        raise NotImplementedError(f"the entmax package has no {case}")
    import entmax
    tensor = as_tensor(x)
    fn = getattr(entmax, op.name)
    return lambda: fn(tensor, dim=-1, **kwargs)


PREPARERS: dict[str, Callable] = {
    "fastsoftmax": _fastsoftmax,
    "fastsoftmax out=": _fastsoftmax_out,
    "reference": _reference,
    "scipy": _scipy,
    "torch": _torch,
    "torch-chunked": _torch_chunked,
    "jax": _jax,
    "entmax": _entmax,
    "via-float32": _via_float32,
}


def prepare(implementation: str, case: str, x: np.ndarray) -> Callable[[], object]:
    """A no-argument callable running ``case`` of ``implementation`` on ``x`` (last axis)."""
    if case not in CASES:
        raise ValueError(f"unknown function {case!r}; expected one of {', '.join(FUNCTIONS)}")
    return PREPARERS[implementation](case, x)


def set_threads(n: int | None) -> None:
    """Give every implementation the same number of threads (None: leave the defaults)."""
    if n is None:
        return
    import numba
    numba.set_num_threads(n)
    if is_installed("torch"):
        import torch
        torch.set_num_threads(n)
