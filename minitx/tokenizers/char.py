"""Character-level tokeniser: one token per Unicode character.

The simplest possible tokeniser and the one used for small language-model
demos: the vocabulary is the set of characters seen in the training text,
in sorted order, after the special tokens.
"""

from __future__ import annotations

from typing import Any, Iterable

from .base import Tokenizer

DEFAULT_SPECIALS = ("[PAD]", "[UNK]")


class CharTokenizer(Tokenizer):
    """Maps each character to an id.

    Args:
        chars: the vocabulary's characters, in id order (after the specials).
        special_tokens: special token texts; they get ids ``0 .. k-1``.  A
            ``"[PAD]"``, ``"[UNK]"`` or ``"[MASK]"`` among them takes that role.

    Characters outside the vocabulary encode to ``[UNK]``; without an
    ``[UNK]`` token they raise ``ValueError``.  Special tokens are never
    produced from text: ``"[PAD]"`` in the text is five ordinary characters.
    """

    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] = DEFAULT_SPECIALS) -> None:
        specials = list(special_tokens)
        chars = list(chars)
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("chars must be distinct single characters")
        special_ids = {s: i for i, s in enumerate(specials)}
        super().__init__(
            special_ids,
            pad_token="[PAD]" if "[PAD]" in special_ids else None,
            unk_token="[UNK]" if "[UNK]" in special_ids else None,
            mask_token="[MASK]" if "[MASK]" in special_ids else None,
        )
        self.chars = chars
        self._char_to_id = {c: len(specials) + i for i, c in enumerate(chars)}
        self._id_to_text = specials + chars

    @classmethod
    def from_text(cls, text: str | Iterable[str], special_tokens: Iterable[str] = DEFAULT_SPECIALS) -> "CharTokenizer":
        """Build the vocabulary from every distinct character of ``text`` (a string or strings)."""
        seen = set(text) if isinstance(text, str) else set().union(*map(set, text))
        return cls(sorted(seen), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_text)

    def encode(self, text: str) -> list[int]:
        table, unk = self._char_to_id, self.unk_token_id
        if unk is None:
            missing = set(text) - table.keys()
            if missing:
                raise ValueError(f"characters not in the vocabulary and no [UNK] token: {sorted(missing)[:10]}")
        return [table.get(c, unk) for c in text]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        table, n_special = self._id_to_text, len(self.special_tokens)
        return "".join(table[i] for i in self.check_ids(ids) if not (skip_special_tokens and i < n_special))

    def to_dict(self) -> dict[str, Any]:
        return {"chars": self.chars, "special_tokens": list(self.special_tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharTokenizer":
        return cls(data["chars"], data["special_tokens"])
