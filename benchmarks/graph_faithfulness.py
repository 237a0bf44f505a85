"""The ablation check (ablate.py) over the gallery, on each model: how well the frozen graph
predicts the real model, prompt by prompt. Writes its table into docs/graph.md between the
markers below (--write), or prints it.

For each prompt: the declared target (and contrast) where the prompt gives one for that model,
else the top prediction at the last position, demeaned. Then the 20 largest head nodes and 20
largest MLP nodes are ablated one at a time in the real model.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/graph_faithfulness.py [--models M ...] [--only ID ...] [--write]

With --site DIR it computes nothing: it reads the ablation check that the gallery build already
ran for each prompt's first graph (the declared target, else the top prediction, demeaned) from
the site's graph sidecars (DIR/data[/<model>]/graph/<id>.<hash>.msgpack), so the table is the
published site's own.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/graph_faithfulness.py --site build --write
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


def _cells(pid: str, model_id: str, what: str, value: float, completeness, h: dict, m: dict) -> str:
    def f(x):
        return "n/a" if x is None or x != x else f"{x:+.2f}"
    worst = h["worst"][0]
    comp = "n/a" if completeness is None else f"{completeness:.2f}"
    return (f"| {pid} | {model_id} | {what} | {value:+.2f} | {comp} | {f(h['rho'])} / "
            f"{h['signs']:.0%} | {f(h['rho_direct'])} / {h['signs_direct']:.0%} | {f(m['rho'])} / "
            f"{m['signs']:.0%} | {f(m['rho_direct'])} / {m['signs_direct']:.0%} | "
            f"{worst['node']}: {worst['predicted']:+.2f} vs {worst['actual']:+.2f} |")


def site_rows(site: Path, models: list[str], only: list[str]) -> list[str]:
    """The table's rows from a built site's sidecars: the first graph of each, with its check."""
    from infoflow.gallery_models import model_slug
    from infoflow.graphfile import check_graph_document
    import msgpack
    rows = []
    for i, model_id in enumerate(models):
        folder = site / "data" / ("graph" if i == 0 else f"{model_slug(model_id)}/graph")
        for path in sorted(folder.glob("*.msgpack")):
            pid = path.name.split(".")[0]
            if only and pid not in only:
                continue
            doc = msgpack.unpackb(path.read_bytes(), raw=False)
            check_graph_document(doc)
            g = doc["graphs"][0]
            check = g.get("check")
            if check is None:
                continue
            what = repr(g["target"]["text"]) + (f" − {g['contrast']['text']!r}" if g["contrast"] else " (dm)")
            rows.append(_cells(pid, model_id, what, g["value"], g["completeness"], check["heads"], check["mlps"]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["SmolLM2-135M-Instruct", "gemma3-270m"])
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--site", type=Path, help="read the checks from this built site's sidecars")
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
    if args.site:
        lines += site_rows(args.site, args.models, args.only)
        print("\n".join(lines[2:]))
    for model_id in ([] if args.site else args.models):
        lm = get_model(model_id)
        for p in prompts:
            if p.chat and not getattr(lm.tokenizer, "chat_template", None):
                continue
            lines.append(row(p, lm, model_id))
            print(lines[-1], flush=True)
    how = (f"--site {args.site}: the gallery build's own checks" if args.site
           else f"{time.perf_counter() - t0:.0f} s")
    stamp = (f"\n`benchmarks/graph_faithfulness.py` on {time.strftime('%Y-%m-%d')}, "
             f"{how}. ρ: Spearman's, predicted ΔT = −effect (or −direct "
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
