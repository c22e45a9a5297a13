# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 07 — A whole model: the sequence encoder
#
# Chapters 03–06 built the parts. Stacked, they give the seed's `SequenceEncoder`, a model that reads a
# sequence of token ids $x_1\dots x_T$ and predicts one token per position:
#
# $$ h^0_t = \sqrt{D}\,E[x_t] + \mathrm{PE}(t), $$
# $$ h^l = \mathrm{EncoderLayer}_l\big(h^{l-1};\ \text{padding mask}\big), \qquad l = 1\dots L, $$
# $$ z_t = h^L_t W_\text{out}^\top + b_\text{out}, \qquad P(y_t = v \mid x) = \operatorname{softmax}(z_t)_v . $$
#
# $E$ is the $(V, D)$ embedding table, $\mathrm{PE}$ the sinusoidal table of chapter 03, each encoder layer
# the post-norm layer of chapter 06. Every position sees every other real position (no causal mask): the
# encoder is *bidirectional*. The seed's PyTorch code ignores the padding mask; we show what that breaks,
# then train the model to sort sequences of digits with AdamW.

# %%
import math

import numpy as np

import minitx as mx
import minitx.functional as F
from minitx import optim
from minitx.data import IGNORE_INDEX
from minitx.models import SequenceEncoder

import _common as C

CHAPTER = "07_sequence_encoder"
torch = C.torch_or_none()
mx.manual_seed(0)

# %% [markdown]
# ## 1. The model and its parameters
#
# | tensor | shape | |
# |---|---|---|
# | ids $x$ | $(B, T)$ | integers in $[0, V)$ |
# | attention mask $m$ | $(B, T)$ | 1 = real token, 0 = padding |
# | $h^0, \dots, h^L$ | $(B, T, D)$ | one vector per position, the same width in every layer |
# | logits $z$ | $(B, T, V)$ | one score per vocabulary entry and position |
#
# Counting the parameters: the embedding has $VD$; each layer has the attention's four $D\times D$
# matrices and four biases, the FFN's $D\times F$, $F$, $F\times D$, $D$, and two LayerNorms with $2D$
# each; the output projection $DV + V$. The positional table has no parameters. Every matrix starts
# Xavier-uniform, $U(-a, a)$ with $a = \sqrt{6/(\text{fan}_\text{in} + \text{fan}_\text{out})}$, so that the
# variance of activations neither grows nor shrinks from layer to layer at initialisation.

# %%
V, D, H, FF, L = 12, 32, 4, 64, 2
model = SequenceEncoder(V, D, H, FF, L, drop_rate=0.0, max_len=64)
per_layer = 4 * D * D + 4 * D + (D * FF + FF + FF * D + D) + 2 * 2 * D
expected = V * D + L * per_layer + D * V + V
print(f"V={V} D={D} heads={H} F={FF} layers={L}: {model.num_parameters()} parameters "
      f"(embedding {V * D}, {L} × {per_layer} in the layers, output {D * V + V})")
assert model.num_parameters() == expected, (model.num_parameters(), expected)
bound = math.sqrt(6 / (V + D))
assert np.abs(model.embedding.weight.numpy()).max() <= bound, "the embedding should be Xavier-uniform"
print(f"[check] parameter count = VD + L·(4D² + 4D + 2DF + F + D + 4D) + DV + V: ok ({expected})")

# %% [markdown]
# ## 2. The forward pass, written out
#
# We write the model's forward from the pieces of the earlier chapters, reading the weights out of a
# `SequenceEncoder`, and compare with its own `forward` and with the seed's PyTorch model
# (`nn.TransformerEncoder` of `nn.TransformerEncoderLayer`, with the weights copied in: see
# `torch_sequence_encoder` in `tutorials/_common.py`, which also shows how PyTorch stacks $W_q, W_k, W_v$).
#
# Two details of $h^0$:
#
# - **the $\sqrt{D}$ factor.** Xavier-initialised embedding entries have variance $a^2/3 = 2/(V + D)$,
#   small next to the $\mathrm{PE}$ entries (which are $\pm 1$ sines and cosines, variance $1/2$). Scaling by
#   $\sqrt{D}$ lifts the token signal to the same order as the position signal, so neither drowns the other.
# - **the padding mask.** PyTorch's `src_key_padding_mask` and minitx's `key_padding_mask` are True at
#   padding; Hugging Face's `attention_mask` is 1 at real tokens. `SequenceEncoder` takes the latter and
#   converts: `key_padding_mask = (attention_mask == 0)`.

