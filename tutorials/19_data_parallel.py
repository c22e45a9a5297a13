# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 19 — Data parallelism: N processes, one set of weights, and the all-reduce between them
#
# When one process is too slow, give each of $N$ processes (*ranks*) a full copy of the model and a slice
# of every batch. The loss of a batch of $B$ examples is a mean, so it splits into the ranks' means:
#
# $$ L = \frac{1}{B}\sum_{i=1}^{B} \ell_i = \sum_{r=0}^{N-1} \frac{n_r}{B}\, L_r,
#    \qquad L_r = \frac{1}{n_r}\sum_{i \in \text{shard } r} \ell_i,
#    \qquad \nabla L = \sum_r \frac{n_r}{B}\, \nabla L_r . $$
#
# With equal shards ($n_r = B/N$) the gradient of the big batch is the **average** of the ranks' gradients.
# Each rank computes $\nabla L_r$ on its slice; one collective operation, the **all-reduce**, leaves the sum
# $\sum_r (n_r/B)\nabla L_r$ on every rank; every rank then takes the same optimizer step from the same
# weights, and the replicas stay identical without ever sending weights. `minitx.distributed` does this
# under MPI (`mpiexec -n 2 minitx train-gpt …`), and on GPUs with NCCL.
#
# This chapter checks the equation above on a GPT (including the case where $n_r$ differs because of
# padding), runs the library's hand-written **ring all-reduce** step by step, predicts its cost with the
# α–β model for 8 GPUs training a GPT-2-sized model, and measures data parallelism on this machine.

# %%
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

import minitx as mx
from minitx import distributed
from minitx.models import GPT, GPTConfig
from minitx.tensor import Tensor

import _common as C

CHAPTER = "19_data_parallel"
mx.manual_seed(0)

# %% [markdown]
# ## 1. Averaging the ranks' gradients is training on the bigger batch
#
# A tiny GPT in float64 (so that only the mathematics can make a difference, not rounding), a batch of 8
# rows split into shards. `shard_gradients` is what each rank computes on its own; `combine` is what the
# all-reduce must produce. Rows may be padded (`attention_mask`): `GPT.loss` then averages over the real
# targets only, so shards hold different numbers $n_r$ of them, and a plain average of the ranks' gradients
# is **not** the big batch's gradient — the weights $n_r / \sum_s n_s$ are needed. The Trainer does exactly
# this: a `loss_fn` may return its count, and each rank scales its loss by its share before backward.
#
# In float32 the equality holds only up to rounding: two half-batch sums round differently from one
# full-batch sum. Section 1b shows what that costs after Adam, and what is equal bit for bit.

# %%
def tiny_gpt():
    mx.manual_seed(1)
    return GPT(GPTConfig(vocab_size=17, max_len=8, d_model=16, num_heads=2, num_layers=1,
                         dim_feedforward=32, dropout=0.0)).double()


def gradients(model, ids, mask=None) -> list:
    """∇ of the mean next-token loss over the real targets of ``ids`` (B, T), one array per parameter."""
    model.zero_grad()
    model.loss(Tensor(ids), attention_mask=None if mask is None else Tensor(mask)).backward()
    return [p.grad.copy() for p in model.parameters()]


def target_count(mask) -> int:
    """How many targets GPT.loss averages over: a target counts when it and the token before it are real."""
    return int((mask[:, 1:] & mask[:, :-1]).sum())


def shard_gradients(model, ids, mask, ranks: int):
    """What each of ``ranks`` ranks computes on its slice of the batch: (list of gradients, list of counts)."""
    rows = np.array_split(np.arange(len(ids)), ranks)
    return [gradients(model, ids[r], mask[r]) for r in rows], [target_count(mask[r]) for r in rows]


def combine_weighted(grads_per_rank, counts):
    """Σ_r (n_r / Σ_s n_s) ∇L_r — what the all-reduce of the share-scaled gradients gives every rank."""
    total = sum(counts)
    return [sum(g[i] * (n / total) for g, n in zip(grads_per_rank, counts)) for i in range(len(grads_per_rank[0]))]


def combine_mean(grads_per_rank, counts):
    """The plain average (1/N) Σ_r ∇L_r: right only when every shard has the same count."""
    return [sum(g[i] for g in grads_per_rank) / len(grads_per_rank) for i in range(len(grads_per_rank[0]))]


