"""The argument layer: from what a caller passed to the batch of rows a kernel runs on.

Every public function hands its arguments to one of the ``prepare_*`` functions below, which
validate them and return a batch: the kernel to run (taken from the registry), its arguments
(flat 1-D buffers of ``n_rows`` rows of ``n_cols`` contiguous elements with a row stride), and
``finish()``, which shapes the result for the caller. Checks are shared, so the same mistake
gets the same exception and message from every function: ``"<function>: <argument> must be
<what>, got <what was given>"``, a ``TypeError`` for the wrong kind of argument and a
``ValueError`` for a wrong value.

Only what must be copied is copied: the input when its rows are not contiguous or its dtype
differs from the compute dtype; the output when the caller's ``out`` cannot be written row by
row. float16 and bfloat16 arrays reach the kernels as integer views of their bits
(:mod:`fastsoftmax.kernels.halfbits`), which they widen themselves; bfloat16 tensors arrive
from :mod:`fastsoftmax.tensors` as :class:`Bfloat16Bits`, as NumPy has no bfloat16 of its own.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .kernels import halfbits
from .kernels.halfbits import BFLOAT16_BITS, FLOAT16_BITS
from .kernels.calibration import NO_LABEL
from .kernels.jit import KernelPair
from .kernels import sampling as sampling_kernels
from .kernels.sampling import EMPTY_ROW, NAN_ROW

COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
REDUCTIONS = ("mean", "sum", "none")


# --- what the kernels are handed ----------------------------------------------------------------

class _WritableInterface:
    """The memory of a read-only array, exported through the array interface as writable: a
    NumPy array made from it is a view of the same memory, and it keeps the array alive."""

    __slots__ = ("array", "__array_interface__")

    def __init__(self, array: np.ndarray):
        self.array = array
        interface = dict(array.__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface


def writable_alias(array: np.ndarray) -> np.ndarray:
    """``array`` itself, or for a read-only one a writable view of its memory, to hand to a
    kernel.

    Numba compiles a kernel once per type of its arguments, and a read-only array is a type of
    its own: every kernel met by a read-only input (a JAX array, a broadcast ``where`` or
    argument, a read-only memory map) compiled a second time, the same code, a second or more
    each (a third of the test suite's compilation, docs/design.md "Compiled variants"). Kernels
    only write into what they are given as output; an input is their output only when the
    caller passed it as ``out``, which the argument layer accepts only when writable.
    """
    if array.flags.writeable:
        return array
    alias = np.asarray(_WritableInterface(array))
    return alias if alias.dtype == array.dtype else alias.view(array.dtype)


def writable_arguments(args: tuple) -> tuple:
    """``args`` with each read-only array replaced by :func:`writable_alias` (the same tuple
    when there is none)."""
    for arg in args:  # isinstance: a slice of a read-only np.memmap is a memmap
        if isinstance(arg, np.ndarray) and not arg.flags.writeable:
            return tuple(writable_alias(a) if isinstance(a, np.ndarray) else a for a in args)
    return args


# --- half precision ---------------------------------------------------------------------------

class Bfloat16Bits:
    """bfloat16 values handed over as the ``uint16`` array of their bits (a PyTorch tensor:
    NumPy has no bfloat16 without ml_dtypes). Results for such input are bits too."""

    __slots__ = ("bits",)

    def __init__(self, bits: np.ndarray):
        self.bits = bits

    @property
    def shape(self):
        return self.bits.shape


def is_bfloat16(dtype: np.dtype) -> bool:
    """True for ``ml_dtypes.bfloat16`` (recognised by name: ml_dtypes is not imported)."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def half_bits_dtype(dtype: np.dtype):
    """The integer view half-precision kernels read ``dtype`` through (uint16 for bfloat16,
    int16 for float16: kernels/halfbits.py), or None for other dtypes."""
    if is_bfloat16(dtype):
        return BFLOAT16_BITS
    if dtype.kind == "f" and dtype.itemsize == 2:
        return FLOAT16_BITS
    return None


class Operand:
    """An array argument: its values, and the integer view its half-precision bits are read
    through (None for other dtypes). ``dtype`` is what the caller's results look like: the
    array's dtype, or the bits dtype for :class:`Bfloat16Bits` (``bits_only``: ``array``
    holds bits, not values)."""

    __slots__ = ("array", "half", "bits_only")

    def __init__(self, array: np.ndarray, half, bits_only: bool = False):
        self.array, self.half, self.bits_only = array, half, bits_only

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def dtype_name(self) -> str:
        return "bfloat16" if self.bits_only else str(self.array.dtype)

    def result_name(self, converted: bool = False) -> str | None:
        """How to name the dtype of results of the same kind in a message: "bfloat16" for
        bits (None: the dtype's own name; ``converted``: a ``dtype`` argument decides)."""
        return "bfloat16" if self.bits_only and not converted else None


def operand(value, func: str, name: str) -> Operand:
    """``value`` as an array of real numbers (TypeError otherwise)."""
    if isinstance(value, Bfloat16Bits):
        return Operand(value.bits, BFLOAT16_BITS, True)
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{func}: {name} must be array-like, got "
                            f"{type(value).__name__}") from exc
    dtype = array.dtype
    if dtype.kind not in "biuf" and not is_bfloat16(dtype):
        raise TypeError(f"{func}: {name} must be an array of real numbers (bool, integer or "
                        f"float), got dtype {dtype}")
    return Operand(array, half_bits_dtype(dtype))


def dtype_policy(x: Operand, dtype, func: str):
    """(compute dtype, result dtype) of input ``x`` by the dtype policy (README, "dtypes"):
    float32 and float64 as they are; float16 and bfloat16 computed in float32, returned in
    their format; bool and integers computed and returned in float64; ``dtype`` (float32 or
    float64) converts first."""
    if dtype is not None:
        try:
            wanted = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"{func}: dtype must be float32 or float64, got {dtype!r}") from exc
        if wanted not in COMPUTE_DTYPES:
            raise ValueError(f"{func}: dtype must be float32 or float64, got {wanted}")
        wanted = wanted.newbyteorder("=")
        return wanted, wanted
    if x.half is not None:
        return _F32, x.dtype.newbyteorder("=")
    if x.dtype.kind == "f":
        if x.dtype.itemsize == 4:
            return _F32, _F32
        if x.dtype.itemsize == 8:
            return _F64, _F64
        raise TypeError(f"{func}: x has dtype {x.dtype}, which is not supported; convert it "
                        "with x.astype(np.float64)")
    return _F64, _F64  # bool and integers: SciPy's rule


def common_dtype(a: Operand, b: Operand, func: str, names: tuple[str, str]) -> Operand:
    """The operand whose dtype the results of an operation on ``a`` and ``b`` have (NumPy's
    promotion; the same half-precision format stays half precision)."""
    if a.dtype == b.dtype and a.bits_only == b.bits_only:
        return a
    try:
        promoted = np.result_type(_values_dtype(a), _values_dtype(b))
    except TypeError:
        raise TypeError(f"{func}: {names[0]} ({a.dtype_name()}) and {names[1]} "
                        f"({b.dtype_name()}) have no common dtype") from None
    return operand(np.empty(0, promoted), func, names[0])


def _values_dtype(x: Operand) -> np.dtype:
    return _F32 if x.bits_only else x.dtype


# --- scalar arguments -------------------------------------------------------------------------

def _is_real(value) -> bool:
    if type(value) is float or type(value) is int:  # the usual case, without the ABC check
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


is_number = _is_real  # a real number, not a bool (for public modules)


def check_axis(axis, ndim: int, func: str, *, several=False):
    """The non-negative axis, or None for the whole array. With ``several`` (the softmax
    family, as SciPy and JAX), a tuple of axes too: returned sorted, one axis as an int, and
    every axis (or a 0-d array's empty tuple) as None."""
    if several and isinstance(axis, (tuple, list)):
        axes = tuple(check_axis(a, ndim, func) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"{func}: axis must not repeat an axis, got {tuple(axis)!r}")
        if len(axes) == ndim:
            return None
        return axes[0] if len(axes) == 1 else tuple(sorted(axes))
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        expected = "an int, a tuple of ints or None" if several else "an int or None"
        raise TypeError(f"{func}: axis must be {expected}, got {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        hint = " (a scalar: axis=None takes it as one row)" if ndim == 0 else ""
        raise ValueError(f"{func}: axis {axis} is out of bounds for an array of dimension "
                         f"{ndim}{hint}")
    return axis % ndim


def is_reduced(i: int, axis) -> bool:
    """Whether dimension ``i`` is reduced by ``axis`` (None, an int or a tuple of ints)."""
    return axis is None or (i in axis if isinstance(axis, tuple) else i == axis)


def check_temperature(temperature, func: str, dtype=_F64, *, zero_ok=False) -> float:
    """1/temperature, after checking that temperature is a positive finite number whose
    reciprocal is finite in ``dtype`` (the kernels multiply by it). With ``zero_ok``, 0
    (greedy sampling) gives 0."""
    expected = "a finite number >= 0" if zero_ok else "a positive finite number"
    if not _is_real(temperature):
        raise ValueError(f"{func}: temperature must be {expected}, got {temperature!r}")
    t = float(temperature)
    if t == 1.0 or (zero_ok and t == 0.0):
        return t
    if not (t > 0.0 and math.isfinite(t)):
        raise ValueError(f"{func}: temperature must be {expected}, got {temperature!r}")
    largest = float(np.finfo(dtype).max)
    if t < 1.0 / largest:  # 1/t would overflow in dtype
        raise ValueError(f"{func}: temperature {temperature!r} is too small for "
                         f"{np.dtype(dtype)}: 1/temperature overflows")
    return 1.0 / t


def check_fraction(value, func: str, name: str, *, default: float, low_open: bool) -> float:
    """A probability argument as a float (``default`` for None): in (0, 1] with ``low_open``,
    else in [0, 1]."""
    interval = "(0, 1]" if low_open else "[0, 1]"
    if value is None:
        return default
    if not _is_real(value):
        raise TypeError(f"{func}: {name} must be a number in {interval} or None, got {value!r}")
    v = float(value)
    if not ((0.0 < v if low_open else 0.0 <= v) and v <= 1.0):
        raise ValueError(f"{func}: {name} must be a number in {interval} or None, got "
                         f"{value!r}")
    return v


def check_int(value, func: str, name: str, *, minimum=None, none_ok=False):
    """An int argument (None passes through with ``none_ok``)."""
    if type(value) is int and minimum is None:  # the usual case, without the ABC check
        return value
    if value is None and none_ok:
        return None
    expected = "an int" + (f" >= {minimum}" if minimum is not None else "") + \
        (" or None" if none_ok else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{func}: {name} must be {expected}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{func}: {name} must be {expected}, got {value!r}")
    return int(value)


def check_choice(value, func: str, name: str, choices: tuple):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{func}: {name} must be one of {choices}, got {value!r}")
    return value


def check_alpha(alpha, func: str, x_shape, axis):
    """``(alphas, stride)``: the α of each row of an array of ``x_shape`` reduced along
    ``axis`` (None: one row), as flat float64 values, ``alphas[r * stride]`` for row ``r``
    (stride 0: one α for every row). ``alpha`` is a number >= 1, or an array of them that
    broadcasts to the rows: the shape of ``x`` without ``axis``, or with ``axis`` of length 1
    (the entmax package's layout)."""
    expected = "a finite number >= 1 or an array of them (one per row)"
    if _is_real(alpha):
        value = float(alpha)
        if not (value >= 1.0 and math.isfinite(value)):
            raise ValueError(f"{func}: alpha must be {expected}, got {alpha!r}")
        return np.array([value]), 0
    values = np.asarray(alpha)
    if values.dtype.kind not in "iuf":
        raise TypeError(f"{func}: alpha must be {expected}, got "
                        f"{type(alpha).__name__} of dtype {values.dtype}")
    row_shape = () if axis is None else tuple(n for i, n in enumerate(x_shape) if i != axis)
    if axis is not None and values.ndim == len(x_shape) and values.shape[axis] == 1:
        values = np.squeeze(values, axis)
    if axis is None and values.size == 1:
        values = values.reshape(())
    try:
        values = np.broadcast_to(values, row_shape)
    except ValueError:
        raise ValueError(f"{func}: alpha has shape {np.shape(alpha)}, which does not broadcast "
                         f"to the rows of x: shape {row_shape}") from None
    flat = np.ascontiguousarray(values, np.float64).reshape(-1)
    bad = ~(np.isfinite(flat) & (flat >= 1.0))
    if bad.any():
        raise ValueError(f"{func}: alpha must be {expected}, got {float(flat[bad][0])!r} in an array")
    return flat, 1


# seed=None draws from one Generator of the process, seeded from the OS's entropy when first
# used: a new Generator per call gathered entropy each time, ~17 us of a ~100 us single-row
# sample on a 2-core Zen 3 (docs/performance.md, "What a single sampled row costs"). A forked
# child starts a stream of its own, or workers forked from one parent would draw alike.
_process_generator: np.random.Generator | None = None


def _forget_process_generator() -> None:
    global _process_generator
    _process_generator = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_process_generator)


def check_seed(seed, func: str) -> np.random.Generator:
    """The Generator a seed stands for: a Generator itself, one seeded by an int, or for None
    the process's own (seeded from the OS once per process)."""
    global _process_generator
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        if _process_generator is None:
            _process_generator = np.random.default_rng()
        return _process_generator
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{func}: seed must be None, an int or a numpy.random.Generator, got "
                        f"{type(seed).__name__}")
    try:
        return np.random.default_rng(seed)
    except ValueError as exc:
        raise ValueError(f"{func}: seed {seed!r} is not valid: {exc}") from None


