"""The Paths panel on the compare page and the live page (issue 23, items 4 and 5), in headless
Chromium: what each view draws is checked against the graph data it was given (the view's
on("draw") hook), a missing or crafted graph file gets a message in words, and the live page's
ablation check runs the real model in the browser as infoflow/ablate.py does in Python.

The compare page is tests/test_two_models.py's two-model site (a tiny Llama and a tiny Gemma 3),
whose build writes one graph file per prompt per model.
"""
from __future__ import annotations

import json
import re

import msgpack
import numpy as np
import pytest

from infoflow.datafile import decode_array
from tests.test_browser import _new_page, browser  # noqa: F401  (fixtures)
from tests.test_compare_ui import page, server  # noqa: F401  (fixtures: the compare site, a fresh page)
from tests.test_two_models import two_model_site, two_models  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

# the view draws synchronously on set(): its last drawing is the one the change made
SET = "([i, patch]) => { const v = window.infoflowCompare.paths.views[i]; v.set(patch); return v.lastDraw; }"


def _manifest_entry(site, pid):
    m = json.loads((site / "data" / "manifest.json").read_text(encoding="utf-8"))
    return next(e for e in m["prompts"] if e["id"] == pid)


def _sidecar(site, v):
    return msgpack.unpackb((site / v["graph"]).read_bytes(), raw=False, strict_map_key=False)


def _open(pg, url):
    pg.goto(url)
    pg.wait_for_function("() => document.documentElement.dataset.compareReady")
    assert pg.evaluate("document.documentElement.dataset.compareReady") == "1", pg.text_content("#error")


def _open_paths(pg):
    pg.click("#compare-paths > summary")
    pg.wait_for_function("() => window.infoflowCompare.paths.loading")
    return pg.evaluate("async () => (await window.infoflowCompare.paths.loading).map((v) => !!v)")


def test_compare_draws_each_models_graph_from_its_own_file(server, page, two_model_site):  # noqa: F811
    site = two_model_site["site"]
    entry = _manifest_entry(site, "dursley")
    fetched = []
    page.on("request", lambda r: "/graph/" in r.url and fetched.append(r.url))
    _open(page, server + "c/dursley.html")
    assert page.evaluate("document.getElementById('compare-paths').open") is False
    assert fetched == []                                   # closed: nothing fetched yet
    assert _open_paths(page) == [True, True]
    assert sorted(u.split("/data/", 1)[1] for u in fetched) == sorted(v["graph"].split("data/", 1)[1] for v in entry["models"])
    for i, v in enumerate(entry["models"]):
        doc = _sidecar(site, v)
        g = doc["graphs"][0]
        kind, eff = decode_array(g["nodes"]["kind"]), decode_array(g["nodes"]["effect"])
        src, dst, w = (decode_array(g["edges"][k]) for k in ("src", "dst", "weight"))
        # everything stored, drawn: the view's nodes and edges are the file's, value for value
        draw = page.evaluate(SET, [i, {"nodeShare": 1, "edgeShare": 1}])
        assert len(draw["nodes"]) == len(kind) and len(draw["edges"]) == len(src)
        for d in draw["nodes"]:
            assert d["kind"] == int(kind[d["index"]]) and d["effect"] == pytest.approx(float(eff[d["index"]]), rel=1e-6, abs=1e-9)
        for e in draw["edges"]:
            j = e["index"]
            assert (e["src"], e["dst"]) == (int(src[j]), int(dst[j]))
            assert e["weight"] == pytest.approx(float(w[j]), rel=1e-6, abs=1e-9)
        emb = sorted((d for d in draw["nodes"] if d["kind"] == 0), key=lambda d: d["position"])
        assert [d["x"] for d in emb] == sorted(d["x"] for d in emb) and len({d["x"] for d in emb}) == len(emb)
        # under each graph: its completeness and its ablation check's ρ, from this model's file
        side = "ab"[i]
        summary = page.text_content(f"#paths-{side}-summary")
        assert f"{g['completeness']:.3f}" in summary
        rho = g["check"]["heads"]["rho"]
        assert ("n/a" if rho is None else f"{abs(rho):.2f}") in summary
        # its own target picker, over its stored targets
        opts = page.eval_on_selector_all(f"#paths-{side}-target option", "os => os.map((o) => o.textContent)")
        assert len(opts) == len(doc["graphs"]) and g["target"]["text"].strip() in opts[0]
    # the picker redraws that side only, with that graph's nodes
    page.select_option("#paths-b-target", "1")
    draw = page.evaluate("() => window.infoflowCompare.paths.views[1].lastDraw")
    assert draw["target"] == 1
    g1 = _sidecar(site, entry["models"][1])["graphs"][1]
    assert {d["index"] for d in draw["nodes"]} <= set(range(len(decode_array(g1["nodes"]["kind"]))))
    assert "pv=1" in page.evaluate("location.hash")
    assert page.errors == []


