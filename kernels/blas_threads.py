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
"""
import contextlib
import ctypes
import glob
import os

import numpy as np

SMALL_PRODUCT = 2 ** 22   # multiply-adds (m·n·k) of one matrix pair below which one thread does the product
SKINNY = 16               # ... or a side (m, n or k) shorter than this


def _numpy_openblas():
    """(get, set) of NumPy's bundled OpenBLAS thread count, or None."""
    folder = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(folder, "libscipy_openblas*")):
        lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle
        for suffix in ("64_", ""):
            get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return get, put
    return None


_CONTROL = _numpy_openblas()


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
