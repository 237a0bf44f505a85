"""The browser's attribution graph (site_src/static/js/live/engine-graph.js) against Python's
(infoflow.graph, paths.py) on the same prompts: node effects, the kept nodes, their edges and the
completeness, within 1e-4 relative (issue 23, item 5: one description, two engines).

The engine runs in a module Web Worker of headless Chromium, with test_live_engine.py's server
and weight loader; the worker decomposes once ({graph: true}) and computes every target's graph
from the kept frozen state, without running the decomposition again.
"""
from __future__ import annotations

import functools
import http.server
import shutil
import threading

import numpy as np
import pytest

import infoflow
from infoflow.decompose import get_model
from tests.conftest import tiny_model
from tests.test_live_engine import (HARNESS_WORKER, HARNESS_HTML, RUN_IN_WORKER, STATIC, _BrowserThread, _Handler,
                                    engine_config, write_weights)

pytestmark = pytest.mark.browser

RTOL = 1e-4
# An edge is one float32 dot product of d = 576 terms that mostly cancel: a small edge (1 % of
# the largest) is exact to a few 1e-4 of itself in either engine (measured: 2.4e-4 at worst on
# the default model, 3e-6 of the largest edge), so each edge gets this bound, the whole graph RTOL.
EDGE_EACH_RTOL = 1e-3
FLOOR = 1e-2     # values below this share of the graph's largest are compared at it

# the loader of test_live_engine's worker (safetensors by Range requests), then a graph run
GRAPH_WORKER = HARNESS_WORKER.split("async function kernelCheck")[0].replace(
    'import {decompose} from "/static/js/live/engine.js";',
    'import {decompose} from "/static/js/live/engine.js";\n'
    'import {prepare, graphFor, stateBytes} from "/static/js/live/engine-graph.js";\n'
    'import {SourceSplit} from "/static/js/live/engine-split.js";') + r"""
self.onmessage = async (e) => {
  const {url, config, runs} = e.data;
  try {
    const model = await loadModel(url, config);
    const read = model.layer, held = new Map();     // each layer fetched once: the page keeps them too
    model.layer = async (i) => held.get(i) || held.set(i, await read(i)).get(i);
    const out = [];
    for (const {ids, targets, options, bare} of runs) {
      const t0 = performance.now();
      // bare: the decomposition alone, as a run without the graph (bench_live_graph.py's baseline)
      const res = await decompose(model, Int32Array.from(ids), {main: null},
                                  {topK: 5, logitLens: false, heads: false, graph: !bare, threads: 1});
      const t1 = performance.now();
      if (bare) { out.push({graphs: [], decompose_ms: t1 - t0}); continue; }
      const state = await prepare(model, res.frozen);
      const t2 = performance.now();
      const graphs = [];
      for (const t of targets) {
        // t.split: each node's effect by source, from a decomposition with the observer
        const split = t.split ? async (grads, hasOBias) => {
          const s = new SourceSplit(model.config, grads, null, hasOBias);
          await decompose(model, Int32Array.from(ids), {main: null},
                          {topK: 1, logitLens: false, heads: false, threads: 1, observers: [s]});
          return s;
        } : null;
        graphs.push(plain(await graphFor(state, t, {...(options || {}), split})));
      }
      out.push({graphs, decompose_ms: t1 - t0, prepare_ms: t2 - t1, state_bytes: stateBytes(state)});
    }
    self.postMessage({ok: true, runs: out});
  } catch (err) {
    self.postMessage({ok: false, message: String(err && err.stack || err)});
  }
};
"""


@pytest.fixture(scope="module")
def graph_harness(tmp_path_factory):
    if not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed: apt-get install chromium")
    root = tmp_path_factory.mktemp("live-graph")
    (root / "harness.html").write_text(HARNESS_HTML)
    (root / "harness-worker.js").write_text(GRAPH_WORKER)
    handler = functools.partial(_Handler, roots={"/static/": STATIC, "/fixture/": root})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = _BrowserThread(f"http://127.0.0.1:{server.server_address[1]}/fixture/harness.html")

    def run(name: str, msg: dict) -> dict:
        reply = browser.call(lambda page: page.evaluate(
            RUN_IN_WORKER, {"url": f"/fixture/{name}/model.safetensors", **msg}))
        assert reply["ok"], reply.get("message")
        assert not browser.errors, browser.errors
        return reply

    yield root, run
    browser.close()
    server.shutdown()
    server.server_close()


def js_graphs(run, root, name, lm, prompts: dict, **options) -> list[dict]:
    """{prompt: [target, ...]} -> one reply per prompt: its graphs, from one decomposition each."""
    folder = root / name
    if not (folder / "model.safetensors").exists():
        write_weights(lm.hf, folder)
    runs = [{"ids": lm.tokenizer(p)["input_ids"], "targets": t, "options": options} for p, t in prompts.items()]
    return run(name, {"config": engine_config(lm.hf), "runs": runs})["runs"]


def arr(x):
    return np.asarray(x["data"], dtype=np.float64).reshape(x["shape"])


