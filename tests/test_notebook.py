"""A decomposition that displays itself in a notebook (issue 28): infoflow/notebook.py.

The real thing: a notebook is executed by nbclient (a real kernel), saved and read back,
exported to HTML by nbconvert, and that HTML is opened in Chromium; the colours the viewer drew
in its iframes are checked against the Python result's own numbers. save_html's file likewise.
"""
from __future__ import annotations

import base64
import html
import re
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest

import infoflow
from infoflow.notebook import HIDDEN, MAX_INLINE_BYTES, ViewError, show
from tests.conftest import HOSTILE_TEXT, tiny_model
from tests.test_browser import _new_page, browser  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
TRACE = 3


@pytest.fixture(scope="module")
def hostile():
    """A tiny model's decomposition of a hostile prompt (</script>, <img onerror>, quotes, NUL)."""
    return infoflow.decompose(HOSTILE_TEXT, tiny_model("gqa"))


def _srcdoc(out: str) -> str:
    m = re.search(r'srcdoc="([^"]*)"', out)
    assert m, out[:200]
    return html.unescape(m.group(1))


def _as_text(shown: str) -> bool:
    """The prompt as the page shows it: every character, as text (HTML drops a NUL, or makes it U+FFFD)."""
    return shown.replace("\ufffd", "") == HOSTILE_TEXT.replace("\x00", "")


def _embedded(doc: str, name: str) -> bytes:
    m = re.search(rf'<script type="application/octet-stream" id="infoflow-{name}">([^<]*)</script>', doc)
    return base64.b64decode(m.group(1))


# ----------------------------------------------------------------------------- the HTML


def test_output_is_one_iframe_that_carries_everything(hostile):
    out = show(hostile).html
    # the notebook's own DOM gets one iframe and nothing that could run or load
    assert out.startswith("<iframe") and out.endswith("</iframe>") and out.count("<") == 2, out[:300]
    # what is left where a front end's sanitizer drops the iframe: how to see the viewer
    assert out.endswith(html.escape(HIDDEN) + "</iframe>") and "save_html" in HIDDEN
    assert 'sandbox="allow-scripts allow-downloads"' in out
    doc = _srcdoc(out)
    # nothing from anywhere else: no src/href attributes, no http(s) URLs outside the data
    assert not re.search(r"<[^>]*\b(src|href)\s*=", doc)
    assert "http://" not in doc and "https://" not in doc.replace("http://www.w3.org/2000/svg", "")
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', doc).group(1))
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "'unsafe-inline'" not in csp
    # the data is the result: its prompt, tokens and per-head data
    data = msgpack.unpackb(_embedded(doc, "data"))
    assert data["prompt"]["text"] == HOSTILE_TEXT and data["tokens"] == hostile.tokens
    assert msgpack.unpackb(_embedded(doc, "heads"))["kind"] == "heads"
    # the hostile prompt appears in the page only escaped, as text
    assert "<img" not in doc and "onerror=alert(1)&gt;" in doc


def test_view_options_and_their_errors(hostile):
    doc = _srcdoc(show(hostile, metric="proj", trace=TRACE, heat=True).html)
    assert f'data-view="#m=proj&amp;t={TRACE}&amp;heat=1"' in doc
    with pytest.raises(ViewError, match="metric must be one of norm, delta, proj"):
        show(hostile, metric="bogus")
    with pytest.raises(ViewError, match="is not a token of this prompt"):
        show(hostile, trace=" Mary")
    with pytest.raises(ViewError, match="out of range"):
        show(hostile, trace=999)
    with pytest.raises(ViewError, match="theme must be"):
        show(hostile, theme="blue")


def test_past_the_limit_heads_go_then_the_output_says_what_to_do(hostile):
    full = show(hostile)
    assert full.sizes["heads"] > 0 and full.sizes["output"] < MAX_INLINE_BYTES
    smaller = show(hostile, max_bytes=full.sizes["output"] - 1)
    assert smaller.sizes["heads"] == 0 and smaller.sizes["heads_left_out"] == full.sizes["heads"]
    doc = _srcdoc(smaller.html)
    assert 'id="infoflow-heads"></script>' in doc and "save_html" in doc
    note = show(hostile, max_bytes=10_000)
    assert "<iframe" not in note.html and "save_html" in note.html and "infoflow build" in note.html
    assert note.sizes["output"] < 10_000


def test_save_html_writes_one_file_and_never_replaces_a_foreign_one(hostile, tmp_path):
    path = hostile.save_html(tmp_path / "fig.html", metric="delta")
    text = path.read_text()
    assert text.startswith("<!doctype html>") and 'data-view="#m=delta"' in text
    hostile.save_html(path)                                  # ours: replaced
    other = tmp_path / "notes.html"
    other.write_text("<p>mine</p>")
    with pytest.raises(ViewError, match="infoflow did not write it"):
        hostile.save_html(other)
    assert other.read_text() == "<p>mine</p>"
    with pytest.raises(ViewError, match="ending in .html"):
        hostile.save_html(tmp_path / "fig.png")


