"""Every op's forward and backward against PyTorch, in float32 and float64, and dtype preservation.

Each case runs the same function in both libraries on the same inputs, then backpropagates the same random
upstream gradient; outputs and every input gradient must agree (float32: rtol 1e-5, atol 1e-5; float64:
rtol 1e-10). In float32, outputs and gradients must stay float32.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers import CASES, SETTINGS, assert_close, run_minitx, run_torch

import minitx as mx
import minitx.functional as F

torch = pytest.importorskip("torch")


def _compare(case, arrays, kwargs, dtype):
    out, upstream, grads, inputs = run_minitx(case, arrays, kwargs, dtype)
    t_out, t_grads = run_torch(case, arrays, kwargs, dtype, upstream)
    assert out.shape == tuple(t_out.shape)
    assert_close(out.numpy(), t_out.detach().numpy(), dtype, f"{case.name}: forward")
    assert len(grads) == len(t_grads) >= 1
    for i, (g, tg) in enumerate(zip(grads, t_grads)):
        assert tg is not None
        assert isinstance(g, np.ndarray) and g.shape == tuple(tg.shape), f"{case.name}: grad {i} shape"
        assert_close(g, tg.numpy(), dtype, f"{case.name}: gradient of input {i}")
    return out, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=repr)
@SETTINGS
@given(data=st.data())
def test_forward_and_backward_match_torch(case, dtype, data):
    arrays, kwargs = case.draw(data)
    out, grads = _compare(case, arrays, kwargs, dtype)
    # dtype preservation: no silent upcast of the result or of any gradient
    assert out.dtype == dtype, f"{case.name}: output is {out.dtype}"
    assert isinstance(out.data, np.ndarray)
    for g in grads:
        assert g.dtype == dtype, f"{case.name}: gradient is {g.dtype}"


def test_the_comparison_can_fail():
    """The torch comparison is not vacuous: a minitx function that differs from torch's is caught."""
    case = next(c for c in CASES if c.name == "tanh")
    wrong = type(case)("tanh", case.draw, lambda x: x.tanh() * 1.0001, case.torch_fn)
    arrays = [np.linspace(-2, 2, 7)]
    with pytest.raises(AssertionError, match="forward"):
        _compare(wrong, arrays, {}, np.float64)


def test_cross_entropy_of_permuted_logits_matches_torch():
    """Regression: logits that are a permuted view (non-contiguous) once got a wrong backward, because the
    gradient's in-place target update was written into a reshaped copy instead of the array itself."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4, 5))
    target = rng.integers(0, 3, (5, 4))
    x = mx.Tensor(z, requires_grad=True)
    loss = F.cross_entropy(x.permute(2, 1, 0), target, reduction="sum", label_smoothing=0.1)
    loss.backward()
    tx = torch.tensor(z, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(tx.permute(2, 1, 0).reshape(-1, 3), torch.as_tensor(target).reshape(-1),
                                               reduction="sum", label_smoothing=0.1)
    t_loss.backward()
    np.testing.assert_allclose(loss.item(), t_loss.item(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_relu_of_minus_infinity_is_zero():
    """Regression: relu computed as x·(x > 0) gave -inf·0 = NaN."""
    x = mx.Tensor(np.array([-np.inf, -1.0, 0.0, 2.0, np.inf], dtype=np.float32))
    np.testing.assert_array_equal(x.relu().numpy(), [0.0, 0.0, 0.0, 2.0, np.inf])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_splits_the_gradient_among_ties_like_amax(dtype):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=dtype)
    t = mx.Tensor(x, requires_grad=True)
    t.max(axis=1).backward(np.array([1.0, 3.0], dtype=dtype))
    tx = torch.tensor(x, requires_grad=True)
    tx.amax(dim=1).backward(torch.tensor([1.0, 3.0], dtype=tx.dtype))
    np.testing.assert_allclose(t.grad, [[0, 0.5, 0.5], [1, 1, 1]])
    np.testing.assert_allclose(t.grad, tx.grad.numpy())


def test_dropout_matches_torch_given_the_same_mask():
    """PyTorch draws its own random numbers, so we give it minitx's mask and compare the rest."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 2.0, (4, 6)).astype(np.float32)
    up = rng.standard_normal((4, 6)).astype(np.float32)
    t = mx.Tensor(x, requires_grad=True)
    y = F.dropout(t, 0.4)
    y.backward(up)
    keep = y.numpy() != 0
    assert keep.any() and not keep.all()
    tx = torch.tensor(x, requires_grad=True)
    ty = tx * torch.as_tensor(keep) / (1 - 0.4)
    ty.backward(torch.as_tensor(up))
    assert y.dtype == np.float32 and t.grad.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-6)


