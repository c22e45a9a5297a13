"""One training step of minitx's SequenceEncoder vs the same model in PyTorch, float32, CPU, in one run.

    python benchmarks/bench_train_step.py [--steps N] [--repeats R] [--quick]

Reference configuration (the issue's): vocabulary V=1000, width D=128, H=4 heads, FFN width F=512,
L=4 post-norm ReLU encoder layers, sequences of T=128 tokens, batches of B=16, AdamW, no dropout.

A training step is the whole loop body

    logits = model(ids)                          (B, T, V)
    loss = cross_entropy(logits, targets)        mean over the B·T positions
    loss.backward();  optimizer.step();  optimizer.zero_grad()

The PyTorch model is the seed's: embedding · √D + sinusoidal positions, ``nn.TransformerEncoder``
(post-norm, ReLU, batch_first) and a Linear head, holding a copy of minitx's initial weights. Before timing,
the first-step losses (and the losses after one AdamW step each) of the two are printed with their
difference, so the timing compares two programs that compute the same thing.

Timing: ``--warmup`` steps of each model, then ``--repeats`` rounds; each round times ``--steps`` steps of
minitx and ``--steps`` steps of PyTorch, back to back (the order flipping every round), so that load from
other processes hits both alike. Reported: the median ms/step of each over the rounds, and the ratio
minitx / PyTorch as the median of the per-round ratios (on a shared machine whose load drifts during the run,
pairing each minitx time with the PyTorch time measured next to it is steadier than dividing the two
medians, which is printed too). PyTorch runs with ``torch.set_num_threads(2)``. minitx is timed with
its fused kernels off (attention and FFN composed from NumPy ops, the default) and on
(``minitx.functional.set_fused_kernels(True)``: the Numba kernels of ``kernels/cpu/``).

Threads: ``--threads`` (default 2) for both libraries. Before anything is imported, ``OMP_WAIT_POLICY`` is
set to ``passive`` and ``OPENBLAS_THREAD_TIMEOUT`` to 4, minitx's own settings (``kernels/process_settings.py``),
for every runtime in the process (``--wait-policy ''`` leaves each runtime's default, as when NumPy and
torch are imported before minitx): idle OpenMP and OpenBLAS workers otherwise keep spinning after each
parallel region and take the cores from whatever runs next, and minitx's settings come too late for a
runtime that has already started. Passive waiting costs PyTorch some time too, so benchmarks/RESULTS.md
records both settings. minitx's import also makes glibc keep freed memory for reuse (kernels/process_settings.py);
that holds for the whole process, PyTorch included.
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

GOAL = 1.3  # the goal: a minitx step takes at most 1.3x PyTorch's


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


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed block (default 1)")
    parser.add_argument("--repeats", type=int, default=25, help="alternating rounds; medians over these (default 25)")
    parser.add_argument("--wait-policy", choices=("passive", "active", ""), default="passive",
                        help="OMP_WAIT_POLICY for every OpenMP runtime in the process, unless already set; "
                             "passive also sets OPENBLAS_THREAD_TIMEOUT=4 ('' leaves both unset; default passive)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds of sleep before each timed block (default 0)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first (default 3)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for both: torch.set_num_threads and, for NumPy's OpenBLAS and Numba, "
                             "OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS, unless already set (default 2)")
    parser.add_argument("--fused", choices=("off", "on", "both"), default="both",
                        help="minitx's fused kernels (default: time both settings)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 steps x 2 rounds, 1 warm-up")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 2, 1

    # The thread counts of OpenBLAS and Numba are read once, when they load: set them before importing.
    for var in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    if args.wait_policy:
        # Idle workers that spin (GNU OpenMP's and OpenBLAS's default) steal the cores from whatever runs next;
        # NumPy and torch are imported before minitx, so kernels/process_settings.py would come too late.
        os.environ.setdefault("OMP_WAIT_POLICY", args.wait_policy)
        if args.wait_policy == "passive":
            os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    # What NumPy's OpenBLAS and torch's OpenMP read when they start (minitx's import, later, is too late).
    started_with = {var: os.environ.get(var, "(unset)") for var in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    import numpy as np
    import torch

    import minitx
    import minitx.functional as F
    from minitx import optim
    from minitx.models import SequenceEncoder
    from _common import torch_sequence_encoder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    v, d, h, f, n_layers, t, b = args.vocab, args.dim, args.heads, args.ff, args.layers, args.seq, args.batch
    print(f"V={v} D={d} H={h} F={f} L={n_layers} T={t} B={b}, float32, AdamW(lr=1e-3, wd=1e-2), dropout 0")
    print(f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"minitx {getattr(minitx, '__version__', '?')}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
          f"NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']}, "
          + "".join(f"{var}={value}, " for var, value in started_with.items()) +
          f"{args.warmup} warm-up steps, {args.repeats} rounds x {args.steps} steps each")

    rng = np.random.default_rng(0)
    ids = rng.integers(0, v, size=(b, t))  # (B, T) int64
    targets = rng.integers(0, v, size=(b, t))  # (B, T)
    ids_t, targets_t = torch.from_numpy(ids), torch.from_numpy(targets)

    settings = {"off": [False], "on": [True], "both": [False, True]}[args.fused]
    rows = []
    for fused in settings:
        F.set_fused_kernels(fused)
        minitx.manual_seed(0)
        ours = SequenceEncoder(v, d, h, f, n_layers, drop_rate=0.0, max_len=1024)
        theirs = torch_sequence_encoder(ours, torch)
        opt_ours = optim.AdamW(ours.parameters(), lr=1e-3, weight_decay=1e-2)
        opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=1e-2)
        ours.train(), theirs.train()

        def run_ours():
            return minitx_step(ours, opt_ours, ids, targets)

        def run_theirs():
            return torch_step(theirs, opt_theirs, ids_t, targets_t, torch)

        label = f"minitx (fused kernels {'on' if fused else 'off'})"
        first = (run_ours(), run_theirs())  # the loss of the shared initial weights
        second = (run_ours(), run_theirs())  # the loss after one AdamW step of each
        print(f"\n{label}: loss at step 1 {first[0]:.6f} vs torch {first[1]:.6f} (|diff| {abs(first[0] - first[1]):.1e}); "
              f"after one step {second[0]:.6f} vs {second[1]:.6f} (|diff| {abs(second[0] - second[1]):.1e})")
        for _ in range(args.warmup):
            run_ours(), run_theirs()

        times = {"minitx": [], "torch": []}
        for r in range(args.repeats):
            order = [("minitx", run_ours), ("torch", run_theirs)]
            for name, step in (order if r % 2 == 0 else order[::-1]):
                times[name].append(ms_per_step(step, args.steps, args.pause))
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
        rows.append((label, med_ours, med_theirs, statistics.median(ratios), abs(first[0] - first[1])))
    F.set_fused_kernels(False)

    print(f"\n| minitx setting ({args.threads} thread(s)) | minitx ms/step | torch ms/step | ratio of medians "
          f"| median per-round ratio | step-1 loss diff |")
    print("|---|---|---|---|---|---|")
    for label, mine, theirs_ms, round_ratio, diff in rows:
        print(f"| {label} | {mine:.1f} | {theirs_ms:.1f} | {mine / theirs_ms:.2f}x | {round_ratio:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
