# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 01 — Autograd and the chain rule
#
# Every model in minitx learns by gradient descent, and every gradient comes from one engine:
# `minitx.tensor` records each operation as it runs, and `loss.backward()` walks that record backwards,
# applying the chain rule one operation at a time. This chapter does the same thing three times:
#
# 1. by hand, on a graph of five scalar operations;
# 2. with minitx tensors, reading the graph the engine recorded;
# 3. for a new operation that we add to the engine ourselves (softplus), checked by `gradcheck`.
#
# Run it with `python tutorials/01_autograd.py` (add `MINITX_QUICK=1` for a short run).

# %%
import math

import numpy as np

import minitx as mx
from minitx.backend import get_array_module
from minitx.tensor import Function

import _common as C

CHAPTER = "01_autograd"
torch = C.torch_or_none()
mx.manual_seed(0)

# %% [markdown]
# ## 1. A tiny graph, differentiated by hand
#
# One neuron with a squared error:
#
# $$ z = w x + b, \qquad a = \tanh z, \qquad L = (a - y)^2 . $$
#
# The chain rule says that the derivative of $L$ with respect to anything upstream is the product of the
# *local* derivatives along the path. Going backwards from $L$:
#
# $$ \frac{\partial L}{\partial a} = 2(a - y), \qquad
#    \frac{\partial L}{\partial z} = \frac{\partial L}{\partial a}\,\frac{\partial a}{\partial z}
#                                  = 2(a-y)\,(1 - a^2), $$
# $$ \frac{\partial L}{\partial w} = \frac{\partial L}{\partial z}\, x, \qquad
#    \frac{\partial L}{\partial b} = \frac{\partial L}{\partial z}, \qquad
#    \frac{\partial L}{\partial x} = \frac{\partial L}{\partial z}\, w . $$
#
# Two things to notice. Each local derivative needs only values from the forward pass ($a$, $x$, $w$), so
# the forward pass must *keep* them. And $\partial L/\partial z$ is computed once and reused by three
# inputs: that sharing is what makes reverse mode cheap — one backward pass gives the gradient with respect
# to every input, for about the cost of one forward pass.

# %%
def neuron_forward(x, w, b, y):
    """Plain Python floats: returns every intermediate value, as the engine would save them."""
    z = w * x + b
    a = math.tanh(z)
    loss = (a - y) ** 2
    return {"z": z, "a": a, "L": loss}


def neuron_gradients_by_hand(x, w, b, y):
    """dL/dx, dL/dw, dL/db by the chain rule, written out as above."""
    a = neuron_forward(x, w, b, y)["a"]
    dL_da = 2 * (a - y)
    dL_dz = dL_da * (1 - a * a)  # d tanh(z)/dz = 1 - tanh(z)^2
    return {"x": dL_dz * w, "w": dL_dz * x, "b": dL_dz}


x0, w0, b0, y0 = 0.7, -1.3, 0.4, 0.25
print("forward :", {k: round(v, 6) for k, v in neuron_forward(x0, w0, b0, y0).items()})
print("by hand :", {k: round(v, 6) for k, v in neuron_gradients_by_hand(x0, w0, b0, y0).items()})

# %% [markdown]
# ## 2. The same graph with minitx
#
# Tensors created with `requires_grad=True` are *leaves*. Every op on them returns a tensor whose `_ctx`
# is the `Function` that produced it, and that Function remembers its `inputs`. So the result is the root
# of a graph we can walk. `backward()` orders the nodes so that each comes after everything that uses it
# (a reverse topological order), starts with $\partial L/\partial L = 1$, and hands each node's gradient
# to its Function's `backward`, which returns one gradient per input.

# %%
def neuron_loss(x, w, b, y):
    return ((w * x + b).tanh() - y) ** 2


def show_graph(t, depth=0):
    """Print the recorded graph below ``t``: the op that made each tensor, then its inputs."""
    name = type(t._ctx).__name__ if t._ctx is not None else ("leaf" if t.requires_grad else "constant")
    print("    " * depth + f"{name}  shape={t.shape}  value={np.round(t.numpy(), 4).tolist()}")
    if t._ctx is not None:
        for parent in t._ctx.inputs:
            show_graph(parent, depth + 1)


xs = {k: mx.tensor(v, requires_grad=True, dtype=np.float64) for k, v in dict(x=x0, w=w0, b=b0).items()}
loss = neuron_loss(xs["x"], xs["w"], xs["b"], y0)
show_graph(loss)
loss.backward()
print("autograd:", {k: round(float(t.grad), 6) for k, t in xs.items()})

# %% [markdown]
# ### The check
#
# `check_chain_rule(grad_fn)` compares a hand-written gradient function with autograd at random points
# (and with PyTorch when it is installed). It raises `AssertionError` if they differ, so a mistake in the
# derivation cannot go unnoticed — try deleting the `(1 - a * a)` factor above and run the chapter again.

