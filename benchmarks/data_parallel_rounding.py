"""How far apart float32 rounding puts one process's weights and two ranks' (issue 15), where, and why.

    python benchmarks/data_parallel_rounding.py [--text F] [--steps 20] [--torch] [--compare A B]

The run of ``minitx train-gpt --text F --steps 20 --batch-size 8 --seed 0`` (default model: d_model 64,
2 layers, 4 heads, context 64, vocabulary 600, AdamW lr 3e-3 with warm-up and cosine, clipping at 1), with
the data, model and optimizer built as train-gpt builds them, trained three ways from the same weights:

- ``one``: the batch of 8 rows in one forward/backward (one process);
- ``halves``: two backward passes over rows 0-3 and 4-7, each loss scaled by 1/2, the gradients added: what
  two ranks compute and their all-reduce sums (and what one process computes when it accumulates 2 micro-
  batches of 4: the Trainer's ``accumulation=2``);
- ``accumulate``: the Trainer itself, loader batch 4, ``accumulation=2``.

It prints, per parameter, the largest |one - halves| weight difference after the last step, and why: the
gradient's size (median |g|), the rounding difference of the gradient at the same weights (|g_one - g_halves|,
measured every step on the ``one`` run), and Adam's amplification of it, lr·|Δg|/(√v̂ + ε) summed over the
steps (an element whose gradient is rounding noise far below ε = 1e-8, like the attention key bias's, moves
lr·g/ε: noise in, noise out). ``--compare A B``: also the weights of two saved runs (e.g. ``A`` from the
one-process command and ``B`` from ``mpiexec -n 2``) against these. ``--float64``: the same in float64.
``--torch``: the same experiment in PyTorch (same initial weights, batches, AdamW, schedule and clipping):
its batch of 8 against its two halves of 4. Results: benchmarks/RESULTS.md, "Data parallelism".
"""

from __future__ import annotations

import argparse
import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # as the MPI tests run each rank; before numpy is imported

from minitx import backend, io  # noqa: E402  (before NumPy: minitx's process settings reach OpenBLAS)
import numpy as np  # noqa: E402
from minitx.data import DataLoader, ListDataset, corpus_text  # noqa: E402
from minitx.models import GPT, GPTConfig  # noqa: E402
from minitx.optim import clip_grad_norm_  # noqa: E402
from minitx.pipelines import adamw_with_schedule, lm_windows, split  # noqa: E402
from minitx.tensor import Tensor  # noqa: E402
from minitx.tokenizers import ByteLevelBPE  # noqa: E402
from minitx.train import TrainConfig, Trainer  # noqa: E402

from bench_train_step import torch_gpt  # noqa: E402  (the same directory: PyTorch's twin of a minitx GPT)

BETA2, EPS = 0.999, 1e-8  # AdamW's defaults, which adamw_with_schedule uses


