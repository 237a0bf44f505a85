"""Issue 24, item 10: figures fit for a paper. The heat map's scale fits the data and the figure
prints it; the figure's legend lists only the colours it draws and notes hidden sources."""
from __future__ import annotations

import pytest

from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

SCENE = """async () => {
    const m = await import(new URL('../static/js/export.js', location.href));
    const v = window.infoflowViewer.viewer, sc = m.figureScene(v);
    return {legend: sc.legend, texts: sc.items.filter((i) => i.t === 'text').map((i) => i.text),
            fills: [...new Set(sc.items.filter((i) => i.t === 'rect' && i.y >= sc.clip.y && i.y < sc.clip.y + sc.clip.h
                                                   && i.x >= sc.clip.x).map((i) => i.fill))]};
}"""

# every share of the traced source over the grid, from the stored arrays (of the whole residual)
SHARES = """(signed) => {
    const v = window.infoflowViewer.viewer, V = v.V, D = v.D, G = V.G, s = v.traceSrc, out = [];
    for (let l = 0; l < D.L; l++) for (let k = 0; k < 2; k++) for (let p = V.first[s]; p < D.P; p++) {
        const base = ((l * 2 + k) * D.P + p) * G;
        let sum = 0;
        for (let j = 0; j < G; j++) if (V.first[j] <= p) sum += V.norm[base + j];
        out.push([l, k, p, signed ? V.proj[base + s] : V.norm[base + s] / sum]);
    }
    return out;
}"""

PIXEL = """([l, k, p]) => {
    const v = window.infoflowViewer.viewer;
    const [x, y] = v.cellPixel(l, k, p, 0.5, 0.5);
    const d = document.getElementById('grid').getContext('2d').getImageData(x, y, 1, 1).data;
    return '#' + [d[0], d[1], d[2]].map((c) => c.toString(16).padStart(2, '0')).join('');
}"""


@pytest.mark.parametrize("metric", ["norm", "proj"])
def test_heat_map_scale_fits_the_data_and_the_figure_prints_it(site_server, page, pages, metric):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"] + f"#m={metric}&t=1&heat=1")      # ' Mary'
    page.wait_for_function("() => window.infoflowViewer.idle")
    page.evaluate("() => window.infoflowViewer.grid.flush()")
    signed = metric == "proj"
    shares = page.evaluate(SHARES, signed)
    top = max(abs(x) for *_, x in shares)
    assert 0.05 < top < 0.95                                   # a scale of 0..100 % would waste most of the ramp
    assert abs(page.evaluate("window.infoflowViewer.viewer.heatTop") - top) < 1e-6
    ramp = page.evaluate(f"window.infoflowViewer.viewer.{'divRamp' if signed else 'seqRamp'}")
    n = len(ramp)
    for l, k, p, x in shares[:: max(1, len(shares) // 12)]:
        f = (x + top) / (2 * top) if signed else x / top
        assert page.evaluate(PIXEL, [l, k, p]) == ramp[round(f * (n - 1))].lower(), (l, k, p, x, top)
    pct = f"{top * 100:.1f}%"
    lo, hi = (f"\u2212{pct}", f"+{pct}") if signed else ("0%", pct)
    assert page.inner_text("#legend .heat-lo").strip() == lo and page.inner_text("#legend .heat-hi").strip() == hi
    scene = page.evaluate(SCENE)
    assert f"scale {lo} to {hi}" in scene["legend"] and f"{hi} (its largest)" in scene["texts"]


def test_figure_legend_lists_only_the_colours_drawn_and_notes_hidden(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    scene = page.evaluate(SCENE)
    v = page.evaluate("""() => { const v = window.infoflowViewer.viewer;
        return {labels: v.labels, colors: v.colors, slots: Array.from(v.slots), neutral: v.theme.neutral}; }""")
    coloured = [s for s in range(len(v["slots"])) if v["slots"][s] >= 0]
    listed = [x for x in scene["legend"] if x in v["labels"]]
    assert listed and all(v["colors"][v["labels"].index(x)] in scene["fills"] for x in listed)
    assert {v["labels"][s] for s in coloured if v["colors"][s] in scene["fills"]} == set(listed)
    assert any(x.startswith("hidden: When (hatched") for x in scene["legend"])
    assert any("hidden When is the hatched segment" in t for t in scene["texts"])     # PNG and SVG share this scene
    page.click('#token-strip .tok-label[data-pos="1"]')                                 # trace ' Mary'
    page.wait_for_function("() => window.infoflowViewer.idle")
    scene = page.evaluate(SCENE)
    assert scene["legend"] == ["\u2423Mary", "hidden: When (hatched, still counted)"], scene["legend"]
