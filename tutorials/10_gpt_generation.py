# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 10 — GPT: a causal language model, sampling, and the KV cache
#
# A language model assigns a probability to a whole text by the chain rule of probability, one token at a
# time, each conditioned on everything before it:
#
# $$ P(x_1, \dots, x_T) = \prod_{t=1}^{T} P(x_t \mid x_{<t}), \qquad
#    \mathcal{L} = -\frac{1}{T-1}\sum_{t=1}^{T-1} \log P(x_{t+1} \mid x_{\le t}). $$
#
# GPT computes all $T$ conditionals in one pass: a stack of decoder blocks whose attention is **causal**
# (position $t$ may look at positions $\le t$ only), so the output at $t$ is a function of $x_{\le t}$ and
# predicts $x_{t+1}$. Generation then runs the chain rule forwards: turn the last position's logits $z$ into
# a distribution, draw a token, append it, repeat. How the distribution is shaped — temperature
# $\operatorname{softmax}(z/\tau)$, top-$k$, top-$p$ — decides between dull and incoherent text; the KV cache
# decides whether each new token costs one position or the whole prefix.
#
# We check each piece against the library (`minitx.models.gpt`), NumPy and PyTorch, train a small
# character-level GPT on the built-in corpus and let it write.

# %%
import math

import numpy as np

import minitx as mx
import minitx.functional as F
from minitx import optim
from minitx.data import corpus_text
from minitx.models import GPT, GPTConfig, SequenceEncoder
from minitx.models import sampling as G
from minitx.tokenizers import CharTokenizer

import _common as C

CHAPTER = "10_gpt_generation"
torch = C.torch_or_none()
mx.manual_seed(0)


def tiny_gpt(vocab_size=20, max_len=16, seed=0):
    """A small float64 GPT with random weights, for the checks (dropout off)."""
    mx.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, max_len=max_len, d_model=16, num_heads=4, num_layers=2,
                       dim_feedforward=32, dropout=0.0, activation="gelu")
    model = GPT(config).double()
    r = np.random.default_rng(seed)
    for p in model.parameters():  # larger than GPT-2's 0.02 so the logits differ visibly between positions
        p.data[...] = p.data + r.normal(0, 0.3, p.shape)
    return model.eval()


# %% [markdown]
# ## 1. The causal mask
#
# Inside every block, the attention scores $s_{ij}$ with $j > i$ are set to $-\infty$ before the softmax
# (chapter 04), so position $i$ mixes only the values of positions $\le i$. Stacking such layers keeps the
# property: $h^l_i$ depends on $h^{l-1}_{\le i}$ only, hence on $x_{\le i}$. The test that needs no reference:
# change token $j$ and watch the logits. Positions before $j$ must not move (no peeking at the future);
# position $j$ and after must (otherwise the model is not using the token it is given).

# %%
def check_causal(forward, vocab_size=20, steps=10, seed=0):
    """Raise AssertionError unless forward(ids (B, T)) -> logits (B, T, V) is causal and uses x_t at t."""
    r = np.random.default_rng(seed)
    ids = r.integers(0, vocab_size, size=(1, steps))
    base = C.as_numpy(forward(ids))
    for j in (0, 3, steps - 1):
        changed = ids.copy()
        changed[0, j] = (ids[0, j] + 1) % vocab_size
        out = C.as_numpy(forward(changed))
        C.close(f"logits before position {j} unchanged when x_{j} changes", out[0, :j], base[0, :j], atol=1e-10)
        moved = np.abs(out[0, j:] - base[0, j:]).max(axis=-1)  # one number per position ≥ j
        if moved.min() < 1e-6:
            raise AssertionError(f"CHECK FAILED causal: changing x_{j} leaves position {j + int(moved.argmin())} "
                                 f"unchanged, so the model does not see x_{j} there")
    print("[check] changing x_j moves the logits at positions ≥ j: ok")


model = tiny_gpt()
with mx.no_grad():
    check_causal(lambda ids: model(ids))

