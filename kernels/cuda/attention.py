"""CUDA attention, two versions; conventions as in kernels.reference.

S = scale * Q K^T (masked -> -inf),  P = softmax(S),  O = P V,  lse_i = log sum_j exp(S_ij)
backward:  P = exp(S - lse),  dV = P^T dO,  dS = P * (dO V^T - D_i),  D_i = dO_i . O_i,
           dQ = scale dS K,  dK = scale dS^T Q

A fully masked row gives o = 0, lse = -inf and zero gradients.

Grouped-query attention: k and v (B, Hkv, Tk, D) may have fewer heads than q (B, H, Tq, D), H a multiple of
Hkv; query head h reads key/value head h // g, g = H / Hkv, straight from k and v (no repeated copy). The
dK, dV kernels give a thread (v1) or a block (v2) to rows of one key/value head and sum over its g query
heads.

v1  naive port of the reference: one thread per query row (forward, dQ) or per
    key row (dK, dV), every operand read straight from global memory. No
    (T, T) matrix is stored: scores are recomputed in each pass.
v2  flash-style: a block of ``block_size`` threads owns ``block_size`` rows,
    one per thread (B_r in the FlashAttention paper). The other operand passes
    through shared memory ``tile`` rows at a time (B_c): all the block's
    threads copy a tile together, neighbouring threads reading neighbouring
    addresses (coalesced), and every thread then reuses it from shared memory.
    Forward keeps an online softmax per query (running max m, sum l, output
    acc) and saves lse; backward runs one kernel for dQ (a block per query
    tile) and one for dK, dV (a block per key tile), so no atomics are needed.

Shared memory. A block may have 48 KiB of static shared memory. The largest v2
kernel (dK, dV) stages two (tile, D) tiles and two (tile,) vectors, i.e.
(2 D + 2) * tile elements, so the host takes
    tile = min(block_size, 48 KiB // ((2 D + 2) * itemsize)):
64 rows for float32 D = 64, 47 for float32 D = 128 or float64 D = 64, 23 for
float64 D = 128 (with the default block_size = 64).

Registers. Each v2 thread keeps its query row and output row (forward) or its dK, dV rows (backward) in
registers: ptxas gives the kernels 230-255 registers per thread at D >= 64 (tests/kernels/test_cuda_ptx.py
prints the counts), and a block has 65536, so more than 256 threads per block cannot launch
(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES). 255 is the most a thread ever gets (ptxas spills beyond), so
V2_MAX_BLOCK_SIZE = 256 launches whatever D is; the host functions refuse larger blocks.

The head dimension D, block_size and tile are compile-time constants of the v2
kernels (they size the per-thread and shared arrays); kernels are built per
(dtype, block_size, tile, D), the v1 kernels per dtype (see _common.py).
Grids: batch * heads (batch * Hkv for dK, dV) in grid x (up to 2^31 - 1 blocks), the row tiles of one
(b, h) in grid y (up to 65535, so T up to 65535 * block_size).
"""
import functools
import math

import numba
import numpy as np
from numba import cuda, types

from kernels.cuda import _common
from kernels.versions import Version, registry

V2_MAX_BLOCK_SIZE = _common.REGISTERS_PER_BLOCK // (_common.MAX_REGISTERS_PER_THREAD + 1)   # 256


@cuda.jit(device=True)
def _visible(pad, has_pad, causal, b, i, j, shift):
    """Query i may attend to key j: not padded and, if causal, j <= i + shift (shift = Tk - Tq)."""
    return not (has_pad and pad[b, j]) and not (causal and j > i + shift)


@functools.lru_cache(maxsize=None)
def _dot(dtype):
    ZERO = dtype.type(0)

    @cuda.jit(device=True)
    def dot(a, b):
        """sum_c a[c] b[c]"""
        total = ZERO
        for c in range(a.shape[0]):
            total += a[c] * b[c]
        return total

    return dot


# --------------------------------------------------------------------- v1


@cuda.jit(device=True)
def _split_row(row, n_head, t):
    """The (b, h, i) of flat row index row = (b * H + h) * T + i."""
    return row // (n_head * t), (row // t) % n_head, row % t


