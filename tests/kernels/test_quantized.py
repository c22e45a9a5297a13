"""The Q4_1 and Q8_0 kernels (kernels/cpu/quantized.py) against the NumPy reference (de-quantise, then one
product), outputs poisoned with NaN first; every version of the "quantized" family in the CPU registry
(kernels/versions.py) runs every case. (The CUDA versions: kernels/cuda/check.py, in the simulator.)"""
import numpy as np
import pytest

from kernels import cpu, reference
from kernels.cpu import _common, quantized
from kernels.testing import assert_close, q4_1_case, q8_0_case
from kernels.versions import families

VERSIONS = list(families("cpu")["quantized"].values())


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(_common, "empty", lambda shape, dtype: np.full(shape, np.nan, dtype=dtype))


def q4_1_args(rng, n, out_features, in_features, dtype):
    c = q4_1_case(rng, n, out_features, in_features, dtype)
    return c["x"], c["scale"], c["minimum"], c["packed"]


def test_the_package_functions_are_registered_versions():
    assert any(v.q4_1_linear is cpu.q4_1_linear and v.q8_0_linear is cpu.q8_0_linear for v in VERSIONS)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, out_features, in_features", [(1, 1, 32), (1, 70, 96), (5, 33, 576), (9, 70, 96)])
def test_q4_1_linear_equals_dequantised_product(version, dtype, n, out_features, in_features):
    case = q4_1_args(np.random.default_rng(n + out_features), n, out_features, in_features, dtype)
    tiles = {"tile_rows": 16} if version.name != "v1" else {}  # several tiles, the last one shorter
    got = version.q4_1_linear(*case, rows_per_task=8, **tiles)
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
    x, scale, minimum, packed = q4_1_args(np.random.default_rng(0), 2, 4, 64, np.float32)
    with pytest.raises(ValueError, match="q4_1_linear: expected x"):
        quantized.q4_1_linear(x[:, :40], scale, minimum, packed)
    with pytest.raises(TypeError, match="mixed dtypes"):
        quantized.q4_1_linear(x.astype(np.float64), scale, minimum, packed)
    with pytest.raises(ValueError, match="q4_1_linear: expected x"):  # the tiled road checks the same
        quantized.q4_1_linear_v2(np.zeros((8, 40), np.float32), scale, minimum, packed)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, out_features, in_features", [(1, 1, 32), (3, 70, 96), (9, 70, 96)])
def test_q8_0_linear_equals_dequantised_product(version, dtype, n, out_features, in_features):
    c = q8_0_case(np.random.default_rng(n), n, out_features, in_features, dtype)
    x, scale, quants = c["x"], c["scale"], c["quants"]
    tiles = {"tile_rows": 16} if version.name != "v1" else {}
    assert_close("q8_0_linear", version.q8_0_linear(x, scale, quants, rows_per_task=8, **tiles),
                 reference.q8_0_linear(x, scale, quants))




@pytest.mark.parametrize("parallel_from", [0, 2 ** 20], ids=["numba-threads", "calling-thread"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_v3_few_rows_on_either_road(parallel_from, dtype):
    """Version 3 hands a product to Numba's threads (prange) from ``parallel_from`` weights, else runs it on
    the calling thread; both roads agree with the reference."""
    v3 = families("cpu")["quantized"]["v3"]
    case = q4_1_args(np.random.default_rng(1), 3, 70, 96, dtype)
    assert_close("q4_1_linear", v3.q4_1_linear(*case, rows_per_task=8, parallel_from=parallel_from),
                 reference.q4_1_linear(*case))
    c = q8_0_case(np.random.default_rng(2), 3, 70, 96, dtype)
    assert_close("q8_0_linear", v3.q8_0_linear(c["x"], c["scale"], c["quants"], rows_per_task=8,
                                               parallel_from=parallel_from),
                 reference.q8_0_linear(c["x"], c["scale"], c["quants"]))


@pytest.mark.parametrize("q4", [True, False], ids=["q4_1", "q8_0"])
def test_float32_loops_have_no_float64_arithmetic(q4):
    """Version 3's row loops compute a float32 product in float32 (versions 1 and 2 in float64: Numba types
    int32 · float32 as float64). Compiled afresh: the cache's code cannot be inspected."""
    import numba
    c = (q4_1_case if q4 else q8_0_case)(np.random.default_rng(0), 1, 4, 64, np.float32)
    blocks = (c["scale"], c["minimum"], c["packed"]) if q4 else (c["scale"], c["quants"])
    rows = numba.njit(fastmath=_common.FASTMATH)((quantized._q4_1_rows if q4 else quantized._q8_0_rows).py_func)
    out = np.full((1, 4), np.nan, np.float32)
    x = quantized._split_halves(c["x"]) if q4 else (c["x"],)
    rows(*x, *blocks[:-1], blocks[-1].reshape(4, -1), out, 0, 4)
    assert "double" not in "\n".join(rows.inspect_llvm().values())     # v1's loops: <8 x double> lanes
    assert_close("rows", out, (reference.q4_1_linear if q4 else reference.q8_0_linear)(c["x"], *blocks))


@pytest.mark.parametrize("q4", [True, False], ids=["q4_1", "q8_0"])
def test_float32_dequantise_has_no_float64_arithmetic(q4):
    """The tiled route's de-quantisers (a prompt's many rows) write a float32 tile in float32 arithmetic, as the
    row loops above do. Compiled afresh, serially (prange runs as range)."""
    import numba
    c = (q4_1_case if q4 else q8_0_case)(np.random.default_rng(0), 1, 4, 64, np.float32)
    blocks = (c["scale"], c["minimum"], c["packed"]) if q4 else (c["scale"], c["quants"])
    dequantise = numba.njit(fastmath=_common.FASTMATH)(
        (quantized._q4_1_dequantise if q4 else quantized._q8_0_dequantise).py_func)
    tile = np.full((4, 64), np.nan, np.float32)
    dequantise(*blocks[:-1], blocks[-1].reshape(4, -1), 0, tile)
    assert "double" not in "\n".join(dequantise.inspect_llvm().values())
    eye = np.eye(64, dtype=np.float32)                  # x = I: the reference product is W itself
    weights = reference.q4_1_linear(eye, *blocks) if q4 else reference.q8_0_linear(eye, *blocks)
    assert_close("tile", tile, weights.T)
