"""Batches for BERT-style pre-training: masked language modelling and sentence order.

**Masked language modelling (MLM).**  Some tokens of the input are hidden
and the model must recover them.  Each real, non-special token is chosen
independently with probability ``mlm_probability`` (15%).  A chosen token
is replaced by ``[MASK]`` 80% of the time, by a random non-special token 10%
of the time, and left as it is 10% of the time (so the model cannot assume
that unmasked tokens are always right).  ``labels`` hold the original id at
chosen positions and -100 ("ignore") everywhere else.

**Sentence-order prediction (SOP, from ALBERT).**  A document is cut into
two consecutive segments A and B.  The model sees ``[CLS] A [SEP] B [SEP]``
or, for half the examples, the swapped ``[CLS] B [SEP] A [SEP]``, and
predicts whether the order was swapped (label 1) or not (label 0).  Since
both segments always come from the same document, topic gives nothing
away: only the order of the content does.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..functional import IGNORE_INDEX
from ..tokenizers.base import Tokenizer


class MLMCollator:
    """Turns a list of texts into a masked-language-modelling batch.

    Args:
        tokenizer: must have a mask token (e.g. a :class:`~minitx.tokenizers.WordPieceTokenizer`).
        mlm_probability: chance that a real, non-special token is chosen.
        seed: seed of the masking's random generator.
        max_length: texts are truncated to this many tokens (special tokens included).

    The generator's state can be saved and restored (:meth:`state_dict`,
    :meth:`load_state_dict`), so a resumed run masks exactly as the
    uninterrupted run would have.
    """

    def __init__(self, tokenizer: Tokenizer, mlm_probability: float = 0.15, seed: int = 0,
                 max_length: int | None = None) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token")
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.max_length = max_length
        self.rng = np.random.default_rng(seed)
        self.special_ids = np.array(sorted(tokenizer.special_ids), dtype=np.int64)
        self.replacement_ids = np.setdiff1d(np.arange(tokenizer.vocab_size, dtype=np.int64), self.special_ids)

    def mask_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the 80/10/10 masking to a ``(B, T)`` batch.

        Returns:
            ``(masked_input_ids, labels)``; ``labels`` is the original id where
            a token was chosen and -100 elsewhere.
        """
        rng = self.rng
        eligible = (attention_mask == 1) & ~np.isin(input_ids, self.special_ids)
        chosen = eligible & (rng.random(input_ids.shape) < self.mlm_probability)
        labels = np.where(chosen, input_ids, IGNORE_INDEX)
        action = rng.random(input_ids.shape)
        to_mask = chosen & (action < 0.8)
        to_random = chosen & (action >= 0.8) & (action < 0.9)
        masked = input_ids.copy()
        masked[to_mask] = self.tokenizer.mask_token_id
        masked[to_random] = rng.choice(self.replacement_ids, size=int(to_random.sum()))
        return masked, labels

    def _finish(self, encoded: dict[str, Any]) -> dict[str, Any]:
        encoded["input_ids"], encoded["labels"] = self.mask_tokens(encoded["input_ids"], encoded["attention_mask"])
        return encoded

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Encode, pad and mask ``texts``: ``input_ids``, ``attention_mask``, ``labels`` (+ ``token_type_ids``)."""
        return self._finish(self.tokenizer.encode_batch(list(texts), max_length=self.max_length))

    def state_dict(self) -> dict[str, Any]:
        """The random generator's state."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class SOPMLMCollator(MLMCollator):
    """Batches for BERT/ALBERT pre-training: MLM and sentence-order prediction together.

    Each example is ``(segment_a, segment_b, sop_label)`` as made by
    :func:`sentence_order_pairs`; it becomes ``[CLS] a [SEP] b [SEP]`` with
    ``token_type_ids`` 0 for ``[CLS] a [SEP]`` and 1 for ``b [SEP]``, cut to
    ``max_length`` (longest segment first), padded and masked.

    Returns:
        ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``
        (MLM, ``(B, T)``) and ``sop_labels`` (``(B,)``, 1 = swapped).
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int = 128, mlm_probability: float = 0.15,
                 seed: int = 0) -> None:
        super().__init__(tokenizer, mlm_probability, seed, max_length)

    def __call__(self, examples: Sequence[tuple[str, str, int]]) -> dict[str, np.ndarray]:
        first, second, sop = zip(*examples)
        batch = self._finish(self.tokenizer.encode_batch(list(first), texts_pair=list(second),
                                                         max_length=self.max_length))
        batch["sop_labels"] = np.array(sop, dtype=np.int64)
        return batch


def sentence_order_pairs(documents: Sequence[Sequence[str]], seed: int = 0) -> list[tuple[str, str, int]]:
    """One sentence-order example per document of at least two sentences.

    The document's sentences are cut at a random point into two consecutive
    segments A (before) and B (after).  Exactly half of the examples
    (rounded down), chosen at random, are swapped to ``(B, A, 1)``; the rest
    stay ``(A, B, 0)``.

    Args:
        documents: each document a list of sentences in their true order.
        seed: seed for the cut points and the choice of swapped examples.
    """
    rng = np.random.default_rng(seed)
    usable = [doc for doc in documents if len(doc) >= 2]
    swapped = np.zeros(len(usable), dtype=bool)
    swapped[rng.permutation(len(usable))[: len(usable) // 2]] = True
    pairs = []
    for doc, swap in zip(usable, swapped):
        cut = int(rng.integers(1, len(doc)))
        a, b = " ".join(doc[:cut]), " ".join(doc[cut:])
        pairs.append((b, a, 1) if swap else (a, b, 0))
    return pairs
