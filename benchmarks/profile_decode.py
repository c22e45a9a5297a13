"""The Python overhead of a SmolLM2 decode step: through the layers vs the array-level LlamaDecoder.step.

    python benchmarks/profile_decode.py [--steps 30] [--rounds 3] [--threads 1]

For the float32 and the Q4_1 model: after the same 32-token prompt, ``--steps`` single-token steps against the
KV cache, timed in CPU seconds of this process (``time.process_time``, steadier than wall time on a shared
machine), first through the layers (``model(ids, past_kv=…, use_cache=True)``, the Tensor layer's op calls and
a concatenated cache) and then through :class:`~minitx.models.llama_decode.LlamaDecoder` (preallocated cache,
the ops' array-level forwards), alternating for ``--rounds`` rounds; medians reported. Also the number of
Python function calls of one step (cProfile), and the calls of the Tensor layer (``Function.apply``) in it.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from minitx import no_grad  # before NumPy: minitx's process settings must reach OpenBLAS when it starts
    import numpy as np
    from minitx.data.fetch import smollm2_path
    from minitx.gguf import read_gguf
    from minitx.hub import load_gguf_llama
    from minitx.models.llama_decode import LlamaDecoder

    f = read_gguf(smollm2_path())
    prompt = np.arange(100, 132)[None]  # (1, 32)
    print(f"{args.steps} decode steps after a 32-token prompt, {args.rounds} alternating rounds, {args.threads} "
          f"thread(s); load average {os.getloadavg()[0]:.1f}")
    print("| model | path | CPU ms per step (median) | rounds | function calls per step | Tensor-layer op calls |")
    print("|---|---|---:|---|---:|---:|")
    for name, q4_1 in (("float32", False), ("Q4_1", True)):
        model = load_gguf_llama(f, q4_1=q4_1)[0]

        def layer_path():
            with no_grad():
                past = model(prompt, use_cache=True)[1]

            def step(token):
                nonlocal past
                with no_grad():
                    past = model(np.array([[token]]), past_kv=past, use_cache=True)[1]
            return step

        def decoder_path():
            decoder = LlamaDecoder(model, prompt.shape[1] + args.steps + 2)
            decoder.prefill(prompt)
            return lambda token: decoder.step([token])

        times, calls = {"layers": [], "LlamaDecoder": []}, {}
        for r in range(args.rounds):
            for path, make in (("layers", layer_path), ("LlamaDecoder", decoder_path)):
                step = make()
                step(5)  # warm-up
                start = time.process_time()
                for i in range(args.steps):
                    step(7 + i)
                times[path].append((time.process_time() - start) / args.steps * 1e3)
                if r == 0:
                    profile = cProfile.Profile()
                    profile.runcall(step, 3)
                    stats = pstats.Stats(profile, stream=io.StringIO())
                    applies = sum(n for (file, _, func), (_, n, *_) in stats.stats.items()
                                  if func == "apply" and file.endswith("tensor.py"))
                    calls[path] = (stats.total_calls, applies)
        for path, values in times.items():
            print(f"| {name} | {path} | {statistics.median(values):.1f} | {' '.join(f'{v:.1f}' for v in values)} | "
                  f"{calls[path][0]} | {calls[path][1]} |")


if __name__ == "__main__":
    main()
