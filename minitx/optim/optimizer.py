"""The Optimizer base class (parameter groups, state, zero_grad, state_dict) and gradient clipping.

An optimizer holds references to the model's Parameters, grouped in ``param_groups`` (a list of dicts, each
with its own hyperparameters: ``lr`` per group makes "smaller learning rate for the embeddings" one line).
``step()`` updates every parameter that has a gradient, in place on ``param.data`` and outside the graph;
per-parameter memory (momentum, Adam's moments) lives in ``state[param]``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..tensor import Tensor, no_grad


class Optimizer:
    """Base class: subclasses set ``defaults`` and write ``update(param, grad, state, group)`` with the math."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict] = []
        self.state: dict[Tensor, dict] = {}
        seen: set[int] = set()
        for group in groups:
            group = {**self.defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                if not isinstance(p, Tensor) or not p.requires_grad:
                    raise TypeError(f"{type(self).__name__}: every parameter must be a Tensor that requires grad")
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter (shape {p.shape}) appears twice")
                seen.add(id(p))
            self.param_groups.append(group)

    @property
    def lr(self) -> float:
        """The learning rate of the first group (the only one, usually)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.param_groups:
            group["lr"] = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    @no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (parameters without one are left alone)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, p.grad, self.state.setdefault(p, {}), group)

    def update(self, param: Tensor, grad, state: dict, group: dict) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ state dicts
    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        """{"state": {index: {name: array or number}}, "param_groups": [hyperparameters, "params": [index…]]}.

        Parameters are named by their position over all groups (0, 1, …), as in PyTorch; arrays are NumPy copies.
        """
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[id(p)]: {k: (np.array(backend.to_numpy(v), copy=True) if hasattr(v, "shape") else v)
                                for k, v in s.items()}
                 for p, s in self.state.items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def check_state_dict(self, state_dict: dict) -> None:
        """Raise ValueError if ``state_dict`` does not fit this optimizer's parameters; change nothing."""
        params = self._params()
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved groups hold "
                             f"{[len(g['params']) for g in groups]} parameters, this optimizer's "
                             f"{[len(g['params']) for g in self.param_groups]}")
        for i, s in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"{type(self).__name__}.load_state_dict: state for parameter {i}, but there are "
                                 f"only {len(params)}")
            for name, value in s.items():
                if hasattr(value, "shape") and tuple(value.shape) != params[i].shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: state {name!r} of parameter {i} has "
                                     f"shape {tuple(value.shape)}, the parameter {params[i].shape}")

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and per-parameter state saved by :meth:`state_dict` (checked first)."""
        self.check_state_dict(state_dict)
        params = self._params()
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            group.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: (backend.to_device(np.asarray(v, dtype=p.dtype), p.device).copy()
                                 if hasattr(v, "shape") else v) for k, v in s.items()}


def clip_grad_norm_(params, max_norm: float, eps: float = 1e-6) -> float:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``; return the norm
    before clipping.

        ‖g‖ = √(Σ_p Σ_i g_p,i²);   if ‖g‖ > max_norm:  g ← g · max_norm / (‖g‖ + ε)

    (one factor for all parameters keeps the update's direction, unlike clipping each one on its own.)
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g * g).sum()) for g in grads))
    factor = max_norm / (total + eps)
    if factor < 1:
        for g in grads:
            g *= g.dtype.type(factor)
    return total
