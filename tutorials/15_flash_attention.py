# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 15 — Flash attention from the online softmax
#
# Attention as written in chapter 04 builds the score matrix $S = \alpha QK^\top$ and its softmax $P$, both
# $(T, T)$ per head: at $T = 8192$ that is 256 MB per head in float32, read and written several times. The
# *flash attention* idea: never build $S$. Go through the keys in blocks, keep for every query row a running
# maximum $m$, a running sum $\ell$ and a running output $o$ (the online softmax of chapter 11, extended
# from a sum to a weighted sum), and fix them up each time a block raises the maximum. For one query row
# and key block $j$ with scores $s^{(j)} = \alpha\, q K_j^\top$:
#
# $$ m' = \max\big(m, \max s^{(j)}\big), \quad \ell' = \ell\, e^{m - m'} + \sum e^{s^{(j)} - m'}, \quad
#    o' = o\, e^{m - m'} + e^{s^{(j)} - m'} V_j , $$
#
# and after the last block $O = o/\ell$ and $\mathrm{lse} = m + \log \ell$ (the log-sum-exp of the row).
# Memory: $O(T\,d)$ per head instead of $O(T^2)$. The backward pass does not store $P$ either: it
# *recomputes* each tile as $P = e^{S - \mathrm{lse}}$ from the saved lse. We build both in NumPy, check
# them against the library's $(T, T)$ reference (`kernels/reference.py`) and its Numba kernels
# (`kernels/cpu/attention.py`), and measure the memory.

# %%
import math
import tracemalloc

import numpy as np

from kernels import cpu, reference

import _common as C

CHAPTER = "15_flash_attention"
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The forward pass, tile by tile
#
# Queries in blocks of `block_q` rows, keys and values in blocks of `block_k`. A causal mask hides key $j$
# from query $i$ when $j > i$ (those scores are $-\infty$; a block entirely in the future is skipped).
# Rows whose maximum is still $-\infty$ (nothing visible yet) use $0$ in its place so that
# $e^{-\infty - (-\infty)}$ never appears.

# %%
def flash_forward(q, k, v, causal=False, block_q=16, block_k=16):
    """o (B, H, T, d), lse (B, H, T) without ever holding a (T, T) array: q, k, v (B, H, T, d)."""
    b, h, t, d = q.shape
    alpha = 1 / math.sqrt(d)
    o, lse = np.zeros_like(q), np.empty(q.shape[:3], q.dtype)
    for i0 in range(0, t, block_q):
        qi = q[:, :, i0:i0 + block_q]  # (B, H, bq, d)
        m = np.full(qi.shape[:3], -np.inf, q.dtype)  # running max      (B, H, bq)
        ell = np.zeros(qi.shape[:3], q.dtype)  # running sum              (B, H, bq)
        acc = np.zeros_like(qi)  # running weighted sum of values         (B, H, bq, d)
        for j0 in range(0, t, block_k):
            if causal and j0 > i0 + qi.shape[2] - 1:
                break  # every key of this block (and of the next ones) lies in the future
            s = alpha * qi @ k[:, :, j0:j0 + block_k].swapaxes(-1, -2)  # (B, H, bq, bk): one tile only
            if causal:
                rows, cols = np.arange(i0, i0 + s.shape[2])[:, None], np.arange(j0, j0 + s.shape[3])
                s = np.where(cols > rows, -np.inf, s)
            m_new = np.maximum(m, s.max(-1))
            safe = np.where(np.isinf(m_new), 0.0, m_new)
            p = np.exp(s - safe[..., None])  # (B, H, bq, bk)
            rescale = np.exp(m - safe)  # e^{m - m'}: shrinks what was summed under the old maximum
            ell = ell * rescale + p.sum(-1)
            acc = acc * rescale[..., None] + p @ v[:, :, j0:j0 + block_k]
            m = m_new
        o[:, :, i0:i0 + block_q] = acc / ell[..., None]
        lse[:, :, i0:i0 + block_q] = m + np.log(ell)
    return o, lse


def check_flash_forward(impl, causal=False):
    """Raise AssertionError unless impl(q, k, v, causal, block_q, block_k) -> (o, lse) is exact attention."""
    r = np.random.default_rng(1)
    q, k, v = (r.normal(size=(2, 3, 37, 8)) for _ in range(3))  # 37: not a multiple of any block size
    q[0, 0, 5] *= 12  # a row with large scores: the running maximum must be handled
    want_o, want_lse = reference.attention_forward(q, k, v, causal=causal)
    for bq, bk in ((16, 16), (5, 9), (64, 64)):
        o, lse = impl(q, k, v, causal=causal, block_q=bq, block_k=bk)
        C.close(f"flash forward O (blocks {bq}x{bk}, causal={causal}) vs the (T, T) reference", o, want_o, atol=1e-10)
        C.close(f"flash forward lse (blocks {bq}x{bk}, causal={causal}) vs the reference", lse, want_lse, atol=1e-10)


