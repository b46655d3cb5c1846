"""PyTorch tensors in and out of the public functions, without copying.

A CPU tensor is handed to the kernels as a NumPy view of its memory (``Tensor.numpy()``);
a bfloat16 tensor, which NumPy cannot represent without ml_dtypes, as a ``uint16`` view of
its bits, which the half-precision kernels widen themselves (kernels/halfbits.py). Results
come back as tensors over the result's memory (``torch.from_numpy``), ``out`` tensors are
written in place.

torch is never imported unless a caller passes a tensor: :func:`is_tensor` looks at the
type's module name. JAX arrays need nothing here: ``numpy.asarray`` already views a CPU JAX
array without copying (read-only), and bfloat16 ones come as ``ml_dtypes.bfloat16``.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from .normalize import COMPUTE_DTYPES


def is_tensor(obj) -> bool:
    """True for a ``torch.Tensor`` (or subclass, e.g. ``nn.Parameter``), without importing
    torch."""
    module = type(obj).__module__
    return module.startswith("torch") and hasattr(obj, "data_ptr")


def tensor_to_numpy(tensor, func: str, name: str, *, bits_ok: bool):
    """A NumPy view of a CPU tensor's memory: ``(array, bfloat16)``.

    bfloat16 tensors give their bits as ``uint16`` when ``bits_ok`` (the caller's kernels
    read them), else a float32 copy (``bfloat16`` tells the caller to convert results back).
    """
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
        if bits_ok:
            return tensor.view(torch.int16).numpy().view(np.uint16), True
        return tensor.float().numpy(), True
    try:
        return tensor.numpy(), False
    except TypeError as exc:  # dtypes NumPy has no equivalent for (e.g. float8)
        raise TypeError(f"{func}: {name} has dtype {tensor.dtype}, which fastsoftmax does not "
                        "support") from exc


def to_tensor(value, bfloat16: bool):
    """A tensor over ``value``'s memory (an ndarray or NumPy scalar from the kernels).

    ``uint16`` arrays are bfloat16 bits; with ``bfloat16``, float results are converted back
    to bfloat16 (inputs that were widened to float32 on the way in)."""
    import torch

    array = np.asarray(value)
    if array.dtype == np.uint16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    tensor = torch.from_numpy(array)
    if bfloat16 and array.dtype.kind == "f":
        return tensor.to(torch.bfloat16)
    return tensor


def result_dtype(x, dtype):
    """The torch dtype of the result of a forward function on tensor ``x``."""
    import torch

    if dtype is not None:
        wanted = np.dtype(dtype)
        if wanted in COMPUTE_DTYPES:
            return torch.float64 if wanted == np.float64 else torch.float32
        return None  # not a valid dtype: normalize.prepare says so
    if is_tensor(x) and x.is_floating_point():
        return x.dtype
    return torch.float64  # bool and integers (SciPy's rule), as for NumPy input


def check_out_tensor(out, expected, func: str):
    """``out`` must be a tensor of the result's dtype (its shape is checked later)."""
    if expected is not None and out.dtype != expected:
        raise ValueError(f"{func}: out must be a tensor of dtype {expected}, got {out.dtype}")


def accepts_tensors(*array_args: str, out_args: tuple = ()):
    """Decorator for the public functions whose arrays are converted (no bit-level path):
    tensor arguments among ``array_args``/``out_args`` become NumPy views (bfloat16 ones a
    float32 copy), results become tensors (bfloat16 again if an input was), and an ``out``
    tensor that had to be converted receives the result by copy."""
    names = set(array_args) | set(out_args)

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not (any(map(is_tensor, args)) or any(map(is_tensor, kwargs.values()))):
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            narrowed = False
            outs = {}  # id of the array the function writes -> (tensor, array, converted)
            for name, value in list(bound.arguments.items()):
                if name not in names or not is_tensor(value):
                    continue
                array, was_bfloat16 = tensor_to_numpy(value, fn.__name__, name,
                                                      bits_ok=False)
                narrowed |= was_bfloat16 and name in array_args
                bound.arguments[name] = array
                if name in out_args:
                    outs[id(array)] = (value, array, was_bfloat16)
            result = fn(*bound.args, **bound.kwargs)
            for tensor, array, converted in outs.values():
                if converted:
                    tensor.copy_(to_tensor(array, False))

            def back(value):
                if id(value) in outs:
                    return outs[id(value)][0]
                return to_tensor(value, narrowed)

            if isinstance(result, tuple):
                return tuple(back(value) for value in result)
            return back(result)

        return wrapper

    return decorate
