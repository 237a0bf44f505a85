"""Engine and logit-lens times of two models side by side (issue 14). Not a test: run by hand.

    .venv/bin/python benchmarks/bench_models.py [--sizes 32 64] [--repeats 2]

For the default model and Gemma 3 270M (installed by `bash setup.sh` unless `--no-gemma`), at prompts of
exactly P tokens, interleaved run by run in one process: the engine (`decompose_stack` and
the logits, `timings["decompose"]`) and the logit lens (`timings["logit_lens"]`) of one
`decompose()` call, best of --repeats after one warm-up, each next to its FLOP floor (the
multiply-adds divided by the best sgemm rate sampled in the same run).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_engine import Rate, prompt_of               # noqa: E402
from infoflow.decompose import decompose, get_model    # noqa: E402
from infoflow.model import DEFAULT_MODEL, GEMMA_MODEL  # noqa: E402


def floor(lm, P: int, k: int = 5) -> tuple[float, float]:
    """(engine, lens) multiply-adds at P tokens; H·hd may differ from d (Gemma: 1024 vs 640)."""
    c = lm.hf.config
    H = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or H
    hd = getattr(c, "head_dim", None) or c.hidden_size // H
    L, d, d_ff, V = c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.vocab_size
    T = P * (P + 1) // 2
    layer = T * d * kv * hd + H * hd * P * (P + 1) * (P + 2) / 6 + T * H * hd * d + 2 * T * d * d_ff
    engine = L * layer + P * d * V + T * d * min(P * k, V)
    return engine, 2 * L * P * d * V


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rate = Rate()
    models = {}
    for name in (DEFAULT_MODEL, GEMMA_MODEL):
        t = time.perf_counter()
        models[name] = get_model(name)
        print(f"{name}: loaded in {time.perf_counter() - t:.1f} s", flush=True)
    prompts = {(n, P): prompt_of(lm, P) for n, lm in models.items() for P in args.sizes}
    best = {}
    for rep in range(args.repeats + 1):                 # rep 0 is the warm-up
        for P in args.sizes:
            for name, lm in models.items():
                rate.sample()
                d = decompose(prompts[name, P], lm)
                assert d.n_tokens == P, (name, P, d.n_tokens)
                if rep:
                    key = (name, P)
                    got = (d.timings["decompose"] + d.timings["logits"], d.timings["logit_lens"])
                    best[key] = tuple(min(a, b) for a, b in zip(best.get(key, got), got))
                    print(f"  rep {rep} {name} P={P}: engine {got[0]:.2f} s, lens {got[1]:.2f} s, "
                          f"recon {d.worst_recon_error:.1e}", flush=True)
    rate.sample()
    print(f"\nbest sgemm rate in this run: {rate.best / 1e9:.1f} G multiply-adds/s, {args.threads} threads\n")
    print("| model | P | engine (s) | engine floor (s) | ratio | lens (s) | lens floor (s) | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for P in args.sizes:
        for name, lm in models.items():
            e, l = best[name, P]
            fe, fl = (m / rate.best for m in floor(lm, P))
            print(f"| {name} | {P} | {e:.2f} | {fe:.2f} | {e / fe:.1f} | {l:.2f} | {fl:.2f} | {l / fl:.1f} |")


if __name__ == "__main__":
    main()
