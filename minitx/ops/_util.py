"""Helpers shared by the ops: broadcasting bookkeeping and input checks."""

from __future__ import annotations

import numpy as np

from ..backend import default_dtype


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` back down to ``shape``, undoing NumPy broadcasting.

    If ``y = f(x)`` broadcast ``x`` of ``shape`` up to ``grad.shape``, each element of ``x`` was used once
    per copy, so dL/dx is the sum of the gradient over the copies: over the leading axes that broadcasting
    added, and over every axis where ``x`` had size 1.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1
    )
    grad = grad.sum(axis=axes, keepdims=True) if axes else grad
    return grad.reshape(shape)


def check_broadcast(op: str, *shapes) -> tuple:
    """The shape that ``shapes`` broadcast to, or a ValueError naming ``op`` and every shape.

    Broadcasting aligns shapes on the right; two sizes are compatible when equal or when one of them is 1.
    """
    try:
        return np.broadcast_shapes(*(tuple(s) for s in shapes))
    except ValueError:
        listed = " and ".join(str(tuple(s)) for s in shapes)
        raise ValueError(f"{op}: shapes {listed} do not broadcast together (aligned on the right, each pair "
                         "of sizes must be equal or contain a 1)") from None


def normalize_axes(axis, ndim: int) -> tuple:
    """``axis`` (None, int or tuple, negatives allowed) as a sorted tuple of non-negative axes.

    A 0-d tensor has no axes, but accepts 0 and -1 as its one "axis", as PyTorch does: the result is the
    empty tuple, so a reduction over it reduces nothing and returns the value.
    """
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    bound = max(ndim, 1)
    for a in axes:
        if not -bound <= a < bound:
            raise np.exceptions.AxisError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(a % ndim for a in axes)) if ndim else ()


def as_float(x):
    """``x`` itself when it is floating; integers and booleans become the default float dtype.

    Ops whose result is not an integer (true division, exp, log, mean, softmax...) apply this to their
    inputs, as PyTorch does: ``ints / 2`` and ``ints.exp()`` are float32 like ``ints * 0.5``, not float64.
    """
    return x if x.dtype.kind == "f" else x.astype(default_dtype())


def expand_reduced(grad, shape: tuple, axes: tuple, keepdims: bool):
    """Put back the reduced ``axes`` (size 1) so ``grad`` broadcasts against an input of ``shape``."""
    if not keepdims:
        grad = grad.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))
    return grad


def match_dtypes(op: str, a, b):
    """Bring two operands to one dtype, or explain why they cannot be.

    Two floating arrays must already share a dtype (mixing float32 and float64 silently doubles memory and
    time, so it is an error). A boolean or integer operand next to a float one is cast to the float dtype.
    """
    if a.dtype == b.dtype:
        return a, b
    fa, fb = a.dtype.kind == "f", b.dtype.kind == "f"
    if fa and fb:
        raise TypeError(
            f"{op}: operands have different dtypes {a.dtype} (shape {tuple(a.shape)}) and {b.dtype} "
            f"(shape {tuple(b.shape)}); convert one with .astype()"
        )
    if fa:
        return a, b.astype(a.dtype)
    if fb:
        return a.astype(b.dtype), b
    return a, b
