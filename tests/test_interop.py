"""PyTorch tensors and JAX arrays in and out (skipped where torch or jax is not installed), and
the promise that neither is imported unless the caller passes one."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import reference, tensors
from fastsoftmax.arguments import Bfloat16Bits, is_bfloat16
from fastsoftmax.registry import OPERATIONS

from .cases import FUNCTIONS, assert_same_bits, calls, logits_for


def test_optional_libraries_are_not_imported_for_numpy_input():
    # scipy.linalg included: Numba's BLAS check would import it (kernels/jit.py; Numba itself
    # imports the top-level scipy package, a few ms), and the answer that check gives Numba
    # must stay what it would have been
    code = textwrap.dedent("""
        import importlib.util, sys
        import numpy as np
        import fastsoftmax
        x = np.ones((3, 5), np.float16)
        fastsoftmax.softmax(x); fastsoftmax.logsumexp(x.astype(np.float32))
        fastsoftmax.cross_entropy(np.ones((2, 4)), np.array([0, 1]))
        import numba.np.arraymath
        print(numba.np.arraymath._HAVE_BLAS == (importlib.util.find_spec("scipy") is not None))
        print(sorted(m for m in ("torch", "jax", "ml_dtypes", "scipy.linalg") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    assert done.stdout.strip().splitlines()[-2:] == ["True", "[]"]


# --- PyTorch -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


TORCH_DTYPES = ["float32", "float64", "float16", "bfloat16"]


def _tolerance(dtype_name):
    return {"float32": 2e-6, "float64": 1e-12, "float16": 1e-3, "bfloat16": 8e-3}[dtype_name]


@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
def test_torch_round_trip(torch, func_name, dtype_name):
    dtype = getattr(torch, dtype_name)
    x = (torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    got = FUNCTIONS[func_name][0](x)
    assert isinstance(got, torch.Tensor) and got.dtype == dtype and got.shape == (
        (6,) if func_name == "logsumexp" else (6, 300))
    want = getattr(torch, func_name)(x.double(), -1)
    tol = _tolerance(dtype_name)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 8)


def test_torch_bfloat16_result_is_the_float32_result_rounded(torch):
    x = torch.randn(8, 1000, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    got = fastsoftmax.softmax(x)
    want = fastsoftmax.softmax(x.float()).to(torch.bfloat16)  # torch rounds to nearest even
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_torch_input_is_not_copied(torch):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        t = torch.randn(4, 8).to(dtype)
        view = tensors.tensor_to_numpy(t, "softmax", "x")
        if dtype == torch.bfloat16:
            assert isinstance(view, Bfloat16Bits)
            view = view.bits
        assert view.__array_interface__["data"][0] == t.data_ptr()
    # a transposed (non-contiguous) tensor is viewed too, with its strides
    t = torch.randn(8, 4).T
    view = tensors.tensor_to_numpy(t, "softmax", "x")
    assert view.__array_interface__["data"][0] == t.data_ptr()
    torch.testing.assert_close(fastsoftmax.softmax(t), torch.softmax(t, -1))


def test_torch_out_and_in_place(torch):
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(5, 77).to(dtype)
        want = fastsoftmax.softmax(x)
        out = torch.empty_like(x)
        pointer = out.data_ptr()
        assert fastsoftmax.softmax(x, out=out) is out and out.data_ptr() == pointer
        assert torch.equal(out, want)
        y = x.clone()
        assert fastsoftmax.softmax(y, out=y) is y
        assert torch.equal(y, want)
    lse_out = torch.empty(5, dtype=torch.bfloat16)
    assert fastsoftmax.logsumexp(x, out=lse_out) is lse_out
    assert torch.equal(lse_out, fastsoftmax.logsumexp(x))


def test_torch_result_shares_memory_with_the_kernel_output(torch):
    got = fastsoftmax.log_softmax(torch.randn(3, 10).to(torch.bfloat16))
    assert got.is_contiguous() and got.untyped_storage().nbytes() == 3 * 10 * 2


def test_torch_options(torch):
    x = torch.randn(4, 6, 5, dtype=torch.float32)
    mask = torch.rand(4, 6, 5, generator=torch.Generator().manual_seed(2)) > 0.3
    got = fastsoftmax.softmax(x, axis=1, temperature=0.5, where=mask)
    want = reference.softmax(x.numpy(), axis=1, temperature=0.5, where=mask.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-7)
    assert fastsoftmax.softmax(x.to(torch.bfloat16), dtype=np.float32).dtype == torch.float32
    assert fastsoftmax.softmax(x.to(torch.bfloat16), dtype=np.float64).dtype == torch.float64
    assert fastsoftmax.logsumexp(torch.arange(4.0)).shape == ()
    assert fastsoftmax.softmax(torch.tensor([1, 2, 3])).dtype == torch.float64
    # a NumPy x with a tensor where= stays NumPy
    assert isinstance(fastsoftmax.softmax(x.numpy(), where=mask), np.ndarray)


def test_torch_errors(torch):
    with pytest.raises(TypeError, match=r"softmax: x requires grad.*x\.detach\(\)"):
        fastsoftmax.softmax(torch.randn(3, requires_grad=True))
    with pytest.raises(TypeError, match=r"log_softmax: x is a tensor on meta.*x\.cpu\(\)"):
        fastsoftmax.log_softmax(torch.empty(3, device="meta"))
    with pytest.raises(TypeError, match="cross_entropy: logits requires grad"):
        fastsoftmax.cross_entropy(torch.randn(2, 3, requires_grad=True), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"softmax: out must have shape \(3,\) and dtype "
                                         r"bfloat16, got shape \(3,\) and dtype float32"):
        fastsoftmax.softmax(torch.randn(3).to(torch.bfloat16), out=torch.empty(3))
    with pytest.raises(ValueError, match="out must have shape"):
        fastsoftmax.softmax(torch.randn(3), out=torch.empty(4))
    with pytest.raises(TypeError, match="complex"):
        fastsoftmax.softmax(torch.randn(3, dtype=torch.complex64))


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_torch_cross_entropy_and_backward(torch, dtype_name):
    F = pytest.importorskip("torch.nn.functional")
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(16, 50, generator=gen) * 3).to(dtype)
    targets = torch.randint(0, 50, (16,), generator=gen)
    loss, grad = fastsoftmax.cross_entropy(logits, targets, return_grad=True)
    leaf = logits.float().clone().requires_grad_(True)
    want = F.cross_entropy(leaf, targets)
    want.backward()
    tol = _tolerance(dtype_name)
    assert isinstance(loss, torch.Tensor) and loss.shape == () and grad.dtype == dtype
    torch.testing.assert_close(loss.float(), want.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(grad.float(), leaf.grad, rtol=tol, atol=tol * 1e-1)
    # the gradient written into the logits tensor itself
    in_place = logits.clone()
    _, same = fastsoftmax.cross_entropy(in_place, targets, grad_out=in_place)
    assert same is in_place
    torch.testing.assert_close(in_place.float(), grad.float(), rtol=tol, atol=tol * 1e-1)
    y = fastsoftmax.softmax(logits.float())
    g = torch.randn(16, 50, generator=gen)
    leaf = logits.float().clone().requires_grad_(True)
    torch.softmax(leaf, -1).backward(g)
    torch.testing.assert_close(fastsoftmax.softmax_backward(g, y), leaf.grad, rtol=1e-5,
                               atol=1e-6)
    out = torch.empty(16, 50)
    assert fastsoftmax.log_softmax_backward(g, torch.log(y), out=out) is out


# --- JAX ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jnp():
    pytest.importorskip("jax")
    import jax.numpy as jnp
    return jnp


def test_jax_array_in_numpy_out(jnp, func_name):
    x = jnp.asarray(np.random.default_rng(4).standard_normal((5, 40)).astype(np.float32))
    got = FUNCTIONS[func_name][0](x)
    assert isinstance(got, (np.ndarray, np.floating)) and got.dtype == np.float32
    np.testing.assert_allclose(got, FUNCTIONS[func_name][1](np.asarray(x)), rtol=2e-5,
                               atol=1e-6)


def test_jax_input_is_read_in_place(jnp):
    x = jnp.ones((4, 8), jnp.float32)
    view = np.asarray(x)  # what fastsoftmax does with any array-like
    assert view.__array_interface__["data"][0] == x.unsafe_buffer_pointer()
    assert not view.flags.writeable


def test_jax_bfloat16(jnp):
    x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 64)), jnp.bfloat16)
    got = fastsoftmax.softmax(x)
    assert got.dtype == x.dtype  # ml_dtypes.bfloat16
    np.testing.assert_allclose(got.astype(np.float64),
                               reference.softmax(np.asarray(x).astype(np.float64)),
                               rtol=8e-3, atol=1e-6)


