"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019)."""

from __future__ import annotations

import math

from .optimizer import Optimizer


class Adam(Optimizer):
    """For each parameter θ with gradient g, at step t = 1, 2, …:

        g ← g + λθ                                  (L2 weight decay, coupled: it goes through the moments)
        m ← β₁m + (1 - β₁)g                         (first moment, the running mean of g)
        v ← β₂v + (1 - β₂)g²                        (second moment, the running mean of g²)
        θ ← θ - lr · m̂ / (√v̂ + ε),   m̂ = m / (1 - β₁ᵗ),  v̂ = v / (1 - β₂ᵗ)   (bias-corrected)

    The last line is evaluated as θ ← θ - (lr / (1 - β₁ᵗ)) · m / (√v / √(1 - β₂ᵗ) + ε), PyTorch's order.
    """

    state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas) if isinstance(betas, (list, tuple)) else betas, eps=eps, weight_decay=weight_decay))

    def decay(self, param, grad, group):
        """Adam's weight decay: λθ added to the gradient."""
        return grad + group["weight_decay"] * param.data if group["weight_decay"] else grad

    def update(self, param, grad, state, group) -> None:
        grad = self.decay(param, grad, group)
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = param.xp.zeros_like(param.data)
            state["exp_avg_sq"] = param.xp.zeros_like(param.data)
        state["step"] += 1
        t, m, v, xp = state["step"], state["exp_avg"], state["exp_avg_sq"], param.xp
        # Each line below is one pass over the parameter, in place where it can be, into two scratch
        # arrays: the same arithmetic, in the same order, as the formulas above, without a temporary per
        # operator (seven arrays of the parameter's size per step otherwise).
        scratch = xp.multiply(grad, 1 - beta1, dtype=m.dtype)       # (1 - β₁)g
        m *= beta1
        m += scratch                                                # m ← β₁m + (1 - β₁)g
        xp.multiply(grad, 1 - beta2, out=scratch)
        scratch *= grad                                             # (1 - β₂)g²
        v *= beta2
        v += scratch                                                # v ← β₂v + (1 - β₂)g²
        step_size = group["lr"] / (1 - beta1 ** t)
        denom = xp.sqrt(v, out=scratch)
        denom /= math.sqrt(1 - beta2 ** t)
        denom += group["eps"]                                       # √v̂ + ε
        update = xp.multiply(m, step_size, dtype=m.dtype)
        update /= denom
        param.data -= update                                        # θ ← θ - lr·m̂/(√v̂ + ε)


class AdamW(Adam):
    """Adam with decoupled weight decay: θ ← θ - lr·λ·θ first, then Adam's update with the plain gradient.

    Coupled decay (Adam's) is divided by √v̂ like the gradient, so weights with large gradients are barely
    decayed; decoupled decay shrinks every weight by the same factor (1 - lr·λ).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)

    def decay(self, param, grad, group):
        param.data *= param.dtype.type(1 - group["lr"] * group["weight_decay"])
        return grad