@functools.lru_cache(maxsize=None)
def _v1_kernels(dtype):
    """The v1 kernels (forward, backward_dq, backward_dkdv) for one dtype."""
    ZERO, NEG_INF = dtype.type(0), dtype.type(-np.inf)
    dot = _dot(dtype)

    @cuda.jit
    def forward(q, k, v, pad, has_pad, causal, scale, o, lse):
        """Thread per (b, h, i): three passes over the keys (max, sum, weighted sum of V)."""
        n_batch, n_head, tq, d = q.shape
        tk = k.shape[2]
        row = cuda.grid(1)
        if row >= n_batch * n_head * tq:
            return
        b, h, i = _split_row(row, n_head, tq)
        hk = h // (n_head // k.shape[1])                      # the key/value head of query head h
        shift = tk - tq
        m = NEG_INF
        for j in range(tk):
            if _visible(pad, has_pad, causal, b, i, j, shift):
                m = max(m, scale * dot(q[b, h, i], k[b, hk, j]))
        z = ZERO
        for j in range(tk):
            if _visible(pad, has_pad, causal, b, i, j, shift):
                z += math.exp(scale * dot(q[b, h, i], k[b, hk, j]) - m)
        for c in range(d):
            o[b, h, i, c] = ZERO
        if z == ZERO:
            lse[b, h, i] = NEG_INF
            return
        for j in range(tk):
            if _visible(pad, has_pad, causal, b, i, j, shift):
                p = math.exp(scale * dot(q[b, h, i], k[b, hk, j]) - m) / z
                for c in range(d):
                    o[b, h, i, c] += p * v[b, hk, j, c]
        lse[b, h, i] = m + math.log(z)

    @cuda.jit
    def backward_dq(q, k, v, o, lse, do, pad, has_pad, causal, scale, dq):
        """Thread per query row: dQ_i = scale sum_j P_ij (dO_i . V_j - D_i) K_j."""
        n_batch, n_head, tq, d = q.shape
        tk = k.shape[2]
        row = cuda.grid(1)
        if row >= n_batch * n_head * tq:
            return
        b, h, i = _split_row(row, n_head, tq)
        hk = h // (n_head // k.shape[1])                      # the key/value head of query head h
        di = dot(do[b, h, i], o[b, h, i])
        for c in range(d):
            dq[b, h, i, c] = ZERO
        for j in range(tk):
            if _visible(pad, has_pad, causal, b, i, j, tk - tq):
                p = math.exp(scale * dot(q[b, h, i], k[b, hk, j]) - lse[b, h, i])
                ds = p * (dot(do[b, h, i], v[b, hk, j]) - di)
                for c in range(d):
                    dq[b, h, i, c] += scale * ds * k[b, hk, j, c]

    @cuda.jit
    def backward_dkdv(q, k, v, o, lse, do, pad, has_pad, causal, scale, dk, dv):
        """Thread per key row of a key/value head: dV_j = sum_i P_ij dO_i,  dK_j = scale sum_i dS_ij Q_i, the
        sums over the queries of every query head of its group."""
        n_batch, n_kv_head, tk, d = k.shape
        tq = q.shape[2]
        group = q.shape[1] // n_kv_head
        row = cuda.grid(1)
        if row >= n_batch * n_kv_head * tk:
            return
        b, hk, j = _split_row(row, n_kv_head, tk)
        for c in range(d):
            dk[b, hk, j, c] = ZERO
            dv[b, hk, j, c] = ZERO
        for r in range(group * tq):                           # (query head, query row) pairs of the group
            h, i = hk * group + r // tq, r % tq
            if _visible(pad, has_pad, causal, b, i, j, tk - tq):
                p = math.exp(scale * dot(q[b, h, i], k[b, hk, j]) - lse[b, h, i])
                ds = p * (dot(do[b, h, i], v[b, hk, j]) - dot(do[b, h, i], o[b, h, i]))
                for c in range(d):
                    dv[b, hk, j, c] += p * do[b, h, i, c]
                    dk[b, hk, j, c] += scale * ds * q[b, h, i, c]

    return forward, backward_dq, backward_dkdv


# --------------------------------------------------------------------- v2


def _flash_tile(block_size, d, dtype):
    """Rows per shared-memory tile: block_size, or as many as fit in 48 KiB (see module docstring)."""
    row_bytes = (2 * d + 2) * dtype.itemsize
    fit = _common.STATIC_SHARED_BYTES // row_bytes
    if fit < 1:
        raise ValueError(f"head dim D={d} is too large for the v2 kernels: one row of their shared tiles needs "
                         f"{row_bytes} bytes in {dtype}, more than the {_common.STATIC_SHARED_BYTES} bytes of "
                         f"shared memory a block may use")
    return min(block_size, fit)


