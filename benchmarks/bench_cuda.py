"""CUDA kernels vs CuPy and PyTorch on the GPU, float32, in one run. Needs a CUDA GPU and CuPy (PyTorch optional).

    python benchmarks/bench_cuda.py [--quick] [--repeats 20]

Every array lives on the GPU (CuPy arrays; the kernels of ``kernels.cuda`` take them in place and give CuPy
arrays back), and every time is the median over ``--repeats`` calls, each timed with CUDA events around it,
after two warm-up calls (compilation, cuBLAS handles, caches).

1. Attention, B=4 H=8 T=2048 d_h=64, causal + key padding: every ``kernels.cuda`` version (v1 naive, v2 flash)
   against the CuPy reference (``kernels.reference`` on CuPy arrays: the (B, H, T, T) scores through cuBLAS
   products and CuPy elementwise kernels; goal: v2 >= 2x faster) and against PyTorch's
   ``scaled_dot_product_attention`` with the same boolean mask, forward and forward + backward.
2. The FFN's matrix product, (N, D) x (F, D)^T with N=16384, D=1024, F=4096: the tiled shared-memory matmul
   of ``kernels/cuda/ffn.py`` (plain product, no epilogue) against ``cupy.matmul`` (cuBLAS; goal >= 40% of its
   speed). CuPy computes float32 products in full float32 unless CUPY_TF32=1 is set; the script reports
   which.
3. The whole FFN (gelu) forward + backward, ``kernels.cuda`` vs the CuPy reference.
4. One token (N=1) through a matrix held as Q4_1 and as Q8_0 (O=8192, in=2048): every ``kernels.cuda``
   quantised version against the CuPy reference (de-quantise, then cuBLAS) and against the float32 product
   with the matrix de-quantised beforehand ("float32 W", cuBLAS), the path a Q4_1 kernel must beat.

Errors are ``kernels.testing.relative_error`` against the CuPy reference. ``--quick`` runs small shapes: it
checks that the script runs on a GPU, it measures nothing. Without a GPU or CuPy the script says so and
exits with status 2.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import process_settings  # noqa: E402

process_settings.apply()  # before NumPy: minitx's process settings (kernels/process_settings.py)

import numpy as np  # noqa: E402
from numba import config, cuda  # noqa: E402

from kernels import reference  # noqa: E402
from kernels.testing import attention_case, ffn_case, q4_1_case, q8_0_case, relative_error  # noqa: E402


def gpu_seconds(cupy, fn, repeats):
    """Median seconds of fn() over ``repeats`` calls, each between two CUDA events, after 2 warm-up calls."""
    fn(), fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)  # ms -> s
    return statistics.median(times)


def error(cupy, got, want):
    """Worst relative_error over matching outputs, computed on the host."""
    return max(relative_error(cupy.asnumpy(g), cupy.asnumpy(w)) for g, w in zip(got, want))


def attention_rows(cupy, torch, shape, repeats):
    """(benchmark, implementation, seconds, speed-up over the CuPy reference, error) for attention forward and
    forward + backward, causal, with right padding: each sequence keeps between 3/4 of T and T real keys."""
    from kernels.cuda import attention

    b, h, t, d = shape
    rng = np.random.default_rng(0)
    c = {k: cupy.asarray(v) for k, v in attention_case(rng, b, h, t, t, d, np.float32, padding=False).items()
         if v is not None}
    q, k, v, do = c["q"], c["k"], c["v"], c["do"]
    lengths = rng.integers(3 * t // 4, t + 1, size=b)
    pad = cupy.asarray(np.arange(t)[None, :] >= lengths[:, None])        # (B, T), True = padded key

    def forward_backward(fwd, bwd):
        def run():
            o, lse = fwd(q, k, v, pad, True)
            return (o, lse) + tuple(bwd(q, k, v, o, lse, do, pad, True))
        return run

    variants = {
        "forward": {"CuPy reference": lambda: reference.attention_forward(q, k, v, pad, True)},
        "forward+backward": {
            "CuPy reference": forward_backward(reference.attention_forward, reference.attention_backward)},
    }
    for version in attention.VERSIONS.values():   # every registered version (kernels/versions.py)
        variants["forward"][f"kernels.cuda {version.name}"] = (
            lambda fwd=version.attention_forward: fwd(q, k, v, pad, True))
        variants["forward+backward"][f"kernels.cuda {version.name}"] = forward_backward(
            version.attention_forward, version.attention_backward)
    if torch is not None:   # the same function: the boolean mask allows what ours does not hide
        tq, tk, tv, tdo = (torch.from_dlpack(a) for a in (q, k, v, do))
        future = torch.ones(t, t, dtype=torch.bool, device=tq.device).triu(1)
        padded = torch.from_dlpack(pad.astype(cupy.uint8)).bool()
        allowed = ~(padded[:, None, None, :] | future)                        # (B, 1, T, T)

        def torch_forward():   # -> (o,): torch has no lse
            return (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=allowed),)

        def torch_forward_backward():   # -> (o, dq, dk, dv)
            qq, kk, vv = (a.detach().requires_grad_() for a in (tq, tk, tv))
            o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, attn_mask=allowed)
            o.backward(tdo)
            return o.detach(), qq.grad, kk.grad, vv.grad

        variants["forward"]["torch SDPA"] = torch_forward
        variants["forward+backward"]["torch SDPA"] = torch_forward_backward

    rows = []
    for kind, runs in variants.items():
        want = runs["CuPy reference"]()
        base = None
        for name, run in runs.items():
            seconds = gpu_seconds(cupy, run, repeats)
            base = seconds if base is None else base
            if name == "torch SDPA":   # compare o (and dq, dk, dv), skipping our lse
                got = [cupy.from_dlpack(x) for x in run()]
                err = error(cupy, got, [want[0]] + list(want[2:]))
            else:
                err = error(cupy, run(), want)
            rows.append((f"attention {kind} B{b} H{h} T{t} D{d}", name, seconds, base / seconds, err))
    return rows


def matmul_rows(cupy, shape, repeats):
    """The tiled matmul of kernels/cuda/ffn.py vs cupy.matmul for x W^T, x (N, D), W (F, D)."""
    from kernels.cuda import ffn

    n, d, f = shape
    rng = np.random.default_rng(1)
    x = cupy.asarray(rng.standard_normal((n, d)).astype(np.float32))
    w = cupy.asarray((rng.standard_normal((f, d)) / np.sqrt(d)).astype(np.float32))
    tile = 16
    runs = {"cupy.matmul": lambda: x @ w.T,
            f"kernels.cuda tiled matmul (tile {tile})": lambda: cupy.asarray(ffn._matmul(x, w, tile, trans_b=True))}
    want = (runs["cupy.matmul"](),)
    rows, base = [], None
    for name, run in runs.items():
        seconds = gpu_seconds(cupy, run, repeats)
        base = seconds if base is None else base
        rows.append((f"matmul x W^T N{n} D{d} F{f}", name, seconds, base / seconds, error(cupy, (run(),), want)))
    flops = 2 * n * d * f
    return rows, {name: flops / seconds / 1e12 for _, name, seconds, _, _ in rows}


def ffn_rows(cupy, shape, repeats):
    """FFN (gelu) forward + backward: every registered kernels.cuda version vs the CuPy reference."""
    from kernels.cuda import ffn

    n, d, f = shape
    c = {k: cupy.asarray(v) for k, v in ffn_case(np.random.default_rng(2), n, d, f, np.float32).items()}
    params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])

    def forward_backward(module):
        def run():
            y, h_pre = module.ffn_forward(*params, "gelu")
            return (y, h_pre) + tuple(module.ffn_backward(*params, h_pre, c["dy"], "gelu"))
        return run

    runs = {"CuPy reference": forward_backward(reference)}
    runs.update({f"kernels.cuda ffn {v.name}": forward_backward(v) for v in ffn.VERSIONS.values()})
    want = runs["CuPy reference"]()
    rows, base = [], None
    for name, run in runs.items():
        seconds = gpu_seconds(cupy, run, repeats)
        base = seconds if base is None else base
        rows.append((f"ffn gelu fwd+bwd N{n} D{d} F{f}", name, seconds, base / seconds, error(cupy, run(), want)))
    return rows


def quantized_rows(cupy, shape, repeats):
    """One row x times W held as Q4_1 / Q8_0: every registered kernels.cuda version vs the CuPy reference and
    the float32 product with W de-quantised beforehand."""
    from kernels.cuda import quantized

    n, o, i = shape
    rng = np.random.default_rng(3)
    rows = []
    for kind, make, names in (("q4_1", q4_1_case, ("x", "scale", "minimum", "packed")),
                              ("q8_0", q8_0_case, ("x", "scale", "quants"))):
        arrays = [cupy.asarray(a) for a in (make(rng, n, o, i, np.float32)[name] for name in names)]
        fn = f"{kind}_linear"
        w = (reference.q4_1_weights(*arrays[1:]) if kind == "q4_1" else
             (arrays[1][..., None] * arrays[2].astype(cupy.float32)).reshape(o, -1))   # (O, in) float32
        runs = {"CuPy reference": lambda fn=fn, arrays=arrays: (getattr(reference, fn)(*arrays),),
                "float32 W (cuBLAS)": lambda x=arrays[0], w=w: (x @ w.T,)}
        runs.update({f"kernels.cuda {kind} {v.name}": (lambda v=v, fn=fn, arrays=arrays: (v.functions[fn](*arrays),))
                     for v in quantized.VERSIONS.values()})
        want = runs["CuPy reference"]()
        base = None
        for name, run in runs.items():
            seconds = gpu_seconds(cupy, run, repeats)
            base = seconds if base is None else base
            rows.append((f"{kind} x W^T N{n} O{o} in{i}", name, seconds, base / seconds, error(cupy, run(), want)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: checks that the script runs")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (median)")
    args = parser.parse_args()
    try:
        import cupy
    except ImportError:
        cupy = None
    if config.ENABLE_CUDASIM or not cuda.is_available() or cupy is None:
        print("bench_cuda.py needs a CUDA GPU (not Numba's simulator) and CuPy; nothing was measured",
              file=sys.stderr)
        return 2
    try:
        import torch
        torch = torch if torch.cuda.is_available() else None
    except ImportError:
        torch = None

    attn = (2, 2, 128, 64) if args.quick else (4, 8, 2048, 64)
    mm = (256, 128, 512) if args.quick else (16384, 1024, 4096)
    ffn_shape = (256, 64, 256) if args.quick else (8192, 1024, 4096)
    quantized_shape = (1, 256, 128) if args.quick else (1, 8192, 2048)
    print(f"GPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}; CuPy {cupy.__version__}, "
          f"torch {torch.__version__ if torch else 'not available'}; CUPY_TF32={os.environ.get('CUPY_TF32', '0')}")
    rows = attention_rows(cupy, torch, attn, args.repeats)
    mm_rows, tflops = matmul_rows(cupy, mm, args.repeats)
    rows += mm_rows + ffn_rows(cupy, ffn_shape, args.repeats) + quantized_rows(cupy, quantized_shape, args.repeats)
    print(f"\n{'benchmark':42s} {'implementation':34s} {'ms':>9s} {'speed-up':>9s} {'rel err':>9s}")
    for bench, name, seconds, speedup, err in rows:
        print(f"{bench:42s} {name:34s} {seconds * 1e3:9.3f} {speedup:8.2f}x {err:9.1e}")
    print("(speed-up: over the first implementation of each benchmark)")
    print("matmul TFLOP/s: " + ", ".join(f"{name} {rate:.1f}" for name, rate in tflops.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
