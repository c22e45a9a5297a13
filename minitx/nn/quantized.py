"""Layers whose weights stay quantised (Q4_1: 4-bit numbers with a scale and a minimum per 32 weights; Q8_0:
bytes with a scale per 32), for
running a model, not training it: the product goes through kernels/cpu/quantized.py, which never builds the
float32 matrix, and nothing here has a gradient.

:class:`Q4_1Linear` stands where a bias-free :class:`~minitx.nn.Linear` did; :class:`QuantizedGatedFeedForward`
is :class:`~minitx.nn.GatedFeedForward`'s formula over three such layers; :class:`Q8_0Linear` serves an output
layer stored as Q8_0.
"""

from __future__ import annotations

import numpy as np

from kernels.cpu.quantized import q4_1_linear, q8_0_linear

from .. import functional as F
from ..tensor import Tensor
from .module import Module


class Q4_1Linear(Module):
    """y = x Wᵀ with W (out, in) held as Q4_1: buffers ``scale`` and ``minimum`` (out, in/32) float32 and
    ``packed`` (out, in/32, 16) uint8 (W[o, 32b + j] = scale[o, b] · q + minimum[o, b], q the low nibble of
    byte j for j < 16, the high nibble of byte j - 16 after). CPU, float32, no gradient."""

    def __init__(self, scale: np.ndarray, minimum: np.ndarray, packed: np.ndarray):
        super().__init__()
        if scale.shape != minimum.shape or packed.shape != scale.shape + (16,) or packed.dtype != np.uint8:
            raise ValueError(f"Q4_1Linear: expected scale and minimum (out, in/32), packed (out, in/32, 16) uint8; "
                             f"got {scale.shape}, {minimum.shape}, {packed.shape} {packed.dtype}")
        self.out_features, self.in_features = scale.shape[0], 32 * scale.shape[1]
        self.register_buffer("scale", np.ascontiguousarray(scale, dtype=np.float32))
        self.register_buffer("minimum", np.ascontiguousarray(minimum, dtype=np.float32))
        self.register_buffer("packed", np.ascontiguousarray(packed))

    def forward(self, x: Tensor) -> Tensor:
        """x (…, in) -> (…, out), a constant (no gradient flows through it)."""
        if x.shape[-1] != self.in_features or x.device != "cpu":
            raise ValueError(f"Q4_1Linear: expected x (…, {self.in_features}) on the CPU, got shape {x.shape} on "
                             f"{x.device}")
        rows = x.data.reshape(-1, self.in_features).astype(np.float32, copy=False)   # (N, in)
        y = q4_1_linear(rows, self.scale.data, self.minimum.data, self.packed.data)  # (N, out)
        return Tensor(y.reshape(*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Q8_0Linear(Module):
    """y = x Wᵀ with W (out, in) held as Q8_0: buffers ``scale`` (out, in/32) float32 and ``quants``
    (out, in/32, 32) int8, W[o, 32b + j] = scale[o, b] · quants[o, b, j]. CPU, float32, no gradient."""

    def __init__(self, scale: np.ndarray, quants: np.ndarray):
        super().__init__()
        if quants.shape != scale.shape + (32,) or quants.dtype != np.int8:
            raise ValueError(f"Q8_0Linear: expected scale (out, in/32), quants (out, in/32, 32) int8; got "
                             f"{scale.shape}, {quants.shape} {quants.dtype}")
        self.out_features, self.in_features = scale.shape[0], 32 * scale.shape[1]
        self.register_buffer("scale", np.ascontiguousarray(scale, dtype=np.float32))
        self.register_buffer("quants", np.ascontiguousarray(quants))

    def forward(self, x: Tensor) -> Tensor:
        """x (…, in) -> (…, out), a constant (no gradient flows through it)."""
        if x.shape[-1] != self.in_features or x.device != "cpu":
            raise ValueError(f"Q8_0Linear: expected x (…, {self.in_features}) on the CPU, got shape {x.shape} on "
                             f"{x.device}")
        rows = x.data.reshape(-1, self.in_features).astype(np.float32, copy=False)   # (N, in)
        y = q8_0_linear(rows, self.scale.data, self.quants.data)                     # (N, out)
        return Tensor(y.reshape(*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class QuantizedGatedFeedForward(Module):
    """FFN(x) = (act(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ with the three matrices as :class:`Q4_1Linear` layers
    (``gate_proj``, ``up_proj``, ``down_proj``); SwiGLU with the default act = SiLU."""

    def __init__(self, gate_proj: Q4_1Linear, up_proj: Q4_1Linear, down_proj: Q4_1Linear, activation: str = "silu"):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        act = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}[self.activation]
        return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
