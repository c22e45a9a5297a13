# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 02 — Linear layers, activations, softmax and cross-entropy
#
# A classifier is a stack of affine maps and nonlinearities that ends in a softmax, trained by minimising
# cross-entropy. This chapter builds each piece from minitx ops, derives its backward pass, and checks it
# against PyTorch (or a NumPy closed form when PyTorch is not installed). Then it trains a small network on
# a 2-D toy problem with nothing but these pieces and a hand-written gradient-descent step.

# %%
import numpy as np

import minitx as mx
import minitx.functional as F

import _common as C

CHAPTER = "02_linear_softmax_cross_entropy"
torch = C.torch_or_none()
mx.manual_seed(0)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The linear layer
#
# For a batch of $N$ row vectors $X \in \mathbb{R}^{N\times d_\text{in}}$, a weight
# $W \in \mathbb{R}^{d_\text{out}\times d_\text{in}}$ (PyTorch's layout: one row per output) and a bias
# $b \in \mathbb{R}^{d_\text{out}}$:
#
# $$ Y = X W^\top + b, \qquad Y \in \mathbb{R}^{N \times d_\text{out}}. $$
#
# **Backward.** Write $G = \partial L/\partial Y$ (shape $N\times d_\text{out}$). Since
# $Y_{nj} = \sum_i X_{ni} W_{ji} + b_j$, each $W_{ji}$ touches column $j$ of every row, each $X_{ni}$
# touches every column of row $n$, and $b_j$ is broadcast over the rows:
#
# $$ \frac{\partial L}{\partial X} = G\,W \;(N\times d_\text{in}),\qquad
#    \frac{\partial L}{\partial W} = G^\top X \;(d_\text{out}\times d_\text{in}),\qquad
#    \frac{\partial L}{\partial b} = \textstyle\sum_n G_{n,:} \;(d_\text{out}). $$
#
# A quick way to remember them: each gradient has the shape of its variable, and there is only one way to
# multiply $G$ with the other factor to get that shape. The bias gradient is a *sum* because broadcasting
# used $b$ once per row (minitx's `unbroadcast` does exactly this sum).

# %%
def linear(x, weight, bias):
    """Y = X Wᵀ + b from two minitx ops (matmul, add)."""
    return x @ weight.T + bias


def linear_backward_by_hand(x, weight, grad_y):
    """(dX, dW, db) from the formulas above, in NumPy."""
    return grad_y @ weight, grad_y.T @ x, grad_y.sum(axis=0)


def check_linear(impl, n=5, d_in=4, d_out=3, seed=0):
    """Raise AssertionError unless impl(x, W, b) is X Wᵀ + b with correct gradients."""
    r = np.random.default_rng(seed)
    xs, ws, bs, gs = r.normal(size=(n, d_in)), r.normal(size=(d_out, d_in)), r.normal(size=d_out), r.normal(size=(n, d_out))
    x, w, b = (mx.tensor(a, requires_grad=True, dtype=np.float64) for a in (xs, ws, bs))
    y = impl(x, w, b)
    y.backward(gs)
    if torch is not None:
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (xs, ws, bs))
        ty = torch.nn.functional.linear(tx, tw, tb)
        ty.backward(torch.tensor(gs))
        want = (ty, tx.grad, tw.grad, tb.grad)
    else:
        want = (xs @ ws.T + bs, *linear_backward_by_hand(xs, ws, gs))
    for name, got, ref in zip(("Y", "dL/dX", "dL/dW", "dL/db"), (y, x.grad, w.grad, b.grad), want):
        C.close(f"linear {name}", got, ref, atol=1e-10)
    for name, got, ref in zip(("dL/dX", "dL/dW", "dL/db"), (x.grad, w.grad, b.grad), linear_backward_by_hand(xs, ws, gs)):
        C.close(f"linear {name} vs the hand-derived formula", got, ref, atol=1e-10)


check_linear(linear)

