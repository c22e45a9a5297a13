"""Numba CPU attention, flash-style: tiles, an online softmax, no (Tq, Tk) score matrix.

Conventions as in kernels.reference (its ``attention_forward`` / ``attention_backward`` are the compact
statement of the math; tutorial 04 derives the backward):

    S = scale * Q K^T (masked -> -inf),  P = softmax(S),  O = P V,  lse_i = log sum_j exp(S_ij)

Grouped-query attention: k and v may have fewer heads than q, Hkv with H a multiple of Hkv; query head h
reads key/value head h // (H / Hkv) in place (no repeated copy), and the backward sums dK, dV over each
key/value head's group of query heads.

Key padding, two versions (see VERSIONS at the end):
  v1  adds a bias (0 or -inf) to every score and skips the key tiles after a sequence's last real key;
  v2  (the default) first gathers each sequence's real keys into contiguous rows (``_compact_keys``), so the
      tiles hold real keys only: no padded key is multiplied, no bias is added, and only the causal cut is
      left to mask (key position p is visible to query i iff p <= i + Tk - Tq, counted per row by a binary
      search over the real keys' positions, ``_visible_counts``). The backward scatters dK, dV back to
      the keys' positions; padded keys get 0. The gathered copies add O(B Hkv Tk D) memory, k's and v's size.
Either way a sequence with every key padded costs nothing but writing its zeros.

v3 (the default) is v2 with every block product one call of ``_blas.gemm``, straight into NumPy's OpenBLAS
on the operands where they lie: the heads that the layers split from a (B, T, H*D) array are strided views,
read in place, not copied to (B, H, T, D) first; outputs and gradients are written laid out (B, T, H, D), so
the layers merge heads again with a view; the scale rides in the product's alpha, and the sums (acc += P V,
dK, dV, dQ over key tiles) are made by the product itself (beta = 1), not through a temporary. Its
backward walks query tiles outermost, each over only the keys it sees, so a causal backward skips the
tiles above the diagonal as the forward does (v1 and v2 walk key tiles outermost and, with one key tile,
multiply every query by every key).

Forward: one parallel task per (batch, head, query tile). The task walks over key tiles keeping a running
max m, running sum l and an unnormalised output acc (the "online softmax"):

    m' = max(m, max_j S_ij),  alpha = exp(m - m'),  P_ij = exp(S_ij - m')
    l' = alpha l + sum_j P_ij,  acc' = alpha acc + P V_tile

and finishes with O = acc / l, lse = m + log l. Extra memory per task is O(block_q * (block_k + D)).
Each score row of a tile takes two passes: (v1: padding bias,) causal cut and max in one (``_add_bias_max``,
v2 ``_max_visible``), exp and sum in the other (``_exp_sum``). The default tiles (128 queries x 256 keys) keep a tile's scores,
128 KiB in float32, in the L2 cache; larger key tiles mean fewer rescalings of acc.

Backward: one task per (batch, key/value head). For each key tile it loops over the group's query heads and
their query tiles, rebuilds P = exp(S - lse), accumulates dK, dV of the key tile locally and adds the dQ
contribution into the task's own rows of dq. Extra memory per task is O(g * T * D) (the scaled queries and
D_i of its g query heads).

    dV = P^T dO,  dS = P * (dO V^T - D_i),  D_i = sum_d dO_id O_id,  dQ = scale dS K,  dK = scale dS^T Q

Block products are BLAS calls on the task's own thread: ``np.dot`` inside njit in v1 and v2
(``_common.one_blas_thread_per_task``), ``_blas.gemm`` in v3 (``blas_threads.one_thread``).
"""
import math

import numba
import numpy as np

from kernels import blas_threads
from kernels.cpu import _blas, _common
from kernels.cpu._common import FASTMATH, exp32
from kernels.versions import Version, registry


@numba.njit(fastmath=FASTMATH)   # not inlined, like _common.exp_inplace
def _add_bias_max(row, bias, n_visible, m):
    """In one pass: row[j] += bias[j] for j < n_visible, row[j] = -inf after (hidden keys); returns the max of
    m and the row (m, of the row's dtype, keeps the arithmetic in that dtype).

    ``bias`` is 0 for a real key and -inf for a padded one; ``n_visible`` may be <= 0 (all hidden).
    """
    n = row.shape[0]
    for j in range(max(n_visible, 0)):
        x = row[j] + bias[j]
        row[j] = x
        m = max(m, x)
    for j in range(max(n_visible, 0), n):
        row[j] = -np.inf
    return m


