"""The one place where Numba options are chosen.

Every kernel and building block is compiled through :func:`building_block`,
:func:`reduction` or :func:`kernel_pair`, so the fast-math flags, the on-disk cache, the
error model and the SIMD width are set once, here, and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
import types

import numba
import numpy as np

# Fast-math flags, never ``nnan``/``ninf``: the kernels must see ±inf and NaN exactly as
# the edge-case table says (README, "Values at the edges"). Everything is compiled with ``contract`` only (fused multiply-add in the exp
# polynomial). Reassociation is confined to the reductions that need it to use SIMD lanes
# (:func:`reduction`): elsewhere it breaks the arithmetic, e.g. LLVM turns the log_softmax
# shift ``(x - m) - log_sum`` into ``x - (m + log_sum)``, which loses ``log_sum`` next to a
# large ``m``, and folds the ``(z + bias) - bias`` rounding step of ``exp`` to ``z``. LLVM keeps
# the flags per instruction, so each helper keeps its own after inlining.
FASTMATH_FLAGS = frozenset({"contract"})
REDUCTION_FASTMATH_FLAGS = frozenset({"reassoc", "nsz", "contract"})

NUMBA_OPTIONS = dict(
    fastmath=set(FASTMATH_FLAGS),
    cache=True,
    error_model="numpy",  # no ZeroDivisionError checks in the hot loops
    boundscheck=False,
    nogil=True,
)
REDUCTION_OPTIONS = dict(NUMBA_OPTIONS, fastmath=set(REDUCTION_FASTMATH_FLAGS))


def _load_numpy_support_without_scipy():
    """Import Numba's NumPy support (``numba.np.arraymath``) without the SciPy import of its
    BLAS check.

    Numba loads that module when its first function is compiled or read from the cache, and at
    import it asks whether BLAS is there by importing ``scipy.linalg.cython_blas``: with SciPy
    installed that is about 0.17 s, most of a warm first call (docs/performance.md,
    "Start-up"). None of our kernels calls BLAS. The answer only picks how a jitted
    ``np.correlate``/``np.convolve`` takes its inner products, and Numba's ``np.dot`` checks
    BLAS again itself when it is compiled, so the flag is set from whether SciPy is installed
    (a cheap lookup): the same answer, without the import.
    """
    import importlib.util
    import sys
    blas = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or blas in sys.modules:
        return  # already loaded, or SciPy's BLAS already imported: nothing to save
    sys.modules[blas] = None  # makes ``import scipy.linalg.cython_blas`` fail at once
    try:
        import numba.np.arraymath as arraymath
    finally:
        del sys.modules[blas]
    arraymath._HAVE_BLAS = importlib.util.find_spec("scipy") is not None


_load_numpy_support_without_scipy()


def building_block(pyfunc):
    """Compile a small numerical helper that kernels call (``exp``, elementwise passes)."""
    return numba.njit(**NUMBA_OPTIONS)(pyfunc)


def reduction(pyfunc):
    """Compile a reduction loop whose additions (or max) LLVM may reorder into SIMD lanes.

    Its body must only accumulate: anything computed per element belongs in a
    :func:`building_block` it calls, which keeps exact operation order.
    """
    return numba.njit(**REDUCTION_OPTIONS)(pyfunc)


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

    def __init__(self, pyfunc, options=NUMBA_OPTIONS):
        self.__name__ = pyfunc.__name__
        self.__doc__ = pyfunc.__doc__
        self.py_func = pyfunc
        self.serial = numba.njit(parallel=False, **options)(_renamed(pyfunc, "__serial"))
        self.parallel = numba.njit(parallel=True, **options)(_renamed(pyfunc, "__parallel"))
        if numba.config.DISABLE_JIT:
            self.serial = self.parallel = _quiet(pyfunc)

    def build(self, parallel: bool):
        return self.parallel if parallel else self.serial

    def __repr__(self):
        return f"<KernelPair {self.__name__}>"


def specialised(pyfunc, name: str, **constants):
    """A copy of ``pyfunc`` named ``name`` whose globals also hold ``constants`` (such as the
    row kernel the body runs), to compile with :func:`building_block` or :class:`KernelPair`:
    one body serving several operations. Numba freezes a global when it compiles, and keys its
    cache by the qualified name, so each copy compiles and caches on its own (a kernel passed
    as an argument instead would not be cached: its type is the dispatcher object of one
    process)."""
    clone = types.FunctionType(pyfunc.__code__, dict(pyfunc.__globals__, **constants), name,
                               pyfunc.__defaults__, pyfunc.__closure__)
    clone.__qualname__ = name
    clone.__module__ = pyfunc.__module__
    clone.__doc__ = pyfunc.__doc__
    return clone


def _quiet(pyfunc):
    # With NUMBA_DISABLE_JIT (coverage of kernel bodies) the kernels run as Python on NumPy
    # scalars, which warn on the inf - inf and overflows that compiled code computes silently
    # and then discards; the results are the same.
    def run(*args):
        with np.errstate(all="ignore"):
            return pyfunc(*args)
    run.__name__ = pyfunc.__name__
    return run


def kernel_pair(pyfunc=None, *, reduction=False):
    """Decorator: compile ``pyfunc`` (a loop using ``prange``) serial and parallel.

    ``reduction=True``: the prange loop itself is a reduction (``REDUCTION_OPTIONS``).
    """
    options = REDUCTION_OPTIONS if reduction else NUMBA_OPTIONS
    if pyfunc is None:
        return lambda f: KernelPair(f, options)
    return KernelPair(pyfunc, options)


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
    digest.update(f"vector width {VECTOR_WIDTH}".encode())
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


# --- SIMD width ---------------------------------------------------------------------------------
# LLVM vectorises for 256-bit registers on CPUs with AVX-512 (its tuning for Skylake-SP, to
# avoid the clock slowdown of 512-bit code), and Numba offers no per-function say in it; the
# only knob Numba has, NUMBA_CPU_FEATURES, is process-wide and must be set before Numba is
# imported. The kernels are bound by the exp polynomial's arithmetic, and measured 1.5x faster
# with 512-bit vectors (bfloat16 softmax of 256x128256: 49 -> 31 ms). So this package's own
# functions, and only them, carry LLVM's "prefer-vector-width" attribute, set where Numba
# hands each function's IR to LLVM. CPUs without AVX-512 ignore it (their widest registers
# are used as before). FASTSOFTMAX_VECTOR_WIDTH=256 turns it off.
VECTOR_WIDTH = os.environ.get("FASTSOFTMAX_VECTOR_WIDTH", "512")
_PACKAGE = __name__.split(".")[0]


def _install_vector_width():
    if not VECTOR_WIDTH.isdigit():
        raise ValueError(f"FASTSOFTMAX_VECTOR_WIDTH must be a number of bits such as 256 or "
                         f"512, got {VECTOR_WIDTH!r}")
    try:
        from numba.core.codegen import CPUCodeLibrary
    except ImportError:  # pragma: no cover - an unknown Numba layout: default widths
        return
    add_ir_module = CPUCodeLibrary.add_ir_module
    if getattr(add_ir_module, "_fastsoftmax", False):
        return
    attribute = f'"prefer-vector-width"="{VECTOR_WIDTH}"'
    # Numba's mangled names spell the module path: _ZN11fastsoftmax7kernels...
    marker = f"{len(_PACKAGE)}{_PACKAGE}"

    def with_vector_width(library, ir_module):
        # A module is ours when it defines or calls one of our functions: the bodies of
        # parallel loops are outlined into functions named __numba_parfor_gufunc_..., which
        # call our building blocks.
        functions = list(ir_module.functions)
        if any(marker in function.name for function in functions):
            for function in functions:
                if not function.is_declaration:
                    # a string attribute: llvmlite's set only checks the names it knows
                    set.add(function.attributes, attribute)
        return add_ir_module(library, ir_module)

    with_vector_width._fastsoftmax = True
    CPUCodeLibrary.add_ir_module = with_vector_width


_install_vector_width()
_install_cache_locators()
