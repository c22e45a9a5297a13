"""Parameter and Module: how layers own their weights, and how a model's weights are found, saved and moved.

A :class:`Module` registers what is assigned to it: ``self.weight = Parameter(...)`` records a trainable
parameter, ``self.attn = MultiHeadAttention(...)`` a sub-module, ``self.register_buffer("pe", ...)`` a
constant array that travels with the model. From those records come ``parameters()`` (for the optimizer),
``state_dict()`` (for checkpoints, names joined with dots: ``layers.0.self_attn.q_proj.weight``, as in
PyTorch) and ``to(device)``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that is a trainable weight: it requires a gradient and a Module that holds it registers it.

    ``Parameter(data)``: data is an array, list or Tensor of floats (Python floats become float32).
    """

    def __init__(self, data, requires_grad: bool = True, dtype=None, device: str | None = None):
        super().__init__(data, requires_grad=False, dtype=dtype, device=device)
        if self.dtype.kind != "f":
            raise TypeError(f"a Parameter must be floating point, got dtype {self.dtype} (shape {self.shape})")
        self.requires_grad = requires_grad

    def __repr__(self) -> str:
        return "Parameter" + super().__repr__()[len("Tensor"):]


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(strict=False)`` skipped: model keys absent from the state, and state keys the
    model does not have."""

    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and model: subclasses set attributes in ``__init__`` and write ``forward``.

    Calling the module (``layer(x)``) runs ``forward``. ``self.training`` says whether the module is in
    training mode (dropout on) or evaluation mode; ``train()`` / ``eval()`` set it for the whole tree.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------------------------ registration
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            value = None if value is None else _as_buffer(value)
            self._buffers[name] = value
        else:
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
            if isinstance(value, Parameter):
                self._parameters[name] = value
            elif isinstance(value, Module):
                self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        self._non_persistent.discard(name)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value, persistent: bool = True) -> None:
        """Attach a constant array (not trained, e.g. a positional-encoding table) as ``self.<name>``.

        Buffers move with ``to()`` and, when ``persistent``, are saved in ``state_dict()``.
        """
        if name in self._parameters or name in self._modules:
            raise KeyError(f"{type(self).__name__}: {name!r} is already a parameter or sub-module")
        value = None if value is None else _as_buffer(value)
        self._buffers[name] = value
        if not persistent:
            self._non_persistent.add(name)
        object.__setattr__(self, name, value)

    # -------------------------------------------------------------------------------------- traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """This module and every module inside it, depth first, each once, with its dotted name."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child}" if name else child, m) for child, m in module._modules.items()]
            stack.extend(reversed(children))

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        yield from self._modules.items()

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """Every parameter with its dotted name, each once (a parameter shared by two modules appears once)."""
        seen: set[int] = set()
        for prefix, module in self.named_modules():
            for name, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{prefix}.{name}" if prefix else name), param

    def parameters(self) -> Iterator[Parameter]:
        for _, param in self.named_parameters():
            yield param

    def named_buffers(self, persistent_only: bool = False) -> Iterator[tuple[str, Tensor]]:
        for prefix, module in self.named_modules():
            for name, buffer in module._buffers.items():
                if buffer is None or (persistent_only and name in module._non_persistent):
                    continue
                yield (f"{prefix}.{name}" if prefix else name), buffer

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ----------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "Module":
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.parameters():
            if set_to_none or param.grad is None:
                param.grad = None
            else:
                param.grad[...] = 0

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze every parameter."""
        for param in self.parameters():
            param.requires_grad = requires_grad
        return self

    # ------------------------------------------------------------------------------------ state dicts
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Dotted name -> a NumPy copy of every parameter and persistent buffer (copies, so that later
        training does not change a saved snapshot)."""
        state = OrderedDict()
        for name, tensor in (*self.named_parameters(), *self.named_buffers(persistent_only=True)):
            state[name] = np.array(backend.to_numpy(tensor.data), copy=True)
        return state

    def _state_tensors(self) -> "OrderedDict[str, Tensor]":
        return OrderedDict((*self.named_parameters(), *self.named_buffers(persistent_only=True)))

    def check_state_dict(self, state, strict: bool = True) -> IncompatibleKeys:
        """Raise if ``state`` cannot be loaded (a ValueError listing every problem); change nothing.

        Problems: with ``strict``, keys the model has but ``state`` lacks and keys ``state`` has but the model
        lacks; always, a shape that differs from the model's (the message names the key and both shapes).
        """
        own = self._state_tensors()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        for key, tensor in own.items():
            if key in state:
                shape = tuple(np.shape(state[key].data if isinstance(state[key], Tensor) else state[key]))
                if shape != tensor.shape:
                    problems.append(f"shape mismatch for {key!r}: the model has {tensor.shape}, the state has {shape}")
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        return IncompatibleKeys(missing, unexpected)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False) -> IncompatibleKeys:
        """Copy the arrays of ``state`` (name -> array or Tensor) into this model's parameters and buffers.

        Everything is checked first (:meth:`check_state_dict`), so on an error nothing has changed. Values
        are copied into the existing arrays (cast to their dtype and device), so an optimizer that holds
        the parameters keeps working. With ``assign`` each parameter and buffer (the same objects) takes the
        given array itself instead, cast and made contiguous only where needed: no second copy of the
        weights, and the model's old arrays are dropped unwritten (a model built under
        :func:`~minitx.nn.init.skip_init` never touches their memory). The model then shares those arrays
        with ``state``.
        """
        result = self.check_state_dict(state, strict)
        for key, tensor in self._state_tensors().items():
            if key in state:
                value = backend.to_device(state[key].data if isinstance(state[key], Tensor) else state[key],
                                          tensor.device)
                if assign:
                    tensor.data = backend.get_array_module(value).ascontiguousarray(value, dtype=tensor.dtype)
                else:
                    tensor.data[...] = value
        return result

    # -------------------------------------------------------------------------------- device and dtype
    def to(self, device: str | None = None, dtype=None) -> "Module":
        """Move every parameter, gradient and buffer to ``device`` and/or cast floats to ``dtype``, in place
        (the same Parameter objects keep their identity, so build the optimizer after or before: both work)."""
        dtype = np.dtype(dtype) if dtype is not None else None

        def convert(array):
            if device is not None:
                array = backend.to_device(array, backend.check_device(device))
            if dtype is not None and array.dtype.kind == "f":
                array = array.astype(dtype, copy=False)
            return array

        for param in self.parameters():
            param.data = convert(param.data)
            if param.grad is not None:
                param.grad = convert(param.grad)
        for _, buffer in self.named_buffers():
            buffer.data = convert(buffer.data)
        return self

    def double(self) -> "Module":
        return self.to(dtype=np.float64)

    def float(self) -> "Module":
        return self.to(dtype=np.float32)

    def deepcopy(self) -> "Module":
        """An independent copy with its own parameters (used to stack identical layers)."""
        return copy.deepcopy(self)

    # --------------------------------------------------------------------------------------- calling
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def extra_repr(self) -> str:
        """The settings shown inside the parentheses of ``repr`` (subclasses override)."""
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(module).replace("\n", "\n  ") for name, module in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = ([self.extra_repr()] if self.extra_repr() else []) + lines
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _as_buffer(value) -> Tensor:
    """A buffer is a Tensor that never requires a gradient."""
    return value.detach() if isinstance(value, Tensor) else Tensor(value)


class ModuleList(Module):
    """A list of modules, registered under the names "0", "1", … (so ``layers.3.norm1.weight``)."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> "ModuleList":
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied one after the other: ``Sequential(a, b, c)(x) = c(b(a(x)))``."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x