@numba.njit(fastmath=FASTMATH)
def _exp_sum(row, shift, n_visible):
    """In one pass: row[j] = exp(row[j] - shift) for j < n_visible, 0 after; returns the sum (-inf -> 0)."""
    n = row.shape[0]
    total = 0.0
    if row.itemsize == 4:
        for j in range(max(n_visible, 0)):
            e = exp32(row[j] - shift)
            row[j] = e
            total += e
    else:
        for j in range(max(n_visible, 0)):
            e = math.exp(row[j] - shift)
            row[j] = e
            total += e
    for j in range(max(n_visible, 0), n):
        row[j] = 0.0
    return total


@numba.njit
def _query_tile(task, n_head, n_qtiles, group, block_q, tq):
    """(b, h, hk, i0, i1) of forward task number ``task`` (tasks run over batch, head, query tile): its batch
    b, query head h, the key/value head hk that h reads (grouped-query attention: h // group) and its query
    rows [i0, i1)."""
    b = task // (n_head * n_qtiles)
    h = (task // n_qtiles) % n_head
    i0 = (task % n_qtiles) * block_q
    return b, h, h // group, i0, min(i0 + block_q, tq)


@numba.njit(fastmath=FASTMATH)
def _keys_in_use(pad_row):
    """1 + the index of the last real (unpadded) key, 0 if every key is padded: the tiles past it are skipped."""
    for j in range(pad_row.shape[0] - 1, -1, -1):
        if not pad_row[j]:
            return j + 1
    return 0


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _attention_forward(q, k, v, pad, causal, scale, block_q, block_k, o, lse):
    """Flash-style forward. q (B, H, Tq, D), k/v (B, Hkv, Tk, D), pad (B, Tk); writes o, lse."""
    n_batch, n_head, tq, d = q.shape
    n_kv_head, tk = k.shape[1], k.shape[2]
    group = n_head // n_kv_head                       # query heads per key/value head (grouped-query attention)
    shift = tk - tq                                   # causal: key j visible to query i iff j <= i + shift
    n_qtiles = (tq + block_q - 1) // block_q
    for task in numba.prange(n_batch * n_head * n_qtiles):
        b, h, hk, i0, i1 = _query_tile(task, n_head, n_qtiles, group, block_q, tq)
        nq = i1 - i0
        qs = q[b, h, i0:i1] * scale                   # (nq, D)
        key_bias = np.where(pad[b], -np.inf, 0.0).astype(q.dtype)  # -inf on padded keys   (Tk,)
        m = np.full(nq, -np.inf, dtype=q.dtype)       # running max      (nq,)
        l = np.zeros(nq, dtype=q.dtype)               # running sum      (nq,)
        acc = np.zeros((nq, d), dtype=q.dtype)        # unnormalised O   (nq, D)
        k_end = min(tk, i1 + shift) if causal else tk
        k_end = min(k_end, _keys_in_use(pad[b]))      # trailing padded keys: their tiles are skipped
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, k_end)
            s = np.dot(qs, k[b, hk, j0:j1].T)         # (nq, nk)
            for i in range(nq):
                row = s[i]
                n_visible = min(j1, i0 + i + shift + 1) - j0 if causal else j1 - j0   # keys past i + shift hidden
                m_new = _add_bias_max(row, key_bias[j0:j1], n_visible, m[i])
                if m_new == -np.inf:                  # every key so far masked: P = 0
                    row[:] = 0.0
                else:
                    alpha = np.exp(m[i] - m_new)      # exp(-inf) = 0 on the first visible tile
                    l[i] = alpha * l[i] + _exp_sum(row, m_new, n_visible)
                    acc[i] *= alpha
                    m[i] = m_new
            acc += np.dot(s, v[b, hk, j0:j1])         # (nq, D)
        for i in range(nq):
            if l[i] == 0.0:                           # fully masked row
                o[b, h, i0 + i] = 0.0
                lse[b, h, i0 + i] = -np.inf
            else:
                o[b, h, i0 + i] = acc[i] / l[i]
                lse[b, h, i0 + i] = m[i] + np.log(l[i])


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _attention_backward(q, k, v, o, lse, do, pad, causal, scale, block_q, block_k, dq, dk, dv):
    """Flash-style backward, one task per (batch, key/value head) and its group of query heads; writes dq, dk, dv."""
    n_batch, n_head, tq, d = q.shape
    n_kv_head, tk = k.shape[1], k.shape[2]
    group = n_head // n_kv_head
    shift = tk - tq
    for task in numba.prange(n_batch * n_kv_head):
        b = task // n_kv_head
        hk = task % n_kv_head
        h0 = hk * group                                            # query heads h0 ... h0 + group - 1
        qs = q[b, h0:h0 + group] * scale                           # (g, Tq, D)
        key_bias = np.where(pad[b], -np.inf, 0.0).astype(q.dtype)  # -inf on padded keys   (Tk,)
        di = np.empty((group, tq), dtype=q.dtype)                  # D_i = sum_d dO_id O_id  (g, Tq)
        for g in range(group):
            for i in range(tq):
                di[g, i] = np.dot(do[b, h0 + g, i], o[b, h0 + g, i])
        dq[b, h0:h0 + group] = 0.0
        n_keys = _keys_in_use(pad[b])                              # later keys are padding: zero gradients
        for j0 in range(0, n_keys, block_k):
            j1 = min(j0 + block_k, n_keys)
            kt = k[b, hk, j0:j1]                                   # (nk, D)
            vt = v[b, hk, j0:j1]                                   # (nk, D)
            dk_t = np.zeros((j1 - j0, d), dtype=q.dtype)           # summed over the group's heads  (nk, D)
            dv_t = np.zeros((j1 - j0, d), dtype=q.dtype)           # (nk, D)
            i_start = max(0, j0 - shift) if causal else 0          # earlier queries cannot see this tile
            for g in range(group):
                h = h0 + g
                for i0 in range(i_start, tq, block_q):
                    i1 = min(i0 + block_q, tq)
                    p = np.dot(qs[g, i0:i1], kt.T)                 # S, then P   (nq, nk)
                    for i in range(i1 - i0):
                        row = p[i]
                        if lse[b, h, i0 + i] == -np.inf:           # no visible key in the whole row: P = 0
                            row[:] = 0.0
                            continue
                        n_visible = min(j1, i0 + i + shift + 1) - j0 if causal else j1 - j0
                        _add_bias_max(row, key_bias[j0:j1], n_visible, lse[b, h, i0 + i])  # max unused here
                        _exp_sum(row, lse[b, h, i0 + i], n_visible)  # P = exp(S - lse)
                    dv_t += np.dot(p.T, do[b, h, i0:i1])           # (nk, D)
                    ds = np.dot(do[b, h, i0:i1], vt.T)             # dP, then dS (nq, nk)
                    for i in range(i1 - i0):
                        for j in range(j1 - j0):
                            ds[i, j] = p[i, j] * (ds[i, j] - di[g, i0 + i])
                    dq[b, h, i0:i1] += np.dot(ds, kt)              # (nq, D), scaled below
                    dk_t += np.dot(ds.T, qs[g, i0:i1])             # (nk, D), scale is inside qs
            dk[b, hk, j0:j1] = dk_t
            dv[b, hk, j0:j1] = dv_t
        dk[b, hk, n_keys:] = 0.0
        dv[b, hk, n_keys:] = 0.0
        dq[b, h0:h0 + group] *= scale


