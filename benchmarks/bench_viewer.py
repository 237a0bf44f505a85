"""Benchmark of the prompt viewer in headless Chromium (issues 4, 12). Not a test: run by hand.

    .venv/bin/python benchmarks/bench_viewer.py [--site build] [--baseline OLD_SITE] [--page-repeats 3]
                                                [--positions 128] [--repeats 40] [--data FILE]

Part 1, every gallery page: each page of a built site (--site, default build/; the site's own
static/ is replaced by site_src/static so the current viewer is measured) is opened in a fresh
browser context, and the page's own timings are read: the cold decode of its data file and the
first full draw (median of --page-repeats loads). --baseline names the same gallery built by
another version (its own pages and static/): each page is then opened there too, alternately,
so that both are measured under the same machine load. The P = 128 page of part 2 is measured
the same way. Targets: first draw <= 150 ms on every page.

Part 2, P = 128:
it decomposes a prose prompt of exactly --positions tokens on the default model (30 layers),
writes its data file into a temporary one-page site rendered from site_src/templates, serves it
on 127.0.0.1 and opens the prompt page in Debian's chromium (Python Playwright). --data reuses
a data file written earlier (the script prints where it saved one).

Measured with performance.now() inside the page:

* decode: `decodeData()` of site_src/static/js/data.js on the fetched bytes (msgpack parse,
  native DecompressionStream inflate, f16 and quantized-tril expansion to dense Float32Arrays),
  median of --repeats runs (warm), and cold: the page's own decode on page load, median of
  --page-repeats fresh loads (each value printed), plus one more load;
* first full draw: on page load, from the decoded data to the first complete frame (stacked
  bars of every cell computed and drawn, panels filled): `infoflowViewer.timings.firstDraw`.
  Also the warm median of recompute + draw (what a metric switch costs);
* pan / zoom frame: one `grid.draw()` after `zoomAt` or `panBy`, followed by a 1-pixel
  `getImageData`, which forces the canvas to rasterize, so the time includes the pixels, not
  just queued commands. Median and 95th percentile over --repeats frames each, at fit (z = 1,
  every cell visible: the worst case) and zoomed in.

Targets: first full draw <= 150 ms, pan/zoom frame <= 16 ms median, decode <= 50 ms.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import platform
import shutil
import statistics
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "site_src"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

TEXT = ("In the spring of 1887, a young engineer named Clara Whitfield left her village in the hills and "
        "travelled by train to the city, carrying a wooden box of drawings, a letter from her uncle, and very "
        "little money. She had designed a bridge that could be folded and carried by two horses, and she meant "
        "to show it to the railway company before anyone else could claim the idea. The clerk at the front desk "
        "laughed at her, but the chief engineer, an old man with ink on his sleeves, looked at the drawings for "
        "a long time and then quietly asked her")
MORE = " to sit down and explain to him how the folding joints would survive a winter in the mountains".split(" ")


def make_data(positions: int) -> tuple[bytes, dict]:
    from infoflow.datafile import encode
    from infoflow.decompose import decompose_variants, get_model, tokenize

    lm = get_model(None)
    text = TEXT
    for word in MORE:
        if len(tokenize(lm, text, chat=False, max_tokens=4096)) >= positions:
            break
        text += (" " if word else "") + word
    while len(tokenize(lm, text, chat=False, max_tokens=4096)) > positions:
        text = text.rsplit(" ", 1)[0]
    variants = decompose_variants(text, lm, {"tokens": None, "words": "words"})
    prompt = {"id": "bench", "title": "Benchmark prompt", "text": text, "tags": ["bench"], "note": None,
              "chat": False}
    return encode(variants, prompt), prompt


def render_site(out: Path, data: bytes, prompt: dict, model: dict) -> None:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(SRC / "templates"), autoescape=True)
    (out / "data").mkdir(parents=True)
    (out / "p").mkdir()
    (out / "data" / "bench.msgpack").write_bytes(data)
    shutil.copytree(SRC / "static", out / "static")
    entry = dict(prompt, n_tokens=0, top_prediction="", top_prob=0.0, page="p/bench.html",
                 data="data/bench.msgpack", thumb=None)
    site = {"title": "infoflow benchmark", "version": "bench", "built": "", "model": model}
    (out / "p" / "bench.html").write_text(env.get_template("prompt.html").render(
        root="../", site=site, prompt=entry, prev=None, next=None), encoding="utf-8")


MEASURE = """async ([repeats]) => {
  const V = window.infoflowViewer, viewer = V.viewer, grid = V.grid;
  viewer.src = document.getElementById('viewer').dataset.src;
  while (viewer.loading) await new Promise((r) => setTimeout(r, 20));   // background decode done
  const out = {P: viewer.D.P, L: viewer.D.L, G: viewer.V.G, cssW: grid.cssW, cssH: grid.cssH, dpr: grid.dpr,
               bytes: viewer.D.bytes, firstDraw: V.timings.firstDraw, coldDecode: V.timings.decode, parts: V.timings.parts, decodeRest: V.timings.decodeRest};
  const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
  const p95 = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(s.length * 0.95))]; };
  const flush = () => grid.ctx.getImageData(0, 0, 1, 1);
  // decode
  const data = await import(new URL('../static/js/data.js', location.href).href);
  const buf = await (await fetch(viewer.src)).arrayBuffer();
  const dec = [];
  for (let i = 0; i < repeats; i++) { const t = performance.now(); await data.decodeData(buf); dec.push(performance.now() - t); }
  out.decode = med(dec);
  // full redraw (recompute every cell's segments, then draw)
  const full = [];
  for (let i = 0; i < repeats; i++) { const t = performance.now(); viewer.recompute(); grid.flush(); flush(); full.push(performance.now() - t); }
  out.fullMed = med(full);
  // pan / zoom frames
  const frames = (label, step) => {
    const ts = [];
    for (let i = 0; i < repeats; i++) { step(i); const t = performance.now(); grid.flush(); flush(); ts.push(performance.now() - t); }
    out[label + 'Med'] = med(ts); out[label + 'P95'] = p95(ts);
  };
  const cx = grid.colX(0) + grid.plotW / 2, cy = grid.rowY(2 * grid.L - 1) + grid.plotH / 2;
  grid.fit();
  frames('zoomFit', (i) => { grid.fit(); grid.zoomAt(cx, cy, 1 + (i % 5) * 0.002); });
  frames('panFit', (i) => { grid.fit(); grid.zoomAt(cx, cy, 1.05); grid.panBy(i % 2 ? 3 : -3, 0); });
  grid.fit(); grid.zoomAt(cx, cy, 4);
  frames('zoom4', (i) => grid.zoomAt(cx + (i % 7) * 10, cy, i % 2 ? 1.1 : 1 / 1.1));
  frames('pan4', (i) => grid.panBy(i % 2 ? 25 : -20, i % 3 ? 5 : -5));
  grid.fit(); grid.flush();
  return out;
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve_copy(site: Path, static: Path | None):
    """Serve a copy of a site, its static/ replaced by `static` (None: kept)."""
    work = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    shutil.copytree(site, work / "site", ignore=shutil.ignore_patterns("static") if static else None)
    if static:
        shutil.copytree(static, work / "site" / "static")
    handler = functools.partial(_Quiet, directory=str(work / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return work, server, f"http://127.0.0.1:{server.server_address[1]}/"


def _page_timings(browser, url: str, width: int) -> dict:
    ctx = browser.new_context(viewport={"width": width, "height": 1000})
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function("() => document.documentElement.dataset.viewerReady")
    if page.evaluate("document.documentElement.dataset.viewerReady") != "1":
        raise SystemExit(f"viewer failed on {url}: " + page.inner_text("#error"))
    t = page.evaluate("""() => { const v = window.infoflowViewer.viewer;
        return {P: v.D.P, G: v.V.G, kb: v.D.bytes / 1024, decode: v.timings.decode, firstDraw: v.timings.firstDraw}; }""")
    ctx.close()
    return t


def gallery_pages(site: Path, browser, width: int, baseline: Path | None = None, repeats: int = 1) -> list[dict]:
    """Open every prompt page of a built site in a fresh context; the page's own timings.
    With `baseline` (the same gallery built by another version, its own static/ kept), each
    page is also opened there, alternately, so both are measured under the same machine load."""
    servers = {"new": _serve_copy(site, SRC / "static")}
    if baseline:
        servers["base"] = _serve_copy(baseline, None)
    rows = []
    try:
        for page_path in sorted((site / "p").glob("*.html")):
            row = {"page": page_path.stem}
            for name, (_, _, base) in servers.items():
                runs = [_page_timings(browser, base + "p/" + page_path.name, width) for _ in range(repeats)]
                t = dict(runs[0], decode=statistics.median(x["decode"] for x in runs),
                         firstDraw=statistics.median(x["firstDraw"] for x in runs),
                         decodes=[x["decode"] for x in runs], firstDraws=[x["firstDraw"] for x in runs])
                if name == "new":
                    row.update(t)
                else:
                    row.update(baseDecode=t["decode"], baseFirstDraw=t["firstDraw"])
            rows.append(row)
    finally:
        for work, server, _ in servers.values():
            server.shutdown()
            shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, default=ROOT / "build", help="a built gallery (infoflow build --out DIR)")
    ap.add_argument("--baseline", type=Path, help="the same gallery built by another version (its own pages and "
                    "static/), measured on every page alongside")
    ap.add_argument("--page-repeats", type=int, default=1, help="loads per page (median reported)")
    ap.add_argument("--positions", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--data", type=Path, help="reuse a data file instead of decomposing")
    ap.add_argument("--width", type=int, default=1400, help="viewport width (CSS px)")
    ap.add_argument("--dpr", type=float, default=1.0, help="device scale factor")
    args = ap.parse_args()

    import msgpack
    from playwright.sync_api import sync_playwright

    if args.data:
        data = args.data.read_bytes()
        doc = msgpack.unpackb(data, raw=False)
        prompt = doc["prompt"]
    else:
        data, prompt = make_data(args.positions)
        saved = Path(tempfile.gettempdir()) / f"infoflow-bench-P{args.positions}.msgpack"
        saved.write_bytes(data)
        print(f"data file saved to {saved} (reuse with --data)")
        doc = msgpack.unpackb(data, raw=False)

    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        render_site(site, data, prompt, doc["model"])
        handler = functools.partial(_Quiet, directory=str(site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/p/bench.html"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                ctx = browser.new_context(viewport={"width": args.width, "height": 1000},
                                          device_scale_factor=args.dpr, bypass_csp=True)
                per_page = gallery_pages(args.site, browser, args.width, args.baseline, args.page_repeats) if (args.site / "p").is_dir() else []
                per_page += gallery_pages(site, browser, args.width, None, args.page_repeats)   # the P = 128 page
                page = ctx.new_page()
                page.goto(url)
                page.wait_for_function("() => document.documentElement.dataset.viewerReady")
                if page.evaluate("document.documentElement.dataset.viewerReady") != "1":
                    raise SystemExit("viewer failed: " + page.inner_text("#error"))
                r = page.evaluate(MEASURE, [args.repeats])
                version = browser.version
                browser.close()
        finally:
            server.shutdown()

    if per_page:
        print(f"\nevery gallery page of {args.site}, and the P = {args.positions} page (fresh context each; "
              f"the page's own timings on page load, ms; median of {args.page_repeats})")
        base = "baseDecode" in per_page[0]
        print(f"{'page':24s} {'P':>4s} {'G':>4s} {'KB':>5s} {'decode':>7s} {'first draw':>10s}  ok (<= 150)"
              + ("   baseline: decode  first draw" if base else ""))
        for row in per_page:
            print(f"{row['page']:24s} {row['P']:4d} {row['G']:4d} {row['kb']:5.0f} {row['decode']:7.1f} "
                  f"{row['firstDraw']:10.1f}  {'yes' if row['firstDraw'] <= 150 else 'NO ':3s}"
                  + (f"  {row['baseDecode']:16.1f} {row['baseFirstDraw']:11.1f}" if "baseDecode" in row else ""))
        if base:
            ratio = statistics.median(r["firstDraw"] / r["baseFirstDraw"] for r in per_page if "baseFirstDraw" in r)
            print(f"median first-draw ratio new/baseline: {ratio:.2f}")
        worst = max(per_page, key=lambda x: x["firstDraw"])
        print(f"worst first draw: {worst['firstDraw']:.1f} ms ({worst['page']})")
    else:
        print(f"(no gallery at {args.site}: build one, or pass --site)")
    print(f"\nviewer benchmark: P={r['P']} L={r['L']} G={r['G']}, data file {r['bytes'] / 1024:.0f} KB, "
          f"canvas {r['cssW']}x{r['cssH']} CSS px at dpr {r['dpr']}")
    print(f"chromium {version} headless (--disable-gpu), {platform.machine()}, repeats={args.repeats}\n")
    # cold numbers: the median over --page-repeats fresh page loads (the per-page table's row),
    # as one load is at the mercy of whatever else the machine does in those 50 ms
    cold = per_page[-1]
    n = len(cold["decodes"])
    print(f"P = {args.positions} page, {n} fresh loads: decode " + " ".join(f"{x:.1f}" for x in cold["decodes"])
          + " ms; first draw " + " ".join(f"{x:.1f}" for x in cold["firstDraws"]) + " ms")
    rows = [
        ("data decode (median, warm)", r["decode"], 50),
        (f"data decode (cold: page load, median of {n})", cold["decode"], 50),
        ("data decode (cold: one more page load)", r["coldDecode"], None),
        (f"first full draw (page load, median of {n})", cold["firstDraw"], 150),
        ("first full draw (one more page load)", r["firstDraw"], None),
        ("full redraw (recompute + draw, median)", r["fullMed"], 150),
        ("zoom frame at fit, median", r["zoomFitMed"], 16),
        ("zoom frame at fit, p95", r["zoomFitP95"], None),
        ("pan frame at fit (z=1.05), median", r["panFitMed"], 16),
        ("zoom frame at 4x, median", r["zoom4Med"], 16),
        ("pan frame at 4x, median", r["pan4Med"], 16),
        ("pan frame at 4x, p95", r["pan4P95"], None),
    ]
    print("first draw, by part (ms):", {k: round(v, 1) for k, v in (r.get("parts") or {}).items()},
          f"; the rest of the file decoded in the background in {r.get('decodeRest') or 0:.0f} ms\n")
    print(f"{'measure':42s} {'ms':>8s} {'target':>8s}  ok")
    for name, ms, target in rows:
        ok = "" if target is None else ("yes" if ms <= target else "NO")
        print(f"{name:42s} {ms:8.1f} {('<= ' + str(target)) if target else '':>8s}  {ok}")


if __name__ == "__main__":
    main()
