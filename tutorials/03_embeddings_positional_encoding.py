# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 03 — Token embeddings and sinusoidal positional encoding
#
# A Transformer reads integers (token ids) but computes with vectors. An **embedding** table turns each id
# into a learned vector; a **positional encoding** adds a vector that says *where* the token is, because
# attention (chapter 04) is blind to order: permuting the input tokens just permutes its outputs.
#
# The `SequenceEncoder` this project follows does, for ids $x_1 \dots x_T$,
#
# $$ h^{(0)}_t = \sqrt{d_\text{model}}\; E[x_t] + \mathrm{PE}(t). $$
#
# This chapter builds both terms, checks them, and looks at what the positional code encodes.

# %%
import math

import numpy as np

import minitx as mx
import minitx.functional as F
from minitx.backend import get_array_module
from minitx.tensor import Function

import _common as C

CHAPTER = "03_embeddings_positional_encoding"
torch = C.torch_or_none()
mx.manual_seed(0)

# %% [markdown]
# ## 1. An embedding is a lookup — and a matrix product
#
# With a table $E \in \mathbb{R}^{V\times d}$ (one row per token of a vocabulary of size $V$), the
# embedding of id $v$ is the row $E[v]$. Equivalently it is $\text{onehot}(v)^\top E$: a linear layer whose
# input is a one-hot vector. The lookup is just the cheap way to do that product.
#
# Shapes: ids $(B, T)$ integers $\to$ vectors $(B, T, d)$.
#
# **Backward.** From the one-hot view, $\partial L/\partial E = \sum_{b,t} \text{onehot}(x_{bt})\,
# g_{bt}^\top$ with $g = \partial L/\partial(\text{output})$: row $v$ of the gradient is the *sum* of the
# output gradients at every position where token $v$ occurs. A token that appears three times gets three
# contributions. This is a *scatter-add*.

# %%
V, d = 10, 4
table = mx.randn(V, d, requires_grad=True)
ids = np.array([[3, 1, 3], [0, 3, 9]])  # token 3 appears three times
out = F.embedding(ids, table)
print("ids", ids.shape, "-> embeddings", out.shape)
onehot = mx.tensor(np.eye(V, dtype=np.float32)[ids])  # (B, T, V)
C.close("lookup equals onehot @ E", out, (onehot @ table).numpy(), atol=1e-6)

# %% [markdown]
# ### A classic bug, and the check that catches it
#
# Written with NumPy fancy-index *assignment*, `dE[ids] = g`, the backward silently keeps only one of
# the contributions of a repeated id (each write overwrites the previous). `np.add.at` (or minitx's
# `backend.scatter_add`) accumulates instead. `check_embedding(impl)` compares a candidate with PyTorch's
# embedding (or with the one-hot matrix product, which gets its gradient from matmul's backward) on ids
# with many repeats.

# %%
class EmbeddingOverwrite(Function):
    """The buggy version: forward right, backward overwrites instead of accumulating."""

    def forward(self, weight, ids):
        self.ids, self.shape = ids, weight.shape
        return weight[ids]

    def backward(self, grad):
        dweight = get_array_module(grad).zeros(self.shape, dtype=grad.dtype)
        dweight[self.ids.reshape(-1)] = grad.reshape(-1, self.shape[1])  # last write wins: WRONG
        return dweight, None


def embedding_overwrite(ids, weight):
    return EmbeddingOverwrite.apply(weight, ids)


def check_embedding(impl, seed=0):
    """Raise AssertionError unless impl(ids, weight) is an embedding lookup with a correct backward."""
    r = np.random.default_rng(seed)
    vocab, dim = 7, 5
    w = r.normal(size=(vocab, dim))
    ids = r.integers(0, vocab, size=(3, 6))  # 18 ids from 7 tokens: many repeats
    g = r.normal(size=(3, 6, dim))
    weight = mx.tensor(w, requires_grad=True, dtype=np.float64)
    y = impl(ids, weight)
    y.backward(g)
    if torch is not None:
        tw = torch.tensor(w, requires_grad=True)
        ty = torch.nn.functional.embedding(torch.tensor(ids), tw)
        ty.backward(torch.tensor(g))
        want_y, want_g = ty, tw.grad
    else:
        ref = mx.tensor(w, requires_grad=True, dtype=np.float64)
        ry = mx.tensor(np.eye(vocab)[ids]) @ ref
        ry.backward(g)
        want_y, want_g = ry, ref.grad
    C.close("embedding values", y, want_y, atol=1e-12)
    C.close("embedding gradient (scatter-add over repeated ids)", weight.grad, want_g, atol=1e-12)


check_embedding(F.embedding)
try:
    check_embedding(embedding_overwrite)
    raise RuntimeError("the overwrite bug was not detected")
