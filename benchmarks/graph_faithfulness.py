"""The ablation check (ablate.py) over the gallery, on each model: how well the frozen graph
predicts the real model, prompt by prompt. Writes its table into docs/graph.md between the
markers below (--write), or prints it.

For each prompt: the declared target (and contrast) where the prompt gives one for that model,
else the top prediction at the last position, demeaned. Then the 20 largest head nodes and 20
largest MLP nodes are ablated one at a time in the real model.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/graph_faithfulness.py [--models M ...] [--only ID ...] [--write]
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- faithfulness:begin -->", "<!-- faithfulness:end -->"


def declared(p, model_id: str):
    """(target, contrast) the prompt declares for this model, or (None, None)."""
    def pick(single, per_model):
        table = getattr(p, per_model, None) or {}
        return table.get(model_id, getattr(p, single, None))
    return pick("target", "targets"), pick("contrast", "contrasts")


def row(p, lm, model_id: str) -> str:
    import infoflow
    from infoflow import ablate
    target, contrast = declared(p, model_id)
    g = infoflow.graph(p.text, target=target, contrast=contrast, model=lm, chat=p.chat)
    c = ablate.ablation_check(lm, g)
    h, m = c.stats("head"), c.stats("mlp")
    what = repr(g.target_text) + (f" − {g.contrast_text!r}" if g.contrast is not None else " (dm)")

    def f(x):
        return "n/a" if x is None or x != x else f"{x:+.2f}"
    worst = h["worst"][0]
    return (f"| {p.id} | {model_id} | {what} | {g.value:+.2f} | {g.completeness:.2f} | {f(h['rho'])} / "
            f"{h['signs']:.0%} | {f(h['rho_direct'])} / {h['signs_direct']:.0%} | {f(m['rho'])} / "
            f"{m['signs']:.0%} | {f(m['rho_direct'])} / {m['signs_direct']:.0%} | "
            f"{worst['node']}: {worst['predicted']:+.2f} vs {worst['actual']:+.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["SmolLM2-135M-Instruct", "gemma3-270m"])
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from infoflow.decompose import get_model
    from infoflow.prompts import load_prompts
    prompts = [p for f in sorted((ROOT / "prompts").glob("*.toml")) for p in load_prompts(f)]
    if args.only:
        prompts = [p for p in prompts if p.id in args.only]
    lines = ["| prompt | model | target | T | completeness | heads ρ / signs | heads, direct only | "
             "MLPs ρ / signs | MLPs, direct only | largest head miss (predicted vs measured ΔT) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    t0 = time.perf_counter()
    for model_id in args.models:
        lm = get_model(model_id)
        for p in prompts:
            if p.chat and not getattr(lm.tokenizer, "chat_template", None):
                continue
            lines.append(row(p, lm, model_id))
            print(lines[-1], flush=True)
    stamp = (f"\n`benchmarks/graph_faithfulness.py` on {time.strftime('%Y-%m-%d')}, "
             f"{time.perf_counter() - t0:.0f} s. ρ: Spearman's, predicted ΔT = −effect (or −direct "
             "effect) against the measured ΔT; signs: the share that agree.\n")
    table = "\n".join(lines) + "\n" + stamp
    if args.write:
        doc = ROOT / "docs" / "graph.md"
        text = doc.read_text()
        block = f"{BEGIN}\n{table}{END}"
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: block, text, flags=re.S) \
            if BEGIN in text else text.rstrip() + "\n\n## The gallery's faithfulness table\n\n" + block + "\n"
        doc.write_text(text)


if __name__ == "__main__":
    main()
