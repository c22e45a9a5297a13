# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 04 — Scaled dot-product attention
#
# $$ \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_k}} + M\Big)\,V $$
#
# Each of $T_q$ queries asks "which of the $T_k$ keys look like me?"; the answers (one score per key,
# turned into weights by a softmax) say how much of each key's **value** to mix into that query's output.
# $M$ is a mask: $0$ where a query may look, $-\infty$ where it may not.
#
# This chapter builds attention from four minitx ops (matmul, multiply, masked_fill, softmax), derives its
# backward pass, checks both against PyTorch, shows numerically *why* the scores are divided by
# $\sqrt{d_k}$, and draws the attention weights.

# %%
import math

import numpy as np

import minitx as mx
import minitx.functional as F

import _common as C

CHAPTER = "04_attention"
torch = C.torch_or_none()
mx.manual_seed(0)

# %% [markdown]
# ## 1. Shapes
#
# | tensor | shape | meaning |
# |---|---|---|
# | $Q$ | $(B, T_q, d_k)$ | one query vector per output position |
# | $K$ | $(B, T_k, d_k)$ | one key per input position (same width as the queries: they are dotted) |
# | $V$ | $(B, T_k, d_v)$ | one value per input position |
# | $S = QK^\top/\sqrt{d_k}$ | $(B, T_q, T_k)$ | scores: query $i$ against key $j$ |
# | $P = \operatorname{softmax}(S + M)$ | $(B, T_q, T_k)$ | weights; each row sums to 1 |
# | $O = PV$ | $(B, T_q, d_v)$ | each output is a weighted average of the values |
#
# `k.transpose(-2, -1)` swaps the last two axes, so `q @ k.transpose(-2, -1)` is a batch of
# $(T_q, d_k)\times(d_k, T_k)$ products. With several heads (chapter 05) the batch is $(B, H)$; nothing
# below changes.

# %%
def attention(q, k, v, mask=None):
    """softmax(Q Kᵀ / √d_k, masked) V.  mask: bool, broadcastable to (…, Tq, Tk), True = may NOT look."""
    d_k = q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d_k))  # (…, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(mask, -math.inf)  # e^(-inf) = 0: no weight at all
    weights = scores.softmax(axis=-1)  # (…, Tq, Tk), rows sum to 1
    return weights @ v  # (…, Tq, d_v)


