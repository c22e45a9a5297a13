"""LoRA (minitx/nn/lora.py): the adapted linear against the same forward written in PyTorch and against finite
differences; apply_lora freezing the base (bit-identical after training); merge/unmerge; adapters saved alone."""

from __future__ import annotations

import numpy as np
import pytest

import minitx
import minitx.functional as F
from minitx import Tensor, nn
from minitx.gradcheck import gradcheck
from minitx.io import load_state_dict_file, save_state_dict
from minitx.models import GPTConfig, GPTForSequenceClassification
from minitx.optim import AdamW

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def lora_layer(dtype=np.float64, rank=3, alpha=6.0, bias=True, seed=0) -> nn.LoRALinear:
    """A LoRALinear(5 -> 4) with a random (non-zero) B, as after some training."""
    minitx.manual_seed(seed)
    layer = nn.LoRALinear(nn.Linear(5, 4, bias=bias, dtype=dtype), rank=rank, alpha=alpha)
    layer.lora_B.data[...] = np.random.default_rng(seed).standard_normal(layer.lora_B.shape)
    return layer


def tiny_classifier(seed=0) -> GPTForSequenceClassification:
    minitx.manual_seed(seed)
    config = GPTConfig(vocab_size=20, max_len=8, d_model=16, num_heads=2, num_layers=2, dim_feedforward=32,
                       dropout=0.0)
    return GPTForSequenceClassification(config, num_classes=2)


