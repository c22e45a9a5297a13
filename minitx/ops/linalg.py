"""Matrix multiplication, batched with broadcasting over the leading axes."""

from __future__ import annotations

import numpy as np

from ..tensor import Function
from ._util import match_dtypes, unbroadcast


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
        return a @ b

    def backward(self, grad):
        a, b = self.a, self.b
        g = grad  # (…, M, N), with M or N dropped where an operand was a vector: put them back
        if len(self.a_shape) == 1:
            g = g.reshape(g.shape[:-1] + (1,) + g.shape[-1:]) if len(self.b_shape) > 1 else g.reshape(1)
        if len(self.b_shape) == 1:
            g = g.reshape(g.shape + (1,))
        da = unbroadcast(g @ b.swapaxes(-1, -2), a.shape).reshape(self.a_shape) if self.needs_grad[0] else None
        db = unbroadcast(a.swapaxes(-1, -2) @ g, b.shape).reshape(self.b_shape) if self.needs_grad[1] else None
        return da, db
