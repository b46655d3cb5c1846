"""The registry of operations is the one description every layer reads: these tests check that
it agrees with the public API, the references, the test registry, the benchmark peers,
fastsoftmax.dask, warmup and the design document."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re

import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import plan, reference
from fastsoftmax.kernels.jit import KernelPair
from fastsoftmax.registry import OPERATIONS, operation
from fastsoftmax.tools import peers

from .cases import CASES
from .conftest import PURE_PYTHON
from .inputs import random_logits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_public_function_and_reference_share_the_signature(name):
    op = OPERATIONS[name]
    assert name in fastsoftmax.__all__ and op.public() is getattr(fastsoftmax, name)
    assert op.reference is getattr(reference, name)
    public = inspect.signature(op.public()).parameters
    ref = inspect.signature(op.reference).parameters
    assert list(public) == list(ref)
    for parameter in public:
        assert public[parameter].kind == ref[parameter].kind, parameter
        assert public[parameter].default == ref[parameter].default, parameter


def test_every_public_function_is_an_operation():
    helpers = {"warmup", "threads", "reference", "__version__", "Confidence", "Reliability",
               "Sampled"}
    assert set(fastsoftmax.__all__) - helpers == set(OPERATIONS)


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_operation_entries_are_complete(name):
    op = OPERATIONS[name]
    assert op.kernels and all(isinstance(k, KernelPair) for k in op.kernels)
    assert op.split_finish is None or isinstance(op.split_finish, KernelPair)
    assert len(op.calls) >= len(op.kernels)  # a call for each kernel: warmup, tests
    assert name in CASES, "every operation has an entry in the test registry (tests/cases.py)"
    assert op.builds[:2] == ("serial", "parallel")


def test_the_test_registry_holds_only_operations():
    assert set(CASES) == set(OPERATIONS)


@pytest.mark.skipif(PURE_PYTHON, reason="nothing is compiled without the JIT")
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_the_example_calls_reach_every_kernel_in_every_build(name):
    op = OPERATIONS[name]
    x = random_logits(np.random.default_rng(0), (3, 40), np.float32)
    for call in op.calls:
        args, kwargs = call(x)
        for build in op.builds:
            with plan.force_build(build):
                op.public()(*args, **kwargs)
    for kernel in op.kernels:
        assert kernel.serial.signatures and kernel.parallel.signatures, kernel
    if op.split_finish is not None:
        assert op.split_finish.parallel.signatures


@pytest.mark.parametrize("case", peers.FUNCTIONS)
def test_every_benchmark_case_and_peer_can_be_prepared(case):
    op, _ = peers.CASES[case]
    x = random_logits(np.random.default_rng(1), (2, 100), np.float32)  # > top_k of a case
    for implementation in peers.OURS + peers.PEERS:
        if peers.applies(implementation, case, "float32") and peers.is_installed(implementation):
            assert peers.prepare(implementation, case, x)() is not None, implementation
    for peer in op.peers:  # each peer the registry names has that function
        assert peer in peers.PREPARERS
        module = {"scipy": "scipy.special", "jax": "jax.nn", "torch": "torch",
                  "torch-chunked": "torch", "entmax": "entmax"}[peer]
        # the softmax family's and the sparse family's peers are functions of the same name;
        # the others, pipelines
        if importlib.util.find_spec(module.split(".")[0]) and (
                op.split_finish is not None or peer == "entmax"):
            assert hasattr(importlib.import_module(module), op.name), (peer, op.name)


def test_dask_covers_the_operations_that_split_rows_or_take_whole_rows():
    pytest.importorskip("dask")
    import fastsoftmax.dask as fsd
    assert set(fsd.__all__) == {n for n, op in OPERATIONS.items()
                                if op.split_finish or op.dask_whole_rows}
    assert not any(op.split_finish and op.dask_whole_rows for op in OPERATIONS.values())


def test_warmup_takes_every_operation_and_names_the_unknown():
    fastsoftmax.warmup(dtypes=["float32"], functions=list(OPERATIONS))
    with pytest.raises(ValueError, match="warmup: unknown function 'softmx'"):
        fastsoftmax.warmup(functions=["softmx"])
    with pytest.raises(ValueError, match="expected one of"):
        operation("softmx")


def test_design_document_lists_the_files_a_new_function_touches():
    with open(os.path.join(REPO, "docs", "design.md")) as handle:
        design = handle.read()
    section = design.split("## Adding a function", 1)[1].split("\n## ", 1)[0]
    files = re.findall(r"`((?:fastsoftmax|tests|benchmarks|docs)/[\w/]+\.\w+)`", section)
    assert 3 <= len(set(files)) <= 8, files  # a handful
    for path in files:
        assert os.path.exists(os.path.join(REPO, path)), path


def test_documents_cite_only_files_that_exist():
    cited = set()
    for doc in ("README.md", "docs/design.md", "docs/performance.md"):
        with open(os.path.join(REPO, doc)) as handle:
            cited |= set(re.findall(r"`((?:fastsoftmax|tests|benchmarks|docs)/[\w/.]+\.(?:py|md))`",
                                    handle.read()))
    for root in ("fastsoftmax", "tests", "benchmarks"):
        for folder, _, names in os.walk(os.path.join(REPO, root)):
            for name in names:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name)) as handle:
                        text = handle.read()
                    assert "SP" "EC §" not in text, name  # the spec is not in the repository
                    cited |= set(re.findall(r"\b((?:kernels|tools|docs|tests|benchmarks)/"
                                            r"[\w/]+\.(?:py|md))\b", text))
    for path in cited:
        candidates = [path, os.path.join("fastsoftmax", path)]
        assert any(os.path.exists(os.path.join(REPO, p)) for p in candidates), path
