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

    state_keys: frozenset = frozenset()  # the names a subclass keeps in state[param] (checked on load)

    def __init__(self, params, defaults: dict):
        name = type(self).__name__
        if isinstance(params, (Tensor, dict, str, bytes)) or not hasattr(params, "__iter__"):
            raise TypeError(f"{name}: params must be an iterable of Parameters or of parameter groups (dicts), "
                            f"got {type(params).__name__} (wrap a single tensor in a list: [p])")
        self.defaults = dict(defaults)
        check_hyperparameters(name, self.defaults)
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict] = []
        self.state: dict[Tensor, dict] = {}
        seen: set[int] = set()
        for group in groups:
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{name}: a parameter group must be a dict with a 'params' entry, got "
                                f"{type(group).__name__} (do not mix groups and bare parameters)")
            unknown = set(group) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"{name}: unknown hyperparameter(s) {sorted(unknown)} in a parameter group; "
                                 f"expected some of {sorted(self.defaults)}")
            members = group["params"]
            if isinstance(members, Tensor):
                members = [members]
            group = {**self.defaults, **group, "params": list(members)}
            check_hyperparameters(name, group)
            for p in group["params"]:
                if not isinstance(p, Tensor) or not p.requires_grad:
                    raise TypeError(f"{name}: every parameter must be a Tensor that requires grad, got "
                                    f"{type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"{name}: a parameter (shape {p.shape}) appears twice")
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
        """One update of every parameter that has a gradient (parameters without one are left alone).

        Every gradient's shape is checked before the first parameter moves, so a bad one changes nothing.
        """
        todo = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        for i, (p, _) in enumerate(todo):
            if tuple(p.grad.shape) != p.shape:
                raise ValueError(f"{type(self).__name__}.step: the gradient of parameter {i} has shape "
                                 f"{tuple(p.grad.shape)}, the parameter {p.shape}; nothing was updated")
        self.update_all(todo)

    def update_all(self, todo: list) -> None:
        """Update each (parameter, its group) of ``todo``; a subclass may do them all in one pass."""
        for p, group in todo:
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
        """Raise ValueError if ``state_dict`` does not fit this optimizer (types, keys, shapes, hyperparameter
        ranges); change nothing."""
        where = f"{type(self).__name__}.load_state_dict"
        params = self._params()
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError(f"{where}: expected a dict with keys 'state' and 'param_groups', got "
                             f"{sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__}")
        groups, states = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                   for g in groups):
            raise ValueError(f"{where}: 'param_groups' must be a list of dicts, each with a 'params' list")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"{where}: the saved groups hold {[len(g['params']) for g in groups]} parameters, "
                             f"this optimizer's {[len(g['params']) for g in self.param_groups]}")
        for g in groups:
            if set(g) != set(self.defaults) | {"params"}:
                raise ValueError(f"{where}: a saved group has the hyperparameters {sorted(set(g) - {'params'})}, "
                                 f"this optimizer {sorted(self.defaults)}")
            check_hyperparameters(where, {k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items()})
        if not isinstance(states, dict):
            raise ValueError(f"{where}: 'state' must be a dict, got {type(states).__name__}")
        for i, s in states.items():
            if isinstance(i, bool) or not isinstance(i, (int, str)) or not str(i).isdigit():
                raise ValueError(f"{where}: state keys are parameter indices, got {i!r}")
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"{where}: state for parameter {i}, but there are only {len(params)}")
            if not isinstance(s, dict) or not set(s) <= self.state_keys:
                raise ValueError(f"{where}: the state of parameter {i} must be a dict with keys among "
                                 f"{sorted(self.state_keys)}, got "
                                 f"{sorted(s) if isinstance(s, dict) else type(s).__name__}")
            for name, value in s.items():
                if hasattr(value, "shape"):
                    if tuple(value.shape) != params[i].shape:
                        raise ValueError(f"{where}: state {name!r} of parameter {i} has shape "
                                         f"{tuple(value.shape)}, the parameter {params[i].shape}")
                elif isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{where}: state {name!r} of parameter {i} must be an array or a number, "
                                     f"got {type(value).__name__}")

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


def _number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_hyperparameters(where: str, group: dict) -> None:
    """Raise ValueError naming the first hyperparameter of ``group`` outside its range:
    lr ≥ 0 and finite, betas in [0, 1), eps > 0, weight_decay ≥ 0, momentum ≥ 0, dampening in [0, 1]."""
    ranges = {"lr": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
              "eps": (lambda v: 0 < v < math.inf, "a finite number > 0"),
              "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
              "momentum": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
              "dampening": (lambda v: 0 <= v <= 1, "a number in [0, 1]")}
    for key, (ok, expected) in ranges.items():
        if key in group and not (_number(group[key]) and ok(group[key])):
            raise ValueError(f"{where}: {key} must be {expected}, got {group[key]!r}")
    if "betas" in group:
        betas = group["betas"]
        if not (isinstance(betas, tuple) and len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"{where}: betas must be two numbers in [0, 1), got {betas!r}")


def clip_grad_norm_(params, max_norm: float, eps: float = 1e-6) -> float:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``; return the norm
    before clipping.

        ‖g‖ = √(Σ_p Σ_i g_p,i²);   if ‖g‖ > max_norm:  g ← g · max_norm / (‖g‖ + ε)

    (one factor for all parameters keeps the update's direction, unlike clipping each one on its own.)
    ``max_norm`` must be > 0 (a negative one would flip the gradient); a non-finite norm (a NaN or inf in some
    gradient) raises FloatingPointError and leaves the gradients as they are.
    """
    if not (_number(max_norm) and max_norm > 0):
        raise ValueError(f"clip_grad_norm_: max_norm must be a number > 0, got {max_norm!r}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g * g).sum()) for g in grads))
    if not math.isfinite(total):
        raise FloatingPointError(f"clip_grad_norm_: the gradient norm is {total} (a gradient holds NaN or inf)")
    factor = max_norm / (total + eps)
    if factor < 1:
        for g in grads:
            g *= g.dtype.type(factor)
    return total
