"""Command line: ``python -m fastsoftmax bench``, ``calibrate``, ``report`` and ``info``."""

from __future__ import annotations

import argparse
import importlib.util
import json

from . import bench, calibrate, peers

DTYPES = ("float32", "float64", "float16", "bfloat16")
DEFAULT_DTYPES = ("float32", "float64")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastsoftmax",
        description="fastsoftmax command line: benchmarks, temperature scaling and system "
                    "information.")
    commands = parser.add_subparsers(dest="command", required=True)

    b = commands.add_parser(
        "bench", help="time fastsoftmax against the NumPy reference and installed peers",
        description="Time fastsoftmax (allocating and with out=) against the NumPy reference "
                    "and SciPy, PyTorch, JAX and entmax when installed, on the same arrays, "
                    "interleaved; report GB/s, %% of the memory roofline measured in the same "
                    "run, and ratios (peer time / fastsoftmax time: > 1 means faster).")
    b.add_argument("--functions", default=None,
                   help=f"comma-separated, from {','.join(peers.FUNCTIONS)} (default: all)")
    b.add_argument("--shapes", default=None,
                   help="comma-separated ROWSxCOLS, e.g. 2048x32000,1x1000 (default: the "
                        "shapes of docs/design.md, with --quick a subset; fit_temperature: "
                        "10000x100 and 100000x1000)")
    b.add_argument("--dtypes", default=None,
                   help="comma-separated, from float32,float64,float16,bfloat16 (bfloat16 "
                        "needs ml_dtypes; default: float32,float64; --quick: float32 and one "
                        "bfloat16 case)")
    b.add_argument("--peers", default=None,
                   help=f"comma-separated, from {','.join(peers.PEERS)} "
                        "(default: installed; via-float32 runs for float16/bfloat16 only)")
    b.add_argument("--repeat", type=int, default=None,
                   help="timed rounds per implementation and case (default 7, --quick 5)")
    b.add_argument("--quick", action="store_true",
                   help="a subset that runs in about a minute")
    b.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    b.add_argument("--plot", metavar="PATH.png", help="also draw a PNG chart of GB/s")
    b.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    b.add_argument("--threads", type=int, default=None,
                   help="threads for fastsoftmax and the peers (default: Numba's default)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--startup", action="store_true",
                   help="also time import + first call in new processes (warm and cold cache)")

    c = commands.add_parser(
        "calibrate", help="fit a temperature to held-out logits; calibration error before/after",
        description="Fit the temperature T minimising the NLL of softmax(logits / T) at the "
                    "labels, print the expected (ECE), root-mean-square (RMSCE) and maximum "
                    "(MCE) calibration errors before and after, and draw the reliability "
                    "diagrams.")
    c.add_argument("logits", help="a .npy file of logits, shape (rows, classes)")
    c.add_argument("labels", help="a .npy file of integer labels, shape (rows,)")
    c.add_argument("--plot", metavar="PATH.png",
                   help="draw the reliability diagrams before and after (needs matplotlib)")
    c.add_argument("--n-bins", type=int, default=15, help="confidence bins (default 15)")
    c.add_argument("--binning", choices=("uniform", "quantile"), default="uniform",
                   help="bins of equal width, or of equal numbers of rows (default uniform)")
    c.add_argument("--ignore-index", type=int, default=-100,
                   help="label of rows to leave out (default -100)")

    commands.add_parser("info", help="versions, threading layer, cache directory, CPU features")

    r = commands.add_parser("report", help="print a saved benchmark (--json) as a table",
                            description="Print the results saved by `bench --json` as a "
                                        "Markdown table (for a README), optionally re-plot.")
    r.add_argument("path", help="a JSON file written by `bench --json`")
    r.add_argument("--plot", metavar="PATH.png", help="also draw the chart again")
    return parser


