"""Byte-pair-encoding style merge learning, shared by the BPE and WordPiece trainers.

The corpus is a table of distinct words, each a tuple of symbol ids, with
how often the word occurs.  One training step finds the adjacent pair of
symbols that occurs most often (counting each word as many times as it
occurs), makes the pair's concatenation a new symbol, and rewrites every
word that contains the pair.  Steps repeat until the vocabulary is full or
no pair occurs ``min_frequency`` times.

Recounting all pairs after every merge would cost a pass over the corpus per
merge, so the counts are kept up to date instead: only the words holding the
merged pair change, and their old pairs are subtracted and new pairs added.
A heap of ``(-count, pair)`` entries finds the most frequent pair; entries
whose count has since changed are stale and are skipped when popped.
Ties go to the pair with the smaller ids, so training is deterministic.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Callable, Hashable, Sequence, TypeVar

T = TypeVar("T", bound=Hashable)


def learn_merges(
    word_counts: dict[tuple[int, ...], int],
    symbols: Sequence[T],
    join: Callable[[T, T], T],
    vocab_size: int,
    min_frequency: int = 2,
) -> list[T]:
    """Grow ``symbols`` by merging frequent adjacent pairs.

    Args:
        word_counts: each distinct word as a tuple of indices into ``symbols``,
            mapped to its number of occurrences.
        symbols: the starting symbols (bytes, characters ...); index = id.
        join: makes the symbol for a merged pair.  When the result already
            exists, the existing id is reused and the vocabulary does not grow.
        vocab_size: stop once ``len(symbols)`` reaches this.
        min_frequency: stop once the most frequent pair occurs fewer times.

    Returns:
        The grown list of symbols; a symbol's index is its id, so symbols
        added earlier (from more frequent pairs) have smaller ids.
    """
    symbols = list(symbols)
    index = {s: i for i, s in enumerate(symbols)}
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_count[pair] += f
            pair_words[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)

    while len(symbols) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # stale entry: the count changed after it was pushed
        if -neg < min_frequency:
            break
        merged = join(symbols[pair[0]], symbols[pair[1]])
        if merged not in index:
            index[merged] = len(symbols)
            symbols.append(merged)
        new_id = index[merged]
        changed: set[tuple[int, int]] = set()
        for w in pair_words.pop(pair):
            word, f = words[w], freqs[w]
            for p in zip(word, word[1:]):
                pair_count[p] -= f
                changed.add(p)
            rewritten, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    rewritten.append(new_id)
                    i += 2
                else:
                    rewritten.append(word[i])
                    i += 1
            words[w] = rewritten
            for p in zip(rewritten, rewritten[1:]):
                pair_count[p] += f
                pair_words[p].add(w)
                changed.add(p)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                del pair_count[p]
    return symbols
