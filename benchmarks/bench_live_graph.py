"""A new target's attribution graph in the browser (engine-graph.js), on a P-token result of the
default model: the time from the kept frozen state to the graph entry, next to the
decomposition it does not rerun.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_live_graph.py [--tokens 32]

One module Web Worker of headless Chromium (tests/test_live_graph.py's harness), weights held
in the worker: decompose once ({graph: true}, no logit lens), prepare (the node writes: one
frozen forward pass, once per prompt), then several targets, each timed by graphFor alone.
Run by hand, never as a test; the machine is shared, so read the ratios.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_live_engine import HARNESS_HTML, RUN_IN_WORKER, STATIC, _BrowserThread, _Handler  # noqa: E402
from tests.test_live_engine import engine_config  # noqa: E402
from tests.test_live_graph import GRAPH_WORKER  # noqa: E402

TEXT = ("When Mary and John went to the store, John gave a drink to Mary. Then the two of them walked "
        "back home along the river, talking about the weather and the news of the day, until")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--run-reps", type=int, default=0,
                    help="also time N pairs, side by side: the decomposition alone, and the decomposition "
                         "kept for graphs + the node writes + the graph of the top prediction (what a "
                         "live run does before its Paths panel draws)")
    args = ap.parse_args()
    from infoflow.decompose import get_model
    from infoflow.model import converted_default_model

    lm = get_model(None)
    ids = lm.tokenizer(TEXT)["input_ids"][:args.tokens]
    P = len(ids)
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-graph-"))
    server = browser = None
    try:
        (tmp / "harness.html").write_text(HARNESS_HTML)
        (tmp / "harness-worker.js").write_text(GRAPH_WORKER)
        (tmp / "default").mkdir()
        (tmp / "default" / "model.safetensors").symlink_to(Path(converted_default_model()) / "model.safetensors")
        handler = functools.partial(_Handler, roots={"/static/": STATIC, "/fixture/": tmp})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        browser = _BrowserThread(f"http://127.0.0.1:{server.server_address[1]}/fixture/harness.html")
        tok = lm.tokenizer
        one = lambda s: tok.encode(s, add_special_tokens=False)[0]      # noqa: E731
        targets = [{"token": one(" Mary"), "contrast": one(" John"), "position": -1},
                   {"token": one(" the"), "contrast": None, "position": -1},
                   {"token": one(" John"), "contrast": one(" Mary"), "position": P // 2},
                   {"token": one(" Mary"), "contrast": one(" John"), "position": -1}]
        msg = {"url": "/fixture/default/model.safetensors", "config": engine_config(lm.hf),
               "runs": [{"ids": ids, "targets": targets, "options": {}}]}
        reply = browser.call(lambda page: page.evaluate(RUN_IN_WORKER, msg))
        if not reply["ok"]:
            raise SystemExit(reply["message"])
        r = reply["runs"][0]
        print(f"default model, P = {P}: decomposition (no lens) {r['decompose_ms']:.0f} ms, "
              f"prepare (node writes, once per prompt) {r['prepare_ms']:.0f} ms, "
              f"kept state {r['state_bytes'] / 2 ** 20:.1f} MB")
        for t, g in zip(targets, r["graphs"]):
            print(f"  target {t}: graph {g['timings']['graph_ms']:.0f} ms ("
                  + ", ".join(f"{k} {v:.0f}" for k, v in g["timings"].items()) + "), "
                  f"{len(g['nodes']['kind']['data'])} nodes, {len(g['edges']['src']['data'])} edges, "
                  f"completeness {g['completeness']:.3f}")
        if args.run_reps:
            run_growth(browser, lm, ids, args.run_reps)
    finally:
        if browser:
            browser.close()
        if server:
            server.shutdown()
            server.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


def run_growth(browser, lm, ids, reps: int) -> None:
    """The whole live run with and without its graph, alternated in one worker."""
    import statistics

    import torch
    with torch.no_grad():
        top = int(lm.hf(torch.tensor([ids])).logits[0, -1].argmax())
    graph = {"ids": ids, "targets": [{"token": top, "contrast": None, "position": -1}], "options": {}}
    runs = [r for _ in range(reps) for r in ({"ids": ids, "targets": [], "options": {}, "bare": True}, graph)]
    msg = {"url": "/fixture/default/model.safetensors", "config": engine_config(lm.hf), "runs": runs}
    reply = browser.call(lambda page: page.evaluate(RUN_IN_WORKER, msg))
    if not reply["ok"]:
        raise SystemExit(reply["message"])
    plain = [r["decompose_ms"] for r in reply["runs"][0::2]]
    full = [r["decompose_ms"] + r["prepare_ms"] + r["graphs"][0]["timings"]["graph_ms"] for r in reply["runs"][1::2]]
    kept = [r["decompose_ms"] for r in reply["runs"][1::2]]
    a, k, b = statistics.median(plain), statistics.median(kept), statistics.median(full)
    print(f"run without the graph {a:.0f} ms; keeping the frozen state for graphs {k:.0f} ms (x{k / a:.2f}); "
          f"with the node writes and the top prediction's graph too {b:.0f} ms (x{b / a:.2f}). Medians of "
          f"{reps} pairs; no logit lens, no heads: the page's own run does more, so its growth is smaller")


if __name__ == "__main__":
    main()