def test_dropout_p_edge_cases_and_eval_mode():
    x = mx.Tensor(np.ones((3, 4)), requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(y.numpy(), 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 0.0)


def test_dropout_keeps_the_expected_fraction_and_repeats_under_a_seed():
    mx.manual_seed(7)
    a = F.dropout(mx.ones(200, 200), 0.3).numpy()
    mx.manual_seed(7)
    b = F.dropout(mx.ones(200, 200), 0.3).numpy()
    np.testing.assert_array_equal(a, b)
    assert abs((a != 0).mean() - 0.7) < 0.01
    assert abs(a.mean() - 1.0) < 0.02  # E[y] = x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cast_and_layer_norm_without_affine_keep_dtypes(dtype):
    other = np.float64 if dtype == np.float32 else np.float32
    x = mx.Tensor(np.arange(6.0, dtype=dtype).reshape(2, 3), requires_grad=True)
    y = x.astype(other)
    assert y.dtype == other
    (y * 2.0).sum().backward()
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(x.grad, 2.0)
    assert x.float().dtype == np.float32 and x.double().dtype == np.float64
    assert F.layer_norm(x, 3).dtype == dtype


def test_cross_entropy_mean_over_all_ignored_targets_is_nan_like_torch():
    logits = mx.Tensor(np.zeros((2, 3)))
    with np.errstate(invalid="ignore"):  # 0/0, as documented
        loss = F.cross_entropy(logits, np.array([-100, -100]))
    t_loss = torch.nn.functional.cross_entropy(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([-100, -100]))
    assert np.isnan(loss.item()) and torch.isnan(t_loss)


def test_split_with_an_int_gives_torch_sized_pieces():
    x = mx.Tensor(np.arange(14.0).reshape(7, 2))
    pieces = F.split(x, 3)
    assert [p.shape for p in pieces] == [(3, 2), (3, 2), (1, 2)]
    np.testing.assert_array_equal(pieces[2].numpy(), [[12.0, 13.0]])


@pytest.mark.parametrize("index", [
    "mask_full", "mask_rows", "ids_repeated", "slice_then_ids", "ids_then_int", "negative_slice_step"])
def test_getitem_variants_against_torch(index):
    """Indexing kinds drawn rarely by Hypothesis, each run on a fixed (4, 3, 2) input."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 2))
    up_rng = np.random.default_rng(2)
    mask = rng.random((4, 3, 2)) < 0.5
    rows = rng.random(4) < 0.5
    ids = np.array([2, 0, 2, -1, 2])
    build = {
        "mask_full": lambda lib: lib(mask),
        "mask_rows": lambda lib: lib(rows),
        "ids_repeated": lambda lib: lib(ids),
        "slice_then_ids": lambda lib: (slice(1, None), lib(np.array([0, 0, 2]))),
        "ids_then_int": lambda lib: (lib(np.array([3, 3])), 1),
        "negative_slice_step": None,
    }
    t = mx.Tensor(x, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    if index == "negative_slice_step":  # torch has no negative steps: compare with NumPy's own flip
        y = t[::-2, :, ::-1]
        np.testing.assert_array_equal(y.numpy(), x[::-2, :, ::-1])
        up = up_rng.standard_normal(y.shape)
        y.backward(up)
        expected = np.zeros_like(x)
        expected[::-2, :, ::-1] = up
        np.testing.assert_array_equal(t.grad, expected)
        return
    y = t[build[index](mx.Tensor)]
    ty = tx[build[index](torch.as_tensor)]
    up = up_rng.standard_normal(y.shape)
    y.backward(up)
    ty.backward(torch.as_tensor(up))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert np.abs(t.grad).sum() > 0


# ---------------------------------------------------------------------- issue 16: engine defects vs PyTorch
def test_a_learnable_float_attention_mask_gets_its_gradient_like_torch():
    """Regression: a float attn_mask was added as a constant, so a learnable bias got grad None."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    bias = rng.standard_normal((3, 3))
    mq, mk, mv, mb = (mx.Tensor(a, requires_grad=True) for a in (q, k, v, bias))
    F.scaled_dot_product_attention(mq, mk, mv, attn_mask=mb, is_causal=True, fused=False).sum().backward()
    tq, tk, tv, tb = (torch.tensor(a, requires_grad=True) for a in (q, k, v, bias))
    causal = torch.ones(3, 3, dtype=torch.bool).triu(1)
    tF = torch.nn.functional
    tF.scaled_dot_product_attention(tq, tk, tv, attn_mask=tb.masked_fill(causal, -np.inf)).sum().backward()
    assert mb.grad is not None
    np.testing.assert_allclose(mb.grad, tb.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(mb.grad[causal.numpy()], 0.0)  # hidden keys: no gradient
    np.testing.assert_allclose(mq.grad, tq.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_an_integer_attention_mask_is_refused_like_torch(dtype):
    """Regression: an integer mask (0/1) was silently added to the scores as if it were a float bias."""
    q = mx.Tensor(np.zeros((1, 2, 2)), requires_grad=True)
    mask = np.array([[0, 1], [0, 0]], dtype=dtype)
    with pytest.raises(TypeError, match=r"attn_mask.*bool.*float.*" + np.dtype(dtype).name):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask, fused=False)
    with pytest.raises(TypeError, match="attn_mask"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=mx.Tensor(mask), fused=False)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_with_every_target_ignored_has_a_zero_gradient_like_torch(reduction, label_smoothing):
    """Regression: the mean's 1/count was 1/0, which made the gradient NaN. The loss itself matches PyTorch:
    NaN for "mean" (0/0: no target is counted), 0 for "sum", zeros for "none"."""
    z = np.random.default_rng(0).standard_normal((2, 3))
    target = np.array([-100, -100])
    x = mx.Tensor(z, requires_grad=True)
    with np.errstate(invalid="ignore"):
        loss = F.cross_entropy(x, target, reduction=reduction, label_smoothing=label_smoothing)
    loss.sum().backward()
    tx = torch.tensor(z, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(tx, torch.as_tensor(target), reduction=reduction,
                                               label_smoothing=label_smoothing)
    t_loss.sum().backward()
    np.testing.assert_array_equal(loss.numpy(), t_loss.detach().numpy())  # NaN == NaN here
    np.testing.assert_array_equal(x.grad, tx.grad.numpy())
    np.testing.assert_array_equal(x.grad, 0.0)


@pytest.mark.parametrize("form", ["tensor_tensor", "tensor_scalar", "scalar_tensor"])
def test_pow_at_base_zero_has_torch_gradients(form):
    """Regression: d/da a**0 at a = 0 was 0·0⁻¹ = NaN, and d/db 0**b was 0·ln 0 = NaN or -inf; PyTorch
    defines both as 0 (for b >= 0); a negative exponent keeps its infinite slopes, as in PyTorch."""
    a = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0])
    b = np.array([0.0, 0.5, 1.0, 2.0, -1.0, 0.0, 3.0])
    if form == "tensor_scalar":
        a, b = np.zeros(3), 0.0
    elif form == "scalar_tensor":
        a, b = 0.0, np.array([0.0, 0.5, 2.0, -1.0])
    wrap_mx = lambda v: mx.Tensor(v, requires_grad=True) if isinstance(v, np.ndarray) else v  # noqa: E731
    wrap_t = lambda v: torch.tensor(v, requires_grad=True) if isinstance(v, np.ndarray) else v  # noqa: E731
    ma, mb, ta, tb = wrap_mx(a), wrap_mx(b), wrap_t(a), wrap_t(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = ma**mb
        out.sum().backward()
    t_out = ta**tb
    t_out.sum().backward()
    np.testing.assert_array_equal(out.numpy(), t_out.detach().numpy())
    for m, t in ((ma, ta), (mb, tb)):
        if isinstance(m, mx.Tensor):
            np.testing.assert_array_equal(m.grad, t.grad.numpy())


@pytest.mark.parametrize("method", ["sum", "mean", "max", "min", "prod", "logsumexp", "std_0", "softmax",
                                    "log_softmax", "cumsum", "argmax", "argmin"])
@pytest.mark.parametrize("axis", [0, -1])
def test_reductions_of_a_0d_tensor_along_axis_0_or_minus_1_like_torch(method, axis):
    """Regression: a 0-d tensor's only axes, 0 and -1 (as PyTorch allows), crashed or were refused."""
    name, extra = ("std", {"correction": 0}) if method == "std_0" else (method, {})
    x = mx.Tensor(np.array(1.5), requires_grad=True)
    tx = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    y, t_y = getattr(x, name)(axis, **extra), getattr(tx, name)(axis, **extra)
    if name in ("max", "min"):
        t_y = t_y.values  # torch's max(dim) also returns indices; minitx's max(axis) is torch's amax
    assert y.shape == () and y.item() == t_y.item()
    if name not in ("argmax", "argmin"):
        y.backward()
        t_y.backward()
        assert x.grad == tx.grad.item()


def test_float_ops_promote_integer_tensors_to_the_default_float_dtype_like_torch():
    """Regression: ``ints / 2`` and ``ints.exp()`` were float64 while ``ints * 0.5`` was float32, so mixing
    them raised a dtype error. Every op whose result is not an integer gives the default float dtype."""
    ints = mx.Tensor(np.array([1, 2, 4]))
    t_ints = torch.tensor([1, 2, 4])
    results = {
        "div": (ints / 2, t_ints / 2), "rdiv": (2 / ints, 2 / t_ints), "div_ints": (ints / ints, t_ints / t_ints),
        "mul": (ints * 0.5, t_ints * 0.5), "exp": (ints.exp(), t_ints.exp()), "log": (ints.log(), t_ints.log()),
        "sqrt": (ints.sqrt(), t_ints.sqrt()), "tanh": (ints.tanh(), t_ints.tanh()),
        "sigmoid": (ints.sigmoid(), t_ints.sigmoid()), "sin": (ints.sin(), t_ints.sin()),
        "cos": (ints.cos(), t_ints.cos()), "rsqrt": (ints.rsqrt(), t_ints.rsqrt()),
        "mean": (ints.mean(), t_ints.float().mean()), "std": (ints.std(), t_ints.float().std()),
        "var": (ints.var(), t_ints.float().var()), "softmax": (ints.softmax(), t_ints.float().softmax(-1)),
        "logsumexp": (ints.logsumexp(-1), t_ints.logsumexp(-1)), "gelu": (F.gelu(ints), None),
    }
    for name, (y, t_y) in results.items():
        assert y.dtype == np.float32, f"{name}: {y.dtype}"
        if t_y is not None:
            assert t_y.dtype == torch.float32
            np.testing.assert_allclose(y.numpy(), t_y.numpy(), rtol=1e-6, err_msg=name)
    assert (ints / 2 + ints * 0.5).dtype == np.float32  # this mix raised before
    mx.set_default_dtype(np.float64)
    assert (ints / 2).dtype == np.float64 and ints.exp().dtype == np.float64


# --------------------------------------------------- issue 16: where the new ops have no derivative, as PyTorch
def _grads_both(mx_fn, torch_fn, *arrays):
    """Value and input gradients (for a sum of the outputs) from minitx and from PyTorch, float64."""
    xs = [mx.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    y = mx_fn(*xs)
    y.sum().backward()
    txs = [torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    t_y = torch_fn(*txs)
    t_y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), t_y.detach().numpy())
    return [x.grad for x in xs], [t.grad.numpy() for t in txs]


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_elementwise_max_and_min_split_the_gradient_at_ties_like_torch(name):
    a, b = [1.0, 2.0, 3.0, -1.0], [1.0, 1.0, 4.0, -1.0]
    (da, db), (ta, tb) = _grads_both(getattr(F, name), getattr(torch, name), a, b)
    np.testing.assert_array_equal(da, ta)
    np.testing.assert_array_equal(db, tb)
    assert da[0] == db[0] == 0.5


def test_min_reduction_shares_the_gradient_among_ties_like_amin():
    (g,), (tg,) = _grads_both(lambda x: x.min(axis=1), lambda x: x.amin(dim=1), [[1.0, 1.0, 2.0], [0.5, 3.0, 0.5]])
    np.testing.assert_array_equal(g, tg)
    np.testing.assert_array_equal(g, [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])


def test_clamp_passes_the_gradient_at_its_bounds_like_torch():
    x = [-1.0, 0.0, 0.5, 1.0, 2.0]
    for low, high in ((0.0, 1.0), (None, 1.0), (0.0, None), (1.0, 0.0)):
        (g,), (tg,) = _grads_both(lambda v: v.clamp(low, high), lambda v: v.clamp(low, high), x)
        np.testing.assert_array_equal(g, tg, err_msg=f"clamp({low}, {high})")
    (g,), _ = _grads_both(lambda v: v.clamp(0.0, 1.0), lambda v: v.clamp(0.0, 1.0), x)
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 0])
    with pytest.raises(ValueError, match="clamp"):
        mx.Tensor(np.ones(2)).clamp()


