"""Learning-rate schedules: lr_t = base_lr · f(t), with t the number of ``scheduler.step()`` calls so far.

Call ``scheduler.step()`` once after each ``optimizer.step()``. Warm-up (a linear ramp from almost 0) keeps
Adam's first, badly estimated steps small; the decay afterwards lets training settle.
"""

from __future__ import annotations

import math
from typing import Callable

from .optimizer import Optimizer


class LambdaLR:
    """lr of group g at step t = base_lr_g · lr_lambda(t); the base rates are the groups' lrs at creation."""

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float]):
        self.optimizer, self.lr_lambda = optimizer, lr_lambda
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        factor = self.lr_lambda(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """JSON-serialisable: the step count and the base rates (the function itself is code, not state)."""
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_step, self.base_lrs = int(state["last_step"]), list(state["base_lrs"])
        self._apply()


def _warmup_then(decay: Callable[[float], float], warmup_steps: int, total_steps: int, min_ratio: float):
    """f(t) = (t + 1)/warmup for t < warmup (the first update already uses a non-zero rate), then
    min_ratio + (1 - min_ratio)·decay(progress) with progress = (t - warmup)/(total - warmup) clipped to [0, 1]."""
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(f"schedule: need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")

    def factor(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        progress = min(1.0, (t - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * decay(progress)

    return factor


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up, then cosine decay from base_lr to min_lr_ratio·base_lr: decay(p) = (1 + cos πp)/2."""
    cosine = lambda p: 0.5 * (1 + math.cos(math.pi * p))  # noqa: E731
    return LambdaLR(optimizer, _warmup_then(cosine, warmup_steps, total_steps, min_lr_ratio))


def warmup_linear(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up, then linear decay from base_lr to min_lr_ratio·base_lr: decay(p) = 1 - p."""
    return LambdaLR(optimizer, _warmup_then(lambda p: 1 - p, warmup_steps, total_steps, min_lr_ratio))
