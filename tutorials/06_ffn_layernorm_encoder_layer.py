# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 06 — The feed-forward network, LayerNorm, residuals: one encoder layer
#
# Attention mixes information *between* positions. The rest of a Transformer layer works on each position
# on its own, and keeps a deep stack trainable:
#
# $$ \mathrm{FFN}(x) = \max(0,\, xW_1 + b_1)\,W_2 + b_2, $$
# $$ \mathrm{LayerNorm}(x) = \gamma \odot \frac{x - \mu(x)}{\sqrt{\sigma^2(x) + \varepsilon}} + \beta, $$
# $$ h = \mathrm{LN}_1\big(x + \mathrm{MHA}(x)\big), \qquad y = \mathrm{LN}_2\big(h + \mathrm{FFN}(h)\big). $$
#
# The last line is the encoder layer of the original Transformer and of the seed's `SequenceEncoder`
# (`nn.TransformerEncoderLayer` with its default *post-norm* order). We build each piece from minitx ops,
# check it against PyTorch, and measure why the residual connections matter.

# %%
import math

import numpy as np

import minitx as mx
import minitx.functional as F

import _common as C

CHAPTER = "06_ffn_layernorm_encoder_layer"
torch = C.torch_or_none()
mx.manual_seed(0)
rng = np.random.default_rng(0)


def param(*shape, scale=None):
    """A float64 parameter with N(0, 1/fan_in) entries (fan_in = last axis)."""
    scale = 1 / math.sqrt(shape[-1]) if scale is None else scale
    return mx.tensor(rng.normal(0, scale, shape), requires_grad=True)


# %% [markdown]
# ## 1. The position-wise feed-forward network
#
# Shapes: $x$ is $(B, T, d_\text{model})$; $W_1$ maps $d_\text{model}\to d_\text{ff}$ (usually
# $4\,d_\text{model}$) and $W_2$ maps back. "Position-wise" means the same two matrices are applied to every
# token independently: the FFN never mixes positions, so running it on the whole $(B, T)$ batch or on one
# token at a time gives the same numbers. `F.linear` flattens the leading axes into one big matrix
# multiply, so it is the batched form. Its backward is two linear backwards (chapter 02) around the ReLU's
# mask.

# %%
def feed_forward(x, w1, b1, w2, b2):
    return F.linear(F.linear(x, w1, b1).relu(), w2, b2)


d_model, d_ff = 8, 32
ffn = dict(w1=param(d_ff, d_model), b1=param(d_ff, scale=0.1), w2=param(d_model, d_ff), b2=param(d_model, scale=0.1))
x = mx.tensor(rng.normal(size=(2, 5, d_model)))
batched = feed_forward(x, **ffn).numpy()
one_by_one = np.stack([np.stack([feed_forward(x[b, t], **ffn).numpy() for t in range(5)]) for b in range(2)])
C.close("FFN is position-wise (batch = one token at a time)", batched, one_by_one, atol=1e-12)

