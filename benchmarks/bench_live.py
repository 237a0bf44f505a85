"""The live page's speed and memory in headless Chromium, side by side with infoflow.decompose.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_live.py [--site build] [--reps 3]

The whole page path (worker, tokenizer, engine.js, encode.js), not the engine alone (that is
benchmarks/bench_live_engine.py). One persistent Chromium profile, so the weights are cached
after a first warm-up run:
1. weights ready from the Cache Storage: a fresh tab's first run, from Run to the model being
   in memory (tokenizer, chunk reads, sha256 checks, the embedding dequantized);
2. P = 16 and P = 32, with the logit lens: the page's decomposition time (engine) and Run to
   done (also encoding and decoding the data file, and drawing the viewer), alternating with
   Python on the same prompts, best of --reps after a warm-up. Python computes what the page
   does, the "tokens" and "words" groupings in one pass (`decompose_variants`, as `infoflow
   build` calls it), heads included: a like-for-like comparison;
3. the tab's peak memory at P = 64: the renderer process's RSS (page, worker and wasm
   memory together), sampled every 20 ms during the run, in a fresh tab.
Screenshots of the page before, during (progress) and after a run go to --shots.
Run by hand, never as a test; the machine is shared, so read the ratios.
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
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening to light the lamp, "
        "and the ships that passed the rocky coast trusted its beam to guide them safely home "
        "through fog and storm, while his daughter wrote down the names of every vessel in a "
        "thick leather book that she kept beside the window of their small stone house by the sea")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def prompt_of(n: int, tokenizer) -> str:
    """A prefix of TEXT (whole words) that tokenizes to exactly n tokens."""
    words = TEXT.split(" ")
    for k in range(1, len(words) + 1):
        text = " ".join(words[:k])
        m = len(tokenizer(text)["input_ids"])
        if m == n:
            return text
        if m > n:
            break
    raise SystemExit(f"no prefix of the benchmark text has exactly {n} tokens")


def renderer_rss(browser_pid: int) -> int:
    """The largest renderer process's RSS: the live page's (one tab open at a time)."""
    best = 0
    try:
        for p in psutil.Process(browser_pid).children(recursive=True):
            try:
                if "--type=renderer" in " ".join(p.cmdline()):
                    best = max(best, p.memory_info().rss)
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return best


def run_once(page, text: str, timeout: float = 300_000) -> dict:
    """Type text, press Run, wait for the viewer; Run-to-done seconds and the worker's timings."""
    page.fill("#prompt", text)
    t0 = time.perf_counter()
    page.click("#run")
    page.wait_for_function("() => ['done', 'error'].includes(document.documentElement.dataset.liveState)",
                           timeout=timeout)
    wall = time.perf_counter() - t0
    if page.evaluate("() => document.documentElement.dataset.liveState") != "done":
        raise SystemExit("the live run failed: " + page.text_content("#live-error"))
    t = page.evaluate("() => window.infoflowLive.timings")
    return {"wall": wall, "load": t["load"] / 1e3, "engine": t["engine"] / 1e3, "encode": t["encode"] / 1e3,
            "layers": t["layers_ms"] / 1e3, "logits": t["logits_ms"] / 1e3,
            "layers_kernel": t["layers_kernel_ms"] / 1e3, "logits_kernel": t["logits_kernel_ms"] / 1e3,
            # the busiest helper's time on the streamed logit lens (0: not streamed)
            "lens_helper": t.get("lens_helper_ms", 0) / 1e3, "lens_helper_kernel": t.get("lens_helper_kernel_ms", 0) / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", default="build", help="a site built with the live page (infoflow build)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="16,32")
    ap.add_argument("--peak-size", type=int, default=64)
    ap.add_argument("--shots", default="/tmp/live-shots")
    args = ap.parse_args()
    site = Path(args.site)
    if not (site / "live" / "index.html").exists():
        raise SystemExit(f"{site}/live/index.html is missing: run `infoflow build` (without --no-live) first")
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)

    import torch
    from infoflow.decompose import decompose_variants, get_model
    from playwright.sync_api import sync_playwright
    lm = get_model(None)
    sizes = [int(s) for s in args.sizes.split(",")]
    prompts = {n: prompt_of(n, lm.tokenizer) for n in sizes + [args.peak_size]}

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/live/index.html"
    profile = tempfile.mkdtemp(prefix="live-bench-profile-")
    print(f"machine: {psutil.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; chromium {shutil.which('chromium')}")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=shutil.which("chromium"), headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
                viewport={"width": 1280, "height": 900})
            browser_pid = next(pr.pid for pr in psutil.Process().children(recursive=True)
                               if "chromium" in pr.name() and "--type=" not in " ".join(pr.cmdline()))

            # warm-up: downloads the weights into the Cache Storage; screenshots before / during / after
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_function("() => document.documentElement.dataset.liveState === 'ready'")
            page.fill("#prompt", prompts[sizes[-1]])
            page.wait_for_function("() => document.getElementById('token-count').dataset.count")
            page.screenshot(path=str(shots / "1-before.png"))
            page.click("#run")
            page.wait_for_function("() => document.documentElement.dataset.liveState === 'running' && "
                                   "document.getElementById('layer-bar').value >= 8", timeout=300_000)
            page.screenshot(path=str(shots / "2-during.png"))
            page.wait_for_function("() => ['done', 'error'].includes(document.documentElement.dataset.liveState)",
                                   timeout=300_000)
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots / "3-after.png"), full_page=True)
            page.close()

            # 1. weights from the Cache Storage, in fresh tabs
            ready = []
            for _ in range(args.reps):
                page = ctx.new_page()
                page.goto(url)
                page.wait_for_function("() => document.documentElement.dataset.liveState === 'ready'")
                r = run_once(page, prompts[sizes[0]])
                ready.append(r["load"])
                label = page.text_content("#download-label")
                page.close()
            print(f"\nweights ready from the Cache Storage: best {min(ready):.2f} s, median "
                  f"{statistics.median(ready):.2f} s over {len(ready)} fresh tabs ({label.strip()})")

            # 2. P = 16, 32 against infoflow.decompose, alternating, weights in the worker
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_function("() => document.documentElement.dataset.liveState === 'ready'")
            run_once(page, prompts[sizes[0]])                      # loads the weights into the worker
            variants = {"tokens": None, "words": "words"}             # what the page computes
            decompose_variants(prompts[sizes[0]], lm, variants)     # Python warm-up
            print(f"\n{'P':>4} {'python s':>9} {'browser engine s':>17} {'ratio':>6} {'Run->viewer s':>14} "
                  f"{'encode s':>9}  layers (kernel) / unembedding (kernel) s")
            for n in sizes:
                py, br = [], []
                for _ in range(args.reps):
                    t = time.perf_counter()
                    decompose_variants(prompts[n], lm, variants)
                    py.append(time.perf_counter() - t)
                    br.append(run_once(page, prompts[n]))
                best = min(br, key=lambda r: r["engine"])
                print(f"{n:>4} {min(py):>9.2f} {best['engine']:>17.2f} {best['engine'] / min(py):>6.2f} "
                      f"{min(r['wall'] for r in br):>14.2f} {best['encode']:>9.2f}  "
                      f"{best['layers']:.2f} ({best['layers_kernel']:.2f}) / {best['logits']:.2f} ({best['logits_kernel']:.2f})"
                      f"   (medians: python {statistics.median(py):.2f}, browser {statistics.median(r['engine'] for r in br):.2f})")
            page.close()

            # 3. peak memory at P = 64 in a fresh tab (weights from the cache)
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_function("() => document.documentElement.dataset.liveState === 'ready'")
            base = renderer_rss(browser_pid)
            peak = [base]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], renderer_rss(browser_pid))
                    time.sleep(0.02)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            r = run_once(page, prompts[args.peak_size])
            stop.set()
            th.join()
            print(f"\nP={args.peak_size}: renderer RSS before Run {base / 2**20:.0f} MiB, peak during the run "
                  f"{peak[0] / 2**20:.0f} MiB (Run->viewer {r['wall']:.1f} s, engine {r['engine']:.1f} s)")
            page.close()
            ctx.close()
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"\nscreenshots: {shots}/1-before.png, 2-during.png, 3-after.png")


if __name__ == "__main__":
    main()
