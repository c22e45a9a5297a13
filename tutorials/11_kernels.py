# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Chapter 11 — Writing the kernels: fused and online softmax, on the CPU and in CUDA
#
# Every chapter so far computed with NumPy array operations. Each such operation reads its inputs from
# memory and writes a full-size result back, so a softmax written as `exp(x - max) / sum` walks over the
# data five or six times. For large tensors the time goes into moving bytes, not into arithmetic. A
# **kernel** is one hand-written loop that does the whole computation per row while the row is still in
# cache (CPU) or in registers and shared memory (GPU).
#
# We write, check and time:
#
# 1. a **fused** softmax with Numba on the CPU (three passes over a row, all in one function);
# 2. the **online** softmax (max and sum in a single pass) — the idea behind flash attention;
# 3. CUDA kernels with `numba.cuda`: a thread per row, a block per row with a shared-memory reduction,
#    and a tiled matrix multiply. Without a GPU they run in Numba's **CUDA simulator**, which executes
#    every GPU thread as a Python thread: slow, but exactly the same code and the same rules.
#
# The library's production versions of these ideas live in `kernels/` (`kernels/cpu/softmax.py`,
# `kernels/cuda/softmax.py`, `kernels/cuda/ffn.py`); we compare against them at the end.

# %%
import os
import shutil

# The simulator must be chosen before Numba is first imported. Use it when there is no NVIDIA driver.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not (shutil.which("nvidia-smi") or os.path.exists("/dev/nvidiactl")):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import math  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

import _common as C  # noqa: E402
from kernels import cpu as library_cpu  # noqa: E402
from kernels import reference  # noqa: E402

CHAPTER = "11_kernels"
torch = C.torch_or_none()
SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
print("CUDA:", "Numba's simulator (no GPU found)" if SIMULATOR else "a real GPU")

# %% [markdown]
# ## 1. The check
#
# Every kernel below is compared with the NumPy reference `kernels.reference.softmax` (itself written
# from the stable formula of chapter 02) and, when installed, with `torch.softmax`. The inputs are
# chosen to trip the usual mistakes: row lengths that are not multiples of any block size, rows shifted
# by $\pm 1000$ (overflow if the max is not subtracted), and rows whose maximum appears late (a wrong
# online update shows up there).

# %%
def softmax_test_rows(seed=0, rows=7, n=37):
    r = np.random.default_rng(seed)
    x = r.normal(0, 3, size=(rows, n))
    x[1] += 1000.0
    x[2] -= 1000.0
    x[3] = np.linspace(-20, 20, n)  # increasing: the running max changes at every step
    x[4, -1] = 50.0  # the maximum comes last
    return x


def check_softmax_kernel(impl, name="kernel", seed=0, rows=7, n=37):
    """Raise AssertionError unless impl(x (R, N) float64) returns the row softmax of x."""
    x = softmax_test_rows(seed, rows, n)
    with np.errstate(all="ignore"):
        got = np.asarray(impl(x.copy()))
    C.close(f"{name} vs kernels.reference.softmax", got, reference.softmax(x), atol=1e-12, rtol=1e-9)
    if torch is not None:
        C.close(f"{name} vs torch.softmax", got, torch.softmax(torch.tensor(x), dim=-1), atol=1e-12, rtol=1e-9)


# %% [markdown]
# ## 2. A fused softmax on the CPU with Numba
#
# `@numba.njit` compiles a Python function to machine code the first time it is called with a given
# type signature; `parallel=True` with `numba.prange` spreads the rows over the CPU cores. The body is
# the textbook algorithm, spelled out as loops over one row:
#
# $$ m = \max_j x_j, \qquad z = \sum_j e^{x_j - m}, \qquad y_j = e^{x_j - m}/z. $$
#
# Pass 1 reads the row, pass 2 reads it and writes $e^{x_j-m}$ into the output (accumulating $z$), pass 3
# rescales the output in place. A row of a few thousand floats fits in the L1/L2 cache, so passes 2 and 3
# cost far less than NumPy's separate full-array operations.
#
# `fastmath` lets the compiler reorder the sum (so it can vectorise it); we leave out the flags that
# assume there is no infinity or NaN, since masked scores are $-\infty$.

