"""Stochastic gradient descent with momentum."""

from __future__ import annotations

from .optimizer import Optimizer


class SGD(Optimizer):
    """For each parameter θ with gradient g (PyTorch's formulation):

        g ← g + λθ                                   (weight decay λ, "coupled": part of the gradient)
        b ← μb + (1 - τ)g   (b = g at the first step) (momentum μ, dampening τ)
        g ← g + μb if nesterov else b
        θ ← θ - lr·g
    """

    state_keys = frozenset({"momentum_buffer"})

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def update(self, param, grad, state, group) -> None:
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param.data
        momentum = group["momentum"]
        if momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.copy()
            else:
                buf = state["momentum_buffer"]
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            buf = state["momentum_buffer"]
            grad = grad + momentum * buf if group["nesterov"] else buf
        param.data -= group["lr"] * grad
