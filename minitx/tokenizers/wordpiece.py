"""WordPiece tokenisation as in BERT (uncased by default).

Encoding runs four steps.

1. **Normalise** the text:
   - *clean*: drop U+FFFD and every control, format, private-use or
     surrogate character (Unicode categories ``Cc Cf Co Cs``: NUL, vertical
     tab, U+0085, zero-width space ...), except tab, newline and carriage
     return; turn the remaining whitespace characters (Unicode
     ``White_Space``) into plain spaces;
   - put spaces around CJK ideographs, so each becomes a word of its own;
   - when lower-casing: decompose (NFD) and drop combining accents
     (category ``Mn``), so "é" becomes "e"; then lower-case each character.
2. **Pre-tokenise**: split on spaces, and make every punctuation character
   its own word.  Punctuation means every ASCII symbol (code points 33-47,
   58-64, 91-96 and 123-126, so ``$``, ``+`` and ``^`` count although Unicode
   calls them symbols, not punctuation) plus every Unicode ``P*`` category.
3. **WordPiece**: cut each word greedily into the longest vocabulary entry
   that starts where the previous one ended; pieces after the first carry
   the ``##`` prefix ("unaffable" -> "una", "##ffa", "##ble").  A word that
   cannot be cut this way, or is longer than 100 characters, becomes a
   single ``[UNK]``.
4. Add ``[CLS]`` at the start and ``[SEP]`` after each segment.

Special tokens written literally in the input (``"[MASK]"``) are recognised
before normalisation.  The rules follow Hugging Face ``tokenizers``'
``BertNormalizer``/``BertPreTokenizer``, which match Google's original
BERT code except in three corners: whitespace is the Unicode ``White_Space``
property (so U+2028/U+2029 separate words), unassigned code points (``Cn``)
are kept rather than dropped (and usually become ``[UNK]``), and the CJK
table's Extension E block starts at U+2B920, as in ``tokenizers``, rather
than U+2B820.

Which character is a control, punctuation or an accent, and what it becomes in
lower case, depends on the Unicode version: Python's ``unicodedata`` has its own
(Unicode 14 on Python 3.11), ``tokenizers`` the tables compiled into it. So the
character classes are not computed here but read from ``bert_unicode.json``,
written once from ``tokenizers`` by ``tests/make_bert_unicode.py``: the ids are
the same on every Python version.  Each character is normalised on its own
(the NFD + accent stripping + lower-casing of one character, looked up), which
equals normalising the whole text except where NFD would reorder two adjacent
combining marks that are not both stripped (no such pair in ordinary text).
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections import Counter
from typing import Any, Iterable, Sequence

from ._merges import learn_merges
from .base import Tokenizer, check_texts

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"
_HANGUL = (0xAC00, 0xD7A3)  # syllables, decomposed into jamo by arithmetic (Unicode's L V [T] rule)


class _Ranges:
    """A sorted list of [lo, hi] code point ranges (optionally with a value each); ``find(cp)`` is a bisection."""

    def __init__(self, rows: list[list[int]]) -> None:
        self.starts = [row[0] for row in rows]
        self.rows = rows

    def find(self, cp: int):
        i = bisect.bisect_right(self.starts, cp) - 1
        return self.rows[i] if i >= 0 and cp <= self.rows[i][1] else None

    def __contains__(self, cp: int) -> bool:
        return self.find(cp) is not None


with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bert_unicode.json"), encoding="utf-8") as _f:
    _TABLES = json.load(_f)
_DROP, _SPACE, _CJK, _PUNCTUATION, _STRIP, _SHIFT = (_Ranges(_TABLES[name]) for name in
                                                    ("drop", "space", "cjk", "punctuation", "strip", "shift"))
_UNCASED_MAP = {int(cp): text for cp, text in _TABLES["map"].items()}


def is_punctuation(c: str) -> bool:
    """BERT's punctuation test: ASCII symbols (``$``, ``+``, ``^`` too) or a Unicode ``P*`` category."""
    return ord(c) in _PUNCTUATION


def is_cjk(c: str) -> bool:
    """Whether ``c`` is a CJK ideograph that BERT splits off as its own word."""
    return ord(c) in _CJK


def _clean_char(c: str) -> str:
    """Normalisation of one character before accent stripping (steps "clean" and CJK)."""
    cp = ord(c)
    if cp in _DROP:
        return ""  # controls, format characters, private use, U+FFFD (not tab, newline, carriage return)
    if cp in _SPACE:
        return " "
    return f" {c} " if cp in _CJK else c