# %%
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(parallel=True, fastmath=FASTMATH)
def softmax_fused(x):
    rows, n = x.shape
    out = np.empty_like(x)
    for r in numba.prange(rows):
        row, dst = x[r], out[r]  # views of one row: no copies
        m = row.max()  # pass 1: the maximum (Numba compiles NumPy calls too)
        z = 0.0
        for j in range(n):  # pass 2: exponentials and their sum
            e = np.exp(row[j] - m)
            dst[j] = e
            z += e
        dst *= 1.0 / z  # pass 3: normalise, in place
    return out


check_softmax_kernel(softmax_fused, "fused Numba softmax")

# %% [markdown]
# ## 3. The online softmax
#
# Can we get $m$ and $z$ in **one** pass, reading each $x_j$ once? Keep a running maximum $m_j$ and a
# running sum $z_j = \sum_{i\le j} e^{x_i - m_j}$ *relative to the current maximum*. When a new element
# arrives, the maximum may grow, and every term already in the sum must be rescaled from the old maximum
# to the new one — which is a single multiplication, since $e^{x_i - m_\text{new}} = e^{x_i - m_\text{old}}
# e^{m_\text{old} - m_\text{new}}$:
#
# $$ m_j = \max(m_{j-1}, x_j), \qquad z_j = z_{j-1}\, e^{m_{j-1} - m_j} + e^{x_j - m_j}, $$
#
# starting from $m_0 = -\infty$, $z_0 = 0$. The same rule **merges** two partial results $(m_1, z_1)$ and
# $(m_2, z_2)$ computed on different halves of a row: $m = \max(m_1, m_2)$,
# $z = z_1 e^{m_1 - m} + z_2 e^{m_2 - m}$. That is what lets many GPU threads split one row, and what
# lets flash attention process keys in tiles without ever holding a whole row of scores.

# %%
@numba.njit(parallel=True, fastmath=FASTMATH)
def softmax_online(x):
    rows, n = x.shape
    out = np.empty_like(x)
    for r in numba.prange(rows):
        m = -np.inf
        z = 0.0
        for j in range(n):  # one pass: running max and rescaled running sum
            v = x[r, j]
            if v > m:
                z = z * np.exp(m - v) + 1.0  # rescale the old sum to the new max; e^(v - v) = 1
                m = v
            else:
                z += np.exp(v - m)
        inv = 1.0 / z
        for j in range(n):  # the output still needs a second pass
            out[r, j] = np.exp(x[r, j] - m) * inv
    return out


def merge(m1, z1, m2, z2):
    """Combine the (max, sum) statistics of two pieces of a row."""
    m = max(m1, m2)
    return m, z1 * math.exp(m1 - m) + z2 * math.exp(m2 - m)


check_softmax_kernel(softmax_online, "online Numba softmax")

row = softmax_test_rows()[0]
halves = [(h.max(), np.exp(h - h.max()).sum()) for h in (row[:15], row[15:])]
m_merged, z_merged = merge(*halves[0], *halves[1])
C.close("merging two halves gives the whole row's log-sum-exp", m_merged + math.log(z_merged),
        reference.logsumexp(row[None])[0], atol=1e-12)

# %% [markdown]
# Here is the online update at work on one row. The running maximum jumps when a larger element $v$
# arrives; the sum is then rescaled to the new maximum and the new element adds $e^{v - v} = 1$:
# $z' = z\,e^{m - v} + 1$. So a jump makes the sum *drop* only when $z\,(1 - e^{-(v - m)}) > 1$ — a large
# enough sum and a large enough jump; a small jump, or a jump while $z$ is still small, leaves it rising
# (the figure shows both). The line
# $m_j + \log z_j$ is the running log-sum-exp: it only increases and ends at the exact value.

# %%
n_trace = C.pick(60, 40)
r_trace = np.random.default_rng(3).normal(0, 1.5, size=n_trace) + np.linspace(0, 5, n_trace)  # a rising row
m_run, z_run = [], []
m, z = -math.inf, 0.0
for v in r_trace:
    m, z = merge(m, z, v, 1.0)  # an element is a piece of length one: (v, 1)
    m_run.append(m)
    z_run.append(z)
