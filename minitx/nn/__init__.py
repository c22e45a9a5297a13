"""Layers and models built from :mod:`minitx.functional`, with PyTorch's parameter names and shapes.

Read in this order: :mod:`.module` (Parameter, Module, ModuleList, Sequential), :mod:`.init`,
:mod:`.layers` (Linear, Embedding, Dropout, LayerNorm, positional encodings, FeedForward),
:mod:`.attention` (MultiHeadAttention), :mod:`.transformer` (encoder layer and stack, decoder block).
"""

from . import init
from .attention import MultiHeadAttention
from .layers import (Dropout, Embedding, FeedForward, LayerNorm, LearnedPositionalEmbedding, Linear,
                     PositionalEncoding, sinusoidal_table)
from .module import IncompatibleKeys, Module, ModuleList, Parameter, Sequential
from .transformer import DecoderBlock, TransformerEncoder, TransformerEncoderLayer

__all__ = [
    "DecoderBlock", "Dropout", "Embedding", "FeedForward", "IncompatibleKeys", "LayerNorm",
    "LearnedPositionalEmbedding", "Linear", "Module", "ModuleList", "MultiHeadAttention", "Parameter",
    "PositionalEncoding", "Sequential", "TransformerEncoder", "TransformerEncoderLayer", "init",
    "sinusoidal_table",
]
