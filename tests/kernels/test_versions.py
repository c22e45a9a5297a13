"""The kernel registries (kernels/versions.py) and the one activation table (kernels/activations.py)."""
import inspect

import numpy as np
import pytest

import kernels.cuda
from kernels import activations, cpu, reference
from kernels.cuda import ffn as cuda_ffn
from kernels.testing import ffn_case
from kernels.versions import FAMILIES, Version, all_versions, families, registry


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_every_version_has_the_reference_signature_then_tuning_knobs(backend):
    """Every registered version can stand where the reference does: its parameters start with the reference's
    (same names, same defaults) and the rest are tuning knobs with defaults."""
    for family, version in all_versions(backend):
        assert set(version.functions) == set(FAMILIES[family])
        for name, fn in version.functions.items():
            want = list(inspect.signature(getattr(reference, name)).parameters.values())
            got = list(inspect.signature(fn).parameters.values())
            assert got[:len(want)] == want, f"{backend} {family} {version.name}.{name}"
            assert all(p.default is not p.empty for p in got[len(want):]), f"{backend} {family} {version.name}"


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_every_version_says_what_it_improves_on(backend):
    for family, table in families(backend).items():
        first, *rest = table.values()
        assert first.improves_on is None
        assert all(v.improves_on in table for v in rest), family
        assert all(v.about and "\n" not in v.about for v in table.values())


def test_the_package_apis_are_registered_versions():
    cuda_attention = families("cuda")["attention"]
    assert any(v.attention_forward is kernels.cuda.attention_forward
               and v.attention_backward is kernels.cuda.attention_backward for v in cuda_attention.values())
    cpu_families = families("cpu")
    for family, names in FAMILIES.items():
        assert any(all(getattr(cpu, n) is v.functions[n] for n in names) for v in cpu_families[family].values())


def test_registry_refuses_inconsistent_entries():
    def fn(*args):
        return None

    with pytest.raises(ValueError, match="registered twice"):
        registry(Version("v1", "a", None, softmax=fn), Version("v1", "b", None, softmax=fn))
    with pytest.raises(ValueError, match="improves on 'v0'"):
        registry(Version("v1", "a", "v0", softmax=fn))
    with pytest.raises(ValueError, match="one-line description"):
        registry(Version("v1", "two\nlines", None, softmax=fn))
    with pytest.raises(ValueError, match="gives"):
        registry(Version("v1", "a", None, softmax=fn), Version("v2", "b", "v1", attention_forward=fn))
    with pytest.raises(AttributeError, match="has no function 'ffn_forward'"):
        Version("v1", "a", None, softmax=fn).ffn_forward


def test_one_activation_table_for_every_backend():
    """The reference, the CPU and the CUDA kernels accept exactly the names of kernels/activations.py (identity
    included: the CUDA FFN took it while the CPU kernels and the reference refused it) and refuse any other
    with the same message, before computing anything."""
    assert reference.ACTIVATIONS is activations.ACTIVATIONS
    assert activations.ACTIVATIONS[:1] == ("identity",)
    c = ffn_case(np.random.default_rng(0), 3, 2, 4, np.float32)
    params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
    for forward in (reference.ffn_forward, cpu.ffn_forward, cuda_ffn.ffn_forward):
        with pytest.raises(ValueError, match=r"unknown activation 'swish'; expected one of \('identity', 'relu'"):
            forward(*params, "swish")
    y, h_pre = cpu.ffn_forward(*params, "identity")
    np.testing.assert_allclose(y, (c["x"] @ c["w1"].T + c["b1"]) @ c["w2"].T + c["b2"], rtol=1e-5)
