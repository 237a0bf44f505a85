"""Two builds of the live page side by side: their engines alternate in one headless Chromium.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_live_ab.py SITE_A SITE_B [--size 16] [--reps 7]

SITE_A and SITE_B are sites built by two versions of infoflow (`infoflow build --out ...`, e.g.
one from a `git worktree` of the old commit). Each gets its own page (its own origin, so its own
weights cache) in one browser profile; both are warmed up with two runs, then their runs
alternate (A B, B A, A B, ...), so both are measured under the same machine load and neither
always goes first. Half the runs are made in a second browser that opens the pages in the
other order. Prints the medians of the
worker's own timings (seconds) and every run's engine time. The machine is shared and noisy:
read the medians, and run it twice.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_live  # noqa: E402  (its page driver and prompt maker)

KEYS = ("engine", "layers", "layers_kernel", "logits", "logits_kernel", "lens_helper", "lens_helper_kernel")


def _serve(site: str) -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(bench_live._Quiet, directory=site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/live/index.html"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sites", nargs=2, help="two built sites (with the live page)")
    ap.add_argument("--size", type=int, default=16, help="prompt length in tokens")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    for site in args.sites:
        if not (Path(site) / "live" / "index.html").exists():
            raise SystemExit(f"{site}/live/index.html is missing: build that site without --no-live")

    from playwright.sync_api import sync_playwright

    from infoflow.decompose import get_model

    text = bench_live.prompt_of(args.size, get_model(None).tokenizer)
    urls = [_serve(site) for site in args.sites]
    runs = [[], []]
    with sync_playwright() as p:
        # Two halves, each in a fresh browser with the pages opened in the other order: in one
        # browser the page opened first measured ~5 % faster, even with the same site twice
        # (an A/A run, docs/history/performance-2026.md, tenth session), whichever build it was.
        for half, first in enumerate((0, 1)):
            profile = tempfile.mkdtemp(prefix="live-ab-profile-")   # its weights cache: ~0.4 GB, removed below
            try:
                ctx = p.chromium.launch_persistent_context(
                    profile, executable_path=shutil.which("chromium"), headless=True,
                    args=["--no-sandbox", "--disable-gpu"], viewport={"width": 1280, "height": 900})
                pages = {}
                for i in (first, 1 - first):
                    page = ctx.new_page()
                    page.goto(urls[i])
                    page.wait_for_function("() => document.documentElement.dataset.liveState === 'ready'")
                    for _ in range(2):                # downloads the weights, then warms the worker
                        bench_live.run_once(page, text)
                    pages[i] = page
                for rep in range((args.reps + 1 - half) // 2):
                    # A B, then B A: the first run of a pair measured faster, whichever build it was
                    for i in ((0, 1) if rep % 2 == 0 else (1, 0)):
                        pages[i].bring_to_front()
                        runs[i].append(bench_live.run_once(pages[i], text))
                ctx.close()
            finally:
                shutil.rmtree(profile, ignore_errors=True)
    print(f"P = {args.size}, {args.reps} alternating runs each; medians, s")
    for site, rs in zip(args.sites, runs):
        med = {k: statistics.median(r[k] for r in rs) for k in KEYS}
        print(f"{site}: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items())
              + "; engine per run: " + " ".join(f"{r['engine']:.2f}" for r in rs))


if __name__ == "__main__":
    main()
