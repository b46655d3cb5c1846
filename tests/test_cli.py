"""The command line: argument parsing, error messages, JSON and chart output, info."""

from __future__ import annotations

import json

import numpy as np

import pytest

from fastsoftmax.tools import bench, cli, peers

TINY = ["bench", "--shapes", "3x64,1x10", "--functions", "softmax,logsumexp", "--dtypes",
        "float32", "--peers", "reference", "--repeat", "2", "--no-progress"]


def test_parse_shapes():
    assert bench.parse_shapes("2048x32000, 1x1000") == [(2048, 32000), (1, 1000)]
    assert bench.parse_shapes("7") == [(7,)]


@pytest.mark.parametrize("text", ["2048*32000", "0x5", "x", "axb", "3x-1", ""])
def test_bad_shape_strings_are_refused(text):
    with pytest.raises(ValueError, match="bad shape"):
        bench.parse_shapes(text)


@pytest.mark.parametrize("args, words", [
    (["bench", "--functions", "sofmax"], ["unknown function", "'sofmax'", "softmax"]),
    (["bench", "--shapes", "12by3"], ["bad shape", "'12by3'"]),
    (["bench", "--dtypes", "float128"], ["unknown dtype", "float128"]),
    (["bench", "--peers", "tensorflow"], ["unknown peer", "tensorflow"]),
    (["bench", "--repeat", "0", "--shapes", "1x4"], ["--repeat"]),
    (["bench", "--threads", "0", "--shapes", "1x4"], ["--threads"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_arguments_exit_with_a_message(capsys, args, words):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_default_cases():
    args = cli.build_parser().parse_args(["bench", "--quick"])
    cases = cli.bench_cases(args)
    half = [c for c in cases if c.dtype == "bfloat16"]  # the LLM-sized bfloat16 case
    assert [(c.function, c.shape) for c in half] == [(f, s) for f, s, _ in
                                                     bench.QUICK_HALF_CASES]
    sparse = [(c.function, c.shape, c.dtype) for c in cases
              if c.function in {f for f, _, _ in bench.QUICK_SPARSE_CASES}]
    assert sparse == list(bench.QUICK_SPARSE_CASES)
    serving = {f for f, _, _ in bench.QUICK_SAMPLING_CASES}  # a serving batch's decode step
    sampling = [(c.function, c.shape, c.dtype) for c in cases if c.function in serving]
    assert sampling == list(bench.QUICK_SAMPLING_CASES)
    decode = [(c.function, c.shape, c.dtype) for c in cases if c.function not in serving
              and (c.shape in bench.DECODE_SHAPES or c.function.startswith("sample"))]
    assert decode == list(bench.QUICK_DECODE_CASES)
    distill = [(c.function, c.shape, c.dtype) for c in cases
               if c.function in {f for f, _, _ in bench.QUICK_DISTILL_CASES}]
    assert distill == list(bench.QUICK_DISTILL_CASES)
    axis = [(c.function, c.shape, c.dtype) for c in cases if c.function == "softmax_axis0"]
    assert axis == list(bench.QUICK_AXIS_CASES)
    float32 = [c for c in cases if c.dtype == "float32" and c.function in bench.QUICK_FUNCTIONS
               and c.shape not in bench.DECODE_SHAPES]
    assert len(float32) + len(half) + len(sparse) + len(sampling) + len(decode) + \
        len(distill) + len(axis) == len(cases)
    assert {c.shape for c in float32} == set(bench.QUICK_SHAPES)
    assert cli.startup_dtypes(cases) == ["float32"]  # make bench --startup: no bfloat16
    args = cli.build_parser().parse_args(["bench"])
    assert {c.dtype for c in cli.bench_cases(args)} == {"float32", "float64"}


def test_json_has_every_field(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert cli.main(TINY + ["--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert {"fastsoftmax", "numba", "numpy", "threads", "cpu"} <= set(data["machine"])
    assert len(data["results"]) == 4
    for case in data["results"]:
        assert case["roofline_gbps"] > 0 and case["bytes_moved"] > 0
        assert case["compute_gelems"] > 0
        assert set(case["timings"]) == {"fastsoftmax", "fastsoftmax out=", "reference"}
        for timing in case["timings"].values():
            assert 0 < timing["min_s"] <= timing["median_s"]
            assert timing["gbps"] > 0 and timing["pct_roofline"] > 0
            assert timing["pct_compute"] > 0
        assert case["ratios"]["reference"] > 0 and case["ratios_out"]["reference"] > 0
    table = capsys.readouterr().out
    assert "× reference" in table and "3×64" in table and "% compute" in table


def test_markdown_table_and_plot(tmp_path, capsys):
    png = tmp_path / "chart.png"
    assert cli.main(TINY + ["--markdown", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| function | shape | dtype | variant |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("fastsoftmax", "numba", "numpy", "threading_layer", "threads", "cache_dir",
                "simd"):
        assert key in out


def test_startup_table_format():
    text = bench.format_startup({"float32": {"import_s": 0.5, "first_call_warm_s": 0.25,
                                             "import_and_first_call_warm_s": 0.75,
                                             "first_call_cold_s": 2.5}})
    assert "float32: 0.50 s | 0.25 s | 0.75 s | 2.50 s" in text


@pytest.mark.slow
def test_startup_is_measured_in_new_processes():
    startup = bench.measure_startup(["float32"])["float32"]
    assert 0 < startup["first_call_warm_s"] < startup["first_call_cold_s"]


def test_report_prints_a_saved_run(tmp_path, capsys):
    path = tmp_path / "run.json"
    assert cli.main(TINY + ["--json", str(path)]) == 0
    capsys.readouterr()
    png = tmp_path / "again.png"
    assert cli.main(["report", str(path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| softmax | 3×64 | float32 | allocating |" in out
    assert png.exists()


def test_report_of_a_missing_file_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["report", str(tmp_path / "nothing.json")])
    assert info.value.code == 2
    assert "cannot read benchmark results" in capsys.readouterr().err


def test_every_implementation_has_a_plot_style(tmp_path):
    # a chart with every implementation in it, half-precision peers included
    names = list(peers.OURS) + list(peers.PEERS)
    timing = bench.Timing(1e-3, 1e-3, 1.0, 10.0, 1, 3)
    result = bench.CaseResult("softmax", (2, 8), "bfloat16", 64, 10.0,
                              timings={name: timing for name in names})
    png = tmp_path / "all.png"
    bench.plot([result], {"fastsoftmax": "x", "cpu": "y", "threads": 2}, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit) as info:
        cli.main(TINY + ["--plot", str(tmp_path / "chart.png")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "fastsoftmax[bench]" in err
    assert not (tmp_path / "chart.png").exists()


# --- calibrate ----------------------------------------------------------------------------------

def _calibration_files(tmp_path, n_rows=4000, n_classes=10, labels=None):
    from benchmarks.calibration_data import OVERCONFIDENCE, calibration_data
    logits, drawn = calibration_data(n_rows, n_classes, seed=3)
    paths = tmp_path / "logits.npy", tmp_path / "labels.npy"
    np.save(paths[0], logits)
    np.save(paths[1], drawn if labels is None else labels)
    return [str(p) for p in paths], OVERCONFIDENCE


def test_calibrate_fits_the_temperature_and_prints_the_errors(tmp_path, capsys):
    files, true_t = _calibration_files(tmp_path)
    png = tmp_path / "diagram.png"
    assert cli.main(["calibrate", *files, "--plot", str(png), "--n-bins", "10"]) == 0
    out = capsys.readouterr().out
    fitted = float(out.split("fitted temperature:")[1].split()[0])
    assert fitted == pytest.approx(true_t, rel=0.05)
    ece_before, ece_after = (float(v) for v in out.split("ECE")[1].split()[:2])
    assert ece_after < 0.03 < ece_before
    assert "RMSCE" in out and "MCE" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_leaves_out_ignored_rows(tmp_path, capsys):
    files, _ = _calibration_files(tmp_path)
    labels = np.load(files[1])
    labels[::2] = -1
    np.save(files[1], labels)
    assert cli.main(["calibrate", *files, "--ignore-index", "-1"]) == 0
    assert "rows: 2000 " in capsys.readouterr().out


@pytest.mark.parametrize("labels, words", [
    (np.zeros(3, np.int64), ["labels must have shape (4000,)"]),
    (np.full(4000, 10), ["labels[0] = 10 is not a class index"]),
    (np.zeros(4000), ["labels must be integer class indices"]),
])
def test_calibrate_bad_input_exits_with_a_message(tmp_path, capsys, labels, words):
    files, _ = _calibration_files(tmp_path, labels=labels)
    with pytest.raises(SystemExit) as info:
        cli.main(["calibrate", *files])
    assert info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err
    with pytest.raises(SystemExit):
        cli.main(["calibrate", str(tmp_path / "missing.npy"), files[1]])
    assert "cannot read logits" in capsys.readouterr().err


def test_calibrate_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    files, _ = _calibration_files(tmp_path, n_rows=20)
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit):
        cli.main(["calibrate", *files, "--plot", str(tmp_path / "d.png")])
    assert "--plot needs matplotlib" in capsys.readouterr().err
