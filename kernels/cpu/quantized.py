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
row's bytes is then one flat loop that the compiler vectorises (nibbles widened, converted to float,
multiplied in vector lanes); the scale is looked up by the byte's block, ``i >> 4``, which the compiler
sees is one value for a whole vector of 16 bytes: one broadcast scale and one multiply-add per block.

Version 3 is the same loop with every product in x's dtype. Numba types int32 · float32 as float64 (NumPy's
rule) and widens integer arithmetic to 64 bits, so in versions 1 and 2 a float32 product ran in float64
lanes, the bytes widened to int64: 8 lanes per AVX-512 register. Version 3 converts each nibble (through
int32, so the bytes widen to 32-bit lanes) and each Q8_0 byte to x's dtype first: 16 float32 lanes per
register, the loop's whole arithmetic in float32 (tests/kernels/test_quantized.py checks the compiled code).

Tasks are chunks of ``rows_per_task`` output rows (prange); version 3 runs a product on the calling
thread instead when Numba has one thread or W has fewer than ``parallel_from`` weights, since waking
Numba's threads costs more than a small product (see ``_on_one_thread``). Sums run in x's dtype
(version 3; in float64 before) with ``reassoc`` allowed; the result differs from BLAS's product of the
de-quantised matrix by rounding only. Each row of x re-reads the packed row, so the kernel is for few rows
(generating tokens).

Many rows (a prompt: N >= ``dequantise_from``, about where the two roads take equal time) take version 2's
other road: a tile of ``tile_rows`` rows of W at a time is de-quantised into a float32 scratch tile
(``_q4_1_dequantise``, sized to stay in the L2 cache) and multiplied by all N rows of x at once by BLAS,
y[:, tile] = x tileᵀ. Each packed byte is then unpacked once per call instead of once per row of x, and the
product runs at BLAS's speed; memory holds one tile, never the whole matrix.
"""
import numba
import numpy as np

from kernels.cpu import _common
from kernels.cpu._common import FASTMATH
from kernels.versions import Version, registry

BLOCK = 32


@numba.njit(fastmath=FASTMATH)
def _split_halves(x):
    """x (N, nb·32) -> x_low, x_high (N, nb·16), the halves of each block that meet the low and the high nibbles,
    and the block sums s (N, nb)."""
    n_rows, n_blocks = x.shape[0], x.shape[1] // BLOCK
    x_low = np.empty((n_rows, n_blocks * 16), x.dtype)
    x_high = np.empty((n_rows, n_blocks * 16), x.dtype)
    sums = np.zeros((n_rows, n_blocks), x.dtype)
    for n in range(n_rows):
        for b in range(n_blocks):
            for j in range(BLOCK // 2):
                x_low[n, b * 16 + j] = x[n, b * 32 + j]
                x_high[n, b * 16 + j] = x[n, b * 32 + 16 + j]
                sums[n, b] += x[n, b * 32 + j] + x[n, b * 32 + 16 + j]
    return x_low, x_high, sums


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _q4_1_linear(x, scale, minimum, packed, out, rows_per_task):
    x_low, x_high, x_block_sums = _split_halves(x)                # before the parallel loop, once
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


def _check_q4_1(x, scale, minimum, packed):
    """x's dtype, after checking the shapes and dtypes of a Q4_1 product's arguments."""
    dtype = _common.check_float(x, scale, minimum)
    if x.ndim != 2 or scale.ndim != 2 or scale.shape != minimum.shape or packed.dtype != np.uint8 \
            or packed.shape != scale.shape + (BLOCK // 2,) or x.shape[1] != BLOCK * scale.shape[1]:
        raise ValueError(f"q4_1_linear: expected x (N, 32 nb), scale and minimum (O, nb), packed (O, nb, 16) "
                         f"uint8; got x {x.shape}, scale {scale.shape}, minimum {minimum.shape}, packed "
                         f"{packed.shape} {packed.dtype}")
    return dtype


def _check_q8_0(x, scale, quants):
    """x's dtype, after checking the shapes and dtypes of a Q8_0 product's arguments."""
    dtype = _common.check_float(x, scale)
    if x.ndim != 2 or scale.ndim != 2 or quants.dtype != np.int8 or quants.shape != scale.shape + (BLOCK,) \
            or x.shape[1] != BLOCK * scale.shape[1]:
        raise ValueError(f"q8_0_linear: expected x (N, 32 nb), scale (O, nb), quants (O, nb, 32) int8; got x "
                         f"{x.shape}, scale {scale.shape}, quants {quants.shape} {quants.dtype}")
    return dtype


def q4_1_linear(x, scale, minimum, packed, rows_per_task=32):
    """y = x Wᵀ, x (N, in) float32 or float64, W (O, in) as Q4_1: ``scale`` and ``minimum`` (O, in/32) of
    x's dtype, ``packed`` (O, in/32, 16) uint8 (see kernels.reference.q4_1_weights). Returns y (N, O)."""
    dtype = _check_q4_1(x, scale, minimum, packed)
    out = _common.empty((x.shape[0], scale.shape[0]), dtype)
    c = np.ascontiguousarray
    _q4_1_linear(c(x), c(scale), c(minimum), c(packed).reshape(packed.shape[0], -1), out, rows_per_task)
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
    dtype = _check_q8_0(x, scale, quants)
    out = _common.empty((x.shape[0], scale.shape[0]), dtype)
    _q8_0_linear(np.ascontiguousarray(x), np.ascontiguousarray(scale),
                 np.ascontiguousarray(quants).reshape(quants.shape[0], -1), out, rows_per_task)
    return out


