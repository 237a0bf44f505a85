"""Issue 24, item 6: the logit lens overview beside the depth chart. The chart's drawn points (the
canvas's `lensDrawn` hook) against the stored `lens_last` arrays, which are checked against the
data file as Python reads it; the ticks every 5 layers, the hover readout, the token picker, the
declared target, and the default following the shown prediction."""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import msgpack
import numpy as np
import pytest

from infoflow import datafile
from tests.test_browser import _open_viewer, browser, page, pages, site_server  # noqa: F401  (fixtures)
from tests.test_viewer_reader import _decode, harness  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

DRAWN = "document.querySelector('#lens-chart canvas').lensDrawn"
STORED = """(i) => {
    const D = window.infoflowViewer.viewer.D, t = D.lensLast, n = D.L * 2;
    return {text: D.strings[t.ids[i]], probs: Array.from(t.probs.subarray(i * n, (i + 1) * n)),
            ranks: Array.from(t.ranks.subarray(i * n, (i + 1) * n)), target: t.target, m: t.ids.length};
}"""


def _axis_top(x):
    return next(t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1) if x <= t)


def _check_drawn(drawn, stored, L, vocab):
    """Every drawn point is the stored value of its sublayer, at the pixel the axes give it."""
    b = drawn["box"]
    assert drawn["token"] == stored["text"] and len(drawn["points"]) == 2 * L
    top = _axis_top(max(stored["probs"]))
    assert drawn["probTop"] == top and drawn["vocab"] == vocab
    log_max = math.log10(max(10, vocab))
    for i, pt in enumerate(drawn["points"]):
        l, k = divmod(i, 2)
        assert (pt["l"], pt["k"]) == (l, k)
        assert pt["prob"] == pytest.approx(stored["probs"][i], abs=1e-7) and pt["rank"] == stored["ranks"][i]
        assert pt["x"] == pytest.approx(b["left"] + (l + (1 if k else 0.5)) / L * (b["right"] - b["left"]))
        assert pt["yProb"] == pytest.approx(b["p0"] - stored["probs"][i] / top * b["probH"], abs=1e-4)
        assert pt["yRank"] == pytest.approx(b["r0"] + math.log10(stored["ranks"][i]) / log_max * (b["r1"] - b["r0"]), abs=1e-4)


def test_lens_chart_draws_the_stored_arrays(site_server, page, pages, gallery_site):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    page.wait_for_function(f"() => {DRAWN}")
    L, vocab, P = page.evaluate("(() => { const D = window.infoflowViewer.viewer.D; return [D.L, D.model.vocab, D.P]; })()")
    # what the viewer decoded is what Python reads from the same file
    manifest = json.loads((Path(gallery_site) / "data" / "manifest.json").read_text())
    entry = next(e for e in manifest["prompts"] if e["id"] == "ioi")
    d = datafile.load(Path(gallery_site) / entry["data"])
    for i in range(len(d.lens_track_ids)):
        s = page.evaluate(STORED, i)
        np.testing.assert_array_equal(np.float32(s["probs"]), d.lens_track_probs[i].reshape(-1))
        assert s["ranks"] == d.lens_track_ranks[i].reshape(-1).tolist()
        assert s["text"] == d.token_text[int(d.lens_track_ids[i])]
    # the default is the shown prediction (the top one), drawn from its stored row
    stored = page.evaluate(STORED, 0)
    assert stored["text"] == page.evaluate("(() => { const D = window.infoflowViewer.viewer.D; return D.strings[D.pred.ids[(D.P - 1) * D.k]]; })()")
    drawn = page.evaluate(DRAWN)
    _check_drawn(drawn, stored, L, vocab)
    assert [t[0] for t in drawn["ticks"]] == list(range(0, L + 1, 5))
    # after the last layer: the model's own prediction, rank 1 and its probability
    assert stored["ranks"][-1] == 1
    assert stored["probs"][-1] == pytest.approx(page.evaluate(
        "(() => { const D = window.infoflowViewer.viewer.D; return D.pred.probs[(D.P - 1) * D.k]; })()"), rel=1e-5)
    # hover: the nearest sublayer's value
    if page.is_visible("#first-hint"):                  # the first-visit hint is fixed over the corner
        page.click("#first-hint-close")
    page.locator("#lens-chart canvas").scroll_into_view_if_needed()
    box = page.locator("#lens-chart canvas").bounding_box()
    pt = drawn["points"][2 * 7 + 1]
    page.mouse.move(box["x"] + pt["x"] * box["width"] / drawn["box"]["W"], box["y"] + box["height"] / 2)
    text = page.inner_text("#lens-chart .lens-readout")
    assert text == f"Layer 7 MLP: {pt['prob'] * 100:.1f}%, rank {pt['rank']}", text


