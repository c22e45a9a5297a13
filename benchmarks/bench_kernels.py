"""Numba CPU kernels vs the NumPy reference, float32, in one run.

    python benchmarks/bench_kernels.py [--quick]

1. Attention forward + backward, B=8, H=4, T=512, d_h=32, causal, with a key
   padding mask (goal: >= 3x faster, peak extra memory O(B H T), not O(B H T^2)).
2. FFN forward + backward, 4096 tokens, D=256, F=1024, relu and gelu
   (goal: >= 1.3x faster).

``--quick`` runs tiny shapes (B=2 H=2 T=64 d_h=16; N=256 D=32 F=128): it checks that the script runs, it
measures nothing. Time: after a warm-up call of each, 15 rounds that call the reference and the kernel
once each, the order flipped every round, so that the machine's drift from minute to minute reaches both
alike; printed are the median of each and the median of the 15 per-round ratios (the speed-up).
Memory: growth of the peak resident set during one call (see kernels.compare.peak_extra_memory),
measured after all the timings.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402, F401  (before NumPy: its thread settings, see kernels/__init__.py)
import numpy as np  # noqa: E402

from kernels import cpu, reference  # noqa: E402
from kernels.compare import peak_extra_memory  # noqa: E402
from kernels.testing import attention_case, ffn_case, relative_error  # noqa: E402

ROUNDS = 15
MIB = 2**20


def attention(backend, c):
    args = (c["q"], c["k"], c["v"])
    o, lse = backend.attention_forward(*args, c["key_padding_mask"], True)
    return (o, lse) + tuple(backend.attention_backward(*args, o, lse, c["do"], c["key_padding_mask"], True))


def ffn(backend, c, activation):
    params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
    y, h_pre = backend.ffn_forward(*params, activation)
    return (y, h_pre) + tuple(backend.ffn_backward(*params, h_pre, c["dy"], activation))


def paired_times(run_ref, run_cpu, rounds):
    """(median seconds of run_ref, of run_cpu, median of the per-round ratios ref / cpu)."""
    run_ref(), run_cpu()  # warm-up: compilation, caches, first-touch of memory
    t_ref, t_cpu = [], []
    pair = ((run_ref, t_ref), (run_cpu, t_cpu))
    for r in range(rounds):
        for run, times in (pair if r % 2 == 0 else pair[::-1]):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(t_ref, t_cpu)]
    return statistics.median(t_ref), statistics.median(t_cpu), statistics.median(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks that the script runs")
    quick = parser.parse_args().quick
    rng = np.random.default_rng(0)
    b, h, t, d = (2, 2, 64, 16) if quick else (8, 4, 512, 32)
    n, dm, ff = (256, 32, 128) if quick else (4096, 256, 1024)
    c = attention_case(rng, b, h, t, t, d, np.float32)
    print(f"O(B H T) = B*H*T*4 bytes = {b * h * t * 4 / MIB:.2f} MiB;  "
          f"one (B, H, T, T) float32 array = {b * h * t * t * 4 / MIB:.0f} MiB;  "
          f"inputs + outputs of fwd+bwd = {(8 * b * h * t * d + b * h * t) * 4 / MIB:.1f} MiB")
    f = ffn_case(rng, n, dm, ff, np.float32)
    cases = {f"attention fwd+bwd causal+padding B={b} H={h} T={t} d_h={d}":
             (lambda: attention(reference, c), lambda: attention(cpu, c))}
    for activation in ("relu", "gelu"):
        cases[f"ffn fwd+bwd {activation} N={n} D={dm} F={ff}"] = (
            lambda a=activation: ffn(reference, f, a), lambda a=activation: ffn(cpu, f, a))

    # Every timing first, with minitx's allocator setting (made by `import kernels`, see kernels/__init__.py):
    # peak_extra_memory then switches glibc to one mmap per large block, for the rest of the process.
    times = {title: paired_times(*runs, ROUNDS) for title, runs in cases.items()}
    for title, (run_ref, run_cpu) in cases.items():
        err = max(relative_error(g, w) for g, w in zip(run_cpu(), run_ref()))
        (t_ref, t_cpu, ratio), (m_ref, m_cpu) = times[title], (peak_extra_memory(run_ref), peak_extra_memory(run_cpu))
        print(f"{title}\n  numpy     {t_ref * 1e3:8.1f} ms   peak extra {m_ref / MIB:7.1f} MiB"
              f"\n  numba-cpu {t_cpu * 1e3:8.1f} ms   peak extra {m_cpu / MIB:7.1f} MiB"
              f"\n  speed-up {ratio:.2f}x (median per round; ratio of the medians {t_ref / t_cpu:.2f}x)"
              f"   max rel err {err:.1e}")


if __name__ == "__main__":
    main()
