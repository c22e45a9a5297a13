"""CUDA attention, two versions; conventions as in kernels.reference.

S = scale * Q K^T (masked -> -inf),  P = softmax(S),  O = P V,  lse_i = log sum_j exp(S_ij)
backward:  P = exp(S - lse),  dV = P^T dO,  dS = P * (dO V^T - D_i),  D_i = dO_i . O_i,
           dQ = scale dS K,  dK = scale dS^T Q

A fully masked row gives o = 0, lse = -inf and zero gradients.

v1  naive port of the reference: one thread per query row (forward, dQ) or per
    key row (dK, dV), every operand read straight from global memory. No
    (T, T) matrix is stored: scores are recomputed in each pass.
v2  flash-style: a block of ``block_size`` threads owns a tile of
    ``block_size`` rows (one row per thread). Tiles of the other operand are
    staged in shared memory once per block and reused by every thread.
    Forward keeps an online softmax per query (running max m, sum l, output
    acc) and saves lse; backward runs one kernel for dQ (a block per query
    tile) and one for dK, dV (a block per key tile), so no atomics are needed.

The head dimension D and the block size are compile-time constants of the v2
kernels (they size the per-thread and shared arrays); kernels are compiled
once per (dtype, block_size, D).
"""
import functools
import math

import numba
import numpy as np
from numba import cuda

from kernels.cuda import _common


@cuda.jit(device=True)
def _visible(pad, causal, b, i, j, shift):
    """Query i may attend to key j: not padded and, if causal, j <= i + shift (shift = Tk - Tq)."""
    return not pad[b, j] and not (causal and j > i + shift)


@cuda.jit(device=True)
def _dot(a, b):
    total = 0.0
    for d in range(a.shape[0]):
        total += a[d] * b[d]
    return total


# --------------------------------------------------------------------- v1


@cuda.jit
def _forward_v1(q, k, v, pad, causal, scale, o, lse):
    """Thread per (b, h, i): three passes over the keys (max, sum, weighted sum of V)."""
    n_batch, n_head, tq, d = q.shape
    tk = k.shape[2]
    row = cuda.grid(1)
    if row >= n_batch * n_head * tq:
        return
    b, h, i = row // (n_head * tq), (row // tq) % n_head, row % tq
    shift = tk - tq
    m = -math.inf
    for j in range(tk):
        if _visible(pad, causal, b, i, j, shift):
            m = max(m, scale * _dot(q[b, h, i], k[b, h, j]))
    z = 0.0
    for j in range(tk):
        if _visible(pad, causal, b, i, j, shift):
            z += math.exp(scale * _dot(q[b, h, i], k[b, h, j]) - m)
    for c in range(d):
        o[b, h, i, c] = 0.0
    if z == 0.0:
        lse[b, h, i] = -math.inf
        return
    for j in range(tk):
        if _visible(pad, causal, b, i, j, shift):
            p = math.exp(scale * _dot(q[b, h, i], k[b, h, j]) - m) / z
            for c in range(d):
                o[b, h, i, c] += p * v[b, h, j, c]
    lse[b, h, i] = m + math.log(z)


@cuda.jit
def _backward_dq_v1(q, k, v, o, lse, do, pad, causal, scale, dq):
    """Thread per query row: dQ_i = scale sum_j P_ij (dO_i . V_j - D_i) K_j."""
    n_batch, n_head, tq, d = q.shape
    tk = k.shape[2]
    row = cuda.grid(1)
    if row >= n_batch * n_head * tq:
        return
    b, h, i = row // (n_head * tq), (row // tq) % n_head, row % tq
    di = _dot(do[b, h, i], o[b, h, i])
    for c in range(d):
        dq[b, h, i, c] = 0.0
    for j in range(tk):
        if _visible(pad, causal, b, i, j, tk - tq):
            p = math.exp(scale * _dot(q[b, h, i], k[b, h, j]) - lse[b, h, i])
            ds = p * (_dot(do[b, h, i], v[b, h, j]) - di)
            for c in range(d):
                dq[b, h, i, c] += scale * ds * k[b, h, j, c]


