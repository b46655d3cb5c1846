"""PyTorch tensors in and out of every public function, without copying: one adapter.

:func:`accepts_tensors` wraps a public function. When a caller passes a CPU tensor, each tensor
argument becomes a NumPy view of its memory (``Tensor.numpy()``); a bfloat16 tensor, which
NumPy cannot represent without ml_dtypes, becomes :class:`~fastsoftmax.arguments.Bfloat16Bits`
over the ``uint16`` view of its bits, which the kernels widen themselves (kernels/halfbits.py).
Results come back as tensors over the result's memory (``torch.from_numpy``; bfloat16 bits as
a bfloat16 tensor), and an ``out`` tensor is written in place and returned itself.

torch is never imported unless a caller passes a tensor: :func:`is_tensor` looks at the type's
module name. JAX arrays need nothing here: ``numpy.asarray`` already views a CPU JAX array
without copying (read-only), and bfloat16 ones come as ``ml_dtypes.bfloat16``.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from .arguments import Bfloat16Bits


def is_tensor(obj) -> bool:
    """True for a ``torch.Tensor`` (or subclass, e.g. ``nn.Parameter``), without importing
    torch."""
    cls = type(obj)
    return cls is not np.ndarray and cls.__module__.startswith("torch") and \
        hasattr(obj, "data_ptr")


def tensor_to_numpy(tensor, func: str, name: str):
    """A NumPy view of a CPU tensor's memory; bfloat16 as :class:`Bfloat16Bits`."""
    import torch

    if tensor.device.type != "cpu":
        raise TypeError(f"{func}: {name} is a tensor on {tensor.device}; fastsoftmax computes "
                        f"on the CPU: pass {name}.cpu()")
    if tensor.requires_grad:
        raise TypeError(f"{func}: {name} requires grad; fastsoftmax does not record autograd "
                        f"graphs: pass {name}.detach() (the backward functions compute "
                        "gradients explicitly)")
    tensor = tensor.resolve_conj().resolve_neg()
    if tensor.dtype == torch.bfloat16:
        return Bfloat16Bits(tensor.view(torch.int16).numpy().view(np.uint16))
    try:
        return tensor.numpy()
    except TypeError as exc:  # dtypes NumPy has no equivalent for (e.g. float8)
        raise TypeError(f"{func}: {name} has dtype {tensor.dtype}, which fastsoftmax does not "
                        "support") from exc


def to_tensor(value):
    """A tensor over ``value``'s memory (an ndarray or NumPy scalar from the kernels);
    ``uint16`` results are bfloat16 bits (no function returns uint16 values)."""
    import torch

    array = np.asarray(value)
    if array.dtype == np.uint16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def accepts_tensors(*arrays: str):
    """Decorator of a public function (or of the general path of one) whose arguments named
    ``arrays`` may be tensors. Results are tensors when the first of them (the data: ``x``,
    ``grad``, ``logits``) is one; an ``out``-like tensor is written in place and handed back
    itself. Messages name the function, or its ``op`` argument's name when it takes one."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for value in args:
                if is_tensor(value):
                    break
            else:
                for value in kwargs.values():
                    if is_tensor(value):
                        break
                else:
                    return fn(*args, **kwargs)
            return _call_with_tensors(fn, signature, arrays, args, kwargs)

        return wrapper

    return decorate


def _call_with_tensors(fn, signature, arrays, args, kwargs):
    bound = signature.bind(*args, **kwargs)
    tensors_out = is_tensor(bound.arguments.get(arrays[0]))
    func = getattr(bound.arguments.get("op"), "name", fn.__name__)
    given = {}  # id of what the function received -> the caller's tensor
    for name, value in list(bound.arguments.items()):
        if name in arrays and is_tensor(value):
            converted = tensor_to_numpy(value, func, name)
            bound.arguments[name] = converted
            given[id(converted)] = value
            if isinstance(converted, Bfloat16Bits):
                given[id(converted.bits)] = value
    result = fn(*bound.args, **bound.kwargs)

    def back(value):
        if isinstance(value, tuple):  # a named tuple stays one; tuples nest (gradients)
            values = [back(item) for item in value]
            return type(value)(*values) if hasattr(value, "_fields") else tuple(values)
        if id(value) in given:  # an out array, written in place: its tensor
            return given[id(value)]
        if type(value) is float or value is None:  # a fitted parameter (fit_temperature):
            return value                            # a float; an absent gradient: None
        return to_tensor(value) if tensors_out else value

    return back(result)