def _padding(key_padding_mask, batch, tk):
    """(B, Tk) bool array, all False when no mask is given."""
    if key_padding_mask is None:
        return np.zeros((batch, tk), dtype=bool)
    return np.ascontiguousarray(key_padding_mask, dtype=bool).reshape(batch, tk)


def _checked(scale, q, k, v, *more):
    """(dtype, scale in that dtype) for the operands of a kernel call, after checking them: one float dtype
    for all, q (B, H, Tq, D) and k, v (B, Hkv, Tk, D) with H a multiple of Hkv (a clear error otherwise);
    scale None means 1 / sqrt(D)."""
    dtype = _common.check_float(q, k, v, *more)
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or k.shape[::3] != q.shape[::3] or k.shape[1] < 1 \
            or q.shape[1] % k.shape[1]:
        raise ValueError(f"attention: expected q (B, H, Tq, D) and k, v (B, Hkv, Tk, D) with H a multiple of Hkv, "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    return dtype, dtype.type(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)


def attention_forward(q, k, v, key_padding_mask=None, causal=False, scale=None, block_q=128, block_k=256):
    """Tiled attention forward with online softmax (see reference.attention_forward).

    O = softmax(scale * Q K^T, masked) V,   lse_i = log sum_j exp(S_ij)

    q (B, H, Tq, D); k, v (B, Hkv, Tk, D), query head h reading key/value head h // (H / Hkv) (grouped-query
    attention when Hkv < H, never a repeated copy of k and v). Returns (o, lse) with o (B, H, Tq, D) and
    lse (B, H, Tq). A fully masked row gives o = 0, lse = -inf. Extra memory: O(block_q * (block_k + D)) per
    task, i.e. O(B * H * T) in total, never O(T^2).
    """
    dtype, scale = _checked(scale, q, k, v)
    batch, heads, tq, d = q.shape
    o = _common.empty((batch, heads, tq, d), dtype)
    lse = _common.empty((batch, heads, tq), dtype)
    with _common.one_blas_thread_per_task():
        _attention_forward(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v),
                           _padding(key_padding_mask, batch, k.shape[2]), bool(causal), scale,
                           block_q, block_k, o, lse)
    return o, lse