def check_out(out, shape, dtype: np.dtype, func: str, name: str = "out", *,
              dtype_name: str | None = None) -> np.ndarray:
    """``out`` (an ndarray, or a :class:`Bfloat16Bits`) of exactly ``shape`` and ``dtype``,
    writable; its array."""
    if isinstance(out, Bfloat16Bits):
        array, given = out.bits, "bfloat16"
    elif isinstance(out, np.ndarray):
        array, given = out, str(out.dtype)
    else:
        raise TypeError(f"{func}: {name} must be a numpy.ndarray, got {type(out).__name__}")
    want = dtype_name or str(dtype)
    if array.shape != tuple(shape) or array.dtype != dtype or given != want:
        raise ValueError(f"{func}: {name} must have shape {tuple(shape)} and dtype {want}, "
                         f"got shape {array.shape} and dtype {given}")
    if not array.flags.writeable:
        raise ValueError(f"{func}: {name} is read-only")
    return array


# --- rows ---------------------------------------------------------------------------------------

def row_layout(a: np.ndarray):
    """Describe a C-ordered batch of rows (last axis = row) as (flat 1-D view, row stride).

    Returns None when the rows cannot be read from one flat buffer without a copy: the last
    axis is not contiguous, the leading axes do not collapse to a single non-negative stride,
    or the byte order is not native. The row stride is in elements and may be 0 (rows
    broadcast from one).
    """
    if not a.dtype.isnative:
        return None
    n_cols = a.shape[-1]
    itemsize = a.itemsize
    if n_cols > 1 and a.strides[-1] != itemsize:
        return None
    # Collapse the leading axes: each must step by the stride of the one after it times that
    # axis' length (axes of length 1 do not matter).
    row_stride = None
    span = None
    for length, stride in zip(reversed(a.shape[:-1]), reversed(a.strides[:-1])):
        if length == 1:
            continue
        if stride < 0 or stride % itemsize:
            return None
        if row_stride is None:
            row_stride, span = stride, length
        elif stride == row_stride * span:
            span *= length
        else:
            return None
    if row_stride is None:
        row_stride = n_cols * itemsize
    n_rows = a.size // n_cols if n_cols else int(np.prod(a.shape[:-1]))
    if n_rows == 0 or n_cols == 0:
        return np.empty(0, a.dtype), 0
    stride_elems = row_stride // itemsize
    length = (n_rows - 1) * stride_elems + n_cols
    if a.flags.c_contiguous:
        flat = a.reshape(-1)
    else:
        flat = np.lib.stride_tricks.as_strided(a, shape=(length,), strides=(itemsize,))
    return flat, stride_elems


def move_axis_last(a: np.ndarray, axis, *, view=False):
    """``a`` with the reduced axis last (the whole array as one row for None; the listed axes
    flattened into one, in order, for a tuple). A view where one is possible; with ``view``,
    None when it is not (an ``out`` must be written in place, never through a copy)."""
    if axis is None:
        if view and not a.flags.c_contiguous:
            return None
        return a.reshape(1, -1)  # a copy only for a non-contiguous input
    if isinstance(axis, tuple):
        lead = a.ndim - len(axis)
        moved = np.moveaxis(a, axis, range(lead, a.ndim))
        shape = moved.shape[:lead] + (math.prod(moved.shape[lead:]),)
        rows = moved.reshape(shape)
        if view and rows.size and not np.may_share_memory(rows, a):
            return None  # reshape had to copy
        return rows
    if axis == a.ndim - 1:
        return a
    return np.moveaxis(a, axis, -1)


def move_axis_back(rows: np.ndarray, axis, shape):
    """Inverse of :func:`move_axis_last`: ``rows`` back to ``shape``."""
    if axis is None:
        return rows.reshape(shape)
    if isinstance(axis, tuple):
        lead = len(shape) - len(axis)
        kept = tuple(n for i, n in enumerate(shape) if i not in axis)
        moved = rows.reshape(kept + tuple(shape[i] for i in axis))
        return np.moveaxis(moved, range(lead, len(shape)), axis)
    return np.moveaxis(rows, -1, axis)


def rows_of(moved: np.ndarray, x: Operand, compute: np.dtype):
    """(flat rows, row stride) of ``moved`` (a view of ``x`` with the axis last) as the
    kernels read it: half-precision bits when computing in float32, else values of the
    compute dtype; copying only what cannot be read in place."""
    if x.half is not None and compute == _F32:
        if not moved.dtype.isnative:
            moved = moved.astype(moved.dtype.newbyteorder("="))
        return _flat_rows(moved.view(x.half))
    if x.bits_only:  # bfloat16 bits wanted as float64: widen first
        moved = widen_bits(moved)
    return _flat_rows(moved, compute)


def _flat_rows(moved: np.ndarray, dtype=None):
    if dtype is None or moved.dtype == dtype:
        layout = row_layout(moved)
        if layout is not None:
            return layout
    contiguous = np.ascontiguousarray(moved, dtype=dtype)
    return contiguous.reshape(-1), moved.shape[-1]


