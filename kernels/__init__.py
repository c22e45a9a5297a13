"""Array-level kernels: NumPy references, Numba CPU and Numba CUDA versions.

Importing this package first tunes two thread pools that share the CPU cores: OpenBLAS's (NumPy's matrix
products) and Numba's OpenMP workers (the kernels' parallel loops). By default the idle threads of each pool
keep spinning on the cores for a while after their last job (OpenBLAS for 2^28 cycles, about 0.1 s), so the
other pool's next job runs on busy cores: measured on 2 cores, a fused GELU pass took 47 ms right after a
matrix product instead of 28 ms. The two settings below make idle threads sleep instead. Each is read once,
when its library starts, so it only takes effect if this package is imported before NumPy (``minitx``
does that); an existing environment value is kept.
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # spin 2^4 cycles, then sleep (OpenBLAS's minimum)
os.environ.setdefault("OMP_WAIT_POLICY", "passive")     # GNU OpenMP (Numba's threading layer here): sleep
