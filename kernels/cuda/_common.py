"""What the CUDA kernels share: the one pattern for dtypes, moving arrays, checking inputs, activations.

Typed constants
---------------
Numba types a Python float literal in a kernel (``0.0``, ``1.0``, ``-math.inf``) as float64, and float32
combined with float64 is computed in float64: a float32 kernel that starts a sum at ``0.0`` converts every
element and runs its arithmetic at the float64 rate (1/2 to 1/64 of the float32 rate, depending on the GPU).
Integer literals mixed with floats promote the same way (``2 * x`` is float64 for a float32 ``x``).
So every kernel and device function that needs a constant is built by a factory for one dtype, cached with
``functools.lru_cache`` (compiled once per dtype), which names its constants as NumPy scalars of that dtype::

    @functools.lru_cache(maxsize=None)
    def _row_max(dtype):
        NEG_INF = dtype.type(-np.inf)

        @cuda.jit
        def kernel(x, out):
            m = NEG_INF             # float32 when dtype is float32
            ...

        return kernel

Numba freezes the closure's NumPy scalars into the code as constants of their own type. Compile-time sizes
(block sizes, the head dimension) are further arguments of the same factories.
``tests/kernels/test_cuda_ptx.py`` compiles every float32 kernel to PTX and checks it has no float64
instruction.

Arrays in and out
-----------------
The host functions take NumPy arrays (copied to the device; results are copied back as NumPy arrays), CuPy
arrays (used in place; results are CuPy arrays, no copies) or Numba device arrays (results are Numba device
arrays). Other objects with ``__cuda_array_interface__`` (PyTorch CUDA tensors, ...) are used in place and
give Numba device arrays. The kind of the first array argument decides the kind of the results.
"""
import functools
import math

import numba
import numpy as np
from numba import cuda, types

from kernels.activations import GELU, GELU_TANH_COEF, IDENTITY, INV_SQRT_2, INV_SQRT_2PI, RELU, SQRT_2_OVER_PI

MAX_THREADS_PER_BLOCK = 1024
STATIC_SHARED_BYTES = 48 * 1024       # static shared memory (cuda.shared.array) one block may use
REGISTERS_PER_BLOCK = 64 * 1024       # 32-bit registers one block may use (compute capability 5.0 to 9.0)
MAX_REGISTERS_PER_THREAD = 255        # the most ptxas gives one thread; above it, it spills to local memory


# ------------------------------------------------------------------ moving arrays