def check_gradient_averaging(combine):
    """``combine(grads_per_rank, counts)`` must give the gradient of the whole batch, for full and padded rows."""
    model = tiny_gpt()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 17, (8, 9))
    lengths = rng.integers(3, 10, 8)
    for name, mask in (("full rows", np.ones_like(ids)),
                       ("padded rows", (np.arange(9)[None, :] < lengths[:, None]).astype(np.int64))):
        whole = np.concatenate([g.ravel() for g in gradients(model, ids, mask)])  # every parameter's gradient
        for ranks in (2, 4):
            combined = combine(*shard_gradients(model, ids, mask, ranks))
            C.close(f"{name}, {ranks} ranks", np.concatenate([g.ravel() for g in combined]), whole,
                    atol=1e-12, rtol=1e-9)
    print("[check] the ranks' gradients, weighted by their share of the targets, = the whole batch's gradient "
          "(2 and 4 ranks, full and padded rows)")


check_gradient_averaging(combine_weighted)
_ids = np.random.default_rng(0).integers(0, 17, (8, 9))
_mask = (np.arange(9)[None, :] < np.random.default_rng(0).integers(3, 10, 8)[:, None]).astype(np.int64)
_mean_error = max(float(np.abs(a - b).max()) for a, b in zip(combine_mean(*shard_gradients(tiny_gpt(), _ids, _mask, 2)),
                                                              gradients(tiny_gpt(), _ids, _mask)))
print(f"with padding, the plain mean of 2 ranks' gradients is off by up to {_mean_error:.2e}: it weights "
      "each rank's tokens by 1/n_r instead of 1/Σn")

# %% [markdown]
# ## 1b. In float32: bit for bit like accumulation, not like one big product
#
# Floating-point addition is commutative ($a + b = b + a$ exactly) but not associative. Two ranks with 4 rows
# each compute exactly what one process computes when it **accumulates** two micro-batches of 4 (the
# Trainer's `accumulation=2`): the same products on the same rows, each loss halved (exact: a power of two),
# and the all-reduce's one addition per number is the addition the second `backward` makes into `.grad`.
# So `mpiexec -n 2` with 4 rows per rank and one process accumulating 2 × 4 write **the same weights, bit for
# bit** (tests/test_distributed.py checks it, with MPI's all-reduce and with the ring). One process with all
# 8 rows in **one product** sums the 8·T rows of every weight gradient in another order, so its gradients
# differ in the last bits (about $10^{-7}$ of their size). With 3 or more ranks, MPI and the ring add in
# orders of their own, and only "equal up to rounding" is left.

# %%
def float32_gradients(model, ids, pieces: int, accumulate: bool) -> list:
    """The batch's gradient from ``pieces`` row blocks: summed by ``backward`` into ``.grad`` (accumulate) or
    computed block by block and added afterwards (what the all-reduce adds for one block per rank)."""
    model.zero_grad()
    per_block = []
    for rows in np.split(ids, pieces):
        (model.loss(Tensor(rows)) * (1.0 / pieces)).backward()
        if not accumulate:
            per_block.append([p.grad.copy() for p in model.parameters()])
            model.zero_grad()
    if accumulate:
        return [p.grad.copy() for p in model.parameters()]
    return [sum(block[i] for block in per_block) for i in range(len(per_block[0]))]


mx.manual_seed(1)
_gpt32 = GPT(GPTConfig(vocab_size=17, max_len=8, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32,
                       dropout=0.0))  # float32
_ranks = float32_gradients(_gpt32, _ids, 2, accumulate=False)
_accumulated = float32_gradients(_gpt32, _ids, 2, accumulate=True)
_one_product = float32_gradients(_gpt32, _ids, 1, accumulate=True)
assert all(np.array_equal(a, b) for a, b in zip(_ranks, _accumulated)), "2 ranks must equal accumulation bit for bit"
_rounding = max(float(np.abs(a - b).max()) for a, b in zip(_ranks, _one_product))
assert 0 < _rounding < 1e-6, _rounding
print(f"[check] 2 ranks x 4 rows == 1 process accumulating 2 x 4, bit for bit; 8 rows in one product differ "
      f"by up to {_rounding:.1e}")