def attention_weights(q, k, mask=None):
    """Just P (for plotting), the same way."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    return (scores.masked_fill(mask, -math.inf) if mask is not None else scores).softmax(axis=-1)


# %% [markdown]
# ## 2. Masks
#
# Two masks cover almost every use:
#
# - **padding**: sequences of different lengths share a batch by padding the short ones; no query may
#   look at a padding key. For lengths $\ell_b$, key $j$ of sequence $b$ is hidden when $j \ge \ell_b$:
#   shape $(B, 1, T_k)$, broadcast over the queries.
# - **causal**: a language model predicting token $t+1$ must not see tokens after $t$: query $i$ may not
#   look at key $j > i$, the strict upper triangle, shape $(T, T)$, broadcast over the batch.
#
# Masks combine with a logical OR. minitx uses True = *hidden* (like `torch.nn.MultiheadAttention`);
# note that `torch.nn.functional.scaled_dot_product_attention` uses the opposite convention (True = may
# look), which is why the check below passes it `~mask`.

# %%
def padding_mask(lengths, t_k):
    """(B, 1, Tk) bool: True at the padding keys."""
    return (np.arange(t_k)[None, :] >= np.asarray(lengths)[:, None])[:, None, :]


def causal_mask(t):
    """(T, T) bool: True above the diagonal (keys in the future)."""
    return np.triu(np.ones((t, t), dtype=bool), k=1)


print("padding mask for lengths (3, 5), Tk = 5:\n", padding_mask([3, 5], 5).astype(int)[:, 0])
print("causal mask, T = 4:\n", causal_mask(4).astype(int))

# %% [markdown]
# ## 3. The backward pass
#
# Write $s = 1/\sqrt{d_k}$, $S = s\,QK^\top$, $P = \operatorname{softmax}(S)$ row by row, $O = PV$, and let
# $dX$ denote $\partial L/\partial X$. Going backwards through the three steps (chapter 02 derived the
# matmul and softmax rules):
#
# $$ dV = P^\top dO, \qquad dP = dO\,V^\top, $$
# $$ dS_{ij} = P_{ij}\Big(dP_{ij} - \sum_{j'} dP_{ij'}P_{ij'}\Big), $$
# $$ dQ = s\, dS\, K, \qquad dK = s\, dS^\top Q. $$
#
# Masked entries have $P_{ij} = 0$, so $dS_{ij} = 0$: no gradient flows to a key a query could not see.
# Note that the row sum $\sum_{j'} dP_{ij'}P_{ij'} = \sum_{d} dO_{id}\,O_{id}$. The fused attention
# kernels (`kernels/cpu/attention.py`, `kernels/cuda/attention.py`) use this: their forward pass keeps only $O$ and
# each row's log-sum-exp, and their backward pass computes the row sums from $dO$ and $O$ first, then
# recomputes $P$ piece by piece from the log-sum-exp, so the whole of $P$ is never stored.

# %%
def attention_backward_by_hand(q, k, v, mask, d_out):
    """NumPy forward and backward of attention, written from the formulas above."""
    s = 1.0 / math.sqrt(q.shape[-1])
    scores = s * q @ np.swapaxes(k, -1, -2)
    if mask is not None:
        scores = np.where(mask, -np.inf, scores)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    d_v = np.swapaxes(p, -1, -2) @ d_out
    d_p = d_out @ np.swapaxes(v, -1, -2)
    d_s = p * (d_p - (d_p * p).sum(-1, keepdims=True))
    return out, s * d_s @ k, s * np.swapaxes(d_s, -1, -2) @ q, d_v


# %% [markdown]
# ## 4. The check
#
# `check_attention(impl)` runs a candidate `impl(q, k, v, mask)` on a batch with both kinds of masking
# and compares its output and its three input gradients with
#
# 1. PyTorch's `scaled_dot_product_attention` (when PyTorch is installed),
# 2. the NumPy forward/backward above,
# 3. minitx's own `F.scaled_dot_product_attention`,
#
# then verifies two properties that need no reference: rewriting the values at masked keys changes
# nothing, and `gradcheck` (finite differences, chapter 01) agrees with the backward.

# %%
def check_attention(impl, seed=0):
    """Raise AssertionError unless impl(q, k, v, mask) computes masked scaled dot-product attention."""
    r = np.random.default_rng(seed)
    b, t_q, t_k, d_k, d_v = 2, 5, 6, 8, 3
    qs, ks, vs = r.normal(size=(b, t_q, d_k)), r.normal(size=(b, t_k, d_k)), r.normal(size=(b, t_k, d_v))
    mask = padding_mask([4, 6], t_k) | causal_mask(t_k)[1:]  # (B, Tq, Tk); every query sees ≥ 1 key
    g = r.normal(size=(b, t_q, d_v))
    q, k, v = (mx.tensor(a, requires_grad=True, dtype=np.float64) for a in (qs, ks, vs))
    out = impl(q, k, v, mx.tensor(mask))
    out.backward(g)
    got = (out, q.grad, k.grad, v.grad)
    names = ("output", "dL/dQ", "dL/dK", "dL/dV")
    if torch is not None:
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (qs, ks, vs))
        to = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.tensor(~mask))
        to.backward(torch.tensor(g))
        for name, a, ref in zip(names, got, (to, tq.grad, tk.grad, tv.grad)):
            C.close(f"attention {name} vs PyTorch", a, ref, atol=1e-10)
    for name, a, ref in zip(names, got, attention_backward_by_hand(qs, ks, vs, mask, g)):
        C.close(f"attention {name} vs the hand-derived NumPy formulas", a, ref, atol=1e-10)
    library = F.scaled_dot_product_attention(mx.tensor(qs), mx.tensor(ks), mx.tensor(vs), attn_mask=mask)
    C.close("attention output vs minitx.functional.scaled_dot_product_attention", out, library, atol=1e-10)
    # masked keys must not matter: scribble over the values (and keys) that every query has masked out
    hidden = mask.all(axis=1)  # (B, Tk): keys no query may see
    vs2, ks2 = vs.copy(), ks.copy()
    vs2[hidden], ks2[hidden] = 1e3, -1e3
    out2 = impl(mx.tensor(qs), mx.tensor(ks2), mx.tensor(vs2), mx.tensor(mask))
    C.close("output unchanged when masked keys/values change", out2, out.numpy(), atol=1e-10)
    # finite differences on a smaller problem
    small = [mx.tensor(a[:1, :3, :4] if i < 2 else a[:1, :3], requires_grad=True, dtype=np.float64)
             for i, a in enumerate((qs, ks, vs))]
    result = mx.gradcheck(lambda q_, k_, v_: impl(q_, k_, v_, mx.tensor(causal_mask(3))), small)
    print(f"[check] gradcheck of attention: {result}")


check_attention(attention)

# %% [markdown]
# ## 5. Why divide by $\sqrt{d_k}$?
#
# Take query and key entries independent with mean 0 and variance 1 (roughly what a freshly initialised
# layer produces). Then $q\cdot k = \sum_{m=1}^{d_k} q_m k_m$ is a sum of $d_k$ independent terms of mean
# 0 and variance $\mathbb{E}[q_m^2]\mathbb{E}[k_m^2] = 1$, so
#
# $$ \operatorname{Var}(q\cdot k) = d_k, \qquad \operatorname{Var}\Big(\frac{q\cdot k}{\sqrt{d_k}}\Big) = 1. $$
#
# Without the scaling, the scores of a 512-wide head have a standard deviation of about 23. A softmax of
# numbers that far apart is essentially a one-hot vector ("saturated"), and its Jacobian
# $\operatorname{diag}(p) - pp^\top$ is then nearly zero: the gradient that should teach the queries and
# keys where to look vanishes. Dividing by $\sqrt{d_k}$ keeps the scores at unit variance whatever the
# width. Below we measure all three effects.

# %%
dims = np.array([4, 16, 64, 256, 1024])
n_samples, t_keys = C.pick(4000, 500), 32
r = np.random.default_rng(1)
stats = {"unscaled": {"var": [], "max_p": [], "jac": []}, "scaled by 1/√d_k": {"var": [], "max_p": [], "jac": []}}
for d_k in dims:
    q = mx.tensor(r.standard_normal((n_samples, 1, d_k)).astype(np.float32))
    k = mx.tensor(r.standard_normal((n_samples, t_keys, d_k)).astype(np.float32))
    raw = (q @ k.transpose(-2, -1)).numpy()[:, 0, :]  # (n_samples, Tk) scores q·k
    for name, scale in (("unscaled", 1.0), ("scaled by 1/√d_k", 1 / math.sqrt(d_k))):
        p = mx.tensor(raw * scale).softmax(axis=-1).numpy().astype(np.float64)
        # Frobenius norm of the softmax Jacobian diag(p) - p pᵀ, per row of scores:
        # ‖·‖² = Σ p_i² - 2 Σ p_i³ + (Σ p_i²)²  (clipped at 0 against rounding when p is one-hot)
        sq = (p ** 2).sum(-1)
        jac = np.sqrt(np.maximum(sq - 2 * (p ** 3).sum(-1) + sq ** 2, 0.0))
        stats[name]["var"].append((raw * scale).var())
        stats[name]["max_p"].append(p.max(-1).mean())
        stats[name]["jac"].append(jac.mean())
for name in stats:
    print(f"{name:17s} var(score) {np.round(stats[name]['var'], 2)}  mean max weight "
          f"{np.round(stats[name]['max_p'], 3)}  mean ‖Jacobian‖ {np.round(stats[name]['jac'], 3)}")

var_raw, var_scaled = np.array(stats["unscaled"]["var"]), np.array(stats["scaled by 1/√d_k"]["var"])
C.close("Var(q·k) = d_k", var_raw / dims, np.ones(len(dims)), atol=0.1)
C.close("Var(q·k/√d_k) = 1", var_scaled, np.ones(len(dims)), atol=0.1)
assert stats["unscaled"]["max_p"][-1] > 0.9, "unscaled softmax should be nearly one-hot at d_k = 1024"
assert stats["unscaled"]["jac"][-1] < stats["scaled by 1/√d_k"]["jac"][-1] / 3, "its gradient should shrink"

fig, axes = C.plt.subplots(1, 3, figsize=(13, 3.8))
for name, style in (("unscaled", "o-"), ("scaled by 1/√d_k", "s-")):
    axes[0].loglog(dims, stats[name]["var"], style, label=name)
    axes[1].semilogx(dims, stats[name]["max_p"], style, label=name)
    axes[2].semilogx(dims, stats[name]["jac"], style, label=name)
axes[0].loglog(dims, dims, "k:", label="d_k")
axes[1].axhline(1 / t_keys, color="gray", ls=":", label=f"uniform (1/{t_keys})")
axes[0].set(xlabel="d_k", ylabel="variance of the score", title="Var(q·k) grows like d_k")
axes[1].set(xlabel="d_k", ylabel="mean of the largest weight", title=f"softmax saturates ({t_keys} keys)")
axes[2].set(xlabel="d_k", ylabel="mean ‖diag(p) − p pᵀ‖_F  (softmax Jacobian)", title="…and its gradient vanishes")
for ax in axes:
    ax.legend()
C.save(fig, CHAPTER, "sqrt_dk_scaling")

# %% [markdown]
# ## 6. Looking at the weights
#
# Left: a hand-made example. Each token's query and key are its one-hot code times 4, so a query scores
# highly against keys of the *same* token; with a causal mask every position attends to the earlier
# occurrences of its own word (and itself), and to nothing in the future (white upper triangle: weight
# exactly 0). Right: random queries and keys for a batch of two sequences of lengths 7 and 10 padded to
# 10; the padding columns of the first sequence get no weight. The padding *rows* (queries 7–9) still
# have weights that sum to 1: the mask hides padding **keys**, and a padding query, like any other, spreads
# its weight over the real keys. Its output is computed and meaningless; nothing downstream may read it
# (the loss ignores those positions, pooling masks them: chapters 07 and 09).

# %%
words = "the cat sat on the mat and the cat ran".split()
vocab = sorted(set(words))
codes = 4.0 * np.eye(len(vocab), dtype=np.float32)[[vocab.index(w) for w in words]]  # (T, V)
codes = mx.tensor(codes[None])  # (1, T, V)
causal = causal_mask(len(words))
p_words = attention_weights(codes, codes, causal).numpy()[0]

t = 10
qr, kr = mx.randn(2, t, 16), mx.randn(2, t, 16)
p_pad = attention_weights(qr, kr, padding_mask([7, 10], t)).numpy()

C.close("weights rows sum to 1", p_words.sum(-1), np.ones(len(words)), atol=1e-6)
C.close("no weight on future tokens", p_words[causal], np.zeros(int(causal.sum())), atol=0)
C.close("no weight on padding keys", p_pad[0][:, 7:], np.zeros((t, 3)), atol=0)

fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(12, 5))
shown = np.ma.masked_where(causal, p_words)  # masked cells drawn white
C.heatmap(fig, ax1, shown, "attention weight", cmap="magma_r", vmin=0, vmax=1, aspect="equal")
ax1.set_xticks(range(len(words)), [f"{w}\n{i}" for i, w in enumerate(words)], fontsize=7)
ax1.set_yticks(range(len(words)), [f"{i} {w}" for i, w in enumerate(words)], fontsize=7)
ax1.set(xlabel="key (position it looks at)", ylabel="query", title="causal self-attention, q = k = 4·onehot(token)")
C.heatmap(fig, ax2, p_pad[0], "attention weight", cmap="magma_r", vmin=0, aspect="equal")
ax2.axvline(6.5, color="c", ls="--")
ax2.axhline(6.5, color="c", ls=":")
ax2.text(8.0, 4.5, "padding keys", color="c", rotation=90, ha="center", va="center", fontsize=11)
ax2.set(xlabel="key position", ylabel="query position", title="random q, k; sequence of length 7 padded to 10\n"
       "below the dotted line: padding queries (weights sum to 1, output unused)")
C.save(fig, CHAPTER, "attention_weights")

# %% [markdown]
# ## Exercises
#
# 1. Remove the `* (1.0 / math.sqrt(d_k))` from `attention` and run `check_attention(attention)`. Then
#    put it back but mask with `0.0` instead of `-math.inf`. Which checks catch each mistake?
# 2. A query whose keys are *all* masked gives a row of $-\infty$ scores. What does `softmax` return for
#    it in minitx (see `minitx/ops/nn.py`)? What does PyTorch return? Why might a library choose zeros?
# 3. Scale the one-hot codes in section 6 by 1, 4 and 16. How does the picture change, and how does that
#    relate to section 5?
