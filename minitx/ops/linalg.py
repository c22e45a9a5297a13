"""Matrix multiplication, batched with broadcasting over the leading axes."""

from __future__ import annotations

import numpy as np

from kernels.blas_threads import threads_for
from kernels.gemm import transposed_product

from ..backend import get_array_module
from ..tensor import Function
from ._util import match_dtypes, unbroadcast


def _product(a, b):
    """a @ b, with a stacked right operand copied first when its matrices are transposed views.

    For stacked operands (ndim > 2) NumPy hands each pair of matrices to BLAS only when the right one has
    unit stride along its last axis; a transposed view such as attention's Kᵀ takes a plain loop instead,
    several times slower than copying first and using BLAS (measured in benchmarks/RESULTS.md). 2-D
    products pass transposes to BLAS directly. Small products run on one BLAS thread
    (``kernels.blas_threads``).
    """
    if b.ndim > 2 and b.strides[-1] != b.itemsize:
        b = get_array_module(b).ascontiguousarray(b)
    with threads_for(a.shape[-2] if a.ndim > 1 else 1, b.shape[-1] if b.ndim > 1 else 1, a.shape[-1]):
        return a @ b


class MatMul(Function):
    """C = A @ B over the last two axes; leading axes broadcast, as in ``numpy.matmul``.

    With C_ij = Σ_k A_ik B_kj:  dL/dA = dL/dC @ Bᵀ  and  dL/dB = Aᵀ @ dL/dC, each summed back over the
    batch axes it was broadcast along. A 1-D operand is treated as a row (A) or column (B) vector.
    """

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must have at least 1 dimension, got shapes {a.shape} and {b.shape}")
        a, b = match_dtypes("matmul", a, b)
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(
                f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not align: "
                f"A's last axis ({a.shape[-1]}) must equal B's second-to-last ({b.shape[-2 if b.ndim > 1 else 0]})"
            )
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])  # the batch axes (none for a vector)
        except ValueError:
            raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} have batch axes "
                             f"{tuple(a.shape[:-2])} and {tuple(b.shape[:-2])} that do not broadcast together") from None
        self.a_shape, self.b_shape = a.shape, b.shape
        # Lift vectors to matrices so the backward needs only the 2-D rule.
        self.a = a.reshape(1, -1) if a.ndim == 1 else a  # (…, M, K)
        self.b = b.reshape(-1, 1) if b.ndim == 1 else b  # (…, K, N)
        return _product(a, b)

    def backward(self, grad):
        a, b = self.a, self.b
        g = grad  # (…, M, N), with M or N dropped where an operand was a vector: put them back
        if len(self.a_shape) == 1:
            g = g.reshape(g.shape[:-1] + (1,) + g.shape[-1:]) if len(self.b_shape) > 1 else g.reshape(1)
        if len(self.b_shape) == 1:
            g = g.reshape(g.shape + (1,))
        da = unbroadcast(_product(g, b.swapaxes(-1, -2)), a.shape).reshape(self.a_shape) if self.needs_grad[0] else None
        db = unbroadcast(_product(a.swapaxes(-1, -2), g), b.shape).reshape(self.b_shape) if self.needs_grad[1] else None
        return da, db


class Linear(Function):
    """y = x Wᵀ + b over the last axis of x, W of shape (out, in) as in PyTorch; x (…, in) -> y (…, out).

    With the leading axes of x flattened to N rows, X (N, in) and G = dL/dY (N, out):
    dL/dX = G W,  dL/dW = Gᵀ X,  dL/db = Σ_n G_n.
    The same result as ``x @ W.T + b`` from MatMul and Add, as one op: the bias goes into the product's
    fresh output in place, and the backward needs no broadcasting bookkeeping. Done with MatMul and Add,
    each bias add makes a fresh array, a cost that shows in a training step (benchmarks/RESULTS.md).
    """

    def forward(self, x, weight, bias=None):
        if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input of shape {tuple(x.shape)} needs a last axis equal to the weight's "
                             f"in_features; weight has shape {tuple(weight.shape)}, expected (out_features, "
                             f"{x.shape[-1] if x.ndim else 'in_features'})")
        if bias is not None and bias.shape != weight.shape[:1]:
            raise ValueError(f"linear: bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
        x, weight = match_dtypes("linear", x, weight)
        if bias is not None:
            _, bias = match_dtypes("linear", weight, bias)
        self.x_shape, self.has_bias = x.shape, bias is not None
        self.x2, self.weight = x.reshape(-1, x.shape[-1]), weight  # (N, in), (out, in)
        self.size = (self.x2.shape[0], weight.shape[0], weight.shape[1])  # N, out, in: one size for all 3 products
        with threads_for(*self.size):
            y = self.x2 @ weight.T                                  # (N, out)
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], weight.shape[0])

    def backward(self, grad):
        g = grad.reshape(-1, grad.shape[-1])                                       # (N, out)
        with threads_for(*self.size):
            dx = (g @ self.weight).reshape(self.x_shape) if self.needs_grad[0] else None  # (…, in)
            dw = transposed_product(g, self.x2) if self.needs_grad[1] else None        # Gᵀ X (out, in)
        if not self.has_bias:
            return dx, dw
        return dx, dw, (g.sum(axis=0) if self.needs_grad[2] else None)             # (out,)
