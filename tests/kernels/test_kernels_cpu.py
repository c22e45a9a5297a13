"""Numba CPU kernels against the NumPy references (outputs poisoned with NaN first).

Every version in the CPU registries (kernels/versions.py) runs every case: a new version is tested here
without a change to this file.
"""
import inspect

import numba
import numpy as np
import pytest

from kernels import cpu, reference
from kernels.activations import ACTIVATIONS
from kernels.cpu import _common, attention, ffn
from kernels.testing import assert_close, attention_case, ffn_case, softmax_case
from kernels.versions import families

DTYPES = [np.float32, np.float64]
VERSIONS = families("cpu")


def versions(family):
    return pytest.mark.parametrize("version", list(VERSIONS[family].values()), ids=lambda v: v.name)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every output the kernels allocate starts as NaN, so an unwritten element fails the comparison."""
    monkeypatch.setattr(_common, "empty", lambda shape, dtype: np.full(shape, np.nan, dtype=dtype))


def test_the_package_functions_are_registered_versions():
    for family, names in (("softmax", ["softmax"]), ("attention", ["attention_forward", "attention_backward"]),
                          ("ffn", ["ffn_forward", "ffn_backward"])):
        registered = [v.functions for v in VERSIONS[family].values()]
        assert any(all(getattr(cpu, name) is fns[name] for name in names) for fns in registered), family


@versions("softmax")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_softmax(version, dtype, masked):
    x, mask = softmax_case(np.random.default_rng(0), (2, 3, 5, 13), dtype, masked)
    assert_close("softmax", version.softmax(x, 0.7, mask), reference.softmax(x, 0.7, mask))


def _tiles(fn, block_q, block_k):
    """fn with the tile sizes set, for a version that has these knobs."""
    params = inspect.signature(fn).parameters
    knobs = {k: v for k, v in (("block_q", block_q), ("block_k", block_k)) if k in params}
    return lambda *args, **kwargs: fn(*args, **kwargs, **knobs)


@versions("attention")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tq,tk,blocks", [(13, 13, (4, 5)), (5, 13, (4, 5)), (13, 7, (3, 4)), (13, 13, (64, 64))])
def test_attention(version, dtype, causal, tq, tk, blocks):
    c = attention_case(np.random.default_rng(tq * tk), 3, 2, tq, tk, 7, dtype)
    args = (c["q"], c["k"], c["v"])
    mask = c["key_padding_mask"]
    o, lse = reference.attention_forward(*args, mask, causal)
    got_o, got_lse = _tiles(version.attention_forward, *blocks)(*args, mask, causal)
    assert_close("o", got_o, o)
    assert_close("lse", got_lse, lse)
    want = reference.attention_backward(*args, o, lse, c["do"], mask, causal)
    got = _tiles(version.attention_backward, *blocks)(*args, o, lse, c["do"], mask, causal)
    for name, g, w in zip(["dq", "dk", "dv"], got, want):
        assert_close(name, g, w)


@versions("attention")
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_without_mask_and_custom_scale(version, dtype):
    c = attention_case(np.random.default_rng(5), 2, 2, 9, 11, 7, dtype, padding=False)
    args = (c["q"], c["k"], c["v"])
    o, lse = reference.attention_forward(*args, scale=0.3)
    assert_close("o", version.attention_forward(*args, scale=0.3)[0], o)
    want = reference.attention_backward(*args, o, lse, c["do"], scale=0.3)
    got = version.attention_backward(*args, o, lse, c["do"], scale=0.3)
    for name, g, w in zip(["dq", "dk", "dv"], got, want):
        assert_close(name, g, w)


@versions("attention")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (3, 1), (6, 3)])
def test_grouped_query_attention(version, dtype, causal, heads, kv_heads):
    """k, v with fewer heads than q, read in place: the kernels against the reference (which repeats them),
    with tiles smaller than the sequence and trailing padding (whole key tiles skipped)."""
    c = attention_case(np.random.default_rng(heads), 2, heads, 11, 13, 5, dtype, kv_heads=kv_heads)
    args = (c["q"], c["k"], c["v"])
    mask = c["key_padding_mask"]
    mask[0] = np.arange(13) >= 6        # sequence 0: 6 real keys, then padding; sequence 1: all padded
    o, lse = reference.attention_forward(*args, mask, causal)
    got_o, got_lse = _tiles(version.attention_forward, 4, 3)(*args, mask, causal)
    assert_close("o", got_o, o)
    assert_close("lse", got_lse, lse)
    want = reference.attention_backward(*args, o, lse, c["do"], mask, causal)
    got = _tiles(version.attention_backward, 4, 3)(*args, o, lse, c["do"], mask, causal)
    for name, g, w in zip(["dq", "dk", "dv"], got, want):
        assert g.shape == w.shape, name
        assert_close(name, g, w)


@versions("attention")
def test_attention_refuses_head_counts_that_do_not_divide(version):
    c = attention_case(np.random.default_rng(0), 1, 3, 4, 4, 2, np.float32, kv_heads=2)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        version.attention_forward(c["q"], c["k"], c["v"])
    with pytest.raises(ValueError, match="multiple of Hkv"):
        version.attention_backward(c["q"], c["k"], c["v"], c["q"], c["q"][..., 0], c["do"])


@versions("ffn")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_ffn(version, dtype, activation):
    c = ffn_case(np.random.default_rng(6), 13, 7, 11, dtype)
    params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
    y, h_pre = reference.ffn_forward(*params, activation)
    got_y, got_h_pre = version.ffn_forward(*params, activation)
    assert_close("y", got_y, y)
    assert_close("h_pre", got_h_pre, h_pre)
    want = reference.ffn_backward(*params, h_pre, c["dy"], activation)
    got = version.ffn_backward(*params, h_pre, c["dy"], activation)
    for name, g, w in zip(["dx", "dw1", "db1", "dw2", "db2"], got, want):
        assert_close(name, g, w)


@numba.njit
def _elementwise_exp32(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _common.exp32(x[i])
    return out


@numba.njit
def _elementwise_normal_cdf_pdf32(z):
    cdf, pdf = np.empty_like(z), np.empty_like(z)
    for i in range(z.shape[0]):
        cdf[i], pdf[i] = ffn._normal_cdf_pdf32(z[i])
    return cdf, pdf


def test_float32_exp_and_normal_cdf_are_accurate_over_the_whole_range():
    """The vectorisable float32 exp and standard normal CDF/PDF against float64, elementwise (not only in
    the norm-wise measure of the kernel tests): exp within 1e-7 relative (measured 6.0e-8) and an exact 0
    for -inf; Phi and phi within 4e-7 absolute (measured 2.8e-7 and 3.8e-8); Phi(z) + Phi(-z) = 1 exactly."""
    from scipy.special import ndtr

    x = np.linspace(-87.0, 88.0, 1_000_001).astype(np.float32)
    assert np.abs(_elementwise_exp32(x) / np.exp(x.astype(np.float64)) - 1).max() < 1e-7
    assert _elementwise_exp32(np.array([-np.inf, -200.0, 0.0], dtype=np.float32)).tolist() == [0.0, 0.0, 1.0]

    z = np.linspace(-12.0, 12.0, 400_001).astype(np.float32)
    cdf, pdf = _elementwise_normal_cdf_pdf32(z)
    z64 = z.astype(np.float64)
    assert cdf.dtype == pdf.dtype == np.float32
    assert np.abs(cdf - ndtr(z64)).max() < 4e-7
    assert np.abs(pdf - np.exp(-0.5 * z64 * z64) / np.sqrt(2 * np.pi)).max() < 4e-7
    assert np.array_equal(cdf + cdf[::-1], np.ones_like(cdf))


def test_bad_inputs_are_rejected():
    c = ffn_case(np.random.default_rng(7), 3, 2, 4, np.float32)
    params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
    with pytest.raises(ValueError):
        cpu.ffn_forward(*params, "swish")
    with pytest.raises(TypeError):
        cpu.ffn_forward(c["x"].astype(np.float64), *params[1:])
    with pytest.raises(TypeError):
        cpu.softmax(np.arange(4))


@pytest.mark.parametrize("name,kernels", [("v1", ("_attention_forward", "_attention_backward")),
                                          ("v2", ("_forward_compacted", "_backward_compacted")),
                                          ("v3", ("_forward_in_place", "_backward_in_place"))])
def test_blas_inside_the_attention_kernels_runs_on_one_thread_per_task(monkeypatch, name, kernels):
    """The attention kernels call BLAS from every parallel task (v1, v2: np.dot, through SciPy's OpenBLAS;
    v3: _blas.gemm, through NumPy's); during a kernel that library is limited to the calling thread (nested
    thread pools fight over the cores), and the user's setting comes back afterwards."""
    from kernels import blas_threads

    if name == "v3":
        if blas_threads._CONTROL is None:
            pytest.skip("NumPy is not using its bundled OpenBLAS")
        get, put = blas_threads._CONTROL
    else:
        if _common.SCIPY_OPENBLAS is None:
            pytest.skip("SciPy is not using its bundled OpenBLAS")
        get, put = _common.SCIPY_OPENBLAS.scipy_openblas_get_num_threads, \
            _common.SCIPY_OPENBLAS.scipy_openblas_set_num_threads
    before = get()
    seen = []

    def spy(*args):
        seen.append(get())

    for kernel in kernels:
        monkeypatch.setattr(attention, kernel, spy)
    version = VERSIONS["attention"][name]
    c = attention_case(np.random.default_rng(0), 1, 1, 4, 4, 2, np.float32)
    put(2)
    try:
        version.attention_forward(c["q"], c["k"], c["v"])
        version.attention_backward(c["q"], c["k"], c["v"], c["q"], c["q"][..., 0], c["do"])
        assert seen == [1, 1]
        assert get() == 2
    finally:
        put(before)