def attention_backward(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None,
                       block_q=128, block_k=256):
    """Tiled attention backward recomputing P = exp(S - lse) (see reference.attention_backward).

    dV = P^T dO,  dS = P * (dO V^T - D_i),  D_i = sum_d dO_id O_id,
    dQ = scale dS K,  dK = scale dS^T Q

    Returns (dq, dk, dv) shaped like (q, k, v); with grouped-query attention dK and dV of a key/value head
    are summed over its group of query heads. Fully masked rows get zero gradients.
    """
    dtype, scale = _checked(scale, q, k, v, o, lse, do)
    batch = q.shape[0]
    dq = _common.empty(q.shape, dtype)
    dk = _common.empty(k.shape, dtype)
    dv = _common.empty(v.shape, dtype)
    c = np.ascontiguousarray
    with _common.one_blas_thread_per_task():
        _attention_backward(c(q), c(k), c(v), c(o), c(lse), c(do), _padding(key_padding_mask, batch, k.shape[2]),
                            bool(causal), scale, block_q, block_k, dq, dk, dv)
    return dq, dk, dv


# ------------------------------------------------------------- v2: the padded keys compacted away


def _compact_keys(k, v, key_padding_mask):
    """Each sequence's real keys first: (kc, vc, keys, n_real).

    keys (B, Tk): keys[b, :n_real[b]] are the positions of sequence b's real (unpadded) keys, ascending;
    kc, vc (B, Hkv, Tk, D) hold k and v at those positions (rows past n_real[b] are padding, never read).
    Without a padded key, k and v themselves (no copy).
    """
    batch, _, tk, _ = k.shape
    pad = _padding(key_padding_mask, batch, tk)
    if not pad.any():
        return k, v, np.tile(np.arange(tk), (batch, 1)), np.full(batch, tk)
    keys = np.argsort(pad, axis=1, kind="stable")          # False (real) before True (padded), each in order
    n_real = tk - pad.sum(axis=1)
    kc, vc = np.empty_like(k), np.empty_like(v)
    _gather_rows(k, v, keys, n_real, kc, vc)
    return kc, vc, keys, n_real


@numba.njit(parallel=True, cache=True)
def _gather_rows(k, v, keys, n_real, kc, vc):
    """kc[b, h, j] = k[b, h, keys[b, j]] (and vc from v) for j < n_real[b]: whole rows, in parallel."""
    n_batch, n_kv_head = k.shape[0], k.shape[1]
    for task in numba.prange(n_batch * n_kv_head):
        b, h = task // n_kv_head, task % n_kv_head
        for j in range(n_real[b]):
            kc[b, h, j] = k[b, h, keys[b, j]]
            vc[b, h, j] = v[b, h, keys[b, j]]


@numba.njit
def _visible_counts(real_keys, first, n_rows, causal):
    """(n_rows,) how many of the real keys (positions ``real_keys``, ascending) each of n_rows query rows sees:
    all of them, or if causal those at positions <= first + r for row r (first = i0 + Tk - Tq)."""
    if not causal:
        return np.full(n_rows, real_keys.shape[0])
    return np.searchsorted(real_keys, np.arange(first, first + n_rows), side="right")


@numba.njit(fastmath=FASTMATH)
def _max_visible(row, n_visible, m):
    """max(m, row[0], ..., row[n_visible - 1]); n_visible may be <= 0 (then m)."""
    for j in range(max(n_visible, 0)):
        m = max(m, row[j])
    return m


