"""BertModel and BertForPretraining: shapes, masking, tied weights, gradients, learning a small batch, and
equality with Hugging Face's BertModel / BertForPreTraining (same weights: hidden states, logits, loss, grads)."""

import dataclasses
import math

import numpy as np
import pytest

import minitx
from minitx import Tensor, gradcheck, no_grad
from minitx.hub import hf_name_map, load_hf_weights
from minitx.models.bert import BertConfig, BertForPretraining, BertModel
from minitx.optim import AdamW

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def pretraining_batch(rng, batch_size=4, length=10, vocab=40):
    """Random ids (≥ 5, above the special ids) with padding (id 0) after 70% of row 1 and half of the last
    row, up to 3 masked positions per row (never position 0) and random order labels."""
    ids = rng.integers(5, vocab, size=(batch_size, length))
    mask = np.ones((batch_size, length), dtype=np.int64)
    mask[1, int(0.7 * length):] = 0
    mask[-1, length // 2:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, length // 2:] = 1
    labels = np.full_like(ids, -100)
    for b in range(batch_size):
        real = np.flatnonzero(mask[b])
        chosen = rng.choice(real[1:], size=min(3, len(real) - 1), replace=False)
        labels[b, chosen] = ids[b, chosen]
        ids[b, chosen] = 4  # [MASK]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels,
            "sop_labels": rng.integers(0, 2, size=batch_size)}


def test_shapes_and_hidden_size():
    minitx.manual_seed(0)
    model = BertForPretraining(TINY)
    batch = pretraining_batch(np.random.default_rng(0))
    mlm, sop = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert mlm.shape == (4, 10, 40) and sop.shape == (4, 2)
    assert model.bert.hidden_size == 16
    assert model.bert.encode(batch["input_ids"], batch["attention_mask"]).shape == (4, 10, 16)


def test_padding_does_not_change_real_positions():
    """A padded row's real tokens see exactly what they see without the padding."""
    minitx.manual_seed(0)
    model = BertModel(TINY).eval()
    ids = np.array([[2, 7, 9, 11, 3]])
    padded = np.array([[2, 7, 9, 11, 3, 0, 0], [2, 8, 3, 0, 0, 0, 0]])
    mask = (padded != 0).astype(np.int64)
    with no_grad():
        alone = model(ids).numpy()
        batched = model(padded, mask).numpy()
        unmasked = model(padded).numpy()
    np.testing.assert_allclose(batched[0, :5], alone[0], atol=1e-5)
    assert np.abs(unmasked[0, :5] - alone[0]).max() > 1e-3  # without the mask the padding is attended to


def test_token_types_matter():
    minitx.manual_seed(0)
    model = BertModel(TINY).eval()
    ids = np.array([[2, 7, 9, 3, 11, 3]])
    with no_grad():
        a = model(ids, token_type_ids=np.zeros_like(ids)).numpy()
        b = model(ids, token_type_ids=np.array([[0, 0, 0, 0, 1, 1]])).numpy()
    assert np.abs(a - b).max() > 1e-3


