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

The matmul computes C = op(A) op(B) for op in {identity, transpose}: a block of
tile x tile threads owns a tile x tile block of C; at each step the threads
copy one tile of op(A) and one of op(B) into shared memory, synchronise, and
each thread accumulates its dot product from shared memory. Every element of
A and B is read from global memory M / tile (resp. N / tile) times instead of
M (resp. N) times. Sizes need not be multiples of the tile: out-of-range
elements load as zero.
"""
import functools

import numba
import numpy as np
from numba import cuda

from kernels.cuda import _common

EPILOGUE_NONE, EPILOGUE_BIAS_ACT, EPILOGUE_TIMES_ACT_GRAD = 0, 1, 2


@functools.lru_cache(maxsize=None)
def _matmul_kernel(dtype, tile):
    """Compile the tiled matmul for one (dtype, tile)."""
    nb = numba.from_dtype(dtype)

    @cuda.jit
    def matmul(a, b, trans_a, trans_b, act_b, code, epilogue, bias, aux, write_pre, out_pre, out):
        """out = epilogue(op(A) op(B)); B elements pass through act first if act_b.

        epilogue NONE:                out = C
        epilogue BIAS_ACT:            out_pre = C + bias (if write_pre),  out = act(C + bias)
        epilogue TIMES_ACT_GRAD:      out = C * act'(aux)
        """
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        row = cuda.blockIdx.y * tile + ty
        col = cuda.blockIdx.x * tile + tx
        m, n = out.shape
        inner = a.shape[0] if trans_a else a.shape[1]
        a_tile = cuda.shared.array((tile, tile), nb)      # op(A)[row block, k block]
        b_tile = cuda.shared.array((tile, tile), nb)      # op(B)[k block, col block]
        acc = 0.0
        for k0 in range(0, inner, tile):
            ka = k0 + tx
            if row < m and ka < inner:
                a_tile[ty, tx] = a[ka, row] if trans_a else a[row, ka]
            else:
                a_tile[ty, tx] = 0.0
            kb = k0 + ty
            if kb < inner and col < n:
                value = b[col, kb] if trans_b else b[kb, col]
                b_tile[ty, tx] = _common.act_and_grad(value, code)[0] if act_b else value
            else:
                b_tile[ty, tx] = 0.0
            cuda.syncthreads()
            for kk in range(tile):
                acc += a_tile[ty, kk] * b_tile[kk, tx]
            cuda.syncthreads()                            # tiles fully used before the next load
        if row < m and col < n:
            if epilogue == EPILOGUE_BIAS_ACT:
                z = acc + bias[col]
                if write_pre:
                    out_pre[row, col] = z
                out[row, col] = _common.act_and_grad(z, code)[0]
            elif epilogue == EPILOGUE_TIMES_ACT_GRAD:
                out[row, col] = acc * _common.act_and_grad(aux[row, col], code)[1]
            else:
                out[row, col] = acc

    return matmul


@cuda.jit
def _column_sum(x, out):
    """out[c] = sum_r x[r, c], one thread per column."""
    c = cuda.grid(1)
    if c < x.shape[1]:
        total = 0.0
        for r in range(x.shape[0]):
            total += x[r, c]
        out[c] = total


def _matmul(a, b, shape, tile, trans_a=False, trans_b=False, act_b=False, code=0,
            epilogue=EPILOGUE_NONE, bias=None, aux=None, out_pre=None):
    """Launch the tiled matmul; returns the new (M, N) device array ``out``."""
    dummy = cuda.device_array((1, 1), dtype=a.dtype)
    out = _common.device_empty(shape, a.dtype)
    grid = ((shape[1] + tile - 1) // tile, (shape[0] + tile - 1) // tile)
    _matmul_kernel(np.dtype(a.dtype), tile)[grid, (tile, tile)](
        a, b, trans_a, trans_b, act_b, code, epilogue,
        dummy[0] if bias is None else bias, dummy if aux is None else aux,
        out_pre is not None, dummy if out_pre is None else out_pre, out)
    return out


def _sum_rows(x, block=128):
    out = _common.device_empty((x.shape[1],), x.dtype)
    _column_sum[(x.shape[1] + block - 1) // block, block](x, out)
    return out


def ffn_forward(x, w1, b1, w2, b2, activation="relu", tile=16):
    """h_pre = x W1^T + b1, h = act(h_pre), y = h W2^T + b2 with fused epilogues. Returns (y, h_pre).

    ``tile``: the matmul tile (tile x tile threads per block).
    """
    code = _common.activation_code(activation)
    d_x, on_host = _common.to_device(x)
    d_w1, d_b1, d_w2, d_b2 = (_common.to_device(a)[0] for a in (w1, b1, w2, b2))
    n, f = d_x.shape[0], d_w1.shape[0]
    h_pre = _common.device_empty((n, f), d_x.dtype)                           # (N, F)
    h = _matmul(d_x, d_w1, (n, f), tile, trans_b=True, code=code,
                epilogue=EPILOGUE_BIAS_ACT, bias=d_b1, out_pre=h_pre)         # (N, F)
    y = _matmul(h, d_w2, (n, d_w2.shape[0]), tile, trans_b=True,
                epilogue=EPILOGUE_BIAS_ACT, bias=d_b2)                        # (N, D), identity act
    return _common.results([y, h_pre], on_host)


def ffn_backward(x, w1, b1, w2, b2, h_pre, dy, activation="relu", tile=16):
    """Gradients of ffn_forward (see module docstring). Returns (dx, dw1, db1, dw2, db2).

    b1 and b2 are unused (h_pre already contains b1); they keep the forward's signature.
    """
    code = _common.activation_code(activation)
    d_x, on_host = _common.to_device(x)
    d_w1, d_w2, d_h_pre, d_dy = (_common.to_device(a)[0] for a in (w1, w2, h_pre, dy))
    n, d = d_x.shape
    f = d_w1.shape[0]
    dh_pre = _matmul(d_dy, d_w2, (n, f), tile, code=code,
                     epilogue=EPILOGUE_TIMES_ACT_GRAD, aux=d_h_pre)           # (N, F)
    dw2 = _matmul(d_dy, d_h_pre, (d, f), tile, trans_a=True, act_b=True, code=code)  # (D, F)
    dw1 = _matmul(dh_pre, d_x, (f, d), tile, trans_a=True)                    # (F, D)
    dx = _matmul(dh_pre, d_w1, (n, d), tile)                                  # (N, D)
    return _common.results([dx, dw1, _sum_rows(dh_pre), dw2, _sum_rows(d_dy)], on_host)
