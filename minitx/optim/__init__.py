"""Optimizers and learning-rate schedules: SGD, Adam, AdamW, gradient clipping, warm-up + decay."""

from .adam import Adam, AdamW
from .optimizer import Optimizer, clip_grad_norm_
from .schedulers import LambdaLR, warmup_cosine, warmup_linear
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "LambdaLR", "Optimizer", "clip_grad_norm_", "warmup_cosine", "warmup_linear"]
