"""The viewer's data reader and compute.js, as JS unit tests run in headless Chromium.

Hostile data files are crafted here with msgpack + zlib: a self-consistent file claiming
10,000 layers x 100,000 positions, a deflate bomb expanding to 8 GiB, and bit-flipped copies
of a real file. Each must end in a clear message, fast, without freezing the tab.
"""
from __future__ import annotations

import base64
import shutil
import struct
import time
import zlib

import msgpack
import pytest

from tests.test_browser import _new_page, _plain_id, _serve, browser, pages, site_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture
def harness(browser, site_server, pages):  # noqa: F811
    """A page of the site (so that its modules import), with helpers on window."""
    ctx, pg = _new_page(browser)
    pg.goto(site_server + pages[_plain_id(pages)])
    pg.wait_for_function("() => document.documentElement.dataset.viewerReady === '1'")
    pg.evaluate("""async () => {
        window.T = {
            data: await import(new URL('../static/js/data.js', location.href).href),
            compute: await import(new URL('../static/js/compute.js', location.href).href),
            b64: (s) => { const a = atob(s), u = new Uint8Array(a.length);
                          for (let i = 0; i < a.length; i++) u[i] = a.charCodeAt(i); return u; },
        };
    }""")
    yield pg
    ctx.close()


def _decode(pg, raw: bytes) -> dict:
    """decodeData(raw) in the page -> {ok, message, ms}."""
    return pg.evaluate("""async (b64) => {
        const bytes = T.b64(b64);
        const t = performance.now();
        try {
            const D = await T.data.decodeData(bytes.buffer);
            await T.data.ensureAll(D);           // the arrays the viewer decodes in the background too
            return {ok: true, ms: performance.now() - t, P: D.P};
        } catch (e) {
            return {ok: false, name: e.name, message: e.message, ms: performance.now() - t};
        }
    }""", base64.b64encode(raw).decode())


def _array(dtype: str, shape: list[int], data: bytes, **extra) -> dict:
    return {"dtype": dtype, "shape": shape, "data": data, **extra}


def _huge_doc(L: int, P: int, G: int = 1, k: int = 1) -> bytes:
    """A document whose declared sizes agree with each other everywhere (tokens, shapes,
    row_len), with almost no data behind them."""
    tril = dict(layout="tril", row_len=[0] * P, tail=0, q=255, scale=_array("f32", [L, 2, P], b""), codec="deflate")
    variant = {"name": "tokens", "label": "tokens", "grouping": "tokens", "sources": ["a"] * G, "has_bias": False,
               "groups": _array("u16", [P], b""), "first": _array("u16", [G], b""),
               "norm": _array("u8", [L, 2, P, G], zlib.compress(b""), **tril),
               "delta": _array("u8", [L, 2, P, G], zlib.compress(b""), **tril),
               "proj": _array("i8", [L, 2, P, G], zlib.compress(b""), **tril),
               "logit_attr": _array("f16", [P, k, G], b"")}
    return msgpack.packb({
        "schema": 1, "layers": L, "positions": P, "top_k": k, "tokens": ["a"] * P, "strings": ["a"],
        "token_ids": _array("u32", [P], b""), "embed_norm": _array("f32", [P], b""),
        "recon_error": _array("f32", [L, 2], b""), "worst_recon_error": 0.0, "logit_error": 0.0,
        "predictions": {"ids": _array("u32", [P, k], b""), "probs": _array("f32", [P, k], b""),
                        "logits": _array("f32", [P, k], b"")},
        "lens": None, "variants": [variant]})


