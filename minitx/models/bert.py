"""BERT (Devlin et al., 2019): a post-norm Transformer encoder over token + position + segment embeddings.

Input: ids x_1…x_T (``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``), segment ids s_t (0 for a, 1 for b).

    h⁰_t = LayerNorm(E_tok[x_t] + E_pos[t] + E_type[s_t])                     (embeddings, then dropout)
    a    = LayerNorm(hˡ⁻¹ + MultiHeadAttention(hˡ⁻¹))                          (post-norm: add, then normalise)
    hˡ   = LayerNorm(a + W₂ GELU(W₁ a + b₁) + b₂)                              (GELU with the exact erf)
    pool = tanh(W_p h^L_[CLS] + b_p)                                           (optional pooler)

Pretraining (:class:`BertForPretraining`) adds two heads:

- masked language modelling: predict the ids hidden behind ``[MASK]`` (set M) from the rest,
      L_MLM = -1/|M| Σ_{t∈M} log P(x_t | x_∖M),   P(· | …) = softmax(W_E LayerNorm(GELU(W h_t + b)) + c)
  whose output matrix W_E is the token-embedding table itself (tied weights);
- sentence-order prediction (ALBERT's SOP): were the two segments swapped?  L_SOP = -log P(y | pool).

Initialisation (BERT's): every Linear and embedding weight ~ N(0, 0.02²) (``initializer_range``), biases 0,
LayerNorm γ = 1, β = 0, and the ``[PAD]`` row of the token table 0. With these small weights the untrained
MLM head starts near the uniform guess, L_MLM ≈ ln V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ..backend import default_dtype, device_of, get_array_module
from ..nn import (Dropout, Embedding, LayerNorm, LearnedPositionalEmbedding, Linear, Module, Parameter,
                  TransformerEncoder, TransformerEncoderLayer)
from ..tensor import Tensor
from .init import normal_init_


@dataclass
class BertConfig:
    """Sizes of a BERT; the field names are those of Hugging Face's ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02




def _ids_array(name: str, value, shape: tuple | None, xp):
    """``value`` (array, list or Tensor) as an integer array of the array module ``xp``, checked against
    ``shape`` (the ids' (B, T); None for the ids themselves, which must be 2-D)."""
    array = xp.asarray(value.data if isinstance(value, Tensor) else value)
    if array.dtype.kind not in "iub":
        raise TypeError(f"BertModel: {name} must hold integers, got dtype {array.dtype} (shape {tuple(array.shape)})")
    if shape is None and array.ndim != 2:
        raise ValueError(f"BertModel: {name} must have shape (B, T), got {tuple(array.shape)}")
    if shape is not None and tuple(array.shape) != shape:
        raise ValueError(f"BertModel: {name} must have the shape of input_ids {shape}, got {tuple(array.shape)}")
    return array


