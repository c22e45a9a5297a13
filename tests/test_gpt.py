"""GPT, its generation and its sequence classifier: parity with Hugging Face's GPT-2 (logits, loss, gradients),
the KV cache, the sampling filters, argument errors, gradcheck, and two small training runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import minitx
import minitx.functional as F
from minitx import Tensor, gradcheck, no_grad
from minitx.models import GPT, GPTConfig, GPTForSequenceClassification
from minitx.models.sampling import (apply_temperature, next_token_probabilities, sample_next_token, top_k_filter,
                                    top_p_filter)
from minitx.optim import AdamW


def softmax(z):
    """The oracle: exp(z - max z) / Σ exp(z - max z) in plain NumPy."""
    e = np.exp(z - z.max())
    return e / e.sum()


TINY = GPTConfig(vocab_size=23, max_len=12, d_model=16, num_heads=4, num_layers=2, dim_feedforward=40, dropout=0.0)


def randomize(model, seed=0, std=0.3):
    """Weights far from GPT-2's small initialisation, so logits vary a lot between tokens and a wrong
    mapping or a missed term cannot hide under tiny numbers (LayerNorm γ stays near 1)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        noise = rng.normal(0, std, p.shape).astype(p.dtype)
        p.data[...] = 1 + 0.1 * noise if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else noise
    return model


def tiny_gpt(seed=0, config=TINY):
    minitx.manual_seed(seed)
    return randomize(GPT(config), seed).eval()


# ------------------------------------------------------------------------------------ Hugging Face oracle
def hf_config(config: GPTConfig, **extra):
    return transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_len, n_embd=config.d_model, n_layer=config.num_layers,
        n_head=config.num_heads, n_inner=config.dim_feedforward, activation_function="gelu_new", resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=config.layer_norm_eps, bos_token_id=1, eos_token_id=1,
        attn_implementation="eager",
        **extra)


