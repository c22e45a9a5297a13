"""Shared fixtures: every test starts from the same random seed, and a test that changes the default dtype
or leaves gradient recording switched off cannot leak that into the next one."""

from __future__ import annotations

import pytest

import minitx as mx
from minitx.tensor import _state as grad_state  # (minitx.tensor the function shadows the module)


@pytest.fixture(autouse=True)
def _fresh_minitx_state():
    dtype, grad_enabled = mx.default_dtype(), mx.is_grad_enabled()
    mx.manual_seed(0)
    yield
    mx.set_default_dtype(dtype)
    grad_state.grad_enabled = grad_enabled
