"""Numba CPU kernels vs the NumPy reference, float32, in one run: every version in the CPU registries.

    python benchmarks/bench_kernels.py [--quick] [--one-thread]

1. Attention forward + backward, B=8, H=4, T=512, d_h=32, with a key padding mask, causal and not causal
   (the encoder's case; goal for both: >= 3x faster, peak extra memory O(B H T), not O(B H T^2)).
2. FFN forward + backward, 4096 tokens, D=256, F=1024, relu and gelu. Most of an FFN's time is its six
   matrix products, which the kernels leave to BLAS as the reference does, so the most any FFN kernel can
   gain is the GEMM ceiling: reference time / time of the six products alone ("GEMM only", timed in the same
   rounds). Printed: the speed-up and its share of that ceiling (goals: relu >= 90% of the ceiling,
   gelu >= 3x).
3. One token (N=1) through a SmolLM2 FFN matrix (O=1536, in=576) held as Q4_1 and as Q8_0: every quantised
   version against the reference (de-quantise, then one product) and against the float32 product with the
   matrix de-quantised beforehand ("float32 W"), the path a Q4_1 kernel must beat.

Every version registered in kernels.cpu's families (kernels/versions.py) is timed. ``--quick`` runs tiny
shapes (B=2 H=2 T=64 d_h=16; N=256 D=32 F=128): it checks that the script runs, it measures nothing.
Time: after a warm-up call of each, 15 rounds that call every contender once, the order rotated every
round, so that the machine's drift from minute to minute reaches all alike; printed are the median time of
each and the median of the 15 per-round ratios reference / contender (the speed-up).
``--one-thread``: BLAS and Numba on one thread each, every call timed by the process's CPU time instead of
the wall clock: the work each contender does, which other processes on a shared machine disturb far less
than they disturb two-thread wall times (a NumPy reference whose two BLAS threads wait on a descheduled
peer was measured 10-30x slower than alone).
Memory: growth of the peak resident set during one call (see kernels.compare.peak_extra_memory),
measured after all the timings.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ONE_THREAD = "--one-thread" in sys.argv[1:]
if ONE_THREAD:  # before NumPy and Numba start their thread pools
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = "1"
CLOCK = time.process_time if ONE_THREAD else time.perf_counter

from kernels import process_settings  # noqa: E402

process_settings.apply()  # before NumPy: minitx's process settings (kernels/process_settings.py)

import numpy as np  # noqa: E402

from kernels import reference  # noqa: E402
from kernels.compare import peak_extra_memory  # noqa: E402
from kernels.testing import attention_case, ffn_case, q4_1_case, q8_0_case, relative_error  # noqa: E402
from kernels.versions import families  # noqa: E402

ROUNDS = 15
MIB = 2**20


def attention(impl, c, causal):
    args = (c["q"], c["k"], c["v"])
    o, lse = impl.attention_forward(*args, c["key_padding_mask"], causal)
    return (o, lse) + tuple(impl.attention_backward(*args, o, lse, c["do"], c["key_padding_mask"], causal))


def ffn(impl, c, activation):
    params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
    y, h_pre = impl.ffn_forward(*params, activation)
    return (y, h_pre) + tuple(impl.ffn_backward(*params, h_pre, c["dy"], activation))


def ffn_gemms_only(c):
    """The six matrix products of an FFN forward + backward, nothing else: what no FFN kernel can avoid."""
    x, w1, w2, dy = c["x"], c["w1"], c["w2"], c["dy"]
    h = x @ w1.T             # (N, F)
    y = h @ w2.T             # (N, D)
    dh = dy @ w2             # (N, F)
    dw2 = dy.T @ h           # (D, F)
    dw1 = dh.T @ x           # (F, D)
    dx = dh @ w1             # (N, D)
    return y, dw2, dw1, dx


def rotated_times(runs, rounds):
    """{name: list of seconds} for every run in ``runs`` (name -> fn), each called once per round in an order
    rotated every round, after one warm-up call each."""
    for run in runs.values():
        run()   # warm-up: compilation, caches, first touch of memory
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in (order if r % 2 == 0 else order[::-1]):
            start = CLOCK()
            runs[name]()
            times[name].append(CLOCK() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks that the script runs")
    parser.add_argument("--one-thread", action="store_true", help="one thread each for BLAS and Numba; CPU time")
    quick = parser.parse_args().quick
    rng = np.random.default_rng(0)
    from _machine import machine

    print(machine())
    print("one thread each for BLAS and Numba, process CPU time" if ONE_THREAD else "wall-clock time, default threads")
    b, h, t, d = (2, 2, 64, 16) if quick else (8, 4, 512, 32)
    n, dm, ff = (256, 32, 128) if quick else (4096, 256, 1024)
    c = attention_case(rng, b, h, t, t, d, np.float32)
    print(f"O(B H T) = B*H*T*4 bytes = {b * h * t * 4 / MIB:.2f} MiB;  "
          f"one (B, H, T, T) float32 array = {b * h * t * t * 4 / MIB:.0f} MiB;  "
          f"inputs + outputs of fwd+bwd = {(8 * b * h * t * d + b * h * t) * 4 / MIB:.1f} MiB")
    f = ffn_case(rng, n, dm, ff, np.float32)
    cpu = families("cpu")
    cases = {}   # title -> {contender: fn}; the first contender is the reference
    for causal, label in ((True, "causal+padding"), (False, "padding only")):
        title = f"attention fwd+bwd {label} B={b} H={h} T={t} d_h={d}"
        cases[title] = {"numpy": lambda causal=causal: attention(reference, c, causal)}
        for v in cpu["attention"].values():
            cases[title][f"cpu {v.name}"] = lambda v=v, causal=causal: attention(v, c, causal)
    for activation in ("relu", "gelu"):
        title = f"ffn fwd+bwd {activation} N={n} D={dm} F={ff}"
        cases[title] = {"numpy": lambda a=activation: ffn(reference, f, a)}
        for v in cpu["ffn"].values():
            cases[title][f"cpu {v.name}"] = lambda v=v, a=activation: ffn(v, f, a)
        cases[title]["GEMM only"] = lambda: ffn_gemms_only(f)
    out_features, in_features = (64, 128) if quick else (1536, 576)
    q4, q8 = (make(rng, 1, out_features, in_features, np.float32) for make in (q4_1_case, q8_0_case))
    for kind, q, args, fn in (("q4_1", q4, ("x", "scale", "minimum", "packed"), "q4_1_linear"),
                              ("q8_0", q8, ("x", "scale", "quants"), "q8_0_linear")):
        title = f"{kind} x W^T N=1 O={out_features} in={in_features}"
        arrays = [q[a] for a in args]
        w = reference.q4_1_weights(*arrays[1:]) if kind == "q4_1" else \
            (q["scale"][..., None] * q["quants"]).reshape(out_features, -1).astype(np.float32)
        cases[title] = {"numpy": lambda fn=fn, arrays=arrays: (getattr(reference, fn)(*arrays),),
                        "float32 W": lambda x=q["x"], w=w: (x @ w.T,)}
        for v in cpu["quantized"].values():
            cases[title][f"cpu {v.name}"] = lambda v=v, fn=fn, arrays=arrays: (v.functions[fn](*arrays),)

    # Every timing first, with minitx's allocator setting: peak_extra_memory then switches glibc to one mmap
    # per large block, for the rest of the process.
    times = {title: rotated_times(runs, ROUNDS) for title, runs in cases.items()}
    for title, runs in cases.items():
        print(title)
        t_ref = times[title]["numpy"]
        ceiling = statistics.median(a / g for a, g in zip(t_ref, times[title].get("GEMM only", t_ref)))
        want = runs["numpy"]()
        for name, run in runs.items():
            seconds = times[title][name]
            ratio = statistics.median(a / s for a, s in zip(t_ref, seconds))
            line = f"  {name:10s} {statistics.median(seconds) * 1e3:8.1f} ms"
            if name == "GEMM only":
                print(f"{line}   GEMM ceiling {ceiling:.2f}x (reference / GEMM only, median per round)")
                continue
            line += f"   peak extra {peak_extra_memory(run) / MIB:7.1f} MiB"
            if name != "numpy":
                err = max(relative_error(g, w) for g, w in zip(run(), want))
                line += f"   speed-up {ratio:.2f}x"
                if "GEMM only" in runs:
                    line += f" ({ratio / ceiling:.0%} of the GEMM ceiling)"
                line += f"   max rel err {err:.1e}"
            print(line)


if __name__ == "__main__":
    main()
