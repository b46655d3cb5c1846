"""fastsoftmax: Numba-compiled, row-parallel softmax, log_softmax and logsumexp for NumPy.

Kernels compile on first use (and are cached on disk), so importing is cheap.

>>> import numpy as np, fastsoftmax
>>> fastsoftmax.softmax(np.array([0.0, 0.0])).tolist()
[0.5, 0.5]
"""

from . import reference
from .api import log_softmax, logsumexp, softmax, warmup
from .parallel import threads

__version__ = "0.1.0"
__all__ = ["softmax", "log_softmax", "logsumexp", "warmup", "threads", "reference",
           "__version__"]
