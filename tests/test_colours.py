"""Issue 24, item 5: colours go where the answer comes from. The sources adding most to the shown
prediction's demeaned logit (its logit minus the vocabulary mean, from each variant's stored
`logit_mean` at the last position; elsewhere minus the top-k predictions' mean), so the first
token's constant part cancels, get the first colours; the compare page traces the top one."""
from __future__ import annotations

import pytest

from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

# the expected order, written here from the stored arrays: attr(j) - the vocabulary mean's part
# (the last position), else - the mean over the k predictions
CONTRAST = """([p, j, n]) => {
    const v = window.infoflowViewer.viewer, V = v.V, D = v.D, G = V.G, k = D.k;
    const c = [];
    for (let s = 0; s < G; s++) {
        if (V.first[s] > p || v.hidden[s]) continue;
        let mean = 0;
        if (p === D.P - 1) mean = V.logitMean[s];
        else for (let jj = 0; jj < k; jj++) mean += V.logitAttr[(p * k + jj) * G + s] / k;
        const x = V.logitAttr[(p * k + j) * G + s] - mean;
        if (x > 0) c.push([x, s]);
    }
    c.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    return c.slice(0, n).map((x) => x[1]);
}"""


def test_first_colours_go_to_where_the_shown_prediction_comes_from(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["hostile"])          # the longest test prompt: more sources than colours
    P, G = page.evaluate("[window.infoflowViewer.viewer.D.P, window.infoflowViewer.viewer.V.G]")
    assert G > 10
    assert page.evaluate("window.infoflowViewer.viewer.V.logitMean.length") == G
    for j in (0, 1):
        if j:
            page.click('#predictions button.pred[data-j="1"]')
            page.wait_for_function("() => window.infoflowViewer.idle")
        top = page.evaluate(CONTRAST, [P - 1, j, 5])
        slots = page.evaluate("Array.from(window.infoflowViewer.viewer.slots)")
        assert len(top) >= 3
        assert [slots[s] for s in top] == list(range(len(top))), (j, top, slots)
        labels = page.evaluate("window.infoflowViewer.viewer.labels")
        legend = page.inner_text("#legend .legend-answer")
        assert all(labels[s] in legend for s in top)
        assert "demeaned logit" in legend and "mean logit over the vocabulary" in legend


def test_other_positions_fall_back_to_the_top_k_mean_and_say_so(site_server, page, pages):  # noqa: F811
    """Only the last position stores the vocabulary mean: a picked position ranks by the top-k
    predictions' mean, and the legend names that baseline instead."""
    _open_viewer(page, site_server + pages["ioi"])
    page.evaluate("window.infoflowViewer.viewer.set({pred: 9})")
    page.wait_for_function("() => window.infoflowViewer.idle")
    top = page.evaluate(CONTRAST, [9, 0, 5])
    slots = page.evaluate("Array.from(window.infoflowViewer.viewer.slots)")
    assert top and [slots[s] for s in top] == list(range(len(top)))
    legend = page.inner_text("#legend .legend-answer")
    assert "mean of the top 5 predictions'" in legend and "demeaned" not in legend