def widen_bits(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 ``bits`` (any shape)."""
    values = np.empty(bits.size, np.float32)
    halfbits.widen(np.ascontiguousarray(bits).reshape(-1), values)
    return values.reshape(bits.shape)


def cast_result(values, dtype: np.dtype, bits_only: bool):
    """float ``values`` (array or scalar) in the result dtype: rounded to the bits of
    bfloat16 for :class:`Bfloat16Bits` input, else ``astype``."""
    if not bits_only and np.ndim(values) == 0:
        return dtype.type(values)
    values = np.asarray(values)
    if bits_only:
        bits = np.empty(values.size, BFLOAT16_BITS)
        with np.errstate(all="ignore"):
            halfbits.narrow(np.ascontiguousarray(values, np.float32).reshape(-1), bits)
        return bits.reshape(values.shape)[()]
    return values.astype(dtype, copy=False)[()]  # our own arrays: no copy needed


def broadcast_argument(value: np.ndarray, x_shape, func: str, name: str, x_name: str):
    """``value`` broadcast to ``x_shape`` (ValueError naming both shapes otherwise)."""
    try:
        return np.broadcast_to(value, x_shape)
    except ValueError:
        raise ValueError(f"{func}: {name} has shape {value.shape}, which does not broadcast to "
                         f"the shape of {x_name} {tuple(x_shape)}") from None


def mask_rows(where, x_shape, axis, func: str):
    """(flat rows, row stride) of the boolean ``where`` broadcast to ``x_shape``."""
    mask = np.asarray(where)
    if mask.dtype != np.bool_:
        raise TypeError(f"{func}: where must be a boolean array, got dtype {mask.dtype}")
    mask = broadcast_argument(mask, x_shape, func, "where", "x")
    if axis is None and not mask.flags.c_contiguous:
        mask = np.ascontiguousarray(mask)
    return _flat_rows(move_axis_last(mask, axis))


def _overlap(out_flat, out_stride, x_flat, x_stride) -> str:
    """"none", "same" (the output rows are the input rows: in place) or "partial"."""
    if not np.may_share_memory(out_flat, x_flat):
        return "none"
    same = (out_flat.__array_interface__["data"][0] == x_flat.__array_interface__["data"][0]
            and out_flat.shape == x_flat.shape and out_stride == x_stride)
    return "same" if same else "partial"


# --- batches ------------------------------------------------------------------------------------

@dataclass(slots=True)
class Batch:
    """One call as the plan runs it: ``kernel(*args, n_tasks)`` over ``n_rows`` rows of
    ``n_cols``, then ``finish()`` gives the caller's result."""

    kernel: KernelPair
    args: tuple
    n_rows: int
    n_cols: int
    finish: Callable[[], object]


@dataclass(slots=True)
class RowBatch:
    """A call of the softmax family: flat rows in, flat rows (or one value per row) out, in
    the layout every kernel and split pass of kernels/softmax.py takes."""

    kernel: KernelPair
    x: np.ndarray            # flat input rows: compute dtype, or half-precision bits
    x_stride: int
    mask: np.ndarray | None  # flat boolean mask rows, or None
    mask_stride: int
    out: np.ndarray | None   # flat output rows (one element per row when reducing); None:
    #                          in place, the kernel overwrites ``x``
    out_stride: int
    n_rows: int
    n_cols: int
    inv_t: object            # 1/temperature in the compute dtype, None for temperature 1
    result: object           # what the caller gets back
    written: np.ndarray | None = None  # a temporary the kernel wrote, to copy into result

    @property
    def args(self) -> tuple:
        return (self.x, self.x_stride, self.mask, self.mask_stride, self.out, self.out_stride,
                self.n_rows, self.n_cols, self.inv_t)

    def finish(self):
        """Copy a temporary into the result if one was used; return the result."""
        if self.written is not None:
            np.copyto(self.result, self.written, casting="unsafe")
        return self.result


@dataclass(slots=True)
class ColumnBatch:
    """A call of the softmax family along a strided axis of a C-ordered array: ``x`` flat, as
    (n_outer, n_red, n_inner), each of its n_outer * n_inner columns a row of n_red elements;
    ``out`` flat, of the same layout (or (n_outer, n_inner) for a reduction; in place: ``x``
    itself, or None for a kernel that reads its columns where they are). The plan runs
    ``kernel`` (the operation's ``columns`` of the registry, or its ``columns_read_in_place``
    for float32/float64: ``read_in_place``) over tiles of columns."""

    kernel: KernelPair
    x: np.ndarray
    n_outer: int
    n_red: int
    n_inner: int
    out: np.ndarray | None
    inv_t: object
    result: object
    written: np.ndarray | None = None
    read_in_place: bool = False

    @property
    def n_rows(self) -> int:
        return self.n_outer * self.n_inner

    @property
    def n_cols(self) -> int:
        return self.n_red

    finish = RowBatch.finish


# --- the softmax family -------------------------------------------------------------------------

def prepare_rows(op, x, axis, where, out, dtype, *, temperature=1.0, keepdims=False,
                 columns=False) -> RowBatch | ColumnBatch:
    """Validate a call of softmax, log_softmax or logsumexp and lay it out as rows.

    With ``columns``, rows along a strided axis may come as a :class:`ColumnBatch` (the plan
    runs both; callers that take the rows apart themselves, such as the split passes of dask
    or a weighted logsumexp, leave it False).

    The result has the shape of ``x`` (``op.reduces`` False) or one value per row, with
    ``keepdims`` as in NumPy. float16 and bfloat16 input is read through an integer view of
    its bits and the result written the same way: no float32 copy of the input is made.
    """
    func = op.name
    xo = operand(x, func, "x")
    x_arr = xo.array
    compute, result_dtype = dtype_policy(xo, dtype, func)
    bits = xo.half if compute == _F32 else None
    # What the kernel writes: the compute dtype, or a half-precision result as its bits.
    kernel_dtype = bits if bits is not None and result_dtype.itemsize == 2 else compute
    # A 0-d array (a scalar) is one row of one element with axis=None, as in SciPy; an
    # int axis is out of its bounds, a ValueError naming the axis.
    axis = check_axis(axis, x_arr.ndim, func, several=True)
    inv_t = check_temperature(temperature, func, compute)
    reduce = op.reduces

    if columns and where is None and op.columns is not None:
        columns = _column_batch(op, xo, compute, kernel_dtype, result_dtype, axis, inv_t, out,
                                dtype, keepdims)
        if columns is not None:
            return columns

    x_moved = move_axis_last(x_arr, axis)
    n_cols = x_moved.shape[-1]
    row_shape = x_moved.shape[:-1]
    n_rows = math.prod(row_shape)
    if reduce:
        if keepdims:
            result_shape = tuple(1 if is_reduced(i, axis) else n
                                 for i, n in enumerate(x_arr.shape))
        else:
            result_shape = () if axis is None else row_shape
    else:
        result_shape = x_arr.shape
    if out is not None:
        out = check_out(out, result_shape, result_dtype, func,
                        dtype_name=xo.result_name(converted=dtype is not None))
    mask, mask_stride = (None, 0) if where is None else mask_rows(where, x_arr.shape, axis,
                                                                   func)
    x_flat, x_stride = rows_of(x_moved, xo, compute)
    kernel_inv_t = None if inv_t == 1.0 else compute.type(inv_t)
    kernel = op.kernels[0]

    # The kernel writes straight into ``out`` when its rows lie flat in memory, in the kernel's
    # dtype, and it is either apart from the input or exactly the input (in place).
    if out is not None and result_dtype.itemsize == kernel_dtype.itemsize:
        rows = _writable_rows(out.view(kernel_dtype), axis, reduce, keepdims)
        layout = None if rows is None else row_layout(rows)
        if layout is not None and (layout[1] >= n_cols or n_rows <= 1):
            out_flat, out_stride = layout
            overlap = _overlap(out_flat, out_stride, x_flat, x_stride)
            if overlap == "same" and x_flat.flags.writeable and not reduce:
                return RowBatch(kernel, x_flat, x_stride, mask, mask_stride, None, x_stride,
                                n_rows, n_cols, kernel_inv_t, out)
            if overlap == "none":
                return RowBatch(kernel, x_flat, x_stride, mask, mask_stride, out_flat,
                                max(out_stride, 1), n_rows, n_cols, kernel_inv_t, out)

    # Otherwise the kernel writes a fresh C-ordered buffer of rows.
    buffer = np.empty(row_shape if reduce else x_moved.shape, kernel_dtype)
    out_flat = buffer.reshape(-1)
    out_stride = 1 if reduce else n_cols
    shaped = buffer.reshape(result_shape) if reduce else move_axis_back(buffer, axis,
                                                                       x_arr.shape)
    if shaped.dtype != result_dtype and shaped.dtype.itemsize == result_dtype.itemsize:
        shaped = shaped.view(result_dtype)  # half-precision bits as the caller's dtype
    if out is None and result_dtype == shaped.dtype:
        return RowBatch(kernel, x_flat, x_stride, mask, mask_stride, out_flat, out_stride,
                        n_rows, n_cols, kernel_inv_t, shaped)
    result = np.empty(result_shape, result_dtype) if out is None else out
    return RowBatch(kernel, x_flat, x_stride, mask, mask_stride, out_flat, out_stride, n_rows,
                    n_cols, kernel_inv_t, result, written=shaped)


def _column_batch(op, xo, compute, kernel_dtype, result_dtype, axis, inv_t, out, dtype,
                  keepdims):
    """The call as a :class:`ColumnBatch` when its rows run along a strided axis of a
    C-ordered array read as it is (float32/float64 of the compute dtype, or half-precision
    bits computed in float32, the result in the same storage unless it is reduced); else
    None (the rows are then moved last, a copy)."""
    x_arr = xo.array
    if not isinstance(axis, int) or axis == x_arr.ndim - 1 or x_arr.size == 0 \
            or not x_arr.flags.c_contiguous or not x_arr.dtype.isnative:
        return None
    if xo.half is not None and compute == _F32:
        x_store = x_arr.view(xo.half)
    elif x_arr.dtype == compute and not xo.bits_only:
        x_store = x_arr
    else:
        return None
    reduce = op.reduces
    if not reduce and kernel_dtype != x_store.dtype:
        return None  # the tiles are computed in place, in the storage dtype
    shape = x_arr.shape
    n_outer, n_red, n_inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    row_shape = shape[:axis] + shape[axis + 1:] if reduce else shape
    result_shape = shape[:axis] + (1,) + shape[axis + 1:] if reduce and keepdims else row_shape

    read_in_place = op.columns_read_in_place is not None and x_store.dtype.kind == "f"
    kernel = op.columns_read_in_place if read_in_place else op.columns

    def batch(out_flat, result, written=None):
        return ColumnBatch(kernel, x_store.reshape(-1), n_outer, n_red, n_inner, out_flat,
                           None if inv_t == 1.0 else compute.type(inv_t), result, written,
                           read_in_place)

    if out is not None:
        out = check_out(out, result_shape, result_dtype, op.name,
                        dtype_name=xo.result_name(converted=dtype is not None))
        if out.itemsize == kernel_dtype.itemsize and out.flags.c_contiguous:
            flat = out.view(kernel_dtype).reshape(-1)
            if not np.may_share_memory(flat, x_store):
                return batch(flat, out)
            if not reduce and x_store.flags.writeable and flat.ctypes.data == x_store.ctypes.data:
                # in place: each tile is read whole before it is written (a kernel reading
                # its columns in place takes None: one array, no overlap check in its loops)
                return batch(None if read_in_place else flat, out)
    buffer = np.empty(row_shape, kernel_dtype)
    shaped = buffer.reshape(result_shape)
    if shaped.dtype != result_dtype and shaped.dtype.itemsize == result_dtype.itemsize:
        shaped = shaped.view(result_dtype)  # half-precision bits as the caller's dtype
    if out is None and result_dtype == shaped.dtype:
        return batch(buffer.reshape(-1), shaped)
    return batch(buffer.reshape(-1), np.empty(result_shape, result_dtype) if out is None else out,
                 shaped)


def prepare_weighted_logsumexp(op, x, b, axis, where, out, dtype, *, keepdims,
                                return_sign) -> Batch:
    """Validate a logsumexp with weights ``b`` (None: all 1) or ``return_sign``, SciPy's
    options, and lay it out as rows: those of :func:`prepare_rows` for ``x`` (and ``b``)
    broadcast together, and rows of weights in the compute dtype. The result is
    ``log|sum(b * exp(x))|`` and, with ``return_sign``, a tuple with its sign."""
    func = op.name
    xo = operand(x, func, "x")
    shape = xo.array.shape
    if b is not None:
        bo = operand(b, func, "b")
        try:
            shape = np.broadcast_shapes(shape, bo.array.shape)
        except ValueError:
            raise ValueError(f"{func}: b has shape {bo.array.shape}, which does not broadcast "
                             f"with the shape of x {xo.array.shape}") from None
        promoted = common_dtype(xo, bo, func, ("x", "b"))
        if dtype is None and promoted is not xo:  # x takes b's wider dtype, as in SciPy
            dtype = dtype_policy(promoted, None, func)[0]
        if shape != xo.array.shape:
            xo = Operand(np.broadcast_to(xo.array, shape), xo.half, xo.bits_only)
    rows = prepare_rows(op, Bfloat16Bits(xo.array) if xo.bits_only else xo.array, axis, where,
                        out, dtype, keepdims=keepdims)
    compute = np.dtype(np.float32) if rows.x.dtype.kind in "iu" else rows.x.dtype
    if b is None:
        b_flat, b_stride = np.ones(max(rows.n_cols, 1), compute), 0
    else:
        values = widen_bits(bo.array) if bo.bits_only else bo.array
        b_flat, b_stride = _flat_rows(
            move_axis_last(np.broadcast_to(values, shape), check_axis(axis, len(shape), func,
                                                                     several=True)), compute)
    sign = np.empty(rows.n_rows)

    def finish():
        value = rows.finish()
        if not return_sign:
            return value
        if rows.n_cols == 0:
            sign.fill(-1.0)  # SciPy: the sign of the -inf of an empty sum
        result = np.asarray(value)
        return value, cast_result(sign.reshape(result.shape), result.dtype,
                                  result.dtype == BFLOAT16_BITS)

    return Batch(op.kernels[1], (rows.x, rows.x_stride, b_flat, b_stride, rows.mask,
                                 rows.mask_stride, rows.out, rows.out_stride, sign,
                                 bool(return_sign), rows.n_rows, rows.n_cols), rows.n_rows,
                 rows.n_cols, finish)


def _writable_rows(out: np.ndarray, axis, reduce: bool, keepdims: bool):
    """A view of ``out`` as rows the kernel can write (one column when reducing), or None."""
    if reduce:
        if keepdims and axis is not None:
            out = np.squeeze(out, axis)
        elif axis is None and out.size == 1:
            out = out.reshape(1)
        return out[..., None]
    return move_axis_last(out, axis, view=True)


def contiguous_rows(x, axis, out, reduce: bool):
    """The rows of the most frequent call, or None: a C-contiguous native float32/float64
    ndarray along its last axis, with ``out`` absent, ``x`` itself, or a separate C-contiguous
    array (and no ``where``, ``dtype``, temperature or ``keepdims``, which the caller checks).

    Returns ``(x, out, n_rows, n_cols, result)``: ``x`` (a writable alias when read-only),
    ``out`` where the kernel writes (None for in place), ``result`` what the call returns.
    It skips :func:`prepare_rows`, whose generality costs several microseconds: as much as a
    softmax of a few thousand elements. Anything unusual returns None and takes
    :func:`prepare_rows`, which validates it.
    """
    if type(x) is not np.ndarray:
        return None
    ndim = x.ndim
    x_dtype = x.dtype
    # identity tests: the builtin native dtypes are singletons (anything else takes the
    # general path, which handles it)
    if not (ndim and type(axis) is int and (axis == -1 or axis == ndim - 1)
            and (x_dtype is _F32 or x_dtype is _F64)):
        return None
    flags = x.flags
    if not flags.c_contiguous:
        return None
    shape = x.shape
    n_cols = shape[-1]
    size = x.size
    if n_cols == 0 or size == 0:
        return None
    if reduce:
        shape = shape[:-1]
    if out is None:
        result = np.empty(shape, x_dtype)
        return (x if flags.writeable else writable_alias(x)), result, size // n_cols, n_cols, \
            result
    if not (type(out) is np.ndarray and out.shape == shape and out.dtype is x_dtype
            and out.flags.c_contiguous and out.flags.writeable):
        return None
    if out is x and not reduce and flags.writeable:
        return x, None, size // n_cols, n_cols, out  # in place
    if (out.base is not None or x.base is not None) and np.may_share_memory(out, x):
        return None  # two arrays that own their memory cannot overlap; views may
    return (x if flags.writeable else writable_alias(x)), out, size // n_cols, n_cols, out


# --- the sparse family -------------------------------------------------------------------------

def prepare_entmax(op, x, axis, where, out, dtype, *, alpha, n_iter) -> Batch:
    """Validate a call of sparsemax, entmax15 or entmax_bisect: the rows of the softmax
    family (:func:`prepare_rows`) and one α per row (:func:`check_alpha`); ``n_iter`` 0 for
    the exact threshold (kernels/sparse.py)."""
    rows = prepare_rows(op, x, axis, where, out, dtype)
    shape = np.shape(x.bits if isinstance(x, Bfloat16Bits) else x)
    alphas, alpha_stride = check_alpha(alpha, op.name, shape, check_axis(axis, len(shape),
                                                                         op.name))
    return Batch(rows.kernel, (rows.x, rows.x_stride, rows.mask, rows.mask_stride, rows.out,
                               rows.out_stride, rows.n_rows, rows.n_cols, alphas, alpha_stride,
                               n_iter), rows.n_rows, rows.n_cols, rows.finish)


def prepare_entmax_backward(op, grad, y, alpha, axis, out) -> Batch:
    """Validate a backward pass of the sparse family: :func:`prepare_backward`, and one α
    per row (:func:`check_alpha`)."""
    batch = prepare_backward(op, grad, y, axis, out, "y")
    shape = np.shape(y.bits if isinstance(y, Bfloat16Bits) else y)
    alphas, alpha_stride = check_alpha(alpha, op.name, shape, check_axis(axis, len(shape),
                                                                         op.name))
    return Batch(batch.kernel, batch.args + (alphas, alpha_stride), batch.n_rows, batch.n_cols,
                 batch.finish)


# --- the backward passes ------------------------------------------------------------------------

def prepare_backward(op, grad, saved, axis, out, saved_name: str) -> Batch:
    """Validate a backward pass (``grad`` and the ``saved`` forward output) as rows. The
    kernel writes a buffer of its own, then copied into ``out``: any overlap of ``out`` with
    the inputs is then harmless (the kernel reads each element before writing it)."""
    func = op.name
    g = operand(grad, func, "grad")
    s = operand(saved, func, saved_name)
    if g.array.shape != s.array.shape:
        raise ValueError(f"{func}: grad has shape {g.array.shape} but {saved_name} has shape "
                         f"{s.array.shape}; they must be equal")
    kind = common_dtype(g, s, func, ("grad", saved_name))
    compute, result_dtype = dtype_policy(kind, None, func)
    axis = check_axis(axis, s.array.ndim, func)  # 0-d: one row of one element with None
    shape = s.array.shape
    if out is not None:
        out = check_out(out, shape, result_dtype, func, dtype_name=kind.result_name())
    g_moved, s_moved = move_axis_last(g.array, axis), move_axis_last(s.array, axis)
    g_flat, g_stride = rows_of(g_moved, g, compute)
    s_flat, s_stride = rows_of(s_moved, s, compute)
    n_cols = s_moved.shape[-1]
    n_rows = s_moved.size // n_cols if n_cols else 0
    out_dtype = kind.half if kind.half is not None and result_dtype.itemsize == 2 else compute
    buffer = np.empty(s_moved.shape, out_dtype)

    def finish():
        result = move_axis_back(buffer, axis, shape)
        if result.dtype != result_dtype:
            result = result.view(result_dtype) if result.dtype.itemsize == 2 else \
                result.astype(result_dtype)
        if out is None:
            return result
        np.copyto(out, result, casting="unsafe")
        return out

    return Batch(op.kernels[0], (g_flat, g_stride, s_flat, s_stride, buffer.reshape(-1), n_cols,
                                 n_rows, n_cols), n_rows, n_cols, finish)


# --- cross-entropy ------------------------------------------------------------------------------

def check_z_loss(z_loss, func: str) -> float:
    """The z-loss coefficient: a finite number >= 0."""
    if z_loss == 0 and type(z_loss) is float:  # the default, quickly
        return 0.0
    if not _is_real(z_loss) or not (0.0 <= float(z_loss) < math.inf):
        raise ValueError(f"{func}: z_loss must be a finite number >= 0, got {z_loss!r}")
    return float(z_loss)


def check_softcap(softcap, func: str, compute: np.dtype):
    """None, or ``(cap, 1 / cap)`` in the compute dtype for a positive finite ``softcap``."""
    if softcap is None:
        return None
    if not _is_real(softcap) or not (0.0 < float(softcap) < math.inf):
        raise ValueError(f"{func}: softcap must be a positive finite number or None, got "
                         f"{softcap!r}")
    cap = float(softcap)
    return compute.type(cap), compute.type(1.0 / cap)


def check_smoothing(label_smoothing, func: str) -> float:
    if not _is_real(label_smoothing) or not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{func}: label_smoothing must be a number in [0, 1], got "
                         f"{label_smoothing!r}")
    return float(label_smoothing)


