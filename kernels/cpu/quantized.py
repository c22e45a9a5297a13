"""Numba CPU kernels: y = x Wᵀ with W held as Q4_1 (4-bit numbers, one scale and one minimum per 32 weights)
or Q8_0 (bytes, one scale per 32; :func:`q8_0_linear`, the same loop without nibbles and minima).

    W[o, 32 b + j] = d[o, b] · q[o, b, j] + m[o, b]                  (conventions: kernels.reference.q4_1_weights)

Generating one token multiplies a single row x by every weight matrix of the model, so the time goes into
reading the matrices from memory, not into arithmetic. Held as Q4_1 a weight costs 4 bits plus its block's
share of the scale and minimum (6 bits here, where d and m are float32; 5 in a GGUF file, where they are
float16), against 32 bits in float32. The kernel never builds W. With the sum over a block split in two,

    y[n, o] = Σ_b d[o, b] · Σ_j x[n, 32 b + j] · q[o, b, j]  +  Σ_b m[o, b] · s[n, b],   s[n, b] = Σ_j x[n, 32 b + j]

it reads each packed byte once per row of x and turns its two nibbles into two products: byte j of block b
holds q_j (low nibble) and q_{j+16} (high nibble), so x is first split, per block, into the halves that meet
the low and the high nibbles (``x_low``, ``x_high``: (N, nb·16) each) and the block sums s. The loop over a
row's bytes is then one flat loop that the compiler vectorises (nibbles widened to int32, converted to
float, multiplied in vector lanes); the scale is looked up by the byte's block, ``i >> 4``.

Tasks are chunks of ``rows_per_task`` output rows (prange). Sums run in x's dtype with ``reassoc`` allowed;
the result differs from BLAS's product of the de-quantised matrix by rounding only. Each row of x re-reads
the packed row, so the kernel is for few rows (generating tokens); a long prompt is faster de-quantised.
"""
import numba
import numpy as np

from kernels.cpu import _common
from kernels.cpu._common import FASTMATH
from kernels.versions import Version, registry

BLOCK = 32


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _q4_1_linear(x_low, x_high, x_block_sums, scale, minimum, packed, out, rows_per_task):
    n_rows, half = x_low.shape                                    # half = nb * 16 bytes per row of W
    out_features, n_blocks = scale.shape
    n_tasks = (out_features + rows_per_task - 1) // rows_per_task
    for task in numba.prange(n_tasks):
        for o in range(task * rows_per_task, min((task + 1) * rows_per_task, out_features)):
            q, d, m = packed[o], scale[o], minimum[o]             # (nb·16,), (nb,), (nb,)
            for n in range(n_rows):
                low, high, s = x_low[n], x_high[n], x_block_sums[n]
                acc = x_low.dtype.type(0)
                for i in range(half):                             # byte i of the row, in block i >> 4
                    byte = np.int32(q[i])
                    acc += d[i >> 4] * (low[i] * (byte & np.int32(15)) + high[i] * (byte >> np.int32(4)))
                for b in range(n_blocks):
                    acc += m[b] * s[b]
                out[n, o] = acc


def q4_1_linear(x, scale, minimum, packed, rows_per_task=32):
    """y = x Wᵀ, x (N, in) float32 or float64, W (O, in) as Q4_1: ``scale`` and ``minimum`` (O, in/32) of
    x's dtype, ``packed`` (O, in/32, 16) uint8 (see kernels.reference.q4_1_weights). Returns y (N, O)."""
    dtype = _common.check_float(x, scale, minimum)
    if x.ndim != 2 or scale.ndim != 2 or scale.shape != minimum.shape or packed.dtype != np.uint8 \
            or packed.shape != scale.shape + (BLOCK // 2,) or x.shape[1] != BLOCK * scale.shape[1]:
        raise ValueError(f"q4_1_linear: expected x (N, 32 nb), scale and minimum (O, nb), packed (O, nb, 16) "
                         f"uint8; got x {x.shape}, scale {scale.shape}, minimum {minimum.shape}, packed "
                         f"{packed.shape} {packed.dtype}")
    n, n_blocks = x.shape[0], scale.shape[1]
    blocks = x.reshape(n, n_blocks, BLOCK)                                  # (N, nb, 32)
    x_low = np.ascontiguousarray(blocks[:, :, :BLOCK // 2]).reshape(n, -1)   # (N, nb·16): meet low nibbles
    x_high = np.ascontiguousarray(blocks[:, :, BLOCK // 2:]).reshape(n, -1)  # (N, nb·16): meet high nibbles
    out = _common.empty((n, scale.shape[0]), dtype)
    _q4_1_linear(x_low, x_high, blocks.sum(axis=2), np.ascontiguousarray(scale), np.ascontiguousarray(minimum),
                 np.ascontiguousarray(packed).reshape(packed.shape[0], -1), out, rows_per_task)
    return out


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _q8_0_linear(x, scale, quants, out, rows_per_task):
    n_rows, in_features = x.shape
    out_features = scale.shape[0]
    n_tasks = (out_features + rows_per_task - 1) // rows_per_task
    for task in numba.prange(n_tasks):
        for o in range(task * rows_per_task, min((task + 1) * rows_per_task, out_features)):
            q, d = quants[o], scale[o]                            # (in,) int8, (nb,)
            for n in range(n_rows):
                row = x[n]
                acc = x.dtype.type(0)
                for i in range(in_features):                      # weight i, in block i >> 5
                    acc += d[i >> 5] * (row[i] * np.int32(q[i]))
                out[n, o] = acc


def q8_0_linear(x, scale, quants, rows_per_task=64):
    """y = x Wᵀ with W (O, in) as Q8_0 (w = d · q, q int8, one scale per 32 weights): ``scale`` (O, in/32) of
    x's dtype, ``quants`` (O, in/32, 32) int8. The same loop as Q4_1's without the nibbles and the minima."""
    dtype = _common.check_float(x, scale)
    if x.ndim != 2 or scale.ndim != 2 or quants.dtype != np.int8 or quants.shape != scale.shape + (BLOCK,) \
            or x.shape[1] != BLOCK * scale.shape[1]:
        raise ValueError(f"q8_0_linear: expected x (N, 32 nb), scale (O, nb), quants (O, nb, 32) int8; got x "
                         f"{x.shape}, scale {scale.shape}, quants {quants.shape} {quants.dtype}")
    out = _common.empty((x.shape[0], scale.shape[0]), dtype)
    _q8_0_linear(np.ascontiguousarray(x), np.ascontiguousarray(scale),
                 np.ascontiguousarray(quants).reshape(quants.shape[0], -1), out, rows_per_task)
    return out


VERSIONS = registry(
    Version("v1", "per output row, one flat vectorised loop over its packed bytes; block sums of x for the minima",
            None, q4_1_linear=q4_1_linear, q8_0_linear=q8_0_linear),
)
