# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 13 — Optimisation, initialisation, dropout
#
# *Read this chapter after chapter 06 and before chapter 07*, which trains its first whole model with
# AdamW, a warm-up + cosine schedule and Xavier initialisation. Here those stop being black boxes:
#
# - **optimisers**: SGD $\theta \leftarrow \theta - \eta g$; momentum $b \leftarrow \mu b + g$,
#   $\theta \leftarrow \theta - \eta b$; Adam
#   $m \leftarrow \beta_1 m + (1-\beta_1) g$, $v \leftarrow \beta_2 v + (1-\beta_2) g^2$,
#   $\theta \leftarrow \theta - \eta\, \hat m / (\sqrt{\hat v} + \epsilon)$ with the bias corrections
#   $\hat m = m/(1-\beta_1^t)$, $\hat v = v/(1-\beta_2^t)$; AdamW's *decoupled* weight decay
#   $\theta \leftarrow (1 - \eta\lambda)\theta$ before the Adam step, which is **not** the same as adding
#   $\lambda\theta$ to the gradient (L2) in Adam;
# - **schedules** (warm-up then cosine, linear, or the original Transformer's "Noam" rule) and global
#   **gradient clipping**;
# - **initialisation** (Xavier, He, GPT-2's residual scaling) and what it does to activations and gradients
#   through a deep stack;
# - **dropout**, inverted so that nothing changes at evaluation.
#
# Each is written in NumPy, checked against the library (`minitx/optim/`, `minitx/nn/init.py`,
# `F.dropout`) and, when PyTorch is installed, against `torch.optim` and `torch.nn.init`.

# %%
import math

import numpy as np

import minitx as mx
import minitx.functional as F
from minitx import optim
from minitx.nn import init

import _common as C

CHAPTER = "13_optimisation_init_dropout"
torch = C.torch_or_none()
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Optimisers, written out
#
# The test problem is an ill-conditioned quadratic $f(\theta) = \tfrac12 \theta^\top A \theta$ with
# $A = \mathrm{diag}(1, 25)$: steep in one direction, flat in the other, like the loss surfaces of real
# networks. Each optimiser below takes the gradient function and returns the whole path.

# %%
A = np.diag([1.0, 25.0])
grad_f = lambda theta: A @ theta  # noqa: E731
theta0 = np.array([-4.0, 1.5])


def sgd(theta, grad_fn, steps, lr, momentum=0.0):
    path, buf = [theta.copy()], None
    for _ in range(steps):
        g = grad_fn(theta)
        buf = g if buf is None else momentum * buf + g  # PyTorch's form: the first buffer is g itself
        theta = theta - lr * (buf if momentum else g)
        path.append(theta.copy())
    return np.array(path)


def adam(theta, grad_fn, steps, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    b1, b2 = betas
    m, v, path = np.zeros_like(theta), np.zeros_like(theta), [theta.copy()]
    for t in range(1, steps + 1):
        g = grad_fn(theta)
        if decoupled:  # AdamW: shrink the weights, apart from the gradient
            theta = theta * (1 - lr * weight_decay)
        else:  # Adam with L2: the decay enters the gradient, and is then divided by √v̂ like it
            g = g + weight_decay * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        path.append(theta.copy())
    return np.array(path)


def library_path(make_optimizer, theta, grad_fn, steps):
    """The same loop with a minitx optimiser: the gradient is written into .grad, then step()."""
    p = mx.tensor(theta.copy(), requires_grad=True)
    opt, path = make_optimizer([p]), [theta.copy()]
    for _ in range(steps):
        opt.zero_grad()
        p.grad = grad_fn(p.numpy().copy())
        opt.step()
        path.append(p.numpy().copy())
    return np.array(path)


def check_optimizer(impl, kind, steps=30, **hp):
    """Raise AssertionError unless impl(theta, grad_fn, steps, **hp) follows the library's (and torch's) path."""
    make = {"sgd": lambda ps: optim.SGD(ps, **hp), "adam": lambda ps: optim.Adam(ps, **hp),
            "adamw": lambda ps: optim.AdamW(ps, **hp)}[kind]
    ours = impl(theta0.copy(), grad_f, steps, **hp)
    C.close(f"{kind} {hp} path vs minitx.optim", ours, library_path(make, theta0, grad_f, steps), atol=1e-9)
    if kind.startswith("adam"):  # the first step is ±lr per coordinate: m̂₁/√v̂₁ = g/|g| (bias correction)
        first = theta0 - hp["lr"] * np.sign(grad_f(theta0)) if not hp.get("weight_decay") else ours[1]
        C.close(f"{kind}: first step = lr·sign(g)", ours[1], first, atol=1e-6)
    if torch is not None:
        t = torch.tensor(theta0.copy(), requires_grad=True)
        opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]([t], **hp)
        path = [theta0.copy()]
        for _ in range(steps):
            opt.zero_grad()
            t.grad = torch.tensor(grad_f(t.detach().numpy().copy()))
            opt.step()
            path.append(t.detach().numpy().copy())
        C.close(f"{kind} {hp} path vs torch.optim", ours, np.array(path), atol=1e-9)


