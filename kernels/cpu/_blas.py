"""Matrix products from njit code straight into NumPy's OpenBLAS: ``gemm(a, b, c, alpha, beta, ta, tb)``.

    C = alpha · op(A) op(B) + beta · C,   op(X) = Xᵀ if its flag is set, else X

``np.dot`` inside njit goes through SciPy's copy of OpenBLAS, needs contiguous operands (a strided view is
copied first) and returns a new array. ``gemm`` calls ``cblas_sgemm`` / ``cblas_dgemm`` of the OpenBLAS that
NumPy itself loaded, on the arrays in place: any row stride (the leading dimension is the stride of axis 0;
the last axis must be contiguous), a transposed operand by a flag rather than a copy, and with ``beta = 1``
the product is added into ``c`` with no temporary. The attention kernels use it to read the heads of a
(B, T, H·D) array in place and to accumulate gradients tile by tile.

The symbols are found by name when LLVM links the compiled code (``load_library_permanently``), not baked
in as addresses, so the kernels that call them can still be cached on disk. Where NumPy brings no OpenBLAS
of its own (another BLAS), ``gemm`` is ``gemm_numpy``, through ``np.dot``, and ``AVAILABLE`` is False.

Threads: called inside a parallel loop, each product must stay on its caller's thread; the kernels'
wrappers run under ``kernels.blas_threads.one_thread()``, which sets this same library to one thread.
"""
import glob
import os

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import types

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112   # cblas.h: CblasRowMajor, CblasNoTrans, CblasTrans


def _numpy_openblas():
    """(path, symbol suffix, integer type) of NumPy's bundled OpenBLAS, or None."""
    folder = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(folder, "libscipy_openblas*"))):
        ilp64 = "openblas64" in os.path.basename(path)          # 64-bit integers, symbols ending in 64_
        return path, ("64_" if ilp64 else ""), (types.int64 if ilp64 else types.int32)
    return None


def _cblas_gemm(name, real, integer):
    """cblas_?gemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) as an njit-callable."""
    i, p = integer, types.voidptr
    return types.ExternalFunction(name, types.void(types.int32, types.int32, types.int32, i, i, i, real,
                                                   p, i, p, i, real, p, i))


@numba.njit(inline="always")
def gemm_numpy(a, b, c, alpha, beta, trans_a, trans_b):
    """``gemm`` through ``np.dot`` (contiguous copies of the operands and a temporary product): the stand-in
    where NumPy brings no OpenBLAS of its own."""
    if c.shape[0] == 0 or c.shape[1] == 0:
        return
    x = np.ascontiguousarray(a.T) if trans_a else np.ascontiguousarray(a)
    y = np.ascontiguousarray(b.T) if trans_b else np.ascontiguousarray(b)
    if beta == 0:
        c[:] = alpha * np.dot(x, y)
    else:
        c[:] = alpha * np.dot(x, y) + beta * c


_FOUND = _numpy_openblas()
AVAILABLE = _FOUND is not None
if AVAILABLE:
    _path, _suffix, _int = _FOUND
    llvm.load_library_permanently(_path)   # already loaded by NumPy; this makes its symbols visible to LLVM
    _sgemm = _cblas_gemm(f"scipy_cblas_sgemm{_suffix}", types.float32, _int)
    _dgemm = _cblas_gemm(f"scipy_cblas_dgemm{_suffix}", types.float64, _int)

    @numba.njit(inline="always")
    def gemm(a, b, c, alpha, beta, trans_a, trans_b):
        """c = alpha op(a) op(b) + beta c in place; a, b, c 2-D, each with a contiguous last axis."""
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        if m == 0 or n == 0:
            return
        size = c.itemsize
        lda = max(a.strides[0] // size, a.shape[1], 1)   # the leading dimension: the row stride in elements
        ldb = max(b.strides[0] // size, b.shape[1], 1)
        ldc = max(c.strides[0] // size, n)
        ta, tb = TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS
        if size == 4:
            _sgemm(ROW_MAJOR, ta, tb, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta, c.ctypes.data, ldc)
        else:
            _dgemm(ROW_MAJOR, ta, tb, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta, c.ctypes.data, ldc)
else:
    gemm = gemm_numpy
