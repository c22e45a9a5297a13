"""The training loop: accumulation, resume, interruption, logging files, errors.

The two promises of :mod:`minitx.train` that a learner relies on are tested exactly:

- k micro-batches of b examples give the same update as one batch of k·b examples;
- 10 steps, a checkpoint, a fresh process-like restart and 10 more steps give the same weights as 20
  steps straight — with dropout, a shuffling loader, AdamW and a warm-up schedule all in play.
"""

import csv

import numpy as np
import pytest

import minitx as mx
from minitx import backend, nn, optim
from minitx import functional as F
from minitx.data import DataLoader, ListDataset
from minitx.train import History, TrainConfig, Trainer

D_IN, CLASSES = 6, 3


def _model(seed=0, dropout=0.0):
    backend.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, 16), nn.Dropout(dropout), nn.Linear(16, CLASSES))


def _dataset(n=48, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D_IN)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return ListDataset(list(x), list(y))


def _loss_fn(model, batch):
    x, y = batch
    logits = model(mx.Tensor(x))
    return F.cross_entropy(logits, y), {"acc": float((logits.numpy().argmax(-1) == y).mean())}


def _trainer(model, steps, batch_size=8, accumulation=1, shuffle=True, lr=1e-2, checkpoint_path=None,
             checkpoint_every=0, scheduler=True, eval_fn=None):
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = optim.warmup_cosine(opt, warmup_steps=3, total_steps=steps) if scheduler else None
    loader = DataLoader(_dataset(), batch_size, shuffle=shuffle, seed=3, drop_last=True)
    return Trainer(model, opt, loader, _loss_fn, TrainConfig(
        steps=steps, accumulation=accumulation, clip_norm=1.0, checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every, progress=False), scheduler=sched, eval_fn=eval_fn)


def _weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_accumulation_equals_one_big_batch():
    """4 micro-batches of 6 (accumulation=4) == 1 batch of 24: same clipped gradient, same AdamW update."""
    small, big = _model(), _model()
    t_small = _trainer(small, steps=2, batch_size=6, accumulation=4, shuffle=False, scheduler=False)
    t_big = _trainer(big, steps=2, batch_size=24, accumulation=1, shuffle=False, scheduler=False)
    t_small.fit()
    t_big.fit()
    for name, w in _weights(big).items():
        np.testing.assert_allclose(_weights(small)[name], w, rtol=1e-5, atol=1e-6, err_msg=name)
    assert _weights(small)["0.weight"].tolist() != _weights(_model())["0.weight"].tolist()  # it did train
    np.testing.assert_allclose(t_small.history.rows[-1]["loss"], t_big.history.rows[-1]["loss"], rtol=1e-5)


def test_accumulation_differs_from_a_single_micro_batch():
    """Control: one step on only the first micro-batch gives a different update (the test can fail)."""
    a, b = _model(), _model()
    _trainer(a, steps=1, batch_size=6, accumulation=4, shuffle=False, scheduler=False).fit()
    _trainer(b, steps=1, batch_size=6, accumulation=1, shuffle=False, scheduler=False).fit()
    assert not np.allclose(_weights(a)["0.weight"], _weights(b)["0.weight"])


def test_resume_equals_straight_run(tmp_path):
    """10 steps + checkpoint + a new model/optimizer/loader resumed + 10 steps == 20 steps straight."""
    straight = _model(dropout=0.3)
    _trainer(straight, steps=20).fit()

    path = str(tmp_path / "ckpt.safetensors")
    first = _model(dropout=0.3)
    t1 = _trainer(first, steps=20, checkpoint_path=path, checkpoint_every=10)
    t1.config.steps = 10  # stop half-way: the checkpoint is written at step 10
    t1.fit()
    backend.manual_seed(12345)  # a different global RNG: resume must restore the saved one
    second = _model(seed=7, dropout=0.3)  # different initial weights: resume must overwrite them
    t2 = _trainer(second, steps=20, checkpoint_path=path)
    t2.resume(path)
    assert t2.step == 10
    t2.fit()
    for name, w in _weights(straight).items():
        np.testing.assert_array_equal(_weights(second)[name], w, err_msg=name)


