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


def _checkpoint(tmp_path, step=5):
    path = tmp_path / "ckpt.safetensors"
    net = model()
    opt = optim.Adam(net.parameters(), lr=1e-3)
    train_steps(net, opt, [IDS])
    io.save_checkpoint(path, net, opt, step=step, extra={"epoch": 1})
    return path


def _rewrite_metadata(path, edit):
    """Re-encode the file's header after ``edit(metadata)``, keeping its checksum entry as it was."""
    from safetensors.numpy import save
    tensors, metadata = io.read_state_dict_file(path)
    edit(metadata)
    path.write_bytes(save(tensors, metadata=metadata))


@pytest.mark.parametrize("edit", [
    lambda m: m.__setitem__("minitx.step", "4"),
    lambda m: m.__setitem__("minitx.extra", '{"epoch": 2}'),
    lambda m: m.__setitem__("minitx.optimizer", m["minitx.optimizer"].replace('"lr": 0.001', '"lr": 0.002')),
])
def test_the_checksum_covers_the_metadata(tmp_path, edit):
    path = _checkpoint(tmp_path)
    _rewrite_metadata(path, edit)
    with pytest.raises(io.CheckpointError, match="checksum"):
        io.load_checkpoint(path, model(), optim.Adam(model().parameters()))


@pytest.mark.parametrize("header", [b"[1, 2]", b'"text"', b'{"__metadata__": [1]}', b'{"__metadata__": {"a": 1}}'])
def test_a_header_of_valid_json_but_the_wrong_type_raises_checkpoint_error(tmp_path, header):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(io.CheckpointError, match="weights.safetensors"):
        io.read_state_dict_file(path)


def _legacy_checkpoint(tmp_path, **changes):
    """A checkpoint as written before the metadata was covered: only the tensors' digest (minitx.sha256)."""
    path = _checkpoint(tmp_path)

    def edit(m):
        tensors = io.read_state_dict_file(path)[0]
        del m["minitx.sha256-all"]
        m["minitx.sha256"] = io._digest(tensors)
        m.update(changes)
    _rewrite_metadata(path, edit)
    return path


def test_an_old_checkpoint_with_the_tensors_only_checksum_still_loads(tmp_path):
    path = _legacy_checkpoint(tmp_path)
    info = io.load_checkpoint(path, model(), optim.Adam(model().parameters()))
    assert info == {"step": 5, "extra": {"epoch": 1}}


@pytest.mark.parametrize("changes, match", [
    ({"minitx.extra": '{"epoch": '}, "Expecting value"),
    ({"minitx.extra": "[1]"}, "extra must be a JSON object"),
    ({"minitx.step": "five"}, "minitx.step"),
    ({"minitx.optimizer": '{"param_groups": 3}'}, "minitx.optimizer"),
    ({"minitx.optimizer": '{"param_groups": [], "scalars": {}}'}, "groups hold"),
])
def test_broken_metadata_raises_before_anything_is_assigned(tmp_path, changes, match):
    path = _legacy_checkpoint(tmp_path, **changes)
    target = model()
    opt = optim.Adam(target.parameters())
    before = target.state_dict()
    with pytest.raises(io.CheckpointError, match=match):
        io.load_checkpoint(path, target, opt)
    assert opt.state == {}
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_stale_temp_files_are_removed_on_the_next_save_but_a_live_writers_are_not(tmp_path):
    import time
    host, old = io._host(), time.time() - 2 * 3600
    dead = tmp_path / f".tmp-{host}-999999999-abcd1234.safetensors"  # no such pid: its writer was killed
    live = tmp_path / f".tmp-{host}-{os.getpid()}-efgh5678.safetensors"  # a concurrent writer, even if old
    fresh_other = tmp_path / ".tmp-otherhost-12-ijkl9012.safetensors"  # another host's, written just now
    old_legacy = tmp_path / ".tmp-mnop3456.safetensors"  # an older minitx's, untouched for two hours
    fresh_legacy = tmp_path / ".tmp-qrst7890.safetensors"
    unrelated = tmp_path / ".tmp-notes.txt"
    for f in (dead, live, fresh_other, old_legacy, fresh_legacy, unrelated):
        f.write_bytes(b"partial")
    os.utime(live, (old, old))
    os.utime(old_legacy, (old, old))
    os.symlink(tmp_path / "target", tmp_path / ".tmp-uvwx1234.safetensors")  # not a file of ours: kept
    os.utime(tmp_path / ".tmp-uvwx1234.safetensors", (old, old), follow_symlinks=False)
    io.save_state_dict(model().state_dict(), tmp_path / "w.safetensors")
    left = sorted(os.listdir(tmp_path))
    assert left == sorted([live.name, fresh_other.name, fresh_legacy.name, unrelated.name,
                           ".tmp-uvwx1234.safetensors", "w.safetensors"])


def test_files_get_the_permissions_of_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        io.save_state_dict(model().state_dict(), tmp_path / "w.safetensors")
        os.umask(0o077)
        io.save_state_dict(model().state_dict(), tmp_path / "private.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.safetensors").stat().st_mode & 0o777 == 0o600
