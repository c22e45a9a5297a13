"""Elementwise ops: arithmetic with NumPy broadcasting, and the usual nonlinearities.

For a binary op ``z = f(x, y)`` the inputs may have different shapes that broadcast together; the gradient
reaching each input is summed back to that input's own shape (:func:`unbroadcast`). Ops whose result is not
an integer (division, exp, tanh...) turn integer inputs into the default float dtype first (:func:`as_float`).
"""

from __future__ import annotations

from kernels.activations import GELU_TANH_COEF, INV_SQRT_2, INV_SQRT_2PI, SQRT_2_OVER_PI

from .. import backend
from ..backend import get_array_module
from ..tensor import Function
from ._util import as_float, check_broadcast, match_dtypes, unbroadcast


class _Binary(Function):
    """Shared bookkeeping of binary ops: dtype and shape checks, and the input shapes for unbroadcasting."""

    def prepare(self, a, b):
        a, b = match_dtypes(type(self).__name__, a, b)
        check_broadcast(type(self).__name__, a.shape, b.shape)
        self.a_shape, self.b_shape = a.shape, b.shape
        return a, b


class Add(_Binary):
    """z = a + b;  dz/da = 1, dz/db = 1."""

    def forward(self, a, b):
        a, b = self.prepare(a, b)
        return a + b

    def backward(self, grad):
        return unbroadcast(grad, self.a_shape), unbroadcast(grad, self.b_shape)


class Sub(_Binary):
    """z = a - b;  dz/da = 1, dz/db = -1."""

    def forward(self, a, b):
        a, b = self.prepare(a, b)
        return a - b

    def backward(self, grad):
        return unbroadcast(grad, self.a_shape), unbroadcast(-grad, self.b_shape)


class Mul(_Binary):
    """z = a * b;  dz/da = b, dz/db = a."""

    def forward(self, a, b):
        a, b = self.prepare(a, b)
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        da = unbroadcast(grad * self.b, self.a_shape) if self.needs_grad[0] else None
        db = unbroadcast(grad * self.a, self.b_shape) if self.needs_grad[1] else None
        return da, db


class Div(_Binary):
    """z = a / b;  dz/da = 1/b, dz/db = -a/b² = -z/b."""

    def forward(self, a, b):
        a, b = self.prepare(a, b)
        a, b = as_float(a), as_float(b)  # true division: 7 / 2 = 3.5
        self.b = b
        self.z = a / b
        return self.z

    def backward(self, grad):
        da = unbroadcast(grad / self.b, self.a_shape) if self.needs_grad[0] else None
        db = unbroadcast(-grad * self.z / self.b, self.b_shape) if self.needs_grad[1] else None
        return da, db


class Pow(_Binary):
    """z = a ** b;  dz/da = b·a^(b-1), dz/db = z·ln(a).

    Where the formulas give 0·∞ at a = 0, the limits PyTorch uses are taken instead:
    dz/da = 0 where b = 0 (z = a⁰ = 1 is constant in a; the formula gives 0·0⁻¹ = NaN), and
    dz/db = 0 where a = 0 and b ≥ 0 (z = 0ᵇ is constant for b > 0; the formula gives 0·ln 0 = NaN).
    Elsewhere the formulas stand: ±∞ for a = 0, b < 0 (or 0 < b < 1 in dz/da), NaN for dz/db at a < 0.
    """

    def forward(self, a, b):
        a, b = self.prepare(a, b)
        self.a, self.b = a, b
        self.z = a**b
        return self.z

    def backward(self, grad):
        xp = get_array_module(grad)
        zero = grad.dtype.type(0)
        da = db = None
        if self.needs_grad[0]:
            da = unbroadcast(xp.where(self.b == 0, zero, grad * self.b * self.a ** (self.b - 1)), self.a_shape)
        if self.needs_grad[1]:
            constant = (self.a == 0) & (self.b >= 0)
            db = unbroadcast(xp.where(constant, zero, grad * self.z * xp.log(self.a)), self.b_shape)
        return da, db


class Maximum(_Binary):
    """z = max(a, b) elementwise;  dz/da = 1 where a > b, 0 where a < b, and dz/db the other way round.

    Where a = b the derivative does not exist; the gradient is split, ½ to each input (as in PyTorch), so
    the sum of both gradients is still the gradient of z.
    """

    def forward(self, a, b):
        a, b = self.prepare(a, b)
        self.a_wins, self.tie = a > b, a == b  # (broadcast shape)
        return get_array_module(a).maximum(a, b)

    def backward(self, grad):
        return _split_between(grad, self.a_wins, self.tie, self.a_shape, self.b_shape)


