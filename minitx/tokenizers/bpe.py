"""Byte-level byte-pair encoding (BPE), as used by GPT-2.

Text is first turned into UTF-8 bytes, so the 256 byte values are the
starting alphabet and *any* string can be encoded and decoded exactly: no
character is ever unknown.

Encoding happens in two stages.

1. **Pre-tokenisation** cuts the text into pieces with GPT-2's pattern::

       's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

   i.e. English contractions, a run of letters, a run of digits or a run of
   other symbols (each optionally with one leading space), and runs of
   whitespace, where a whitespace run followed by a word leaves its last
   space to that word.  Merges never cross a piece boundary.  Python's
   ``re`` has no ``\\p{L}`` (letters) or ``\\p{N}`` (numbers) classes, so
   the pattern is built from explicit character ranges computed once from
   :mod:`unicodedata`; ``\\s`` is the Unicode ``White_Space`` property.

2. **Merging** starts each piece as single bytes and repeatedly joins the
   adjacent pair whose concatenation has the lowest *rank* (rank = token
   id; earlier merges have lower ranks), the leftmost pair on ties, until no
   adjacent pair is a token.  A heap of candidate pairs over a linked list of
   parts does this in ``O(n log n)`` per piece, and whole pieces are cached.

Token ids are the ranks themselves, so GPT-2's own ranks (a ``.tiktoken``
file) reproduce GPT-2's token ids exactly.

Tokenisers published as a vocabulary plus a *list of merges* (Hugging Face's
``tokenizer.json``, a GGUF file's ``tokenizer.ggml.merges``) rank pairs
instead: the pair ``(left, right)`` has the rank of its line in the list, and
only listed pairs are ever joined.  :meth:`ByteLevelBPE.from_merges` builds
such a tokeniser; its ids are the vocabulary's and special tokens may have any
ids.  It may also use another pre-tokeniser: SmolLM's ('smollm', the same as
StarCoder's) first cuts every number character out as a piece of its own
(``"2024"`` -> ``"2" "0" "2" "4"``, and ``" 42"`` -> ``" " "4" "2"``: the
space is not joined to a digit), then applies GPT-2's pattern to the text
between them.
"""

from __future__ import annotations

import base64
import functools
import heapq
import re
import unicodedata
from collections import Counter
from typing import Any, Iterable

from ._merges import learn_merges
from .base import Tokenizer, check_special_tokens, check_texts

ENDOFTEXT = "<|endoftext|>"

# Code points with the Unicode White_Space property: what \s means in GPT-2's pattern.
_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
               + "\u2028\u2029\u202f\u205f\u3000")


def _category_classes(major: str) -> dict[str, str]:
    """Regex character-class bodies for Unicode major categories.

    For each letter in ``major`` (e.g. ``"LN"``) returns the code point
    ranges whose general category starts with it, written as
    ``\\Uxxxxxxxx-\\Uyyyyyyyy`` pairs; ``"L"`` is what ``\\p{L}`` means.
    """
    ranges: dict[str, list[str]] = {m: [] for m in major}
    run_kind, run_start = None, 0
    for cp in range(0x110001):
        kind = unicodedata.category(chr(cp))[0] if cp <= 0x10FFFF else None
        if kind != run_kind:
            if run_kind in ranges:
                ranges[run_kind].append(f"\\U{run_start:08x}-\\U{cp - 1:08x}")
            run_kind, run_start = kind, cp
    return {m: "".join(r) for m, r in ranges.items()}


@functools.cache
def _number_class() -> str:
    return _category_classes("N")["N"]


@functools.cache
def gpt2_pretokenizer() -> re.Pattern:
    """GPT-2's pre-tokenisation pattern, compiled for Python's ``re``.

    Built on first use (a fraction of a second: one pass over all code points).
    """
    classes = _category_classes("LN")
    letters, numbers = classes["L"], classes["N"]
    space = "".join(f"\\U{ord(c):08x}" for c in _WHITESPACE)
    return re.compile(
        rf"'(?:[sdmt]|ll|ve|re)| ?[{letters}]+| ?[{numbers}]+| ?[^{space}{letters}{numbers}]+"
        rf"|[{space}]+(?![^{space}])|[{space}]+"
    )