# %% [markdown]
# A difference of $10^{-9}$ in a gradient looks harmless, but Adam divides each gradient by its own running
# size: its first step is $\Delta\theta = -\,\mathrm{lr}\cdot g / (|g| + \varepsilon)$ with $\varepsilon = 10^{-8}$,
# about $\pm\mathrm{lr}$ whatever $|g|$ is. Where $|g|$ is as small as $\varepsilon$, that step moves by up to
# $\mathrm{lr}\cdot\Delta g/\varepsilon$ when $g$ moves by $\Delta g$. Two kinds of weights get there:
#
# - the **attention key bias**: it adds $q_t \cdot b$ to every score of query $t$, which the softmax ignores,
#   so its true gradient is exactly 0 and what backward computes is rounding noise (below);
# - **any weight whose gradient happens to cancel** to about $\varepsilon$: a sum of terms of $10^{-3}$ that
#   lands at $5\cdot 10^{-9}$ keeps the rounding of the terms, a relative error of 10% or more.
#
# `benchmarks/data_parallel_rounding.py` finds such a weight in the default `minitx train-gpt` model (seed 1,
# `blocks.1.mlp.linear2.weight[13, 65]`): at step 1 its gradient is $5.43\cdot 10^{-9}$ in float64,
# $4.19\cdot 10^{-9}$ from one product of 8 rows and $4.66\cdot 10^{-9}$ from two halves of 4, the global
# gradient norm 1.585 is clipped to 1, and the learning rate of the warm-up's first step is $1.5\cdot 10^{-3}$:

# %%
def adam_first_step(g: float, lr: float, eps: float = 1e-8) -> float:
    """Adam's (and AdamW's) first update: m̂ = g, v̂ = g², so Δθ = -lr·g/(|g| + ε)."""
    return -lr * g / (abs(g) + eps)


_clip = 1 / 1.585
_apart = abs(adam_first_step(4.19e-9 * _clip, 1.5e-3) - adam_first_step(4.66e-9 * _clip, 1.5e-3))
print(f"one weight, step 1: the two runs' updates differ by {_apart:.1e} (the runs themselves: 2.7e-05 apart)")


def key_bias_gradient(model) -> float:
    """The largest |∂L/∂b_k| of the first block's attention key bias, on the batch of section 1."""
    gradients(model, _ids)
    return float(np.abs(model.blocks[0].attn.k_proj.bias.grad).max())


print(f"key bias gradient, largest element: {key_bias_gradient(_gpt32):.1e} in float32, "
      f"{key_bias_gradient(tiny_gpt()):.1e} in float64 (truly 0); the query bias's: "
      f"{float(np.abs(_gpt32.blocks[0].attn.q_proj.bias.grad).max()):.1e}")

# %% [markdown]
# After 20 steps of the default `train-gpt` model (d_model 64, 2 layers, batch 8, lr $3\cdot 10^{-3}$) on the
# built-in corpus, the one-process and two-rank weights end $5.6\cdot 10^{-6}$ to $2.8\cdot 10^{-5}$ apart
# over seeds 0–7 (above $10^{-5}$ for 2 of the 8). PyTorch, asked the same question (the same model, initial
# weights, batches and AdamW; 8 rows in one product against two halves of 4), ends $6.5\cdot 10^{-6}$ to
# $2.5\cdot 10^{-5}$ apart (above $10^{-5}$ for 4 of the 8): the distance is float32 arithmetic under
# Adam, not a flaw of one library (benchmarks/RESULTS.md, "Data parallelism"). In float64 the runs agree to
# $10^{-14}$.

