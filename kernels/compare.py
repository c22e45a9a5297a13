"""Compare every kernel across backends: error, time, speed-up and peak extra memory.

    python -m kernels.compare [--quick] [--repeats N] [--out DIR]

Backends: ``numpy`` (kernels.reference, the baseline), every version of every
kernel family in the registries (kernels/versions.py) of ``cpu`` (kernels.cpu,
Numba) and ``cuda`` (kernels.cuda, numba.cuda; only when a GPU is available),
labelled like ``cpu v1`` or ``cuda v3``, and ``torch`` (torch.softmax and
scaled_dot_product_attention, forward only; only when torch is importable).
The quantised products (Q4_1, Q8_0: one token through a matrix) have no torch
row; their NumPy reference de-quantises the matrix on every call.

Columns
-------
* max abs err / rel err: against the NumPy reference on the same float32
  inputs, over all outputs of the kernel (rel err = max |err| / max |ref|).
* time: median wall-clock time of ``--repeats`` calls after one warm-up call.
  CUDA times include the host <-> device copies (NumPy in, NumPy out).
* speed-up: NumPy time / backend time.
* peak extra memory: growth of the process's peak resident set size during one
  call (Linux: the peak is reset through /proc/self/clear_refs, and glibc is
  told to serve every allocation of 64 KiB or more with its own mmap so that
  freed memory leaves the resident set). Host memory only; n/a for CUDA.
  Measured after all the timings, which run with minitx's process settings
  (kernels/process_settings.py, applied when this tool starts unless
  MINITX_TUNE=0), before peak_extra_memory switches glibc to one mmap per
  large block.

``--out DIR`` also writes DIR/kernels_speedup.png, a bar chart of the speed-ups.
"""
import argparse
import ctypes
import gc
import os
import statistics
import sys
import time

from kernels import process_settings

process_settings.apply()  # before NumPy starts its threads (see kernels/process_settings.py)

import numpy as np  # noqa: E402

from kernels import reference  # noqa: E402
from kernels.process_settings import M_MMAP_THRESHOLD  # noqa: E402
from kernels.testing import (attention_case, ffn_case, max_abs_error, q4_1_case, q8_0_case,  # noqa: E402
                             relative_error)
from kernels.versions import families  # noqa: E402


def _use_mmap_for_large_allocations(threshold=64 * 1024):
    """Make glibc mmap every allocation >= threshold, so that freeing it shrinks the resident set.

    Also hands the heap's free memory back to the system, so that earlier frees cannot serve the next
    allocations unseen. The setting stays for the rest of the process and slows large allocations down
    (each new block page-faults), which is why timings are taken before any memory measurement.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, threshold)
    libc.malloc_trim(0)


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_extra_memory(fn):
    """Bytes by which the peak resident set grows while fn() runs, or None where it cannot be measured.

    Call it after the timings: it switches glibc to one mmap per large block for good.
    """
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    gc.collect()
    _use_mmap_for_large_allocations()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def median_time(fn, repeats):
    """Median wall-clock seconds of ``repeats`` calls of fn(), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- kernels
# Each kernel maps a backend module to a function of one input case
# returning the tuple of outputs that are compared.


def _softmax(backend):
    return lambda c: (backend.softmax(c["q"], 0.5, c["mask"]),)


def _attention_fwd(backend):
    return lambda c: backend.attention_forward(c["q"], c["k"], c["v"], c["key_padding_mask"], True)


def _attention_fwd_bwd(backend):
    def run(c):
        o, lse = backend.attention_forward(c["q"], c["k"], c["v"], c["key_padding_mask"], True)
        return (o,) + tuple(backend.attention_backward(c["q"], c["k"], c["v"], o, lse, c["do"],
                                                       c["key_padding_mask"], True))
    return run


