"""Ops that move elements around without arithmetic: reshape, permute, indexing, joining, selecting.

Their backward only routes gradients: back to the original layout (reshape, permute), or back to the
positions they were read from (indexing scatters; where/masked_fill zero the unselected side).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..tensor import Function
from ._util import check_broadcast, match_dtypes, unbroadcast


class Reshape(Function):
    """z = x viewed with a new shape (same elements, same order);  dL/dx = dL/dz reshaped back."""

    def forward(self, x, shape: tuple):
        self.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view a tensor of shape {tuple(x.shape)} ({x.size} elements) "
                             f"as shape {shape}") from None

    def backward(self, grad):
        return grad.reshape(self.shape)


class Permute(Function):
    """z = x with its axes reordered: z.shape[i] = x.shape[axes[i]];  dL/dx = dL/dz under the inverse order."""

    def forward(self, x, axes: tuple):
        in_range = all(-x.ndim <= a < x.ndim for a in axes)
        if not in_range or sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
            raise ValueError(f"permute: axes {axes} are not a permutation of the {x.ndim} axes of shape {tuple(x.shape)}")
        self.inverse = tuple(np.argsort([a % x.ndim for a in axes]))
        return x.transpose(axes)

    def backward(self, grad):
        return grad.transpose(self.inverse)


def _is_basic_index(index) -> bool:
    """True when ``index`` only slices (ints, slices, None, ...): such an index never repeats an element."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


class GetItem(Function):
    """z = x[index] for slices, integers, integer arrays and boolean masks.

    Backward scatters the gradient back into zeros of x's shape. With advanced (array) indices an element
    may be read twice (``x[[0, 0]]``), so the scatter must *add* (``xp.add.at``), not assign.
    """

    def forward(self, x, index):
        self.shape, self.dtype, self.index = x.shape, x.dtype, index
        try:
            return x[index]
        except IndexError as exc:
            raise IndexError(f"indexing a tensor of shape {tuple(x.shape)}: {exc}") from None

    def backward(self, grad):
        xp = get_array_module(grad)
        dx = xp.zeros(self.shape, dtype=self.dtype)
        if _is_basic_index(self.index):
            dx[self.index] = grad
        else:
            backend.scatter_add(dx, self.index, grad)
        return dx


class Concat(Function):
    """z = [x₁, x₂, …] joined along ``axis``;  each dL/dxᵢ is its own slice of dL/dz."""

    def forward(self, *xs, axis: int = 0):
        xp = get_array_module(xs[0])
        _check_same_dtype("concat", xs)
        self.axis = axis
        self.bounds = np.cumsum([x.shape[axis] for x in xs])[:-1].tolist()
        try:
            return xp.concatenate(xs, axis=axis)
        except ValueError:
            shapes = ", ".join(str(tuple(x.shape)) for x in xs)
            raise ValueError(f"concat: shapes {shapes} must agree on every axis except axis {axis}") from None

    def backward(self, grad):
        return tuple(get_array_module(grad).split(grad, self.bounds, axis=self.axis))


class Stack(Function):
    """z = [x₁, x₂, …] stacked along a new ``axis``;  dL/dxᵢ = dL/dz taken at index i of that axis."""

    def forward(self, *xs, axis: int = 0):
        xp = get_array_module(xs[0])
        _check_same_dtype("stack", xs)
        if len({x.shape for x in xs}) > 1:
            shapes = ", ".join(str(tuple(x.shape)) for x in xs)
            raise ValueError(f"stack: all tensors must have the same shape, got {shapes}")
        self.axis = axis
        return xp.stack(xs, axis=axis)

    def backward(self, grad):
        xp = get_array_module(grad)
        return tuple(xp.moveaxis(grad, self.axis, 0))


class RepeatInterleave(Function):
    """z = x with each slice along ``axis`` repeated ``repeats`` times in a row: [a, b] -> [a, a, b, b]
    (``torch.repeat_interleave`` with an int; grouped-query attention uses it to let one key/value head
    serve ``repeats`` query heads).

    Each input slice feeds ``repeats`` neighbouring output slices, so dL/dx is the sum of their gradients:
    split that axis of dL/dz into (n, repeats) and sum over the repeats.
    """

    def forward(self, x, repeats: int, axis: int):
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeat_interleave: repeats must be a positive int, got {repeats!r}")
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"repeat_interleave: axis {axis} is out of range for shape {tuple(x.shape)}")
        self.axis, self.repeats = axis % x.ndim, repeats
        return get_array_module(x).repeat(x, repeats, axis=self.axis)

    def backward(self, grad):
        a = self.axis
        grouped = grad.reshape(grad.shape[:a] + (grad.shape[a] // self.repeats, self.repeats) + grad.shape[a + 1:])
        return grouped.sum(axis=a + 1)


def _check_same_dtype(op: str, xs) -> None:
    if len({x.dtype for x in xs}) > 1:
        raise TypeError(f"{op}: all tensors must share a dtype, got {[str(x.dtype) for x in xs]}")


class Where(Function):
    """z = a where cond else b (cond broadcasts);  dL/da = dL/dz where cond, dL/db = dL/dz elsewhere."""

    def forward(self, cond, a, b):
        if cond.dtype != bool:
            raise TypeError(f"where: cond must be a boolean tensor, got dtype {cond.dtype} (shape {tuple(cond.shape)})")
        a, b = match_dtypes("where", a, b)
        check_broadcast("where", cond.shape, a.shape, b.shape)
        self.cond, self.a_shape, self.b_shape = cond, a.shape, b.shape
        return get_array_module(a).where(cond, a, b)

    def backward(self, grad):
        zero = grad.dtype.type(0)
        xp = get_array_module(grad)
        da = unbroadcast(xp.where(self.cond, grad, zero), self.a_shape) if self.needs_grad[1] else None
        db = unbroadcast(xp.where(self.cond, zero, grad), self.b_shape) if self.needs_grad[2] else None
        return None, da, db


class MaskedFill(Function):
    """z = value where mask else x (mask broadcasts to x);  dL/dx = dL/dz where the mask is False, else 0."""

    def forward(self, x, mask, value: float):
        if mask.dtype != bool:
            raise TypeError(f"masked_fill: mask must be boolean, got dtype {mask.dtype} (shape {tuple(mask.shape)})")
        try:
            self.mask = get_array_module(x).broadcast_to(mask, x.shape)
        except ValueError:
            raise ValueError(f"masked_fill: mask of shape {tuple(mask.shape)} does not broadcast to the "
                             f"tensor's shape {tuple(x.shape)}") from None
        return get_array_module(x).where(self.mask, x.dtype.type(value), x)

    def backward(self, grad):
        return get_array_module(grad).where(self.mask, grad.dtype.type(0), grad), None


class Cast(Function):
    """z = x converted to ``dtype``;  dL/dx = dL/dz converted back to x's dtype."""

    def forward(self, x, dtype):
        self.dtype = x.dtype
        return x.astype(dtype)

    def backward(self, grad):
        return grad.astype(self.dtype)


class ToDevice(Function):
    """z = x copied to ``device``;  dL/dx = dL/dz copied back."""

    def forward(self, x, device: str):
        self.device = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, grad):
        return backend.to_device(grad, self.device)