check_optimizer(sgd, "sgd", lr=0.03)
check_optimizer(sgd, "sgd", lr=0.03, momentum=0.9)
check_optimizer(lambda th, g, n, lr: adam(th, g, n, lr), "adam", lr=0.1)
check_optimizer(lambda th, g, n, lr, weight_decay: adam(th, g, n, lr, weight_decay=weight_decay), "adam",
                lr=0.1, weight_decay=0.5)
check_optimizer(lambda th, g, n, lr, weight_decay: adam(th, g, n, lr, weight_decay=weight_decay, decoupled=True),
                "adamw", lr=0.1, weight_decay=0.5)

# %% [markdown]
# **AdamW is not Adam + L2.** Take two weights that the loss does not care about at all except through
# noise: one receives large gradients (noise of size 10), one small (size 0.01), and both should be
# pulled to zero by the decay $\lambda = 0.1$. With L2 in Adam, $\lambda\theta$ is added to $g$ and then
# divided by $\sqrt{\hat v}$: where gradients are large, $\sqrt{\hat v}$ is large and the decay is nearly
# cancelled. AdamW shrinks every weight by the same factor $1 - \eta\lambda$ per step, whatever its
# gradients. (Adam divides the noise by its own size, so both weights also wander by about $\eta$ per
# step, whatever their gradients' scale; the decay is what differs.)

# %%
noise = np.random.default_rng(1).normal(size=(400, 2)) * np.array([10.0, 0.01])
noisy_grad = iter(noise)
steps_wd = C.pick(400, 300)
l2 = adam(np.array([1.0, 1.0]), lambda th: next(noisy_grad), steps_wd, lr=1e-2, weight_decay=0.1)
noisy_grad = iter(noise)
decoupled = adam(np.array([1.0, 1.0]), lambda th: next(noisy_grad), steps_wd, lr=1e-2, weight_decay=0.1,
                 decoupled=True)
print(f"after {steps_wd} steps, Adam + L2: |θ| = {np.abs(l2[-1]).round(3)};  AdamW: |θ| = {np.abs(decoupled[-1]).round(3)}")
shrink = (1 - 1e-2 * 0.1) ** steps_wd  # AdamW's decay alone over the run
print(f"AdamW's decay alone: (1 - ηλ)^{steps_wd} = {shrink:.3f}")
assert abs(l2[-1, 1]) < 0.1 and abs(l2[-1, 0]) > 0.5, "Adam + L2 decays only the weight with small gradients"
assert np.all(np.abs(np.abs(decoupled[-1]) - shrink) < 0.4), "AdamW decays both weights alike"

fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(12, 4.2))
grid = np.linspace(-4.5, 4.5, 200)
X, Y = np.meshgrid(grid, np.linspace(-2, 2, 120))
ax1.contour(X, Y, 0.5 * (X ** 2 + 25 * Y ** 2), levels=15, cmap="Greys", linewidths=0.6)
for name, path in (("SGD, η = 0.03", sgd(theta0, grad_f, 60, 0.03)),
                   ("SGD + momentum 0.9", sgd(theta0, grad_f, 60, 0.03, momentum=0.9)),
                   ("Adam, η = 0.1", adam(theta0, grad_f, 60, 0.1))):
    ax1.plot(path[:, 0], path[:, 1], ".-", ms=3, lw=1, label=name)
ax1.set(xlabel="θ₁ (flat direction)", ylabel="θ₂ (steep direction)", title="60 steps on ½θᵀdiag(1, 25)θ")
ax1.legend(fontsize=8)
for path, style, name in ((l2, "-", "Adam + L2"), (decoupled, "--", "AdamW")):
    ax2.plot(np.abs(path[:, 0]), style, color="tab:red", label=f"{name}: weight with large gradients")
    ax2.plot(np.abs(path[:, 1]), style, color="tab:blue", label=f"{name}: weight with small gradients")
ax2.set(xlabel="step", ylabel="|θ|", title="weight decay λ = 0.1 on two noise-only weights")
ax2.legend(fontsize=7)
C.save(fig, CHAPTER, "optimiser_paths")

# %% [markdown]
# ## 2. Schedules and clipping
#
# Adam's first steps are noisy ($\hat v$ is estimated from a handful of gradients), so the rate is
# **warmed up** linearly over $w$ steps, then decayed. With $t$ counted from 0 and progress
# $p = (t - w)/(T - w)$:
#
# $$ \eta_t = \eta\,\frac{t+1}{w}\ (t < w), \qquad \eta_t = \eta\,\tfrac12(1 + \cos\pi p)\ \text{(cosine)}
#    \ \text{ or }\ \eta\,(1 - p)\ \text{(linear)}, \qquad
#    \eta^\text{Noam}_t = d^{-1/2}\min\big((t+1)^{-1/2}, (t+1)\,w^{-3/2}\big). $$
#
# **Clipping** rescales all gradients together when their global norm exceeds $c$:
# $g \leftarrow g\cdot c/\lVert g\rVert$, which keeps the update's direction.

# %%
def warmup_cosine(t, warmup, total):
    return (t + 1) / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / (total - warmup))))


def warmup_linear(t, warmup, total):
    return (t + 1) / warmup if t < warmup else 1 - min(1.0, (t - warmup) / (total - warmup))


def noam(t, warmup, d_model=512):
    return d_model ** -0.5 * min((t + 1) ** -0.5, (t + 1) * warmup ** -1.5)


def check_schedule(impl, library):
    """Raise AssertionError unless impl(t, warmup, total) is the library schedule's factor at every step."""
    p = mx.tensor(np.zeros(1), requires_grad=True)
    opt = optim.SGD([p], lr=1.0)
    sched = library(opt, warmup_steps=10, total_steps=60)
    got, want = [], []
    for t in range(60):
        got.append(impl(t, 10, 60))
        want.append(opt.lr)
        opt.step()
        sched.step()
    C.close(f"{library.__name__} factors vs the formula", np.array(got), np.array(want), atol=1e-12)


check_schedule(warmup_cosine, optim.warmup_cosine)
check_schedule(warmup_linear, optim.warmup_linear)

grads = [r * 3 for r in (rng.normal(size=(4, 5)), rng.normal(size=7))]
params = [mx.tensor(np.zeros_like(g), requires_grad=True) for g in grads]
for p, g in zip(params, grads):
    p.grad = g.copy()
norm = optim.clip_grad_norm_(params, max_norm=1.0)
total = math.sqrt(sum((g ** 2).sum() for g in grads))
C.close("clip_grad_norm_ returns the global norm", norm, total, atol=1e-12)
C.close("after clipping, the global norm is max_norm", math.sqrt(sum((p.grad ** 2).sum() for p in params)), 1.0, atol=1e-5)
C.close("clipping keeps the direction", params[0].grad, grads[0] / total, atol=1e-6)