check_flash_forward(flash_forward)
check_flash_forward(flash_forward, causal=True)

# %% [markdown]
# ## 2. The backward pass, recomputed
#
# With $dO$ given, the gradients of $O = PV$, $P = \mathrm{softmax}(S)$, $S = \alpha QK^\top$ are
# (chapter 04): $dV = P^\top dO$, $dP = dO\,V^\top$, $dS = P \odot (dP - D)$ with
# $D_i = \sum_j P_{ij}\,dP_{ij} = \sum_c dO_{ic} O_{ic}$ (the second form needs no $P$), $dQ = \alpha\, dS\, K$,
# $dK = \alpha\, dS^\top Q$. Every term is a sum over tiles, and each tile's $P$ is rebuilt from the saved
# log-sum-exp, $P_{ij} = e^{S_{ij} - \mathrm{lse}_i}$: a second pass of matrix products buys not storing
# $T^2$ numbers.

# %%
def flash_backward(q, k, v, o, lse, do, causal=False, block_q=16, block_k=16):
    """dq, dk, dv (each like q) from the saved o and lse, one (bq, bk) tile of P at a time."""
    t, d = q.shape[2], q.shape[3]
    alpha = 1 / math.sqrt(d)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    big_d = (do * o).sum(-1)  # D_i = Σ_c dO_ic O_ic   (B, H, T)
    for i0 in range(0, t, block_q):
        qi, doi = q[:, :, i0:i0 + block_q], do[:, :, i0:i0 + block_q]
        for j0 in range(0, t, block_k):
            kj, vj = k[:, :, j0:j0 + block_k], v[:, :, j0:j0 + block_k]
            s = alpha * qi @ kj.swapaxes(-1, -2)
            if causal:
                rows, cols = np.arange(i0, i0 + s.shape[2])[:, None], np.arange(j0, j0 + s.shape[3])
                s = np.where(cols > rows, -np.inf, s)
            p = np.exp(s - lse[:, :, i0:i0 + block_q, None])  # the tile of P, recomputed
            dv[:, :, j0:j0 + block_k] += p.swapaxes(-1, -2) @ doi
            ds = p * (doi @ vj.swapaxes(-1, -2) - big_d[:, :, i0:i0 + block_q, None])
            dq[:, :, i0:i0 + block_q] += alpha * ds @ kj
            dk[:, :, j0:j0 + block_k] += alpha * ds.swapaxes(-1, -2) @ qi
    return dq, dk, dv


def check_flash_backward(impl, causal=False):
    """Raise AssertionError unless impl(q, k, v, o, lse, do, causal, block_q, block_k) gives dq, dk, dv."""
    r = np.random.default_rng(2)
    q, k, v, do = (r.normal(size=(2, 2, 29, 8)) for _ in range(4))
    o, lse = reference.attention_forward(q, k, v, causal=causal)
    want = reference.attention_backward(q, k, v, o, lse, do, causal=causal)
    got = impl(q, k, v, o, lse, do, causal=causal, block_q=8, block_k=12)
    for name, a, b in zip(("dQ", "dK", "dV"), got, want):
        C.close(f"flash backward {name} (causal={causal}) vs the (T, T) reference", a, b, atol=1e-10)
    # and the reference itself against central differences of L = Σ dO ⊙ O, for one entry of each input
    for name, x, g in (("Q", q, want[0]), ("K", k, want[1]), ("V", v, want[2])):
        idx, eps, keep = (1, 0, 3, 2), 1e-6, x[1, 0, 3, 2]
        x[idx] = keep + eps
        up = (do * reference.attention_forward(q, k, v, causal=causal)[0]).sum()
        x[idx] = keep - eps
        down = (do * reference.attention_forward(q, k, v, causal=causal)[0]).sum()
        x[idx] = keep
        C.close(f"reference d{name} vs a central difference", g[idx], (up - down) / (2 * eps), atol=1e-6)


check_flash_backward(flash_backward)
check_flash_backward(flash_backward, causal=True)

# %% [markdown]
# ## 3. The library's kernels
#
# `kernels/cpu/attention.py` runs exactly these loops compiled with Numba (version 1, `_attention_forward`,
# `_attention_backward`: one task per (batch, head, query block), the tile products with BLAS; the default,
# version 3, also skips padded keys, reads the heads in place and walks its backward by query tiles), and
# `kernels/cuda/attention.py` runs them on a GPU, one thread block per query tile with the tiles in shared
# memory (its tests run in Numba's CUDA simulator: `tests/kernels/test_cuda_sim.py`). The CPU kernels,
# float32, against our NumPy version:

