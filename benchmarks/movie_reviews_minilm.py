"""Frozen all-MiniLM-L6-v2 + a linear classifier (TaskAdapter) on movie-review sentiment.

    python benchmarks/movie_reviews_minilm.py [--batch-size 64] [--epochs 600] [--lr 1e-2] [--seed 0] [--limit N]

The encoder is frozen, so the adapter's pooled features (masked mean of the last hidden states) are the
same every epoch: they are computed once per sentence, under ``no_grad``, in batches of similar length.
Then only the adapter's classifier trains, full-batch AdamW on the cached training features, and the epoch
count is chosen by validation accuracy. Prints test accuracy and timings (record them in RESULTS.md).
"""

from __future__ import annotations

import argparse
import platform
import time

import minitx  # before NumPy: its process settings must reach OpenBLAS when it starts
import minitx.functional as F
import numpy as np
from minitx import Tensor, no_grad
from minitx.data.fetch import minilm_path, movie_reviews
from minitx.hub import load_pretrained
from minitx.models.task_adapter import TaskAdapter
from minitx.optim import AdamW
from minitx.pipelines import adapter_features


def on_classifier_device(adapter: TaskAdapter, features: np.ndarray) -> Tensor:
    """Cached features (N, D) as a Tensor on the device of the adapter's classifier."""
    return Tensor(features, device=adapter.classifier.weight.device)


def accuracy(adapter: TaskAdapter, features: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of rows whose argmax of classifier(features) equals the label."""
    with no_grad():
        logits = adapter.classifier(on_classifier_device(adapter, features))  # (N, 2)
        return float((logits.numpy().argmax(-1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per encoder batch")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=600, help="full-batch classifier steps")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N sentences of each split: checks that the script runs")
    args = parser.parse_args()

    minitx.manual_seed(args.seed)
    splits = {name: (texts[:args.limit], labels[:args.limit])
              for name, (texts, labels) in movie_reviews(seed=args.seed).items()}
    start = time.perf_counter()
    encoder, tokenizer = load_pretrained(minilm_path())
    adapter = TaskAdapter(encoder, num_classes=2)
    print(f"loaded all-MiniLM-L6-v2 in {time.perf_counter() - start:.1f} s")

    features, labels = {}, {}
    start = time.perf_counter()
    for name, (texts, y) in splits.items():
        features[name] = adapter_features(adapter, tokenizer, texts, args.batch_size, args.max_length,
                                          progress=True)
        labels[name] = np.asarray(y)
    n_sentences = sum(len(t) for t, _ in splits.values())
    encode_s = time.perf_counter() - start
    print(f"encoded {n_sentences} sentences in {encode_s:.1f} s ({n_sentences / encode_s:.0f} sentences/s)")

    start = time.perf_counter()
    optimizer = AdamW(adapter.classifier_parameters(), lr=args.lr, weight_decay=args.weight_decay)
    x_train, y_train = on_classifier_device(adapter, features["train"]), labels["train"]
    best = (-1.0, 0, None)  # (validation accuracy, epoch, classifier weights)
    for epoch in range(1, args.epochs + 1):
        loss = F.cross_entropy(adapter.classifier(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        val = accuracy(adapter, features["validation"], labels["validation"])
        if val > best[0]:
            best = (val, epoch, [p.data.copy() for p in adapter.classifier_parameters()])
    for p, value in zip(adapter.classifier_parameters(), best[2]):
        p.data = value
    train_s = time.perf_counter() - start
    test = accuracy(adapter, features["test"], labels["test"])
    print(f"classifier: {args.epochs} full-batch AdamW steps in {train_s:.1f} s; best validation accuracy "
          f"{best[0]:.2%} at step {best[1]}")
    print(f"TEST ACCURACY {test:.2%} ({len(labels['test'])} sentences)")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
