"""Reductions over ``axis`` (None = all axes, an int, or a tuple), with ``keepdims``.

The backward of a reduction copies the gradient back over the reduced axes: first put those axes back as
size 1 (:func:`expand_reduced`), then let broadcasting spread it.
"""

from __future__ import annotations

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
        self.z = x.max(axis=self.axes, keepdims=True)
        return self.z if keepdims else self.z.reshape(
            tuple(n for i, n in enumerate(x.shape) if i not in self.axes)
        )

    def backward(self, grad):
        is_max = self.x == self.z
        count = is_max.sum(axis=self.axes, keepdims=True)
        grad = expand_reduced(grad, self.x.shape, self.axes, self.keepdims)
        return grad * is_max / count.astype(grad.dtype)


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
