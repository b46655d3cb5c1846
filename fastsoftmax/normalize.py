"""Argument normalisation: from what the user passed to the layout every kernel expects.

The public functions hand their arguments to :func:`prepare`, which validates them and returns
a :class:`RowBatch`: ``n_rows`` rows of ``n_cols`` contiguous elements in flat 1-D buffers
with a row stride (SPEC §3: axis moved last, 2-D view of rows, dtype, out, where). Only what
must be copied is copied: the input when the reduced axis is not contiguous or the dtype
differs; the output when the user's ``out`` cannot be written row by row.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .kernels.halfbits import BFLOAT16_BITS, FLOAT16_BITS

COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


def is_bfloat16(x_dtype: np.dtype) -> bool:
    """True for ``ml_dtypes.bfloat16`` (recognised by name: ml_dtypes is not imported)."""
    return x_dtype.kind == "V" and x_dtype.itemsize == 2 and x_dtype.name == "bfloat16"


def half_bits_dtype(x_dtype: np.dtype):
    """The integer view the half-precision kernels read ``x_dtype`` through (uint16 for
    bfloat16, int16 for float16: kernels/halfbits.py), or None for other dtypes."""
    if is_bfloat16(x_dtype):
        return BFLOAT16_BITS
    if x_dtype.kind == "f" and x_dtype.itemsize == 2:
        return FLOAT16_BITS
    return None


def resolve_dtypes(x_dtype: np.dtype, dtype, func: str):
    """Return (compute dtype, result dtype) by the dtype policy of SPEC §2."""
    if dtype is not None:
        try:
            wanted = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"{func}: dtype must be float32 or float64, got {dtype!r}") from exc
        if wanted not in COMPUTE_DTYPES:
            raise ValueError(f"{func}: dtype must be float32 or float64, got {wanted}")
        if x_dtype.kind not in "biuf" and not is_bfloat16(x_dtype):
            _check_input_kind(x_dtype, func)
        return wanted.newbyteorder("="), wanted.newbyteorder("=")
    if half_bits_dtype(x_dtype) is not None:  # float16, bfloat16: computed in float32
        return _FLOAT32, x_dtype.newbyteorder("=")
    _check_input_kind(x_dtype, func)
    if x_dtype.kind == "f":
        if x_dtype.itemsize == 4:
            return _FLOAT32, _FLOAT32
        if x_dtype.itemsize == 8:
            return _FLOAT64, _FLOAT64
        raise TypeError(
            f"{func}: x has dtype {x_dtype}, which is not supported; "
            "convert it with x.astype(np.float64)")
    return _FLOAT64, _FLOAT64  # bool and integers: SciPy's rule


def _check_input_kind(x_dtype: np.dtype, func: str):
    if x_dtype.kind not in "biuf":
        raise TypeError(
            f"{func}: x must be an array of real numbers (bool, integer or float), "
            f"got dtype {x_dtype}")


def normalize_axis(axis, ndim: int, func: str):
    """Return the non-negative axis, or None for the whole array."""
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{func}: axis must be an int or None, got {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{func}: axis {axis} is out of bounds for an array of dimension {ndim}")
    return axis % ndim


def normalize_temperature(temperature, func: str, dtype=_FLOAT64) -> float:
    """Return 1/temperature after checking it is a positive finite number whose reciprocal
    is finite in ``dtype`` (the kernels multiply by 1/temperature)."""
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real):
        raise ValueError(
            f"{func}: temperature must be a positive finite number, got {temperature!r}")
    t = float(temperature)
    if not (t > 0.0 and math.isfinite(t)):
        raise ValueError(
            f"{func}: temperature must be a positive finite number, got {temperature!r}")
    with np.errstate(over="ignore", divide="ignore"):
        if not np.isfinite(np.dtype(dtype).type(1.0 / t if t >= 1e-308 else np.inf)):
            raise ValueError(f"{func}: temperature {temperature!r} is too small for "
                             f"{np.dtype(dtype)}: 1/temperature overflows")
    return 1.0 / t


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


@dataclass(slots=True)
class RowBatch:
    """The kernel's view of one call: flat buffers and row strides, and how to finish."""

    x: np.ndarray            # flat input rows, compute dtype
    x_stride: int
    mask: np.ndarray | None  # flat boolean mask rows, or None
    mask_stride: int
    out: np.ndarray | None   # flat output rows (one element per row when reducing); None:
    #                          in place, the kernel overwrites ``x``
    out_stride: int
    n_rows: int
    n_cols: int
    inv_t: float
    result: np.ndarray       # the array handed back to the caller
    written: np.ndarray | None = None  # a temporary the kernel wrote, to copy into result

    def finish(self):
        """Copy a temporary into the result if one was used; return the result."""
        if self.written is not None:
            np.copyto(self.result, self.written, casting="unsafe")
        return self.result