class BertEmbeddings(Module):
    """h⁰_t = Dropout(LayerNorm(E_tok[x_t] + E_pos[t] + E_type[s_t])): ids (B, T) -> (B, T, D)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.tokens = Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.positions = LearnedPositionalEmbedding(config.max_position_embeddings, config.hidden_size)
        self.token_types = Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids) -> Tensor:
        x = self.tokens(input_ids) + self.token_types(token_type_ids)  # (B, T, D)
        return self.dropout(self.norm(self.positions(x)))


class BertModel(Module):
    """The BERT encoder: ids (B, T) -> last hidden states (B, T, D); see the module docstring.

    ``pooler=True`` adds pool = tanh(W_p h_[CLS] + b_p), read by :meth:`pool` (sentence-level heads).
    Load published weights with :func:`minitx.hub.load_bert`. Sub-modules: ``embeddings`` (``tokens``,
    ``positions``, ``token_types``, ``norm``), ``encoder.layers.{i}`` (post-norm
    :class:`~minitx.nn.TransformerEncoderLayer` with GELU), ``pooler``.
    """

    def __init__(self, config: BertConfig, pooler: bool = True):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.embeddings = BertEmbeddings(config)
        self.encoder = TransformerEncoder([self._layer(config) for _ in range(config.num_hidden_layers)])
        self.pooler = Linear(config.hidden_size, config.hidden_size) if pooler else None
        normal_init_(self, config.initializer_range)

    @staticmethod
    def _layer(config: BertConfig) -> TransformerEncoderLayer:
        """One post-norm encoder layer with BERT's sizes, exact-erf GELU and LayerNorm ε."""
        return TransformerEncoderLayer(
            config.hidden_size, config.num_attention_heads, config.intermediate_size,
            dropout=config.hidden_dropout_prob, attention_dropout=config.attention_probs_dropout_prob,
            activation="gelu", norm_first=False, eps=config.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> Tensor:
        """input_ids (B, T); attention_mask (B, T), 1 = real token, 0 = padding (default: all real);
        token_type_ids (B, T), the segment of each token (default: all 0) -> hidden states (B, T, D).

        Arrays stay in the array module (NumPy or CuPy) they come in; the embedding tables take them to
        the model's device.
        """
        raw = input_ids.data if isinstance(input_ids, Tensor) else input_ids
        xp = get_array_module(raw)
        ids = _ids_array("input_ids", raw, None, xp)  # (B, T)
        if token_type_ids is None:
            token_type_ids = xp.zeros_like(ids)  # every token in segment 0
        token_type_ids = _ids_array("token_type_ids", token_type_ids, ids.shape, xp)
        padding = F.padding_mask_from_attention_mask(attention_mask, ids.shape, device_of(ids))  # (B, T), True = pad
        h = self.embeddings(ids, token_type_ids)  # (B, T, D)
        return self.encoder(h, key_padding_mask=padding)  # (B, T, D)

    def encode(self, input_ids, attention_mask=None) -> Tensor:
        """The encoder interface of :class:`~minitx.models.task_adapter.TaskAdapter`: hidden states (B, T, D)."""
        return self.forward(input_ids, attention_mask)

    def pool(self, hidden: Tensor) -> Tensor:
        """pool = tanh(W_p h_[CLS] + b_p): hidden (B, T, D) -> (B, D)."""
        if self.pooler is None:
            raise ValueError("this BertModel was built with pooler=False")
        return self.pooler(hidden[:, 0]).tanh()

    @classmethod
    def from_pretrained(cls, folder) -> "BertModel":
        """Moved to :func:`minitx.hub.load_bert`: reading published files lives above the models."""
        raise ImportError("BertModel.from_pretrained has moved: use minitx.hub.load_bert(folder) "
                          "(or minitx.hub.load_pretrained(folder) for the model and its tokenizer)")


class BertForPretraining(Module):
    """BERT with its two pretraining heads: masked-token prediction and sentence-order prediction.

    forward -> (mlm_logits (B, T, V), sop_logits (B, 2)). The MLM decoder's weight is the token-embedding
    table (V, D) itself, so a token's input and output vectors are one parameter.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = BertModel(config, pooler=True)
        self.mlm_dense = Linear(config.hidden_size, config.hidden_size)
        self.mlm_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlm_bias = Parameter(np.zeros(config.vocab_size), dtype=default_dtype())  # (V,)
        self.sop = Linear(config.hidden_size, 2)
        for head in (self.mlm_dense, self.sop):
            normal_init_(head, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> tuple[Tensor, Tensor]:
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, D)
        z = self.mlm_norm(F.gelu(self.mlm_dense(h)))  # (B, T, D)
        mlm_logits = F.linear(z, self.bert.embeddings.tokens.weight, self.mlm_bias)  # (B, T, V), tied decoder
        sop_logits = self.sop(self.bert.pool(h))  # (B, 2)
        return mlm_logits, sop_logits

    def loss(self, batch: dict, return_metrics: bool = False):
        """L = L_MLM + L_SOP: the mean cross-entropy over the masked positions (``labels`` ≠ IGNORE_INDEX) plus
        the mean cross-entropy of the order labels (``sop_labels``, 1 = swapped, IGNORE_INDEX = none).

        A term whose targets are all IGNORE_INDEX is left out rather than added as a 0/0 = NaN mean: a batch
        of single texts (MLM only, no order label) trains MLM alone. With ``return_metrics`` the result is
        ``(L, metrics)``, metrics = {"mlm_loss", and when the batch has order labels "sop_loss", "sop_acc"}.
        """
        terms, _, metrics = self.loss_terms(batch)
        if not terms:
            raise ValueError("BertForPretraining.loss: the batch has no masked token and no order label "
                             "(every labels and sop_labels entry is IGNORE_INDEX)")
        total = terms.get("mlm")
        if "sop" in terms:
            total = terms["sop"] if total is None else total + terms["sop"]
        return (total, metrics) if return_metrics else total

    def loss_terms(self, batch: dict) -> tuple[dict, dict, dict]:
        """The two means of :meth:`loss` apart, with how many targets each averages over:
        ``({"mlm": L_MLM, "sop": L_SOP}, {"mlm": masked positions, "sop": order labels}, metrics)``; a term
        with no target is left out of the first dict (its count is 0). Data-parallel training weights each
        term by its own share of the global batch's targets (:class:`minitx.train.Trainer`)."""
        mlm_logits, sop_logits = self(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        terms, counts, metrics = {}, {}, {}
        for name, logits, labels in (("mlm", mlm_logits, batch["labels"]), ("sop", sop_logits, batch["sop_labels"])):
            counts[name] = int((_as_array(labels) != F.IGNORE_INDEX).sum())  # over (B, T) for MLM, (B,) for SOP
            if counts[name]:
                terms[name] = F.cross_entropy(logits, labels, ignore_index=F.IGNORE_INDEX)
                metrics[f"{name}_loss"] = terms[name].item()
        if "sop" in terms:
            order = _as_array(batch["sop_labels"])  # (B,)
            hits = (sop_logits.data.argmax(axis=-1) == order)[order != F.IGNORE_INDEX]
            metrics["sop_acc"] = float(hits.mean())
        return terms, counts, metrics


def _as_array(value):
    """The array inside a Tensor, or ``value`` itself as an array."""
    return value.data if isinstance(value, Tensor) else get_array_module(value).asarray(value)
