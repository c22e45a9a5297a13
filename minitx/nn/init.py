"""Weight initialisation, in place on a Parameter's data, drawn from the seeded generator of its device.

Why the scale matters: a layer y = W x with n inputs of unit variance gives outputs of variance
n·Var(W), so Var(W) ≈ 1/n keeps signals from growing or shrinking from layer to layer.

A model whose every weight is about to be loaded is built inside ``with skip_init():``: the fill functions
then leave each tensor as allocated, so nothing is drawn or written (see :func:`skip_init`).
"""

from __future__ import annotations

import contextlib
import math

from .. import backend
from ..tensor import Tensor

_skipping = False


@contextlib.contextmanager
def skip_init():
    """Inside the block, every fill function here returns its tensor untouched: its values are whatever its
    allocation (``empty``) held, and the random generators do not move.

    For building a model that ``load_state_dict`` fills right after (``minitx.hub``): drawing and writing
    its weights would be wasted work, and the pages of a fresh large allocation take no memory until
    written, so a model built this way costs no memory before its weights arrive (with
    ``load_state_dict(..., assign=True)`` those allocations are never written at all).
    """
    global _skipping
    previous, _skipping = _skipping, True
    try:
        yield
    finally:
        _skipping = previous


def uniform_(tensor: Tensor, low: float, high: float) -> Tensor:
    """Fill with samples of U(low, high)."""
    if _skipping:
        return tensor
    sample = backend.rng(tensor.device).uniform(low, high, size=tensor.shape)
    tensor.data[...] = sample.astype(tensor.dtype, copy=False)
    return tensor


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill with samples of N(mean, std²)."""
    if _skipping:
        return tensor
    sample = backend.rng(tensor.device).normal(mean, std, size=tensor.shape)
    tensor.data[...] = sample.astype(tensor.dtype, copy=False)
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    if not _skipping:
        tensor.data[...] = 0
    return tensor


def ones_(tensor: Tensor) -> Tensor:
    if not _skipping:
        tensor.data[...] = 1
    return tensor


def xavier_uniform_(tensor: Tensor, fan_in: int | None = None, fan_out: int | None = None) -> Tensor:
    """Glorot & Bengio (2010): U(-a, a) with a = √(6 / (fan_in + fan_out)), so Var = 2 / (fan_in + fan_out).

    For a weight (out, in) the fans are in and out; pass them explicitly when the matrix is one slice of a
    larger one (PyTorch's attention stores W_q, W_k, W_v as one (3D, D) matrix: fan_out = 3D).
    """
    if tensor.ndim < 2:
        raise ValueError(f"xavier_uniform_: needs a tensor with at least 2 dimensions, got shape {tensor.shape}")
    receptive = math.prod(tensor.shape[2:])
    fan_in = tensor.shape[1] * receptive if fan_in is None else fan_in
    fan_out = tensor.shape[0] * receptive if fan_out is None else fan_out
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound)