m_run, z_run = np.array(m_run), np.array(z_run)
C.close("online statistics reach the exact log-sum-exp", m_run[-1] + np.log(z_run[-1]),
        reference.logsumexp(r_trace[None])[0], atol=1e-12)

fig, (ax1, ax2) = C.plt.subplots(1, 2, figsize=(11, 4))
steps = np.arange(1, len(r_trace) + 1)
ax1.plot(steps, r_trace, ".", color="gray", label="x_j")
ax1.step(steps, m_run, where="post", label="running max m_j")
ax1.plot(steps, m_run + np.log(z_run), label="running log-sum-exp m_j + log z_j")
ax1.axhline(reference.logsumexp(r_trace[None])[0], color="k", ls=":", label="exact log-sum-exp")
ax1.set(xlabel="element j", ylabel="value", title="online softmax: one pass over the row")
ax1.legend(fontsize=7)
ax2.plot(steps, z_run, "o-", ms=3, color="C3")
for j in np.flatnonzero(np.diff(m_run) > 0) + 1:
    ax2.axvline(steps[j], color="C0", lw=0.8, alpha=0.5)
ax2.set(xlabel="element j", ylabel="running sum z_j (relative to m_j)",
        title="z is rescaled each time the max grows (blue lines)")
C.save(fig, CHAPTER, "online_softmax_trace")

# %% [markdown]
# ## 4. How much does fusing buy on the CPU?
#
# We time four CPU versions on $2^{20}$ (quick mode: $2^{18}$) float32 numbers arranged as rows of
# different lengths: NumPy's unfused expression (the reference), our two Numba kernels, and the
# library's `kernels.cpu.softmax` (which also fuses a scale and a mask), plus PyTorch's hand-tuned C++
# kernel when it is installed. Each is warmed up first, so Numba's compilation is not timed, and the best
# of several runs is kept.
#
# Do not expect one winner everywhere; the chart is a measurement, not a promise. Fusion removes memory
# passes and temporaries, which matters most when the data is much larger than the caches and on GPUs.
# Against it: NumPy's `exp` runs on hand-vectorised (SIMD) library code, while a scalar `np.exp` inside a
# Numba loop is one call of a scalar library function per element, and `prange` has a start-up cost per
# call. The library's `kernels.cpu.softmax` computes `exp` with a polynomial the compiler *can* vectorise
# (`exp32` in `kernels/cpu/_common.py`); PyTorch's C++ kernel is vectorised by hand. Which one wins at which row
# length depends on the machine, its caches and how busy it is: read the ratios your run prints and the
# chart below, and `benchmarks/RESULTS.md` for measured numbers with the machine named. The online kernel is the slowest on
# a CPU whatever the machine: it computes every exponential twice (once for the statistics, once for the
# output) and its branch blocks vectorisation. Its single pass pays off where the row is *not* kept — in
# flash attention, where the "row" is a row of scores that is never written to memory at all.

# %%
def best_time(fn, *args, repeat=5):
    fn(*args)  # warm-up (compilation, caches)
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


total = C.pick(2 ** 20, 2 ** 18)
lengths = [64, 256, 1024, 4096]
contenders = {
    "NumPy (unfused)": reference.softmax,
    "Numba fused (§2)": softmax_fused,
    "Numba online (§3)": softmax_online,
    "kernels.cpu.softmax": library_cpu.softmax,
}
if torch is not None:
    contenders["torch.softmax"] = lambda a: torch.softmax(torch.from_numpy(a), dim=-1)