@dataclass(slots=True)
class CrossEntropyRows:
    """A cross-entropy's rows as its kernels take them (kernels/grad.py), and what reduces
    their losses: :meth:`batch` gives the batch of the loss (and gradient) of rows
    ``[start, stop)``; :meth:`reduce` the caller's loss from the per-row losses and
    logsumexps. ``x`` is flat rows (``x_stride`` apart) or a 3-D (N, C, D) view with the
    classes on axis 1; so are ``p`` (probability targets, or None) and ``grad``."""

    kernels: tuple
    x: np.ndarray
    x_stride: int
    targets: np.ndarray       # int64, one per row (all 0 for probability targets)
    ignore_index: int
    n_rows: int
    n_cols: int
    inv_t: float
    smoothing: float
    w: np.ndarray | None      # class weights in the compute dtype
    w_total: float            # their sum (n_cols without weights)
    p: np.ndarray | None
    p_stride: int
    cap: tuple | None         # (cap, 1 / cap), or None
    z_loss: float
    reduction: str
    kept: np.ndarray          # rows that count
    count: int                # how many
    denominator: float        # of "mean": the weights of the counted targets (rows for p)
    losses: np.ndarray
    lses: np.ndarray          # each row's logsumexp (float64)
    read_ignored: bool        # ignored rows' logsumexps are wanted too (return_lse, z_loss)

    def scales(self) -> tuple[float, float]:
        """(scale of the losses, z_scale) in the gradient: 1 / denominator and 2 * z_loss /
        counted rows for "mean", 1 and 2 * z_loss otherwise."""
        if self.reduction != "mean":
            return 1.0, 2.0 * self.z_loss
        count = self.count
        # weights of the counted targets summing to 0: NaN gradients, as PyTorch
        return (1.0 / self.denominator if self.denominator else math.inf,
                2.0 * self.z_loss / count if count else 0.0)

    def batch(self, start, stop, grad=None, grad_stride=0, in_place=False,
              finish=lambda: None, logits=None) -> Batch:
        """The batch of rows [start, stop) of flat rows (or all rows of a 3-D ``x``): the loss
        kernel, or with ``grad`` (or ``in_place``) the gradient kernel writing there.
        ``logits``: those rows' logits (flat, ``x_stride`` apart), when ``x`` holds none
        (linear_cross_entropy computes them a chunk at a time)."""
        x, p, targets, losses, lses = self.x, self.p, self.targets, self.losses, self.lses
        if (start, stop) != (0, self.n_rows):  # rows of flat rows: a few rows of the batch
            x = x[start * self.x_stride:] if logits is None else logits
            p = None if p is None else p[start * self.p_stride:]
            targets, losses = targets[start:stop], losses[start:stop]
            lses = lses[start:stop]
        elif logits is not None:
            x = logits
        n = stop - start
        rows = (x, self.x_stride, targets, self.ignore_index, n, self.n_cols, self.inv_t,
                self.smoothing, self.w, self.w_total, p, self.p_stride, self.cap)
        if grad is None and not in_place:
            return Batch(self.kernels[0], rows + (losses, lses, self.read_ignored), n,
                         self.n_cols, finish)
        scale, z_scale = self.scales()
        return Batch(self.kernels[1], rows + (scale, z_scale, losses, lses, self.read_ignored,
                                              grad, grad_stride), n, self.n_cols, finish)

    def reduce(self):
        """The loss (float64) reduced as asked: per row for "none" (z-loss added to the
        counted rows), else the sum, divided for "mean" by the denominator (the z-loss by
        the number of counted rows, as Liger-Kernel's lse_square_scale)."""
        z = None
        if self.z_loss:
            with np.errstate(over="ignore", invalid="ignore"):
                z = np.where(self.kept, self.z_loss * self.lses**2, 0.0)
        if self.reduction == "none":
            return self.losses if z is None else self.losses + z
        total = self.losses.sum()
        if self.reduction == "sum":
            return total if z is None else total + z.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = total / self.denominator if self.count else np.nan
            if z is not None and self.count:
                loss = loss + z.sum() / self.count
        return loss


def prepare_cross_entropy(op, logits, targets, *, weight, ignore_index, label_smoothing,
                          reduction, temperature, z_loss, softcap, return_lse, return_grad,
                          grad_out) -> Batch:
    """Validate a cross-entropy call: logits (rows, classes), (classes,) or (N, C, d1, ...)
    with the classes on axis 1 (read in place, rows.row_at); class indices or probabilities
    (float, the logits' shape) as targets; the options of kernels/grad.py."""
    func = op.name
    xo, compute, result_dtype, rows, one_row = class_rows(logits, func, n_d=True)
    x = xo.array
    n_rows, n_cols = (rows.shape[0] * rows.shape[2], rows.shape[1]) if rows.ndim == 3 \
        else rows.shape
    row_shape = () if one_row else (x.shape[:1] + x.shape[2:])
    check_choice(reduction, func, "reduction", REDUCTIONS)
    ignore_index = check_int(ignore_index, func, "ignore_index")
    smoothing = check_smoothing(label_smoothing, func)
    inv_t = check_temperature(temperature, func, compute)
    z_loss = check_z_loss(z_loss, func)
    cap = check_softcap(softcap, func, compute)
    w = None if weight is None else class_weights(weight, func, n_cols, compute)

    probabilities = _is_probabilities(targets, x.shape)
    if probabilities:
        if ignore_index >= 0:  # PyTorch's rule
            raise ValueError(f"{func}: ignore_index is not supported for probability targets "
                             f"(float targets of the logits' shape), got {ignore_index}")
        p_values = operand(targets, func, "targets")
        p_values = widen_bits(p_values.array) if p_values.bits_only else p_values.array
        p_rows = class_layout(np.asarray(p_values, compute), x.ndim > 2, one_row)
        if p_rows.ndim != rows.ndim:  # (N, C, 1): rows of the classes
            p_rows = p_rows[:, :, 0]
        p_flat, p_stride = (p_rows, 0) if p_rows.ndim == 3 else _flat_rows(p_rows, compute)
        t = np.zeros(n_rows, np.int64)
        kept = np.ones(n_rows, bool)
        count = n_rows
        denominator = float(n_rows)  # PyTorch divides by the rows, weights or not
    else:
        p_flat, p_stride = None, 0
        t = check_labels(targets, func, "targets", n_rows, n_cols, ignore_index, one_row,
                         shape=None if x.ndim <= 2 else row_shape)
        kept = t != ignore_index
        count = int(np.count_nonzero(kept))
        denominator = float(count) if w is None else float(np.asarray(w, np.float64)[t[kept]]
                                                            .sum())
    if rows.ndim == 3:
        x_flat, x_stride = rows if xo.half is None else rows.view(xo.half), 0
    else:
        x_flat, x_stride = rows_of(rows, xo, compute)
    ce = CrossEntropyRows(
        op.kernels, x_flat, x_stride, t, ignore_index, n_rows, n_cols, inv_t, smoothing, w,
        float(n_cols) if w is None else float(np.asarray(w, np.float64).sum()), p_flat,
        p_stride, cap, z_loss, reduction, kept, count, denominator, np.empty(n_rows),
        np.empty(n_rows), bool(z_loss or return_lse))

    def results():
        value = cast_result(ce.reduce(), result_dtype, xo.bits_only)
        if reduction == "none":
            value = value.reshape(row_shape)[()]
        extra = () if not return_lse else (
            cast_result(ce.lses, result_dtype, xo.bits_only).reshape(row_shape)[()],)
        return value, extra

    if not (return_grad or grad_out is not None):
        def finish():
            value, extra = results()
            return (value,) + extra if extra else value
        return ce.batch(0, n_rows, finish=finish)

    grad, result = gradient_buffer(func, xo, result_dtype, compute, grad_out)
    kernel_dtype = xo.half if xo.half is not None else compute
    if rows.ndim == 3:
        grad_rows, grad_stride = grad.view(kernel_dtype).reshape(rows.shape), 0
        in_place = np.may_share_memory(grad_rows, x_flat)
        if in_place and not (grad_rows.ctypes.data == x_flat.ctypes.data
                             and grad_rows.strides == x_flat.strides):
            raise ValueError(f"{func}: grad_out overlaps logits other than exactly")
    else:
        grad_rows, grad_stride, in_place = gradient_rows(func, grad, kernel_dtype, x_flat,
                                                         x_stride, n_rows, n_cols)

    def finish():  # the gradient last: what an ``out`` argument receives comes last
        value, extra = results()
        return (value,) + extra + (result,)

    return ce.batch(0, n_rows, None if in_place else grad_rows, grad_stride, in_place, finish)


