"""The Tensor and the reverse-mode autograd engine.

A :class:`Tensor` wraps an array (``data``: NumPy on "cpu", CuPy on "cuda") and, when it was made by an op
while gradients are being recorded, a link to the :class:`Function` that made it (``_ctx``). Those links
form a directed acyclic graph from the inputs to the result. ``loss.backward()`` walks it in reverse:

1. order every node so that a node comes after all nodes that use it (a topological sort, done with an
   explicit stack so that a graph 20,000 ops deep needs no recursion);
2. start from dL/dL = 1 and, for each node in that order, hand its gradient to its Function's ``backward``,
   which returns one gradient per input (the chain rule, one op at a time);
3. add up the gradients that reach the same tensor along different paths (``b = a + a`` gives ``2``),
   and store the total in ``.grad`` of the leaves (tensors created by the user with ``requires_grad=True``).

After ``backward`` the graph's saved arrays are released, as in PyTorch, unless ``retain_graph=True``;
walking a released graph again raises a clear error. ``.grad`` is a plain array (NumPy or CuPy) of the
tensor's shape and dtype: gradients are data, not part of a new graph.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import backend

# ------------------------------------------------------------------------------------------------ no_grad
_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


class _GradMode(contextlib.ContextDecorator):
    """Set gradient recording to ``enabled`` inside a ``with`` block or a decorated function.

    The previous settings are kept on a stack, not in one attribute, because a decorator reuses one
    instance for every call: a decorated function that calls itself enters the same instance twice.
    """

    enabled = True

    def __init__(self):
        self._previous: list[bool] = []

    def __enter__(self):
        self._previous.append(is_grad_enabled())
        _state.grad_enabled = self.enabled

    def __exit__(self, *exc):
        _state.grad_enabled = self._previous.pop()
        return False


class no_grad(_GradMode):
    """Context manager (and decorator) inside which ops record no graph: for evaluation and updates."""

    enabled = False


class enable_grad(_GradMode):
    """Turn recording back on inside a ``no_grad`` block."""

    enabled = True


# ----------------------------------------------------------------------------------------------- Function
class Function:
    """One differentiable op. Subclasses write ``forward`` and ``backward`` side by side.

    ``forward(*arrays, **kwargs) -> array`` computes the result from raw arrays and keeps in ``self`` what
    the backward needs. ``backward(grad) -> tuple`` receives dL/d(output) and returns dL/d(input) for each
    tensor input, in order (``None`` for an input that needs no gradient). Every returned gradient has its
    input's shape and dtype. ``self.needs_grad[i]`` says whether input ``i`` wants one, so backward can skip
    work that nobody needs.

    Users call ``SomeOp.apply(*inputs, **kwargs)``; inputs that are not Tensors (Python numbers, arrays)
    become constant tensors on the device of the tensor inputs.
    """

    released = False

    @classmethod
    def apply(cls, *inputs, **kwargs) -> "Tensor":
        tensors = _as_tensors(cls.__name__, inputs)
        fn = cls()
        fn.needs_grad = tuple(t.requires_grad for t in tensors)
        data = fn.forward(*(t.data for t in tensors), **kwargs)
        record = is_grad_enabled() and any(fn.needs_grad)
        out = Tensor._wrap(data, requires_grad=record)
        if record:
            fn.inputs = tensors
            out._ctx = fn
        return out

    def forward(self, *arrays, **kwargs):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def release(self) -> None:
        """Drop everything saved for backward (called after backward unless retain_graph=True)."""
        self.__dict__.clear()
        self.released = True


def _as_tensors(op: str, inputs) -> list["Tensor"]:
    """Wrap constants as tensors and make sure every tensor input lives on the same device."""
    devices = {t.device for t in inputs if isinstance(t, Tensor)}
    if len(devices) > 1:
        shapes = ", ".join(f"{t.device}:{t.shape}" for t in inputs if isinstance(t, Tensor))
        raise backend.DeviceError(f"{op}: inputs are on different devices ({shapes}); move them with .to()")
    device = devices.pop() if devices else "cpu"
    like = next((t for t in inputs if isinstance(t, Tensor) and t.dtype.kind == "f"), None)
    out = []
    for x in inputs:
        if isinstance(x, Tensor):
            out.append(x)
        elif isinstance(x, (int, float, bool)) and like is not None:
            # A Python number adopts the float tensor's dtype (x * 0.5 stays float32).
            out.append(Tensor(backend.xp_for(device).asarray(x, dtype=like.dtype)))
        else:
            out.append(Tensor(x, device=device))
    return out


# ------------------------------------------------------------------------------------------------- Tensor
class Tensor:
    """An n-dimensional array that remembers how it was computed, so gradients can flow back through it.

    ``Tensor(data, requires_grad=False, dtype=None, device=None)``: ``data`` is a number, nested list,
    NumPy/CuPy array or Tensor. Python floats become the default dtype (float32); NumPy arrays keep theirs.
    Only floating tensors can require gradients.
    """

    __array_priority__ = 1000  # numpy_scalar * tensor calls Tensor.__rmul__, not numpy's broadcasting

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        device = backend.check_device(device) if device is not None else backend.device_of(data)
        xp = backend.xp_for(device)
        if dtype is None and not hasattr(data, "dtype"):
            probe = np.asarray(data)
            dtype = backend.default_dtype() if probe.dtype.kind == "f" else probe.dtype
        data = backend.to_device(data, device) if hasattr(data, "dtype") else data
        self.data = xp.asarray(data, dtype=dtype)
        self.grad = None
        self._ctx: Function | None = None
        self._retains_grad = False
        self.requires_grad = requires_grad

    @classmethod
    def _wrap(cls, data, requires_grad: bool = False) -> "Tensor":
        """Fast constructor for op results: ``data`` is already an array of the right dtype and device.

        NumPy reductions to a single number return a NumPy scalar, not an array; it becomes a 0-d array so
        that ``.data`` is always an array (as it is on CuPy).
        """
        if isinstance(data, np.generic):
            data = np.asarray(data)
        t = cls.__new__(cls)
        t.data, t.grad, t._ctx, t._retains_grad = data, None, None, False
        t._requires_grad = requires_grad
        return t

    # -------------------------------------------------------------------------------------- properties
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if value and self.data.dtype.kind != "f":
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype} "
                f"(shape {self.shape}); convert with .astype('float32') first"
            )
        self._requires_grad = bool(value)

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    @property
    def xp(self):
        """The array module (numpy or cupy) that holds this tensor's data."""
        return backend.get_array_module(self.data)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        device = ", device='cuda'" if self.device == "cuda" else ""
        body = np.array2string(backend.to_numpy(self.data), separator=", ", prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{device}{grad})"

    # -------------------------------------------------------------------------------------- conversions
    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU when needed; shares memory on the CPU)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item(): only a one-element tensor converts to a Python number, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device: str) -> "Tensor":
        """This tensor on ``device``; differentiable (the gradient is moved back)."""
        if backend.check_device(device) == self.device:
            return self
        return ops.ToDevice.apply(self, device=device)

    def detach(self) -> "Tensor":
        """The same data, cut from the graph: no gradient flows through the result."""
        return Tensor._wrap(self.data)

    def requires_grad_(self, value: bool = True) -> "Tensor":
        self.requires_grad = value
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves always keep theirs)."""
        self._retains_grad = True

    def zero_grad(self) -> None:
        self.grad = None

    # --------------------------------------------------------------------------------------- backward
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate dself/dleaf into ``leaf.grad`` for every leaf that requires a gradient.

        ``grad`` is dL/dself; it may be omitted only for a one-element tensor (it is then 1).
        """
        if not self.requires_grad:
            raise RuntimeError(
                f"backward(): this tensor (shape {self.shape}) does not require grad and has no graph; "
                "did you create it under no_grad() or from tensors without requires_grad=True?"
            )
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward(): grad can be implicit only for a one-element output, got shape {self.shape}; "
                    "pass grad= of the same shape (or reduce the output to a scalar first)"
                )
            grad = self.xp.ones(self.data.shape, dtype=self.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = self.xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)} but the tensor has shape {self.shape}")

        grads = {id(self): grad}  # tensor id -> dL/dtensor accumulated so far
        sums = set()  # ids whose gradient is a sum made below: an array of our own, so later terms add in place
        for node in _reverse_topological_order(self):
            g = grads.pop(id(node), None)
            sums.discard(id(node))
            if g is None:  # every path from here to the output was cut (an input grad of None)
                continue
            if node._ctx is None or node._retains_grad:
                # .grad must be an array of its own that an optimiser may update in place, so the first
                # gradient is copied: it may be a read-only broadcast view (from sum/mean), a NumPy scalar
                # (0-d arithmetic gives one), or the very array handed to another input too (add passes its
                # gradient on to both). Sums are new arrays (asarray: 0-d + 0-d is a scalar again).
                node.grad = node.xp.array(g) if node.grad is None else node.xp.asarray(node.grad + g)
            fn = node._ctx
            if fn is None:
                continue
            if fn.released:
                raise RuntimeError(
                    f"backward(): trying to go through the graph a second time, but {type(fn).__name__}'s "
                    "saved values were already freed; call backward(retain_graph=True) the first time"
                )
            input_grads = fn.backward(g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for t, tg in zip(fn.inputs, input_grads):
                if tg is None or not t.requires_grad:
                    continue
                key = id(t)
                if key not in grads:
                    grads[key] = tg  # may be shared with another input (add passes its gradient to both)
                elif key in sums and grads[key].dtype == tg.dtype:
                    grads[key] += tg  # in place: no new array for a tensor used three or more times
                else:
                    grads[key] = grads[key] + tg
                    sums.add(key)
            if not retain_graph:
                fn.release()

    # --------------------------------------------------------------------------------------- operators
    def __add__(self, other):
        return ops.Add.apply(self, other)

    def __radd__(self, other):
        return ops.Add.apply(other, self)

    def __sub__(self, other):
        return ops.Sub.apply(self, other)

    def __rsub__(self, other):
        return ops.Sub.apply(other, self)

    def __mul__(self, other):
        return ops.Mul.apply(self, other)

    def __rmul__(self, other):
        return ops.Mul.apply(other, self)

    def __truediv__(self, other):
        return ops.Div.apply(self, other)

    def __rtruediv__(self, other):
        return ops.Div.apply(other, self)

    def __pow__(self, other):
        return ops.Pow.apply(self, other)

    def __rpow__(self, other):
        return ops.Pow.apply(other, self)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __matmul__(self, other):
        return ops.MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return ops.MatMul.apply(other, self)

    def __getitem__(self, index):
        return ops.GetItem.apply(self, index=_unwrap_index(index))

    # Comparisons give boolean tensors with no graph (a comparison has no useful derivative).
    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._wrap(op(self.data, other))

    def __eq__(self, other):  # noqa: D105 - elementwise, like NumPy and PyTorch
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def __invert__(self):
        return Tensor._wrap(~self.data)

    __hash__ = object.__hash__  # tensors are graph nodes, hashed by identity

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous; use .any() or .all()")
        return bool(self.data)

    def any(self) -> bool:
        return bool(self.data.any())

    def all(self) -> bool:
        return bool(self.data.all())

    # -------------------------------------------------------------------- methods that forward to ops
    def exp(self):
        return ops.Exp.apply(self)

    def log(self):
        return ops.Log.apply(self)

    def sqrt(self):
        return ops.Sqrt.apply(self)

    def tanh(self):
        return ops.Tanh.apply(self)

    def sigmoid(self):
        return ops.Sigmoid.apply(self)

    def relu(self):
        return ops.ReLU.apply(self)

    def abs(self):
        return ops.Abs.apply(self)

    def sin(self):
        return ops.Sin.apply(self)

    def cos(self):
        return ops.Cos.apply(self)

    def rsqrt(self):
        return ops.Rsqrt.apply(self)

    def clamp(self, min=None, max=None):  # noqa: A002 - PyTorch's names
        """Each element clipped to [min, max] (either may be None); see ``ops.Clamp`` for the gradient."""
        return ops.Clamp.apply(self, low=min, high=max)

    def maximum(self, other):
        return ops.Maximum.apply(self, other)

    def minimum(self, other):
        return ops.Minimum.apply(self, other)

    def sum(self, axis=None, keepdims: bool = False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False):
        return ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims: bool = False):
        """The largest value over ``axis`` (PyTorch's ``amax``: values only, no indices)."""
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims: bool = False):
        """The smallest value over ``axis`` (PyTorch's ``amin``: values only, no indices)."""
        return ops.Min.apply(self, axis=axis, keepdims=keepdims)

    def prod(self, axis=None, keepdims: bool = False):
        return ops.Prod.apply(self, axis=axis, keepdims=keepdims)

    def logsumexp(self, axis, keepdims: bool = False):
        return ops.LogSumExp.apply(self, axis=axis, keepdims=keepdims)

    def cumsum(self, axis: int):
        return ops.Cumsum.apply(self, axis=axis)

    def var(self, axis=None, keepdims: bool = False, correction: int = 1):
        return ops.Var.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def std(self, axis=None, keepdims: bool = False, correction: int = 1):
        return ops.Std.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def argmax(self, axis=None) -> "Tensor":
        return Tensor._wrap(self.data.argmax(axis=axis))

    def argmin(self, axis=None) -> "Tensor":
        return Tensor._wrap(self.data.argmin(axis=axis))

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, shape=tuple(shape))

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start: int = 0, end: int = -1):
        """Axes ``start`` to ``end`` (both included) merged into one; a 0-d tensor becomes shape (1,)."""
        if self.ndim == 0:
            return self.reshape(1)
        start, end = start % self.ndim, end % self.ndim
        if start > end:
            raise ValueError(f"flatten(): start axis {start} comes after end axis {end} (shape {self.shape})")
        return self.reshape(*self.shape[:start], -1, *self.shape[end + 1:])

    def expand(self, *shape):
        """A broadcast view of size ``shape`` (-1 keeps an axis's size); only size-1 axes can grow."""
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Expand.apply(self, shape=tuple(shape))

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ops.Permute.apply(self, axes=tuple(axes))

    def transpose(self, dim0: int = -2, dim1: int = -1):
        """Swap two axes (the last two by default)."""
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(*axes)

    @property
    def T(self):
        """The transpose of a matrix (all axes reversed, as in NumPy)."""
        return self.permute(*reversed(range(self.ndim)))

    def unsqueeze(self, axis: int):
        axis = axis if axis >= 0 else self.ndim + 1 + axis
        return self.reshape(*self.shape[:axis], 1, *self.shape[axis:])

    def squeeze(self, axis=None):
        """Drop the size-1 axis ``axis`` (an int or a tuple), or every size-1 axis when ``axis`` is None."""
        if axis is None:
            return self.reshape(*(n for n in self.shape if n != 1))
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        for a in axes:
            if self.shape[a] != 1:
                raise ValueError(f"squeeze(): axis {a} has size {self.shape[a]}, not 1 (shape {self.shape})")
        drop = {a % self.ndim for a in axes}
        return self.reshape(*(n for i, n in enumerate(self.shape) if i not in drop))

    def chunk(self, chunks: int, axis: int = 0) -> list["Tensor"]:
        """Split along ``axis`` into pieces of ⌈n / chunks⌉ elements, the last one shorter, as ``torch.chunk``
        (so there can be fewer than ``chunks`` pieces: 6 elements in 4 chunks give 3 pieces of 2)."""
        if chunks < 1:
            raise ValueError(f"chunk(): chunks must be a positive integer, got {chunks}")
        n = self.shape[axis]
        size = max(-(-n // chunks), 1)
        lead = (slice(None),) * (axis % self.ndim)
        return [self[lead + (slice(start, start + size),)] for start in range(0, n, size)]

    def tril(self, diagonal: int = 0):
        return ops.Triangle.apply(self, diagonal=diagonal, upper=False)

    def triu(self, diagonal: int = 0):
        return ops.Triangle.apply(self, diagonal=diagonal, upper=True)

    def gather(self, axis: int, index):
        """``torch.gather``: z[p] = self[p with its coordinate on ``axis`` replaced by index[p]] (``ops.Gather``)."""
        return ops.Gather.apply(self, index, axis=axis)

    def masked_fill(self, mask, value: float):
        return ops.MaskedFill.apply(self, mask, value=value)

    def softmax(self, axis: int = -1):
        return ops.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis: int = -1):
        return ops.LogSoftmax.apply(self, axis=axis)

    def astype(self, dtype):
        """A copy in ``dtype``; differentiable between float dtypes."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        return ops.Cast.apply(self, dtype=dtype)

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)


def _unwrap_index(index):
    """Tensors used as indices become their arrays (tuples of them too)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _reverse_topological_order(root: Tensor) -> list[Tensor]:
    """Nodes reachable from ``root``, each placed before every node it was computed from.

    An iterative depth-first search: a node is appended once all its inputs are finished (post-order),
    and the reversed post-order is a valid order for the backward pass. No recursion, so the depth of
    the graph is limited only by memory.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None and not node._ctx.released:
            for parent in node._ctx.inputs:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    order.reverse()
    return order


from . import ops  # noqa: E402  (ops subclass Function and build Tensors; imported last to break the cycle)
