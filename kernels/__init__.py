"""Array-level kernels: NumPy references, Numba CPU and Numba CUDA versions."""
