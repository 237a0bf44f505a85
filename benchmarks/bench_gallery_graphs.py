"""What the gallery's graphs add to `infoflow build`, per prompt: the time of the graphs (declared
target + top 3, in the decomposition's pass) and of the first graph's ablation check, and the
size of the graph sidecar (docs/data-format.md, "Graph sidecar"; issue 23: <= 600 KB at P = 64).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_gallery_graphs.py [--prompts ioi-mary-john,...] [--sizes 64]

For each prompt: build.compute as the build runs it, against the same decomposition without
graphs (decompose_variants + encode, as before), best of --repeat runs each.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="ioi-mary-john", help="gallery prompt ids, comma-separated")
    ap.add_argument("--sizes", default="64", help="synthetic prompt lengths (benchmark text), comma-separated")
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    import msgpack
    import torch

    from bench_engine import prompt_of
    from infoflow.build import _variants, compute
    from infoflow.config import SiteConfig
    from infoflow.datafile import encode
    from infoflow.decompose import decompose_variants, get_model
    from infoflow.gallery_graphs import sidecar_bytes
    from infoflow.prompts import Prompt, load_prompts

    lm = get_model(args.model)
    cfg = SiteConfig()
    gallery = {p.id: p for p in load_prompts("prompts/gallery.toml")}
    cases = [gallery[i] for i in args.prompts.split(",") if i]
    cases += [Prompt(id=f"p{P}", title="", text=prompt_of(lm, P)) for P in
              (int(s) for s in args.sizes.split(",") if s)]
    print(f"model {lm.info['id']}, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'prompt':<22} {'P':>3} {'plain s':>8} {'+graphs s':>9} {'added':>7} {'sidecar KB':>10}  graphs")
    for p in cases:
        variants, labels = _variants(p)
        plain = with_graphs = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            encode(decompose_variants(p.text, lm, variants, top_k=cfg.top_k, chat=p.chat), p.meta(),
                   labels=labels, heads=True)
            plain = min(plain, time.perf_counter() - t)
            t = time.perf_counter()
            body = compute(p, lm, cfg, args.model)
            with_graphs = min(with_graphs, time.perf_counter() - t)
        doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
        size = len(sidecar_bytes(doc, f"{p.id}.000000000000.msgpack"))
        P = doc["positions"]
        print(f"{p.id:<22} {P:>3} {plain:>8.2f} {with_graphs:>9.2f} {with_graphs - plain:>+7.2f} "
              f"{size / 1000:>10.1f}  {len(doc['graph']['graphs'])}", flush=True)


if __name__ == "__main__":
    main()