# %% [markdown]
# ## 2. Activations
#
# Without a nonlinearity between them, two linear layers collapse into one ($W_2(W_1x) = (W_2W_1)x$).
# The usual choices, each an op in `minitx.ops.elementwise` with its derivative in the docstring:
#
# | name | $f(x)$ | $f'(x)$ |
# |---|---|---|
# | ReLU | $\max(0, x)$ | $[x > 0]$ |
# | tanh | $\tanh x$ | $1 - \tanh^2 x$ |
# | sigmoid | $\sigma(x) = 1/(1+e^{-x})$ | $\sigma(x)(1-\sigma(x))$ |
# | GELU | $x\,\Phi(x)$, $\Phi$ the normal CDF | $\Phi(x) + x\,\varphi(x)$ |
#
# GELU (used by BERT and GPT) is a smooth ReLU that lets a little negative signal through. One backward
# pass of `f(x).sum()` gives $f'$ at every grid point at once, which is how the right panel is drawn.

# %%
activations = {
    "ReLU": F.relu, "tanh": F.tanh, "sigmoid": F.sigmoid,
    "GELU": F.gelu, "GELU (tanh approx.)": lambda t: F.gelu(t, approximate="tanh"),
}
torch_activations = None if torch is None else {
    "ReLU": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "GELU": torch.nn.functional.gelu, "GELU (tanh approx.)": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
}
grid = np.linspace(-4, 4, C.pick(401, 101))
curves = {}
for name, f in activations.items():
    x = mx.tensor(grid, requires_grad=True, dtype=np.float64)
    y = f(x)
    y.sum().backward()
    curves[name] = (y.numpy(), x.grad)
    if torch is not None:
        tx = torch.tensor(grid, requires_grad=True)
        ty = torch_activations[name](tx)
        ty.sum().backward()
        C.close(f"{name} value vs PyTorch", y, ty, atol=1e-12)
        C.close(f"{name} derivative vs PyTorch", x.grad, tx.grad, atol=1e-12)
    else:
        h = 1e-6  # float64 central differences (see chapter 01)
        fd = (f(mx.tensor(grid + h, dtype=np.float64)).numpy() - f(mx.tensor(grid - h, dtype=np.float64)).numpy()) / (2 * h)
        smooth = np.abs(grid) > 1e-3  # ReLU has a kink at 0, where a central difference gives 0.5
        C.close(f"{name} derivative vs finite differences", x.grad[smooth], fd[smooth], atol=1e-6)

fig, axes = C.plt.subplots(1, 2, figsize=(10, 4))
for name, (value, deriv) in curves.items():
    style = dict(ls="--", lw=1.5) if "approx" in name else dict(lw=2)
    axes[0].plot(grid, value, label=name, **style)
    axes[1].plot(grid, deriv, label=name, **style)
axes[0].set(xlabel="x", ylabel="f(x)", title="activations", ylim=(-1.5, 4))
axes[1].set(xlabel="x", ylabel="f'(x) (from autograd)", title="their derivatives")
axes[0].legend()
C.save(fig, CHAPTER, "activations")

# %% [markdown]
# ## 3. Softmax, and why we subtract the maximum
#
# Softmax turns a vector of scores (logits) $z \in \mathbb{R}^C$ into probabilities:
#
# $$ \operatorname{softmax}(z)_i = \frac{e^{z_i}}{\sum_j e^{z_j}}
#    = \frac{e^{z_i - m}}{\sum_j e^{z_j - m}} \quad\text{for any } m. $$
#
# The two forms are equal (the $e^{-m}$ cancels), but not in floating point: $e^{z}$ overflows to $\infty$
# for $z > 88.7$ in float32 (and $709.8$ in float64), and $\infty/\infty$ is NaN. With $m = \max_j z_j$
# every exponent is $\le 0$, the largest term is exactly $1$, and the sum lies in $[1, C]$: no overflow,
# and no division by zero.

# %%
def softmax_naive(x, axis=-1):
    e = x.exp()
    return e / e.sum(axis=axis, keepdims=True)


def softmax(x, axis=-1):
    """The stable form, from ops: subtract the row maximum, exponentiate, normalise."""
    e = (x - x.max(axis=axis, keepdims=True)).exp()
    return e / e.sum(axis=axis, keepdims=True)


big = mx.tensor([[1000.0, 1001.0, 1002.0]])
with np.errstate(over="ignore", invalid="ignore"):
    print("naive softmax :", softmax_naive(big).numpy())
print("stable softmax:", softmax(big).numpy())