@dataclass
class LinearRows:
    """A linear_cross_entropy call: ``hidden`` (N, H) and ``weight`` (V, H) in the compute
    dtype, ``bias`` (V,) or None, the cross-entropy of the logits ``hidden @ weight.T + bias``
    as :class:`CrossEntropyRows` without logits (computed ``chunk_rows`` rows at a time), and
    ``finish(loss, grads)``, which gives the caller's results."""

    hidden: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    ce: CrossEntropyRows
    chunk_rows: int
    return_grad: bool
    finish: Callable


def prepare_linear_cross_entropy(op, hidden, weight, targets, *, bias, ignore_index,
                                 label_smoothing, reduction, z_loss, softcap, chunk_size,
                                 chunk_rows, return_grad) -> LinearRows:
    """Validate a linear cross-entropy: ``hidden`` (rows, features), ``weight`` (classes,
    features) as in ``torch.nn.Linear``, ``bias`` (classes,), one class index per row.
    ``chunk_rows(n_rows, n_classes, itemsize, chunk_size)`` (the plan's) sizes the chunks."""
    func = op.name
    ho = operand(hidden, func, "hidden")
    wo = operand(weight, func, "weight")
    if ho.array.ndim != 2:
        raise ValueError(f"{func}: hidden must have shape (rows, features), got "
                         f"{ho.array.shape}")
    n_rows, features = ho.array.shape
    if wo.array.ndim != 2 or wo.array.shape[1] != features or wo.array.shape[0] == 0:
        raise ValueError(f"{func}: weight must have shape (classes, {features}) (at least one "
                         f"class; torch.nn.Linear's layout), got {wo.array.shape}")
    n_classes = wo.array.shape[0]
    operands = [ho, wo]
    if bias is not None:
        bo = operand(bias, func, "bias")
        if bo.array.shape != (n_classes,):
            raise ValueError(f"{func}: bias must have shape ({n_classes},), one per class, "
                             f"got {bo.array.shape}")
        operands.append(bo)
    kind = common_dtype(ho, wo, func, ("hidden", "weight"))
    compute, _ = dtype_policy(kind, None, func)

    def values(o):
        array = widen_bits(o.array) if o.bits_only else o.array
        return np.asarray(array, compute) if array.dtype != compute or \
            not array.dtype.isnative else array

    check_choice(reduction, func, "reduction", REDUCTIONS)
    ignore_index = check_int(ignore_index, func, "ignore_index")
    smoothing = check_smoothing(label_smoothing, func)
    z_loss = check_z_loss(z_loss, func)
    cap = check_softcap(softcap, func, compute)
    t = check_labels(targets, func, "targets", n_rows, n_classes, ignore_index)
    kept = t != ignore_index
    count = int(np.count_nonzero(kept))
    ce = CrossEntropyRows(
        op.kernels, None, n_classes, t, ignore_index, n_rows, n_classes, 1.0, smoothing, None,
        float(n_classes), None, 0, cap, z_loss, reduction, kept, count, float(count),
        np.empty(n_rows), np.empty(n_rows), bool(z_loss))
    chunk = chunk_rows(n_rows, n_classes, compute.itemsize,
                       check_int(chunk_size, func, "chunk_size", minimum=1, none_ok=True))

    def finish(loss, grads):
        value = cast_result(loss, *_result_kind(ho))
        if not return_grad:
            return value
        return value, tuple(None if g is None else cast_result(g, *_result_kind(o))
                            for g, o in zip(grads, operands + [None] * (3 - len(operands))))

    return LinearRows(values(ho), values(wo), None if bias is None else values(operands[2]),
                      ce, chunk, bool(return_grad), finish)


def _result_kind(o: Operand):
    """(result dtype, bits_only) of results in the format of operand ``o``."""
    return dtype_policy(o, None, "")[1], o.bits_only


def _is_probabilities(targets, logits_shape) -> bool:
    """Whether ``targets`` are probabilities (floats of the logits' shape), not indices."""
    if isinstance(targets, Bfloat16Bits):
        return targets.shape == logits_shape
    dtype = getattr(targets, "dtype", None)
    if dtype is None:
        dtype = np.asarray(targets).dtype
    dtype = np.dtype(dtype)
    return (dtype.kind == "f" or is_bfloat16(dtype)) and np.shape(targets) == logits_shape


def class_weights(weight, func: str, n_classes: int, compute: np.dtype) -> np.ndarray:
    """Class weights: real numbers of shape (classes,), as contiguous ``compute`` values."""
    wo = operand(weight, func, "weight")
    values = widen_bits(wo.array) if wo.bits_only else wo.array
    if values.shape != (n_classes,):
        raise ValueError(f"{func}: weight must have shape ({n_classes},), one per class, got "
                         f"{values.shape}")
    return np.ascontiguousarray(values, compute)


def class_layout(values: np.ndarray, three_d: bool, one_row: bool) -> np.ndarray:
    """An array of the logits' shape as the kernels read it: (1, C) for one row, (N, C, D) for
    more than two dimensions (a view where one is possible), else itself."""
    if one_row:
        return values.reshape(1, -1)
    if not three_d:
        return values
    shape = (values.shape[0], values.shape[1], math.prod(values.shape[2:]))
    try:
        view = values.view()
        view.shape = shape  # raises where a reshape would copy
        return view
    except AttributeError:
        return np.ascontiguousarray(values).reshape(shape)


def gradient_buffer(func, xo: Operand, result_dtype, compute, grad_out):
    """``(array the gradient is written to, what the caller gets)``: ``grad_out`` (checked:
    the logits' shape and dtype, C-contiguous or the logits themselves), else a new array."""
    x = xo.array
    if grad_out is None:
        grad = np.empty(x.shape, result_dtype)
        return grad, grad
    given = check_out(grad_out, x.shape, result_dtype, func, "grad_out",
                      dtype_name=xo.result_name())
    if not given.flags.c_contiguous:
        raise ValueError(f"{func}: grad_out must be C-contiguous (or logits itself)")
    return given, grad_out


def gradient_rows(func, grad, kernel_dtype, x_flat, x_stride, n_rows, n_cols):
    """``(flat rows, row stride, in place)`` of the gradient ``grad`` (C-contiguous, the
    logits' shape) as the kernels write it; in place when it is the logits' rows exactly."""
    grad_flat, grad_stride = row_layout(grad.view(kernel_dtype).reshape(n_rows, n_cols))
    in_place = np.may_share_memory(grad_flat, x_flat)
    if in_place and not (grad_flat.ctypes.data == x_flat.ctypes.data
                         and grad_stride == x_stride and x_flat.dtype == grad_flat.dtype):
        raise ValueError(f"{func}: grad_out overlaps logits other than exactly")
    return grad_flat, grad_stride, in_place


def prepare_entmax_loss(op, logits, targets, *, alpha, n_iter, ignore_index, reduction,
                        return_grad, grad_out) -> Batch:
    """Validate a Fenchel-Young loss of the sparse family (sparsemax_loss, entmax15_loss,
    entmax_bisect_loss) as rows of logits with one target and one α each."""
    def parameters(compute, n_rows):
        return check_alpha(alpha, op.name, (n_rows, 0), 1) + (n_iter,)

    return prepare_row_losses(op, logits, targets, parameters, ignore_index=ignore_index,
                              reduction=reduction, return_grad=return_grad, grad_out=grad_out)


def prepare_row_losses(op, logits, targets, parameters, *, ignore_index, reduction,
                       return_grad, grad_out) -> Batch:
    """Validate a loss over rows of logits with one target each (and its gradient on
    request). ``parameters(compute dtype, n_rows)`` checks the loss's own arguments and gives
    those its kernels take after ``n_cols``: ``op.kernels[0](x, x_stride, targets,
    ignore_index, n_rows, n_cols, *parameters, losses)`` and ``op.kernels[1](..., *parameters,
    scale, losses, grad, grad_stride)``."""
    func = op.name
    xo, compute, result_dtype, rows2d, one_row = class_rows(logits, func)
    x = xo.array
    n_rows, n_cols = rows2d.shape
    check_choice(reduction, func, "reduction", REDUCTIONS)
    ignore_index = check_int(ignore_index, func, "ignore_index")
    params = tuple(parameters(compute, n_rows))
    t = check_labels(targets, func, "targets", n_rows, n_cols, ignore_index, one_row)
    count = int(np.count_nonzero(t != ignore_index))
    x_flat, x_stride = rows_of(rows2d, xo, compute)
    losses = np.empty(n_rows)

    def loss():
        if reduction == "none":
            value = cast_result(losses, result_dtype, xo.bits_only)
            return value[0] if one_row else value
        total = losses.sum()
        if reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                total = total / count if count else np.nan
        return cast_result(total, result_dtype, xo.bits_only)

    rows = (x_flat, x_stride, t, ignore_index, n_rows, n_cols) + params
    if not (return_grad or grad_out is not None):
        return Batch(op.kernels[0], rows + (losses,), n_rows, n_cols, loss)

    kernel_dtype = xo.half if xo.half is not None else compute
    grad, result = gradient_buffer(func, xo, result_dtype, compute, grad_out)
    grad_flat, grad_stride, in_place = gradient_rows(func, grad, kernel_dtype, x_flat, x_stride,
                                                     n_rows, n_cols)
    scale = (1.0 / count if count else 0.0) if reduction == "mean" else 1.0
    return Batch(op.kernels[1], rows + (scale, losses, None if in_place else grad_flat,
                                        grad_stride), n_rows, n_cols, lambda: (loss(), result))