def test_torch_sample(torch):
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    tokens = fastsoftmax.sample(logits, top_k=5, seed=1)
    assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64
    assert torch.equal(tokens, torch.from_numpy(fastsoftmax.sample(logits.float().numpy(),
                                                                   top_k=5, seed=1)))
    assert fastsoftmax.sample(logits[0], temperature=0).item() == int(logits[0].float().argmax())


# --- every operation of the registry, through tensors and JAX arrays ---------------------------
# The same values as a NumPy array and as a tensor (or JAX array): every example call of the
# registry, with the variants of the test registry (where=, a temperature, out=/grad_out= in
# place), must give the same bits, as tensors of the input's dtype (int64 for sample).

INTEROP_SHAPES = [(13, 257),  # serial
                  pytest.param((9, 4099), marks=pytest.mark.large)]  # above the serial threshold


def numpy_logits(op, dtype_name, shape):
    """Hard logits for ``op`` in ``dtype_name`` (bfloat16 as ml_dtypes), a fixed seed each."""
    if dtype_name == "bfloat16":
        pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(zlib.crc32(f"interop {op.name} {dtype_name} {shape}".encode()))
    return logits_for(op, rng, shape, dtype_name), rng


def as_tensor(torch, array):
    """A tensor over ``array``'s memory (bfloat16 through its bits)."""
    if is_bfloat16(array.dtype):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def from_tensor(torch, tensor):
    """The NumPy values of a result tensor (bfloat16 as ml_dtypes)."""
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def tensor_of_the_same_values(torch, x):
    """The tensor a caller would hold for the NumPy logits ``x``: bfloat16 rounded by torch
    from float32 (exactly ``x``'s values), other dtypes from NumPy."""
    if is_bfloat16(x.dtype):
        tensor = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    else:
        tensor = torch.from_numpy(x.copy())
    assert_same_bits(from_tensor(torch, tensor), x, "the tensor holds other values")
    return tensor