def _move_axis_last(a: np.ndarray, axis):
    """View of ``a`` with the reduced axis last (the whole array as one row for None)."""
    if axis is None:
        return a.reshape(1, -1)  # a copy only for a non-contiguous input, never for out
    if axis == a.ndim - 1:
        return a
    return np.moveaxis(a, axis, -1)


def _move_axis_back(rows: np.ndarray, axis, shape):
    if axis is None:
        return rows.reshape(shape)
    return np.moveaxis(rows, -1, axis)


def _as_rows(x_moved: np.ndarray, compute_dtype: np.dtype):
    """Flat rows of the input in the compute dtype, copying only when needed."""
    if x_moved.dtype == compute_dtype:
        layout = row_layout(x_moved)
        if layout is not None:
            return layout
    contiguous = np.ascontiguousarray(x_moved, dtype=compute_dtype)
    return contiguous.reshape(-1), x_moved.shape[-1]


def _bits_view(x_moved: np.ndarray, bits_dtype: np.dtype) -> np.ndarray:
    """``x_moved`` (float16 or bfloat16, or already bits) seen as the integers of its bits."""
    if not x_moved.dtype.isnative:
        x_moved = x_moved.astype(x_moved.dtype.newbyteorder("="))
    return x_moved.view(bits_dtype)


def _as_mask_rows(where, x_shape, axis, func: str):
    mask = np.asarray(where)
    if mask.dtype != np.bool_:
        raise TypeError(f"{func}: where must be a boolean array, got dtype {mask.dtype}")
    try:
        mask = np.broadcast_to(mask, x_shape)
    except ValueError:
        raise ValueError(
            f"{func}: where has shape {mask.shape}, which does not broadcast to "
            f"the shape of x {x_shape}") from None
    if axis is None and not mask.flags.c_contiguous:
        mask = np.ascontiguousarray(mask)
    mask = _move_axis_last(mask, axis)
    layout = row_layout(mask)
    if layout is None:
        return np.ascontiguousarray(mask).reshape(-1), mask.shape[-1]
    return layout


def _check_out(out, shape, dtype, func: str):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{func}: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"{func}: out must have shape {tuple(shape)} and dtype {dtype}, "
            f"got shape {out.shape} and dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{func}: out is read-only")


def _writable_rows(out: np.ndarray, axis, reduce: bool, keepdims: bool):
    """A view of ``out`` as rows the kernel can write (one column when reducing), or None."""
    if reduce:
        if keepdims and axis is not None:
            out = np.squeeze(out, axis)
        elif axis is None and out.size == 1:
            out = out.reshape(1)
        return out[..., None]
    if axis is None and not out.flags.c_contiguous:
        return None
    return _move_axis_last(out, axis)


