"""Issue 24, item 9: the site links, the model switch, the toolbar and the token strip are one
Tab stop each (a roving tabindex), so the grid is at most 10 Tabs from the top of a prompt page;
"Skip to the grid" focuses the grid, and pinning is announced."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.test_browser import _new_page, _open_viewer, _serve, browser, page, pages, site_server  # noqa: F401
from tests.test_two_models import two_models  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
MAX_TABS = 10


@pytest.fixture(scope="module")
def tab_site(two_models, tmp_path_factory):  # noqa: F811
    """The gallery's IOI and chat-question entries on two tiny models (the first has SmolLM2's
    tokenizer and chat template): the IOI page has the model switch, the chat page the system
    prompt's tokens, as on the published site. Notes are left out (they name real layers)."""
    from infoflow.build import build
    from infoflow.config import SiteConfig

    gallery = tomllib.loads((ROOT / "prompts" / "gallery.toml").read_text(encoding="utf-8"))
    toml = ""
    for e in gallery["prompt"]:
        if e["id"] in ("ioi-mary-john", "chat-question"):
            toml += (f'[[prompt]]\nid = "{e["id"]}"\ntitle = {json.dumps(e["title"])}\ntext = {json.dumps(e["text"])}\n'
                     f'tags = {json.dumps(e["tags"])}\nchat = {"true" if e.get("chat") else "false"}\n')
    root = tmp_path_factory.mktemp("tab-site")
    (root / "prompts.toml").write_text(toml, encoding="utf-8")
    cfg = SiteConfig(prompts=root / "prompts.toml", out=root / "site", cache=str(root / "cache"),
                     models=two_models, live=False)
    build(cfg, progress=False, log=lambda *a: None)
    srv, url = _serve(root / "site")
    yield url
    srv.shutdown()
    srv.server_close()



def _tabs_to_grid(page, limit=120) -> int:
    """Tab presses from the top of a freshly opened page until the grid has the focus."""
    for n in range(1, limit + 1):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "grid":
            return n
    return limit + 1


def test_grid_is_few_tabs_away_and_groups_are_one_stop(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["hostile"])          # the longest test prompt (many tokens)
    P = page.evaluate("window.infoflowViewer.viewer.D.P")
    tabs = _tabs_to_grid(page)
    assert tabs <= MAX_TABS, tabs                              # was 2 per token: more than 2 * P
    assert P > 20
    # the strip: one stop; the arrows move inside it
    stops = page.eval_on_selector_all("#token-strip button", "bs => bs.filter((b) => b.tabIndex === 0).length")
    assert stops == 1
    page.focus('#token-strip button[tabindex="0"]')
    first = page.evaluate("document.activeElement.dataset.pos + document.activeElement.className")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    after = page.evaluate("document.activeElement.dataset.pos + document.activeElement.className")
    assert after != first and page.evaluate("document.activeElement.closest('#token-strip') !== null")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "grid"
    # "Skip to the grid": the page's second Tab stop, Enter focuses the grid
    _open_viewer(page, site_server + pages["hostile"])          # from the top of a fresh page
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "skip-grid"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "grid"


def test_pinning_is_announced(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    page.focus("#grid")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.infoflowViewer.state.pin")
    pin = page.evaluate("window.infoflowViewer.state.pin")
    text = page.text_content("#announce")
    assert page.get_attribute("#announce", "aria-live") == "polite"
    assert text.startswith(f"Pinned layer {pin['l']} {'MLP' if pin['k'] else 'attention'} at position {pin['p']}")
    page.keyboard.press("Escape")
    assert page.text_content("#announce") == "Unpinned."


@pytest.mark.parametrize("name", ["ioi-mary-john", "chat-question"])
def test_grid_is_at_most_ten_tabs_from_the_top(tab_site, browser, name):  # noqa: F811
    ctx, pg = _new_page(browser)
    try:
        _open_viewer(pg, tab_site + f"p/{name}.html")
        assert pg.is_visible("#model-switch") == (name == "ioi-mary-john")
        tabs = _tabs_to_grid(pg)
        assert tabs <= MAX_TABS, tabs
        # every group passed on the way is one stop: one tabindex=0 in each
        for box, items in [(".site-header", ".brand, .site-nav a"), ("#toolbar", "input, select, button, a"),
                           ("#token-strip", "button"), ("#model-switch", "a")]:
            if pg.query_selector(box):
                stops = pg.eval_on_selector_all(f"{box} :is({items})", "es => es.filter((e) => e.tabIndex === 0).length")
                assert stops == 1, (box, stops)
    finally:
        ctx.close()


def test_toolbar_is_one_stop_with_the_toolbar_keys(tab_site, browser):  # noqa: F811
    ctx, pg = _new_page(browser)
    try:
        _open_viewer(pg, tab_site + "p/ioi-mary-john.html")
        assert pg.get_attribute("#toolbar", "role") == "toolbar"
        pg.focus('#toolbar input[name="metric"]:checked')
        active = "document.activeElement.id || document.activeElement.value"
        assert pg.evaluate(active) == "norm"
        pg.keyboard.press("ArrowRight")                  # Left / Right: the next control, not the next radio
        assert pg.evaluate(active) == "grouping"
        assert pg.evaluate("window.infoflowViewer.viewer.state.metric") == "norm"
        pg.keyboard.press("ArrowRight")
        pg.keyboard.press("ArrowRight")
        pg.keyboard.press("ArrowRight")
        assert pg.evaluate(active) == "emph"
        pg.keyboard.press("End")
        assert pg.evaluate(active) == "help-button"
        pg.keyboard.press("Home")
        assert pg.evaluate(active) == "norm"
        pg.keyboard.press("ArrowDown")                   # Up / Down: the radio group's own keys, a new metric
        pg.wait_for_function("() => window.infoflowViewer.viewer.state.metric === 'delta'")
        pg.wait_for_function("() => window.infoflowViewer.idle")
        assert pg.evaluate(active) == "delta"
        stops = pg.eval_on_selector_all("#toolbar :is(input, select, button, a)", "es => es.filter((e) => e.tabIndex === 0).map((e) => e.value)")
        assert stops == ["delta"]
        # the model switch: one stop (the shown model), the arrows reach the other and the compare link
        pg.focus('#model-switch a[aria-current="page"]')
        pg.keyboard.press("ArrowRight")
        pg.keyboard.press("ArrowRight")
        assert pg.evaluate("document.activeElement.id") == "compare-link"
    finally:
        ctx.close()
