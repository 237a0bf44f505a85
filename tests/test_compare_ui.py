"""Issue 14 in headless Chromium: a prompt page switches model keeping its view, and compare mode
draws two grids in shared source colours and one chart of the traced source over depth.

The site is tests/test_two_models.py's: a tiny 3-layer Llama (SmolLM2's tokenizer) and a tiny
2-layer Gemma 3 (a BPE that adds <bos> and cuts words differently). Drawn values are checked by
sampling the canvases at known cells and chart points and comparing with the data.
"""
from __future__ import annotations

import pytest

from tests.test_browser import _new_page, _serve, browser  # noqa: F401  (fixtures)
from tests.test_two_models import two_model_site, two_models  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

HEX = "(d) => '#' + [d[0], d[1], d[2]].map((c) => c.toString(16).padStart(2, '0')).join('')"

# The colour drawn at fraction fx of cell (l, k, p) of side i's grid.
GRID_PIXEL = f"""([i, l, k, p, fx]) => {{
    const g = window.infoflowCompare.grids[i], r = g.cellRect(l, k, p), d = g.dpr;
    const x = Math.floor((r.x + fx * r.w) * d), y = Math.floor((r.y + 0.5 * r.h) * d);
    return ({HEX})(g.canvas.getContext('2d').getImageData(x, y, 1, 1).data);
}}"""


@pytest.fixture(scope="module")
def server(two_model_site):  # noqa: F811
    srv, url = _serve(two_model_site["site"])
    yield url
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def page(browser):  # noqa: F811
    ctx, pg = _new_page(browser)
    yield pg
    ctx.close()


def open_compare(pg, url):
    pg.goto(url)
    pg.wait_for_function("() => document.documentElement.dataset.compareReady")
    assert pg.evaluate("document.documentElement.dataset.compareReady") == "1", pg.text_content("#error")


def traced_share(pg, i, l, k, p):
    """The traced source's norm share of cell (l, k, p) on side i, from the decoded data."""
    return pg.evaluate("""([i, l, k, p]) => {
        const side = window.infoflowCompare.sides[i], V = side.V, G = V.G, s = side.trace;
        const base = ((l * 2 + k) * side.D.P + p) * G;
        let sum = 0;
        for (let j = 0; j < G; j++) if (V.first[j] <= p) sum += V.norm[base + j];   // of the whole (issue 24)
        return {share: V.norm[base + s] / sum, color: side.colors[s].toLowerCase()};
    }""", [i, l, k, p])