@numba.njit(fastmath=FASTMATH)
def _online_softmax_step(s, visible, j0, j1, m, l, acc):
    """One key tile [j0, j1) of the online softmax (v2, v3), for each row i of the tile's scores s (nq, nk):
    s becomes P = exp(S - m') in place (0 on the keys past visible[i]), and the row's running max m, sum l
    and unnormalised output acc move to the new max m'. A row that sees no key yet keeps P = 0."""
    for i in range(s.shape[0]):
        row = s[i]
        n_visible = min(j1, visible[i]) - j0
        m_new = _max_visible(row, n_visible, m[i])
        if m_new == -np.inf:                          # no key visible yet: P = 0
            row[:] = 0.0
        else:
            alpha = np.exp(m[i] - m_new)              # exp(-inf) = 0 on the first visible tile
            l[i] = alpha * l[i] + _exp_sum(row, m_new, n_visible)
            acc[i] *= alpha
            m[i] = m_new


@numba.njit(fastmath=FASTMATH)
def _finish_rows(acc, m, l, o, lse):
    """O = acc / l and lse = m + log l for each row (o, lse: the tile's rows of the outputs); a row that saw
    no key gets O = 0, lse = -inf."""
    for i in range(acc.shape[0]):
        if l[i] == 0.0:                               # fully masked row
            o[i] = 0.0
            lse[i] = -np.inf
        else:
            o[i] = acc[i] / l[i]
            lse[i] = m[i] + np.log(l[i])


@numba.njit(fastmath=FASTMATH)
def _probabilities(p, lse, visible, j0, j1):
    """P = exp(S - lse) in place of a key tile [j0, j1) of scores p (nq, nk), 0 on the keys past visible[i]."""
    for i in range(p.shape[0]):
        _exp_sum(p[i], lse[i], min(j1, visible[i]) - j0)