def state_from_hf(hf_state: dict, config: GPTConfig) -> dict:
    """Hugging Face GPT-2 trunk weights (``transformer.*`` without the prefix) -> minitx names.

    GPT-2's Conv1D stores W as (in, out) and computes x W + b, so each weight is transposed; its fused
    c_attn (D, 3D) holds [W_q | W_k | W_v] side by side.
    """
    hf = {k: v.detach().numpy() for k, v in hf_state.items()}
    d = config.d_model
    state = {name: hf[name] for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for layer in range(config.num_layers):
        src, dst = f"h.{layer}.", f"blocks.{layer}."
        for j, proj in enumerate("qkv"):
            state[f"{dst}attn.{proj}_proj.weight"] = hf[src + "attn.c_attn.weight"][:, j * d:(j + 1) * d].T
            state[f"{dst}attn.{proj}_proj.bias"] = hf[src + "attn.c_attn.bias"][j * d:(j + 1) * d]
        state[dst + "attn.out_proj.weight"] = hf[src + "attn.c_proj.weight"].T
        state[dst + "attn.out_proj.bias"] = hf[src + "attn.c_proj.bias"]
        state[dst + "mlp.linear1.weight"] = hf[src + "mlp.c_fc.weight"].T
        state[dst + "mlp.linear1.bias"] = hf[src + "mlp.c_fc.bias"]
        state[dst + "mlp.linear2.weight"] = hf[src + "mlp.c_proj.weight"].T
        state[dst + "mlp.linear2.bias"] = hf[src + "mlp.c_proj.bias"]
        for norm in ("ln_1", "ln_2"):
            state[f"{dst}{norm}.weight"] = hf[f"{src}{norm}.weight"]
            state[f"{dst}{norm}.bias"] = hf[f"{src}{norm}.bias"]
    return state


def randomize_torch(model, seed=0, std=0.3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, std)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.mul_(0.1).add_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def hf_lm():
    return randomize_torch(transformers.GPT2LMHeadModel(hf_config(TINY)))


def right_padded_batch(rng, lengths, steps, vocab, pad=0):
    ids = rng.integers(1, vocab, size=(len(lengths), steps))
    mask = (np.arange(steps)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids[mask == 0] = pad
    return ids, mask


def test_logits_loss_and_gradients_equal_hugging_face_gpt2(hf_lm):
    model = GPT(TINY)
    model.load_state_dict(state_from_hf(hf_lm.transformer.state_dict(), TINY))
    model.eval()
    assert model.num_parameters() == sum(p.numel() for p in hf_lm.parameters())  # tied: one (V, D) table
    ids, mask = right_padded_batch(np.random.default_rng(1), [12, 7, 10], 12, TINY.vocab_size)

    labels = torch.tensor(np.where(mask == 1, ids, -100))
    out = hf_lm(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=labels)
    out.loss.backward()
    loss = model.loss(ids, mask)
    loss.backward()
    logits = model(ids, mask)
    assert logits.dtype == np.float32 and logits.shape == (3, 12, TINY.vocab_size)
    np.testing.assert_allclose(logits.numpy(), out.logits.detach().numpy(), atol=2e-5, rtol=1e-5)
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-5)

    hf = dict(hf_lm.named_parameters())
    d = TINY.d_model
    pairs = {  # minitx name -> the same gradient from torch, in minitx's layout
        "wte.weight": hf["transformer.wte.weight"].grad,  # embedding + tied output matrix
        "wpe.weight": hf["transformer.wpe.weight"].grad,
        "blocks.0.attn.k_proj.weight": hf["transformer.h.0.attn.c_attn.weight"].grad[:, d:2 * d].T,
        "blocks.0.attn.v_proj.bias": hf["transformer.h.0.attn.c_attn.bias"].grad[2 * d:],
        "blocks.1.attn.out_proj.weight": hf["transformer.h.1.attn.c_proj.weight"].grad.T,
        "blocks.1.mlp.linear1.weight": hf["transformer.h.1.mlp.c_fc.weight"].grad.T,
        "blocks.0.ln_2.weight": hf["transformer.h.0.ln_2.weight"].grad,
        "ln_f.bias": hf["transformer.ln_f.bias"].grad,
    }
    params = dict(model.named_parameters())
    for name, expected in pairs.items():
        np.testing.assert_allclose(params[name].grad, expected.numpy(), atol=2e-6, rtol=1e-4, err_msg=name)


def test_loss_is_mean_next_token_cross_entropy_and_ignores_padding():
    model = tiny_gpt()
    ids, mask = right_padded_batch(np.random.default_rng(2), [9, 5], 9, TINY.vocab_size)
    with no_grad():
        log_p = F.log_softmax(model(ids, mask)).numpy()  # (B, T, V)
        terms = [-log_p[b, t, ids[b, t + 1]] for b in range(2) for t in range(8) if mask[b, t + 1]]
        assert model.loss(ids, mask).item() == pytest.approx(np.mean(terms), rel=1e-5)
        alone = model.loss(ids[1:, :5]).item()
        assert model.loss(ids[1:], mask[1:]).item() == pytest.approx(alone, rel=1e-5)  # padding changes nothing


def test_loss_on_max_len_plus_one_tokens_trains_every_position():
    """T tokens give T-1 predictions, so a window of max_len + 1 tokens uses all max_len positions; the last
    token is only a target, and leaving it out of the forward pass changes no prediction."""
    model = tiny_gpt()
    ids = np.random.default_rng(3).integers(0, TINY.vocab_size, size=(2, TINY.max_len + 1))
    loss = model.loss(ids)
    loss.backward()
    position_grad = dict(model.named_parameters())["wpe.weight"].grad  # (max_len, D)
    assert np.all(np.abs(position_grad).sum(axis=1) > 0)  # the last position embedding learns too
    with no_grad():
        log_p = F.log_softmax(model(ids[:, :-1])).numpy()  # (B, max_len, V)
    terms = [-log_p[b, t, ids[b, t + 1]] for b in range(2) for t in range(TINY.max_len)]
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_gpt2_initialisation_scales_residual_projections():
    config = GPTConfig(vocab_size=50, max_len=32, d_model=64, num_heads=4, num_layers=8, dim_feedforward=256)
    model = GPT(config)
    for block in model.blocks:
        assert np.std(block.attn.out_proj.weight.data) == pytest.approx(0.02 / np.sqrt(16), rel=0.1)
        assert np.std(block.mlp.linear2.weight.data) == pytest.approx(0.02 / np.sqrt(16), rel=0.1)
        assert np.std(block.attn.q_proj.weight.data) == pytest.approx(0.02, rel=0.1)
        assert not block.attn.q_proj.bias.data.any()
    assert np.std(model.wte.weight.data) == pytest.approx(0.02, rel=0.1)
    assert np.std(model.wpe.weight.data) == pytest.approx(0.02, rel=0.1)


def test_gradcheck_loss_of_tiny_float64_gpt():
    config = GPTConfig(vocab_size=7, max_len=5, d_model=4, num_heads=2, num_layers=2, dim_feedforward=8, dropout=0.0)
    minitx.manual_seed(0)
    model = randomize(GPT(config)).double()
    names = ["wte.weight", "wpe.weight", "blocks.0.attn.q_proj.weight", "blocks.1.mlp.linear2.weight",
             "blocks.0.ln_1.bias", "ln_f.weight"]
    params = [dict(model.named_parameters())[n] for n in names]
    saved = [p.data for p in params]
    ids, mask = np.array([[1, 4, 6, 2, 0], [3, 3, 5, 0, 0]]), np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])

    def loss(*values):
        for p, value in zip(params, values):
            p.data = value.data
        return model.loss(ids, mask)

    try:
        gradcheck(loss, params)
    finally:
        for p, data in zip(params, saved):
            p.data = data


