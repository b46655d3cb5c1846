"""Reliability inside larger programs: fork, concurrent threads and every threading layer,
thread control, read-only installs, memory, and fuzzed inputs against the reference."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc

import numba
import numpy as np
import pytest

import fastsoftmax
from fastsoftmax import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, timeout: float = 300, env=None, **kwargs):
    """Run ``code`` in a new interpreter; a hang is a failure (timeout), not a stuck CI."""
    full_env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.large
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_pool_after_a_parallel_call_in_the_parent():
    out = run_python("""
        import multiprocessing as mp
        import numpy as np
        import fastsoftmax
        from fastsoftmax import reference

        x = np.random.default_rng(0).standard_normal((2048, 1000)).astype(np.float32)
        fastsoftmax.softmax(x)  # starts the parent's thread pool
        print("parent layer", fastsoftmax.parallel.active_layer())

        def work(seed):
            a = np.random.default_rng(seed).standard_normal((2048, 1000)).astype(np.float32)
            got = fastsoftmax.softmax(a)
            return float(np.abs(got - reference.softmax(a)).max())

        with mp.get_context("fork").Pool(2) as pool:
            errors = pool.map(work, range(4), chunksize=1)
        assert max(errors) < 1e-6, errors
        print("ok", errors)
    """, timeout=240)
    assert "ok" in out


def _installed_layers():
    layers = ["workqueue"]
    if sys.platform.startswith("linux"):
        layers.append("omp")
    if importlib.util.find_spec("tbb") is not None:
        layers.append("tbb")
    return layers


@pytest.mark.large
@pytest.mark.parametrize("layer", _installed_layers())
def test_eight_threads_at_once_match_serial_calls(layer):
    out = run_python("""
        import threading
        import numpy as np
        import fastsoftmax

        rng = np.random.default_rng(1)
        arrays = [rng.standard_normal(shape).astype(np.float32)
                  for shape in [(512, 1000), (3, 50), (64, 4000), (1, 300000),
                                (2000, 40), (7, 7), (256, 1024), (1, 1000)]]
        functions = [fastsoftmax.softmax, fastsoftmax.log_softmax, fastsoftmax.logsumexp]
        expected = [[f(a) for f in functions] for a in arrays]
        failures = []

        def worker(i):
            for _ in range(15):
                for f, want in zip(functions, expected[i]):
                    if not np.array_equal(f(arrays[i]), want, equal_nan=True):
                        failures.append((i, f.__name__))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        print("layer", fastsoftmax.parallel.active_layer())
    """, env={"NUMBA_THREADING_LAYER": layer}, timeout=300)
    assert f"layer {layer}" in out


def test_threads_context_bounds_and_restores():
    before = numba.get_num_threads()
    with fastsoftmax.threads(1) as n:
        assert n == 1 and numba.get_num_threads() == 1
        assert not parallel.parallel_available()
        x = np.zeros((4096, 64))
        np.testing.assert_allclose(fastsoftmax.softmax(x), 1 / 64)
    assert numba.get_num_threads() == before


def test_threads_context_restores_after_an_error():
    before = numba.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with fastsoftmax.threads(1):
            raise RuntimeError("boom")
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("n", [0, -1, numba.config.NUMBA_NUM_THREADS + 1, 1.5, "2", True])
def test_threads_out_of_range(n):
    with pytest.raises(ValueError, match="threads: n must be an int between 1 and"):
        with fastsoftmax.threads(n):
            pass


@pytest.mark.large
def test_numba_num_threads_environment_variable_bounds_the_pool():
    out = run_python("""
        import numba, numpy as np, fastsoftmax
        fastsoftmax.softmax(np.zeros((4096, 64)))
        print("threads", numba.get_num_threads(), fastsoftmax.parallel.parallel_available())
    """, env={"NUMBA_NUM_THREADS": "1"}, timeout=120)
    assert "threads 1 False" in out


@pytest.mark.large
def test_read_only_install_falls_back_to_a_user_cache():
    """The package in a directory nobody can write to: import and calls still work, with the
    kernel cache in the user's cache directory."""
    root = tempfile.mkdtemp(prefix="fastsoftmax-readonly-")
    site, home = os.path.join(root, "site"), os.path.join(root, "home")
    shutil.copytree(os.path.join(REPO, "fastsoftmax"), os.path.join(site, "fastsoftmax"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.mkdir(home)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=site, HOME=home, SITE=site, PYTHONDONTWRITEBYTECODE="1")
    # Root ignores file permissions (tests often run as root in containers): a plain file named
    # __pycache__ in every package folder makes a cache folder there impossible for anyone.
    for folder, _, _ in os.walk(site):
        if folder != site:
            open(os.path.join(folder, "__pycache__"), "w").close()
    subprocess.run(["chmod", "-R", "a-w", site], check=True)
    code = """
        import os, numpy as np, fastsoftmax, fastsoftmax.tools.bench
        assert fastsoftmax.__file__.startswith(os.environ["SITE"])
        x = np.random.default_rng(2).standard_normal((64, 100))
        np.testing.assert_allclose(fastsoftmax.softmax(x), fastsoftmax.reference.softmax(x),
                                   rtol=1e-12)
        print("cache", fastsoftmax.tools.bench.machine_info()["cache_dir"])
    """
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=root,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"cache {home}" in done.stdout, done.stdout
        assert not any("__pycache__" in dirs for _, dirs, _ in os.walk(site))
        assert not done.stderr.strip(), done.stderr  # no warning either
    finally:
        subprocess.run(["chmod", "-R", "u+w", site], check=True)
        shutil.rmtree(root, ignore_errors=True)


def _rss_bytes():
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.large
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_ten_thousand_calls_leave_memory_flat():
    x = np.random.default_rng(3).standard_normal((64, 1000)).astype(np.float32)
    out = np.empty_like(x)
    for f in (fastsoftmax.softmax, fastsoftmax.log_softmax, fastsoftmax.logsumexp):
        f(x)
    for _ in range(500):
        fastsoftmax.softmax(x)
    before = _rss_bytes()
    for i in range(10_000):
        fastsoftmax.softmax(x, out=out)
        fastsoftmax.log_softmax(x)
        fastsoftmax.logsumexp(x[:, :500])
    grown = _rss_bytes() - before
    assert grown < 5 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB"


@pytest.mark.large
def test_out_calls_allocate_nothing_of_the_input_size():
    x = np.random.default_rng(4).standard_normal((2048, 32000), dtype=np.float32)
    out = np.empty_like(x)
    lse = np.empty(2048, np.float32)
    for f, o in ((fastsoftmax.softmax, out), (fastsoftmax.log_softmax, out),
                 (fastsoftmax.logsumexp, lse)):
        f(x, out=o)  # compiled before measuring
        tracemalloc.start()
        try:
            f(x, out=o)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < x.nbytes // 100, f"{f.__name__}: peak {peak} bytes"
    # the in-place call too (compiled first: Numba's compiler allocates when a test file runs
    # alone on a cold cache)
    small = x[:2].copy()
    fastsoftmax.softmax(small, out=small)
    tracemalloc.start()
    try:
        fastsoftmax.softmax(x, out=x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes // 100


@pytest.mark.large
def test_pure_python_mode_matches_the_reference():
    """With NUMBA_DISABLE_JIT=1 the kernel bodies run as Python (what `make coverage` measures)
    and still agree with the reference, special values and masks included."""
    out = run_python("""
        import numpy as np, fastsoftmax
        from fastsoftmax import reference
        rng = np.random.default_rng(5)
        for dtype in (np.float32, np.float64):
            x = (rng.standard_normal((4, 300)) * 5).astype(dtype)
            x[1, 3], x[2], x[3, 9] = np.inf, -np.inf, np.nan
            where = rng.random(x.shape) > 0.3
            for name in ("softmax", "log_softmax", "logsumexp"):
                for kwargs in ({}, {"where": where}, {"axis": 0}):
                    got = getattr(fastsoftmax, name)(x, **kwargs)
                    want = getattr(reference, name)(x, **kwargs)
                    np.testing.assert_allclose(got, want, rtol=3e-5, atol=1e-5)
        print("pure python ok")
    """, env={"NUMBA_DISABLE_JIT": "1"}, timeout=300)
    assert "pure python ok" in out


def test_vector_width_setting():
    # 512-bit vectors are asked of LLVM for fastsoftmax's own functions only; 256 turns that
    # off. Both widths give the reference's results; a bad setting is refused at import.
    code = textwrap.dedent("""
        import numpy as np, fastsoftmax
        x = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
        got = fastsoftmax.log_softmax(x)
        np.testing.assert_allclose(got, fastsoftmax.reference.log_softmax(x), rtol=2e-6,
                                   atol=1e-5)
        print(fastsoftmax.kernels.jit.VECTOR_WIDTH)
    """)
    with tempfile.TemporaryDirectory() as cache:
        for width in ("256", "512"):
            env = dict(os.environ, FASTSOFTMAX_VECTOR_WIDTH=width, NUMBA_CACHE_DIR=cache)
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, done.stderr
            assert done.stdout.split()[-1] == width
    env = dict(os.environ, FASTSOFTMAX_VECTOR_WIDTH="wide")
    done = subprocess.run([sys.executable, "-c", "import fastsoftmax"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "FASTSOFTMAX_VECTOR_WIDTH must be a number" in done.stderr