@functools.lru_cache(maxsize=None)
def _flash_kernels(dtype, block, tile, d):
    """The v2 kernels (forward, backward_dq, backward_dkdv) for one (dtype, block size, tile rows, head dim)."""
    nb = numba.from_dtype(dtype)
    ZERO, ONE, NEG_INF = dtype.type(0), dtype.type(1), dtype.type(-np.inf)
    dot = _dot(dtype)

    @cuda.jit(device=True)
    def load_tile(src, b, h, r0, dst, t):
        """dst[r, c] = src[b, h, r0 + r, c] for the tile's rows (zeros past the end), copied by all threads:
        thread t copies elements t, t + block, ... of the flattened (tile, D) tile (coalesced)."""
        n_rows = src.shape[2]
        for e in range(t, tile * d, block):
            r, c = e // d, e % d
            dst[r, c] = src[b, h, r0 + r, c] if r0 + r < n_rows else ZERO

    @cuda.jit
    def forward(q, k, v, pad, has_pad, causal, scale, o, lse):
        """Grid (B * H, query tiles); thread t owns query row i = i0 + t. K, V tiles in shared memory."""
        n_head, tq = q.shape[1], q.shape[2]
        tk = k.shape[2]
        shift = tk - tq
        t = cuda.threadIdx.x
        b, h = cuda.blockIdx.x // n_head, cuda.blockIdx.x % n_head
        hk = h // (n_head // k.shape[1])                      # the key/value head of query head h
        i0 = cuda.blockIdx.y * block
        i = i0 + t
        k_tile = cuda.shared.array((tile, d), nb)             # (tile, D)
        v_tile = cuda.shared.array((tile, d), nb)             # (tile, D)
        q_row = cuda.local.array(d, nb)                       # scaled query row
        acc = cuda.local.array(d, nb)                         # unnormalised output row
        for c in range(d):
            q_row[c] = q[b, h, i, c] * scale if i < tq else ZERO
            acc[c] = ZERO
        m = NEG_INF
        l = ZERO
        k_end = min(tk, i0 + block + shift) if causal else tk  # later keys are hidden from the whole block
        for j0 in range(0, k_end, tile):
            cuda.syncthreads()                                # previous tile fully used
            load_tile(k, b, hk, j0, k_tile, t)
            load_tile(v, b, hk, j0, v_tile, t)
            cuda.syncthreads()
            if i < tq:
                for jj in range(min(tile, tk - j0)):
                    if _visible(pad, has_pad, causal, b, i, j0 + jj, shift):
                        s = dot(q_row, k_tile[jj])
                        if s > m:                             # new max: rescale what we have
                            alpha = math.exp(m - s)           # exp(-inf) = 0 for the first key
                            l = l * alpha + ONE
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
                o[b, h, i, c] = acc[c] / l if l > ZERO else ZERO
            lse[b, h, i] = m + math.log(l) if l > ZERO else NEG_INF

    @cuda.jit
    def backward_dq(q, k, v, o, lse, do, pad, has_pad, causal, scale, dq):
        """Grid (B * H, query tiles); thread t owns query row i = i0 + t. K, V tiles in shared memory."""
        n_head, tq = q.shape[1], q.shape[2]
        tk = k.shape[2]
        shift = tk - tq
        t = cuda.threadIdx.x
        b, h = cuda.blockIdx.x // n_head, cuda.blockIdx.x % n_head
        hk = h // (n_head // k.shape[1])                      # the key/value head of query head h
        i0 = cuda.blockIdx.y * block
        i = i0 + t
        k_tile = cuda.shared.array((tile, d), nb)             # (tile, D)
        v_tile = cuda.shared.array((tile, d), nb)             # (tile, D)
        q_row = cuda.local.array(d, nb)                       # scaled query row
        do_row = cuda.local.array(d, nb)
        acc = cuda.local.array(d, nb)                         # dQ_i / scale
        di = ZERO                                             # D_i = dO_i . O_i
        row_lse = ZERO
        if i < tq:
            for c in range(d):
                q_row[c] = q[b, h, i, c] * scale
                do_row[c] = do[b, h, i, c]
                acc[c] = ZERO
                di += do_row[c] * o[b, h, i, c]
            row_lse = lse[b, h, i]
        k_end = min(tk, i0 + block + shift) if causal else tk
        for j0 in range(0, k_end, tile):
            cuda.syncthreads()
            load_tile(k, b, hk, j0, k_tile, t)
            load_tile(v, b, hk, j0, v_tile, t)
            cuda.syncthreads()
            if i < tq:
                for jj in range(min(tile, tk - j0)):
                    if _visible(pad, has_pad, causal, b, i, j0 + jj, shift):
                        p = math.exp(dot(q_row, k_tile[jj]) - row_lse)
                        ds = p * (dot(do_row, v_tile[jj]) - di)
                        for c in range(d):
                            acc[c] += ds * k_tile[jj, c]
        if i < tq:
            for c in range(d):
                dq[b, h, i, c] = acc[c] * scale

    @cuda.jit
    def backward_dkdv(q, k, v, o, lse, do, pad, has_pad, causal, scale, dk, dv):
        """Grid (B * Hkv, key tiles); thread t owns key row j = j0 + t. Q, dO, lse, D tiles in shared memory,
        those of each query head of the key/value head's group in turn."""
        n_head, tq = q.shape[1], q.shape[2]
        n_kv_head, tk = k.shape[1], k.shape[2]
        group = n_head // n_kv_head
        shift = tk - tq
        t = cuda.threadIdx.x
        b, hk = cuda.blockIdx.x // n_kv_head, cuda.blockIdx.x % n_kv_head
        j0 = cuda.blockIdx.y * block
        j = j0 + t
        q_tile = cuda.shared.array((tile, d), nb)             # (tile, D)
        do_tile = cuda.shared.array((tile, d), nb)            # (tile, D)
        lse_tile = cuda.shared.array(tile, nb)
        d_tile = cuda.shared.array(tile, nb)                  # D_i = dO_i . O_i
        k_row = cuda.local.array(d, nb)                       # scaled key row
        v_row = cuda.local.array(d, nb)
        dk_acc = cuda.local.array(d, nb)                      # dK_j / scale
        dv_acc = cuda.local.array(d, nb)
        for c in range(d):
            k_row[c] = k[b, hk, j, c] * scale if j < tk else ZERO
            v_row[c] = v[b, hk, j, c] if j < tk else ZERO
            dk_acc[c] = ZERO
            dv_acc[c] = ZERO
        i_start = max(0, j0 - shift) if causal else 0         # earlier queries see none of these keys
        for h in range(hk * group, hk * group + group):
            for i0 in range(i_start, tq, tile):
                cuda.syncthreads()
                load_tile(q, b, h, i0, q_tile, t)
                load_tile(do, b, h, i0, do_tile, t)
                if t < tile:                                  # lse_i and D_i, a thread per row (tile <= block)
                    i = i0 + t
                    lse_tile[t] = lse[b, h, i] if i < tq else ZERO
                    d_tile[t] = dot(do[b, h, i], o[b, h, i]) if i < tq else ZERO
                cuda.syncthreads()
                if j < tk:
                    for ii in range(min(tile, tq - i0)):
                        if _visible(pad, has_pad, causal, b, i0 + ii, j, shift):
                            p = math.exp(dot(q_tile[ii], k_row) - lse_tile[ii])
                            ds = p * (dot(do_tile[ii], v_row) - d_tile[ii])
                            for c in range(d):
                                dv_acc[c] += p * do_tile[ii, c]
                                dk_acc[c] += ds * q_tile[ii, c]
        if j < tk:
            for c in range(d):
                dk[b, hk, j, c] = dk_acc[c] * scale
                dv[b, hk, j, c] = dv_acc[c]

    return forward, backward_dq, backward_dkdv