def deflate_bomb(total: int) -> bytes:
    """A valid zlib stream of `total` zero bytes (total a multiple of 1 MiB), built from one
    repeated compressed block, so an 8 GiB bomb takes 8 MB and no time to make."""
    mib = 1 << 20
    assert total % mib == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)   # the state was reset: same bytes every time
    body = first + block * (total // mib - 1) + c.flush()
    a, b = 1, total % 65521                                          # adler32 of zeros
    return b"\x78\xda" + body + struct.pack(">I", (b << 16) | a)


def test_deflate_bomb_helper_is_a_valid_stream():
    assert zlib.decompress(deflate_bomb(3 << 20)) == bytes(3 << 20)


def _real_file(gallery_site, pages) -> bytes:
    pid = _plain_id(pages)
    return next((gallery_site / "data").glob(f"{pid}.*.msgpack")).read_bytes()


# ----------------------------------------------------------------------------- hostile files


def test_file_claiming_10000_layers_by_100000_positions_is_refused_fast(harness):
    raw = _huge_doc(10_000, 100_000)
    assert len(raw) < 2_000_000
    r = _decode(harness, raw)
    assert not r["ok"] and r["name"] == "DataError"
    assert "10000" in r["message"] and "at most" in r["message"], r["message"]
    assert r["ms"] < 2000, r


def test_file_within_each_limit_but_too_big_in_total_is_refused_fast(harness):
    raw = _huge_doc(30, 16_000, G=16_000)     # 3 x 30 x 2 x 16000 x 16000 values
    r = _decode(harness, raw)
    assert not r["ok"] and "total size" in r["message"], r["message"]
    assert r["ms"] < 2000, r


def test_deflate_bomb_of_8_gib_is_stopped_at_the_declared_size(harness, gallery_site, pages):
    doc = msgpack.unpackb(_real_file(gallery_site, pages), raw=False)
    words = next(v for v in doc["variants"] if v["name"] == "words" and "same_as" not in v) \
        if any(v["name"] == "words" and "same_as" not in v for v in doc["variants"]) else doc["variants"][0]
    words["norm"]["data"] = deflate_bomb(8 << 30)
    raw = msgpack.packb(doc)
    t = time.perf_counter()
    r = _decode(harness, raw)
    assert not r["ok"] and "damaged" in r["message"] and "more than its declared" in r["message"], r["message"]
    assert r["ms"] < 2000, r
    assert time.perf_counter() - t < 10


def _page_with_data(browser, gallery_site, pages, tmp_path, raw: bytes):  # noqa: F811
    """Open the plain prompt page of a copy of the site whose data file is `raw` (served from
    disk, as a web server would: Playwright's routing is too slow for megabytes)."""
    site = tmp_path / "site"
    shutil.copytree(gallery_site, site)
    pid = _plain_id(pages)
    next((site / "data").glob(f"{pid}.*.msgpack")).write_bytes(raw)
    server, url = _serve(site)
    ctx, pg = _new_page(browser)
    pg.goto(url + pages[pid])
    pg.wait_for_function("() => document.documentElement.dataset.viewerReady === 'error'", timeout=20_000)
    text = pg.inner_text("#error")
    # ms from the data file's last byte to the message on the page
    after = pg.evaluate("""() => window.infoflowErrorAt - Math.max(...performance.getEntriesByType('resource')
        .filter((e) => e.name.includes('/data/')).map((e) => e.responseEnd))""")
    ctx.close()
    server.shutdown()
    server.server_close()
    return text, after


def test_deflate_bomb_on_the_page_shows_a_message_within_2_s(browser, pages, gallery_site, tmp_path):  # noqa: F811
    doc = msgpack.unpackb(_real_file(gallery_site, pages), raw=False)
    first = next(v for v in doc["variants"] if "same_as" not in v)
    first["norm"]["data"] = deflate_bomb(8 << 30)
    text, after = _page_with_data(browser, gallery_site, pages, tmp_path, msgpack.packb(doc))
    assert "damaged" in text and "Reload" in text and "Failed to fetch" not in text, text
    assert after < 2000, after


def test_huge_file_on_the_page_shows_a_message(browser, pages, gallery_site, tmp_path):  # noqa: F811
    text, after = _page_with_data(browser, gallery_site, pages, tmp_path, _huge_doc(10_000, 100_000))
    assert "layers = 10000" in text, text
    assert after < 2000, after


def test_bit_flipped_files_say_damaged_in_words(harness, gallery_site, pages):
    raw = _real_file(gallery_site, pages)
    failures = 0
    for i in range(24):
        flipped = bytearray(raw)
        pos = 7 + (i * (len(raw) - 14)) // 23
        flipped[pos] ^= 1 << (i % 8)
        r = _decode(harness, bytes(flipped))
        if r["ok"]:
            continue            # a flip inside a stored float changes a number, not the structure
        failures += 1
        assert r["name"] == "DataError", r
        assert "damaged" in r["message"] or "schema" in r["message"] or "not an infoflow" in r["message"], r["message"]
        assert "undefined" not in r["message"], r["message"]
    assert failures >= 12


def test_every_array_size_is_checked_before_inflating(harness):
    r = harness.evaluate("""() => {
        const arr = (o) => ({dtype: 'u8', shape: [2, 3], data: new Uint8Array(6), ...o});
        const msg = (o) => { try { T.data.checkArray(arr(o), 'x'); return 'ok'; } catch (e) { return e.message; } };
        return {
            ok: msg({}),
            neg: msg({shape: [-1, 3]}),
            huge: msg({shape: [1 << 20, 1 << 20]}),
            dtype: msg({dtype: 'f64'}),
            codec: msg({codec: 'gzip'}),
            tril: msg({layout: 'tril', row_len: [1]}),
            size: T.data.checkArray(arr({layout: 'tril', row_len: [1, 2], tail: 0}), 'x').size,
        };
    }""")
    assert r["ok"] == "ok"
    assert "malformed shape" in r["neg"]
    assert "more than this viewer reads" in r["huge"]
    assert "unknown type" in r["dtype"] and "unknown codec" in r["codec"] and "row_len" in r["tril"]
    assert r["size"] == 3


# ----------------------------------------------------------------------------- compute.js


def test_batches_positions_shares_and_others(harness):
    """A 1-layer, 3-position, 3-source variant with known norms: segment widths are shares,
    order is by source position (or size), uncoloured and small sources merge into others."""
    r = harness.evaluate("""() => {
        const L = 1, P = 3, G = 3;
        const norm = new Float32Array(L * 2 * P * G);
        // cell (l=0, attn, p=2): sources 0, 1, 2 with norms 1, 3, 0.01
        norm.set([1, 3, 0.01], ((0 * 2 + 0) * P + 2) * G);
        norm.set([2, 2, 0], ((0 * 2 + 1) * P + 2) * G);
        norm.set([5, 0, 0], ((0 * 2 + 0) * P + 0) * G);
        const V = {G, first: Uint16Array.from([0, 1, 2]), hasBias: false, norm, delta: norm, proj: norm};
        const opts = (o) => ({metric: 'norm', hidden: new Uint8Array(G), trace: -1, heat: false, order: 'position',
            colors: ['#111111', '#222222', '#333333'], neutral: '#999999', neg: '#ff0000', pos: '#0000ff',
            seqRamp: ['#000000', '#808080', '#ffffff'], divRamp: ['#f00', '#fff', '#00f'], ...o});
        const segs = (batches, cell) => batches.flatMap((b) => {
            const out = [];
            for (let o = 0; o < b.n * 5; o += 5) if (b.items[o] === cell) out.push([b.color, +b.items[o + 1].toFixed(4), +b.items[o + 2].toFixed(4)]);
            return out;
        }).sort((a, b) => a[1] - b[1]);
        const byPos = T.compute.buildBatches(V, L, P, opts({}));
        const bySize = T.compute.buildBatches(V, L, P, opts({order: 'size'}));
        const uncoloured = T.compute.buildBatches(V, L, P, opts({colors: ['#111111', null, '#333333']}));
        const traced = T.compute.buildBatches(V, L, P, opts({trace: 1, heat: true}));
        const slots = Array.from(T.compute.colorSlots(V, L, P, new Uint8Array(G), -1, 2));
        return {pos: segs(byPos, 2), size: segs(bySize, 2), unc: segs(uncoloured, 2), heat: segs(traced, 2),
                heatMlp: segs(traced, P + 2), slots};
    }""")
    total = 4.01
    assert r["pos"] == [["#111111", 0, round(1 / total, 4)], ["#222222", round(1 / total, 4), round(4 / total, 4)],
                        ["#999999", round(4 / total, 4), 1]]
    assert r["size"][0][0] == "#222222" and r["size"][1][0] == "#111111"      # largest first
    assert r["unc"] == [["#111111", 0, round(1 / total, 4)], ["#999999", round(1 / total, 4), 1]]
    # heat map of source 1: share 3/4.01 -> ramp index round(0.748 * 2) = 1; MLP row share 0.5 -> 1
    assert r["heat"] == [["#808080", 0, 1]] and r["heatMlp"] == [["#808080", 0, 1]]
    # colour slots: source 0 has the largest mean share (cells p=0 and p=2), then source 1
    assert r["slots"] == [0, 1, -1]
