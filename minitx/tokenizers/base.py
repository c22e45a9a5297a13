"""The common interface of every minitx tokeniser.

A tokeniser turns text into a list of integer ids and back. Models do not
read lists of different lengths, so :meth:`Tokenizer.encode_batch` turns a
batch of texts into one rectangular ``(B, T)`` array: short rows are filled
with the padding id on the right, and an ``attention_mask`` marks which
positions hold real tokens (1) and which hold padding (0).

Special tokens (``[PAD]``, ``[CLS]``, ``<|endoftext|>`` ...) are ordinary
ids that the tokeniser never produces from ordinary text; each subclass says
which it has.  A tokeniser is saved as one JSON file whose ``"type"`` field
names the class, so :meth:`Tokenizer.load` can rebuild any of them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

_REGISTRY: dict[str, type["Tokenizer"]] = {}


def check_special_tokens(tokens: Iterable[str]) -> None:
    """Special tokens must be non-empty strings (an empty one would match between every two characters)."""
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")


def check_texts(where: str, texts) -> None:
    """Refuse a bare string where an iterable of texts is expected (it would be read character by character)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{where}: texts must be an iterable of strings, got a {type(texts).__name__} "
                        "(wrap a single text in a list: [text])")

PADDING_CHOICES = (True, False, "max_length")