def gpt2_pieces(text: str) -> list[str]:
    """GPT-2's pre-tokenisation of ``text``."""
    return gpt2_pretokenizer().findall(text)


def smollm_pieces(text: str) -> list[str]:
    """SmolLM's pre-tokenisation: every ``\\p{N}`` character alone, GPT-2's pattern on the text between."""
    pieces: list[str] = []
    for k, chunk in enumerate(_number_splitter().split(text)):
        if k % 2:                      # odd chunks are the captured number characters
            pieces.append(chunk)
        elif chunk:
            pieces.extend(gpt2_pretokenizer().findall(chunk))
    return pieces


@functools.cache
def _number_splitter() -> re.Pattern:
    return re.compile(f"([{_number_class()}])")


PRETOKENIZERS = {"gpt2": gpt2_pieces, "smollm": smollm_pieces}


def _printable_bytes() -> list[str]:
    """A visible character for each byte value, for a readable JSON vocabulary.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (control
    characters, space, soft hyphen ...) are given the characters from U+0100
    on, in byte order.  So the token " the" is stored as "Ġthe".
    """
    table, extra = [], 0
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF:
            table.append(chr(b))
        else:
            table.append(chr(0x100 + extra))
            extra += 1
    return table


_BYTE_TO_CHAR = _printable_bytes()
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_CHAR)}


def bytes_to_printable(token: bytes) -> str:
    """Readable form of a token's bytes (see :func:`_printable_bytes`)."""
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def printable_to_bytes(text: str) -> bytes:
    """Inverse of :func:`bytes_to_printable`."""
    return bytes(_CHAR_TO_BYTE[c] for c in text)


