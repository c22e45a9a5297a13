"""Array-level kernels: NumPy references, Numba CPU and Numba CUDA versions. No Tensor, no autograd.

* ``reference``: the math stated plainly in NumPy (CuPy arrays work too); every other backend is tested
  against it.
* ``cpu``: Numba CPU kernels (``numba.njit``), one module per kernel family: softmax, attention, ffn.
* ``cuda``: Numba CUDA kernels (``numba.cuda``), the same families, as numbered versions.
* ``activations``: the one table of FFN activation codes every backend uses.
* ``gemm``: weight-gradient products (Gᵀ X) in the orientation OpenBLAS computes fastest.
* ``versions``: what a kernel version is; each family module keeps one registry of its versions
  (``VERSIONS``) that ``compare``, ``cuda.check``, the benchmarks and the tests read.
* ``process_settings``: thread and allocator settings for speed that ``import minitx`` applies
  (``MINITX_TUNE=0`` turns them off). Importing ``kernels`` itself changes nothing in the process.
* ``compare`` (``python -m kernels.compare``), ``testing``: the comparison tool and the test helpers.

This package never imports minitx.
"""