# %% [markdown]
# ## 2. LayerNorm and its backward
#
# For one token's vector $x \in \mathbb{R}^N$: $\mu = \frac1N\sum_i x_i$,
# $\sigma^2 = \frac1N\sum_i (x_i-\mu)^2$ (the *biased* variance), $r = 1/\sqrt{\sigma^2+\varepsilon}$,
# $\hat x = (x-\mu)\,r$, and $y = \gamma\odot\hat x + \beta$. Each token is normalised over its own
# features — not over the batch, as BatchNorm would — so it behaves the same in training and at
# inference, and for any batch size.
#
# **Backward.** With $g = \gamma \odot \partial L/\partial y$, $x$ reaches $\hat x$ three ways: directly,
# through $\mu$, and through $\sigma^2$. Step by step, for one token:
#
# - $\partial\mu/\partial x_j = 1/N$, so $\partial (x_i - \mu)/\partial x_j = \delta_{ij} - 1/N$;
# - $\partial\sigma^2/\partial x_j = \frac2N\sum_i (x_i-\mu)(\delta_{ij} - \frac1N) = 2(x_j-\mu)/N$
#   (the $\frac1N$ term vanishes because $\sum_i (x_i - \mu) = 0$);
# - $r = (\sigma^2+\varepsilon)^{-1/2}$, so $\partial r/\partial x_j = -\tfrac12 r^3\,\partial\sigma^2/\partial x_j
#   = -r^3 (x_j-\mu)/N = -r^2\hat x_j/N$;
# - the product rule on $\hat x_i = (x_i - \mu)\,r$:
#   $$ \frac{\partial \hat x_i}{\partial x_j} = r\Big(\delta_{ij} - \frac1N\Big) + (x_i-\mu)\Big(-\frac{r^2\hat x_j}{N}\Big)
#      = \frac{r}{N}\big(N\delta_{ij} - 1 - \hat x_i \hat x_j\big); $$
# - and $\partial L/\partial x_j = \sum_i g_i\,\partial\hat x_i/\partial x_j$, which sums the three terms:
#
# $$ \frac{\partial L}{\partial x} = \frac{r}{N}\Big(N g - \sum_i g_i - \hat x \sum_i g_i \hat x_i\Big),
#    \qquad \frac{\partial L}{\partial\gamma} = \sum_\text{tokens} \frac{\partial L}{\partial y}\odot\hat x,
#    \qquad \frac{\partial L}{\partial\beta} = \sum_\text{tokens} \frac{\partial L}{\partial y}. $$
#
# The two subtracted terms remove from $g$ its mean and its component along $\hat x$: shifting or scaling
# a token's input does not change its normalised output, so the gradient has no component in those
# directions. This is the formula in `minitx.ops.nn.LayerNorm.backward`. Below we build LayerNorm from
# primitive ops (its gradient then comes from the chain rule) and check it: its output against the
# library's one-op `F.layer_norm`, its gradients against the formula (written in NumPy), and both against
# PyTorch when it is installed. The gradients of `F.layer_norm` are checked against the NumPy formula too.

# %%
def layer_norm(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True, correction=0)  # biased: divide by N
    return (x - mu) / (var + eps).sqrt() * gamma + beta