# %% [markdown]
# ## 2. The ring all-reduce, step by step
#
# The all-reduce's job: every rank starts with a buffer $x_r$ of $M$ numbers and ends with $\sum_r x_r$.
# Sending everything to rank 0 and back makes rank 0's link carry $2(N-1)M$ numbers. The **ring** spreads
# the work: cut the buffer into $N$ chunks and let every rank talk only to its right-hand neighbour.
#
# - **reduce-scatter** ($N-1$ steps): at step $s$ rank $r$ sends chunk $(r-s) \bmod N$ to the right and adds
#   the chunk $(r-s-1) \bmod N$ arriving from the left into its own copy. A chunk picks up one more rank's
#   numbers at every hop; after $N-1$ hops rank $r$ holds chunk $(r+1) \bmod N$ summed over all ranks.
# - **all-gather** ($N-1$ steps): the finished chunks go round once more, copied instead of added.
#
# Every rank sends $2(N-1)$ messages of $M/N$ numbers: $2\frac{N-1}{N}M$ in all, nearly independent of $N$.
#
# Below, the library's own `distributed.ring_allreduce` runs on $N$ threads that stand in for the ranks:
# `ThreadComm` has the one MPI call it needs, `Sendrecv` (send to one rank, receive from another), built
# on queues. Rank $r$ starts with the number $2^r$ everywhere, so a value's binary digits say whose numbers
# it already holds, and the figure can count them.

# %%
class ThreadComm:
    """An MPI-like communicator for ranks that are threads of this process (only what the ring needs).

    Each ``Sendrecv`` is recorded in ``trace``: who sends, to whom, which chunk of the rank's buffer (found
    from where the sent view starts in it), how many numbers, and the rank's whole buffer before that step.
    """

    def __init__(self, rank, size, inboxes, trace, buffer):
        self.rank, self.size, self.inboxes, self.trace, self.buffer = rank, size, inboxes, trace, buffer
        self.chunk_starts = np.cumsum([0] + [len(c) for c in np.array_split(buffer, size)])[:-1]
        self.calls = 0

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Sendrecv(self, sendbuf, dest, recvbuf, source):
        offset = (sendbuf.ctypes.data - self.buffer.ctypes.data) // self.buffer.itemsize
        chunk = int(np.searchsorted(self.chunk_starts, offset, side="right")) - 1
        self.trace.append({"rank": self.rank, "dest": dest, "chunk": chunk, "numbers": sendbuf.size,
                           "step": self.calls, "before": self.buffer.copy()})
        self.calls += 1
        self.inboxes[dest].put(np.array(sendbuf))
        recvbuf[...] = self.inboxes[self.rank].get(timeout=10)


def run_ranks(allreduce, buffers):
    """Run ``allreduce(comm, buffer)`` on one thread per buffer; return (the buffers after, the message trace)."""
    size = len(buffers)
    inboxes, trace, errors = [queue.Queue() for _ in range(size)], [], []
    buffers = [b.copy() for b in buffers]

    def rank_main(rank):
        try:
            allreduce(ThreadComm(rank, size, inboxes, trace, buffers[rank]), buffers[rank])
        except Exception as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"CHECK FAILED: a rank raised {errors[0]!r}")
    return buffers, trace


def check_allreduce(allreduce):
    """Every rank must end with the sum of all ranks' buffers (2 to 5 ranks, lengths that do not divide evenly)."""
    rng = np.random.default_rng(0)
    for size in (2, 3, 4, 5):
        for length in (1, size, 7, 50):
            buffers = [rng.standard_normal(length) for _ in range(size)]
            results, _ = run_ranks(allreduce, buffers)
            C.close(f"all-reduce, {size} ranks, {length} numbers, every rank", np.array(results),
                    np.broadcast_to(np.sum(buffers, axis=0), (size, length)), atol=1e-12, rtol=1e-12)
    print("[check] ring_allreduce leaves Σ_r x_r on every rank (2-5 ranks, uneven chunk sizes)")


check_allreduce(distributed.ring_allreduce)

# %% [markdown]
# Now the picture for $N = 4$ ranks and a buffer of 4 chunks. Each panel is the state before one step:
# a row per rank, a column per chunk, the number in a cell how many ranks' numbers that chunk holds
# (the count of binary digits of its value); the panel's title says who sends which chunk.

# %%
N_RING = 4
final, ring_trace = run_ranks(distributed.ring_allreduce, [np.full(N_RING, 2.0 ** r) for r in range(N_RING)])
steps = 2 * (N_RING - 1)


def contributions(buffer) -> list:
    """How many ranks' numbers each chunk holds: the binary digits set in its value."""
    return [bin(int(v)).count("1") for v in buffer]


states = [np.array([contributions(next(t["before"] for t in ring_trace if t["rank"] == r and t["step"] == k))
                    for r in range(N_RING)]) for k in range(steps)] + [np.array([contributions(b) for b in final])]
