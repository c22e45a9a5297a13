"""BLAS threads by problem size: a small matrix product runs on the calling thread alone.

NumPy's OpenBLAS splits every product above a small size (m·n·k ≥ 262,144) over all its threads. For a
product of a few million multiply-adds the split saves less than a waking thread costs, and on busy cores
the worker may not be running at all: the caller then waits for the operating system to schedule it. A
training step makes hundreds of such products (the attention's per-head products, 64 of them in one
batched ``matmul`` of the reference encoder), so ``threads_for`` lets a product with fewer than
``SMALL_PRODUCT`` multiply-adds per matrix pair run on one thread, and leaves the larger ones to every
thread. So does a skinny product, one with a side shorter than ``SKINNY`` (a linear classifier's
(N, 384) @ (384, 2), however large N): it does a few operations per number it reads, so its time goes into
reading memory, which a second thread barely speeds up.

The thread count is NumPy's bundled OpenBLAS's (``scipy_openblas_set_num_threads64_``), set around the
call and restored after it; where NumPy uses another BLAS (no such symbol) nothing changes.

``kernel_set`` says which of OpenBLAS's per-CPU kernel sets that library runs: OpenBLAS picks one for the
processor at start-up unless ``OPENBLAS_CORETYPE`` names one. On an AVX-512 machine "SkylakeX" runs matrix
products up to twice as fast as "Haswell" (AVX2), so every speed figure should say which one it had.
"""
import contextlib
import ctypes
import glob
import os

import numpy as np

SMALL_PRODUCT = 2 ** 22   # multiply-adds (m·n·k) of one matrix pair below which one thread does the product
SKINNY = 16               # ... or a side (m, n or k) shorter than this


def _numpy_openblas():
    """(library, symbol suffix) of NumPy's bundled OpenBLAS, or None."""
    folder = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(folder, "libscipy_openblas*")):
        lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle
        for suffix in ("64_", ""):
            if hasattr(lib, f"scipy_openblas_get_num_threads{suffix}"):
                return lib, suffix
    return None


_LIBRARY = _numpy_openblas()
_CONTROL = None if _LIBRARY is None else (getattr(_LIBRARY[0], f"scipy_openblas_get_num_threads{_LIBRARY[1]}"),
                                          getattr(_LIBRARY[0], f"scipy_openblas_set_num_threads{_LIBRARY[1]}"))


def kernel_set() -> str:
    """e.g. "OpenBLAS 0.3.31, Haswell kernels (OPENBLAS_CORETYPE=Haswell in the environment)": NumPy's OpenBLAS,
    the kernel set it runs and who chose it; "NumPy's BLAS is not its bundled OpenBLAS" otherwise."""
    if _LIBRARY is None:
        return "NumPy's BLAS is not its bundled OpenBLAS"
    lib, suffix = _LIBRARY
    core, config = getattr(lib, f"scipy_openblas_get_corename{suffix}"), getattr(lib, f"scipy_openblas_get_config{suffix}")
    core.restype = config.restype = ctypes.c_char_p
    version = config().decode().split()[1]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    why = f"OPENBLAS_CORETYPE={forced} in the environment" if forced else "chosen by OpenBLAS for this CPU"
    return f"OpenBLAS {version}, {core().decode()} kernels ({why})"


@contextlib.contextmanager
def one_thread():
    """NumPy's BLAS on the calling thread only, inside the block."""
    if _CONTROL is None:
        yield
        return
    get, put = _CONTROL
    before = get()
    if before == 1:
        yield
        return
    put(1)
    try:
        yield
    finally:
        put(before)


def threads_for(m: int, n: int, k: int):
    """A context for one (m, k) @ (k, n) product (or a stack of them): one thread when it is small or skinny."""
    return one_thread() if m * n * k < SMALL_PRODUCT or min(m, n, k) < SKINNY else contextlib.nullcontext()
