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


class Expand(Function):
    """z = x broadcast to ``shape`` (new leading axes, size-1 axes repeated; -1 keeps a size), no copy;
    dL/dx = dL/dz summed over the copies (:func:`unbroadcast`)."""

    def forward(self, x, shape: tuple):
        lead = len(shape) - x.ndim
        if lead < 0:
            raise ValueError(f"expand: shape {shape} has fewer axes than the tensor's shape {tuple(x.shape)}")
        self.shape = x.shape
        shape = tuple(x.shape[i - lead] if n == -1 and i >= lead else n for i, n in enumerate(shape))
        try:
            return get_array_module(x).broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"expand: a tensor of shape {tuple(x.shape)} cannot be expanded to {shape} (only "
                             "axes of size 1 can grow)") from None

    def backward(self, grad):
        return unbroadcast(grad, self.shape)


class Triangle(Function):
    """z = the lower (``upper=False``, tril) or upper (triu) triangle of the last two axes, the rest zeroed:
    tril keeps z_ij = x_ij where j - i ≤ k, triu where j - i ≥ k (k = ``diagonal``);
    dL/dx = dL/dz on the kept triangle, 0 elsewhere (the same triangle of the gradient)."""

    def forward(self, x, diagonal: int = 0, upper: bool = False):
        if x.ndim < 2:
            name = "triu" if upper else "tril"
            raise ValueError(f"{name}: needs a tensor of at least 2 axes, got shape {tuple(x.shape)}")
        self.diagonal, self.upper = diagonal, upper
        return self._keep(x)

    def _keep(self, a):
        xp = get_array_module(a)
        return xp.triu(a, self.diagonal) if self.upper else xp.tril(a, self.diagonal)

    def backward(self, grad):
        return self._keep(grad)


class Gather(Function):
    """``torch.gather``: for every position p of ``index``, z[p] = x[p with its coordinate on ``axis`` replaced
    by index[p]]; for a matrix and axis=1, z[i, j] = x[i, index[i, j]]. ``index`` has x's number of axes, z has
    index's shape, and on every other axis the index may be shorter than x.

    dL/dx scatters dL/dz back to the positions read; one position can be read many times, so it adds
    (``scatter_add``).
    """

    def forward(self, x, index, axis: int):
        xp = get_array_module(x)
        if index.dtype.kind not in "iu" or index.ndim != x.ndim:
            raise TypeError(f"gather: index must be an integer tensor with the input's {x.ndim} axes, got dtype "
                            f"{index.dtype} and shape {tuple(index.shape)}")
        axis = axis % max(x.ndim, 1)
        if any(n > x.shape[a] for a, n in enumerate(index.shape) if a != axis):
            raise ValueError(f"gather: index shape {tuple(index.shape)} may exceed the input's shape "
                             f"{tuple(x.shape)} only on axis {axis}")
        if index.size and (int(index.min()) < 0 or int(index.max()) >= x.shape[axis]):  # no negatives, as torch
            raise IndexError(f"gather: index values must lie in [0, {x.shape[axis]}) for axis {axis} of shape "
                             f"{tuple(x.shape)}, got values in [{int(index.min())}, {int(index.max())}]")
        # one integer array per axis, broadcasting to index's shape: the index itself on ``axis``, and on every
        # other axis a's own coordinate (an arange along a, size 1 elsewhere)
        self.positions = tuple(
            index if a == axis else xp.arange(n).reshape([-1 if b == a else 1 for b in range(x.ndim)])
            for a, n in enumerate(index.shape)
        )
        self.shape, self.dtype = x.shape, x.dtype
        return x[self.positions]

    def backward(self, grad):
        dx = get_array_module(grad).zeros(self.shape, dtype=self.dtype)
        backend.scatter_add(dx, self.positions, grad)
        return dx, None


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