@cuda.jit
def _backward_dkdv_v1(q, k, v, o, lse, do, pad, causal, scale, dk, dv):
    """Thread per key row: dV_j = sum_i P_ij dO_i,  dK_j = scale sum_i dS_ij Q_i."""
    n_batch, n_head, tk, d = k.shape
    tq = q.shape[2]
    row = cuda.grid(1)
    if row >= n_batch * n_head * tk:
        return
    b, h, j = row // (n_head * tk), (row // tk) % n_head, row % tk
    for c in range(d):
        dk[b, h, j, c] = 0.0
        dv[b, h, j, c] = 0.0
    for i in range(tq):
        if _visible(pad, causal, b, i, j, tk - tq):
            p = math.exp(scale * _dot(q[b, h, i], k[b, h, j]) - lse[b, h, i])
            ds = p * (_dot(do[b, h, i], v[b, h, j]) - _dot(do[b, h, i], o[b, h, i]))
            for c in range(d):
                dv[b, h, j, c] += p * do[b, h, i, c]
                dk[b, h, j, c] += scale * ds * q[b, h, i, c]


# --------------------------------------------------------------------- v2


@functools.lru_cache(maxsize=None)
def _flash_kernels(dtype, block, d):
    """Compile the v2 kernels for one (dtype, block size, head dim)."""
    nb = numba.from_dtype(dtype)

    @cuda.jit(device=True)
    def load_rows(src, b, h, r0, n_rows, tile, t):
        """Thread t copies row r0 + t of src[b, h] into tile[t] (zeros past the end)."""
        for c in range(d):
            tile[t, c] = src[b, h, r0 + t, c] if t < n_rows - r0 else 0.0

    @cuda.jit
    def forward(q, k, v, pad, causal, scale, o, lse):
        """Grid (query tiles, B * H); thread t owns query row i = tile * block + t."""
        n_head, tq = q.shape[1], q.shape[2]
        tk = k.shape[2]
        shift = tk - tq
        t = cuda.threadIdx.x
        b, h = cuda.blockIdx.y // n_head, cuda.blockIdx.y % n_head
        i0 = cuda.blockIdx.x * block
        i = i0 + t
        k_tile = cuda.shared.array((block, d), nb)            # (block, D)
        v_tile = cuda.shared.array((block, d), nb)            # (block, D)
        q_row = cuda.local.array(d, nb)                       # scaled query row
        acc = cuda.local.array(d, nb)                         # unnormalised output row
        for c in range(d):
            q_row[c] = q[b, h, i, c] * scale if i < tq else 0.0
            acc[c] = 0.0
        m = -math.inf
        l = 0.0
        k_end = min(tk, i0 + block + shift) if causal else tk  # later keys are hidden from the whole tile
        for j0 in range(0, k_end, block):
            cuda.syncthreads()                                # previous tile fully used
            load_rows(k, b, h, j0, tk, k_tile, t)
            load_rows(v, b, h, j0, tk, v_tile, t)
            cuda.syncthreads()
            if i < tq:
                for jj in range(min(block, tk - j0)):
                    if _visible(pad, causal, b, i, j0 + jj, shift):
                        s = _dot(q_row, k_tile[jj])
                        if s > m:                             # new max: rescale what we have
                            alpha = math.exp(m - s)           # exp(-inf) = 0 for the first key
                            l = l * alpha + 1.0
                            for c in range(d):
                                acc[c] = acc[c] * alpha + v_tile[jj, c]
                            m = s
                        else:
                            p = math.exp(s - m)
                            l += p
                            for c in range(d):
                                acc[c] += p * v_tile[jj, c]
        if i < tq:
            for c in range(d):
                o[b, h, i, c] = acc[c] / l if l > 0.0 else 0.0
            lse[b, h, i] = m + math.log(l) if l > 0.0 else -math.inf

    @cuda.jit
    def backward_dq(q, k, v, o, lse, do, pad, causal, scale, dq):
        """Grid (query tiles, B * H); thread t owns query row i. K, V tiles in shared memory."""
        n_head, tq = q.shape[1], q.shape[2]
        tk = k.shape[2]
        shift = tk - tq
        t = cuda.threadIdx.x
        b, h = cuda.blockIdx.y // n_head, cuda.blockIdx.y % n_head
        i0 = cuda.blockIdx.x * block
        i = i0 + t
        k_tile = cuda.shared.array((block, d), nb)
        v_tile = cuda.shared.array((block, d), nb)
        q_row = cuda.local.array(d, nb)
        do_row = cuda.local.array(d, nb)
        acc = cuda.local.array(d, nb)                         # dQ_i / scale
        di = 0.0
        row_lse = 0.0
        if i < tq:
            for c in range(d):
                q_row[c] = q[b, h, i, c] * scale
                do_row[c] = do[b, h, i, c]
                acc[c] = 0.0
                di += do_row[c] * o[b, h, i, c]
            row_lse = lse[b, h, i]
        k_end = min(tk, i0 + block + shift) if causal else tk
        for j0 in range(0, k_end, block):
            cuda.syncthreads()
            load_rows(k, b, h, j0, tk, k_tile, t)
            load_rows(v, b, h, j0, tk, v_tile, t)
            cuda.syncthreads()
            if i < tq:
                for jj in range(min(block, tk - j0)):
                    if _visible(pad, causal, b, i, j0 + jj, shift):
                        p = math.exp(_dot(q_row, k_tile[jj]) - row_lse)
                        ds = p * (_dot(do_row, v_tile[jj]) - di)
                        for c in range(d):
                            acc[c] += ds * k_tile[jj, c]
        if i < tq:
            for c in range(d):
                dq[b, h, i, c] = acc[c] * scale

    @cuda.jit
    def backward_dkdv(q, k, v, o, lse, do, pad, causal, scale, dk, dv):
        """Grid (key tiles, B * H); thread t owns key row j. Q, dO, lse, D tiles in shared memory."""
        n_head, tq = q.shape[1], q.shape[2]
        tk = k.shape[2]
        shift = tk - tq
        t = cuda.threadIdx.x
        b, h = cuda.blockIdx.y // n_head, cuda.blockIdx.y % n_head
        j0 = cuda.blockIdx.x * block
        j = j0 + t
        q_tile = cuda.shared.array((block, d), nb)            # scaled queries
        do_tile = cuda.shared.array((block, d), nb)
        lse_tile = cuda.shared.array(block, nb)
        d_tile = cuda.shared.array(block, nb)                 # D_i = dO_i . O_i
        k_row = cuda.local.array(d, nb)
        v_row = cuda.local.array(d, nb)
        dk_acc = cuda.local.array(d, nb)
        dv_acc = cuda.local.array(d, nb)
        for c in range(d):
            k_row[c] = k[b, h, j, c] if j < tk else 0.0
            v_row[c] = v[b, h, j, c] if j < tk else 0.0
            dk_acc[c] = 0.0
            dv_acc[c] = 0.0
        i_start = max(0, j0 - shift) if causal else 0         # earlier queries see none of these keys
        for i0 in range(i_start, tq, block):
            cuda.syncthreads()
            i = i0 + t
            di = 0.0
            for c in range(d):
                q_tile[t, c] = q[b, h, i, c] * scale if i < tq else 0.0
                do_tile[t, c] = do[b, h, i, c] if i < tq else 0.0
                if i < tq:
                    di += do[b, h, i, c] * o[b, h, i, c]
            d_tile[t] = di
            lse_tile[t] = lse[b, h, i] if i < tq else 0.0
            cuda.syncthreads()
            if j < tk:
                for ii in range(min(block, tq - i0)):
                    if _visible(pad, causal, b, i0 + ii, j, shift):
                        p = math.exp(_dot(q_tile[ii], k_row) - lse_tile[ii])
                        ds = p * (_dot(do_tile[ii], v_row) - d_tile[ii])
                        for c in range(d):
                            dv_acc[c] += p * do_tile[ii, c]
                            dk_acc[c] += ds * q_tile[ii, c]       # scale is inside q_tile
        if j < tk:
            for c in range(d):
                dk[b, h, j, c] = dk_acc[c]
                dv[b, h, j, c] = dv_acc[c]

    return forward, backward_dq, backward_dkdv


