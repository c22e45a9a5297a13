"""Loading Hugging Face-named BERT weights: the name table, config checks and the unmatched-key report."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import minitx
from minitx import no_grad
from minitx.hub import config_from_hf, hf_name_map, load_bert, load_hf_weights
from minitx.models.bert import BertConfig, BertModel

TINY = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
            max_position_embeddings=12, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu",
            model_type="bert", position_embedding_type="absolute")


def hf_checkpoint(model: BertModel) -> dict[str, np.ndarray]:
    """``model``'s weights under their Hugging Face names (plus the position_ids buffer HF saves)."""
    params = dict(model.named_parameters())
    names = hf_name_map(model.config.num_hidden_layers, pooler=True)
    tensors = {hf: np.array(params[ours].data) for hf, ours in names.items()}
    tensors["embeddings.position_ids"] = np.arange(12)[None]
    return tensors


def test_the_name_table_covers_every_parameter_once():
    model = BertModel(config_from_hf(TINY))
    names = hf_name_map(2, pooler=True)
    assert sorted(names.values()) == sorted(name for name, _ in model.named_parameters())
    assert names["encoder.layer.1.attention.self.query.weight"] == "encoder.layers.1.self_attn.q_proj.weight"


def test_round_trip_through_a_safetensors_folder(tmp_path):
    minitx.manual_seed(0)
    source = BertModel(config_from_hf(TINY)).eval()
    save_file(hf_checkpoint(source), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    loaded = load_bert(tmp_path)
    assert not loaded.training and loaded.config == source.config
    ids = np.array([[2, 5, 9, 3, 0]])
    mask = (ids != 0).astype(np.int64)
    with no_grad():
        np.testing.assert_array_equal(loaded(ids, mask).numpy(), source(ids, mask).numpy())


def test_every_unmatched_key_is_reported_in_both_directions():
    model = BertModel(config_from_hf(TINY))
    tensors = hf_checkpoint(model)
    del tensors["encoder.layer.0.output.dense.bias"], tensors["pooler.dense.weight"]
    tensors["cls.predictions.bias"] = np.zeros(30, np.float32)
    tensors["encoder.layer.2.output.dense.bias"] = np.zeros(8, np.float32)
    with pytest.raises(KeyError) as info:
        load_hf_weights(model, tensors)
    message = str(info.value)
    for name in ("cls.predictions.bias", "encoder.layer.2.output.dense.bias",  # checkpoint -> nowhere
                 "encoder.layers.0.ff.linear2.bias", "pooler.weight"):  # minitx parameters left empty
        assert name in message
    assert "2 checkpoint keys with no minitx parameter" in message
    assert "2 minitx parameters missing from the checkpoint" in message
    assert message.count("\n") == 2  # one line per kind of problem, printed as lines (not an escaped repr)


def test_shape_mismatch_names_both_keys_and_changes_nothing():
    model = BertModel(config_from_hf(TINY))
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    tensors = {k: v + 1 for k, v in hf_checkpoint(model).items()}
    tensors["encoder.layer.1.output.dense.weight"] = np.zeros((8, 15), np.float32)
    with pytest.raises(ValueError, match=r"encoder.layer.1.output.dense.weight has shape \(8, 15\) but "
                                         r"encoder.layers.1.ff.linear2.weight has shape \(8, 16\)"):
        load_hf_weights(model, tensors)
    assert all(np.array_equal(p.numpy(), before[name]) for name, p in model.named_parameters())


def test_config_refuses_what_minitx_cannot_run():
    assert config_from_hf(TINY) == BertConfig(**{k: v for k, v in TINY.items()
                                                 if k not in ("hidden_act", "model_type", "position_embedding_type")})
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        config_from_hf({**TINY, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        config_from_hf({**TINY, "position_embedding_type": "relative_key"})


def test_weights_load_as_float32(tmp_path):
    model = BertModel(config_from_hf(TINY))
    tensors = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in hf_checkpoint(model).items()}
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert {p.dtype for _, p in load_bert(tmp_path).named_parameters()} == {np.dtype(np.float32)}
