"""Issue 24, item 4: a layer's attention patterns, all heads at once, with previous-token,
induction and first-token scores checked against the stored per-head file (read by Python)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import infoflow
from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


def _scores(A, tokens):
    P = A.shape[0]
    prev = np.mean([A[q, q - 1] for q in range(1, P)])
    sink = np.mean([A[q, 0] for q in range(1, P)])
    ind, last = [], {}
    for q in range(P):
        j = last.get(tokens[q])
        if j is not None and j + 1 < q:
            ind.append(A[q, j + 1])
        last[tokens[q]] = q
    return prev, (np.mean(ind) if ind else None), sink


def test_all_heads_of_the_pinned_layer_with_their_scores(gallery_site, site_server, page, pages):  # noqa: F811
    entry = next(e for e in json.loads((gallery_site / "data" / "manifest.json").read_text())["prompts"] if e["id"] == "ioi")
    d = infoflow.load(gallery_site / entry["data"])
    pattern = d.heads.pattern                                   # (L, H, P, P), as stored
    L, H, P, _ = pattern.shape
    _open_viewer(page, site_server + pages["ioi"] + "#pin=23.0.13")
    page.wait_for_function(f"() => document.querySelectorAll('#head-grid canvas.head-pattern').length === {H}", timeout=30000)
    got = page.eval_on_selector_all("#head-grid .head-scores", """ss => ss.map((s) => [+s.dataset.prev,
        s.dataset.induction === '' ? null : +s.dataset.induction, +s.dataset.sink])""")
    for h in range(H):
        prev, ind, sink = _scores(pattern[23, h], d.tokens)
        assert abs(got[h][0] - prev) < 1e-4 and abs(got[h][2] - sink) < 1e-4, (h, got[h], prev, sink)
        assert (ind is None) == (got[h][1] is None) and (ind is None or abs(got[h][1] - ind) < 1e-4)
    assert any(g[1] is not None for g in got)                   # " John" repeats: induction is defined
    # a pixel: query 13, key 1 (' Mary') of head 23.0 has the colour of its weight
    colour = page.evaluate("""([h, q, k]) => {
        const c = document.querySelector(`#head-grid canvas[data-head="${h}"]`), px = c.width / 14;
        const d = c.getContext('2d').getImageData(Math.floor((k + 0.5) * px), Math.floor((q + 0.5) * px), 1, 1).data;
        return '#' + [d[0], d[1], d[2]].map((x) => x.toString(16).padStart(2, '0')).join('');
    }""", [0, 13, 1])
    ramp = page.evaluate("window.infoflowViewer.viewer.seqRamp")
    assert colour == ramp[round(float(pattern[23, 0, 13, 1]) * (len(ramp) - 1))].lower()
    page.click('#head-grid button.head-cell[data-head="1"]')  # a click opens the head
    page.wait_for_function("() => window.infoflowViewer.viewer.headPick && window.infoflowViewer.viewer.headPick.h === 1")
    page.wait_for_selector("#heads .heads-pattern button.heads-trace-button")
    assert "Head 23.1 attends from position 13" in page.inner_text("#heads")
