"""Reconstruction error of one model on every gallery prompt (issue 14). Not a test: run by hand.

    .venv/bin/python benchmarks/gallery_recon.py [MODEL] [--prompts prompts/gallery.toml]

MODEL: gemma3-270m (default), SmolLM2-135M-Instruct, or a local folder. Prints one JSON line
per prompt (tokens, worst relative reconstruction error, logit difference, top prediction,
engine time) and the worst of each. `chat = true` prompts fall back to plain text when the
model's tokenizer has no chat template (the Gemma 3 270M GGUF is the base model).
"""
import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infoflow.decompose import decompose, get_model   # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="gemma3-270m")
    ap.add_argument("--prompts", default="prompts/gallery.toml")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lm = get_model(args.model)
    print(f"load {time.perf_counter() - t0:.1f} s", lm.info["architecture"], lm.info["family"], flush=True)
    rows = []
    for p in tomllib.loads(Path(args.prompts).read_text(encoding="utf-8"))["prompt"]:
        chat = p.get("chat", False) and bool(getattr(lm.tokenizer, "chat_template", None))
        d = decompose(p["text"], lm, chat=chat, logit_lens=False)
        rows.append(dict(id=p["id"], chat=chat, P=d.n_tokens, recon=d.worst_recon_error,
                         logit=d.logit_error, top=d.top_prediction()[0], engine=d.timings["decompose"]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"{len(rows)} prompts: worst recon {max(r['recon'] for r in rows):.2e}, "
          f"worst logit {max(r['logit'] for r in rows):.2e}")


if __name__ == "__main__":
    main()
