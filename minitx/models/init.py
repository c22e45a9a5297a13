"""The initialisation BERT and GPT-2 share: every weight drawn from N(0, σ²), with σ = 0.02 in both papers.

Small weights keep the residual stream's scale close to that of the embeddings at the start of training, and
LayerNorm (γ = 1, β = 0) takes care of the rest. GPT-2 then shrinks its residual projections further
(:meth:`minitx.models.GPT.reset_parameters`).
"""

from __future__ import annotations

from ..nn import Embedding, LearnedPositionalEmbedding, Linear, Module, init


def normal_init_(module: Module, std: float) -> None:
    """Every layer inside ``module``: Linear and embedding weights ~ N(0, std²), Linear biases 0, an
    embedding's padding row 0 (LayerNorm keeps its γ = 1, β = 0)."""
    for m in module.modules():
        if isinstance(m, Linear):
            init.normal_(m.weight, std=std)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, (Embedding, LearnedPositionalEmbedding)):
            init.normal_(m.weight, std=std)
            if getattr(m, "padding_idx", None) is not None:
                m.weight.data[m.padding_idx] = 0