timings = {name: [] for name in contenders}
for n in lengths:
    x = np.random.default_rng(0).normal(size=(total // n, n)).astype(np.float32)
    want = reference.softmax(x)
    for name, fn in contenders.items():
        if n == lengths[0]:
            C.close(f"{name}, rows of {n}", C.as_numpy(fn(x)), want, atol=1e-6, rtol=1e-4)
        timings[name].append(best_time(fn, x, repeat=C.pick(7, 3)))
for name, ts in timings.items():
    print(f"{name:22s}", "  ".join(f"N={n}: {t * 1e3:6.2f} ms" for n, t in zip(lengths, ts)))
for n, t_np, t_fused in zip(lengths, timings["NumPy (unfused)"], timings["Numba fused (§2)"]):
    print(f"rows of {n:5d}: fused Numba is {t_np / t_fused:4.2f}x the speed of NumPy")

fig, ax = C.plt.subplots(figsize=(7, 4))
for name, ts in timings.items():
    ax.plot(lengths, [total * 4 * 2 / t / 1e9 for t in ts], "o-", label=name)  # read + write, 4 bytes each
ax.set(xscale="log", xlabel="row length N (float32; total elements fixed)", ylabel="effective bandwidth (GB/s)",
       title=f"row softmax on the CPU ({os.cpu_count()} cores), higher is better")
ax.set_xticks(lengths, [str(n) for n in lengths])
ax.legend()
C.save(fig, CHAPTER, "softmax_cpu_speed")

# %% [markdown]
# ## 5. CUDA: threads, blocks and a grid
#
# A CUDA kernel is one function run by many threads at once. Threads come in **blocks** (up to 1024
# threads, which can share a small fast **shared memory** and wait for each other with
# `cuda.syncthreads()`), and blocks form a **grid**. A thread finds its work from its coordinates:
# `cuda.threadIdx.x`, `cuda.blockIdx.x`, `cuda.blockDim.x`, or `cuda.grid(1)` $=$
# `blockIdx.x * blockDim.x + threadIdx.x`. A launch looks like `kernel[blocks, threads_per_block](args)`.
#
# **Version 1, a thread per row.** The simplest mapping: thread $r$ runs the fused loop of §2 on row $r$.
# It is correct, but on a real GPU it is slow: the 32 threads of a *warp* execute in lockstep, and at each
# step they read 32 addresses in 32 different rows — scattered accesses that cannot be combined
# ("coalesced") into one memory transaction. Note the bounds check: the grid is rounded up to whole
# blocks, so some threads have no row.

# %%
@cuda.jit
def softmax_thread_per_row(x, out):
    r = cuda.grid(1)
    if r >= x.shape[0]:  # the last block may have spare threads
        return
    n = x.shape[1]
    m = -math.inf
    for j in range(n):
        m = max(m, x[r, j])
    z = 0.0
    for j in range(n):
        z += math.exp(x[r, j] - m)
    for j in range(n):
        out[r, j] = math.exp(x[r, j] - m) / z


def run_thread_per_row(x, threads=4):
    out = cuda.device_array_like(x)
    blocks = (x.shape[0] + threads - 1) // threads  # ceil(rows / threads)
    softmax_thread_per_row[blocks, threads](cuda.to_device(x), out)
    return out.copy_to_host()


check_softmax_kernel(run_thread_per_row, "CUDA thread-per-row softmax")

# %% [markdown]
# **Version 2, a block per row, with a reduction in shared memory.** Now the `BLOCK` threads of block
# $r$ share row $r$: thread $t$ handles elements $t, t + \text{BLOCK}, t + 2\,\text{BLOCK}, \dots$, so at
# each step neighbouring threads read neighbouring addresses (coalesced). Each thread gets a partial
# maximum; the block combines them with a **tree reduction** in shared memory: in round one, thread $t <
# \text{BLOCK}/2$ takes the max of slots $t$ and $t + \text{BLOCK}/2$, then the stride halves, until slot 0
# holds the row's maximum after $\log_2 \text{BLOCK}$ rounds. `cuda.syncthreads()` between rounds makes
# every write visible before anyone reads it — forget one and the result depends on timing (the simulator
# runs threads in a different order than a GPU, which often exposes such races). The sum is reduced the
# same way.
#
# `BLOCK` is tiny here (8) so that the simulator is quick; on a GPU one would use 128–1024.

# %%
BLOCK = 8  # threads per block; a power of two for the tree reduction


@cuda.jit
def softmax_block_per_row(x, out):
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    n = x.shape[1]
    buf = cuda.shared.array(BLOCK, numba.float64)  # one slot per thread, shared by the block

    m = -math.inf
    for j in range(t, n, BLOCK):  # strided: thread t reads t, t+BLOCK, ...
        m = max(m, x[r, j])
    buf[t] = m
    cuda.syncthreads()
    stride = BLOCK // 2
    while stride > 0:  # tree reduction: max
        if t < stride:
            buf[t] = max(buf[t], buf[t + stride])
        cuda.syncthreads()
        stride //= 2
    m = buf[0]
    cuda.syncthreads()  # everyone has read buf[0] before it is overwritten

    z = 0.0
    for j in range(t, n, BLOCK):
        z += math.exp(x[r, j] - m)
    buf[t] = z
    cuda.syncthreads()
    stride = BLOCK // 2
    while stride > 0:  # tree reduction: sum
        if t < stride:
            buf[t] += buf[t + stride]
        cuda.syncthreads()
        stride //= 2
    z = buf[0]

    for j in range(t, n, BLOCK):
        out[r, j] = math.exp(x[r, j] - m) / z


def run_block_per_row(x):
    out = cuda.device_array_like(x)
    softmax_block_per_row[x.shape[0], BLOCK](cuda.to_device(x), out)  # one block per row
    return out.copy_to_host()


check_softmax_kernel(run_block_per_row, "CUDA block-per-row softmax")

# %% [markdown]
# The library's CUDA softmax comes in the same progression (`kernels/cuda/softmax.py`): v1 a thread per
# row, v2 a block per row with shared-memory reductions, v3 the block-per-row *online* softmax, whose
# threads merge $(m, z)$ pairs with the rule of §3. They pass the same check:

# %%
from kernels.cuda import softmax as library_cuda_softmax  # noqa: E402

for version in (1, 2, 3):
    fn = getattr(library_cuda_softmax, f"softmax_v{version}")
    check_softmax_kernel(lambda a, fn=fn: fn(a, block_size=BLOCK), f"kernels.cuda softmax_v{version}")

# %% [markdown]
# ## 6. Tiling: a matrix multiply through shared memory
#
# In $C = AB$ each element of $A$ is used by every column of $C$, and each element of $B$ by every row.
# Reading them from global memory every time wastes bandwidth. A **tiled** kernel gives each block one
# $\text{TILE}\times\text{TILE}$ tile of $C$ (one thread per element). The block walks along the inner
# dimension in steps of TILE: all its threads together copy one tile of $A$ and one of $B$ into shared
# memory (each thread copies one element of each), synchronise, and then every thread does TILE
# multiply-adds from the fast shared copies. Each element loaded from global memory is reused TILE
# times. Out-of-range elements (sizes that are not multiples of TILE) are loaded as zeros, which adds
# nothing to the sums.
#
# `kernels/cuda/ffn.py` uses this kernel shape for the feed-forward network, with the bias and
# activation fused into the final write ("epilogue"). It puts the row blocks on the grid's x axis, which
# may hold $2^{31}-1$ blocks (y holds at most 65,535: too few rows of tiles for a long batch of tokens);
# here x counts columns, as in a picture of $C$. We also record which block wrote each element of $C$, to
# draw the grid.

# %%
TILE = 4


@cuda.jit
def matmul_tiled(a, b, c, owner):
    tile_a = cuda.shared.array((TILE, TILE), numba.float64)
    tile_b = cuda.shared.array((TILE, TILE), numba.float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    acc = 0.0
    for k0 in range(0, a.shape[1], TILE):
        # every thread loads one element of each tile (zero outside the matrices)
        tile_a[ty, tx] = a[row, k0 + tx] if row < a.shape[0] and k0 + tx < a.shape[1] else 0.0
        tile_b[ty, tx] = b[k0 + ty, col] if k0 + ty < b.shape[0] and col < b.shape[1] else 0.0
        cuda.syncthreads()  # the tiles are complete
        for k in range(TILE):
            acc += tile_a[ty, k] * tile_b[k, tx]
        cuda.syncthreads()  # everyone is done with the tiles before they are overwritten
    if row < c.shape[0] and col < c.shape[1]:
        c[row, col] = acc
        owner[row, col] = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x


def run_matmul_tiled(a, b, return_owner=False):
    c = cuda.device_array((a.shape[0], b.shape[1]), dtype=np.float64)
    owner = cuda.device_array((a.shape[0], b.shape[1]), dtype=np.int64)
    grid = ((b.shape[1] + TILE - 1) // TILE, (a.shape[0] + TILE - 1) // TILE)  # (x: columns, y: rows)
    matmul_tiled[grid, (TILE, TILE)](cuda.to_device(a), cuda.to_device(b), c, owner)
    return (c.copy_to_host(), owner.copy_to_host()) if return_owner else c.copy_to_host()


def check_matmul_kernel(impl, seed=0):
    """Raise AssertionError unless impl(a, b) = a @ b, on sizes that are not multiples of the tile."""
    r = np.random.default_rng(seed)
    for m, k, n in ((10, 7, 9), (3, 13, 5), (8, 8, 8)):
        a, b = r.normal(size=(m, k)), r.normal(size=(k, n))
        C.close(f"tiled matmul {m}x{k} @ {k}x{n} vs NumPy", impl(a, b), a @ b, atol=1e-12)


check_matmul_kernel(run_matmul_tiled)

# %%
a_demo, b_demo = np.ones((10, 7)), np.ones((7, 9))
_, owner = run_matmul_tiled(a_demo, b_demo, return_owner=True)
fig, ax = C.plt.subplots(figsize=(6, 5))
n_blocks = int(owner.max()) + 1
image = ax.imshow(owner, cmap=C.plt.get_cmap("tab10", n_blocks), vmin=-0.5, vmax=n_blocks - 0.5,
                  interpolation="nearest", aspect="equal")
fig.colorbar(image, ax=ax, ticks=range(n_blocks), label="block id = blockIdx.y · gridDim.x + blockIdx.x")
ax.grid(False)
for by in range(3):
    for bx in range(3):
        cx, cy = min(bx * TILE + 1.5, 8), min(by * TILE + 1.5, 9)
        ax.text(cx, cy, f"blockIdx\nx={bx}, y={by}", ha="center", va="center", fontsize=7)
for edge in range(TILE, 12, TILE):
    ax.axhline(edge - 0.5, color="k", lw=1)
    ax.axvline(edge - 0.5, color="k", lw=1)
ax.set(xlabel="column of C", ylabel="row of C",
       title=f"which block computes each element\n(C is 10×9, TILE = {TILE}: a 3×3 grid of 4×4 blocks)")
C.save(fig, CHAPTER, "matmul_tiles")

# %% [markdown]
# ## 7. On a real GPU
#
# Under the simulator, timings mean nothing (every thread is a Python thread). When this chapter runs on
# a machine with an NVIDIA GPU it also times the library's three CUDA softmax versions on large inputs
# and adds them to a chart; the NumPy reference stays the check.

# %%
if not SIMULATOR:
    x = np.random.default_rng(0).normal(size=(C.pick(8192, 2048), 1024)).astype(np.float32)
    d_x = cuda.to_device(x)
    gpu_times = {}
    for version in (1, 2, 3):
        fn = getattr(library_cuda_softmax, f"softmax_v{version}")
        C.close(f"GPU softmax_v{version}", fn(x), reference.softmax(x), atol=1e-6, rtol=1e-4)

        def launch(fn=fn):
            fn(d_x)
            cuda.synchronize()

        gpu_times[f"CUDA v{version}"] = best_time(launch)
    gpu_times["NumPy (CPU)"] = best_time(reference.softmax, x)
    fig, ax = C.plt.subplots(figsize=(6, 4))
    ax.bar(list(gpu_times), [t * 1e3 for t in gpu_times.values()])
    ax.set(ylabel="time (ms)", yscale="log", title=f"softmax of {x.shape} float32")
    C.save(fig, CHAPTER, "softmax_gpu_speed")
else:
    print("no GPU: skipping the GPU timings (the kernels were checked in the simulator above)")

# %% [markdown]
# ## Exercises
#
# 1. Delete one of the `cuda.syncthreads()` calls in `softmax_block_per_row` and run the check a few
#    times. Does it still pass in the simulator? Explain what could go wrong on a GPU.
# 2. Write a CUDA block-per-row *online* softmax: each thread keeps its own $(m, z)$ over its strided
#    elements, and the tree reduction merges pairs with `merge`. Check it with `check_softmax_kernel`,
#    then compare with `kernels/cuda/softmax.py`'s v3.
# 3. In `matmul_tiled`, how many times is each element of $A$ read from global memory for a
#    $M\times K$ by $K\times N$ product, as a function of TILE? And without tiling?
