"""Numba CUDA kernels, written as a numbered progression (like llm.c's dev/cuda).

* ``softmax``: v1 thread per row, v2 block per row with a shared-memory
  reduction, v3 block per row with an online (one pass) max + sum.
* ``attention``: v1 naive port of the reference (thread per row, no shared
  memory), v2 flash-style tiles in shared memory with an online softmax.
* ``ffn``: a shared-memory tiled matmul with fused bias / activation
  epilogues, used for the FFN forward and backward.

Every kernel accepts NumPy arrays (copied to the device and the results copied
back), or CuPy / Numba device arrays (anything with ``__cuda_array_interface__``;
results are then Numba device arrays). Block sizes are parameters so the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) can run them with few threads. No warp
shuffles are used, so every kernel also runs under the simulator.
"""