def flat(value) -> tuple:
    """The results of a call as one flat tuple (tuples of gradients nested in it opened)."""
    if not isinstance(value, tuple):
        return (value,)
    return tuple(item for part in value for item in flat(part))


def takes(op, name):
    return name in inspect.signature(op.public()).parameters


@pytest.mark.parametrize("shape", INTEROP_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_every_operation_gives_tensors_with_the_bits_of_numpy(torch, name, dtype_name, shape):
    op = OPERATIONS[name]
    function = op.public()
    x, rng = numpy_logits(op, dtype_name, shape)
    x_tensor = tensor_of_the_same_values(torch, x)
    for description, make in calls(op, x, rng):
        context = f"{name} {dtype_name} {shape} {description}"
        with np.errstate(all="ignore"):
            args, kwargs = make()
            want = function(*args, **kwargs)
            args, kwargs = make()
            in_place = "in place" in description
            tensors = {}  # id of a NumPy argument -> its tensor (out=x: the same one)

            def convert(value):
                if not isinstance(value, np.ndarray):
                    return value
                if id(value) not in tensors:
                    plain_x = value is x and not in_place
                    tensors[id(value)] = x_tensor if plain_x else as_tensor(torch, value)
                return tensors[id(value)]

            t_args = [convert(a) for a in args]
            t_kwargs = {k: convert(v) for k, v in kwargs.items()}
            pointer = t_args[0].data_ptr()
            got = function(*t_args, **t_kwargs)
        if type(want) is float:  # a fitted parameter (a temperature): a float either way
            assert type(got) is float and got == want, context
            continue
        results, wants = flat(got), flat(want)
        for result, wanted in zip(results, wants):
            # indices (tokens, labels, counts) as int64, values in the logits' dtype (but
            # sample's log-probabilities: float32 for half-precision logits, as NumPy's)
            kind = np.asarray(wanted).dtype
            want_dtype = torch.int64 if kind.kind in "iu" else \
                torch.float32 if kind == np.float32 else getattr(torch, dtype_name)
            assert isinstance(result, torch.Tensor) and result.dtype == want_dtype, context
        assert_same_bits(tuple(from_tensor(torch, r) for r in results), wants, context)
        if in_place:  # out=x / grad_out=x: the input tensor itself, written where it is
            assert results[-1] is t_args[0] and results[-1].data_ptr() == pointer, context


@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
@pytest.mark.parametrize("name", [name for name, op in OPERATIONS.items()
                                  if takes(op, "out") or takes(op, "grad_out")])
def test_a_tensor_out_is_written_in_place(torch, name, dtype_name):
    op = OPERATIONS[name]
    function = op.public()
    x, _ = numpy_logits(op, dtype_name, (13, 257))
    keyword = "out" if takes(op, "out") else "grad_out"
    for index, call in enumerate(op.calls):
        args, kwargs = call(x)
        if keyword == "grad_out" and not kwargs.get("return_grad"):
            continue  # only a call computing the gradient writes one
        context = f"{name} {dtype_name} call {index}"
        with np.errstate(all="ignore"):
            want = function(*args, **kwargs)
            written = -1 if keyword == "grad_out" else 0  # the result that is out
            wanted = want[written] if isinstance(want, tuple) else want
            out = as_tensor(torch, np.zeros_like(np.asarray(wanted)))
            pointer = out.data_ptr()
            # x, and arrays of its values (a teacher's logits), as the caller's tensors
            t_args = [tensor_of_the_same_values(torch, a) if a is x or isinstance(
                a, np.ndarray) and a.dtype == x.dtype else
                (torch.from_numpy(a) if isinstance(a, np.ndarray) else a) for a in args]
            t_kwargs = {k: tensor_of_the_same_values(torch, v) if isinstance(v, np.ndarray)
                        and v.dtype == x.dtype else v for k, v in kwargs.items()}  # weights
            got = function(*t_args, **dict(t_kwargs, **{keyword: out}))
        result = got[written] if isinstance(got, tuple) else got
        assert result is out and out.data_ptr() == pointer, context
        assert_same_bits(from_tensor(torch, out), np.asarray(wanted), context)
        if isinstance(got, tuple):  # the loss, a tensor too
            assert isinstance(got[0], torch.Tensor), context
            assert_same_bits(from_tensor(torch, got[0]), want[0], context)


JAX_DTYPES = ["float32", "bfloat16", "float16"]


@pytest.mark.parametrize("dtype_name", JAX_DTYPES)
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_every_operation_gives_numpy_with_the_bits_of_numpy_for_jax_input(jnp, name,
                                                                           dtype_name):
    op = OPERATIONS[name]
    function = op.public()
    x, rng = numpy_logits(op, dtype_name, (13, 257))
    x_jax = jnp.asarray(x)
    assert x_jax.dtype == x.dtype
    for description, make in calls(op, x, rng):
        if "in place" in description:
            continue  # a JAX array is immutable: no out=x
        context = f"{name} {dtype_name} {description}"
        with np.errstate(all="ignore"):
            args, kwargs = make()
            want = function(*args, **kwargs)
            j_args = [x_jax if a is x else jnp.asarray(a) if isinstance(a, np.ndarray) else a
                      for a in args]
            j_kwargs = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v
                        for k, v in kwargs.items()}
            got = function(*j_args, **j_kwargs)
        for result in flat(got):
            # (a fitted parameter is a float, whatever the input)
            assert isinstance(result, (np.ndarray, np.generic)) or \
                type(result) is float is type(want), context
        assert_same_bits(got, want, context)
