# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 05 — Multi-head attention
#
# One attention (chapter 04) gives each query one weighted average. A sentence needs several kinds of
# look-up at once — "the previous word", "the subject of this verb", "the same word earlier" — so the
# Transformer runs $h$ attentions side by side, each in its own small subspace, and mixes the results:
#
# $$ \operatorname{MultiHead}(X) = \operatorname{Concat}(\text{head}_1, \dots, \text{head}_h)\, W^O,
#    \qquad \text{head}_i = \operatorname{Attention}(X W_i^Q,\; X W_i^K,\; X W_i^V). $$
#
# With $d_\text{model}$ split evenly, each head has width $d_h = d_\text{model}/h$, so the whole layer costs
# about as much as one full-width attention.

# %%
import numpy as np

import minitx as mx
import minitx.functional as F

import _common as C

CHAPTER = "05_multi_head_attention"
torch = C.torch_or_none()
mx.manual_seed(0)

# %% [markdown]
# ## 1. All heads in one matrix multiply
#
# Stacking the $h$ per-head matrices $W_i^Q \in \mathbb{R}^{d_\text{model}\times d_h}$ side by side gives
# one $d_\text{model}\times d_\text{model}$ matrix, so a single linear layer computes every head's queries
# at once. The heads are then separated by a reshape and a transpose:
#
# $$ (B, T, d_\text{model}) \xrightarrow{\text{reshape}} (B, T, h, d_h)
#    \xrightarrow{\text{permute}(0,2,1,3)} (B, h, T, d_h). $$
#
# Attention runs on the last two axes, with $(B, h)$ as the batch. Then the inverse:
# $(B, h, T, d_h) \to (B, T, h, d_h) \to (B, T, d_\text{model})$, which *is* the concatenation of the heads,
# followed by the output projection $W^O$. (As in PyTorch, a weight is stored as (out, in) and applied as
# $xW^\top$, so "$XW^Q$" above is `F.linear(x, Wq, bq)` here.)
#
# The permute matters: reshaping $(B, T, d_\text{model})$ straight to $(B, h, T, d_h)$ has the right shape
# but mixes tokens and heads — a bug that the check below catches.

# %%
def init_params(d_model, seed=0, scale=None):
    r = np.random.default_rng(seed)
    scale = 1 / np.sqrt(d_model) if scale is None else scale
    p = {}
    for name in ("q", "k", "v", "o"):
        p[f"W{name}"] = mx.tensor(r.normal(0, scale, (d_model, d_model)), requires_grad=True)
        p[f"b{name}"] = mx.tensor(r.normal(0, 0.1, d_model), requires_grad=True)
    return p


def split_heads(x, num_heads):
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads).permute(0, 2, 1, 3)  # (B, h, T, d_h)


def merge_heads(x):
    b, h, t, d_h = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, t, h * d_h)  # (B, T, d_model)


def multi_head_attention(x, p, num_heads, key_padding_mask=None, is_causal=False, return_weights=False):
    """Self-attention with ``num_heads`` heads. x (B, T, d_model) -> (B, T, d_model)."""
    q = split_heads(F.linear(x, p["Wq"], p["bq"]), num_heads)
    k = split_heads(F.linear(x, p["Wk"], p["bk"]), num_heads)
    v = split_heads(F.linear(x, p["Wv"], p["bv"]), num_heads)
    heads, weights = F.scaled_dot_product_attention(q, k, v, key_padding_mask=key_padding_mask,
                                                    is_causal=is_causal, return_weights=True)
    out = F.linear(merge_heads(heads), p["Wo"], p["bo"])
    return (out, weights) if return_weights else out


# %% [markdown]
# ## 2. The check
#
# `check_multi_head_attention(impl)` runs `impl` and two independent implementations on the same weights
# and the same input:
#
# 1. a NumPy loop over the heads that slices $W_i^Q$ etc. out of the big matrices — the definition,
#    head by head, with no reshapes at all: outputs compared;
# 2. the gradients of $L = \sum G \odot \mathrm{MHA}(X)$ (a fixed random $G$) with respect to the input and
#    to every weight, against **central finite differences of that NumPy loop**,
#    $\partial L/\partial \theta \approx (L(\theta + \epsilon) - L(\theta - \epsilon))/2\epsilon$ in float64 —
#    a reference that needs nothing but NumPy;
# 3. `torch.nn.MultiheadAttention` (when PyTorch is installed; its `in_proj_weight` is
#    $[W^Q; W^K; W^V]$ stacked): outputs and gradients once more.
#
# The batch of two sequences of 5 tokens comes with a fixed padding mask (the last 2 tokens of the first
# sequence are padding, the second has none), so mask broadcasting over heads is tested too.