def setup(args):
    """train-gpt's tokenizer, training windows and config (cli.cmd_train_gpt, pipelines.train_gpt)."""
    backend.manual_seed(args.seed)
    text = open(args.text, encoding="utf-8").read() if args.text else corpus_text(seed=args.seed)
    tokenizer = ByteLevelBPE.train([text], vocab_size=args.vocab_size)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, max_len=args.context, d_model=args.d_model,
                       num_heads=args.heads, num_layers=args.layers, dim_feedforward=4 * args.d_model, dropout=0.0)
    windows = lm_windows(tokenizer.encode(text), config.max_len + 1, stride=config.max_len // 2)  # (N, T + 1)
    train_windows, _ = split(list(windows), (0.95, 0.05), seed=args.seed)
    return config, train_windows


def new_run(config, args):
    """The model (train-gpt's initial weights: the generator seeded, then GPT built) and its optimizer."""
    backend.manual_seed(args.seed)
    model = GPT(config)
    if args.float64:
        model = model.double()
    optimizer, scheduler = adamw_with_schedule(model.parameters(), args.lr, args.steps)
    return model, optimizer, scheduler


def gradients(model, batch, pieces: int) -> list:
    """The gradients of the batch's mean loss, computed in ``pieces`` row blocks, each loss scaled by 1/pieces."""
    model.zero_grad()
    for rows in np.split(batch, pieces):
        (model.loss(Tensor(rows)) * (1.0 / pieces)).backward()
    return [p.grad.copy() for p in model.parameters()]


def apply(model, optimizer, scheduler, grads) -> None:
    """The Trainer's step after the backward passes: clip to norm 1, AdamW, schedule."""
    for p, g in zip(model.parameters(), grads):
        p.grad = g.copy()
    clip_grad_norm_(list(model.parameters()), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def lockstep(config, windows, args):
    """Train ``one`` and ``halves`` side by side; collect, per parameter and step, what explains their distance."""
    one, halves = new_run(config, args), new_run(config, args)
    names = [n for n, _ in one[0].named_parameters()]
    loader = DataLoader(ListDataset(windows), 8, shuffle=True, seed=args.seed, drop_last=True)
    batches = iter(loader)
    v = [np.zeros(p.shape) for p in one[0].parameters()]  # Adam's second moment of the one-process run
    stats = {n: {"g": [], "dg": [], "amplified": 0.0} for n in names}
    per_step = []
    for step in range(1, args.steps + 1):
        batch = next(batches)
        g_one = gradients(one[0], batch, 1)
        g_split = gradients(one[0], batch, 2)  # the same weights, the batch in two halves
        lr = one[1].lr
        norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in g_one))
        clip = min(1.0, 1.0 / (norm + 1e-6))
        for n, g, gs, vv in zip(names, g_one, g_split, v):
            vv *= BETA2
            vv += (1 - BETA2) * (clip * g.astype(np.float64)) ** 2
            v_hat = vv / (1 - BETA2 ** step)
            dg = clip * np.abs(g.astype(np.float64) - gs)
            stats[n]["g"].append(float(np.median(np.abs(g))))
            stats[n]["dg"].append(float(dg.max()))
            stats[n]["amplified"] += float((lr * dg / (np.sqrt(v_hat) + EPS)).max())
        apply(*one, g_one)
        apply(*halves, gradients(halves[0], batch, 2))
        per_step.append({n: float(np.abs(a.data - b.data).max())
                         for n, a, b in zip(names, one[0].parameters(), halves[0].parameters())})
    return one[0], halves[0], stats, per_step


def accumulated(config, windows, args):
    """The Trainer with loader batch 4 and accumulation=2 (one process, 2 micro-batches per step)."""
    model, optimizer, scheduler = new_run(config, args)
    loader = DataLoader(ListDataset(windows), 4, shuffle=True, seed=args.seed, drop_last=True)
    Trainer(model, optimizer, loader, lambda m, b: (m.loss(Tensor(b)), {}),
            TrainConfig(steps=args.steps, accumulation=2, clip_norm=1.0, progress=False), scheduler=scheduler).fit()
    return model


def max_difference(a: dict, b: dict) -> tuple[float, str]:
    name = max(a, key=lambda k: float(np.abs(a[k] - b[k]).max()))
    return float(np.abs(a[name] - b[name]).max()), name


