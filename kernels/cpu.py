"""Numba CPU kernels: fused softmax, tiled (flash-style) attention, fused FFN.

Same signatures and conventions as ``kernels.reference`` (see its docstring);
the attention functions take two extra tuning knobs, ``block_q`` and
``block_k``, the query / key tile sizes.

Design
------
* Softmax: one parallel task per row; scale and mask are applied while the
  row is read, so no masked copy of the input is ever built.
* Attention forward: one task per (batch, head, query tile). The task walks
  over key tiles keeping a running max m, running sum l and an unnormalised
  output acc (the "online softmax"):

      m' = max(m, max_j S_ij),  alpha = exp(m - m'),  P_ij = exp(S_ij - m')
      l' = alpha l + sum_j P_ij,  acc' = alpha acc + P V_tile

  and finishes with O = acc / l, lse = m + log l. Extra memory per task is
  O(block_q * (block_k + D)); the (Tq, Tk) score matrix never exists.
* Attention backward: one task per (batch, head). For each key tile it loops
  over query tiles, rebuilds P = exp(S - lse), accumulates dK, dV of the key
  tile locally and adds the dQ contribution into the task's own rows of dq.
  Extra memory per task is O(T * D) (the scaled queries and D_i).
* Block products (Q K^T, P V, ...) are BLAS calls (``np.dot`` inside njit), each on the thread of its
  task (see ``_one_blas_thread_per_task``).
* exp: float32 uses ``_exp32``, a polynomial the compiler vectorises (``math.exp`` is a scalar
  library call, about 5x slower per element); float64 keeps ``math.exp``.
* FFN: the matmuls are NumPy/BLAS calls; bias + activation (forward) and
  activation + activation-derivative (backward) are fused into one pass each. For float32 the GELUs
  are vectorisable too: the normal CDF from A&S 7.1.26 and ``_exp32`` (``_normal_cdf_pdf32``), tanh
  through the logistic function; float64 keeps ``math.erf`` and ``math.exp``.

``fastmath`` is limited to flags that keep -inf meaningful: masked scores are
-inf, so "nnan"/"ninf" are never enabled.
"""
import contextlib
import ctypes
import glob
import math
import os

import numba
import numpy as np
import scipy

from kernels.reference import ACTIVATIONS

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def _empty(shape, dtype):
    """Allocate an output. Every output goes through here so tests can poison it with NaN."""
    return np.empty(shape, dtype=dtype)


def _check_float(*arrays):
    """All arrays share one float dtype (float32 or float64); return it."""
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"expected float32 or float64, got {dtype}")
    for a in arrays:
        if a.dtype != dtype:
            raise TypeError(f"mixed dtypes {dtype} and {a.dtype}")
    return dtype


# ------------------------------------------------------------------- exp

_LOG2_E = np.float32(1.0 / math.log(2.0))
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)   # ln 2 = hi + lo, hi exact in 9 bits
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7 = (np.float32(1.0 / math.factorial(i)) for i in range(8))


@numba.njit(fastmath=FASTMATH, inline="always")
def _exp32(x):
    """exp(x) for a float32 x, in operations the compiler can vectorise when it is called in a loop.

    ``math.exp`` on float32 is a scalar library call the compiler cannot vectorise (about 5x slower per
    element than NumPy's np.exp), so float32 uses

        exp(x) = 2^n exp(r),   n = round(x log2 e),   r = x - n ln 2  in [-ln2/2, ln2/2]

    with exp(r) from its degree-7 Taylor polynomial (truncation error < 6e-9, measured max relative error
    6e-8 against float64 exp) and 2^n written straight into a float's exponent bits, (n + 127) << 23.
    x is first clamped to [-88, 88]: below -88 (masked scores are -inf) n + 127 <= 0 and the result is an
    exact 0.
    """
    v = min(max(x, np.float32(-88.0)), np.float32(88.0))
    n = math.floor(v * _LOG2_E + np.float32(0.5))
    r = (v - n * _LN2_HI) - n * _LN2_LO
    p = ((((((_C7 * r + _C6) * r + _C5) * r + _C4) * r + _C3) * r + _C2) * r + _C1) * r + _C0
    two_to_n = np.int32(max(np.int32(n) + np.int32(127), np.int32(0)) << np.int32(23)).view(np.float32)
    return p * two_to_n


