"""The Llama-style parts against Hugging Face ``transformers`` (the oracle) and their defining properties:
RMSNorm, SwiGLU, the rotary embedding in both layouts and the q/k permutation between them, grouped-query
attention (composed, KV cache, fused), and a decoder layer assembled from the parts vs ``LlamaDecoderLayer``."""

from __future__ import annotations

import numpy as np
import pytest

import minitx.functional as F
from minitx import Tensor, nn

torch = pytest.importorskip("torch")
llama = pytest.importorskip("transformers.models.llama.modeling_llama")
from transformers import LlamaConfig  # noqa: E402

F32 = dict(rtol=1e-5, atol=1e-5)
BASE = 100000.0  # SmolLM2's RoPE base


def rand(*shape, seed=0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def tiny_config(num_kv_heads: int = 2) -> LlamaConfig:
    """D = 16, 4 query heads of size 4 sharing ``num_kv_heads`` key/value heads, SwiGLU hidden size 24."""
    config = LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=num_kv_heads,
                         rms_norm_eps=1e-5, rope_theta=BASE, max_position_embeddings=64, attention_bias=False,
                         mlp_bias=False, hidden_act="silu", vocab_size=8)
    config._attn_implementation = "eager"
    return config


def llama_block(config: LlamaConfig) -> nn.DecoderBlock:
    """A Llama decoder layer from minitx's parts: configuration of the GPT block, not a new class."""
    head_dim = config.hidden_size // config.num_attention_heads
    return nn.DecoderBlock(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                           num_kv_heads=config.num_key_value_heads, norm=nn.RMSNorm, bias=False,
                           rotary=nn.RotaryEmbedding(head_dim, base=BASE), activation="silu", gated=True,
                           eps=config.rms_norm_eps)


HF_TO_MINITX = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "self_attn.o_proj": "attn.out_proj",
                "self_attn": "attn"}


def minitx_name(hf_name: str) -> str:
    for theirs, ours in HF_TO_MINITX.items():
        if hf_name.startswith(theirs):
            return ours + hf_name[len(theirs):]
    return hf_name


def copy_from_hf(ours: nn.Module, theirs) -> None:
    state = {minitx_name(k): v.detach().numpy() for k, v in theirs.state_dict().items()}
    missing, unexpected = ours.load_state_dict(state)
    assert not missing and not unexpected


# ------------------------------------------------------------------------------------------- the norm, the FFN
def test_rms_norm_matches_llama_rms_norm_and_torch():
    theirs = llama.LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(rand(16, seed=1)))
    ours = nn.RMSNorm(16, eps=1e-5)
    copy_from_hf(ours, theirs)
    x = rand(2, 3, 16)
    xt, xm = torch.tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    out, ref = ours(xm), theirs(xt)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), **F32)
    cotangent = rand(2, 3, 16, seed=2)
    out.backward(cotangent)
    ref.backward(torch.tensor(cotangent))
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), **F32)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), **F32)
    np.testing.assert_allclose(out.numpy(), torch.nn.RMSNorm(16, eps=1e-5)(torch.tensor(x)).detach().numpy()
                               * rand(16, seed=1), **F32)


def test_rms_norm_is_layer_norm_of_a_zero_mean_input():
    """With mean(x) = 0 both norms divide by the same √(mean(x²) + ε)."""
    x = rand(3, 8, dtype=np.float64)
    x -= x.mean(-1, keepdims=True)
    np.testing.assert_allclose(F.rms_norm(Tensor(x), 8, eps=1e-5).numpy(), F.layer_norm(Tensor(x), 8, eps=1e-5).numpy(),
                               rtol=1e-12, atol=1e-14)


def test_swiglu_matches_llama_mlp():
    theirs = llama.LlamaMLP(tiny_config())
    ours = nn.GatedFeedForward(16, 24)
    copy_from_hf(ours, theirs)
    x = rand(2, 3, 16)
    xt, xm = torch.tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    out, ref = ours(xm), theirs(xt)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), **F32)
    out.backward(np.ones(out.shape, np.float32))
    ref.sum().backward()
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), **F32)
    for name, param in theirs.named_parameters():
        np.testing.assert_allclose(ours.state_dict()[name], param.detach().numpy())
        np.testing.assert_allclose(dict(ours.named_parameters())[name].grad, param.grad.numpy(), err_msg=name, **F32)


