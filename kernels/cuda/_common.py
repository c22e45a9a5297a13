"""Host-side helpers shared by the CUDA kernels: moving arrays, allocating outputs, activations."""
import math

import numpy as np
from numba import cuda

ACTIVATION_CODES = {"identity": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def to_device(a):
    """(device array, on_host): NumPy arrays are copied over, device arrays are used in place."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a)), True
    if hasattr(a, "__cuda_array_interface__"):           # CuPy, Numba device arrays
        return cuda.as_cuda_array(a), False
    return a, False                                      # the simulator's device arrays have no interface


def device_empty(shape, dtype):
    """Allocate a device output. Every output goes through here so tests can poison it with NaN."""
    return cuda.device_array(shape, dtype=dtype)


def padding_on_device(key_padding_mask, batch, tk):
    """(B, Tk) bool device array, all False when no mask is given."""
    if key_padding_mask is None:
        return cuda.to_device(np.zeros((batch, tk), dtype=np.bool_))
    if isinstance(key_padding_mask, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(key_padding_mask, dtype=np.bool_).reshape(batch, tk))
    return to_device(key_padding_mask)[0]


def results(arrays, on_host):
    """Copy results back to NumPy when the inputs came from the host, else return the device arrays."""
    if on_host:
        return tuple(a.copy_to_host() for a in arrays)
    return tuple(arrays)


def activation_code(activation):
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"unknown activation {activation!r}; expected one of {tuple(ACTIVATION_CODES)}")
    return ACTIVATION_CODES[activation]


@cuda.jit(device=True)
def act_and_grad(z, code):
    """(act(z), act'(z)) for code 0 identity, 1 relu, 2 gelu, 3 gelu_tanh (formulas in kernels.reference)."""
    if code == 0:
        return z, 1.0
    if code == 1:
        return (z, 1.0) if z > 0 else (0.0, 0.0)
    if code == 2:
        cdf = 0.5 * (1.0 + math.erf(z * _INV_SQRT_2))
        return z * cdf, cdf + z * math.exp(-0.5 * z * z) * _INV_SQRT_2PI
    t = math.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z * z * z))
    grad = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z * z)
    return 0.5 * z * (1.0 + t), grad