def bench_cases(args) -> list:
    """The cases an argument namespace asks for (ValueError on a bad list)."""
    if args.functions:
        functions = bench.parse_choices(args.functions, peers.FUNCTIONS, "function")
    else:
        functions = list(bench.QUICK_FUNCTIONS if args.quick else peers.FUNCTIONS)
    if args.shapes:
        shapes = bench.parse_shapes(args.shapes)
    else:
        shapes = list(bench.QUICK_SHAPES if args.quick else bench.FULL_SHAPES)
    if args.dtypes:
        dtypes = bench.parse_choices(args.dtypes, DTYPES, "dtype")
        for name in dtypes:
            peers.numpy_dtype(name)  # ValueError when bfloat16 lacks ml_dtypes
    else:
        dtypes = list(bench.QUICK_DTYPES if args.quick else DEFAULT_DTYPES)
    cases = [bench.Case(f, s, d) for d in dtypes for f in functions
             for s in (shapes if args.shapes else bench.case_shapes(f, shapes))]
    if args.quick and not (args.functions or args.shapes or args.dtypes):
        cases += [bench.Case(*case) for case in bench.QUICK_HALF_CASES
                  if _half_dtype_available(case[2])]
        cases += [bench.Case(*case) for case in bench.QUICK_DECODE_CASES]
        cases += [bench.Case(*case) for case in bench.QUICK_AXIS_CASES]
        cases += [bench.Case(*case) for case in bench.QUICK_SPARSE_CASES]
        cases += [bench.Case(*case) for case in bench.QUICK_DISTILL_CASES]
        cases += [bench.Case(*case) for case in bench.QUICK_SAMPLING_CASES]
    return cases


def startup_dtypes(cases) -> list:
    """The dtypes whose start-up is timed: those NumPy names itself (the start-up script
    makes its input with ``np.ones(..., dtype)``; bfloat16 needs ml_dtypes' type)."""
    return sorted({c.dtype for c in cases} - {"bfloat16"})


def _half_dtype_available(name: str) -> bool:
    try:
        peers.numpy_dtype(name)
    except ValueError:
        return False
    return True


def bench_implementations(args) -> list:
    if args.peers is None:
        chosen = peers.installed_peers()
    else:
        chosen = bench.parse_choices(args.peers, peers.PEERS, "peer")
        missing = [name for name in chosen if not peers.is_installed(name)]
        if missing:
            raise ValueError(f"peer {', '.join(missing)} is not installed")
    return list(peers.OURS) + chosen


def check_plotting(args) -> None:
    """--plot needs matplotlib (the bench extra): say so before any work is done."""
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'fastsoftmax[bench]' "
                         "(or leave out --plot)")


def run_bench(args) -> int:
    check_plotting(args)
    cases = bench_cases(args)
    implementations = bench_implementations(args)
    repeat = args.repeat if args.repeat is not None else (5 if args.quick else 7)
    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeat}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    peers.set_threads(args.threads)
    machine = bench.machine_info()
    print(f"# {machine['cpu']} | {machine['threads']} threads ({machine['threading_layer']}) | "
          f"fastsoftmax {machine['fastsoftmax']}, numba {machine['numba']}, "
          f"numpy {machine['numpy']} | peers: {', '.join(implementations[2:]) or 'none'}")
    results = bench.run_benchmark(cases, implementations, repeat,
                                  show_progress=not args.no_progress)
    if args.markdown:
        print(bench.format_table(results, markdown=True))
    else:
        bench.print_table(results)
    for r in results:
        for name, message in r.errors.items():
            print(f"! {name} failed on {r.function} {r.shape} {r.dtype}: {message}")
    startup = None
    if args.startup:
        startup = bench.measure_startup(startup_dtypes(cases))
        print(bench.format_startup(startup))
    if args.json:
        bench.to_json(results, machine, args.json, startup)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(results, machine, args.plot)
        print(f"wrote {args.plot}")
    return 0


def run_report(args) -> int:
    check_plotting(args)
    try:
        results, machine, startup = bench.from_json(args.path)
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read benchmark results from {args.path!r}: {exc}") from exc
    print(f"{machine['cpu']}, {machine['threads']} threads ({machine['threading_layer']}); "
          f"fastsoftmax {machine['fastsoftmax']}, numba {machine['numba']}, "
          f"numpy {machine['numpy']}\n")
    print(bench.format_table(results, markdown=True))
    if startup:
        print()
        print(bench.format_startup(startup))
    if args.plot:
        bench.plot(results, machine, args.plot)
    return 0


def run_info() -> int:
    for key, value in bench.machine_info().items():
        print(f"{key:>16}: {value}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            return run_bench(args)
        if args.command == "report":
            return run_report(args)
        if args.command == "calibrate":
            check_plotting(args)
            return calibrate.run(args)
        return run_info()
    except (ValueError, TypeError, IndexError) as exc:  # bad arguments or input arrays
        parser.error(str(exc))  # exits with status 2 and the usage line
    return 1
