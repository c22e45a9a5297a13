"""Process settings for speed, applied by ``import minitx`` (``apply()``); ``MINITX_TUNE=0`` turns them all off.

Three settings, each made only where the user has not chosen for themselves through the environment. Both
change the whole process, which is why they live here, by name, and not as a side effect of a kernel module.

Threads. Two thread pools share the CPU cores: OpenBLAS's (NumPy's matrix products) and Numba's OpenMP
workers (the kernels' parallel loops). By default the idle threads of each pool keep spinning for a while
after their last job (OpenBLAS for 2^28 cycles, about 0.1 s), so the other pool's next job runs on busy
cores (a fused GELU pass right after a matrix product ran much slower than alone; benchmarks/RESULTS.md
has the figures). ``OPENBLAS_THREAD_TIMEOUT=4`` and ``OMP_WAIT_POLICY=passive`` make idle threads
sleep instead. Each is read once, when its library starts, so they only take effect if ``apply()`` runs
before NumPy is imported (``import minitx`` does it first).

Memory. glibc returns large freed blocks to the system at once and serves every new one with fresh pages,
and touching fresh pages is slow (page faults: writing into fresh memory takes many times as long as into
reused memory, see benchmarks/RESULTS.md). An autograd step allocates many such temporaries,
so the heap is told to keep freed blocks of up to 256 MiB for reuse, as PyTorch's caching allocators do
(a training step of the reference encoder got markedly faster). The process's resident size then stays near
its peak instead of shrinking. Skipped when ``GLIBC_TUNABLES``, ``MALLOC_TRIM_THRESHOLD_`` or
``MALLOC_MMAP_THRESHOLD_`` is set, and where the C library is not glibc.

Numba's threads. The kernels' parallel loops run on GNU OpenMP, whose idle workers sleep once
``OMP_WAIT_POLICY=passive`` is set (above) before the runtime starts, and which hands a loop to them in about
10 µs; Numba's own work queue took 60-160 µs a call, and a training step makes dozens of such calls (on
two quiet cores the reference encoder's step ran 0.74-0.81x PyTorch's time on OpenMP against 0.81-0.97x on
the work queue, benchmarks/RESULTS.md). But OpenMP is one runtime per process, shared with PyTorch: when
torch is imported before minitx the runtime has already started, and unless ``OMP_WAIT_POLICY=passive`` was
in the environment then, its idle workers spin and steal the cores from whatever runs next (the fused
kernels ran slower than the composed ops). So when an OpenMP runtime is already loaded without that
setting, the loops run on the work queue (``NUMBA_THREADING_LAYER=workqueue``) instead; otherwise Numba
tries OpenMP first and falls back to the work queue where OpenMP is missing
(``NUMBA_THREADING_LAYER_PRIORITY="omp workqueue tbb"``). The work queue cannot run parallel kernels from two
Python threads at once, and GNU OpenMP cannot be used again in a child process forked after it ran (use
multiprocessing's "spawn"); a program that needs either sets ``NUMBA_THREADING_LAYER`` itself, and that
choice is kept.

``MINITX_TUNE=0`` in the environment: ``apply()`` changes nothing (threads spin and memory is returned to
the system, as the libraries do by default). Any other value, or none, applies all three.
"""
import ctypes
import os
import sys

THREAD_VARIABLES = {"OPENBLAS_THREAD_TIMEOUT": "4",   # spin 2^4 cycles, then sleep (OpenBLAS's minimum)
                    "OMP_WAIT_POLICY": "passive"}     # GNU OpenMP (Numba's threading layer here): sleep
ALLOCATOR_VARIABLES = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3           # mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 256 * 2**20

applied = []   # what apply() changed, in words: read it to see what minitx did to this process


def enabled():
    """False when the user turned the settings off with MINITX_TUNE=0."""
    return os.environ.get("MINITX_TUNE", "1").strip() != "0"


def _make_idle_threads_sleep():
    for name, value in THREAD_VARIABLES.items():
        if name not in os.environ:
            os.environ[name] = value
            applied.append(f"{name}={value}")


def _openmp_runtime_loaded():
    """True when an OpenMP runtime (GNU, Intel or LLVM) is already loaded into the process, as torch loads one."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:  # not Linux: the one runtime-loading library we know of
        return "torch" in sys.modules
    return any(name in maps for name in ("libgomp", "libiomp", "libomp"))


def _numba_threads_that_sleep(policy_before):
    """Numba's parallel loops on OpenMP, or on its work queue when an OpenMP runtime was started before minitx
    without ``OMP_WAIT_POLICY=passive`` (``policy_before``: the variable as the user's environment had it);
    nothing when the user chose a threading layer."""
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    numba = sys.modules.get("numba")  # imported before minitx: its config has read the environment already
    if _openmp_runtime_loaded() and (policy_before or "").strip().lower() != "passive":
        os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
        if numba is not None:
            numba.config.THREADING_LAYER = "workqueue"
        applied.append("NUMBA_THREADING_LAYER=workqueue (an OpenMP runtime with spinning threads was loaded first)")
        return
    os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = "omp workqueue tbb"  # Numba wants all three named
    if numba is not None:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
    applied.append("NUMBA_THREADING_LAYER_PRIORITY=omp workqueue tbb")


def _keep_freed_memory(largest=KEEP_FREED_BYTES):
    """Serve blocks up to ``largest`` bytes from the heap, and give the heap's free memory back to the system
    only when more than ``4 * largest`` (1 GiB by default) is free at its top (glibc only; else nothing)."""
    if any(v in os.environ for v in ALLOCATOR_VARIABLES):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, largest)
    libc.mallopt(M_TRIM_THRESHOLD, 4 * largest)
    applied.append(f"glibc keeps freed blocks up to {largest // 2**20} MiB")


def apply():
    """Apply the settings once per process, unless MINITX_TUNE=0. Returns ``applied``."""
    if enabled() and not getattr(apply, "done", False):
        apply.done = True
        policy_before = os.environ.get("OMP_WAIT_POLICY")
        _make_idle_threads_sleep()
        _numba_threads_that_sleep(policy_before)
        _keep_freed_memory()
    return applied
