# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 20 — The modern blocks: RMSNorm, RoPE, SwiGLU, grouped-query attention
#
# GPT-2 (chapter 10) and a 2024 model such as Llama or SmolLM2 are the same stack of pre-norm decoder blocks.
# Four parts changed:
#
# | part | GPT-2 | Llama / SmolLM2 |
# |---|---|---|
# | norm | LayerNorm: centre, scale, shift | RMSNorm: scale only |
# | positions | a learned table added to the input | rotary: q and k turned by angles $m\,\omega_i$ |
# | feed-forward | $\mathrm{GELU}(xW_1^\top)W_2^\top$ | SwiGLU $(\mathrm{SiLU}(xW_g^\top)\odot xW_u^\top)W_d^\top$ |
# | attention | $H$ key/value heads | $H_{kv} < H$ key/value heads shared by groups of queries |
#
# We write each in NumPy, check it against minitx's library part (`minitx/nn/`) and, when it is installed,
# PyTorch, and measure what it changes. Chapter 21 runs a real model built from them.

# %%
import math

import numpy as np

import minitx.functional as F
from minitx import Tensor, nn

import _common as C

CHAPTER = "20_modern_blocks"
rng = np.random.default_rng(0)
torch = C.torch_or_none()
print("references: minitx's library parts" + (f" and PyTorch {torch.__version__}" if torch else ""))

# %% [markdown]
# ## 1. RMSNorm vs LayerNorm
#
# For a row $x \in \mathbb{R}^D$: LayerNorm subtracts the mean and divides by the standard deviation, then
# scales and shifts; RMSNorm only divides by the root mean square,
# $\mathrm{RMS}(x)=\sqrt{\frac1D\sum_j x_j^2+\epsilon}$, and scales: $y = x / \mathrm{RMS}(x) \cdot \gamma$.
# One statistic instead of two, no $\beta$. On a row whose mean is zero, $\overline{x^2} = \sigma^2$ and
# the two coincide: RMSNorm is LayerNorm without re-centring, which in practice the model does not miss.

# %%
def rms_norm(x, gamma, eps=1e-5):
    """x (…, D), gamma (D,) -> (…, D)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gamma


def layer_norm(x, gamma, beta, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta


def check_rms_norm(impl):
    """``impl(x, gamma, eps)`` against minitx's RMSNorm (and torch.nn.functional.rms_norm when available)."""
    x = rng.standard_normal((3, 5, 16)) * 3 + 1
    gamma = rng.standard_normal(16)
    layer = nn.RMSNorm(16, eps=1e-5, dtype=np.float64)
    layer.weight.data[...] = gamma
    C.close("RMSNorm vs minitx.nn.RMSNorm", impl(x, gamma, 1e-5), layer(Tensor(x)), atol=1e-12, rtol=1e-10)
    if torch is not None:
        ref = torch.nn.functional.rms_norm(torch.tensor(x), (16,), torch.tensor(gamma), eps=1e-5)
        C.close("RMSNorm vs torch.nn.functional.rms_norm", impl(x, gamma, 1e-5), ref, atol=1e-12, rtol=1e-10)


check_rms_norm(rms_norm)
x = rng.standard_normal((4, 16)) * 2 + 3
centred = x - x.mean(-1, keepdims=True)
C.close("RMSNorm of a zero-mean row = LayerNorm", rms_norm(centred, np.ones(16)),
        layer_norm(centred, np.ones(16), np.zeros(16)), atol=1e-12)
print(f"on rows with mean 3: RMSNorm keeps a mean of {rms_norm(x, np.ones(16)).mean():.2f} per feature "
      f"(LayerNorm removes it: {layer_norm(x, np.ones(16), np.zeros(16)).mean():.1e})")

