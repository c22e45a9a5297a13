"""CUDA kernels against the NumPy references, via ``python -m kernels.cuda.check``.

The check runs in a subprocess: the simulator must be switched on
(NUMBA_ENABLE_CUDASIM=1) before Numba is imported, and this pytest process
imports Numba normally. On a machine with a GPU the same check also runs on it.
"""
import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest
from numba import cuda

ROOT = Path(__file__).resolve().parents[2]


def _run_check(simulator):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    result = subprocess.run([sys.executable, "-m", "kernels.cuda.check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "all CUDA checks passed" in result.stdout


@pytest.mark.cudasim
def test_cuda_kernels_in_simulator():
    _run_check(simulator=True)


@pytest.mark.skipif(numba.config.ENABLE_CUDASIM or not cuda.is_available(),
                    reason="no CUDA GPU (with NUMBA_ENABLE_CUDASIM set, cuda.is_available() means the simulator)")
def test_cuda_kernels_on_gpu():
    _run_check(simulator=False)