@numba.njit(fastmath=FASTMATH)
def _score_gradient(ds, p, di):
    """dS = P * (dP - D_i) in place of dP (nq, nk)."""
    for i in range(ds.shape[0]):
        for j in range(ds.shape[1]):
            ds[i, j] = p[i, j] * (ds[i, j] - di[i])


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _forward_compacted(q, kc, vc, keys, n_real, causal, scale, block_q, block_k, o, lse):
    """Flash-style forward over the real keys only. q (B, H, Tq, D), kc/vc (B, Hkv, Tk, D) and keys (B, Tk),
    n_real (B,) from _compact_keys; writes o, lse."""
    n_batch, n_head, tq, d = q.shape
    n_kv_head, tk = kc.shape[1], kc.shape[2]
    group = n_head // n_kv_head                       # query heads per key/value head
    shift = tk - tq                                   # causal: key position p visible to query i iff p <= i + shift
    n_qtiles = (tq + block_q - 1) // block_q
    for task in numba.prange(n_batch * n_head * n_qtiles):
        b, h, hk, i0, i1 = _query_tile(task, n_head, n_qtiles, group, block_q, tq)
        nq = i1 - i0
        qs = q[b, h, i0:i1] * scale                   # (nq, D)
        visible = _visible_counts(keys[b, :n_real[b]], i0 + shift, nq, causal)   # real keys each row sees (nq,)
        m = np.full(nq, -np.inf, dtype=q.dtype)       # running max      (nq,)
        l = np.zeros(nq, dtype=q.dtype)               # running sum      (nq,)
        acc = np.zeros((nq, d), dtype=q.dtype)        # unnormalised O   (nq, D)
        k_end = visible[nq - 1]                       # the last row sees the most
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, k_end)
            s = np.dot(qs, kc[b, hk, j0:j1].T)        # (nq, nk)
            _online_softmax_step(s, visible, j0, j1, m, l, acc)
            acc += np.dot(s, vc[b, hk, j0:j1])        # (nq, D)
        _finish_rows(acc, m, l, o[b, h, i0:i1], lse[b, h, i0:i1])


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _backward_compacted(q, kc, vc, o, lse, do, keys, n_real, causal, scale, block_q, block_k, dq, dk, dv):
    """Flash-style backward over the real keys only, one task per (batch, key/value head); writes dq, dk, dv
    (dk, dv rows of padded keys are 0)."""
    n_batch, n_head, tq, d = q.shape
    n_kv_head, tk = kc.shape[1], kc.shape[2]
    group = n_head // n_kv_head
    shift = tk - tq
    for task in numba.prange(n_batch * n_kv_head):
        b = task // n_kv_head
        hk = task % n_kv_head
        h0 = hk * group                                            # query heads h0 ... h0 + group - 1
        n = n_real[b]
        visible = _visible_counts(keys[b, :n], shift, tq, causal)  # real keys each query sees  (Tq,)
        qs = q[b, h0:h0 + group] * scale                           # (g, Tq, D)
        di = np.zeros((group, tq), dtype=q.dtype)                  # D_i = sum_d dO_id O_id  (g, Tq)
        for g in range(group):
            for i in range(tq):
                for c in range(d):                                 # a loop, not one BLAS call per row
                    di[g, i] += do[b, h0 + g, i, c] * o[b, h0 + g, i, c]
        dq[b, h0:h0 + group] = 0.0
        dk[b, hk] = 0.0
        dv[b, hk] = 0.0
        for j0 in range(0, n, block_k):
            j1 = min(j0 + block_k, n)
            kt = kc[b, hk, j0:j1]                                  # (nk, D)
            vt = vc[b, hk, j0:j1]                                  # (nk, D)
            dk_t = np.zeros((j1 - j0, d), dtype=q.dtype)           # summed over the group's heads  (nk, D)
            dv_t = np.zeros((j1 - j0, d), dtype=q.dtype)           # (nk, D)
            i_start = max(0, keys[b, j0] - shift) if causal else 0  # earlier queries cannot see this tile
            for g in range(group):
                h = h0 + g
                for i0 in range(i_start, tq, block_q):
                    i1 = min(i0 + block_q, tq)
                    p = np.dot(qs[g, i0:i1], kt.T)                 # S, then P   (nq, nk)
                    _probabilities(p, lse[b, h, i0:i1], visible[i0:i1], j0, j1)
                    dv_t += np.dot(p.T, do[b, h, i0:i1])           # (nk, D)
                    ds = np.dot(do[b, h, i0:i1], vt.T)             # dP, then dS (nq, nk)
                    _score_gradient(ds, p, di[g, i0:i1])
                    dq[b, h, i0:i1] += np.dot(ds, kt)              # (nq, D), scaled below
                    dk_t += np.dot(ds.T, qs[g, i0:i1])             # (nk, D), scale is inside qs
            for j in range(j1 - j0):                               # back to the keys' positions
                dk[b, hk, keys[b, j0 + j]] = dk_t[j]
                dv[b, hk, keys[b, j0 + j]] = dv_t[j]
        dq[b, h0:h0 + group] *= scale


def attention_forward_v2(q, k, v, key_padding_mask=None, causal=False, scale=None, block_q=128, block_k=256):
    """As ``attention_forward`` (v1), over each sequence's real keys only: k and v are first compacted so
    that the padded keys are neither multiplied nor masked. Returns (o, lse)."""
    dtype, scale = _checked(scale, q, k, v)
    batch, heads, tq, d = q.shape
    o = _common.empty((batch, heads, tq, d), dtype)
    lse = _common.empty((batch, heads, tq), dtype)
    c = np.ascontiguousarray
    kc, vc, keys, n_real = _compact_keys(c(k), c(v), key_padding_mask)
    with _common.one_blas_thread_per_task():
        _forward_compacted(c(q), kc, vc, keys, n_real, bool(causal), scale, block_q, block_k, o, lse)
    return o, lse


def attention_backward_v2(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None,
                          block_q=128, block_k=256):
    """As ``attention_backward`` (v1), over each sequence's real keys only (padded keys get dK = dV = 0).
    Returns (dq, dk, dv)."""
    dtype, scale = _checked(scale, q, k, v, o, lse, do)
    dq = _common.empty(q.shape, dtype)
    dk = _common.empty(k.shape, dtype)
    dv = _common.empty(v.shape, dtype)
    c = np.ascontiguousarray
    kc, vc, keys, n_real = _compact_keys(c(k), c(v), key_padding_mask)
    with _common.one_blas_thread_per_task():
        _backward_compacted(c(q), kc, vc, c(o), c(lse), c(do), keys, n_real, bool(causal), scale,
                            block_q, block_k, dq, dk, dv)
    return dq, dk, dv


# ------------------------------------------- v3: products straight into OpenBLAS, on the heads in place