# %% [markdown]
# ## 2. Rotary position embedding, derived
#
# **The rotation.** Split a head's $d$ features into $d/2$ pairs and read pair $i$ as a complex number
# $q_i = a + ib$. At position $m$, multiply it by $e^{i m \omega_i}$ with $\omega_i = \text{base}^{-2i/d}$:
#
# $$\begin{pmatrix} a' \\ b' \end{pmatrix} = \begin{pmatrix} \cos m\omega_i & -\sin m\omega_i \\
#   \sin m\omega_i & \cos m\omega_i \end{pmatrix} \begin{pmatrix} a \\ b \end{pmatrix}.$$
#
# **The relative-position property.** The score of a query at $m$ and a key at $n$ is
# $\sum_i \mathrm{Re}\big[q_i e^{im\omega_i}\,\overline{k_i e^{in\omega_i}}\big]
#  = \sum_i \mathrm{Re}\big[q_i \bar k_i\, e^{i(m-n)\omega_i}\big]$: it depends on the positions only through
# $m - n$. Nothing is added to the residual stream, and a cached key, rotated once at its own position, is
# right for every later query.
#
# **Two layouts.** Which features form pair $i$ is a convention: the paper and llama.cpp (GGUF files) pair
# adjacent features $(x_{2i}, x_{2i+1})$; Hugging Face pairs the halves $(x_i, x_{i+d/2})$ ("rotate-half").

# %%
def rope_angles(positions, d, base=10000.0):
    """θ_{m,i} = m·base^(-2i/d): (T, d/2)."""
    return np.asarray(positions, dtype=np.float64)[:, None] * base ** (-np.arange(0, d, 2) / d)


def rope(x, positions, base=10000.0, interleaved=False):
    """Rotate x (…, T, d) at ``positions`` (T,): pairs (2i, 2i+1) if ``interleaved`` else (i, i + d/2)."""
    d = x.shape[-1]
    theta = rope_angles(positions, d, base)
    cos, sin = np.cos(theta), np.sin(theta)  # (T, d/2)
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., : d // 2], x[..., d // 2:])
    a2, b2 = a * cos - b * sin, a * sin + b * cos
    if interleaved:
        return np.stack([a2, b2], axis=-1).reshape(x.shape)
    return np.concatenate([a2, b2], axis=-1)


def check_rope(impl):
    """``impl(x, positions, base, interleaved)`` against minitx's RotaryEmbedding in both layouts, and against
    a plain complex multiplication; then the relative-position property."""
    x = rng.standard_normal((2, 3, 7, 8))  # (B, H, T, d)
    for interleaved in (False, True):
        layer = nn.RotaryEmbedding(8, base=100.0, interleaved=interleaved)
        C.close(f"RoPE ({'interleaved' if interleaved else 'rotate-half'}) vs minitx.nn.RotaryEmbedding, offset 5",
                impl(x, np.arange(5, 12), 100.0, interleaved), layer(Tensor(x), offset=5), atol=1e-12)
    z = x[..., 0::2] + 1j * x[..., 1::2]  # adjacent pairs as complex numbers
    turned = z * np.exp(1j * rope_angles(np.arange(7), 8, 100.0))
    C.close("interleaved RoPE = multiplication by e^{i m ω}", impl(x, np.arange(7), 100.0, True),
            np.stack([turned.real, turned.imag], -1).reshape(x.shape), atol=1e-12)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    score = lambda m, n: impl(q[None], [m], 100.0, False)[0] @ impl(k[None], [n], 100.0, False)[0]  # noqa: E731
    C.close("q_m·k_n depends only on m - n", [score(m, m - 3) for m in range(3, 40, 6)], [score(3, 0)] * 7, atol=1e-10)


check_rope(rope)

# %% [markdown]
# How the score of a fixed query and key falls off with their distance: the fast pairs (small $i$) turn
# quickly and average out; only the slow ones keep long-range information. A larger base (SmolLM2: 100000)
# makes the slowest pairs slower still, for longer contexts.

# %%
d, offsets = 64, np.arange(0, 400)
q = np.ones(d)  # the same vector for query and key: the score is Σ_i 2 cos((m - n) ω_i)
fig, ax = C.plt.subplots(figsize=(6.5, 3))
for base in (10000.0, 100000.0):
    scores = [rope(q[None], [t], base)[0] @ q for t in offsets]
    ax.plot(offsets, scores, label=f"base {base:g}")
ax.set(xlabel="offset m - n", ylabel="q_m · k_n", title="RoPE: score of q = k = 1 by offset")
ax.legend()
C.save(fig, CHAPTER, "rope_relative")

