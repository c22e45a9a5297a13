"""Tokenisers: text to integer ids and back.

- :class:`CharTokenizer`: one token per character.
- :class:`ByteLevelBPE`: GPT-2's byte-level byte-pair encoding (trainable,
  or loaded from GPT-2's own ranks, or from a vocabulary and a merge list,
  e.g. SmolLM2's with its pre-tokeniser).
- :class:`WordPieceTokenizer`: BERT's WordPiece (loadable from ``vocab.txt``, trainable).

All share :class:`Tokenizer`'s batching (padding, truncation, attention
masks) and JSON save/load.
"""

from .base import Tokenizer
from .bpe import ByteLevelBPE
from .char import CharTokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ["Tokenizer", "CharTokenizer", "ByteLevelBPE", "WordPieceTokenizer"]
