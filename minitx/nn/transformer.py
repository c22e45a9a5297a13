"""Transformer blocks: the encoder layer (post-norm or pre-norm), a stack of them, and a GPT-style decoder block.

Post-norm (the original Transformer, BERT, PyTorch's default):
    x = LayerNorm(x + Dropout(SelfAttention(x)));   x = LayerNorm(x + Dropout(FFN(x)))
Pre-norm (GPT-2 and most recent models; trains more stably when deep):
    x = x + Dropout(SelfAttention(LayerNorm(x)));   x = x + Dropout(FFN(LayerNorm(x)))
"""

from __future__ import annotations

from ..tensor import Tensor
from .attention import MultiHeadAttention
from .layers import Dropout, FeedForward, LayerNorm
from .module import Module, ModuleList


class TransformerEncoderLayer(Module):
    """One encoder layer, (B, T, D) -> (B, T, D): self-attention then FFN, each with a residual connection.

    Sub-modules (names as PyTorch's where they exist): ``self_attn``, ``ff`` (``ff.linear1``, ``ff.linear2``),
    ``norm1``, ``norm2``, ``dropout1``, ``dropout2``. ``dropout`` acts on both residual branches and inside
    the FFN; ``attention_dropout`` on the attention weights (default: ``dropout``, as in PyTorch).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, eps: float = 1e-5,
                 attention_dropout: float | None = None, dtype=None, device=None):
        super().__init__()
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, nhead, attention_dropout, dtype=dtype, device=device)
        self.ff = FeedForward(d_model, dim_feedforward, dropout, activation, dtype=dtype, device=device)
        self.norm1 = LayerNorm(d_model, eps, dtype=dtype, device=device)
        self.norm2 = LayerNorm(d_model, eps, dtype=dtype, device=device)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def _attend(self, x: Tensor, key_padding_mask, attn_mask, is_causal: bool) -> Tensor:
        return self.dropout1(self.self_attn(x, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                                            is_causal=is_causal))

    def forward(self, x: Tensor, key_padding_mask=None, attn_mask=None, is_causal: bool = False) -> Tensor:
        """x (B, T, D); masks as in :class:`MultiHeadAttention` (True = masked out)."""
        if self.norm_first:
            x = x + self._attend(self.norm1(x), key_padding_mask, attn_mask, is_causal)
            return x + self.dropout2(self.ff(self.norm2(x)))
        x = self.norm1(x + self._attend(x, key_padding_mask, attn_mask, is_causal))
        return self.norm2(x + self.dropout2(self.ff(x)))

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


class TransformerEncoder(Module):
    """A stack of encoder layers, then an optional final ``norm`` (useful after pre-norm layers).

    ``TransformerEncoder(layer, num_layers)`` stacks ``num_layers`` independent deep copies of ``layer``
    (as PyTorch does); ``TransformerEncoder([layer_1, …, layer_L])`` uses the given layers.
    """

    def __init__(self, layers, num_layers: int | None = None, norm: Module | None = None):
        super().__init__()
        if isinstance(layers, Module):
            if num_layers is None:
                raise ValueError("TransformerEncoder(layer, num_layers): give the number of copies of the layer")
            layers = [layers.deepcopy() for _ in range(num_layers)]
        self.layers = ModuleList(layers)
        self.norm = norm

    def forward(self, x: Tensor, key_padding_mask=None, attn_mask=None, is_causal: bool = False) -> Tensor:
        for layer in self.layers:
            x = layer(x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal)
        return self.norm(x) if self.norm is not None else x


class DecoderBlock(Module):
    """A GPT-style block, pre-norm with causal self-attention, (B, T, D) -> (B, T, D):

        x = x + Dropout(CausalSelfAttention(LayerNorm(x)));   x = x + Dropout(MLP(LayerNorm(x)))

    with MLP(x) = GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂, hidden size ``d_ff`` (default 4·D). Sub-modules ``ln_1``,
    ``attn``, ``ln_2``, ``mlp``. For generation, ``use_cache=True`` also returns the attention's
    (keys, values), to pass back as ``past_kv`` with the next tokens only.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int | None = None, dropout: float = 0.0,
                 activation: str = "gelu", eps: float = 1e-5, dtype=None, device=None):
        super().__init__()
        self.ln_1 = LayerNorm(d_model, eps, dtype=dtype, device=device)
        self.attn = MultiHeadAttention(d_model, num_heads, dropout, dtype=dtype, device=device)
        self.ln_2 = LayerNorm(d_model, eps, dtype=dtype, device=device)
        self.mlp = FeedForward(d_model, d_ff or 4 * d_model, 0.0, activation, dtype=dtype, device=device)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, x: Tensor, key_padding_mask=None, past_kv=None, use_cache: bool = False):
        """x (B, T, D) -> (B, T, D), or (out, present) with ``use_cache``."""
        attended = self.attn(self.ln_1(x), key_padding_mask=key_padding_mask, is_causal=True, past_kv=past_kv,
                             use_cache=use_cache)
        attended, present = attended if use_cache else (attended, None)
        x = x + self.dropout1(attended)
        x = x + self.dropout2(self.mlp(self.ln_2(x)))
        return (x, present) if use_cache else x