C.close("the ring ends with every rank's numbers in every chunk", states[-1], np.full((N_RING, N_RING), N_RING))

fig, axes = C.plt.subplots(1, steps + 1, figsize=(2.1 * (steps + 1), 2.6))
for k, ax in enumerate(axes):
    ax.imshow(states[k], vmin=0, vmax=N_RING, cmap="Blues")
    for r in range(N_RING):
        for c in range(N_RING):
            ax.text(c, r, states[k][r, c], ha="center", va="center", fontsize=8,
                    color="white" if states[k][r, c] > N_RING / 2 else "black")
    ax.set_xticks(range(N_RING), [f"c{c}" for c in range(N_RING)])
    ax.set_yticks(range(N_RING), [f"r{r}" for r in range(N_RING)])
    ax.grid(False)
    if k < steps:
        phase = "reduce-scatter" if k < N_RING - 1 else "all-gather"
        moves = ", ".join(f"r{t['rank']}→r{t['dest']}:c{t['chunk']}"
                          for t in sorted(ring_trace, key=lambda t: t["rank"]) if t["step"] == k)
        ax.set_title(f"{phase} step {k % (N_RING - 1) + 1}\n" + moves.replace(", r", ",\nr", 1), fontsize=7)
    else:
        ax.set_title("done: every rank\nholds every sum", fontsize=7)
C.save(fig, CHAPTER, "ring_allreduce_steps")

# %% [markdown]
# The trace also counts what the α–β model below needs: how many messages each rank sends and how many
# numbers they carry. For $N$ ranks and $M$ numbers: $2(N-1)$ messages and $2\frac{N-1}{N}M$ numbers
# (up to the rounding of uneven chunks).

# %%
def ring_messages(n: int, m: int) -> tuple[int, float]:
    """(messages, numbers) that one rank sends in a ring all-reduce of m numbers over n ranks."""
    return 2 * (n - 1), 2 * (n - 1) / n * m


def check_ring_message_counts(counts):
    """``counts(n, m)`` must match what the ring really sends (counted from its trace)."""
    for n in (2, 3, 4, 5):
        m = 60  # divisible by 2..5: equal chunks
        _, trace = run_ranks(distributed.ring_allreduce, [np.zeros(m) for _ in range(n)])
        sent = [[t["numbers"] for t in trace if t["rank"] == r] for r in range(n)]
        C.close(f"(messages, numbers) sent by each of {n} ranks", [(len(s), sum(s)) for s in sent],
                [counts(n, m)] * n, atol=0, rtol=0)
    print("[check] each rank sends 2(N-1) messages of M/N numbers, as counted in the ring's trace")


check_ring_message_counts(ring_messages)

# %% [markdown]
# ## 3. What it costs: the α–β model, for 8 GPUs and a GPT-2-sized model
#
# Sending a message of $S$ bytes costs $\alpha + S\beta$: a latency $\alpha$ and an inverse bandwidth $\beta$
# (seconds per byte). With $S$ the gradients' bytes, the ring costs
#
# $$ T_\text{ring} = 2(N-1)\,\alpha + 2\,\frac{N-1}{N}\, S\,\beta \;\xrightarrow{N\to\infty}\; 2 S \beta , $$
#
# against $2(N-1)(\alpha + S\beta)$ through one root. The computation it has to keep up with: a forward and
# backward pass costs about $6P$ floating-point operations per token for $P$ parameters (2 for the forward
# matrix products, 4 for the backward), so a rank that processes $t$ tokens per step computes for
# $T_\text{compute} = 6 P t / F$ seconds at $F$ FLOP/s.
#
# GPT-2 small: $P = V d + T_\text{max} d + L(12 d^2 + 13 d) + 2d$ with tied input/output embeddings,
# checked against minitx's GPT on a small configuration.

# %%
def gpt_parameter_count(c: GPTConfig) -> int:
    """Token and position tables, L blocks (attention 4d² + 4d, MLP 2·d·ff + ff + d, two LayerNorms 4d),
    the final LayerNorm 2d; the output layer is the token table (tied)."""
    d = c.d_model
    block = 4 * d * d + 4 * d + 2 * d * c.dim_feedforward + c.dim_feedforward + d + 4 * d
    return c.vocab_size * d + c.max_len * d + c.num_layers * block + 2 * d


