"""What the viewer draws and how it behaves (issue 12), in headless Chromium.

Drawn values are checked by sampling the canvas at known cells and comparing the colour with
the one the data's value maps to.
"""
from __future__ import annotations

import contextlib

import re
import shutil

import pytest

from tests.test_browser import (  # noqa: F401  (fixtures)
    _canvas_digest, _new_page, _open_viewer, _plain_id, browser, page, pages, site_server,
)

pytestmark = pytest.mark.browser


@contextlib.contextmanager
def _viewer_in(browser, url: str, **context):
    """A prompt page opened in a fresh browser context (viewport, touch ... as given)."""
    ctx = browser.new_context(**context)
    try:
        pg = ctx.new_page()
        _open_viewer(pg, url)
        yield pg
    finally:
        ctx.close()

PIXEL = """([l, k, p, fx]) => {
    const v = window.infoflowViewer.viewer;
    const [x, y] = v.cellPixel(l, k, p, fx, 0.5);
    const d = document.getElementById('grid').getContext('2d').getImageData(x, y, 1, 1).data;
    return '#' + [d[0], d[1], d[2]].map((c) => c.toString(16).padStart(2, '0')).join('');
}"""


def _ioi(pages):
    return "ioi"


def test_heat_map_colour_of_each_cell_is_the_traced_share(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    page.click('#token-strip .tok-label[data-pos="1"]')          # " Mary"
    page.click("#heat")
    page.wait_for_function("() => window.infoflowViewer.idle")
    page.evaluate("() => window.infoflowViewer.grid.flush()")
    checked = 0
    for l, k, p in [(0, 0, 1), (5, 1, 4), (12, 0, 9), (20, 1, 13), (29, 1, 13), (29, 0, 6)]:
        expected = page.evaluate("""([l, k, p]) => {
            const v = window.infoflowViewer.viewer, V = v.V, D = v.D, G = V.G, s = v.traceSrc;
            const base = ((l * 2 + k) * D.P + p) * G;
            let sum = 0;
            for (let j = 0; j < G; j++) if (V.first[j] <= p) sum += V.norm[base + j];   // of the whole (issue 24)
            const share = V.norm[base + s] / sum;   // the ramp ends at the source's largest share (issue 24)
            return {share, color: v.seqRamp[Math.round(share / v.heatTop * (v.seqRamp.length - 1))]};
        }""", [l, k, p])
        assert page.evaluate(PIXEL, [l, k, p, 0.5]) == expected["color"], (l, k, p, expected)
        checked += 1
    assert checked == 6
    # the heat map draws MLP rows at full strength: no transparency on the value's colour
    assert page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--weak-alpha')") == ""


def test_traced_bar_width_is_the_share(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    page.click('#token-strip .tok-label[data-pos="3"]')          # " John" at 3
    page.wait_for_function("() => window.infoflowViewer.idle")
    page.evaluate("() => window.infoflowViewer.grid.flush()")
    for l, k, p in [(3, 0, 5), (15, 1, 10), (28, 0, 13)]:
        r = page.evaluate("""([l, k, p]) => {
            const v = window.infoflowViewer.viewer, V = v.V, D = v.D, G = V.G, s = v.traceSrc;
            const base = ((l * 2 + k) * D.P + p) * G;
            let sum = 0;
            for (let j = 0; j < G; j++) if (V.first[j] <= p) sum += V.norm[base + j];   // of the whole (issue 24)
            const rect = v.grid.cellRect(l, k, p), dpr = v.grid.dpr;
            const y = Math.floor((rect.y + rect.h / 2) * dpr), x0 = Math.round(rect.x * dpr), w = Math.round(rect.w * dpr);
            const d = document.getElementById('grid').getContext('2d').getImageData(x0, y, w, 1).data;
            const want = v.colorOf(s).toLowerCase();
            let n = 0;
            for (let i = 0; i < w; i++) {
                const hex = '#' + [d[4 * i], d[4 * i + 1], d[4 * i + 2]].map((c) => c.toString(16).padStart(2, '0')).join('');
                if (hex === want) n++;
            }
            return {share: V.norm[base + s] / sum, n, w};
        }""", [l, k, p])
        assert abs(r["n"] - r["share"] * r["w"]) <= 1.5, r


def test_duplicate_sources_are_labelled_by_position(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    legend = page.inner_text("#legend") + page.inner_text("#predictions")
    assert "\u2423John\u2083" in legend and "\u2423John\u2089" in legend, legend
    strip = page.eval_on_selector_all("#token-strip .tok-label", "bs => bs.map(b => b.textContent)")
    assert "\u2423John\u2083" in strip and "\u2423John\u2089" in strip and "\u2423to\u2085" in strip
    assert "\u2423Mary" in strip          # unique: no subscript; a space is shown as ␣, not a bullet


def test_at_most_ten_colours_and_a_stable_order(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["hostile"])    # the longest test prompt
    colours = page.evaluate("() => window.infoflowViewer.viewer.colors.filter(Boolean).length")
    assert 1 <= colours <= 10
    assert page.evaluate("window.infoflowViewer.state.order") == "position"
    digest = _canvas_digest(page)[0]
    page.select_option("#order", "size")
    assert "o=size" in page.evaluate("location.hash")
    assert _canvas_digest(page)[0] != digest


def test_hover_draws_an_overlay_and_never_repaints_the_data(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    before = _canvas_digest(page)[0]
    draws = page.evaluate("() => { const g = window.infoflowViewer.grid; g.baseDraws = 0; const f = g.drawBase.bind(g);"
                          " g.drawBase = (...a) => { g.baseDraws++; return f(...a); }; return 0; }")
    # a resize that changes no size (the ResizeObserver's first report can come this late) repaints nothing
    page.evaluate("() => window.dispatchEvent(new Event('resize'))")
    page.wait_for_function("() => window.infoflowViewer.idle")
    box = page.locator("#grid").bounding_box()
    for i in range(6):
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.1 * i), box["y"] + box["height"] * 0.5)
    page.hover('#legend li[data-src]')
    page.wait_for_function("() => window.infoflowViewer.idle")
    assert page.evaluate("window.infoflowViewer.grid.baseDraws") == draws == 0
    assert page.evaluate("window.infoflowViewer.grid.overlay.source") >= 0
    assert _canvas_digest(page)[0] == before
    overlay_pixels = page.evaluate("""() => { const c = document.querySelector('.grid-overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
    assert overlay_pixels > 1000


def test_escape_restores_a_source_that_tracing_showed(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    before = _canvas_digest(page)[0]
    assert 0 in page.evaluate("window.infoflowViewer.state.hidden")
    page.click('#token-strip .tok-label[data-pos="0"]')          # trace the hidden first token
    assert page.evaluate("window.infoflowViewer.state.trace") == 0
    page.keyboard.press("Escape")
    assert page.evaluate("window.infoflowViewer.state.trace") is None
    assert 0 in page.evaluate("window.infoflowViewer.state.hidden")
    assert _canvas_digest(page)[0] == before
    # the emphasis button: one label, its pressed state says whether MLP rows are emphasized
    assert page.inner_text("#emph") == "Emphasize MLP rows"
    page.click("#emph")
    assert page.get_attribute("#emph", "aria-pressed") == "true" and page.inner_text("#emph") == "Emphasize MLP rows"


def test_trace_line_chart_and_csv_of_the_view(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    page.click('#token-strip .tok-label[data-pos="1"]')
    box = page.locator("#grid").bounding_box()
    page.mouse.click(box["x"] + box["width"] - 40, box["y"] + box["height"] * 0.5)
    assert page.locator("#cell-detail svg.trace-chart path").count() == 2
    with page.expect_download() as dl:
        page.click("#export-csv")
    text = [r for r in open(dl.value.path(), encoding="utf-8").read().splitlines() if not r.startswith("#")]
    assert text[0] == "source,layer,sublayer,position,token,share_of_whole_residual,hidden_share"
    L, P = page.evaluate("[window.infoflowViewer.viewer.D.L, window.infoflowViewer.viewer.D.P]")
    assert len(text) == 1 + 2 * L * (P - 1)                  # from the traced source's position on
    share = page.evaluate("""() => { const v = window.infoflowViewer.viewer, V = v.V, D = v.D, G = V.G;
        const base = ((29 * 2 + 1) * D.P + 13) * G; let sum = 0;
        for (let j = 0; j < G; j++) sum += V.norm[base + j];
        return V.norm[base + v.traceSrc] / sum; }""")
    row = next(r for r in text if r.split(",")[1:4] == ["29", "mlp", "13"])
    assert abs(float(row.split(",")[-2]) - share) < 1e-3


def test_png_and_svg_figures_carry_title_legend_and_axes(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    with page.expect_download() as dl:
        page.click("#export-svg")
    svg = open(dl.value.path(), encoding="utf-8").read()
    title = page.inner_text("#prompt-title")
    assert title in svg and "token position" in svg and "layer" in svg
    assert "cumulative norm share" in svg and "John\u2083" in svg and "others" in svg
    assert "<script" not in svg
    with page.expect_download() as dl:
        page.click("#export-png")
    png = open(dl.value.path(), "rb").read()
    import struct
    w, h = struct.unpack(">II", png[16:24])
    css_w = page.evaluate("window.infoflowViewer.grid.cssW")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and w == 2 * css_w and h > w / 4


def test_wheel_scrolls_the_page_and_ctrl_wheel_zooms(site_server, browser, pages):  # noqa: F811
    with _viewer_in(browser, site_server + pages["ioi"], viewport={"width": 1280, "height": 600}) as pg:
        box = pg.locator("#grid").bounding_box()
        pg.mouse.move(box["x"] + 300, box["y"] + 200)
        pg.mouse.wheel(0, 300)
        pg.wait_for_timeout(300)
        assert pg.evaluate("window.infoflowViewer.state.view.z") == 1
        assert pg.evaluate("window.scrollY") > 0
        assert pg.locator("#wheel-hint").is_visible()
        pg.keyboard.down("Control")
        box = pg.locator("#grid").bounding_box()
        pg.mouse.move(box["x"] + 300, box["y"] + 200)
        pg.mouse.wheel(0, -300)
        pg.keyboard.up("Control")
        pg.wait_for_timeout(100)
        assert pg.evaluate("window.infoflowViewer.state.view.z") > 1


def test_grid_fits_a_1280x800_screen_and_the_summary_adds_no_scroll(site_server, browser, pages):  # noqa: F811
    with _viewer_in(browser, site_server + pages["ioi"], viewport={"width": 1280, "height": 800}) as pg:
        box = pg.locator("#grid").bounding_box()
        assert box["y"] + box["height"] <= 800 + 1, box
        footer = pg.evaluate("document.querySelector('.site-footer').getBoundingClientRect().bottom + scrollY")
        assert pg.evaluate("document.documentElement.scrollHeight") <= footer + 2


def test_phone_width_and_tap_shows_details_next_to_the_cell(site_server, browser, pages):  # noqa: F811
    with _viewer_in(browser, site_server + pages["ioi"], viewport={"width": 390, "height": 844},
                    is_mobile=True, has_touch=True, device_scale_factor=2) as pg:
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390
        box = pg.locator("#grid").bounding_box()
        pg.tap("#grid", position={"x": box["width"] * 0.7, "y": box["height"] * 0.4})
        assert pg.evaluate("window.infoflowViewer.state.pin") is not None
        tip = pg.locator("#tooltip")
        assert tip.is_visible()
        t = tip.bounding_box()
        assert 0 <= t["x"] and t["x"] + t["width"] <= 390 + 1
        assert re.search(r"Layer \d+", tip.inner_text())


def test_file_protocol_and_no_javascript_get_messages(gallery_site, browser, pages, tmp_path, site_server):  # noqa: F811
    site = tmp_path / "site"
    shutil.copytree(gallery_site, site)
    ctx, pg = _new_page(browser)
    try:
        for path in (pages["ioi"], "index.html"):
            pg.goto((site / path).as_uri())
            pg.wait_for_selector("#error:not([hidden])", timeout=5000)
            text = pg.inner_text("#error")
            assert "file://" in text and "infoflow serve" in text, text
            assert not pg.locator("#loading").is_visible()
    finally:
        ctx.close()
    ctx = browser.new_context(java_script_enabled=False)
    pg = ctx.new_page()
    try:
        pg.goto(site_server + pages["ioi"])
        assert not pg.locator("#loading").is_visible()
        assert "JavaScript" in pg.inner_text("main")
        pg.goto(site_server + "index.html")
        assert "JavaScript" in pg.inner_text("main") and not pg.locator("#search").is_visible()
    finally:
        ctx.close()


def test_mount_viewer_takes_a_decoded_object(site_server, page, pages):  # noqa: F811
    """The live page's path: decodeData(bytes) in the page, then mountViewer(root, D)."""
    page.goto(site_server + "index.html")
    ok = page.evaluate("""async (src) => {
        const data = await import(new URL('static/js/data.js', location.href).href);
        const viewer = await import(new URL('static/js/viewer.js', location.href).href);
        const buf = await (await fetch(src)).arrayBuffer();
        const D = await data.decodeData(buf);
        const root = document.createElement('main');
        document.getElementById('content').replaceChildren(root);
        const v = await viewer.mountViewer(root, D, {id: 'live', hash: false});
        return [document.documentElement.dataset.viewerReady, v.D.P === D.P, !!document.getElementById('grid')];
    }""", page.evaluate("""async (href) => { const r = await fetch(href); const t = await r.text();
        return new URL(t.match(/data-src="([^"]+)"/)[1], new URL(href, location.href)).href; }""", pages["ioi"]))
    assert ok == ["1", True, True]
    assert page.errors == []


def test_values_are_shown_to_the_precision_stored(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    box = page.locator("#grid").bounding_box()
    page.mouse.click(box["x"] + box["width"] - 40, box["y"] + box["height"] * 0.5)
    pin = page.evaluate("window.infoflowViewer.state.pin")
    step = page.evaluate("""([l, k, p]) => { const v = window.infoflowViewer.viewer;
        return v.V.quant.norm.scale[(l * 2 + k) * v.D.P + p] / v.V.quant.norm.q; }""", [pin["l"], pin["k"], pin["p"]])
    values = page.eval_on_selector_all("#cell-detail .tt-table tr td:nth-child(3)", "tds => tds.map(t => t.textContent)")
    decimals = max(0, -int(__import__("math").floor(__import__("math").log10(step))))
    assert values and all(len(v.split(".")[1]) == decimals if "." in v else decimals == 0 for v in values), (values, step)
    foot = page.inner_text("#cell-detail .tt-foot")
    assert "8 bits" in foot and "1/510" in foot
    assert "8 bits" in page.inner_text("#help-precision")
