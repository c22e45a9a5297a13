"""Choosing the next token from a language model's logits: greedy, temperature, top-k and top-p (nucleus).

Model-agnostic: logits (V,) in, one token id out. Any model that gives next-token logits (GPT, a Llama-style
model) decodes with :func:`sample_next_token`. Each step of generation:

    z' = filter(z / τ)                          temperature τ, then top-k, then top-p (Hugging Face's order)
    p  = softmax(z')                            the library's softmax (:func:`minitx.functional.softmax`)
    x  ~ p,  or  x = argmax z when greedy

The logits are float64 NumPy arrays: one row of V numbers, on the CPU, where the draw happens.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import functional as F
from ..tensor import Tensor


def check_sampling_arguments(temperature: float, top_k: int | None, top_p: float | None, greedy: bool) -> None:
    """Raise a ValueError naming the argument when a sampling setting is out of range."""
    if not greedy and not (isinstance(temperature, numbers.Real) and temperature > 0):
        raise ValueError(f"generate: temperature must be > 0 (greedy=True decodes by argmax), got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool) and top_k >= 1):
        raise ValueError(f"generate: top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
        raise ValueError(f"generate: top_p must lie in (0, 1] (or None), got {top_p!r}")


def probabilities(logits: np.ndarray) -> np.ndarray:
    """p = softmax(z) of a logit vector (V,), by the library's softmax; entries of -inf get probability 0."""
    return F.softmax(Tensor(logits), axis=-1).numpy()


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """z_i / τ. In softmax(z/τ), τ < 1 sharpens the distribution (τ → 0: all mass on the argmax), τ > 1
    flattens it (τ → ∞: uniform), τ = 1 leaves it unchanged."""
    return logits / temperature


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits and set the rest to -inf, so sampling picks among the k likeliest tokens:
    z'_i = z_i if i is among the k largest, else -inf. Exactly k survive (ties go to the lower id)."""
    if k >= logits.size:
        return logits.copy()
    keep = np.argsort(-logits, kind="stable")[:k]
    filtered = np.full_like(logits, -np.inf)
    filtered[keep] = logits[keep]
    return filtered


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter (Holtzman et al., 2020): sort the probabilities p_(1) ≥ p_(2) ≥ …, keep the smallest
    prefix m with Σ_{j≤m} p_(j) ≥ p and set the other logits to -inf. The nucleus grows when the model is
    unsure and shrinks to a few tokens when it is confident; p = 1 keeps every token of nonzero probability."""
    order = np.argsort(-logits, kind="stable")
    cumulative = np.cumsum(probabilities(logits[order]))
    m = min(int(np.searchsorted(cumulative, p)) + 1, logits.size)  # the first prefix whose mass reaches p
    filtered = np.full_like(logits, -np.inf)
    filtered[order[:m]] = logits[order[:m]]
    return filtered


def next_token_probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                             top_p: float | None = None) -> np.ndarray:
    """The sampling distribution softmax(filter(z/τ)) over the vocabulary, from logits (V,): temperature
    first, then the top-k filter, then the top-p filter (the order of Hugging Face's ``generate``)."""
    z = apply_temperature(np.asarray(logits, dtype=np.float64), temperature)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    return probabilities(z)


def sample_next_token(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, greedy: bool = False) -> int:
    """One token id: argmax z when ``greedy``, else a draw from :func:`next_token_probabilities`."""
    if greedy:
        return int(np.argmax(logits))
    probs = next_token_probabilities(logits, temperature, top_k, top_p)
    return int(rng.choice(probs.size, p=probs))
