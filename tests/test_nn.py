"""minitx.nn without PyTorch: gradcheck of every layer (masks included), properties of attention and of the
positional encoding, and the KV cache."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx import Tensor, gradcheck, nn


def randn(*shape, seed=0, requires_grad=False) -> Tensor:
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=requires_grad)


def check_module(module: nn.Module, forward, inputs=(), mode="full"):
    """gradcheck (float64) of forward(*inputs) with respect to the inputs and every parameter of ``module``.

    The parameters themselves are gradcheck inputs: the function loads whatever values gradcheck passes
    for them (the originals, or perturbed copies) into the module before running it.
    """
    module.double()
    params = list(module.parameters())
    saved = [p.data for p in params]

    def f(*args):
        for p, value in zip(params, args):
            p.data = value.data
        return forward(*args[len(params):])

    try:
        gradcheck(f, params + list(inputs), mode=mode)
    finally:
        for p, data in zip(params, saved):
            p.data = data


def padding(batch, steps):
    mask = np.zeros((batch, steps), dtype=bool)
    mask[-1, steps - 2:] = True
    return mask


# ---------------------------------------------------------------------------------------------- gradcheck
def test_gradcheck_linear_layer_norm_and_feed_forward():
    x = randn(2, 3, 4, requires_grad=True)
    for layer in (nn.Linear(4, 3), nn.LayerNorm(4), nn.FeedForward(4, 6, activation="gelu"),
                  nn.FeedForward(4, 6, activation="gelu_tanh")):
        check_module(layer, layer, [x])


def test_gradcheck_modern_layers_rms_norm_gated_feed_forward_and_rotary():
    x = randn(2, 3, 4, requires_grad=True)
    for layer in (nn.RMSNorm(4), nn.RMSNorm((3, 4), eps=0.1), nn.GatedFeedForward(4, 6),
                  nn.GatedFeedForward(4, 6, activation="gelu", bias=True), nn.FeedForward(4, 6, bias=False)):
        check_module(layer, layer, [x])
    for interleaved in (False, True):
        rope = nn.RotaryEmbedding(4, base=100.0, interleaved=interleaved)
        gradcheck(lambda h: rope(h, 5), [x])


def llama_style_block(num_kv_heads=2) -> nn.DecoderBlock:
    return nn.DecoderBlock(8, 4, 12, num_kv_heads=num_kv_heads, norm=nn.RMSNorm, bias=False,
                           rotary=nn.RotaryEmbedding(2, base=100000.0), activation="silu", gated=True)


def test_gradcheck_grouped_query_attention_with_rotary_and_a_kv_cache():
    """The gradient reaches this step's inputs, the weights AND the cached keys/values (B, H_kv, T_past, d_k)."""
    mha = nn.MultiHeadAttention(8, 4, num_kv_heads=2, rotary=nn.RotaryEmbedding(2, base=10.0))
    x = randn(2, 2, 8, requires_grad=True)
    past = (randn(2, 2, 3, 2, seed=1, requires_grad=True), randn(2, 2, 3, 2, seed=2, requires_grad=True))
    check_module(mha, lambda h, pk, pv: mha(h, is_causal=True, past_kv=(pk, pv)), [x, *past])


def test_gradcheck_llama_style_blocks_directional():
    x = randn(2, 5, 8, requires_grad=True)
    block = llama_style_block()
    check_module(block, block, [x], mode="directional")
    layer = nn.TransformerEncoderLayer(8, 4, 12, dropout=0.0, norm_first=True, norm=nn.RMSNorm, num_kv_heads=1,
                                       rotary=nn.RotaryEmbedding(2), activation="silu", gated=True, bias=False)
    check_module(layer, lambda h: layer(h, key_padding_mask=padding(2, 5)), [x], mode="directional")


def test_gradcheck_embeddings_and_positional_encodings():
    ids = np.array([[1, 0, 3], [2, 2, 0]])
    embedding = nn.Embedding(4, 5)
    check_module(embedding, lambda: embedding(ids))
    learned = nn.LearnedPositionalEmbedding(6, 5)
    check_module(learned, learned, [randn(2, 3, 5, requires_grad=True)])
    sinusoidal = nn.PositionalEncoding(5, max_len=6).double()
    gradcheck(sinusoidal, [randn(2, 3, 5, requires_grad=True)])


