"""Numba CPU softmax: one parallel task per row, scale and mask applied while the row is read.

y_ij = exp(s_ij - m_i) / sum_j' exp(s_ij' - m_i),  s = scale * x (masked -> -inf),  m_i = max_j s_ij
"""
import numba
import numpy as np

from kernels.cpu import _common
from kernels.cpu._common import FASTMATH, exp_inplace
from kernels.versions import Version, registry


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _softmax_rows(x, scale, mask, out):
    """out[r] = softmax(scale * x[r] with mask[r] = True set to -inf); all-masked row -> 0."""
    rows, n = x.shape
    for r in numba.prange(rows):
        row = out[r]
        for j in range(n):
            row[j] = -np.inf if mask[r, j] else x[r, j] * scale
        m = row.max()
        if m == -np.inf:
            row[:] = 0.0
        else:
            row -= m
            exp_inplace(row)
            z = 0.0
            for j in range(n):
                z += row[j]
            row *= 1.0 / z


def softmax(x, scale=1.0, mask=None):
    """Fused scale + mask + row softmax along the last axis (see reference.softmax).

    ``mask`` is bool, broadcastable to x, True = masked out. A fully masked row gives zeros.
    """
    dtype = _common.check_float(x)
    n = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, n)                             # (R, N)
    mask2 = np.zeros(x2.shape, dtype=bool)                                  # (R, N), one byte per score
    if mask is not None:
        mask2[...] = np.broadcast_to(mask, x.shape).reshape(-1, n)
    out = _common.empty(x2.shape, dtype)
    _softmax_rows(x2, dtype.type(scale), mask2, out)
    return out.reshape(x.shape)


VERSIONS = registry(
    Version("v1", "one task per row: scale, mask, max, exp and sum in one pass over the row in cache", None,
            softmax=softmax),
)
