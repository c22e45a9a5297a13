"""Multi-head attention (Vaswani et al., 2017):

    MultiHead(Q, K, V) = Concat(head_1, …, head_h) W^O,   head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V,          d_k = D / h.

The h heads are not a loop: one (D, D) projection computes all of them, and a reshape (B, T, D) ->
(B, T, h, d_k) plus a transpose to (B, h, T, d_k) turns the heads into a batch axis, so
:func:`minitx.functional.scaled_dot_product_attention` runs every head in one batched matrix multiply.
"""

from __future__ import annotations

import math

from .. import functional as F
from ..tensor import Tensor
from . import init
from .layers import Linear
from .module import Module


class MultiHeadAttention(Module):
    """Multi-head attention on batch-first tensors: query (B, Tq, D), key/value (B, Tk, D) -> (B, Tq, D).

    Self-attention: ``mha(x)``; cross-attention: ``mha(x, memory, memory)``. Weights ``q_proj``, ``k_proj``,
    ``v_proj``, ``out_proj`` are Linear(D, D) (PyTorch keeps the first three stacked in one
    ``in_proj_weight`` (3D, D); initialisation matches it: Xavier-uniform over that stacked matrix, zero
    in-projection and output biases).

    Masks, True = masked out (as in ``torch.nn.MultiheadAttention``):
    ``key_padding_mask`` bool (B, Tk), True at padding keys; ``attn_mask`` bool (Tq, Tk) (or broadcastable to
    (B, H, Tq, Tk)), or a float mask added to the scores; ``is_causal`` hides every key after its query.
    A query row whose keys are ALL masked has no softmax distribution: its weights are defined as zeros and
    its output is then the output projection's bias alone (never NaN; PyTorch gives NaN there).

    KV cache (generation): with ``use_cache=True`` the projected keys and values (B, H, Tk, d_k) are
    returned as ``present``; pass them back as ``past_kv`` with only the new query steps, and they are
    prepended to this step's keys and values (self-attention only; causal masks align to the end).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True, dtype=None,
                 device=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiHeadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = Linear(embed_dim, embed_dim, bias, dtype, device)
        self.k_proj = Linear(embed_dim, embed_dim, bias, dtype, device)
        self.v_proj = Linear(embed_dim, embed_dim, bias, dtype, device)
        self.out_proj = Linear(embed_dim, embed_dim, bias, dtype, device)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform W_q, W_k, W_v as slices of one (3D, D) matrix, zero biases (PyTorch's scheme);
        ``out_proj`` keeps Linear's initialisation."""
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            init.xavier_uniform_(proj.weight, fan_in=self.embed_dim, fan_out=3 * self.embed_dim)
            if proj.bias is not None:
                init.zeros_(proj.bias)
        if self.out_proj.bias is not None:
            init.zeros_(self.out_proj.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, d_k)."""
        batch, steps, _ = x.shape
        return x.reshape(batch, steps, self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, H, T, d_k) -> (B, T, D): the Concat(head_1, …, head_h)."""
        batch, _, steps, _ = x.shape
        return x.transpose(1, 2).reshape(batch, steps, self.embed_dim)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask=None, attn_mask=None, is_causal: bool = False, need_weights: bool = False,
                past_kv: tuple[Tensor, Tensor] | None = None, use_cache: bool = False):
        """Returns the output (B, Tq, D); with ``need_weights`` also the weights (B, H, Tq, Tk); with
        ``use_cache`` also ``present`` = (keys, values), each (B, H, Tk, d_k): in that order, as a tuple."""
        key = query if key is None else key
        value = key if value is None else value
        q = self.split_heads(self.q_proj(query))  # (B, H, Tq, d_k)
        k = self.split_heads(self.k_proj(key))  # (B, H, Tk, d_k)
        v = self.split_heads(self.v_proj(value))  # (B, H, Tk, d_k)
        if past_kv is not None:
            k = F.concat([past_kv[0], k], axis=2)  # (B, H, Tpast + Tk, d_k)
            v = F.concat([past_kv[1], v], axis=2)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
            dropout_p=self.dropout, training=self.training, scale=1 / math.sqrt(self.head_dim),
            return_weights=need_weights)
        attended, weights = attended if need_weights else (attended, None)  # (B, H, Tq, d_k)
        out = self.out_proj(self.merge_heads(attended))  # (B, Tq, D)
        extras = ((weights,) if need_weights else ()) + (((k, v),) if use_cache else ())
        return (out, *extras) if extras else out

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"
