"""Safetensors state dicts and training checkpoints: round trips, damaged files, wrong shapes."""

from __future__ import annotations

import os

import numpy as np
import pytest

import minitx
from minitx import functional as F
from minitx import io, optim
from minitx.models import SequenceEncoder


def model(ff_dim=32):
    return SequenceEncoder(13, 16, 4, ff_dim, 2, drop_rate=0.0)


IDS = np.array([[1, 2, 3, 4], [5, 6, 7, 0]])


def test_state_dict_through_safetensors_gives_identical_outputs(tmp_path):
    a, b = model(), model()
    path = tmp_path / "weights.safetensors"
    io.save_state_dict(a.state_dict(), path, metadata={"note": "hi"})
    b.load_state_dict(io.load_state_dict_file(path))
    np.testing.assert_array_equal(a(IDS).numpy(), b(IDS).numpy())
    assert io.read_state_dict_file(path)[1]["note"] == "hi"
    assert os.listdir(tmp_path) == ["weights.safetensors"]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "garbage"])
def test_a_damaged_file_raises_and_leaves_the_model_unchanged(tmp_path, damage):
    path = tmp_path / "weights.safetensors"
    io.save_state_dict(model().state_dict(), path)
    payload = bytearray(path.read_bytes())
    if damage == "truncate":
        payload = payload[: len(payload) // 2]
    elif damage == "flip_data_byte":
        payload[-10] ^= 0xFF
    else:
        payload = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(payload))
    target = model()
    before = target.state_dict()
    with pytest.raises(io.CheckpointError, match="weights.safetensors"):
        target.load_state_dict(io.load_state_dict_file(path))
    with pytest.raises(io.CheckpointError, match="weights.safetensors"):
        io.load_checkpoint(path, target)
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_a_model_of_another_shape_refuses_to_load_naming_the_key(tmp_path):
    path = tmp_path / "weights.safetensors"
    io.save_state_dict(model(ff_dim=32).state_dict(), path)
    with pytest.raises(ValueError, match=r"transformer_stack.layers.0.ff.linear1.weight.*\(48, 16\).*\(32, 16\)"):
        model(ff_dim=48).load_state_dict(io.load_state_dict_file(path))


def train_steps(net, opt, batches):
    for ids in batches:
        opt.zero_grad()
        F.cross_entropy(net(ids), ids).backward()
        opt.step()


def test_checkpoint_resumes_training_exactly(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 13, size=(4, 5)) for _ in range(6)]
    minitx.manual_seed(1)
    straight = model()
    opt = optim.AdamW(straight.parameters(), lr=1e-2)
    train_steps(straight, opt, batches)

    minitx.manual_seed(1)
    first = model()
    opt_first = optim.AdamW(first.parameters(), lr=1e-2)
    train_steps(first, opt_first, batches[:3])
    path = tmp_path / "ckpt.safetensors"
    io.save_checkpoint(path, first, opt_first, step=3, extra={"rng": minitx.get_rng_state(), "epoch": 1})

    resumed = model()
    opt_resumed = optim.AdamW(resumed.parameters(), lr=5.0)
    info = io.load_checkpoint(path, resumed, opt_resumed)
    assert info["step"] == 3 and info["extra"]["epoch"] == 1
    minitx.set_rng_state(info["extra"]["rng"])
    train_steps(resumed, opt_resumed, batches[3:])
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(value, resumed.state_dict()[name], err_msg=name)


def test_checkpoint_that_does_not_fit_changes_neither_model_nor_optimizer(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    small = model(ff_dim=32)
    opt = optim.Adam(small.parameters())
    train_steps(small, opt, [IDS])
    io.save_checkpoint(path, small, opt, step=1)
    other = model(ff_dim=48)
    other_opt = optim.Adam(other.parameters())
    before = other.state_dict()
    with pytest.raises(io.CheckpointError, match="ff.linear1.weight"):
        io.load_checkpoint(path, other, other_opt)
    assert other_opt.state == {}
    for name, value in other.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
