"""NumPy reference kernels: the math stated plainly, one equation per line.

Every other backend (Numba CPU, Numba CUDA) is tested against these functions.
They favour clarity over speed and memory: attention materialises the full
(B, H, Tq, Tk) score matrix.

Conventions shared by all backends
----------------------------------
* Attention: q (B, H, Tq, D), k and v (B, Hkv, Tk, D), float32 or float64; the
  result has the input dtype. ``scale`` defaults to 1/sqrt(D). Hkv = H is
  ordinary multi-head attention; Hkv < H (H a multiple of Hkv) is grouped-query
  attention: query head h reads key/value head h // (H / Hkv).
* ``key_padding_mask``: optional bool (B, Tk), True = padded key, ignored.
* ``causal``: query i sees key j only if j <= i + (Tk - Tq) (queries aligned to
  the end of the keys; j <= i when Tq == Tk).
* A fully masked row (every key masked) is defined to have attention weights
  of all zeros, output 0, lse = -inf and zero gradients -- never NaN.
* FFN weights use PyTorch's Linear layout: w1 (F, D), b1 (F,), w2 (D, F),
  b2 (D,); x (N, D).
* CuPy arrays in give CuPy arrays out: every function computes with the
  array module of its inputs (``array_module``), so the same equations are
  the GPU's reference too (benchmarks/bench_cuda.py).
"""
import math

import numpy as np

from kernels.activations import (ACTIVATIONS, GELU_TANH_COEF, INV_SQRT_2, INV_SQRT_2PI, SQRT_2_OVER_PI,
                                 activation_code)


def array_module(*arrays):
    """``numpy``, or ``cupy`` when one of ``arrays`` is a CuPy array (CuPy is imported only then)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def _erf(h):
    """erf elementwise, from SciPy for NumPy arrays and from cupyx for CuPy arrays."""
    if array_module(h) is np:
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf
    return erf(h)


def softmax(x, scale=1.0, mask=None):
    """Row softmax along the last axis of ``scale * x``.

    y_ij = exp(s_ij - m_i) / sum_j' exp(s_ij' - m_i),  s = scale * x,  m_i = max_j s_ij

    ``mask`` (bool, broadcastable to x, True = masked out) sets s_ij = -inf.
    A row whose entries are all masked gives y = 0 (not NaN).
    """
    xp = array_module(x)
    s = x * scale
    if mask is not None:
        s = xp.where(mask, -xp.inf, s)
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isneginf(m), 0.0, m)  # fully masked row: exp(-inf - 0) = 0
    e = xp.exp(s - m)
    z = e.sum(axis=-1, keepdims=True)
    return e / xp.where(z == 0.0, 1.0, z)


def logsumexp(s):
    """lse_i = log sum_j exp(s_ij) along the last axis, computed as m_i + log sum_j exp(s_ij - m_i).

    A row of all -inf gives -inf.
    """
    xp = array_module(s)
    m = s.max(axis=-1)
    m = xp.where(xp.isneginf(m), 0.0, m)
    with np.errstate(divide="ignore"):  # log(0) = -inf is the intended answer
        return m + xp.log(xp.exp(s - m[..., None]).sum(axis=-1))


def attention_mask(batch, tq, tk, key_padding_mask=None, causal=False, xp=np):
    """Bool mask broadcastable to (B, H, Tq, Tk), True = key hidden from the query; an ``xp`` array.

    Returns None when nothing is masked. Shape (B or 1, 1, Tq or 1, Tk).
    """
    mask = None
    if key_padding_mask is not None:
        mask = xp.asarray(key_padding_mask, dtype=bool).reshape(batch, 1, 1, tk)
    if causal:
        i = xp.arange(tq)[:, None]
        j = xp.arange(tk)[None, :]
        future = (j > i + (tk - tq))[None, None]  # (1, 1, Tq, Tk)
        mask = future if mask is None else mask | future
    return mask


def repeat_kv_heads(x, heads):
    """(B, Hkv, Tk, D) -> (B, H, Tk, D): key/value head j copied for its g = H / Hkv query heads j g ... j g + g - 1."""
    xp = array_module(x)
    return xp.repeat(x, heads // x.shape[1], axis=1)


def sum_over_groups(dx, kv_heads):
    """(B, H, Tk, D) -> (B, Hkv, Tk, D): the gradient of ``repeat_kv_heads``, summed over each group of g heads."""
    batch, heads, tk, d = dx.shape
    return dx.reshape(batch, kv_heads, heads // kv_heads, tk, d).sum(axis=2)


def _masked_scores(q, k, key_padding_mask, causal, scale):
    """S = scale * q @ k^T with masked entries set to -inf.  # (B, H, Tq, Tk)"""
    xp = array_module(q)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    s = (q @ xp.swapaxes(k, -1, -2)) * scale  # (B, H, Tq, Tk)
    mask = attention_mask(q.shape[0], q.shape[2], k.shape[2], key_padding_mask, causal, xp)
    if mask is not None:
        s = xp.where(mask, -xp.inf, s)
    return s, scale


