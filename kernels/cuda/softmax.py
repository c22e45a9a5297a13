"""CUDA row softmax, three versions: y = softmax(scale * x) along the last axis.

y_ij = exp(s_ij - m_i) / z_i,  s = scale * x (masked -> -inf),  m_i = max_j s_ij,  z_i = sum_j exp(s_ij - m_i)

x (..., N) is processed as R rows of N. ``mask`` (bool, broadcastable to x,
True = masked out) is optional; a fully masked row gives zeros. ``block_size``
is the threads per block (v2 and v3: a power of two).

v1  one thread per row, three passes over the row (max, sum, write). Simple, but
    a warp reads 32 different rows: the loads are not coalesced.
v2  one block per row; threads stride over the row (coalesced loads) and the max
    and the sum are combined by a tree reduction in shared memory.
v3  like v2 but one pass computes max and sum together (online softmax):
    m' = max(m, s),  z' = z exp(m - m') + exp(s - m'),
    and partial (m, z) pairs merge as m = max(m1, m2), z = z1 exp(m1 - m) + z2 exp(m2 - m).
"""
import functools
import math

import numba
import numpy as np
from numba import cuda

from kernels.cuda import _common


@cuda.jit(device=True)
def _score(x, scale, mask, has_mask, r, j):
    """scale * x[r, j], or -inf where masked."""
    if has_mask and mask[r, j]:
        return -math.inf
    return x[r, j] * scale


@cuda.jit
def _softmax_v1(x, scale, mask, has_mask, out):
    r = cuda.grid(1)
    if r >= x.shape[0]:
        return
    n = x.shape[1]
    m = -math.inf
    for j in range(n):
        m = max(m, _score(x, scale, mask, has_mask, r, j))
    z = 0.0
    if m != -math.inf:
        for j in range(n):
            z += math.exp(_score(x, scale, mask, has_mask, r, j) - m)
    for j in range(n):
        out[r, j] = 0.0 if z == 0.0 else math.exp(_score(x, scale, mask, has_mask, r, j) - m) / z


@cuda.jit(device=True)
def _block_reduce_max(buf, t, block):
    """Tree reduction in shared memory: afterwards buf[0] = max(buf). All threads must call it."""
    stride = block // 2
    while stride > 0:
        cuda.syncthreads()
        if t < stride:
            buf[t] = max(buf[t], buf[t + stride])
        stride //= 2
    cuda.syncthreads()


@cuda.jit(device=True)
def _block_reduce_sum(buf, t, block):
    """Tree reduction in shared memory: afterwards buf[0] = sum(buf). All threads must call it."""
    stride = block // 2
    while stride > 0:
        cuda.syncthreads()
        if t < stride:
            buf[t] += buf[t + stride]
        stride //= 2
    cuda.syncthreads()


@functools.lru_cache(maxsize=None)
def _softmax_v2(block, dtype):
    nb_dtype = numba.from_dtype(dtype)

    @cuda.jit
    def kernel(x, scale, mask, has_mask, out):
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        n = x.shape[1]
        buf = cuda.shared.array(block, nb_dtype)
        m = -math.inf
        for j in range(t, n, block):
            m = max(m, _score(x, scale, mask, has_mask, r, j))
        buf[t] = m
        _block_reduce_max(buf, t, block)
        m = buf[0]
        cuda.syncthreads()                      # everyone has read buf[0] before it is reused
        z = 0.0
        if m != -math.inf:
            for j in range(t, n, block):
                z += math.exp(_score(x, scale, mask, has_mask, r, j) - m)
        buf[t] = z
        _block_reduce_sum(buf, t, block)
        z = buf[0]
        for j in range(t, n, block):
            out[r, j] = 0.0 if z == 0.0 else math.exp(_score(x, scale, mask, has_mask, r, j) - m) / z

    return kernel


@cuda.jit(device=True)
def _merge(m1, z1, m2, z2):
    """Combine two partial softmax statistics (max, sum of exp(s - max))."""
    m = max(m1, m2)
    if m == -math.inf:
        return m, 0.0
    return m, z1 * math.exp(m1 - m) + z2 * math.exp(m2 - m)


@functools.lru_cache(maxsize=None)
def _softmax_v3(block, dtype):
    nb_dtype = numba.from_dtype(dtype)

    @cuda.jit
    def kernel(x, scale, mask, has_mask, out):
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        n = x.shape[1]
        buf_m = cuda.shared.array(block, nb_dtype)
        buf_z = cuda.shared.array(block, nb_dtype)
        m = -math.inf
        z = 0.0
        for j in range(t, n, block):             # one pass: running max and rescaled running sum
            m, z = _merge(m, z, _score(x, scale, mask, has_mask, r, j), 1.0)
        buf_m[t] = m
        buf_z[t] = z
        stride = block // 2
        while stride > 0:
            cuda.syncthreads()
            if t < stride:
                buf_m[t], buf_z[t] = _merge(buf_m[t], buf_z[t], buf_m[t + stride], buf_z[t + stride])
            stride //= 2
        cuda.syncthreads()
        m = buf_m[0]
        z = buf_z[0]
        for j in range(t, n, block):
            out[r, j] = 0.0 if z == 0.0 else math.exp(_score(x, scale, mask, has_mask, r, j) - m) / z

    return kernel


def _softmax(version, x, scale, mask, block_size):
    n = x.shape[-1]
    shape = x.shape
    d_x, on_host = _common.to_device(x)
    d_x = d_x.reshape(-1, n)                                         # (R, N)
    rows = d_x.shape[0]
    if mask is None:
        d_mask, has_mask = cuda.to_device(np.zeros((1, 1), dtype=np.bool_)), False
    else:
        d_mask, _ = _common.to_device(np.broadcast_to(mask, shape).reshape(-1, n).astype(np.bool_))
        has_mask = True
    out = _common.device_empty((rows, n), d_x.dtype)
    scale = d_x.dtype.type(scale)
    if version == 1:
        _softmax_v1[(rows + block_size - 1) // block_size, block_size](d_x, scale, d_mask, has_mask, out)
    else:
        make = _softmax_v2 if version == 2 else _softmax_v3
        make(block_size, np.dtype(d_x.dtype))[rows, block_size](d_x, scale, d_mask, has_mask, out)
    return _common.results([out.reshape(shape)], on_host)[0]


def softmax_v1(x, scale=1.0, mask=None, block_size=128):
    """Thread-per-row softmax (see module docstring)."""
    return _softmax(1, x, scale, mask, block_size)


def softmax_v2(x, scale=1.0, mask=None, block_size=128):
    """Block-per-row softmax with shared-memory max and sum reductions (see module docstring)."""
    return _softmax(2, x, scale, mask, block_size)


def softmax_v3(x, scale=1.0, mask=None, block_size=128):
    """Block-per-row online softmax: max and sum in one pass (see module docstring)."""
    return _softmax(3, x, scale, mask, block_size)
