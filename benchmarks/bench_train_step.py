"""One training step of minitx vs the same model in PyTorch, float32, CPU, in one run: two configurations.

    python benchmarks/bench_train_step.py [--config encoder|gpt|both] [--fused default|on|off|all]
                                          [--steps N] [--repeats R] [--quick]

Configurations (issue 17), dropout 0, AdamW(lr=1e-3, weight_decay=1e-2):

* ``encoder``, the reference: minitx's SequenceEncoder, vocabulary V=1000, width D=128, H=4 heads, FFN width
  F=512, L=4 post-norm ReLU encoder layers, sequences of T=128 tokens, batches of B=16. The PyTorch model is
  the seed's: embedding · √D + sinusoidal positions, ``nn.TransformerEncoder`` (post-norm, ReLU,
  batch_first) and a Linear head.
* ``gpt``: minitx's GPT, pre-norm, exact GELU, causal, V=2000, D=256, H=8, F=1024, L=4, T=256, B=8. The
  PyTorch model: token + learned position embeddings, ``nn.TransformerEncoder`` of pre-norm GELU layers
  with a causal mask, a final LayerNorm and the token table as the output matrix (tied weights).

Each PyTorch model holds a copy of minitx's initial weights. A training step is the whole loop body

    logits = model(ids)                          (B, T, V)
    loss = cross_entropy(logits, targets)        mean over the B·T positions
    loss.backward();  optimizer.step();  optimizer.zero_grad()

Before timing, the first-step losses (and the losses after one AdamW step each) of the two are printed with
their difference, so the timing compares two programs that compute the same thing.

minitx runs with its default settings (what a user gets without flags: the fused kernels, see
``minitx.functional.set_fused_kernels``); ``--fused off`` times the composed path instead, ``--fused all``
both next to the default.

Timing: ``--warmup`` steps of each model, then ``--repeats`` rounds; each round times ``--steps`` steps of
minitx and ``--steps`` steps of PyTorch, back to back (the order flipping every round), so that load from
other processes hits both alike. Reported: the median ms/step of each over the rounds, and the ratio
minitx / PyTorch as the median of the per-round ratios (on a shared machine whose load drifts during the run,
pairing each minitx time with the PyTorch time measured next to it is steadier than dividing the two
medians, which is printed too). PyTorch runs with ``torch.set_num_threads(--threads)``.

Memory: each library's peak is measured in a fresh child process of its own (peaks cannot be told apart in
one process): the child builds the model, the data and the optimizer, notes its resident size, runs
``--warmup`` + 1 steps and reports the peak resident size (Linux's VmHWM) minus that baseline, i.e. the
memory the training steps added (gradients, optimizer moments, activations and temporaries, and what the
allocator keeps for reuse). The minitx child also reports the peak of NumPy's own allocations during one
step, from ``tracemalloc`` (NumPy reports its array buffers to it), which excludes allocator slack.

Threads: ``--threads`` (default 2) for both libraries. Before anything is imported, ``OMP_WAIT_POLICY`` is
set to ``passive`` and ``OPENBLAS_THREAD_TIMEOUT`` to 4, minitx's own settings (``kernels/process_settings.py``),
for every runtime in the process (``--wait-policy ''`` leaves each runtime's default, as when NumPy and
torch are imported before minitx): idle OpenMP and OpenBLAS workers otherwise keep spinning after each
parallel region and take the cores from whatever runs next, and minitx's settings come too late for a
runtime that has already started. Passive waiting costs PyTorch some time too, so benchmarks/RESULTS.md
records both settings. ``--import-first minitx|torch`` picks which library is imported first (torch first
is the case where torch's OpenMP runtime is the one Numba's kernels then use). minitx's import also makes
glibc keep freed memory for reuse (kernels/process_settings.py); that holds for the whole process, PyTorch
included.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tutorials")]  # the seed's PyTorch model is chapter 07's

GOAL = 0.9  # issue 17: a minitx step takes at most 0.9x PyTorch eager's
CONFIGS = {
    "encoder": dict(vocab=1000, dim=128, heads=4, ff=512, layers=4, seq=128, batch=16),
    "gpt": dict(vocab=2000, dim=256, heads=8, ff=1024, layers=4, seq=256, batch=8),
}


# ------------------------------------------------------------------------------------------ the models
def minitx_model(name: str, c: dict):
    import minitx
    from minitx.models import GPT, GPTConfig, SequenceEncoder

    minitx.manual_seed(0)
    if name == "encoder":
        return SequenceEncoder(c["vocab"], c["dim"], c["heads"], c["ff"], c["layers"], drop_rate=0.0, max_len=1024)
    return GPT(GPTConfig(vocab_size=c["vocab"], max_len=c["seq"], d_model=c["dim"], num_heads=c["heads"],
                         num_layers=c["layers"], dim_feedforward=c["ff"], dropout=0.0, activation="gelu"))


def torch_gpt(model, torch):
    """A PyTorch GPT with minitx ``model``'s weights: pre-norm GELU ``nn.TransformerEncoderLayer``\\ s, causal
    (GELU exact or tanh-approximated, as the model's config says); forward(ids (B, T)) -> logits (B, T, V).
    benchmarks/data_parallel_rounding.py uses it too."""
    from _common import copy_into_torch_layer  # tutorials/_common.py (on sys.path above)

    nn, cfg = torch.nn, model.config
    if cfg.activation not in ("gelu", "gelu_tanh"):
        raise ValueError(f"torch_gpt: activation {cfg.activation!r} has no PyTorch twin here")
    gelu = "gelu" if cfg.activation == "gelu" else lambda x: torch.nn.functional.gelu(x, approximate="tanh")

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.wpe = nn.Parameter(torch.zeros(cfg.max_len, cfg.d_model))
            layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.num_heads, cfg.dim_feedforward, dropout=0.0,
                                               activation=gelu, batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
            self.ln_f = nn.LayerNorm(cfg.d_model)

        def forward(self, ids):  # (B, T) -> (B, T, V)
            steps = ids.shape[1]
            causal = nn.Transformer.generate_square_subsequent_mask(steps)
            h = self.blocks(self.wte(ids) + self.wpe[:steps], mask=causal, is_causal=True)
            return self.ln_f(h) @ self.wte.weight.T

    theirs = TorchGPT()
    w = lambda p: torch.tensor(p.numpy())  # noqa: E731
    with torch.no_grad():
        theirs.wte.weight.copy_(w(model.wte.weight))
        theirs.wpe.copy_(w(model.wpe.weight))
        theirs.ln_f.weight.copy_(w(model.ln_f.weight)), theirs.ln_f.bias.copy_(w(model.ln_f.bias))
        for ours, layer in zip(model.blocks, theirs.blocks.layers):
            copy_into_torch_layer(layer, ours.attn, ours.mlp, (ours.ln_1, ours.ln_2), w, torch)
    return theirs


def torch_model(name: str, ours, torch):
    if name == "encoder":
        from _common import torch_sequence_encoder

        return torch_sequence_encoder(ours, torch)
    return torch_gpt(ours, torch)


def batch(c: dict):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, c["vocab"], size=(c["batch"], c["seq"])), rng.integers(0, c["vocab"], size=(c["batch"], c["seq"]))


# ------------------------------------------------------------------------------------------ the steps
def minitx_step(model, opt, ids, targets) -> float:
    import minitx.functional as F

    logits = model(ids)  # (B, T, V)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def torch_step(model, opt, ids, targets, torch) -> float:
    logits = model(ids)  # (B, T, V)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def ms_per_step(step, n: int, pause: float = 0.0) -> float:
    """Milliseconds per call of ``step`` over ``n`` calls, after ``pause`` seconds of sleep.

    The pause lets the other library's worker threads, which keep spinning on the cores for a while after
    their last parallel region, go to sleep before this one is timed.
    """
    time.sleep(pause)
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n * 1e3


# ----------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(library: str, name: str, c: dict, warmup: int) -> None:
    """(In a child process) print "peak_mib <training's peak RSS over the baseline>" [and "numpy_mib <…>"]."""
    import tracemalloc

    def make_step(c):
        ids, targets = batch(c)
        if library == "minitx":
            from minitx import optim

            model = minitx_model(name, c)
            opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
            return lambda: minitx_step(model, opt, ids, targets)
        import torch

        torch.set_num_threads(int(os.environ["OPENBLAS_NUM_THREADS"]))
        model = torch_model(name, minitx_model(name, c), torch)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        ids_t, targets_t = torch.from_numpy(ids), torch.from_numpy(targets)
        return lambda: torch_step(model, opt, ids_t, targets_t, torch)

    # One step of a tiny model of the same kind first: the one-time costs (Numba compiling the kernels, the
    # libraries' lazy set-up) go into the baseline, not into the steps' memory.
    make_step(dict(c, vocab=16, layers=1, seq=8, batch=2))()
    step = make_step(c)
    baseline = _status_kib("VmRSS")
    for _ in range(warmup):
        step()
    if library == "minitx":
        tracemalloc.start()
        step()
        print(f"numpy_mib {tracemalloc.get_traced_memory()[1] / 2**20:.1f}")
        tracemalloc.stop()
    else:
        step()
    print(f"peak_mib {(_status_kib('VmHWM') - baseline) / 1024:.1f}")


def peak_memory(library: str, name: str, c: dict, warmup: int, env: dict) -> dict:
    """{"peak_mib": …, ["numpy_mib": …]} of ``library``'s training steps, measured in a child process."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--memory-child", library, "--config", name,
                           "--warmup", str(warmup), "--sizes", json.dumps(c)],
                          capture_output=True, text=True, env=env, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"memory child ({library}, {name}) failed:\n{done.stderr[-2000:]}")
    return {k: float(v) for k, v in (line.split() for line in done.stdout.splitlines() if line.endswith(tuple("0123456789")))}


