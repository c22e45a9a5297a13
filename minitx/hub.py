"""Published checkpoints in: weights, configuration and tokeniser, from the files their authors publish.

This module sits above the models and the tokenisers (it builds both), so neither of them needs to know
about file formats. One section per family:

- BERT (e.g. all-MiniLM-L6-v2) from a Hugging Face folder: ``config.json`` + ``model.safetensors`` +
  ``vocab.txt``: :func:`load_pretrained`, :func:`load_bert`, :func:`load_bert_tokenizer`;
- GPT-2's byte-level BPE from its ``gpt2.tiktoken`` ranks: :func:`load_gpt2_tokenizer`;
- Llama-architecture models from a GGUF file (llama.cpp's format, :mod:`minitx.gguf`; weights de-quantised
  to float32 by hand): a :class:`~minitx.models.llama.Llama` and minitx's byte-level BPE from the file's
  vocabulary and merges: :func:`load_gguf_llama`; SmolLM2-135M-Instruct, fetched once: :func:`load_smollm2`.

Hugging Face's weights are the same numbers as minitx's under other names: Hugging Face calls the query
projection of layer 3 ``encoder.layer.3.attention.self.query.weight``, minitx
``encoder.layers.3.self_attn.q_proj.weight``. Both store a linear layer's weight as (out, in), so loading is
renaming, nothing else. The renaming is written once, in the tables below; every key that finds no partner,
in either direction, is reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from .backend import to_device
from .data.fetch import gpt2_ranks_path, smollm2_path
from .gguf import Q4_1, Q8_0, GGUFError, GGUFFile, read_gguf
from .models import BertConfig, BertModel
from .models.llama import Llama, LlamaConfig
from .nn import init
from .nn.quantized import Q4_1Linear, Q8_0Linear, QuantizedGatedFeedForward
from .nn.rotary import interleaved_to_rotate_half
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


# ------------------------------------------------------------------------------------ Llama (GGUF)
# (GGUF name, Hugging Face name, minitx name) of the tensors inside layer i, after "blk.{i}.",
# "model.layers.{i}." and "blocks.{i}.".
LLAMA_LAYER_NAMES = [
    ("attn_norm.weight", "input_layernorm.weight", "ln_1.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight", "attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight", "attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight", "attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight", "attn.out_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight", "ln_2.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight", "mlp.down_proj.weight"),
]
LLAMA_OTHER_NAMES = [
    ("token_embd.weight", "model.embed_tokens.weight", "embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight", "norm.weight"),
    ("output.weight", "lm_head.weight", "lm_head.weight"),  # absent when tied to the token embedding
]
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # its chat template's


def llama_config_from_gguf(f: GGUFFile) -> LlamaConfig:
    """A :class:`LlamaConfig` from the ``llama.*`` metadata of ``f``."""
    if f.require("general.architecture") != "llama":
        raise GGUFError(f"{f.path} holds a {f.metadata['general.architecture']!r} model, not 'llama'")
    d_model, num_heads = int(f.require("llama.embedding_length")), int(f.require("llama.attention.head_count"))
    if int(f.metadata.get("llama.rope.dimension_count", d_model // num_heads)) != d_model // num_heads:
        raise GGUFError(f"{f.path}: rotary on part of a head (llama.rope.dimension_count) is not supported")
    # The file stores ε as float32 (1e-5 reads back as 9.99999975e-06); 7 significant digits give the written value.
    eps = float(f"{f.require('llama.attention.layer_norm_rms_epsilon'):.7g}")
    return LlamaConfig(
        vocab_size=int(f.metadata.get("llama.vocab_size", len(f.require("tokenizer.ggml.tokens")))),
        d_model=d_model, num_layers=int(f.require("llama.block_count")), num_heads=num_heads,
        num_kv_heads=int(f.metadata.get("llama.attention.head_count_kv", num_heads)),
        dim_feedforward=int(f.require("llama.feed_forward_length")), max_len=int(f.require("llama.context_length")),
        rms_norm_eps=eps, rope_base=float(f.metadata.get("llama.rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in f.tensors)


def llama_weights(f: GGUFFile, config: LlamaConfig, names: str = "minitx", skip_q4_1: bool = False
                  ) -> dict[str, np.ndarray]:
    """Every tensor of a Llama GGUF file de-quantised to float32, named as ``names`` says (``"minitx"`` or
    ``"hf"``), in Hugging Face's rotary layout; with ``skip_q4_1``, all but the Q4_1 tensors of the layers.

    GGUF stores W_q and W_k with each head's rows reordered for llama.cpp's adjacent-pair rotation;
    :func:`~minitx.nn.rotary.interleaved_to_rotate_half` puts them back in the order of the rotate-half
    rotation that :class:`~minitx.nn.RotaryEmbedding` (and Hugging Face) use.
    """
    column = {"hf": 1, "minitx": 2}[names]
    table = {row[0]: row[column] for row in LLAMA_OTHER_NAMES}
    for i in range(config.num_layers):
        prefix = ("", f"model.layers.{i}.", f"blocks.{i}.")[column]
        table.update({f"blk.{i}.{row[0]}": prefix + row[column] for row in LLAMA_LAYER_NAMES})
    unexpected = sorted(set(f.tensors) - set(table))
    if unexpected:
        raise GGUFError(f"{f.path} has tensors a Llama model of {config.num_layers} layers does not: {unexpected[:5]}")
    weights = {}
    for gguf_name, name in table.items():
        if gguf_name == "output.weight" and config.tie_embeddings:
            continue
        if skip_q4_1 and gguf_name.startswith("blk.") and f.tensor(gguf_name).ggml_type == Q4_1:
            continue
        weight = f.tensor(gguf_name).dequantize()
        if gguf_name.endswith("attn_q.weight"):
            weight = interleaved_to_rotate_half(weight, config.num_heads)
        elif gguf_name.endswith("attn_k.weight"):
            weight = interleaved_to_rotate_half(weight, config.num_kv_heads)
        weights[name] = weight
    return weights


def tokenizer_from_gguf(f: GGUFFile) -> ByteLevelBPE:
    """minitx's byte-level BPE from the vocabulary, merges and special tokens in ``f``'s metadata.

    Reads ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE) with a pre-tokeniser minitx has
    (``tokenizer.ggml.pre``: ``"gpt2"`` or ``"smollm"``). Tokens of type 3 (llama.cpp's "control") are the
    special tokens; the end-of-sequence token pads.
    """
    model, pre = f.require("tokenizer.ggml.model"), f.metadata.get("tokenizer.ggml.pre", "gpt2")
    if model != "gpt2":
        raise GGUFError(f"{f.path}: tokenizer.ggml.model is {model!r}; minitx reads only 'gpt2' (byte-level BPE)")
    if pre not in ("gpt2", "smollm"):
        raise GGUFError(f"{f.path}: pre-tokeniser {pre!r} is not one minitx has ('gpt2', 'smollm')")
    tokens, types = f.require("tokenizer.ggml.tokens"), f.require("tokenizer.ggml.token_type")
    special_ids = [i for i, kind in enumerate(types) if kind == 3]
    eos = f.metadata.get("tokenizer.ggml.eos_token_id")
    return ByteLevelBPE.from_merges(tokens, f.require("tokenizer.ggml.merges"), special_ids, pretokenizer=pre,
                                    pad_token=tokens[eos] if eos in special_ids else None)


def keep_layers_q4_1(f: GGUFFile, model: Llama) -> None:
    """Put :class:`~minitx.nn.quantized.Q4_1Linear` layers, built from the file's Q4_1 blocks, in place of the
    linear layers of every block of ``model`` (attention projections and the SwiGLU's three matrices).

    W_q and W_k get Hugging Face's rotary row order back like their de-quantised forms: the rows of the
    scales, minima and packed nibbles move together, since a block never spans two rows. When the output
    layer is the token embedding and the file stores it as Q8_0, the output product uses a
    :class:`~minitx.nn.quantized.Q8_0Linear` copy of it (the embedding lookup keeps the float32 table).
    """
    config = model.config

    def quantized(name: str, heads: int | None = None) -> Q4_1Linear:
        arrays = f.tensor(name).q4_1_blocks()  # scale, minimum (O, nb); packed (O, nb, 16)
        if heads is not None:
            arrays = [interleaved_to_rotate_half(a, heads) for a in arrays]
        return Q4_1Linear(*arrays)

    for i, block in enumerate(model.blocks):
        block.attn.q_proj = quantized(f"blk.{i}.attn_q.weight", config.num_heads)
        block.attn.k_proj = quantized(f"blk.{i}.attn_k.weight", config.num_kv_heads)
        block.attn.v_proj = quantized(f"blk.{i}.attn_v.weight")
        block.attn.out_proj = quantized(f"blk.{i}.attn_output.weight")
        block.mlp = QuantizedGatedFeedForward(quantized(f"blk.{i}.ffn_gate.weight"),
                                              quantized(f"blk.{i}.ffn_up.weight"),
                                              quantized(f"blk.{i}.ffn_down.weight"))
    if config.tie_embeddings and f.tensor("token_embd.weight").ggml_type == Q8_0:
        model.lm_head = Q8_0Linear(*f.tensor("token_embd.weight").q8_0_blocks())


def load_gguf_llama(source: str | Path | GGUFFile, q4_1: bool = False
                    ) -> tuple[Llama, ByteLevelBPE, dict[str, Any]]:
    """``(model, tokenizer, info)`` from a Llama GGUF file (a path or an already parsed file).

    By default every weight is de-quantised to float32. With ``q4_1`` the layers' linear weights stay Q4_1
    (:func:`keep_layers_q4_1`, for fast generation; no training; on a GPU they take the CUDA kernel, so far
    run only in Numba's simulator); the embedding and the norms are de-quantised. ``info`` holds what generation needs besides the weights: ``eos_token_id``,
    ``bos_token_id`` and the file's ``chat_template`` (Jinja text, for reference;
    :func:`~minitx.models.llama.chatml_prompt` writes it).
    """
    f = source if isinstance(source, GGUFFile) else read_gguf(source)
    config = llama_config_from_gguf(f)
    tokenizer = tokenizer_from_gguf(f)
    if tokenizer.vocab_size != config.vocab_size:
        raise GGUFError(f"{f.path}: the tokenizer has {tokenizer.vocab_size} tokens, the model {config.vocab_size}")
    with init.skip_init():  # every weight is loaded below: none is drawn, and none is written twice
        model = Llama(config)
    if q4_1:
        keep_layers_q4_1(f, model)
        weights = llama_weights(f, config, skip_q4_1=True)
        missing = model.check_state_dict(weights, strict=False).missing_keys
        unfilled = [key for key in missing if not key.endswith((".scale", ".minimum", ".packed", ".quants"))]
        if unfilled:
            raise GGUFError(f"{f.path}: no weights for {unfilled[:5]}")
        model.load_state_dict(weights, strict=False, assign=True)
    else:
        model.load_state_dict(llama_weights(f, config), assign=True)
    model.eval()
    info = {"eos_token_id": f.metadata.get("tokenizer.ggml.eos_token_id"),
            "bos_token_id": f.metadata.get("tokenizer.ggml.bos_token_id"),
            "chat_template": f.metadata.get("tokenizer.chat_template")}
    return model, tokenizer, info


def load_smollm2(q4_1: bool = False) -> tuple[Llama, ByteLevelBPE, dict[str, Any]]:
    """SmolLM2-135M-Instruct (fetched once, see :func:`minitx.data.fetch.smollm2_path`) as
    ``(model, tokenizer, info)``, float32 or with Q4_1 layers (``q4_1``, see :func:`load_gguf_llama`);
    ``info["system"]`` is its chat template's default system message."""
    model, tokenizer, info = load_gguf_llama(smollm2_path(), q4_1=q4_1)
    info["system"] = SMOLLM2_SYSTEM
    return model, tokenizer, info
