"""The source texts' workflows, end to end: tokenise → pre-train → fine-tune → generate.

Each function here is one stage that a learner can call on its own (the ``minitx`` CLI does), and
:func:`minitx.demo.run_demo` runs them all on the built-in data:

1. :func:`pretrain_bert` — BERT-style pre-training with masked language modelling (MLM) and
   sentence-order prediction (SOP) on documents whose sentence order matters;
2. :func:`finetune_adapter` — the seed's TaskAdapter: freeze the pre-trained encoder, mean-pool its hidden
   states over the real tokens, train a linear classifier with AdamW;
3. :func:`train_gpt` and :func:`generate_text` — a GPT language model and sampling from it;
4. :func:`finetune_gpt_classifier` — the seed's GPT sentiment flow (tokenise, pad/truncate, attention mask,
   batches, train, validate accuracy), with the ``backward()`` and ``step()`` the seed forgot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import functional as F
from .functional import IGNORE_INDEX
from . import optim
from .data import DataLoader, ListDataset, SOPMLMCollator, sentence_order_pairs
from .models import (BertConfig, BertForPretraining, GPT, GPTConfig, GPTForSequenceClassification,
                     TaskAdapter)
from .tensor import Tensor, no_grad
from .tokenizers import ByteLevelBPE, Tokenizer, WordPieceTokenizer
from .train import History, TrainConfig, Trainer


SPLIT_STREAM = 1  # see split()


@dataclass
class StageResult:
    """What one stage produced: the trained model, its history and the numbers worth reporting."""

    model: object
    history: History
    metrics: dict = field(default_factory=dict)


def to_device(batch: dict, device: str) -> dict:
    """The arrays of a collated batch as Tensors on ``device`` (ids stay integers)."""
    return {k: Tensor(v, device=device) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def split(items: list, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[list, ...]:
    """Shuffle ``items`` with ``seed`` and cut them into consecutive parts of the given fractions.

    The shuffle draws from its own stream, ``default_rng([seed, SPLIT_STREAM])``: with a plain
    ``default_rng(seed)`` it would repeat the permutation that :func:`~minitx.data.sentence_order_pairs`
    used (same seed, same length) to pick the swapped half, and every held-out pair would be unswapped.
    """
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(items))
    bounds = np.cumsum([0] + [round(f * len(items)) for f in fractions[:-1]] + [len(items)])
    bounds[-1] = len(items)
    return tuple([items[i] for i in order[a:b]] for a, b in zip(bounds[:-1], bounds[1:]))


def labelled_splits(texts: list[str], labels: list[int], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """{"train", "validation", "test"} -> (texts, labels): a seeded :func:`split` of labelled texts."""
    parts = split(list(zip(texts, labels)), fractions, seed=seed)
    return {name: (list(t), list(y)) for name, (t, y) in
            zip(("train", "validation", "test"), (tuple(zip(*part)) for part in parts))}


def adamw_with_schedule(params, lr: float, steps: int, weight_decay: float = 0.01, warmup: float = 0.1):
    """AdamW with a linear warm-up over the first ``warmup`` fraction of steps, then cosine decay."""
    optimizer = optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = optim.warmup_cosine(optimizer, warmup_steps=max(1, int(warmup * steps)), total_steps=steps)
    return optimizer, scheduler


# ------------------------------------------------------------------------------------- 1. pre-training
def pretrain_bert(documents: list[list[str]], tokenizer: WordPieceTokenizer, config: BertConfig, steps: int,
                  batch_size: int = 32, lr: float = 1e-3, max_length: int = 64, device: str = "cpu",
                  seed: int = 0, progress: bool = True, checkpoint_path: str | None = None,
                  texts: list[str] = (), checkpoint_every: int = 0, resume: bool = False) -> StageResult:
    """Pre-train a BERT with L = L_MLM + L_SOP on sentence-order pairs cut from ``documents``.

    L_MLM = -(1/|M|) Σ_{t∈M} log P(x_t | x_∖M) over the masked positions M (15% of the tokens; 80% of
    those shown as [MASK], 10% as a random token, 10% unchanged), and L_SOP the cross-entropy of
    "were the two segments swapped?". ``texts`` (single sentences, e.g. the unlabelled text of a later
    fine-tuning task) join the MLM objective only: each becomes ``[CLS] text [SEP] [SEP]`` with the order
    label IGNORE_INDEX, which the SOP loss skips. Reports the held-out MLM loss (compare with ln V, the loss
    of a uniform guess) and SOP accuracy (chance: 50%). ``resume``: continue from ``checkpoint_path``
    (written every ``checkpoint_every`` steps and at the end).
    """
    pairs = sentence_order_pairs(documents, seed=seed)
    train_pairs, val_pairs = split(pairs, (0.9, 0.1), seed=seed)
    train_examples = train_pairs + [(text, "", IGNORE_INDEX) for text in texts]
    loader = DataLoader(ListDataset(train_examples), batch_size, shuffle=True, seed=seed, drop_last=True,
                        collate_fn=SOPMLMCollator(tokenizer, max_length=max_length, seed=seed))
    model = BertForPretraining(config).to(device)
    optimizer, scheduler = adamw_with_schedule(model.parameters(), lr, steps)

    def loss_fn(model, batch):  # the model's own L_MLM + L_SOP (MLM-only batches: L_MLM alone)
        terms, counts, metrics = model.loss_terms(to_device(batch, device))
        return terms, metrics, counts  # each mean with its count: data-parallel ranks weight them exactly

    def eval_fn(model):
        # A fixed masking seed, so every evaluation sees the same masked tokens.
        collate = SOPMLMCollator(tokenizer, max_length=max_length, seed=seed + 1)
        totals = {"mlm_loss": 0.0, "sop_acc": 0.0}
        for start in range(0, len(val_pairs), batch_size):
            chunk = val_pairs[start:start + batch_size]
            _, metrics = model.loss(to_device(collate(chunk), device), return_metrics=True)
            for name in totals:  # weighted by the chunk's share of the held-out pairs
                totals[name] += metrics[name] * len(chunk) / len(val_pairs)
        return {"loss": totals["mlm_loss"], **totals}

    trainer = Trainer(model, optimizer, loader, loss_fn, TrainConfig(
        steps=steps, clip_norm=1.0, eval_every=max(1, steps // 4), checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every, progress=progress, desc="pretrain BERT (MLM+SOP)"),
        scheduler=scheduler, eval_fn=eval_fn)
    if resume:
        trainer.resume(checkpoint_path)
    history = trainer.fit()
    final = history.evals[-1]
    return StageResult(model, history, {"mlm_loss": final["mlm_loss"], "sop_acc": final["sop_acc"],
                                        "uniform_loss": math.log(tokenizer.vocab_size)})


# ------------------------------------------------------------------------------------ 2. classification
def _classification_loader(tokenizer: Tokenizer, texts, labels, batch_size, max_length, shuffle, seed,
                           drop_last=False):
    """Batches of (tokenised, padded/truncated) texts with their attention mask and labels."""

    def collate(examples):
        batch_texts, batch_labels = zip(*examples)
        encoded = tokenizer.encode_batch(list(batch_texts), max_length=max_length)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "labels": np.array(batch_labels, dtype=np.int64)}

    return DataLoader(ListDataset(texts, labels), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                      collate_fn=collate)


def training_batch_size(batch_size: int, examples: int) -> int:
    """The batch size of a training loader: training loaders drop an epoch's last, smaller batch (every
    step averages equally many examples, and data-parallel ranks split every batch evenly), so the batch is
    at most the training set."""
    return min(batch_size, examples)


def accuracy(model, tokenizer, texts, labels, batch_size=64, max_length=64, device="cpu") -> float:
    """The fraction of ``texts`` whose predicted class (argmax of the logits) equals the label."""
    model.eval()
    correct = 0
    with no_grad():
        for batch in _classification_loader(tokenizer, texts, labels, batch_size, max_length, False, 0):
            b = to_device(batch, device)
            logits = model(b["input_ids"], b["attention_mask"])  # (B, classes)
            correct += int((logits.argmax(axis=-1).numpy() == batch["labels"]).sum())
    return correct / len(texts)


def train_classifier(model, params, tokenizer, splits: dict, steps: int, batch_size: int, lr: float,
                     max_length: int, device: str, seed: int, progress: bool, desc: str,
                     weight_decay: float = 0.01) -> StageResult:
    """Train ``model`` (ids, mask -> logits) on ``splits["train"]`` with AdamW on ``params``; report
    validation accuracy during training and validation/test accuracy at the end."""
    texts, labels = splits["train"]
    loader = _classification_loader(tokenizer, texts, labels, training_batch_size(batch_size, len(texts)),
                                    max_length, True, seed, drop_last=True)
    optimizer, scheduler = adamw_with_schedule(params, lr, steps, weight_decay=weight_decay)

    def loss_fn(model, batch):
        b = to_device(batch, device)
        logits = model(b["input_ids"], b["attention_mask"])
        return F.cross_entropy(logits, b["labels"]), {}

    def eval_fn(model):
        return {"val_acc": accuracy(model, tokenizer, *splits["validation"], max_length=max_length, device=device)}

    trainer = Trainer(model, optimizer, loader, loss_fn, TrainConfig(
        steps=steps, clip_norm=1.0, eval_every=max(1, steps // 4), progress=progress, desc=desc),
        scheduler=scheduler, eval_fn=eval_fn)
    history = trainer.fit()
    metrics = {"val_acc": history.evals[-1]["val_acc"]}
    if "test" in splits:
        metrics["test_acc"] = accuracy(model, tokenizer, *splits["test"], max_length=max_length, device=device)
    return StageResult(model, history, metrics)


def adapter_features(adapter: TaskAdapter, tokenizer: Tokenizer, texts: list[str], batch_size: int = 64,
                     max_length: int = 64, progress: bool = False) -> np.ndarray:
    """The adapter's pooled features f (N, D) of every text, as a NumPy array.

    Texts are batched in order of length, so a batch holds little padding (padding costs time, never
    correctness: the pooling is masked). The encoder is frozen, so these never change during training.
    """
    lengths = [len(ids) for ids in tokenizer.encode_batch(texts, max_length=max_length, padding=False)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(texts), adapter.encoder.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc="encoder features", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        batch = tokenizer.encode_batch([texts[i] for i in rows], max_length=max_length)
        out[rows] = adapter.features(batch["input_ids"], batch["attention_mask"]).numpy()
    return out


def finetune_adapter(encoder, tokenizer, splits: dict, steps: int = 1500, batch_size: int = 64, lr: float = 3e-2,
                     max_length: int = 64, device: str = "cpu", seed: int = 0, progress: bool = True) -> StageResult:
    """The seed's TaskAdapter: frozen ``encoder``, masked mean pooling, a linear classifier trained with AdamW.

    Because the encoder is frozen, its pooled features f are computed once per text
    (:func:`adapter_features`) and the classifier trains on them: logistic regression, softmax(W f + b),
    cheap enough for many epochs. Reports validation and test accuracy.
    """
    num_classes = int(max(splits["train"][1])) + 1
    adapter = TaskAdapter(encoder, num_classes).to(device)
    features = {name: adapter_features(adapter, tokenizer, texts, max_length=max_length, progress=progress)
                for name, (texts, _) in splits.items()}
    labels = {name: np.asarray(y, dtype=np.int64) for name, (_, y) in splits.items()}
    loader = DataLoader(ListDataset(features["train"], labels["train"]),
                        training_batch_size(batch_size, len(labels["train"])), shuffle=True, seed=seed, drop_last=True)
    optimizer, scheduler = adamw_with_schedule(adapter.classifier_parameters(), lr, steps)

    def loss_fn(model, batch):
        x, y = batch
        return F.cross_entropy(model.classifier(Tensor(x, device=device)), y), {}

    def split_accuracy(name: str) -> float:
        logits = adapter.classifier(Tensor(features[name], device=device))  # (N, classes)
        return float((logits.argmax(axis=-1).numpy() == labels[name]).mean())

    trainer = Trainer(adapter, optimizer, loader, loss_fn, TrainConfig(
        steps=steps, clip_norm=1.0, eval_every=max(1, steps // 4), progress=progress, desc="fine-tune TaskAdapter"),
        scheduler=scheduler, eval_fn=lambda model: {"val_acc": split_accuracy("validation")})
    history = trainer.fit()
    metrics = {"val_acc": history.evals[-1]["val_acc"]}
    if "test" in features:
        with no_grad():
            metrics["test_acc"] = split_accuracy("test")
    return StageResult(adapter, history, metrics)


# ---------------------------------------------------------------------------------------------- 3. GPT
def lm_windows(ids: list[int], length: int, stride: int | None = None) -> np.ndarray:
    """Cut a token stream into (N, length) windows, one every ``stride`` tokens (default: ``length``).

    For ``GPT.loss`` use length = max_len + 1: a window's first max_len tokens are read and each is scored
    on the token after it, so every position of the model is trained."""
    stride = stride or length
    starts = range(0, len(ids) - length + 1, stride)  # the last window may end at the last token
    return np.array([ids[s:s + length] for s in starts], dtype=np.int64)


def train_gpt(text: str, tokenizer: Tokenizer, config: GPTConfig, steps: int, batch_size: int = 16,
              lr: float = 3e-3, device: str = "cpu", seed: int = 0, progress: bool = True,
              checkpoint_path: str | None = None, checkpoint_every: int = 0, resume: bool = False) -> StageResult:
    """Train a GPT on ``text`` with the next-token loss -(1/T) Σ_t log P(x_{t+1} | x_≤t).

    ``resume``: continue from the checkpoint in ``checkpoint_path`` (written every ``checkpoint_every`` steps)."""
    windows = lm_windows(tokenizer.encode(text), config.max_len + 1, stride=config.max_len // 2)  # (N, T + 1)
    train_windows, val_windows = split(list(windows), (0.95, 0.05), seed=seed)
    loader = DataLoader(ListDataset(train_windows), batch_size, shuffle=True, seed=seed, drop_last=True)
    model = GPT(config).to(device)
    optimizer, scheduler = adamw_with_schedule(model.parameters(), lr, steps)

    def loss_fn(model, batch):
        return model.loss(Tensor(batch, device=device)), {}

    def eval_fn(model):
        chunks = [np.stack(val_windows[i:i + batch_size]) for i in range(0, len(val_windows), batch_size)]
        return {"loss": float(np.mean([model.loss(Tensor(c, device=device)).item() for c in chunks]))}

    trainer = Trainer(model, optimizer, loader, loss_fn, TrainConfig(
        steps=steps, clip_norm=1.0, eval_every=max(1, steps // 4), checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every, progress=progress, desc="train GPT"), scheduler=scheduler, eval_fn=eval_fn)
    if resume:
        trainer.resume(checkpoint_path)
    history = trainer.fit()
    return StageResult(model, history, {"val_loss": history.evals[-1]["loss"],
                                        "uniform_loss": math.log(tokenizer.vocab_size)})


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 60, **sampling) -> str:
    """The prompt continued by ``model`` (``sampling``: temperature, top_k, top_p, greedy, seed)."""
    ids = model.generate(tokenizer.encode(prompt), max_new_tokens=max_new_tokens, **sampling)
    return tokenizer.decode(list(ids))


def finetune_gpt_classifier(gpt: GPT, tokenizer: Tokenizer, splits: dict, steps: int = 300, batch_size: int = 32,
                            lr: float = 1e-3, max_length: int = 64, device: str = "cpu", seed: int = 0,
                            progress: bool = True) -> StageResult:
    """The seed's GPT sentiment fine-tuning: score the last real token of each padded sequence, train all
    weights with AdamW (the loop calls ``backward()`` and ``step()``), validate accuracy."""
    num_classes = int(max(splits["train"][1])) + 1
    max_length = min(max_length, gpt.config.max_len)  # the model has no positions beyond max_len
    model = GPTForSequenceClassification.from_lm(gpt, num_classes).to(device)
    return train_classifier(model, model.parameters(), tokenizer, splits, steps, batch_size, lr, max_length,
                            device, seed, progress, "fine-tune GPT classifier")


def train_tokenizers(documents: list[list[str]], sentences: list[str], wordpiece_vocab: int, bpe_vocab: int):
    """A WordPiece vocabulary (for BERT) and a byte-level BPE (for GPT) learned from the built-in text."""
    texts = [" ".join(doc) for doc in documents] + list(sentences)
    return WordPieceTokenizer.train(texts, vocab_size=wordpiece_vocab), ByteLevelBPE.train(texts, vocab_size=bpe_vocab)