class Minimum(_Binary):
    """z = min(a, b) elementwise;  dz/da = 1 where a < b, 0 where a > b, ½ to each where a = b (as Maximum)."""

    def forward(self, a, b):
        a, b = self.prepare(a, b)
        self.a_wins, self.tie = a < b, a == b  # (broadcast shape)
        return get_array_module(a).minimum(a, b)

    def backward(self, grad):
        return _split_between(grad, self.a_wins, self.tie, self.a_shape, self.b_shape)


def _split_between(grad, a_wins, tie, a_shape, b_shape):
    """The gradients of max/min(a, b): all of ``grad`` to the input picked, half each at a tie."""
    share_a = a_wins + grad.dtype.type(0.5) * tie  # 1, ½ or 0, in grad's dtype
    return unbroadcast(grad * share_a, a_shape), unbroadcast(grad * (1 - share_a), b_shape)


class Neg(Function):
    """z = -a;  dz/da = -1."""

    def forward(self, a):
        return -a

    def backward(self, grad):
        return -grad


class Exp(Function):
    """z = eˣ;  dz/dx = eˣ = z."""

    def forward(self, x):
        self.z = get_array_module(x).exp(as_float(x))
        return self.z

    def backward(self, grad):
        return grad * self.z


class Log(Function):
    """z = ln x;  dz/dx = 1/x."""

    def forward(self, x):
        self.x = x = as_float(x)
        return get_array_module(x).log(x)

    def backward(self, grad):
        return grad / self.x


class Sqrt(Function):
    """z = √x;  dz/dx = 1/(2√x) = 1/(2z)."""

    def forward(self, x):
        self.z = get_array_module(x).sqrt(as_float(x))
        return self.z

    def backward(self, grad):
        return grad / (2 * self.z)


class Rsqrt(Function):
    """z = 1/√x;  dz/dx = -½·x^(-3/2) = -½·z³."""

    def forward(self, x):
        xp = get_array_module(x)
        self.z = 1 / xp.sqrt(as_float(x))
        return self.z

    def backward(self, grad):
        return grad * (-0.5 * self.z * self.z * self.z)


class Sin(Function):
    """z = sin x;  dz/dx = cos x."""

    def forward(self, x):
        self.x = x = as_float(x)
        return get_array_module(x).sin(x)

    def backward(self, grad):
        return grad * get_array_module(grad).cos(self.x)


class Cos(Function):
    """z = cos x;  dz/dx = -sin x."""

    def forward(self, x):
        self.x = x = as_float(x)
        return get_array_module(x).cos(x)

    def backward(self, grad):
        return grad * -get_array_module(grad).sin(self.x)


class Abs(Function):
    """z = |x|;  dz/dx = sign(x) (0 at x = 0, as in PyTorch)."""

    def forward(self, x):
        self.x = x
        return abs(x)

    def backward(self, grad):
        return grad * get_array_module(grad).sign(self.x)


class Tanh(Function):
    """z = tanh x;  dz/dx = 1 - z²."""

    def forward(self, x):
        self.z = get_array_module(x).tanh(as_float(x))
        return self.z

    def backward(self, grad):
        return grad * (1 - self.z * self.z)


def _sigmoid(x):
    """σ(x) = 1/(1+e⁻ˣ), written with t = e^(-|x|) ∈ (0, 1] so that no exp overflows and tiny values keep their
    relative accuracy: σ(x) = 1/(1+t) for x ≥ 0 and t/(1+t) (= eˣ/(1+eˣ)) for x < 0."""
    xp = get_array_module(x)
    t = xp.exp(-xp.abs(x))
    r = 1 / (1 + t)
    return xp.where(x >= 0, r, t * r)


class Sigmoid(Function):
    """z = σ(x) = 1/(1+e⁻ˣ) (see :func:`_sigmoid`);  dz/dx = z(1-z)."""

    def forward(self, x):
        self.z = _sigmoid(as_float(x))
        return self.z

    def backward(self, grad):
        return grad * self.z * (1 - self.z)


class SiLU(Function):
    """z = SiLU(x) = x·σ(x) (the "swish" with β = 1; the gate of Llama's SwiGLU feed-forward);
    dz/dx = σ(x) + x·σ(x)(1 - σ(x)) = σ(x)(1 + x(1 - σ(x))).
    """

    def forward(self, x):
        self.x = x = as_float(x)
        self.s = _sigmoid(x)
        return x * self.s

    def backward(self, grad):
        return grad * self.s * (1 + self.x * (1 - self.s))


