"""Reductions over ``axis`` (None = all axes, an int, or a tuple), with ``keepdims``.

The backward of a reduction copies the gradient back over the reduced axes: first put those axes back as
size 1 (:func:`expand_reduced`), then let broadcasting spread it.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..tensor import Function
from ._util import as_float, expand_reduced, normalize_axes


class Sum(Function):
    """z = Σ_axis x;  dz/dx = 1 for every summed element."""

    def forward(self, x, axis=None, keepdims: bool = False):
        self.shape, self.keepdims = x.shape, keepdims
        self.axes = normalize_axes(axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, grad):
        xp = get_array_module(grad)
        return xp.broadcast_to(expand_reduced(grad, self.shape, self.axes, self.keepdims), self.shape)


class Mean(Function):
    """z = (1/N) Σ_axis x over N elements;  dz/dx = 1/N."""

    def forward(self, x, axis=None, keepdims: bool = False):
        x = as_float(x)
        self.shape, self.keepdims = x.shape, keepdims
        self.axes = normalize_axes(axis, x.ndim)
        self.count = 1
        for a in self.axes:
            self.count *= x.shape[a]
        return x.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, grad):
        xp = get_array_module(grad)
        grad = expand_reduced(grad, self.shape, self.axes, self.keepdims) / grad.dtype.type(self.count)
        return xp.broadcast_to(grad, self.shape)


class Max(Function):
    """z = max_axis x;  dz/dx = 1/k at the k elements equal to the maximum, 0 elsewhere.

    Ties share the gradient equally (like ``torch.amax``), so the gradient is the same whichever
    maximum one would have picked.
    """

    def forward(self, x, axis=None, keepdims: bool = False):
        self.x, self.keepdims = x, keepdims
        self.axes = normalize_axes(axis, x.ndim)
        self.z = self.reduce(x, self.axes)  # (kept axes, with the reduced ones as size 1)
        return self.z if keepdims else self.z.reshape(
            tuple(n for i, n in enumerate(x.shape) if i not in self.axes)
        )

    @staticmethod
    def reduce(x, axes):
        """The extreme value over ``axes``, kept as size-1 axes (:class:`Min` is this op with ``min``)."""
        return x.max(axis=axes, keepdims=True)

    def backward(self, grad):
        is_extreme = self.x == self.z
        count = is_extreme.sum(axis=self.axes, keepdims=True)
        grad = expand_reduced(grad, self.x.shape, self.axes, self.keepdims)
        return grad * is_extreme / count.astype(grad.dtype)


class Min(Max):
    """z = min_axis x;  dz/dx = 1/k at the k elements equal to the minimum, 0 elsewhere (like ``torch.amin``)."""

    @staticmethod
    def reduce(x, axes):
        return x.min(axis=axes, keepdims=True)


class Prod(Function):
    """z = Π_axis x;  dz/dx_i = Π_{j≠i} x_j, the product of the others.

    The product of the others is (product of those before i)·(product of those after i), two exclusive
    cumulative products, never z / x_i: so a zero needs no special case. With one zero, that element gets
    the product of the rest and the others 0; with two or more zeros every derivative is 0 (as in PyTorch).
    """

    def forward(self, x, axis=None, keepdims: bool = False):
        self.x, self.keepdims = x, keepdims
        self.axes = normalize_axes(axis, x.ndim)
        return x.prod(axis=self.axes, keepdims=keepdims)

    def backward(self, grad):
        xp = get_array_module(grad)
        kept = [a for a in range(self.x.ndim) if a not in self.axes]
        order = kept + list(self.axes)
        moved = self.x.transpose(order)  # (kept…, reduced…)
        rows = moved.reshape(moved.shape[:len(kept)] + (-1,))  # (kept…, N): one row per product
        ones = xp.ones_like(rows[..., :1])
        before = xp.cumprod(xp.concatenate([ones, rows[..., :-1]], axis=-1), axis=-1)  # Π_{j<i} x_j
        after = xp.cumprod(xp.concatenate([ones, rows[..., :0:-1]], axis=-1), axis=-1)[..., ::-1]  # Π_{j>i} x_j
        others = (before * after).reshape(moved.shape).transpose(tuple(np.argsort(order)))  # x's shape
        return expand_reduced(grad, self.x.shape, self.axes, self.keepdims) * others


class Cumsum(Function):
    """z_i = Σ_{j≤i} x_j along ``axis``;  dL/dx_j = Σ_{i≥j} dL/dz_i, the cumulative sum taken from the end."""

    def forward(self, x, axis: int):
        axes = normalize_axes(axis, x.ndim)
        self.axis = axes[0] if axes else None  # None: a 0-d x, whose cumulative sum is itself
        return x.cumsum(axis=self.axis).reshape(x.shape)  # reshape: NumPy's cumsum of a 0-d array is 1-d

    def backward(self, grad):
        xp = get_array_module(grad)
        return xp.flip(xp.flip(grad, self.axis).cumsum(axis=self.axis), self.axis).reshape(grad.shape)


class Var(Function):
    """z = Σ_axis (x - x̄)² / (N - correction);  dz/dx = 2(x - x̄) / (N - correction).

    ``correction=1`` (the default, as in PyTorch) is the unbiased estimate; ``correction=0`` the
    population variance that LayerNorm uses. (The x̄ term's own derivative sums to zero.)
    """

    def forward(self, x, axis=None, keepdims: bool = False, correction: int = 1):
        x = as_float(x)
        self.keepdims = keepdims
        self.axes = normalize_axes(axis, x.ndim)
        count = 1
        for a in self.axes:
            count *= x.shape[a]
        self.denominator = x.dtype.type(max(count - correction, 0))
        self.centered = x - x.mean(axis=self.axes, keepdims=True)
        return (self.centered * self.centered).sum(axis=self.axes, keepdims=keepdims) / self.denominator

    def backward(self, grad):
        grad = expand_reduced(grad, self.centered.shape, self.axes, self.keepdims)
        return grad * 2 * self.centered / self.denominator


class Std(Var):
    """z = √var(x) (``correction`` as in :class:`Var`);  dz/dx = (dvar/dx) / 2z = (x - x̄) / ((N - correction)·z).

    Where z = 0 (all elements of a group equal) the derivative does not exist; it is taken as 0, as in
    PyTorch.
    """

    def forward(self, x, axis=None, keepdims: bool = False, correction: int = 1):
        self.z = get_array_module(x).sqrt(super().forward(x, axis, keepdims, correction))
        return self.z

    def backward(self, grad):
        xp = get_array_module(grad)
        flat = self.z == 0
        # dL/dvar = dL/dz · 1/(2z), and 0 where z = 0 (the 1 there only avoids dividing by zero)
        dvar = xp.where(flat, grad.dtype.type(0), grad) / (2 * xp.where(flat, grad.dtype.type(1), self.z))
        return super().backward(dvar)