@numba.njit(fastmath=FASTMATH)  # not inline="always": inlined in a prange loop, Numba 0.68.1 miscompiled it
def _exp_inplace(x):
    """x[j] = exp(x[j]) along a 1-D array: ``_exp32`` for float32, ``math.exp`` for float64."""
    if x.itemsize == 4:
        for j in range(x.shape[0]):
            x[j] = _exp32(x[j])
    else:
        for j in range(x.shape[0]):
            x[j] = math.exp(x[j])


# ---------------------------------------------------------------- softmax


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _softmax_rows(x, scale, mask, out):
    """out[r] = softmax(scale * x[r] with mask[r] = True set to -inf); all-masked row -> 0."""
    rows, n = x.shape
    for r in numba.prange(rows):
        row = out[r]
        for j in range(n):
            row[j] = -np.inf if mask[r, j] else x[r, j] * scale
        m = row.max()
        if m == -np.inf:
            row[:] = 0.0
        else:
            row -= m
            _exp_inplace(row)
            z = 0.0
            for j in range(n):
                z += row[j]
            row *= 1.0 / z


def softmax(x, scale=1.0, mask=None):
    """Fused scale + mask + row softmax along the last axis (see reference.softmax).

    y_ij = exp(s_ij - m_i) / sum_j' exp(s_ij' - m_i),  s = scale * x (masked -> -inf)

    ``mask`` is bool, broadcastable to x, True = masked out. A fully masked
    row gives zeros.
    """
    dtype = _check_float(x)
    n = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, n)                             # (R, N)
    mask2 = np.zeros(x2.shape, dtype=bool)                                  # (R, N), one byte per score
    if mask is not None:
        mask2[...] = np.broadcast_to(mask, x.shape).reshape(-1, n)
    out = _empty(x2.shape, dtype)
    _softmax_rows(x2, dtype.type(scale), mask2, out)
    return out.reshape(x.shape)