class ByteLevelBPE(Tokenizer):
    """Byte-level BPE tokeniser (GPT-2's pre-tokenisation unless told otherwise).

    Args:
        ranks: maps every token's bytes to its id.  Without ``merges`` the ids
            are also the merge ranks: they must be ``0 .. len-1``, all 256
            single bytes must be tokens, and special tokens come after.
        special_tokens: special token texts and their ids.  Default:
            ``<|endoftext|>`` with the next id.
        pad_token: the special token used to pad batches (the attention mask
            tells padding apart, so GPT-2's ``<|endoftext|>`` serves).
        merges: the merge list, highest priority first, as ``(left, right)``
            byte pairs whose concatenation is a token (see
            :meth:`from_merges`).  Then ``ranks`` and ``special_tokens``
            together must give the ids ``0 .. V-1`` once each; bytes that are
            not tokens are dropped before merging, as Hugging Face's BPE does
            when it has no unknown token.
        pretokenizer: ``"gpt2"`` or ``"smollm"`` (see :data:`PRETOKENIZERS`).
    """

    _CACHE_LIMIT = 100_000

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None,
                 pad_token: str | None = ENDOFTEXT, merges: list[tuple[bytes, bytes]] | None = None,
                 pretokenizer: str = "gpt2") -> None:
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: len(ranks)}
        if pretokenizer not in PRETOKENIZERS:
            raise ValueError(f"pretokenizer must be one of {sorted(PRETOKENIZERS)}, got {pretokenizer!r}")
        if merges is None:
            if sorted(ranks.values()) != list(range(len(ranks))):
                raise ValueError("BPE ranks must be the ids 0 .. len(ranks)-1, each once")
            if any(bytes([b]) not in ranks for b in range(256)):
                raise ValueError("every single byte must be a token")
            if sorted(special_tokens.values()) != list(range(len(ranks), len(ranks) + len(special_tokens))):
                raise ValueError("special token ids must follow the ranks: len(ranks), len(ranks)+1, ...")
        else:
            if sorted([*ranks.values(), *special_tokens.values()]) != list(range(len(ranks) + len(special_tokens))):
                raise ValueError("token and special token ids together must be 0 .. V-1, each once")
            unknown = [(a, b) for a, b in merges if a not in ranks or b not in ranks or a + b not in ranks]
            if unknown:
                raise ValueError(f"{len(unknown)} merges join or make bytes that are not tokens, "
                                 f"first {unknown[0]}")
        super().__init__(special_tokens, pad_token=pad_token if pad_token in special_tokens else None)
        self.ranks = dict(ranks)
        self.merges = None if merges is None else [(a, b) for a, b in merges]
        self._pair_ranks = None if merges is None else {pair: r for r, pair in enumerate(self.merges)}
        self.pretokenizer = pretokenizer
        self._pieces = PRETOKENIZERS[pretokenizer]
        self._id_to_bytes = [b""] * (len(ranks) + len(special_tokens))
        for token, rank in ranks.items():
            self._id_to_bytes[rank] = token
        for text, i in special_tokens.items():
            self._id_to_bytes[i] = text.encode("utf-8")
        self._special_split = (
            re.compile("(" + "|".join(map(re.escape, sorted(special_tokens, key=len, reverse=True))) + ")")
            if special_tokens else None
        )
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_bytes)

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (ENDOFTEXT,),
              min_frequency: int = 2) -> "ByteLevelBPE":
        """Learn merges from ``texts`` until there are ``vocab_size`` ids.

        Training stops early, with a smaller vocabulary, once no adjacent pair
        occurs ``min_frequency`` times.

        Special tokens inside the texts are cut out first and never merged
        with anything.  Merges are learned within pre-tokenised pieces (see
        :mod:`minitx.tokenizers._merges`); the 256 byte tokens get ids
        0..255 in byte order, merged tokens the following ids, special
        tokens the last ids.
        """
        check_texts("ByteLevelBPE.train", texts)
        special_tokens = list(special_tokens)
        check_special_tokens(special_tokens)
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size must be at least 256 + {len(special_tokens)} special tokens")
        pattern = gpt2_pretokenizer()
        splitter = re.compile("|".join(map(re.escape, special_tokens))) if special_tokens else None
        counts: Counter[str] = Counter()
        for text in texts:
            for chunk in (splitter.split(text) if splitter else [text]):
                counts.update(pattern.findall(chunk))
        words = {tuple(piece.encode("utf-8")): n for piece, n in counts.items()}
        symbols = learn_merges(words, [bytes([b]) for b in range(256)], lambda a, b: a + b,
                               vocab_size - len(special_tokens), min_frequency)
        ranks = {token: i for i, token in enumerate(symbols)}
        return cls(ranks, {s: len(ranks) + k for k, s in enumerate(special_tokens)},
                   pad_token=special_tokens[0] if special_tokens else None)

    @classmethod
    def from_tiktoken_file(cls, path: str, special_tokens: dict[str, int] | None = None) -> "ByteLevelBPE":
        """Load ranks from a ``.tiktoken`` file: one ``<base64 token bytes> <rank>`` per line.

        With GPT-2's file (see :func:`minitx.data.fetch.gpt2_ranks_path`) the
        ids equal GPT-2's, and ``<|endoftext|>`` is 50256.
        """
        ranks = {}
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank)
        return cls(ranks, special_tokens)

    @classmethod
    def from_merges(cls, tokens: list[str], merges: list[str], special_ids: Iterable[int],
                    pretokenizer: str = "gpt2", pad_token: str | None = None) -> "ByteLevelBPE":
        """A tokeniser from a vocabulary and a merge list in Hugging Face's printable form.

        Args:
            tokens: the text of token ``i`` at index ``i``, bytes written as by
                :func:`bytes_to_printable` (``"Ġthe"``), special tokens as they are.
            merges: ``"left right"`` lines, highest priority first (``"Ġ t"``).
            special_ids: the ids of the special tokens.
        """
        special_ids = set(special_ids)
        special = {tokens[i]: i for i in sorted(special_ids)}
        ranks = {printable_to_bytes(t): i for i, t in enumerate(tokens) if i not in special_ids}
        pairs = []
        for line in merges:
            left, sep, right = line.partition(" ")
            if not sep or not left or not right:
                raise ValueError(f"a merge must be 'left right', got {line!r}")
            pairs.append((printable_to_bytes(left), printable_to_bytes(right)))
        return cls(ranks, special, pad_token=pad_token, merges=pairs, pretokenizer=pretokenizer)

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Token ids of ``text``.

        With ``allow_special`` the exact text of a special token (such as
        ``<|endoftext|>``) becomes that token's id; without it, it is
        encoded like any other text.
        """
        if not allow_special or self._special_split is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for k, chunk in enumerate(self._special_split.split(text)):
            if k % 2:  # odd chunks are the captured special tokens
                ids.append(self.special_tokens[chunk])
            else:
                ids.extend(self._encode_ordinary(chunk))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for piece in self._pieces(text):
            cached = cache.get(piece)
            if cached is None:
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cached = cache[piece] = self._merge(piece.encode("utf-8"))
            ids.extend(cached)
        return ids

    def _merge(self, piece: bytes) -> list[int]:
        """BPE-merge one pre-tokenised piece; returns its token ids.

        The rank of two neighbouring parts is that of their concatenation
        (GPT-2's ranks) or of the pair in the merge list (``merges``).
        """
        ranks = self.ranks
        if self._pair_ranks is None:
            if piece in ranks:
                return [ranks[piece]]
            parts = [piece[i:i + 1] for i in range(len(piece))]

            def pair_rank(left: bytes, right: bytes) -> int | None:
                return ranks.get(left + right)
        else:
            parts = [piece[i:i + 1] for i in range(len(piece)) if piece[i:i + 1] in ranks]
            pair_ranks = self._pair_ranks

            def pair_rank(left: bytes, right: bytes) -> int | None:
                return pair_ranks.get((left, right))
        if not parts:
            return []
        nxt = list(range(1, len(parts))) + [-1]  # linked list over live parts
        prv = list(range(-1, len(parts) - 1))
        heap = []
        for i in range(len(parts) - 1):
            rank = pair_rank(parts[i], parts[i + 1])
            if rank is not None:
                heap.append((rank, i))
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i] if parts[i] is not None else -1
            # The entry is stale unless i is alive and the pair (i, next) still has this rank
            # (a rank names one pair, so equal ranks mean the same pair).
            if j < 0 or pair_rank(parts[i], parts[j]) != rank:
                continue
            parts[i] += parts[j]
            parts[j] = None
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            for left in (prv[i], i):
                right = nxt[left] if left >= 0 else -1
                if right >= 0:
                    new_rank = pair_rank(parts[left], parts[right])
                    if new_rank is not None:
                        heapq.heappush(heap, (new_rank, left))
        return [ranks[p] for p in parts if p is not None]

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Join the tokens' bytes and read them as UTF-8.

        A byte sequence that is not valid UTF-8 (ids cut in the middle of a
        character) shows up as U+FFFD instead of raising.
        """
        table, ids = self._id_to_bytes, self.check_ids(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    def id_to_token(self, i: int) -> str:
        """Readable text of one token: special tokens as they are, others via :func:`bytes_to_printable`."""
        return self._id_to_bytes[i].decode() if i in self.special_ids else bytes_to_printable(self._id_to_bytes[i])

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        if self.merges is None:
            return {
                "tokens": [bytes_to_printable(self._id_to_bytes[i]) for i in range(len(self.ranks))],
                "special_tokens": self.special_tokens,
                "pad_token": self.pad_token,
            }
        return {
            "vocab": {bytes_to_printable(token): i for token, i in self.ranks.items()},
            "merges": [f"{bytes_to_printable(a)} {bytes_to_printable(b)}" for a, b in self.merges],
            "special_tokens": self.special_tokens,
            "pad_token": self.pad_token,
            "pretokenizer": self.pretokenizer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ByteLevelBPE":
        if "merges" not in data:
            ranks = {printable_to_bytes(t): i for i, t in enumerate(data["tokens"])}
            return cls(ranks, data["special_tokens"], pad_token=data["pad_token"])
        ranks = {printable_to_bytes(t): i for t, i in data["vocab"].items()}
        merges = [tuple(printable_to_bytes(side) for side in line.split(" ")) for line in data["merges"]]
        return cls(ranks, data["special_tokens"], pad_token=data["pad_token"], merges=merges,
                   pretokenizer=data["pretokenizer"])