class Tokenizer:
    """Base class: special tokens, batching with padding, JSON save/load.

    Subclasses implement :meth:`encode`, :meth:`decode`, :meth:`to_dict`,
    :meth:`from_dict` and the :attr:`vocab_size` property, and call
    ``super().__init__`` with their special tokens.

    Args:
        special_tokens: maps each special token's text to its id.
        pad_token / unk_token / mask_token: which special token plays that
            role, or ``None`` when the tokeniser has no such token.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(
        self,
        special_tokens: dict[str, int],
        pad_token: str | None = None,
        unk_token: str | None = None,
        mask_token: str | None = None,
    ) -> None:
        check_special_tokens(special_tokens)
        for role, token in (("pad", pad_token), ("unk", unk_token), ("mask", mask_token)):
            if token is not None and token not in special_tokens:
                raise ValueError(f"{role}_token {token!r} is not one of the special tokens {list(special_tokens)}")
        self.special_tokens = dict(special_tokens)
        self.special_ids = frozenset(special_tokens.values())
        self.pad_token, self.unk_token, self.mask_token = pad_token, unk_token, mask_token

    # ------------------------------------------------------------------ ids of the roles
    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.special_tokens[self.pad_token]

    @property
    def unk_token_id(self) -> int | None:
        return None if self.unk_token is None else self.special_tokens[self.unk_token]

    @property
    def mask_token_id(self) -> int | None:
        return None if self.mask_token is None else self.special_tokens[self.mask_token]

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included: every id lies in ``[0, vocab_size)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of the token ids ``ids``; special tokens are dropped when asked."""
        raise NotImplementedError

    def check_ids(self, ids: Iterable[int]) -> list[int]:
        """``ids`` as a list, refused with ValueError if one is not an integer in ``[0, vocab_size)``
        (a negative id would otherwise index from the end: -1 would decode as the last token)."""
        ids = list(ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer))
               or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"{type(self).__name__}.decode: ids must be integers in [0, {self.vocab_size}), got "
                             f"{bad[:5]!r}{' …' if len(bad) > 5 else ''}")
        return ids

    def check_batch(self, texts, max_length: int | None) -> list[str]:
        """``texts`` as a list of strings; a bare string is refused (it would be taken as a list of characters)."""
        if isinstance(texts, str) or not hasattr(texts, "__iter__"):
            raise TypeError(f"{type(self).__name__}.encode_batch: texts must be a list of strings, got "
                            f"{type(texts).__name__} (wrap a single text in a list: [text])")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{type(self).__name__}.encode_batch: texts must be strings, got "
                            f"{sorted({type(t).__name__ for t in texts if not isinstance(t, str)})}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))
                                       or max_length < 1):
            raise ValueError(f"{type(self).__name__}.encode_batch: max_length must be a positive integer or None, "
                             f"got {max_length!r}")
        return texts

    def encode_batch(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        padding: bool | str = True,
        truncation: bool = True,
    ) -> dict[str, Any]:
        """Encode several texts at once.

        Each text is encoded; with ``truncation`` and a ``max_length`` it is
        cut to its first ``max_length`` ids.  Then ``padding`` decides the
        shape: ``True`` pads every row to the longest row of the batch,
        ``"max_length"`` pads every row to ``max_length``, ``False`` pads
        nothing and returns lists of lists (rows may differ in length).

        Returns:
            ``{"input_ids", "attention_mask"}``; padded results are int64
            arrays of shape ``(B, T)`` with ``attention_mask`` 1 on real
            tokens and 0 on padding.
        """
        rows = [self.encode(t) for t in self.check_batch(texts, max_length)]
        if truncation and max_length is not None:
            rows = [r[:max_length] for r in rows]
        return self._pad_batch({"input_ids": rows}, max_length, padding)

    def pad(self, encoded: dict[str, list[list[int]]], padding: bool | str = True,
            max_length: int | None = None) -> dict[str, Any]:
        """Pad the lists of ``encode_batch(..., padding=False)`` (or some of their rows) into ``(B, T)`` arrays,
        as ``encode_batch`` with ``padding`` would have: a batch can be tokenised once and padded later."""
        columns = {name: rows for name, rows in encoded.items() if name != "attention_mask"}
        return self._pad_batch(columns, max_length, padding)

    def _pad_batch(self, columns: dict[str, list[list[int]]], max_length: int | None,
                   padding: bool | str) -> dict[str, Any]:
        """Pad the ragged ``columns`` (``input_ids`` first) into ``(B, T)`` arrays.

        ``input_ids`` are padded with :attr:`pad_token_id` and every other
        column with 0; an ``attention_mask`` column is added.
        """
        if padding not in PADDING_CHOICES:
            raise ValueError(f"padding must be one of {PADDING_CHOICES}, got {padding!r}")
        rows = columns["input_ids"]
        lengths = [len(r) for r in rows]
        if padding is False:
            out = {name: [list(r) for r in col] for name, col in columns.items()}
            out["attention_mask"] = [[1] * n for n in lengths]
            return out
        if padding == "max_length":
            if max_length is None:
                raise ValueError('padding="max_length" needs a max_length')
            if max(lengths, default=0) > max_length:
                raise ValueError(f"a sequence has {max(lengths)} tokens, more than max_length={max_length}; "
                                 "pass truncation=True")
            width = max_length
        else:
            width = max(lengths, default=0)
        if self.pad_token_id is None:
            raise ValueError(f"{type(self).__name__} has no pad token, so it cannot pad a batch")
        out = {}
        for name, col in columns.items():
            fill = self.pad_token_id if name == "input_ids" else 0
            array = np.full((len(col), width), fill, dtype=np.int64)
            for i, row in enumerate(col):
                array[i, : len(row)] = row
            out[name] = array
        lengths = np.array(lengths, dtype=np.int64)
        out["attention_mask"] = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        return out

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the tokeniser, as JSON-ready values."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tokenizer":
        """Rebuild a tokeniser from :meth:`to_dict`'s output."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokeniser to ``path`` as one UTF-8 JSON file."""
        data = {"type": type(self).__name__, **self.to_dict()}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a file written by :meth:`save`.

        ``Tokenizer.load`` returns whichever class the file names;
        ``SomeTokenizer.load`` also checks that the file holds that class.
        """
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                raise ValueError(f"{path} is not a JSON file ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} does not hold a minitx tokeniser (a JSON {type(data).__name__}, not an object)")
        kind = data.pop("type", None)
        if not isinstance(kind, str) or kind not in _REGISTRY:
            raise ValueError(f"{path} does not hold a minitx tokeniser (type={kind!r})")
        target = _REGISTRY[kind]
        if not issubclass(target, cls):
            raise ValueError(f"{path} holds a {kind}, not a {cls.__name__}")
        try:
            return target.from_dict(data)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"{path}: a malformed {kind} file ({type(exc).__name__}: {exc})") from None