# %% [markdown]
# **The q/k permutation.** The two layouts differ only in which features are paired. If, in every head, we
# move rows $i$ and $i + d/2$ of $W_q$ and $W_k$ to rows $2i$ and $2i+1$, the projected q and k hold the same
# pairs in adjacent places: interleaved RoPE on the permuted weights equals rotate-half RoPE on the original
# ones, reordered — and since $q\cdot k$ does not change when both are reordered alike, the attention scores
# are identical. This is what llama.cpp's converter does to Hugging Face weights, and what minitx undoes when
# it reads a GGUF file (`minitx.nn.interleaved_to_rotate_half`).

# %%
def to_interleaved_rows(w, num_heads):
    """Rows i, i + d/2 of each head -> rows 2i, 2i + 1."""
    rows, half = w.shape[0], w.shape[0] // num_heads // 2
    return w.reshape(num_heads, 2, half, -1).swapaxes(1, 2).reshape(rows, -1)


def check_permutation(permute):
    """``permute(w, num_heads)`` must match minitx's and make the two layouts give the same scores."""
    heads, d, width = 2, 8, 12
    w_q, w_k = rng.standard_normal((heads * d, width)), rng.standard_normal((heads * d, width))
    C.close("permutation vs minitx.nn.rotate_half_to_interleaved", permute(w_q, heads),
            nn.rotate_half_to_interleaved(w_q, heads), atol=0)
    x = rng.standard_normal((6, width))  # (T, D)
    positions = np.arange(6)

    def scores(wq, wk, interleaved):
        q = rope((x @ wq.T).reshape(6, heads, d).swapaxes(0, 1), positions, 10000.0, interleaved)  # (H, T, d)
        k = rope((x @ wk.T).reshape(6, heads, d).swapaxes(0, 1), positions, 10000.0, interleaved)
        return q @ k.swapaxes(-1, -2)  # (H, T, T)

    C.close("interleaved RoPE on permuted W_q, W_k = rotate-half RoPE on the originals",
            scores(permute(w_q, heads), permute(w_k, heads), True), scores(w_q, w_k, False), atol=1e-10)


check_permutation(to_interleaved_rows)

# %% [markdown]
# ## 3. SwiGLU
#
# $\mathrm{SiLU}(z) = z\,\sigma(z)$ (smooth, slightly negative below zero, like GELU). A *gated* feed-forward
# multiplies it, feature by feature, with a second linear map of the same input:
#
# $$ \mathrm{FFN}(x) = \big(\mathrm{SiLU}(x W_g^\top) \odot x W_u^\top\big) W_d^\top,
#    \qquad W_g, W_u: (F, D),\ W_d: (D, F). $$
#
# Three matrices instead of two, so Llama takes $F \approx \frac83 D$ instead of $4D$ for the same count
# (SmolLM2: $D = 576$, $F = 1536$).

# %%
def silu(z):
    return z / (1 + np.exp(-z))


def swiglu(x, w_gate, w_up, w_down):
    return (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def check_swiglu(impl):
    """``impl(x, w_gate, w_up, w_down)`` against minitx.nn.GatedFeedForward (and PyTorch's SiLU)."""
    ffn = nn.GatedFeedForward(8, 24, dtype=np.float64)
    x = rng.standard_normal((2, 5, 8))
    got = impl(x, ffn.gate_proj.weight.numpy(), ffn.up_proj.weight.numpy(), ffn.down_proj.weight.numpy())
    C.close("SwiGLU vs minitx.nn.GatedFeedForward", got, ffn(Tensor(x)), atol=1e-12)
    if torch is not None:
        tx, (w_gate, w_up, w_down) = torch.tensor(x), (torch.tensor(p.numpy()) for p in ffn.parameters())
        ref = (torch.nn.functional.silu(tx @ w_gate.T) * (tx @ w_up.T)) @ w_down.T
        C.close("SwiGLU vs PyTorch", got, ref, atol=1e-12)


check_swiglu(swiglu)

# %% [markdown]
# ## 4. Grouped-query attention and the KV cache
#
# With $H$ query heads and $H_{kv}$ key/value heads ($H_{kv}$ divides $H$), query head $h$ uses key/value
# head $\lfloor h / g \rfloor$, $g = H / H_{kv}$: every group of $g$ queries shares one key and value head.
# $H_{kv} = H$ is ordinary multi-head attention, $H_{kv} = 1$ multi-query attention. The computation is
# attention with each key/value head repeated $g$ times; what shrinks is $W_k$, $W_v$ and above all the KV
# cache, which holds $H_{kv}$ heads, not $H$. The repeat below is for reading; minitx's fused attention kernels
# (`kernels/cpu/attention.py`, `kernels/cuda/attention.py`) and its decode step (`minitx/models/llama_decode.py`)
# never make it: query head $h$ reads key/value head $\lfloor h / g \rfloor$ in place, and in the backward the
# gradients of the $g$ query heads that shared a key/value head are summed into it.

# %%
def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gqa(q, k, v, causal=True):
    """q (B, H, T, d), k and v (B, H_kv, T, d) -> (B, H, T, d)."""
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)  # head h reads kv head h // g
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if causal:
        t = q.shape[2]
        s = np.where(np.triu(np.ones((t, t), dtype=bool), 1), -np.inf, s)
    return softmax(s) @ v


