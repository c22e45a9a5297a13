"""Every op's backward against central finite differences in float64, and proof that the checker can fail."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers import CASES, SETTINGS, broadcast_shapes, normal, seed

import minitx as mx
import minitx.functional as F
from minitx import GradcheckError, gradcheck
from minitx.gradcheck import GradcheckResult
from minitx.tensor import Function


def _check(case, arrays, kwargs, mode="full"):
    inputs = [mx.Tensor(a, requires_grad=True) if a.dtype.kind == "f" else a for a in arrays]
    result = gradcheck(lambda *xs: case.mx_fn(*xs, **kwargs), inputs, mode=mode)
    assert result.ok
    return result


@pytest.mark.parametrize("case", CASES, ids=repr)
@SETTINGS
@given(data=st.data())
def test_gradcheck_every_op(case, data):
    arrays, kwargs = case.draw(data)
    _check(case, arrays, kwargs)


BROADCAST_PAIRS = [((3, 1, 4), (2, 1)), ((), (2, 3)), ((1,), (3, 1)), ((2, 3), (3,)), ((2, 1, 3), (1, 4, 1))]


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow", "maximum", "minimum"])
@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
def test_gradcheck_binary_ops_on_fixed_broadcast_shapes(name, shapes):
    """Hypothesis draws broadcasts at random; these shapes make sure the classic ones are always covered."""
    case = next(c for c in CASES if c.name == name)
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 2.0, shapes[0])
    b = rng.uniform(0.5, 2.0, shapes[1]) * rng.choice([-1.0, 1.0], shapes[1])
    _check(case, [a, b], {})


@pytest.mark.parametrize("p", [0.3, 0.5])
@SETTINGS
@given(shape=st.sampled_from([(3,), (2, 3), (2, 1, 4)]), s=seed())
def test_gradcheck_dropout_with_a_repeated_mask(p, shape, s):
    """Reseeding before each call repeats the mask, so dropout is a fixed linear map finite differences can see."""

    def fn(x):
        mx.manual_seed(s % 1000)
        return F.dropout(x, p)

    x = mx.Tensor(np.random.default_rng(s).uniform(0.5, 2.0, shape), requires_grad=True)
    assert gradcheck(fn, [x]).ok


def test_dropout_backward_is_the_forward_mask():
    """y = x·m/(1-p): the gradient is the same scaled mask, element for element."""
    mx.manual_seed(3)
    x = mx.Tensor(np.ones((20, 30)), requires_grad=True)
    y = F.dropout(x, 0.25)
    y.sum().backward()
    kept = y.numpy() != 0
    assert 0.6 < kept.mean() < 0.9  # the mask really drops some and keeps most
    np.testing.assert_array_equal(x.grad, np.where(kept, 1 / 0.75, 0.0))
    np.testing.assert_array_equal(y.numpy(), np.where(kept, 1 / 0.75, 0.0))


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("attention", "layer_norm", "matmul", "cross_entropy")],
                         ids=repr)
@SETTINGS
@given(data=st.data())
def test_directional_gradcheck_passes_on_correct_ops(case, data):
    arrays, kwargs = case.draw(data)
    result = _check(case, arrays, kwargs, mode="directional")
    assert result.input_index == -1


def test_attention_with_a_fully_masked_row_has_zero_output_and_finite_gradients():
    rng = np.random.default_rng(0)
    q, k, v = (mx.Tensor(rng.standard_normal((1, 2, 3, 2)), requires_grad=True) for _ in range(3))
    mask = np.zeros((3, 3), dtype=bool)
    mask[1] = True  # query 1 may look nowhere

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, fused=False)

    out = fn(q, k, v)
    np.testing.assert_array_equal(out.numpy()[:, :, 1], 0.0)
    assert np.isfinite(out.numpy()).all()
    assert gradcheck(fn, [q, k, v]).ok
    assert all(np.isfinite(t.grad).all() for t in (q, k, v))


def test_softmax_of_an_all_minus_inf_row_is_zero_with_zero_gradient():
    x = mx.Tensor(np.array([[-np.inf, -np.inf, -np.inf], [0.0, 1.0, -np.inf]]), requires_grad=True)
    y = F.softmax(x, axis=-1)
    np.testing.assert_array_equal(y.numpy()[0], 0.0)
    np.testing.assert_allclose(y.numpy()[1], [1 / (1 + np.e), np.e / (1 + np.e), 0.0])
    y.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(x.grad[0], 0.0)


# ------------------------------------------------------------------------------- the checker can fail
class SquareMissingFactor2(Function):
    """z = x², with the factor 2 of dz/dx = 2x forgotten."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, grad):
        return grad * self.x