# -------------------------------------------------------------- attention


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _attention_forward(q, k, v, pad, causal, scale, block_q, block_k, o, lse):
    """Flash-style forward. q (B, H, Tq, D), k/v (B, H, Tk, D), pad (B, Tk); writes o, lse."""
    n_batch, n_head, tq, d = q.shape
    tk = k.shape[2]
    shift = tk - tq                                   # causal: key j visible to query i iff j <= i + shift
    n_qtiles = (tq + block_q - 1) // block_q
    for task in numba.prange(n_batch * n_head * n_qtiles):
        b = task // (n_head * n_qtiles)
        h = (task // n_qtiles) % n_head
        i0 = (task % n_qtiles) * block_q
        i1 = min(i0 + block_q, tq)
        nq = i1 - i0
        qs = q[b, h, i0:i1] * scale                   # (nq, D)
        key_bias = np.where(pad[b], -np.inf, 0.0).astype(q.dtype)  # -inf on padded keys   (Tk,)
        m = np.full(nq, -np.inf, dtype=q.dtype)       # running max      (nq,)
        l = np.zeros(nq, dtype=q.dtype)               # running sum      (nq,)
        acc = np.zeros((nq, d), dtype=q.dtype)        # unnormalised O   (nq, D)
        k_end = min(tk, i1 + shift) if causal else tk
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, k_end)
            s = np.dot(qs, k[b, h, j0:j1].T)          # (nq, nk)
            for i in range(nq):
                row = s[i]
                row += key_bias[j0:j1]
                if causal:                            # keys after i + shift are hidden
                    row[max(0, i0 + i + shift + 1 - j0):] = -np.inf
                m_new = max(m[i], row.max())
                if m_new == -np.inf:                  # every key so far masked: P = 0
                    row[:] = 0.0
                else:
                    alpha = np.exp(m[i] - m_new)      # exp(-inf) = 0 on the first visible tile
                    row -= m_new
                    _exp_inplace(row)
                    total = 0.0
                    for j in range(j1 - j0):
                        total += row[j]
                    l[i] = alpha * l[i] + total
                    acc[i] *= alpha
                    m[i] = m_new
            acc += np.dot(s, v[b, h, j0:j1])          # (nq, D)
        for i in range(nq):
            if l[i] == 0.0:                           # fully masked row
                o[b, h, i0 + i] = 0.0
                lse[b, h, i0 + i] = -np.inf
            else:
                o[b, h, i0 + i] = acc[i] / l[i]
                lse[b, h, i0 + i] = m[i] + np.log(l[i])


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _attention_backward(q, k, v, o, lse, do, pad, causal, scale, block_q, block_k, dq, dk, dv):
    """Flash-style backward, one task per (batch, head); writes dq, dk, dv."""
    n_batch, n_head, tq, d = q.shape
    tk = k.shape[2]
    shift = tk - tq
    for bh in numba.prange(n_batch * n_head):
        b = bh // n_head
        h = bh % n_head
        qs = q[b, h] * scale                                       # (Tq, D)
        key_bias = np.where(pad[b], -np.inf, 0.0).astype(q.dtype)  # -inf on padded keys   (Tk,)
        di = np.empty(tq, dtype=q.dtype)                           # D_i = sum_d dO_id O_id  (Tq,)
        for i in range(tq):
            di[i] = np.dot(do[b, h, i], o[b, h, i])
        dq[b, h] = 0.0
        for j0 in range(0, tk, block_k):
            j1 = min(j0 + block_k, tk)
            kt = k[b, h, j0:j1]                                    # (nk, D)
            vt = v[b, h, j0:j1]                                    # (nk, D)
            dk_t = np.zeros((j1 - j0, d), dtype=q.dtype)           # (nk, D)
            dv_t = np.zeros((j1 - j0, d), dtype=q.dtype)           # (nk, D)
            i_start = max(0, j0 - shift) if causal else 0          # earlier queries cannot see this tile
            for i0 in range(i_start, tq, block_q):
                i1 = min(i0 + block_q, tq)
                p = np.dot(qs[i0:i1], kt.T)                        # S, then P   (nq, nk)
                for i in range(i1 - i0):
                    row = p[i]
                    if lse[b, h, i0 + i] == -np.inf:               # no visible key in the whole row: P = 0
                        row[:] = 0.0
                        continue
                    row += key_bias[j0:j1] - lse[b, h, i0 + i]
                    if causal:                                     # keys after i + shift are hidden
                        row[max(0, i0 + i + shift + 1 - j0):] = -np.inf
                    _exp_inplace(row)                              # exp(-inf) = 0
                dv_t += np.dot(p.T, do[b, h, i0:i1])               # (nk, D)
                ds = np.dot(do[b, h, i0:i1], vt.T)                 # dP, then dS (nq, nk)
                for i in range(i1 - i0):
                    for j in range(j1 - j0):
                        ds[i, j] = p[i, j] * (ds[i, j] - di[i0 + i])
                dq[b, h, i0:i1] += np.dot(ds, kt)                  # (nq, D), scaled below
                dk_t += np.dot(ds.T, qs[i0:i1])                    # (nk, D), scale is inside qs
            dk[b, h, j0:j1] = dk_t
            dv[b, h, j0:j1] = dv_t
        dq[b, h] *= scale


def _scipy_openblas():
    """SciPy's bundled OpenBLAS (a copy separate from NumPy's), or None where SciPy uses another BLAS."""
    pattern = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "libscipy_openblas*")
    for path in glob.glob(pattern):
        lib = ctypes.CDLL(path)  # already loaded: the same handle
        if hasattr(lib, "scipy_openblas_set_num_threads"):
            return lib
    return None


_SCIPY_OPENBLAS = _scipy_openblas()


@contextlib.contextmanager
def _one_blas_thread_per_task():
    """Inside the block, BLAS calls made by njit code (np.dot goes through SciPy's OpenBLAS) stay on the
    calling thread.

    The attention kernels call BLAS from each of Numba's parallel tasks. Left multi-threaded, each call
    would wake OpenBLAS's own threads too and the two pools would fight over the cores: on 2 cores, with
    128-query tiles, the backward took 1.5 s instead of 16 ms.
    """
    if _SCIPY_OPENBLAS is None:
        yield
        return
    before = _SCIPY_OPENBLAS.scipy_openblas_get_num_threads()
    _SCIPY_OPENBLAS.scipy_openblas_set_num_threads(1)
    try:
        yield
    finally:
        _SCIPY_OPENBLAS.scipy_openblas_set_num_threads(before)


