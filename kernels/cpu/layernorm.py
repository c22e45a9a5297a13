"""Numba CPU layer norm, optionally of a residual sum: one pass over each row forward, one backward.

    s = x + residual (or x),  y = (s - mu) rstd * weight + bias          (formulas: kernels.reference)

Forward: one parallel task per row, which reads the row once into cache and computes its mean, its variance
(two passes over the row in cache: the centred sum is exact where E[s^2] - mu^2 would cancel) and y. Only mean
and rstd (N,) are kept; the backward rebuilds s and xhat from x (and residual) row by row. Backward: one task
per chunk of rows, each writing ds for its rows and adding its rows' dy * xhat and dy into its own partial
dweight, dbias; the partials are summed at the end (no two tasks write the same memory).

No CUDA version: on the GPU the layers use the composed ops (``minitx.ops.LayerNorm``).
"""
import numba
import numpy as np

from kernels.cpu import _common
from kernels.cpu._common import FASTMATH

CHUNKS = 16   # row chunks of the backward, each with its own partial dweight / dbias: enough to balance 2-16 threads


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _forward_rows(x, residual, add, weight, bias, eps, y, mean, rstd):
    n, d = x.shape
    for r in numba.prange(n):
        s = y[r]                                   # the row of s, built in y's memory, then overwritten by y
        for j in range(d):
            s[j] = x[r, j] + residual[r, j] if add else x[r, j]
        total = 0.0
        for j in range(d):
            total += s[j]
        mu = total / d
        sq = 0.0
        for j in range(d):
            c = s[j] - mu
            sq += c * c
        rs = 1.0 / np.sqrt(sq / d + eps)
        for j in range(d):
            s[j] = (s[j] - mu) * rs * weight[j] + bias[j]
        mean[r] = mu
        rstd[r] = rs


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _backward_rows(x, residual, add, weight, mean, rstd, dy, ds, dweight_parts, dbias_parts):
    n, d = x.shape
    chunks = dweight_parts.shape[0]
    per_chunk = (n + chunks - 1) // chunks
    for c in numba.prange(chunks):
        dw, db = dweight_parts[c], dbias_parts[c]
        for r in range(c * per_chunk, min(n, (c + 1) * per_chunk)):
            mu, rs = mean[r], rstd[r]
            xhat = ds[r]                           # xhat in ds's memory first, then overwritten by ds
            sum_g = 0.0
            sum_gx = 0.0
            for j in range(d):
                s = x[r, j] + residual[r, j] if add else x[r, j]
                xh = (s - mu) * rs
                xhat[j] = xh
                g = dy[r, j] * weight[j]
                sum_g += g
                sum_gx += g * xh
                dw[j] += dy[r, j] * xh
                db[j] += dy[r, j]
            mean_g, mean_gx = sum_g / d, sum_gx / d
            for j in range(d):
                xhat[j] = rs * (dy[r, j] * weight[j] - mean_g - xhat[j] * mean_gx)


def _rows(x, residual):
    """x and residual as C-contiguous (N, D) arrays (residual: x itself when None, unread)."""
    d = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, d)
    r2 = x2 if residual is None else np.ascontiguousarray(residual).reshape(-1, d)
    return x2, r2


def layer_norm_forward(x, weight, bias, eps=1e-5, residual=None):
    """Layer norm of each row of s = x (+ residual) over the last axis (see reference.layer_norm_forward).

    x and residual (..., D) of one shape, weight and bias (D,). Returns (y of x's shape, mean, rstd), mean and
    rstd one per row.
    """
    dtype = _common.check_float(x, weight, bias, *(() if residual is None else (residual,)))
    x2, r2 = _rows(x, residual)
    n = x2.shape[0]
    y = _common.empty(x2.shape, dtype)
    mean, rstd = _common.empty((n,), dtype), _common.empty((n,), dtype)
    _forward_rows(x2, r2, residual is not None, weight, bias, dtype.type(eps), y, mean, rstd)
    return y.reshape(x.shape), mean, rstd


def layer_norm_backward(x, weight, mean, rstd, dy, residual=None):
    """Gradients of ``layer_norm_forward`` (see reference.layer_norm_backward): (ds, dweight, dbias), ds of x's
    shape (the gradient of x and of the residual alike)."""
    dtype = _common.check_float(x, weight, mean, rstd, dy, *(() if residual is None else (residual,)))
    x2, r2 = _rows(x, residual)
    dy2 = np.ascontiguousarray(dy).reshape(x2.shape)
    ds = _common.empty(x2.shape, dtype)
    chunks = max(1, min(CHUNKS, x2.shape[0]))
    dweight_parts = np.zeros((chunks, x2.shape[1]), dtype)
    dbias_parts = np.zeros((chunks, x2.shape[1]), dtype)
    _backward_rows(x2, r2, residual is not None, weight, mean, rstd, dy2, ds, dweight_parts, dbias_parts)
    return ds.reshape(x.shape), dweight_parts.sum(axis=0), dbias_parts.sum(axis=0)
