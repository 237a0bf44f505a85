"""The Paths panel (issue 23, item 4) in headless Chromium: what is drawn, checked against the
graph computed in Python; hover, click, thresholds, the URL hash, exports; hostile graph files.

The prompt page is the test gallery's `ioi`. Its graph file is computed here (infoflow.paths on
the default model) and served by Playwright's router at GRAPH_URL; the page's HTML is given
data-graph-src=GRAPH_URL on the way (the build may or may not name a graph file itself).
"""
from __future__ import annotations

import json
import math
import re

import msgpack
import numpy as np
import pytest

from tests.test_browser import browser, page, pages, site_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

IOI = "When Mary and John went to the store, John gave a drink to"
GRAPH_URL = "/test-graph/ioi.msgpack"
VIEW = "() => window.infoflowViewer.viewer.paths"
DRAWN = "() => new Promise((done) => window.infoflowViewer.viewer.paths.on('draw', done))"


@pytest.fixture(scope="module")
def ioi_graphs(default_model):
    """The ioi prompt's graphs on the default model: ' Mary' − ' John' (with a small ablation
    check) and the top prediction, demeaned; the sidecar document and its msgpack bytes."""
    from infoflow import ablate, graphfile, paths
    from infoflow.decompose import decompose_variants

    d = decompose_variants(IOI, default_model, {"main": None}, logit_lens=False, heads=False,
                           graphs=[paths.TargetSpec(" Mary", " John"), paths.TargetSpec(None)])["main"]
    gs = d.graphs
    gs[0].check = ablate.ablation_check(default_model, gs[0], n=4)
    doc = graphfile.graph_document(gs, prompt_id="ioi")
    for g in gs:            # what the page gets: the sidecar's edges (at most STORED_EDGES)
        keep = graphfile.stored_edge_index(g.edges)
        g.edges = {k: v[keep] for k, v in g.edges.items()}
    return {"graphs": gs, "doc": doc, "bytes": msgpack.packb(doc, use_bin_type=True)}


def _route(pg, site_server, body: bytes | None, *, attribute=True):
    """Serve `body` at GRAPH_URL and name it in every prompt page's viewer root."""
    def html(route):
        resp = route.fetch()
        text = resp.text()
        text = re.sub(r' data-graph-src="[^"]*"', "", text)
        if attribute:
            text = text.replace('<main class="viewer" id="viewer"', f'<main class="viewer" id="viewer" data-graph-src="{GRAPH_URL}"', 1)
        route.fulfill(response=resp, body=text)
    pg.route(re.compile(r".*/p/[^/]+\.html(\?.*)?$"), html)
    if body is not None:
        pg.route(re.compile(r".*/test-graph/.*"), lambda r: r.fulfill(status=200, body=body, content_type="application/octet-stream"))


def _open(pg, url):
    pg.goto(url)
    pg.wait_for_function("() => document.documentElement.dataset.viewerReady")
    assert pg.evaluate("document.documentElement.dataset.viewerReady") == "1", pg.text_content("#error")


def _open_paths(pg, site_server, pages, graph, fragment="#pv=1"):
    _route(pg, site_server, graph)
    _open(pg, site_server + pages["ioi"] + fragment)
    pg.wait_for_function(f"() => {VIEW[6:]} || document.querySelector('.paths-error')")
    assert not pg.query_selector(".paths-error"), pg.text_content(".paths-error")
    return pg.evaluate(f"async () => {{ const d = await ({DRAWN})(); return d; }}")


def _keep(values, share):
    from infoflow.paths import cumulative_keep
    return set(cumulative_keep(np.asarray(values, np.float64), share).tolist())


