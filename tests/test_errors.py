"""Bad input gets a clear error: the right exception type, naming the op or argument and the shapes or dtypes."""

from __future__ import annotations

import re

import numpy as np
import pytest

import minitx as mx
import minitx.functional as F
from minitx.backend import DeviceError
from minitx.tensor import Tensor, _as_tensors


def t(*shape, dtype=np.float64, requires_grad=False):
    return mx.Tensor(np.ones(shape, dtype=dtype), requires_grad=requires_grad)


def _raises(exc_type, fn, *fragments):
    """Assert ``fn()`` raises ``exc_type`` and the message contains every fragment (literally)."""
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("op, name", [
    (lambda a, b: a + b, "Add"), (lambda a, b: a - b, "Sub"), (lambda a, b: a * b, "Mul"),
    (lambda a, b: a / b, "Div"), (lambda a, b: a**b, "Pow"),
])
def test_binary_ops_on_shapes_that_do_not_broadcast(op, name):
    _raises(ValueError, lambda: op(t(2, 3), t(4, 3)), name, "(2, 3)", "(4, 3)", "broadcast")


def test_where_on_shapes_that_do_not_broadcast():
    cond = mx.Tensor(np.ones((2, 3), dtype=bool))
    _raises(ValueError, lambda: F.where(cond, t(2, 3), t(2, 4)), "where", "(2, 3)", "(2, 4)")


def test_matmul_misaligned_inner_axes():
    _raises(ValueError, lambda: t(2, 3) @ t(4, 5), "matmul", "(2, 3)", "(4, 5)", "align")
    _raises(ValueError, lambda: t(3) @ t(4), "matmul", "(3,)", "(4,)")


def test_matmul_batch_axes_that_do_not_broadcast():
    _raises(ValueError, lambda: t(2, 3, 4) @ t(3, 4, 5), "matmul", "(2, 3, 4)", "(3, 4, 5)", "batch")


def test_matmul_of_a_scalar():
    _raises(ValueError, lambda: t() @ t(3), "matmul", "at least 1 dimension")


def test_reshape_to_a_different_size():
    _raises(ValueError, lambda: t(2, 3).reshape(4, 2), "reshape", "(2, 3)", "(4, 2)", "6 elements")


def test_permute_with_bad_axes():
    _raises(ValueError, lambda: t(2, 3).permute(0, 0), "permute", "(0, 0)", "(2, 3)")
    _raises(ValueError, lambda: t(2, 3, 4).permute(0, 1, 5), "permute", "(0, 1, 5)", "(2, 3, 4)")


def test_concat_of_mismatched_shapes():
    _raises(ValueError, lambda: F.concat([t(2, 3), t(2, 4)], axis=0), "concat", "(2, 3)", "(2, 4)", "axis 0")


def test_stack_of_mismatched_shapes():
    _raises(ValueError, lambda: F.stack([t(2, 3), t(3, 2)]), "stack", "(2, 3)", "(3, 2)")


def test_split_sizes_that_do_not_add_up():
    _raises(ValueError, lambda: F.split(t(5, 2), [2, 2]), "split", "[2, 2]", "(5, 2)")


def test_masked_fill_with_a_mask_that_does_not_broadcast():
    mask = mx.Tensor(np.zeros((3, 2), dtype=bool))
    _raises(ValueError, lambda: t(2, 3).masked_fill(mask, 0.0), "masked_fill", "(3, 2)", "(2, 3)")


def test_cross_entropy_target_of_the_wrong_shape():
    target = mx.Tensor(np.zeros((2, 4), dtype=np.int64))
    _raises(ValueError, lambda: F.cross_entropy(t(2, 3, 5), target), "cross_entropy", "(2, 4)", "(2, 3)",
            "(2, 3, 5)")


def test_layer_norm_shape_mismatch():
    _raises(ValueError, lambda: F.layer_norm(t(2, 3), 4), "layer_norm", "(2, 3)", "(4,)")


def test_attention_masks_of_the_wrong_shape():
    q = t(1, 2, 3, 4)
    _raises(ValueError, lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=np.zeros((3, 2), dtype=bool),
                                                               fused=False), "attn_mask", "(3, 2)")
    _raises(ValueError, lambda: F.scaled_dot_product_attention(q, q, q, key_padding_mask=np.zeros((1, 5), dtype=bool),
                                                               fused=False), "key_padding_mask", "(1, 5)")


def test_backward_grad_of_the_wrong_shape():
    x = t(2, 3, requires_grad=True)
    _raises(ValueError, lambda: (x * 2.0).backward(np.ones((3, 2))), "backward", "(3, 2)", "(2, 3)")


def test_index_out_of_range_names_the_shape():
    _raises(IndexError, lambda: t(2, 3)[5], "(2, 3)")


# ----------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("op, name", [
    (lambda a, b: a + b, "Add"), (lambda a, b: a * b, "Mul"), (lambda a, b: a @ b, "matmul"),
    (lambda a, b: F.where(mx.Tensor(np.ones((2, 2), dtype=bool)), a, b), "where"),
])
def test_mixing_float32_and_float64(op, name):
    a, b = t(2, 2, dtype=np.float32), t(2, 2, dtype=np.float64)
    _raises(TypeError, lambda: op(a, b), name, "float32", "float64", "astype")