# %%
def check_chain_rule(grad_fn, n_points=20, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n_points):
        x, w, b, y = rng.normal(size=4)
        mine = grad_fn(x, w, b, y)
        leaves = {k: mx.tensor(v, requires_grad=True, dtype=np.float64) for k, v in dict(x=x, w=w, b=b).items()}
        neuron_loss(leaves["x"], leaves["w"], leaves["b"], y).backward()
        for k, t in leaves.items():
            _quiet_close(f"dL/d{k} by hand vs autograd at (x, w, b, y) = {(x, w, b, y)}", mine[k], t.grad)
        if torch is not None:
            tl = {k: torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for k, v in dict(x=x, w=w, b=b).items()}
            ((tl["w"] * tl["x"] + tl["b"]).tanh() - y).pow(2).backward()
            for k, t in tl.items():
                _quiet_close(f"dL/d{k} autograd vs PyTorch", leaves[k].grad, t.grad)
    print(f"[check] chain rule: hand-derived gradients agree with autograd at {n_points} random points"
          + (" and with PyTorch" if torch is not None else ""))


def _quiet_close(name, got, want, atol=1e-10, rtol=1e-8):
    got, want = float(np.asarray(got)), float(np.asarray(want))
    if not abs(got - want) <= atol + rtol * abs(want):
        raise AssertionError(f"CHECK FAILED {name}: got {got!r}, expected {want!r}")


check_chain_rule(neuron_gradients_by_hand)

# %% [markdown]
# ## 3. Paths add up
#
# When a value feeds several places, its gradient is the **sum** over the paths. $f(x) = x \cdot x + x$
# uses $x$ three times: the product contributes $x$ twice (once per factor) and the sum contributes $1$,
# so $f'(x) = 2x + 1$. The engine adds up the contributions that reach the same tensor before passing the
# total on.

# %%
x = mx.tensor(3.0, requires_grad=True, dtype=np.float64)
f = x * x + x
f.backward()
C.close("d(x*x + x)/dx at x=3 equals 2x + 1 = 7", x.grad, 7.0, atol=1e-12)

# %% [markdown]
# ## 4. Adding an operation to the engine: softplus
#
# An op is a `Function` subclass with `forward(arrays) -> array` and `backward(grad) -> grads` side by
# side. Softplus is a smooth ReLU:
#
# $$ \operatorname{softplus}(x) = \log(1 + e^{x}), \qquad
#    \frac{d}{dx}\operatorname{softplus}(x) = \frac{e^x}{1+e^x} = \sigma(x). $$
#
# Written literally, $\log(1 + e^x)$ overflows for $x \gtrsim 89$ in float32 ($e^x = \infty$). NumPy's
# `logaddexp(0, x)` $= \log(e^0 + e^x)$ computes the same value without overflowing. The backward receives
# $\partial L/\partial y$ (same shape as the output) and multiplies it by the local derivative
# elementwise — for an elementwise op the Jacobian is diagonal, so this *is* the vector–Jacobian product.

# %%
class Softplus(Function):
    """y = log(1 + e^x);  dy/dx = sigmoid(x)."""

    def forward(self, x):
        xp = get_array_module(x)
        self.x = x  # saved for backward
        return xp.logaddexp(x.dtype.type(0), x)

    def backward(self, grad):
        xp = get_array_module(grad)
        sigmoid = xp.exp(-xp.logaddexp(self.x.dtype.type(0), -self.x))  # 1/(1+e^-x) without overflow
        return grad * sigmoid


def softplus(x):
    return Softplus.apply(x)


print(softplus(mx.tensor([-1000.0, -1.0, 0.0, 1.0, 1000.0])))

# %% [markdown]
# ## 5. Checking a backward: finite differences and `gradcheck`
#
# A derivative can be estimated without any calculus, by the central difference
#
# $$ f'(x) \approx \frac{f(x+\varepsilon) - f(x-\varepsilon)}{2\varepsilon}, $$
#
# whose truncation error is $\tfrac{\varepsilon^2}{6} f'''(x)$. But each evaluation of $f$ carries a
# rounding error of about $u\,|f|$, with $u$ the unit roundoff ($10^{-16}$ in float64, $6\cdot10^{-8}$ in
# float32), and dividing by $2\varepsilon$ amplifies it to $u|f|/\varepsilon$. The sum
# $\varepsilon^2 + u/\varepsilon$ is smallest near $\varepsilon \approx u^{1/3}$, where the error is about
# $u^{2/3}$: roughly $10^{-11}$ in float64, but only $10^{-5}$ in float32 — too coarse to tell a correct
# backward from a slightly wrong one. That is why `minitx.gradcheck` insists on float64 inputs.
#
# `mx.gradcheck(fn, inputs)` draws a random cotangent $u$ and compares every element of the analytic
# $\partial\langle u, f\rangle/\partial x$ with its central difference. `check_softplus(op)` below runs
# it, and compares values and gradients with PyTorch (or with the closed form $\sigma(x)$ when PyTorch is
# missing).