def _padding(key_padding_mask, batch, tk):
    """(B, Tk) bool array, all False when no mask is given."""
    if key_padding_mask is None:
        return np.zeros((batch, tk), dtype=bool)
    return np.ascontiguousarray(key_padding_mask, dtype=bool).reshape(batch, tk)


def attention_forward(q, k, v, key_padding_mask=None, causal=False, scale=None, block_q=64, block_k=128):
    """Tiled attention forward with online softmax (see reference.attention_forward).

    O = softmax(scale * Q K^T, masked) V,   lse_i = log sum_j exp(S_ij)

    Returns (o, lse) with o (B, H, Tq, D) and lse (B, H, Tq). A fully masked
    row gives o = 0, lse = -inf. Extra memory: O(block_q * (block_k + D)) per
    task, i.e. O(B * H * T) in total, never O(T^2).
    """
    dtype = _check_float(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    batch, heads, tq, d = q.shape
    o = _empty((batch, heads, tq, d), dtype)
    lse = _empty((batch, heads, tq), dtype)
    with _one_blas_thread_per_task():
        _attention_forward(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v),
                           _padding(key_padding_mask, batch, k.shape[2]), bool(causal), dtype.type(scale),
                           block_q, block_k, o, lse)
    return o, lse


def attention_backward(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None,
                       block_q=64, block_k=128):
    """Tiled attention backward recomputing P = exp(S - lse) (see reference.attention_backward).

    dV = P^T dO,  dS = P * (dO V^T - D_i),  D_i = sum_d dO_id O_id,
    dQ = scale dS K,  dK = scale dS^T Q

    Returns (dq, dk, dv). Fully masked rows get zero gradients.
    """
    dtype = _check_float(q, k, v, o, lse, do)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    batch = q.shape[0]
    dq = _empty(q.shape, dtype)
    dk = _empty(k.shape, dtype)
    dv = _empty(v.shape, dtype)
    c = np.ascontiguousarray
    with _one_blas_thread_per_task():
        _attention_backward(c(q), c(k), c(v), c(o), c(lse), c(do), _padding(key_padding_mask, batch, k.shape[2]),
                            bool(causal), dtype.type(scale), block_q, block_k, dq, dk, dv)
    return dq, dk, dv


# -------------------------------------------------------------------- FFN