def test_concat_of_mixed_dtypes():
    _raises(TypeError, lambda: F.concat([t(2, dtype=np.float32), t(2)]), "concat", "float32", "float64")


def test_embedding_with_float_ids():
    weight = t(5, 3, requires_grad=True)
    _raises(TypeError, lambda: F.embedding(mx.Tensor(np.array([[0.0, 1.0]])), weight), "embedding", "ids",
            "float", "(1, 2)")


def test_embedding_ids_out_of_range():
    weight = t(5, 3)
    _raises(IndexError, lambda: F.embedding(np.array([0, 5]), weight), "embedding", "[0, 5)", "(5, 3)")
    _raises(IndexError, lambda: F.embedding(np.array([-1]), weight), "embedding", "-1")


def test_cross_entropy_with_float_targets():
    _raises(TypeError, lambda: F.cross_entropy(t(2, 3), np.array([0.0, 1.0])), "cross_entropy", "target",
            "float64", "(2,)")


def test_cross_entropy_targets_out_of_range():
    _raises(IndexError, lambda: F.cross_entropy(t(2, 3), np.array([0, 3])), "cross_entropy", "[0, 3)", "[3]")


def test_cross_entropy_bad_reduction():
    _raises(ValueError, lambda: F.cross_entropy(t(2, 3), np.array([0, 1]), reduction="avg"), "reduction", "'avg'")


def test_where_with_a_non_boolean_condition():
    _raises(TypeError, lambda: F.where(mx.Tensor(np.array([1, 0])), t(2), t(2)), "where", "cond", "int64", "(2,)")


def test_masked_fill_with_a_non_boolean_mask():
    _raises(TypeError, lambda: t(2).masked_fill(mx.Tensor(np.array([1, 0])), 0.0), "masked_fill", "int64", "(2,)")


@pytest.mark.parametrize("make", [
    lambda: mx.Tensor(np.array([[1, 2, 3]]), requires_grad=True),
    lambda: mx.tensor([[1, 2, 3]], requires_grad=True),
    lambda: mx.Tensor(np.array([[1, 2, 3]])).requires_grad_(),
    lambda: mx.zeros(1, 3, dtype=np.int64, requires_grad=True),
])
def test_integer_tensors_cannot_require_gradients(make):
    _raises(TypeError, make, "int64", "(1, 3)", "floating")


def test_gelu_with_an_unknown_approximation():
    _raises(ValueError, lambda: F.gelu(t(2), approximate="fast"), "GELU", "'fast'")


def test_dropout_probability_out_of_range():
    _raises(ValueError, lambda: F.dropout(t(2), 1.5), "dropout", "1.5")


def test_default_dtype_must_be_floating():
    _raises(TypeError, lambda: mx.set_default_dtype(np.int32), "float32", "int32")


# --------------------------------------------------------------------------------------------- backward
def test_backward_on_a_non_scalar_without_grad():
    x = t(2, 3, requires_grad=True)
    _raises(RuntimeError, lambda: (x * 2.0).backward(), "backward", "(2, 3)", "grad=")


def test_backward_on_a_tensor_without_graph():
    _raises(RuntimeError, lambda: t(1).backward(), "does not require grad", "(1,)")


def test_item_of_a_tensor_with_many_elements():
    _raises(ValueError, lambda: t(2, 3).item(), "item", "(2, 3)")


def test_truth_value_of_a_tensor_with_many_elements():
    _raises(ValueError, lambda: bool(t(2)), "ambiguous", "(2,)")


# ---------------------------------------------------------------------------------------------- devices
class FakeCudaTensor(Tensor):
    """A CPU tensor whose ``device`` property claims "cuda".

    No GPU is needed to test the device check: ``_as_tensors`` (which every op's ``apply`` calls first)
    decides only from each input's ``.device``, so a tensor that reports "cuda" stands in for a real one.
    """

    @property
    def device(self) -> str:
        return "cuda"


def test_ops_mixing_devices_raise_device_error():
    cpu, cuda = t(2, 3), FakeCudaTensor(np.ones((2, 3)))
    assert cuda.device == "cuda" and cpu.device == "cpu"
    message = _raises(DeviceError, lambda: cpu + cuda, "Add", "different devices", "cpu:(2, 3)", "cuda:(2, 3)")
    assert ".to()" in message
    _raises(DeviceError, lambda: _as_tensors("MatMul", [cuda, cpu]), "MatMul", "cuda", "cpu")
    _raises(DeviceError, lambda: F.concat([cpu, cuda]), "Concat", "different devices")


def test_inputs_on_one_device_pass_the_device_check():
    a, b = FakeCudaTensor(np.ones(2)), FakeCudaTensor(np.ones(2))
    out = _as_tensors("Add", [a, b])
    assert out[0] is a and out[1] is b


def test_messages_are_single_sentences_without_numpy_internals():
    message = _raises(ValueError, lambda: t(2, 3) + t(4, 3), "Add")
    assert not re.search(r"operands could not be broadcast", message)  # NumPy's own text no longer leaks
