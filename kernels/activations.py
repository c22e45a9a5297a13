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
ACTIVATIONS = ("identity", "relu", "gelu", "gelu_tanh")
IDENTITY, RELU, GELU, GELU_TANH = range(len(ACTIVATIONS))


def activation_code(activation):
    """The int code of ``activation`` (a name in ACTIVATIONS); a clear ValueError for any other value."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return ACTIVATIONS.index(activation)