# %% [markdown]
# ### The GPT block, built by hand
#
# What `GPT` stacks (read `minitx/models/gpt.py` and `DecoderBlock` in `minitx/nn/transformer.py`). Unlike
# chapter 06's encoder layer, the block is **pre-norm** — LayerNorm *inside* each residual branch, so the
# stream $x$ itself is never normalised and the identity path of chapter 06 runs from the output to the
# embeddings untouched — and its attention is causal:
#
# $$ x \leftarrow x + \mathrm{Attn}_\text{causal}(\mathrm{LN}_1(x)), \qquad
#    x \leftarrow x + W_2\,\mathrm{GELU}(W_1 \mathrm{LN}_2(x) + b_1) + b_2 . $$
#
# The whole model: $h^0_t = E[x_t] + P[t]$ (learned positions), the blocks, a final $\mathrm{LN}_f$, and
# logits $z_t = E\,h^L_t$ with the **same** table $E$ that embedded the tokens (*weight tying*: one
# $V\times D$ matrix instead of two, and a token's input and output vectors are trained together).
# **Initialisation** (GPT-2): every matrix $\sim\mathcal N(0, 0.02^2)$, except the two projections that
# write into the residual stream ($W_O$ and $W_2$), whose std is $0.02/\sqrt{2L}$ (chapter 13).

