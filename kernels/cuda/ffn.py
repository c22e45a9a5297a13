"""CUDA feed-forward network built on one shared-memory tiled matmul with fused prologue / epilogue.

Forward (conventions as kernels.reference.ffn_forward):
    h_pre = x W1^T + b1,  h = act(h_pre)      one matmul, epilogue "bias + activation" writes both
    y = h W2^T + b2                           one matmul, epilogue "bias"
Backward:
    dh_pre = (dy W2) * act'(h_pre)            one matmul, epilogue "times act'(aux)" with aux = h_pre
    dW2 = dy^T act(h_pre)                     one matmul, prologue applies act to B as it is loaded,
                                              so h is never stored
    dW1 = dh_pre^T x,  dx = dh_pre W1         plain matmuls
    db2 = sum_n dy,  db1 = sum_n dh_pre       column sums

The matmul computes C = op(A) op(B) (M x N, inner size K) for op in {identity,
transpose}: a block of tile x tile threads owns a tile x tile block of C; at
each step the threads copy one tile of op(A) and one of op(B) into shared
memory, synchronise, and each thread accumulates its dot product from shared
memory. Every element of op(A) is read from global memory N / tile times
instead of N times, every element of op(B) M / tile times instead of M. Sizes
need not be multiples of the tile: out-of-range elements load as zero. The
grid puts the row blocks in grid x (up to 2^31 - 1; M is the number of tokens
in the forward pass) and the column blocks in grid y (up to 65535).

Kernels are built per dtype (and tile); see kernels/cuda/_common.py.
"""
import functools

import numba
import numpy as np
from numba import cuda, types

from kernels.activations import activation_code
from kernels.cuda import _common
from kernels.versions import Version, registry

EPILOGUE_NONE, EPILOGUE_BIAS_ACT, EPILOGUE_TIMES_ACT_GRAD = 0, 1, 2
SUM_BLOCK = 128   # threads per block of the column sums


@functools.lru_cache(maxsize=None)
def _matmul_kernel(dtype, tile):
    """The tiled matmul for one (dtype, tile)."""
    nb = numba.from_dtype(dtype)
    ZERO = dtype.type(0)
    act_and_grad = _common.act_and_grad(dtype)

    @cuda.jit
    def matmul(a, b, trans_a, trans_b, act_b, code, epilogue, bias, aux, write_pre, out_pre, out):
        """out = epilogue(op(A) op(B)); B elements pass through act first if act_b.

        epilogue NONE:                out = C
        epilogue BIAS_ACT:            out_pre = C + bias (if write_pre),  out = act(C + bias)
        epilogue TIMES_ACT_GRAD:      out = C * act'(aux)
        """
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x       # (row, column) within the tile
        row = cuda.blockIdx.x * tile + ty
        col = cuda.blockIdx.y * tile + tx
        m, n = out.shape
        inner = a.shape[0] if trans_a else a.shape[1]
        a_tile = cuda.shared.array((tile, tile), nb)      # op(A)[row block, k block]
        b_tile = cuda.shared.array((tile, tile), nb)      # op(B)[k block, col block]
        acc = ZERO
        for k0 in range(0, inner, tile):
            ka = k0 + tx
            if row < m and ka < inner:
                a_tile[ty, tx] = a[ka, row] if trans_a else a[row, ka]
            else:
                a_tile[ty, tx] = ZERO
            kb = k0 + ty
            if kb < inner and col < n:
                value = b[col, kb] if trans_b else b[kb, col]
                b_tile[ty, tx] = act_and_grad(value, code)[0] if act_b else value
            else:
                b_tile[ty, tx] = ZERO
            cuda.syncthreads()
            for kk in range(tile):
                acc += a_tile[ty, kk] * b_tile[kk, tx]
            cuda.syncthreads()                            # tiles fully used before the next load
        if row < m and col < n:
            if epilogue == EPILOGUE_BIAS_ACT:
                z = acc + bias[col]
                if write_pre:
                    out_pre[row, col] = z
                out[row, col] = act_and_grad(z, code)[0]
            elif epilogue == EPILOGUE_TIMES_ACT_GRAD:
                out[row, col] = acc * act_and_grad(aux[row, col], code)[1]
            else:
                out[row, col] = acc

    return matmul


@functools.lru_cache(maxsize=None)
def _column_sum(dtype):
    ZERO = dtype.type(0)

    @cuda.jit
    def column_sum(x, out):
        """out[c] = sum_r x[r, c], one thread per column."""
        c = cuda.grid(1)
        if c < x.shape[1]:
            total = ZERO
            for r in range(x.shape[0]):
                total += x[r, c]
            out[c] = total

    return column_sum