_RELU, _GELU, _GELU_TANH = 0, 1, 2
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _activation_code(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return ACTIVATIONS.index(activation)


# Abramowitz & Stegun 7.1.26: erfc(x) = t (a1 + a2 t + a3 t^2 + a4 t^3 + a5 t^4) exp(-x^2) + e(x),
# t = 1 / (1 + p x), x >= 0, |e(x)| <= 1.5e-7 (the approximation PyTorch's vectorised CPU erf uses too).
_AS_P = np.float32(0.3275911)
_AS_A1, _AS_A2, _AS_A3, _AS_A4, _AS_A5 = (np.float32(a) for a in (
    0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))


@numba.njit(fastmath=FASTMATH, inline="always")
def _normal_cdf_pdf32(z):
    """(Phi(z), phi(z)) of the standard normal for a float32 z, in operations the compiler vectorises.

    With x = |z| / sqrt 2, both come from one exponential e = exp(-x^2) = exp(-z^2 / 2):
        Phi(-|z|) = erfc(x) / 2 = t P(t) e / 2   (A&S 7.1.26),   Phi(z) = 1 - Phi(-z),
        phi(z) = e / sqrt(2 pi).
    Phi is within 3e-7 of the exact value (float32 rounding included), like float32 rounding of values
    near 1; the reference computes erf with SciPy.
    """
    x = abs(z) * np.float32(_INV_SQRT_2)
    t = np.float32(1.0) / (np.float32(1.0) + _AS_P * x)
    e = _exp32(-x * x)
    tail = np.float32(0.5) * t * ((((_AS_A5 * t + _AS_A4) * t + _AS_A3) * t + _AS_A2) * t + _AS_A1) * e
    cdf = tail if z < 0 else np.float32(1.0) - tail
    return cdf, e * np.float32(_INV_SQRT_2PI)


@numba.njit(fastmath=FASTMATH, inline="always")
def _act_and_grad(z, code, single):
    """(act(z), act'(z)); formulas in reference.activation_forward / activation_backward.

    ``single``: z is float32, so exp and the normal CDF use the vectorisable ``_exp32`` and
    ``_normal_cdf_pdf32``; float64 uses math.exp and math.erf. gelu_tanh is computed through the logistic
    function s = 1 / (1 + exp(-2u)), which equals 0.5 (1 + tanh u), with 1 - tanh^2 u = 4 s (1 - s):
        gelu_tanh(z) = z s,   gelu_tanh'(z) = s + 2 z s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 z^2).
    """
    if code == _RELU:
        return (z, 1.0) if z > 0 else (0.0 * z, 0.0)
    if code == _GELU:
        if single:
            cdf, pdf = _normal_cdf_pdf32(z)
        else:
            cdf = 0.5 * (1.0 + math.erf(z * _INV_SQRT_2))
            pdf = math.exp(-0.5 * z * z) * _INV_SQRT_2PI
        return z * cdf, cdf + z * pdf
    u = _SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)
    s = 1.0 / (1.0 + (_exp32(np.float32(-2.0 * u)) if single else math.exp(-2.0 * u)))
    return z * s, s + 2.0 * z * s * (1.0 - s) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z * z)


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _bias_act(h_pre, b1, code, h):
    """In one pass: h_pre += b1 (in place) and h = act(h_pre).  h_pre, h: (N, F)."""
    n, f = h_pre.shape
    single = h_pre.itemsize == 4
    for r in numba.prange(n):
        for c in range(f):
            z = h_pre[r, c] + b1[c]
            h_pre[r, c] = z
            h[r, c] = _act_and_grad(z, code, single)[0]


@numba.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _act_backward(h_pre, code, h, dh):
    """In one pass: h = act(h_pre) and dh *= act'(h_pre) (in place, dh becomes dh_pre)."""
    n, f = h_pre.shape
    single = h_pre.itemsize == 4
    for r in numba.prange(n):
        for c in range(f):
            a, g = _act_and_grad(h_pre[r, c], code, single)
            h[r, c] = a
            dh[r, c] *= g


def ffn_forward(x, w1, b1, w2, b2, activation="relu"):
    """Feed-forward network with bias + activation fused (see reference.ffn_forward).

    h_pre = x W1^T + b1,  h = act(h_pre),  y = h W2^T + b2

    Returns (y, h_pre); the backward pass rebuilds h and act'(h_pre) from h_pre.
    """
    dtype = _check_float(x, w1, b1, w2, b2)
    code = _activation_code(activation)
    h_pre = x @ w1.T                  # (N, F), BLAS
    h = _empty(h_pre.shape, dtype)    # (N, F)
    _bias_act(h_pre, b1, code, h)
    y = h @ w2.T                      # (N, D), BLAS
    y += b2
    return y, h_pre


def ffn_backward(x, w1, b1, w2, b2, h_pre, dy, activation="relu"):
    """Gradients of the FFN with the activation and its derivative fused (see reference.ffn_backward).

    dW2 = dy^T h,  db2 = sum_n dy,  dh_pre = (dy W2) * act'(h_pre),
    dW1 = dh_pre^T x,  db1 = sum_n dh_pre,  dx = dh_pre W1

    b1 and b2 are unused (h_pre already contains b1); they keep the signature
    the same as the forward's. Returns (dx, dw1, db1, dw2, db2).
    """
    dtype = _check_float(x, w1, b1, w2, b2, h_pre, dy)
    code = _activation_code(activation)
    dh = dy @ w2                      # (N, F), becomes dh_pre in place
    h = _empty(h_pre.shape, dtype)    # (N, F)
    _act_backward(h_pre, code, h, dh)
    dw2 = dy.T @ h                    # (D, F)
    db2 = dy.sum(axis=0)              # (D,)
    dw1 = dh.T @ x                    # (F, D)
    db1 = dh.sum(axis=0)              # (F,)
    dx = dh @ w1                      # (N, D)
    return dx, dw1, db1, dw2, db2