# %%
def gpt_block(x, block, key_padding_mask=None):
    """Pre-norm causal block from functional ops, reading the weights of a library DecoderBlock."""
    b, t, d = x.shape
    a = block.attn
    h = F.layer_norm(x, d, block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)

    def heads(proj):  # (B, T, D) -> (B, H, T, d_h)
        return F.linear(h, proj.weight, proj.bias).reshape(b, t, a.num_heads, d // a.num_heads).permute(0, 2, 1, 3)

    o = F.scaled_dot_product_attention(heads(a.q_proj), heads(a.k_proj), heads(a.v_proj), is_causal=True,
                                       key_padding_mask=key_padding_mask)
    x = x + F.linear(o.permute(0, 2, 1, 3).reshape(b, t, d), a.out_proj.weight, a.out_proj.bias)
    h = F.layer_norm(x, d, block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    mlp = block.mlp
    return x + F.linear(F.gelu(F.linear(h, mlp.linear1.weight, mlp.linear1.bias)), mlp.linear2.weight, mlp.linear2.bias)


def gpt_by_hand(model, ids, block_fn=gpt_block):
    """Logits (B, T, V) of a library GPT, computed from its weights with `block_fn` for every block."""
    t = ids.shape[1]
    x = F.embedding(ids, model.wte.weight) + F.embedding(np.arange(t), model.wpe.weight)  # (B, T, D)
    for block in model.blocks:
        x = block_fn(x, block)
    x = F.layer_norm(x, x.shape[-1], model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
    return F.linear(x, model.wte.weight)  # tied: the embedding table is the output matrix


def check_gpt_block(block_fn):
    """Raise AssertionError unless block_fn(x, block) is the library's DecoderBlock (outputs and gradients)."""
    m = tiny_gpt(seed=3)
    ids = np.random.default_rng(3).integers(0, 20, size=(2, 9))
    x = mx.tensor(np.random.default_rng(4).normal(size=(2, 9, 16)), requires_grad=True)
    ours = block_fn(x, m.blocks[0])
    ours.sum().backward()
    x_lib = mx.tensor(x.numpy().copy(), requires_grad=True)
    theirs = m.blocks[0](x_lib)
    theirs.sum().backward()
    C.close("hand-built block vs DecoderBlock", ours, theirs, atol=1e-10)
    C.close("hand-built block dL/dx vs DecoderBlock", x.grad, x_lib.grad, atol=1e-10)
    with mx.no_grad():
        C.close("hand-built GPT (tied output) vs GPT.forward", gpt_by_hand(m, ids, block_fn), m(ids), atol=1e-10)


check_gpt_block(gpt_block)
fresh = GPT(GPTConfig(vocab_size=500, max_len=64, d_model=256, num_heads=4, num_layers=6, dim_feedforward=1024, dropout=0.0))
vocab_sized = [name for name, p in fresh.named_parameters() if p.shape == (500, 256)]
C.close(f"weight tying: the only (V, D) parameter is the embedding table {vocab_sized}", float(vocab_sized == ["wte.weight"]),
        1.0, atol=0)
for name, weight, want in (("W_Q (block 0)", fresh.blocks[0].attn.q_proj.weight, 0.02),
                           ("W_1 (block 0)", fresh.blocks[0].mlp.linear1.weight, 0.02),
                           ("W_O (block 0)", fresh.blocks[0].attn.out_proj.weight, 0.02 / math.sqrt(12)),
                           ("W_2 (block 5)", fresh.blocks[5].mlp.linear2.weight, 0.02 / math.sqrt(12))):
    C.close(f"GPT-2 init: std of {name}", weight.numpy().std(), want, rtol=0.05, atol=0)

# %% [markdown]
# ## 2. The next-token loss
#
# Position $t$'s logits predict token $t+1$, so the loss pairs logits $0\dots T-2$ with targets $1\dots T-1$
# (the last position has no target inside the text; the first token has no prediction):
#
# $$ \mathcal{L} = -\frac{1}{B(T-1)} \sum_{b}\sum_{t=0}^{T-2} \log \operatorname{softmax}(z_{b,t})_{x_{b,t+1}} . $$
#
# `next_token_loss(logits, ids)` is that shift plus the cross-entropy of chapter 02; the check compares it
# with a NumPy evaluation of the sum above, with `GPT.loss(ids)` and with PyTorch.

# %%
def next_token_loss(logits, ids):
    """logits (B, T, V) Tensor, ids (B, T) -> mean cross-entropy of logits[:, t] against ids[:, t+1]."""
    return F.cross_entropy(logits[:, :-1], np.asarray(ids)[:, 1:])


def check_next_token_loss(impl, seed=0):
    """Raise AssertionError unless impl(logits, ids) is the mean next-token cross-entropy."""
    m = tiny_gpt(seed=seed)
    ids = np.random.default_rng(seed).integers(0, 20, size=(3, 9))
    logits = m(ids)
    loss = impl(logits, ids)
    z = logits.numpy()
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)  # (B, T)
    want = -np.mean([z[b, t, ids[b, t + 1]] - lse[b, t] for b in range(3) for t in range(8)])
    C.close("next-token loss vs the NumPy sum", loss, want, atol=1e-12)
    C.close("next-token loss vs GPT.loss", loss, m.loss(ids), atol=1e-12)
    if torch is not None:
        ref = torch.nn.functional.cross_entropy(torch.tensor(z[:, :-1]).reshape(-1, 20), torch.tensor(ids[:, 1:]).reshape(-1))
        C.close("next-token loss vs PyTorch cross_entropy on shifted logits", loss, ref, atol=1e-12)


check_next_token_loss(next_token_loss)

# %% [markdown]
# ## 3. Shaping the next-token distribution
#
# From the logits $z\in\mathbb{R}^V$ of the last position:
#
# - **temperature**: $p_i = e^{z_i/\tau} / \sum_j e^{z_j/\tau}$. Dividing by $\tau<1$ stretches the gaps
#   between logits (sharper; $\tau\to0$ is the argmax, "greedy"); $\tau>1$ shrinks them (flatter; $\tau\to\infty$
#   is uniform).
# - **top-$k$**: keep the $k$ largest logits, set the others to $-\infty$, renormalise: the long tail of
#   unlikely tokens — individually rare, together often a large share — can no longer be drawn.
# - **top-$p$ (nucleus)**: sort the probabilities $p_{(1)}\ge p_{(2)}\ge\dots$, keep the smallest prefix whose
#   mass reaches $p$, i.e. the first $m$ with $\sum_{j\le m} p_{(j)} \ge p$, and renormalise. Unlike top-$k$
#   it adapts: few candidates when the model is sure, many when it is not.
#
# Applied in that order (temperature, top-$k$, top-$p$), as `minitx.models.sampling.next_token_probabilities`
# and Hugging Face's `generate` do. Each by hand, on NumPy vectors:

# %%
def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def temperature_probs(z, tau):
    return softmax(np.asarray(z, dtype=np.float64) / tau)


def top_k_probs(z, k):
    z = np.asarray(z, dtype=np.float64)
    keep = np.argsort(-z, kind="stable")[:k]
    p = np.zeros_like(z)
    p[keep] = softmax(z[keep])
    return p


def top_p_probs(z, top_p):
    p = softmax(np.asarray(z, dtype=np.float64))
    order = np.argsort(-p, kind="stable")
    cumulative = np.cumsum(p[order])
    m = int(np.argmax(cumulative >= top_p)) + 1 if cumulative[-1] >= top_p else len(p)  # first prefix reaching p
    out = np.zeros_like(p)
    out[order[:m]] = p[order[:m]] / p[order[:m]].sum()
    return out


def _test_logits(seed):
    r = np.random.default_rng(seed)
    return [r.normal(0, 2, 12), r.normal(0, 0.3, 12), np.array([5.0, 1, 1, 1, 0.5, 0, -1, -3])]


def check_temperature(impl, seed=0):
    """Raise AssertionError unless impl(z, tau) = softmax(z / tau)."""
    cases = [(z, tau) for z in _test_logits(seed) for tau in (0.3, 1.0, 2.5)]
    C.close("softmax(z/τ) vs next_token_probabilities, 3 logit vectors × τ ∈ {0.3, 1, 2.5}",
            np.concatenate([impl(z, tau) for z, tau in cases]),
            np.concatenate([G.next_token_probabilities(z, temperature=tau) for z, tau in cases]), atol=1e-12)
    z = _test_logits(seed)[0]
    C.close("τ → 0 gives the argmax", impl(z, 1e-3), np.eye(len(z))[np.argmax(z)], atol=1e-9)
    C.close("τ → ∞ gives the uniform distribution", impl(z, 1e6), np.full(len(z), 1 / len(z)), atol=1e-5)


def check_top_k(impl, seed=0):
    """Raise AssertionError unless impl(z, k) keeps the k most likely tokens and renormalises."""
    cases = [(z, k) for z in _test_logits(seed) for k in (1, 3, 7)]
    got = [np.asarray(impl(z, k)) for z, k in cases]
    C.close("top-k vs next_token_probabilities(top_k), 3 logit vectors × k ∈ {1, 3, 7}", np.concatenate(got),
            np.concatenate([G.next_token_probabilities(z, top_k=k) for z, k in cases]), atol=1e-12)
    C.close("top-k keeps exactly k tokens", [(g > 0).sum() for g in got], [k for _, k in cases], atol=0)


def check_top_p(impl, seed=0):
    """Raise AssertionError unless impl(z, p) keeps the smallest set of likeliest tokens of mass >= p."""
    got, want = [], []
    for z in _test_logits(seed):
        p_full = softmax(np.asarray(z, dtype=np.float64))
        for top_p in (0.5, 0.9, float(np.sort(p_full)[::-1][:3].sum())):  # the last: a boundary hit exactly
            g = np.asarray(impl(z, top_p))
            got.append(g)
            want.append(G.next_token_probabilities(z, top_p=top_p))
            kept = np.sort(p_full[g > 0])
            assert kept.sum() >= top_p - 1e-12, f"CHECK FAILED top-p: kept mass {kept.sum():.4f} < p = {top_p}"
            assert kept[1:].sum() < top_p, "CHECK FAILED top-p: a smaller set would already reach p"
    C.close("top-p vs next_token_probabilities(top_p), 3 logit vectors × 3 values of p", np.concatenate(got),
            np.concatenate(want), atol=1e-12)
    print("[check] top-p keeps the smallest set of likeliest tokens whose mass reaches p: ok")


check_temperature(temperature_probs)
check_top_k(top_k_probs)
check_top_p(top_p_probs)

# %% [markdown]
# Drawing from the distribution: `sample_next_token` uses `rng.choice(V, p=probs)`. Over many draws each
# token must come up with its probability (checked within 5 binomial standard deviations), and filtered
# tokens never.

# %%
z = _test_logits(0)[2]
probs = G.next_token_probabilities(z, temperature=0.8, top_k=5)
draw_rng = np.random.default_rng(0)
n_draws = C.pick(40000, 10000)
draws = np.array([G.sample_next_token(z, draw_rng, temperature=0.8, top_k=5) for _ in range(n_draws)])
freq = np.bincount(draws, minlength=len(z)) / n_draws
C.close("sample frequencies vs probabilities (τ=0.8, top-5)", freq, probs,
        atol=5 * np.sqrt(probs * (1 - probs) / n_draws).max() + 1e-12, rtol=0)

# %% [markdown]
# ## 4. The KV cache
#
# Generating token $t+1$ needs the last position's output, which attends to the keys and values of all
# positions $\le t$. Those keys and values do not change when a token is appended (causality: position $i$
# never sees later tokens), so each block can keep them — the **KV cache** — and a step only has to run the
# *new* token through the network: one query against $t$ cached keys. Without the cache every step reruns
# all $t$ positions.
#
# | per generated token, per layer | without cache | with cache |
# |---|---|---|
# | positions through the projections and the MLP | $t$ | 1 |
# | attention scores | $t^2/2$ (causal) | $t$ |
#
# Generating $N$ tokens therefore costs $O(N^2)$ position-passes without the cache and $O(N)$ with it (the
# attention scores: $O(N^3)$ vs $O(N^2)$), at the price of memory: $2\cdot L \cdot t \cdot D$ numbers per
# sequence. In minitx, `model(ids, past_kv=past, use_cache=True)` returns `(logits, presents)`; `presents`
# is one `(keys, values)` pair per block, each $(B, H, t, d_k)$, to pass back as `past_kv` with the next token.
#
# `incremental_logits(model, ids)` feeds a sequence one token at a time through the cache; the check: its
# logits equal a single full forward pass, at every position.

# %%
def incremental_logits(model, ids):
    """Logits (B, T, V) computed one token at a time with the KV cache."""
    past, out = None, []
    for t in range(ids.shape[1]):
        logits, past = model(ids[:, t: t + 1], past_kv=past, use_cache=True)
        out.append(logits.numpy()[:, 0])
    return np.stack(out, axis=1)


def check_incremental_decoding(impl, seed=0):
    """Raise AssertionError unless impl(model, ids) gives the full forward pass's logits at every position."""
    m = tiny_gpt(seed=seed)
    ids = np.random.default_rng(seed).integers(0, 20, size=(2, 12))
    with mx.no_grad():
        full = m(ids).numpy()
        got = impl(m, ids)
    C.close("logits with the KV cache, token by token, vs one full forward pass", got, full, atol=1e-10)


with mx.no_grad():
    check_incremental_decoding(incremental_logits)
    prompt = np.array([1, 2, 3])
    a = model.generate(prompt, 10, greedy=True, use_cache=True)
    b = model.generate(prompt, 10, greedy=True, use_cache=False)
C.close("greedy generation with and without the cache: the same tokens", a, b, atol=0)

# %% [markdown]
# ## 5. Training a character-level GPT
#
# The text: `corpus_text()`, the library's built-in documents (recipes, life stories, journeys, …) as plain
# text. The tokeniser: one token per character (`CharTokenizer`), so $V$ is small (about 60) and a
# network this size learns spelling, words and the documents' phrasing in a few minutes. Training examples
# are random windows of $T + 1$ characters: the model reads the first $T$ and is scored on each next one,
# $T$ predictions per window. `window_loss` below writes that out; `gpt.loss(window)` computes the same
# (it runs the model on all but the last token), and the two are compared. (Why $T + 1$ and not $T$? $T$
# characters give $T-1$ predictions, from positions $0\dots T-2$, so the last position embedding would never
# be trained — and generation uses exactly that position once the text fills the context. With windows of
# $T+1$ characters every position $0\dots T-1$ learns.) GPT's
# settings (`GPTConfig`): pre-norm blocks, learned positions, the output matrix tied to the token embedding,
# GPT-2's initialisation. We use the exact-erf GELU.
#
# Reference lines for the loss: $\ln V$ (uniform guessing) and the *unigram entropy* of the characters
# (knowing only how frequent each character is). Going below the second means the context is used.

# %%
text = corpus_text(2000, seed=0)
tokenizer = CharTokenizer.from_text(text)
V = tokenizer.vocab_size
data = np.array(tokenizer.encode(text), dtype=np.int64)
split = int(0.95 * len(data))
train_data, val_data = data[:split], data[split:]
freq = np.bincount(train_data, minlength=V) / len(train_data)
unigram = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
print(f"{len(text)} characters, V = {V}; ln V = {math.log(V):.2f}, unigram entropy {unigram:.2f} nats")

context, batch_size, steps = C.pick(64, 48), C.pick(32, 16), C.pick(2000, 250)
config = GPTConfig(vocab_size=V, max_len=context, d_model=64, num_heads=4, num_layers=2, dim_feedforward=256,
                   dropout=0.0, activation="gelu")
mx.manual_seed(0)
gpt = GPT(config)
optimizer = optim.AdamW(gpt.parameters(), lr=C.pick(2e-3, 5e-3), weight_decay=0.01)
scheduler = optim.warmup_cosine(optimizer, warmup_steps=C.pick(100, 15), total_steps=steps, min_lr_ratio=0.1)
rng = np.random.default_rng(0)


def windows(source, n, r):
    """n random windows of context + 1 tokens: (n, T + 1)."""
    starts = r.integers(0, len(source) - context - 1, size=n)
    return np.stack([source[s: s + context + 1] for s in starts])


def window_loss(model, window):
    """Read tokens 0…T-1 of each window, predict tokens 1…T: T predictions per window."""
    return F.cross_entropy(model(window[:, :-1]), window[:, 1:])


val_batch = windows(val_data, 64, np.random.default_rng(1))
with mx.no_grad():
    C.close("window_loss, written out, vs gpt.loss on the same T + 1 tokens", window_loss(gpt, val_batch),
            gpt.loss(val_batch), atol=1e-6)
history, val_history = [], []
with C.Timer() as timer:
    for step in range(steps):
        loss = window_loss(gpt, windows(train_data, batch_size, rng))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if step % C.pick(100, 25) == 0 or step == steps - 1:
            gpt.eval()
            with mx.no_grad():
                val_history.append((step, window_loss(gpt, val_batch).item()))
            gpt.train()
gpt.eval()
print(f"{steps} steps in {timer.seconds:.1f} s: training loss {np.mean(history[:5]):.2f} -> "
      f"{np.mean(history[-10:]):.2f}, validation {val_history[-1][1]:.2f}")
assert abs(history[0] - math.log(V)) < 0.3, "a fresh GPT should start near ln V"
assert val_history[-1][1] < C.pick(unigram - 1.0, unigram), "the model should beat the unigram entropy"

fig, ax = C.plt.subplots(figsize=(7, 4))
ax.plot(history, lw=0.6, alpha=0.6, label="training batch")
v = np.array(val_history)
ax.plot(v[:, 0], v[:, 1], "o-", label="validation (held-out text)")
ax.axhline(math.log(V), color="gray", ls=":", label=f"ln V = {math.log(V):.2f} (uniform)")
ax.axhline(unigram, color="gray", ls="--", label=f"unigram entropy {unigram:.2f}")
ax.set(xlabel="step", ylabel="next-character cross-entropy (nats)", title="training a character-level GPT")
ax.legend()
C.save(fig, CHAPTER, "gpt_training")

# %% [markdown]
# ## 6. Generating text
#
# The same prompt, four ways. Greedy decoding (always the argmax) tends to loop; a low temperature stays
# close to it; $\tau = 1$ samples the model's own distribution, mistakes included; top-$p$ trims the tail.
# With a seed, `generate` is reproducible.

# %%
prompt = tokenizer.encode("In 1950, ")
n_new = C.pick(200, 80)
settings = {"greedy": dict(greedy=True), "τ = 0.7": dict(temperature=0.7), "τ = 1.0": dict(temperature=1.0),
            "τ = 1.0, top-p 0.9": dict(temperature=1.0, top_p=0.9)}
for name, kwargs in settings.items():
    out = gpt.generate(prompt, n_new, seed=0, **kwargs)
    print(f"--- {name}\n{tokenizer.decode(out)!r}")
again = gpt.generate(prompt, 30, temperature=0.7, seed=0)
C.close("the same seed gives the same text", again, gpt.generate(prompt, 30, temperature=0.7, seed=0), atol=0)

# %% [markdown]
# What the filters do to one real distribution: the trained model's next-character probabilities after
# the prompt "To make bread, you need f" (top 15 characters), under three temperatures, top-$k$ and top-$p$.

# %%
with mx.no_grad():
    z_real = gpt(np.array([tokenizer.encode("To make bread, you need f")])).numpy()[0, -1].astype(np.float64)
order = np.argsort(-z_real)[:15]
labels = [{" ": "␣", "\n": "\\n"}.get(tokenizer.decode([i]), tokenizer.decode([i])) for i in order]
panels = [("τ = 0.5", temperature_probs(z_real, 0.5)), ("τ = 1", temperature_probs(z_real, 1.0)),
          ("τ = 2", temperature_probs(z_real, 2.0)), ("top-k = 3", top_k_probs(z_real, 3)),
          ("top-p = 0.9", top_p_probs(z_real, 0.9))]
fig, axes = C.plt.subplots(1, len(panels), figsize=(16, 3.4), sharey=True)
for ax, (name, p) in zip(axes, panels):
    ax.bar(range(15), p[order], color="tab:blue")
    ax.set_xticks(range(15), labels, fontsize=8)
    ax.set(title=f"{name}  ({(p > 0).sum() if 'top' in name else V} candidates)", xlabel="next character")
axes[0].set_ylabel("probability")
C.save(fig, CHAPTER, "sampling_filters")

# %% [markdown]
# ## 7. What the cache saves
#
# Time per generated token, with and without the cache, as the text grows. The character model above is
# so small that Python's fixed cost per call hides the difference, so we time a wider, deeper GPT
# (random weights: the cost does not depend on their values) over its whole context. Without the cache the
# cost grows with the prefix; with it, it stays nearly flat. Each point is the fastest of a few runs, which
# filters out interruptions by other programs; on a busy machine single points still jump, so read the
# trend, not the points.
#
# **Why the measured curve is a straight line, not a parabola.** Count the multiply-adds of one step at
# length $t$ in $L$ layers of width $D$. Without the cache the whole prefix is rerun: the projections and
# the MLP cost $12\,t D^2$ (for $W_Q, W_K, W_V, W_O$: $4D^2$ per position; the MLP with $4D$ hidden units:
# $8D^2$), the attention scores and weighted sums about $t^2 D$ (causal: half of $2t^2D$). With the cache:
# $12D^2 + 2tD$. The quadratic term overtakes the linear one only when $t > 12D$ — 1536 positions for
# $D = 128$, far beyond this model's context — so at these lengths the re-run prefix costs linearly more
# per step, and the counted curve (right, all terms) is nearly straight too.

# %%
def time_per_step(model, use_cache, n, start_ids):
    import time
    ids, past, times = list(start_ids), None, []
    with mx.no_grad():
        for _ in range(n):
            start = time.perf_counter()
            feed = ids[-1:] if (use_cache and past is not None) else ids
            out = model(np.array([feed]), past_kv=past if use_cache else None, use_cache=use_cache)
            logits, past = out if use_cache else (out, None)
            ids.append(int(np.argmax(logits.numpy()[0, -1])))
            times.append(time.perf_counter() - start)
    return np.array(times)


mx.manual_seed(1)
big = GPT(GPTConfig(vocab_size=V, max_len=C.pick(256, 96), d_model=128, num_heads=4, num_layers=4, dim_feedforward=512,
                    dropout=0.0, activation="gelu")).eval()
n_steps = big.config.max_len - 1
repeats = C.pick(3, 2)
t_cache = np.min([time_per_step(big, True, n_steps, prompt[:1]) for _ in range(repeats)], axis=0)
t_full = np.min([time_per_step(big, False, n_steps, prompt[:1]) for _ in range(repeats)], axis=0)
print(f"4 layers, D = 128; per token at length {n_steps}: {1e3 * t_full[-1]:.1f} ms without the cache, "
      f"{1e3 * t_cache[-1]:.1f} ms with it; all {n_steps} tokens: {t_full.sum():.2f} s vs {t_cache.sum():.2f} s")
fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(11, 3.8))
pos = np.arange(1, n_steps + 1)
ax1.plot(pos, 1e3 * t_full, label="no cache: rerun the whole prefix")
ax1.plot(pos, 1e3 * t_cache, label="KV cache: one new position")
ax1.set(xlabel="length of the text so far", ylabel="ms per generated token",
        title="measured (GPT with 4 layers, D = 128)")
ax1.legend()
D_big, L_big = big.config.d_model, big.config.num_layers
ax2.plot(pos, L_big * (12 * pos * D_big ** 2 + pos ** 2 * D_big) / 1e6, label="no cache: L(12tD² + t²D)")
ax2.plot(pos, L_big * pos ** 2 * D_big / 1e6, ":", color="tab:blue", label="… of which attention: L·t²D")
ax2.plot(pos, L_big * (12 * D_big ** 2 + 2 * pos * D_big) / 1e6, label="KV cache: L(12D² + 2tD)")
ax2.set(xlabel="length of the text so far", ylabel="million multiply-adds per generated token",
        title=f"counted (L = {L_big}, D = {D_big})")
ax2.legend(fontsize=8)
C.save(fig, CHAPTER, "kv_cache_cost")

# %% [markdown]
# ## Exercises
#
# 1. Train the same model on `ByteLevelBPE.train([text], vocab_size=400)` tokens instead of characters. The
#    loss is now per BPE token: convert both to bits per character to compare them fairly.
# 2. In `top_p_probs`, keep the tokens *before* the one that crosses $p$ (use `cumulative < top_p`). Which
#    line of `check_top_p` fails, and what would happen with a very confident model (one token above $p$)?
# 3. Measure the memory of the cache: for this model and a text of length $t$, how many numbers are kept?
#    For GPT-2 small ($L = 12$, $D = 768$) at $t = 1024$ in float32?
