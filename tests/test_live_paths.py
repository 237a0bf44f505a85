"""The live page's Paths panel (issue 23, items 4 and 5) with the real default model in headless
Chromium: after a run, the graph of the top prediction at the last position is drawn from the
worker's graph, and what is drawn is Python's graph (infoflow.graph) on the same prompt; another
target and contrast from the pickers; the ablation check on request, against ablate.py's."""
from __future__ import annotations

import numpy as np
import pytest

import infoflow
from infoflow import ablate
from tests.test_browser import browser  # noqa: F401  (the session's one shared Chromium)
from tests.test_live import _open_live, _wait_state, context, live_server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

IOI = "When Mary and John went to the store, John gave a drink to"
RTOL = 1e-4
VIEW = "() => window.infoflowLive.paths.view"
# everything the worker's graph holds, drawn (both sliders at 100 %): the view's last drawing
ALL = "() => { const v = window.infoflowLive.paths.view; v.set({nodeShare: 1, edgeShare: 1}); return v.lastDraw; }"


def _keys(g):
    n = g.nodes
    L, P = g.heads.shape[0], len(g.tokens)
    layer = np.where(n["kind"] == 4, L, np.maximum(n["layer"], 0))
    return list(zip(n["kind"].tolist(), layer.tolist(), np.maximum(n["head"], 0).tolist(), np.clip(n["position"], 0, P - 1).tolist()))


def _same_graph(draw, g):
    """The drawn nodes and edges are Python's graph: the same nodes, effects and edge weights."""
    nodes = sorted(draw["nodes"], key=lambda d: d["index"])
    assert [(d["kind"], d["layer"], d["head"], d["position"]) for d in nodes] == _keys(g)
    eff = g.nodes["effect"]
    scale = np.abs(eff[:-1]).max()
    got = np.array([d["effect"] for d in nodes])
    assert np.abs(got - eff).max() <= RTOL * max(scale, abs(g.value)), np.abs(got - eff).max()
    py = {(int(s), int(d)): w for s, d, w in zip(g.edges["src"], g.edges["dst"], g.edges["weight"])}
    js = {(e["src"], e["dst"]): e["weight"] for e in draw["edges"]}
    assert set(js) == set(py)
    top = max(abs(w) for w in py.values())
    assert max(abs(js[k] - py[k]) for k in py) <= 1e-3 * top


def _run(context, live_server, text):
    page = _open_live(context.new_page(), live_server + "live/index.html")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.fill("#prompt", text)
    page.click("#run")
    assert _wait_state(page, ["error", "done"], timeout=300_000) == "done", page.text_content("#live-error")
    page.wait_for_function("() => window.infoflowLive && window.infoflowLive.paths")
    # closed until opened: the run itself computed no graph
    assert not page.evaluate("() => document.getElementById('live-paths').open")
    assert page.evaluate("async () => (await window.infoflowLive.paths.ready) === null")
    page.click("#live-paths > summary")
    assert page.evaluate("async () => !!(await window.infoflowLive.paths.open())"), page.text_content("#live-paths")
    return page, errors