def class_rows(logits, func: str, n_d: bool = False):
    """Logits of shape (rows, classes), or (classes,) for one row: ``(operand, compute dtype,
    result dtype, 2-D rows, one_row)``; at least one class. With ``n_d``, also (N, C, d1, ...)
    with the classes on axis 1, as PyTorch: the rows are then a 3-D (N, C, D) view (D =
    d1 * ...; :func:`class_layout`), in the compute dtype (a copy only for another dtype or
    byte order), or 2-D (N * D, C) when D is 1."""
    xo = operand(logits, func, "logits")
    x = xo.array
    compute, result_dtype = dtype_policy(xo, None, func)
    if x.ndim == 0:
        raise ValueError(f"{func}: logits must have at least one dimension (shape (rows, "
                         "classes) or (classes,)), got a 0-d array")
    if x.ndim not in (1, 2) and not n_d:
        raise ValueError(f"{func}: logits must have shape (rows, classes) or (classes,), "
                         f"got {x.shape}")
    one_row = x.ndim == 1
    if (x.shape[0] if one_row else x.shape[1]) == 0:
        raise ValueError(f"{func}: logits must have at least one class")
    if x.ndim <= 2:
        return xo, compute, result_dtype, (x.reshape(1, -1) if one_row else x), one_row
    if xo.half is None and (x.dtype != compute or not x.dtype.isnative):
        x = np.ascontiguousarray(widen_bits(x) if xo.bits_only else x, compute)
        xo = Operand(x, None)
    elif not x.dtype.isnative:
        x = np.ascontiguousarray(x.astype(x.dtype.newbyteorder("=")))
        xo = Operand(x, xo.half, xo.bits_only)
    rows = class_layout(x, True, False)
    if rows.shape[2] == 1:
        return xo, compute, result_dtype, rows[:, :, 0], one_row
    return xo, compute, result_dtype, rows, one_row


def check_labels(labels, func, name, n_rows, n_classes, ignore_index=None,
                 one_row=False, shape=None) -> np.ndarray:
    """Class indices ``labels`` (argument ``name``), one per row, as contiguous int64: an
    integer array of shape (rows,), or () for one row, or ``shape`` when given (TypeError for
    another dtype, ValueError for another shape), each in [0, n_classes) or ``ignore_index``
    (IndexError)."""
    t = np.asarray(labels)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{func}: {name} must be integer class indices, got dtype {t.dtype}")
    want = () if one_row else ((n_rows,) if shape is None else tuple(shape))
    if t.shape != want:
        rows = "one row" if one_row else (f"{n_rows} rows" if shape is None else
                                          "that shape and classes on axis 1")
        raise ValueError(f"{func}: {name} must have shape {want} for logits of {rows}, got "
                         f"{t.shape}")
    t = np.ascontiguousarray(t.reshape(-1), dtype=np.int64)
    beyond = t.view(np.uint64) >= n_classes  # negatives wrap to huge
    if beyond.any():
        outside = np.flatnonzero(beyond)
        bad = outside if ignore_index is None else outside[t[outside] != ignore_index]
        if bad.size:
            row = int(bad[0])
            allowed = "" if ignore_index is None else f" nor ignore_index={ignore_index}"
            raise IndexError(f"{func}: {name}[{row}] = {t[row]} is not a class index in "
                             f"[0, {n_classes}){allowed}")
    return t


# --- distillation -------------------------------------------------------------------------------

DIVERGENCE_REDUCTIONS = ("batchmean", "sum", "mean", "none")


def prepare_distillation(op, student_logits, teacher_logits, *, mode, beta, temperature, where,
                         reduction, return_grad, grad_out) -> Batch:
    """Validate a divergence between rows of student and teacher logits of one shape, (rows,
    classes) or (classes,), computed in the student's compute dtype (the teacher is read in
    it: half-precision bits widened by the kernel, other dtypes converted), with its gradient
    with respect to the student's logits on request. ``mode`` and ``beta`` go to the kernels
    as they are (kernels/distill.py); the loss is T**2 times the divergence, its gradient T
    times the kernel's, each divided as ``reduction`` says."""
    func = op.name
    so = operand(student_logits, func, "student_logits")
    to = operand(teacher_logits, func, "teacher_logits")
    s, t = so.array, to.array
    if s.ndim == 0:
        raise ValueError(f"{func}: student_logits must have at least one dimension (shape "
                         "(rows, classes) or (classes,)), got a 0-d array")
    if s.ndim > 2:
        raise ValueError(f"{func}: student_logits must have shape (rows, classes) or "
                         f"(classes,), got {s.shape}")
    if t.shape != s.shape:
        raise ValueError(f"{func}: student_logits has shape {s.shape} but teacher_logits has "
                         f"shape {t.shape}; they must be equal")
    if s.shape[-1] == 0:
        raise ValueError(f"{func}: student_logits must have at least one class")
    compute, result_dtype = dtype_policy(so, None, func)
    check_choice(reduction, func, "reduction", DIVERGENCE_REDUCTIONS)
    inv_t = check_temperature(temperature, func, compute)
    one_row = s.ndim == 1
    s_rows, t_rows = (s.reshape(1, -1), t.reshape(1, -1)) if one_row else (s, t)
    n_rows, n_cols = s_rows.shape
    mask, mask_stride = (None, 0) if where is None else mask_rows(where, s.shape, s.ndim - 1,
                                                                   func)
    s_flat, s_stride = rows_of(s_rows, so, compute)
    t_flat, t_stride = rows_of(t_rows, to, compute)
    losses = np.empty(n_rows)
    divisor = {"batchmean": n_rows, "mean": n_rows * n_cols}.get(reduction, 1)

    def loss():
        if reduction == "none":
            value = cast_result(losses, result_dtype, so.bits_only)
            return value[0] if one_row else value
        with np.errstate(invalid="ignore", divide="ignore"):
            total = losses.sum() / divisor if divisor else np.nan
        return cast_result(total, result_dtype, so.bits_only)

    temperature_value = 1.0 / inv_t
    rows = (s_flat, s_stride, t_flat, t_stride, mask, mask_stride, n_rows, n_cols, inv_t, mode,
            float(beta), temperature_value ** 2)
    if not (return_grad or grad_out is not None):
        return Batch(op.kernels[0], rows + (losses,), n_rows, n_cols, loss)

    kernel_dtype = so.half if so.half is not None else compute
    if grad_out is not None:
        grad = check_out(grad_out, s.shape, result_dtype, func, "grad_out",
                         dtype_name=so.result_name())
        if not grad.flags.c_contiguous:
            raise ValueError(f"{func}: grad_out must be C-contiguous (or student_logits "
                             "itself)")
        if np.may_share_memory(grad, t) or np.may_share_memory(grad, t_flat):
            raise ValueError(f"{func}: grad_out overlaps teacher_logits; it may be "
                             "student_logits itself, or memory apart from both")
    else:
        grad = np.empty(s.shape, result_dtype)
    grad_flat, grad_stride = row_layout(grad.view(kernel_dtype).reshape(n_rows, n_cols))
    in_place = np.may_share_memory(grad_flat, s_flat)
    if in_place and not (grad_flat.ctypes.data == s_flat.ctypes.data
                         and grad_stride == s_stride and s_flat.dtype == grad_flat.dtype):
        raise ValueError(f"{func}: grad_out overlaps student_logits other than exactly")
    scale = temperature_value * (1.0 / divisor if divisor else 0.0)
    result = grad_out if grad_out is not None else grad
    return Batch(op.kernels[1], rows + (scale, losses, None if in_place else grad_flat,
                                        grad_stride), n_rows, n_cols, lambda: (loss(), result))


# --- calibration ------------------------------------------------------------------------------

def prepare_confidence(op, logits, axis, temperature, where, name="logits") -> Batch:
    """Validate a call of the confidence statistics as rows of logits along ``axis``;
    ``finish()`` gives ``(labels, probs, margins, entropies, logsumexps)``, shaped like the
    logits without ``axis`` (scalars for one row), the statistics in the result dtype."""
    func = op.name
    xo = operand(logits, func, name)
    x = xo.array
    compute, result_dtype = dtype_policy(xo, None, func)
    if x.ndim == 0:
        raise ValueError(f"{func}: {name} must have at least one dimension, got a 0-d array")
    axis = check_axis(axis, x.ndim, func)
    inv_t = check_temperature(temperature, func, compute)
    moved = move_axis_last(x, axis)
    n_cols = moved.shape[-1]
    row_shape = () if axis is None else moved.shape[:-1]
    n_rows = math.prod(row_shape)
    mask, mask_stride = (None, 0) if where is None else mask_rows(where, x.shape, axis, func)
    x_flat, x_stride = rows_of(moved, xo, compute)
    labels = np.empty(n_rows, np.int64)
    stats = np.empty((4, n_rows))  # probs, margins, entropies, logsumexps

    def finish():  # (an empty row is one with nothing selected: the kernel's max is -inf)
        values = [labels.reshape(row_shape)] + [
            cast_result(column, result_dtype, xo.bits_only).reshape(row_shape)
            for column in stats]
        return tuple(value[()] if value.ndim == 0 else value for value in values)

    return Batch(op.kernels[0], (x_flat, x_stride, mask, mask_stride, n_rows, n_cols, inv_t,
                                 labels, *stats), n_rows, n_cols, finish)


def prepare_labelled_confidence(op, logits, labels, temperature) -> Batch:
    """The confidence kernel on rows of logits with one label each; ``finish()`` gives
    ``(top-label probability (float64), whether the label was predicted, result dtype,
    bits_only)`` per row. ValueError naming the rows that have no confidence (NaN, +inf,
    all -inf)."""
    func = op.name
    xo, compute, result_dtype, rows2d, one_row = class_rows(logits, func)
    n_rows, n_cols = rows2d.shape
    t = check_labels(labels, func, "labels", n_rows, n_cols, None, one_row)
    inv_t = check_temperature(temperature, func, compute)
    x_flat, x_stride = rows_of(rows2d, xo, compute)
    predicted = np.empty(n_rows, np.int64)
    stats = np.empty((4, n_rows))

    def finish():
        _raise_for_bad_rows(func, predicted, (n_rows,), (
            (NO_LABEL, "no confidence (a NaN or +inf logit, or only -inf: the softmax is NaN)"),))
        return stats[0], predicted == t, result_dtype, xo.bits_only

    return Batch(op.kernels[0], (x_flat, x_stride, None, 0, n_rows, n_cols, inv_t, predicted,
                                 *stats), n_rows, n_cols, finish)


@dataclass
class TemperatureRows:
    """A fit of a temperature on labelled rows: :meth:`batch` gives, for a candidate
    1/temperature, the batch computing each row's loss and its derivatives in it."""

    kernel: KernelPair
    x: np.ndarray
    x_stride: int
    labels: np.ndarray
    ignore_index: int
    n_rows: int
    n_cols: int
    count: int  # the rows not ignored

    def batch(self, inv_t: float) -> Batch:
        per_row = np.empty((3, self.n_rows))  # losses, slopes, curvatures

        def totals():  # added in row order: NumPy's sum takes an order that depends on
            # the memory's alignment, and a last bit of difference would change the fit's path
            return tuple(float(np.cumsum(column)[-1]) for column in per_row), per_row[0]

        return Batch(self.kernel, (self.x, self.x_stride, self.labels, self.ignore_index,
                                   self.n_rows, self.n_cols, float(inv_t), *per_row),
                     self.n_rows, self.n_cols, totals)


