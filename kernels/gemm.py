"""Matrix products in the orientation NumPy's OpenBLAS does fastest.

A weight gradient is a product with its first operand transposed, dW = Gᵀ X: G (N, out), X (N, in), the sum
over the N rows of a batch. OpenBLAS's float32 kernels for such a product were measured several times slower
when the result has fewer rows than columns (out < in, as in an FFN's second layer) than the same product
computed as its transpose, (Xᵀ G)ᵀ, whose result has more rows than columns (figures in benchmarks/RESULTS.md).
So ``transposed_product`` computes whichever of the two has the taller result and returns it C-contiguous (one
transposing copy of the small (out, in) result when it took the second form).
"""
import numpy as np


def transposed_product(g, x):
    """gᵀ x for g (N, m) and x (N, n) -> (m, n), C-contiguous; the same numbers as ``g.T @ x`` up to rounding."""
    if g.shape[1] >= x.shape[1]:
        return g.T @ x
    return np.ascontiguousarray((x.T @ g).T)
