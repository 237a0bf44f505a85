"""Issue 24, item 12: index cards never cut the prediction, lens rows do not wrap, and the help
says what a click on a column label does."""
from __future__ import annotations

import pytest

from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", [1280, 390])
def test_index_cards_never_cut_the_prediction(site_server, browser, width):  # noqa: F811
    ctx = browser.new_context(viewport={"width": width, "height": 800})
    try:
        pg = ctx.new_page()
        pg.goto(site_server + "index.html")
        for columns in ("", "repeat(auto-fill, 150px)"):      # the cards as laid out, then narrow ones
            pg.evaluate("(c) => { document.getElementById('cards').style.gridTemplateColumns = c; }", columns)
            cut = pg.evaluate("""() => [...document.querySelectorAll('.card-pred')].filter((e) => {
                const card = e.closest('.card').getBoundingClientRect(), r = e.getBoundingClientRect();
                return e.scrollWidth > e.clientWidth + 0.5 || r.right > card.right + 0.5;
            }).map((e) => e.textContent)""")
            assert not cut, (width, columns, cut)
    finally:
        ctx.close()


def test_lens_rows_do_not_wrap_in_tooltip_or_pinned_panel(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["hostile"] + "#pin=5.1.20")
    page.wait_for_function("() => window.infoflowViewer.viewer.D.lens && window.infoflowViewer.idle")
    page.evaluate("() => window.infoflowViewer.viewer.showTooltip({l: 5, k: 1, p: 20}, 10, 10)")
    for sel in ("#tooltip .tt-lens", "#cell-detail .tt-lens"):
        tops = page.evaluate("""(sel) => { const e = document.querySelector(sel);
            e.parentElement.style.width = '200px';        // a narrow tooltip or panel (a phone)
            return [e.firstElementChild, ...e.querySelectorAll('li')].map((x) => Math.round(x.getBoundingClientRect().top)); }""", sel)
        assert len(tops) == 6 and max(tops) - min(tops) <= 2, (sel, tops)      # label and 5 entries: one row


def test_help_says_what_a_column_label_click_does(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    assert "Click a column label" in page.text_content("#help")