# %%
def check_softplus(op, n=64, seed=1):
    """Raise AssertionError unless ``op`` (Tensor -> Tensor) is softplus with a correct backward."""
    rng = np.random.default_rng(seed)
    data = np.concatenate([rng.normal(0, 3, n - 4), [-40.0, -5.0, 5.0, 40.0]])  # include the tails
    # (1) backward against finite differences, in float64
    result = mx.gradcheck(op, [mx.tensor(data, dtype=np.float64, requires_grad=True)])
    print(f"[check] gradcheck of softplus: {result}")
    # (2) values and gradients against an independent reference
    x = mx.tensor(data, dtype=np.float64, requires_grad=True)
    y = op(x)
    y.sum().backward()
    if torch is not None:
        tx = torch.tensor(data, dtype=torch.float64, requires_grad=True)
        ty = torch.nn.functional.softplus(tx)
        ty.sum().backward()
        want_y, want_g = ty, tx.grad
    else:
        want_y, want_g = np.logaddexp(0.0, data), 1 / (1 + np.exp(-data))
    C.close("softplus values vs reference", y, want_y, atol=1e-12, rtol=1e-10)
    C.close("softplus gradient vs reference", x.grad, want_g, atol=1e-12, rtol=1e-10)
    # (3) no overflow in float32 far out in the tails
    big = op(mx.tensor([-500.0, 500.0]))
    C.close("softplus(±500) in float32 is finite", big, [0.0, 500.0], atol=1e-6)


check_softplus(softplus)

# %% [markdown]
# ## 6. A figure: the derivative, and how accurate finite differences can be
#
# Left: softplus, its derivative from autograd, and a central-difference estimate. Right: the error of
# the central difference at $x = 0.5$ as a function of $\varepsilon$, in float64 and float32. The V shape is
# the trade-off above: to the right the truncation error ($\propto\varepsilon^2$), to the left rounding
# ($\propto 1/\varepsilon$).

# %%
grid = np.linspace(-6, 6, C.pick(241, 61))
xg = mx.tensor(grid, dtype=np.float64, requires_grad=True)
softplus(xg).sum().backward()  # d(sum y)/dx_i = y'(x_i): one backward gives the whole derivative curve
fd = (np.logaddexp(0, grid + 1e-4) - np.logaddexp(0, grid - 1e-4)) / 2e-4

x_probe = 0.5
exact = 1 / (1 + math.exp(-x_probe))
epsilons = np.logspace(-12, 0, C.pick(61, 25))
errors = {}
for dtype in (np.float64, np.float32):
    errs = []
    for eps in epsilons:
        plus = softplus(mx.tensor(np.array(x_probe + eps, dtype=dtype))).numpy()
        minus = softplus(mx.tensor(np.array(x_probe - eps, dtype=dtype))).numpy()
        errs.append(abs(float(plus - minus) / (2 * eps) - exact) + 1e-18)
    errors[np.dtype(dtype).name] = np.array(errs)

fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(10, 4))
ax1.plot(grid, softplus(mx.tensor(grid)).numpy(), label="softplus(x)")
ax1.plot(grid, xg.grad, label="d/dx by autograd", lw=3, alpha=0.5)
ax1.plot(grid[::6], fd[::6], "k.", label="central difference")
ax1.set(xlabel="x", ylabel="value", title="softplus and its derivative σ(x)")
ax1.legend()
for name, errs in errors.items():
    ax2.loglog(epsilons, errs, "o-", ms=3, label=name)
ax2.axvline(1e-6, color="gray", ls="--", label="gradcheck default ε")
ax2.set(xlabel="ε", ylabel="|finite difference − σ(0.5)|", title="central-difference error vs ε")
ax2.legend()
C.save(fig, CHAPTER, "softplus_and_fd_error")

best64, best32 = errors["float64"].min(), errors["float32"].min()
print(f"best finite-difference error: float64 {best64:.1e}, float32 {best32:.1e}")
assert best64 < 1e-8 < best32, "float64 should allow far more accurate finite differences than float32"

# %% [markdown]
# ## Exercises
#
# 1. Write `Square(Function)` with $y = x^2$ and a *wrong* backward (`grad * x`). Run
#    `mx.gradcheck(lambda t: Square.apply(t), [mx.tensor(np.ones(3), dtype=np.float64, requires_grad=True)])`
#    and read the error message: which element, analytic vs numeric?
# 2. Extend the neuron to two layers, $L = (\tanh(w_2 \tanh(w_1 x + b_1) + b_2) - y)^2$. Derive
#    $\partial L/\partial w_1$ by hand and check it with the same pattern as `check_chain_rule`.
# 3. Read off the right panel where each curve has its minimum. Compare with the prediction
#    $\varepsilon \approx u^{1/3}$, and explain why the float32 curve is flat (and noisy) to the left.
