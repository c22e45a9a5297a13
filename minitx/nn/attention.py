"""Multi-head attention (Vaswani et al., 2017):

    MultiHead(Q, K, V) = Concat(head_1, …, head_h) W^O,   head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V,          d_k = D / h.

The h heads are not a loop: one (D, D) projection computes all of them, and a reshape (B, T, D) ->
(B, T, h, d_k) plus a transpose to (B, h, T, d_k) turns the heads into a batch axis, so
:func:`minitx.functional.scaled_dot_product_attention` runs every head in one batched matrix multiply.

Two variants used by Llama-style models are options of the same class:

- Grouped-query attention (Ainslie et al., 2023): ``num_kv_heads`` = h_kv < h key/value heads, each shared
  by g = h / h_kv query heads (h_kv = 1 is multi-query attention). W^K and W^V shrink to (h_kv·d_k, D), and
  so does the KV cache, which stores the h_kv heads, not h: the cache of a generating model is g times
  smaller, the main saving at inference. The heads are repeated only inside the attention computation.
- Rotary position embedding (``rotary``, :mod:`.rotary`): q and k are rotated by their positions after the
  projection and before the keys join the KV cache.
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
    in-projection and output biases). ``bias=False`` drops all four biases (Llama).

    ``num_kv_heads`` (default ``num_heads``) must divide ``num_heads``: with fewer, ``k_proj`` and ``v_proj``
    are Linear(D, num_kv_heads·d_k) and the attention is grouped-query. ``rotary`` (a
    :class:`~minitx.nn.RotaryEmbedding`, or None) rotates q and k by their positions (self-attention).

    Masks, True = masked out (as in ``torch.nn.MultiheadAttention``):
    ``key_padding_mask`` bool (B, Tk), True at padding keys; ``attn_mask`` bool (Tq, Tk) (or broadcastable to
    (B, H, Tq, Tk)), or a float mask added to the scores; ``is_causal`` hides every key after its query.
    A query row whose keys are ALL masked has no softmax distribution: its weights are defined as zeros and
    its output is then the output projection's bias alone (never NaN; PyTorch gives NaN there).

    KV cache (generation): with ``use_cache=True`` the projected (and rotated) keys and values
    (B, H_kv, Tk, d_k) are returned as ``present``; pass them back as ``past_kv`` with only the new query
    steps, and they are prepended to this step's keys and values (self-attention only; causal masks align to
    the end; the new steps' rotary positions start at the cache length).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True, dtype=None,
                 device=None, num_kv_heads: int | None = None, rotary: Module | None = None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if embed_dim % num_heads:
            raise ValueError(f"MultiHeadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"MultiHeadAttention: num_heads {num_heads} is not a multiple of num_kv_heads "
                             f"{num_kv_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.num_kv_heads = num_kv_heads
        self.dropout = dropout
        kv_dim = num_kv_heads * self.head_dim
        self.q_proj = Linear(embed_dim, embed_dim, bias, dtype, device)
        self.k_proj = Linear(embed_dim, kv_dim, bias, dtype, device)
        self.v_proj = Linear(embed_dim, kv_dim, bias, dtype, device)
        self.out_proj = Linear(embed_dim, embed_dim, bias, dtype, device)
        self.rotary = rotary
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform W_q, W_k, W_v as slices of one stacked matrix ((3D, D) without GQA), zero biases
        (PyTorch's scheme); ``out_proj`` keeps Linear's initialisation."""
        stacked_rows = self.embed_dim + 2 * self.num_kv_heads * self.head_dim
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            init.xavier_uniform_(proj.weight, fan_in=self.embed_dim, fan_out=stacked_rows)
            if proj.bias is not None:
                init.zeros_(proj.bias)
        if self.out_proj.bias is not None:
            init.zeros_(self.out_proj.bias)

    def split_heads(self, x: Tensor, num_heads: int | None = None) -> Tensor:
        """(B, T, heads·d_k) -> (B, heads, T, d_k); ``num_heads`` defaults to the query heads."""
        batch, steps, _ = x.shape
        return x.reshape(batch, steps, num_heads or self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, H, T, d_k) -> (B, T, D): the Concat(head_1, …, head_h)."""
        batch, _, steps, _ = x.shape
        return x.transpose(1, 2).reshape(batch, steps, self.embed_dim)

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask=None, attn_mask=None, is_causal: bool = False, need_weights: bool = False,
                past_kv: tuple[Tensor, Tensor] | None = None, use_cache: bool = False):
        """Returns the output (B, Tq, D); with ``need_weights`` also the weights (B, H, Tq, Tk); with
        ``use_cache`` also ``present`` = (keys, values), each (B, H_kv, Tk, d_k): in that order, as a tuple."""
        key = query if key is None else key
        value = key if value is None else value
        q = self.split_heads(self.q_proj(query))  # (B, H, Tq, d_k)
        k = self.split_heads(self.k_proj(key), self.num_kv_heads)  # (B, H_kv, Tk, d_k)
        v = self.split_heads(self.v_proj(value), self.num_kv_heads)  # (B, H_kv, Tk, d_k)
        if self.rotary is not None:  # positions continue after the cached steps; rotate before caching
            offset = 0 if past_kv is None else past_kv[0].shape[2]
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if past_kv is not None:
            k = F.concat([past_kv[0], k], axis=2)  # (B, H_kv, Tpast + Tk, d_k)
            v = F.concat([past_kv[1], v], axis=2)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
            dropout_p=self.dropout, training=self.training, scale=1 / math.sqrt(self.head_dim),
            return_weights=need_weights, enable_gqa=self.num_kv_heads != self.num_heads)
        attended, weights = attended if need_weights else (attended, None)  # (B, H, Tq, d_k)
        out = self.out_proj(self.merge_heads(attended))  # (B, Tq, D)
        extras = ((weights,) if need_weights else ()) + (((k, v),) if use_cache else ())
        return (out, *extras) if extras else out

    def extra_repr(self) -> str:
        kv = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}{kv}, dropout={self.dropout}"


def kv_cache_length(past_kv, num_layers: int, batch: int, owner: str) -> int:
    """P, the number of cached positions in a stack's ``past_kv`` (one (keys, values) pair per layer, keys
    (B, H_kv, P, d)); 0 for None. ``owner`` names the model in the error messages."""
    if past_kv is None:
        return 0
    if len(past_kv) != num_layers:
        raise ValueError(f"{owner}: past_kv must hold one (keys, values) pair per block ({num_layers}), "
                         f"got {len(past_kv)}")
    keys = past_kv[0][0]  # (B, H_kv, P, d)
    if keys.shape[0] != batch:
        raise ValueError(f"{owner}: past_kv was computed for batch size {keys.shape[0]}, input_ids has {batch}")
    return keys.shape[2]