def test_compare_missing_graph_file_says_so(server, page):
    def html(route):
        resp = route.fetch()
        text = resp.text()
        # the second model's link names no graph file; the first one's is gone from the server
        links = re.findall(r'data-graph-src="[^"]*"', text)
        text = text.replace(links[1], 'data-graph-src=""')
        route.fulfill(response=resp, body=text)
    page.route(re.compile(r".*/c/dursley\.html.*"), html)
    page.route(re.compile(r".*/data/graph/.*"), lambda r: r.fulfill(status=404, body="gone"))
    _open(page, server + "c/dursley.html#pv=1")
    assert page.evaluate("async () => (await window.infoflowCompare.paths.loading).map((v) => !!v)") == [False, False]
    a, b = page.text_content("#paths-root-a"), page.text_content("#paths-root-b")
    assert "Cannot show the paths" in a and "missing (HTTP 404)" in a
    assert "Cannot show the paths" in b and "no graph file for" in b
    assert page.evaluate("document.documentElement.dataset.compareReady") == "1"     # the grids still work
    assert page.errors == [] or all("404" in e for e in page.errors)


def _crafted(site, v):
    """A crafted copy of a real graph file: a huge node count, and an edge's weight NaN."""
    doc = _sidecar(site, v)
    doc["graphs"][0]["nodes"]["kind"]["shape"] = [1 << 31]
    nan = msgpack.unpackb((site / v["graph"]).read_bytes(), raw=False, strict_map_key=False)
    w = decode_array(nan["graphs"][0]["edges"]["weight"]).astype(np.float32)
    w[len(w) // 2] = np.nan
    nan["graphs"][0]["edges"]["weight"] = {"dtype": "f32", "shape": [len(w)], "data": w.tobytes()}
    return {"more than this viewer reads": msgpack.packb(doc, use_bin_type=True),
            "not a finite number": msgpack.packb(nan, use_bin_type=True)}


def test_compare_crafted_graph_file_gets_a_message(server, browser, two_model_site):  # noqa: F811
    site = two_model_site["site"]
    entry = _manifest_entry(site, "dursley")
    bad = entry["models"][1]["graph"].split("/")[-1]
    for words, body in _crafted(site, entry["models"][1]).items():
        ctx, pg = _new_page(browser)
        try:
            pg.route(re.compile(r".*/" + re.escape(bad) + "$"), (lambda b: lambda r: r.fulfill(status=200, body=b))(body))
            _open(pg, server + "c/dursley.html#pv=1")
            views = pg.evaluate("async () => (await window.infoflowCompare.paths.loading).map((v) => !!v)")
            assert views == [True, False], words
            msg = pg.text_content("#paths-root-b .paths-error")
            assert "Cannot show the paths" in msg and words in msg, msg
            assert pg.evaluate("1 + 1") == 2 and pg.errors == []           # the tab answers
        finally:
            ctx.close()


def test_stored_edge_cap_and_per_source_floor_are_stated(server, page, two_model_site):  # noqa: F811
    """A sidecar that stored only part of the pruned graph's edges (graphfile.STORED_EDGES) and
    the per-source split of its largest nodes only (BY_SOURCE_NODES): the view says both, under
    the graph and in the exported figure's caption."""
    site = two_model_site["site"]
    v = _manifest_entry(site, "dursley")["models"][0]
    doc = _sidecar(site, v)
    g = doc["graphs"][0]
    m = len(decode_array(g["edges"]["src"]))
    g["edges_pruned"], g["edges_stored_share"] = m + 250, 0.8125
    n = len(decode_array(g["nodes"]["kind"])) - 1
    from infoflow.datafile import encode_array
    bs = g["by_source"]
    node, values = decode_array(bs["node"]), decode_array(bs["values"])
    k = 3                                         # as if BY_SOURCE_NODES were 3
    top = np.sort(np.argsort(-np.abs(decode_array(g["nodes"]["effect"])[node]), kind="stable")[:k])
    bs["node"], bs["values"] = encode_array(node[top], "u32"), encode_array(values[top], "f32")
    assert n > k
    name = v["graph"].split("/")[-1]
    page.route(re.compile(r".*/" + re.escape(name) + "$"),
               lambda r: r.fulfill(status=200, body=msgpack.packb(doc, use_bin_type=True)))
    _open(page, server + "c/dursley.html#pv=1")
    page.evaluate("async () => await window.infoflowCompare.paths.loading")
    summary = page.text_content("#paths-a-summary")
    want = f"{m} of {m + 250} edges stored (81.3 % of |weight|)"
    assert want in summary
    assert f"Per-source splits are stored for the {k} of {n} nodes with the largest |effect| only" in summary
    caption = page.evaluate("""() => { const svg = new DOMParser().parseFromString(window.infoflowCompare.paths.views[0].exportSvg(), "image/svg+xml");
        return [...svg.querySelectorAll("text")].map((t) => t.textContent).join(" "); }""")
    assert want in caption
    # the file as built: every pruned edge stored, no such line
    assert "edges stored (" not in page.text_content("#paths-b-summary")
    assert page.errors == []
