"""The one table of FFN activations, shared by every backend: the NumPy reference, kernels.cpu and kernels.cuda.

A kernel cannot branch on a string, so each activation travels as an int code, its position here:

    code  name        act(h)                                          (formulas: kernels.reference)
    0     identity    h
    1     relu        max(h, 0)
    2     gelu        0.5 h (1 + erf(h / sqrt 2))
    3     gelu_tanh   0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))

Adding an activation means a row here, its formula in the reference and its branch in each backend's
``act_and_grad``; the kernel tests run every name in ACTIVATIONS on every backend.
"""
import math

ACTIVATIONS = ("identity", "relu", "gelu", "gelu_tanh")
IDENTITY, RELU, GELU, GELU_TANH = range(len(ACTIVATIONS))

# The GELUs' constants, written once for every backend and for minitx.ops.GELU:
# Phi(h) = 0.5 (1 + erf(h INV_SQRT_2)),  phi(h) = exp(-h^2 / 2) INV_SQRT_2PI,
# gelu_tanh: u = SQRT_2_OVER_PI (h + GELU_TANH_COEF h^3) (the cubic fit of Hendrycks & Gimpel, 2016).
INV_SQRT_2 = 1 / math.sqrt(2)
INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
GELU_TANH_COEF = 0.044715


def activation_code(activation):
    """The int code of ``activation`` (a name in ACTIVATIONS); a clear ValueError for any other value."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return ACTIVATIONS.index(activation)
