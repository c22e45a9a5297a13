"""What the Numba CPU kernels share: outputs, dtype checks, the vectorisable float32 exp, BLAS threads."""
import contextlib
import ctypes
import glob
import math
import os

import numba
import numpy as np
import scipy

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}   # never "nnan"/"ninf": masked scores are -inf


def empty(shape, dtype):
    """Allocate an output. Every output goes through here so tests can poison it with NaN."""
    return np.empty(shape, dtype=dtype)


def check_float(*arrays):
    """All arrays share one float dtype (float32 or float64); return it."""
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"expected float32 or float64, got {dtype}")
    for a in arrays:
        if a.dtype != dtype:
            raise TypeError(f"mixed dtypes {dtype} and {a.dtype}")
    return dtype


# ------------------------------------------------------------------- exp

_LOG2_E = np.float32(1.0 / math.log(2.0))
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)   # ln 2 = hi + lo, hi exact in 9 bits
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7 = (np.float32(1.0 / math.factorial(i)) for i in range(8))


@numba.njit(fastmath=FASTMATH, inline="always")
def exp32(x):
    """exp(x) for a float32 x, in operations the compiler can vectorise when it is called in a loop.

    ``math.exp`` on float32 is a scalar library call the compiler cannot vectorise (one call per element,
    where NumPy's np.exp runs a vectorised loop over the whole array), so float32 uses

        exp(x) = 2^n exp(r),   n = round(x log2 e),   r = x - n ln 2  in [-ln2/2, ln2/2]

    with exp(r) from its degree-7 Taylor polynomial (truncation error < 6e-9, measured max relative error
    6e-8 against float64 exp) and 2^n written straight into a float's exponent bits, (n + 127) << 23.
    x is first clamped to [-88, 88]: below -88 (masked scores are -inf) n + 127 <= 0 and the result is an
    exact 0.
    """
    v = min(max(x, np.float32(-88.0)), np.float32(88.0))
    n = math.floor(v * _LOG2_E + np.float32(0.5))
    r = (v - n * _LN2_HI) - n * _LN2_LO
    p = ((((((_C7 * r + _C6) * r + _C5) * r + _C4) * r + _C3) * r + _C2) * r + _C1) * r + _C0
    two_to_n = np.int32(max(np.int32(n) + np.int32(127), np.int32(0)) << np.int32(23)).view(np.float32)
    return p * two_to_n


@numba.njit(fastmath=FASTMATH)  # not inline="always": inlined in a prange loop, Numba 0.68.1 miscompiled it
def exp_inplace(x):
    """x[j] = exp(x[j]) along a 1-D array: ``exp32`` for float32, ``math.exp`` for float64."""
    if x.itemsize == 4:
        for j in range(x.shape[0]):
            x[j] = exp32(x[j])
    else:
        for j in range(x.shape[0]):
            x[j] = math.exp(x[j])


# ------------------------------------------------------- BLAS inside parallel loops


def _scipy_openblas():
    """SciPy's bundled OpenBLAS (a copy separate from NumPy's), or None where SciPy uses another BLAS."""
    pattern = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "libscipy_openblas*")
    for path in glob.glob(pattern):
        lib = ctypes.CDLL(path)  # already loaded: the same handle
        if hasattr(lib, "scipy_openblas_set_num_threads"):
            return lib
    return None


SCIPY_OPENBLAS = _scipy_openblas()


@contextlib.contextmanager
def one_blas_thread_per_task():
    """Inside the block, BLAS calls made by njit code (np.dot goes through SciPy's OpenBLAS) stay on the
    calling thread.

    The attention kernels call BLAS from each of Numba's parallel tasks. Left multi-threaded, each call
    would wake OpenBLAS's own threads too and the two pools would fight over the cores: on 2 cores, with
    128-query tiles, the backward took about 100 times as long.
    """
    if SCIPY_OPENBLAS is None:
        yield
        return
    before = SCIPY_OPENBLAS.scipy_openblas_get_num_threads()
    SCIPY_OPENBLAS.scipy_openblas_set_num_threads(1)
    try:
        yield
    finally:
        SCIPY_OPENBLAS.scipy_openblas_set_num_threads(before)