def test_resume_without_restoring_rng_would_differ(tmp_path):
    """Control for the test above: skipping the RNG restore changes the dropout masks and the weights."""
    straight = _model(dropout=0.3)
    _trainer(straight, steps=12).fit()
    path = str(tmp_path / "ckpt.safetensors")
    t1 = _trainer(_model(dropout=0.3), steps=12, checkpoint_path=path)
    t1.config.steps = 6
    t1.fit()
    second = _model(dropout=0.3)
    t2 = _trainer(second, steps=12)
    t2.resume(path)
    backend.manual_seed(999)  # clobber the restored generator
    t2.fit()
    assert not np.array_equal(_weights(second)["0.weight"], _weights(straight)["0.weight"])


def test_interrupt_keeps_last_checkpoint(tmp_path, capsys):
    """Ctrl-C at step 7 (checkpoints every 5) leaves the step-5 checkpoint readable and resumable."""
    path = str(tmp_path / "ckpt.safetensors")
    model = _model()
    trainer = _trainer(model, steps=20, checkpoint_path=path, checkpoint_every=5)
    calls = {"n": 0}

    def interrupting(model, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return _loss_fn(model, batch)

    trainer.loss_fn = interrupting
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert "interrupted at step 6" in capsys.readouterr().out
    resumed = _trainer(_model(seed=3), steps=20)
    resumed.resume(path)
    assert resumed.step == 5


def test_history_csv_and_plot(tmp_path):
    model = _model()
    evals = []

    def eval_fn(m):
        evals.append(m.training)
        return {"loss": 0.5, "val_acc": 0.75}

    trainer = _trainer(model, steps=6, eval_fn=eval_fn)
    trainer.config.eval_every = 2
    history = trainer.fit()
    assert evals == [False, False, False]  # at steps 2, 4 and the end; always in eval mode
    assert [e["step"] for e in history.evals] == [2, 4, 6]
    history.to_csv(str(tmp_path / "h.csv"))
    with open(tmp_path / "h.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "acc"} <= set(rows[0])
    assert float(rows[0]["lr"]) < float(rows[2]["lr"])  # warm-up raises the learning rate
    history.plot(str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_reduces_loss():
    trainer = _trainer(_model(), steps=60, lr=3e-2)
    history = trainer.fit()
    assert history.rows[-1]["loss"] < 0.6 * history.rows[0]["loss"]


def test_errors():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="accumulation"):
        TrainConfig(steps=1, accumulation=0)
    model = _model()
    empty = Trainer(model, optim.SGD(model.parameters(), lr=0.1),
                    DataLoader(_dataset(n=4), 8, drop_last=True), _loss_fn, TrainConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match="no batches"):
        empty.fit()

    def nan_loss(model, batch):
        loss, _ = _loss_fn(model, batch)
        return loss * float("nan"), {}

    before = _weights(model)
    broken = _trainer(model, steps=1, scheduler=False)
    broken.loss_fn = nan_loss
    with pytest.raises(FloatingPointError, match="step 1"):
        broken.fit()
    for name, w in before.items():  # the bad step changed nothing
        np.testing.assert_array_equal(_weights(model)[name], w)


def test_history_last():
    h = History(rows=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "acc": 0.5}])
    assert h.last("loss") == 1.0 and h.last("acc") == 0.5 and h.last("missing") is None


@pytest.mark.parametrize("clip", [None, 1.0])
def test_a_nan_loss_leaves_no_nan_gradient_behind(clip):
    """After fit() raises on a NaN loss, the gradients are cleared: a later fit() does not poison the weights."""
    model = _model()
    trainer = _trainer(model, steps=3, scheduler=False)
    trainer.config.clip_norm = clip
    calls = {"n": 0}

    def nan_once(model, batch):
        loss, metrics = _loss_fn(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), metrics

    trainer.loss_fn = nan_once
    with pytest.raises(FloatingPointError, match="loss became nan"):
        trainer.fit()
    assert all(p.grad is None for p in model.parameters())
    trainer.fit()  # continues from step 1 with finite losses
    assert all(np.isfinite(w).all() for w in _weights(model).values())


def test_resume_refuses_a_checkpoint_without_rng_state_before_touching_the_model(tmp_path):
    from minitx import io

    path = str(tmp_path / "ckpt.safetensors")
    source = _model(seed=1)
    io.save_checkpoint(path, source, optim.AdamW(source.parameters(), lr=1e-2), step=3, extra={})
    target = _model(seed=2)
    before = _weights(target)
    trainer = _trainer(target, steps=5)
    with pytest.raises(io.CheckpointError, match="random generator"):
        trainer.resume(path)
    for name, w in before.items():
        np.testing.assert_array_equal(_weights(target)[name], w, err_msg=name)
    assert trainer.step == 0 and trainer.optimizer.state == {}