# ------------------------------------------------------------------- host


def _prepare(q, arrays, key_padding_mask, scale):
    """Move q and the other arrays to the device; return (device arrays, padding, scale, on_host)."""
    d_q, on_host = _common.to_device(q)
    device = [d_q] + [_common.to_device(a)[0] for a in arrays]
    batch, _, _, d = d_q.shape
    pad = _common.padding_on_device(key_padding_mask, batch, device[1].shape[2])
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    return device, pad, d_q.dtype.type(scale), on_host


def _rows_grid(rows, block_size):
    return (rows + block_size - 1) // block_size, block_size


def attention_forward_v1(q, k, v, key_padding_mask=None, causal=False, scale=None, block_size=128):
    """Naive attention forward, one thread per query row. Returns (o, lse)."""
    (d_q, d_k, d_v), pad, scale, on_host = _prepare(q, (k, v), key_padding_mask, scale)
    batch, heads, tq, d = d_q.shape
    o = _common.device_empty((batch, heads, tq, d), d_q.dtype)
    lse = _common.device_empty((batch, heads, tq), d_q.dtype)
    _forward_v1[_rows_grid(batch * heads * tq, block_size)](d_q, d_k, d_v, pad, bool(causal), scale, o, lse)
    return _common.results([o, lse], on_host)


