"""Transformer blocks: the encoder layer (post-norm or pre-norm), a stack of them, and a GPT-style decoder block.

Post-norm (the original Transformer, BERT, PyTorch's default):
    x = LayerNorm(x + Dropout(SelfAttention(x)));   x = LayerNorm(x + Dropout(FFN(x)))
Pre-norm (GPT-2 and most recent models; trains more stably when deep):
    x = x + Dropout(SelfAttention(LayerNorm(x)));   x = x + Dropout(FFN(LayerNorm(x)))

The parts are arguments, so that a newer block is configuration rather than a new class: the norm
(``norm=LayerNorm`` or ``RMSNorm``), the position treatment (``rotary=None``: positions are added to the
input outside the block, or a :class:`~minitx.nn.RotaryEmbedding` that rotates q and k inside attention),
grouped-query attention (``num_kv_heads``), the FFN (``activation``, and ``gated=True`` for a gated FFN such as
SwiGLU) and the biases (``bias``). A Llama decoder layer is

    DecoderBlock(d_model, num_heads, dim_feedforward, num_kv_heads=…, norm=RMSNorm, bias=False,
                 rotary=RotaryEmbedding(d_model // num_heads, base), activation="silu", gated=True, eps=…)
"""

from __future__ import annotations

from ..tensor import Tensor
from .attention import MultiHeadAttention
from .layers import Dropout, FeedForward, GatedFeedForward, LayerNorm
from .module import Module, ModuleList


def _feed_forward(d_model: int, dim_feedforward: int, dropout: float, activation: str, gated: bool, bias: bool,
                  dtype, device) -> Module:
    """The block's FFN: ``GatedFeedForward`` (gate_proj, up_proj, down_proj; no inner dropout) or
    ``FeedForward`` (linear1, linear2; ``dropout`` on its hidden layer)."""
    if gated:
        return GatedFeedForward(d_model, dim_feedforward, activation, bias, dtype=dtype, device=device)
    return FeedForward(d_model, dim_feedforward, dropout, activation, dtype=dtype, device=device, bias=bias)


class TransformerEncoderLayer(Module):
    """One encoder layer, (B, T, D) -> (B, T, D): self-attention then FFN, each with a residual connection.

    Sub-modules (names as PyTorch's where they exist): ``self_attn``, ``ff`` (``ff.linear1``, ``ff.linear2``),
    ``norm1``, ``norm2``, ``dropout1``, ``dropout2``. ``dropout`` acts on both residual branches and inside
    the FFN; ``attention_dropout`` on the attention weights (default: ``dropout``, as in PyTorch).
    ``norm``, ``num_kv_heads``, ``rotary``, ``gated`` and ``bias`` swap parts as described in the module's
    docstring (a gated ``ff`` has ``gate_proj``, ``up_proj``, ``down_proj`` and no inner dropout).
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, eps: float = 1e-5,
                 attention_dropout: float | None = None, dtype=None, device=None, *, norm=LayerNorm,
                 num_kv_heads: int | None = None, rotary: Module | None = None, gated: bool = False,
                 bias: bool = True):
        super().__init__()
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, attention_dropout, bias, dtype, device,
                                            num_kv_heads=num_kv_heads, rotary=rotary)
        self.ff = _feed_forward(d_model, dim_feedforward, dropout, activation, gated, bias, dtype, device)
        self.norm1 = norm(d_model, eps, dtype=dtype, device=device)
        self.norm2 = norm(d_model, eps, dtype=dtype, device=device)
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
        x = self.norm1(self._attend(x, key_padding_mask, attn_mask, is_causal), residual=x)  # norm(x + attn)
        return self.norm2(self.dropout2(self.ff(x)), residual=x)                           # norm(x + ffn)

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

    with MLP(x) = GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂, hidden size ``dim_feedforward`` (default 4·D). Sub-modules
    ``ln_1``, ``attn``, ``ln_2``, ``mlp``. For generation, ``use_cache=True`` also returns the attention's
    (keys, values), to pass back as ``past_kv`` with the next tokens only.

    ``norm``, ``num_kv_heads``, ``rotary``, ``gated`` and ``bias`` swap parts as described in the module's
    docstring: with ``norm=RMSNorm``, ``rotary=RotaryEmbedding(…)``, ``num_kv_heads`` < ``num_heads``,
    ``activation="silu"``, ``gated=True`` and ``bias=False`` this is a Llama decoder layer (``mlp`` then has
    ``gate_proj``, ``up_proj``, ``down_proj``).
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int | None = None, dropout: float = 0.0,
                 activation: str = "gelu", eps: float = 1e-5, dtype=None, device=None, *, norm=LayerNorm,
                 num_kv_heads: int | None = None, rotary: Module | None = None, gated: bool = False,
                 bias: bool = True):
        super().__init__()
        self.ln_1 = norm(d_model, eps, dtype=dtype, device=device)
        self.attn = MultiHeadAttention(d_model, num_heads, dropout, bias, dtype, device, num_kv_heads=num_kv_heads,
                                       rotary=rotary)
        self.ln_2 = norm(d_model, eps, dtype=dtype, device=device)
        self.mlp = _feed_forward(d_model, dim_feedforward or 4 * d_model, 0.0, activation, gated, bias, dtype,
                                 device)
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
