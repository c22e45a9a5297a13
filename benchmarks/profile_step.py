"""Where a training step's time goes: time per op type (forward and backward), GEMM share, achieved GFLOP/s.

    python benchmarks/profile_step.py [--config encoder|gpt|both] [--steps N] [--fused default|on|off] [--quick]

The two configurations of benchmarks/bench_train_step.py (issue 17): the reference SequenceEncoder
(V=1000, D=128, H=4, F=512, L=4, T=128, B=16, post-norm ReLU) and a GPT (V=2000, D=256, H=8, F=1024, L=4,
T=256, B=8, pre-norm GELU, causal), one step = forward, cross-entropy, backward, AdamW step, zero_grad.

How: every ``Function`` subclass's ``forward`` and ``backward`` is wrapped with a timer for the run (the
wrappers are removed afterwards), keyed by the op's class name; the optimizer step is timed as a whole. What
no op accounts for (graph bookkeeping in ``Function.apply`` and ``Tensor.backward``, Python between ops) is
"other". The timers cost a few microseconds per call, so the profiled step is a little slower than an
unprofiled one.

GEMM: the matrix products of ``Linear`` and ``MatMul`` (forward: 2·M·K·N floating-point operations each;
backward: twice that, one product per input that needs a gradient) and those inside the fused FFN and attention
kernels (counted from their shapes; the fused ops also spend time on their elementwise work, which is in
their rows). "GEMM share" is the time of Linear + MatMul (+ the fused ops) over the step. The ceiling is
measured in the same run: the GFLOP/s of one large float32 product (1024 x 1024 x 1024) with the same BLAS
and thread count, i.e. what these cores can give a matrix product; achieved GFLOP/s are given against it.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import minitx.functional as F  # noqa: E402  (minitx first: its process settings come before NumPy's OpenBLAS)
import numpy as np  # noqa: E402
from minitx import optim  # noqa: E402
from minitx.tensor import Function  # noqa: E402
from bench_train_step import CONFIGS  # noqa: E402  (the same two configurations, built the same way)
from bench_train_step import minitx_model as build  # noqa: E402


# --------------------------------------------------------------------------------------------- the timers
def _all_functions():
    seen, todo = [], list(Function.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


def _matmul_flops(a_shape, b_shape) -> float:
    """2·M·K·N times the batch of one (…, M, K) @ (…, K, N) product."""
    m, k = (1, a_shape[-1]) if len(a_shape) == 1 else a_shape[-2:]
    n = 1 if len(b_shape) == 1 else b_shape[-1]
    batch = np.prod(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]), dtype=float)
    return 2.0 * batch * m * k * n


def forward_flops(name: str, arrays, kwargs) -> float:
    """GEMM floating-point operations of one forward call of op ``name`` (0 for ops without a product)."""
    if name == "Linear":
        x, w = arrays[0], arrays[1]
        return 2.0 * x.size / x.shape[-1] * w.shape[0] * w.shape[1]
    if name == "MatMul":
        return _matmul_flops(arrays[0].shape, arrays[1].shape)
    if name == "FusedFeedForward":
        x, w1 = arrays[0], arrays[1]
        return 2 * 2.0 * x.shape[0] * w1.shape[0] * w1.shape[1]
    if name == "FusedAttention":
        q, k = arrays[0], arrays[1]
        full = 2 * 2.0 * np.prod(q.shape[:-1], dtype=float) * k.shape[-2] * q.shape[-1]  # Q Kᵀ and P V
        return full / 2 if kwargs.get("causal") else full  # the tiles above the diagonal are skipped
    return 0.0


BACKWARD_FLOPS = {"Linear": 2.0, "MatMul": 2.0, "FusedFeedForward": 2.0, "FusedAttention": 2.5}  # x forward's
GEMM_OPS = tuple(BACKWARD_FLOPS)


class Profile:
    """Seconds and calls per (op, "forward" | "backward"), and GEMM flops per op."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.calls = collections.Counter()
        self.flops = collections.defaultdict(float)
        self.originals = []

    def install(self):
        for cls in _all_functions():
            for method in ("forward", "backward"):
                if method in cls.__dict__:
                    self.originals.append((cls, method, cls.__dict__[method]))
                    setattr(cls, method, self._timed(cls.__name__, method, cls.__dict__[method]))

    def remove(self):
        for cls, method, original in self.originals:
            setattr(cls, method, original)
        self.originals.clear()

    def _timed(self, name, method, original):
        profile = self

        def timed(fn, *args, **kwargs):
            start = time.perf_counter()
            out = original(fn, *args, **kwargs)
            profile.seconds[name, method] += time.perf_counter() - start
            profile.calls[name, method] += 1
            if method == "forward" and name in GEMM_OPS:
                flops = forward_flops(name, args, kwargs)
                fn._profile_flops = flops  # the backward's count is a multiple of it
                profile.flops[name] += flops
            elif method == "backward" and name in GEMM_OPS:
                profile.flops[name] += BACKWARD_FLOPS[name] * fn.__dict__.get("_profile_flops", 0.0)
            return out

        return timed