def keys(nodes: dict) -> list[tuple]:
    return list(zip(*(np.asarray(nodes[k]).tolist() for k in ("kind", "layer", "head", "position"))))


def compare_graph(py, js, what: str) -> dict:
    """Assert one graph against Python's; return the worst relative differences measured."""
    worst = {}
    scale = max(np.abs(py.heads).max(), np.abs(py.mlp).max(), np.abs(py.embed).max())

    def close(a, b, field, floor, each=RTOL):
        """Signed values that cancel (effects, edges) within RTOL of the largest one, as
        test_paths.rel compares them, and each one within RTOL of itself where it is above
        `floor`: a float32 dot product of d terms is exact to ~1e-7 of its terms, not of a
        cancelled result (an embedding's effect of 0.004 in a graph whose largest is 1.9 differs
        by 7e-7 between the engines: 1.8e-4 of itself, 4e-7 of the largest)."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        top = max(float(np.abs(b).max()) if b.size else 0.0, 1e-30)
        rel = np.abs(a - b) / np.maximum(np.abs(b), floor)
        worst[field] = float(np.abs(a - b).max() / top) if b.size else 0.0
        worst[field + "_each"] = float(rel.max()) if rel.size else 0.0
        assert worst[field] <= RTOL, f"{what} {field}: difference {worst[field]:.2e} of the largest value"
        assert worst[field + "_each"] <= each, f"{what} {field}: relative difference {rel.max():.2e} at {np.unravel_index(rel.argmax(), rel.shape)}"

    close(js["value"], py.value, "value", 1e-6)
    close(arr(js["embed"]), py.embed, "embed", FLOOR * scale)
    close(arr(js["heads"]), py.heads, "heads", FLOOR * scale)
    close(arr(js["mlp"]), py.mlp, "mlp", FLOOR * scale)
    close(js["bias"], py.bias, "bias", FLOOR * scale)
    close(js["frozen_value"], py.frozen_value, "frozen_value", 1e-6)
    close(js["direct"]["embed"], py.direct["embed"][py.position], "direct", FLOOR * scale)
    close(arr(js["direct"]["heads"]), py.direct["heads"][:, :, py.position], "direct_heads", FLOOR * scale)
    close(arr(js["direct"]["mlp"]), py.direct["mlp"][:, py.position], "direct_mlp", FLOOR * scale)
    # the kept nodes: the same set, in the same order (graphfile's uint layout for Python's)
    L, P = py.heads.shape[0], len(py.tokens)
    pn = dict(py.nodes)
    pn["layer"] = np.where(pn["kind"] == 4, L, np.maximum(pn["layer"], 0))
    pn["head"] = np.maximum(pn["head"], 0)
    pn["position"] = np.clip(pn["position"], 0, P - 1)
    jn = {k: arr(v).astype(np.int64) if k != "effect" else arr(v) for k, v in js["nodes"].items()}
    assert keys(jn) == keys(pn), f"{what}: the kept nodes differ ({len(keys(jn))} vs {len(keys(pn))})"
    close(jn["effect"], pn["effect"], "node_effect", FLOOR * scale)
    # the kept edges: the same (src, dst) pairs and weights
    js_edges = {(int(s), int(d)): w for s, d, w in zip(arr(js["edges"]["src"]), arr(js["edges"]["dst"]),
                                                      arr(js["edges"]["weight"]))}
    py_edges = {(int(s), int(d)): w for s, d, w in zip(py.edges["src"], py.edges["dst"], py.edges["weight"])}
    assert set(js_edges) == set(py_edges), f"{what}: kept edges differ: {len(set(js_edges) ^ set(py_edges))} of {len(py_edges)}"
    pairs = sorted(py_edges)
    escale = max(abs(w) for w in py_edges.values())
    close([js_edges[k] for k in pairs], [py_edges[k] for k in pairs], "edges", FLOOR * escale, EDGE_EACH_RTOL)
    assert abs(js["completeness"] - py.completeness) <= RTOL, (js["completeness"], py.completeness)
    worst["completeness_abs"] = abs(js["completeness"] - py.completeness)
    worst["n_nodes"], worst["n_edges"] = len(pn["kind"]), len(py_edges)
    return worst


def python_graph(prompt, lm, target, contrast, position=-1):
    return infoflow.graph(prompt, target=target, contrast=contrast, position=position, model=lm)


@pytest.mark.parametrize("kind", ["gqa", "llama-bias"])
def test_tiny_graph_matches_python(graph_harness, kind):
    """Two targets (a contrast, the demeaned logit at another position) from one decomposition."""
    root, run = graph_harness
    lm = tiny_model(kind, layers=3, seed=1)
    prompt = "When Mary and John went to the"
    targets = [{"token": 5, "contrast": 9, "position": -1}, {"token": 7, "contrast": None, "position": 20}]
    reply = js_graphs(run, root, f"tiny-{kind}", lm, {prompt: targets})[0]
    for t, js in zip(targets, reply["graphs"]):
        py = python_graph(prompt, lm, t["token"], t["contrast"], t["position"])
        report(f"{kind} {t}", compare_graph(py, js, f"{kind} {t}"), js)
        if kind == "llama-bias":
            assert abs(py.bias) > 1e-3                     # the bias node carries part of T


def report(what, worst, js):
    print(f"\n{what}: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in worst.items())
          + f"; browser graph {js['timings']['graph_ms']:.0f} ms")


@pytest.fixture(scope="module")
def default_folder(graph_harness):
    """The converted default model's safetensors, linked into the fixture folder (not copied)."""
    from pathlib import Path

    from infoflow.model import converted_default_model

    root, _ = graph_harness
    folder = root / "default"
    folder.mkdir(exist_ok=True)
    if not (folder / "model.safetensors").exists():
        (folder / "model.safetensors").symlink_to(Path(converted_default_model()) / "model.safetensors")
    return folder


