"""Tokenisers on their own: round trips, training, save/load, batching."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.data.corpus import corpus_text, sentiment_sentences
from minitx.tokenizers import ByteLevelBPE, CharTokenizer, Tokenizer, WordPieceTokenizer
from minitx.tokenizers.bpe import bytes_to_printable, gpt2_pretokenizer, printable_to_bytes, smollm_pieces
from minitx.tokenizers.wordpiece import normalize, pre_tokenize, truncate_longest_first


TRAIN_DOCS = corpus_text(500, seed=0).split("\n\n") + ["<|endoftext|> naïve café 日本語 😀"]


@pytest.fixture(scope="module")
def bpe():
    return ByteLevelBPE.train(TRAIN_DOCS, vocab_size=1000)


# ---------------------------------------------------------------- CharTokenizer
@given(st.text())
@settings(max_examples=200, deadline=None)
def test_char_round_trip_any_text(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_char_unknown_and_specials():
    tok = CharTokenizer.from_text("hello", special_tokens=("[PAD]", "[UNK]", "[MASK]"))
    assert tok.special_tokens == {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2}
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 1, 2)
    assert tok.vocab_size == 3 + 4  # e h l o
    assert tok.encode("hex") == [tok.encode("h")[0], tok.encode("e")[0], 1]
    assert tok.decode([0, *tok.encode("he"), 0], skip_special_tokens=True) == "he"
    assert tok.decode([2]) == "[MASK]"
    strict = CharTokenizer.from_text("ab", special_tokens=())
    with pytest.raises(ValueError, match="no \\[UNK\\]"):
        strict.encode("abc")


# ---------------------------------------------------------------- GPT-2 pre-tokeniser
@pytest.mark.parametrize("text, pieces", [
    ("Hello world", ["Hello", " world"]),
    ("it's we're I'M", ["it", "'s", " we", "'re", " I", "'", "M"]),
    ("a   b", ["a", "  ", " b"]),
    ("a \n\n b\n", ["a", " \n\n", " b", "\n"]),
    ("x2024 is 42!!", ["x", "2024", " is", " 42", "!!"]),
    ("héllo  😀😀 ?", ["héllo", " ", " 😀😀", " ?"]),
    ("\u3000日本\u00a0語", ["\u3000", "日本", "\u00a0", "語"]),  # only U+0020 joins the next word
])
def test_gpt2_pretokenizer_splits(text, pieces):
    assert gpt2_pretokenizer().findall(text) == pieces


def test_printable_byte_mapping_is_a_bijection():
    everything = bytes(range(256))
    shown = bytes_to_printable(everything)
    assert len(set(shown)) == 256 and all(c.isprintable() and not c.isspace() for c in shown)
    assert printable_to_bytes(shown) == everything
    assert bytes_to_printable(b" the") == "\u0120the"


# ---------------------------------------------------------------- ByteLevelBPE
@given(st.text())
@settings(max_examples=300, deadline=None)
def test_bpe_round_trip_any_text(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_training(bpe):
    assert bpe.vocab_size == 1000
    assert bpe.special_tokens == {"<|endoftext|>": 999}
    assert bpe.pad_token_id == 999
    assert [bpe.ranks[bytes([b])] for b in range(256)] == list(range(256))
    tokens = [bpe.id_to_token(i) for i in bpe.encode(" Then, wash the vegetables.")]
    assert tokens == ["\u0120Then", ",", "\u0120wash", "\u0120the", "\u0120vegetables", "."]  # frequent words are whole
    n_tokens = sum(len(bpe.encode(d)) for d in TRAIN_DOCS)
    assert n_tokens < 0.3 * sum(len(d.encode()) for d in TRAIN_DOCS)
    assert bpe.encode("a<|endoftext|>b") == [*bpe.encode("a"), 999, *bpe.encode("b")]
    assert 999 not in bpe.encode("a<|endoftext|>b", allow_special=False)
    assert bpe.decode(bpe.encode("a<|endoftext|>b"), skip_special_tokens=True) == "ab"


def test_bpe_training_is_deterministic(bpe):
    again = ByteLevelBPE.train(TRAIN_DOCS, 1000)
    assert again.ranks == bpe.ranks


def test_bpe_merges_lowest_rank_first():
    # ranks: "ab" (256) before "bc" (257) before "abc" (258) before "cd" (259)
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"bc": 257, b"abc": 258, b"cd": 259})
    tok = ByteLevelBPE(ranks)
    assert tok.encode("abcd") == [258, ord("d")]  # "ab" (lowest), then "ab"+"c" = "abc" beats "cd"
    assert tok.encode("xbcd") == [ord("x"), 257, ord("d")]  # "bc" (257) beats "cd" (259)
    assert tok.encode("abc") == [258]


def test_bpe_save_load(bpe, tmp_path):
    path = tmp_path / "bpe.json"
    bpe.save(path)
    loaded = Tokenizer.load(path)
    assert isinstance(loaded, ByteLevelBPE)
    assert loaded.ranks == bpe.ranks and loaded.special_tokens == bpe.special_tokens
    text = "In 1931, she moved to Oslo. ✓ <|endoftext|>"
    assert loaded.encode(text) == bpe.encode(text)
    with pytest.raises(ValueError, match="not a WordPieceTokenizer"):
        WordPieceTokenizer.load(path)


def test_bpe_rejects_bad_ranks():
    with pytest.raises(ValueError, match="every single byte"):
        ByteLevelBPE({b"a": 0})
    with pytest.raises(ValueError, match="0 .. len"):
        ByteLevelBPE({bytes([b]): b + 1 for b in range(256)})


@pytest.mark.parametrize("text, pieces", [
    ("In 2024 we had 42 cats", ["In", " ", "2", "0", "2", "4", " we", " had", " ", "4", "2", " cats"]),
    ("x3.14, ½ and Ⅻ!", ["x", "3", ".", "1", "4", ",", " ", "½", " and", " ", "Ⅻ", "!"]),
    ("a  7", ["a", "  ", "7"]),           # GPT-2 would give "a", " ", " 7"
    ("it's 1's", ["it", "'s", " ", "1", "'s"]),
])
def test_smollm_pretokenizer_isolates_each_number_character(text, pieces):
    assert smollm_pieces(text) == pieces


def merge_list_tokenizer():
    """Specials first (ids 0, 1), then bytes (all but byte 4), then merged tokens; merges rank by their line."""
    special = ["<s>", "</s>"]
    singles = [bytes_to_printable(bytes([b])) for b in range(256) if b != 0x04]  # byte 4 is not a token
    tokens = special + singles + ["ab", "bc", "abc", "!!"]
    merges = ["a b", "b c", "a bc", "! !"]   # "ab"+"c" is not a merge, though "abc" is a token
    return ByteLevelBPE.from_merges(tokens, merges, special_ids=[0, 1], pretokenizer="smollm"), tokens


def test_bpe_merge_list_ranks_pairs_not_results():
    tok, tokens = merge_list_tokenizer()
    ids = {t: i for i, t in enumerate(tokens)}
    assert tok.encode("abc") == [ids["ab"], ids["c"]]   # "a b" first; "ab c" is no merge (GPT-2 ranks: "abc")
    assert tok.encode("bc") == [ids["bc"]]
    assert tok.encode("abd") == [ids["ab"], ids["d"]]
    assert tok.encode("!\x04!<s>") == [ids["!!"], 0]  # a byte that is no token is dropped before merging
    assert tok.decode(tok.encode("x12<s>y", allow_special=True)) == "x12<s>y"


def test_bpe_merge_list_save_load(tmp_path):
    tok, _ = merge_list_tokenizer()
    tok.save(tmp_path / "m.json")
    loaded = Tokenizer.load(tmp_path / "m.json")
    assert loaded.merges == tok.merges and loaded.pretokenizer == "smollm"
    text = "abc 12 a\x04bc</s>"
    assert loaded.encode(text) == tok.encode(text)


def test_bpe_merge_list_rejects_bad_input():
    with pytest.raises(ValueError, match="0 .. V-1"):
        ByteLevelBPE({b"a": 0}, {"<s>": 5}, merges=[])
    with pytest.raises(ValueError, match="1 merges join or make bytes that are not tokens"):
        ByteLevelBPE({b"a": 0, b"b": 1}, {}, merges=[(b"a", b"b")])
    with pytest.raises(ValueError, match="a merge must be 'left right'"):
        ByteLevelBPE.from_merges(["a", "b", "ab"], ["ab"], special_ids=[])
    with pytest.raises(ValueError, match="pretokenizer must be one of"):
        ByteLevelBPE({b"a": 0}, {}, merges=[], pretokenizer="llama")


# ---------------------------------------------------------------- WordPiece
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "the", "cafe", "!", ",", "$",
         "a", "##b", "##c", "x", "一", "二", "run", "##ning", "hello"]


@pytest.fixture
def wp():
    return WordPieceTokenizer(VOCAB)


def test_wordpiece_greedy_longest_match(wp):
    assert wp.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert wp.tokenize("Running") == ["run", "##ning"]
    assert wp.tokenize("abcb") == ["a", "##b", "##c", "##b"]
    assert wp.tokenize("unaffablez") == ["[UNK]"]  # no piece for "z": the whole word is unknown
    assert wp.tokenize("a" + "b" * 99) == ["a"] + ["##b"] * 99
    assert wp.tokenize("a" + "b" * 100) == ["[UNK]"]  # over 100 characters


def test_wordpiece_basic_tokenisation(wp):
    assert wp.tokenize("Hello, CAFÉ!") == ["hello", ",", "cafe", "!"]
    assert wp.tokenize("x一二x") == ["x", "一", "二", "x"]  # CJK characters are words of their own
    assert wp.tokenize("$x") == ["$", "x"]  # ASCII symbols count as punctuation
    assert normalize("A\x00b\ufffd\u200bc\td\u2028e\u0378") == "abc d e\u0378"  # Cn stays
    assert pre_tokenize(normalize("Don't  stop—now…")) == ["don", "'", "t", "stop", "—", "now", "…"]
    assert normalize("Ünïcödé", lowercase=False) == "Ünïcödé"
    assert wp.tokenize("the [MASK] x") == ["the", "[MASK]", "x"]


def test_wordpiece_special_tokens_and_pairs(wp):
    assert wp.encode("the x") == [2, 8, 16, 3]
    assert wp.encode("the x", add_special_tokens=False) == [8, 16]
    assert wp.encode_pair("the", "x a") == ([2, 8, 3, 16, 13, 3], [0, 0, 0, 1, 1, 1])
    assert wp.decode(wp.encode("unaffable the")) == "[CLS] unaffable the [SEP]"
    assert wp.decode(wp.encode("unaffable the"), skip_special_tokens=True) == "unaffable the"
    assert (wp.pad_token_id, wp.unk_token_id, wp.mask_token_id, wp.cls_token_id, wp.sep_token_id) == (0, 1, 4, 2, 3)
    with pytest.raises(ValueError, match="lacks the special tokens"):
        WordPieceTokenizer(["a", "b"])


def test_wordpiece_batch_padding_truncation(wp):
    batch = wp.encode_batch(["the x", "a"], texts_pair=["x x x x", "the"], max_length=8)
    assert batch["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(batch["input_ids"], [[2, 8, 16, 3, 16, 16, 16, 3],
                                                       [2, 13, 3, 8, 3, 0, 0, 0]])
    np.testing.assert_array_equal(batch["token_type_ids"], [[0, 0, 0, 0, 1, 1, 1, 1],
                                                            [0, 0, 0, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1] * 8, [1] * 5 + [0] * 3])
    fixed = wp.encode_batch(["the", "x"], max_length=6, padding="max_length")
    assert fixed["input_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match="no room"):
        wp.encode_batch(["the"], texts_pair=["x"], max_length=2)


def test_pad_later_equals_padding_at_once(wp):
    """encode_batch(padding=False) then pad(rows) is encode_batch of those rows (what minitx.embed does)."""
    texts = ["the x", "a", "x x x the"]
    ragged = wp.encode_batch(texts, max_length=5, padding=False)
    for rows in ([0, 1, 2], [2, 1]):
        later = wp.pad({name: [column[i] for i in rows] for name, column in ragged.items()})
        at_once = wp.encode_batch([texts[i] for i in rows], max_length=5)
        assert later.keys() == at_once.keys()
        for name in at_once:
            np.testing.assert_array_equal(later[name], at_once[name])
    fixed = wp.pad(ragged, padding="max_length", max_length=6)
    assert fixed["input_ids"].shape == (3, 6)


@pytest.mark.parametrize("la, lb, budget, keep", [
    (5, 5, 6, (3, 3)), (5, 5, 7, (3, 4)), (6, 3, 5, (3, 2)), (3, 6, 5, (2, 3)),
    (10, 1, 4, (3, 1)), (2, 2, 10, (2, 2)), (7, 0, 3, (3, 0)),
])
def test_truncate_longest_first(la, lb, budget, keep):
    a, b = truncate_longest_first(list(range(la)), list(range(lb)), budget)
    assert (len(a), len(b)) == keep and a == list(range(len(a))) and b == list(range(len(b)))


def test_wordpiece_train_and_save(tmp_path):
    texts, _ = sentiment_sentences(400, seed=3)
    tok = WordPieceTokenizer.train(texts, vocab_size=300)
    assert tok.vocab_size == 300
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "the" in tok.token_to_id and "was" in tok.token_to_id
    ids = tok.encode("The movie was not dull.")
    assert tok.tokenize("The movie was not dull.") == ["the", "movie", "was", "not", "dull", "."]
    assert tok.tokenize("dulled") == ["dull", "##ed"]  # an unseen word is built from pieces
    assert tok.decode(ids, skip_special_tokens=True) == "the movie was not dull ."
    assert tok.tokenize("qwzx") == ["[UNK]"]  # letters never seen in training
    path = tmp_path / "wp.json"
    tok.save(path)
    loaded = WordPieceTokenizer.load(path)
    assert loaded.vocab == tok.vocab and loaded.encode("I did not hate this trip!") == tok.encode(
        "I did not hate this trip!")


# ---------------------------------------------------------------- base batching
def test_encode_batch_padding_modes():
    tok = CharTokenizer.from_text("abcdef")
    out = tok.encode_batch(["abc", "a", "abcdef"], max_length=4)
    a, b, c, d = (tok.encode(ch)[0] for ch in "abcd")
    np.testing.assert_array_equal(out["input_ids"], [[a, b, c, 0], [a, 0, 0, 0], [a, b, c, d]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert out["attention_mask"].dtype == np.int64
    longest = tok.encode_batch(["ab", "a"])
    assert longest["input_ids"].shape == (2, 2)
    fixed = tok.encode_batch(["ab", "a"], max_length=5, padding="max_length")
    assert fixed["input_ids"].shape == (2, 5) and fixed["attention_mask"].sum() == 3
    ragged = tok.encode_batch(["abc", "a"], padding=False)
    assert ragged == {"input_ids": [[a, b, c], [a]], "attention_mask": [[1, 1, 1], [1]]}
    assert tok.encode_batch(["abcdef"], max_length=2, truncation=False, padding=False)["input_ids"] == [
        tok.encode("abcdef")]
    with pytest.raises(ValueError, match="truncation"):
        tok.encode_batch(["abcdef"], max_length=2, truncation=False, padding="max_length")
    with pytest.raises(ValueError, match="padding must be"):
        tok.encode_batch(["a"], padding="longest")
    with pytest.raises(ValueError, match="needs a max_length"):
        tok.encode_batch(["a"], padding="max_length")


# ---------------------------------------------------------------- refusing bad input
def test_decode_refuses_ids_outside_the_vocabulary(bpe, wp):
    char = CharTokenizer("abc")
    for tok in (bpe, wp, char):
        for bad in ([-1], [-100], [tok.vocab_size], [1.5], [True]):
            with pytest.raises(ValueError, match=r"ids must be integers in \[0, "):
                tok.decode(bad)
        assert tok.decode(np.array([0, 1])) == tok.decode([0, 1])  # NumPy integers are ids too


def test_a_bare_string_is_refused_where_texts_are_expected(bpe, wp):
    with pytest.raises(TypeError, match="wrap a single text"):
        ByteLevelBPE.train("some text", vocab_size=300)
    with pytest.raises(TypeError, match="wrap a single text"):
        WordPieceTokenizer.train("some text", vocab_size=30)
    for tok in (bpe, wp):
        with pytest.raises(TypeError, match="wrap a single text"):
            tok.encode_batch("abc")
        with pytest.raises(TypeError, match="strings"):
            tok.encode_batch(["abc", 3])
    with pytest.raises(TypeError, match="wrap a single text"):
        wp.encode_batch(["a"], texts_pair="b")


@pytest.mark.parametrize("max_length", [-1, 0, 2.5])
def test_encode_batch_refuses_a_max_length_that_is_not_positive(bpe, wp, max_length):
    for tok in (bpe, wp):
        with pytest.raises(ValueError, match="max_length must be a positive integer"):
            tok.encode_batch(["abc"], max_length=max_length)


def test_an_empty_special_token_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        ByteLevelBPE.train(["some text"], vocab_size=300, special_tokens=["<|endoftext|>", ""])
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("abc", special_tokens=["[PAD]", ""])


@pytest.mark.parametrize("content, match", [
    ("{not json", "not a JSON file"),
    ("[1, 2]", "not an object"),
    ('{"type": 3}', "type=3"),
    ('{"type": "ByteLevelBPE", "tokens": []}', "malformed ByteLevelBPE"),
    ('{"type": "WordPieceTokenizer", "vocab": 5, "lowercase": true, "max_input_chars_per_word": 9}', "malformed"),
])
def test_malformed_tokenizer_json_gives_a_clear_error(tmp_path, content, match):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        Tokenizer.load(path)