def _heads_interleaved(batch, heads, t, d, dtype):
    """An empty (B, H, T, D) array laid out (B, T, H, D) in memory: the view of a contiguous (B, T, H, D).

    The layers split heads as x.reshape(B, T, H, D).permute(0, 2, 1, 3) and merge them back the same way, so
    an output (or gradient) in this layout turns into (B, T, H*D) as a view, with no copy."""
    return _common.empty((batch, t, heads, d), dtype).transpose(0, 2, 1, 3)


def _rows_in_place(x):
    """x itself when ``_blas.gemm`` can read its (T, D) slices in place (contiguous rows of D that do not
    overlap, whatever the strides of the batch and head axes), else a contiguous copy."""
    fits = x.strides[-1] == x.itemsize and x.strides[-2] >= x.shape[-1] * x.itemsize
    return x if fits else np.ascontiguousarray(x)


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _forward_in_place(q, kc, vc, keys, n_real, causal, scale, block_q, block_k, o, lse):
    """Flash-style forward over the real keys, as ``_forward_compacted``, with each product one ``gemm`` on
    the operands in place (q, kc, vc, o of any row strides): S = scale Q Kᵀ straight from q's rows, and
    acc += P V accumulated by the product itself. Writes o, lse."""
    n_batch, n_head, tq, d = q.shape
    n_kv_head, tk = kc.shape[1], kc.shape[2]
    group = n_head // n_kv_head                       # query heads per key/value head
    shift = tk - tq                                   # causal: key position p visible to query i iff p <= i + shift
    n_qtiles = (tq + block_q - 1) // block_q
    for task in numba.prange(n_batch * n_head * n_qtiles):
        b, h, hk, i0, i1 = _query_tile(task, n_head, n_qtiles, group, block_q, tq)
        nq = i1 - i0
        visible = _visible_counts(keys[b, :n_real[b]], i0 + shift, nq, causal)   # real keys each row sees (nq,)
        m = np.full(nq, -np.inf, dtype=q.dtype)       # running max      (nq,)
        l = np.zeros(nq, dtype=q.dtype)               # running sum      (nq,)
        acc = np.zeros((nq, d), dtype=q.dtype)        # unnormalised O   (nq, D)
        k_end = visible[nq - 1]                       # the last row sees the most
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, k_end)
            s = np.empty((nq, j1 - j0), dtype=q.dtype)
            _blas.gemm(q[b, h, i0:i1], kc[b, hk, j0:j1], s, scale, 0.0, False, True)   # S = scale Q Kᵀ (nq, nk)
            _online_softmax_step(s, visible, j0, j1, m, l, acc)
            _blas.gemm(s, vc[b, hk, j0:j1], acc, 1.0, 1.0, False, False)       # acc += P V   (nq, D)
        _finish_rows(acc, m, l, o[b, h, i0:i1], lse[b, h, i0:i1])


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _backward_in_place(q, kc, vc, o, lse, do, keys, n_real, causal, scale, block_q, block_k, dq, dk, dv):
    """Flash-style backward over the real keys, one task per (batch, key/value head): the group's query tiles
    outermost, each multiplied by only the key tiles it sees (a causal tile skips the keys after it); every
    product is one ``gemm`` on the operands in place, dQ written and dK, dV (n_real x D per task) summed by
    the products themselves. q, o, do, dq, dk, dv may have any row strides."""
    n_batch, n_head, tq, d = q.shape
    n_kv_head = kc.shape[1]
    group = n_head // n_kv_head
    shift = kc.shape[2] - tq
    for task in numba.prange(n_batch * n_kv_head):
        b = task // n_kv_head
        hk = task % n_kv_head
        n = n_real[b]
        visible = _visible_counts(keys[b, :n], shift, tq, causal)  # real keys each query sees  (Tq,)
        dk_acc = np.zeros((n, d), dtype=q.dtype)                   # summed over the group's heads  (n, D)
        dv_acc = np.zeros((n, d), dtype=q.dtype)                   # (n, D)
        for h in range(hk * group, (hk + 1) * group):
            for i0 in range(0, tq, block_q):
                i1 = min(i0 + block_q, tq)
                nq = i1 - i0
                qt, dot, dqt = q[b, h, i0:i1], do[b, h, i0:i1], dq[b, h, i0:i1]   # (nq, D) views
                di = np.zeros(nq, dtype=q.dtype)                   # D_i = sum_d dO_id O_id  (nq,)
                for i in range(nq):
                    for c in range(d):
                        di[i] += dot[i, c] * o[b, h, i0 + i, c]
                dqt[:] = 0.0
                for j0 in range(0, visible[i1 - 1], block_k):      # the tile's last query sees the most keys
                    j1 = min(j0 + block_k, visible[i1 - 1])
                    kt, vt = kc[b, hk, j0:j1], vc[b, hk, j0:j1]    # (nk, D)
                    p = np.empty((nq, j1 - j0), dtype=q.dtype)
                    _blas.gemm(qt, kt, p, scale, 0.0, False, True)              # S   (nq, nk)
                    _probabilities(p, lse[b, h, i0:i1], visible[i0:i1], j0, j1)
                    _blas.gemm(p, dot, dv_acc[j0:j1], 1.0, 1.0, True, False)    # dV += Pᵀ dO   (nk, D)
                    ds = np.empty((nq, j1 - j0), dtype=q.dtype)
                    _blas.gemm(dot, vt, ds, 1.0, 0.0, False, True)              # dP = dO Vᵀ  (nq, nk)
                    _score_gradient(ds, p, di)                                  # dS
                    _blas.gemm(ds, kt, dqt, scale, 1.0, False, False)           # dQ += scale dS K   (nq, D)
                    _blas.gemm(ds, qt, dk_acc[j0:j1], scale, 1.0, True, False)  # dK += scale dSᵀ Q  (nk, D)
        for j in range(n):                                         # back to the keys' positions
            dk[b, hk, keys[b, j]] = dk_acc[j]
            dv[b, hk, keys[b, j]] = dv_acc[j]
        for j in range(n, keys.shape[1]):                          # padded keys: zero gradients
            dk[b, hk, keys[b, j]] = 0.0
            dv[b, hk, keys[b, j]] = 0.0