# ------------------------------------------------------------------------------------------- KV cache
def incremental_logits(model, ids, mask=None, first=3):
    """Logits of ``ids`` fed as a prefix of ``first`` tokens, then one token at a time through the cache."""
    logits, past = model(ids[:, :first], None if mask is None else mask[:, :first], use_cache=True)
    pieces = [logits.numpy()]
    for t in range(first, ids.shape[1]):
        logits, past = model(ids[:, t:t + 1], None if mask is None else mask[:, :t + 1], past_kv=past,
                             use_cache=True)
        pieces.append(logits.numpy())
    return np.concatenate(pieces, axis=1)


def test_cached_decoding_equals_full_forward():
    model = tiny_gpt()
    ids = np.random.default_rng(3).integers(0, TINY.vocab_size, size=(2, 12))
    with no_grad():
        np.testing.assert_allclose(incremental_logits(model, ids), model(ids).numpy(), atol=2e-5)


def test_cached_decoding_with_left_padding_equals_full_forward():
    model = tiny_gpt()
    ids = np.random.default_rng(4).integers(1, TINY.vocab_size, size=(2, 9))
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    ids[mask == 0] = 0
    with no_grad():
        full = model(ids, mask).numpy()
        cached = incremental_logits(model, ids, mask)
        unmasked = model(ids).numpy()
    real = mask == 1
    np.testing.assert_allclose(cached[real], full[real], atol=2e-5)
    assert np.abs(unmasked[0, 3:] - full[0, 3:]).max() > 1e-2  # the mask does hide the padding


def test_greedy_and_seeded_generation_are_the_same_with_and_without_cache():
    model = tiny_gpt()
    prompt = [3, 7, 1]
    for kwargs in (dict(greedy=True), dict(seed=11), dict(seed=12, temperature=0.7, top_k=5, top_p=0.9)):
        cached = model.generate(prompt, 15, use_cache=True, **kwargs)  # 18 tokens: past max_len = 12
        plain = model.generate(prompt, 15, use_cache=False, **kwargs)
        np.testing.assert_array_equal(cached, plain)
        assert cached.dtype == np.int64 and cached.shape == (18,) and list(cached[:3]) == prompt


def test_generation_crops_a_long_prompt_and_stops_at_eos():
    model = tiny_gpt()
    long_prompt = np.arange(20) % TINY.vocab_size
    out = model.generate(long_prompt, 3, greedy=True)
    assert out.shape == (23,)
    np.testing.assert_array_equal(out[20:], model.generate(long_prompt[-12:], 3, greedy=True)[12:])
    first = int(model.generate([5], 1, greedy=True)[-1])
    assert list(model.generate([5], 10, greedy=True, eos_token_id=first)) == [5, first]


def test_generation_restores_the_training_mode():
    model = tiny_gpt().train()
    model.generate([1, 2], 2)
    assert all(m.training for m in model.modules())
    model.eval().generate([1, 2], 2)
    assert not any(m.training for m in model.modules())


def test_generation_is_reproducible_by_seed():
    model = tiny_gpt()
    a, b = model.generate([4], 20, seed=5), model.generate([4], 20, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, model.generate([4], 20, seed=6))
    minitx.manual_seed(9)
    c = model.generate([4], 20)
    minitx.manual_seed(9)
    np.testing.assert_array_equal(c, model.generate([4], 20))  # no seed: the global minitx generator


