"""The basic layers: Linear, Embedding, Dropout, LayerNorm and RMSNorm, the two additive positional encodings
and the FFNs (plain and gated). (The rotary position embedding acts inside attention: :mod:`.rotary`.)

Parameter names and shapes are PyTorch's (``Linear.weight`` is (out, in)), so weights copy over 1:1.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import functional as F
from ..tensor import Tensor
from . import init
from .module import Module, Parameter


def _empty(shape: tuple, dtype, device) -> np.ndarray:
    return backend.xp_for(device or "cpu").empty(shape, dtype=dtype or backend.default_dtype())


class Linear(Module):
    """y = x Wᵀ + b: x (…, in_features) -> y (…, out_features); W (out, in), b (out,).

    Initialised as in PyTorch: W and b ~ U(-1/√in, 1/√in).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_empty((out_features, in_features), dtype, device))
        self.bias = Parameter(_empty((out_features,), dtype, device)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.in_features)
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: ids (…) -> weight[ids] (…, D); weight (num_embeddings, embedding_dim) ~ N(0, 1).

    With ``padding_idx`` that row starts at zero and never receives a gradient, so padding stays a zero vector.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, dtype=None,
                 device=None):
        super().__init__()
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"Embedding: padding_idx {padding_idx} is outside [0, {num_embeddings})")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        self.weight = Parameter(_empty((num_embeddings, embedding_dim), dtype, device))
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, ids) -> Tensor:
        return F.embedding(ids, self.weight, padding_idx=self.padding_idx)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class Dropout(Module):
    """Zero each element with probability p and scale the rest by 1/(1-p) in training; identity in eval."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm(Module):
    """y = (x - μ) / √(σ² + ε) · γ + β over the last axis (or axes) ``normalized_shape``; γ = 1, β = 0 at init."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, dtype=None,
                 device=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = self.bias = None
        if elementwise_affine:
            self.weight = Parameter(init.ones_(Tensor(_empty(self.normalized_shape, dtype, device))))
            self.bias = Parameter(init.zeros_(Tensor(_empty(self.normalized_shape, dtype, device))))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """LayerNorm(x), or LayerNorm(x + residual) in one fused op (see ``F.layer_norm``)."""
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, residual=residual)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    """y = x / √(mean(x²) + ε) · γ over the last axis (or axes) ``normalized_shape``; γ = 1 at init.

    LayerNorm without the mean subtraction and without β (see :class:`minitx.ops.RMSNorm`): one statistic
    per row instead of two, and in practice as good; Llama, Mistral and T5 use it (``torch.nn.RMSNorm``).
    """

    def __init__(self, normalized_shape, eps: float = 1e-6, elementwise_affine: bool = True, dtype=None,
                 device=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = None
        if elementwise_affine:
            self.weight = Parameter(init.ones_(Tensor(_empty(self.normalized_shape, dtype, device))))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """RMSNorm(x), or RMSNorm(x + residual) (the same call as LayerNorm's)."""
        return F.rms_norm(x if residual is None else x + residual, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d)):  (max_len, d_model).

    Each pair (2i, 2i+1) is a point on a circle turning with frequency ω_i = 10000^(-2i/d), so
    PE(pos + k) is PE(pos) rotated by the angle k·ω_i in every pair: a fixed linear map for each offset k.
    """
    position = np.arange(max_len, dtype=np.float64)[:, None]  # (max_len, 1)
    frequency = np.exp(np.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (⌈d/2⌉,) = ω_i
    angle = position * frequency  # (max_len, ⌈d/2⌉)
    table = np.zeros((max_len, d_model))
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : d_model // 2])
    return table  # float64


class PositionalEncoding(Module):
    """x + PE[:T] for x (B, T, D), with the fixed sinusoidal table of :func:`sinusoidal_table`.

    The table is a float64 buffer (moved by ``to()``), cast to x's dtype when added, so a float64 model gets
    the exact values; it is not saved in ``state_dict`` since it is recomputed from (max_len, d_model).
    """

    def __init__(self, d_model: int, max_len: int = 5000, device=None):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("pe", Tensor(sinusoidal_table(max_len, d_model), device=device),
                             persistent=False)  # (max_len, D)

    def forward(self, x: Tensor) -> Tensor:
        seq_len = x.shape[-2]
        if seq_len > self.max_len:
            raise ValueError(f"PositionalEncoding: sequence length {seq_len} exceeds max_len={self.max_len}")
        return x + self.pe[:seq_len].astype(x.dtype)  # (B, T, D) + (T, D)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


class LearnedPositionalEmbedding(Module):
    """x + E_pos[:T] for x (B, T, D): one trained vector per position; weight (max_len, D) ~ N(0, 1)."""

    def __init__(self, max_len: int, d_model: int, dtype=None, device=None):
        super().__init__()
        self.max_len, self.d_model = max_len, d_model
        self.weight = Parameter(init.normal_(Tensor(_empty((max_len, d_model), dtype, device))))

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``offset``: the position of x's first step (the length of a KV cache during generation)."""
        seq_len = x.shape[-2]
        if offset + seq_len > self.max_len:
            raise ValueError(f"LearnedPositionalEmbedding: positions up to {offset + seq_len} exceed "
                             f"max_len={self.max_len}")
        return x + self.weight[offset:offset + seq_len]  # (B, T, D) + (T, D)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.d_model}"


class FeedForward(Module):
    """FFN(x) = act(x W₁ᵀ + b₁) W₂ᵀ + b₂ (see :func:`minitx.functional.feed_forward`): (…, D) -> (…, D).

    ``linear1`` (D -> dim_feedforward) and ``linear2`` (dim_feedforward -> D) hold the weights (with biases
    unless ``bias=False``); ``dropout`` acts on the hidden layer.
    """

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, activation: str = "relu", dtype=None,
                 device=None, bias: bool = True):
        super().__init__()
        self.linear1 = Linear(d_model, dim_feedforward, bias, dtype=dtype, device=device)
        self.linear2 = Linear(dim_feedforward, d_model, bias, dtype=dtype, device=device)
        self.dropout, self.activation = dropout, activation

    def forward(self, x: Tensor) -> Tensor:
        return F.feed_forward(x, self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias,
                              self.activation, self.dropout, self.training)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, dropout={self.dropout}"


class GatedFeedForward(Module):
    """FFN(x) = (act(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ (see :func:`minitx.functional.gated_feed_forward`):
    (…, D) -> (…, D). With the default act = SiLU it is SwiGLU, Llama's feed-forward.

    ``gate_proj`` and ``up_proj`` (D -> dim_feedforward), ``down_proj`` (dim_feedforward -> D): Llama's names;
    no biases unless ``bias=True``. Three matrices instead of two, so a gated FFN of the same parameter count
    has a hidden size of about 2/3 of the plain one's (Llama: 8/3·D instead of 4·D).
    """

    def __init__(self, d_model: int, dim_feedforward: int, activation: str = "silu", bias: bool = False,
                 dtype=None, device=None):
        super().__init__()
        self.gate_proj = Linear(d_model, dim_feedforward, bias, dtype=dtype, device=device)
        self.up_proj = Linear(d_model, dim_feedforward, bias, dtype=dtype, device=device)
        self.down_proj = Linear(dim_feedforward, d_model, bias, dtype=dtype, device=device)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return F.gated_feed_forward(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight,
                                    self.activation, self.gate_proj.bias, self.up_proj.bias, self.down_proj.bias)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
