"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019)."""

from __future__ import annotations

import math

import numpy as np

from .optimizer import Optimizer


class Adam(Optimizer):
    """For each parameter θ with gradient g, at step t = 1, 2, …:

        g ← g + λθ                                  (L2 weight decay, coupled: it goes through the moments)
        m ← β₁m + (1 - β₁)g                         (first moment, the running mean of g)
        v ← β₂v + (1 - β₂)g²                        (second moment, the running mean of g²)
        θ ← θ - lr · m̂ / (√v̂ + ε),   m̂ = m / (1 - β₁ᵗ),  v̂ = v / (1 - β₂ᵗ)   (bias-corrected)

    The last line is evaluated as θ ← θ - (lr / (1 - β₁ᵗ)) · m / (√v / √(1 - β₂ᵗ) + ε), PyTorch's order.

    :meth:`update` is this formula for one parameter, in NumPy (or CuPy). ``foreach=True`` (the default)
    updates every CPU parameter of a group in one compiled pass instead (``kernels.cpu.adam``: the same
    arithmetic in the same order, bitwise the same result, each element read and written once);
    ``foreach=False`` runs :meth:`update` parameter by parameter.
    """

    state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})
    decoupled = False  # AdamW: the decay acts on θ directly, not through the gradient

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, foreach: bool = True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas) if isinstance(betas, (list, tuple)) else betas, eps=eps, weight_decay=weight_decay))
        self.foreach = foreach
        self._lists = {}  # (group, dtype) -> (ids of its params and moments, their typed lists for the kernel)

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

    def update_all(self, todo: list) -> None:
        """With ``foreach``, one kernel call per (group, dtype, step) for the CPU parameters whose arrays are
        C-contiguous (so that flat views write through); :meth:`update` for the others."""
        if not self.foreach or type(self) not in (Adam, AdamW):  # a subclass may have changed update()
            return super().update_all(todo)
        from kernels.cpu.adam import adam_step, flat_list

        batches, rest = {}, []
        for p, group in todo:
            data, grad = p.data, p.grad
            if not (isinstance(data, np.ndarray) and isinstance(grad, np.ndarray) and data.dtype.kind == "f"
                    and grad.dtype == data.dtype and data.flags.c_contiguous and data.flags.writeable):
                rest.append((p, group))
                continue
            state = self.state.setdefault(p, {})
            if not state:
                state.update(step=0, exp_avg=np.zeros_like(data), exp_avg_sq=np.zeros_like(data))
            state["step"] += 1
            batches.setdefault((id(group), data.dtype, state["step"]), (group, []))[1].append((p, state))
        super().update_all(rest)
        for (group_id, dtype, step), (group, members) in batches.items():
            arrays = [(p.data, s["exp_avg"], s["exp_avg_sq"]) for p, s in members]
            ids = tuple(id(a) for triple in arrays for a in triple)
            cached_ids, lists = self._lists.get((group_id, dtype), (None, None))
            if cached_ids != ids:  # first step, or arrays replaced (load_state_dict, a new parameter array)
                lists = tuple(flat_list(column) for column in zip(*arrays))
                self._lists[group_id, dtype] = (ids, lists)
            params, exp_avgs, exp_avg_sqs = lists
            grads = flat_list([np.ascontiguousarray(p.grad) for p, _ in members])
            adam_step(params, grads, exp_avgs, exp_avg_sqs, lr=group["lr"], beta1=group["betas"][0],
                      beta2=group["betas"][1], eps=group["eps"], weight_decay=group["weight_decay"], step=step,
                      decoupled=self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay: θ ← θ - lr·λ·θ first, then Adam's update with the plain gradient.

    Coupled decay (Adam's) is divided by √v̂ like the gradient, so weights with large gradients are barely
    decayed; decoupled decay shrinks every weight by the same factor (1 - lr·λ).
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, foreach: bool = True):
        super().__init__(params, lr, betas, eps, weight_decay, foreach)

    def decay(self, param, grad, group):
        param.data *= param.dtype.type(1 - group["lr"] * group["weight_decay"])
        return grad
