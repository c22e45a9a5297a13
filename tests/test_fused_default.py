"""The fused kernels are the default path (issue 17), and a whole training step agrees with the composed path.

A silent fallback to the composed ops (a mask or shape the kernel was never given, a changed default) is caught
by walking the graph a default step builds: it must hold the fused ops and none of the ops they replace.
"""

from __future__ import annotations

import numpy as np
import pytest

import minitx
from minitx import functional as F
from minitx import optim
from minitx.models import GPT, GPTConfig, SequenceEncoder
from minitx.ops import fused
from minitx.tensor import _reverse_topological_order

V, D, H, FF, L, T, B = 40, 16, 2, 32, 2, 64, 3  # T * T >= F.FUSED_ATTENTION_MIN_SCORES: the fused kernel's sizes
LR = 1e-2


def encoder():
    minitx.manual_seed(0)
    return SequenceEncoder(V, D, H, FF, L, drop_rate=0.0, max_len=T)


def gpt():
    minitx.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, max_len=T, d_model=D, num_heads=H, num_layers=L, dim_feedforward=FF, dropout=0.0,
                         activation="gelu"))


def batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, size=(B, T))
    mask = np.ones((B, T), dtype=np.int64)
    mask[0, -4:] = 0  # padding in one row
    return ids, mask, rng.integers(0, V, size=(B, T))


def ops_in_graph(loss):
    return [type(node._ctx).__name__ for node in _reverse_topological_order(loss) if node._ctx is not None]


@pytest.mark.parametrize("make", [encoder, gpt], ids=["encoder", "gpt"])
def test_the_default_step_runs_the_fused_kernels(make):
    ids, mask, targets = batch()
    loss = F.cross_entropy(make()(ids, mask), targets)
    names = ops_in_graph(loss)
    assert names.count("FusedAttention") == L and names.count("FusedFeedForward") == L, names
    assert "Softmax" not in names and "MatMul" not in names and "MaskedFill" not in names, names
    # every layer norm fused (the GPT's final one too), the post-norm residual adds inside them; the loss fused
    assert names.count("FusedLayerNorm") == (2 * L if make is encoder else 2 * L + 1), names
    assert names.count("FusedCrossEntropy") == 1, names
    assert "LayerNorm" not in names and "CrossEntropy" not in names and "LogSoftmax" not in names, names
    # the position embedding's add, and the pre-norm residual adds (post-norm ones are inside the layer norms)
    assert names.count("Add") == (1 if make is encoder else 1 + 2 * L), names


def test_the_default_adamw_updates_all_parameters_in_one_kernel_call(monkeypatch):
    """AdamW's default (foreach) path calls the multi-tensor kernel once per group, not update() per parameter."""
    from kernels.cpu import adam

    calls = []
    monkeypatch.setattr(adam, "_adam_lists", lambda *args: calls.append(len(args[0])))
    monkeypatch.setattr(optim.Adam, "update", lambda *args: pytest.fail("per-parameter update() was called"))
    model = encoder()
    ids, mask, targets = batch()
    F.cross_entropy(model(ids, mask), targets).backward()
    params = list(model.parameters())
    optim.AdamW(params, lr=LR).step()
    assert calls == [len(params)]


