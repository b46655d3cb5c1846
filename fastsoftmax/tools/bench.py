"""The benchmark engine behind ``python -m fastsoftmax bench``.

For each case (function, shape, dtype) it builds one input array, measures the memory
roofline over the same bytes, then times every implementation of :mod:`fastsoftmax.peers` on
that array, interleaved round by round so that drifting clocks and noisy neighbours hit all
of them alike. Reported per implementation: median and minimum time per call, GB/s (bytes
moved over the minimum time: docs/design.md, "Benchmarks"), percent of the memory roofline and
percent of the compute roofline (a bare exponential-and-sum loop over the same elements: the
ceiling of a batch in cache); per case, the ratio of each peer's time to fastsoftmax's (> 1
means fastsoftmax is faster).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import plan
from ..parallel import parallel_available
from . import peers

QUICK_FUNCTIONS = ("softmax", "log_softmax", "logsumexp")
QUICK_SHAPES = ((1, 1000), (1024, 1000), (16, 262144), (2048, 32000))
QUICK_DTYPES = ("float32",)
# with --quick: also an LLM-sized bfloat16 batch (a PyTorch tensor when torch is installed)
QUICK_HALF_CASES = (("softmax", (256, 128256), "bfloat16"),)
# with --quick: the sparse family on the shapes its issue asks about (against the entmax package)
QUICK_SPARSE_CASES = tuple((function, shape, "float32")
                           for function in ("sparsemax", "entmax15", "entmax_bisect")
                           for shape in ((256, 32000), (1024, 1000)))
# with --quick: the batches of an LLM's decode step (1-64 rows of a 32K-128K vocabulary, in
# cache), for probabilities and for sampling
DECODE_SHAPES = ((1, 32000), (1, 128256), (8, 128256), (64, 32000), (64, 128256))
QUICK_DECODE_CASES = tuple(
    [(function, shape, "float32") for function in ("softmax", "log_softmax")
     for shape in DECODE_SHAPES]
    + [(function, shape, "float32") for function in ("sample_top_k", "sample_top_p")
       for shape in ((1, 128256), (64, 128256))])
# with --quick: softmax along axis 0 of the training batch transposed (a C-ordered 32000x2048),
# to compare with softmax of 2048x32000 along its last axis
QUICK_AXIS_CASES = (("softmax_axis0", (32000, 2048), "float32"),)
# with --quick: the distillation losses on the training batch (against PyTorch's
# F.kl_div and autograd), time and peak memory
QUICK_DISTILL_CASES = tuple((function, (2048, 32000), "float32")
                            for function in ("kl_div", "kl_div_grad", "jsd", "jsd_grad"))
# with --quick: a serving engine's decode step, one sampling call on a 64-request batch of a
# 128K vocabulary: one set of parameters, every row's own with penalties, and with logprobs
QUICK_SAMPLING_CASES = tuple((case, (64, 128256), "float32") for case in (
    "sample_uniform", "sample_mixed", "sample_mixed_logprobs"))
FULL_SHAPES = ((1, 1000), (1024, 1000), (65536, 128), (16, 262144), (1, 4194304),
               (2048, 32000), (256, 128256))


def case_shapes(function: str, shapes) -> tuple:
    """The shapes to time ``function`` on: its operation's own (registry ``bench_shapes``:
    fit_temperature on validation sets, not on LLM batches), else ``shapes``."""
    return peers.CASES[function][0].bench_shapes or tuple(shapes)


# A timed round of a fast call repeats it until the round lasts at least this long, so that
# the timer's resolution and the loop's overhead do not show in microsecond results.
MIN_ROUND_SECONDS = 2e-3


@dataclass
class Case:
    function: str
    shape: tuple
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.function}|{'x'.join(map(str, self.shape))}|{self.dtype}"


@dataclass
class Timing:
    median_s: float
    min_s: float
    gbps: float
    pct_roofline: float
    calls_per_round: int
    rounds: int
    pct_compute: float = math.nan  # of the compute roofline (older JSON files lack it)
    peak_bytes: int | None = None  # memory one call holds at its peak (:func:`peak_memory`)


@dataclass
class CaseResult:
    function: str
    shape: tuple
    dtype: str
    bytes_moved: int
    roofline_gbps: float
    compute_gelems: float = math.nan  # G elements/s of the compute roofline
    timings: dict = field(default_factory=dict)   # implementation -> Timing
    errors: dict = field(default_factory=dict)    # implementation -> message
    ratios: dict = field(default_factory=dict)    # peer -> peer min / fastsoftmax min
    ratios_out: dict = field(default_factory=dict)  # peer -> peer min / fastsoftmax out= min


def parse_shapes(text: str) -> list[tuple]:
    """``"2048x32000,1x1000"`` -> ``[(2048, 32000), (1, 1000)]``."""
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        try:
            shape = tuple(int(part) for part in item.split("x"))
        except ValueError:
            shape = ()
        if not shape or any(n < 1 for n in shape):
            raise ValueError(
                f"bad shape {item!r}: expected positive sizes joined by 'x', such as 2048x32000")
        shapes.append(shape)
    return shapes


def parse_choices(text: str, allowed, what: str) -> list[str]:
    """Split a comma-separated list and check every item is allowed."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item not in allowed:
            raise ValueError(f"unknown {what} {item!r}; expected one of {', '.join(allowed)}")
    if not items:
        raise ValueError(f"no {what} given")
    return items


