"""Layers and models built from :mod:`minitx.functional`, with PyTorch's parameter names and shapes.

Read in this order: :mod:`.module` (Parameter, Module, ModuleList, Sequential), :mod:`.init`,
:mod:`.layers` (Linear, Embedding, Dropout, LayerNorm, RMSNorm, positional encodings, FeedForward,
GatedFeedForward), :mod:`.rotary` (RotaryEmbedding), :mod:`.attention` (MultiHeadAttention, grouped-query
included), :mod:`.transformer` (encoder layer and stack, decoder block, with pluggable parts), :mod:`.lora`
(low-rank adapters on chosen Linear layers, for fine-tuning a frozen model).
"""

from . import init
from .attention import MultiHeadAttention, kv_cache_length
from .lora import LoRALinear, apply_lora, load_lora_state_dict, lora_layers, lora_state_dict, merge_lora, unmerge_lora
from .layers import (Dropout, Embedding, FeedForward, GatedFeedForward, LayerNorm, LearnedPositionalEmbedding,
                     Linear, PositionalEncoding, RMSNorm, sinusoidal_table)
from .module import IncompatibleKeys, Module, ModuleList, Parameter, Sequential
from .rotary import RotaryEmbedding, interleaved_to_rotate_half, rotate_half_to_interleaved, rotary_cos_sin
from .transformer import DecoderBlock, TransformerEncoder, TransformerEncoderLayer

__all__ = [
    "kv_cache_length",
    "DecoderBlock", "Dropout", "Embedding", "FeedForward", "IncompatibleKeys", "LayerNorm",
    "LearnedPositionalEmbedding", "Linear", "Module", "ModuleList", "MultiHeadAttention", "Parameter",
    "PositionalEncoding", "Sequential", "TransformerEncoder", "TransformerEncoderLayer", "init",
    "sinusoidal_table", "GatedFeedForward", "RMSNorm", "RotaryEmbedding", "interleaved_to_rotate_half",
    "rotary_cos_sin", "rotate_half_to_interleaved",
    "LoRALinear", "apply_lora", "load_lora_state_dict", "lora_layers", "lora_state_dict", "merge_lora", "unmerge_lora",
]