# %% [markdown]
# **Backward.** With $y = \operatorname{softmax}(z)$, $\partial y_i/\partial z_j = y_i(\delta_{ij} - y_j)$.
# Contracting this Jacobian with the incoming gradient $g = \partial L/\partial y$:
#
# $$ \frac{\partial L}{\partial z_j} = \sum_i g_i\, y_i(\delta_{ij} - y_j)
#    = y_j\Big(g_j - \sum_i g_i y_i\Big), $$
#
# which costs $O(C)$ instead of forming the $C\times C$ Jacobian. This is the formula in
# `minitx.ops.nn.Softmax.backward`; our composed `softmax` gets the same gradient from the chain rule
# through `max`, `sub`, `exp`, `sum` and `div` (the path through the max contributes exactly zero, because
# softmax does not depend on $m$).

# %%
def softmax_backward_by_hand(y, g, axis=-1):
    return y * (g - (g * y).sum(axis=axis, keepdims=True))


def check_softmax(impl, seed=0):
    """Raise AssertionError unless impl(x) is a numerically stable softmax over the last axis."""
    r = np.random.default_rng(seed)
    data = r.normal(0, 3, size=(6, 7))
    data[0] += 800.0  # would overflow a naive exp even in float64
    data[1] -= 800.0  # would underflow every exp of a naive one to 0 (0/0)
    data[2, :] = 0.0  # uniform
    g = r.normal(size=data.shape)
    x = mx.tensor(data, requires_grad=True, dtype=np.float64)
    with np.errstate(all="ignore"):
        y = impl(x)
        y.backward(g)
    if torch is not None:
        tx = torch.tensor(data, requires_grad=True)
        ty = torch.softmax(tx, dim=-1)
        ty.backward(torch.tensor(g))
        want_y, want_g = ty, tx.grad
    else:
        e = np.exp(data - data.max(-1, keepdims=True))
        want_y = e / e.sum(-1, keepdims=True)
        want_g = softmax_backward_by_hand(want_y, g)
    C.close("softmax values", y, want_y, atol=1e-12)
    C.close("softmax gradient", x.grad, want_g, atol=1e-12)
    C.close("softmax gradient vs the hand-derived formula", x.grad, softmax_backward_by_hand(y.numpy(), g), atol=1e-12)
    C.close("softmax rows sum to 1", y.numpy().sum(-1), np.ones(len(data)), atol=1e-12)


check_softmax(softmax)

# %% [markdown]
# ### Log-sum-exp, shown numerically
#
# The normaliser's logarithm, $\operatorname{LSE}(z) = \log\sum_j e^{z_j}$, has the same problem and the
# same cure: $\operatorname{LSE}(z) = m + \log\sum_j e^{z_j - m}$. Below, $z = c + (0, -1, \dots, -4)$ in
# float32 for a range of shifts $c$; the exact answer is $c + \log\sum_{k=0}^{4} e^{-k}$, so we plot
# $\operatorname{LSE}(z) - c$, which should be the constant $0.4519$. The naive formula overflows to
# $+\infty$ past $c \approx 88.27$ (measured in float32): each $e^{z_j}$ is still finite there (up to
# $c \approx 88.72$, the log of float32's largest value $3.4\cdot10^{38}$), but their sum
# $\approx 1.57\,e^{c}$ is not. On the negative side $e^{z}$ first loses precision as it becomes a
# *subnormal* number and then underflows to $0$, so $\log 0 = -\infty$ (below $c \approx -103.97$).

# %%
def lse_naive(z):
    return z.exp().sum(axis=-1).log()


def lse_stable(z):
    m = z.max(axis=-1, keepdims=True)
    return (z - m).exp().sum(axis=-1).log() + m.reshape(m.shape[:-1])


shifts = np.linspace(-110, 100, C.pick(841, 211)).astype(np.float32)
z = mx.tensor(shifts[:, None] - np.arange(5, dtype=np.float32)[None, :])
with np.errstate(over="ignore", divide="ignore", under="ignore"):
    naive = lse_naive(z).numpy() - shifts
