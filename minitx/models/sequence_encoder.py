"""The seed's SequenceEncoder: token embedding · √D + sinusoidal positions -> post-norm encoder -> vocabulary.

    h⁰ = E[x]·√D + PE[:T]                   (B, T, D)
    hˡ = EncoderLayer(hˡ⁻¹), l = 1…L        (post-norm, ReLU FFN, dropout; padding keys masked out)
    logits = h^L W_outᵀ + b_out              (B, T, V)

Differences from the seed's PyTorch code, on purpose: tensors are batch-first (B, T) (the seed's
``nn.TransformerEncoderLayer`` defaults to (T, B) while its ``TaskAdapter`` pools over axis 1 as if
batch-first), and the ``attention_mask`` the adapter passes is honoured (the seed's forward ignores it).
"""

from __future__ import annotations

import math

from ..functional import padding_mask_from_attention_mask
from ..nn import (Embedding, Linear, Module, MultiHeadAttention, PositionalEncoding, TransformerEncoder,
                  TransformerEncoderLayer, init)
from ..tensor import Tensor


class SequenceEncoder(Module):
    """ids (B, T) -> logits (B, T, vocab_size); see the module docstring for the equations.

    The arguments keep the seed's names (``embed_dim``, ``ff_dim``, ``drop_rate``: the seed's class is mirrored
    here; elsewhere minitx says ``d_model``, ``dim_feedforward``, ``dropout``).
    Sub-modules as in the seed: ``embedding``, ``position_encoder``, ``transformer_stack``,
    ``output_projection``. Every parameter with more than one dimension is Xavier-uniform initialised
    (the attention's W_q, W_k, W_v as slices of one stacked (3D, D) matrix, as in the seed's PyTorch model).
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_heads: int, ff_dim: int, num_layers: int,
                 drop_rate: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.embedding = Embedding(vocab_size, embed_dim)
        self.position_encoder = PositionalEncoding(embed_dim, max_len)
        layer = TransformerEncoderLayer(embed_dim, num_heads, ff_dim, dropout=drop_rate)
        self.transformer_stack = TransformerEncoder(layer, num_layers)
        self.output_projection = Linear(embed_dim, vocab_size)
        self._initialize_parameters()

    def _initialize_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.reset_parameters()  # Xavier over the stacked (3D, D) in-projection
        attention = {id(p) for m in self.modules() if isinstance(m, MultiHeadAttention)
                     for p in (m.q_proj.weight, m.k_proj.weight, m.v_proj.weight)}
        for param in self.parameters():
            if param.ndim > 1 and id(param) not in attention:
                init.xavier_uniform_(param)

    @property
    def hidden_size(self) -> int:
        """D, the size of each hidden state that :meth:`encode` returns."""
        return self.embedding.embedding_dim

    def encode(self, source, attention_mask=None) -> Tensor:
        """Hidden states h^L (B, T, D) before the vocabulary projection; attention_mask (B, T), 0 = padding."""
        embedded = self.embedding(source) * math.sqrt(self.embedding.embedding_dim)  # (B, T, D)
        embedded = self.position_encoder(embedded)
        return self.transformer_stack(embedded, key_padding_mask=padding_mask_from_attention_mask(attention_mask))

    def forward(self, source, attention_mask=None) -> Tensor:
        return self.output_projection(self.encode(source, attention_mask))  # (B, T, V)