small = GPTConfig(vocab_size=50, max_len=12, d_model=24, num_heads=2, num_layers=3,
                  dim_feedforward=40)
C.close("GPT parameter count formula", gpt_parameter_count(small), GPT(small).num_parameters(), atol=0, rtol=0)
print("[check] the parameter-count formula equals minitx's GPT")

GPT2 = GPTConfig(vocab_size=50257, max_len=1024, d_model=768, num_heads=12, num_layers=12,
                 dim_feedforward=3072)
P_GPT2 = gpt_parameter_count(GPT2)
print(f"GPT-2 small: {P_GPT2:,} parameters -> {4 * P_GPT2 / 1e6:.0f} MB of float32 gradients per step")

# %% [markdown]
# The numbers below are **assumptions** (typical published figures, not measurements): an A100-class GPU
# computing at 40% of its 312 TFLOP/s bf16 peak, 8 × 1024 tokens per GPU and step, float32 gradients, and
# three interconnects with their rough all-reduce bandwidths and latencies.

# %%
def ring_seconds(n: int, nbytes: float, alpha: float, bandwidth: float) -> float:
    """T_ring = 2(N-1)α + 2(N-1)/N · S/bandwidth."""
    return 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes / bandwidth


def compute_seconds(parameters: int, tokens: int, flops: float) -> float:
    """T_compute = 6 P t / F (forward 2P, backward 4P FLOPs per token)."""
    return 6 * parameters * tokens / flops


FLOPS = 0.4 * 312e12
TOKENS_PER_GPU = 8 * 1024
LINKS = {"NVLink (≈230 GB/s)": (5e-6, 230e9), "PCIe 4 ×16 (≈24 GB/s)": (10e-6, 24e9),
         "100 Gb/s network (≈12 GB/s)": (20e-6, 12e9)}
t_compute = compute_seconds(P_GPT2, TOKENS_PER_GPU, FLOPS)
print(f"predicted for 8 GPUs, GPT-2 small, {TOKENS_PER_GPU} tokens per GPU and step: compute {1e3 * t_compute:.1f} ms")
for name, (alpha, bandwidth) in LINKS.items():
    t_ring = ring_seconds(8, 4 * P_GPT2, alpha, bandwidth)
    print(f"  {name:28s} all-reduce {1e3 * t_ring:6.1f} ms   communication/computation = {t_ring / t_compute:.2f}")
print("  (a ratio well below 1 can hide behind the backward pass, if buckets are sent while it runs)")

fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(10, 3.6))
ns = np.arange(2, 65)
alpha, bandwidth = LINKS["NVLink (≈230 GB/s)"]
ax1.plot(ns, [1e3 * ring_seconds(n, 4 * P_GPT2, alpha, bandwidth) for n in ns], label="ring: 2(N-1)α + 2(N-1)/N·Sβ")
ax1.plot(ns, [1e3 * 2 * (n - 1) * (alpha + 4 * P_GPT2 / bandwidth) for n in ns],
         label="through one root: 2(N-1)(α+Sβ)")
ax1.set_xlabel("ranks N")
ax1.set_ylabel("all-reduce time (ms)")
ax1.set_yscale("log")
ax1.set_title("GPT-2 small's gradients (498 MB), NVLink assumptions")
ax1.legend(fontsize=7)
tokens = 2.0 ** np.arange(8, 17)
for name, (alpha, bandwidth) in LINKS.items():
    ratio = ring_seconds(8, 4 * P_GPT2, alpha, bandwidth) / compute_seconds(P_GPT2, tokens, FLOPS)
    ax2.plot(tokens, ratio, marker="o", ms=3, label=name)
ax2.axhline(1, color="gray", lw=0.8)
ax2.set_xscale("log", base=2)
ax2.set_yscale("log")
ax2.set_xlabel("tokens per GPU and step")
ax2.set_ylabel("T_allreduce / T_compute")
ax2.set_title("8 GPUs, GPT-2 small: communication / computation")
ax2.legend(fontsize=7)
C.save(fig, CHAPTER, "alpha_beta_model")