def test_both_grids_draw_the_traced_source_in_one_colour(server, page):
    open_compare(page, server + "c/dursley.html#m=norm&g=words&tc=c42")     # "Grunnings" (character 42)
    labels = page.evaluate("window.infoflowCompare.sides.map((s) => s.V.sources[s.trace])")
    assert labels[0].strip() == "Grunnings." or labels[0].strip().startswith("Grunnings"), labels
    assert labels[1].strip().startswith("G"), labels
    colours, checked = set(), 0
    for i, L in [(0, 3), (1, 2)]:
        P = page.evaluate(f"window.infoflowCompare.sides[{i}].D.P")
        own = page.evaluate(f"(() => {{ const s = window.infoflowCompare.sides[{i}]; return s.V.first[s.trace]; }})()")
        for l, k, p in [(0, 0, own), (L - 1, 1, own), (L // 2, 1, own + 1), (0, 1, P - 1), (L - 1, 1, P - 1)]:
            want = traced_share(page, i, l, k, p)
            if want["share"] < 0.01:           # too thin to sample (random weights)
                continue
            # the traced source's bar runs from 0 to its share: its colour left of that, not right
            assert page.evaluate(GRID_PIXEL, [i, l, k, p, want["share"] / 2]) == want["color"], (i, l, k, p, want)
            if want["share"] < 0.9:
                assert page.evaluate(GRID_PIXEL, [i, l, k, p, (1 + want["share"]) / 2]) != want["color"]
            colours.add(want["color"])
            checked += 1
    assert len(colours) == 1 and checked >= 5


def test_a_source_of_both_models_has_one_colour_in_both(server, page):
    open_compare(page, server + "c/capital.html#m=norm&g=words")
    for key, word in [("c4", "capital"), ("c15", "France"), ("c22", "is")]:
        page.select_option("#cmp-trace", key)
        page.wait_for_function(f"() => window.infoflowCompare.state.trace === '{key}'")
        drawn = []
        for i in range(2):
            p = page.evaluate(f"(() => {{ const s = window.infoflowCompare.sides[{i}]; return s.V.first[s.trace]; }})()")
            assert page.evaluate(f"window.infoflowCompare.sides[{i}].D.tokens[{p}]").strip() in word
            want = traced_share(page, i, 0, 1, p)                # its own position: a wide bar
            drawn.append(page.evaluate(GRID_PIXEL, [i, 0, 1, p, want["share"] / 2]))
            assert drawn[-1] == want["color"], (key, i, want)
        assert drawn[0] == drawn[1], key
    shared = page.evaluate("""() => {
        const [a, b] = window.infoflowCompare.sides, out = [];
        a.keys.forEach((k, s) => { const t = b.keys.indexOf(k); if (t >= 0 && a.colors[s]) out.push([k, a.colors[s], b.colors[t]]); });
        return out;
    }""")
    assert len(shared) >= 3 and all(x == y for _, x, y in shared), shared


def test_chart_draws_each_models_share_over_depth(server, page):
    open_compare(page, server + "c/capital.html#m=norm&g=words&tc=c15")
    for relative in (False, True):
        if relative:
            page.check("#cmp-relative")
            page.wait_for_function("() => window.infoflowCompare.state.relative")
            assert "rel=1" in page.url
        points = page.evaluate("""() => {
            const c = window.infoflowCompare, ctx = document.getElementById('chart').getContext('2d'), d = devicePixelRatio;
            return c.series.map((pts, i) => pts.filter((p) => p.k === 1 && Number.isFinite(p.y)).map((p) => {
                const x = c.chart.xOf(p.x), y = c.chart.yOf(p.y);
                const px = ctx.getImageData(Math.floor(x * d), Math.floor(y * d), 1, 1).data;
                return {i, l: p.l, x, y: p.y, colour: (%s)(px), want: c.sides[i].colors[c.sides[i].trace].toLowerCase()};
            }));
        }""" % HEX)
        assert [len(p) for p in points] == [3, 2]            # one marker per layer: 3 and 2 layers
        for series in points:
            for p in series:
                assert p["colour"] == p["want"], p
        # the last layer ends at relative depth 1 for both models, at its own depth otherwise
        ends = [series[-1]["x"] for series in points]
        assert (abs(ends[0] - ends[1]) < 0.5) == relative, ends
        # the series are the grids' data: the share of the last MLP row, last position
        for i, series in enumerate(points):
            L = page.evaluate(f"window.infoflowCompare.sides[{i}].D.L")
            P = page.evaluate(f"window.infoflowCompare.sides[{i}].D.P")
            assert abs(series[-1]["y"] - traced_share(page, i, L - 1, 1, P - 1)["share"]) < 1e-6
    page.reload()
    page.wait_for_function("() => document.documentElement.dataset.compareReady")
    assert page.is_checked("#cmp-relative") and page.evaluate("window.infoflowCompare.chart.x1") == 1


def test_prompt_page_switches_model_and_keeps_the_view(server, page, two_models):  # noqa: F811
    from infoflow.gallery_models import model_slug

    b = model_slug(two_models[1])
    page.goto(server + "p/dursley.html")
    page.wait_for_function("() => document.documentElement.dataset.viewerReady === '1'")
    p = page.evaluate("window.infoflowViewer.viewer.D.tokens.findIndex((t) => t === ' G')")
    assert p > 0
    page.evaluate(f"window.infoflowViewer.viewer.set({{metric: 'delta', trace: {p}, heat: true, pin: {{l: 2, k: 1, p: {p + 2}}}}})")
    page.wait_for_function("() => window.infoflowViewer.idle")
    page.click(f'#model-switch .model-choice[data-model="{b}"]')
    page.wait_for_function("() => location.search.includes('model=') && document.documentElement.dataset.viewerReady === '1'")
    assert f"?model={b}" in page.url
    s = page.evaluate("window.infoflowViewer.state")
    v = page.evaluate("(() => { const v = window.infoflowViewer.viewer; return {src: v.V.sources[v.traceSrc], L: v.D.L, "
                      "tok: v.D.tokens[v.state.pin.p]}; })()")
    assert s["metric"] == "delta" and s["heat"] and v["src"].strip().startswith("G"), (s, v)
    assert s["pin"]["l"] == 1 and s["pin"]["k"] == 1                   # layer 2 of 3 -> layer 1 of 2
    assert page.evaluate("document.querySelector('#model-switch [aria-current=page]').dataset.model") == b
    # the footer shows the model on screen
    shown = page.eval_on_selector_all(".model-provenance", "ps => ps.filter((p) => !p.hidden).map((p) => p.dataset.model)")
    assert shown == [b]
    # back to the first model: the trace comes back to the token it started on
    page.click("#model-switch .model-choice >> nth=0")
    page.wait_for_function("() => !location.search && document.documentElement.dataset.viewerReady === '1'")
    assert page.evaluate("window.infoflowViewer.state.trace") == p


def test_compare_link_carries_the_trace_and_phone_width_fits(server, browser):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=2)
    pg = ctx.new_page()
    try:
        pg.goto(server + "p/capital.html#m=norm&g=words&t=4")
        pg.wait_for_function("() => document.documentElement.dataset.viewerReady === '1'")
        text = pg.evaluate("(() => { const v = window.infoflowViewer.viewer; return v.V.sources[v.traceSrc]; })()")
        pg.click("#compare-link")
        pg.wait_for_function("() => document.documentElement.dataset.compareReady === '1'")
        traced = pg.evaluate("window.infoflowCompare.sides.map((s) => s.V.sources[s.trace].trim())")
        assert traced == [text.strip(), text.strip()], (traced, text)
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390
        a, b = (pg.locator(f"#grid-{s}").bounding_box() for s in "ab")
        assert b["y"] >= a["y"] + a["height"] - 1                   # stacked on a phone
    finally:
        ctx.close()


def test_unknown_model_in_the_url_says_which_there_are(server, page, two_models):  # noqa: F811
    page.goto(server + "p/capital.html?model=nope")
    page.wait_for_function("() => document.documentElement.dataset.viewerReady")
    msg = page.text_content("#error")
    assert 'no model "nope"' in msg and "tiny-gemma" in msg


def test_compare_traces_where_the_top_prediction_comes_from(server, page):
    """Issue 24 item 5: by default, the source adding most to the first model's top prediction's
    demeaned logit (minus the vocabulary mean, from the stored `logit_mean`), and the chart says so."""
    open_compare(page, server + "c/dursley.html")
    want = page.evaluate("""() => {
        const side = window.infoflowCompare.sides[0], V = side.V, D = side.D, G = V.G, k = D.k, p = D.P - 1;
        let best = -1, bx = 0;
        for (let s = 0; s < G; s++) {
            if (V.first[s] > p || (side.hidden[s] && s !== side.trace)) continue;
            const x = V.logitAttr[(p * k) * G + s] - V.logitMean[s];
            if (x > bx) { bx = x; best = s; }
        }
        return side.keys[best];
    }""")
    assert page.evaluate("window.infoflowCompare.sides[0].V.logitMean !== null")
    assert want and page.evaluate("window.infoflowCompare.state.trace") == want
    assert "Traced by default" in page.inner_text("#chart-legend") and "demeaned logit" in page.inner_text("#chart-legend")
