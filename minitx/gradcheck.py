"""Check a backward pass against finite differences.

For a function f of tensors x₁…xₙ, backward computes vector–Jacobian products: given a cotangent u of the
output's shape, it returns ∂⟨u, f(x)⟩/∂xᵢ. A central difference estimates the same numbers without any
calculus:

    ∂⟨u, f⟩/∂x[j] ≈ (⟨u, f(x + εe_j)⟩ - ⟨u, f(x - εe_j)⟩) / 2ε      (error O(ε²)).

``gradcheck`` draws a random u (so every output element is checked, with probability one) and compares
the two element by element, in float64, where rounding error is about ε²·f''' + 1e-16/ε ≈ 1e-10.

``mode="directional"`` is for large functions (a whole Transformer block), where one forward pass per
input element would take too long: it compares ⟨∇, w⟩ with (⟨u, f(x + εw)⟩ - ⟨u, f(x - εw)⟩)/2ε for a few
random directions w over all inputs at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """The analytic and numeric gradients disagree."""


@dataclass
class GradcheckResult:
    ok: bool
    input_index: int  # which input holds the worst element (-1 in directional mode)
    element: tuple  # that element's index (the direction number in directional mode)
    analytic: float
    numeric: float
    max_abs_error: float

    def __str__(self) -> str:
        where = (f"input {self.input_index}, element {self.element}" if self.input_index >= 0
                 else f"direction {self.element[0]}")
        return (f"{'passed' if self.ok else 'FAILED'}: worst at {where}: analytic {self.analytic:.10g}, "
                f"numeric {self.numeric:.10g}, |difference| {self.max_abs_error:.3g}")


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-4, mode: str = "full",
              n_directions: int = 4, seed: int = 0, raise_exception: bool = True) -> GradcheckResult:
    """Compare the backward of ``fn(*inputs)`` with central differences.

    ``inputs`` are Tensors; those with ``requires_grad=True`` are checked and must be float64. ``fn`` must
    be deterministic (no dropout) and return a Tensor. An element passes when
    |analytic - numeric| <= atol + rtol·|numeric|. Returns a :class:`GradcheckResult` for the worst
    element; raises :class:`GradcheckError` instead when it fails and ``raise_exception`` is true.
    """
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} (shape {inputs[i].shape}) is {inputs[i].dtype}; finite "
                            "differences need float64 (convert with .double())")
    if mode not in ("full", "directional"):
        raise ValueError(f"gradcheck: mode must be 'full' or 'directional', got {mode!r}")

    rng = np.random.default_rng(seed)
    out = fn(*inputs)
    xp = out.xp
    cotangent = xp.asarray(rng.standard_normal(out.shape))  # u

    def projected(*args) -> float:  # ⟨u, f(args)⟩, without building a graph
        with no_grad():
            return float((fn(*args).data * cotangent).sum())

    for i in checked:
        inputs[i].grad = None
    out.backward(cotangent)
    analytic = [inputs[i].grad if inputs[i].grad is not None else xp.zeros(inputs[i].shape) for i in checked]

    if mode == "full":
        comparisons = _full(projected, inputs, checked, analytic, eps)
    else:
        comparisons = _directional(projected, inputs, checked, analytic, eps, n_directions, rng)

    worst = None
    for input_index, element, a, n in comparisons:
        excess = abs(a - n) - (atol + rtol * abs(n))
        if worst is None or excess > worst[0]:
            worst = (excess, input_index, element, a, n)
    excess, input_index, element, a, n = worst
    result = GradcheckResult(excess <= 0, input_index, element, a, n, abs(a - n))
    if not result.ok and raise_exception:
        raise GradcheckError(f"gradcheck {result} (atol={atol}, rtol={rtol}, eps={eps})")
    return result


def _perturbed(inputs, i, data):
    args = list(inputs)
    args[i] = Tensor(data)
    return args


def _full(projected, inputs, checked, analytic, eps):
    """One central difference per element of every checked input."""
    for i, grad in zip(checked, analytic):
        x = inputs[i].data
        grad = backend.to_numpy(grad)
        for element in np.ndindex(*x.shape):
            original = x[element].item()
            x_plus, x_minus = x.copy(), x.copy()
            x_plus[element], x_minus[element] = original + eps, original - eps
            numeric = (projected(*_perturbed(inputs, i, x_plus)) - projected(*_perturbed(inputs, i, x_minus))) / (2 * eps)
            yield i, element, float(grad[element]), numeric


def _directional(projected, inputs, checked, analytic, eps, n_directions, rng):
    """⟨∇, w⟩ against a central difference along w, for random unit directions w over all inputs."""
    xp = inputs[checked[0]].xp
    for d in range(n_directions):
        directions = [xp.asarray(rng.standard_normal(inputs[i].shape)) for i in checked]
        norm = float(np.sqrt(sum(float((w * w).sum()) for w in directions)))
        directions = [w / norm for w in directions]
        plus, minus = list(inputs), list(inputs)
        for i, w in zip(checked, directions):
            plus[i], minus[i] = Tensor(inputs[i].data + eps * w), Tensor(inputs[i].data - eps * w)
        numeric = (projected(*plus) - projected(*minus)) / (2 * eps)
        analytic_dot = sum(float((g * w).sum()) for g, w in zip(analytic, directions))
        yield -1, (d,), analytic_dot, numeric