def _uncase_char(c: str) -> str:
    """One character decomposed (NFD), without its accents (``Mn``), lower-cased."""
    cp = ord(c)
    if cp in _STRIP:
        return ""
    if _HANGUL[0] <= cp <= _HANGUL[1]:
        index = cp - _HANGUL[0]
        tail = index % 28
        return chr(0x1100 + index // 588) + chr(0x1161 + index % 588 // 28) + (chr(0x11A7 + tail) if tail else "")
    shift = _SHIFT.find(cp)
    if shift is not None:
        return chr(cp + shift[2])
    return _UNCASED_MAP.get(cp, c)


class _MemoTable(dict):
    """A ``str.translate`` table that computes each character's entry once, on first sight."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, cp: int) -> str:
        value = self[cp] = self.fn(chr(cp))
        return value


_CLEAN = _MemoTable(_clean_char)
_UNCASE = _MemoTable(_uncase_char)  # per character, as tokenizers does: a final "Σ" becomes "σ"
_PUNCT = _MemoTable(lambda c: f" {c} " if is_punctuation(c) else c)


def normalize(text: str, lowercase: bool = True) -> str:
    """Step 1: clean, isolate CJK characters and (when ``lowercase``) strip accents and lower-case."""
    text = text.translate(_CLEAN)
    return text.translate(_UNCASE) if lowercase else text


def pre_tokenize(normalized: str) -> list[str]:
    """Step 2: split normalised text on spaces and around every punctuation character."""
    return normalized.translate(_PUNCT).split()


class WordPieceTokenizer(Tokenizer):
    """BERT's tokeniser.

    Args:
        vocab: the tokens in id order; word-internal pieces start with ``##``.
            It must contain ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
        lowercase: lower-case and strip accents (BERT *uncased*).
        max_input_chars_per_word: longer words become ``[UNK]``.
    """

    def __init__(self, vocab: Sequence[str], lowercase: bool = True, max_input_chars_per_word: int = 100) -> None:
        self.vocab = list(vocab)
        self.token_to_id = {t: i for i, t in enumerate(self.vocab)}
        if len(self.token_to_id) != len(self.vocab):
            raise ValueError("the vocabulary has repeated tokens")
        missing = [s for s in SPECIALS if s not in self.token_to_id]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")
        super().__init__({s: self.token_to_id[s] for s in SPECIALS}, pad_token="[PAD]", unk_token="[UNK]",
                         mask_token="[MASK]")
        self.cls_token_id = self.special_tokens["[CLS]"]
        self.sep_token_id = self.special_tokens["[SEP]"]
        self.lowercase = lowercase
        self.max_input_chars_per_word = max_input_chars_per_word
        self._special_split = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vocab(cls, vocab_txt: str, lowercase: bool = True) -> "WordPieceTokenizer":
        """Load a BERT ``vocab.txt``: one token per line, the line number is the id."""
        with open(vocab_txt, encoding="utf-8") as f:
            return cls([line.rstrip("\n") for line in f], lowercase=lowercase)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = True,
              min_frequency: int = 2) -> "WordPieceTokenizer":
        """Learn a vocabulary from ``texts`` (the method of ``tokenizers``' WordPiece trainer).

        Words (after normalisation and pre-tokenisation) start as single
        characters, written ``c`` at the start of a word and ``##c`` inside
        it; every one of these is in the vocabulary, so no word made of seen
        characters becomes ``[UNK]``.  Then the most frequent adjacent pair of
        pieces is merged repeatedly ("un" + "##able" -> "unable") until the
        vocabulary (special tokens included) holds ``vocab_size`` tokens, as
        in byte-pair encoding (see :mod:`minitx.tokenizers._merges`), or
        until no pair occurs ``min_frequency`` times.
        Encoding later uses WordPiece's greedy longest match over this vocabulary.
        """
        check_texts("WordPieceTokenizer.train", texts)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(pre_tokenize(normalize(text, lowercase)))
        alphabet = sorted({c for word in counts for c in word})
        symbols = list(SPECIALS) + alphabet + [CONTINUATION + c for c in alphabet]
        index = {s: i for i, s in enumerate(symbols)}
        words = {tuple(index[c if k == 0 else CONTINUATION + c] for k, c in enumerate(word)): n
                 for word, n in counts.items()}
        vocab = learn_merges(words, symbols, lambda a, b: a + b[len(CONTINUATION):], vocab_size, min_frequency)
        return cls(vocab, lowercase=lowercase)

    # ------------------------------------------------------------------ tokenising
    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` (no ``[CLS]``/``[SEP]``)."""
        return [self.vocab[i] for i in self._content_ids(text)]

    def _content_ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for k, chunk in enumerate(self._special_split.split(text)):
            if k % 2:  # odd chunks are the captured special tokens
                ids.append(self.special_tokens[chunk])
                continue
            for word in pre_tokenize(normalize(chunk, self.lowercase)):
                cached = self._cache.get(word)
                if cached is None:
                    cached = self._cache[word] = self._wordpiece(word)
                ids.extend(cached)
        return ids

    def _wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first cut of one word into vocabulary ids."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token_id]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
                i = self.token_to_id.get(piece)
                if i is not None:
                    pieces.append(i)
                    start = end
                    break
            else:
                return [self.unk_token_id]
        return pieces

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``[CLS] text [SEP]`` as ids (just the text's ids without ``add_special_tokens``)."""
        ids = self._content_ids(text)
        return [self.cls_token_id, *ids, self.sep_token_id] if add_special_tokens else ids

    def encode_pair(self, text_a: str, text_b: str) -> tuple[list[int], list[int]]:
        """``[CLS] a [SEP] b [SEP]`` as ``(input_ids, token_type_ids)``: type 0 up to the first ``[SEP]``, 1 after."""
        return self._join(self._content_ids(text_a), self._content_ids(text_b))

    def _join(self, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
        ids = [self.cls_token_id, *a, self.sep_token_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_token_id]
            types += [1] * (len(b) + 1)
        return ids, types

    def encode_batch(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        padding: bool | str = True,
        truncation: bool = True,
        texts_pair: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Encode single texts or, with ``texts_pair``, pairs ``[CLS] a [SEP] b [SEP]``.

        Truncation to ``max_length`` keeps the special tokens and removes
        content tokens from the end of whichever segment is currently longer
        ("longest first"), so both segments keep a fair share.
        Padding is as in :meth:`Tokenizer.encode_batch`; the result also has
        ``token_type_ids`` (0 for the first segment, 1 for the second, 0 on padding).
        """
        texts = self.check_batch(texts, max_length)
        if texts_pair is not None:
            texts_pair = self.check_batch(texts_pair, max_length)
        if texts_pair is not None and len(texts_pair) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(texts_pair)} second segments")
        n_special = 2 if texts_pair is None else 3
        if truncation and max_length is not None and max_length < n_special:
            raise ValueError(f"max_length={max_length} leaves no room for the {n_special} special tokens")
        all_ids, all_types = [], []
        for k, text in enumerate(texts):
            a = self._content_ids(text)
            b = None if texts_pair is None else self._content_ids(texts_pair[k])
            if truncation and max_length is not None:
                a, b = truncate_longest_first(a, b, max_length - n_special)
            ids, types = self._join(a, b)
            all_ids.append(ids)
            all_types.append(types)
        return self._pad_batch({"input_ids": all_ids, "token_type_ids": all_types}, max_length, padding)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Join the tokens with spaces, gluing ``##`` pieces to the piece before them."""
        out: list[str] = []
        for i in self.check_ids(ids):
            if skip_special_tokens and i in self.special_ids:
                continue
            token = self.vocab[i]
            if token.startswith(CONTINUATION) and out:
                out[-1] += token[len(CONTINUATION):]
            else:
                out.append(token)
        return " ".join(out)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "lowercase": self.lowercase,
                "max_input_chars_per_word": self.max_input_chars_per_word}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WordPieceTokenizer":
        return cls(data["vocab"], data["lowercase"], data["max_input_chars_per_word"])


def truncate_longest_first(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Cut the segments ``a`` and ``b`` to at most ``budget`` tokens in all, taking from their ends.

    A single segment is simply cut.  For a pair, the shorter segment stays
    whole when the longer one can be cut to the remaining budget and still
    be at least as long; otherwise each gets half the budget and the longer
    one (``b`` when they are equally long) gets the odd token.  This is the
    "longest first" rule of ``tokenizers``, written in closed form.
    """
    if b is None:
        return a[:budget], None
    if len(a) + len(b) <= budget:
        return a, b
    short, long_ = sorted((len(a), len(b)))
    if short <= budget - short:
        short_keep, long_keep = short, budget - short
    else:
        short_keep, long_keep = budget // 2, budget - budget // 2
    if len(a) > len(b):
        return a[:long_keep], b[:short_keep]
    return a[:short_keep], b[:long_keep]