def test_drawn_nodes_and_edges_are_the_stored_graph(site_server, page, pages, ioi_graphs):  # noqa: F811
    g = ioi_graphs["graphs"][0]
    draw = _open_paths(page, site_server, pages, ioi_graphs["bytes"], "#pv=1&pn=100&pe=100")
    n = len(g.nodes["kind"])
    assert len(draw["nodes"]) == n and len(draw["edges"]) == len(g.edges["src"])
    eff = g.nodes["effect"].astype(np.float32)
    by_index = {d["index"]: d for d in draw["nodes"]}
    for i in range(n):
        d = by_index[i]
        assert d["effect"] == pytest.approx(float(eff[i]), rel=1e-6, abs=1e-7)
        assert (d["kind"], d["position"]) == (int(g.nodes["kind"][i]), int(g.nodes["position"][i]))
    # layout: the embeddings at the bottom, the target at the top; a later layer higher up;
    # positions left to right
    ys = {d["index"]: d["y"] for d in draw["nodes"]}
    target = n - 1
    assert ys[target] == min(ys.values())
    emb = [d for d in draw["nodes"] if d["kind"] == 0]
    assert emb and all(d["y"] == max(ys.values()) for d in emb)
    assert [d["x"] for d in sorted(emb, key=lambda d: d["position"])] == sorted(d["x"] for d in emb)
    for a in draw["nodes"]:
        for b in draw["nodes"]:
            if a["kind"] in (1, 2) and b["kind"] in (1, 2) and a["layer"] < b["layer"]:
                assert a["y"] > b["y"]
    # sizes: area ∝ |effect| (radius − r_min ∝ √|effect|, the target aside)
    body = [d for d in draw["nodes"] if d["kind"] != 4]
    top = max(abs(d["effect"]) for d in body)
    big = max(body, key=lambda d: abs(d["effect"]))
    r_min = 1.6
    for d in body:
        want = r_min + (big["r"] - r_min) * math.sqrt(abs(d["effect"]) / top)
        assert d["r"] == pytest.approx(want, rel=1e-6), d
    # edges: the stored weights; colour by sign (the site's blue / red pair), width by |weight|
    w = g.edges["weight"].astype(np.float32)
    pos, neg = {d["color"] for d in body if d["effect"] >= 0}, {d["color"] for d in body if d["effect"] < 0}
    assert len(pos) == 1 and len(neg) == 1 and pos != neg
    for e in draw["edges"]:
        j = e["index"]
        assert (e["src"], e["dst"]) == (int(g.edges["src"][j]), int(g.edges["dst"][j]))
        assert e["weight"] == pytest.approx(float(w[j]), rel=1e-6, abs=1e-7)
        assert e["color"] in (pos if e["weight"] >= 0 else neg)
    ordered = sorted(draw["edges"], key=lambda e: abs(e["weight"]))
    assert [e["width"] for e in ordered] == sorted(e["width"] for e in ordered)
    assert ordered[-1]["width"] > ordered[0]["width"]
    # the pixel at the largest node's centre is its sign's colour
    px = page.evaluate("""([x, y]) => {
        const c = document.getElementById('paths-canvas'), d = window.devicePixelRatio || 1;
        const p = c.getContext('2d').getImageData(Math.round(x * d), Math.round(y * d), 1, 1).data;
        return '#' + [p[0], p[1], p[2]].map((v) => v.toString(16).padStart(2, '0')).join('');
    }""", [big["x"], big["y"]])
    assert px.lower() == big["color"].lower()
    # under the graph: the completeness and the ablation check's ρ, and the frozen-pattern caveat
    summary = page.text_content("#paths-summary")
    assert f"{g.completeness:.3f}" in summary
    s = g.check.stats("head")
    assert f"{abs(s['rho']):.2f}" in summary and "direct effect alone" in summary
    assert "edges follow the value path only" in summary and "gets no edge" in summary
    assert page.errors == []


def test_thresholds_filter_the_stored_graph_and_live_in_the_url(site_server, page, pages, ioi_graphs):  # noqa: F811
    g = ioi_graphs["graphs"][0]
    draw = _open_paths(page, site_server, pages, ioi_graphs["bytes"], "#pv=1&pn=50&pe=60")
    eff = g.nodes["effect"].astype(np.float32)[:-1]
    want_nodes = _keep(eff, 0.5) | {len(eff)}
    assert {d["index"] for d in draw["nodes"]} == want_nodes
    among = [j for j in range(len(g.edges["src"])) if g.edges["src"][j] in want_nodes and g.edges["dst"][j] in want_nodes]
    w = g.edges["weight"].astype(np.float32)[among]
    want_edges = {among[k] for k in _keep(w, 0.6)}
    assert {e["index"] for e in draw["edges"]} == want_edges
    assert "pn=50" in page.evaluate("location.hash") and "pe=60" in page.evaluate("location.hash")
    # a slider redraws and rewrites the hash; the other target comes from the picker
    page.fill("#paths-nodes", "100")
    page.dispatch_event("#paths-nodes", "input")
    draw = page.evaluate(f"async () => await ({DRAWN})()")
    assert len(draw["nodes"]) == len(g.nodes["kind"])
    page.wait_for_function("() => !location.hash.includes('pn=50')")      # the URL follows the slider once it rests
    page.select_option("#paths-target", "1")
    draw = page.evaluate(f"async () => await ({DRAWN})()")
    g1 = ioi_graphs["graphs"][1]
    assert draw["target"] == 1 and len(draw["nodes"]) <= len(g1.nodes["kind"])
    page.wait_for_function("() => location.hash.includes('pt=1')")
    # the link reopens the same view
    url = page.evaluate("location.href")
    page.goto("about:blank")
    _open(page, url)
    page.wait_for_function(VIEW)
    state = page.evaluate(f"() => ({VIEW[6:]}).state")
    assert state["target"] == 1 and state["nodeShare"] == 1
    assert page.errors == []