stable = lse_stable(z).numpy() - shifts
exact = float(np.log(np.exp(-np.arange(5.0)).sum()))
C.close("stable log-sum-exp over every shift", stable, np.full_like(stable, exact), atol=2e-5 * 110)  # float32 rounding of c
finite = np.isfinite(naive)
print(f"naive LSE is finite only for c in [{shifts[finite].min():.1f}, {shifts[finite].max():.1f}]")
assert not finite.all(), "the naive log-sum-exp should break somewhere in this range"

fig, ax = C.plt.subplots(figsize=(7, 4))
ax.plot(shifts, stable, lw=3, alpha=0.6, label="m + log Σ exp(z − m)  (stable)")
ax.plot(shifts[finite], naive[finite], "r--", label="log Σ exp(z)  (naive)")
for edge in (shifts[finite].min(), shifts[finite].max()):
    ax.axvline(edge, color="r", ls=":", lw=1)
ax.text(shifts[finite].max() + 1, exact - 0.35, "exp overflows:\nnaive = +inf", color="r")
ax.text(shifts.min() + 1, exact - 0.35, "exp underflows:\nnaive = −inf", color="r")
ax.set(xlabel="shift c   (z = c + [0, −1, −2, −3, −4], float32)", ylabel="LSE(z) − c",
       title="log-sum-exp in float32: naive vs max-subtracted", ylim=(exact - 0.6, exact + 0.4))
ax.legend(loc="upper center")
C.save(fig, CHAPTER, "logsumexp_stability")

# %% [markdown]
# ## 4. Cross-entropy
#
# For logits $z \in \mathbb{R}^C$ and the true class $y$, the cross-entropy is the negative log-probability
# the model gives to the truth:
#
# $$ \ell(z, y) = -\log \operatorname{softmax}(z)_y = \operatorname{LSE}(z) - z_y, $$
#
# averaged over the batch. The second form never computes a probability, so it cannot take $\log 0$.
#
# **Backward.** $\partial \operatorname{LSE}/\partial z_j = \operatorname{softmax}(z)_j$ and
# $\partial z_y/\partial z_j = [j = y]$, so
#
# $$ \frac{\partial \ell}{\partial z} = \operatorname{softmax}(z) - \operatorname{onehot}(y), $$
#
# divided by $N$ for the batch mean: the model is pushed to raise the true logit and lower the others in
# proportion to the probability it wrongly gave them.

# %%
def cross_entropy(logits, targets):
    """Mean over the batch of LSE(z) - z_y, from ops. logits (N, C), targets (N,) integers."""
    n = logits.shape[0]
    true_logit = logits[np.arange(n), targets]  # (N,)
    return (lse_stable(logits) - true_logit).mean()


