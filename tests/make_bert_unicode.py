"""Regenerate minitx/tokenizers/bert_unicode.json from the oracle:  python tests/make_bert_unicode.py

WordPiece's normaliser and pre-tokeniser classify characters (control, whitespace, CJK, punctuation, accents,
lower case). Python's ``unicodedata`` follows the Unicode version of the running Python, Hugging Face
``tokenizers`` the tables compiled into its Rust code, and the two disagree on hundreds of code points. This
script asks the oracle about every code point, one character at a time, and writes what it answers:

    drop         [lo, hi] ranges the cleaning step deletes (controls, format, private use…)
    space        [lo, hi] ranges it turns into " "
    cjk          [lo, hi] ranges that become words of their own (" c ")
    punctuation  [lo, hi] ranges the pre-tokeniser splits off
    strip        [lo, hi] ranges the uncased normaliser deletes (accents: combining marks)
    shift        [lo, hi, delta]: the uncased normaliser maps c to chr(ord(c) + delta) (lower case, accents)
    map          {code point: replacement} for the other characters it changes (several characters out)

Hangul syllables are left out of ``map``: their decomposition into jamo is arithmetic (checked here against
the oracle) and :mod:`minitx.tokenizers.wordpiece` computes it.
"""

from __future__ import annotations

import json
import os

from tokenizers import __version__ as tokenizers_version
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "minitx", "tokenizers", "bert_unicode.json")
HANGUL = (0xAC00, 0xD7A3)


def hangul_jamo(cp: int) -> str:
    """The canonical decomposition of a Hangul syllable (Unicode's arithmetic: L V [T])."""
    index = cp - HANGUL[0]
    lead, vowel, tail = 0x1100 + index // 588, 0x1161 + (index % 588) // 28, index % 28
    return chr(lead) + chr(vowel) + (chr(0x11A7 + tail) if tail else "")


def ranges(cps: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for cp in cps:
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def main() -> None:
    clean = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    uncased = BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=True)
    pre = BertPreTokenizer()
    kinds: dict[str, list[int]] = {"drop": [], "space": [], "cjk": [], "punctuation": [], "strip": []}
    shift: list[list[int]] = []
    mapping: dict[str, str] = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:  # surrogates: not characters of a valid str in Rust
            continue
        c = chr(cp)
        if len(pre.pre_tokenize_str(f"a{c}b")) == 3:
            kinds["punctuation"].append(cp)
        cleaned = clean.normalize_str(c)
        if cleaned != c:
            kind = {"": "drop", " ": "space", f" {c} ": "cjk"}[cleaned]
            kinds[kind].append(cp)
            if kind != "cjk":  # a CJK character is still accent-stripped and lower-cased (U+F900 -> U+8C48)
                continue
        lowered = uncased.normalize_str(c)
        if HANGUL[0] <= cp <= HANGUL[1]:
            assert lowered == hangul_jamo(cp), hex(cp)
        elif lowered == "":
            kinds["strip"].append(cp)
        elif len(lowered) == 1 and lowered != c:
            delta = ord(lowered) - cp
            if shift and shift[-1][1] == cp - 1 and shift[-1][2] == delta:
                shift[-1][1] = cp
            else:
                shift.append([cp, cp, delta])
        elif lowered != c:
            mapping[str(cp)] = lowered
    table = {"source": f"tokenizers {tokenizers_version} (BertNormalizer, BertPreTokenizer)",
             **{name: ranges(cps) for name, cps in kinds.items()}, "shift": shift, "map": mapping}
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(table, f, separators=(",", ":"), ensure_ascii=True)
        f.write("\n")
    print(f"wrote {OUT}: " + ", ".join(f"{k} {len(v)}" for k, v in table.items() if k != "source"))


if __name__ == "__main__":
    main()