def check_gqa(impl):
    """``impl(q, k, v, causal)`` against minitx's attention with ``enable_gqa`` (and PyTorch's)."""
    q = rng.standard_normal((2, 6, 5, 4))
    k, v = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 5, 4))
    ref = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True, enable_gqa=True)
    C.close("GQA vs minitx scaled_dot_product_attention(enable_gqa=True)", impl(q, k, v, True), ref, atol=1e-12)
    if torch is not None:
        ref = torch.nn.functional.scaled_dot_product_attention(*map(torch.tensor, (q, k, v)), is_causal=True,
                                                               enable_gqa=True)
        C.close("GQA vs torch scaled_dot_product_attention(enable_gqa=True)", impl(q, k, v, True), ref, atol=1e-12)


check_gqa(gqa)

# %% [markdown]
# The KV cache of a decoder stores, for each of $L$ layers, the keys and the values of every past token:
# $2 \cdot L \cdot H_{kv} \cdot d \cdot T$ numbers. For SmolLM2-135M ($L = 30$, $H = 9$, $H_{kv} = 3$, $d = 64$)
# in float32 that is a third of what nine key/value heads would need:

# %%
def kv_cache_bytes(layers, kv_heads, head_dim, tokens, bytes_per_number=4):
    return 2 * layers * kv_heads * head_dim * tokens * bytes_per_number


for tokens in (2048, 8192):
    full, grouped = kv_cache_bytes(30, 9, 64, tokens), kv_cache_bytes(30, 3, 64, tokens)
    print(f"SmolLM2 KV cache at {tokens} tokens: {full / 2**20:.0f} MiB with 9 kv heads, "
          f"{grouped / 2**20:.0f} MiB with 3 ({full / grouped:.0f}x smaller)")

attention = nn.MultiHeadAttention(16, 4, bias=False, num_kv_heads=2, dtype=np.float64)
_, (keys, values) = attention(Tensor(rng.standard_normal((1, 6, 16))), is_causal=True, use_cache=True)
assert keys.shape == (1, 2, 6, 4), keys.shape  # the library's cache holds H_kv = 2 heads, not 4
print(f"[check] minitx's KV cache holds H_kv heads: keys {keys.shape}: ok")

tokens = np.arange(0, 8193, 256)
fig, ax = C.plt.subplots(figsize=(6.5, 3))
for kv_heads, label in ((9, "multi-head (9 kv heads)"), (3, "grouped-query (3, SmolLM2)"), (1, "multi-query (1)")):
    ax.plot(tokens, kv_cache_bytes(30, kv_heads, 64, tokens) / 2**20, label=label)
ax.set(xlabel="tokens in the context", ylabel="MiB (float32)", title="KV cache of a 30-layer, 9-head model")
ax.legend()
C.save(fig, CHAPTER, "kv_cache_memory")

# %% [markdown]
# ## Exercises
#
# 1. Show that RMSNorm is invariant to scaling its input ($x \mapsto c\,x$, $c > 0$) up to $\epsilon$, and
#    that LayerNorm is also invariant to shifting it. Which of the two invariances does a residual stream need?
# 2. Prove that the rotate-half and interleaved RoPE differ by the row permutation of section 2 (write both as
#    a block-diagonal rotation matrix and a permutation matrix $P$: $R_{\text{half}} = P^\top R_{\text{inter}} P$).
# 3. Mistral uses $H = 32$, $H_{kv} = 8$, $d = 128$, $L = 32$. How large is its float16 KV cache at 32k tokens,
#    and how large would it be with full multi-head attention?