@pytest.mark.parametrize("x", [[0.0, 2.0, 3.0], [0.0, 0.0, 3.0], [2.0, 0.0, -3.0], [1.0, 2.0, 3.0]])
def test_prod_with_zeros_has_the_gradient_of_the_others_product_like_torch(x):
    (g,), (tg,) = _grads_both(lambda v: v.prod(), lambda v: v.prod(), x)
    np.testing.assert_array_equal(g, tg)
    (g,), (tg,) = _grads_both(lambda v: v.prod(axis=1), lambda v: v.prod(dim=1), [x, x[::-1]])
    np.testing.assert_array_equal(g, tg)


def test_std_of_equal_values_has_a_zero_gradient_like_torch():
    (g,), (tg,) = _grads_both(lambda v: v.std(axis=1), lambda v: v.std(dim=1), [[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]])
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_allclose(g, tg, rtol=1e-12)


def test_leaky_relu_at_zero_and_normalize_of_a_zero_vector_like_torch():
    (g,), (tg,) = _grads_both(lambda v: F.leaky_relu(v, 0.1), lambda v: torch.nn.functional.leaky_relu(v, 0.1),
                              [0.0, -2.0, 3.0])
    np.testing.assert_array_equal(g, tg)
    assert g[0] == 0.1
    (g,), (tg,) = _grads_both(lambda v: F.normalize(v, axis=1), lambda v: torch.nn.functional.normalize(v, dim=1),
                              [[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(g, tg, rtol=1e-12)
    assert g[0, 0] == 1e12  # the divisor is eps


def test_logsumexp_is_stable_and_its_all_minus_inf_group_has_a_zero_gradient():
    """Huge values do not overflow; an all -inf group gives -inf, as in PyTorch, and a zero gradient, like
    minitx's softmax of such a row (PyTorch gives NaN)."""
    x = mx.Tensor(np.array([[1000.0, 1000.0], [-np.inf, -np.inf]]), requires_grad=True)
    with np.errstate(divide="ignore"):
        y = x.logsumexp(1)
    np.testing.assert_allclose(y.numpy(), [1000 + np.log(2), -np.inf])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.5, 0.5], [0.0, 0.0]])