def attention_forward(q, k, v, key_padding_mask=None, causal=False, scale=None):
    """Scaled dot-product attention.

    S = scale * Q K^T (masked entries -inf),  P = softmax(S),  O = P V,
    lse_i = log sum_j exp(S_ij)

    Returns (o, lse): o (B, H, Tq, D) and lse (B, H, Tq). lse is what the
    backward pass needs to rebuild P = exp(S - lse) without storing P.
    A fully masked row gives o = 0 and lse = -inf. Grouped-query attention
    (k, v with Hkv < H heads): k and v are repeated to H heads first.
    """
    k, v = repeat_kv_heads(k, q.shape[1]), repeat_kv_heads(v, q.shape[1])  # (B, H, Tk, D)
    s, _ = _masked_scores(q, k, key_padding_mask, causal, scale)  # (B, H, Tq, Tk)
    p = softmax(s)                                                # (B, H, Tq, Tk)
    o = p @ v                                                     # (B, H, Tq, D)
    return o, logsumexp(s)                                        # lse: (B, H, Tq)


def attention_backward(q, k, v, o, lse, do, key_padding_mask=None, causal=False, scale=None):
    """Gradients of attention, recomputing P from the saved lse.

    P = exp(S - lse)           (0 where masked and on fully masked rows)
    dV = P^T dO
    dP = dO V^T
    D_i = sum_d dO_id O_id      (= sum_j P_ij dP_ij)
    dS = P * (dP - D_i)
    dQ = scale * dS K,   dK = scale * dS^T Q

    Returns (dq, dk, dv) shaped like (q, k, v). Fully masked rows contribute
    nothing (P = 0 there), so their dq is 0. Grouped-query attention: dK and
    dV of a key/value head are the sums over its group of query heads.
    """
    xp = array_module(q)
    kv_heads = k.shape[1]
    k, v = repeat_kv_heads(k, q.shape[1]), repeat_kv_heads(v, q.shape[1])  # (B, H, Tk, D)
    s, scale = _masked_scores(q, k, key_padding_mask, causal, scale)  # (B, H, Tq, Tk)
    lse_safe = xp.where(xp.isneginf(lse), 0.0, lse)                    # s = -inf there too
    p = xp.exp(s - lse_safe[..., None])                                # (B, H, Tq, Tk)
    dv = xp.swapaxes(p, -1, -2) @ do                                   # (B, H, Tk, D)
    dp = do @ xp.swapaxes(v, -1, -2)                                   # (B, H, Tq, Tk)
    d = (do * o).sum(axis=-1, keepdims=True)                           # (B, H, Tq, 1)
    ds = p * (dp - d)                                                  # (B, H, Tq, Tk)
    dq = (ds @ k) * scale                              # (B, H, Tq, D)
    dk = (xp.swapaxes(ds, -1, -2) @ q) * scale         # (B, H, Tk, D)
    return dq, sum_over_groups(dk, kv_heads), sum_over_groups(dv, kv_heads)  # dk, dv: (B, Hkv, Tk, D)