def _ffn_fwd_bwd(backend):
    def run(c):
        params = (c["x"], c["w1"], c["b1"], c["w2"], c["b2"])
        y, h_pre = backend.ffn_forward(*params, "gelu")
        return (y,) + tuple(backend.ffn_backward(*params, h_pre, c["dy"], "gelu"))
    return run


def _q4_1_linear(backend):
    return lambda c: (backend.q4_1_linear(c["x"], c["scale"], c["minimum"], c["packed"]),)


def _q8_0_linear(backend):
    return lambda c: (backend.q8_0_linear(c["x"], c["scale"], c["quants"]),)


class _TorchBackend:
    """torch.softmax and scaled_dot_product_attention (forward only), on the CPU."""

    def __init__(self, torch):
        self.torch = torch

    def softmax(self, x, scale, mask):
        t = self.torch.from_numpy(x) * scale
        return self.torch.softmax(t.masked_fill(self.torch.from_numpy(mask), -float("inf")), -1).numpy()

    def attention_forward(self, q, k, v, key_padding_mask, causal):
        torch = self.torch
        tq, tk = q.shape[2], k.shape[2]
        future = torch.ones(tq, tk, dtype=torch.bool).triu(tk - tq + 1) if causal else torch.zeros(tq, tk, dtype=torch.bool)
        allowed = ~(torch.from_numpy(key_padding_mask)[:, None, None, :] | future)  # (B, 1, Tq, Tk)
        o = torch.nn.functional.scaled_dot_product_attention(
            torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), attn_mask=allowed)
        return (torch.nan_to_num(o).numpy(),)   # torch gives NaN on fully masked rows; ours are 0


def _backends():
    """{label: {family: implementation}}: the NumPy reference, every registered CPU and (on a GPU) CUDA version,
    and torch where it is installed. An implementation has the reference's function names."""
    backends = {"numpy": {family: reference for family in ("softmax", "attention", "ffn", "quantized")}}
    from numba import config, cuda
    names = ["cpu"] + (["cuda"] if cuda.is_available() and not config.ENABLE_CUDASIM else [])  # the simulator
    for name in names:                                                     # counts as available: excluded
        for family, versions in families(name).items():
            for version in versions.values():
                backends.setdefault(f"{name} {version.name}", {})[family] = version
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        backends["torch"] = dict.fromkeys(("softmax", "attention"), _TorchBackend(torch))
    return backends


def _cases(quick):
    """(kernel name, family, shape label, case builder, kernel factory, forward only)."""
    if quick:
        attn_shapes = [(2, 2, 64, 16)]
        ffn_shapes = [(256, 32, 128)]
        softmax_shapes = [(2, 4, 64, 128)]
        quantized_shapes = [(1, 64, 128)]
    else:
        attn_shapes = [(8, 4, 256, 32), (8, 4, 512, 32)]
        ffn_shapes = [(1024, 128, 512), (4096, 256, 1024)]
        softmax_shapes = [(8, 4, 512, 512)]
        quantized_shapes = [(1, 1536, 576), (1, 576, 1536)]   # one token through SmolLM2's FFN matrices
    cases = []
    for shape in softmax_shapes:
        def build(rng, shape=shape):
            x = rng.standard_normal(shape).astype(np.float32)
            return {"q": x, "mask": rng.random(shape[:-2] + (1, shape[-1])) < 0.2}
        cases.append(("softmax", "softmax", "x" + "x".join(map(str, shape)), build, _softmax, True))
    for b, h, t, d in attn_shapes:
        def build(rng, b=b, h=h, t=t, d=d):
            return attention_case(rng, b, h, t, t, d, np.float32)
        label = f"B{b} H{h} T{t} D{d}"
        cases.append(("attention fwd", "attention", label, build, _attention_fwd, True))
        cases.append(("attention fwd+bwd", "attention", label, build, _attention_fwd_bwd, False))
    for n, d, f in ffn_shapes:
        def build(rng, n=n, d=d, f=f):
            return ffn_case(rng, n, d, f, np.float32)
        cases.append(("ffn gelu fwd+bwd", "ffn", f"N{n} D{d} F{f}", build, _ffn_fwd_bwd, False))
    for n, o, i in quantized_shapes:
        label = f"N{n} O{o} in{i}"
        cases.append(("q4_1 x W^T", "quantized", label,
                      lambda rng, n=n, o=o, i=i: q4_1_case(rng, n, o, i, np.float32), _q4_1_linear, True))
        cases.append(("q8_0 x W^T", "quantized", label,
                      lambda rng, n=n, o=o, i=i: q8_0_case(rng, n, o, i, np.float32), _q8_0_linear, True))
    return cases