# ----------------------------------------------------------------------------------------------- main
def time_config(name, c, args, settings, torch, env):
    import minitx.functional as F
    from minitx import optim

    print(f"\n=== {name}: V={c['vocab']} D={c['dim']} H={c['heads']} F={c['ff']} L={c['layers']} T={c['seq']} "
          f"B={c['batch']}, float32, AdamW(lr=1e-3, wd=1e-2), dropout 0")
    ids, targets = batch(c)
    ids_t, targets_t = torch.from_numpy(ids), torch.from_numpy(targets)
    rows = []
    default = F._use_fused
    for setting in settings:
        fused = default if setting == "default" else setting == "on"
        F.set_fused_kernels(fused)
        ours = minitx_model(name, c)
        theirs = torch_model(name, ours, torch)
        opt_ours = optim.AdamW(ours.parameters(), lr=1e-3, weight_decay=1e-2)
        opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=1e-2)
        ours.train(), theirs.train()

        def run_ours():
            return minitx_step(ours, opt_ours, ids, targets)

        def run_theirs():
            return torch_step(theirs, opt_theirs, ids_t, targets_t, torch)

        label = f"minitx {setting} (fused kernels {'on' if fused else 'off'})"
        if fused and setting == "default" and c["seq"] ** 2 < F.FUSED_ATTENTION_MIN_SCORES:
            label += f" (attention composed: T^2 < {F.FUSED_ATTENTION_MIN_SCORES})"
        first = (run_ours(), run_theirs())  # the loss of the shared initial weights
        second = (run_ours(), run_theirs())  # the loss after one AdamW step of each
        print(f"{label}: loss at step 1 {first[0]:.6f} vs torch {first[1]:.6f} (|diff| {abs(first[0] - first[1]):.1e}); "
              f"after one step {second[0]:.6f} vs {second[1]:.6f} (|diff| {abs(second[0] - second[1]):.1e})")
        for _ in range(args.warmup):
            run_ours(), run_theirs()

        times = {"minitx": [], "torch": []}
        for r in range(args.repeats):
            order = [("minitx", run_ours), ("torch", run_theirs)]
            for who, step in (order if r % 2 == 0 else order[::-1]):
                times[who].append(ms_per_step(step, args.steps, args.pause))
        med_ours, med_theirs = statistics.median(times["minitx"]), statistics.median(times["torch"])
        ratios = [a / b_ for a, b_ in zip(times["minitx"], times["torch"])]  # each round's pair, timed back to back
        print(f"  per round, ms/step  minitx: {' '.join(f'{x:.0f}' for x in times['minitx'])}")
        print(f"                      torch:  {' '.join(f'{x:.0f}' for x in times['torch'])}")
        print(f"                      ratio:  {' '.join(f'{x:.2f}' for x in ratios)}")
        paired = statistics.median(ratios)
        print(f"  median ms/step: minitx {med_ours:.1f}, torch {med_theirs:.1f} (ratio of the medians "
              f"{med_ours / med_theirs:.2f}x)")
        print(f"  ratio minitx/torch, median over the rounds: {paired:.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x); "
              f"goal <= {GOAL}x: {'met' if paired <= GOAL else 'NOT met'}")
        rows.append((name, label, med_ours, med_theirs, paired, abs(first[0] - first[1])))
        del ours, theirs, opt_ours, opt_theirs
    F.set_fused_kernels(default)
    memory = {}
    if not args.no_memory:
        memory = {lib: peak_memory(lib, name, c, args.warmup, env) for lib in ("minitx", "torch")}
        m, t = memory["minitx"], memory["torch"]
        print(f"  peak memory of the training steps over the model's baseline (child processes, RSS): minitx "
              f"{m['peak_mib']:.0f} MiB (NumPy arrays alone, tracemalloc: {m['numpy_mib']:.0f} MiB), torch "
              f"{t['peak_mib']:.0f} MiB; ratio {m['peak_mib'] / max(t['peak_mib'], 1e-9):.2f}x")
    return rows, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=("encoder", "gpt", "both"), default="both")
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed block (default 1)")
    parser.add_argument("--repeats", type=int, default=15, help="alternating rounds; medians over these (default 15)")
    parser.add_argument("--wait-policy", choices=("passive", "active", ""), default="passive",
                        help="OMP_WAIT_POLICY for every OpenMP runtime in the process, unless already set; "
                             "passive also sets OPENBLAS_THREAD_TIMEOUT=4 ('' leaves both unset; default passive)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds of sleep before each timed block (default 0)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first (default 3)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for both: torch.set_num_threads and, for NumPy's OpenBLAS and Numba, "
                             "OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS, unless already set (default 2)")
    parser.add_argument("--fused", choices=("default", "on", "off", "all"), default="default",
                        help="minitx's fused kernels: the library's default (default), forced on or off, or all three")
    parser.add_argument("--import-first", choices=("minitx", "torch"), default="minitx",
                        help="which library is imported first (default minitx)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, 2 steps x 2 rounds, 1 warm-up")
    parser.add_argument("--memory-child", choices=("minitx", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configs = CONFIGS if args.config == "both" else {args.config: CONFIGS[args.config]}
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 2, 1
        configs = {k: dict(c, vocab=64, layers=1, seq=16, batch=2) for k, c in configs.items()}

    # The thread counts of OpenBLAS and Numba are read once, when they load: set them before importing.
    for var in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    if args.wait_policy:
        # Idle workers that spin (GNU OpenMP's and OpenBLAS's default) steal the cores from whatever runs next;
        # NumPy and torch are imported before minitx, so kernels/process_settings.py would come too late.
        os.environ.setdefault("OMP_WAIT_POLICY", args.wait_policy)
        if args.wait_policy == "passive":
            os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    if args.memory_child:
        import json

        memory_child(args.memory_child, args.config, json.loads(args.sizes), args.warmup)
        return
    # What NumPy's OpenBLAS and torch's OpenMP read when they start (minitx's import, later, is too late).
    started_with = {var: os.environ.get(var, "(unset)") for var in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    env = dict(os.environ)
    if args.import_first == "torch":
        import torch

        import minitx
    else:
        import minitx
        import torch
    import numpy as np

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from _machine import machine

    print(machine())
    print(f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"minitx {getattr(minitx, '__version__', '?')}, {args.import_first} imported first, "
          f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
          f"NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']}, "
          + "".join(f"{var}={value}, " for var, value in started_with.items()) +
          f"{args.warmup} warm-up steps, {args.repeats} rounds x {args.steps} steps each")
    settings = {"default": ["default"], "on": ["on"], "off": ["off"], "all": ["default", "on", "off"]}[args.fused]
    if args.fused == "all":
        settings = ["default"] + [s for s in ("on", "off") if s != ("on" if minitx.functional._use_fused else "off")]
    rows, memories = [], {}
    for name, c in configs.items():
        config_rows, memories[name] = time_config(name, c, args, settings, torch, env)
        rows += config_rows

    print(f"\n| config | minitx setting ({args.threads} thread(s)) | minitx ms/step | torch ms/step | ratio of medians "
          f"| median per-round ratio | step-1 loss diff | peak MiB minitx / torch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label, mine, theirs_ms, round_ratio, diff in rows:
        m = memories[name]
        mem = f"{m['minitx']['peak_mib']:.0f} / {m['torch']['peak_mib']:.0f}" if m else "-"
        print(f"| {name} | {label} | {mine:.1f} | {theirs_ms:.1f} | {mine / theirs_ms:.2f}x | {round_ratio:.2f}x | "
              f"{diff:.1e} | {mem} |")


if __name__ == "__main__":
    main()
