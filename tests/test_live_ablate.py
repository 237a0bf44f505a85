"""The live page's ablation check (engine-ablate.js) against infoflow/ablate.py's target_values:
the same real (unfrozen) forward passes with one head's slice of o_proj's input, or one MLP's
output, zeroed at one position, on tiny models in a module Web Worker of headless Chromium
(test_live_engine.py's server and weight loader); and the check's statistics (paths-check.js)
against ablate.Check.stats on the same rows."""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from infoflow import ablate
from tests.conftest import tiny_model
from tests.test_live_engine import (HARNESS_HTML, HARNESS_WORKER, RUN_IN_WORKER, STATIC, _BrowserThread, _Handler,
                                    engine_config, write_weights)

pytestmark = pytest.mark.browser

RTOL = 1e-3      # of the largest |ΔT| of the prompt: a ΔT is a difference of two float32 passes

ABLATE_WORKER = HARNESS_WORKER.split("async function kernelCheck")[0].replace(
    'import {decompose} from "/static/js/live/engine.js";',
    'import {ablatedValues} from "/static/js/live/engine-ablate.js";\n'
    'import {checkStats} from "/static/js/paths-check.js";') + r"""
self.onmessage = async (e) => {
  const {url, config, ids, spec, ablations, rows} = e.data;
  try {
    const model = await loadModel(url, config);
    const steps = [];
    const values = await ablatedValues(model, Int32Array.from(ids), spec, ablations, {onProgress: (s, n) => steps.push([s, n])});
    const stats = rows ? {heads: checkStats(rows.filter((r) => r.kind === "head")), mlps: checkStats(rows.filter((r) => r.kind === "mlp"))} : null;
    self.postMessage({ok: true, values: Array.from(values), steps, stats});
  } catch (err) {
    self.postMessage({ok: false, message: String(err && err.stack || err)});
  }
};
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed: apt-get install chromium")
    root = tmp_path_factory.mktemp("live-ablate")
    (root / "harness.html").write_text(HARNESS_HTML)
    (root / "harness-worker.js").write_text(ABLATE_WORKER)
    handler = functools.partial(_Handler, roots={"/static/": STATIC, "/fixture/": root})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = _BrowserThread(f"http://127.0.0.1:{server.server_address[1]}/fixture/harness.html")

    def run(name: str, lm, msg: dict) -> dict:
        if not (root / name / "model.safetensors").exists():
            write_weights(lm.hf, root / name)
        reply = browser.call(lambda page: page.evaluate(
            RUN_IN_WORKER, {"url": f"/fixture/{name}/model.safetensors", "config": engine_config(lm.hf), **msg}))
        assert reply["ok"], reply.get("message")
        assert not browser.errors, browser.errors
        return reply

    yield run
    browser.close()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["gqa", "llama-bias"])
def test_browser_ablation_matches_python(harness, kind):
    lm = tiny_model(kind, layers=3, seed=1)
    prompt = "When Mary and John went to the store, John gave a drink to"
    ids = lm.tokenizer(prompt)["input_ids"]
    P = len(ids)
    # heads and MLPs in every layer, at the last position and earlier ones (a later one must see
    # an earlier position's ablation through attention)
    nodes = [("head", 0, 1, P - 1), ("head", 1, 3, 2), ("head", 2, 0, P - 1), ("head", 0, 2, 0),
             ("mlp", 0, -1, P - 1), ("mlp", 1, -1, 3), ("mlp", 2, -1, P - 2)]
    for target, contrast in [(5, 9), (7, None)]:
        g = SimpleNamespace(position=P - 1, target=target, contrast=contrast)
        want = ablate.target_values(lm.hf, torch.tensor([ids]), g, [None] + nodes)
        reply = harness(f"tiny-{kind}", lm, {
            "ids": ids, "spec": {"token": target, "contrast": contrast, "position": -1},
            "ablations": [{"kind": k, "layer": l, "head": h, "position": p} for k, l, h, p in nodes]})
        got = np.asarray(reply["values"])
        assert got.shape == want.shape
        assert abs(got[0] - want[0]) <= 1e-4 * max(1.0, abs(want[0])), (got[0], want[0])
        d_got, d_want = got[1:] - got[0], want[1:] - want[0]
        scale = np.abs(d_want).max()
        assert scale > 1e-3                                  # the ablations change T
        rel = np.abs(d_got - d_want) / scale
        print(f"\n{kind} target {target} contrast {contrast}: ΔT {np.round(d_want, 4).tolist()}, "
              f"worst difference {rel.max():.2e} of the largest |ΔT|")
        assert rel.max() <= RTOL, (d_got, d_want)
        # each ΔT above 5 % of the largest, within 1e-3 of itself
        big = np.abs(d_want) > 0.05 * scale
        assert np.all(np.abs(d_got - d_want)[big] <= RTOL * np.abs(d_want[big]) + 1e-6), (d_got, d_want)
        assert reply["steps"][-1] == [3, 3]


def test_check_statistics_match_python(harness):
    """Spearman ρ (ties at their mean rank), sign agreement, the direct-effect baseline and the
    largest misses, as ablate.Check.stats computes them, on rows with ties and zeros."""
    lm = tiny_model("gqa", layers=3, seed=1)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(20):
        eff = float(np.round(rng.normal(), 1))
        rows.append(ablate.Row("head" if i < 12 else "mlp", i % 3, i % 4 if i < 12 else -1, i % 7,
                               eff, 0.0 if i % 3 else float(np.round(rng.normal(), 1)), float(np.round(rng.normal(), 1))))
    rows[3].actual = 0.0
    check = ablate.Check(0.5, rows)
    reply = harness("tiny-gqa", lm, {"ids": [1, 2, 3], "spec": {"token": 1, "contrast": None, "position": -1},
                                     "ablations": [], "rows": [r.__dict__ for r in rows]})
    for kind, key in (("head", "heads"), ("mlp", "mlps")):
        want, got = ablate._plain(check.stats(kind)), reply["stats"][key]
        assert got["n"] == want["n"]
        for k in ("rho", "signs", "rho_direct", "signs_direct"):
            assert (got[k] is None and want[k] is None) or got[k] == pytest.approx(want[k], abs=1e-12), (kind, k, got[k], want[k])
        assert [w["node"] for w in got["worst"]] == [w["node"] for w in want["worst"]]
