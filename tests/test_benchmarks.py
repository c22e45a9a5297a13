"""Every benchmark script runs to the end in its smallest setting (so a refactor cannot break one unseen).

These check that the scripts work, not what they measure: the figures come from full runs, recorded in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import fetched_or_skip

from minitx.data.fetch import minilm_path, movie_reviews

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> str:
    """stdout of ``python benchmarks/<script> <args>``; fails the test with stderr if the script fails."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_bench_kernels_quick():
    out = run_benchmark("bench_kernels.py", "--quick")
    assert out.count("speed-up") == 3 and "attention fwd+bwd" in out and "ffn fwd+bwd gelu" in out


def test_bench_train_step_quick():
    pytest.importorskip("torch", reason="PyTorch is the reference (pip install 'minitx[test]')")
    out = run_benchmark("bench_train_step.py", "--quick")
    assert "minitx (fused kernels off)" in out and "minitx (fused kernels on)" in out


def test_movie_reviews_quick():
    fetched_or_skip(movie_reviews, "the movie reviews")
    out = run_benchmark("movie_reviews.py", "--quick")
    assert "bag-of-words logistic regression" in out and "GPTForSequenceClassification" in out


def test_movie_reviews_minilm_on_a_few_sentences():
    fetched_or_skip(movie_reviews, "the movie reviews"), fetched_or_skip(minilm_path, "all-MiniLM-L6-v2")
    out = run_benchmark("movie_reviews_minilm.py", "--limit", "24", "--epochs", "3")
    assert "TEST ACCURACY" in out and "(24 sentences)" in out
