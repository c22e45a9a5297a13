"""Numba CUDA kernels, written as a numbered progression (like llm.c's dev/cuda).

* ``softmax``: v1 thread per row, v2 block per row with a shared-memory
  reduction, v3 block per row with an online (one pass) max + sum.
* ``attention``: v1 naive port of the reference (thread per row, no shared
  memory), v2 flash-style tiles in shared memory with an online softmax.
* ``ffn``: a shared-memory tiled matmul with fused bias / activation
  epilogues, used for the FFN forward and backward.
* ``quantized``: y = x W^T with W as Q4_1 or Q8_0 blocks, one thread block
  per output element, W never de-quantised in memory.

The package exposes the fused-op API of ``kernels.cpu``: ``attention_forward``
and ``attention_backward`` (the v2 kernels), ``ffn_forward`` and
``ffn_backward``, ``q4_1_linear`` and ``q8_0_linear``, with the same arguments
and conventions as kernels.reference plus a tuning knob (``block_size``,
``tile``).

Every kernel accepts NumPy arrays (copied to the device, results copied back as
NumPy arrays), CuPy arrays (results are CuPy arrays on the same memory, no
copies) or Numba device arrays (results are Numba device arrays); see
``_common``. Block sizes are parameters so the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) can run them with few threads. No warp shuffles
are used, so every kernel also runs under the simulator.
"""
from kernels.cuda.attention import attention_backward_v2 as attention_backward
from kernels.cuda.attention import attention_forward_v2 as attention_forward
from kernels.cuda.ffn import ffn_backward, ffn_forward
from kernels.cuda.quantized import q4_1_linear, q8_0_linear

__all__ = ["attention_forward", "attention_backward", "ffn_forward", "ffn_backward", "q4_1_linear", "q8_0_linear"]