def _errors(got, want):
    abs_err = max(max_abs_error(g, w) for g, w in zip(got, want))
    rel_err = max(relative_error(g, w) for g, w in zip(got, want))
    return abs_err, rel_err


def run(quick=False, repeats=5):
    """Measure every (kernel, shape, backend); returns a list of row dicts."""
    backends = _backends()
    rng = np.random.default_rng(0)
    rows, memory_calls = [], []
    for kernel, family, label, build, factory, forward_only in _cases(quick):
        case = build(rng)
        want = factory(reference)(case)
        base_time = None
        for name, implementations in backends.items():
            if family not in implementations or (name == "torch" and not forward_only):
                continue
            fn = factory(implementations[family])
            got = fn(case)                                   # also the warm-up / compilation
            abs_err, rel_err = _errors(got, want[:len(got)])
            seconds = median_time(lambda: fn(case), repeats)
            base_time = seconds if name == "numpy" else base_time
            rows.append({"kernel": kernel, "shape": label, "backend": name, "max_abs_err": abs_err,
                         "rel_err": rel_err, "seconds": seconds, "speedup": base_time / seconds,
                         "peak_bytes": None})
            if not name.startswith("cuda"):
                memory_calls.append((rows[-1], lambda fn=fn, case=case: fn(case)))
    for row, call in memory_calls:                           # after every timing (see peak_extra_memory)
        row["peak_bytes"] = peak_extra_memory(call)
    return rows


def format_table(rows):
    header = f"{'kernel':20s} {'shape':18s} {'backend':11s} {'max abs err':>11s} {'rel err':>9s} " \
             f"{'time ms':>9s} {'speed-up':>8s} {'peak extra MiB':>14s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        memory = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        lines.append(f"{r['kernel']:20s} {r['shape']:18s} {r['backend']:11s} {r['max_abs_err']:11.2e} "
                     f"{r['rel_err']:9.2e} {r['seconds'] * 1e3:9.2f} {r['speedup']:7.2f}x {memory:>14s}")
    return "\n".join(lines)


def plot(rows, path):
    """Grouped bar chart of speed-up over NumPy, one group per (kernel, shape)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["kernel"], r["shape"]) for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
    for n, backend in enumerate(backends):
        speedups = {(r["kernel"], r["shape"]): r["speedup"] for r in rows if r["backend"] == backend}
        xs = [g + n * width for g, key in enumerate(groups) if key in speedups]
        ax.bar(xs, [speedups[key] for key in groups if key in speedups], width, label=backend)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{k}\n{s}" for k, s in groups], fontsize=7)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("speed-up over NumPy reference (x)")
    ax.set_xlabel("kernel and shape (float32)")
    ax.set_title("minitx kernels: speed-up over NumPy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv=None, prog="python -m kernels.compare"):
    """The command line; ``prog`` is the name its usage line shows (``minitx compare-kernels`` from the CLI)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--out", help="directory for kernels_speedup.png")
    args = parser.parse_args(argv)
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):  # refused before minutes of work
        parser.error(f"argument --out: {args.out} exists and is not a directory")
    rows = run(quick=args.quick, repeats=args.repeats)
    print(format_table(rows))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "kernels_speedup.png")
        plot(rows, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