# ------------------------------------------------------------------------------------------------------ rotary
@pytest.mark.parametrize("offset", [0, 7])
def test_rotary_angles_and_rotate_half_match_transformers(offset):
    """cos/sin vs LlamaRotaryEmbedding (which works in float32), then the rotation vs apply_rotary_pos_emb."""
    steps, head_dim = 5, 8
    positions = np.arange(offset, offset + steps)
    hf_rope = llama.LlamaRotaryEmbedding(LlamaConfig(hidden_size=16, num_attention_heads=2, rope_theta=BASE))
    cos_hf, sin_hf = hf_rope(torch.zeros(1, dtype=torch.float32), torch.tensor(positions)[None])  # (1, T, d)
    cos, sin = nn.rotary_cos_sin(positions, head_dim, BASE)  # (T, d/2)
    np.testing.assert_allclose(np.concatenate([cos, cos], -1), cos_hf[0].numpy(), atol=2e-6)
    np.testing.assert_allclose(np.concatenate([sin, sin], -1), sin_hf[0].numpy(), atol=2e-6)

    q, k = rand(2, 3, steps, head_dim, dtype=np.float64), rand(2, 3, steps, head_dim, seed=1, dtype=np.float64)
    full = [torch.tensor(np.concatenate([c, c], -1))[None] for c in (cos, sin)]  # HF's (1, T, d) layout
    q_hf, k_hf = llama.apply_rotary_pos_emb(torch.tensor(q), torch.tensor(k), *full)
    rope = nn.RotaryEmbedding(head_dim, base=BASE)
    np.testing.assert_allclose(rope(Tensor(q), offset).numpy(), q_hf.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(rope(Tensor(k), offset).numpy(), k_hf.numpy(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_scores_depend_only_on_the_relative_position(interleaved):
    """⟨R_m q, R_n k⟩ is the same for every (m, n) with the same m - n, and it does change with m - n."""
    rope = nn.RotaryEmbedding(8, base=BASE, interleaved=interleaved)
    q, k = rand(1, 1, 1, 8, dtype=np.float64), rand(1, 1, 1, 8, seed=1, dtype=np.float64)

    def score(m, n):
        return float((rope(Tensor(q), m).numpy() * rope(Tensor(k), n).numpy()).sum())

    for shift in (1, 5, 40):
        for m, n in ((3, 0), (2, 2), (0, 4)):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-12, abs=1e-12)
    assert score(3, 0) != pytest.approx(score(2, 0), rel=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rope(Tensor(q), 9).numpy()), np.linalg.norm(q), rtol=1e-14)


def test_the_weight_permutation_moves_each_rotate_half_pair_to_adjacent_rows():
    """Head of size 4: rows (0, 2) and (1, 3) are the rotate-half pairs; after the permutation they are (0, 1)
    and (2, 3). Two heads are permuted separately; bias vectors go the same way; the inverse undoes it."""
    rows = np.arange(8)
    np.testing.assert_array_equal(nn.rotate_half_to_interleaved(rows, 2), [0, 2, 1, 3, 4, 6, 5, 7])
    w = rand(8, 3)
    np.testing.assert_array_equal(nn.rotate_half_to_interleaved(w, 2), w[[0, 2, 1, 3, 4, 6, 5, 7]])
    np.testing.assert_array_equal(nn.interleaved_to_rotate_half(nn.rotate_half_to_interleaved(w, 2), 2), w)
    with pytest.raises(ValueError, match="num_heads=3"):
        nn.rotate_half_to_interleaved(w, 3)


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_permuted_weights_with_interleaved_rotary_equal_original_weights_with_rotate_half(num_kv_heads):
    """What a GGUF file relies on: llama.cpp stores W_q, W_k permuted and rotates adjacent pairs."""
    def attention(interleaved):
        return nn.MultiHeadAttention(16, 4, bias=False, num_kv_heads=num_kv_heads,
                                     rotary=nn.RotaryEmbedding(4, base=BASE, interleaved=interleaved)).double()

    hf_style, gguf_style = attention(False), attention(True)
    state = hf_style.state_dict()
    state["q_proj.weight"] = nn.rotate_half_to_interleaved(state["q_proj.weight"], 4)
    state["k_proj.weight"] = nn.rotate_half_to_interleaved(state["k_proj.weight"], num_kv_heads)
    gguf_style.load_state_dict(state)
    x = Tensor(rand(2, 6, 16, dtype=np.float64))
    out_hf, (k_hf, _) = hf_style(x, is_causal=True, use_cache=True)
    out_gguf, (k_gguf, _) = gguf_style(x, is_causal=True, use_cache=True)
    np.testing.assert_allclose(out_gguf.numpy(), out_hf.numpy(), rtol=1e-12, atol=1e-13)
    # the rotated keys themselves are the same numbers in the other order
    perm = nn.rotate_half_to_interleaved(np.arange(4), 1)
    np.testing.assert_allclose(k_gguf.numpy(), k_hf.numpy()[..., perm], rtol=1e-12, atol=1e-13)
    unpermuted = attention(True)  # without the permutation the interleaved rotation gives other scores
    unpermuted.load_state_dict(hf_style.state_dict())
    assert not np.allclose(unpermuted(x, is_causal=True).numpy(), out_hf.numpy(), atol=1e-3)


# -------------------------------------------------------------------------------------- grouped-query attention
def test_gqa_equals_full_attention_with_each_kv_head_repeated():
    """num_kv_heads = 2 of 4 is, by definition, 4-head attention whose heads 2j and 2j + 1 share W_k, W_v rows."""
    gqa = nn.MultiHeadAttention(16, 4, num_kv_heads=2).double()
    full = nn.MultiHeadAttention(16, 4).double()
    state = gqa.state_dict()
    for name in ("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"):
        heads = state[name].reshape(2, 4, *state[name].shape[1:])  # (H_kv, d_k, …)
        state[name] = np.repeat(heads, 2, axis=0).reshape(16, *state[name].shape[1:])
    full.load_state_dict(state)
    x = Tensor(rand(2, 5, 16, dtype=np.float64))
    kpm = np.zeros((2, 5), bool)
    kpm[1, 3:] = True
    np.testing.assert_allclose(gqa(x, key_padding_mask=kpm, is_causal=True).numpy(),
                               full(x, key_padding_mask=kpm, is_causal=True).numpy(), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="num_kv_heads 3"):
        nn.MultiHeadAttention(16, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="enable_gqa"):
        F.scaled_dot_product_attention(Tensor(rand(1, 4, 2, 3)), Tensor(rand(1, 3, 2, 3)), Tensor(rand(1, 3, 2, 3)),
                                       enable_gqa=True)


def test_gqa_fused_attention_matches_the_composed_path_forward_and_backward():
    """The fused CPU kernel gets k, v repeated to every query head; the repeat's backward sums them back."""
    q, k, v = rand(2, 4, 5, 8), rand(2, 2, 5, 8, seed=1), rand(2, 2, 5, 8, seed=2)
    results = []
    for fused in (False, True):
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*ts, is_causal=True, enable_gqa=True, fused=fused)
        out.backward(rand(*out.shape, seed=3))
        results.append([out.numpy()] + [t.grad for t in ts])
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------------ the decoder layer
@pytest.mark.parametrize("num_kv_heads", [2, 1, 4])
def test_llama_block_from_parts_matches_llama_decoder_layer_with_kv_cache(num_kv_heads):
    """A 5-token prompt, then 3 decode steps with the KV cache: every step's output vs transformers' layer;
    the cache holds only the num_kv_heads heads."""
    config = tiny_config(num_kv_heads)
    torch.manual_seed(0)
    theirs = llama.LlamaDecoderLayer(config, layer_idx=0)
    with torch.no_grad():  # norms away from their all-ones initialisation, so γ is tested too
        for norm in (theirs.input_layernorm, theirs.post_attention_layernorm):
            norm.weight.uniform_(0.5, 1.5)
    ours = llama_block(config)
    copy_from_hf(ours, theirs)
    hf_rope = llama.LlamaRotaryEmbedding(config)
    cache = llama.DynamicCache(config=config)
    x = rand(2, 8, 16)
    prompt, present = 5, None
    for start, stop in ((0, prompt), (5, 6), (6, 7), (7, 8)):
        positions = torch.arange(start, stop)[None]
        mask = torch.full((stop - start, stop), -torch.inf).triu(1 + start)[None, None]  # causal, end-aligned
        ref = theirs(torch.tensor(x[:, start:stop]), attention_mask=mask, position_ids=positions, cache=cache,
                     use_cache=True, position_embeddings=hf_rope(torch.tensor(x), positions))
        out, present = ours(Tensor(x[:, start:stop]), past_kv=present, use_cache=True)
        np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), **F32, err_msg=f"steps {start}:{stop}")
        assert present[0].shape == (2, num_kv_heads, stop, 4)
    np.testing.assert_allclose(present[0].numpy(), cache.layers[0].keys.detach().numpy(), **F32)


def test_llama_block_gradients_match_llama_decoder_layer():
    config = tiny_config(2)
    torch.manual_seed(1)
    theirs = llama.LlamaDecoderLayer(config, layer_idx=0)
    ours = llama_block(config)
    copy_from_hf(ours, theirs)
    x = rand(2, 6, 16)
    xt, xm = torch.tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    positions = torch.arange(6)[None]
    mask = torch.full((6, 6), -torch.inf).triu(1)[None, None]
    ref = theirs(xt, attention_mask=mask, position_ids=positions,
                 position_embeddings=llama.LlamaRotaryEmbedding(config)(xt, positions))
    out = ours(xm)
    cotangent = rand(2, 6, 16, seed=5)
    out.backward(cotangent)
    ref.backward(torch.tensor(cotangent))
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), **F32)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), **F32)
    ours_params = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        np.testing.assert_allclose(ours_params[minitx_name(name)].grad, param.grad.numpy(), err_msg=name, rtol=1e-4,
                                   atol=1e-5)
