"""Issue 24, item 3: the depth chart beside the grid. Its source (the traced one, else the top
source of the shown prediction), its values, its ticks, its hover readout and the layer where the
source arrives are checked against the stored arrays."""
from __future__ import annotations

import pytest

from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)
from tests.test_colours import CONTRAST

pytestmark = pytest.mark.browser

# the share of the whole residual of source s at position p after every sublayer, in order
SERIES = """([s, p]) => {
    const v = window.infoflowViewer.viewer, V = v.V, D = v.D, G = V.G, out = [];
    for (let l = 0; l < D.L; l++) for (let k = 0; k < 2; k++) {
        const base = ((l * 2 + k) * D.P + p) * G;
        let sum = 0;
        for (let j = 0; j < G; j++) if (V.first[j] <= p) sum += V.norm[base + j];
        out.push([l, k, V.norm[base + s] / sum]);
    }
    return out;
}"""


def _arrival(series):
    final = series[-1][2]
    return next((l, k) for l, k, x in series if x >= final / 2)


def test_depth_chart_shows_where_the_answer_arrives(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    P, L = page.evaluate("[window.infoflowViewer.viewer.D.P, window.infoflowViewer.viewer.D.L]")
    top = page.evaluate(CONTRAST, [P - 1, 0, 1])[0]
    label = page.evaluate(f"window.infoflowViewer.viewer.labels[{top}]")
    assert label == "\u2423Mary"
    assert page.is_visible("#depth-chart svg") and label in page.inner_text("#depth-chart .depth-title")
    series = page.evaluate(SERIES, [top, P - 1])
    l, k = _arrival(series)
    want = f"arrives at layer {l} ({'MLP' if k else 'attention'}): half of its final {series[-1][2] * 100:.1f}%"
    assert page.inner_text("#depth-chart .depth-arrival") == want
    ticks = page.eval_on_selector_all("#depth-chart line.tick", "ts => ts.map((t) => +t.dataset.layer)")
    assert ticks == list(range(0, L + 1, 5))
    # hover: the readout is the nearest sublayer's value
    box = page.locator("#depth-chart svg").bounding_box()
    for i in (5, 2 * L - 1, 2 * l + k):
        lay, kk, x = series[i]
        xs = 40 + ((lay + (1 if kk else 0.5)) / L) * (260 - 50)            # depth.js margins, in viewBox units
        page.mouse.move(box["x"] + xs * box["width"] / 260, box["y"] + box["height"] / 2)
        assert page.inner_text("#depth-chart .depth-readout") == \
            f"Layer {lay} {'MLP' if kk else 'attention'}: {x * 100:.1f}%"
    # a traced source takes the chart over
    page.click('#token-strip .tok-label[data-pos="3"]')                   # " John" at 3
    page.wait_for_function("() => window.infoflowViewer.idle")
    assert "\u2423John\u2083" in page.inner_text("#depth-chart .depth-title")
    series = page.evaluate(SERIES, [page.evaluate("window.infoflowViewer.viewer.traceSrc"), P - 1])
    l, k = _arrival(series)
    assert page.inner_text("#depth-chart .depth-arrival").startswith(f"arrives at layer {l} ")


def test_depth_chart_is_beside_the_grid_at_1280(site_server, browser, pages):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        pg = ctx.new_page()
        _open_viewer(pg, site_server + pages["ioi"])
        grid, chart = pg.locator("#grid").bounding_box(), pg.locator("#depth-chart svg").bounding_box()
        assert chart["x"] >= grid["x"] + grid["width"] and abs(chart["y"] - grid["y"]) < 120
    finally:
        ctx.close()