# %% [markdown]
# ## 4. Measured on this machine
#
# The same small GPT training step, timed on this machine's CPU cores: **one process with two threads**
# (NumPy's BLAS and Numba split each matrix product) against **two processes with one thread each** under
# `mpiexec -n 2` (each computes half the batch, then they all-reduce), and one process with one thread as
# the baseline for both speed-ups. The global batch is the same, so all runs compute the same steps. Rank 0
# also times its all-reduces (which includes waiting for the slower rank) and a ping-pong between the two
# ranks that measures this machine's α and β.
#
# These timings are honest but noisy: the machine is shared (other jobs run on the same cores while this
# chapter runs; the load average is printed with the results), and two cores are a tiny cluster.

# %%
MEASURE = r"""
import json, sys, time
import numpy as np
from minitx import backend, distributed
from minitx.data import DataLoader, ListDataset
from minitx.models import GPT, GPTConfig
from minitx.optim import AdamW
from minitx.tensor import Tensor
from minitx.train import TrainConfig, Trainer

steps, d_model = int(sys.argv[1]), int(sys.argv[2])
world = distributed.world()
backend.manual_seed(0)
model = GPT(GPTConfig(vocab_size=256, max_len=64, d_model=d_model, num_heads=4, num_layers=2,
                      dim_feedforward=4 * d_model, dropout=0.0))
windows = np.random.default_rng(0).integers(0, 256, (1024, 65))
loader = DataLoader(ListDataset(windows), 16, shuffle=True, drop_last=True)
trainer = Trainer(model, AdamW(model.parameters(), lr=1e-3), loader, lambda m, b: (m.loss(Tensor(b)), {}),
                  TrainConfig(steps=steps + 1, progress=False))
in_allreduce = [0.0]
allreduce = world.allreduce_
def timed_allreduce(buffer):
    start = time.perf_counter()
    allreduce(buffer)
    in_allreduce[0] += time.perf_counter() - start
world.allreduce_ = timed_allreduce
trainer.train_step()  # the first step allocates and compiles: not timed
in_allreduce[0] = 0.0
world.barrier()
start = time.perf_counter()
for _ in range(steps):
    trainer.train_step()
step_s = (time.perf_counter() - start) / steps
result = {"ranks": world.size, "step_ms": 1e3 * step_s, "allreduce_ms": 1e3 * in_allreduce[0] / steps,
          "gradient_bytes": 4 * model.num_parameters()}
if world.size == 2:  # ping-pong: half a round trip of a tiny and of a large message -> alpha, beta
    comm, other = world.comm, 1 - world.rank
    def half_round_trip(nbytes, repeats):
        buffer = np.zeros(nbytes, np.uint8)
        world.barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            if world.rank == 0:
                comm.Send(buffer, dest=other); comm.Recv(buffer, source=other)
            else:
                comm.Recv(buffer, source=other); comm.Send(buffer, dest=other)
        return (time.perf_counter() - start) / repeats / 2
    alpha = half_round_trip(8, 200)
    result.update(alpha_us=1e6 * alpha, beta_GBps=(1 << 22) / (half_round_trip(1 << 22, 20) - alpha) / 1e9)
if world.is_main:
    print(json.dumps(result))
"""