fig, ax = C.plt.subplots(figsize=(7, 3.8))
ts = np.arange(1000)
ax.plot(ts, [warmup_cosine(t, 100, 1000) for t in ts], label="warm-up 100 + cosine")
ax.plot(ts, [warmup_linear(t, 100, 1000) for t in ts], label="warm-up 100 + linear")
ax.plot(ts, [noam(t, 100) / noam(99, 100) for t in ts], label="Noam (d = 512, w = 100), scaled to peak 1")
ax.set(xlabel="step t", ylabel="η_t / η", title="learning-rate schedules")
ax.legend()
C.save(fig, CHAPTER, "schedules")

# %% [markdown]
# ## 3. Initialisation
#
# A linear layer $y = Wx$ with $n_\text{in}$ inputs of variance 1 and weights of variance $\sigma^2$ gives
# outputs of variance $n_\text{in}\sigma^2$; backwards, gradients are multiplied by $n_\text{out}\sigma^2$.
# Keeping both near 1 gives **Xavier/Glorot**: $\sigma^2 = 2/(n_\text{in} + n_\text{out})$, drawn as
# $U(-a, a)$ with $a = \sqrt{6/(n_\text{in} + n_\text{out})}$ (variance $a^2/3$). ReLU zeroes half its
# inputs, halving the variance, so **He/Kaiming** uses $\sigma^2 = 2/n_\text{in}$. GPT-2 draws
# $\mathcal N(0, 0.02^2)$ and divides the weights that write into the residual stream by $\sqrt{2L}$ ($L$
# blocks, two residual additions each), so that the stream's variance after $2L$ additions stays what one
# addition would give.
#
# Below: 24 layers of width 256, activations' standard deviation layer by layer (forward) and the
# gradients' (backward), for four choices.

# %%
def check_xavier(impl, shape=(300, 200)):
    """Raise AssertionError unless impl(tensor) fills it with U(-a, a), a = √(6/(fan_in + fan_out))."""
    w = mx.tensor(np.zeros(shape, dtype=np.float32))
    impl(w)
    values = w.numpy().astype(np.float64)
    a = math.sqrt(6 / sum(shape))
    C.close("Xavier: every |w| ≤ a", float(np.abs(values).max() <= a), 1.0, atol=0)
    C.close("Xavier: variance a²/3 = 2/(fan_in + fan_out)", values.var(), a * a / 3, rtol=0.03, atol=0)
    C.close("Xavier: mean 0", values.mean(), 0.0, atol=4 * a / math.sqrt(3 * values.size))
    C.close("Xavier: uniform (a quarter of the values beyond a/2 in each tail)", (values > a / 2).mean(), 0.25, atol=0.01)
    if torch is not None:
        t = torch.empty(shape, dtype=torch.float64)
        torch.nn.init.xavier_uniform_(t)
        C.close("Xavier: variance matches torch.nn.init.xavier_uniform_", values.var(), t.var().item(), rtol=0.05, atol=0)


check_xavier(init.xavier_uniform_)


def stack_statistics(std_fn, activation, depth=24, width=256, residual_scale=None):
    """Per-layer std of activations (forward) and of gradients (backward) through `depth` layers."""
    r = np.random.default_rng(3)
    x = mx.tensor(r.normal(size=(64, width)), requires_grad=True)
    h, hs = x, []
    for _ in range(depth):
        w = mx.tensor(r.normal(0, std_fn(width), (width, width)))
        z = F.linear(h, w)
        a = z.relu() if activation == "relu" else z.tanh()
        h = h + a * residual_scale if residual_scale is not None else a
        hs.append(h)
    hs[-1].backward(mx.tensor(r.normal(size=hs[-1].shape)))
    forward = [float(t.numpy().std()) for t in hs]
    return forward, float(x.grad.std())


