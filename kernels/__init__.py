"""Array-level kernels: NumPy references, Numba CPU and Numba CUDA versions.

Importing this package first also tunes the process for speed in two ways (``minitx`` imports it before
NumPy). Each applies only where the user has not chosen for themselves through the environment.

Threads. Two thread pools share the CPU cores: OpenBLAS's (NumPy's matrix products) and Numba's OpenMP
workers (the kernels' parallel loops). By default the idle threads of each pool keep spinning for a while
after their last job (OpenBLAS for 2^28 cycles, about 0.1 s), so the other pool's next job runs on busy
cores: on 2 cores a fused GELU pass took 47 ms right after a matrix product instead of 28 ms. The two
variables below make idle threads sleep instead. Each is read once, when its library starts, so they only
take effect if this package is imported before NumPy.

Memory. glibc returns large freed blocks to the system at once and serves every new one with fresh pages,
and touching fresh pages is slow (page faults; on the 2-core VM of benchmarks/RESULTS.md, writing 8 MB into
fresh memory took 22 ms against 1.5 ms into reused memory). An autograd step allocates many such
temporaries, so the heap is told to keep freed blocks of up to 256 MiB for reuse, as PyTorch's caching
allocators do: a training step of the reference encoder got 15-25% faster. The process's resident size then
stays near its peak instead of shrinking.
"""
import ctypes
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # spin 2^4 cycles, then sleep (OpenBLAS's minimum)
os.environ.setdefault("OMP_WAIT_POLICY", "passive")     # GNU OpenMP (Numba's threading layer here): sleep

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_ALLOCATOR_VARIABLES = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def _keep_freed_memory(largest: int = 256 * 2**20) -> None:
    """Serve blocks up to ``largest`` bytes from the heap, and give the heap's free memory back to the system
    only when more than ``4 * largest`` (1 GiB by default) is free at its top (glibc only; else nothing)."""
    if any(v in os.environ for v in _ALLOCATOR_VARIABLES):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, largest)
    libc.mallopt(_M_TRIM_THRESHOLD, 4 * largest)


_keep_freed_memory()