def gemm_ceiling(threads_note: str) -> float:
    """GFLOP/s of a 1024³ float32 product (best of 5): the practical peak of these cores for a GEMM."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    a @ a
    best = min(_time(lambda: a @ a) for _ in range(5))
    return 2 * 1024 ** 3 / best / 1e9


def _time(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ main
def profile_config(name: str, c: dict, steps: int, warmup: int, ceiling: float) -> None:
    model = build(name, c)
    model.train()
    opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, c["vocab"], size=(c["batch"], c["seq"]))
    targets = rng.integers(0, c["vocab"], size=(c["batch"], c["seq"]))

    def step(profile=None):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(ids), targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    for _ in range(warmup):
        step()
    profile = Profile()
    profile.install()
    try:
        parts = np.sum([step() for _ in range(steps)], axis=0) / steps  # forward, backward, optimizer
    finally:
        profile.remove()
    total = parts.sum()
    ms = lambda s: s / steps * 1e3  # noqa: E731 - seconds over the run -> ms per step
    print(f"\n== {name}: " + " ".join(f"{k}={v}" for k, v in c.items()) +
          f", fused kernels {'on' if F._use_fused else 'off'} (default setting), {steps} profiled steps")
    print(f"step {total * 1e3:.1f} ms: forward (with the loss) {parts[0] * 1e3:.1f}, backward {parts[1] * 1e3:.1f}, "
          f"AdamW step + zero_grad {parts[2] * 1e3:.1f}")
    ops = sorted({op for op, _ in profile.seconds}, key=lambda op: -(profile.seconds[op, "forward"]
                                                                      + profile.seconds[op, "backward"]))
    print("| op | forward ms | backward ms | calls/step | share of step | GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for op in ops:
        fwd, bwd = profile.seconds[op, "forward"], profile.seconds[op, "backward"]
        rate = f"{profile.flops[op] / (fwd + bwd) / 1e9:.0f}" if profile.flops[op] else ""
        print(f"| {op} | {ms(fwd):.2f} | {ms(bwd):.2f} | {profile.calls[op, 'forward'] // steps} | "
              f"{(fwd + bwd) / steps / total:.0%} | {rate} |")
    fwd_other = parts[0] - sum(profile.seconds[op, "forward"] for op in ops) / steps
    bwd_other = parts[1] - sum(profile.seconds[op, "backward"] for op in ops) / steps
    print(f"| other (graph, Python) | {fwd_other * 1e3:.2f} | {bwd_other * 1e3:.2f} | | "
          f"{(fwd_other + bwd_other) / total:.0%} | |")
    gemm_s = sum(profile.seconds[op, m] for op in GEMM_OPS for m in ("forward", "backward"))
    gemm_flops = sum(profile.flops.values())
    print(f"GEMM ops ({', '.join(GEMM_OPS)}): {ms(gemm_s):.1f} ms/step = {gemm_s / steps / total:.0%} of the step, "
          f"{gemm_flops / steps / 1e9:.2f} GFLOP/step at {gemm_flops / gemm_s / 1e9:.0f} GFLOP/s "
          f"= {gemm_flops / gemm_s / 1e9 / ceiling:.0%} of the ceiling; the whole step runs at "
          f"{gemm_flops / steps / total / 1e9:.0f} GFLOP/s ({gemm_flops / steps / total / 1e9 / ceiling:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=("encoder", "gpt", "both"), default="both")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps (default 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fused", choices=("default", "on", "off"), default="default",
                        help="minitx's fused kernels: the library's default, or forced on / off")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, 1 step")
    args = parser.parse_args()
    configs = CONFIGS if args.config == "both" else {args.config: CONFIGS[args.config]}
    if args.quick:
        configs = {k: dict(c, vocab=50, layers=1, seq=64, batch=2) for k, c in configs.items()}
        args.steps, args.warmup = 1, 1
    if args.fused != "default":
        F.set_fused_kernels(args.fused == "on")
    ceiling = gemm_ceiling("")
    from _machine import machine

    print(f"{machine()}\nnumpy {np.__version__}; GEMM ceiling (1024³ float32 "
          f"product, same BLAS and threads): {ceiling:.0f} GFLOP/s")
    for name, c in configs.items():
        profile_config(name, c, args.steps, args.warmup, ceiling)


if __name__ == "__main__":
    main()