class ReLU(Function):
    """z = max(0, x);  dz/dx = 1 where x > 0, else 0."""

    def forward(self, x):
        self.positive = x > 0
        # max(x, 0) in one pass: not x * mask (-inf * 0 is NaN), and not where(mask, x, 0), which is
        # several times slower on float32 (measured: benchmarks/RESULTS.md, training step)
        return get_array_module(x).maximum(x, x.dtype.type(0))

    def backward(self, grad):
        return grad * self.positive


class Clamp(Function):
    """z = min(max(x, low), high), either bound may be None;  dz/dx = 1 where low ≤ x ≤ high, else 0.

    At a boundary (x = low or x = high) the gradient passes, as in PyTorch. With low > high every element
    becomes ``high`` and no gradient passes. The bounds are numbers, taken in x's dtype.
    """

    def forward(self, x, low=None, high=None):
        if low is None and high is None:
            raise ValueError("clamp: give low, high or both (both None would clamp nothing)")
        xp = get_array_module(x)
        z = x
        self.inside = xp.ones(x.shape, dtype=bool)
        if low is not None:
            self.inside &= x >= low
            z = xp.maximum(z, x.dtype.type(low))
        if high is not None:
            self.inside &= x <= high
            z = xp.minimum(z, x.dtype.type(high))
        return z

    def backward(self, grad):
        return grad * self.inside


class LeakyReLU(Function):
    """z = x where x > 0, else slope·x;  dz/dx = 1 where x > 0, else slope (slope at x = 0, as in PyTorch)."""

    def forward(self, x, negative_slope: float = 0.01):
        xp = get_array_module(x)
        x = as_float(x)
        self.positive, self.slope = x > 0, x.dtype.type(negative_slope)
        return xp.where(self.positive, x, x * self.slope)

    def backward(self, grad):
        return get_array_module(grad).where(self.positive, grad, grad * self.slope)


class Softplus(Function):
    """z = (1/β)·ln(1 + e^(βx)), a smooth ReLU;  dz/dx = σ(βx) (the logistic sigmoid).

    As in PyTorch, where βx > ``threshold`` the result is x itself (they agree to float precision there) and
    the derivative 1. ln(1 + e^u) is computed as logaddexp(0, u), which never overflows.
    """

    def forward(self, x, beta: float = 1.0, threshold: float = 20.0):
        xp = get_array_module(x)
        x = as_float(x)
        beta = x.dtype.type(beta)
        self.bx = x * beta
        self.linear = self.bx > threshold
        return xp.where(self.linear, x, xp.logaddexp(x.dtype.type(0), self.bx) / beta)

    def backward(self, grad):
        xp = get_array_module(grad)
        sigmoid = xp.exp(-xp.logaddexp(grad.dtype.type(0), -self.bx))  # σ(βx), as in Sigmoid
        return grad * xp.where(self.linear, grad.dtype.type(1), sigmoid)


class GELU(Function):
    """Gaussian Error Linear Unit, z = x·Φ(x) with Φ the standard normal CDF.

    ``approximate="none"``: Φ(x) = ½(1 + erf(x/√2)), so dz/dx = Φ(x) + x·φ(x), φ(x) = e^(-x²/2)/√(2π).
    ``approximate="tanh"``: z = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³), so
    dz/dx = ½(1 + tanh u) + ½x(1 - tanh²u)·√(2/π)(1 + 3·0.044715x²).
    The constants are the kernels' (kernels/activations.py), so every backend computes the same function.
    """

    def forward(self, x, approximate: str = "none"):
        xp = get_array_module(x)
        x = as_float(x)
        self.x, self.approximate = x, approximate
        if approximate == "none":
            self.cdf = 0.5 * (1 + backend.erf(x * x.dtype.type(INV_SQRT_2)))
            return x * self.cdf
        if approximate == "tanh":
            k = x.dtype.type(SQRT_2_OVER_PI)
            self.t = xp.tanh(k * (x + x.dtype.type(GELU_TANH_COEF) * (x * x * x)))  # x·x·x: NumPy's x**3 calls pow per element
            return 0.5 * x * (1 + self.t)
        raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")

    def backward(self, grad):
        xp = get_array_module(grad)
        x = self.x
        if self.approximate == "none":
            pdf = xp.exp(-0.5 * x * x) * x.dtype.type(INV_SQRT_2PI)
            return grad * (self.cdf + x * pdf)
        k = x.dtype.type(SQRT_2_OVER_PI)
        du = k * (1 + x.dtype.type(3 * GELU_TANH_COEF) * x * x)
        return grad * (0.5 * (1 + self.t) + 0.5 * x * (1 - self.t * self.t) * du)