# ------------------------------------------- layer norm (+ residual) and cross-entropy (CPU only, no registry)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_kernels(dtype, with_residual):
    from kernels.cpu import layernorm

    rng = np.random.default_rng(5)
    x, residual, dy = (rng.standard_normal((2, 37, 24)).astype(dtype) for _ in range(3))
    weight, bias = (rng.standard_normal(24).astype(dtype) for _ in range(2))
    residual = residual if with_residual else None
    got = layernorm.layer_norm_forward(x, weight, bias, 1e-5, residual)
    want = reference.layer_norm_forward(x.reshape(-1, 24), weight, bias, 1e-5,
                                        None if residual is None else residual.reshape(-1, 24))
    for name, g, w in zip(("y", "mean", "rstd"), got, want):
        assert_close(f"layer_norm {name}", g.reshape(w.shape), w)
    got = layernorm.layer_norm_backward(x, weight, want[1], want[2], dy, residual)
    want = reference.layer_norm_backward(x.reshape(-1, 24), weight, want[1], want[2], dy.reshape(-1, 24),
                                         None if residual is None else residual.reshape(-1, 24))
    for name, g, w in zip(("ds", "dweight", "dbias"), got, want):
        assert_close(f"layer_norm backward {name}", g.reshape(w.shape), w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_kernels(dtype, smoothing):
    from kernels.cpu import cross_entropy

    rng = np.random.default_rng(6)
    logits = (4 * rng.standard_normal((29, 53))).astype(dtype)
    logits[3, 7] = 90.0  # one dominant logit: exp(x - max) must not overflow, the others underflow to 0
    target = rng.integers(0, 53, 29)
    dloss = rng.standard_normal(29).astype(dtype)
    got, want = cross_entropy.cross_entropy_forward(logits, target, smoothing), \
        reference.cross_entropy_forward(logits, target, smoothing)
    for name, g, w in zip(("loss", "lse"), got, want):
        assert_close(f"cross_entropy {name}", g, w)
    assert_close("cross_entropy backward", cross_entropy.cross_entropy_backward(logits, target, want[1], dloss, smoothing),
                 reference.cross_entropy_backward(logits, target, want[1], dloss, smoothing))


@pytest.mark.parametrize("m,n", [(3, 7), (7, 3), (5, 5)])
def test_transposed_product_is_gT_x_in_either_orientation(m, n):
    from kernels.gemm import transposed_product

    rng = np.random.default_rng(m * n)
    g, x = rng.standard_normal((11, m)), rng.standard_normal((11, n))
    got = transposed_product(g, x)
    assert got.flags.c_contiguous and got.shape == (m, n)
    np.testing.assert_allclose(got, g.T @ x, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_rows_is_bitwise_numpy_add_at_with_repeated_rows(dtype):
    from kernels.cpu.embedding import add_rows

    rng = np.random.default_rng(3)
    rows = rng.integers(0, 5, size=40)  # 40 positions over 5 ids: every id repeated
    values = rng.standard_normal((40, 6)).astype(dtype)
    want = rng.standard_normal((7, 6)).astype(dtype)  # a table that does not start at zero; rows 5, 6 untouched
    got = want.copy()
    np.add.at(want, rows, values)
    add_rows(got, rows, values)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------ products into NumPy's OpenBLAS from njit code (attention v3)
@numba.njit
def _call_gemm(product, a, b, c, alpha, beta, trans_a, trans_b):
    product(a, b, c, alpha, beta, trans_a, trans_b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_on_strided_operands(dtype, trans_a, trans_b, beta):
    """C = alpha op(A) op(B) + beta C with A, B, C rows of wider arrays (row stride > width), against NumPy;
    and the np.dot stand-in, used where NumPy has no OpenBLAS of its own, agrees."""
    from kernels.cpu import _blas

    rng = np.random.default_rng(int(trans_a) * 2 + int(trans_b))
    m, k, n = 5, 7, 3
    a_full = rng.standard_normal((k, m + 4) if trans_a else (m, k + 4)).astype(dtype)
    b_full = rng.standard_normal((n, k + 2) if trans_b else (k, n + 2)).astype(dtype)
    a = a_full[:, 1:m + 1] if trans_a else a_full[:, 1:k + 1]     # strided views: the rows are not adjacent
    b = b_full[:, :k] if trans_b else b_full[:, :n]
    want_c = rng.standard_normal((m, n + 3)).astype(dtype)
    want = 0.5 * (a.T if trans_a else a) @ (b.T if trans_b else b) + beta * want_c[:, :n]
    assert _blas.AVAILABLE  # the wheels of NumPy on PyPI bundle OpenBLAS; elsewhere only the stand-in is tested
    for product in (_blas.gemm, _blas.gemm_numpy):
        c = want_c.copy()
        _call_gemm(product, a, b, c[:, :n], 0.5, beta, trans_a, trans_b)
        np.testing.assert_allclose(c[:, :n], want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
        np.testing.assert_array_equal(c[:, n:], want_c[:, n:])  # the columns past the view are untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_v3_reads_split_heads_in_place_and_returns_them_ready_to_merge(dtype, causal):
    """The heads as the layers split them, x.reshape(B, T, H, D).transpose(0, 2, 1, 3) (a strided view), give
    the reference's results; o and the gradients come back laid out (B, T, H, D), so merging the heads
    again is a view. With padding, and grouped-query heads."""
    rng = np.random.default_rng(7)
    b, h, hkv, t, d = 2, 4, 2, 11, 5
    split = lambda x, heads: x.reshape(b, t, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    q, do = (split(rng.standard_normal((b, t, h * d)).astype(dtype), h) for _ in range(2))
    k, v = (split(rng.standard_normal((b, t, hkv * d)).astype(dtype), hkv) for _ in range(2))
    mask = rng.random((b, t)) < 0.3
    v3 = VERSIONS["attention"]["v3"]
    o, lse = _tiles(v3.attention_forward, 4, 3)(q, k, v, mask, causal)
    want_o, want_lse = reference.attention_forward(q, k, v, mask, causal)
    assert_close("o", o, want_o)
    assert_close("lse", lse, want_lse)
    got = _tiles(v3.attention_backward, 4, 3)(q, k, v, o, lse, do, mask, causal)
    want = reference.attention_backward(q, k, v, want_o, want_lse, do, mask, causal)
    for name, g, w in zip(["dq", "dk", "dv"], got, want):
        assert_close(name, g, w)
    for name, x in zip(["o", "dq", "dk", "dv"], (o,) + tuple(got)):
        assert x.transpose(0, 2, 1, 3).flags.c_contiguous, name