def test_live_paths_panel_draws_pythons_graph_and_checks_it(context, live_server, default_model):  # noqa: F811
    page, errors = _run(context, live_server, IOI)
    # the first graph: the top prediction at the last position, demeaned, from the run's kept state
    g = infoflow.graph(IOI, target=None, position=-1, model=default_model)
    _same_graph(page.evaluate(ALL), g)
    status = page.text_content("#live-paths-status")
    assert "no new decomposition" in status and " MB)" in status
    summary = page.text_content("#live-paths-summary")
    assert f"{g.completeness:.3f}" in summary and "runs on request" in summary
    assert "no per-source split" in summary and "Split by source" in summary
    # another target and a contrast: the second prediction at position 5, against the first
    P = len(g.tokens)
    page.select_option("#live-paths-position", "5")
    ids = page.eval_on_selector_all("#live-paths-target option", "os => os.map((o) => +o.value)")
    page.select_option("#live-paths-contrast", str(ids[0]))
    page.select_option("#live-paths-target", str(ids[1]))
    page.wait_for_function(f"() => {VIEW[6:]} && {VIEW[6:]}.entry.target.id === {ids[1]} && {VIEW[6:]}.entry.position === 5")
    g2 = infoflow.graph(IOI, target=ids[1], contrast=ids[0], position=5, model=default_model)
    assert (g2.target, g2.contrast, g2.position) == (ids[1], ids[0], 5) and P > 5
    _same_graph(page.evaluate(ALL), g2)
    assert "no new decomposition" in page.text_content("#live-paths-status")
    # back to the first graph (kept in the page), then the ablation check on request
    page.select_option("#live-paths-position", str(P - 1))
    page.select_option("#live-paths-contrast", "")
    page.select_option("#live-paths-target", str(g.target))
    page.wait_for_function(f"() => {VIEW[6:]}.entry.position === {P - 1} && !{VIEW[6:]}.entry.contrast")
    page.click("#live-check-run")
    check = page.evaluate("async () => await window.infoflowLive.paths.checking")
    assert check, page.text_content("#live-check-status")
    want = ablate.ablation_check(default_model, g)
    # the same 40 nodes, and the measured ΔT within 1e-3 of the largest one
    assert [(r["kind"], r["layer"], r["head"], r["position"]) for r in check["rows"]] == \
        [(r.kind, r.layer, r.head, r.position) for r in want.rows]
    got, exp = np.array([r["actual"] for r in check["rows"]]), np.array([r.actual for r in want.rows])
    assert np.abs(got - exp).max() <= 1e-3 * np.abs(exp).max(), np.abs(got - exp).max() / np.abs(exp).max()
    assert abs(check["value"] - want.value) <= 1e-3 * abs(want.value)
    for kind, key in (("head", "heads"), ("mlp", "mlps")):
        s = want.stats(kind)
        assert check[key]["n"] == s["n"]
        assert check[key]["rho"] == pytest.approx(s["rho"], abs=0.02)
        assert check[key]["rho_direct"] == pytest.approx(s["rho_direct"], abs=0.02)
    summary = page.text_content("#live-paths-summary")
    assert f"\u03c1 = {'+' if check['heads']['rho'] >= 0 else chr(0x2212)}{abs(check['heads']['rho']):.2f}" in summary
    assert "Largest misses" in summary and "direct effect alone" in summary
    assert page.text_content("#live-check-status").startswith("Checked in")
    print("\n" + page.text_content("#live-check-status"))
    # a second check, cancelled: it says so, and the graph stays
    page.click("#live-check-run")
    page.click("#live-check-cancel")
    page.wait_for_function("() => document.getElementById('live-check-status').textContent.includes('cancelled')")
    assert page.evaluate(f"() => !!{VIEW[6:]}")
    assert errors == []


def _restored(page):
    page.reload()
    page.wait_for_function("() => document.documentElement.dataset.liveState")
    page.click("#run")
    assert _wait_state(page, ["error", "done"], timeout=300_000) == "done", page.text_content("#live-error")
    page.wait_for_function("() => window.infoflowLive && window.infoflowLive.paths")
    return page