class MulSignError(Function):
    """z = a·b, with a sign error in dz/db."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        return grad * self.b, -grad * self.a


class SquareCorrect(Function):
    """The right backward, to show the checker separates right from wrong with the same inputs."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, grad):
        return grad * 2 * self.x


def _x(shape=(2, 3), s=0):
    return mx.Tensor(np.random.default_rng(s).uniform(0.5, 2.0, shape), requires_grad=True)


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_gradcheck_raises_on_a_factor_2_error(mode):
    with pytest.raises(GradcheckError, match="FAILED"):
        gradcheck(SquareMissingFactor2.apply, [_x()], mode=mode)
    assert gradcheck(SquareCorrect.apply, [_x()], mode=mode).ok


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_gradcheck_raises_on_a_sign_error(mode):
    with pytest.raises(GradcheckError):
        gradcheck(MulSignError.apply, [_x(s=1), _x(s=2)], mode=mode)


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_gradcheck_reports_failure_without_raising(mode):
    x = _x()
    result = gradcheck(SquareMissingFactor2.apply, [x], mode=mode, raise_exception=False)
    assert isinstance(result, GradcheckResult)
    assert result.ok is False
    assert "FAILED" in str(result)
    # the analytic value is half the numeric one, and the reported error is their difference
    assert result.analytic == pytest.approx(result.numeric / 2, rel=1e-6)
    assert result.max_abs_error == pytest.approx(abs(result.numeric - result.analytic))
    if mode == "full":
        assert result.input_index == 0
        assert result.element in set(np.ndindex(*x.shape))
    else:
        assert result.input_index == -1


def test_gradcheck_only_fails_the_wrong_input():
    """A sign error in dz/db only: with a held constant (no grad), the check of b alone still fails,
    and with b held constant the check of a passes."""
    a, b = _x(s=1), _x(s=2)
    a_const = mx.Tensor(a.numpy())
    b_const = mx.Tensor(b.numpy())
    assert not gradcheck(MulSignError.apply, [a_const, b], raise_exception=False).ok
    assert gradcheck(MulSignError.apply, [a, b_const]).ok


def test_gradcheck_detects_a_wrong_broadcast_reduction():
    """An Add whose backward forgets to sum b's gradient back over the broadcast axis."""

    class AddNoUnbroadcast(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, grad):
            return grad, grad[:1]  # b (1, 3): should be grad.sum(axis=0, keepdims=True)

    a, b = _x((4, 3)), _x((1, 3), s=1)
    assert not gradcheck(AddNoUnbroadcast.apply, [a, b], raise_exception=False).ok


def test_gradcheck_rejects_float32_and_inputs_without_grad():
    with pytest.raises(TypeError, match="float32"):
        gradcheck(lambda x: x * x, [mx.Tensor(np.ones(3, dtype=np.float32), requires_grad=True)])
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(lambda x: x * x, [mx.Tensor(np.ones(3))])
    with pytest.raises(ValueError, match="mode"):
        gradcheck(lambda x: x * x, [_x()], mode="sideways")


@SETTINGS
@given(shapes=broadcast_shapes(2), s=seed())
def test_gradcheck_of_a_composite_expression(shapes, s):
    """Several ops chained, with a reused intermediate: the engine's accumulation, not just single ops."""
    rng = np.random.default_rng(s)
    a = mx.Tensor(normal(rng, shapes[0]), requires_grad=True)
    b = mx.Tensor(normal(rng, shapes[1]), requires_grad=True)

    def fn(a, b):
        h = (a * b).tanh()
        return (h * h + h.sigmoid() * a - b.exp() / 3).sum(axis=-1) if h.ndim else h * h + a

    assert gradcheck(fn, [a, b]).ok
