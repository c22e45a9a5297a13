"""Byte-level BPE: minitx's ByteLevelBPE vs tiktoken, both with GPT-2's ranks, in one run.

    python benchmarks/bench_tokenizers.py [--repeats R]

Three inputs: ordinary English text (the built-in corpus, ~1 MB), the same text through a tokeniser whose
piece cache is already warm, and one 600 KB piece without spaces (a single pre-tokenised word, where only the
merge loop's cost counts: a heap of candidate merges makes it grow like n log n). Before timing, both ids
lists are compared. Reported: the median seconds of each over ``--repeats`` rounds (the two measured back to
back in every round) and the ratio minitx / tiktoken. tiktoken runs its Rust core on one thread.
"""
from __future__ import annotations

import argparse
import statistics
import time

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from minitx.data import corpus_text
from minitx.data.fetch import gpt2_ranks_path
from minitx.tokenizers import ByteLevelBPE

PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = str(gpt2_ranks_path())
    oracle = tiktoken.Encoding("gpt2", pat_str=PATTERN, mergeable_ranks=load_tiktoken_bpe(path), special_tokens={})
    text = corpus_text(6000, seed=0)
    piece = "".join("abcdefghijklmnopqrstuvwxyz"[(i * 7 + i // 26) % 26] for i in range(600_000))
    warm = ByteLevelBPE.from_tiktoken_file(path)
    assert warm.encode(text) == oracle.encode_ordinary(text)
    assert warm.encode(piece) == oracle.encode_ordinary(piece)
    cases = {
        f"ordinary text, {len(text) // 1000} KB, cold cache": lambda: ByteLevelBPE.from_tiktoken_file(path).encode(text),
        f"ordinary text, {len(text) // 1000} KB, warm cache": lambda: warm.encode(text),
        "one 600 KB piece, cold cache": lambda: ByteLevelBPE.from_tiktoken_file(path).encode(piece),
    }
    loading = statistics.median(timed(lambda: ByteLevelBPE.from_tiktoken_file(path)) for _ in range(args.repeats))
    print(f"(loading the ranks: {loading:.3f} s, subtracted from the cold-cache rows)")
    print(f"{'input':38s} {'minitx s':>9s} {'tiktoken s':>11s} {'ratio':>7s}")
    for name, ours in cases.items():
        source = piece if "piece" in name else text
        rounds = [(timed(ours) - (loading if "cold" in name else 0), timed(lambda: oracle.encode_ordinary(source)))
                  for _ in range(args.repeats)]
        a, b = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        print(f"{name:38s} {a:9.3f} {b:11.3f} {statistics.median(x / y for x, y in rounds):7.1f}")


if __name__ == "__main__":
    main()