# %%
def sinusoidal_pe(steps, d_model):
    """PE(p, 2i) = sin(p·ω_i), PE(p, 2i+1) = cos(p·ω_i), ω_i = 10000^(-2i/D): (T, D) float64 (chapter 03)."""
    pos = np.arange(steps)[:, None]
    omega = 10000.0 ** (-np.arange(0, d_model, 2) / d_model)
    pe = np.zeros((steps, d_model))
    pe[:, 0::2], pe[:, 1::2] = np.sin(pos * omega), np.cos(pos * omega)
    return pe


def embed(model, ids):
    """h⁰ = √D·E[x] + PE[:T]: (B, T) -> (B, T, D)."""
    weight = model.embedding.weight
    d_model = weight.shape[1]
    x = F.embedding(ids, weight) * math.sqrt(d_model)
    return x + mx.tensor(sinusoidal_pe(ids.shape[1], d_model).astype(weight.dtype))


def encoder_layer(x, layer, key_padding_mask=None):
    """The post-norm layer of chapter 06 with the weights of a minitx TransformerEncoderLayer."""
    att = layer.self_attn
    b, t, d = x.shape

    def heads(proj):
        return F.linear(x, proj.weight, proj.bias).reshape(b, t, att.num_heads, d // att.num_heads).permute(0, 2, 1, 3)

    out = F.scaled_dot_product_attention(heads(att.q_proj), heads(att.k_proj), heads(att.v_proj),
                                         key_padding_mask=key_padding_mask)
    out = F.linear(out.permute(0, 2, 1, 3).reshape(b, t, d), att.out_proj.weight, att.out_proj.bias)
    h = F.layer_norm(x + out, d, layer.norm1.weight, layer.norm1.bias)
    ffn = F.linear(F.linear(h, layer.ff.linear1.weight, layer.ff.linear1.bias).relu(),
                   layer.ff.linear2.weight, layer.ff.linear2.bias)
    return F.layer_norm(h + ffn, d, layer.norm2.weight, layer.norm2.bias)


def encoder_forward(model, ids, attention_mask=None):
    """logits (B, T, V) of a SequenceEncoder, from its weights; attention_mask (B, T), 1 = real token."""
    padding = None if attention_mask is None else np.asarray(attention_mask) == 0  # True = pad
    h = embed(model, ids)
    for layer in model.transformer_stack.layers:
        h = encoder_layer(h, layer, padding)
    return F.linear(h, model.output_projection.weight, model.output_projection.bias)


def padded_batch(rng, lengths, vocab, pad_id=0, first_id=1):
    """ids (B, T) with random tokens in [first_id, vocab) then pad_id, and the attention mask (B, T)."""
    t = max(lengths)
    ids = np.full((len(lengths), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(lengths), t), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(first_id, vocab, size=n)
        mask[i, :n] = 1
    return ids, mask


# %% [markdown]
# `check_sequence_encoder(impl)` builds a float64 encoder with random weights (its LayerNorm γ, β and
# biases randomised too, so a missing term cannot hide behind a zero), runs `impl(model, ids,
# attention_mask)` on a batch with padding, and compares the logits with the library model and with the
# seed's PyTorch model, and the gradient of a loss with respect to the embedding table with the library's.

# %%
def check_sequence_encoder(impl, seed=0):
    """Raise AssertionError unless impl(model, ids, attention_mask) gives a SequenceEncoder's logits."""
    mx.manual_seed(seed)
    r = np.random.default_rng(seed)
    m = SequenceEncoder(11, 16, 4, 24, 2, drop_rate=0.0, max_len=32).double()
    for name, p in m.named_parameters():
        if p.ndim == 1:  # biases and LayerNorm γ, β: away from their 0 / 1 initial values
            p.data[...] = (1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else 0.0) \
                + r.normal(0, 0.2, p.shape)
    ids, mask = padded_batch(r, [7, 4, 5], 11)
    g = r.normal(size=(*ids.shape, 11))
    got = impl(m, ids, mask)
    (got * mx.tensor(g)).sum().backward()
    grad_got = m.embedding.weight.grad.copy()
    m.zero_grad()
    want = m(ids, mask)
    (want * mx.tensor(g)).sum().backward()
    C.close("encoder logits vs minitx SequenceEncoder", got, want, atol=1e-10)
    C.close("dL/dE (embedding table) vs minitx SequenceEncoder", grad_got, m.embedding.weight.grad, atol=1e-9)
    if torch is not None:
        seed_model = C.torch_sequence_encoder(m, torch)
        ref = seed_model(torch.tensor(ids), src_key_padding_mask=torch.tensor(mask == 0))
        C.close("encoder logits vs the seed's PyTorch nn.TransformerEncoder model", got, ref, atol=1e-9)


check_sequence_encoder(encoder_forward)

# %% [markdown]
# ## 3. Why the padding mask matters
#
# To put sequences of different lengths in one batch we pad the short ones, here with token 0. Padding
# is bookkeeping: a sequence's outputs should not depend on how much padding its batch needed. Attention
# is where that can go wrong. For a real query $i$ the weights are
#
# $$ p_{ij} = \frac{e^{s_{ij}}}{\sum_{j'\,\text{real}} e^{s_{ij'}} + \sum_{j'\,\text{pad}} e^{s_{ij'}}} . $$
#
# Without a mask the padding keys take a share of every softmax (the second sum) and add their values
# into every output; more padding, bigger share. With the mask their scores are $-\infty$, the second sum
# is exactly 0, and a real token's output is the same as without any padding. (The outputs *at* the
# padding positions are still computed; they are meaningless and must be ignored: `IGNORE_INDEX` in the
# loss, the mask in pooling — chapter 09.)
#
# The seed's PyTorch `forward(source)` takes no mask, so it behaves like the first case. Below: one
# sequence of length 6, run alone and then padded to $6 + n$, with and without the mask. (With the mask
# the differences, ~$10^{-7}$, are float32 rounding: the matrix products have different shapes. At $n = 0$
# both are exactly 0 and drawn at $10^{-9}$.)

# %%
def check_padding_invariance(forward, seed=1, vocab=V):
    """Raise AssertionError unless forward(ids, attention_mask) gives each sequence's real positions the
    same outputs whether it is run alone or in a padded batch."""
    r = np.random.default_rng(seed)
    ids, mask = padded_batch(r, [3, 9, 6], vocab)
    together = C.as_numpy(forward(ids, mask))
    for i, n in enumerate(mask.sum(1)):
        alone = C.as_numpy(forward(ids[i: i + 1, :n], mask[i: i + 1, :n]))
        C.close(f"sequence {i} (length {n}) alone vs in the padded batch", together[i, :n], alone[0], atol=1e-5)


model.eval()
with mx.no_grad():
    check_padding_invariance(lambda ids, m: model(ids, m))
    r = np.random.default_rng(2)
    x = r.integers(1, V, size=(1, 6))
    alone = model(x).numpy()[0]
    extra = np.arange(0, 21, 2)
    drift = {"mask ignored (the seed)": [], "mask honoured": []}
    for n in extra:
        padded = np.concatenate([x, np.zeros((1, n), dtype=np.int64)], axis=1)
        mask = (padded != 0).astype(np.int64)
        drift["mask ignored (the seed)"].append(np.abs(model(padded).numpy()[0, :6] - alone).max())
        drift["mask honoured"].append(np.abs(model(padded, mask).numpy()[0, :6] - alone).max())
for name, values in drift.items():
    print(f"{name:24s} max |Δ logit| of the real tokens:", " ".join(f"{v:.1e}" for v in values))
assert drift["mask ignored (the seed)"][-1] > 0.1, "without the mask padding should change the outputs"
assert max(drift["mask honoured"]) < 1e-5

fig, ax = C.plt.subplots(figsize=(6.5, 4))
for (name, values), style in zip(drift.items(), ("o-", "s-")):
    ax.semilogy(extra, np.maximum(values, 1e-9), style, label=name)
ax.set(xlabel="padding tokens appended to a sequence of 6", ylabel="max |logit − logit without padding|",
       title="outputs of the real tokens vs amount of padding")
ax.legend()
C.save(fig, CHAPTER, "padding_effect")

# %% [markdown]
# ### The seed's other bug: it is sequence-first
#
# The seed builds `nn.TransformerEncoderLayer(d_model, nhead, ...)` without `batch_first=True`, so PyTorch
# reads its input as $(T, B, D)$: **sequence first**. Its `PositionalEncoding` agrees (`pe` has shape
# `(max_len, 1, D)` and adds `pe[:x.size(0)]`, one row per entry of axis 0). But `nn.Embedding` of a batch
# of token ids laid out the usual way, $(B, T)$, gives $(B, T, D)$, and then every piece reads the wrong
# axis:
#
# - the positional encoding is added **by batch index**: example $b$ gets $\mathrm{PE}(b)$ at all its
#   positions, and positions inside a sentence get none;
# - attention runs **across examples**: position $t$ of example 0 attends to position $t$ of examples
#   $1, 2, \dots$ — a sentence's output depends on the other sentences in its batch;
# - the seed's `TaskAdapter` then pools with `encoded.mean(dim=1)`: with $(T, B, \cdot)$ data, dim 1 is the
#   **batch**, so it averages over the examples (and with $(B, T, \cdot)$ data it averages over positions
#   padding included — section 3 of chapter 09).
#
# And `TaskAdapter` pools `self.encoder(...)`, which returns `output_projection(...)`: **vocabulary
# logits** $(\cdot, \cdot, V)$, not the $D$-dimensional hidden states its `nn.Linear(in_features=D)`
# classifier expects (it also passes an `attention_mask` that the seed's `forward(source)` does not accept).
# The library's `SequenceEncoder` is batch-first, takes the mask, and exposes the hidden states as
# `encode(ids, mask)`; `TaskAdapter` pools those.
#
# We can reproduce the sequence-first mix-up with the library's model: hand it the batch transposed,
# $(T, B)$, which is what the seed's layers see. Change example 1 only, and example 0's outputs move:

# %%
with mx.no_grad():
    r = np.random.default_rng(4)
    batch = r.integers(1, V, size=(3, 6))  # (B, T)
    changed = batch.copy()
    changed[1] = r.integers(1, V, size=6)  # a different sentence in slot 1
    seq_first = lambda ids: model(ids.T).numpy().transpose(1, 0, 2)  # noqa: E731  the seed's reading: (T, B)
    leak = np.abs(seq_first(changed)[0] - seq_first(batch)[0]).max()
    right = np.abs(model(changed).numpy()[0] - model(batch).numpy()[0]).max()
print(f"example 0's logits move by {leak:.2f} when example 1 changes (sequence-first), {right:.1e} (batch-first)")
assert leak > 0.1 and right < 1e-6, "sequence-first attention mixes the examples of a batch; batch-first does not"

# %% [markdown]
# ## 4. Training: sorting digits
#
# A task an encoder can learn in seconds, and one where every output needs the whole input: the
# input is 3 to 10 random digits $1\dots9$ (padded with 0 to length 10), the target at position $t$ is
# the $t$-th smallest input digit. The loss is the mean cross-entropy over the real positions; padding
# positions get the target `IGNORE_INDEX` (−100), which `F.cross_entropy` skips:
#
# $$ \mathcal{L} = -\frac{1}{\sum_{b,t} m_{bt}} \sum_{b,t} m_{bt}\,\log P(y_{bt} \mid x_b). $$
#
# A model that knows nothing predicts uniformly over the $V = 10$ outputs, $\mathcal{L} = \ln 10 \approx 2.30$;
# one that learned only which digits occur (1–9, uniformly) gets $\ln 9 \approx 2.20$. AdamW, a short
# linear warm-up and a cosine decay of the learning rate (`optim.warmup_cosine`).

# %%
def sort_batch(rng, n, max_len=10):
    ids, mask = padded_batch(rng, rng.integers(3, max_len + 1, size=n), 10)  # digits 1..9, pad 0
    ids = np.pad(ids, ((0, 0), (0, max_len - ids.shape[1])))
    mask = np.pad(mask, ((0, 0), (0, max_len - mask.shape[1])))
    targets = np.full_like(ids, IGNORE_INDEX)
    for i in range(n):
        k = mask[i].sum()
        targets[i, :k] = np.sort(ids[i, :k])
    return ids, mask, targets


def accuracy(model, ids, mask, targets):
    with mx.no_grad():
        pred = model(ids, mask).numpy().argmax(-1)
    real = mask == 1
    return (pred == targets)[real].mean(), ((pred == targets) | ~real).all(1).mean()


steps, batch_size, lr = C.pick(600, 150), C.pick(64, 32), C.pick(3e-3, 1e-2)
mx.manual_seed(0)
rng = np.random.default_rng(0)
sorter = SequenceEncoder(10, D, H, FF, L, drop_rate=0.0, max_len=64)
optimizer = optim.AdamW(sorter.parameters(), lr=lr, weight_decay=0.01)
scheduler = optim.warmup_cosine(optimizer, warmup_steps=20, total_steps=steps, min_lr_ratio=0.1)
held_out = sort_batch(np.random.default_rng(123), 500)
history, evals = [], []
with C.Timer() as timer:
    for step in range(steps):
        ids, mask, targets = sort_batch(rng, batch_size)
        loss = F.cross_entropy(sorter(ids, mask), targets, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            sorter.eval()
            evals.append((step, *accuracy(sorter, *held_out)))
            sorter.train()
sorter.eval()
token_acc, seq_acc = evals[-1][1:]
print(f"{steps} steps in {timer.seconds:.1f} s; loss {np.mean(history[:10]):.3f} -> {np.mean(history[-10:]):.3f}; "
      f"held-out accuracy: {token_acc:.1%} of tokens, {seq_acc:.1%} of whole sequences")
with mx.no_grad():
    example = held_out[0][:3]
    predicted = sorter(example, held_out[1][:3]).numpy().argmax(-1)
for i in range(3):
    k = held_out[1][i].sum()
    print(f"  input {example[i, :k].tolist()} -> predicted {predicted[i, :k].tolist()}  (true {held_out[2][i, :k].tolist()})")
assert np.mean(history[-10:]) < 0.5 * math.log(9), "the loss should fall well below ln 9"
assert token_acc > C.pick(0.95, 0.7), f"token accuracy {token_acc:.2f} too low"
with mx.no_grad():
    check_padding_invariance(lambda ids, m: sorter(ids, m), vocab=10)

fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(11, 4))
ax1.plot(history, lw=0.8, label="training batch")
ax1.axhline(math.log(10), color="gray", ls=":", label="ln 10 (uniform)")
ax1.axhline(math.log(9), color="gray", ls="--", label="ln 9 (digit frequencies only)")
ax1.set(xlabel="step", ylabel="cross-entropy (nats)", title="sorting 3–10 digits: loss", yscale="log")
ax1.legend()
e = np.array(evals)
ax2.plot(e[:, 0], e[:, 1], "o-", label="tokens correct")
ax2.plot(e[:, 0], e[:, 2], "s-", label="whole sequences correct")
ax2.set(xlabel="step", ylabel="held-out accuracy", title="accuracy on 500 unseen sequences", ylim=(0, 1.02))
ax2.legend()
C.save(fig, CHAPTER, "sort_training")

# %% [markdown]
# ## 5. The same training in PyTorch
#
# With the same initial weights, the same batches and the same optimiser settings, the seed's PyTorch
# model and ours should follow the same loss trajectory (float64, no dropout), step for step: this checks
# the backward passes and AdamW together, not just one forward.

# %%
if torch is not None:
    mx.manual_seed(3)
    ours = SequenceEncoder(10, 16, 4, 32, 2, drop_rate=0.0, max_len=16).double()
    theirs = C.torch_sequence_encoder(ours, torch)
    opt_ours = optim.AdamW(ours.parameters(), lr=3e-3, weight_decay=0.01)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=3e-3, weight_decay=0.01)
    r = np.random.default_rng(4)
    losses = []
    for _ in range(C.pick(20, 8)):
        ids, mask, targets = sort_batch(r, 16)
        loss = F.cross_entropy(ours(ids, mask), targets, ignore_index=IGNORE_INDEX)
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()
        tl = torch.nn.functional.cross_entropy(
            theirs(torch.tensor(ids), src_key_padding_mask=torch.tensor(mask == 0)).reshape(-1, 10),
            torch.tensor(targets).reshape(-1), ignore_index=IGNORE_INDEX)
        opt_theirs.zero_grad()
        tl.backward()
        opt_theirs.step()
        losses.append((loss.item(), tl.item()))
    losses = np.array(losses)
    C.close("AdamW training losses, step by step, vs the PyTorch seed model", losses[:, 0], losses[:, 1], atol=1e-8)
else:
    print("(torch is not installed: the step-by-step training comparison is skipped)")

# %% [markdown]
# ## Exercises
#
# 1. Drop the `* math.sqrt(d_model)` in `embed` and retrain the sorter. Does it still learn? Print the
#    standard deviations of $E[x]$ and of $\mathrm{PE}$ to see which signal dominates $h^0$.
# 2. Train the sorter with `sorter(ids)` (no mask — the seed's forward). It still learns to sort (the
#    padding token 0 is easy to recognise), but run `check_padding_invariance` on it. Why does that fail,
#    and why does it matter when the same model is later used on batches padded differently?
# 3. Replace the sorting task by reversal (`targets[i, :k] = ids[i, :k][::-1]`). Which is learned faster,
#    and why might that be, given that reversal depends only on positions and the length?