# ------------------------------------------------------------------------------ version 2: tiles for many rows

@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _q4_1_dequantise(scale, minimum, packed, start, tile):
    """tile[r] = W[start + r], de-quantised (w = d q + m) for the rows of the tile (R, in); packed (O, nb·16)."""
    n_rows = tile.shape[0]
    n_blocks = scale.shape[1]
    real = tile.dtype.type                                    # the nibbles in the tile's dtype, not float64
    for r in numba.prange(n_rows):
        q, d, m, w = packed[start + r], scale[start + r], minimum[start + r], tile[r]
        for b in range(n_blocks):
            for j in range(BLOCK // 2):                       # byte j: weights j (low) and j + 16 (high)
                byte = q[b * 16 + j]
                w[b * 32 + j] = d[b] * real(np.int32(byte & 15)) + m[b]
                w[b * 32 + 16 + j] = d[b] * real(np.int32(byte >> 4)) + m[b]


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _q8_0_dequantise(scale, quants, start, tile):
    """tile[r] = W[start + r], de-quantised (w = d q) for the rows of the tile (R, in); quants (O, in)."""
    real = tile.dtype.type                                    # the bytes in the tile's dtype, not float64
    for r in numba.prange(tile.shape[0]):
        q, d, w = quants[start + r], scale[start + r], tile[r]
        for i in range(tile.shape[1]):
            w[i] = d[i >> 5] * real(q[i])


def _tiled_product(x, out_features, dequantise, blocks, tile_rows):
    """y = x Wᵀ (N, O), W de-quantised ``tile_rows`` rows at a time by ``dequantise(*blocks, start, tile)``."""
    dtype = x.dtype
    out = _common.empty((x.shape[0], out_features), dtype)
    tile_rows = min(tile_rows or max(64, 2 ** 17 // x.shape[1]), out_features)  # default: 512 KiB of float32
    tile = np.empty((tile_rows, x.shape[1]), dtype)
    for start in range(0, out_features, tile_rows):
        rows = tile[:min(tile_rows, out_features - start)]
        dequantise(*blocks, start, rows)
        out[:, start:start + rows.shape[0]] = x @ rows.T                     # (N, rows), BLAS
    return out


def q4_1_linear_v2(x, scale, minimum, packed, rows_per_task=32, dequantise_from=6, tile_rows=None):
    """:func:`q4_1_linear` for N < ``dequantise_from`` rows of x; for more, W de-quantised a tile at a time
    and multiplied by BLAS (see the module docstring)."""
    if x.ndim != 2 or x.shape[0] < dequantise_from:
        return q4_1_linear(x, scale, minimum, packed, rows_per_task)
    _check_q4_1(x, scale, minimum, packed)
    blocks = (np.ascontiguousarray(scale), np.ascontiguousarray(minimum),
              np.ascontiguousarray(packed).reshape(packed.shape[0], -1))
    return _tiled_product(np.ascontiguousarray(x), scale.shape[0], _q4_1_dequantise, blocks, tile_rows)


def q8_0_linear_v2(x, scale, quants, rows_per_task=64, dequantise_from=12, tile_rows=None):
    """:func:`q8_0_linear` for N < ``dequantise_from`` rows of x; for more, W de-quantised a tile at a time."""
    if x.ndim != 2 or x.shape[0] < dequantise_from:
        return q8_0_linear(x, scale, quants, rows_per_task)
    _check_q8_0(x, scale, quants)
    blocks = (np.ascontiguousarray(scale), np.ascontiguousarray(quants).reshape(quants.shape[0], -1))
    return _tiled_product(np.ascontiguousarray(x), scale.shape[0], _q8_0_dequantise, blocks, tile_rows)



# ----------------------------------------------------- version 3: the few-row loops in x's dtype, not float64

@numba.njit(fastmath=FASTMATH, cache=True)
def _q4_1_rows(x_low, x_high, x_block_sums, scale, minimum, packed, out, first, stop):
    """out[:, first:stop] = x Wᵀ for the output rows first..stop-1 of W, x split by :func:`_split_halves`."""
    half = x_low.shape[1]                                         # nb * 16 bytes per row of W
    real = x_low.dtype.type                                       # float32 or float64, x's dtype
    for o in range(first, stop):
        q, d, m = packed[o], scale[o], minimum[o]                 # (nb·16,), (nb,), (nb,)
        for n in range(x_low.shape[0]):
            low, high, s = x_low[n], x_high[n], x_block_sums[n]
            acc = real(0)
            for i in range(half):                                 # byte i of the row, in block i >> 4
                byte = q[i]
                q_low, q_high = real(np.int32(byte & 15)), real(np.int32(byte >> 4))   # 32-bit lanes
                acc += d[i >> 4] * (low[i] * q_low + high[i] * q_high)
            for b in range(d.shape[0]):
                acc += m[b] * s[b]
            out[n, o] = acc


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _q4_1_linear_v3(x, scale, minimum, packed, out, rows_per_task):
    x_low, x_high, x_block_sums = _split_halves(x)                # before the parallel loop, once
    out_features = scale.shape[0]
    for task in numba.prange((out_features + rows_per_task - 1) // rows_per_task):
        first = task * rows_per_task
        _q4_1_rows(x_low, x_high, x_block_sums, scale, minimum, packed, out, first,
                   min(first + rows_per_task, out_features))


@numba.njit(fastmath=FASTMATH, cache=True)
def _q8_0_rows(x, scale, quants, out, first, stop):
    """out[:, first:stop] = x Wᵀ for the output rows first..stop-1 of W."""
    real = x.dtype.type
    for o in range(first, stop):
        q, d = quants[o], scale[o]                                # (in,) int8, (nb,)
        for n in range(x.shape[0]):
            row = x[n]
            acc = real(0)
            for i in range(x.shape[1]):                           # weight i, in block i >> 5
                acc += d[i >> 5] * (row[i] * real(q[i]))
            out[n, o] = acc


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _q8_0_linear_v3(x, scale, quants, out, rows_per_task):
    out_features = scale.shape[0]
    for task in numba.prange((out_features + rows_per_task - 1) // rows_per_task):
        first = task * rows_per_task
        _q8_0_rows(x, scale, quants, out, first, min(first + rows_per_task, out_features))


def _on_one_thread(weights, parallel_from):
    """Whether a product of ``weights`` weights runs on the calling thread: handing a parallel loop to Numba's
    threads costs a wake-up of each, which a small product (or a single thread) does not repay."""
    return numba.get_num_threads() == 1 or weights < parallel_from


def q4_1_linear_v3(x, scale, minimum, packed, rows_per_task=32, dequantise_from=6, tile_rows=None,
                   parallel_from=2 ** 20):
    """:func:`q4_1_linear_v2` with the few-row loop in x's dtype (see the module docstring, version 3), on the
    calling thread when W has fewer than ``parallel_from`` weights or Numba has one thread."""
    if x.ndim == 2 and x.shape[0] >= dequantise_from:
        return q4_1_linear_v2(x, scale, minimum, packed, rows_per_task, dequantise_from, tile_rows)
    dtype = _check_q4_1(x, scale, minimum, packed)
    out = _common.empty((x.shape[0], scale.shape[0]), dtype)
    c = np.ascontiguousarray
    x, scale, minimum, packed = c(x), c(scale), c(minimum), c(packed).reshape(packed.shape[0], -1)
    if _on_one_thread(packed.size * 2, parallel_from):
        _q4_1_rows(*_split_halves(x), scale, minimum, packed, out, 0, scale.shape[0])
    else:
        _q4_1_linear_v3(x, scale, minimum, packed, out, rows_per_task)
    return out


def q8_0_linear_v3(x, scale, quants, rows_per_task=64, dequantise_from=12, tile_rows=None, parallel_from=2 ** 20):
    """:func:`q8_0_linear_v2` with the few-row loop in x's dtype (see the module docstring, version 3), on the
    calling thread when W has fewer than ``parallel_from`` weights or Numba has one thread."""
    if x.ndim == 2 and x.shape[0] >= dequantise_from:
        return q8_0_linear_v2(x, scale, quants, rows_per_task, dequantise_from, tile_rows)
    dtype = _check_q8_0(x, scale, quants)
    out = _common.empty((x.shape[0], scale.shape[0]), dtype)
    c = np.ascontiguousarray
    x, scale, quants = c(x), c(scale), c(quants).reshape(quants.shape[0], -1)
    if _on_one_thread(quants.size, parallel_from):
        _q8_0_rows(x, scale, quants, out, 0, scale.shape[0])
    else:
        _q8_0_linear_v3(x, scale, quants, out, rows_per_task)
    return out


VERSIONS = registry(
    Version("v1", "per output row, one flat vectorised loop over its packed bytes; block sums of x for the minima",
            None, q4_1_linear=q4_1_linear, q8_0_linear=q8_0_linear),
    Version("v2", "v1 for few rows of x; for more (6 for Q4_1, 12 for Q8_0), W de-quantised a tile at a time, "
            "then BLAS",
            "v1", q4_1_linear=q4_1_linear_v2, q8_0_linear=q8_0_linear_v2),
    Version("v3", "v2 with the few-row loops in x's dtype: 16 float32 lanes per AVX-512 register, not 8 float64",
            "v2", q4_1_linear=q4_1_linear_v3, q8_0_linear=q8_0_linear_v3),
)
