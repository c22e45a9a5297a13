"""The array-level decode step (minitx/models/llama_decode.py) against the layer path it replaces during
generation: the same logits, step after step, for float32 and for quantised layers, on a small random Llama
(SmolLM2 itself: tests/test_smollm2.py)."""
import numpy as np
import pytest

from kernels.testing import q4_1_case, q8_0_case
from minitx import manual_seed, nn, no_grad
from minitx.models.llama import Llama, LlamaConfig
from minitx.models.llama_decode import LlamaDecoder
from minitx.nn.quantized import Q4_1Linear, Q8_0Linear, QuantizedGatedFeedForward

CONFIG = LlamaConfig(vocab_size=50, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, dim_feedforward=96,
                     max_len=40, rope_base=1000.0)


def small_llama(quantized: bool = False) -> Llama:
    manual_seed(0)
    model = Llama(CONFIG).eval()
    if quantized:
        rng = np.random.default_rng(0)

        def q4(out_features, in_features):
            case = q4_1_case(rng, 1, out_features, in_features, np.float32)
            return Q4_1Linear(case["scale"], case["minimum"], case["packed"])
        d, f, kv = CONFIG.d_model, CONFIG.dim_feedforward, CONFIG.num_kv_heads * CONFIG.head_dim
        for block in model.blocks:
            attn = block.attn
            attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj = q4(d, d), q4(kv, d), q4(kv, d), q4(d, d)
            block.mlp = QuantizedGatedFeedForward(q4(f, d), q4(f, d), q4(d, f))
        case = q8_0_case(rng, 1, CONFIG.vocab_size, d, np.float32)
        model.lm_head = Q8_0Linear(case["scale"], case["quants"])
    return model


def relative_error(ours, theirs) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("quantized", [False, True])
def test_decode_steps_equal_the_layer_path(quantized):
    model = small_llama(quantized)
    prompt = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (2, 5))  # B = 2 sequences
    decoder = LlamaDecoder(model, capacity=6)  # too small on purpose: the buffers must grow
    with no_grad():
        first = decoder.prefill(prompt)
        logits, past = model(prompt, use_cache=True)
        assert relative_error(first, logits.data[:, -1]) < 1e-6
        tokens = logits.data[:, -1].argmax(-1)
        for _ in range(12):
            fast = decoder.step(tokens)  # (B, V)
            logits, past = model(tokens[:, None], past_kv=past, use_cache=True)
            assert fast.shape == (2, CONFIG.vocab_size)
            assert relative_error(fast, logits.data[:, -1]) < 1e-5
            tokens = logits.data[:, -1].argmax(-1)
    assert decoder.length == 17 and decoder.capacity == 24
    assert relative_error(decoder.keys[1][:, :, :17], past[1][0].data) < 1e-5  # the cache: rotated keys
    assert relative_error(decoder.values[0][:, :, :17], past[0][1].data) < 1e-5


def test_generate_is_the_same_with_and_without_the_decode_step():
    model = small_llama()
    prompt = [3, 14, 15, 9, 2]
    fast = model.generate(prompt, 10, greedy=True)
    assert list(fast) == list(model.generate(prompt, 10, greedy=True, fast=False))
    sampled = [model.generate(prompt, 10, temperature=0.9, top_k=10, seed=5, fast=f) for f in (True, False)]
    np.testing.assert_array_equal(*sampled)
    assert len(model.generate(prompt, 100, greedy=True)) == CONFIG.max_len + 1  # stops when the context is full


def test_models_with_other_parts_keep_to_the_layer_path():
    model = small_llama()
    expected = model.generate([1, 2, 3], 4, greedy=True, fast=False)
    nn.apply_lora(model, targets=("q_proj", "v_proj"), rank=2, alpha=4)
    assert not LlamaDecoder.supports(model)
    with pytest.raises(ValueError, match="use the layer path"):
        LlamaDecoder(model, 8)
    assert list(model.generate([1, 2, 3], 4, greedy=True)) == list(expected)  # LoRA's B starts at zero
    other = small_llama()
    other.blocks[1].mlp.activation = "gelu_tanh"  # an activation the decode step does not take
    assert not LlamaDecoder.supports(other)


def test_decode_step_errors():
    model = small_llama()
    decoder = LlamaDecoder(model, 8)
    with pytest.raises(RuntimeError, match="call prefill"):
        decoder.step([1])
    decoder.prefill(np.arange(CONFIG.max_len - 1)[None] % CONFIG.vocab_size)
    for bad in ([1, 2], [-1], [CONFIG.vocab_size], [0.5]):  # B = 1 sequence; ids inside the vocabulary
        with pytest.raises(ValueError, match=r"expected one id in \[0, 50\) per sequence, 1 in all"):
            decoder.step(bad)
    assert decoder.length == CONFIG.max_len - 1  # nothing was written
    decoder.step(np.array([1]))
    with pytest.raises(ValueError, match="context of max_len=40 tokens is full"):
        decoder.step([1])
