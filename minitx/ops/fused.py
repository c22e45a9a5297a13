"""Fused ops: whole sub-layers computed by the array-level kernels in the top-level ``kernels`` package.

The composed path (``functional.scaled_dot_product_attention`` built from matmul, masked_fill, softmax…)
is the one to read; these ops compute the same function with the kernels of ``kernels.cpu`` (Numba) or
``kernels.cuda`` (numba.cuda), chosen by the tensor's device. They are still ordinary :class:`Function`\\ s:
forward saves what the kernel's backward needs, backward calls it. :class:`QuantizedLinear` is the one
without a backward: the products by quantised weights serve generation, not training.
:class:`FusedLayerNorm` and :class:`FusedCrossEntropy` have CPU kernels only; ``functional`` uses the
composed ops for CuPy arrays.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Function


def kernel_module(array):
    """The kernel implementation for ``array``'s device: ``kernels.cpu`` or ``kernels.cuda``."""
    if backend.device_of(array) == "cuda":
        from kernels import cuda

        return cuda
    from kernels import cpu

    return cpu


class FusedAttention(Function):
    """O = softmax(scale · Q Kᵀ, masked) V in one kernel that never forms the (Tq, Tk) score matrix.

    q (B, H, Tq, D), k and v (B, H_kv, Tk, D): H_kv < H is grouped-query attention, query head h reading
    key/value head h // (H / H_kv) in place, dK and dV summed over each group. Forward keeps O and the per-row
    log-sum-exp
    lse_i = log Σ_j exp(S_ij); backward recomputes P = exp(S - lse) tile by tile:
        dV = Pᵀ dO,  dS = P ⊙ (dO Vᵀ - rowsum(dO ⊙ O)),  dQ = scale · dS K,  dK = scale · dSᵀ Q.
    """

    def forward(self, q, k, v, key_padding_mask=None, causal: bool = False, scale: float | None = None):
        self.kernels = kernel_module(q)
        self.q, self.k, self.v = q, k, v
        self.options = dict(key_padding_mask=key_padding_mask, causal=causal, scale=scale)
        self.o, self.lse = self.kernels.attention_forward(q, k, v, **self.options)
        return self.o

    def backward(self, grad):
        return self.kernels.attention_backward(self.q, self.k, self.v, self.o, self.lse, grad, **self.options)


class FusedFeedForward(Function):
    """y = act(x W₁ᵀ + b₁) W₂ᵀ + b₂ with the bias and activation fused into one pass over (N, F).

    x (N, D), w1 (F, D), b1 (F,), w2 (D, F), b2 (D,). Forward keeps the pre-activation h_pre; backward:
        dW₂ = dyᵀ h,  db₂ = Σ_n dy,  dh_pre = (dy W₂) ⊙ act'(h_pre),  dW₁ = dh_preᵀ x,  db₁ = Σ_n dh_pre,
        dx = dh_pre W₁.
    """

    def forward(self, x, w1, b1, w2, b2, activation: str = "relu"):
        self.kernels = kernel_module(x)
        self.saved = (x, w1, b1, w2, b2)
        self.activation = activation
        y, self.h_pre = self.kernels.ffn_forward(x, w1, b1, w2, b2, activation=activation)
        return y

    def backward(self, grad):
        return self.kernels.ffn_backward(*self.saved, self.h_pre, grad, activation=self.activation)


class QuantizedLinear(Function):
    """y = x Wᵀ with W (O, in) held quantised and never de-quantised (kernels' ``q4_1_linear`` /
    ``q8_0_linear``, formulas in kernels.reference). x (N, in) -> y (N, O).

    ``blocks``: Q4_1's scale, minimum (O, in/32) and packed (O, in/32, 16) uint8, or Q8_0's scale and quants
    (O, in/32, 32) int8, as ``format`` says. Inference only: there is no backward, so x must not require a
    gradient (the layers pass it detached).
    """

    def forward(self, x, *blocks, format: str = "q4_1"):
        kernels = kernel_module(x)
        product = {"q4_1": kernels.q4_1_linear, "q8_0": kernels.q8_0_linear}[format]
        return product(x, *blocks)

    def backward(self, grad):
        raise RuntimeError("QuantizedLinear has no backward: quantised weights serve generation, not training")


class FusedLayerNorm(Function):
    """y = LayerNorm(x + residual) (or of x alone) over the last axis, in one pass per row forward and one
    backward (``kernels.cpu.layer_norm_forward`` / ``layer_norm_backward``; CPU only).

    x and residual (…, D), weight and bias (D,). The same function and backward as ``ops.LayerNorm`` of
    ``x + residual`` (see its docstring for the formula); the sum is never stored: forward keeps the per-row
    mean and 1/σ, backward rebuilds x̂ from x and residual. dL/dx and dL/dresidual are the same array.
    """

    def forward(self, x, weight, bias, residual=None, eps: float = 1e-5):
        from kernels.cpu import layernorm

        self.kernels = layernorm
        self.x, self.weight, self.residual = x, weight, residual
        y, self.mean, self.rstd = layernorm.layer_norm_forward(x, weight, bias, eps, residual)
        return y

    def backward(self, grad):
        ds, dweight, dbias = self.kernels.layer_norm_backward(self.x, self.weight, self.mean, self.rstd, grad,
                                                              self.residual)
        return (ds, dweight, dbias) + (() if self.residual is None else (ds,))


class FusedCrossEntropy(Function):
    """Cross-entropy of logits (…, C) at class targets (…), log-softmax and NLL in one kernel per pass
    (``kernels.cpu.cross_entropy_forward`` / ``cross_entropy_backward``; CPU only).

    The same loss, reductions, ``ignore_index`` and label smoothing as ``ops.CrossEntropy`` (formulas there),
    but only the per-position log-sum-exp (…) is kept, not the (…, C) log-probabilities; backward writes
    dL/dlogits = softmax(logits) - q per counted position in one pass.
    """

    def forward(self, logits, target, ignore_index: int, label_smoothing: float = 0.0, reduction: str = "mean"):
        from kernels.cpu import cross_entropy
        from .nn import _class_targets, _reduce_counted

        self.kernels = cross_entropy
        num_classes = logits.shape[-1]
        self.valid, safe_target = _class_targets("cross_entropy", target, ignore_index, num_classes)
        self.logits = logits.reshape(-1, num_classes)  # (N, C)
        self.target, self.smoothing, self.reduction = safe_target.reshape(-1), label_smoothing, reduction
        loss, self.lse = cross_entropy.cross_entropy_forward(self.logits, self.target, label_smoothing)  # (N,)
        loss = np.where(self.valid, loss.reshape(self.valid.shape), logits.dtype.type(0))  # (…)
        result, self.count = _reduce_counted(loss, self.valid, reduction)
        return result

    def backward(self, grad):
        if self.reduction == "mean":  # 1/n; with n = 0 every position is masked out below anyway
            grad = grad / np.maximum(self.count, 1).astype(grad.dtype)
        dloss = np.broadcast_to(self.valid * grad, self.valid.shape).reshape(-1).astype(grad.dtype)  # (N,)
        dlogits = self.kernels.cross_entropy_backward(self.logits, self.target, self.lse, dloss, self.smoothing)
        return dlogits.reshape(self.valid.shape + (-1,)), None
