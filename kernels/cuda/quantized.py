"""CUDA kernels: y = x Wᵀ with W held as Q4_1 (4-bit numbers, a scale and a minimum per 32 weights) or Q8_0
(bytes, a scale per 32), W never de-quantised in memory. Conventions: kernels.reference.q4_1_weights.

    W[o, 32 b + j] = d[o, b] · q[o, b, j] + m[o, b]            (Q8_0: W = d · q, q a signed byte)

Generating a token multiplies one row x by every matrix of the model: the time goes into reading the
matrices, so a matrix read as 4-bit numbers instead of float32 numbers is read up to 6 times faster.

One thread block per output element y[n, o] (grid x: the O output rows, grid y: the N rows of x). Its
threads stride over the packed bytes of row o, neighbours reading neighbouring bytes (coalesced loads).
Byte i of the row, in block b = i >> 4, holds q_j (low nibble) and q_{j+16} (high nibble), j = i & 15; the
thread adds their two terms,

    x_j (d q_j + m) + x_{j+16} (d q_{j+16} + m) = d (x_j q_j + x_{j+16} q_{j+16}) + m (x_j + x_{j+16}),

and the block's partial sums are added by a tree reduction in shared memory (``block_size`` threads, a
power of two, at most 1024). Q8_0's kernel is the same with one weight per thread step and no minimum.

Kernels are built per dtype (and block size), with typed constants; see kernels/cuda/_common.py.
"""
import functools

import numba
import numpy as np
from numba import cuda

from kernels.cuda import _common
from kernels.cuda.softmax import _block_reduce_sum   # the same shared-memory tree reduction
from kernels.versions import Version, registry

BLOCK = 32                 # weights per quantisation block
DEFAULT_BLOCK_SIZE = 128   # threads per CUDA block


@functools.lru_cache(maxsize=None)
def _q4_1_kernel(dtype, block):
    nb = numba.from_dtype(dtype)       # called on an int, converts it to dtype (a float32 product stays float32)
    ZERO = dtype.type(0)

    @cuda.jit
    def kernel(x, scale, minimum, packed, out):
        o, n, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
        buf = cuda.shared.array(block, nb)
        acc = ZERO
        for i in range(t, packed.shape[1], block):             # byte i of row o, in quantisation block b
            b = i >> 4
            byte = packed[o, i]
            col = 32 * b + (i & 15)                             # the weight in its low nibble; +16: the high
            low, high = x[n, col], x[n, col + 16]
            acc += scale[o, b] * (low * nb(byte & 15) + high * nb(byte >> 4)) + minimum[o, b] * (low + high)
        buf[t] = acc
        _block_reduce_sum(buf, t, block)
        if t == 0:
            out[n, o] = buf[0]

    return kernel


@functools.lru_cache(maxsize=None)
def _q8_0_kernel(dtype, block):
    nb = numba.from_dtype(dtype)
    ZERO = dtype.type(0)

    @cuda.jit
    def kernel(x, scale, quants, out):
        o, n, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
        buf = cuda.shared.array(block, nb)
        acc = ZERO
        for i in range(t, quants.shape[1], block):              # weight i of row o, in quantisation block i >> 5
            acc += scale[o, i >> 5] * (x[n, i] * nb(quants[o, i]))
        buf[t] = acc
        _block_reduce_sum(buf, t, block)
        if t == 0:
            out[n, o] = buf[0]

    return kernel


def _check(block_size, floats, name, quantized, per_block, quantized_dtype):
    """Check the block size, x and the other float arrays (``floats``: name -> array, x first, then (O, in/32)
    ones) and the quantised array ``name``; returns (dtype, N, O)."""
    _common.check_block_size("block_size", block_size, power_of_two=True)
    dtype = _common.check_float(**floats)
    _common.check_array(name, quantized)
    x = floats["x"]
    _common.check_shape("x", x, (None, None), "(N, in)")
    n, in_features = x.shape
    if in_features % BLOCK:
        raise ValueError(f"x must have shape (N, in) with in a multiple of {BLOCK}, got {tuple(x.shape)}")
    o = floats["scale"].shape[0]
    for other, a in floats.items():
        if other != "x":
            _common.check_shape(other, a, (o, in_features // BLOCK), "(O, in/32)")
    _common.check_shape(name, quantized, (o, in_features // BLOCK, per_block), f"(O, in/32, {per_block})")
    if quantized.dtype != quantized_dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(quantized_dtype)}, got {np.dtype(quantized.dtype)}")
    return dtype, n, o


def q4_1_linear(x, scale, minimum, packed, block_size=DEFAULT_BLOCK_SIZE):
    """y = x Wᵀ, x (N, in) float32 or float64, W (O, in) as Q4_1: ``scale`` and ``minimum`` (O, in/32) of
    x's dtype, ``packed`` (O, in/32, 16) uint8. Returns y (N, O). ``block_size``: threads per output element."""
    dtype, n, o = _check(block_size, {"x": x, "scale": scale, "minimum": minimum}, "packed", packed, BLOCK // 2,
                         np.uint8)
    d_x, d_scale, d_minimum, d_packed = (_common.to_device(a) for a in (x, scale, minimum, packed))
    out = _common.device_empty((n, o), dtype)                                   # (N, O)
    if n and o:
        _q4_1_kernel(dtype, block_size)[(o, n), block_size](d_x, d_scale, d_minimum, d_packed.reshape(o, -1), out)
    return _common.like_input([out], x)[0]


def q8_0_linear(x, scale, quants, block_size=DEFAULT_BLOCK_SIZE):
    """y = x Wᵀ with W (O, in) as Q8_0: ``scale`` (O, in/32) of x's dtype, ``quants`` (O, in/32, 32) int8.
    Returns y (N, O). ``block_size``: threads per output element."""
    dtype, n, o = _check(block_size, {"x": x, "scale": scale}, "quants", quants, BLOCK, np.int8)
    d_x, d_scale, d_quants = (_common.to_device(a) for a in (x, scale, quants))
    out = _common.device_empty((n, o), dtype)                                   # (N, O)
    if n and o:
        _q8_0_kernel(dtype, block_size)[(o, n), block_size](d_x, d_scale, d_quants.reshape(o, -1), out)
    return _common.like_input([out], x)[0]


def _builds(dtype):
    """The ``builds`` (kernels/versions.py): both kernels at the largest block, 1024 threads."""
    dtype = np.dtype(dtype)
    a = _common.array_type
    block = _common.MAX_THREADS_PER_BLOCK
    return [(f"q4_1 block={block}", _q4_1_kernel(dtype, block),
             (a(dtype, 2), a(dtype, 2), a(dtype, 2), a(np.uint8, 2), a(dtype, 2)), block),
            (f"q8_0 block={block}", _q8_0_kernel(dtype, block),
             (a(dtype, 2), a(dtype, 2), a(np.int8, 2), a(dtype, 2)), block)]


VERSIONS = registry(
    Version("v1", "one block per output element: coalesced strided reads of the packed row, shared-memory sum",
            None, builds=_builds, q4_1_linear=q4_1_linear, q8_0_linear=q8_0_linear),
)
