"""CUDA row softmax, three versions: y = softmax(scale * x) along the last axis.

y_ij = exp(s_ij - m_i) / z_i,  s = scale * x (masked -> -inf),  m_i = max_j s_ij,  z_i = sum_j exp(s_ij - m_i)

x (..., N) is processed as R rows of N. ``mask`` (bool, True = masked out) is optional: a NumPy mask may be
anything broadcastable to x (it is broadcast on the host), a device mask must have x's shape. A fully
masked row gives zeros. ``block_size`` is the threads per block (at most 1024; v2 and v3: a power of two).

v1  one thread per row, three passes over the row (max, sum, write). Simple, but
    a warp reads 32 different rows: the loads are not coalesced.
v2  one block per row; threads stride over the row (coalesced loads) and the max
    and the sum are combined by a tree reduction in shared memory.
v3  like v2 but one pass computes max and sum together (online softmax):
    m' = max(m, s),  z' = z exp(m - m') + exp(s - m'),
    and partial (m, z) pairs merge as m = max(m1, m2), z = z1 exp(m1 - m) + z2 exp(m2 - m).

Kernels are built per dtype (and block size for v2, v3); see kernels/cuda/_common.py.
"""
import functools
import math

import numba
import numpy as np
from numba import cuda, types

from kernels.cuda import _common
from kernels.versions import Version, registry

DEFAULT_BLOCK_SIZE = 128


@functools.lru_cache(maxsize=None)
def _score(dtype):
    NEG_INF = dtype.type(-np.inf)

    @cuda.jit(device=True)
    def score(x, scale, mask, has_mask, r, j):
        """scale * x[r, j], or -inf where masked."""
        if has_mask and mask[r, j]:
            return NEG_INF
        return x[r, j] * scale

    return score


@functools.lru_cache(maxsize=None)
def _softmax_v1(dtype):
    ZERO, NEG_INF = dtype.type(0), dtype.type(-np.inf)
    score = _score(dtype)

    @cuda.jit
    def kernel(x, scale, mask, has_mask, out):
        r = cuda.grid(1)
        if r >= x.shape[0]:
            return
        n = x.shape[1]
        m = NEG_INF
        for j in range(n):
            m = max(m, score(x, scale, mask, has_mask, r, j))
        z = ZERO
        if m != NEG_INF:
            for j in range(n):
                z += math.exp(score(x, scale, mask, has_mask, r, j) - m)
        for j in range(n):
            out[r, j] = ZERO if z == ZERO else math.exp(score(x, scale, mask, has_mask, r, j) - m) / z

    return kernel


@cuda.jit(device=True)
def _block_reduce_max(buf, t, block):
    """Tree reduction in shared memory: afterwards buf[0] = max(buf). All threads must call it; block is a
    power of two (each step halves the active threads)."""
    stride = block // 2
    while stride > 0:
        cuda.syncthreads()
        if t < stride:
            buf[t] = max(buf[t], buf[t + stride])
        stride //= 2
    cuda.syncthreads()


@cuda.jit(device=True)
def _block_reduce_sum(buf, t, block):
    """Tree reduction in shared memory: afterwards buf[0] = sum(buf). Same rules as _block_reduce_max."""
    stride = block // 2
    while stride > 0:
        cuda.syncthreads()
        if t < stride:
            buf[t] += buf[t + stride]
        stride //= 2
    cuda.syncthreads()


@functools.lru_cache(maxsize=None)
def _softmax_v2(dtype, block):
    nb = numba.from_dtype(dtype)
    ZERO, NEG_INF = dtype.type(0), dtype.type(-np.inf)
    score = _score(dtype)

    @cuda.jit
    def kernel(x, scale, mask, has_mask, out):
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        n = x.shape[1]
        buf = cuda.shared.array(block, nb)
        m = NEG_INF
        for j in range(t, n, block):
            m = max(m, score(x, scale, mask, has_mask, r, j))
        buf[t] = m
        _block_reduce_max(buf, t, block)
        m = buf[0]
        cuda.syncthreads()                      # everyone has read buf[0] before it is reused
        z = ZERO
        if m != NEG_INF:
            for j in range(t, n, block):
                z += math.exp(score(x, scale, mask, has_mask, r, j) - m)
        buf[t] = z
        _block_reduce_sum(buf, t, block)
        z = buf[0]
        for j in range(t, n, block):
            out[r, j] = ZERO if z == ZERO else math.exp(score(x, scale, mask, has_mask, r, j) - m) / z

    return kernel


@functools.lru_cache(maxsize=None)
def _merge(dtype):
    ZERO, NEG_INF = dtype.type(0), dtype.type(-np.inf)

    @cuda.jit(device=True)
    def merge(m1, z1, m2, z2):
        """Combine two partial softmax statistics (max, sum of exp(s - max))."""
        m = max(m1, m2)
        if m == NEG_INF:
            return m, ZERO
        return m, z1 * math.exp(m1 - m) + z2 * math.exp(m2 - m)

    return merge


