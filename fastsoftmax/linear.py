"""The cross-entropy of a linear layer's output without its logits: :func:`linear_cross_entropy`.

For N tokens and a vocabulary of V classes the logits ``hidden @ weight.T`` are N x V: 2 GB in
float32 for 4096 tokens and 128256 classes, and as much again for their gradient. Here they
are computed a chunk of rows at a time (the plan sizes the chunk, ``plan.LINEAR_CHUNK_BYTES``):
the matrix products go through NumPy's BLAS, and the cross-entropy kernel (kernels/grad.py)
turns each chunk of logits into its losses and, in place, into its gradient, which the next
products take to the gradients of ``hidden``, ``weight`` and ``bias``. The extra memory is one
chunk and one block of the weight's gradient, whatever N and V.

Threads: BLAS and the kernels never run at once (each call returns before the next starts),
so each may use every core.
"""

from __future__ import annotations

import numpy as np

from . import arguments, plan
from .registry import OPERATIONS
from .tensors import accepts_tensors

__all__ = ["linear_cross_entropy"]


@accepts_tensors("hidden", "weight", "targets", "bias")
def linear_cross_entropy(hidden, weight, targets, *, bias=None, ignore_index=-100,
                         label_smoothing=0.0, reduction="mean", z_loss=0.0, softcap=None,
                         chunk_size=None, return_grad=False):
    """Cross-entropy of the logits ``hidden @ weight.T + bias`` against class indices, and
    its gradients, without ever holding the logits: ``torch.nn.functional.
    linear_cross_entropy`` (Liger-Kernel's fused linear cross-entropy, Apple's Cut
    Cross-Entropy).

    Parameters
    ----------
    hidden : array_like, shape (rows, features)
        The last hidden states (float32 or float64; float16 and bfloat16 are computed in
        float32, converted once).
    weight : array_like, shape (classes, features)
        The output layer's weight, as ``torch.nn.Linear`` holds it.
    targets : array_like of int, shape (rows,)
        Class indices; ``ignore_index`` rows count for nothing.
    bias : array_like, shape (classes,), optional
    ignore_index, label_smoothing, reduction, z_loss, softcap
        As :func:`cross_entropy` (the soft cap applies to the logits).
    chunk_size : int, optional
        Rows of logits computed at once (default: as many as fit in
        ``plan.LINEAR_CHUNK_BYTES``, 64 MiB).
    return_grad : bool, default False
        Also return ``(d_hidden, d_weight, d_bias)``, the gradients of the loss (for "none",
        of the sum of the per-row losses); ``d_bias`` is None without a bias.

    Returns
    -------
    loss : NumPy scalar, or ndarray of shape (rows,) for "none"
    grads : tuple, only with ``return_grad``

    Examples
    --------
    >>> import numpy as np
    >>> from fastsoftmax import cross_entropy, linear_cross_entropy
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.standard_normal((6, 16))
    >>> weight = rng.standard_normal((100, 16)) * 0.1
    >>> targets = np.array([3, 14, 15, 92, -100, 65])
    >>> loss, (d_hidden, d_weight, d_bias) = linear_cross_entropy(
    ...     hidden, weight, targets, return_grad=True, chunk_size=4)
    >>> bool(np.isclose(loss, cross_entropy(hidden @ weight.T, targets)))
    True
    >>> d_hidden.shape, d_weight.shape, d_bias is None
    ((6, 16), (100, 16), True)
    """
    op = OPERATIONS["linear_cross_entropy"]
    rows = arguments.prepare_linear_cross_entropy(
        op, hidden, weight, targets, bias=bias, ignore_index=ignore_index,
        label_smoothing=label_smoothing, reduction=reduction, z_loss=z_loss, softcap=softcap,
        chunk_size=chunk_size, chunk_rows=plan.linear_chunk_rows, return_grad=return_grad)
    h, w, b, ce = rows.hidden, rows.weight, rows.bias, rows.ce
    n_rows, n_classes = ce.n_rows, ce.n_cols
    logits = np.empty((min(rows.chunk_rows, n_rows), n_classes), h.dtype)
    grads = None
    if rows.return_grad:
        d_hidden = np.empty(h.shape, h.dtype)
        d_weight = np.zeros(w.shape, w.dtype)
        d_bias = None if b is None else np.zeros(n_classes, w.dtype)
        grads = (d_hidden, d_weight, d_bias)
        block = plan.linear_block_classes(w.shape[1], w.dtype.itemsize)
        partial = np.empty((min(block, n_classes), w.shape[1]), w.dtype)
        # d_hidden of a chunk, transposed (features, rows): OpenBLAS computes W.T @ g.T
        # 2.7x faster than g @ W (docs/performance.md)
        d_hidden_t = np.empty((w.shape[1], len(logits)), w.dtype)
    for start in range(0, n_rows, rows.chunk_rows):
        stop = min(start + rows.chunk_rows, n_rows)
        chunk = logits[:stop - start]
        np.matmul(h[start:stop], w.T, out=chunk)
        if b is not None:
            chunk += b
        plan.run(op, ce.batch(start, stop, in_place=rows.return_grad,
                              logits=chunk.reshape(-1)))
        if not rows.return_grad:
            continue
        # chunk is now d(loss)/d(logits) of these rows
        into = d_hidden_t if len(chunk) == len(logits) else np.empty(
            (w.shape[1], len(chunk)), w.dtype)
        np.matmul(w.T, chunk.T, out=into)
        d_hidden[start:stop] = into.T
        _add_weight_gradient(d_weight, chunk, h[start:stop], partial, first=start == 0)
        if d_bias is not None:
            d_bias += chunk.sum(axis=0)
    return rows.finish(ce.reduce(), grads)


def _add_weight_gradient(d_weight, d_logits, hidden, partial, first):
    """d_weight += d_logits.T @ hidden: written straight in for the first chunk, then added
    a block of classes at a time through ``partial`` (NumPy's matmul cannot accumulate)."""
    if first:
        np.matmul(d_logits.T, hidden, out=d_weight)
        return
    block = len(partial)
    for low in range(0, len(d_weight), block):
        high = min(low + block, len(d_weight))
        into = partial[:high - low]
        np.matmul(d_logits[:, low:high].T, hidden, out=into)
        d_weight[low:high] += into