def test_live_paths_state_rides_in_the_hash_and_a_reload_restores_it(context, live_server):  # noqa: F811
    page, errors = _run(context, live_server, IOI)
    page.select_option("#live-paths-position", "5")
    ids = page.eval_on_selector_all("#live-paths-target option", "os => os.map((o) => +o.value)")
    page.select_option("#live-paths-contrast", str(ids[0]))
    page.select_option("#live-paths-target", str(ids[2]))
    page.wait_for_function(f"() => {VIEW[6:]} && {VIEW[6:]}.entry.target.id === {ids[2]}")
    page.evaluate(f"() => {VIEW[6:]}.set({{nodeShare: 0.5}})")
    page.wait_for_function("() => location.hash.includes('pn=50')")
    q = dict(x.split("=", 1) for x in page.evaluate("() => location.hash.slice(1)").split("&"))
    assert (q["pv"], q["lp"], q["lt"], q["lc"], q["pn"]) == ("1", "5", str(ids[2]), str(ids[0]), "50"), q
    assert "text" in q and "m" in q       # the prompt's and the viewer's keys stay
    # a reload with that hash: after the run, the same pickers, shares and graph
    _restored(page)
    assert page.evaluate("async () => !!(await window.infoflowLive.paths.ready)")
    assert page.input_value("#live-paths-position") == "5"
    assert page.input_value("#live-paths-target") == str(ids[2])
    assert page.input_value("#live-paths-contrast") == str(ids[0])
    got = page.evaluate(f"() => {{ const v = {VIEW[6:]}; return [v.entry.position, v.entry.target.id, v.entry.contrast.id, v.state.nodeShare]; }}")
    assert got == [5, ids[2], ids[0], 0.5]
    assert page.evaluate("() => document.getElementById('live-paths').open")
    # closed: pv=0, and a reload keeps it closed
    page.evaluate("() => { document.getElementById('live-paths').open = false; }")
    page.wait_for_function("() => new URLSearchParams(location.hash.slice(1)).get('pv') === '0'")
    _restored(page)
    assert not page.evaluate("() => document.getElementById('live-paths').open")
    assert errors == []


def test_live_paths_split_by_source_is_pythons(context, live_server, default_model):  # noqa: F811
    """"Split by source": the worker decomposes the prompt again with the split as its observer
    (engine-split.js); the stored rows are Python's (graphfile.graph_entry's by_source from
    infoflow.graph), each sums to its node's effect, and hovering a node names its top sources."""
    from infoflow.graphfile import BY_SOURCE_NODES, _node_split

    page, errors = _run(context, live_server, IOI)
    page.check("#live-paths-split")
    page.wait_for_function(f"() => {VIEW[6:]} && {VIEW[6:]}.entry.bySource")
    got = page.evaluate(f"""() => {{ const e = {VIEW[6:]}.entry, bs = e.bySource;
        return {{node: [...bs.row.keys()], values: Array.from(bs.values), G: bs.G, floor: bs.floor,
                 effect: Array.from(e.nodes.effect), target: e.target.id}}; }}""")
    g = infoflow.graph(IOI, target=None, position=-1, model=default_model)
    assert got["target"] == g.target
    eff = np.abs(g.nodes["effect"][:-1])
    want = np.sort(np.argsort(-eff, kind="stable")[:BY_SOURCE_NODES])
    assert got["node"] == want.tolist()
    vals = np.array(got["values"]).reshape(len(want), got["G"])
    exp = np.stack([_node_split(g, int(i)) for i in want])
    assert vals.shape == exp.shape
    top = np.abs(exp).max()
    worst = np.abs(vals - exp).max() / top
    assert worst <= RTOL, worst
    sums = np.abs(vals.sum(1) - np.array(got["effect"])[want]).max() / np.abs(eff).max()
    assert sums <= RTOL, sums
    status = page.text_content("#live-paths-status")
    assert "one more decomposition" in status and "no new decomposition" not in status
    ms = page.evaluate("() => window.infoflowLive.timings")
    print(f"\nsplit: {worst:.2e} of the largest value, sums {sums:.2e}; run: layers {ms['layers_ms']:.0f} ms; " + status)
    # hover the largest head: its top sources, by name, the largest first
    draw = page.evaluate(ALL)
    best = max((d for d in draw["nodes"] if d["kind"] == 1), key=lambda d: abs(d["effect"]))
    page.locator("#live-paths").scroll_into_view_if_needed()
    box = page.locator("#live-paths-canvas").bounding_box()
    page.mouse.move(box["x"] + best["x"], box["y"] + best["y"])
    tip = page.locator(".paths-tooltip")
    tip.wait_for(state="visible")
    row = exp[want.tolist().index(best["index"])]
    s = int(np.argmax(np.abs(row)))
    text = tip.inner_text()
    assert "top sources" in text and f"{abs(row[s]):.3f}" in text, text
    assert "ls=1" in page.evaluate("() => location.hash")
    assert errors == []
