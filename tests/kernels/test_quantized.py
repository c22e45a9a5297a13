"""The Q4_1 kernel (kernels/cpu/quantized.py) against the NumPy reference (de-quantise, then one product),
outputs poisoned with NaN first; every version in its registry runs every case."""
import numpy as np
import pytest

from kernels import reference
from kernels.cpu import _common, quantized
from kernels.testing import assert_close


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(_common, "empty", lambda shape, dtype: np.full(shape, np.nan, dtype=dtype))


def q4_1_case(rng, n, out_features, in_features, dtype):
    nb = in_features // 32
    scale = rng.uniform(0.001, 0.05, (out_features, nb)).astype(dtype)
    minimum = rng.uniform(-0.4, 0.0, (out_features, nb)).astype(dtype)
    packed = rng.integers(0, 256, (out_features, nb, 16), dtype=np.uint8)
    return rng.standard_normal((n, in_features)).astype(dtype), scale, minimum, packed


@pytest.mark.parametrize("version", list(quantized.VERSIONS.values()), ids=lambda v: v.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, out_features, in_features", [(1, 1, 32), (1, 70, 96), (5, 33, 576)])
def test_q4_1_linear_equals_dequantised_product(version, dtype, n, out_features, in_features):
    case = q4_1_case(np.random.default_rng(n + out_features), n, out_features, in_features, dtype)
    got = version.q4_1_linear(*case, rows_per_task=8)
    assert got.dtype == dtype and got.shape == (n, out_features)
    assert_close("q4_1_linear", got, reference.q4_1_linear(*case))


def test_reference_nibble_order():
    """Byte j of a block holds weight j (low nibble) and weight j + 16 (high nibble)."""
    packed = np.zeros((1, 1, 16), np.uint8)
    packed[0, 0, 3] = 0x7 | (0x9 << 4)
    w = reference.q4_1_weights(np.ones((1, 1), np.float32), np.full((1, 1), -1.0, np.float32), packed)
    expected = np.full(32, -1.0, np.float32)
    expected[3], expected[19] = 6.0, 8.0
    np.testing.assert_array_equal(w[0], expected)


def test_q4_1_linear_rejects_bad_shapes():
    x, scale, minimum, packed = q4_1_case(np.random.default_rng(0), 2, 4, 64, np.float32)
    with pytest.raises(ValueError, match="q4_1_linear: expected x"):
        quantized.q4_1_linear(x[:, :40], scale, minimum, packed)
    with pytest.raises(TypeError, match="mixed dtypes"):
        quantized.q4_1_linear(x.astype(np.float64), scale, minimum, packed)


@pytest.mark.parametrize("version", list(quantized.VERSIONS.values()), ids=lambda v: v.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, out_features, in_features", [(1, 1, 32), (3, 70, 96)])
def test_q8_0_linear_equals_dequantised_product(version, dtype, n, out_features, in_features):
    rng = np.random.default_rng(n)
    scale = rng.uniform(0.001, 0.05, (out_features, in_features // 32)).astype(dtype)
    quants = rng.integers(-128, 128, (out_features, in_features // 32, 32), dtype=np.int8)
    x = rng.standard_normal((n, in_features)).astype(dtype)
    assert_close("q8_0_linear", version.q8_0_linear(x, scale, quants, rows_per_task=8),
                 reference.q8_0_linear(x, scale, quants))
