"""What the attribution graph (paths.py) adds to a decomposition, measured side by side.

Alternates, on the same prompt and the same loaded model: decompose_variants without a graph,
with one graph (a contrast pair) and with four (the gallery's: the declared target and the top
three predictions), then the ablation check alone (its real forward passes are a separate step).
Prints medians and the ratios to the plain decomposition. Not a test: the machine is shared.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_graph.py --reps 3
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_graph.py --reps 3 --cpu

--cpu runs torch on one thread and counts this process's CPU seconds, not the wall clock: on a
machine that other jobs share, wall-clock ratios move with their load; one thread's CPU time
moves far less (the ratios, not the seconds, are what to compare with a wall-clock run).
"""
from __future__ import annotations

import argparse
import statistics
import time

TEXT = ("When Mary and John went to the store, John gave a drink to Mary. Then Alice and Bob "
        "met at the park near the river, where Bob handed a small blue book to Alice. The next "
        "morning Erin and Frank cooked a breakfast together, and later "
        "that evening Carol and Dave walked home while Dave gave an umbrella to")     # P = 64 on SmolLM2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--cpu", action="store_true", help="one thread, this process's CPU seconds")
    args = ap.parse_args()
    clock = time.perf_counter
    if args.cpu:
        import torch
        torch.set_num_threads(1)
        clock = time.process_time
    from infoflow import ablate, paths
    from infoflow.decompose import decompose_variants, get_model, tokenize
    lm = get_model(args.model)
    P = len(tokenize(lm, TEXT))
    one = [paths.TargetSpec(" Carol", " Dave")]
    four = one + [paths.TargetSpec(None, rank=r) for r in range(3)]     # as the gallery
    runs = {"decompose": None, "+ 1 graph": one, "+ 4 graphs": four}
    times = {k: [] for k in runs}
    check = []
    for _ in range(args.reps):
        for name, specs in runs.items():
            t = clock()
            d = decompose_variants(TEXT, lm, {"tokens": None}, graphs=specs)["tokens"]
            times[name].append(clock() - t)
        t = clock()
        ablate.ablation_check(lm, d.graphs[0])
        check.append(clock() - t)
    base = statistics.median(times["decompose"])
    print(f"P = {P}, {args.reps} reps, medians (best), {'CPU seconds, 1 thread' if args.cpu else 'wall clock'}:")
    for name, ts in times.items():
        print(f"  {name:12s} {statistics.median(ts):7.2f} s ({min(ts):.2f})   x{statistics.median(ts) / base:.2f}")
    print(f"  ablation check alone (40 real forward passes): {statistics.median(check):.2f} s ({min(check):.2f})")


if __name__ == "__main__":
    main()
