"""Issue 24, item 9 (part): the token strip and the toolbar's buttons are one Tab stop each
(a roving tabindex), "Skip to the grid" focuses the grid, and pinning is announced."""
from __future__ import annotations

import pytest

from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser



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
    assert tabs <= 16, tabs                                    # was 2 per token: more than 2 * P
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
