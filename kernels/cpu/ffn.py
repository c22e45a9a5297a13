"""Numba CPU feed-forward network: BLAS matmuls, with bias + activation and activation + derivative fused.

    h_pre = x W1^T + b1,  h = act(h_pre),  y = h W2^T + b2             (conventions: kernels.reference)

The matmuls are NumPy/BLAS calls; the elementwise work between them is one parallel pass each: bias +
activation in the forward, activation + activation-derivative in the backward. Activations by their codes
in kernels/activations.py. For float32 the GELUs are vectorisable too: the normal CDF from A&S 7.1.26 and
``exp32`` (``_normal_cdf_pdf32``), tanh through the logistic function; float64 keeps ``math.erf`` and
``math.exp``.
"""
import math

import numba
import numpy as np

from kernels.activations import (GELU, GELU_TANH_COEF, IDENTITY, INV_SQRT_2, INV_SQRT_2PI, RELU, SQRT_2_OVER_PI,
                                 activation_code)
from kernels.cpu import _common
from kernels.cpu._common import FASTMATH, exp32
from kernels.gemm import transposed_product
from kernels.versions import Version, registry

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
    x = abs(z) * np.float32(INV_SQRT_2)
    t = np.float32(1.0) / (np.float32(1.0) + _AS_P * x)
    e = exp32(-x * x)
    tail = np.float32(0.5) * t * ((((_AS_A5 * t + _AS_A4) * t + _AS_A3) * t + _AS_A2) * t + _AS_A1) * e
    cdf = tail if z < 0 else np.float32(1.0) - tail
    return cdf, e * np.float32(INV_SQRT_2PI)


@numba.njit(fastmath=FASTMATH, inline="always")
def _act_and_grad(z, code, single):
    """(act(z), act'(z)) for an activation code of kernels/activations.py; formulas in
    reference.activation_forward / activation_backward.

    ``single``: z is float32, so exp and the normal CDF use the vectorisable ``exp32`` and
    ``_normal_cdf_pdf32``; float64 uses math.exp and math.erf. gelu_tanh is computed through the logistic
    function s = 1 / (1 + exp(-2u)), which equals 0.5 (1 + tanh u), with 1 - tanh^2 u = 4 s (1 - s):
        gelu_tanh(z) = z s,   gelu_tanh'(z) = s + 2 z s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 z^2).
    """
    if code == IDENTITY:
        return z, 1.0
    if code == RELU:
        return (z, 1.0) if z > 0 else (0.0 * z, 0.0)
    if code == GELU:
        if single:
            cdf, pdf = _normal_cdf_pdf32(z)
        else:
            cdf = 0.5 * (1.0 + math.erf(z * INV_SQRT_2))
            pdf = math.exp(-0.5 * z * z) * INV_SQRT_2PI
        return z * cdf, cdf + z * pdf
    u = SQRT_2_OVER_PI * (z + GELU_TANH_COEF * z * z * z)                   # GELU_TANH
    s = 1.0 / (1.0 + (exp32(np.float32(-2.0 * u)) if single else math.exp(-2.0 * u)))
    return z * s, s + 2.0 * z * s * (1.0 - s) * SQRT_2_OVER_PI * (1.0 + 3 * GELU_TANH_COEF * z * z)


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
    dtype = _common.check_float(x, w1, b1, w2, b2)
    code = activation_code(activation)
    h_pre = x @ w1.T                  # (N, F), BLAS
    h = _common.empty(h_pre.shape, dtype)    # (N, F)
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
    dtype = _common.check_float(x, w1, b1, w2, b2, h_pre, dy)
    code = activation_code(activation)
    dh = dy @ w2                      # (N, F), becomes dh_pre in place
    h = _common.empty(h_pre.shape, dtype)    # (N, F)
    _act_backward(h_pre, code, h, dh)
    dw2 = transposed_product(dy, h)   # dy^T h (D, F), in BLAS's faster orientation
    db2 = dy.sum(axis=0)              # (D,)
    dw1 = transposed_product(dh, x)   # dh^T x (F, D)
    db1 = dh.sum(axis=0)              # (F,)
    dx = dh @ w1                      # (N, D)
    return dx, dw1, db1, dw2, db2


VERSIONS = registry(
    Version("v1", "BLAS matmuls; bias + activation and activation + derivative each fused into one pass", None,
            ffn_forward=ffn_forward, ffn_backward=ffn_backward),
)