def attention_backward_v1(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None, block_size=128):
    """Naive attention backward: a thread per query row for dQ, per key row for dK, dV. Returns (dq, dk, dv)."""
    device, pad, scale, on_host = _prepare(q, (k, v, o, lse, do), key_padding_mask, scale)
    d_q, d_k = device[0], device[1]
    dq = _common.device_empty(d_q.shape, d_q.dtype)
    dk = _common.device_empty(d_k.shape, d_q.dtype)
    dv = _common.device_empty(d_k.shape, d_q.dtype)
    batch, heads, tq, _ = d_q.shape
    tk = d_k.shape[2]
    _backward_dq_v1[_rows_grid(batch * heads * tq, block_size)](*device, pad, bool(causal), scale, dq)
    _backward_dkdv_v1[_rows_grid(batch * heads * tk, block_size)](*device, pad, bool(causal), scale, dk, dv)
    return _common.results([dq, dk, dv], on_host)


def attention_forward_v2(q, k, v, key_padding_mask=None, causal=False, scale=None, block_size=64):
    """Flash-style forward: query tiles per block, K/V tiles in shared memory, online softmax. Returns (o, lse)."""
    (d_q, d_k, d_v), pad, scale, on_host = _prepare(q, (k, v), key_padding_mask, scale)
    batch, heads, tq, d = d_q.shape
    o = _common.device_empty((batch, heads, tq, d), d_q.dtype)
    lse = _common.device_empty((batch, heads, tq), d_q.dtype)
    forward, _, _ = _flash_kernels(np.dtype(d_q.dtype), block_size, d)
    grid = ((tq + block_size - 1) // block_size, batch * heads)
    forward[grid, block_size](d_q, d_k, d_v, pad, bool(causal), scale, o, lse)
    return _common.results([o, lse], on_host)


def attention_backward_v2(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None, block_size=64):
    """Flash-style backward: one tiled kernel for dQ, one for dK and dV. Returns (dq, dk, dv)."""
    device, pad, scale, on_host = _prepare(q, (k, v, o, lse, do), key_padding_mask, scale)
    d_q, d_k = device[0], device[1]
    batch, heads, tq, d = d_q.shape
    tk = d_k.shape[2]
    dq = _common.device_empty(d_q.shape, d_q.dtype)
    dk = _common.device_empty(d_k.shape, d_q.dtype)
    dv = _common.device_empty(d_k.shape, d_q.dtype)
    _, backward_dq, backward_dkdv = _flash_kernels(np.dtype(d_q.dtype), block_size, d)
    backward_dq[((tq + block_size - 1) // block_size, batch * heads), block_size](
        *device, pad, bool(causal), scale, dq)
    backward_dkdv[((tk + block_size - 1) // block_size, batch * heads), block_size](
        *device, pad, bool(causal), scale, dk, dv)
    return _common.results([dq, dk, dv], on_host)
