"""The per-head views in headless Chromium (issue 13): drawn colours against the data file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_browser import browser, page, pages, site_server  # noqa: F401  (fixtures)
from tests.test_browser import _open_viewer

pytestmark = pytest.mark.browser

PIXEL = """([l, k, p]) => {
    const v = window.infoflowViewer.viewer;
    const [x, y] = v.cellPixel(l, k, p, 0.5, 0.5);
    const d = document.getElementById('grid').getContext('2d').getImageData(x, y, 1, 1).data;
    return '#' + [d[0], d[1], d[2]].map((c) => c.toString(16).padStart(2, '0')).join('');
}"""
HEADS_READY = "() => { const v = window.infoflowViewer.viewer; return v.headState && v.headState.HD && window.infoflowViewer.idle; }"


def _ioi_heads(gallery_site):
    """(main data path, Heads of the tokens variant) of the ioi prompt, read with infoflow.load."""
    from infoflow import load
    manifest = json.loads((gallery_site / "data" / "manifest.json").read_text())
    entry = next(e for e in manifest["prompts"] if e["id"] == "ioi")
    assert entry["heads"] == "data/heads/" + entry["data"].removeprefix("data/")
    d = load(gallery_site / entry["data"], "words")
    return entry, d.heads


def test_trace_head_colours_each_position_by_the_heads_share(site_server, page, pages, gallery_site):  # noqa: F811
    entry, heads = _ioi_heads(gallery_site)
    L, Hx, P = heads.write_norm.shape
    wn = heads.write_norm.astype(np.float64)
    share = wn / wn.sum(1, keepdims=True)                                    # (L, H', P)
    l, h = np.unravel_index(np.argmax(share[:, :, -1]), share[:, :, -1].shape)  # the head that writes most at the end
    l, h = int(l), int(h)
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    _open_viewer(page, site_server + pages["ioi"] + f"#th={l}.{h}")
    page.wait_for_function(HEADS_READY)
    page.evaluate("() => window.infoflowViewer.grid.flush()")
    assert any("/data/heads/" in u for u in requested)
    assert f"th={l}.{h}" in page.evaluate("() => window.infoflowViewer.hash")
    ramp = page.evaluate("() => window.infoflowViewer.viewer.seqRamp")
    top = float(share[l, h].max())                     # the ramp ends at the head's largest share
    for p in sorted({1, P // 3, P // 2, P - 2, P - 1}):
        want = ramp[round(float(share[l, h, p]) / top * (len(ramp) - 1))]
        assert page.evaluate(PIXEL, [l, 0, p]) == want.lower(), (l, h, p, share[l, h, p])
    assert f"{100 * top:.1f}%" in page.text_content("#grid-caption")
    # the head writes only in its own layer's attention row: the next row holds no colour of the ramp
    other = (l + 1) % L
    assert page.evaluate(PIXEL, [other, 0, P - 1]) not in {c.lower() for c in ramp}
    # the same through the signed metric: the diverging ramp, share ⟨write_h, r⟩ / Σ|⟨write_h', r⟩|
    page.evaluate("() => window.infoflowViewer.viewer.set({metric: 'proj'})")
    page.wait_for_function("() => window.infoflowViewer.idle")
    page.evaluate("() => window.infoflowViewer.grid.flush()")
    div = page.evaluate("() => window.infoflowViewer.viewer.divRamp")
    wp = heads.write_proj.astype(np.float64)
    signed = wp / np.abs(wp).sum(1, keepdims=True)
    top = float(np.abs(signed[l, h]).max())
    for p in (P // 2, P - 1):
        want = div[round((float(signed[l, h, p]) / top + 1) / 2 * (len(div) - 1))]
        assert page.evaluate(PIXEL, [l, 0, p]) == want.lower(), (p, signed[l, h, p], top)
    # Esc ends the trace (as the help says): the URL drops th= and the cell leaves the ramp
    page.keyboard.press("Escape")
    page.wait_for_function("() => window.infoflowViewer.idle")
    page.evaluate("() => window.infoflowViewer.grid.flush()")
    assert "th=" not in page.evaluate("() => window.infoflowViewer.hash")
    assert page.evaluate("() => window.infoflowViewer.viewer.state.head") is None
    assert page.evaluate(PIXEL, [l, 0, P - 1]) not in {c.lower() for c in div}


def test_first_draw_does_not_fetch_heads_and_the_pinned_cell_map_shows_stored_values(site_server, page, pages, gallery_site):  # noqa: F811
    entry, heads = _ioi_heads(gallery_site)
    L, Hx, P = heads.write_norm.shape
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    _open_viewer(page, site_server + pages["ioi"] + "#g=words")
    page.wait_for_function("() => window.infoflowViewer.idle")
    assert not any("/data/heads/" in u for u in requested)
    l, p = L - 8, P - 1
    page.evaluate(f"() => window.infoflowViewer.viewer.set({{pin: {{l: {l}, k: 0, p: {p}}}}})")
    page.wait_for_function(HEADS_READY)
    page.wait_for_selector("#heads table.heads-map td")
    assert any("/data/heads/" in u for u in requested)
    rows = page.eval_on_selector_all("#heads table.heads-map tr[data-head]", "rs => rs.length")
    assert rows == Hx
    # hover the first head's first source column: the readout is the stored value of that part
    td = page.query_selector('#heads tr[data-head="0"] td[data-src]')
    src = int(td.get_attribute("data-src"))
    td.hover()
    text = page.text_content("#heads .heads-readout")
    value = float(text.split("= ")[1].split(" ")[0])
    exact = float(heads.norm[l, 0, p, src])
    step = float(np.abs(heads.norm[l, 0, p]).max()) / 255
    assert abs(value - exact) <= step, (text, exact, step)
    # click a head: its attention row at p, per source, sums to 1 (within the 8-bit rounding)
    page.click('#heads tr[data-head="3"]')
    page.wait_for_selector("#heads .heads-pattern .attr-row")
    pcts = page.eval_on_selector_all("#heads .heads-pattern .attr-row .num", "ns => ns.map(n => parseFloat(n.textContent))")
    assert abs(sum(pcts) - 100) <= 0.1 * len(pcts) + 0.5
    top = page.text_content("#heads .heads-pattern .attr-row .attr-label")
    groups = load_groups(gallery_site, entry)
    w = np.zeros(groups.max() + 1)
    np.add.at(w, groups[: p + 1], heads.pattern[l, 3, p, : p + 1])
    assert abs(pcts[0] / 100 - w.max()) <= 0.01
    assert top  # labelled by source


def load_groups(gallery_site, entry):
    from infoflow import load
    return load(gallery_site / entry["data"], "words").groups


def test_hostile_heads_file_is_refused_before_allocating(site_server, page, pages):  # noqa: F811
    """A per-head file that declares more than its prompt has (or a huge pattern) ends in a
    DataError naming the problem, without decoding anything."""
    import base64

    import msgpack
    _open_viewer(page, site_server + pages["ioi"])
    L, P = page.evaluate("() => [window.infoflowViewer.viewer.D.L, window.infoflowViewer.viewer.D.P]")

    def arr(shape, dtype="u8", n=1):
        return {"dtype": dtype, "shape": shape, "data": b"\0" * n}
    good = {"schema": 1, "kind": "heads", "layers": L, "positions": P, "heads": 9, "labels": [str(i) for i in range(9)],
            "write_norm": arr([L, 9, P], "f32", 4 * L * 9 * P), "write_proj": arr([L, 9, P], "f32", 4 * L * 9 * P),
            "pattern": arr([L, 9, P, P]), "variants": []}
    cases = {
        "does not match": {**good, "positions": P + 1},
        "expected": {**good, "pattern": arr([L, 9, 100000, 100000])},
        "bad head labels": {**good, "labels": ["0"]},
        "not a per-head": {**good, "kind": "main"},
    }
    for message, doc in cases.items():
        b64 = base64.b64encode(msgpack.packb(doc, use_bin_type=True)).decode()
        got = page.evaluate("""async (b64) => {
            const H = await import(new URL('../static/js/heads.js', location.href).href);
            const a = atob(b64), u = new Uint8Array(a.length);
            for (let i = 0; i < a.length; i++) u[i] = a.charCodeAt(i);
            const t = performance.now();
            try { await H.decodeHeads(u.buffer, window.infoflowViewer.viewer.D); return ['no error', 0]; }
            catch (e) { return [e.name + ': ' + e.message, performance.now() - t]; }
        }""", b64)
        assert got[0].startswith("DataError") and message in got[0], (message, got)
        assert got[1] < 1000