# %%
def numpy_heads_loop(x, p, num_heads, key_padding_mask):
    """The definition head by head: slices of the weights, one small attention each, then concat and W^O."""
    w = {k: v.numpy().astype(np.float64) for k, v in p.items()}
    d_h = x.shape[-1] // num_heads
    heads = []
    for i in range(num_heads):
        rows = slice(i * d_h, (i + 1) * d_h)  # head i's share of the output features
        q = x @ w["Wq"][rows].T + w["bq"][rows]
        k = x @ w["Wk"][rows].T + w["bk"][rows]
        v = x @ w["Wv"][rows].T + w["bv"][rows]
        s = q @ np.swapaxes(k, -1, -2) / np.sqrt(d_h)
        s = np.where(key_padding_mask[:, None, :], -np.inf, s)
        a = np.exp(s - s.max(-1, keepdims=True))
        heads.append((a / a.sum(-1, keepdims=True)) @ v)
    return np.concatenate(heads, axis=-1) @ w["Wo"].T + w["bo"]


def numpy_heads_loop_gradients(x, p, num_heads, key_padding_mask, g, eps=1e-6):
    """Central differences of L = Σ g ⊙ numpy_heads_loop(x, p) for x and every weight (float64)."""
    w = {k: v.numpy().astype(np.float64) for k, v in p.items()}
    arrays = {"x": np.array(x, dtype=np.float64), **w}

    def loss():
        params = {k: mx.tensor(arrays[k]) for k in w}
        return float((g * numpy_heads_loop(arrays["x"], params, num_heads, key_padding_mask)).sum())

    grads = {}
    for name, a in arrays.items():
        grad = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            keep = a[i]
            a[i] = keep + eps
            up = loss()
            a[i] = keep - eps
            grad[i] = (up - loss()) / (2 * eps)
            a[i] = keep
        grads[name] = grad
    return grads


def check_multi_head_attention(impl, seed=0):
    """Raise AssertionError unless impl(x, params, num_heads, key_padding_mask) is multi-head self-attention."""
    r = np.random.default_rng(seed)
    b, t, d_model, h = 2, 5, 12, 3
    xs = r.normal(size=(b, t, d_model))
    kpm = np.zeros((b, t), dtype=bool)
    kpm[0, 3:] = True  # the first sequence has length 3
    g = r.normal(size=(b, t, d_model))
    p = init_params(d_model, seed=seed + 1)
    x = mx.tensor(xs, requires_grad=True)
    out = impl(x, p, h, key_padding_mask=kpm)
    out.backward(g)
    C.close("multi-head attention vs a NumPy loop over heads", out, numpy_heads_loop(xs, p, h, kpm), atol=1e-10)
    fd = numpy_heads_loop_gradients(xs, p, h, kpm, g)
    C.close("dL/dX vs finite differences of the NumPy loop", x.grad, fd["x"], atol=1e-6)
    for n in ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo"):
        C.close(f"dL/d{n} vs finite differences of the NumPy loop", p[n].grad, fd[n], atol=1e-6)
    if torch is None:
        return
    mha = torch.nn.MultiheadAttention(d_model, h, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(np.concatenate([p[n].numpy() for n in ("Wq", "Wk", "Wv")])))
        mha.in_proj_bias.copy_(torch.tensor(np.concatenate([p[n].numpy() for n in ("bq", "bk", "bv")])))
        mha.out_proj.weight.copy_(torch.tensor(p["Wo"].numpy()))
        mha.out_proj.bias.copy_(torch.tensor(p["bo"].numpy()))
    tx = torch.tensor(xs, requires_grad=True)
    to, _ = mha(tx, tx, tx, key_padding_mask=torch.tensor(kpm), need_weights=False)
    to.backward(torch.tensor(g))
    C.close("multi-head attention vs torch.nn.MultiheadAttention", out, to, atol=1e-10)
    C.close("dL/dX vs PyTorch", x.grad, tx.grad, atol=1e-10)
    t_in_w, t_in_b = mha.in_proj_weight.grad.numpy(), mha.in_proj_bias.grad.numpy()
    for i, n in enumerate("qkv"):
        rows = slice(i * d_model, (i + 1) * d_model)
        C.close(f"dL/dW{n} vs PyTorch", p[f"W{n}"].grad, t_in_w[rows], atol=1e-10)
        C.close(f"dL/db{n} vs PyTorch", p[f"b{n}"].grad, t_in_b[rows], atol=1e-10)
    C.close("dL/dWo vs PyTorch", p["Wo"].grad, mha.out_proj.weight.grad, atol=1e-10)
    C.close("dL/dbo vs PyTorch", p["bo"].grad, mha.out_proj.bias.grad, atol=1e-10)


check_multi_head_attention(multi_head_attention)

# %% [markdown]
# ### The library's layer
#
# `minitx.nn.MultiHeadAttention` (in `minitx/nn/attention.py`) is this function as a module: four
# `Linear(d_model, d_model)` projections `q_proj`, `k_proj`, `v_proj`, `out_proj`, the same split, one
# call of `F.scaled_dot_product_attention`, the same merge. Put its weights into the dictionary our
# function reads, and the same check applies to it.

