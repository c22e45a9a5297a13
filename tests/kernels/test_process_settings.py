"""kernels/process_settings.py: what ``import minitx`` changes in the process, and MINITX_TUNE=0 turning it off.

Each case runs in a fresh interpreter: the settings only take effect before NumPy starts, and they change the
whole process.
"""
import ctypes
import os
import subprocess
import sys

import pytest

USER_VARIABLES = ("MINITX_TUNE", "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GLIBC_TUNABLES",
                  "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "NUMBA_THREADING_LAYER",
                  "NUMBA_THREADING_LAYER_PRIORITY")


def run_python(code, **env_vars):
    """stdout of ``python -c code`` in an environment without the user's settings, plus ``env_vars``."""
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    env.update(env_vars)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


# Records the thread variables at the moment NumPy is first imported, then lets the import go on.
WATCH_NUMPY = """
import os, sys
class Watch:
    seen = None
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and Watch.seen is None:
            Watch.seen = [os.environ.get(v, "unset") for v in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")]
sys.meta_path.insert(0, Watch())
import minitx
print(*Watch.seen)
"""

# How much of a freed 8 MiB block the process keeps (KiB).
FREED_MEMORY_KEPT = """
import minitx, numpy as np
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
before = rss_kib()
a = np.ones(2**21, dtype=np.float32)  # 8 MiB, every page touched
del a
print(rss_kib() - before)
"""


@pytest.mark.parametrize("tune, expected", [(None, ["4", "passive"]), ("1", ["4", "passive"]),
                                            ("0", ["unset", "unset"])])
def test_idle_threads_sleep_before_numpy_loads_unless_minitx_tune_is_0(tune, expected):
    """``import minitx`` sets how idle BLAS / OpenMP threads wait before NumPy starts OpenBLAS;
    MINITX_TUNE=0 leaves both unset."""
    env = {} if tune is None else {"MINITX_TUNE": tune}
    assert run_python(WATCH_NUMPY, **env) == expected


def test_a_thread_setting_of_the_user_is_kept():
    assert run_python(WATCH_NUMPY, OPENBLAS_THREAD_TIMEOUT="10") == ["10", "passive"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
@pytest.mark.parametrize("env, kept", [({}, True), ({"MINITX_TUNE": "0"}, False),
                                       ({"GLIBC_TUNABLES": "glibc.malloc.check=0"}, False)])
def test_freed_memory_is_kept_for_reuse_unless_turned_off_or_the_user_chose(env, kept):
    """After ``import minitx`` a freed 8 MiB block stays in the process for reuse; with MINITX_TUNE=0, or an
    allocator setting of the user's in the environment, glibc's default returns it to the system."""
    kept_kib = int(run_python(FREED_MEMORY_KEPT, **env)[0])
    assert kept_kib > 6 * 1024 if kept else kept_kib < 1024


def test_importing_kernels_alone_changes_nothing():
    """The settings are minitx's choice, applied by name: ``import kernels`` (and its reference) leave the
    process alone, and ``applied`` says what apply() did."""
    code = ("import os, kernels, kernels.reference, kernels.process_settings as p; "
            "print(os.environ.get('OMP_WAIT_POLICY', 'unset'), len(p.applied)); p.apply(); "
            "print(os.environ['OMP_WAIT_POLICY'], len(p.applied))")
    assert run_python(code) == ["unset", "0", "passive", "4"]


# Which threading layer Numba's parallel loops run on after ``import minitx``: numba imported first (as a user's
# own code may do), or an OpenMP runtime already loaded (as torch loads one), or neither.
THREADING_LAYER = """
import ctypes, sys
if sys.argv[1] == "numba-first":
    import numba
if sys.argv[1] == "openmp-first":
    ctypes.CDLL("libgomp.so.1")
import minitx, numba, numpy as np
@numba.njit(parallel=True)
def fill(x):
    for i in numba.prange(x.shape[0]):
        x[i] = i
fill(np.zeros(4))
print(numba.threading_layer())
"""


def _gnu_openmp():
    try:
        ctypes.CDLL("libgomp.so.1")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _gnu_openmp(), reason="no GNU OpenMP runtime (libgomp) on this machine")
@pytest.mark.parametrize("order, env, layer", [("minitx-first", {}, "omp"), ("numba-first", {}, "omp"),
                                               ("openmp-first", {}, "workqueue"),
                                               ("openmp-first", {"OMP_WAIT_POLICY": "passive"}, "omp"),
                                               ("numba-first", {"NUMBA_THREADING_LAYER": "workqueue"}, "workqueue"),
                                               ("openmp-first", {"MINITX_TUNE": "0"}, "omp")])
def test_numba_runs_on_openmp_unless_a_spinning_runtime_came_first_or_the_user_chose(order, env, layer):
    """Numba's parallel loops run on OpenMP (its idle workers sleep: minitx sets OMP_WAIT_POLICY=passive before
    the runtime starts), whether or not numba was imported first; when an OpenMP runtime was loaded before
    minitx without that setting, its workers spin, so the loops go to Numba's work queue. A layer the user
    chose, or MINITX_TUNE=0 (Numba's own default then), is left alone."""
    code = THREADING_LAYER.replace("sys.argv[1]", repr(order))
    assert run_python(code, **env)[0] == layer