def _time_rounds(fn, rounds_out: list, calls: int):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    rounds_out.append((time.perf_counter() - start) / calls)


def _calibrate(fn) -> tuple[int, float]:
    """(calls per round so that a round lasts at least MIN_ROUND_SECONDS, seconds per call)."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, math.ceil(MIN_ROUND_SECONDS / max(once, 1e-7))), once


def _fastest(fn, repeat: int) -> float:
    """The minimum seconds per call of ``fn`` over at least 3 timed rounds."""
    calls, _ = _calibrate(fn)
    times: list = []
    for _ in range(max(repeat, 3)):
        _time_rounds(fn, times, calls)
    return min(times)


def _runs_parallel(flat: np.ndarray) -> bool:
    # the plan's rule: what fastsoftmax's own kernels would do with this many elements
    return flat.size > plan.SERIAL_MAX_ELEMENTS and parallel_available()


def _resident(field: str) -> int | None:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory(fn) -> int:
    """Bytes one call of ``fn`` holds at its peak beyond what was held before: the
    allocations tracemalloc sees (NumPy's, and Numba's scratch), or the growth of the
    process's resident memory (its high-water mark, reset first) where that is larger:
    PyTorch allocates outside tracemalloc's sight, and tracemalloc counts pages never
    touched."""
    import tracemalloc
    before = _resident("VmRSS")
    try:  # reset the high-water mark of the resident memory (Linux)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        before = None
    tracemalloc.start()
    try:
        fn()
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    high = _resident("VmHWM")
    grown = high - before if before is not None and high is not None else 0
    return max(traced, grown)


def measure_roofline(function: str, x: np.ndarray, repeat: int) -> float:
    """GB/s of the simplest pass over the same bytes: scale-and-copy, or a read-only sum."""
    from .roofline import scale_copy, sum_all
    flat = x.reshape(-1)
    if peers.is_half(flat):  # Numba cannot type float16/bfloat16: the same bytes as integers
        flat = flat.view(np.uint16)
    if function in peers.READ_ONLY:
        kernel = sum_all.build(_runs_parallel(flat))
        fn = lambda: kernel(flat)  # noqa: E731
        nbytes = flat.nbytes
    else:
        kernel = scale_copy.build(_runs_parallel(flat))
        dst = np.empty_like(flat)
        factor = flat.dtype.type(0.5 if flat.dtype.kind == "f" else 3)
        fn = lambda: kernel(flat, dst, factor)  # noqa: E731
        nbytes = 2 * flat.nbytes
    return nbytes / _fastest(fn, repeat) / 1e9


def measure_compute_roofline(x: np.ndarray, repeat: int) -> float:
    """G elements/s of a bare vectorised exponential-and-sum over the elements of ``x``, in
    its compute dtype (half precision is computed in float32, as the kernels do)."""
    from .roofline import exp_sum
    flat = x.reshape(-1)
    flat = flat.astype(np.float32) if peers.is_half(flat) else flat
    kernel = exp_sum.build(_runs_parallel(flat))
    return flat.size / _fastest(lambda: kernel(flat), repeat) / 1e9


def run_case(case: Case, implementations, repeat: int, seed: int = 0,
             budget_s: float = 3.0) -> CaseResult:
    """Time every implementation on one case. An implementation slower than ``budget_s`` per
    ``repeat`` calls (the NumPy reference on big arrays) gets fewer rounds, at least 3."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(case.shape, dtype=np.float32) * 3).astype(
        peers.numpy_dtype(case.dtype))
    nbytes = peers.result_bytes(case.function, x)
    result = CaseResult(case.function, case.shape, case.dtype, nbytes,
                        measure_roofline(case.function, x, repeat),
                        measure_compute_roofline(x, repeat))
    callables, calls, rounds = {}, {}, {}
    for name in implementations:
        try:
            fn = peers.prepare(name, case.function, x)
        except NotImplementedError:
            continue  # this implementation has no such function: not an error
        try:
            fn()  # compile, allocate, warm caches: not timed
            calls[name], once = _calibrate(fn)
            rounds[name] = max(min(3, repeat), min(repeat, int(budget_s / once)))
            callables[name] = fn
        except Exception as exc:  # a peer that cannot run this case is reported, not fatal
            result.errors[name] = f"{type(exc).__name__}: {exc}"
    times = {name: [] for name in callables}
    names = list(callables)
    for round_index in range(repeat):
        # rotate the order every round: no implementation always runs right after another
        shift = round_index % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            if round_index < rounds[name]:
                _time_rounds(callables[name], times[name], calls[name])
    for name, samples in times.items():
        best = min(samples)
        gbps = nbytes / best / 1e9
        result.timings[name] = Timing(statistics.median(samples), best, gbps,
                                      100.0 * gbps / result.roofline_gbps, calls[name],
                                      len(samples),
                                      100.0 * x.size / best / 1e9 / result.compute_gelems,
                                      peak_memory(callables[name]))
    for ours, ratios in (("fastsoftmax", result.ratios), ("fastsoftmax out=", result.ratios_out)):
        if ours in result.timings:
            for name in peers.PEERS:
                if name in result.timings:
                    ratios[name] = result.timings[name].min_s / result.timings[ours].min_s
    return result


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool = True):
    """Yield an ``advance(description)`` callable: rich, else tqdm, else plain lines."""
    if not enabled:
        yield lambda description: None
        return
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.progress import TimeElapsedColumn
    except ImportError:
        Progress = None
    if Progress is not None:
        with Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("benchmark", total=total)
            yield lambda description: bar.update(task, advance=1, description=description)
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        with tqdm(total=total, file=sys.stderr) as bar:
            def advance(description):
                bar.set_description(description)
                bar.update(1)
            yield advance
        return
    done = [0]

    def advance(description):
        done[0] += 1
        print(f"[{done[0]}/{total}] {description}", file=sys.stderr, flush=True)
    yield advance