def test_hover_click_pin_and_heads_panel(site_server, page, pages, ioi_graphs):  # noqa: F811
    g = ioi_graphs["graphs"][0]
    # keep the per-source split of the 3 largest nodes only, so that a smaller node says why it has none
    raw = msgpack.unpackb(ioi_graphs["bytes"], raw=False)
    from infoflow.datafile import decode_array, encode_array
    bs = raw["graphs"][0]["by_source"]
    node, values = decode_array(bs["node"]), decode_array(bs["values"])
    eff = g.nodes["effect"]
    top3 = np.argsort(-np.abs(eff[node]))[:3]
    bs["node"], bs["values"] = encode_array(node[top3], "u32"), encode_array(values[top3], "f32")
    bs["floor"] = float(np.abs(eff[node[top3]]).min())
    draw = _open_paths(page, site_server, pages, msgpack.packb(raw, use_bin_type=True), "#pv=1&pn=100&pe=100")
    box = page.locator("#paths-canvas").bounding_box()
    heads = sorted((d for d in draw["nodes"] if d["kind"] == 1), key=lambda d: -abs(d["effect"]))
    best = heads[0]
    page.locator("#paths-panel").scroll_into_view_if_needed()
    box = page.locator("#paths-canvas").bounding_box()
    page.mouse.move(box["x"] + best["x"], box["y"] + best["y"])
    tip = page.locator(".paths-tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    label = g.head_labels[best["head"]]
    assert f"head {best['layer']}.{label}" in text
    assert f"{abs(best['effect']):.3f}" in text
    assert "in-edges" in text and "out-edges" in text
    if best["index"] in node[top3]:
        assert "top sources" in text
    small = next(d for d in heads if d["index"] not in set(node[top3].tolist()))
    page.mouse.move(box["x"] + small["x"], box["y"] + small["y"])
    page.wait_for_function("() => document.querySelector('.paths-tooltip').textContent.includes('not stored below')")
    # click: the node's paths are highlighted, the grid pins its cell and the heads panel opens on the head
    page.mouse.click(box["x"] + best["x"], box["y"] + best["y"])
    draw = page.evaluate(f"async () => await ({DRAWN})()")
    assert draw["selected"] == best["index"] and best["index"] in draw["focus"]["nodes"]
    assert len(g.nodes["kind"]) - 1 in draw["focus"]["nodes"] or not draw["focus"]["edges"]
    pin = page.evaluate("() => window.infoflowViewer.state.pin")
    assert pin == {"l": best["layer"], "k": 0, "p": best["position"]}
    page.wait_for_selector('#heads tr.is-picked')
    assert page.get_attribute("#heads tr.is-picked", "data-head") == str(best["head"])
    page.wait_for_function("(k) => location.hash.includes('ps=' + k)", arg=f"1.{best['layer']}.{best['head']}.{best['position']}")
    assert page.errors == []


def test_exports_svg_png_and_circuit_tracer_json(site_server, page, pages, ioi_graphs):  # noqa: F811
    from infoflow.graphfile import to_circuit_tracer
    g = ioi_graphs["graphs"][0]
    _open_paths(page, site_server, pages, ioi_graphs["bytes"], "#pv=1&pn=100&pe=100")
    got = page.evaluate(f"() => ({VIEW[6:]}).exportJson()")
    want = to_circuit_tracer(g, slug="ioi-graph")
    assert got["metadata"]["prompt_tokens"] == want["metadata"]["prompt_tokens"]
    assert [n["node_id"] for n in got["nodes"]] == [n["node_id"] for n in want["nodes"]]
    for a, b in zip(got["nodes"], want["nodes"]):
        assert {k: v for k, v in a.items() if k != "activation"} == {k: v for k, v in b.items() if k != "activation"}
        assert a["activation"] == pytest.approx(b["activation"], rel=1e-5, abs=1e-6)
    assert [(l["source"], l["target"]) for l in got["links"]] == [(l["source"], l["target"]) for l in want["links"]]
    for a, b in zip(got["links"], want["links"]):
        assert a["weight"] == pytest.approx(b["weight"], rel=1e-5, abs=1e-6)
    svg = page.evaluate(f"() => ({VIEW[6:]}).exportSvg()")
    assert svg.startswith("<svg") and "edges follow the value path only" in svg and "lowers T" in svg
    assert svg.count("<circle") + svg.count("<rect") + svg.count("<polygon") >= len(g.nodes["kind"])
    size = page.evaluate(f"async () => (await ({VIEW[6:]}).exportPng()).size")
    assert size > 10000
    assert page.errors == []


def _hostile(ioi_graphs):
    """Crafted graph files and a word of the message each must show."""
    base = msgpack.unpackb(ioi_graphs["bytes"], raw=False)

    def variant(edit):
        doc = msgpack.unpackb(ioi_graphs["bytes"], raw=False)
        edit(doc["graphs"][0], doc)
        return msgpack.packb(doc, use_bin_type=True)

    def huge(e, d):
        e["nodes"]["kind"]["shape"] = [1 << 31]

    def missing(e, d):
        src = np.frombuffer(_raw(e["edges"]["src"]), np.uint32).copy()
        src[0] = 10 ** 6
        e["edges"]["src"] = {"dtype": "u32", "shape": [len(src)], "data": src.tobytes()}

    def nan(e, d):
        w = np.frombuffer(_raw(e["edges"]["weight"]), np.float32).copy()
        w[len(w) // 2] = np.nan
        e["edges"]["weight"] = {"dtype": "f32", "shape": [len(w)], "data": w.tobytes()}

    def many(e, d):
        d["graphs"] = d["graphs"][:1] * 17                 # one more than a file may hold

    def bomb(e, d):
        import zlib
        e["edges"]["weight"] = {"dtype": "f32", "shape": [len(np.frombuffer(_raw(e["edges"]["weight"]), np.float32))],
                                "data": zlib.compress(b"\0" * (1 << 26)), "codec": "deflate"}
    assert base["kind"] == "infoflow-graph"
    return {
        "more than this viewer reads": variant(huge),
        "names a node that does not exist": variant(missing),
        "not a finite number": variant(nan),
        "the number of graphs": variant(many),
        "inflates to more than": variant(bomb),
        "not valid msgpack": b"\xc1\xff\x00garbage",
    }


def _raw(a):
    import zlib
    return zlib.decompress(a["data"]) if a.get("codec") == "deflate" else a["data"]


def test_hostile_graph_files_show_a_message(site_server, browser, pages, ioi_graphs):  # noqa: F811
    from tests.test_browser import _new_page
    for words, body in _hostile(ioi_graphs).items():
        ctx, pg = _new_page(browser)
        try:
            _route(pg, site_server, body)
            _open(pg, site_server + pages["ioi"] + "#pv=1")
            try:
                pg.wait_for_selector(".paths-error", timeout=15000)
            except Exception:
                raise AssertionError(f"no message for the crafted file ({words})") from None
            msg = pg.text_content(".paths-error")
            assert "Cannot show the paths" in msg and words in msg, (words, msg)
            assert pg.evaluate("document.documentElement.dataset.viewerReady") == "1"   # the grid still works
            assert pg.evaluate("window.infoflowViewer.viewer.paths") is None
            assert pg.errors == [], (words, pg.errors)
        finally:
            ctx.close()


def test_no_graph_file_no_paths_panel(site_server, page, pages):  # noqa: F811
    _route(page, site_server, None, attribute=False)
    _open(page, site_server + pages["ioi"] + "#pv=1")
    page.wait_for_function("() => window.infoflowViewer.idle")
    assert page.query_selector("#paths-panel") is None
    assert page.errors == []