# ------------------------------------------------------------------- host


def _prepare(q, others, key_padding_mask, scale, block_size, max_block_size=_common.MAX_THREADS_PER_BLOCK, why=""):
    """Check the inputs and move them to the device.

    ``others``: name -> array for k, v and (backward) o, lse, do, in the kernels' argument order.
    ``max_block_size``: the most threads per block the version's kernels can launch (``why``: the reason, for
    the message). Returns (device arrays [q, *others], pad, has_pad, scale as a dtype scalar, dtype).
    """
    _common.check_block_size("block_size", block_size, limit=max_block_size, why=why)
    dtype = _common.check_float(q=q, **others)
    _common.check_shape("q", q, (None,) * 4, "(B, H, Tq, D)")
    batch, heads, tq, d = q.shape
    _common.check_shape("k", others["k"], (batch, None, None, d), "(B, Hkv, Tk, D)")
    kv_heads, tk = others["k"].shape[1], others["k"].shape[2]
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"q's head count H={heads} must be a multiple of k's and v's Hkv={kv_heads} (grouped-query "
                         f"attention); got q {tuple(q.shape)}, k {tuple(others['k'].shape)}")
    for name, shape, symbols in (("v", (batch, kv_heads, tk, d), "(B, Hkv, Tk, D)"), ("o", q.shape, "(B, H, Tq, D)"),
                                 ("lse", (batch, heads, tq), "(B, H, Tq)"), ("do", q.shape, "(B, H, Tq, D)")):
        if name in others:
            _common.check_shape(name, others[name], shape, symbols)
    pad, has_pad = _common.padding_on_device(key_padding_mask, batch, tk)
    device = [_common.to_device(a) for a in (q, *others.values())]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    return device, pad, has_pad, dtype.type(scale), dtype


