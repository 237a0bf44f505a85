"""The gallery and the prompt viewer in headless Chromium (Debian's chromium, Python Playwright).

Uses the `gallery_site` fixture (tests/conftest.py): a built site with at least 3 prompts, one of
them `hostile`. Screenshots go to test-artifacts/ at the repository root.
"""
from __future__ import annotations

import os
import functools
import hashlib
import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE = "<img src=x onerror=alert(1)>"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(directory: Path):
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="session")
def site_server(gallery_site):
    server, url = _serve(Path(gallery_site))
    yield url
    server.shutdown()
    server.server_close()


_SHARED: dict = {"users": 0}


@pytest.fixture(scope="session")
def browser():
    """One Chromium for the session. tests/test_viewer_*.py import this fixture, which makes
    one fixture per module: they share the same browser (a second sync_playwright would fail)."""
    from playwright import sync_api
    if not Path(CHROMIUM).exists():
        message = "Debian chromium is not installed (/usr/bin/chromium): run setup.sh as root, or apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)   # in CI a missing browser is a broken setup, never a skip
        pytest.skip(message)
    if not _SHARED["users"]:
        _SHARED["pw"] = sync_api.sync_playwright().start()
        _SHARED["browser"] = _SHARED["pw"].chromium.launch(executable_path=CHROMIUM, args=ARGS)
    _SHARED["users"] += 1
    yield _SHARED["browser"]
    _SHARED["users"] -= 1
    if not _SHARED["users"]:
        _SHARED["browser"].close()
        _SHARED["pw"].stop()


