"""Frozen all-MiniLM-L6-v2 sentence embeddings: minitx vs Hugging Face transformers, sentences/s, in one run.

    python benchmarks/bench_minilm_embed.py [--sentences N] [--batch-size 64] [--max-length 128] [--repeats R]
                                            [--threads 2] [--quick]

Both sides do the whole job of :func:`minitx.embed.embed` on the same sentences (the first N training
sentences of the movie-review data, fetched by minitx.data.fetch, like the weights): tokenise, sort by
length, run batches of ``--batch-size`` sentences cut to ``--max-length`` tokens through the frozen encoder
under no_grad, mean-pool over the real tokens and scale to unit length. minitx: ``minitx.embed.embed`` with
the library's defaults (the fused kernels). transformers: ``AutoTokenizer`` (the Rust tokeniser) and
``AutoModel`` in ``torch.inference_mode()``, the same batches in the same order, ``torch.set_num_threads``.

Timing: one untimed pass of each first, then ``--repeats`` rounds, each embedding all N sentences with one
library and then the other (the order flipping every round). Reported: sentences/s of each (median over the
rounds), the per-round ratio minitx / transformers in speed (> 1: minitx is faster), and the largest
difference between the two libraries' embeddings.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=1024, help="sentences embedded per round (default 1024)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 sentences in batches of 8, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.sentences, args.batch_size, args.repeats = 16, 8, 1
    for var in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    import minitx  # before NumPy: its process settings must reach OpenBLAS when it starts
    import numpy as np
    from minitx.data.fetch import minilm_path, movie_reviews
    from minitx.embed import embed
    from minitx.hub import load_pretrained
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    texts = movie_reviews()["train"][0][:args.sentences]
    folder = minilm_path()
    model, tokenizer = load_pretrained(folder)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    hf_model = transformers.AutoModel.from_pretrained(str(folder)).eval()

    def run_minitx():
        return embed(texts, model, tokenizer, batch_size=args.batch_size, max_length=args.max_length)

    def run_transformers():
        lengths = [len(ids) for ids in hf_tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), hf_model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), args.batch_size):
                rows = order[start:start + args.batch_size]
                batch = hf_tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                     max_length=args.max_length, return_tensors="pt")
                hidden = hf_model(**batch).last_hidden_state  # (B, T, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    ours, theirs = run_minitx(), run_transformers()  # untimed: Numba compiles, both warm up
    from _machine import machine

    print(machine())
    print(f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}, minitx {getattr(minitx, '__version__', '?')}; {len(texts)} sentences, "
          f"batches of {args.batch_size}, max length {args.max_length}, {args.repeats} rounds")
    print(f"largest |minitx - transformers| over the embeddings: {np.abs(ours - theirs).max():.1e}")
    rates = {"minitx": [], "transformers": []}
    for r in range(args.repeats):
        order = [("minitx", run_minitx), ("transformers", run_transformers)]
        for name, run in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            run()
            rates[name].append(len(texts) / (time.perf_counter() - start))
    ratios = [a / b for a, b in zip(rates["minitx"], rates["transformers"])]
    for name, values in rates.items():
        print(f"  {name:<12} sentences/s per round: {' '.join(f'{x:.0f}' for x in values)}; "
              f"median {statistics.median(values):.0f}")
    print(f"  speed minitx / transformers, median over the rounds: {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}x; goal >= 1.0x)")


if __name__ == "__main__":
    main()