def run_benchmark(cases, implementations, repeat: int, show_progress: bool = True):
    results = []
    with progress_bar(len(cases), show_progress) as advance:
        for case in cases:
            results.append(run_case(case, implementations, repeat))
            advance(case.label)
    return results


# --- start-up --------------------------------------------------------------------------------
_STARTUP_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fastsoftmax
t1 = time.perf_counter()
fastsoftmax.softmax(np.ones((4, 1000), sys.argv[1]))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t2 - t1}))
"""


def measure_startup(dtypes=("float32", "float64")) -> dict:
    """Seconds to import fastsoftmax and make a first call, in new processes: with the kernel
    cache warm, and with a cold (empty) cache, where the first call compiles its kernel."""
    import subprocess
    import tempfile

    def run(dtype, env):
        done = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT, dtype], env=env,
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    result = {}
    for dtype in dtypes:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            cold = run(dtype, env)
            warm = run(dtype, env)  # the same cache, now filled
        result[dtype] = {"import_s": warm["import_s"], "first_call_warm_s": warm["first_call_s"],
                         "import_and_first_call_warm_s": warm["import_s"] + warm["first_call_s"],
                         "first_call_cold_s": cold["first_call_s"]}
    return result


def format_startup(startup: dict) -> str:
    lines = ["start-up (new process): import | first call, warm cache | import + first call, "
             "warm | first call, cold cache (compiles)"]
    for dtype, t in startup.items():
        lines.append(f"  {dtype}: {t['import_s']:.2f} s | {t['first_call_warm_s']:.2f} s | "
                     f"{t['import_and_first_call_warm_s']:.2f} s | {t['first_call_cold_s']:.2f} s")
    return "\n".join(lines)


# --- reporting ---------------------------------------------------------------------------------

def _format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _format_bytes(n) -> str:
    if n is None:
        return "—"
    if n < 1 << 20:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1 << 20):.1f} MB"


def table_rows(results):
    """Rows (as lists of strings) of the summary table, and its header."""
    peer_names = [name for name in peers.PEERS
                  if any(name in r.timings for r in results)]
    header = ["function", "shape", "dtype", "variant", "median", "min", "GB/s", "% roofline",
              "% compute", "peak"]
    header += [f"× {name}" for name in peer_names]
    rows = []
    for r in results:
        shape = "×".join(map(str, r.shape))
        for ours, ratios in (("fastsoftmax", r.ratios), ("fastsoftmax out=", r.ratios_out)):
            t = r.timings.get(ours)
            if t is None:
                continue
            variant = "allocating" if ours == "fastsoftmax" else "out="
            row = [r.function, shape, r.dtype, variant, _format_time(t.median_s),
                   _format_time(t.min_s), f"{t.gbps:.1f}", f"{t.pct_roofline:.0f}%",
                   "—" if math.isnan(t.pct_compute) else f"{t.pct_compute:.0f}%",
                   _format_bytes(t.peak_bytes)]
            row += [f"{ratios[name]:.2f}" if name in ratios else "—" for name in peer_names]
            rows.append(row)
    return header, rows


def format_table(results, markdown: bool = False) -> str:
    header, rows = table_rows(results)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 4 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def print_table(results, file=None) -> None:
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(format_table(results), file=file)
        return
    header, rows = table_rows(results)
    table = Table(title="fastsoftmax benchmark (× peer = peer time / fastsoftmax time; "
                        "> 1: fastsoftmax is faster)")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 4 else "right")
    for row in rows:
        table.add_row(*row)
    Console(file=file, width=max(120, sum(len(h) + 6 for h in header))).print(table)


def to_json(results, machine: dict, path: str, startup: dict | None = None) -> None:
    payload = {
        "machine": machine,
        "startup": startup,
        "note": "ratios = peer min time / fastsoftmax min time (> 1: fastsoftmax faster); "
                "GB/s = bytes moved / min time",
        "results": [dict(asdict(r), shape=list(r.shape),
                         timings={k: asdict(v) for k, v in r.timings.items()})
                    for r in results],
    }
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)


def from_json(path: str):
    """(results, machine, startup) from a file written by :func:`to_json`."""
    with open(path) as handle:
        payload = json.load(handle)
    results = []
    for item in payload["results"]:
        timings = {name: Timing(**t) for name, t in item.pop("timings").items()}
        results.append(CaseResult(**dict(item, shape=tuple(item["shape"]), timings=timings)))
    return results, payload["machine"], payload.get("startup")


def plot(results, machine: dict, path: str) -> None:
    """PNG chart: GB/s per shape (ordered by row length) for each implementation, with the
    roofline, one panel per function and dtype."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.function, r.dtype) for r in results},
                    key=lambda p: (peers.FUNCTIONS.index(p[0]), p[1]))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 4.6 * rows), squeeze=False)
    styles = {"fastsoftmax": ("C0", "o", "-"), "fastsoftmax out=": ("C0", "s", "--"),
              "reference": ("C7", "v", "-"), "scipy": ("C2", "^", "-"),
              "torch": ("C3", "D", "-"), "torch-chunked": ("C3", "d", "--"),
              "jax": ("C1", "P", "-"), "entmax": ("C5", "*", "-"),
              "via-float32": ("C4", "X", "-.")}
    for ax, (function, dtype) in zip(axes.flat, panels):
        cases = sorted((r for r in results if (r.function, r.dtype) == (function, dtype)),
                       key=lambda r: (r.shape[-1], math.prod(r.shape)))
        xs = range(len(cases))
        ax.plot(xs, [r.roofline_gbps for r in cases], color="black", linestyle=":",
                marker="_", markersize=14, label="memory roofline (same bytes)")
        for name in peers.OURS + peers.PEERS:
            ys = [r.timings[name].gbps if name in r.timings else np.nan for r in cases]
            if np.all(np.isnan(ys)):
                continue
            color, marker, line = styles[name]
            ax.plot(xs, ys, color=color, marker=marker, linestyle=line, label=name)
        ax.set_xticks(list(xs), ["×".join(map(str, r.shape)) for r in cases], rotation=30,
                      ha="right")
        ax.set_yscale("log")
        ax.set_xlabel("shape (rows × row length), by row length")
        ax.set_ylabel("GB/s (bytes read + written / min time)")
        ax.set_title(f"{function}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"fastsoftmax {machine.get('fastsoftmax')} vs peers — {machine.get('cpu')}, "
                 f"{machine.get('threads')} threads", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict:
    """Versions, threads and CPU: what a bug report or a benchmark needs to be read."""
    import llvmlite.binding as llvm
    import numba

    import fastsoftmax
    from .roofline import sum_all

    sum_all.parallel(np.ones(4))  # the threading layer is only chosen at the first parallel run
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not initialised"
    features = llvm.get_host_cpu_features()
    simd = sorted(name for name, on in features.items() if on and name.startswith(
        ("sse", "ssse", "avx", "fma", "f16c", "neon", "sve", "vsx", "altivec")))
    try:
        cache_dir = sum_all.parallel._cache._cache_path
    except AttributeError:
        cache_dir = "unknown"
    return {
        "fastsoftmax": fastsoftmax.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threading_layer": layer,
        "threads": numba.get_num_threads(),
        "cpus": os.cpu_count(),
        "cache_dir": cache_dir,
        "cpu": cpu_name(),
        "llvm_cpu": llvm.get_host_cpu_name(),
        "simd": " ".join(simd),
        "platform": platform.platform(),
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