def check_cross_entropy(impl, seed=0):
    """Raise AssertionError unless impl(logits, targets) is the mean cross-entropy with a correct gradient."""
    r = np.random.default_rng(seed)
    n, c = 8, 5
    data = r.normal(0, 2, size=(n, c))
    data[0] += 1000.0  # large logits: e^z overflows even in float64 (the loss does not change)
    data[1] *= 50.0  # a very confident row
    targets = r.integers(0, c, size=n)
    x = mx.tensor(data, requires_grad=True, dtype=np.float64)
    with np.errstate(all="ignore"):
        loss = impl(x, targets)
        loss.backward()
    e = np.exp(data - data.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    closed_form_grad = (p - np.eye(c)[targets]) / n
    if torch is not None:
        tx = torch.tensor(data, requires_grad=True)
        tl = torch.nn.functional.cross_entropy(tx, torch.tensor(targets))
        tl.backward()
        C.close("cross-entropy vs PyTorch", loss, tl, atol=1e-10)
        C.close("cross-entropy gradient vs PyTorch", x.grad, tx.grad, atol=1e-12)
    C.close("cross-entropy vs minitx.functional.cross_entropy", loss, F.cross_entropy(mx.tensor(data), targets), atol=1e-10)
    C.close("cross-entropy gradient vs (softmax - onehot)/N", x.grad, closed_form_grad, atol=1e-12)


check_cross_entropy(cross_entropy)

# %% [markdown]
# ## 5. Everything together: a two-layer network on three spirals
#
# Three interleaved spirals of 2-D points, one class each, cannot be separated by a linear classifier.
# A hidden layer of ReLUs can bend the boundary:
#
# $$ h = \operatorname{ReLU}(X W_1^\top + b_1), \qquad z = h W_2^\top + b_2, \qquad
#    L = \tfrac1N \textstyle\sum_n \ell(z_n, y_n). $$
#
# Training is plain gradient descent, written out: after `loss.backward()` each parameter's `.grad` holds
# $\partial L/\partial\theta$ and we step $\theta \leftarrow \theta - \eta\,\partial L/\partial\theta$. The
# update happens on the raw arrays (`.data`), outside the graph. (`minitx.optim` wraps this in SGD, Adam
# and AdamW for the later chapters.)

# %%
def spirals(n_per_class, n_classes=3, noise=0.2, seed=0):
    r = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(n_classes):
        t = np.linspace(0.0, 1.0, n_per_class)
        angle = 4.0 * t + 2 * np.pi * k / n_classes + r.normal(0, noise, n_per_class)
        xs.append(np.stack([t * np.sin(angle), t * np.cos(angle)], axis=1))
        ys.append(np.full(n_per_class, k))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


X, y = spirals(100)
hidden, steps, lr = 64, C.pick(2000, 600), 1.0
params = {
    "W1": mx.tensor(rng.normal(0, np.sqrt(2 / 2), size=(hidden, 2)), requires_grad=True, dtype=np.float32),
    "b1": mx.zeros(hidden, requires_grad=True),
    "W2": mx.tensor(rng.normal(0, np.sqrt(1 / hidden), size=(3, hidden)), requires_grad=True, dtype=np.float32),
    "b2": mx.zeros(3, requires_grad=True),
}


def mlp(x, p):
    return linear(linear(x, p["W1"], p["b1"]).relu(), p["W2"], p["b2"])


losses = []
for step in range(steps):
    loss = cross_entropy(mlp(mx.tensor(X), params), y)
    loss.backward()
    for p in params.values():
        p.data -= lr * p.grad  # gradient descent on the raw array
        p.grad = None
    losses.append(loss.item())
with mx.no_grad():
    accuracy = float((mlp(mx.tensor(X), params).numpy().argmax(-1) == y).mean())
print(f"after {steps} steps: loss {losses[-1]:.3f}, training accuracy {accuracy:.1%}")
assert losses[-1] < 0.5 * losses[0] and accuracy > 0.8, "the network should learn the spirals"

# %%
xx, yy = np.meshgrid(np.linspace(-1.1, 1.1, 200), np.linspace(-1.1, 1.1, 200))
with mx.no_grad():
    grid_pred = mlp(mx.tensor(np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)), params).numpy().argmax(-1)
fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(10, 4.2))
ax1.plot(losses)
ax1.set(xlabel="gradient-descent step", ylabel="mean cross-entropy", yscale="log", title="training loss")
class_colours = ["tab:red", "tab:blue", "tab:green"]  # one colour per class, in the regions and the points
ax2.contourf(xx, yy, grid_pred.reshape(xx.shape), levels=[-0.5, 0.5, 1.5, 2.5], colors=class_colours, alpha=0.2)
for c, colour in enumerate(class_colours):
    ax2.scatter(X[y == c, 0], X[y == c, 1], color=colour, s=10, edgecolors="k", linewidths=0.3, label=f"class {c}")
ax2.legend(title="class (points and regions)", loc="lower right", fontsize=7)
ax2.set(xlabel="$x_1$", ylabel="$x_2$", title=f"decision regions (train accuracy {accuracy:.0%})")
C.save(fig, CHAPTER, "spirals_training")

# %% [markdown]
# ## Exercises
#
# 1. Replace `lse_stable` by `lse_naive` inside `cross_entropy` and run `check_cross_entropy`. Which
#    check fails, and why does the row shifted by 1000 cause it? Why does the shift not change the loss?
# 2. Add label smoothing: the target distribution becomes $q = (1-\varepsilon)\,\text{onehot}(y) +
#    \varepsilon/C$. Derive the new gradient ($\operatorname{softmax}(z) - q$) and check your version
#    against `F.cross_entropy(logits, y, label_smoothing=0.1)`.
# 3. Train the spiral network with `tanh` instead of ReLU, and with `hidden = 4`. How do the decision
#    regions change?
