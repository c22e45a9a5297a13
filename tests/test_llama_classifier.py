"""LlamaForSequenceClassification (minitx/models/llama.py) on a tiny Llama: the last real token is read,
padding changes nothing, against transformers' LlamaForSequenceClassification; LoRA fine-tuning of it; the
Llama as a TaskAdapter encoder."""

from __future__ import annotations

import numpy as np
import pytest

import minitx
import minitx.functional as F
from minitx import nn
from minitx.hub import LLAMA_LAYER_NAMES, LLAMA_OTHER_NAMES
from minitx.models import TaskAdapter
from minitx.models.llama import Llama, LlamaConfig, LlamaForSequenceClassification
from minitx.optim import AdamW

PAD = 0
CONFIG = LlamaConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2, dim_feedforward=24,
                     max_len=16, rope_base=100000.0)


def tiny_classifier(seed=0) -> LlamaForSequenceClassification:
    minitx.manual_seed(seed)
    llama = Llama(CONFIG)
    for name, p in llama.named_parameters():  # small random weights (the defaults leave RMSNorm γ = 1)
        p.data[...] = np.random.default_rng(seed).standard_normal(p.shape) * (0.3 if "ln" not in name else 0.1) + (
            1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "norm.weight")) else 0.0)
    return LlamaForSequenceClassification(llama, num_classes=3, pad_token_id=PAD)


def padded(rows: list[list[int]]):
    steps = max(map(len, rows))
    ids = np.array([r + [PAD] * (steps - len(r)) for r in rows])
    mask = np.array([[1] * len(r) + [0] * (steps - len(r)) for r in rows])
    return ids, mask


ROWS = [[5, 9, 3, 7, 2, 11], [4, 8, 1], [6, 6, 13, 2, 30], [17]]


def test_reads_the_last_real_token_and_padding_changes_nothing():
    model = tiny_classifier().eval()
    ids, mask = padded(ROWS)
    with minitx.no_grad():
        batch = model(ids, mask).numpy()
        alone = np.concatenate([model(np.array([r])).numpy() for r in ROWS])
        h = model.llama.hidden_states(np.array([ROWS[0]])).numpy()
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[0], h[0, -1] @ model.score.weight.numpy().T, rtol=1e-5, atol=1e-6)
    assert batch.shape == (4, 3)


def test_matches_transformers_llama_for_sequence_classification():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = tiny_classifier().eval()
    config = transformers.LlamaConfig(
        vocab_size=CONFIG.vocab_size, hidden_size=CONFIG.d_model, intermediate_size=CONFIG.dim_feedforward,
        num_hidden_layers=CONFIG.num_layers, num_attention_heads=CONFIG.num_heads,
        num_key_value_heads=CONFIG.num_kv_heads, rms_norm_eps=CONFIG.rms_norm_eps, rope_theta=CONFIG.rope_base,
        max_position_embeddings=CONFIG.max_len, tie_word_embeddings=True, num_labels=3, pad_token_id=PAD)
    config._attn_implementation = "eager"
    theirs = transformers.LlamaForSequenceClassification(config).eval()
    ours = model.state_dict()
    names = {hf: mx for _, hf, mx in LLAMA_OTHER_NAMES}
    names.update({f"model.layers.{i}.{hf}": f"blocks.{i}.{mx}" for i in range(CONFIG.num_layers)
                  for _, hf, mx in LLAMA_LAYER_NAMES})
    state = {hf: torch.tensor(ours[f"llama.{mx}"]) for hf, mx in names.items() if f"llama.{mx}" in ours}
    state["score.weight"] = torch.tensor(ours["score.weight"])
    theirs.load_state_dict(state, strict=True)
    ids, mask = padded(ROWS)
    with torch.no_grad():
        want = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    with minitx.no_grad():
        np.testing.assert_allclose(model(ids, mask).numpy(), want, rtol=1e-4, atol=1e-5)


def test_lora_fine_tuning_learns_and_leaves_the_trunk_bit_identical():
    model = tiny_classifier()
    base = model.llama.state_dict()
    nn.apply_lora(model, targets=("q_proj", "k_proj", "v_proj", "out_proj"), rank=2, alpha=4)
    model.score.requires_grad_(True)
    ids, mask = padded(ROWS)
    labels = np.array([0, 1, 2, 1])
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    after = model.llama.state_dict()
    for key, value in base.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_llama_is_a_task_adapter_encoder():
    model = tiny_classifier()
    adapter = TaskAdapter(model.llama, num_classes=2)
    ids, mask = padded(ROWS)
    features = adapter.features(ids, mask).numpy()
    with minitx.no_grad():
        h = model.llama.hidden_states(np.array([ROWS[1]])).numpy()[0]
    np.testing.assert_allclose(features[1], h.mean(0), rtol=1e-5, atol=1e-6)


def test_bad_input_is_refused_with_a_clear_error():
    model = tiny_classifier()
    with pytest.raises(ValueError, match="must pad on the right"):
        model(np.array([[PAD, 3, 4]]), np.array([[0, 1, 1]]))
    with pytest.raises(ValueError, match=r"attention_mask: row\(s\) \[0\] have no real token") as error:
        model(np.array([[3, 4]]), np.array([[0, 0]]))
    assert "GPT" not in str(error.value)  # the message once named GPTForSequenceClassification for a Llama
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of .*\(1, 2\)"):
        model(np.array([[3, 4]]), np.array([[1, 1, 0]]))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        LlamaForSequenceClassification(model.llama, 1)
    with pytest.raises(ValueError, match=r"pad_token_id must lie in \[0, 32\)"):
        LlamaForSequenceClassification(model.llama, 2, pad_token_id=32)