# %%
from minitx.nn import MultiHeadAttention  # noqa: E402


def library_mha(x, p, num_heads, key_padding_mask=None):
    """The library's MultiHeadAttention holding the weights in ``p`` (the gradients flow back into ``p``)."""
    layer = MultiHeadAttention(x.shape[-1], num_heads)
    for name, proj in (("q", layer.q_proj), ("k", layer.k_proj), ("v", layer.v_proj), ("o", layer.out_proj)):
        proj.weight, proj.bias = p[f"W{name}"], p[f"b{name}"]  # the same Tensor objects, not copies
    return layer(x, key_padding_mask=key_padding_mask)


check_multi_head_attention(library_mha)

# %% [markdown]
# ## 3. Heads that look for different things
#
# To *see* heads specialise without training, we build the weights by hand. Each token is the
# concatenation of a one-hot code of its word and a one-hot code of its position (plus zero padding up to
# $d_\text{model} = 32$), and the four heads of width 8 get:
#
# - **head 1, previous token**: $q_p = \alpha\, e_p$ and $k_j = \alpha\, e_{j+1}$ from the position code,
#   so $q_p \cdot k_j$ is large only when $j = p - 1$;
# - **head 2, same word**: $q = k = \alpha \cdot \text{onehot}(\text{word})$;
# - **head 3, first token**: a constant query (its bias) and a key that is large only at position 0;
# - **head 4**: random weights, which spread attention rather evenly.
#
# A causal mask keeps every head from looking ahead. The heat-maps are the weights $P$ of each head.

# %%
words = "a b a c b a d a".split()
vocab = sorted(set(words))
t, n_vocab, d_model, h = len(words), len(vocab), 32, 4
d_h, alpha = d_model // h, 5.0
x_np = np.zeros((1, t, d_model), dtype=np.float32)
for pos, w in enumerate(words):
    x_np[0, pos, vocab.index(w)] = 1.0  # word code in dims [0, n_vocab)
    x_np[0, pos, 8 + pos] = 1.0  # position code in dims [8, 8 + t)
p = init_params(d_model, seed=3)
for name in ("Wq", "bq", "Wk", "bk"):
    p[name] = np.zeros(p[name].shape, dtype=np.float32)
for pos in range(t):  # head 1 (rows 0..7): previous token
    p["Wq"][0 + pos, 8 + pos] = alpha
    if pos + 1 < t:
        p["Wk"][0 + pos + 1, 8 + pos] = alpha
for i in range(n_vocab):  # head 2 (rows 8..15): same word
    p["Wq"][8 + i, i] = p["Wk"][8 + i, i] = alpha
p["bq"][16] = alpha  # head 3 (rows 16..23): constant query ...
p["Wk"][16, 8 + 0] = alpha  # ... against a key that fires at position 0
r = np.random.default_rng(4)
p["Wq"][24:], p["Wk"][24:] = r.normal(0, 0.5, (8, d_model)), r.normal(0, 0.5, (8, d_model))  # head 4: random
p = {k: mx.tensor(v.astype(np.float32)) for k, v in p.items()}

with mx.no_grad():
    out, weights = multi_head_attention(mx.tensor(x_np), p, h, is_causal=True, return_weights=True)
weights = weights.numpy()[0]  # (h, T, T)
print("output", out.shape, "weights", weights.shape)
C.close("head 1 puts most weight on the previous token", weights[0, np.arange(1, t), np.arange(t - 1)] > 0.9,
        np.ones(t - 1), atol=0)
C.close("head 3 puts most weight on the first token", weights[2, :, 0] > 0.9, np.ones(t), atol=0)

titles = ["head 1: previous token", "head 2: same word", "head 3: first token", "head 4: random weights"]
fig, axes = C.plt.subplots(1, h, figsize=(16, 4))
labels = [f"{w}{i}" for i, w in enumerate(words)]
for i, ax in enumerate(axes):
    C.heatmap(fig, ax, np.ma.masked_where(np.triu(np.ones((t, t), bool), 1), weights[i]), "weight",
              cmap="magma_r", vmin=0, vmax=1, aspect="equal")
    ax.set_xticks(range(t), labels)
    ax.set_yticks(range(t), labels)
    ax.set(xlabel="key", ylabel="query", title=titles[i])
C.save(fig, CHAPTER, "heads")

# %% [markdown]
# ## Exercises
#
# 1. Replace `permute(0, 2, 1, 3)` in `split_heads` by a plain `reshape(b, num_heads, t, d // num_heads)`
#    and run `check_multi_head_attention`. The shapes are all fine — why are the numbers wrong?
# 2. Cross-attention (the decoder of an encoder–decoder model) takes queries from one sequence and keys
#    and values from another. Change `multi_head_attention` to accept `x_q` and `x_kv`. Which shapes
#    must agree, and which may differ?
# 3. Count the parameters of the layer as a function of $d_\text{model}$. Does it depend on $h$?
