"""minitx: an educational, from-scratch Transformer library on NumPy (CPU) and CuPy (GPU).

Read it bottom-up: :mod:`minitx.backend` (where arrays live), :mod:`minitx.tensor` (the autograd engine),
:mod:`minitx.ops` (each op's forward and backward), :mod:`minitx.functional` (what layers call),
:mod:`minitx.gradcheck`.
"""

from __future__ import annotations

from kernels import process_settings

process_settings.apply()  # before NumPy: thread and allocator settings for speed; MINITX_TUNE=0 turns them off

import numpy as np  # noqa: E402

from . import backend, functional
from .backend import default_dtype, get_rng_state, manual_seed, set_default_dtype, set_rng_state
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad

__version__ = "0.1.0"


def tensor(data, requires_grad: bool = False, dtype=None, device: str | None = None) -> Tensor:
    """A new tensor from a number, (nested) list or array; floats default to float32."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def _factory(make, shape, dtype, device, requires_grad) -> Tensor:
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
    dtype = np.dtype(dtype) if dtype is not None else default_dtype()
    return Tensor(make(backend.xp_for(device or "cpu"), shape, dtype), requires_grad=requires_grad)


def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _factory(lambda xp, s, d: xp.zeros(s, dtype=d), shape, dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _factory(lambda xp, s, d: xp.ones(s, dtype=d), shape, dtype, device, requires_grad)


def full(shape, value, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _factory(lambda xp, s, d: xp.full(s, value, dtype=d), (shape,), dtype, device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Standard normal samples from the seeded generator of ``device``."""
    return _factory(lambda xp, s, d: backend.rng(device or "cpu").standard_normal(s, dtype=d),
                    shape, dtype, device, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Uniform samples in [0, 1) from the seeded generator of ``device``."""
    return _factory(lambda xp, s, d: backend.rng(device or "cpu").random(s, dtype=d),
                    shape, dtype, device, requires_grad)


def arange(*args, dtype=np.int64, device=None) -> Tensor:
    return Tensor(backend.xp_for(device or "cpu").arange(*args, dtype=dtype))


def zeros_like(t: Tensor, requires_grad=False) -> Tensor:
    return Tensor(t.xp.zeros_like(t.data), requires_grad=requires_grad)


def ones_like(t: Tensor, requires_grad=False) -> Tensor:
    return Tensor(t.xp.ones_like(t.data), requires_grad=requires_grad)


__all__ = [
    "GradcheckError", "Tensor", "arange", "backend", "default_dtype", "enable_grad", "full", "functional",
    "get_rng_state", "gradcheck", "is_grad_enabled", "manual_seed", "no_grad", "ones", "ones_like", "rand",
    "randn", "set_default_dtype", "set_rng_state", "tensor", "zeros", "zeros_like",
]