class Page:
    """A Playwright page that records console errors, page errors and dialogs."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

        def on_dialog(d):
            self.dialogs.append(d.message)
            d.dismiss()
        page.on("dialog", on_dialog)

    def __getattr__(self, name):
        return getattr(self.page, name)


def _new_page(browser, scheme="light"):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, color_scheme=scheme)
    return ctx, Page(ctx.new_page())


@pytest.fixture
def page(browser):
    ctx, pg = _new_page(browser)
    yield pg
    ctx.close()


@pytest.fixture(scope="session")
def pages(site_server, browser):
    """{prompt id: page URL relative to the site root}, in card order, read from the index."""
    ctx, pg = _new_page(browser)
    pg.goto(site_server + "index.html")
    cards = pg.eval_on_selector_all(
        "#cards .card", "cs => cs.map(c => [c.dataset.id, c.querySelector('a.card-link').getAttribute('href')])")
    ctx.close()
    return dict(cards)


def _plain_id(pages):
    return next(i for i in pages if i != "hostile")


def _open_viewer(pg, url):
    pg.goto(url)
    pg.wait_for_function("() => document.documentElement.dataset.viewerReady")
    assert pg.evaluate("document.documentElement.dataset.viewerReady") == "1", pg.text_content("#error")


def _canvas_digest(pg) -> tuple[str, int]:
    """(sha1 of the canvas pixels, number of distinct colours in a sample)."""
    pg.wait_for_function("() => window.infoflowViewer.idle")
    data = pg.evaluate("""() => {
        const c = document.getElementById('grid');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let h = 0; const seen = new Set();
        for (let i = 0; i < d.length; i += 4) {
            h = (Math.imul(h, 31) + d[i] * 65536 + d[i + 1] * 256 + d[i + 2]) | 0;
            if ((i >> 2) % 7 === 0) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        }
        return [String(h >>> 0), seen.size];
    }""")
    return hashlib.sha1(data[0].encode()).hexdigest(), data[1]


# ----------------------------------------------------------------------------- index


def test_index_loads_cards_in_order_and_searches(site_server, page, pages):
    page.goto(site_server + "index.html")
    page.wait_for_function("() => document.documentElement.dataset.galleryReady")
    assert len(pages) >= 3
    n = len(pages)
    assert page.locator("#cards .card:visible").count() == n
    # every card links to its prompt page, and shows title, text, top prediction
    for pid, href in pages.items():
        assert href.endswith(f"p/{pid}.html")
    first = page.locator("#cards .card").first
    assert first.locator(".card-title").inner_text().strip()
    assert first.locator(".card-pred").inner_text().strip()
    # search narrows the cards, and clearing it restores them
    title = page.locator("#cards .card .card-title").nth(1).inner_text().strip()
    page.fill("#search", title)
    assert 1 <= page.locator("#cards .card:visible").count() < n
    page.fill("#search", "zzzz-no-such-prompt-qqq")
    assert page.locator("#cards .card:visible").count() == 0
    assert page.locator("#no-results").is_visible()
    page.fill("#search", "")
    assert page.locator("#cards .card:visible").count() == n
    # a tag chip filters
    chip = page.locator("#tag-chips .chip").first
    tag = chip.get_attribute("data-tag")
    chip.click()
    shown = page.locator("#cards .card:visible")
    assert 1 <= shown.count() <= n
    for i in range(shown.count()):
        assert tag in shown.nth(i).get_attribute("data-tags").split("\n")
    chip.click()
    assert page.locator("#cards .card:visible").count() == n
    assert page.errors == []


# ----------------------------------------------------------------------------- viewer


def test_prompt_page_draws_and_metric_switch_changes_pixels(site_server, page, pages):
    _open_viewer(page, site_server + pages[_plain_id(pages)])
    digest, colours = _canvas_digest(page)
    assert colours > 8, "the canvas looks blank"
    state = page.evaluate("window.infoflowViewer.state")
    assert state["metric"] == "norm" and 0 in state["hidden"]
    seen = {digest}
    for metric in ("delta", "proj"):
        page.click(f'#metric label:has(input[value="{metric}"])')
        assert page.evaluate("window.infoflowViewer.state.metric") == metric
        d, _ = _canvas_digest(page)
        assert d not in seen, f"pixels did not change for metric {metric}"
        seen.add(d)
        assert f"m={metric}" in page.evaluate("location.hash")
    # hovering a cell shows a tooltip with the layer and the logit lens
    box = page.locator("#grid").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 30, box["y"] + 100)
    tip = page.locator("#tooltip")
    assert tip.is_visible()
    assert re.search(r"Layer \d+ (attention|MLP)", tip.inner_text())
    # the provenance footer is filled in
    assert re.match(r"\d\.\d\de[-+]\d+", page.text_content("#recon-error"))
    assert page.get_attribute("#grid", "aria-label").startswith("Information-flow grid")
    assert page.locator("#summary-table tbody tr").count() >= 2
    assert page.errors == []


def test_click_token_traces_and_escape_clears(site_server, page, pages):
    _open_viewer(page, site_server + pages[_plain_id(pages)])
    before, _ = _canvas_digest(page)
    page.click('#token-strip .tok-label[data-pos="1"]')
    assert page.evaluate("window.infoflowViewer.state.trace") == 1
    traced, _ = _canvas_digest(page)
    assert traced != before
    assert "t=1" in page.evaluate("location.hash")
    # heat map mode for the traced source
    page.click("#heat")
    assert page.evaluate("window.infoflowViewer.state.heat") is True
    heat, _ = _canvas_digest(page)
    assert heat not in (before, traced)
    page.keyboard.press("Escape")
    assert page.evaluate("window.infoflowViewer.state.trace") is None
    assert _canvas_digest(page)[0] == before
    # hiding a source renormalizes (pixels change), clicking the eye again restores
    page.click('#token-strip .tok-hide[data-pos="1"]')
    assert 1 in page.evaluate("window.infoflowViewer.state.hidden")
    assert _canvas_digest(page)[0] != before
    page.click('#token-strip .tok-hide[data-pos="1"]')
    assert _canvas_digest(page)[0] == before
    # back goes to the previous view (hidden again), forward returns
    page.go_back()
    page.wait_for_function("() => window.infoflowViewer.state.hidden.includes(1)")
    page.go_forward()
    page.wait_for_function("() => !window.infoflowViewer.state.hidden.includes(1)")
    assert page.errors == []


def test_hash_restores_the_same_view(site_server, browser, page, pages):
    url = site_server + pages[_plain_id(pages)]
    _open_viewer(page, url)
    page.click('#metric label:has(input[value="delta"])')
    page.click('#token-strip .tok-label[data-pos="2"]')
    page.click('#token-strip .tok-hide[data-pos="1"]')
    page.focus("#grid")
    page.keyboard.press("+")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)          # zoom is written to the hash after a short debounce
    state = page.evaluate("window.infoflowViewer.state")
    assert state["pin"] is not None and state["view"]["z"] > 1
    url2 = page.evaluate("location.href")
    pixels = _canvas_digest(page)[0]
    ctx, other = _new_page(browser)
    try:
        _open_viewer(other, url2)
        assert other.evaluate("window.infoflowViewer.state") == state
        assert _canvas_digest(other)[0] == pixels
        other.reload()
        other.wait_for_function("() => document.documentElement.dataset.viewerReady")
        assert other.evaluate("window.infoflowViewer.state") == state
        assert other.errors == []
    finally:
        ctx.close()


def test_hostile_prompt_renders_as_text(site_server, page, pages):
    assert "hostile" in pages
    page.goto(site_server + "index.html")
    card = page.locator('#cards .card[data-id="hostile"]')
    assert HOSTILE in card.locator(".card-title").inner_text()
    assert HOSTILE in card.locator(".card-text").inner_text()
    _open_viewer(page, site_server + pages["hostile"])
    assert HOSTILE in page.text_content("#prompt-title")
    assert "</script>" in page.text_content("#prompt-text")
    assert HOSTILE in page.title()
    # hover and pin a few cells, so tooltips render token text too
    box = page.locator("#grid").bounding_box()
    for dx in (80, 200, 400):
        page.mouse.move(box["x"] + dx, box["y"] + 150)
    page.wait_for_timeout(200)
    assert page.locator('img[src="x"]').count() == 0
    assert page.evaluate("[...document.scripts].every(s => s.src && s.src.includes('/static/js/'))")
    assert page.dialogs == []
    assert page.errors == []


@pytest.mark.parametrize("kind,message", [
    ("garbage", r"damaged.*[Rr]eload"),
    ("schema", r"schema 99.*schema 1"),
    ("missing", r"missing.*[Rr]ebuild"),
])
def test_bad_data_file_shows_a_message(site_server, page, pages, kind, message):
    import msgpack

    def handle(route):
        if kind == "garbage":
            route.fulfill(status=200, body=b"\xc1\x00garbage\xff" * 10, content_type="application/octet-stream")
        elif kind == "schema":
            route.fulfill(status=200, body=msgpack.packb({"schema": 99, "variants": []}),
                          content_type="application/octet-stream")
        else:
            route.fulfill(status=404, body=b"not found")
    page.route("**/*.msgpack", handle)
    page.goto(site_server + pages[_plain_id(pages)])
    page.wait_for_function("() => document.documentElement.dataset.viewerReady === 'error'")
    err = page.locator("#error")
    assert err.is_visible()
    assert re.search(message, err.inner_text(), re.S), err.inner_text()
    assert page.locator("#grid-wrap").is_hidden()
    assert [e for e in page.errors if "404" not in e] == []


def test_corrupt_file_on_disk(gallery_site, browser, tmp_path, pages):
    """A truncated data file in a copy of the site (not a routed response)."""
    site = tmp_path / "site"
    shutil.copytree(gallery_site, site)
    pid = _plain_id(pages)
    data = next((site / "data").glob(f"{pid}.*.msgpack"))
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    server, url = _serve(site)
    ctx, pg = _new_page(browser)
    try:
        pg.goto(url + pages[pid])
        pg.wait_for_function("() => document.documentElement.dataset.viewerReady === 'error'")
        assert "damaged" in pg.inner_text("#error")
    finally:
        ctx.close()
        server.shutdown()
        server.server_close()


def test_screenshots(site_server, browser, pages):
    ARTIFACTS.mkdir(exist_ok=True)
    for scheme in ("light", "dark"):
        ctx, pg = _new_page(browser, scheme)
        try:
            pg.goto(site_server + "index.html")
            pg.wait_for_function("() => document.documentElement.dataset.galleryReady")
            pg.screenshot(path=str(ARTIFACTS / f"index-{scheme}.png"), full_page=True)
            _open_viewer(pg, site_server + pages[_plain_id(pages)])
            pg.screenshot(path=str(ARTIFACTS / f"prompt-{scheme}.png"), full_page=True)
            pg.click('#token-strip .tok-label[data-pos="1"]')
            box = pg.locator("#grid").bounding_box()
            pg.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4)
            pg.screenshot(path=str(ARTIFACTS / f"prompt-traced-{scheme}.png"), full_page=True)
            assert pg.errors == []
        finally:
            ctx.close()



def test_linked_pinned_cell_gets_the_logit_lens_after_the_first_draw(site_server, browser, page, pages, gallery_site):
    """The lens is decoded after the first draw (data.js ensureLens): a link that pins a cell
    still shows that cell's lens once the page is idle, with the data file's top-1 probability."""
    import infoflow

    pid = _plain_id(pages)
    _open_viewer(page, site_server + pages[pid])
    L, P = page.evaluate("[window.infoflowViewer.viewer.D.L, window.infoflowViewer.viewer.D.P]")
    ctx, other = _new_page(browser)
    try:
        _open_viewer(other, site_server + pages[pid] + f"#pin={L - 1}.1.{P - 1}")
        other.wait_for_function("() => window.infoflowViewer.idle")
        text = other.text_content("#cell-detail")
        assert "logit lens:" in text and "loading" not in text
        d = infoflow.load(next(Path(gallery_site, "data").glob(f"{pid}.*.msgpack")))
        prob = float(d.lens_probs[L - 1, 1, P - 1, 0])
        assert f"{100 * prob:.1f}%" in text, (text, prob)
        assert other.errors == []
    finally:
        ctx.close()