@pytest.mark.slow
def test_default_model_graph_matches_python(graph_harness, default_folder):
    """IOI with a contrast (' Mary' − ' John') and a factual prompt's demeaned logit, on the
    default model: one browser load of the weights, one decomposition per prompt."""
    root, run = graph_harness
    lm = get_model(None)
    tok = lm.tokenizer
    one = lambda s: tok.encode(s, add_special_tokens=False)[0]      # noqa: E731
    ioi = "When Mary and John went to the store, John gave a drink to"
    fact = "The capital of France is"
    prompts = {ioi: [{"token": one(" Mary"), "contrast": one(" John"), "position": -1}],
               fact: [{"token": one(" Paris"), "contrast": None, "position": -1}]}
    replies = js_graphs(run, root, "default", lm, prompts)
    for (prompt, targets), reply in zip(prompts.items(), replies):
        t, js = targets[0], reply["graphs"][0]
        py = python_graph(prompt, lm, t["token"], t["contrast"], t["position"])
        report(f"default {prompt!r}", compare_graph(py, js, prompt), js)


def compare_split(py, js, what: str) -> dict:
    """The browser's by_source against Python's (graphfile.graph_entry's, from
    infoflow.graph's heads_by_source / mlp_by_source): the same nodes, the same values within
    RTOL of the largest, and each node's split summing to its effect."""
    from infoflow.graphfile import BY_SOURCE_NODES, _node_split

    bs = js["by_source"]
    which = np.asarray(bs["node"]["data"], np.int64)
    vals = arr(bs["values"])
    eff = np.abs(py.nodes["effect"][:-1])
    want = np.sort(np.argsort(-eff, kind="stable")[:BY_SOURCE_NODES])
    assert which.tolist() == want.tolist(), f"{what}: the split nodes differ"
    G = len(py.sources)
    assert vals.shape == (len(which), G)
    exp = np.stack([_node_split(py, int(i)) for i in which])
    top = np.abs(exp).max()
    worst = {"split": float(np.abs(vals - exp).max() / top)}
    assert worst["split"] <= RTOL, f"{what}: split differs by {worst['split']:.2e} of the largest value"
    # each node's split sums to its effect (the browser's own effect, and Python's)
    js_eff = arr(js["nodes"]["effect"])[which]
    sums = vals.astype(np.float64).sum(1)
    scale = np.abs(py.nodes["effect"][:-1]).max()
    worst["sum"] = float(np.abs(sums - js_eff).max() / scale)
    assert worst["sum"] <= RTOL, f"{what}: a node's split sums {worst['sum']:.2e} (of the largest effect) off its effect"
    assert bs["floor"] == pytest.approx(float(eff[which].min()), rel=RTOL)
    # the full arrays against Python's, not only the stored rows
    assert np.abs(py.heads_by_source.sum(-1) - py.heads).max() <= RTOL * scale     # Python's own identity
    worst["n_split"] = len(which)
    return worst


@pytest.mark.parametrize("kind", ["gqa", "llama-bias"])
def test_tiny_split_by_source_matches_python(graph_harness, kind):
    """Each node's effect by source token (paths.SourceSplit) from a second decomposition with
    the observer: Python's split, within 1e-4 of the largest value; with biases, the o_proj
    bias 'head' and the bias source."""
    root, run = graph_harness
    lm = tiny_model(kind, layers=3, seed=1)
    prompt = "When Mary and John went to the"
    targets = [{"token": 5, "contrast": 9, "position": -1, "split": True},
               {"token": 7, "contrast": None, "position": 4, "split": True}]
    reply = js_graphs(run, root, f"tiny-{kind}", lm, {prompt: targets})[0]
    for t, js in zip(targets, reply["graphs"]):
        py = python_graph(prompt, lm, t["token"], t["contrast"], t["position"])
        assert py.heads_by_source is not None
        worst = compare_split(py, js, f"{kind} {t}")
        if kind == "llama-bias":            # the bias source is a column, and carries part of the split
            assert len(py.sources) == len(py.tokens) + 1
            assert np.abs(arr(js["by_source"]["values"])[:, -1]).max() > 1e-3
        print(f"\n{kind} {t}: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in worst.items())
              + f"; split {js['timings']['split_ms']:.0f} ms of graph {js['timings']['graph_ms']:.0f} ms")