def test_one_hot_argmin_chunk_squeeze_flatten_like_torch():
    ids = np.array([[0, 2], [3, 1]])
    np.testing.assert_array_equal(F.one_hot(ids).numpy(), torch.nn.functional.one_hot(torch.as_tensor(ids)).numpy())
    assert F.one_hot(mx.Tensor(ids), 6).shape == (2, 2, 6) and F.one_hot(ids).dtype == np.int64
    with pytest.raises(ValueError, match=r"num_classes=3.*\[0, 3\]"):
        F.one_hot(ids, 3)
    with pytest.raises(TypeError, match="integer"):
        F.one_hot(np.array([0.0, 1.0]))
    x = np.array([[3.0, 1.0, 1.0], [0.0, 5.0, -2.0]])
    np.testing.assert_array_equal(mx.Tensor(x).argmin(axis=1).numpy(), torch.as_tensor(x).argmin(dim=1).numpy())
    assert mx.Tensor(x).argmin().item() == 5
    for n, chunks in ((7, 3), (6, 4), (2, 5), (5, 1)):
        sizes = [p.shape[0] for p in mx.Tensor(np.arange(n)).chunk(chunks)]
        assert sizes == [p.shape[0] for p in torch.arange(n).chunk(chunks)], (n, chunks)
    assert mx.Tensor(np.zeros((1, 3, 1))).squeeze().shape == (3,)
    assert mx.Tensor(np.zeros((1, 3, 1))).squeeze((0, -1)).shape == (3,)
    with pytest.raises(ValueError, match="axis 1 has size 3"):
        mx.Tensor(np.zeros((1, 3, 1))).squeeze(1)
    assert mx.Tensor(np.array(2.0)).flatten().shape == tuple(torch.tensor(2.0).flatten().shape) == (1,)
    assert mx.Tensor(np.zeros((2, 3, 4, 5))).flatten(1, 2).shape == (2, 12, 5)


def test_gather_tril_and_expand_refuse_bad_input_with_clear_messages():
    x = mx.Tensor(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="gather: index must be an integer tensor"):
        x.gather(1, np.zeros((2, 1)))
    for bad in (3, -1):  # PyTorch takes no negative index here either
        with pytest.raises(IndexError, match=r"gather: index values must lie in \[0, 3\)"):
            x.gather(1, np.array([[bad], [0]]))
    with pytest.raises(ValueError, match="only on axis 1"):
        x.gather(1, np.zeros((3, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="tril: needs a tensor of at least 2 axes"):
        mx.Tensor(np.zeros(3)).tril()
    with pytest.raises(ValueError, match=r"expand: a tensor of shape \(2, 3\) cannot be expanded to \(2, 4\)"):
        x.expand(2, 4)
    with pytest.raises(TypeError, match="nll_loss: target must hold integer"):
        F.nll_loss(x, np.zeros(2))
    with pytest.raises(ValueError, match="normalize: p must be a positive finite number"):
        F.normalize(x, p=float("inf"))
    with pytest.raises(ValueError, match="flatten.*start axis 2 comes after end axis 1"):
        mx.Tensor(np.zeros((2, 3, 4))).flatten(2, 1)
