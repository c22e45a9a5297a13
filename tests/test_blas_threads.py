"""kernels/blas_threads.py: small and skinny matrix products run on one BLAS thread; large ones on all."""

from __future__ import annotations

import re

import numpy as np
import pytest

import minitx
import minitx.functional as F
from kernels import blas_threads

needs_control = pytest.mark.skipif(blas_threads._CONTROL is None, reason="NumPy's BLAS is not its bundled OpenBLAS")


@needs_control
@pytest.mark.parametrize("size, one", [((64, 64, 64), True), ((100_000, 2, 384), True), ((512, 512, 512), False)])
def test_threads_for_picks_one_thread_for_small_and_skinny_products(size, one):
    get, put = blas_threads._CONTROL
    before = get()
    put(2)
    try:
        with blas_threads.threads_for(*size):
            inside = get()
        assert inside == (1 if one else 2) and get() == 2  # and restored after the block
    finally:
        put(before)


def test_linear_and_matmul_ask_for_threads_by_size(monkeypatch):
    calls = []
    real = blas_threads.one_thread
    monkeypatch.setattr(blas_threads, "one_thread", lambda: calls.append(1) or real())
    rng = np.random.default_rng(0)
    x = minitx.Tensor(rng.standard_normal((2, 3, 8, 4)).astype(np.float32), requires_grad=True)
    w = minitx.Tensor(rng.standard_normal((5, 4)).astype(np.float32), requires_grad=True)
    (F.linear(x, w).sum() + (x @ x.transpose(-2, -1)).sum()).backward()
    assert len(calls) == 1 + 1 + 1 + 2  # linear forward and backward, matmul forward and its two gradients


@needs_control
def test_kernel_set_names_the_openblas_kernels_and_who_chose_them(monkeypatch):
    """Speed figures carry the kernel set NumPy's OpenBLAS runs: chosen for the CPU, or forced through
    OPENBLAS_CORETYPE (read at start-up, so the name the library reports does not change here)."""
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    chosen = blas_threads.kernel_set()
    assert re.fullmatch(r"OpenBLAS [\d.]+, \w+ kernels \(chosen by OpenBLAS for this CPU\)", chosen), chosen
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert blas_threads.kernel_set().endswith("kernels (OPENBLAS_CORETYPE=Haswell in the environment)")