@functools.lru_cache(maxsize=None)
def _softmax_v3(dtype, block):
    nb = numba.from_dtype(dtype)
    ZERO, ONE, NEG_INF = dtype.type(0), dtype.type(1), dtype.type(-np.inf)
    score, merge = _score(dtype), _merge(dtype)

    @cuda.jit
    def kernel(x, scale, mask, has_mask, out):
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        n = x.shape[1]
        buf_m = cuda.shared.array(block, nb)
        buf_z = cuda.shared.array(block, nb)
        m = NEG_INF
        z = ZERO
        for j in range(t, n, block):             # one pass: running max and rescaled running sum
            m, z = merge(m, z, score(x, scale, mask, has_mask, r, j), ONE)
        buf_m[t] = m
        buf_z[t] = z
        stride = block // 2
        while stride > 0:
            cuda.syncthreads()
            if t < stride:
                buf_m[t], buf_z[t] = merge(buf_m[t], buf_z[t], buf_m[t + stride], buf_z[t + stride])
            stride //= 2
        cuda.syncthreads()
        m = buf_m[0]
        z = buf_z[0]
        for j in range(t, n, block):
            out[r, j] = ZERO if z == ZERO else math.exp(score(x, scale, mask, has_mask, r, j) - m) / z

    return kernel


def _mask_on_device(mask, shape):
    """(mask as an (R, N) bool device array, True), or (``absent``, False) without a mask."""
    if mask is None:
        return _common.absent(2, np.bool_), False
    _common.check_array("mask", mask)
    if isinstance(mask, np.ndarray):
        try:
            full = np.broadcast_to(mask, shape)
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to x's shape {shape}") from None
        return _common.to_device(np.ascontiguousarray(full, dtype=np.bool_).reshape(-1, shape[-1])), True
    if tuple(mask.shape) != shape or mask.dtype != np.bool_:
        raise ValueError(f"a device mask must be bool with x's shape {shape} (only NumPy masks are broadcast), "
                         f"got {np.dtype(mask.dtype)} {tuple(mask.shape)}")
    return _common.to_device(mask).reshape(-1, shape[-1]), True


def _softmax(version, x, scale, mask, block_size):
    _common.check_block_size("block_size", block_size, power_of_two=version > 1)
    dtype = _common.check_float(x=x)
    shape = tuple(x.shape)
    d_mask, has_mask = _mask_on_device(mask, shape)                     # (R, N)
    d_x = _common.to_device(x).reshape(-1, shape[-1])                   # (R, N)
    rows = d_x.shape[0]
    out = _common.device_empty(d_x.shape, dtype)                        # (R, N)
    scale = dtype.type(scale)
    if version == 1:
        _softmax_v1(dtype)[(rows + block_size - 1) // block_size, block_size](d_x, scale, d_mask, has_mask, out)
    else:
        make = _softmax_v2 if version == 2 else _softmax_v3
        make(dtype, block_size)[rows, block_size](d_x, scale, d_mask, has_mask, out)
    return _common.like_input([out.reshape(shape)], x)[0]


def softmax_v1(x, scale=1.0, mask=None, block_size=DEFAULT_BLOCK_SIZE):
    """Thread-per-row softmax (see module docstring)."""
    return _softmax(1, x, scale, mask, block_size)


def softmax_v2(x, scale=1.0, mask=None, block_size=DEFAULT_BLOCK_SIZE):
    """Block-per-row softmax with shared-memory max and sum reductions (see module docstring)."""
    return _softmax(2, x, scale, mask, block_size)


def softmax_v3(x, scale=1.0, mask=None, block_size=DEFAULT_BLOCK_SIZE):
    """Block-per-row online softmax: max and sum in one pass (see module docstring)."""
    return _softmax(3, x, scale, mask, block_size)



def _builds(version):
    """The version's ``builds`` (see kernels/versions.py): its kernel at the largest block, 1024 threads."""
    def builds(dtype):
        dtype = np.dtype(dtype)
        a = _common.array_type
        signature = (a(dtype, 2), numba.from_dtype(dtype), a(np.bool_, 2), types.boolean, a(dtype, 2))
        if version == 1:                          # one kernel for every block size
            return [("softmax_v1", _softmax_v1(dtype), signature, _common.MAX_THREADS_PER_BLOCK)]
        make = _softmax_v2 if version == 2 else _softmax_v3
        block = _common.MAX_THREADS_PER_BLOCK
        return [(f"softmax_v{version} block={block}", make(dtype, block), signature, block)]
    return builds


VERSIONS = registry(
    Version("v1", "one thread per row, three passes (max, sum, write); loads not coalesced", None,
            builds=_builds(1), softmax=softmax_v1),
    Version("v2", "one block per row: coalesced strided loads, max and sum by shared-memory tree reductions",
            "v1", builds=_builds(2), softmax=softmax_v2),
    Version("v3", "like v2, with max and sum in one pass (online softmax) and one merge of (m, z) pairs", "v2",
            builds=_builds(3), softmax=softmax_v3),
)
