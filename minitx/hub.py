"""Published checkpoints in: weights, configuration and tokeniser, from the files their authors publish.

This module sits above the models and the tokenisers (it builds both), so neither of them needs to know
about file formats. One section per family:

- BERT (e.g. all-MiniLM-L6-v2) from a Hugging Face folder: ``config.json`` + ``model.safetensors`` +
  ``vocab.txt``: :func:`load_pretrained`, :func:`load_bert`, :func:`load_bert_tokenizer`;
- GPT-2's byte-level BPE from its ``gpt2.tiktoken`` ranks: :func:`load_gpt2_tokenizer`.

Hugging Face's weights are the same numbers as minitx's under other names: Hugging Face calls the query
projection of layer 3 ``encoder.layer.3.attention.self.query.weight``, minitx
``encoder.layers.3.self_attn.q_proj.weight``. Both store a linear layer's weight as (out, in), so loading is
renaming, nothing else. The renaming is written once, in the tables below; every key that finds no partner,
in either direction, is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from .backend import to_device
from .data.fetch import gpt2_ranks_path
from .models import BertConfig, BertModel
from .tokenizers import ByteLevelBPE, WordPieceTokenizer


class CheckpointMismatchError(KeyError):
    """Checkpoint keys and model parameters that do not pair up. A ``KeyError`` that prints its message as
    written (a plain ``KeyError`` shows the repr, with its line breaks escaped)."""

    def __str__(self) -> str:
        return str(self.args[0])


# ------------------------------------------------------------------------------- BERT (Hugging Face)
# (Hugging Face name, minitx name) outside the layers.
EMBEDDING_NAMES = [
    ("embeddings.word_embeddings.weight", "embeddings.tokens.weight"),
    ("embeddings.position_embeddings.weight", "embeddings.positions.weight"),
    ("embeddings.token_type_embeddings.weight", "embeddings.token_types.weight"),
    ("embeddings.LayerNorm.weight", "embeddings.norm.weight"),
    ("embeddings.LayerNorm.bias", "embeddings.norm.bias"),
]
POOLER_NAMES = [
    ("pooler.dense.weight", "pooler.weight"),
    ("pooler.dense.bias", "pooler.bias"),
]
# (Hugging Face, minitx) module names inside layer i: "encoder.layer.{i}." and "encoder.layers.{i}." in front,
# ".weight" or ".bias" behind.
LAYER_NAMES = [
    ("attention.self.query", "self_attn.q_proj"),
    ("attention.self.key", "self_attn.k_proj"),
    ("attention.self.value", "self_attn.v_proj"),
    ("attention.output.dense", "self_attn.out_proj"),
    ("attention.output.LayerNorm", "norm1"),
    ("intermediate.dense", "ff.linear1"),
    ("output.dense", "ff.linear2"),
    ("output.LayerNorm", "norm2"),
]
# Saved by some versions of transformers but not weights: position_ids is the constant 0, 1, …, 511.
IGNORED_KEYS = {"embeddings.position_ids"}


def hf_name_map(num_layers: int, pooler: bool) -> dict[str, str]:
    """Hugging Face parameter name -> minitx parameter name, for a BERT of ``num_layers`` layers."""
    names = dict(EMBEDDING_NAMES)
    for i in range(num_layers):
        for hf, ours in LAYER_NAMES:
            for kind in ("weight", "bias"):
                names[f"encoder.layer.{i}.{hf}.{kind}"] = f"encoder.layers.{i}.{ours}.{kind}"
    if pooler:
        names.update(POOLER_NAMES)
    return names


def config_from_hf(hf: dict) -> BertConfig:
    """A :class:`BertConfig` from a Hugging Face ``config.json`` (as a dict); refuses what minitx cannot run."""
    unsupported = {"model_type": ("bert", hf.get("model_type")), "hidden_act": ("gelu", hf.get("hidden_act", "gelu")),
                   "position_embedding_type": ("absolute", hf.get("position_embedding_type", "absolute"))}
    bad = [f"{key}={got!r} (minitx supports {want!r})" for key, (want, got) in unsupported.items() if got != want]
    if bad:
        raise ValueError(f"this checkpoint is not a BERT that minitx can run: {', '.join(bad)}")
    fields = BertConfig.__dataclass_fields__
    return BertConfig(**{k: v for k, v in hf.items() if k in fields})


def load_hf_weights(model: BertModel, tensors: dict[str, np.ndarray]) -> None:
    """Copy Hugging Face-named ``tensors`` into ``model``'s parameters, cast to each parameter's dtype
    (float32 unless the default dtype was changed) and placed on its device.

    Raises :class:`CheckpointMismatchError` (a ``KeyError``) naming every checkpoint key that no parameter
    takes and every parameter that no checkpoint key fills, and ``ValueError`` for shapes that differ. Both
    are checked before anything is copied, so on an error the model is unchanged.
    """
    names = hf_name_map(model.config.num_hidden_layers, pooler=model.pooler is not None)
    params = dict(model.named_parameters())
    unexpected = sorted(k for k in tensors if k not in names and k not in IGNORED_KEYS)
    missing = sorted(f"{ours} (checkpoint name {hf})" for hf, ours in names.items() if hf not in tensors)
    unmapped = sorted(p for p in params if p not in names.values())
    if unexpected or missing or unmapped:
        lines = [f"the checkpoint does not match BertModel({model.config}):"]
        if unexpected:
            lines.append(f"  {len(unexpected)} checkpoint keys with no minitx parameter: " + ", ".join(unexpected))
        if missing:
            lines.append(f"  {len(missing)} minitx parameters missing from the checkpoint: " + ", ".join(missing))
        if unmapped:
            lines.append(f"  {len(unmapped)} minitx parameters with no checkpoint name: " + ", ".join(unmapped))
        raise CheckpointMismatchError("\n".join(lines))
    for hf, ours in names.items():
        if params[ours].shape != tuple(tensors[hf].shape):
            raise ValueError(f"{hf} has shape {tuple(tensors[hf].shape)} but {ours} has shape {params[ours].shape}")
    for hf, ours in names.items():
        param, value = params[ours], tensors[hf]
        param.data = to_device(np.asarray(value, dtype=param.dtype), param.device)


def load_bert(folder) -> BertModel:
    """A :class:`~minitx.models.BertModel` with the weights of the Hugging Face checkpoint in ``folder``
    (``config.json``, ``model.safetensors``), in eval mode."""
    folder = Path(folder)
    with open(folder / "config.json", encoding="utf-8") as f:
        config = config_from_hf(json.load(f))
    tensors = load_file(folder / "model.safetensors")
    model = BertModel(config, pooler="pooler.dense.weight" in tensors)
    load_hf_weights(model, tensors)
    return model.eval()


def load_bert_tokenizer(folder) -> WordPieceTokenizer:
    """The checkpoint's WordPiece tokeniser, from ``vocab.txt`` (lower-casing as ``tokenizer.json`` says)."""
    folder = Path(folder)
    lowercase = True
    if (folder / "tokenizer.json").exists():
        with open(folder / "tokenizer.json", encoding="utf-8") as f:
            lowercase = (json.load(f).get("normalizer") or {}).get("lowercase", True)
    return WordPieceTokenizer.from_vocab(folder / "vocab.txt", lowercase=lowercase)


def load_pretrained(folder) -> tuple[BertModel, WordPieceTokenizer]:
    """``(model, tokenizer)`` from a Hugging Face BERT folder, e.g. :func:`minitx.data.fetch.minilm_path`."""
    return load_bert(folder), load_bert_tokenizer(folder)


# ----------------------------------------------------------------------------------- GPT-2 tokeniser
def load_gpt2_tokenizer(path=None) -> ByteLevelBPE:
    """GPT-2's byte-level BPE (50,257 ids, ``<|endoftext|>`` = 50256) from a ``gpt2.tiktoken`` ranks file
    (default: :func:`minitx.data.fetch.gpt2_ranks_path`, fetched and cached on first use)."""
    return ByteLevelBPE.from_tiktoken_file(str(path or gpt2_ranks_path()))