# ------------------------------------------------------------------------------------ sampling filters
def test_top_k_keeps_exactly_the_k_largest_even_with_ties():
    logits = np.array([0.5, 2.0, 2.0, -1.0, 2.0, 0.5, 3.0])
    for k in range(1, 8):
        kept = np.flatnonzero(np.isfinite(top_k_filter(logits, k)))
        assert len(kept) == k
        assert logits[kept].min() >= np.delete(logits, kept).max(initial=-np.inf)
    np.testing.assert_array_equal(top_k_filter(logits, 100), logits)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = np.log(probs)
    for p, expected in ((0.4, {1}), (0.7, {1, 3}), (0.85, {1, 2, 3}), (0.97, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})):
        assert set(np.flatnonzero(np.isfinite(top_p_filter(logits, p)))) == expected, p
    rng = np.random.default_rng(0)
    for _ in range(50):
        z, p = rng.normal(0, 2, 30), rng.uniform(0.05, 0.99)
        kept = np.isfinite(top_p_filter(z, p))
        mass = np.sort(softmax(z)[kept])
        assert mass.sum() >= p and mass[1:].sum() < p  # reaches p, and no smaller prefix does
        assert softmax(z)[kept].min() >= softmax(z)[~kept].max(initial=0)


def test_temperature_sharpens_and_flattens():
    logits = np.array([1.0, 3.0, 2.0, 0.0])
    np.testing.assert_allclose(apply_temperature(logits, 2.0), logits / 2)
    np.testing.assert_allclose(next_token_probabilities(logits), softmax(logits))
    entropy = lambda q: -(q * np.log(q + 1e-300)).sum()  # noqa: E731
    hot, cold = next_token_probabilities(logits, 5.0), next_token_probabilities(logits, 0.2)
    assert entropy(hot) > entropy(softmax(logits)) > entropy(cold)
    np.testing.assert_allclose(next_token_probabilities(logits, 1e-3), np.eye(4)[1], atol=1e-12)
    model = tiny_gpt()
    np.testing.assert_array_equal(model.generate([2], 10, temperature=1e-4, seed=0),
                                  model.generate([2], 10, greedy=True))


def test_samples_follow_the_filtered_distribution():
    logits = np.array([2.0, 0.0, 1.0, 1.5, -1.0])
    rng = np.random.default_rng(0)
    draws = [sample_next_token(logits, rng, temperature=0.8, top_k=3) for _ in range(6000)]
    counts = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(counts, next_token_probabilities(logits, 0.8, top_k=3), atol=0.02)
    assert counts[1] == counts[4] == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(prompt_ids=[]), "prompt_ids"),
    (dict(prompt_ids=[[1, 2]]), "prompt_ids"), (dict(prompt_ids=[1, 99]), r"\[0, 23\)"),
    (dict(eos_token_id=23), "eos_token_id"),
])
def test_generate_argument_errors(kwargs, message):
    model = tiny_gpt()
    args = dict(prompt_ids=[1, 2], max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=message):
        model.generate(**args)
    model.generate([1, 2], 2, temperature=0.0, greedy=True)  # greedy needs no temperature


def test_forward_argument_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="max_len=12"):
        model(np.zeros((1, 13), dtype=np.int64))
    with pytest.raises(TypeError, match="input_ids must hold integers"):
        model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of the cached and the new tokens"):
        model(np.zeros((2, 3), dtype=np.int64), np.ones((2, 4), dtype=np.int64))
    _, past = model(np.zeros((1, 10), dtype=np.int64), use_cache=True)
    with pytest.raises(ValueError, match="10 cached \\+ 3 new tokens exceed max_len=12"):
        model(np.zeros((1, 3), dtype=np.int64), past_kv=past)
    with pytest.raises(ValueError, match="one \\(keys, values\\) pair per block"):
        model(np.zeros((1, 1), dtype=np.int64), past_kv=past[:1])
    with pytest.raises(ValueError, match="needs 2 to max_len \\+ 1 = 13 tokens per row"):
        model.loss(np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="needs 2 to max_len \\+ 1 = 13 tokens per row.*\\(1, 14\\)"):
        model.loss(np.zeros((1, 14), dtype=np.int64))
    with pytest.raises(ValueError, match="num_heads"):
        GPTConfig(vocab_size=5, max_len=4, d_model=6, num_heads=4, num_layers=1, dim_feedforward=8)
    with pytest.raises(ValueError, match="num_layers"):
        GPTConfig(vocab_size=5, max_len=4, d_model=8, num_heads=4, num_layers=0, dim_feedforward=8)