def test_attention_below_the_size_threshold_takes_the_composed_path_unless_asked():
    """Tq·Tk < FUSED_ATTENTION_MIN_SCORES: the default is the composed ops (faster there); fused=True still fuses."""
    rng = np.random.default_rng(0)
    t = int(np.sqrt(F.FUSED_ATTENTION_MIN_SCORES)) - 1
    q, k, v = (minitx.Tensor(rng.standard_normal((1, 2, t, 4)).astype(np.float32), requires_grad=True)
               for _ in range(3))
    assert "Softmax" in ops_in_graph(F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert ops_in_graph(F.scaled_dot_product_attention(q, k, v, is_causal=True, fused=True)) == ["FusedAttention"]


def test_fused_false_keeps_the_composed_path():
    ids, mask, targets = batch()
    with F.fused_kernels(False):
        names = ops_in_graph(F.cross_entropy(encoder()(ids, mask), targets))
    assert "FusedAttention" not in names and "FusedFeedForward" not in names
    assert "FusedLayerNorm" not in names and "FusedCrossEntropy" not in names
    assert names.count("Softmax") == L and names.count("MatMul") == 2 * L
    assert names.count("LayerNorm") == 2 * L and names.count("CrossEntropy") == 1


@pytest.mark.parametrize("make", [encoder, gpt], ids=["encoder", "gpt"])
def test_fused_and_composed_agree_on_a_whole_training_step(make):
    """Loss, every gradient and every parameter after one AdamW step, float32, fused vs composed.

    A gradient that is zero in exact arithmetic (the key projection's bias: softmax ignores a constant added
    to a row of scores) is rounding noise on both paths, and Adam turns noise into steps of ±lr; such
    parameters are compared by their gradients only.
    """
    ids, mask, targets = batch()
    results = {}
    for use_fused in (True, False):
        model = make()
        opt = optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-2)
        with F.fused_kernels(use_fused):
            loss = F.cross_entropy(model(ids, mask), targets)
            loss.backward()
        grads = {name: p.grad.copy() for name, p in model.named_parameters()}
        opt.step()
        results[use_fused] = loss.item(), grads, {name: p.numpy().copy() for name, p in model.named_parameters()}
    (loss_f, grads_f, params_f), (loss_c, grads_c, params_c) = results[True], results[False]
    np.testing.assert_allclose(loss_f, loss_c, rtol=1e-6)
    largest = max(np.abs(g).max() for g in grads_c.values())
    for name in grads_c:
        scale = np.abs(grads_c[name]).max()
        np.testing.assert_allclose(grads_f[name], grads_c[name], rtol=0, atol=2e-5 * scale + 1e-7 * largest,
                                   err_msg=name)
        if scale > 1e-5 * largest:
            # 1/1000 of the step lr·m̂/(√v̂ + ε): Adam's first step is ±lr wherever |g| >> ε, and the rounding of a
            # gradient near ε moves it by more than float32 rounding of the weights
            np.testing.assert_allclose(params_f[name], params_c[name], rtol=0, atol=1e-3 * LR, err_msg=name)
    assert sum(np.abs(g).max() <= 1e-5 * largest for g in grads_c.values()) <= L  # only the key biases


def test_the_kernels_run_on_the_cpu_package():
    """The fused ops pick the Numba CPU kernels for NumPy arrays (not a NumPy reference in disguise)."""
    from kernels import cpu

    assert fused.kernel_module(np.zeros(1, np.float32)) is cpu


# ------------------------------------------------------------- each fused op: gradcheck and PyTorch
def _attention_inputs(dtype, heads=2, kv_heads=2):
    rng = np.random.default_rng(2)
    q, k, v = (minitx.Tensor(rng.standard_normal((2, h, 5, 4)).astype(dtype), requires_grad=True)
               for h in (heads, kv_heads, kv_heads))
    kpm = np.zeros((2, 5), dtype=bool)
    kpm[1, -2:] = True
    return q, k, v, kpm


def _ffn_inputs(dtype):
    rng = np.random.default_rng(3)
    shapes = [(6, 4), (8, 4), (8,), (4, 8), (4,)]  # x (N, D), w1 (F, D), b1, w2 (D, F), b2
    return [minitx.Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_gradcheck(causal):
    from minitx.gradcheck import gradcheck

    q, k, v, kpm = _attention_inputs(np.float64)
    gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, key_padding_mask=kpm, is_causal=causal,
                                                             fused=True), [q, k, v])


@pytest.mark.parametrize("causal", [False, True])
def test_fused_grouped_query_attention_gradcheck(causal):
    from minitx.gradcheck import gradcheck

    q, k, v, kpm = _attention_inputs(np.float64, heads=4, kv_heads=2)
    gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, key_padding_mask=kpm, is_causal=causal,
                                                             fused=True, enable_gqa=True), [q, k, v])


