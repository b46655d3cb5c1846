"""The registry of implementations that the benchmarks (``benchmarks/`` and
``python -m fastsoftmax bench``) compare: fastsoftmax (allocating and with ``out=``), the NumPy
reference, and SciPy, PyTorch and JAX when they are installed.

Each implementation is a *preparer*: given the function name and the input array it does the
one-off work (converting to a tensor, allocating ``out``, compiling) and returns a callable of
no arguments that computes the result along the last axis. Optional libraries are imported
only here, lazily, when their implementation is asked for.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np

# Sampling cases: the keyword arguments of ``fastsoftmax.sample`` each one benchmarks.
SAMPLING = {
    "sample_top_p": dict(temperature=0.8, top_p=0.9),
    "sample_top_k": dict(top_k=50),
    "sample": dict(temperature=0.8),
}
FUNCTIONS = ("softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_grad",
             *SAMPLING)
# Functions that only read their input (their floor is the read-only roofline).
READ_ONLY = ("logsumexp", "cross_entropy", *SAMPLING)
OURS = ("fastsoftmax", "fastsoftmax out=")
# "via-float32": for float16/bfloat16 input, the conversion a user would otherwise write
# first (``x.float()`` on a tensor, ``x.astype(np.float32)`` on an array), then fastsoftmax.
PEERS = ("reference", "scipy", "torch", "jax", "via-float32")
# Functions whose half-precision cases run fastsoftmax on a torch tensor (when torch is
# installed): half-precision logits usually come as tensors.
TENSOR_FUNCTIONS = ("softmax", "log_softmax", "logsumexp")


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
    module = {"scipy": "scipy", "torch": "torch", "jax": "jax"}.get(name)
    if name == "via-float32":
        return True
    return module is None or importlib.util.find_spec(module) is not None


def installed_peers() -> list[str]:
    return [name for name in PEERS if is_installed(name)]


def targets_for(x: np.ndarray) -> np.ndarray:
    """Class indices for benchmarking the cross-entropy on logits ``x`` (fixed seed)."""
    return np.random.default_rng(1).integers(0, x.shape[-1], x.size // x.shape[-1])


def result_bytes(function: str, x: np.ndarray) -> int:
    """Bytes one call moves at least: the input read once and the result written once (for the
    loss and the samplers, whose results are a few bytes a row: the input read once)."""
    if function == "cross_entropy" or function in SAMPLING:
        return x.nbytes
    if function in READ_ONLY:
        return x.nbytes + (x.size // max(x.shape[-1], 1)) * x.itemsize
    return 2 * x.nbytes


def _ours(module, function, x):
    make = x.make if isinstance(x, _Deferred) else lambda: x
    if function in SAMPLING:
        kwargs = SAMPLING[function]
        return lambda: module.sample(make(), seed=0, **kwargs)
    if function.startswith("cross_entropy"):
        t = targets_for(make())
        if function == "cross_entropy":
            return lambda: module.cross_entropy(make(), t)
        return lambda: module.cross_entropy(make(), t, return_grad=True)
    fn = getattr(module, function)
    return lambda: fn(make())


def _fastsoftmax(function, x):
    import fastsoftmax
    if is_half(x) and is_installed("torch") and function in TENSOR_FUNCTIONS:
        return _ours(fastsoftmax, function, as_tensor(x))
    return _ours(fastsoftmax, function, x)



def _fastsoftmax_out(function, x):
    import fastsoftmax
    if is_half(x) and is_installed("torch") and function in TENSOR_FUNCTIONS:
        import torch
        tensor = as_tensor(x)
        out = torch.empty(tensor.shape[:-1] if function == "logsumexp" else tensor.shape,
                          dtype=tensor.dtype)
        fn = getattr(fastsoftmax, function)
        return lambda: fn(tensor, out=out)
    if function == "cross_entropy" or function in SAMPLING:
        raise NotImplementedError(f"{function} has no out= variant")
    if function == "cross_entropy_grad":
        t = targets_for(x)
        grad = np.empty_like(x)
        return lambda: fastsoftmax.cross_entropy(x, t, grad_out=grad)
    fn = getattr(fastsoftmax, function)
    out = np.empty(x.shape[:-1] if function == "logsumexp" else x.shape, x.dtype)
    return lambda: fn(x, out=out)


def _reference(function, x):
    from fastsoftmax import reference
    return _ours(reference, function, x)


def _via_float32(function, x):
    import fastsoftmax
    if not is_half(x):
        raise NotImplementedError("only for float16 and bfloat16 input")
    if is_installed("torch"):
        tensor = as_tensor(x)
        return _ours(fastsoftmax, function, _Deferred(lambda: tensor.float()))
    return _ours(fastsoftmax, function, _Deferred(lambda: x.astype(np.float32)))


class _Deferred:
    """An input made anew at every call (the conversion is part of what is timed)."""

    def __init__(self, make):
        self.make = make


def _scipy(function, x):
    if function.startswith("cross_entropy"):
        raise NotImplementedError("SciPy has no cross-entropy")
    if function in SAMPLING:
        raise NotImplementedError("SciPy has no sampler from logits")
    if x.dtype.kind == "V":
        raise NotImplementedError("SciPy does not take bfloat16")
    from scipy import special
    fn = getattr(special, function)
    return lambda: fn(x, axis=-1)


def _torch_sampler(function, tensor):
    """The usual PyTorch CPU pipeline for ``function`` (see :data:`SAMPLING`)."""
    import torch
    kwargs = SAMPLING[function]
    generator = torch.Generator().manual_seed(0)
    if function == "sample_top_k":
        def top_k():
            values, indices = torch.topk(tensor, kwargs["top_k"], dim=-1)
            chosen = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)
            return torch.gather(indices, -1, chosen)
        return top_k
    if function == "sample_top_p":
        def top_p():
            probs = torch.softmax(tensor / kwargs["temperature"], dim=-1)
            ranked, order = torch.sort(probs, dim=-1, descending=True)
            above = torch.cumsum(ranked, dim=-1) - ranked  # mass ranked above each token
            ranked = ranked.masked_fill(above >= kwargs["top_p"], 0.0)
            ranked = ranked / ranked.sum(dim=-1, keepdim=True)
            chosen = torch.multinomial(ranked, 1, generator=generator)
            return torch.gather(order, -1, chosen)
        return top_p
    return lambda: torch.multinomial(torch.softmax(tensor / kwargs["temperature"], dim=-1), 1,
                                     generator=generator)


def _torch(function, x):
    import torch
    tensor = as_tensor(x)
    if function in SAMPLING:
        return _torch_sampler(function, tensor)
    if function.startswith("cross_entropy"):
        import torch.nn.functional as F
        targets = torch.from_numpy(targets_for(x))
        if function == "cross_entropy":
            return lambda: F.cross_entropy(tensor, targets)
        leaf = tensor.clone().requires_grad_(True)

        def forward_backward():  # what a training step does: loss, then backward
            leaf.grad = None
            loss = F.cross_entropy(leaf, targets)
            loss.backward()
            return leaf.grad
        return forward_backward
    fn = {"softmax": torch.softmax, "log_softmax": torch.log_softmax,
          "logsumexp": torch.logsumexp}[function]
    return lambda: fn(tensor, -1)


def _jax(function, x):
    if function.startswith("cross_entropy") or function in SAMPLING:
        raise NotImplementedError(f"no JAX {function} peer yet")
    import jax
    import jax.numpy as jnp
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    array = jax.device_put(jnp.asarray(x))
    fn = jax.jit({"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax,
                  "logsumexp": jax.nn.logsumexp}[function], static_argnames="axis")
    return lambda: fn(array, axis=-1).block_until_ready()


PREPARERS: dict[str, Callable] = {
    "fastsoftmax": _fastsoftmax,
    "fastsoftmax out=": _fastsoftmax_out,
    "reference": _reference,
    "scipy": _scipy,
    "torch": _torch,
    "jax": _jax,
    "via-float32": _via_float32,
}


def prepare(implementation: str, function: str, x: np.ndarray) -> Callable[[], object]:
    """A no-argument callable running ``function`` of ``implementation`` on ``x`` (last axis)."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown function {function!r}; expected one of {', '.join(FUNCTIONS)}")
    return PREPARERS[implementation](function, x)


def set_threads(n: int | None) -> None:
    """Give every implementation the same number of threads (None: leave the defaults)."""
    if n is None:
        return
    import numba
    numba.set_num_threads(n)
    if is_installed("torch"):
        import torch
        torch.set_num_threads(n)