@pytest.mark.parametrize("masking", ["key_padding", "causal", "float"])
def test_gradcheck_multi_head_attention_with_masks(masking):
    mha = nn.MultiHeadAttention(4, 2)
    q, kv = randn(2, 3, 4, requires_grad=True), randn(2, 3, 4, seed=1, requires_grad=True)
    kwargs = {"key_padding": dict(key_padding_mask=padding(2, 3)), "causal": dict(is_causal=True),
              "float": dict(attn_mask=np.random.default_rng(2).standard_normal((3, 3)))}[masking]
    check_module(mha, lambda a, b: mha(a, b, b, **kwargs), [q, kv])


@pytest.mark.parametrize("norm_first", [False, True])
def test_gradcheck_encoder_stack_and_decoder_block_directional(norm_first):
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8))
    x = randn(2, 5, 8, requires_grad=True)
    check_module(encoder, lambda h: encoder(h, key_padding_mask=padding(2, 5)), [x], mode="directional")
    block = nn.DecoderBlock(8, 2)
    check_module(block, block, [x], mode="directional")


# --------------------------------------------------------------------------------------------- properties
@settings(max_examples=15, deadline=None)
@given(steps=st.integers(2, 7), cut=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_causal_outputs_never_depend_on_future_tokens(steps, cut, seed):
    cut = min(cut, steps - 1)
    block = nn.DecoderBlock(8, 2)
    encoder_layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    x = np.random.default_rng(seed).standard_normal((2, steps, 8)).astype(np.float32)
    changed = x.copy()
    changed[:, cut:] = np.random.default_rng(seed + 1).standard_normal(changed[:, cut:].shape)
    for run in (block, lambda h: encoder_layer(h, is_causal=True)):
        a, b = run(Tensor(x)).numpy(), run(Tensor(changed)).numpy()
        np.testing.assert_array_equal(a[:, :cut], b[:, :cut])
        assert not np.allclose(a[:, cut:], b[:, cut:])


def test_attention_rows_sum_to_one_and_a_fully_masked_row_is_zero_not_nan():
    mha = nn.MultiHeadAttention(8, 2)
    x = randn(2, 4, 8).astype(np.float32)
    kpm = padding(2, 4)
    mask = np.zeros((4, 4), dtype=bool)
    mask[2] = True  # query 2 may look at nothing
    out, weights = mha(x, key_padding_mask=kpm, attn_mask=mask, need_weights=True)
    w = weights.numpy()  # (B, H, Tq, Tk)
    assert not np.isnan(out.numpy()).any() and not np.isnan(w).any()
    np.testing.assert_allclose(w[:, :, [0, 1, 3]].sum(-1), 1, rtol=1e-6)
    np.testing.assert_array_equal(w[:, :, 2], 0)
    np.testing.assert_array_equal(w[1, :, :, 2:], 0)  # padded keys get no weight
    np.testing.assert_allclose(out.numpy()[:, 2], np.broadcast_to(mha.out_proj.bias.numpy(), (2, 8)), rtol=1e-6)


def test_padding_never_changes_the_unpadded_outputs():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2)
    x = randn(2, 5, 8).astype(np.float32).numpy()
    kpm = padding(2, 5)
    changed = x.copy()
    changed[kpm] = 100.0
    a = encoder(Tensor(x), key_padding_mask=kpm).numpy()
    b = encoder(Tensor(changed), key_padding_mask=kpm).numpy()
    np.testing.assert_array_equal(a[~kpm], b[~kpm])


@pytest.mark.parametrize("offset", [1, 2, 5, 17])
def test_sinusoidal_pe_at_pos_plus_k_is_a_fixed_rotation_of_pe_at_pos(offset):
    """PE(pos + k) = R_k PE(pos) with R_k block-diagonal: one 2×2 rotation by k·ω_i per frequency pair."""
    d = 16
    pe = nn.sinusoidal_table(64, d)
    omega = np.exp(np.arange(0, d, 2) * (-np.log(10000.0) / d))
    rotation = np.zeros((d, d))
    for i, w in enumerate(omega):
        c, s = np.cos(offset * w), np.sin(offset * w)
        rotation[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[c, s], [-s, c]]
    np.testing.assert_allclose(pe[:-offset] @ rotation.T, pe[offset:], atol=1e-12)
    # the same map, fitted by least squares from positions 0…31, predicts every later position
    fitted, *_ = np.linalg.lstsq(pe[:32], pe[offset:32 + offset], rcond=None)
    np.testing.assert_allclose(pe[32:64 - offset] @ fitted, pe[32 + offset:], atol=1e-8)