def test_lens_chart_follows_the_shown_prediction_and_the_picker(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["ioi"])
    page.wait_for_function(f"() => {DRAWN}")
    L, vocab = page.evaluate("(() => { const D = window.infoflowViewer.viewer.D; return [D.L, D.model.vocab]; })()")
    page.click('#predictions button.pred[data-j="2"]')
    page.wait_for_function("() => window.infoflowViewer.idle")
    _check_drawn(page.evaluate(DRAWN), page.evaluate(STORED, 2), L, vocab)
    page.select_option("#lens-chart select.lens-pick", "4")
    _check_drawn(page.evaluate(DRAWN), page.evaluate(STORED, 4), L, vocab)


def test_declared_target_is_offered(site_server, page, pages):  # noqa: F811
    _open_viewer(page, site_server + pages["capital"])
    page.wait_for_function(f"() => {DRAWN}")
    s = page.evaluate(STORED, 0)
    assert s["target"] is not None
    target = page.evaluate(STORED, s["target"])
    assert target["text"] == " Paris"
    options = page.eval_on_selector_all("#lens-chart select.lens-pick option", "os => os.map(o => o.textContent)")
    assert len(options) == s["m"] and options[s["target"]].endswith("(declared target)")


# ----------------------------------------------------------------------------- the JS reader


def _ioi_doc(gallery_site) -> dict:
    manifest = json.loads((Path(gallery_site) / "data" / "manifest.json").read_text())
    entry = next(e for e in manifest["prompts"] if e["id"] == "ioi")
    return msgpack.unpackb((Path(gallery_site) / entry["data"]).read_bytes(), raw=False)


def _f32(shape):
    return {"dtype": "f32", "shape": shape, "data": bytes(4 * int(np.prod(shape)))}


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["lens_last"].update(ids={**d["lens_last"]["ids"], "shape": [7]}), "expected 1 to 6"),
    (lambda d: d["lens_last"].update(probs=_f32([5, 3, 2])), "lens_last.probs has shape"),
    (lambda d: d["lens_last"].update(ranks={**d["lens_last"]["ranks"], "shape": [5, 1 << 20, 2]}), "lens_last.ranks has shape"),
    (lambda d: d["lens_last"].update(target=5), "not one of its tokens"),
    (lambda d: d.update(lens_last=[1]), "lens_last is not a map"),
    (lambda d: d["variants"][0].update(logit_mean=_f32([3])), "logit_mean has shape"),
])
def test_js_reader_refuses_crafted_sizes(harness, gallery_site, edit, words):  # noqa: F811
    doc = _ioi_doc(gallery_site)
    ok = _decode(harness, msgpack.packb(doc, use_bin_type=True))
    assert ok["ok"], ok
    edit(doc)
    r = _decode(harness, msgpack.packb(doc, use_bin_type=True))
    assert not r["ok"] and r["name"] == "DataError" and words in r["message"], r


def test_js_reader_reads_older_files_without_them(harness, gallery_site):  # noqa: F811
    doc = _ioi_doc(gallery_site)
    del doc["lens_last"]
    for v in doc["variants"]:
        v.pop("logit_mean", None)
    r = harness.evaluate("""async (b64) => {
        const D = await T.data.decodeData(T.b64(b64).buffer);
        return {lens: D.lensLast, means: D.variants.map((V) => V.logitMean)};
    }""", base64.b64encode(msgpack.packb(doc, use_bin_type=True)).decode())
    assert r["lens"] is None and r["means"] == [None] * len(doc["variants"])
