"""Write a synthetic, reproducible validation set for ``python -m fastsoftmax calibrate``:
the logits of a model that is calibrated when divided by 2.5 (so overconfident as they are),
and labels drawn from that calibrated softmax.

    python benchmarks/calibration_data.py logits.npy labels.npy [ROWS CLASSES]
"""

from __future__ import annotations

import sys

import numpy as np

OVERCONFIDENCE = 2.5  # the temperature a fit should find


def calibration_data(n_rows: int, n_classes: int, seed: int = 0):
    """(float32 logits, int64 labels): logits of spread ~2 times OVERCONFIDENCE; each label
    drawn from ``softmax(logits / OVERCONFIDENCE)`` by the Gumbel-max trick."""
    rng = np.random.default_rng(seed)
    calibrated = rng.standard_normal((n_rows, n_classes)) * 2.0
    labels = np.argmax(calibrated + rng.gumbel(size=calibrated.shape), axis=1)
    return (calibrated * OVERCONFIDENCE).astype(np.float32), labels


def main(argv) -> int:
    if len(argv) not in (2, 4):
        print(__doc__, file=sys.stderr)
        return 2
    n_rows, n_classes = (int(argv[2]), int(argv[3])) if len(argv) == 4 else (50000, 100)
    logits, labels = calibration_data(n_rows, n_classes)
    np.save(argv[0], logits)
    np.save(argv[1], labels)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
