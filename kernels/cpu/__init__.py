"""Numba CPU kernels: fused softmax, tiled (flash-style) attention, fused FFN, products by quantised weights.

Laid out like ``kernels/cuda``: one module per kernel family (``softmax``, ``attention``, ``ffn``,
``quantized``), each ending
with its registry of versions (``VERSIONS``, see kernels/versions.py), and ``_common`` for what they share
(the float32 exp, dtype checks, BLAS threads inside parallel loops) and ``_blas`` for products called
straight into NumPy's OpenBLAS. Same signatures and conventions as
``kernels.reference`` (see its docstring); the attention functions take two extra tuning knobs, ``block_q``
and ``block_k``, the query / key tile sizes.

Design
------
* Softmax: one parallel task per row; scale and mask are applied while the row is read, so no masked copy
  of the input is ever built.
* Attention forward: one task per (batch, head, query tile), walking over key tiles with an online
  softmax; the (Tq, Tk) score matrix never exists. Backward: one task per (batch, key/value head),
  rebuilding P = exp(S - lse) tile by tile (see attention.py). Since v2 each sequence's real keys are
  gathered first, so padded keys cost neither products nor masking; the default version (v3) also reads the
  heads in place and walks the backward by query tiles, so a causal tile multiplies only the keys it sees.
* Block products (Q K^T, P V, ...) are BLAS calls, each on the thread of its task: ``np.dot`` inside njit
  (SciPy's OpenBLAS, ``_common.one_blas_thread_per_task``), or in attention v3 ``_blas.gemm`` (NumPy's
  OpenBLAS called in place, on strided operands, summing into its output).
* exp: float32 uses ``_common.exp32``, a polynomial the compiler vectorises (``math.exp`` is a scalar library
  call, about 5x slower per element); float64 keeps ``math.exp``.
* Quantised weights (Q4_1, Q8_0): y = x Wᵀ read from the packed blocks, W never de-quantised, for a few
  rows of x (generating); for many rows (a prompt), W de-quantised one cache-sized tile at a time and
  multiplied by BLAS (version 2); version 3, the default, runs the few-row loops in x's dtype (see
  quantized.py).
* FFN: the matmuls are NumPy/BLAS calls; bias + activation (forward) and activation + activation-derivative
  (backward) are fused into one pass each (see ffn.py).

``fastmath`` is limited to flags that keep -inf meaningful: masked scores are -inf, so "nnan"/"ninf" are
never enabled.

CPU-only kernels outside the registries (no CUDA version: on the GPU the composed ops run): ``layernorm``
(layer norm, optionally of a residual sum, one pass per row), ``cross_entropy`` (log-softmax + NLL, only the
log-sum-exp kept), ``adam`` (multi-tensor Adam / AdamW, one pass over every parameter) and ``embedding``
(an embedding table's gradient: a compiled scatter-add of rows, ``backend.add_rows``).

The package's functions are each family's default version: ``softmax``, ``attention_forward``,
``attention_backward``, ``ffn_forward``, ``ffn_backward``, ``q4_1_linear``, ``q8_0_linear``.
"""
from kernels.cpu.attention import attention_backward_v3 as attention_backward
from kernels.cpu.attention import attention_forward_v3 as attention_forward
from kernels.cpu.ffn import ffn_backward, ffn_forward
from kernels.cpu.quantized import q4_1_linear_v3 as q4_1_linear
from kernels.cpu.quantized import q8_0_linear_v3 as q8_0_linear
from kernels.cpu.softmax import softmax

__all__ = ["softmax", "attention_forward", "attention_backward", "ffn_forward", "ffn_backward", "q4_1_linear",
           "q8_0_linear"]