def _matmul(a, b, tile, trans_a=False, trans_b=False, act_b=False, code=0,
            epilogue=EPILOGUE_NONE, bias=None, aux=None, out_pre=None):
    """Launch the tiled matmul on device arrays; returns the new (M, N) device array ``out``.

    bias (N,) is read by EPILOGUE_BIAS_ACT, aux (M, N) by EPILOGUE_TIMES_ACT_GRAD; out_pre (M, N) is
    written if given.
    """
    m, k_a = (a.shape[1], a.shape[0]) if trans_a else a.shape        # op(A): (M, K)
    k_b, n = (b.shape[1], b.shape[0]) if trans_b else b.shape        # op(B): (K, N)
    if k_a != k_b:
        raise ValueError(f"matmul: op(A) is {(m, k_a)} and op(B) is {(k_b, n)}; their inner sizes differ")
    dtype = np.dtype(a.dtype)
    out = _common.device_empty((m, n), dtype)
    grid = ((m + tile - 1) // tile, (n + tile - 1) // tile)
    _matmul_kernel(dtype, tile)[grid, (tile, tile)](
        a, b, trans_a, trans_b, act_b, code, epilogue,
        _common.absent(1, dtype) if bias is None else bias,
        _common.absent(2, dtype) if aux is None else aux,
        out_pre is not None, _common.absent(2, dtype) if out_pre is None else out_pre, out)
    return out


def _sum_rows(x, block=SUM_BLOCK):
    out = _common.device_empty((x.shape[1],), x.dtype)
    _column_sum(np.dtype(x.dtype))[(x.shape[1] + block - 1) // block, block](x, out)
    return out


def _check(tile, arrays):
    """Check tile and the FFN arrays (name -> array: x, w1, b1, w2, b2 and, backward, h_pre, dy).

    Returns (dtype, N, F).
    """
    _common.check_block_size("tile", tile, square=True)
    dtype = _common.check_float(**arrays)
    _common.check_shape("x", arrays["x"], (None, None), "(N, D)")
    n, d = arrays["x"].shape
    _common.check_shape("w1", arrays["w1"], (None, d), "(F, D)")
    f = arrays["w1"].shape[0]
    for name, shape, symbols in (("b1", (f,), "(F,)"), ("w2", (d, f), "(D, F)"), ("b2", (d,), "(D,)"),
                                 ("h_pre", (n, f), "(N, F)"), ("dy", (n, d), "(N, D)")):
        if name in arrays:
            _common.check_shape(name, arrays[name], shape, symbols)
    return dtype, n, f


def ffn_forward(x, w1, b1, w2, b2, activation="relu", tile=16):
    """h_pre = x W1^T + b1, h = act(h_pre), y = h W2^T + b2 with fused epilogues. Returns (y, h_pre).

    ``tile``: the matmul tile (tile x tile threads per block, at most 1024).
    """
    code = activation_code(activation)
    dtype, n, f = _check(tile, {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2})
    d_x, d_w1, d_b1, d_w2, d_b2 = (_common.to_device(a) for a in (x, w1, b1, w2, b2))
    h_pre = _common.device_empty((n, f), dtype)                                # (N, F)
    h = _matmul(d_x, d_w1, tile, trans_b=True, code=code,
                epilogue=EPILOGUE_BIAS_ACT, bias=d_b1, out_pre=h_pre)          # (N, F)
    y = _matmul(h, d_w2, tile, trans_b=True, epilogue=EPILOGUE_BIAS_ACT, bias=d_b2)  # (N, D), identity act
    return _common.like_input([y, h_pre], x)


def ffn_backward(x, w1, b1, w2, b2, h_pre, dy, activation="relu", tile=16):
    """Gradients of ffn_forward (see module docstring). Returns (dx, dw1, db1, dw2, db2).

    b1 and b2 are unused (h_pre already contains b1); they keep the forward's signature.
    """
    code = activation_code(activation)
    _check(tile, {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2, "h_pre": h_pre, "dy": dy})
    d_x, d_w1, d_w2, d_h_pre, d_dy = (_common.to_device(a) for a in (x, w1, w2, h_pre, dy))
    dh_pre = _matmul(d_dy, d_w2, tile, code=code,
                     epilogue=EPILOGUE_TIMES_ACT_GRAD, aux=d_h_pre)            # (N, F)
    dw2 = _matmul(d_dy, d_h_pre, tile, trans_a=True, act_b=True, code=code)   # (D, F)
    dw1 = _matmul(dh_pre, d_x, tile, trans_a=True)                            # (F, D)
    dx = _matmul(dh_pre, d_w1, tile)                                          # (N, D)
    return _common.like_input([dx, dw1, _sum_rows(dh_pre), dw2, _sum_rows(d_dy)], x)



def _builds(dtype):
    """The ``builds`` (kernels/versions.py): the matmul at its largest tile, 32 x 32 = 1024 threads, and the
    column sum (128 threads)."""
    dtype = np.dtype(dtype)
    a = functools.partial(_common.array_type, dtype)
    flag, code = types.boolean, types.int64
    matmul = (a(2), a(2), flag, flag, flag, code, code, a(1), a(2), flag, a(2), a(2))
    tile = int(_common.MAX_THREADS_PER_BLOCK ** 0.5)
    return [(f"matmul tile={tile}", _matmul_kernel(dtype, tile), matmul, tile * tile),
            ("column_sum", _column_sum(dtype), (a(2), a(1)), SUM_BLOCK)]


VERSIONS = registry(
    Version("v1", "shared-memory tiled matmul with bias / activation fused into its prologue and epilogue",
            None, builds=_builds, ffn_forward=ffn_forward, ffn_backward=ffn_backward),
)
