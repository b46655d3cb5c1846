"""fastsoftmax: Numba-compiled, row-parallel softmax, log_softmax and logsumexp for NumPy.

Kernels compile on first use (and are cached on disk), so importing is cheap.

>>> import numpy as np, fastsoftmax
>>> fastsoftmax.softmax(np.array([0.0, 0.0])).tolist()
[0.5, 0.5]
"""

from . import reference
from .api import log_softmax, logsumexp, softmax, warmup
from .calibration import (Confidence, Reliability, calibration_error, confidence,
                          fit_temperature, reliability)
from .distillation import jsd, kl_div
from .gradients import cross_entropy, log_softmax_backward, softmax_backward
from .linear import linear_cross_entropy
from .parallel import threads
from .sampling import Sampled, sample
from .sparse import (entmax15, entmax15_loss, entmax_backward, entmax_bisect,
                     entmax_bisect_loss, sparsemax, sparsemax_backward, sparsemax_loss)

__version__ = "0.1.0"
__all__ = [
    "softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
    "cross_entropy", "sample", "confidence", "fit_temperature", "calibration_error",
    "reliability", "Confidence", "Reliability", "Sampled", "sparsemax", "entmax15",
    "entmax_bisect", "sparsemax_backward", "entmax_backward", "sparsemax_loss",
    "entmax15_loss", "entmax_bisect_loss", "kl_div", "jsd", "linear_cross_entropy", "warmup",
    "threads", "reference", "__version__",
]
