"""The workflow functions of :mod:`minitx.pipelines` on tiny sizes: splits, windows, each stage end to end."""

import math

import numpy as np

from minitx import backend
from minitx.data import IGNORE_INDEX, ordered_documents, sentence_order_pairs, sentiment_sentences
from minitx.models import BertConfig, BertForPretraining, GPTConfig
from minitx.pipelines import (finetune_adapter, finetune_gpt_classifier, generate_text, labelled_splits, lm_windows,
                              pretrain_bert, split, train_gpt, train_tokenizers)


def test_split_is_a_seeded_partition():
    items = list(range(103))
    parts = split(items, (0.8, 0.1, 0.1), seed=4)
    assert [len(p) for p in parts] == [82, 10, 11]
    assert sorted(sum(parts, [])) == items
    assert split(items, seed=4) == parts and split(items, seed=5) != parts


def test_split_does_not_replay_the_sentence_order_permutation():
    """Same seed and length as sentence_order_pairs' choice of swapped pairs: both labels must be held out."""
    pairs = sentence_order_pairs(ordered_documents(300, seed=0), seed=0)
    train, held_out = split(pairs, (0.9, 0.1), seed=0)
    held_out_labels = [label for _, _, label in held_out]
    assert 0.3 < np.mean(held_out_labels) < 0.7


def test_labelled_splits_keep_text_label_pairs():
    texts, labels = sentiment_sentences(200, seed=1)
    truth = dict(zip(texts, labels))
    splits = labelled_splits(texts, labels, seed=1)
    assert [len(splits[k][0]) for k in ("train", "validation", "test")] == [160, 20, 20]
    for part_texts, part_labels in splits.values():
        assert [truth[t] for t in part_texts] == part_labels


def test_lm_windows():
    windows = lm_windows(list(range(10)), length=4, stride=2)
    np.testing.assert_array_equal(windows, [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]])
    assert lm_windows(list(range(4)), length=4).tolist() == [[0, 1, 2, 3]]  # exactly one window's worth


def test_every_stage_runs_and_reports(tmp_path):
    """The demo's four stages on toy sizes: metrics present and finite, frozen encoder untouched."""
    backend.manual_seed(0)
    documents = ordered_documents(80, seed=0)
    texts, labels = sentiment_sentences(120, seed=0)
    splits = labelled_splits(texts, labels, seed=0)
    wordpiece, bpe = train_tokenizers(documents, texts, wordpiece_vocab=300, bpe_vocab=300)

    bert = pretrain_bert(documents, wordpiece, BertConfig(
        vocab_size=wordpiece.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64), steps=6, batch_size=8, progress=False,
        texts=splits["train"][0], checkpoint_path=str(tmp_path / "bert.safetensors"))
    assert (tmp_path / "bert.safetensors").is_file()
    assert math.isfinite(bert.metrics["mlm_loss"]) and 0 <= bert.metrics["sop_acc"] <= 1
    assert bert.metrics["uniform_loss"] == math.log(wordpiece.vocab_size)

    frozen = {k: v.copy() for k, v in bert.model.bert.state_dict().items()}
    adapter = finetune_adapter(bert.model.bert, wordpiece, splits, steps=5, progress=False)
    assert set(adapter.metrics) == {"val_acc", "test_acc"}
    for name, value in bert.model.bert.state_dict().items():
        np.testing.assert_array_equal(value, frozen[name])

    gpt = train_gpt(" ".join(texts), bpe, GPTConfig(vocab_size=bpe.vocab_size, max_len=16, d_model=16, num_heads=2,
                                                    num_layers=1, dim_feedforward=32, dropout=0.0),
                    steps=5, batch_size=4, progress=False)
    assert gpt.history.evals[-1]["loss"] == gpt.metrics["val_loss"]
    sample = generate_text(gpt.model, bpe, "The", max_new_tokens=5, seed=0)
    assert sample.startswith("The") and sample == generate_text(gpt.model, bpe, "The", max_new_tokens=5, seed=0)
    classifier = finetune_gpt_classifier(gpt.model, bpe, splits, steps=4, batch_size=8, progress=False)
    assert 0 <= classifier.metrics["test_acc"] <= 1


def test_pretraining_with_only_mlm_texts_in_a_batch(monkeypatch):
    """A batch holding only MLM texts (order label IGNORE_INDEX) trains MLM alone instead of a 0/0 SOP loss,
    and the loss trained on is the model's own (BertForPretraining.loss_terms, the terms of its loss)."""
    calls = []
    model_terms = BertForPretraining.loss_terms
    monkeypatch.setattr(BertForPretraining, "loss_terms",
                        lambda self, *a, **k: calls.append(1) or model_terms(self, *a, **k))
    backend.manual_seed(0)
    documents = ordered_documents(20, seed=0)
    texts = [f"sentence number {i} is here" for i in range(200)]  # 18 pairs vs 200 texts: MLM-only batches
    wordpiece, _ = train_tokenizers(documents, texts, wordpiece_vocab=200, bpe_vocab=260)
    result = pretrain_bert(documents, wordpiece, BertConfig(
        vocab_size=wordpiece.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64), steps=12, batch_size=4, progress=False, texts=texts)
    rows = result.history.rows
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert any("sop_loss" not in r for r in rows)  # some batches had no ordered pair
    assert len(calls) >= 12  # every training step (and each evaluation batch) went through the model's loss
    assert IGNORE_INDEX == -100