# ------------------------------------------------------------------------------------------ PyTorch
def torch_loss(model, ids):
    """Mean cross-entropy of tokens 1…T of ids (B, T + 1) given the ones before, for bench_train_step's PyTorch GPT."""
    import torch

    logits = model(ids[:, :-1])  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def torch_runs(config, windows, args) -> None:
    """PyTorch, float32: the batch of 8 in one product against two halves of 4 averaged."""
    import torch

    torch.set_num_threads(1)
    initial, optimizer, scheduler = new_run(config, args)
    lrs = []
    for _ in range(args.steps):  # the learning rate of each step, from minitx's schedule
        lrs.append(optimizer.lr)
        scheduler.step()
    runs = {}
    for pieces in (1, 2):
        model = torch_gpt(initial, torch)  # bench_train_step's: the same PyTorch GPT, minitx's weights
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, BETA2), eps=EPS, weight_decay=0.01)
        batches = iter(DataLoader(ListDataset(windows), 8, shuffle=True, seed=args.seed, drop_last=True))
        for lr in lrs:
            batch = torch.from_numpy(np.asarray(next(batches), dtype=np.int64))
            for group in optimizer.param_groups:
                group["lr"] = lr
            for rows in batch.chunk(pieces):
                (torch_loss(model, rows) * (1.0 / pieces)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        runs[pieces] = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    diffs = sorted(((float(np.abs(runs[1][n] - runs[2][n]).max()), n) for n in runs[1]), reverse=True)
    print(f"\nPyTorch {torch.__version__}, float32, 1 thread: batch of 8 vs two halves of 4, after {args.steps} steps")
    for d, n in diffs[:6]:
        print(f"  {n:45s} {d:.2e}")
    others = [d for d, n in diffs if "in_proj_bias" not in n]
    print(f"  max over all parameters {diffs[0][0]:.2e}; without in_proj_bias (it holds the key bias) "
          f"{max(others):.2e}")
    key = []
    for n, p in runs[1].items():
        if n.endswith("in_proj_bias"):
            d = config.d_model
            key.append(float(np.abs(p[d:2 * d] - runs[2][n][d:2 * d]).max()))
            rest = np.abs(np.delete(p - runs[2][n], np.s_[d:2 * d])).max()
            print(f"  {n}: key part {key[-1]:.2e}, query and value parts {rest:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", help="a UTF-8 text file (default: minitx's corpus_text(seed))")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab-size", type=int, default=600)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--compare", nargs=2, metavar=("ONE", "TWO"),
                        help="model.safetensors of a one-process run and of a 2-rank run, to compare with these")
    parser.add_argument("--float64", action="store_true", help="train in float64 (train-gpt's weights, as float64)")
    parser.add_argument("--show", type=int, default=8, help="parameters to list (the farthest apart)")
    parser.add_argument("--torch", action="store_true", help="the same experiment in PyTorch")
    args = parser.parse_args()
    config, windows = setup(args)
    one, halves, stats, per_step = lockstep(config, windows, args)
    a, b = one.state_dict(), halves.state_dict()
    print(f"minitx, {'float64' if args.float64 else 'float32'}: batch of 8 in one product (one) vs two halves "
          f"of 4 added (halves), {args.steps} steps")
    print(f"{'parameter':35s} {'|one-halves|':>12s} {'median|g|':>10s} {'max|Δg|':>9s} "
          f"{'Σ lr|Δg|/(√v̂+ε)':>16s}")
    for name in sorted(a, key=lambda k: -float(np.abs(a[k] - b[k]).max()))[:args.show]:
        s = stats[name]
        print(f"{name:35s} {float(np.abs(a[name] - b[name]).max()):12.2e} {np.median(s['g']):10.1e} "
              f"{max(s['dg']):9.1e} {s['amplified']:16.2e}")
    worst = sorted(a, key=lambda k: -float(np.abs(a[k] - b[k]).max()))[:3]
    print("per step, |one - halves| of " + ", ".join(worst))
    for step, row in enumerate(per_step, 1):
        print(f"  step {step:2d}: " + "  ".join(f"{row[n]:.1e}" for n in worst))
    d, n = max_difference(a, b)
    keyless = {k: v for k, v in a.items() if not k.endswith("k_proj.bias")}
    d2, n2 = max_difference(keyless, b)
    print(f"max |one - halves| {d:.2e} ({n}); without the key biases {d2:.2e} ({n2})")
    c = accumulated(config, windows, args).state_dict()
    print(f"max |halves - Trainer(accumulation=2)| {max_difference(b, c)[0]:.1e}")
    if args.compare:
        saved = [io.load_state_dict_file(path) for path in args.compare]
        print(f"max |{args.compare[0]} - one| {max_difference(saved[0], a)[0]:.1e}; "
              f"|{args.compare[1]} - halves| {max_difference(saved[1], b)[0]:.1e}; "
              f"|{args.compare[1]} - accumulation| {max_difference(saved[1], c)[0]:.1e}; "
              f"|{args.compare[0]} - {args.compare[1]}| {max_difference(saved[0], saved[1])[0]:.2e}")
    if args.torch:
        torch_runs(config, windows, args)


if __name__ == "__main__":
    main()