def test_bad_inputs_raise_clear_errors():
    model = BertModel(TINY)
    ids = np.array([[2, 7, 9, 3]])
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, T\), got \(4,\)"):
        model(ids[0])
    with pytest.raises(TypeError, match="input_ids must hold integers, got dtype float32"):
        model(ids.astype(np.float32))
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(1, 4\), got \(1, 3\)"):
        model(ids, np.ones((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"token_type_ids must have the shape of input_ids \(1, 4\), got \(4,\)"):
        model(ids, token_type_ids=np.zeros(4, dtype=np.int64))


def test_decoder_is_tied_to_the_token_embedding():
    model = BertForPretraining(TINY)
    names = [name for name, _ in model.named_parameters()]
    assert not any("decoder" in n for n in names)  # no separate (V, D) output matrix
    batch = pretraining_batch(np.random.default_rng(1))
    model.loss(batch).backward()
    table = model.bert.embeddings.tokens.weight
    unused = np.setdiff1d(np.arange(TINY.vocab_size), batch["input_ids"])
    assert np.abs(table.grad[unused]).max() > 0  # rows never fed in still learn, through the decoder


def test_loss_is_mlm_plus_sop_on_masked_positions_only():
    minitx.manual_seed(0)
    model = BertForPretraining(TINY).eval()
    batch = pretraining_batch(np.random.default_rng(2))
    with no_grad():
        mlm, sop = (t.numpy().astype(np.float64) for t in model(batch["input_ids"], batch["attention_mask"],
                                                                   batch["token_type_ids"]))
        loss = model.loss(batch).item()

    def nll(logits, target):
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        return -np.take_along_axis(logp, target[:, None], axis=-1).mean()

    masked = batch["labels"] != -100
    expected = nll(mlm[masked], batch["labels"][masked]) + nll(sop, batch["sop_labels"])
    assert loss == pytest.approx(expected, rel=1e-5)


def test_loss_of_a_batch_without_order_labels_is_the_mlm_loss_not_nan():
    """MLM-only texts carry the order label IGNORE_INDEX: the SOP term is left out, not a 0/0 mean."""
    minitx.manual_seed(0)
    model = BertForPretraining(TINY).eval()
    batch = pretraining_batch(np.random.default_rng(2))
    batch["sop_labels"] = np.full(len(batch["sop_labels"]), minitx.functional.IGNORE_INDEX)
    with no_grad():
        mlm_logits, _ = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        mlm_only = minitx.functional.cross_entropy(mlm_logits, batch["labels"]).item()
        loss = model.loss(batch).item()
        assert math.isfinite(loss) and loss == pytest.approx(mlm_only, rel=1e-6)
        total, metrics = model.loss(batch, return_metrics=True)
    assert total.item() == loss and metrics == {"mlm_loss": pytest.approx(mlm_only, rel=1e-6)}  # no SOP metrics
    batch["labels"][:] = minitx.functional.IGNORE_INDEX
    with pytest.raises(ValueError, match="no masked token and no order label"):
        model.loss(batch)


def test_gradcheck_of_the_pretraining_loss():
    """Directional finite differences of L_MLM + L_SOP through every parameter, in float64."""
    minitx.manual_seed(0)
    config = BertConfig(vocab_size=12, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=8, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertForPretraining(config)
    params = [p for _, p in model.named_parameters()]
    for p in params:
        p.data = p.data.astype(np.float64)
    batch = pretraining_batch(np.random.default_rng(3), batch_size=3, length=6, vocab=12)
    assert (batch["attention_mask"] == 0).any() and (batch["labels"] != -100).sum() >= 6

    def loss(*values):  # gradcheck passes perturbed copies of the parameters: put them into the model
        for p, v in zip(params, values):
            p.data = v.data
        return model.loss(batch)

    result = gradcheck(loss, params, mode="directional", n_directions=6, atol=1e-7, rtol=1e-5)
    assert result.ok


def test_tiny_model_overfits_a_batch():
    minitx.manual_seed(0)
    model = BertForPretraining(TINY)
    batch = pretraining_batch(np.random.default_rng(4))
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = model.loss(batch)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first == pytest.approx(math.log(40) + math.log(2), abs=0.3)  # BERT's small init: a uniform guess
    assert loss.item() < 0.05
    model.eval()
    with no_grad():
        mlm, sop = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    masked = batch["labels"] != -100
    np.testing.assert_array_equal(mlm.numpy().argmax(-1)[masked], batch["labels"][masked])
    np.testing.assert_array_equal(sop.numpy().argmax(-1), batch["sop_labels"])


# ------------------------------------------------------------------------- equality with Hugging Face's BERT
@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch", reason="torch is the oracle's backend (pip install 'minitx[test]')")
    transformers = pytest.importorskip("transformers", reason="transformers is the oracle")
    return torch, transformers


def hf_config(transformers, config: BertConfig):
    fields = {k: getattr(config, k) for k in BertConfig.__dataclass_fields__}
    return transformers.BertConfig(**fields, hidden_act="gelu")


def real_positions(batch):
    return batch["attention_mask"].astype(bool)  # padding positions' states are not read by anyone


def test_bert_model_equals_hugging_face(hf):
    """HF's randomly initialised weights loaded by name into BertModel: same hidden states, pooler output
    and parameter gradients (of a random weighting of the real positions' states) on a padded pair batch."""
    torch, transformers = hf
    torch.manual_seed(0)
    theirs = transformers.BertModel(hf_config(transformers, TINY)).eval()
    ours = BertModel(TINY).eval()
    load_hf_weights(ours, {k: v.numpy() for k, v in theirs.state_dict().items()})
    batch = pretraining_batch(np.random.default_rng(5))
    weights = np.random.default_rng(6).standard_normal((4, 10, 16)).astype(np.float32) * real_positions(batch)[..., None]

    hidden = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, T, D)
    pooled = ours.pool(hidden)  # (B, D)
    ((hidden * Tensor(weights)).sum() + pooled.sum()).backward()
    out = theirs(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
    ((out.last_hidden_state * torch.from_numpy(weights)).sum() + out.pooler_output.sum()).backward()

    real = real_positions(batch)
    np.testing.assert_allclose(hidden.numpy()[real], out.last_hidden_state.detach().numpy()[real], atol=2e-5)
    np.testing.assert_allclose(pooled.numpy(), out.pooler_output.detach().numpy(), atol=2e-5)
    params = dict(ours.named_parameters())
    for hf_name, our_name in hf_name_map(TINY.num_hidden_layers, pooler=True).items():
        their_grad = theirs.get_parameter(hf_name).grad.numpy()
        np.testing.assert_allclose(params[our_name].grad, their_grad, rtol=1e-4, atol=2e-5, err_msg=our_name)


# (Hugging Face BertForPreTraining name, minitx BertForPretraining name) of the two heads.
HEAD_NAMES = {
    "cls.predictions.transform.dense.weight": "mlm_dense.weight",
    "cls.predictions.transform.dense.bias": "mlm_dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "mlm_norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "mlm_norm.bias",
    "cls.predictions.bias": "mlm_bias",
    "cls.seq_relationship.weight": "sop.weight",
    "cls.seq_relationship.bias": "sop.bias",
}


def test_bert_for_pretraining_equals_hugging_face(hf):
    """Our weights copied into HF's BertForPreTraining (its decoder is tied to the token table too):
    same MLM and order logits, same L_MLM + L_SOP, same gradient for every parameter."""
    torch, transformers = hf
    minitx.manual_seed(0)
    ours = BertForPretraining(TINY).eval()
    theirs = transformers.BertForPreTraining(hf_config(transformers, TINY)).eval()
    names = {f"bert.{k}": f"bert.{v}" for k, v in hf_name_map(TINY.num_hidden_layers, pooler=True).items()}
    names.update(HEAD_NAMES)
    params = dict(ours.named_parameters())
    their_params = dict(theirs.named_parameters())  # tied weights listed once
    assert set(their_params) <= set(names) and set(names.values()) == set(params)
    with torch.no_grad():
        for hf_name, param in their_params.items():
            param.copy_(torch.from_numpy(params[names[hf_name]].numpy()))
    assert theirs.cls.predictions.decoder.weight is theirs.bert.embeddings.word_embeddings.weight

    batch = pretraining_batch(np.random.default_rng(7))
    loss = ours.loss(batch)
    loss.backward()
    with no_grad():
        mlm, sop = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    out = theirs(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")},
                 labels=torch.from_numpy(batch["labels"]), next_sentence_label=torch.from_numpy(batch["sop_labels"]))
    out.loss.backward()

    real = real_positions(batch)
    np.testing.assert_allclose(mlm.numpy()[real], out.prediction_logits.detach().numpy()[real], atol=5e-5)
    np.testing.assert_allclose(sop.numpy(), out.seq_relationship_logits.detach().numpy(), atol=2e-5)
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
    for hf_name, param in their_params.items():
        np.testing.assert_allclose(params[names[hf_name]].grad, param.grad.numpy(), rtol=1e-4, atol=2e-6,
                                   err_msg=names[hf_name])


def test_frozen_inference_runs_the_fused_kernels(monkeypatch):
    """Sentence embeddings (issue 17): BertModel under no_grad, with padding, takes the fused attention and FFN
    kernels in every layer (a silent fallback to the composed ops is caught here), and computes what the composed
    ops compute."""
    import kernels.cpu
    from minitx import functional as F

    calls = []
    for name in ("attention_forward", "ffn_forward"):
        def counted(*args, _kernel=getattr(kernels.cpu, name), _name=name, **kwargs):
            calls.append(_name)
            return _kernel(*args, **kwargs)
        monkeypatch.setattr(kernels.cpu, name, counted)
    minitx.manual_seed(0)
    model = BertModel(dataclasses.replace(TINY, max_position_embeddings=64)).eval()
    # 64 positions: the default attention takes the fused kernel from T·T = F.FUSED_ATTENTION_MIN_SCORES on
    batch = pretraining_batch(np.random.default_rng(0), length=64)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[1] ** 2 >= F.FUSED_ATTENTION_MIN_SCORES
    with no_grad():
        fused = model(ids, mask).data
        assert sorted(calls) == ["attention_forward"] * 2 + ["ffn_forward"] * 2  # one of each per layer
        with F.fused_kernels(False):
            composed = model(ids, mask).data
    assert len(calls) == 4
    np.testing.assert_allclose(fused, composed, rtol=1e-5, atol=1e-5)
