"""The line every benchmark prints its figures under: the processor, its cores, and NumPy's BLAS kernels.

The BLAS kernels matter as much as the processor: OpenBLAS picks a kernel set for the CPU at start-up
unless ``OPENBLAS_CORETYPE`` names one, and on an AVX-512 machine forced to "Haswell" (AVX2) NumPy's matrix
products run at about half speed (benchmarks/RESULTS.md). PyTorch's products do not use OpenBLAS.
"""
import os
import platform

from kernels.blas_threads import kernel_set


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo, as ``lscpu`` shows it), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """e.g. "AMD EPYC, 2 cores; NumPy's BLAS: OpenBLAS 0.3.31, Haswell kernels (OPENBLAS_CORETYPE=...)"."""
    extra = "".join(f", {v}={os.environ[v]}" for v in ("OPENBLAS_L2_SIZE",) if v in os.environ)
    return f"{cpu_model()}, {os.cpu_count()} cores; NumPy's BLAS: {kernel_set()}{extra}"