def prepare(func: str, x, axis, where, out, dtype, *, temperature=1.0, reduce=False,
            keepdims=False, bfloat16_bits=False) -> RowBatch:
    """Validate the arguments of a public function and lay them out as rows.

    ``reduce=False``: the result has the shape of ``x`` (softmax, log_softmax).
    ``reduce=True``: one value per row (logsumexp), with ``keepdims`` as in NumPy.
    ``bfloat16_bits=True``: ``x`` is a ``uint16`` array of bfloat16 bits (a PyTorch tensor
    seen without ml_dtypes, :mod:`fastsoftmax.interop`); the result is bits too, unless
    ``dtype`` is float32 (float64 must be converted by the caller).

    float16 and bfloat16 input is read through an integer view of its bits and the result
    written the same way (kernels/halfbits.py): no float32 copy of the input is made.
    """
    if isinstance(x, np.ndarray):
        x_arr = x
    else:
        try:
            x_arr = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{func}: x must be array-like, got {type(x).__name__}") from exc
    if bfloat16_bits:
        compute_dtype, bits_dtype = _FLOAT32, BFLOAT16_BITS
        result_dtype = BFLOAT16_BITS if dtype is None else np.dtype(dtype)
    else:
        compute_dtype, result_dtype = resolve_dtypes(x_arr.dtype, dtype, func)
        bits_dtype = half_bits_dtype(x_arr.dtype) if compute_dtype == _FLOAT32 else None
    # What the kernel writes: the compute dtype, or a half-precision result as its bits.
    if bits_dtype is not None and result_dtype.itemsize == 2:
        kernel_dtype = bits_dtype
    else:
        kernel_dtype = compute_dtype
    if x_arr.ndim == 0:
        raise ValueError(
            f"{func}: x must have at least one dimension, got a 0-d array (a scalar)")
    axis = normalize_axis(axis, x_arr.ndim, func)
    inv_t = normalize_temperature(temperature, func, compute_dtype)

    x_moved = _move_axis_last(x_arr, axis)
    n_cols = x_moved.shape[-1]
    row_shape = x_moved.shape[:-1]
    n_rows = math.prod(row_shape)
    if reduce:
        if keepdims:
            result_shape = tuple(1 if axis is None or i == axis else n
                                 for i, n in enumerate(x_arr.shape))
        else:
            result_shape = () if axis is None else row_shape
    else:
        result_shape = x_arr.shape
    if out is not None:
        _check_out(out, result_shape, result_dtype, func)
    if where is None:
        mask, mask_stride = None, 0
    else:
        mask, mask_stride = _as_mask_rows(where, x_arr.shape, axis, func)

    if bits_dtype is None:
        x_flat, x_stride = _as_rows(x_moved, compute_dtype)
    else:
        x_flat, x_stride = _as_rows(_bits_view(x_moved, bits_dtype), bits_dtype)

    # The kernel writes straight into ``out`` when its rows lie flat in memory, in the kernel's
    # dtype, and it is either apart from the input or exactly the input (in place).
    if out is not None and result_dtype.itemsize == kernel_dtype.itemsize:
        rows = _writable_rows(out.view(kernel_dtype), axis, reduce, keepdims)
        layout = None if rows is None else row_layout(rows)
        if layout is not None and (layout[1] >= n_cols or n_rows <= 1):
            out_flat, out_stride = layout
            overlap = _overlap(out_flat, out_stride, x_flat, x_stride)
            if overlap == "same" and x_flat.flags.writeable and not reduce:
                # float kernels take None for in place (one-array loops); the half ones
                # widen each block before writing it, so they take the same buffer
                in_place = None if bits_dtype is None else out_flat
                return RowBatch(x_flat, x_stride, mask, mask_stride, in_place, x_stride,
                                n_rows, n_cols, inv_t, out)
            if overlap == "none":
                return RowBatch(x_flat, x_stride, mask, mask_stride, out_flat,
                                max(out_stride, 1), n_rows, n_cols, inv_t, out)

    # Otherwise the kernel writes a fresh C-ordered buffer of rows.
    buffer = np.empty(row_shape if reduce else x_moved.shape, kernel_dtype)
    out_flat = buffer.reshape(-1)
    out_stride = 1 if reduce else n_cols
    if reduce:
        shaped = buffer.reshape(result_shape)
    else:
        shaped = _move_axis_back(buffer, axis, x_arr.shape)
    if shaped.dtype != result_dtype and shaped.dtype.itemsize == result_dtype.itemsize:
        shaped = shaped.view(result_dtype)  # half-precision bits as the caller's dtype
    if out is None and result_dtype == shaped.dtype:
        return RowBatch(x_flat, x_stride, mask, mask_stride, out_flat, out_stride,
                        n_rows, n_cols, inv_t, shaped)
    result = np.empty(result_shape, result_dtype) if out is None else out
    return RowBatch(x_flat, x_stride, mask, mask_stride, out_flat, out_stride,
                    n_rows, n_cols, inv_t, result, written=shaped)


def common_case(x, axis, out, reduce: bool):
    """The rows of the most frequent call, or None: a C-contiguous native float32/float64
    ndarray along its last axis, with ``out`` absent, ``x`` itself, or a separate C-contiguous
    array (and no ``where``, ``dtype``, temperature or ``keepdims``, which the caller checks).

    Returns ``(x_flat, out_flat, n_rows, n_cols, result)``, ``out_flat`` None for in place.
    It skips :func:`prepare`, whose generality costs ~20 µs: as much as a softmax of a few
    thousand elements. Anything unusual returns None and takes :func:`prepare`, which
    validates it.
    """
    if type(x) is not np.ndarray:
        return None
    ndim = x.ndim
    x_dtype = x.dtype
    # identity tests: the builtin native dtypes are singletons (anything else takes the
    # general path, which handles it)
    if not (ndim and type(axis) is int and (axis == -1 or axis == ndim - 1)
            and (x_dtype is _FLOAT32 or x_dtype is _FLOAT64)
            and x.flags.c_contiguous):
        return None
    n_cols = x.shape[-1]
    if n_cols == 0 or x.size == 0:
        return None
    shape = x.shape[:-1] if reduce else x.shape
    x_flat = x.ravel()  # a view: x is C-contiguous
    if out is None:
        result = np.empty(shape, x_dtype)
        out_flat = result.ravel()
    elif (type(out) is np.ndarray and out.shape == shape and out.dtype is x_dtype
            and out.flags.c_contiguous and out.flags.writeable):
        result = out
        if out is x and not reduce and x.flags.writeable:
            out_flat = None  # in place
        elif (out.base is not None or x.base is not None) and np.may_share_memory(out, x):
            return None  # two arrays that own their memory cannot overlap; views may
        else:
            out_flat = out.ravel()
    else:
        return None
    return x_flat, out_flat, x.size // n_cols, n_cols, result


def _overlap(out_flat: np.ndarray, out_stride: int, x_flat: np.ndarray, x_stride: int) -> str:
    """"none", "same" (the output rows are the input rows: in place) or "partial"."""
    if not np.may_share_memory(out_flat, x_flat):
        return "none"
    same = (out_flat.__array_interface__["data"][0] == x_flat.__array_interface__["data"][0]
            and out_flat.shape == x_flat.shape and out_stride == x_stride)
    return "same" if same else "partial"
