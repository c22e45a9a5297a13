"""Rotary position embedding (RoPE; Su et al., 2021), the position treatment of Llama-style models.

Instead of adding a position vector to the input, attention rotates every query and key by angles that grow
with its position. The d features of one head form d/2 pairs; at position m, pair i turns by the angle m·ω_i,

    ω_i = base^(-2i/d),   i = 0 … d/2 - 1          (base 10000 in the paper; SmolLM2 uses 100000)

(the frequencies of the sinusoidal table, :func:`~minitx.nn.layers.sinusoidal_table`). Read pair i of a query
q as the complex number q_i = a + ib; the rotation multiplies it by e^{i m ω_i}. The score of a query at
position m against a key at position n is then

    Σ_i Re[ q_i e^{i m ω_i} · conj(k_i e^{i n ω_i}) ] = Σ_i Re[ q_i conj(k_i) e^{i (m - n) ω_i} ]:

it depends on the positions only through the offset m - n (the relative-position property), and nothing is
added to the values or to the residual stream. Because each position's rotation is applied to its own key
once, a KV cache can hold keys already rotated: the new steps are rotated at positions ``offset …`` (the cache
length) BEFORE they are appended to the cache (see :class:`~minitx.nn.attention.MultiHeadAttention`).

Which features form a pair is a convention, and two are in use (:func:`minitx.functional.rotary_embedding`):
the two halves (x_i, x_i+d/2) (Hugging Face's ``rotate_half``) or adjacent features (x_2i, x_2i+1) (the
paper, Meta's original code, llama.cpp and GGUF files). They are the same rotation up to a fixed reordering of
each head's d features, and since q·k does not change when q and k are reordered alike, reordering the rows
of W_q and W_k makes the two layouts give identical attention: :func:`rotate_half_to_interleaved` is the
reordering that llama.cpp's converter applies to Hugging Face weights, :func:`interleaved_to_rotate_half` its
inverse (for weights read from a GGUF file).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..tensor import Tensor
from .module import Module


def rotary_frequencies(head_dim: int, base: float = 10000.0) -> np.ndarray:
    """ω_i = base^(-2i/d) for i = 0 … d/2 - 1: (d/2,) float64, from one turn per step down to ~1/base."""
    if head_dim % 2:
        raise ValueError(f"rotary: head_dim must be even (the features rotate in pairs), got {head_dim}")
    return base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rotary_cos_sin(positions, head_dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos θ and sin θ of the angles θ_{m,i} = m·ω_i at the positions m (T,): two (T, d/2) float64 arrays."""
    angle = np.asarray(positions, dtype=np.float64)[:, None] * rotary_frequencies(head_dim, base)  # (T, d/2)
    return np.cos(angle), np.sin(angle)


class RotaryEmbedding(Module):
    """Rotates x (…, T, d) (queries or keys, one head per d features) at positions ``offset … offset + T - 1``.

    ``interleaved=False`` pairs the two halves (Hugging Face's layout), ``True`` adjacent features (llama.cpp's).
    No parameters; the angles are computed in float64 for the positions asked for, then cast to x's dtype.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, interleaved: bool = False):
        super().__init__()
        rotary_frequencies(head_dim, base)  # checks that head_dim is even
        self.head_dim, self.base, self.interleaved = head_dim, base, interleaved

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``offset``: the position of x's first step (the length of a KV cache during generation)."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"RotaryEmbedding: expected x (…, T, head_dim={self.head_dim}), got shape {x.shape}")
        steps = x.shape[-2]
        cos, sin = rotary_cos_sin(np.arange(offset, offset + steps), self.head_dim, self.base)  # (T, d/2)
        xp = backend.xp_for(x.device)
        return F.rotary_embedding(x, xp.asarray(cos, dtype=x.dtype), xp.asarray(sin, dtype=x.dtype),
                                  self.interleaved)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, interleaved={self.interleaved}"


def _check_rows(weight, num_heads: int, what: str) -> None:
    rows = weight.shape[0]
    if rows % num_heads or (rows // num_heads) % 2:
        raise ValueError(f"{what}: the {rows} rows of a weight of shape {tuple(weight.shape)} must split into "
                         f"num_heads={num_heads} heads of an even size")


def rotate_half_to_interleaved(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Reorder the rows of a q or k projection (num_heads·d, D) (or its bias (num_heads·d,)) so that the
    interleaved rotation of the new projection equals the rotate-half rotation of the old one, reordered.

    In each head, rows i and i + d/2 (one rotate-half pair) move to rows 2i and 2i + 1 (one interleaved pair):
    view the head's rows as (2, d/2), swap the two axes to (d/2, 2), flatten. This is the permutation
    llama.cpp's converter applies to Hugging Face's W_q and W_k (with num_heads = the key/value heads for W_k).
    """
    _check_rows(weight, num_heads, "rotate_half_to_interleaved")
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def interleaved_to_rotate_half(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """The inverse of :func:`rotate_half_to_interleaved`: rows 2i, 2i + 1 of each head go back to i, i + d/2
    (view the head's rows as (d/2, 2), swap to (2, d/2), flatten). Turns GGUF q/k weights into Hugging Face's."""
    _check_rows(weight, num_heads, "interleaved_to_rotate_half")
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
