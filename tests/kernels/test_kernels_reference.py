"""The NumPy references against independent computations (loops, finite differences)."""
import math

import numpy as np
import pytest

from kernels import reference
from kernels.testing import attention_case, ffn_case, relative_error


def _attention_by_loops(q, k, v, key_padding_mask, causal, scale):
    """Row-by-row attention with Python loops, written independently of reference.py; query head h reads
    key/value head h // g (g query heads per key/value head)."""
    batch, heads, tq, _ = q.shape
    tk = k.shape[2]
    g = heads // k.shape[1]
    o = np.zeros_like(q)
    lse = np.full((batch, heads, tq), -np.inf)
    for b in range(batch):
        for h in range(heads):
            for i in range(tq):
                visible = [j for j in range(tk)
                           if not key_padding_mask[b, j] and not (causal and j > i + tk - tq)]
                if not visible:
                    continue
                scores = np.array([scale * q[b, h, i] @ k[b, h // g, j] for j in visible])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                o[b, h, i] = sum(w * v[b, h // g, j] for w, j in zip(weights, visible))
                lse[b, h, i] = math.log(sum(math.exp(s) for s in scores))
    return o, lse


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tq,tk,kv_heads", [(5, 5, 2), (3, 6, 2), (6, 4, 2), (5, 6, 1)])
def test_attention_forward_matches_loops(causal, tq, tk, kv_heads):
    case = attention_case(np.random.default_rng(1), 2, 2, tq, tk, 3, np.float64, kv_heads=kv_heads)
    mask = case["key_padding_mask"]
    o, lse = reference.attention_forward(case["q"], case["k"], case["v"], mask, causal)
    o_loop, lse_loop = _attention_by_loops(case["q"], case["k"], case["v"], mask, causal, 1 / math.sqrt(3))
    assert relative_error(o, o_loop) < 1e-13
    assert relative_error(lse, lse_loop) < 1e-13
    assert np.isneginf(lse[-1]).all() and (o[-1] == 0).all()  # last sequence fully padded


def _central_difference(f, x, eps=1e-6):
    """d f / d x by central differences; f returns a scalar, x is perturbed in place and restored."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        saved = x[idx]
        x[idx] = saved + eps
        up = f()
        x[idx] = saved - eps
        down = f()
        x[idx] = saved
        grad[idx] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads,kv_heads", [(1, 1), (4, 2)])
def test_attention_backward_matches_finite_differences(causal, heads, kv_heads):
    case = attention_case(np.random.default_rng(2), 2, heads, 4, 5, 3, np.float64, kv_heads=kv_heads)
    q, k, v, do, mask = case["q"], case["k"], case["v"], case["do"], case["key_padding_mask"]
    mask[0, 1] = True
    scale = 0.7

    def loss():
        return float((reference.attention_forward(q, k, v, mask, causal, scale)[0] * do).sum())

    o, lse = reference.attention_forward(q, k, v, mask, causal, scale)
    grads = reference.attention_backward(q, k, v, o, lse, do, mask, causal, scale)
    for name, x, g in zip("qkv", (q, k, v), grads):
        assert relative_error(g, _central_difference(loss, x)) < 1e-8, name
    assert (grads[0][-1] == 0).all()  # fully masked rows: zero gradient


@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
def test_ffn_backward_matches_finite_differences(activation):
    c = ffn_case(np.random.default_rng(3), 5, 4, 6, np.float64)
    params = [c["x"], c["w1"], c["b1"], c["w2"], c["b2"]]

    def loss():
        return float((reference.ffn_forward(*params, activation)[0] * c["dy"]).sum())

    _, h_pre = reference.ffn_forward(*params, activation)
    grads = reference.ffn_backward(*params, h_pre, c["dy"], activation)
    for name, x, g in zip(["x", "w1", "b1", "w2", "b2"], params, grads):
        assert relative_error(g, _central_difference(loss, x)) < 1e-8, name


def test_activations_match_their_definitions():
    h = np.linspace(-4, 4, 81)
    gelu = np.array([0.5 * t * (1 + math.erf(t / math.sqrt(2))) for t in h])
    assert relative_error(reference.activation_forward(h, "gelu"), gelu) < 1e-15
    assert (reference.activation_forward(h, "relu") == np.where(h > 0, h, 0)).all()
    tanh_approx = reference.activation_forward(h, "gelu_tanh")
    assert np.abs(tanh_approx - gelu).max() < 1e-3  # the tanh form approximates the erf form
    with pytest.raises(ValueError):
        reference.activation_forward(h, "swish")


def test_softmax_rows_sum_to_one_and_masked_rows_are_zero():
    x = np.random.default_rng(4).standard_normal((3, 6))
    mask = np.array([[False] * 6, [True, False, True, False, True, False], [True] * 6])
    y = reference.softmax(x, 2.0, mask)
    assert relative_error(y.sum(axis=1), [1.0, 1.0, 0.0]) < 1e-15
    assert (y[mask] == 0).all()
    e = np.exp(2.0 * x[0])
    assert relative_error(y[0], e / e.sum()) < 1e-15