def _rows_grid(rows, block_size):
    """(blocks, threads) for one thread per row."""
    return (rows + block_size - 1) // block_size, block_size


def _tiles_grid(batch_heads, rows, block_size):
    """(grid, threads) for one block per (b, h) and tile of block_size rows."""
    return (batch_heads, (rows + block_size - 1) // block_size), block_size


_V2_WHY = (f": the v2 kernels keep a head-dim row (or two) per thread in registers, up to "
           f"{_common.MAX_REGISTERS_PER_THREAD} registers per thread, and a block has "
           f"{_common.REGISTERS_PER_BLOCK} registers (see kernels/cuda/attention.py)")


def attention_forward_v1(q, k, v, key_padding_mask=None, causal=False, scale=None, block_size=128):
    """Naive attention forward, one thread per query row. Returns (o, lse)."""
    (d_q, d_k, d_v), pad, has_pad, scale, dtype = _prepare(q, {"k": k, "v": v}, key_padding_mask, scale,
                                                           block_size)
    batch, heads, tq, d = d_q.shape
    o = _common.device_empty((batch, heads, tq, d), dtype)
    lse = _common.device_empty((batch, heads, tq), dtype)
    forward, _, _ = _v1_kernels(dtype)
    forward[_rows_grid(batch * heads * tq, block_size)](d_q, d_k, d_v, pad, has_pad, bool(causal), scale, o, lse)
    return _common.like_input([o, lse], q)


def attention_backward_v1(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None, block_size=128):
    """Naive attention backward: a thread per query row for dQ, per key row for dK, dV. Returns (dq, dk, dv)."""
    device, pad, has_pad, scale, dtype = _prepare(q, {"k": k, "v": v, "o": o, "lse": lse, "do": do},
                                                  key_padding_mask, scale, block_size)
    d_q, d_k = device[0], device[1]
    batch, heads, tq, _ = d_q.shape
    kv_heads, tk = d_k.shape[1], d_k.shape[2]
    dq = _common.device_empty(d_q.shape, dtype)
    dk = _common.device_empty(d_k.shape, dtype)
    dv = _common.device_empty(d_k.shape, dtype)
    _, backward_dq, backward_dkdv = _v1_kernels(dtype)
    backward_dq[_rows_grid(batch * heads * tq, block_size)](*device, pad, has_pad, bool(causal), scale, dq)
    backward_dkdv[_rows_grid(batch * kv_heads * tk, block_size)](*device, pad, has_pad, bool(causal), scale, dk, dv)
    return _common.like_input([dq, dk, dv], q)


def attention_forward_v2(q, k, v, key_padding_mask=None, causal=False, scale=None, block_size=64):
    """Flash-style forward: query tiles per block, K/V tiles in shared memory, online softmax. Returns (o, lse).

    ``block_size``: threads (query rows) per block, at most V2_MAX_BLOCK_SIZE = 256 (see the module docstring
    on registers); the K/V tiles have as many rows or fewer (see the module docstring on shared memory).
    """
    (d_q, d_k, d_v), pad, has_pad, scale, dtype = _prepare(q, {"k": k, "v": v}, key_padding_mask, scale,
                                                           block_size, V2_MAX_BLOCK_SIZE, _V2_WHY)
    batch, heads, tq, d = d_q.shape
    o = _common.device_empty((batch, heads, tq, d), dtype)
    lse = _common.device_empty((batch, heads, tq), dtype)
    forward, _, _ = _flash_kernels(dtype, block_size, _flash_tile(block_size, d, dtype), d)
    forward[_tiles_grid(batch * heads, tq, block_size)](d_q, d_k, d_v, pad, has_pad, bool(causal), scale, o, lse)
    return _common.like_input([o, lse], q)


def attention_backward_v2(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None, block_size=64):
    """Flash-style backward: one tiled kernel for dQ, one for dK and dV. Returns (dq, dk, dv).

    ``block_size`` as in attention_forward_v2.
    """
    device, pad, has_pad, scale, dtype = _prepare(q, {"k": k, "v": v, "o": o, "lse": lse, "do": do},
                                                  key_padding_mask, scale, block_size, V2_MAX_BLOCK_SIZE, _V2_WHY)
    d_q, d_k = device[0], device[1]
    batch, heads, tq, d = d_q.shape
    kv_heads, tk = d_k.shape[1], d_k.shape[2]
    dq = _common.device_empty(d_q.shape, dtype)
    dk = _common.device_empty(d_k.shape, dtype)
    dv = _common.device_empty(d_k.shape, dtype)
    _, backward_dq, backward_dkdv = _flash_kernels(dtype, block_size, _flash_tile(block_size, d, dtype), d)
    backward_dq[_tiles_grid(batch * heads, tq, block_size)](*device, pad, has_pad, bool(causal), scale, dq)
    backward_dkdv[_tiles_grid(batch * kv_heads, tk, block_size)](*device, pad, has_pad, bool(causal), scale, dk, dv)
    return _common.like_input([dq, dk, dv], q)



def _signatures(dtype):
    """Argument types of the (forward, backward_dq, backward_dkdv) kernels, v1 and v2 alike."""
    def a(ndim):
        return _common.array_type(dtype, ndim)

    flags = (types.boolean, types.boolean, numba.from_dtype(dtype))                  # has_pad, causal, scale
    mask = _common.array_type(np.bool_, 2)
    forward = (a(4), a(4), a(4), mask) + flags + (a(4), a(3))
    backward = (a(4), a(4), a(4), a(4), a(3), a(4), mask) + flags + (a(4),)
    return forward, backward, backward + (a(4),)


KERNEL_NAMES = ("attention_forward", "attention_backward_dq", "attention_backward_dkdv")


def _v1_builds(dtype):
    """v1's ``builds`` (kernels/versions.py): one compilation per dtype, launched with up to 1024 threads."""
    dtype = np.dtype(dtype)
    return [(f"{name}_v1", kernel, signature, _common.MAX_THREADS_PER_BLOCK)
            for name, kernel, signature in zip(KERNEL_NAMES, _v1_kernels(dtype), _signatures(dtype))]


def _v2_builds(dtype, head_dims=(64, 128)):
    """v2's ``builds``: compiled per (block, tile, D); at V2_MAX_BLOCK_SIZE, whose tiles are the largest."""
    dtype = np.dtype(dtype)
    builds = []
    for d in head_dims:
        block = V2_MAX_BLOCK_SIZE
        tile = _flash_tile(block, d, dtype)
        kernels = _flash_kernels(dtype, block, tile, d)
        builds += [(f"{name}_v2 d={d} block={block} tile={tile}", kernel, signature, block)
                   for name, kernel, signature in zip(KERNEL_NAMES, kernels, _signatures(dtype))]
    return builds

VERSIONS = registry(
    Version("v1", "naive port of the reference: one thread per row, operands from global memory", None,
            builds=_v1_builds, attention_forward=attention_forward_v1, attention_backward=attention_backward_v1),
    Version("v2", "flash-style: a block per row tile, K/V (or Q/dO) tiles in shared memory, online softmax",
            "v1", builds=_v2_builds, attention_forward=attention_forward_v2, attention_backward=attention_backward_v2),
)