IDS = np.random.default_rng(5).integers(0, 20, (4, 6))
MASK = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 3 + [0] * 3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_lora_linear_matches_the_same_forward_and_gradients_in_torch(dtype, bias):
    torch = pytest.importorskip("torch")
    layer = lora_layer(dtype, bias=bias)
    x = np.random.default_rng(1).standard_normal((2, 3, 5)).astype(dtype)
    ours_x = Tensor(x, requires_grad=True)
    out = layer(ours_x)
    g = np.random.default_rng(2).standard_normal(out.shape).astype(dtype)
    out.backward(g)

    t = {name: torch.tensor(p.numpy(), requires_grad=name.startswith("lora")) for name, p in layer.named_parameters()}
    tx = torch.tensor(x, requires_grad=True)
    ref = tx @ t["weight"].T + (t["bias"] if bias else 0) + (6.0 / 3) * (tx @ t["lora_A"].T) @ t["lora_B"].T
    ref.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(ours_x.grad, tx.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(layer.lora_A.grad, t["lora_A"].grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(layer.lora_B.grad, t["lora_B"].grad.numpy(), **TOL[dtype])
    assert layer.weight.grad is None and (not bias or layer.bias.grad is None)  # frozen: no gradient computed


def test_lora_linear_gradcheck():
    """d/dx, d/dA, d/dB of the layer (W, b frozen) against central differences, in float64."""
    layer = lora_layer(np.float64)
    x = Tensor(np.random.default_rng(3).standard_normal((2, 3, 5)), requires_grad=True)

    def through_layer(x, A, B):  # gradcheck hands in perturbed copies of A and B: the layer must use them
        object.__setattr__(layer, "lora_A", A)
        object.__setattr__(layer, "lora_B", B)
        return layer(x)

    gradcheck(through_layer, [x, layer.lora_A, layer.lora_B])


def test_a_new_adapter_leaves_the_layer_unchanged_and_is_initialised_like_a_linear():
    minitx.manual_seed(0)
    base = nn.Linear(64, 32)
    x = Tensor(np.random.default_rng(0).standard_normal((7, 64)).astype(np.float32))
    before = base(x).numpy()
    weight = base.weight
    layer = nn.LoRALinear(base, rank=16, alpha=32)
    np.testing.assert_array_equal(layer(x).numpy(), before)  # B = 0: exactly the base
    assert layer.weight is weight and not weight.requires_grad and layer.lora_A.requires_grad
    assert layer.lora_A.shape == (16, 64) and layer.lora_B.shape == (32, 16) and not layer.lora_B.data.any()
    bound = 1 / np.sqrt(64)
    assert np.abs(layer.lora_A.data).max() <= bound and np.abs(layer.lora_A.data).max() > 0.9 * bound
    assert layer.lora_A.dtype == np.float32 and layer.scaling == 2.0


def test_adapter_dropout_acts_in_training_only():
    layer = lora_layer(np.float64)
    layer.dropout = 0.5
    x = Tensor(np.ones((50, 5)))
    layer.eval()
    plain = layer(x).numpy()
    np.testing.assert_array_equal(plain, layer(x).numpy())
    layer.train()
    dropped = layer(x).numpy()
    assert not np.allclose(dropped, plain)
    base = F.linear(x, layer.weight, layer.bias).numpy()
    assert not np.allclose(dropped, base)  # the base branch is not dropped: rows differ only by the adapter


def test_apply_lora_freezes_the_base_which_stays_bit_identical_through_training():
    model = tiny_classifier()
    base = model.state_dict()
    names = nn.apply_lora(model, targets=("q_proj", "v_proj"), rank=4, alpha=8)
    assert names == [f"gpt.blocks.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    model.score.requires_grad_(True)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted([f"{n}.lora_{m}" for n in names for m in "AB"] + ["score.weight"])
    with minitx.no_grad():
        start = model(IDS, MASK).numpy()
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        loss = F.cross_entropy(model(IDS, MASK), np.array([0, 1, 1, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in base.items():  # every base weight (the adapted layers' too, under their old names)
        np.testing.assert_array_equal(after[key], value, err_msg=key) if key != "score.weight" else None
    assert not np.array_equal(after["score.weight"], base["score.weight"])
    assert all(after[f"{n}.lora_B"].any() for n in names)  # the adapters learned
    with minitx.no_grad():
        assert not np.allclose(model(IDS, MASK).numpy(), start)


def test_merge_equals_the_adapted_model_and_unmerge_restores_the_base():
    model = tiny_classifier()
    base = model.state_dict()
    nn.apply_lora(model, targets=("q_proj", "k_proj", "v_proj", "out_proj"), rank=2, alpha=4)
    rng = np.random.default_rng(0)
    for _, layer in nn.lora_layers(model):
        layer.lora_B.data[...] = rng.standard_normal(layer.lora_B.shape) * 0.1
    with minitx.no_grad():
        adapted = model(IDS, MASK).numpy()
        nn.merge_lora(model)
        assert all(layer.merged for _, layer in nn.lora_layers(model))
        merged = model(IDS, MASK).numpy()
        q = model.gpt.blocks[0].attn.q_proj
        np.testing.assert_allclose(q.weight.numpy(), base["gpt.blocks.0.attn.q_proj.weight"]
                                   + 2.0 * q.lora_B.numpy() @ q.lora_A.numpy(), rtol=1e-6, atol=1e-7)
        nn.merge_lora(model)  # a second merge changes nothing
        np.testing.assert_array_equal(model(IDS, MASK).numpy(), merged)
        nn.unmerge_lora(model)
        unmerged = model(IDS, MASK).numpy()
    np.testing.assert_allclose(merged, adapted, rtol=1e-5, atol=1e-6)  # float32 rounding of W + sBA
    np.testing.assert_allclose(unmerged, adapted, rtol=1e-5, atol=1e-6)
    for key, value in base.items():
        np.testing.assert_allclose(model.state_dict()[key], value, rtol=0, atol=1e-7, err_msg=key)


def test_adapters_are_saved_alone_and_load_into_a_fresh_adapted_model(tmp_path):
    model = tiny_classifier()
    nn.apply_lora(model, rank=2, alpha=4)
    model.score.requires_grad_(True)
    for _, layer in nn.lora_layers(model):
        layer.lora_B.data[...] = np.random.default_rng(1).standard_normal(layer.lora_B.shape)
    path = tmp_path / "adapters.safetensors"
    save_state_dict(nn.lora_state_dict(model), path)
    saved = load_state_dict_file(path)
    assert sorted(saved) == sorted([f"gpt.blocks.{i}.attn.{p}.lora_{m}" for i in range(2) for p in ("q_proj", "v_proj")
                                    for m in "AB"] + ["score.weight"])
    fresh = tiny_classifier()  # the same base weights (same seed), new adapters and head
    nn.apply_lora(fresh, rank=2, alpha=4)
    fresh.score.requires_grad_(True)
    nn.merge_lora(fresh)  # loading into a merged model re-merges with the loaded adapters
    nn.load_lora_state_dict(fresh, saved)
    with minitx.no_grad():
        np.testing.assert_allclose(fresh(IDS, MASK).numpy(), model(IDS, MASK).numpy(), rtol=1e-5, atol=1e-6)

    other = tiny_classifier()
    nn.apply_lora(other, targets=("q_proj",), rank=2, alpha=4)
    before = other.state_dict()
    with pytest.raises(ValueError, match="unexpected keys .*v_proj.lora_A"):
        nn.load_lora_state_dict(other, saved)
    wrong_rank = tiny_classifier()
    nn.apply_lora(wrong_rank, rank=3, alpha=4)
    wrong_rank.score.requires_grad_(True)
    with pytest.raises(ValueError, match="shape mismatch for 'gpt.blocks.0.attn.q_proj.lora_A'"):
        nn.load_lora_state_dict(wrong_rank, saved)
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in before.items())


def test_apply_lora_errors_name_the_problem_and_change_nothing():
    model = tiny_classifier()
    with pytest.raises(ValueError, match=r"no Linear layer's name ends with one of targets \('query',\).*q_proj"):
        nn.apply_lora(model, targets="query")
    with pytest.raises(ValueError, match="rank must be an integer >= 1, got 0"):
        nn.apply_lora(model, rank=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        nn.apply_lora(model, dropout=1.0)
    assert all(p.requires_grad for p in model.parameters()) and not nn.lora_layers(model)
    nn.apply_lora(model, targets="attn.q_proj")
    with pytest.raises(ValueError, match="already have LoRA adapters"):
        nn.apply_lora(model, targets="q_proj")
    with pytest.raises(TypeError, match="base must be a Linear without an adapter"):
        nn.LoRALinear(model.gpt.blocks[0].attn.q_proj)
    with pytest.raises(ValueError, match="no adapters and no trainable parameters"):
        nn.lora_state_dict(tiny_classifier().requires_grad_(False))
