"""One token through SmolLM2's quantised matrices: every version of the CPU "quantized" family, in weights/s.

    python benchmarks/bench_quantized.py [--threads 1] [--rounds 9] [--rows-per-task R ...] [--quick]

Shapes (N=1 row of x, the decode step): Q4_1 (O=1536, in=576) (gate / up), (576, 1536) (down), (576, 576)
(q / output) and (192, 576) (k / v); Q8_0 (1536, 576) and (49152, 576) (the tied output layer). Each contender
is called ``reps`` times per round (about 2·10⁸ weights), the order rotated every round so the load of a
shared machine reaches all alike; printed: the median weights/s of each and the median of the per-round ratios
against v1. ``--rows-per-task R ...`` adds the newest version on Numba's threads whatever the size
(``parallel_from=0``) with ``rows_per_task=R``, once per value given.
``--quick``: tiny shapes, it checks that the script runs.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--rows-per-task", type=int, nargs="*", default=[])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from kernels import process_settings
    process_settings.apply()
    import numpy as np

    from kernels import reference
    from kernels.testing import q4_1_case, q8_0_case, relative_error
    from kernels.versions import families

    versions = families("cpu")["quantized"]
    newest = list(versions.values())[-1]
    rng = np.random.default_rng(0)
    shapes = [("q4_1", 64, 64), ("q8_0", 64, 64)] if args.quick else \
        [("q4_1", 1536, 576), ("q4_1", 576, 1536), ("q4_1", 576, 576), ("q4_1", 192, 576),
         ("q8_0", 1536, 576), ("q8_0", 49152, 576)]
    print(f"N=1, float32, {args.threads} thread(s), {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    for kind, out_features, in_features in shapes:
        c = (q4_1_case if kind == "q4_1" else q8_0_case)(rng, 1, out_features, in_features, np.float32)
        arrays = [c[a] for a in (("x", "scale", "minimum", "packed") if kind == "q4_1" else ("x", "scale", "quants"))]
        fn = f"{kind}_linear"
        runs = {v.name: (lambda v=v: v.functions[fn](*arrays)) for v in versions.values()}
        for r in args.rows_per_task:
            runs[f"{newest.name} threads, {r} rows/task"] = \
                lambda r=r: newest.functions[fn](*arrays, rows_per_task=r, parallel_from=0)
        want = getattr(reference, fn)(*arrays)
        for name, run in runs.items():
            err = relative_error(run(), want)                       # also the warm-up (compilation) call
            assert err < 1e-5, (name, err)
        reps = max(1, int(2e8 // (out_features * in_features))) if not args.quick else 1
        seconds = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                for _ in range(reps):
                    runs[name]()
                seconds[name].append((time.perf_counter() - start) / reps)
        weights = out_features * in_features
        print(f"{kind} O={out_features} in={in_features}")
        for name, s in seconds.items():
            ratio = statistics.median(a / b for a, b in zip(seconds["v1"], s))
            print(f"  {name:24s} {statistics.median(s) * 1e6:8.1f} us  {weights / statistics.median(s) / 1e9:6.1f} "
                  f"G weights/s   vs v1 {ratio:.2f}x")


if __name__ == "__main__":
    main()