choices = {
    "N(0, 1) weights, tanh": (lambda n: 1.0, "tanh", None),
    "N(0, 0.01²), tanh": (lambda n: 0.01, "tanh", None),
    "Xavier (σ² = 1/n here), tanh": (lambda n: math.sqrt(1 / n), "tanh", None),
    "He σ² = 2/n, ReLU": (lambda n: math.sqrt(2 / n), "relu", None),
    "GPT-2: residual, N(0, 0.02²), branch × 1/√(2L), ReLU": (lambda n: 0.02, "relu", 1 / math.sqrt(2 * 24)),
}
stats = {name: stack_statistics(fn, act, residual_scale=scale) for name, (fn, act, scale) in choices.items()}
for name, (fwd, g) in stats.items():
    print(f"{name:52s} std of activations: layer 1 {fwd[0]:.2e}, layer 24 {fwd[-1]:.2e}; std of ∂L/∂x {g:.2e}")
assert stats["N(0, 0.01²), tanh"][0][-1] < 1e-10, "tiny weights: the signal vanishes"
assert 0.3 < stats["He σ² = 2/n, ReLU"][0][-1] / stats["He σ² = 2/n, ReLU"][0][0] < 3, "He keeps ReLU stacks stable"

fig, ax = C.plt.subplots(figsize=(7.5, 4.2))
for name, (fwd, _) in stats.items():
    ax.semilogy(np.arange(1, 25), np.maximum(fwd, 1e-30), "o-", ms=3, label=name)
ax.set(xlabel="layer", ylabel="std of the activations", title="a 24-layer stack of width 256 at initialisation")
ax.legend(fontsize=7)
C.save(fig, CHAPTER, "init_statistics")

# %% [markdown]
# Weights too large ($\mathcal N(0, 1)$ with 256 inputs: pre-activations of spread 16) saturate tanh at
# $\pm 1$ and the printed input gradient explodes; weights too small make the signal vanish in a few
# layers; Xavier with tanh still loses some of it with depth (tanh shrinks everything but the origin's
# neighbourhood); He keeps a ReLU stack's scale; GPT-2's residual stream stays at its input's scale
# because each block adds only a $1/\sqrt{2L}$-scaled branch to it.
#
# ## 4. Dropout
#
# In training, dropout zeroes each activation with probability $p$ and multiplies the survivors by
# $1/(1-p)$ ("inverted" dropout), so $\mathbb E[\mathrm{dropout}(x)] = x$ and evaluation is the identity —
# no rescaling needed at test time. Its backward is the same mask times the same factor.

# %%
def dropout(x, p, training, r):
    if not training or p == 0:
        return x
    keep = r.random(x.shape) >= p
    return x * keep / (1 - p)


def check_dropout(impl, p=0.3, n=200_000):
    """Raise AssertionError unless impl(x, p, training) is inverted dropout (statistically, on n values)."""
    x = np.full(n, 2.0)
    y = np.asarray(C.as_numpy(impl(x, p, True)), dtype=np.float64)
    zeros = (y == 0).mean()
    tolerance = 4 * math.sqrt(p * (1 - p) / n)
    C.close("dropout: fraction of zeros = p", zeros, p, atol=tolerance)
    C.close("dropout: survivors scaled by 1/(1 - p)", y[y != 0], np.full((y != 0).sum(), 2.0 / (1 - p)), atol=1e-6)
    C.close("dropout: mean preserved", y.mean(), 2.0, atol=2.0 / (1 - p) * tolerance)
    C.close("dropout: identity in evaluation", C.as_numpy(impl(x, p, False)), x, atol=0)


check_dropout(lambda x, p, training: dropout(x, p, training, rng))
check_dropout(lambda x, p, training: F.dropout(mx.tensor(x), p, training))

# %% [markdown]
# ## Exercises
#
# 1. Run Adam on the quadratic with $\beta_2 = 0.9$ and without the bias corrections. How large is the
#    first step, and why?
# 2. Find the largest SGD learning rate that still converges on $\mathrm{diag}(1, 25)$ (hint: the steep
#    direction needs $\eta < 2/25$). How does momentum change that limit?
# 3. Put dropout in the forward pass of `stack_statistics` with $p = 0.5$. What happens to the activations'
#    standard deviation in training mode, and in evaluation mode?