except AssertionError as err:
    print("as expected, the overwriting backward is rejected:\n   ", err)

# %% [markdown]
# ## 2. Sinusoidal positional encoding
#
# For position $p = 0, 1, \dots$ and dimension pairs $i = 0 \dots d/2 - 1$:
#
# $$ \mathrm{PE}(p, 2i) = \sin(\omega_i\, p), \qquad \mathrm{PE}(p, 2i+1) = \cos(\omega_i\, p),
#    \qquad \omega_i = 10000^{-2i/d}. $$
#
# Each pair of dimensions is a clock hand turning at its own speed: $\omega_0 = 1$ radian per position
# (period $2\pi \approx 6.3$ positions) down to $\omega_{d/2-1} \approx 10^{-4}$ (period $\approx 6\cdot10^4$).
# Nearby positions differ in the fast dimensions, distant ones in the slow dimensions too. Nothing is
# learned, so the table can be computed for any length; whether a model trained on short sequences
# *uses* it well on longer ones is another matter (it usually does not: the attention weights were only
# ever trained on the offsets it saw, and the slow dimensions reach angles it never met).
#
# Computing $10000^{-2i/d}$ as $\exp(-2i \ln(10000)/d)$ is the usual way to write it (as in the seed code);
# we build the table in NumPy, since it is a constant (no gradient flows into it).

# %%
def sinusoidal_encoding(max_len, d_model):
    """(max_len, d_model) table: even columns sin(ω_i p), odd columns cos(ω_i p)."""
    position = np.arange(max_len, dtype=np.float64)[:, None]  # (L, 1)
    omega = np.exp(-np.arange(0, d_model, 2) * (math.log(10000.0) / d_model))  # (d/2,)
    pe = np.zeros((max_len, d_model))
    pe[:, 0::2] = np.sin(position * omega)  # broadcasting (L, 1) * (d/2,) -> (L, d/2)
    pe[:, 1::2] = np.cos(position * omega)
    return pe.astype(np.float32)


# %% [markdown]
# ### What the check verifies
#
# `check_positional_encoding(impl)` compares a table with three independent facts:
#
# 1. the definition, evaluated element by element with `math.sin`/`math.cos` in a Python loop;
# 2. **relative positions are a rotation**: by $\sin(a+b) = \sin a\cos b + \cos a \sin b$ and its cosine
#    twin, each pair obeys
#    $$ \begin{pmatrix}\mathrm{PE}(p+k, 2i)\\ \mathrm{PE}(p+k, 2i+1)\end{pmatrix} =
#       \begin{pmatrix}\cos\omega_i k & \sin\omega_i k\\ -\sin\omega_i k & \cos\omega_i k\end{pmatrix}
#       \begin{pmatrix}\mathrm{PE}(p, 2i)\\ \mathrm{PE}(p, 2i+1)\end{pmatrix}, $$
#    a matrix that depends on the offset $k$ but not on $p$ — so a linear map (which attention's
#    projections can learn) can move attention "$k$ positions back";
# 3. **dot products depend only on distance**: summing $\sin\sin + \cos\cos = \cos(\text{difference})$,
#    $$ \mathrm{PE}(p)\cdot\mathrm{PE}(q) = \sum_{i} \cos\big(\omega_i (p - q)\big). $$
#
# When PyTorch is installed it also rebuilds the table with torch ops, the way the seed's
# `PositionalEncoding` does.

