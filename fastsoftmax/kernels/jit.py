"""The one place where Numba options are chosen.

Every kernel and building block is compiled through :func:`building_block` or
:func:`kernel_pair`, so the fast-math flags, the on-disk cache and the error model are
set once, here, and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
import types

import numba

# Fast-math without ``nnan``/``ninf``: the kernels must see ±inf and NaN exactly as SPEC §2
# says. ``reassoc`` lets LLVM split the sum and max reductions into SIMD lanes; ``contract``
# allows fused multiply-add in the exp polynomial; ``nsz`` lets max ignore the sign of zero.
FASTMATH_FLAGS = frozenset({"reassoc", "contract", "nsz", "arcp"})

NUMBA_OPTIONS = dict(
    fastmath=set(FASTMATH_FLAGS),
    cache=True,
    error_model="numpy",  # no ZeroDivisionError checks in the hot loops
    boundscheck=False,
    nogil=True,
)


# For code whose rounding is the algorithm (the magic-bias rounding of ``exp``): with
# ``reassoc`` LLVM folds ``(x + bias) - bias`` to ``x`` and the rounding is lost. ``contract``
# alone still allows fused multiply-add. LLVM keeps these flags per instruction, so they hold
# after the helper is inlined into a kernel built with ``NUMBA_OPTIONS``.
STRICT_NUMBA_OPTIONS = dict(NUMBA_OPTIONS, fastmath={"contract"})


def building_block(pyfunc=None, *, strict=False):
    """Compile a small numerical helper that kernels call (``exp``, reductions).

    ``strict=True`` compiles it without reassociation (see ``STRICT_NUMBA_OPTIONS``).
    """
    options = STRICT_NUMBA_OPTIONS if strict else NUMBA_OPTIONS
    if pyfunc is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(pyfunc)


def _renamed(pyfunc, suffix):
    # Numba's on-disk cache keys an entry by the function's qualname and bytecode, not by
    # the ``parallel`` flag, so a serial and a parallel build of one body would overwrite
    # each other's cache entries. A renamed copy of the function gets its own cache file.
    clone = types.FunctionType(
        pyfunc.__code__, pyfunc.__globals__, pyfunc.__name__ + suffix,
        pyfunc.__defaults__, pyfunc.__closure__,
    )
    clone.__qualname__ = pyfunc.__qualname__ + suffix
    clone.__module__ = pyfunc.__module__
    clone.__doc__ = pyfunc.__doc__
    return clone


class KernelPair:
    """A serial and a row-parallel build of one kernel body.

    The body loops over rows with ``numba.prange``; compiled with ``parallel=False`` that loop
    is a plain ``range``, so both builds run the same per-row code and give bitwise-identical
    results. Nothing is compiled until a build is first called (lazy, cached on disk).
    """

    def __init__(self, pyfunc):
        self.__name__ = pyfunc.__name__
        self.__doc__ = pyfunc.__doc__
        self.py_func = pyfunc
        self.serial = numba.njit(parallel=False, **NUMBA_OPTIONS)(_renamed(pyfunc, "__serial"))
        self.parallel = numba.njit(parallel=True, **NUMBA_OPTIONS)(_renamed(pyfunc, "__parallel"))

    def build(self, parallel: bool):
        return self.parallel if parallel else self.serial

    def __repr__(self):
        return f"<KernelPair {self.__name__}>"


def kernel_pair(pyfunc) -> KernelPair:
    """Decorator: compile ``pyfunc`` (a loop over rows using ``prange``) serial and parallel."""
    return KernelPair(pyfunc)


# --- on-disk cache invalidation ----------------------------------------------------------------
# Numba stamps a cached kernel with the modification time and size of the one file that
# defines it. A kernel compiled with an older ``exp`` from numerics.py would then be loaded as
# if current (seen in development; after an upgrade it would be a silent wrong result). These
# locators stamp every function of this package with a hash of all of its kernel sources, so a
# change to any shared building block invalidates every kernel compiled from it. They keep
# Numba's own choice of where the cache lives: NUMBA_CACHE_DIR, else __pycache__ beside the
# sources, else the user-wide cache directory for a read-only install.
_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))


def _kernel_sources_hash() -> str:
    digest = hashlib.sha256(numba.__version__.encode())
    for name in sorted(os.listdir(_KERNEL_DIR)):
        if name.endswith(".py"):
            digest.update(name.encode())
            with open(os.path.join(_KERNEL_DIR, name), "rb") as source:
                digest.update(source.read())
    return digest.hexdigest()


def _install_cache_locators():
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - a Numba without the caching module
        return
    stamp = _kernel_sources_hash()

    class _KernelSourcesStamp:
        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != _KERNEL_DIR:
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return stamp

    def public_or_private(name):  # Numba 0.62 dropped the leading underscores
        return getattr(caching, name, None) or getattr(caching, "_" + name, None)

    cache_impl = public_or_private("CacheImpl")
    bases = [public_or_private(name) for name in
             ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]
    if cache_impl is None or None in bases:  # pragma: no cover - an unknown Numba layout
        return
    locators = cache_impl._locator_classes
    if any(getattr(cls, "_fastsoftmax", False) for cls in locators):
        return
    ours = [type("FastSoftmax" + base.__name__.lstrip("_"), (_KernelSourcesStamp, base),
                 {"_fastsoftmax": True}) for base in bases]
    locators[:0] = ours


_install_cache_locators()
