"""Half-precision numbers as bits: bfloat16 and IEEE float16 <-> float32.

Numba cannot type float16 (or bfloat16) arrays on the CPU, so half-precision rows reach the
kernels as ``uint16`` views of their bits and are widened to float32 here, block by block;
results are narrowed back with round-to-nearest-even. Everything is integer and float32
arithmetic with selects instead of branches, so that the block loops vectorise.

The two formats have the same size, so the integer type of the view says which one it holds:
bfloat16 bits travel as ``uint16`` (:data:`BFLOAT16_BITS`), float16 bits as ``int16``
(:data:`FLOAT16_BITS`); the signedness is only a tag, the bits are not changed. Kernels then
pick the conversion by type when they are compiled, as they pick float32 or float64 code.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from .jit import NUMBA_OPTIONS, building_block
from .numerics import pick, scaled

BFLOAT16_BITS = np.dtype(np.uint16)
FLOAT16_BITS = np.dtype(np.int16)

_U32 = np.uint32
_U32_SIGN = _U32(0x80000000)
_U32_ABS = _U32(0x7FFFFFFF)
_F32_INF_BITS = _U32(0x7F800000)
# Each integer step is wrapped in np.uint32: Numba computes integer arithmetic in 64 bits,
# and LLVM narrows it back to 32-bit SIMD lanes (16 per AVX-512 vector instead of 8) only
# when every intermediate is truncated explicitly.


def bf16_to_f32(h):
    """float32 value of the bfloat16 with bits ``h``: bfloat16 is the top half of a float32."""
    return _U32(_U32(h) << _U32(16)).view(np.float32)


def f32_to_bf16(f):
    """Bits of ``f`` rounded to the nearest bfloat16, ties to even; NaN stays a quiet NaN of
    the same sign (the increment would otherwise carry a NaN's payload into inf)."""
    b = np.float32(f).view(np.uint32)
    high = _U32(b >> _U32(16))
    rounded = _U32(_U32(_U32(b + _U32(0x7FFF)) + _U32(high & _U32(1))) >> _U32(16))
    quiet_nan = _U32(high | _U32(0x0040))
    return np.uint16(quiet_nan if _U32(b & _U32_ABS) > _F32_INF_BITS else rounded)


# float16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. Moving the 15 non-sign bits up by
# 13 lines the mantissa up with float32's; adding (127 - 15) << 23 rebiases the exponent.
# After F. Giesen's branch-free conversions (public domain), with selects for the special
# cases: inf/NaN (exponent all ones) rebias once more; subnormals (exponent 0) are rebuilt as
# a float32 difference, which is exact.
_H_EXP_BITS = _U32(0x7C00 << 13)           # float16 exponent field, moved up
_H_REBIAS = _U32((127 - 15) << 23)
_H_SUBNORMAL_MAGIC = np.float32(2.0 ** -14)     # 113 << 23: the smallest normal float16
_H_ONE_EXP = _U32(1 << 23)


def f16_to_f32(h):
    """float32 value of the IEEE float16 with bits ``h`` (subnormals, inf and NaN exact)."""
    h32 = _U32(h)
    shifted = _U32(_U32(h32 & _U32(0x7FFF)) << _U32(13))
    exponent = _U32(shifted & _H_EXP_BITS)
    normal = _U32(shifted + _H_REBIAS)
    special = _U32(normal + _H_REBIAS)                    # inf and NaN: exponent all ones
    subnormal = np.float32(_U32(normal + _H_ONE_EXP).view(np.float32)
                           - _H_SUBNORMAL_MAGIC).view(np.uint32)
    bits = special if exponent == _H_EXP_BITS else (subnormal if exponent == 0 else normal)
    sign = _U32(_U32(h32 & _U32(0x8000)) << _U32(16))
    return _U32(bits | sign).view(np.float32)


_F16_OVERFLOW_BITS = _U32((127 + 16) << 23)     # 65536.0: rounds to inf or above
_F16_MIN_NORMAL_BITS = _U32(113 << 23)          # 2**-14
_F16_DENORM_MAGIC_BITS = _U32(((127 - 15) + (23 - 10) + 1) << 23)  # 0.5
_F16_DENORM_MAGIC = np.float32(0.5)
_F16_REBIAS_ROUND = _U32(((127 - 15) << 23) - 0xFFF)


def f32_to_f16(f):
    """Bits of ``f`` rounded to the nearest IEEE float16, ties to even (overflow to inf,
    underflow through the subnormals to zero, NaN to a quiet NaN of the same sign)."""
    b = np.float32(f).view(np.uint32)
    sign = _U32(_U32(b & _U32_SIGN) >> _U32(16))
    a = _U32(b & _U32_ABS)
    big = _U32(0x7E00) if a > _F32_INF_BITS else _U32(0x7C00)
    # Subnormal results: adding 0.5 puts the float16 subnormal's bits at the bottom of the
    # float32 mantissa, rounded by the FPU (to nearest even).
    small = _U32(np.float32(a.view(np.float32) + _F16_DENORM_MAGIC).view(np.uint32)
                 - _F16_DENORM_MAGIC_BITS)
    # Normal results: rebias, then round the 13 dropped bits (0xFFF plus the kept low bit).
    odd = _U32(_U32(a >> _U32(13)) & _U32(1))
    normal = _U32(_U32(_U32(a - _F16_REBIAS_ROUND) + odd) >> _U32(13))
    bits = big if a >= _F16_OVERFLOW_BITS else (small if a < _F16_MIN_NORMAL_BITS else normal)
    return np.uint16(bits | sign)


# One loop per format, straight-line so that it vectorises. Compiled, the format is chosen by
# the view's type when Numba types the call (the overloads below); without the JIT, by dtype.
_ZERO = np.float32(0.0)


def _decode_bf16(bits, dst):
    for j in range(bits.size):
        dst[j] = bf16_to_f32(bits[j])


def _decode_f16(bits, dst):
    for j in range(bits.size):
        dst[j] = f16_to_f32(bits[j])


def _encode_bf16(src, sel, factor, dst):
    for j in range(src.size):
        dst[j] = f32_to_bf16(pick(sel, j, scaled(src[j], factor), _ZERO))


def _encode_f16(src, sel, factor, dst):
    for j in range(src.size):
        dst[j] = np.uint16(f32_to_f16(pick(sel, j, scaled(src[j], factor), _ZERO))).view(
            np.int16)


def _store_float32(src, sel, factor, dst):
    for j in range(src.size):
        dst[j] = pick(sel, j, scaled(src[j], factor), _ZERO)


_DECODERS = {BFLOAT16_BITS: _decode_bf16, FLOAT16_BITS: _decode_f16}
_ENCODERS = {BFLOAT16_BITS: _encode_bf16, FLOAT16_BITS: _encode_f16,
             np.dtype(np.float32): _store_float32}


def decode_block(bits, dst):
    """dst[j] = float32 value of the half-precision ``bits[j]``: bfloat16 for a ``uint16``
    view, float16 for an ``int16`` view (see the module docstring)."""
    _DECODERS[bits.dtype](bits, dst)


def encode_block(src, sel, factor, dst):
    """dst[j] = ``src[j] * factor`` (float32; ``factor`` None: ``src[j]``; 0 where ``sel`` is
    not None and False) in the format of ``dst``: rounded to bfloat16 bits for a ``uint16``
    view, float16 bits for an ``int16`` view, the value itself for float32. Scaling here
    saves softmax a pass of stores and loads."""
    _ENCODERS[dst.dtype](src, sel, factor, dst)


def widen(bits, dst):
    """dst = float32 values of the half-precision ``bits`` (1-D arrays; tests, tools)."""
    decode_block(bits, dst)


def narrow(src, dst):
    """dst = ``src`` (float32) rounded to the half-precision format of ``dst`` (1-D)."""
    encode_block(src, None, None, dst)


if not numba.config.DISABLE_JIT:
    bf16_to_f32 = building_block(bf16_to_f32)
    f32_to_bf16 = building_block(f32_to_bf16)
    f16_to_f32 = building_block(f16_to_f32)
    f32_to_f16 = building_block(f32_to_f16)

    @overload(decode_block, jit_options=NUMBA_OPTIONS)
    def _decode_block_overload(bits, dst):
        return {types.uint16: _decode_bf16, types.int16: _decode_f16}.get(bits.dtype)

    @overload(encode_block, jit_options=NUMBA_OPTIONS)
    def _encode_block_overload(src, sel, factor, dst):
        return {types.uint16: _encode_bf16, types.int16: _encode_f16,
                types.float32: _store_float32}.get(dst.dtype)

    widen = building_block(widen)
    narrow = building_block(narrow)
