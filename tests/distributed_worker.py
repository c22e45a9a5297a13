"""A program that tests/test_distributed.py runs under ``mpiexec -n N`` (or alone, as one process).

    python distributed_worker.py allreduce
        ring_allreduce and MPI's Allreduce on random buffers: equal, and the same on every rank.
    python distributed_worker.py train --weights W [--steps S] [--checkpoint C --checkpoint-every K]
                                       [--resume C] [--kill-rank R --kill-step T] [--hang-rank R --hang-step T]
                                       [--raise-rank R --raise-step T]
                                       [--padded] [--no-count] [--float64] [--micro-batches K]
        a tiny GPT trained by the Trainer on a fixed random token stream (global batch 8); rank 0 saves the
        final weights to W. --padded: rows padded to random lengths, so the ranks average different numbers
        of tokens (the loss reports its count unless --no-count). --kill-rank: that rank SIGKILLs itself
        before step T; --hang-rank: that rank sleeps forever before step T; --raise-rank: that rank raises.
        --float64: the model in float64. --micro-batches K: the loader serves batches of 8/K rows and the
        Trainer accumulates K of them per step (``accumulation=K``; the same global batch of 8).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np

from minitx import backend, distributed, io
from minitx.data import DataLoader, ListDataset
from minitx.models import GPT, GPTConfig
from minitx.pipelines import adamw_with_schedule
from minitx.tensor import Tensor
from minitx.train import TrainConfig, Trainer


def allreduce() -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(100 + rank)
    for n in (1, size - 1, size, 7, 1000, 4099):
        for dtype in (np.float32, np.float64):
            for integers in (True, False):  # integer values: every order of summation gives the same sum
                data = (rng.integers(-1000, 1000, n) if integers else rng.standard_normal(n)).astype(dtype)
                ring, reference = data.copy(), data.copy()
                distributed.ring_allreduce(comm, ring)
                comm.Allreduce(MPI.IN_PLACE, reference, op=MPI.SUM)
                exact = np.sum(comm.allgather(data), axis=0, dtype=np.float64)
                where = f"n={n} {np.dtype(dtype).name} integers={integers}"
                if integers:
                    assert np.array_equal(ring, reference), where
                else:
                    tol = 1e-5 if dtype == np.float32 else 1e-12
                    np.testing.assert_allclose(ring, reference, rtol=tol, atol=tol, err_msg=where)
                np.testing.assert_allclose(ring, exact, rtol=1e-5, atol=1e-5, err_msg=where)
                assert len({r.tobytes() for r in comm.allgather(ring)}) == 1, f"ranks differ after the ring: {where}"
    if rank == 0:
        print(f"ring == MPI Allreduce on {size} ranks")


def train(args) -> None:
    world = distributed.world()
    if args.float64:
        backend.set_default_dtype(np.float64)
    backend.manual_seed(0)
    vocab, length = 40, 13
    stream = np.random.default_rng(0).integers(0, vocab, 40 * length)
    windows = stream.reshape(40, length)  # 40 rows: 5 global batches of 8 per epoch
    pad_rng = np.random.default_rng(1)
    lengths = pad_rng.integers(3, length + 1, len(windows))  # real tokens per row (--padded)
    masks = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    model = GPT(GPTConfig(vocab_size=vocab, max_len=length - 1, d_model=16, num_heads=2, num_layers=1,
                          dim_feedforward=32, dropout=0.0))
    optimizer, scheduler = adamw_with_schedule(model.parameters(), 3e-3, args.steps)
    loader = DataLoader(ListDataset(windows, masks), 8 // args.micro_batches, shuffle=True, seed=0, drop_last=True)
    calls = {"n": 0}

    def loss_fn(model, batch):
        ids, mask = batch
        calls["n"] += 1
        step = calls["n"]
        if world.rank == args.kill_rank and step == args.kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if world.rank == args.hang_rank and step == args.hang_step:
            time.sleep(3600)
        if world.rank == args.raise_rank and step == args.raise_step:
            raise RuntimeError(f"rank {world.rank} fails on purpose at step {step}")
        if not args.padded:
            return model.loss(Tensor(ids)), {}
        count = int((mask[:, 1:] & mask[:, :-1]).sum())  # the targets GPT.loss averages over
        loss = model.loss(Tensor(ids), attention_mask=Tensor(mask))
        return (loss, {}) if args.no_count else (loss, {}, count)

    trainer = Trainer(model, optimizer, loader, loss_fn, TrainConfig(
        steps=args.steps, accumulation=args.micro_batches, clip_norm=1.0, progress=False,
        checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every), scheduler=scheduler)
    if args.resume:
        trainer.resume(args.resume)
        calls["n"] = trainer.step
    trainer.fit()
    if world.is_main:
        io.save_state_dict(model.state_dict(), args.weights)
        print(f"trained to step {trainer.step} on {world.size} rank(s), final loss {trainer.history.last('loss'):.6f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("allreduce", "train"))
    parser.add_argument("--weights")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--resume")
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-step", type=int, default=-1)
    parser.add_argument("--hang-rank", type=int, default=-1)
    parser.add_argument("--hang-step", type=int, default=-1)
    parser.add_argument("--raise-rank", type=int, default=-1)
    parser.add_argument("--raise-step", type=int, default=-1)
    parser.add_argument("--padded", action="store_true")
    parser.add_argument("--no-count", action="store_true")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--micro-batches", type=int, choices=(1, 2, 4, 8), default=1)
    args = parser.parse_args()
    allreduce() if args.what == "allreduce" else train(args)


if __name__ == "__main__":
    sys.exit(main())
