"""``python -m fastsoftmax calibrate LOGITS.npy LABELS.npy``: fit a temperature to held-out
logits, print the calibration error before and after, and draw the reliability diagrams."""

from __future__ import annotations

import numpy as np

from ..calibration import calibration_error, fit_temperature, reliability
from ..reference import NORMS

NORM_NAMES = {"l1": "ECE", "l2": "RMSCE", "max": "MCE"}


def load(path: str, what: str) -> np.ndarray:
    """An array saved by ``numpy.save`` (logits memory-mapped: read, never loaded whole)."""
    try:
        return np.load(path, mmap_mode="r" if what == "logits" else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} from {path!r}: {exc}") from None


def run(args) -> int:
    logits, labels = load(args.logits, "logits"), load(args.labels, "labels")
    temperature = fit_temperature(logits, labels, ignore_index=args.ignore_index)
    kept = np.asarray(labels) != args.ignore_index
    if not kept.all():  # the calibration error has no ignore_index: those rows go
        logits, labels = np.asarray(logits)[kept], np.asarray(labels)[kept]
    options = dict(n_bins=args.n_bins, binning=args.binning)
    print(f"rows: {len(labels)}  classes: {np.shape(logits)[-1]}  "
          f"bins: {args.n_bins} ({args.binning})")
    print(f"fitted temperature: {temperature:.6g}")
    print(f"{'':>8}  {'before':>10}  {'after':>10}")
    for norm in NORMS:
        before = float(calibration_error(logits, labels, norm=norm, **options))
        after = float(calibration_error(logits, labels, norm=norm, temperature=temperature,
                                        **options))
        print(f"{NORM_NAMES[norm]:>8}  {before:>10.5f}  {after:>10.5f}")
    if args.plot:
        diagrams = [reliability(logits, labels, **options),
                    reliability(logits, labels, temperature=temperature, **options)]
        errors = [float(calibration_error(logits, labels, temperature=t, **options))
                  for t in (1.0, temperature)]
        plot(diagrams, errors, temperature, args.plot)
        print(f"wrote {args.plot}")
    return 0


def plot(diagrams, errors, temperature: float, path: str) -> None:
    """Reliability diagrams side by side (before, after temperature scaling): per bin, the
    accuracy as a bar over the bin, its mean confidence as a marker, the diagonal of a
    calibrated model, and below, the share of rows in each bin."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 5.8), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]})
    titles = ["before: temperature 1", f"after: temperature {temperature:.3g}"]
    for column, (diagram, error, title) in enumerate(zip(diagrams, errors, titles)):
        top, bottom = axes[0, column], axes[1, column]
        edges = np.asarray(diagram.edges, np.float64)
        widths = np.diff(edges)
        accuracy = np.nan_to_num(np.asarray(diagram.accuracy, np.float64))
        confidence = np.asarray(diagram.confidence, np.float64)
        top.bar(edges[:-1], accuracy, width=widths, align="edge", color="C0",
                edgecolor="white", label="accuracy")
        top.plot(confidence, np.asarray(diagram.accuracy, np.float64), "o", color="C3",
                 markersize=4, label="(mean confidence, accuracy)")
        top.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1,
                 label="calibrated")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"{title}   ECE {error:.4f}")
        top.legend(loc="upper left", fontsize=8)
        counts = np.asarray(diagram.counts)
        bottom.bar(edges[:-1], counts / max(counts.sum(), 1), width=widths, align="edge",
                   color="C7", edgecolor="white")
        bottom.set_xlabel("confidence of the top label")
        bottom.set_ylabel("share of rows")
    fig.suptitle("reliability diagram (fastsoftmax calibrate)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