@pytest.mark.parametrize("causal", [False, True])
def test_fused_grouped_query_attention_reads_kv_in_place_and_matches_composed_and_torch(causal):
    """4 query heads on 2 key/value heads: no repeated copy of k, v in the fused graph; output and gradients
    equal the composed path's (which repeats k and v) and PyTorch's (enable_gqa)."""
    torch = pytest.importorskip("torch")
    u = np.random.default_rng(6).standard_normal((2, 4, 5, 4)).astype(np.float32)
    results, names = {}, {}
    for use_fused in (True, False):
        q, k, v, kpm = _attention_inputs(np.float32, heads=4, kv_heads=2)
        out = F.scaled_dot_product_attention(q, k, v, key_padding_mask=kpm, is_causal=causal, fused=use_fused,
                                             enable_gqa=True)
        names[use_fused] = ops_in_graph(out)
        out.backward(u)
        results[use_fused] = out.numpy(), q.grad, k.grad, v.grad
    assert names[True] == ["FusedAttention"], names[True]
    assert "RepeatInterleave" in names[False], names[False]
    tq, tk, tv = (torch.tensor(t.numpy(), requires_grad=True) for t in (q, k, v))
    allowed = ~torch.tensor(kpm)[:, None, None, :]  # torch: True = attend
    if causal:
        allowed = allowed & torch.ones(5, 5, dtype=torch.bool).tril()
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=allowed, enable_gqa=True)
    ref.backward(torch.tensor(u))
    torch_results = ref.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()
    for name, fused_x, composed_x, torch_x in zip(["out", "dq", "dk", "dv"], results[True], results[False],
                                                   torch_results):
        assert fused_x.shape == composed_x.shape == torch_x.shape, name
        np.testing.assert_allclose(fused_x, composed_x, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(fused_x, torch_x, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_fused_feed_forward_gradcheck(activation):
    from minitx.gradcheck import gradcheck

    inputs = _ffn_inputs(np.float64)  # no pre-activation within 1e-6 of relu's kink: differences hold there
    gradcheck(lambda *t: F.feed_forward(*t, activation=activation, fused=True), inputs, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_matches_torch(causal):
    torch = pytest.importorskip("torch")
    q, k, v, kpm = _attention_inputs(np.float32)
    out = F.scaled_dot_product_attention(q, k, v, key_padding_mask=kpm, is_causal=causal, fused=True)
    u = np.random.default_rng(4).standard_normal(out.shape).astype(np.float32)
    out.backward(u)
    tq, tk, tv = (torch.tensor(t.numpy(), requires_grad=True) for t in (q, k, v))
    allowed = ~torch.tensor(kpm)[:, None, None, :]  # torch: True = attend
    if causal:
        allowed = allowed & torch.ones(5, 5, dtype=torch.bool).tril()
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=allowed)
    ref.backward(torch.tensor(u))
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), atol=2e-6)
    for ours, theirs in ((q, tq), (k, tk), (v, tv)):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_fused_feed_forward_matches_torch(activation):
    torch = pytest.importorskip("torch")
    inputs = _ffn_inputs(np.float32)
    out = F.feed_forward(*inputs, activation=activation, fused=True)
    u = np.random.default_rng(5).standard_normal(out.shape).astype(np.float32)
    out.backward(u)
    x, w1, b1, w2, b2 = (torch.tensor(t.numpy(), requires_grad=True) for t in inputs)
    act = {"relu": torch.relu, "gelu": torch.nn.functional.gelu,
           "gelu_tanh": lambda h: torch.nn.functional.gelu(h, approximate="tanh")}[activation]
    ref = torch.nn.functional.linear(act(torch.nn.functional.linear(x, w1, b1)), w2, b2)
    ref.backward(torch.tensor(u))
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), atol=1e-5)
    for ours, theirs in zip(inputs, (x, w1, b1, w2, b2)):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), atol=2e-5)


def test_the_embedding_gradient_uses_the_compiled_scatter_add(monkeypatch):
    """Embedding's backward on the CPU goes through kernels.cpu.embedding, not np.add.at."""
    from kernels.cpu import embedding

    calls = []
    real = embedding.add_rows
    monkeypatch.setattr(embedding, "add_rows", lambda *args: (calls.append(args[0].shape), real(*args)))
    monkeypatch.setattr(np.add, "at", lambda *args: pytest.fail("np.add.at was called"), raising=False)
    ids, mask, targets = batch()
    model = gpt()
    F.cross_entropy(model(ids, mask), targets).backward()
    assert (V, D) in calls
