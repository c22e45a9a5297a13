"""Chapters 20 (the modern blocks) and 21 (running a real LLM): they run in quick mode and write their figures
(imported as modules here; tests/test_tutorials.py also runs every chapter as a script, with and without
PyTorch), and each chapter's checks reject deliberately wrong implementations."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import import_chapter

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
QUICK_LIMIT_S = 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_loaded: dict = {}


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    """``chapter(stem)`` runs that chapter once as a module in quick mode -> (module, its figure folder)."""

    def load(stem: str):
        if stem not in _loaded:
            out = tmp_path_factory.mktemp(stem)
            start = time.perf_counter()
            module = import_chapter(TUTORIALS, stem, out)
            _loaded[stem] = (module, out / stem, time.perf_counter() - start)
        return _loaded[stem]

    return load


def assert_figures(folder: Path, names: list[str]) -> None:
    for name in names:
        png = folder / f"{name}.png"
        assert png.is_file(), f"missing {png.name}; found {sorted(p.name for p in folder.glob('*'))}"
        data = png.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{png} is not a non-empty PNG"


def rejects(check, impl, what: str) -> None:
    with pytest.raises(AssertionError):
        check(impl)
        pytest.fail(f"the check accepted {what}")


# ---------------------------------------------------------------------------------------- chapter 20
def test_20_runs_in_quick_mode_and_writes_its_figures(chapter):
    _, folder, seconds = chapter("20_modern_blocks")
    assert seconds < QUICK_LIMIT_S, f"chapter 20 took {seconds:.1f} s in quick mode"
    assert_figures(folder, ["rope_relative", "kv_cache_memory"])


def test_20_checks_reject_wrong_blocks(chapter):
    ch, _, _ = chapter("20_modern_blocks")
    rejects(ch.check_rms_norm, lambda x, g, eps: ch.layer_norm(x, g, 0.0, eps), "LayerNorm for RMSNorm")
    rejects(ch.check_rms_norm, lambda x, g, eps: x / np.sqrt(np.var(x, -1, keepdims=True) + eps) * g,
            "the variance instead of the mean square")

    def rope_wrong_frequencies(x, positions, base, interleaved):  # ω_i = base^(-i/d) instead of base^(-2i/d)
        return ch.rope(x, positions, base ** 0.5, interleaved)

    def rope_wrong_pairs(x, positions, base, interleaved):  # always rotate-half, whatever the layout
        return ch.rope(x, positions, base, False)

    def rope_absolute(x, positions, base, interleaved):  # adds a position vector instead of rotating
        return x + np.sin(ch.rope_angles(positions, x.shape[-1], base)).repeat(2, -1)

    for wrong in (rope_wrong_frequencies, rope_wrong_pairs, rope_absolute):
        rejects(ch.check_rope, wrong, wrong.__name__)
    rejects(ch.check_permutation, lambda w, heads: w, "no permutation")
    rejects(ch.check_permutation, lambda w, heads: nn_inverse(w, heads), "the inverse permutation")
    rejects(ch.check_swiglu, lambda x, g, u, d: (ch.silu(x @ u.T) * (x @ g.T)) @ d.T, "gate and up swapped")
    rejects(ch.check_swiglu, lambda x, g, u, d: ((x @ g.T) / (1 + np.exp(-(x @ g.T))) + x @ u.T) @ d.T,
            "a sum instead of the gate's product")

    def gqa_tiled(q, k, v, causal):  # query head h reads kv head h % H_kv: the wrong grouping
        g = q.shape[1] // k.shape[1]
        return ch.gqa(q, np.tile(k, (1, g, 1, 1)), np.tile(v, (1, g, 1, 1)), causal)

    def gqa_unscaled(q, k, v, causal):
        return ch.gqa(q * math.sqrt(q.shape[-1]), k, v, causal)

    rejects(ch.check_gqa, gqa_tiled, "kv heads tiled instead of repeated")
    rejects(ch.check_gqa, gqa_unscaled, "attention without 1/√d")


def nn_inverse(w, heads):
    from minitx.nn import interleaved_to_rotate_half
    return interleaved_to_rotate_half(w, heads)


# ---------------------------------------------------------------------------------------- chapter 21
@pytest.fixture(scope="module")
def chapter_21(chapter):
    from helpers import fetched_or_skip
    from minitx.data.fetch import smollm2_path
    fetched_or_skip(smollm2_path, "SmolLM2-135M (chapter 21)")
    return chapter("21_running_a_real_llm")


def test_21_runs_in_quick_mode_and_writes_its_figures(chapter_21):
    _, folder, seconds = chapter_21
    assert seconds < QUICK_LIMIT_S, f"chapter 21 took {seconds:.1f} s in quick mode"
    assert_figures(folder, ["q4_1_error", "bytes_per_token"])


def test_21_checks_reject_wrong_dequantisation_and_quantisation(chapter_21):
    ch = chapter_21[0]

    def q4_1_nibbles_swapped(blocks):
        fixed = blocks.copy()
        fixed[:, 4:] = (blocks[:, 4:] << 4) | (blocks[:, 4:] >> 4)
        return ch.dequant_q4_1(fixed)

    def q4_1_interleaved(blocks):  # weights 2j, 2j+1 in byte j: not GGUF's layout
        w = ch.dequant_q4_1(blocks)
        return np.stack([w[:, :16], w[:, 16:]], axis=-1).reshape(w.shape)

    def q4_1_without_minimum(blocks):
        m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        return ch.dequant_q4_1(blocks) - m

    for wrong in (q4_1_nibbles_swapped, q4_1_interleaved, q4_1_without_minimum):
        rejects(ch.check_q4_1, wrong, wrong.__name__)
    rejects(ch.check_q8_0, lambda b: b[:, 0:2].copy().view(np.float16).astype(np.float32) * b[:, 2:], "unsigned Q8_0")

    def quantize_floor(w):
        d, m, q = ch.quantize_q4_1(w)
        return d, m, np.floor((w - m) / d)

    def quantize_16_levels(w):  # d = (max - min)/16: the top level is never reached and the grid is wrong
        m = w.min(1, keepdims=True)
        d = (w.max(1, keepdims=True) - m) / 16
        return d, m, np.clip(np.round((w - m) / d), 0, 15)

    rejects(ch.check_quantize, quantize_floor, "floor instead of round")
    rejects(ch.check_quantize, quantize_16_levels, "16 steps instead of 15")