# %%
def check_positional_encoding(impl, max_len=64, d_model=16):
    pe = np.asarray(impl(max_len, d_model), dtype=np.float64)
    if pe.shape != (max_len, d_model):
        raise AssertionError(f"CHECK FAILED positional encoding: shape {pe.shape}, expected {(max_len, d_model)}")
    loop = np.array([[math.sin(p / 10000 ** (2 * (j // 2) / d_model)) if j % 2 == 0
                      else math.cos(p / 10000 ** (2 * (j // 2) / d_model)) for j in range(d_model)]
                     for p in range(max_len)])
    C.close("PE vs the definition (Python loop)", pe, loop, atol=2e-6)
    omega = 10000.0 ** (-np.arange(0, d_model, 2) / d_model)
    k = 5
    rotated = np.empty_like(pe[:-k])
    for i, w in enumerate(omega):  # rotate every pair of PE(p) by the angle ω_i·k
        rotation = np.array([[math.cos(w * k), math.sin(w * k)], [-math.sin(w * k), math.cos(w * k)]])
        rotated[:, 2 * i:2 * i + 2] = pe[:-k, 2 * i:2 * i + 2] @ rotation.T
    C.close(f"PE(p+{k}) = R({k}) PE(p), every pair", pe[k:], rotated, atol=2e-5)
    p, q = np.meshgrid(np.arange(max_len), np.arange(max_len), indexing="ij")
    C.close("PE(p)·PE(q) = Σ_i cos(ω_i (p − q))", pe @ pe.T, np.cos((p - q)[..., None] * omega).sum(-1), atol=1e-4)
    if torch is not None:
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        ref = torch.zeros(max_len, d_model)
        ref[:, 0::2] = torch.sin(position * div_term)
        ref[:, 1::2] = torch.cos(position * div_term)
        C.close("PE vs a PyTorch build of the same table", pe, ref, atol=2e-5)


check_positional_encoding(sinusoidal_encoding)

# %% [markdown]
# The library builds the same table once, in `minitx/nn/layers.py` (`sinusoidal_table`, used by
# `PositionalEncoding` and every model with sinusoidal positions). The same check, applied to it:

# %%
from minitx.nn.layers import sinusoidal_table  # noqa: E402

check_positional_encoding(sinusoidal_table)
C.close("our table vs the library's sinusoidal_table", sinusoidal_encoding(50, 32), sinusoidal_table(50, 32), atol=2e-7)

# %% [markdown]
# ## 3. Looking at the code
#
# Left: the table itself, positions down, dimensions across. The first columns oscillate fast, the last
# ones barely move. Right: $\mathrm{PE}(p)\cdot\mathrm{PE}(q)$. It is largest on the diagonal
# ($= d/2$, each pair contributing $\sin^2 + \cos^2 = 1$) and it is constant along every diagonal,
# because it depends only on $p - q$. Away from the diagonal it drops quickly over the first few
# offsets, but **not monotonically**: $\sum_i \cos(\omega_i k)$ is a sum of waves, so it ripples, dips
# below later values and rises again (the second figure). "Nearby" is encoded only roughly, at short
# range; a model that needs a precise notion of distance has to learn it with its query and key
# projections.

# %%
max_len, d_model = C.pick(128, 64), 64
pe = sinusoidal_encoding(max_len, d_model)
fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(11, 4.5))
C.heatmap(fig, ax1, pe, "PE(p, j)", cmap="RdBu_r", vmin=-1, vmax=1)
ax1.set(xlabel="dimension j (even: sin, odd: cos)", ylabel="position p", title=f"sinusoidal PE, d_model = {d_model}")
dots = pe @ pe.T
C.heatmap(fig, ax2, dots, "PE(p) · PE(q)", cmap="viridis", aspect="equal")
ax2.set(xlabel="position q", ylabel="position p", title="dot products between positions")
C.save(fig, CHAPTER, "positional_encoding_heatmaps")

# %%
offsets = np.arange(0, max_len // 2)
fig, ax = C.plt.subplots(figsize=(7, 4))
for p0 in (0, 10, max_len // 2 - 1):
    ax.plot(offsets, [pe[p0] @ pe[p0 + k] for k in offsets], label=f"p = {p0}", lw=4 - (p0 > 0) * 2)
ax.plot(offsets, np.cos(offsets[:, None] * 10000.0 ** (-np.arange(0, d_model, 2) / d_model)).sum(-1),
        "k:", label="Σ_i cos(ω_i k)")
ax.set(xlabel="offset k", ylabel="PE(p) · PE(p + k)", title="similarity depends on the offset only")
ax.legend()
C.save(fig, CHAPTER, "dot_product_vs_offset")

# %% [markdown]
# ## 4. Why scale the embedding by $\sqrt{d_\text{model}}$?
#
# The seed code multiplies the embedding by $\sqrt{d_\text{model}}$ before adding $\mathrm{PE}$. Its
# embedding rows are initialised with Xavier-uniform, entries of variance about $2/(V + d)$ — tiny next
# to the positional entries, whose mean square is exactly $1/2$. Without the factor, position would
# drown out token identity at the start of training. A quick numerical look:

# %%
vocab = 1000
xavier = np.random.default_rng(0).uniform(-1, 1, size=(vocab, d_model)) * math.sqrt(6 / (vocab + d_model))
for name, emb in (("E[x]", xavier), ("√d · E[x]", math.sqrt(d_model) * xavier)):
    print(f"RMS of {name:10s}: {np.sqrt((emb ** 2).mean()):.3f}   vs RMS of PE: {np.sqrt((pe ** 2).mean()):.3f}")

# %% [markdown]
# ## Exercises
#
# 1. Compute the period (in positions) of each dimension pair for $d_\text{model} = 64$. Which pairs
#    complete less than one turn over 512 positions, and what does that mean for the heat-map?
# 2. Replace $10000$ by $100$ and redraw the dot-product figure. Why do distant positions start to look
#    alike (the curve rises again)?
# 3. Learned positions: make a second table `P = mx.randn(max_len, d, requires_grad=True)` and use
#    `F.embedding(np.arange(T), P)`. What can a learned table do that the sinusoidal one cannot, and
#    vice versa?