def test_a_grouped_result_and_several_groupings(hostile):
    lm = tiny_model("gqa")
    words = infoflow.decompose("two words here", lm, groups="words")
    doc = _srcdoc(show(words).html)
    assert [v["name"] for v in msgpack.unpackb(_embedded(doc, "data"))["variants"]] == ["words"]
    from infoflow.decompose import decompose_variants
    both = decompose_variants("two words here", lm, {"tokens": None, "words": "words"})
    doc = _srcdoc(show(both, grouping="words").html)
    assert [v["name"] for v in msgpack.unpackb(_embedded(doc, "data"))["variants"]] == ["tokens", "words"]
    assert 'data-view="#m=norm&amp;g=words"' in doc


def test_a_decomposition_displays_itself(hostile):
    bundle = hostile._repr_mimebundle_()
    assert bundle["text/html"].startswith("<iframe") and "infoflow view" in bundle["text/plain"]
    assert hostile._repr_html_().startswith("<iframe")


# ----------------------------------------------------------------------------- in a browser


READ = """([cells, signed]) => {
    const v = window.infoflowViewer.viewer, ramp = signed ? v.divRamp : v.seqRamp;
    v.grid.flush();
    const ctx = document.getElementById('grid').getContext('2d');
    const pixels = cells.map(([l, k, p]) => {
        const [x, y] = v.cellPixel(l, k, p, 0.5, 0.5);
        const d = ctx.getImageData(x, y, 1, 1).data;
        return '#' + [d[0], d[1], d[2]].map((c) => c.toString(16).padStart(2, '0')).join('');
    });
    return {pixels, ramp: ramp.map((c) => c.toLowerCase()), hidden: [...v.hidden], state: window.infoflowViewer.state};
}"""


def _share(d, metric: str, l: int, k: int, p: int) -> float:
    """The traced source's share of cell (l, k, p), as the viewer defines it: a signed share as
    stored, a norm over the whole residual (every source present at p, hidden ones included)."""
    if metric == "proj":
        return float((d.attn_proj if k == 0 else d.mlp_proj)[l, p, TRACE])
    arr = {"norm": (d.attn_norm, d.mlp_norm), "delta": (d.attn_delta_norm, d.mlp_delta_norm)}[metric][k]
    total = float(arr[l, p, :p + 1].sum())
    return float(arr[l, p, TRACE]) / total if total > 0 else 0.0


def _expected_index(d, metric: str, l: int, k: int, p: int, hidden: list[int], n: int) -> int:
    """The heat map's colour index of the traced source at (l, k, p), from the Python result:
    the ramp runs to the traced source's largest |share| over every cell (symmetric if signed)."""
    top = max(abs(_share(d, metric, ll, kk, pp)) for ll in range(d.n_layers) for kk in (0, 1)
              for pp in range(TRACE, d.n_tokens)) or 1.0
    x = _share(d, metric, l, k, p)
    f = (x + top) / (2 * top) if metric == "proj" else x / top
    return round(min(1, max(0, f)) * (n - 1))


def _check_drawn(frame, d, metric: str):
    """Every cell at and after the traced position: the drawn colour is the data's value's."""
    frame.wait_for_function("() => document.documentElement.dataset.viewerReady", timeout=60_000)
    assert frame.evaluate("document.documentElement.dataset.viewerReady") == "1", frame.text_content("#error")
    frame.wait_for_function("() => window.infoflowViewer.idle", timeout=90_000)   # a loaded 2-core machine
    cells = [(l, k, p) for l in range(d.n_layers) for k in (0, 1) for p in range(TRACE, d.n_tokens, 7)]
    r = frame.evaluate(READ, [cells, metric == "proj"])
    assert r["state"]["metric"] == metric and r["state"]["trace"] == TRACE and r["state"]["heat"]
    n, misses = len(r["ramp"]), []
    for (l, k, p), pixel in zip(cells, r["pixels"]):
        want = _expected_index(d, metric, l, k, p, r["hidden"], n)
        ok = {r["ramp"][i] for i in range(max(0, want - 1), min(n, want + 2))}   # 8-bit storage: ±1 step
        if pixel not in ok:
            misses.append((l, k, p, pixel, r["ramp"][want]))
    assert not misses, misses
    assert len(set(r["pixels"])) > 3          # the cells differ: the check is not of a flat colour
    return len(cells)


def _offline(page, requests: list):
    """Record every request; refuse all but the page's own file (nbconvert's CDN scripts included)."""
    page.on("request", lambda req: requests.append((req.frame.url if req.frame else "", req.url)))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())


NOTEBOOK_CELLS = [
    "import sys, torch\nsys.path.insert(0, {repo!r})\ntorch.set_num_threads(1)\n"
    "import infoflow\nfrom tests.conftest import tiny_model",
    "d = infoflow.decompose({prompt!r}, tiny_model('gqa'))\nd",
    "infoflow.show(d, trace={trace}, heat=True, height=600)",
    "d.save_html({fig!r}, metric='proj', trace={trace}, heat=True)",
]