def activation_forward(h, activation):
    """act(h) for activation in ACTIVATIONS (kernels/activations.py).

    identity(h)  = h
    relu(h)      = max(h, 0)
    gelu(h)      = 0.5 h (1 + erf(h / sqrt 2))
    gelu_tanh(h) = 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))
    """
    activation_code(activation)  # refuses an unknown name
    xp = array_module(h)
    if activation == "identity":
        return h
    if activation == "relu":
        return xp.maximum(h, 0)
    if activation == "gelu":
        return 0.5 * h * (1.0 + _erf(h * INV_SQRT_2))
    u = SQRT_2_OVER_PI * (h + GELU_TANH_COEF * (h * h * h))
    return 0.5 * h * (1.0 + xp.tanh(u))                          # gelu_tanh


def activation_backward(h, activation):
    """act'(h), the elementwise derivative.

    identity'(h)  = 1
    relu'(h)      = 1 if h > 0 else 0
    gelu'(h)      = Phi(h) + h phi(h),  Phi(h) = 0.5 (1 + erf(h / sqrt 2)),  phi(h) = exp(-h^2 / 2) / sqrt(2 pi)
    gelu_tanh'(h) = 0.5 (1 + t) + 0.5 h (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 h^2),  t = tanh(u)
    """
    activation_code(activation)  # refuses an unknown name
    xp = array_module(h)
    if activation == "identity":
        return xp.ones_like(h)
    if activation == "relu":
        return (h > 0).astype(h.dtype)
    if activation == "gelu":
        cdf = 0.5 * (1.0 + _erf(h * INV_SQRT_2))
        pdf = xp.exp(-0.5 * h * h) * INV_SQRT_2PI
        return cdf + h * pdf
    c = SQRT_2_OVER_PI                                           # gelu_tanh
    t = xp.tanh(c * (h + GELU_TANH_COEF * (h * h * h)))
    return 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * c * (1.0 + 3 * GELU_TANH_COEF * h * h)


def ffn_forward(x, w1, b1, w2, b2, activation="relu"):
    """Position-wise feed-forward network.

    h_pre = x W1^T + b1      # (N, F)
    h = act(h_pre)           # (N, F)
    y = h W2^T + b2          # (N, D)

    Returns (y, h_pre). h_pre is what the backward pass needs: h = act(h_pre)
    and act'(h_pre) are both recomputed from it.
    """
    h_pre = x @ w1.T + b1                       # (N, F)
    h = activation_forward(h_pre, activation)   # (N, F)
    y = h @ w2.T + b2                           # (N, D)
    return y, h_pre


def ffn_backward(x, w1, b1, w2, b2, h_pre, dy, activation="relu"):
    """Gradients of ``ffn_forward`` given dy = dL/dy.

    h = act(h_pre)
    dW2 = dy^T h,        db2 = sum_n dy
    dh = dy W2
    dh_pre = dh * act'(h_pre)
    dW1 = dh_pre^T x,    db1 = sum_n dh_pre
    dx = dh_pre W1

    b1 and b2 are not needed (h_pre already contains b1); they are accepted so
    that forward and backward take the same parameters.
    Returns (dx, dw1, db1, dw2, db2).
    """
    h = activation_forward(h_pre, activation)                 # (N, F)
    dw2 = dy.T @ h                                            # (D, F)
    db2 = dy.sum(axis=0)                                      # (D,)
    dh = dy @ w2                                              # (N, F)
    dh_pre = dh * activation_backward(h_pre, activation)      # (N, F)
    dw1 = dh_pre.T @ x                                        # (F, D)
    db1 = dh_pre.sum(axis=0)                                  # (F,)
    dx = dh_pre @ w1                                          # (N, D)
    return dx, dw1, db1, dw2, db2