def to_device(a):
    """``a`` (checked by check_array) as a Numba device array: NumPy arrays are copied over, device arrays are
    used in place."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    if cuda.devicearray.is_cuda_ndarray(a):              # Numba's device arrays (and the simulator's)
        return a
    return cuda.as_cuda_array(a)                         # CuPy, PyTorch, ...: a view, no copy


def device_empty(shape, dtype):
    """Allocate a device output. Every output goes through here so tests can poison it with NaN."""
    return cuda.device_array(shape, dtype=dtype)


def absent(ndim, dtype):
    """Stands for an optional array argument that was not given (the kernel gets a flag not to read it).

    Zero-sized, so it costs no device allocation and no copy (Numba gives it a null pointer).
    """
    return cuda.device_array((0,) * ndim, dtype=dtype)


def like_input(arrays, first_input):
    """The device results ``arrays`` as the kind of array ``first_input`` is: NumPy, CuPy or Numba."""
    if isinstance(first_input, np.ndarray):
        return tuple(a.copy_to_host() for a in arrays)
    if type(first_input).__module__.split(".")[0] == "cupy":
        import cupy  # only reached with CuPy inputs: CuPy is an optional dependency

        return tuple(cupy.asarray(a) for a in arrays)    # a view of the same memory, no copy
    return tuple(arrays)


def padding_on_device(key_padding_mask, batch, tk):
    """(pad, has_pad): the key padding mask as a (B, Tk) bool device array, or ``absent`` and False.

    Accepted as (B, Tk) or (B, 1, 1, Tk); a NumPy mask of any dtype is converted to bool, a device mask
    must already be bool.
    """
    if key_padding_mask is None:
        return absent(2, np.bool_), False
    check_array("key_padding_mask", key_padding_mask)
    shape = tuple(key_padding_mask.shape)
    if shape not in ((batch, tk), (batch, 1, 1, tk)):
        raise ValueError(f"key_padding_mask must have shape (B, Tk) = {(batch, tk)} or (B, 1, 1, Tk), "
                         f"got {shape}")
    if isinstance(key_padding_mask, np.ndarray):
        key_padding_mask = np.ascontiguousarray(key_padding_mask, dtype=np.bool_)
    elif key_padding_mask.dtype != np.bool_:
        raise TypeError(f"a device key_padding_mask must have dtype bool, got {key_padding_mask.dtype}")
    return to_device(key_padding_mask).reshape(batch, tk), True


# ------------------------------------------------------------------ checking inputs


def check_array(name, a):
    """``a`` (the argument ``name``) is a NumPy array or a CUDA device array."""
    if not (isinstance(a, np.ndarray) or cuda.devicearray.is_cuda_ndarray(a)
            or hasattr(a, "__cuda_array_interface__")):
        raise TypeError(f"{name} must be a NumPy array or a CUDA device array (CuPy, Numba), "
                        f"got {type(a).__name__}")


def check_float(**arrays):
    """All ``arrays`` (name=array) share one dtype, float32 or float64; return it as a np.dtype."""
    for name, a in arrays.items():
        check_array(name, a)
    (first, a), *rest = arrays.items()
    dtype = np.dtype(a.dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{first} must be float32 or float64, got {dtype}")
    for name, b in rest:
        if b.dtype != dtype:
            raise TypeError(f"{name} has dtype {np.dtype(b.dtype)} but {first} has {dtype}")
    return dtype


def check_shape(name, a, expected, symbols):
    """``a`` has shape ``expected``, where None matches any size; ``symbols`` names the axes, e.g. "(B, Tk)"."""
    shape = tuple(a.shape)
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected)):
        sizes = ["?" if e is None else str(e) for e in expected]
        wanted = f"({sizes[0]},)" if len(sizes) == 1 else f"({', '.join(sizes)})"
        known = "" if all(e is None for e in expected) else f" = {wanted}"
        raise ValueError(f"{name} must have shape {symbols}{known}, got {shape}")


def check_block_size(name, size, square=False, power_of_two=False, limit=MAX_THREADS_PER_BLOCK, why=""):
    """``size`` (the argument ``name``) is a positive int giving at most ``limit`` threads per block (1024, the
    hardware's limit, unless the kernel's registers allow fewer: ``why`` says so in the message): ``size``
    threads, or size x size if ``square``; a power of two if ``power_of_two`` (a tree reduction halves the
    active threads at every step)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{name} must be a positive int, got {size!r}")
    threads = size * size if square else size
    if threads > limit:
        raise ValueError(f"{name}={size} gives {threads} threads per block; the limit is {limit}{why}")
    if power_of_two and size & (size - 1):
        raise ValueError(f"{name} must be a power of two (a tree reduction halves it at every step), got {size}")


def array_type(dtype, ndim):
    """The Numba type of a C-contiguous array of ``dtype``: kernels' argument types for compiling them ahead
    of a launch (the versions' ``builds``, see kernels/versions.py)."""
    return types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C")


# ------------------------------------------------------------------ activations


@functools.lru_cache(maxsize=None)
def act_and_grad(dtype):
    """Device function (act(z), act'(z)) for an activation code of kernels/activations.py (formulas in
    kernels.reference), in ``dtype``."""
    ZERO, HALF, ONE = dtype.type(0), dtype.type(0.5), dtype.type(1)
    R2, R2PI = dtype.type(INV_SQRT_2), dtype.type(INV_SQRT_2PI)  # the shared constants in ``dtype``
    K, C, C3 = dtype.type(SQRT_2_OVER_PI), dtype.type(GELU_TANH_COEF), dtype.type(3 * GELU_TANH_COEF)

    @cuda.jit(device=True)
    def act_and_grad(z, code):
        if code == IDENTITY:
            return z, ONE
        if code == RELU:
            return (z, ONE) if z > ZERO else (ZERO, ZERO)
        if code == GELU:
            cdf = HALF * (ONE + math.erf(z * R2))
            return z * cdf, cdf + z * math.exp(-HALF * z * z) * R2PI
        t = math.tanh(K * (z + C * z * z * z))                             # GELU_TANH
        grad = HALF * (ONE + t) + HALF * z * (ONE - t * t) * K * (ONE + C3 * z * z)
        return HALF * z * (ONE + t), grad

    return act_and_grad
