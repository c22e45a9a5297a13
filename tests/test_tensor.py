"""The Tensor and the backward engine: graph walking, accumulation, freed graphs, no_grad, conversions."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

import minitx as mx
import minitx.functional as F
from minitx.backend import DeviceError

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------------------------ the graph
def test_a_20000_node_chain_backpropagates_without_recursion():
    depth = 20_000
    assert depth > sys.getrecursionlimit()  # a recursive walk would fail here
    x = mx.Tensor(np.array([0.5, -1.0]), requires_grad=True)
    y = x
    for _ in range(depth):
        y = y * 1.00001 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.00001**depth] * 2, rtol=1e-10)
    assert 1.00001**depth == pytest.approx(math.exp(0.2), rel=1e-4)  # the expected value is not ~1


def test_reused_nodes_accumulate_along_every_path():
    a = mx.Tensor(np.array(3.0), requires_grad=True)
    b = a + a  # db/da = 2
    c = b * b  # dc/db = 2b = 12
    c.backward()
    assert a.grad == pytest.approx(24.0)
    assert c.item() == 36.0


def test_diamond_graph_matches_torch():
    x = np.array([0.3, -0.7, 1.2])

    def f(lib_x, tanh, exp):
        h = tanh(lib_x * 2.0)
        return ((h * exp(h)) + h * lib_x - h).sum()

    t = mx.Tensor(x, requires_grad=True)
    f(t, lambda v: v.tanh(), lambda v: v.exp()).backward()
    tx = torch.tensor(x, requires_grad=True)
    f(tx, torch.tanh, torch.exp).backward()
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-12)


def test_gradients_accumulate_across_backward_calls_like_torch():
    x = np.array([[0.5, -1.5], [2.0, 0.25]])
    w = np.array([[1.0], [-2.0]])

    t, tw = mx.Tensor(x, requires_grad=True), mx.Tensor(w, requires_grad=True)
    (t @ tw).tanh().sum().backward()
    first = t.grad.copy()
    (t * t).mean().backward()
    tt, ttw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    (tt @ ttw).tanh().sum().backward()
    (tt * tt).mean().backward()
    np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(tw.grad, ttw.grad.numpy(), rtol=1e-12)
    assert not np.allclose(t.grad, first)  # the second call really added something
    t.zero_grad()
    assert t.grad is None


def test_second_backward_through_a_freed_graph_raises():
    x = mx.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])  # unchanged by the failed call


def test_second_backward_through_a_shared_freed_subgraph_raises():
    x = mx.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x.exp()
    h.sum().backward()
    with pytest.raises(RuntimeError, match="Exp"):
        (h * 2.0).sum().backward()


def test_retain_graph_allows_a_second_backward():
    x = mx.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * 3 * np.array([1.0, 4.0]))


def test_no_grad_records_nothing():
    x = mx.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with mx.no_grad():
        y = (x * 2.0).exp().sum()
        assert not mx.is_grad_enabled()
        with mx.enable_grad():
            z = x * 3.0
    assert mx.is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    assert z.requires_grad and z._ctx is not None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_as_a_decorator_restores_the_mode_even_when_reentered():
    @mx.no_grad()
    def countdown(n):
        return countdown(n - 1) if n else mx.is_grad_enabled()

    assert countdown(3) is False
    assert mx.is_grad_enabled()  # the reused decorator instance restored the outermost setting


def test_inputs_without_requires_grad_get_no_grad_and_no_graph():
    x = mx.Tensor(np.array([1.0, 2.0]))
    w = mx.Tensor(np.array([3.0, 4.0]), requires_grad=True)
    assert not (x * 2.0).requires_grad
    (x * w).sum().backward()
    assert x.grad is None
    np.testing.assert_array_equal(w.grad, [1.0, 2.0])


def test_detach_cuts_the_graph_and_shares_data():
    x = mx.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 2.0
    d = h.detach()
    assert not d.requires_grad and d.is_leaf
    assert np.shares_memory(d.data, h.data)
    (x * d).sum().backward()  # d is a constant: d(x·d)/dx = d
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_retain_grad_keeps_a_non_leaf_gradient():
    x = mx.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 3.0
    h.retain_grad()
    other = x * 1.0
    (h * h + other).sum().backward()
    np.testing.assert_array_equal(h.grad, [6.0, 12.0])
    assert other.grad is None
    np.testing.assert_array_equal(x.grad, [19.0, 37.0])


def test_leaf_gradients_are_writable_arrays_of_their_own():
    """Regression: .grad once aliased a read-only broadcast view (from sum), the user's upstream gradient,
    or the very array given to another input (add passes its gradient to both); an optimiser updating one
    .grad in place then failed or changed another."""
    a = mx.Tensor(np.ones(3), requires_grad=True)
    b = mx.Tensor(np.ones(3), requires_grad=True)
    upstream = np.full(3, 2.0)
    (a + b).backward(upstream)
    assert a.grad is not b.grad and not np.shares_memory(a.grad, upstream)
    a.grad *= 0.5
    np.testing.assert_array_equal(b.grad, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(upstream, [2.0, 2.0, 2.0])

    x = mx.Tensor(np.ones((2, 3)), requires_grad=True)
    x.mean().backward()
    assert x.grad.flags.writeable and x.grad.shape == (2, 3)
    x.grad[0, 0] = 5.0
    np.testing.assert_allclose(x.grad, [[5.0, 1 / 6, 1 / 6], [1 / 6] * 3])


def test_scalar_results_are_arrays_not_numpy_scalars():
    x = mx.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    s = x.sum()
    assert isinstance(s.data, np.ndarray) and s.shape == ()
    assert isinstance(s.numpy(), np.ndarray)
    assert isinstance(x[0].data, np.ndarray)
    c = mx.Tensor(np.array(2.0), requires_grad=True)
    (c * c).backward()
    assert isinstance(c.grad, np.ndarray) and c.grad.shape == () and c.grad == 4.0


def test_backward_with_an_explicit_gradient_and_its_shape_check():
    x = mx.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 40.0])
    with pytest.raises(ValueError, match=r"grad has shape \(3,\) but the tensor has shape \(2,\)"):
        (x * x).backward(np.ones(3))


# ------------------------------------------------------------------------------------ conversions
def test_item_numpy_tolist_and_construction_dtypes():
    t = mx.tensor([[1.5, 2.5]])
    assert t.dtype == np.float32 and t.shape == (1, 2)
    assert mx.tensor([1, 2]).dtype == np.int64
    assert mx.tensor(np.zeros(2)).dtype == np.float64  # NumPy arrays keep their dtype
    assert mx.tensor([1.0], dtype=np.float64).dtype == np.float64
    assert t.tolist() == [[1.5, 2.5]]
    assert t.sum().item() == 4.0 and isinstance(t.sum().item(), float)
    arr = t.numpy()
    assert isinstance(arr, np.ndarray)
    assert np.shares_memory(arr, t.data)  # on the CPU, numpy() shares memory
    np.testing.assert_array_equal(arr, [[1.5, 2.5]])
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        t.item()


def test_default_dtype_switch():
    mx.set_default_dtype(np.float64)
    assert mx.tensor([1.0]).dtype == np.float64 and mx.zeros(2).dtype == np.float64
    mx.set_default_dtype(np.float32)
    assert mx.randn(2, 3).dtype == np.float32


def test_python_numbers_adopt_the_float_tensors_dtype():
    x32 = mx.Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    for y in (x32 * 0.5, 0.5 * x32, x32 + 1, 2.0**x32, 1 - x32, x32 / 3, x32**2):
        assert y.dtype == np.float32
    x64 = mx.Tensor(np.ones(2))
    cond = mx.Tensor(np.array([True, False]))
    # regression: the number used to take the dtype of the first tensor (the boolean cond), i.e. float32
    assert F.where(cond, 0.0, x64).dtype == np.float64
    np.testing.assert_array_equal(F.where(cond, 0.0, x64).numpy(), [0.0, 1.0])
    ints = mx.Tensor(np.array([1, 2]))
    assert (ints * 0.5).dtype == np.float32
    np.testing.assert_array_equal((ints * 0.5).numpy(), [0.5, 1.0])


def test_comparisons_give_boolean_tensors_without_graph():
    x = mx.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    m = x > 1.5
    assert m.dtype == bool and not m.requires_grad
    np.testing.assert_array_equal(m.numpy(), [False, True, True])
    np.testing.assert_array_equal((~m).numpy(), [True, False, False])
    np.testing.assert_array_equal((x == 2.0).numpy(), [False, True, False])


def test_shape_helpers():
    x = mx.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert x.T.shape == (3, 2) and x.transpose().shape == (3, 2)
    assert x.unsqueeze(1).shape == (2, 1, 3) and x.unsqueeze(-1).shape == (2, 3, 1)
    assert x.unsqueeze(0).squeeze(0).shape == (2, 3)
    assert x.flatten().shape == (6,) and x.view(3, 2).shape == (3, 2)
    assert len(x) == 2 and x.ndim == 2 and x.size == 6
    assert x.argmax().item() == 5
    np.testing.assert_array_equal(x.argmax(axis=0).numpy(), [1, 1, 1])


def test_to_cpu_is_a_no_op():
    x = mx.Tensor(np.ones(2), requires_grad=True)
    assert x.to("cpu") is x
    assert x.device == "cpu"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_asking_for_cuda_without_cupy_raises_device_error():
    x = mx.Tensor(np.ones(2))
    with pytest.raises(DeviceError, match="CuPy.*not installed"):
        x.to("cuda")
    with pytest.raises(DeviceError, match="CuPy"):
        mx.zeros(2, device="cuda")


def test_unknown_device_raises():
    with pytest.raises(DeviceError, match="'tpu'"):
        mx.Tensor(np.ones(2), device="tpu")


def test_rng_state_round_trip():
    state = mx.get_rng_state()
    a = mx.randn(3).numpy()
    mx.set_rng_state(state)
    np.testing.assert_array_equal(mx.randn(3).numpy(), a)


def test_accumulated_gradient_of_a_0d_leaf_stays_an_array():
    c = mx.Tensor(np.array(2.0), requires_grad=True)
    (c * c).backward()
    (c * 3.0).backward()
    assert isinstance(c.grad, np.ndarray) and c.grad.shape == () and c.grad == 7.0