def q4_1_weights(scale, minimum, packed):
    """Q4_1 weights, de-quantised: (O, in) from blocks of 32 weights along each row.

    scale and minimum (O, nb), packed (O, nb, 16) uint8 with in = 32 nb. Byte j of a block
    holds the 4-bit q_j in its low nibble and q_{j+16} in its high nibble; w = d q + m.
    """
    xp = array_module(scale, minimum, packed)
    q = xp.concatenate([packed & 0x0F, packed >> 4], axis=-1)             # (O, nb, 32)
    w = scale[..., None] * q.astype(scale.dtype) + minimum[..., None]     # (O, nb, 32)
    return w.reshape(scale.shape[0], -1)                                  # (O, in)


def q4_1_linear(x, scale, minimum, packed):
    """y = x W^T with W (O, in) held as Q4_1 (see q4_1_weights); x (N, in) -> y (N, O).

    The float32 path: de-quantise the whole matrix, then one BLAS product.
    """
    return x @ q4_1_weights(scale, minimum, packed).T


def q8_0_linear(x, scale, quants):
    """y = x W^T with W (O, in) held as Q8_0: scale (O, nb), quants (O, nb, 32) int8, w = d q."""
    w = (scale[..., None] * quants.astype(scale.dtype)).reshape(scale.shape[0], -1)   # (O, in)
    return x @ w.T


def layer_norm_forward(x, weight, bias, eps=1e-5, residual=None):
    """Layer normalisation of each row of s = x (+ residual), x and residual (N, D), weight and bias (D,).

    mu = mean_j s_j,  rstd = 1 / sqrt(mean_j (s_j - mu)^2 + eps),  y = (s - mu) rstd * weight + bias

    Returns (y, mean, rstd); mean and rstd (N,) are what the backward pass needs (with x and residual).
    """
    s = x if residual is None else x + residual   # (N, D)
    mean = s.mean(axis=-1)                         # (N,)
    centered = s - mean[:, None]
    rstd = 1.0 / array_module(x).sqrt((centered * centered).mean(axis=-1) + eps)   # (N,)
    xhat = centered * rstd[:, None]                # (N, D)
    return xhat * weight + bias, mean, rstd


def layer_norm_backward(x, weight, mean, rstd, dy, residual=None):
    """Gradients of ``layer_norm_forward`` given dy = dL/dy (N, D).

    xhat = (s - mu) rstd,  g = dy * weight
    ds = rstd * (g - mean_j g - xhat * mean_j (g * xhat))
    dweight = sum_n dy * xhat,  dbias = sum_n dy

    ds is the gradient of x and of the residual alike. Returns (ds, dweight, dbias).
    """
    s = x if residual is None else x + residual
    xhat = (s - mean[:, None]) * rstd[:, None]     # (N, D)
    g = dy * weight                                # (N, D)
    ds = rstd[:, None] * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return ds, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def cross_entropy_forward(logits, target, label_smoothing=0.0):
    """Cross-entropy of each row of logits (N, C) against its class target (N,) (integers in [0, C)).

    lse = log sum_c exp(logits_c),  log p_c = logits_c - lse
    loss = -(1 - eps) log p_target - eps mean_c log p_c      (eps = label_smoothing)

    Returns (loss, lse), both (N,); lse is all the backward pass needs besides the logits.
    """
    lse = logsumexp(logits)                                            # (N,)
    picked = logits[np.arange(logits.shape[0]), target]                # (N,)
    loss = (1 - label_smoothing) * (lse - picked) + label_smoothing * (lse - logits.mean(axis=-1))
    return loss, lse


def cross_entropy_backward(logits, target, lse, dloss, label_smoothing=0.0):
    """Gradient of ``cross_entropy_forward`` given dloss = dL/dloss (N,):

    dlogits_c = dloss * (p_c - q_c),  p = exp(logits - lse),  q = (1 - eps) onehot(target) + eps / C
    """
    xp = array_module(logits)
    n, c = logits.shape
    q = xp.full((n, c), label_smoothing / c, dtype=logits.dtype)
    q[xp.arange(n), target] += 1 - label_smoothing
    return dloss[:, None] * (xp.exp(logits - lse[:, None]) - q)
