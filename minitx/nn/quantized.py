"""Layers whose weights stay quantised (Q4_1: 4-bit numbers with a scale and a minimum per 32 weights; Q8_0:
bytes with a scale per 32), for running a model, not training it: the product is the fused op
:class:`~minitx.ops.fused.QuantizedLinear`, which takes the kernel of the input's device (kernels/cpu/quantized.py
or kernels/cuda/quantized.py) and never builds the float32 matrix; nothing here has a gradient.

:class:`Q4_1Linear` stands where a bias-free :class:`~minitx.nn.Linear` did; :class:`QuantizedGatedFeedForward`
is :class:`~minitx.nn.GatedFeedForward`'s formula over three such layers; :class:`Q8_0Linear` serves an output
layer stored as Q8_0.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..ops.fused import QuantizedLinear
from ..tensor import Tensor
from .module import Module


def _quantized_product(layer: Module, x: Tensor, format: str, *blocks: Tensor) -> Tensor:
    """x (…, in) -> x Wᵀ (…, out) for a quantised ``layer`` (its buffers ``blocks``), a constant: x is
    detached, so no gradient flows through it. x and the buffers must share a device (``layer.to(...)``)."""
    if x.shape[-1] != layer.in_features:
        raise ValueError(f"{type(layer).__name__}: expected x (…, {layer.in_features}), got shape {x.shape}")
    rows = Tensor(x.data.reshape(-1, layer.in_features).astype(blocks[0].dtype, copy=False))  # (N, in)
    y = QuantizedLinear.apply(rows, *blocks, format=format)                                   # (N, out)
    return y.reshape(*x.shape[:-1], layer.out_features)


class Q4_1Linear(Module):
    """y = x Wᵀ with W (out, in) held as Q4_1: buffers ``scale`` and ``minimum`` (out, in/32) float32 and
    ``packed`` (out, in/32, 16) uint8 (W[o, 32b + j] = scale[o, b] · q + minimum[o, b], q the low nibble of
    byte j for j < 16, the high nibble of byte j - 16 after). On the device of its buffers (``.to("cuda")``
    moves them), float32, no gradient."""

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
        return _quantized_product(self, x, "q4_1", self.scale, self.minimum, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Q8_0Linear(Module):
    """y = x Wᵀ with W (out, in) held as Q8_0: buffers ``scale`` (out, in/32) float32 and ``quants``
    (out, in/32, 32) int8, W[o, 32b + j] = scale[o, b] · quants[o, b, j]. On the device of its buffers, float32,
    no gradient."""

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
        return _quantized_product(self, x, "q8_0", self.scale, self.quants)

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
