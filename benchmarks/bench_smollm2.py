"""SmolLM2-135M-Instruct generating text: minitx (float32, and with its layers kept Q4_1) vs transformers'
LlamaForCausalLM holding the same de-quantised float32 weights, CPU, in one run.

    python benchmarks/bench_smollm2.py [--prompt-tokens 32] [--new-tokens 64] [--rounds 3] [--threads 1]
                                       [--quick]

Each model reads the same prompt (the first ``--prompt-tokens`` tokens of a paragraph of A Tale of Two Cities)
and continues it greedily by ``--new-tokens`` tokens with a KV cache, never stopping at end-of-sequence:

- prompt tokens/s: the prompt's tokens over the time of the first forward pass (the whole prompt at once;
  both libraries compute the output layer for the last position only, the one generation reads);
- decode tokens/s: the tokens after the first over the time of their single-token steps against the cache.

minitx runs what :meth:`~minitx.models.llama.Llama.stream` runs: the prompt through the layers, then the
array-level decode step of :class:`~minitx.models.llama_decode.LlamaDecoder` (preallocated KV cache);
transformers runs the same loop by hand (``model(ids, past_key_values=…)``, argmax), so both sides do the
same work per step. The three continuations are printed as equal or not. Rounds alternate the order of the
models; the medians are reported, with the ratios to transformers.

Resident memory (VmRSS, after loading, one generated token and ``malloc_trim``) is measured in a fresh
process per model, since a process's heap does not shrink back after a model is freed. ``--threads`` (default 1) sets NumPy's
OpenBLAS, Numba and torch threads before anything is imported; on a machine shared with other jobs one thread
each gives steadier timings than two.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROSE = ROOT / "tests" / "fixtures" / "tale_of_two_cities.txt"
MODELS = ("minitx float32", "minitx Q4_1", "transformers float32")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="8 prompt tokens, 4 new, 1 round, no memory processes")
    p.add_argument("--memory-of", choices=MODELS, help=argparse.SUPPRESS)  # the child process's job
    args = p.parse_args(argv)
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.rounds = 8, 4, 1
    return args


def set_threads(threads: int) -> None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def load(name: str, f):
    """The model called ``name``: a callable ``step(ids, cache) -> (next-token logits (V,), cache)``."""
    from minitx.hub import load_gguf_llama
    from minitx.models.llama_decode import LlamaDecoder
    import numpy as np

    if name.startswith("minitx"):
        model = load_gguf_llama(f, q4_1=name.endswith("Q4_1"))[0]

        def step(ids, decoder):  # what Llama.stream does: the prompt through the layers, then the decode step
            if decoder is None:
                decoder = LlamaDecoder(model, capacity=len(ids) + 64)
                return decoder.prefill(np.array([ids]))[0], decoder
            return decoder.step(ids)[0], decoder
        return model, step
    import torch
    import transformers

    from minitx.hub import llama_config_from_gguf, llama_weights
    c = llama_config_from_gguf(f)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, intermediate_size=c.dim_feedforward,
        max_position_embeddings=c.max_len, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_base,
        tie_word_embeddings=True)).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in llama_weights(f, c, "hf").items()}, strict=False)
    hf.tie_weights()

    def step(ids, cache):  # logits_to_keep=1: the last position's logits only, as minitx's prefill
        with torch.no_grad():
            out = hf(torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].numpy(), out.past_key_values
    return hf, step


def generate(step, prompt: list[int], new_tokens: int):
    """Greedy continuation with a cache: (new ids, prompt seconds, decode seconds)."""
    start = time.perf_counter()
    logits, cache = step(prompt, None)
    prompt_seconds = time.perf_counter() - start
    ids = [int(logits.argmax())]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits, cache = step(ids[-1:], cache)
        ids.append(int(logits.argmax()))
    return ids, prompt_seconds, time.perf_counter() - start


def resident_mib() -> float:
    """VmRSS in MiB after returning freed heap memory to the system (minitx's import makes glibc keep freed
    blocks for reuse, and loading frees a float32 copy of the weights: that is not the model's memory)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def memory_of(name: str, args) -> float:
    """VmRSS (MiB) of a fresh process that loads ``name`` and generates one token."""
    done = subprocess.run([sys.executable, __file__, "--memory-of", name, "--threads", str(args.threads)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"memory of {name}: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    from minitx.data.fetch import smollm2_path  # before NumPy: minitx's process settings reach OpenBLAS
    import numpy as np
    from minitx.gguf import read_gguf
    from minitx.hub import tokenizer_from_gguf

    f = read_gguf(smollm2_path())
    prompt = tokenizer_from_gguf(f).encode(PROSE.read_text(encoding="utf-8"))[:args.prompt_tokens]
    if args.memory_of:  # torch is imported only where it runs the model
        if args.memory_of.startswith("transformers"):
            import torch
            torch.set_num_threads(args.threads)
        model, step = load(args.memory_of, f)
        generate(step, prompt, 1)
        print(resident_mib())
        return
    import torch
    torch.set_num_threads(args.threads)

    from _machine import machine

    print(f"{machine()}; {args.threads} thread(s); numpy {np.__version__}, torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}")
    steps = {name: load(name, f)[1] for name in MODELS}
    texts, times = {}, {name: {"prompt": [], "decode": []} for name in MODELS}
    for r in range(args.rounds):
        for name in (MODELS if r % 2 == 0 else MODELS[::-1]):
            ids, prompt_s, decode_s = generate(steps[name], prompt, args.new_tokens)
            texts[name] = ids
            times[name]["prompt"].append(len(prompt) / prompt_s)
            times[name]["decode"].append((args.new_tokens - 1) / decode_s if args.new_tokens > 1 else float("nan"))
    same = all(texts[name] == texts[MODELS[0]] for name in MODELS)
    print(f"{len(prompt)} prompt tokens, {args.new_tokens} new tokens (greedy, KV cache), {args.rounds} round(s); "
          f"the three continuations are {'equal' if same else 'NOT equal'}")
    memory = {name: None for name in MODELS} if args.quick else {name: memory_of(name, args) for name in MODELS}
    reference = statistics.median(times["transformers float32"]["decode"])
    reference_prompt = statistics.median(times["transformers float32"]["prompt"])
    print("\n| model | prompt tokens/s | decode tokens/s | decode vs transformers | resident MiB |")
    print("|---|---:|---:|---:|---:|")
    for name in MODELS:
        p, d = statistics.median(times[name]["prompt"]), statistics.median(times[name]["decode"])
        mib = "-" if memory[name] is None else f"{memory[name]:.0f}"
        print(f"| {name} | {p:.1f} ({p / reference_prompt:.2f}x) | {d:.2f} | {d / reference:.2f}x | {mib} |")


if __name__ == "__main__":
    main()
