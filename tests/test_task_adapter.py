"""TaskAdapter: masked mean pooling (against NumPy and the seed's plain mean), a frozen encoder that stays
bit-identical through AdamW training, gradients that reach only the classifier, and clear input errors."""

import numpy as np
import pytest

import minitx
import minitx.functional as F
from minitx import Tensor, no_grad
from minitx.models import BertConfig, BertModel, SequenceEncoder, TaskAdapter
from minitx.pipelines import finetune_adapter
from minitx.tokenizers import WordPieceTokenizer

TINY_BERT = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=16)  # dropout 0.1: eval mode must switch it off

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "weak"]


def toy_tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE])


def toy_split(rng, n):
    """Texts of 1–5 words, all POSITIVE (label 1) or all NEGATIVE (label 0): trivially separable."""
    labels = rng.integers(0, 2, size=n)
    texts = [" ".join(rng.choice(POSITIVE if y else NEGATIVE, size=rng.integers(1, 6))) for y in labels]
    return texts, labels.tolist()


def padded_batch():
    """Two texts in one batch, the second padded with id 0 after 3 real tokens; rows distinct."""
    ids = np.array([[2, 5, 11, 7, 15, 3], [2, 9, 3, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    return ids, mask


def test_features_are_the_masked_mean_of_the_hidden_states():
    encoder = SequenceEncoder(vocab_size=20, embed_dim=8, num_heads=2, ff_dim=16, num_layers=2)
    adapter = TaskAdapter(encoder, num_classes=3)
    ids, mask = padded_batch()
    ids, mask = np.vstack([ids, ids[1]]), np.vstack([mask, np.zeros(6, dtype=np.int64)])  # + a row of no real token
    features = adapter.features(ids, mask).numpy()  # (3, 8)
    with no_grad():
        hidden = encoder.encode(ids, mask).numpy().astype(np.float64)  # (3, 6, 8)
    m = mask[:, :, None].astype(np.float64)
    expected = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)
    assert features.shape == (3, 8) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(features[2], 0)  # Σ m_t = 0: divided by 1, not 0


def test_without_padding_features_equal_the_seeds_plain_mean():
    """The seed pools with encoded.mean(dim=1); with no padding the masked mean is that same mean, and with
    padding it differs (the seed would average the padding positions in)."""
    encoder = SequenceEncoder(vocab_size=20, embed_dim=8, num_heads=2, ff_dim=16, num_layers=2)
    adapter = TaskAdapter(encoder, num_classes=2)
    ids, mask = padded_batch()
    with no_grad():
        seed_pooling = encoder.encode(ids).mean(axis=1).numpy()  # (B, D), every position averaged
        seed_pooling_padded = encoder.encode(ids, mask).mean(axis=1).numpy()
    np.testing.assert_allclose(adapter.features(ids).numpy(), seed_pooling, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(adapter.features(ids, np.ones_like(mask)).numpy(), seed_pooling, rtol=1e-6, atol=1e-6)
    assert np.abs(adapter.features(ids, mask).numpy()[1] - seed_pooling_padded[1]).max() > 1e-3


@pytest.mark.parametrize("make_encoder", [
    lambda: BertModel(TINY_BERT),
    lambda: SequenceEncoder(vocab_size=30, embed_dim=16, num_heads=2, ff_dim=32, num_layers=2),
], ids=["bert", "sequence_encoder"])
def test_padding_is_ignored(make_encoder):
    """Other pad ids, another pad-token embedding, or a longer batch neighbour leave a text's features alone."""
    adapter = TaskAdapter(make_encoder(), num_classes=2)
    ids, mask = padded_batch()
    before = adapter.features(ids, mask).numpy()
    alone = adapter.features(ids[1:, :3]).numpy()  # the padded text with no padding at all
    other_pads = ids.copy()
    other_pads[mask == 0] = [17, 4, 21]
    after_ids = adapter.features(other_pads, mask).numpy()
    encoder = adapter.encoder
    table = encoder.embeddings.tokens if isinstance(encoder, BertModel) else encoder.embedding
    table.weight.data[0] += 5.0  # the [PAD] row (id 0 only appears at padding positions)
    after_table = adapter.features(ids, mask).numpy()
    np.testing.assert_allclose(alone[0], before[1], atol=1e-5)
    np.testing.assert_allclose(after_ids, before, atol=1e-5)
    np.testing.assert_allclose(after_table, before, atol=1e-5)


def test_gradients_reach_only_the_classifier():
    encoder = BertModel(TINY_BERT)
    adapter = TaskAdapter(encoder, num_classes=2).train()
    ids, mask = padded_batch()
    features = adapter.features(ids, mask)
    assert not features.requires_grad  # no graph through the frozen encoder
    loss = F.cross_entropy(adapter(ids, mask), np.array([1, 0]))
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    trainable = adapter.classifier_parameters()
    assert [p.shape for p in trainable] == [(2, 16), (2,)]
    assert all(p.requires_grad and p.grad is not None and np.abs(p.grad).max() > 0 for p in trainable)
    trainable_ids = {id(p) for p in trainable}
    assert {id(p) for p in adapter.parameters() if p.requires_grad} == trainable_ids


def test_train_keeps_the_encoder_in_eval_mode():
    adapter = TaskAdapter(BertModel(TINY_BERT), num_classes=2)
    adapter.train()
    assert adapter.training and adapter.classifier.training
    assert not any(m.training for m in adapter.encoder.modules())
    ids, mask = padded_batch()
    np.testing.assert_array_equal(adapter.features(ids, mask).numpy(), adapter.features(ids, mask).numpy())
    adapter.eval()
    assert not adapter.training and not adapter.classifier.training


def test_adamw_training_learns_the_task_and_leaves_the_encoder_bit_identical():
    """pipelines.finetune_adapter (AdamW with weight decay, warm-up + cosine, clipping) on a separable toy task."""
    rng = np.random.default_rng(0)
    encoder = BertModel(TINY_BERT)
    frozen = {name: p.numpy().copy() for name, p in encoder.named_parameters()}
    splits = {"train": toy_split(rng, 128), "validation": toy_split(rng, 32), "test": toy_split(rng, 64)}
    result = finetune_adapter(encoder, toy_tokenizer(), splits, steps=200, batch_size=16, lr=0.1, max_length=8,
                              progress=False)
    assert result.metrics["test_acc"] >= 0.95 and result.metrics["val_acc"] >= 0.95
    assert result.history.rows[0]["loss"] > result.history.rows[-1]["loss"] + 0.2
    for name, p in encoder.named_parameters():
        assert np.array_equal(p.numpy(), frozen[name]), name
    assert not encoder.training


def test_classifier_follows_the_encoder_dtype():
    encoder = SequenceEncoder(vocab_size=20, embed_dim=8, num_heads=2, ff_dim=16, num_layers=1).double()
    adapter = TaskAdapter(encoder, num_classes=2)
    assert {p.dtype for p in adapter.classifier_parameters()} == {np.dtype(np.float64)}
    assert adapter(np.array([[2, 5, 3]])).dtype == np.float64


def test_bad_inputs_raise_clear_errors():
    adapter = TaskAdapter(BertModel(TINY_BERT), num_classes=2)
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match=r"input_ids must be integer token ids of shape \(B, T\), got dtype int64 "
                                         r"and shape \(6,\)"):
        adapter(ids[0])
    with pytest.raises(ValueError, match="input_ids must be integer .* got dtype float32"):
        adapter(Tensor(ids.astype(np.float32)))
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(2, 6\), got \(2, 5\)"):
        adapter(ids, mask[:, :5])
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        TaskAdapter(BertModel(TINY_BERT), num_classes=1)
    with pytest.raises(TypeError, match="encoder must have encode.*got Linear"):
        TaskAdapter(minitx.nn.Linear(4, 4), num_classes=2)
