"""Numba CPU cross-entropy from logits: log-softmax and the negative log-likelihood in one pass per row.

    lse = log sum_c exp(logits_c),  loss = (1 - eps)(lse - logits_target) + eps (lse - mean_c logits_c)
    dlogits = dloss (exp(logits - lse) - q),  q = (1 - eps) onehot(target) + eps / C     (kernels.reference)

Forward: one parallel task per row: its max, sum of exponentials, lse and loss; only lse (N,) is kept, and
neither the log-probabilities nor the probabilities are ever stored. Backward: one task per row writes the
row's gradient, the probabilities computed on the way (exp once per logit, forward and backward each). float32
uses the vectorisable ``_common.exp32``.

No CUDA version: on the GPU the loss is the composed op (``minitx.ops.CrossEntropy``).
"""
import math

import numba
import numpy as np

from kernels.cpu import _common
from kernels.cpu._common import FASTMATH, exp32


@numba.njit(fastmath=FASTMATH, inline="always")
def _exp(v, single):
    return exp32(v) if single else math.exp(v)


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _forward_rows(logits, target, smoothing, loss, lse):
    n, c = logits.shape
    single = logits.itemsize == 4
    for r in numba.prange(n):
        row = logits[r]
        m = row[0]
        for j in range(1, c):
            m = max(m, row[j])
        total = 0.0
        plain = 0.0
        for j in range(c):
            total += _exp(row[j] - m, single)
            plain += row[j]
        z = m + math.log(total)
        lse[r] = z
        loss[r] = (1.0 - smoothing) * (z - row[target[r]]) + smoothing * (z - plain / c)


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _backward_rows(logits, target, lse, dloss, smoothing, dlogits):
    n, c = logits.shape
    single = logits.itemsize == 4
    for r in numba.prange(n):
        row, out, z, g, t = logits[r], dlogits[r], lse[r], dloss[r], target[r]
        share = smoothing / c
        for j in range(c):  # the target's q inside the loop: a write to out[t] after it was lost (Numba 0.68)
            q = share + (1.0 - smoothing) if j == t else share
            out[j] = g * (_exp(row[j] - z, single) - q)


def cross_entropy_forward(logits, target, label_smoothing=0.0):
    """Loss per row and its lse, both (N,), for logits (N, C) and int targets (N,) in [0, C)
    (see reference.cross_entropy_forward)."""
    dtype = _common.check_float(logits)
    logits = np.ascontiguousarray(logits)
    n = logits.shape[0]
    loss, lse = _common.empty((n,), dtype), _common.empty((n,), dtype)
    _forward_rows(logits, np.ascontiguousarray(target, dtype=np.int64), dtype.type(label_smoothing), loss, lse)
    return loss, lse


def cross_entropy_backward(logits, target, lse, dloss, label_smoothing=0.0):
    """dL/dlogits (N, C) given dloss = dL/dloss (N,) (see reference.cross_entropy_backward)."""
    dtype = _common.check_float(logits, lse, dloss)
    logits = np.ascontiguousarray(logits)
    dlogits = _common.empty(logits.shape, dtype)
    _backward_rows(logits, np.ascontiguousarray(target, dtype=np.int64), lse, np.ascontiguousarray(dloss),
                   dtype.type(label_smoothing), dlogits)
    return dlogits
