"""Issue 24, item 9: the compare page's two grids take the focus; the arrow keys move a focus
cell whose tooltip prints that model's stored shares; Enter pins it and an aria-live region says
so. The numbers are checked against the decoded arrays of each side."""
from __future__ import annotations

import pytest

from tests.test_browser import browser  # noqa: F401  (fixture)
from tests.test_two_models import two_model_site, two_models  # noqa: F401  (fixtures)
from tests.test_compare_ui import open_compare, page, server  # noqa: F401  (fixtures: the compare site, a fresh page)

pytestmark = pytest.mark.browser

# side i, cell (l, k, p): {source index: its share of the whole residual as the tooltip prints it}
SHARES = """([i, l, k, p]) => {
    const side = window.infoflowCompare.sides[i], V = side.V, G = V.G, P = side.D.P;
    const base = ((l * 2 + k) * P + p) * G, out = {};
    let sum = 0;
    for (let s = 0; s < G; s++) if (V.first[s] <= p) sum += V.norm[base + s];
    for (let s = 0; s < G; s++) if (V.first[s] <= p) out[s] = (V.norm[base + s] / sum * 100).toFixed(1) + '%';
    return out;
}"""

# the tooltip's rows: [source index, share column text]
TIP_ROWS = """(id) => [...document.querySelectorAll('#' + id + ' tr[data-src]')]
    .map((tr) => [+tr.dataset.src, tr.children[1].textContent])"""


def _tip_matches(page, i, cell):
    rows = page.evaluate(TIP_ROWS, f"tooltip-{'ab'[i]}")
    want = page.evaluate(SHARES, [i, *cell])
    assert rows, "the tooltip shows no sources"
    for s, text in rows:
        assert text == want[str(s)], (i, cell, s, text, want)
    return rows


def test_compare_grids_take_the_focus_and_print_the_data(server, page):
    open_compare(page, server + "c/dursley.html")
    for i, side in enumerate("ab"):
        assert page.get_attribute(f"#grid-{side}", "tabindex") == "0"
        L, P = page.evaluate(f"[window.infoflowCompare.sides[{i}].D.L, window.infoflowCompare.sides[{i}].D.P]")
        page.focus(f"#grid-{side}")
        assert page.evaluate("document.activeElement.id") == f"grid-{side}"
        assert page.is_visible(f"#tooltip-{side}")
        # the focus starts at the last MLP of the last position, then follows the arrows
        head = page.inner_text(f"#tooltip-{side} .tt-head")
        assert head.startswith(f"Layer {L - 1} MLP \u00b7 position {P - 1} "), head
        _tip_matches(page, i, (L - 1, 1, P - 1))
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        assert page.inner_text(f"#tooltip-{side} .tt-head").startswith(f"Layer {L - 2} MLP \u00b7 position {P - 2} ")
        rows = _tip_matches(page, i, (L - 2, 1, P - 2))
        # Enter pins the cell: the live region names the model, the cell and its largest source
        page.keyboard.press("Enter")
        pin = page.evaluate(f"window.infoflowCompare.grids[{i}].overlay.pin")
        assert pin == {"l": L - 2, "k": 1, "p": P - 2}
        label = page.evaluate(f"window.infoflowCompare.models[{i}].label")
        top = page.inner_text(f"#tooltip-{side} tr[data-src] td")         # the largest source, as the tooltip names it
        text = page.text_content("#cmp-announce")
        assert page.get_attribute("#cmp-announce", "aria-live") == "polite"
        assert text.startswith(f"{label}: pinned layer {L - 2} MLP at position {P - 2}, "), text
        assert text.endswith(f": largest source {top}, {rows[0][1]}."), (text, rows[0], top)
        page.keyboard.press("Escape")
        assert page.text_content("#cmp-announce") == f"{label}: unpinned."


def test_compare_tooltip_follows_the_pointer(server, page):
    open_compare(page, server + "c/capital.html")
    box = page.locator("#grid-b").bounding_box()
    r = page.evaluate("(() => { const g = window.infoflowCompare.grids[1]; return g.cellRect(0, 0, 1); })()")
    page.mouse.move(box["x"] + r["x"] + r["w"] / 2, box["y"] + r["y"] + r["h"] / 2)
    assert page.inner_text("#tooltip-b .tt-head").startswith("Layer 0 attention \u00b7 position 1 ")
    _tip_matches(page, 1, (0, 0, 1))