def prepare_temperature_fit(op, logits, labels, ignore_index, bounds, tol) -> tuple:
    """Validate a temperature fit: ``(TemperatureRows, (low, high) bounds, tol)``."""
    func = op.name
    xo, compute, _, rows2d, one_row = class_rows(logits, func)
    n_rows, n_cols = rows2d.shape
    ignore_index = check_int(ignore_index, func, "ignore_index")
    t = check_labels(labels, func, "labels", n_rows, n_cols, ignore_index, one_row)
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"{func}: bounds must be a pair of numbers (low, high), got "
                        f"{bounds!r}") from None
    if not (0.0 < low < high and math.isfinite(high)):
        raise ValueError(f"{func}: bounds must be 0 < low < high < inf, got {bounds!r}")
    check_temperature(low, func, compute)
    if not _is_real(tol) or not 0.0 < float(tol) < 1.0:
        raise ValueError(f"{func}: tol must be a number in (0, 1), got {tol!r}")
    count = int(np.count_nonzero(t != ignore_index))
    if count == 0:
        raise ValueError(f"{func}: every label is ignore_index={ignore_index}: nothing to fit")
    x_flat, x_stride = rows_of(rows2d, xo, compute)
    return (TemperatureRows(op.kernels[0], x_flat, x_stride, t, ignore_index, n_rows, n_cols,
                            count), (low, high), float(tol))


# --- sampling -----------------------------------------------------------------------------------

def _row_name(name: str, flat_row: int, row_shape) -> str:
    """``name[3]``, or ``name[1, 2]`` for a batch of more than one dimension."""
    index = np.unravel_index(flat_row, row_shape) if len(row_shape) > 1 else (flat_row,)
    return f"{name}[{', '.join(str(int(i)) for i in index)}]"


def per_row(value, func: str, name: str, row_shape, check, accept=None, transform=None,
            kinds="iuf") -> np.ndarray:
    """A scalar or array-like argument as one float64 value per row (flat, in row order).
    ``check(value, name)`` validates one value (its kernel value, or TypeError/ValueError
    naming ``name``); an array must have the batch's row shape, and its first bad value is
    named with its row. A numeric array is checked at once by ``accept`` (a vectorised
    predicate) and converted by ``transform``, where given: a batch of 64 rows pays no
    Python loop (``kinds``: the dtype kinds that path takes)."""
    n_rows = math.prod(row_shape)
    if value is None or _is_real(value) or isinstance(value, (bool, np.bool_, str)):
        return np.full(n_rows, check(value, name))
    array = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
    if array.ndim == 0:
        item = array[()]
        return np.full(n_rows, check(item.item() if isinstance(item, np.generic) else item,
                                     name))
    if array.shape != tuple(row_shape):
        rows = f"{n_rows} rows" if len(row_shape) <= 1 else f"rows of shape {tuple(row_shape)}"
        raise ValueError(f"{func}: {name} must be a number or an array of one value per row "
                         f"(shape {tuple(row_shape)} for {rows}), got shape {array.shape}")
    flat = array.reshape(-1)
    if accept is not None and flat.dtype.kind in kinds:
        numbers_ = flat.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            bad = np.flatnonzero(~accept(numbers_))
        if not bad.size:
            return transform(numbers_) if transform is not None else numbers_
        flat = flat[bad[:1]]  # the first bad value raises, naming its row
        r = int(bad[0])
        check(flat[0].item(), _row_name(name, r, row_shape))
        raise AssertionError(f"{name}: accept and check disagree on {flat[0]!r}")
    values = np.empty(n_rows)
    for r in range(n_rows):
        item = flat[r]
        values[r] = check(item.item() if isinstance(item, np.generic) else item,
                          _row_name(name, r, row_shape))
    return values


def _number_check(func, expected, accept, *, none=None):
    """A ``check`` for :func:`per_row`: a real number for which ``accept(v)`` holds (None
    stands for ``none`` when given), else TypeError (not a number) or ValueError."""
    def check(value, name):
        if value is None and none is not None:
            return none
        if not _is_real(value):
            raise TypeError(f"{func}: {name} must be {expected}, got {value!r}")
        v = float(value)
        if not accept(v):
            raise ValueError(f"{func}: {name} must be {expected}, got {value!r}")
        return v
    return check


def _temperature_check(func, compute):
    def check(value, name):
        try:
            return check_temperature(value, func, compute, zero_ok=True)
        except ValueError as exc:
            raise ValueError(str(exc).replace("temperature", name, 1)) from None
    return check


def _top_k_check(func):
    def check(value, name):
        expected = "an int >= 0 or None (0: no top-k)"
        if value is None:
            return 0.0
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{func}: {name} must be {expected}, got {value!r}")
        if value < 0:
            raise ValueError(f"{func}: {name} must be {expected}, got {value!r}")
        return float(min(int(value), 2**52))
    return check


@functools.lru_cache(maxsize=None)
def _parameter_columns(func: str, compute: type) -> tuple:
    """(column, name, check, accept, transform) of each per-row parameter of sampling
    (:func:`sampling_parameters`), made once per function and compute dtype: building these
    checks cost ~5 us of every call."""
    k = sampling_kernels
    tiny = 1.0 / float(np.finfo(compute).max)  # below it, 1/temperature overflows
    fraction = "a number in (0, 1] or None"
    in_unit = lambda v: (0.0 < v) & (v <= 1.0)  # noqa: E731
    return (
        (k.INV_T, "temperature", _temperature_check(func, compute),
         lambda v: (v == 0.0) | ((v >= tiny) & (v < np.inf)),
         lambda v: np.divide(1.0, v, out=np.zeros_like(v), where=v != 0.0)),
        (k.MIN_P, "min_p", _number_check(func, "a number in [0, 1] or None",
                                         lambda v: 0.0 <= v <= 1.0, none=0.0),
         lambda v: (0.0 <= v) & (v <= 1.0), None),
        (k.TOP_P, "top_p", _number_check(func, fraction, in_unit, none=1.0), in_unit, None),
        (k.TYPICAL_P, "typical_p", _number_check(func, fraction, in_unit, none=1.0), in_unit,
         None),
        (k.N_SIGMA, "top_n_sigma", _number_check(
            func, "a positive number or None (inf: off)", lambda v: v > 0.0, none=np.inf),
         lambda v: v > 0.0, None),
        (k.REPETITION, "repetition_penalty", _number_check(
            func, "a positive finite number (1: off)", lambda v: 0.0 < v < np.inf),
         lambda v: (0.0 < v) & (v < np.inf), None),
        (k.PRESENCE, "presence_penalty", _number_check(
            func, "a finite number (0: off)", math.isfinite), np.isfinite, None),
        (k.FREQUENCY, "frequency_penalty", _number_check(
            func, "a finite number (0: off)", math.isfinite), np.isfinite, None),
    )


def sampling_parameters(func, compute, row_shape, *, temperature, top_k, top_p, min_p,
                        typical_p, top_n_sigma, repetition_penalty, presence_penalty,
                        frequency_penalty):
    """(params, top_k, penalised): the per-row parameters in the kernel's columns
    (kernels/sampling.py), each argument a number or one value per row, validated with its
    row named, and whether a row has a penalty. Neutral values switch a filter or penalty off
    (top_p 1, min_p 0, top_k 0, top_n_sigma inf, ...)."""
    k = sampling_kernels
    columns = _parameter_columns(func, np.dtype(compute).type)
    values = (temperature, min_p, top_p, typical_p, top_n_sigma, repetition_penalty,
              presence_penalty, frequency_penalty)
    n_rows = math.prod(row_shape)
    params = np.empty((n_rows, k.N_PARAMS))
    if all(value is None or _is_real(value) for value in values):
        # the usual call, one value each for every row: one row of checked values, copied
        # (per-column arrays cost ~1.5 us each, a third of a small call; docs/performance.md)
        row = [0.0] * k.N_PARAMS
        for (column, name, check, _, _), value in zip(columns, values):
            row[column] = check(value, name)
        params[:] = row
        penalised = (row[k.REPETITION] != 1.0 or row[k.PRESENCE] != 0.0
                     or row[k.FREQUENCY] != 0.0)
    else:
        for (column, name, check, accept, transform), value in zip(columns, values):
            params[:, column] = per_row(value, func, name, row_shape, check, accept,
                                        transform)
        penalised = bool((params[:, k.REPETITION] != 1.0).any() or params[:, k.PRESENCE].any()
                         or params[:, k.FREQUENCY].any())
    if top_k is None or type(top_k) is int:  # the usual call, checked as one value
        top_k = np.full(n_rows, _top_k_check(func)(top_k, "top_k"), np.int64)
    else:
        top_k = per_row(top_k, func, "top_k", row_shape, _top_k_check(func),
                        lambda v: v >= 0, lambda v: np.minimum(v, 2**52), kinds="iu")
    return params, top_k.astype(np.int64, copy=False), penalised


# SplitMix64 (Steele, Lea and Flood 2014; Java's SplittableRandom): a counter-based generator,
# its output a bijective hash of the counter, here a row's seed.
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def splitmix_uniforms(seeds: np.ndarray) -> np.ndarray:
    """The uniform number in [0, 1) of each seed (uint64): the top 53 bits of SplitMix64's
    output for counter ``seed``, over 2**53."""
    z = seeds + np.uint64(SPLITMIX_GAMMA)  # uint64 arithmetic wraps modulo 2**64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(SPLITMIX_MULTIPLIERS[0])
    z = (z ^ (z >> np.uint64(27))) * np.uint64(SPLITMIX_MULTIPLIERS[1])
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def row_uniforms(seed, func: str, row_shape) -> np.ndarray:
    """One uniform number in [0, 1) per row. An int, None or a Generator: ``Generator.random``
    of one stream, rows in order. One int per row (an array of the row shape): row r takes
    :func:`splitmix_uniforms` of ``seed[r]`` alone, so a row draws the same token whatever
    the batch around it (and a batch of 64 seeds costs microseconds, not a Generator each)."""
    n_rows = math.prod(row_shape)
    if isinstance(seed, np.random.Generator) or seed is None or isinstance(
            seed, (numbers.Integral, bool, np.bool_, str, float, np.floating)):
        return check_seed(seed, func).random(n_rows)
    seeds = np.asarray(seed)
    if seeds.ndim == 0:
        return check_seed(seeds[()] if seeds.dtype.kind in "iu" else seed, func).random(n_rows)
    if seeds.dtype.kind not in "iuO":
        raise TypeError(f"{func}: seed must be None, an int, a numpy.random.Generator or one "
                        f"int per row, got an array of dtype {seeds.dtype}")
    if seeds.shape != tuple(row_shape):
        raise ValueError(f"{func}: seed must be one int per row (shape {tuple(row_shape)}), "
                         f"got shape {seeds.shape}")
    flat = seeds.reshape(-1)
    bad = np.flatnonzero(flat < 0) if flat.dtype.kind == "i" else []
    if flat.dtype.kind == "O":
        bad = [r for r, v in enumerate(flat) if isinstance(v, (bool, np.bool_))
               or not isinstance(v, numbers.Integral) or not 0 <= v < 2**64]
    if len(bad):
        r = int(bad[0])
        raise ValueError(f"{func}: {_row_name('seed', r, row_shape)} must be an int in "
                         f"[0, 2**64), got {flat[r]!r}")
    return splitmix_uniforms(flat.astype(np.uint64))


def _token_array(value, func: str, name: str) -> np.ndarray:
    tokens = np.asarray(value)
    if tokens.size == 0:
        return np.zeros(tokens.shape, np.int64)
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"{func}: {name} must hold integer token ids, got dtype {tokens.dtype}")
    return tokens.astype(np.int64, copy=False)