# ------------------------------------------------------------------------------------- classification
def test_classifier_equals_hugging_face_gpt2_for_sequence_classification():
    hf = randomize_torch(transformers.GPT2ForSequenceClassification(hf_config(TINY, pad_token_id=0, num_labels=3)))
    model = GPTForSequenceClassification(TINY, 3)
    model.gpt.load_state_dict(state_from_hf(hf.transformer.state_dict(), TINY))
    model.score.weight.data[...] = hf.score.weight.detach().numpy()
    model.eval()
    ids, mask = right_padded_batch(np.random.default_rng(5), [12, 4, 9, 1], 12, TINY.vocab_size)
    expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.detach().numpy()
    logits = model(ids, mask)
    assert logits.shape == (4, 3)
    np.testing.assert_allclose(logits.numpy(), expected, atol=2e-5, rtol=1e-5)
    # without a mask every row is read at T - 1: here only the full-length row agrees
    unmasked = model(ids).numpy()
    np.testing.assert_allclose(unmasked[0], expected[0], atol=2e-5, rtol=1e-5)
    assert np.abs(unmasked[1:] - expected[1:]).max() > 1e-2


def test_classifier_reads_the_last_real_token_with_left_padding_too():
    model = GPTForSequenceClassification(TINY, 2)
    randomize(model).eval()
    ids = np.array([[0, 0, 5, 6, 7], [5, 6, 7, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    with no_grad():
        h = model.gpt.hidden_states(ids, mask).numpy()
        np.testing.assert_allclose(model(ids, mask).numpy(), np.stack([h[0, 4], h[1, 2]]) @ model.score.weight.data.T,
                                   atol=1e-6)
    with pytest.raises(ValueError, match="no real token"):
        model(ids, np.array([[0, 0, 0, 0, 0], [1, 1, 1, 0, 0]]))


def test_gradcheck_classifier_directional():
    config = GPTConfig(vocab_size=7, max_len=5, d_model=4, num_heads=2, num_layers=1, dim_feedforward=8, dropout=0.0)
    minitx.manual_seed(0)
    model = randomize(GPTForSequenceClassification(config, 3)).double()
    params = list(model.parameters())
    saved = [p.data for p in params]
    ids, mask = np.array([[1, 4, 6, 2, 0], [3, 3, 5, 0, 0]]), np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])

    def logits(*values):
        for p, value in zip(params, values):
            p.data = value.data
        return model(ids, mask)

    try:
        gradcheck(logits, params, mode="directional", n_directions=6)
    finally:
        for p, data in zip(params, saved):
            p.data = data


def first_token_task(rng, n, config):
    """Label = which of the ids 1 and 2 opens the text; random lengths 2…max_len, right padding with 0, so
    the classifier must carry the first token's identity to the last real one."""
    lengths = rng.integers(2, config.max_len + 1, size=n)
    ids, mask = right_padded_batch(rng, lengths, config.max_len, config.vocab_size)
    ids[mask == 1] = np.maximum(ids[mask == 1], 3)
    labels = rng.integers(0, 2, size=n)
    ids[:, 0] = labels + 1
    return ids, mask, labels


def test_from_lm_copies_the_weights_and_fine_tuning_learns_while_the_lm_stays_unchanged():
    config = GPTConfig(vocab_size=12, max_len=8, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32, dropout=0.0)
    minitx.manual_seed(0)
    lm = GPT(config)
    before = lm.state_dict()
    model = GPTForSequenceClassification.from_lm(lm, 2)
    for name, value in model.gpt.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    assert not {id(p) for p in model.parameters()} & {id(p) for p in lm.parameters()}

    rng = np.random.default_rng(0)
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(40):
        ids, mask, labels = first_token_task(rng, 32, config)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(ids, mask), labels)
        loss.backward()  # the seed's loop forgot these two lines, so its model never learned
        optimizer.step()
    ids, mask, labels = first_token_task(np.random.default_rng(99), 200, config)
    with no_grad():
        accuracy = (model.eval()(ids, mask).argmax(axis=-1).numpy() == labels).mean()
    assert accuracy >= 0.95
    for name, value in lm.state_dict().items():
        np.testing.assert_array_equal(value, before[name])  # the LM is untouched


def test_gpt_learns_a_repeating_sequence_and_generates_it():
    config = GPTConfig(vocab_size=8, max_len=10, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32, dropout=0.0)
    minitx.manual_seed(0)
    model = GPT(config)
    stream = np.arange(200) % 5 + 1  # 1 2 3 4 5 1 2 …
    optimizer = AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    starts = np.random.default_rng(0).integers(0, 190, size=(30, 16))
    for batch_starts in starts:
        optimizer.zero_grad()
        loss = model.loss(np.stack([stream[s:s + 10] for s in batch_starts]))
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 < np.log(8)
    assert list(model.generate([3, 4], 13, greedy=True)) == [3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