# %%
q32, k32, v32, do32 = (rng.normal(size=(2, 4, 100, 16)).astype(np.float32) for _ in range(4))
for causal in (False, True):
    o_lib, lse_lib = cpu.attention_forward(q32, k32, v32, causal=causal, block_q=32, block_k=32)
    o_ours, lse_ours = flash_forward(q32.astype(np.float64), k32.astype(np.float64), v32.astype(np.float64), causal)
    C.close(f"kernels.cpu.attention_forward O (causal={causal}) vs ours", o_lib, o_ours, atol=2e-5)
    C.close(f"kernels.cpu.attention_forward lse (causal={causal}) vs ours", lse_lib, lse_ours, atol=2e-5)
    grads_lib = cpu.attention_backward(q32, k32, v32, o_lib, lse_lib, do32, causal=causal, block_q=32, block_k=32)
    grads_ours = flash_backward(*(a.astype(np.float64) for a in (q32, k32, v32, o_ours)), lse_ours,
                                do32.astype(np.float64), causal)
    for name, a, b in zip(("dQ", "dK", "dV"), grads_lib, grads_ours):
        C.close(f"kernels.cpu.attention_backward {name} (causal={causal}) vs ours", a, b, atol=2e-4)

# %% [markdown]
# ## 4. Memory
#
# Peak memory allocated by NumPy during one forward pass (one head, $d = 64$, float32), measured with
# `tracemalloc`: the $(T, T)$ reference grows like $T^2$, the tiled version like $T$ (its inputs and
# outputs plus one tile). The library's Numba kernel allocates its outputs through NumPy (seen here) and
# its per-task tiles inside compiled code (not seen by `tracemalloc`; they are $O(\text{block}_q\cdot
# (\text{block}_k + d))$ each, whatever $T$).

# %%
def peak_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


lengths = C.pick([256, 512, 1024, 2048, 4096], [256, 512, 1024, 2048])
memory = {"(T, T) reference": [], "tiled NumPy (this chapter)": [], "kernels.cpu (outputs only)": []}
for t in lengths:
    qm, km, vm = (rng.normal(size=(1, 1, t, 64)).astype(np.float32) for _ in range(3))
    memory["(T, T) reference"].append(peak_bytes(lambda: reference.attention_forward(qm, km, vm)))
    memory["tiled NumPy (this chapter)"].append(peak_bytes(lambda: flash_forward(qm, km, vm, block_q=128, block_k=128)))
    memory["kernels.cpu (outputs only)"].append(peak_bytes(lambda: cpu.attention_forward(qm, km, vm)))
for name, values in memory.items():
    print(f"{name:28s}", " ".join(f"T={t}: {v / 2**20:.2f} MiB" for t, v in zip(lengths, values)))
ratio = memory["(T, T) reference"][-1] / memory["(T, T) reference"][-2]
# (The reference's peak is several (T, T) arrays: the scores, their exponentials, the weights.)
assert ratio > 3.0, f"the (T, T) path should grow about 4x when T doubles, grew {ratio:.1f}x"
assert memory["tiled NumPy (this chapter)"][-1] < memory["tiled NumPy (this chapter)"][-2] * 2.5

fig, ax = C.plt.subplots(figsize=(7, 4.2))
for (name, values), style in zip(memory.items(), ("o-", "s-", "^-")):
    ax.loglog(lengths, np.array(values) / 2**20, style, label=name, base=2)
ax.loglog(lengths, 4 * np.array(lengths, float) ** 2 / 2**20, "k:", label="one (T, T) float32 array", base=2)
ax.set(xlabel="sequence length T", ylabel="peak NumPy allocation (MiB)",
       title="attention forward, one head, d = 64: memory vs T")
ax.legend(fontsize=8)
C.save(fig, CHAPTER, "attention_memory")

# %% [markdown]
# ## Exercises
#
# 1. Drop the line `acc = acc * rescale[..., None] + …`'s rescaling (keep `+ p @ v`). Which rows does
#    `check_flash_forward` catch, and why do rows whose maximum sits in the first block survive?
# 2. Save $\ell$ and $m$ instead of $\mathrm{lse}$ for the backward pass. What does it cost in memory, and
#    which line of `flash_backward` changes?
# 3. In `flash_backward`, the causal case still visits the future blocks. Skip them as the forward does,
#    and count the tile products saved for $T = 1024$, blocks of 64.