def history_rows(previous_tokens, func: str, row_shape, n_cols: int):
    """``(tokens, bounds)``: the tokens generated so far of each row, flat, and each row's
    ``[start, end)`` in it. Given as an integer array of shape ``row_shape + (length,)``
    padded with -1, or a sequence of one 1-D array per row (in row order); ids outside the
    vocabulary are a ValueError naming the row."""
    n_rows = math.prod(row_shape)
    name = "previous_tokens"
    if isinstance(previous_tokens, (list, tuple)) and all(
            isinstance(t, numbers.Integral) for t in previous_tokens) and not row_shape:
        previous_tokens = np.asarray(previous_tokens, np.int64)  # one row's history
    if isinstance(previous_tokens, np.ndarray) or not isinstance(previous_tokens,
                                                                 (list, tuple)):
        table = _token_array(previous_tokens, func, name)
        if table.shape[:-1] != tuple(row_shape) or table.ndim == 0:
            raise ValueError(f"{func}: {name} must have shape {tuple(row_shape) + ('length',)} "
                             f"(one row of token ids per row, padded with -1), or be a list of "
                             f"{n_rows} 1-D arrays, got shape {table.shape}")
        table = table.reshape(n_rows, -1)
        kept = table != -1
        lengths = kept.sum(axis=1)
        tokens = table[kept]
        owner = np.repeat(np.arange(n_rows), lengths)
    else:
        if len(previous_tokens) != n_rows:
            raise ValueError(f"{func}: {name} must hold one 1-D array per row ({n_rows}), got "
                             f"{len(previous_tokens)}")
        parts = []
        for r, part in enumerate(previous_tokens):
            row = _token_array(part, func, _row_name(name, r, row_shape))
            if row.ndim != 1:
                raise ValueError(f"{func}: {_row_name(name, r, row_shape)} must be 1-D, got "
                                 f"shape {row.shape}")
            parts.append(row[row != -1])
        lengths = np.array([len(part) for part in parts], np.int64)
        tokens = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(n_rows), lengths)
    outside = np.flatnonzero(tokens.view(np.uint64) >= n_cols) if tokens.size else tokens
    if outside.size:
        i = int(outside[0])
        raise ValueError(f"{func}: {_row_name(name, int(owner[i]), row_shape)} holds token id "
                         f"{int(tokens[i])}, outside the vocabulary [0, {n_cols}) (-1 pads)")
    ends = np.cumsum(lengths)
    bounds = np.ascontiguousarray(np.stack([ends - lengths, ends], axis=1), dtype=np.int64)
    return np.ascontiguousarray(tokens, dtype=np.int64), bounds


def _bias_value(func, name, token, value, n_cols):
    if isinstance(token, (bool, np.bool_)) or not isinstance(token, numbers.Integral):
        raise TypeError(f"{func}: {name} keys must be int token ids, got {token!r}")
    if not 0 <= token < n_cols:
        raise ValueError(f"{func}: {name} has token id {token}, outside the vocabulary "
                         f"[0, {n_cols})")
    if not _is_real(value) or math.isnan(value) or value == math.inf:
        raise ValueError(f"{func}: {name}[{token}] must be a finite number or -inf (a banned "
                         f"token), got {value!r}")
    return int(token), float(value)


def bias_rows(logit_bias, func: str, x_shape, axis, row_shape, n_cols: int):
    """``(tokens, values, bounds)``: each row's biases as flat (token, bias) pairs and the
    row's ``[start, end)`` in them. ``logit_bias``: a dict {token: bias} for every row, a
    sequence of one dict (or None) per row, or an array broadcastable to the logits."""
    n_rows = math.prod(row_shape)
    name = "logit_bias"
    if isinstance(logit_bias, dict) or (isinstance(logit_bias, (list, tuple)) and any(
            isinstance(item, dict) or item is None for item in logit_bias)):
        shared = isinstance(logit_bias, dict)
        rows = [logit_bias] if shared else list(logit_bias)
        if not shared and len(rows) != n_rows:
            raise ValueError(f"{func}: {name} must be a dict, one dict per row ({n_rows}) or an "
                             f"array, got {len(rows)} dicts")
        pairs, lengths = [], []
        for r, row in enumerate(rows):
            label = name if shared else _row_name(name, r, row_shape)
            if row is not None and not isinstance(row, dict):
                raise TypeError(f"{func}: {label} must be a dict {{token: bias}} or None, got "
                                f"{type(row).__name__}")
            items = [_bias_value(func, label, t, v, n_cols) for t, v in (row or {}).items()]
            pairs += items
            lengths.append(len(items))
        tokens = np.array([t for t, _ in pairs], np.int64)
        values = np.array([v for _, v in pairs], np.float64)
        lengths = np.array(lengths, np.int64)
        ends = np.cumsum(lengths)
        bounds = np.stack([ends - lengths, ends], axis=1)
        if shared:
            bounds = np.repeat(bounds, n_rows, axis=0)
        return tokens, values, np.ascontiguousarray(bounds, dtype=np.int64)
    bias = operand(logit_bias, func, name)
    values = np.asarray(widen_bits(bias.array) if bias.bits_only else bias.array, np.float64)
    if np.isnan(values).any() or np.isposinf(values).any():
        raise ValueError(f"{func}: {name} must hold finite numbers or -inf (banned tokens)")
    full = broadcast_argument(values, x_shape, func, name, "logits")
    along_last = axis == len(x_shape) - 1 or (axis is None and len(x_shape) <= 1)
    if values.ndim <= 1 and along_last:  # one vocabulary row for every row: stored once
        row = np.broadcast_to(values, (n_cols,))
        tokens = np.flatnonzero(row)
        bounds = np.tile([0, tokens.size], (n_rows, 1))
        return tokens.astype(np.int64), row[tokens].copy(), bounds.astype(np.int64)
    table = move_axis_last(full, axis).reshape(n_rows, n_cols)
    owner, tokens = np.nonzero(table)
    lengths = np.bincount(owner, minlength=n_rows)
    ends = np.cumsum(lengths)
    bounds = np.ascontiguousarray(np.stack([ends - lengths, ends], axis=1), dtype=np.int64)
    return tokens.astype(np.int64), table[owner, tokens].astype(np.float64), bounds


LOGPROBS_MODES = ("raw", "processed")


def prepare_sample(op, logits, *, temperature, top_k, top_p, min_p, typical_p, top_n_sigma,
                   repetition_penalty, presence_penalty, frequency_penalty, previous_tokens,
                   logit_bias, where, seed, axis, return_logprobs, top_logprobs,
                   logprobs_mode) -> Batch:
    """Validate a sampling call as rows of logits, each with its parameters, edits and
    uniform number. ``finish()`` gives the tokens, or with ``return_logprobs`` the tuple
    ``(tokens, logprobs, top_tokens, top_logprobs)``."""
    k = sampling_kernels
    func = op.name
    xo = operand(logits, func, "logits")
    x = xo.array
    compute, _ = dtype_policy(xo, None, func)
    axis = check_axis(axis, x.ndim, func)  # 0-d: one row of one element with None
    x_moved = move_axis_last(x, axis)
    n_cols = x_moved.shape[-1]
    row_shape = () if axis is None else x_moved.shape[:-1]  # None: one row, a scalar result
    n_rows = math.prod(row_shape)
    params, top_k, penalised = sampling_parameters(
        func, compute, row_shape, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, typical_p=typical_p, top_n_sigma=top_n_sigma,
        repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
        presence_penalty=0.0 if presence_penalty is None else presence_penalty,
        frequency_penalty=0.0 if frequency_penalty is None else frequency_penalty)
    if not isinstance(return_logprobs, (bool, np.bool_)):
        raise TypeError(f"{func}: return_logprobs must be True or False, got "
                        f"{return_logprobs!r}")
    n_top = check_int(top_logprobs, func, "top_logprobs", minimum=0)
    if n_top and not return_logprobs:
        raise ValueError(f"{func}: top_logprobs={n_top} needs return_logprobs=True")
    if n_top > n_cols:
        raise ValueError(f"{func}: top_logprobs must be at most the vocabulary size {n_cols}, "
                         f"got {n_top}")
    mode = k.NO_LOGPROBS
    if return_logprobs:
        mode = k.RAW if check_choice(logprobs_mode, func, "logprobs_mode",
                                     LOGPROBS_MODES) == "raw" else k.PROCESSED
    if n_cols == 0:
        raise ValueError(f"{func}: logits have an empty vocabulary (axis {axis} has length 0)")
    if previous_tokens is None:
        if penalised:
            raise ValueError(f"{func}: repetition_penalty, presence_penalty and "
                             "frequency_penalty need previous_tokens (the tokens generated so "
                             "far)")
        history, history_bounds = np.zeros(0, np.int64), np.zeros((n_rows, 2), np.int64)
    else:
        history, history_bounds = history_rows(previous_tokens, func, row_shape, n_cols)
    if logit_bias is None:
        bias_tokens, bias_values = np.zeros(0, np.int64), np.zeros(0)
        bias_bounds = np.zeros((n_rows, 2), np.int64)
    else:
        bias_tokens, bias_values, bias_bounds = bias_rows(logit_bias, func, x.shape, axis,
                                                          row_shape, n_cols)
    mask, mask_stride = (None, 0) if where is None else mask_rows(where, x.shape, axis, func)
    params[:, k.UNIFORM] = row_uniforms(seed, func, row_shape)
    x_flat, x_stride = rows_of(x_moved, xo, compute)
    drawn = np.empty(n_rows, np.int64)
    logprobs = np.empty(n_rows if mode else 0)
    top_tokens = np.empty(n_rows * n_top, np.int64)
    top_values = np.empty(n_rows * n_top)

    def finish():
        _raise_for_bad_rows(func, drawn, row_shape)
        tokens = drawn.reshape(row_shape)
        tokens = tokens[()] if tokens.ndim == 0 else tokens
        if not mode:
            return tokens
        lp = logprobs.astype(compute).reshape(row_shape)
        return (tokens, lp[()] if lp.ndim == 0 else lp,
                top_tokens.reshape(row_shape + (n_top,)),
                top_values.astype(compute).reshape(row_shape + (n_top,)))

    return Batch(op.kernels[0], (x_flat, x_stride, mask, mask_stride, n_rows, n_cols, params,
                                 top_k, history, history_bounds, bias_tokens, bias_values,
                                 bias_bounds, bool(history.size), mode, drawn, logprobs,
                                 top_tokens, top_values), n_rows, n_cols, finish)


SAMPLING_FAILURES = ((NAN_ROW, "a NaN logit"),
                     (EMPTY_ROW, "no token that can be sampled (all -inf or masked out)"))


def _raise_for_bad_rows(func, drawn: np.ndarray, row_shape, failures=SAMPLING_FAILURES) -> None:
    """ValueError naming the rows a kernel marked with the code of one of ``failures`` ((code,
    why) pairs, checked in order; by default the rows it could not sample, NaN first)."""
    if drawn.size and drawn.min() >= 0:
        return  # every row drew a token (the codes are negative)
    for code, why in failures:
        bad = np.flatnonzero(drawn == code)
        if bad.size:
            verb = "has" if bad.size == 1 else "have"
            raise ValueError(f"{func}: {name_rows(bad, row_shape)} {verb} {why}")


def name_rows(flat_rows: np.ndarray, row_shape, limit: int = 10) -> str:
    """``row 3``, ``rows [3, 7]``, or index tuples for a batch of more than one dimension."""
    if len(row_shape) > 1:
        names = [tuple(int(i) for i in np.unravel_index(r, row_shape))
                 for r in flat_rows[:limit]]
    else:
        names = [int(r) for r in flat_rows[:limit]]
    more = f" and {flat_rows.size - limit} more" if flat_rows.size > limit else ""
    if flat_rows.size == 1:
        return f"row {names[0]}" if row_shape else "the row"
    return f"rows {names}{more}"
