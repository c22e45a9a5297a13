"""Movie-review sentiment with minitx alone: a bag-of-words baseline and a pre-trained GPT classifier.

    python benchmarks/movie_reviews.py [--quick] [--seed 0]

Data: the 10,568 labelled movie-review sentences of ``vaderSentiment==3.3.2`` (fetched once through pip
and cached; :func:`minitx.data.movie_reviews`), split 80/10/10 into train/validation/test with a seed.
The baseline's epoch is chosen on the validation split; the test split is read once per pipeline, at the end.

1. Baseline — bag-of-words logistic regression: x ∈ {0,1}^V marks which vocabulary words a sentence
   contains, P(y = positive | x) = softmax(W x + b), trained with AdamW (weight decay = L2 penalty).
2. minitx pipeline — the seed's GPT sentiment flow on our own pre-training:
   a) train a byte-level BPE vocabulary on the training sentences;
   b) pre-train a GPT language model on the training sentences only (next-token loss; no labels);
   c) fine-tune :class:`~minitx.models.GPTForSequenceClassification` from it: tokenise, pad/truncate,
      attention mask, batches, AdamW, validation accuracy during training;
   then report test accuracy beside the baseline's, with timings.
"""

from __future__ import annotations

import argparse
import platform
import time

import minitx  # before NumPy: its process settings must reach OpenBLAS when it starts
import minitx.functional as F
import numpy as np
from minitx import Tensor, no_grad, nn
from minitx.data import DataLoader, ListDataset, movie_reviews
from minitx.models import GPTConfig
from minitx.optim import AdamW
from minitx.pipelines import finetune_gpt_classifier, train_gpt
from minitx.tokenizers import ByteLevelBPE, WordPieceTokenizer


# ------------------------------------------------------------------------------------ 1. bag of words
def bag_of_words(tokenizer: WordPieceTokenizer, texts: list[str]) -> np.ndarray:
    """(N, V) float32: 1 where the sentence contains the vocabulary entry, else 0 (special tokens dropped)."""
    encoded = tokenizer.encode_batch(texts, padding=False)["input_ids"]
    x = np.zeros((len(texts), tokenizer.vocab_size), dtype=np.float32)
    for row, ids in enumerate(encoded):
        x[row, ids] = 1.0
    x[:, sorted(tokenizer.special_ids)] = 0.0
    return x


def bow_logistic_regression(tokenizer, splits, epochs: int, lr: float, weight_decay: float, seed: int) -> dict:
    """Mini-batch AdamW on softmax(W x + b); the epoch with the best validation accuracy is kept."""
    minitx.manual_seed(seed)
    features = {name: bag_of_words(tokenizer, texts) for name, (texts, _) in splits.items()}
    labels = {name: np.asarray(y, dtype=np.int64) for name, (_, y) in splits.items()}
    model = nn.Linear(tokenizer.vocab_size, 2)
    optimizer = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(ListDataset(features["train"], labels["train"]), 64, shuffle=True, seed=seed)

    def accuracy(name):
        with no_grad():
            return float((model(Tensor(features[name])).numpy().argmax(-1) == labels[name]).mean())

    best = (-1.0, None)
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(Tensor(x)), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        val = accuracy("validation")
        if val > best[0]:
            best = (val, {k: v.copy() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    return {"val_acc": best[0], "test_acc": accuracy("test")}


# ------------------------------------------------------------------------------ 2. pre-trained GPT
def gpt_pipeline(splits, args) -> dict:
    """Byte-level BPE and a GPT pre-trained on the training sentences, then the seed's classifier flow."""
    train_text = "\n".join(splits["train"][0])
    tokenizer = ByteLevelBPE.train([train_text], vocab_size=args.bpe_vocab)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, max_len=args.context, d_model=args.d_model,
                       num_heads=args.heads, num_layers=args.layers, dim_feedforward=4 * args.d_model,
                       dropout=args.dropout)
    minitx.manual_seed(args.seed)
    started = time.perf_counter()
    lm = train_gpt(train_text, tokenizer, config, steps=args.pretrain_steps, batch_size=32, lr=args.pretrain_lr,
                   seed=args.seed)
    pretrain_s = time.perf_counter() - started
    started = time.perf_counter()
    classifier = finetune_gpt_classifier(lm.model, tokenizer, splits, steps=args.finetune_steps, batch_size=32,
                                         lr=args.finetune_lr, max_length=args.context, seed=args.seed)
    return {**classifier.metrics, "lm_val_loss": lm.metrics["val_loss"], "uniform_loss": lm.metrics["uniform_loss"],
            "pretrain_s": pretrain_s, "finetune_s": time.perf_counter() - started}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs, not accuracy")
    parser.add_argument("--bow-vocab", type=int, default=8000)
    parser.add_argument("--bpe-vocab", type=int, default=2000)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-steps", type=int, default=800)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    args = parser.parse_args(argv)
    if args.quick:
        args.bow_vocab, args.bpe_vocab, args.d_model, args.layers = 1000, 400, 32, 1
        args.pretrain_steps, args.finetune_steps = 20, 20

    splits = movie_reviews(seed=args.seed)
    print(f"movie reviews: {', '.join(f'{k} {len(v[0])}' for k, v in splits.items())} sentences; "
          f"{platform.processor() or platform.machine()}, {minitx.__name__} on the CPU")
    started = time.perf_counter()
    wordpiece = WordPieceTokenizer.train(splits["train"][0], vocab_size=args.bow_vocab)
    bow = bow_logistic_regression(wordpiece, splits, epochs=10, lr=1e-3, weight_decay=0.01, seed=args.seed)
    bow_s = time.perf_counter() - started
    gpt = gpt_pipeline(splits, args)

    print()
    print("| pipeline | validation accuracy | test accuracy | time |")
    print("|---|---|---|---|")
    print(f"| bag-of-words logistic regression (WordPiece vocab {wordpiece.vocab_size}) | {bow['val_acc']:.1%} | "
          f"{bow['test_acc']:.1%} | {bow_s:.0f} s |")
    print(f"| GPT pre-trained on the training sentences (LM loss {gpt['lm_val_loss']:.2f}, ln V = "
          f"{gpt['uniform_loss']:.2f}) + GPTForSequenceClassification | {gpt['val_acc']:.1%} | {gpt['test_acc']:.1%} | "
          f"{gpt['pretrain_s']:.0f} s + {gpt['finetune_s']:.0f} s |")


if __name__ == "__main__":
    main()