def attention_forward_v3(q, k, v, key_padding_mask=None, causal=False, scale=None, block_q=64, block_k=256):
    """As ``attention_forward_v2``, with the products straight into NumPy's OpenBLAS (``_blas.gemm``) on q, k
    and v in place, whatever their strides (the heads split from a (B, T, H*D) array are a strided view), and
    o returned laid out (B, T, H, D) in memory (``_heads_interleaved``). Returns (o, lse)."""
    dtype, scale = _checked(scale, q, k, v)
    batch, heads, tq, d = q.shape
    o = _heads_interleaved(batch, heads, tq, d, dtype)
    lse = _common.empty((batch, heads, tq), dtype)
    kc, vc, keys, n_real = _compact_keys(_rows_in_place(k), _rows_in_place(v), key_padding_mask)
    with blas_threads.one_thread():
        _forward_in_place(_rows_in_place(q), kc, vc, keys, n_real, bool(causal), scale, block_q,
                          block_k, o, lse)
    return o, lse


def attention_backward_v3(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None,
                          block_q=64, block_k=256):
    """As ``attention_backward_v2``, with the products straight into NumPy's OpenBLAS on q, k, v, o and dO in
    place, query tiles outermost (a causal tile multiplies only the keys it sees), and dq, dk, dv returned
    laid out (B, T, H, D) in memory. Returns (dq, dk, dv)."""
    dtype, scale = _checked(scale, q, k, v, o, lse, do)
    dq = _heads_interleaved(*q.shape, dtype)
    dk = _heads_interleaved(*k.shape, dtype)
    dv = _heads_interleaved(*v.shape, dtype)
    kc, vc, keys, n_real = _compact_keys(_rows_in_place(k), _rows_in_place(v), key_padding_mask)
    r = _rows_in_place
    with blas_threads.one_thread():
        _backward_in_place(r(q), kc, vc, r(o), np.ascontiguousarray(lse), r(do), keys, n_real, bool(causal),
                           scale, block_q, block_k, dq, dk, dv)
    return dq, dk, dv


VERSIONS = registry(
    Version("v1", "flash-style tiles with an online softmax; block products through BLAS, one task per tile",
            None, attention_forward=attention_forward, attention_backward=attention_backward),
    Version("v2", "v1 over each sequence's real keys only: k, v compacted first, no padded key multiplied or masked",
            "v1", attention_forward=attention_forward_v2, attention_backward=attention_backward_v2),
    Version("v3", "v2 with each product one OpenBLAS call on the heads in place (no copies, sums by the product); "
            "backward by query tiles", "v2", attention_forward=attention_forward_v3,
            attention_backward=attention_backward_v3),
)