def test_kv_cache_decoding_equals_the_full_causal_forward():
    block = nn.DecoderBlock(8, 2).double()
    x = randn(2, 6, 8)
    full = block(x).numpy()
    out, present = block(x[:, :3], use_cache=True)
    steps = [out.numpy()]
    for t in range(3, 6):
        out, present = block(x[:, t:t + 1], past_kv=present, use_cache=True)
        steps.append(out.numpy())
    assert present[0].shape == (2, 2, 6, 4)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_llama_style_kv_cache_decoding_equals_the_full_causal_forward(num_kv_heads):
    """Rotary positions continue after the cache; the cache holds num_kv_heads heads, not num_heads."""
    block = llama_style_block(num_kv_heads).double()
    x = randn(2, 6, 8)
    full = block(x).numpy()
    out, present = block(x[:, :3], use_cache=True)
    steps = [out.numpy()]
    for t in range(3, 6):
        out, present = block(x[:, t:t + 1], past_kv=present, use_cache=True)
        steps.append(out.numpy())
    assert present[0].shape == present[1].shape == (2, num_kv_heads, 6, 2)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-12, atol=1e-12)


def test_default_blocks_keep_their_parameter_names():
    """GPT, BERT and the Hugging Face loaders rely on these state_dict keys."""
    assert list(nn.DecoderBlock(8, 2).state_dict()) == [
        "ln_1.weight", "ln_1.bias", "attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight",
        "attn.k_proj.bias", "attn.v_proj.weight", "attn.v_proj.bias", "attn.out_proj.weight", "attn.out_proj.bias",
        "ln_2.weight", "ln_2.bias", "mlp.linear1.weight", "mlp.linear1.bias", "mlp.linear2.weight", "mlp.linear2.bias"]
    assert sorted(nn.TransformerEncoderLayer(8, 2, 16).state_dict()) == sorted(
        [f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")]
        + ["self_attn.out_proj.weight", "self_attn.out_proj.bias", "ff.linear1.weight", "ff.linear1.bias",
           "ff.linear2.weight", "ff.linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"])


def test_cross_attention_uses_the_memory_length():
    mha = nn.MultiHeadAttention(8, 4)
    out, weights = mha(randn(2, 3, 8).astype(np.float32), randn(2, 5, 8, seed=1).astype(np.float32),
                       need_weights=True)
    assert out.shape == (2, 3, 8) and weights.shape == (2, 4, 3, 5)


def test_dropout_only_in_training_mode():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5)
    x = randn(2, 4, 8).astype(np.float32)
    assert not np.allclose(layer(x).numpy(), layer(x).numpy())
    layer.eval()
    assert all(not m.training for m in layer.modules())
    np.testing.assert_array_equal(layer(x).numpy(), layer(x).numpy())


def test_feed_forward_accepts_exactly_the_kernels_activation_table():
    """functional.feed_forward and the fused kernels read one table (kernels/activations.py): every name in it
    (identity included, which the composed path used to refuse) gives the same FFN on both paths, and any
    other name is refused by both."""
    from kernels.activations import ACTIVATIONS
    from minitx import functional as F

    x, w1, b1, w2, b2 = (randn(*shape, seed=i) for i, shape in enumerate([(5, 4), (6, 4), (6,), (4, 6), (4,)]))
    for activation in ACTIVATIONS:
        composed = F.feed_forward(x, w1, b1, w2, b2, activation, fused=False)
        fused = F.feed_forward(x, w1, b1, w2, b2, activation, fused=True)
        np.testing.assert_allclose(composed.data, fused.data, rtol=1e-10, atol=1e-12, err_msg=activation)
    identity = F.feed_forward(x, w1, b1, w2, b2, "identity", fused=False).data
    np.testing.assert_allclose(identity, (x.data @ w1.data.T + b1.data) @ w2.data.T + b2.data, rtol=1e-12)
    for fused in (False, True):
        with pytest.raises(ValueError, match="activation must be one of .*'identity'.*got 'swish'"):
            F.feed_forward(x, w1, b1, w2, b2, "swish", fused=fused)