@pytest.mark.browser
def test_notebook_executed_saved_exported_and_drawn(hostile, browser, tmp_path):  # noqa: F811
    import nbconvert
    import nbformat
    from nbclient import NotebookClient

    fig = tmp_path / "fig.html"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(repo=str(REPO), prompt=HOSTILE_TEXT, trace=TRACE, fig=str(fig)))
                for c in NOTEBOOK_CELLS]
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)                                   # saved, closed ...
    nb = nbformat.read(path, as_version=4)                     # ... and reopened
    htmls = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert len(htmls) == 2 and all(h.startswith("<iframe") for h in htmls)
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    exported = tmp_path / "run.html"
    exported.write_text(body, encoding="utf-8")
    assert body.count("<iframe") == 2 and "<img src=x" not in body

    ctx, pg = _new_page(browser)
    requests: list = []
    try:
        _offline(pg, requests)
        pg.goto(exported.as_uri())
        pg.wait_for_function("document.querySelectorAll('iframe.infoflow-view').length === 2")
        frames = [f for f in pg.frames if f.parent_frame is pg.main_frame]
        assert len(frames) == 2
        for f in frames:                      # the hostile prompt is text, in both outputs
            f.wait_for_function("() => document.documentElement.dataset.viewerReady", timeout=60_000)
            assert _as_text(f.text_content("#prompt-text"))
            assert f.locator('img[src="x"]').count() == 0
        assert frames[0].evaluate("window.infoflowViewer.state.metric") == "norm"      # `d`: the default view
        # Chromium runs no animation frames in an offscreen cross-origin (sandboxed srcdoc) frame:
        # below the fold, the second view would draw only once scrolled to, as for a reader
        pg.locator("iframe.infoflow-view").nth(1).scroll_into_view_if_needed()
        assert _check_drawn(frames[1], hostile, "norm") > 10                          # show(d, trace, heat)
        # the heads travelled with it: pin an attention cell, and the Heads panel's map shows
        # the Python result's per-head norms (8-bit storage: within a 255th of the row's largest)
        f = frames[1]
        l, p = hostile.n_layers - 1, hostile.n_tokens - 1
        f.evaluate(f"() => window.infoflowViewer.viewer.set({{pin: {{l: {l}, k: 0, p: {p}}}}})")
        f.wait_for_selector("#heads table.heads-map td[data-src]")
        assert f.eval_on_selector_all("#heads table.heads-map tr[data-head]", "rs => rs.length") == len(hostile.heads.labels)
        td = f.query_selector('#heads tr[data-head="1"] td[data-src]')
        td.hover()
        value = float(f.text_content("#heads .heads-readout").split("= ")[1].split(" ")[0])
        norm = hostile.heads.norm[l, 1, p]
        assert abs(value - float(norm[int(td.get_attribute("data-src"))])) <= float(np.abs(norm).max()) / 255 + 1e-4
        ours = [u for frame_url, u in requests if frame_url.startswith("about:srcdoc")]
        assert all(u.startswith(("blob:", "data:")) for u in ours), ours
        # the only errors: nbconvert's page asking for its CDN scripts, refused above
        errors = [e for e in pg.errors if e != "Failed to load resource: net::ERR_FAILED"]
        assert pg.dialogs == [] and errors == [], (pg.dialogs, pg.errors)
        pg.errors.clear()

        # save_html: the same viewer from a file, opened on its view
        requests.clear()
        pg.goto(fig.as_uri())
        assert _check_drawn(pg.main_frame, hostile, "proj") > 10
        assert _as_text(pg.text_content("#prompt-text"))
        assert all(u.startswith(("blob:", "data:", "file:")) for _, u in requests), requests
        assert pg.dialogs == [] and pg.errors == [], (pg.dialogs, pg.errors)
    finally:
        ctx.close()


@pytest.mark.browser
def test_a_hostile_prompt_runs_nothing_and_the_csp_holds(hostile, browser, tmp_path):  # noqa: F811
    """The page's CSP is live: an inline script added to the viewer's page is refused."""
    path = hostile.save_html(tmp_path / "fig.html")
    ctx, pg = _new_page(browser)
    try:
        pg.goto(path.as_uri())
        pg.wait_for_function("() => document.documentElement.dataset.viewerReady === '1'", timeout=60_000)
        ran = pg.evaluate("""() => { window.ran = false; const s = document.createElement('script');
            s.textContent = 'window.ran = true'; document.body.append(s);
            const i = document.createElement('img'); i.src = 'x'; i.onerror = null; document.body.append(i);
            return window.ran; }""")
        assert ran is False
        # without per-head data the Heads panel says why, not "rebuild the site"
        pg.goto(hostile.save_html(tmp_path / "no-heads.html", heads=False).as_uri())
        pg.wait_for_function("() => document.documentElement.dataset.viewerReady === '1'", timeout=60_000)
        pg.evaluate("() => window.infoflowViewer.viewer.set({pin: {l: 0, k: 0, p: 3}})")
        pg.wait_for_selector("#heads .error-box")
        assert "heads=False" in pg.text_content("#heads .error-box")
        assert _as_text(pg.text_content("#prompt-text"))
        assert pg.dialogs == []
    finally:
        ctx.close()
