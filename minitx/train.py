"""The training loop: one place for progress, evaluation, accumulation, schedules, clipping and checkpoints.

One optimizer step, with ``accumulation = k``:

    for each of k micro-batches:   loss_i = loss_fn(model, batch_i) / k;  loss_i.backward()
    clip the gradient norm (optional);  optimizer.step();  optimizer.zero_grad();  scheduler.step()

Since backward *adds* into ``.grad``, k micro-batches whose losses are means over equally many items give
exactly the gradient of one batch k times larger: the mean over kb items is the average of k means over b.

Checkpoints hold model, optimizer, scheduler, step, the state of minitx's CPU random generator
(``backend.get_rng_state()``: the generator that draws dropout masks for CPU tensors) and the data loader's
position, so that a run on the CPU continues as if it had never stopped. The CUDA generator is not saved: a
run resumed on a GPU draws different dropout masks from there on. Checkpoints are written atomically
(:mod:`minitx.io`), so an interrupted run (Ctrl-C, a crash, a full disk) loses at most the steps since the
last checkpoint, never the checkpoint itself.

Under MPI (``mpiexec -n N``, see :mod:`minitx.distributed`) the same Trainer trains data-parallel: it starts
every rank from rank 0's weights and random state, checks that the ranks agree on the run, gives each rank
its slice of every global batch (the loader's ``batch_size`` is the global batch), scales each rank's loss
by its share of the global batch and sums the gradients over the ranks before clipping and the optimizer
step. Only rank 0 shows progress, prints and writes checkpoints; every rank reads them. A ``loss_fn`` whose
loss is a mean over a varying number of items (tokens that are not padding) may return that number as a
third element, ``(loss, metrics, count)``: the shares are then count / (the global batch's count), so the
gradient is that of the mean over the global batch, exactly as one process would compute it; a sum of
such means returns dicts, ``({term: mean}, metrics, {term: count})``. Every rank collates the whole global
batch and keeps its rows, and dropout draws the whole global batch's mask and keeps this rank's piece
(``backend.batch_piece``), so random masks are one process's too. Logged
metrics other than the loss are rank 0's slice's; evaluation runs on every rank (the replicas agree). On
GPUs, call ``world.use_local_gpu()`` before moving the model to ``"cuda"``.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Callable

from tqdm.auto import tqdm

from . import backend, distributed, io
from .optim import clip_grad_norm_
from .tensor import no_grad

# (model, batch) -> (loss Tensor, {metric name: float}[, count of items averaged]), or for a sum of means
# ({term: mean Tensor}, metrics, {term: count})
LossFn = Callable[..., tuple]


@dataclass
class TrainConfig:
    """How long and how to train. ``steps`` counts optimizer steps (each of ``accumulation`` micro-batches)."""

    steps: int
    accumulation: int = 1
    clip_norm: float | None = None
    eval_every: int = 0  # 0: evaluate only at the end (when an eval_fn is given)
    log_every: int = 1
    checkpoint_path: str | None = None
    checkpoint_every: int = 0  # 0: only at the end (when checkpoint_path is set)
    progress: bool = True
    desc: str = "train"

    def __post_init__(self):
        for name in ("steps", "accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class History:
    """What happened during training: one row per logged step, and the evaluations."""

    rows: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    def last(self, key: str):
        return next((r[key] for r in reversed(self.rows) if key in r), None)

    def to_csv(self, path: str) -> None:
        """Write every logged row (step, loss, lr, grad_norm, metrics…) to a CSV file."""
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self, path: str, title: str = "training loss") -> None:
        """Save the loss curve (and evaluation points) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in self.rows], [r["loss"] for r in self.rows], label="train loss", lw=1)
        eval_losses = [(e["step"], e["loss"]) for e in self.evals if "loss" in e]
        if eval_losses:
            ax.plot(*zip(*eval_losses), "o-", label="eval loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


class Trainer:
    """Runs :class:`TrainConfig` on a model, an optimizer and a data loader.

    ``loss_fn(model, batch)`` returns ``(loss, metrics)``: a scalar Tensor and a dict of floats.
    ``eval_fn(model)`` returns a dict of floats (it runs in eval mode under ``no_grad``).
    The loader is iterated epoch after epoch until ``config.steps`` optimizer steps are done; if it has
    ``state_dict()``/``load_state_dict()`` its position is checkpointed too. ``world`` (default: this
    process's :func:`minitx.distributed.world`) decides whether training is data-parallel.
    """

    def __init__(self, model, optimizer, loader, loss_fn: LossFn, config: TrainConfig, scheduler=None,
                 eval_fn: Callable | None = None, world: distributed.World | None = None):
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.loss_fn, self.config, self.scheduler, self.eval_fn = loss_fn, config, scheduler, eval_fn
        self.world = world if world is not None else distributed.world()
        self.step = 0
        self.saved_step = None  # the step that checkpoint_path holds, once this run wrote or resumed it
        self.history = History()
        self._batches = None
        self._reducer = None
        if self.world.size > 1:
            self._start_data_parallel()

    def _start_data_parallel(self) -> None:
        """Shard the loader, check that the ranks agree, start every replica from rank 0's state."""
        world = self.world
        self.loader = distributed.ShardedLoader.from_loader(self.loader, world)
        config = {k: v for k, v in vars(self.config).items() if k != "progress"}
        world.check_same({"model": type(self.model).__name__,
                          "model config": repr(getattr(self.model, "config", None)),
                          "parameters": [(n, list(p.shape)) for n, p in self.model.named_parameters()],
                          "train config": config, "dataset size": len(self.loader.dataset),
                          "global batch size": self.loader.batch_size, "shuffle": self.loader.shuffle,
                          "loader seed": self.loader.seed}, what="the model, data and training settings")
        distributed.broadcast_model(self.model, world)
        backend.set_rng_state(world.broadcast_object(backend.get_rng_state()))
        self._reducer = distributed.GradientReducer([p for p in self.model.parameters() if p.requires_grad], world)

    # ------------------------------------------------------------------------------------------ data
    def _next_batch(self):
        """The next batch, starting a new epoch (a fresh pass over the loader) when one runs out."""
        for _ in range(2):
            if self._batches is None:
                self._batches = iter(self.loader)
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None
        raise ValueError("Trainer: the data loader yields no batches (is the dataset smaller than one batch "
                         "with drop_last=True?)")

    # ------------------------------------------------------------------------------------------ steps
    def train_step(self) -> dict:
        """One optimizer step over ``accumulation`` micro-batches; returns the logged row."""
        self.model.train()
        k = self.config.accumulation
        total_loss, metrics = 0.0, {}
        for _ in range(k):
            with backend.batch_piece(self.world.rank, self.world.size):  # dropout draws as one process would
                loss, batch_metrics, *count = self.loss_fn(self.model, self._next_batch())
                loss = self._part_of_global_loss(loss, count[0] if count else None)
                if loss is not None:  # None: this rank's slice has nothing to average
                    (loss / k).backward()
                    total_loss += loss.item() / k
            for name, value in batch_metrics.items():
                metrics[name] = metrics.get(name, 0.0) + value / k
        if self._reducer is not None:  # Σ over the ranks of the share-scaled gradients (and losses)
            (total_loss,) = self._reducer.all_reduce([total_loss])
        row = {"step": self.step + 1, "loss": total_loss, "lr": self.optimizer.lr}
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            if not math.isfinite(total_loss):
                raise FloatingPointError(f"loss became {total_loss} at step {self.step + 1}; lower the learning "
                                         "rate or enable clipping (clip_norm)")
            if self.config.clip_norm is not None:
                row["grad_norm"] = clip_grad_norm_(params, self.config.clip_norm)
        except FloatingPointError:
            for p in params:  # NaN gradients left in .grad would poison the next step
                p.grad = None
            raise
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        row.update(metrics)
        return row

    def _part_of_global_loss(self, loss, count):
        """This rank's part of the global micro-batch's loss: L_r · s_r, with the share s_r = 1/N for equal
        slices, or n_r / Σ_s n_s for a mean over n_r items (``count``). A loss that is a sum of means over
        different items (BERT's L_MLM + L_SOP) comes as dicts, {term: mean} and {term: count}, each term
        weighted by its own share; a term whose count is 0 on this rank may be missing (None: no term left)."""
        terms, counts = (loss, count) if isinstance(loss, dict) else ({"loss": loss}, {"loss": count})
        if self.world.size == 1:
            if not terms:
                raise ValueError(f"Trainer: the batch has nothing to average (loss_fn returned no term; counts {counts})")
            shares = dict.fromkeys(terms, 1.0)
        elif count is None:
            shares = dict.fromkeys(terms, 1.0 / self.world.size)
        else:
            names = sorted(counts)
            totals = dict(zip(names, self.world.sums([float(counts[n]) for n in names])))
            if not any(totals.values()):
                raise ValueError(f"Trainer: the global batch has nothing to average (counts {counts} on every rank)")
            shares = {name: float(counts[name]) / totals[name] for name in terms}
        part = None
        for name, term in terms.items():
            part = term * shares[name] if part is None else part + term * shares[name]
        return part

    def evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with no_grad():
            result = {"step": self.step, **self.eval_fn(self.model)}
        self.model.train()
        self.history.evals.append(result)
        return result

    def fit(self) -> History:
        """Train until ``config.steps`` optimizer steps are done (continuing from a resumed step)."""
        cfg = self.config
        bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.desc, leave=False,
                   disable=not (cfg.progress and self.world.is_main))
        try:
            while self.step < cfg.steps:
                row = self.train_step()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self.history.rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self.evaluate()
                if cfg.checkpoint_path and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save(cfg.checkpoint_path)
        except KeyboardInterrupt:
            bar.close()
            where = ""
            if cfg.checkpoint_path:
                where = (f"; {cfg.checkpoint_path} holds the checkpoint of step {self.saved_step}"
                         if self.saved_step is not None else "; no checkpoint was written")
            if self.world.is_main:
                print(f"\ninterrupted at step {self.step}{where}")
            raise
        bar.close()
        if self.eval_fn is not None:
            self.evaluate()
        if cfg.checkpoint_path:
            self.save(cfg.checkpoint_path)
        return self.history

    # ------------------------------------------------------------------------------------ checkpoints
    def save(self, path: str) -> None:
        """Write model, optimizer, scheduler, step, RNG and loader state to ``path`` (atomically).

        Data-parallel: every rank calls it; rank 0 writes, after checking that every replica holds the same
        weights."""
        self.world.check_same({"weights sha256": distributed.weights_digest(self.model)}, what="the weights")
        if not self.world.is_main:
            return
        extra = {"rng": backend.get_rng_state()}
        if self.scheduler is not None:
            extra["scheduler"] = self.scheduler.state_dict()
        if hasattr(self.loader, "state_dict"):
            extra["loader"] = self.loader.state_dict()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        io.save_checkpoint(path, self.model, self.optimizer, step=self.step, extra=extra)
        self.saved_step = self.step

    def _check_extra(self, extra: dict) -> None:
        """Refuse (ValueError) a checkpoint whose extra state this trainer could not restore, before the model
        or optimizer is touched."""
        if not isinstance(extra.get("rng"), dict):
            raise ValueError("the checkpoint holds no random generator state (extra['rng'])")
        for name, owner in (("scheduler", self.scheduler), ("loader", self.loader)):
            if name in extra and hasattr(owner, "load_state_dict") and not isinstance(extra[name], dict):
                raise ValueError(f"extra[{name!r}] must be a dict, got {type(extra[name]).__name__}")

    def resume(self, path: str) -> None:
        """Load a checkpoint written by :meth:`save`; training continues exactly where it stopped (every rank
        reads it; its loader position counts global batches, so any number of ranks can resume it)."""
        info = io.load_checkpoint(path, self.model, self.optimizer, check_extra=self._check_extra)
        self.step = self.saved_step = info["step"]
        extra = info.get("extra", {})
        backend.set_rng_state(extra["rng"])
        if self.scheduler is not None and "scheduler" in extra:
            self.scheduler.load_state_dict(extra["scheduler"])
        if "loader" in extra and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(extra["loader"])
            self._batches = None