def layer_norm_backward_by_hand(x, gamma, dy, eps=1e-5):
    n = x.shape[-1]
    mu = x.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x - mu) * r
    g = dy * gamma
    dx = r / n * (n * g - g.sum(-1, keepdims=True) - xhat * (g * xhat).sum(-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    return dx, (dy * xhat).sum(lead), dy.sum(lead)


def check_layer_norm(impl, seed=0):
    """Raise AssertionError unless impl(x, gamma, beta) is LayerNorm over the last axis (eps = 1e-5)."""
    r = np.random.default_rng(seed)
    xs = r.normal(2.0, 3.0, size=(3, 4, 6))
    gs, bs, dy = r.normal(size=6), r.normal(size=6), r.normal(size=(3, 4, 6))
    x, gamma, beta = (mx.tensor(a, requires_grad=True) for a in (xs, gs, bs))
    y = impl(x, gamma, beta)
    y.backward(dy)
    got = (y, x.grad, gamma.grad, beta.grad)
    names = ("output", "dL/dx", "dL/dγ", "dL/dβ")
    fx, fg, fb = (mx.tensor(a, requires_grad=True) for a in (xs, gs, bs))
    fy = F.layer_norm(fx, 6, fg, fb)  # the library's one-op LayerNorm
    fy.backward(dy)
    C.close("LayerNorm output vs F.layer_norm", y, fy, atol=1e-10)
    for name, a, fused, ref in zip(names[1:], got[1:], (fx.grad, fg.grad, fb.grad),
                                   layer_norm_backward_by_hand(xs, gs, dy)):
        C.close(f"LayerNorm {name} vs the hand-derived formula", a, ref, atol=1e-10)
        C.close(f"F.layer_norm {name} vs the hand-derived formula", fused, ref, atol=1e-10)
    if torch is not None:
        tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (xs, gs, bs))
        ty = torch.nn.functional.layer_norm(tx, (6,), tg, tb, eps=1e-5)
        ty.backward(torch.tensor(dy))
        for name, a, ref in zip(names, got, (ty, tx.grad, tg.grad, tb.grad)):
            C.close(f"LayerNorm {name} vs PyTorch", a, ref, atol=1e-10)


check_layer_norm(layer_norm)

# %% [markdown]
# The Jacobian itself, $\partial\hat x_i/\partial x_j = \frac rN(N\delta_{ij} - 1 - \hat x_i\hat x_j)$, against
# central differences for one token of $N = 7$ features:

# %%
def normalise(v, eps=1e-5):
    return (v - v.mean()) / np.sqrt(v.var() + eps)


x_tok = rng.normal(1.0, 2.0, size=7)
n_feat = x_tok.size
r_tok = 1 / np.sqrt(x_tok.var() + 1e-5)
xhat_tok = normalise(x_tok)
jacobian_formula = r_tok / n_feat * (n_feat * np.eye(n_feat) - 1 - np.outer(xhat_tok, xhat_tok))
step = 1e-6
jacobian_fd = np.stack([(normalise(x_tok + step * e) - normalise(x_tok - step * e)) / (2 * step)
                        for e in np.eye(n_feat)], axis=1)  # column j: ∂x̂/∂x_j
C.close("∂x̂_i/∂x_j = (r/N)(Nδ_ij − 1 − x̂_i x̂_j) vs central differences", jacobian_formula, jacobian_fd, atol=1e-8)

# %% [markdown]
# ## 3. Why residual connections?
#
# Backpropagation through a stack of $n$ layers multiplies $n$ Jacobians ($n$ for the depth here: $L$ is
# the loss). If each shrinks vectors a
# little, the gradient at the bottom vanishes exponentially with depth. A residual layer computes
# $x + f(x)$, whose Jacobian is $I + \partial f/\partial x$: the identity gives the gradient a path to the
# bottom that no layer can block.
#
# The experiment: stacks of $n$ random sub-layers $f(x) = \tanh(xW)$ with $W_{ij}\sim\mathcal N(0, 0.6^2/d)$
# (a gain below one, as happens easily at initialisation), wired three ways:
#
# - plain, $x \mapsto f(x)$: every layer's Jacobian shrinks vectors by about $0.6$, so the gradient at the
#   input decays like $0.6^n$;
# - residual, $x \mapsto x + f(x)$: the identity path carries the gradient down undiminished, and it even
#   grows slowly. Not because the stream grows, but because each layer sends the gradient $g$ back
#   through $(I + J)^\top$ with $J = \partial f/\partial x$ random and small: on average
#   $\lVert (I + J)^\top g\rVert^2 = \lVert g\rVert^2 + 2\,g^\top J g + \lVert J^\top g\rVert^2$, the middle
#   term averages out and the last one is positive, so $\lVert I + J\rVert > 1$ in the directions the
#   gradient takes and the norm grows by a factor a little above one per layer;
# - residual with post-norm, $x\mapsto\mathrm{LN}(x + f(x))$, the encoder layer's wiring: LayerNorm keeps the
#   stream at unit scale, and the gradient stays flat.
#
# We backpropagate a fixed random readout of the output and measure the gradient norm reaching the input.

# %%
def input_gradient_norm(depth, wiring, d=64, seed=0):
    r = np.random.default_rng(seed)
    x = mx.tensor(r.normal(size=(16, d)), requires_grad=True)
    h = x
    for _ in range(depth):
        f = (h @ mx.tensor(r.normal(0, 0.6 / math.sqrt(d), (d, d)))).tanh()
        h = {"plain": f, "residual": h + f, "residual + LayerNorm": F.layer_norm(h + f, d)}[wiring]
    (h * mx.tensor(r.normal(size=h.shape))).sum().backward()  # a fixed random readout
    return float(np.linalg.norm(x.grad))


depths = [1, 2, 4, 8, 16, 32, 48] if not C.QUICK else [1, 2, 4, 8, 16, 32]
wirings = ("plain", "residual", "residual + LayerNorm")
norms = {w: [input_gradient_norm(n, w) for n in depths] for w in wirings}
for w, values in norms.items():
    print(f"{w:21s}", " ".join(f"n={n}: {v:.1e}" for n, v in zip(depths, values)))
assert norms["plain"][-1] < 1e-3 * norms["plain"][0], "without residuals the gradient should vanish"
for w in wirings[1:]:
    assert norms[w][-1] > 0.5 * norms[w][0], f"with {w} the gradient should survive"

fig, ax = C.plt.subplots(figsize=(7, 4))
labels = {"plain": "x ↦ tanh(xW)", "residual": "x ↦ x + tanh(xW)", "residual + LayerNorm": "x ↦ LN(x + tanh(xW))"}
for w, values in norms.items():
    ax.semilogy(depths, values, "o-", label=labels[w])
ax.set(xlabel="number of layers n", ylabel="‖∂L/∂x‖ at the input (L: the loss)", title="gradient reaching the bottom of a deep stack")
ax.legend()
C.save(fig, CHAPTER, "residual_gradients")

# %% [markdown]
# ## 4. The encoder layer
#
# Putting it together (post-norm, ReLU, no dropout for the check):
#
# $$ h = \mathrm{LN}_1(x + \mathrm{MHA}(x)), \qquad y = \mathrm{LN}_2(h + \mathrm{FFN}(h)). $$
#
# Shapes stay $(B, T, d_\text{model})$ throughout, which is what lets layers stack (chapter 07). The
# multi-head attention is chapter 05's, written compactly. `check_encoder_layer(impl)` runs the layer on a
# batch with a padding mask and compares its output with the same equations written in plain NumPy, its
# gradients (input and $W_1$) with central finite differences of that NumPy function, and, when PyTorch
# is installed, copies the weights into `torch.nn.TransformerEncoderLayer` and compares once more. (`norm_first=True` would give the *pre-norm* variant $x + \mathrm{MHA}(\mathrm{LN}(x))$ used by GPT-2;
# the check rejects it, since it is a different function.)

# %%
def init_encoder_params(d_model, d_ff, seed=0):
    r = np.random.default_rng(seed)
    p = {n: mx.tensor(r.normal(0, 1 / math.sqrt(d_model), (d_model, d_model)), requires_grad=True) for n in ("Wq", "Wk", "Wv", "Wo")}
    p.update({n: mx.tensor(r.normal(0, 0.1, d_model), requires_grad=True) for n in ("bq", "bk", "bv", "bo", "b2", "beta1", "beta2")})
    p["W1"] = mx.tensor(r.normal(0, 1 / math.sqrt(d_model), (d_ff, d_model)), requires_grad=True)
    p["b1"] = mx.tensor(r.normal(0, 0.1, d_ff), requires_grad=True)
    p["W2"] = mx.tensor(r.normal(0, 1 / math.sqrt(d_ff), (d_model, d_ff)), requires_grad=True)
    p["gamma1"] = mx.tensor(1 + r.normal(0, 0.1, d_model), requires_grad=True)
    p["gamma2"] = mx.tensor(1 + r.normal(0, 0.1, d_model), requires_grad=True)
    return p


def mha(x, p, num_heads, key_padding_mask=None):
    b, t, d = x.shape

    def heads(w, bias):
        return F.linear(x, w, bias).reshape(b, t, num_heads, d // num_heads).permute(0, 2, 1, 3)

    out = F.scaled_dot_product_attention(heads(p["Wq"], p["bq"]), heads(p["Wk"], p["bk"]), heads(p["Wv"], p["bv"]),
                                         key_padding_mask=key_padding_mask)
    return F.linear(out.permute(0, 2, 1, 3).reshape(b, t, d), p["Wo"], p["bo"])


def encoder_layer(x, p, num_heads, key_padding_mask=None):
    h = layer_norm(x + mha(x, p, num_heads, key_padding_mask), p["gamma1"], p["beta1"])
    return layer_norm(h + feed_forward(h, p["W1"], p["b1"], p["W2"], p["b2"]), p["gamma2"], p["beta2"])


def numpy_encoder_layer(x, w, num_heads, key_padding_mask):
    """The post-norm layer in float64 NumPy, from the equations alone; w: name -> ndarray."""
    def ln(v, gamma, beta, eps=1e-5):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + eps) * gamma + beta

    d_h = x.shape[-1] // num_heads
    heads = []
    for i in range(num_heads):
        rows = slice(i * d_h, (i + 1) * d_h)
        q, k, v = (x @ w[f"W{n}"][rows].T + w[f"b{n}"][rows] for n in "qkv")
        s = np.where(key_padding_mask[:, None, :], -np.inf, q @ np.swapaxes(k, -1, -2) / np.sqrt(d_h))
        a = np.exp(s - s.max(-1, keepdims=True))
        heads.append(a / a.sum(-1, keepdims=True) @ v)
    h = ln(x + np.concatenate(heads, -1) @ w["Wo"].T + w["bo"], w["gamma1"], w["beta1"])
    ffn_out = np.maximum(h @ w["W1"].T + w["b1"], 0) @ w["W2"].T + w["b2"]
    return ln(h + ffn_out, w["gamma2"], w["beta2"])


def finite_difference(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of the array a (changed in place)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        keep = a[i]
        a[i] = keep + eps
        up = f()
        a[i] = keep - eps
        grad[i] = (up - f()) / (2 * eps)
        a[i] = keep
    return grad


def check_encoder_layer(impl, seed=0):
    """Raise AssertionError unless impl(x, params, num_heads, key_padding_mask) is a post-norm encoder layer."""
    r = np.random.default_rng(seed)
    b, t, d, h, d_ff = 2, 6, 12, 3, 24
    xs, g = r.normal(size=(b, t, d)), r.normal(size=(b, t, d))
    kpm = np.zeros((b, t), dtype=bool)
    kpm[1, 4:] = True
    p = init_encoder_params(d, d_ff, seed=seed + 1)
    x = mx.tensor(xs, requires_grad=True)
    y = impl(x, p, h, key_padding_mask=kpm)
    y.backward(g)
    w = {k: v.numpy().copy() for k, v in p.items()}
    x_np = xs.copy()
    C.close("encoder layer vs the NumPy equations", y, numpy_encoder_layer(x_np, w, h, kpm), atol=1e-10)
    loss = lambda: float((g * numpy_encoder_layer(x_np, w, h, kpm)).sum())  # noqa: E731
    C.close("encoder layer dL/dx vs finite differences", x.grad, finite_difference(loss, x_np), atol=1e-6)
    C.close("encoder layer dL/dW1 vs finite differences", p["W1"].grad, finite_difference(loss, w["W1"]), atol=1e-6)
    if torch is None:
        return
    layer = torch.nn.TransformerEncoderLayer(d, h, dim_feedforward=d_ff, dropout=0.0, batch_first=True, dtype=torch.float64)
    w = {k: torch.tensor(v.numpy()) for k, v in p.items()}
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(torch.cat([w["Wq"], w["Wk"], w["Wv"]]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([w["bq"], w["bk"], w["bv"]]))
        layer.self_attn.out_proj.weight.copy_(w["Wo"])
        layer.self_attn.out_proj.bias.copy_(w["bo"])
        layer.linear1.weight.copy_(w["W1"])
        layer.linear1.bias.copy_(w["b1"])
        layer.linear2.weight.copy_(w["W2"])
        layer.linear2.bias.copy_(w["b2"])
        layer.norm1.weight.copy_(w["gamma1"])
        layer.norm1.bias.copy_(w["beta1"])
        layer.norm2.weight.copy_(w["gamma2"])
        layer.norm2.bias.copy_(w["beta2"])
    layer.eval()
    tx = torch.tensor(xs, requires_grad=True)
    ty = layer(tx, src_key_padding_mask=torch.tensor(kpm))
    ty.backward(torch.tensor(g))
    C.close("encoder layer vs torch.nn.TransformerEncoderLayer", y, ty, atol=1e-9)
    C.close("encoder layer dL/dx vs PyTorch", x.grad, tx.grad, atol=1e-9)
    C.close("encoder layer dL/dW1 vs PyTorch", p["W1"].grad, layer.linear1.weight.grad, atol=1e-9)


check_encoder_layer(encoder_layer)

# %% [markdown]
# ### The library's layer
#
# `minitx.nn.TransformerEncoderLayer` (in `minitx/nn/transformer.py`) is this composition as a module:
# `self_attn` (chapter 05's `MultiHeadAttention`), `ff.linear1`/`ff.linear2`, `norm1`, `norm2`, plus dropout
# on the two residual branches (off here). Hand it our weights and the same check applies.

# %%
from minitx.nn import TransformerEncoderLayer  # noqa: E402


def library_encoder_layer(x, p, num_heads, key_padding_mask=None):
    """The library's post-norm layer holding the tensors of ``p`` (gradients flow back into ``p``)."""
    layer = TransformerEncoderLayer(x.shape[-1], num_heads, p["W1"].shape[0], dropout=0.0)
    a = layer.self_attn
    for name, proj in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj), ("o", a.out_proj)):
        proj.weight, proj.bias = p[f"W{name}"], p[f"b{name}"]
    layer.ff.linear1.weight, layer.ff.linear1.bias = p["W1"], p["b1"]
    layer.ff.linear2.weight, layer.ff.linear2.bias = p["W2"], p["b2"]
    layer.norm1.weight, layer.norm1.bias = p["gamma1"], p["beta1"]
    layer.norm2.weight, layer.norm2.bias = p["gamma2"], p["beta2"]
    return layer(x, key_padding_mask=key_padding_mask)


check_encoder_layer(library_encoder_layer)

# %% [markdown]
# ## 5. What LayerNorm does to the activations
#
# Run 64 tokens through one encoder layer with random weights, and look at each token's mean and standard
# deviation over its features, before and after. The inputs are deliberately badly scaled (each token has
# its own offset and scale). After the final LayerNorm every token comes out with a mean close to the
# average of $\beta$ (near 0 here) and a spread close to the size of $\gamma$ (near 1), whatever came in.

# %%
p_demo = init_encoder_params(32, 64, seed=5)
x_demo = rng.normal(size=(1, 64, 32)) * rng.uniform(0.2, 5, size=(1, 64, 1)) + rng.uniform(-3, 3, size=(1, 64, 1))
with mx.no_grad():
    y_demo = encoder_layer(mx.tensor(x_demo), p_demo, num_heads=4).numpy()
fig, ax = C.plt.subplots(figsize=(6.5, 4.5))
ax.scatter(x_demo[0].mean(-1), x_demo[0].std(-1), label="input tokens", alpha=0.7)
ax.scatter(y_demo[0].mean(-1), y_demo[0].std(-1), label="after the encoder layer", alpha=0.7, marker="s")
ax.set(xlabel="mean over the token's features", ylabel="std over the token's features",
       title="per-token statistics before and after (LayerNorm at the end)")
ax.legend()
C.save(fig, CHAPTER, "layernorm_token_stats")
C.close("output tokens have about unit spread", y_demo[0].std(-1), np.ones(64), atol=0.25)

# %% [markdown]
# ## Exercises
#
# 1. Write the *pre-norm* layer, $h = x + \mathrm{MHA}(\mathrm{LN}_1(x))$, $y = h + \mathrm{FFN}(\mathrm{LN}_2(h))$,
#    and check it against `torch.nn.TransformerEncoderLayer(..., norm_first=True)`. Then rerun the
#    residual experiment of §3 in pre-norm form. Which keeps larger gradients at depth 48?
# 2. Replace `var(..., correction=0)` by the default `correction=1` in `layer_norm`. How large is the
#    difference for $N = 6$ features, and does `check_layer_norm` notice?
# 3. Swap ReLU for GELU (`F.gelu`) in `feed_forward` and compare with `activation="gelu"` in PyTorch.