def mpiexec_path():
    """The mpiexec next to this Python (the `mpich` wheel installs it there), else one on PATH."""
    return shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def measure(ranks: int, threads: int, steps: int, d_model: int) -> dict:
    """Run MEASURE on ``ranks`` processes of ``threads`` threads each; rank 0's timings."""
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    command = [sys.executable, "-c", MEASURE, str(steps), str(d_model)]
    if ranks > 1:
        command = [mpiexec_path(), "-n", str(ranks)] + command
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"the measurement on {ranks} process(es) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def run_measurements():
    """Time the three settings, print the results and draw the figure."""
    steps, d_model = C.pick((30, 128), (1, 32))  # quick mode: one step, only to show that it runs
    have_mpi = mpiexec_path() is not None and importlib.util.find_spec("mpi4py") is not None
    load_before = os.getloadavg()[0]
    single = measure(1, 1, steps, d_model)  # the baseline: one process, one thread
    one = measure(1, 2, steps, d_model)
    two = measure(2, 1, steps, d_model) if have_mpi else None
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after (shared with other jobs: expect noise)")
    print(f"GPT d_model={d_model}, 2 layers, global batch 16 × 64 tokens, "
          f"{steps} timed step{'s' if steps > 1 else ''}")
    print(f"  1 process  × 1 thread:  {single['step_ms']:7.1f} ms/step")
    print(f"  1 process  × 2 threads: {one['step_ms']:7.1f} ms/step, "
          f"speed-up {single['step_ms'] / one['step_ms']:.2f}×")
    if two is None:
        print("  2 processes × 1 thread: not measured (mpiexec or mpi4py is missing: pip install 'minitx[mpi]')")
    else:
        predicted = ring_seconds(2, two["gradient_bytes"], two["alpha_us"] * 1e-6, two["beta_GBps"] * 1e9)
        print(f"  2 processes × 1 thread: {two['step_ms']:7.1f} ms/step, of which {two['allreduce_ms']:.1f} ms in the "
              f"all-reduce (waiting for the other rank included); speed-up {single['step_ms'] / two['step_ms']:.2f}×")
        print(f"  ping-pong: α ≈ {two['alpha_us']:.1f} µs, bandwidth ≈ {two['beta_GBps']:.1f} GB/s -> "
              f"the α–β model "
              f"predicts {1e3 * predicted:.2f} ms for the {two['gradient_bytes'] / 1e6:.1f} MB all-reduce")

    fig, ax = C.plt.subplots(figsize=(6, 3))
    labels = ["1 process × 1 thread", "1 process × 2 threads"]
    compute, communicate = [single["step_ms"], one["step_ms"]], [0.0, 0.0]
    if two is not None:
        labels.append("2 processes × 1 thread")
        compute.append(two["step_ms"] - two["allreduce_ms"])
        communicate.append(two["allreduce_ms"])
    ax.barh(labels, compute, label="compute (and the rest of the step)")
    ax.barh(labels, communicate, left=compute, label="all-reduce (incl. waiting)")
    ax.set_xlim(0, 1.1 * max(c + m for c, m in zip(compute, communicate)))  # the longest bar whole
    ax.set_xlabel("ms per training step")
    ax.set_title(f"measured on a shared machine ({os.cpu_count()} CPUs), noisy" + ("" if two else "; no MPI here"))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    C.save(fig, CHAPTER, "measured_scaling")


# Run as a script or notebook; the tests import this chapter to reuse its checks and skip the measurement.
if __name__ == "__main__":
    run_measurements()

# %% [markdown]
# On two cores the two ways compete for the same resources: threads split each matrix product (and wait
# for each other at its end), processes split the batch (and wait for each other at the all-reduce).
# Processes win when a model's operations are too small to split well across threads; threads win when
# the matrices are large and the all-reduce or the duplicated optimizer step (every rank updates all the
# weights) cost more than they save. On a cluster only the processes scale past one machine.
#
# On a *busy* machine there is one more effect, and it can dominate: two BLAS threads that split one matrix
# product must both finish before the product does, so when another job takes one core for a moment the
# other thread waits (spinning) — at every one of the hundreds of products in a step. Two processes
# synchronise once per step. This chapter was written on a 2-core machine shared with other jobs (load
# average around 10), where one process × 2 threads came out far *slower* than one thread, and two processes
# faster than both; on an idle machine expect the three much closer together. The printed load average
# says which situation your numbers come from.
#
# ## Exercises
#
# 1. Change `ring_allreduce` to send in the other direction (to the left). Which chunk does rank $r$ hold
#    completely after the reduce-scatter? Run `check_allreduce` on it.
# 2. Bucketing: `GradientReducer` sends ~4 MB per all-reduce. With the α–β model, how many buckets can a
#    GPT-2-sized model use on NVLink before the $2(N-1)\alpha$ terms add up to 10% of the all-reduce?
# 3. Run `mpiexec -n 2 minitx train-gpt --steps 20 --batch-size 8 --out B` and the same without
#    `mpiexec` into `A`, and compare the weights. In float32 they differ by about as much as either run
#    differs from the same training in float64: summing two half batches rounds differently from one batch,
#    and Adam, which divides each gradient by its own running size, magnifies small differences. Show that
#    the attention's key bias has a true gradient of exactly 0 (adding a constant to every key score of a
#    query changes no softmax) and compare the gradient backward computes for it with a weight's.
