"""Two versions of the live engine's matmul kernel side by side in headless Chromium.

    .venv/bin/python benchmarks/bench_kernel_compare.py [--old REV] [--rounds 3]

Takes site_src/static/js/live/kernel.js and kernel-sgemm.wasm from git revision --old (default
HEAD) and from the working tree, and times `matmul` of each (and the making of a Weight: copy, RMSNorm scale, transpose), in its
own module worker, on the
engine's shapes (the layer products at P = 32, T = 528, and unembedding blocks), alternating
old and new for --rounds rounds; best GFLOP/s of each. Also checks that both give the same
products (a checksum of the outputs). Run by hand, never as a test.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from _browser import served_page

ROOT = Path(__file__).resolve().parent.parent
LIVE = "site_src/static/js/live"
SHAPES = [(512, 576, 1536), (528, 576, 576), (528, 1536, 576), (32, 576, 1536), (1024, 576, 4096), (1024, 576, 256)]

WORKER = """
const K = await import(`./${new URL(location.href).searchParams.get("k")}/kernel.js`);
await K.initKernel();
function rnd(n, seed) { const a = new Float32Array(n); let s = seed; for (let i = 0; i < n; i++) { s = (s * 1103515245 + 12345) >>> 0; a[i] = s / 4294967296 - 0.5; } return a; }
const res = {};
for (const [m, k, n] of SHAPES) {
  const x = rnd(m * k, 1), w = rnd(n * k, 2), scale = rnd(k, 3), y = new Float32Array(m * n);
  let packMs = Infinity;                                   // making the weight: copy, scale, transpose
  for (let r = 0; r < 5; r++) { const t = performance.now(); new K.Weight(w, n, k, scale).dispose(); packMs = Math.min(packMs, performance.now() - t); }
  const W = new K.Weight(w, n, k);
  K.matmul(x, m, W, y);
  let best = Infinity;
  for (let r = 0; r < 5; r++) { const t = performance.now(); K.matmul(x, m, W, y); best = Math.min(best, performance.now() - t); }
  let sum = 0; for (let i = 0; i < y.length; i += 97) sum += y[i];
  res[`${m}×${k} · ${k}×${n}`] = {gflops: 2 * m * k * n / best / 1e6, check: sum, pack: packMs};
  W.dispose();
}
postMessage(res);
"""

PAGE = """<!doctype html><script type="module">
const run = (k) => new Promise((res, rej) => { const w = new Worker(`w.js?k=${k}`, {type: "module"}); w.onmessage = (e) => { res(e.data); w.terminate(); }; w.onerror = (e) => rej(new Error(`${k}: ${e.message}`)); });
window.go = async (rounds) => { const out = []; for (let i = 0; i < rounds; i++) for (const k of ["old", "new"]) out.push([k, await run(k)]); return out; };
</script>"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default="HEAD")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kernel-compare-"))
    (work / "old").mkdir()
    (work / "new").mkdir()
    for name in ("kernel.js", "kernel-sgemm.wasm", "kernel-sgemm-fma.wasm"):   # (no fma build before session 5)
        old = subprocess.run(["git", "show", f"{args.old}:{LIVE}/{name}"], cwd=ROOT, capture_output=True)
        if old.returncode == 0:
            (work / "old" / name).write_bytes(old.stdout)
        if (ROOT / LIVE / name).exists():
            shutil.copy(ROOT / LIVE / name, work / "new" / name)
    (work / "w.js").write_text(f"const SHAPES = {json.dumps(SHAPES)};\n" + WORKER)
    (work / "index.html").write_text(PAGE)
    try:
        with served_page(work) as page:
            out = page.evaluate(f"go({args.rounds})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best: dict[str, dict[str, float]] = {}
    check: dict[str, dict[str, float]] = {}
    pack: dict[str, dict[str, float]] = {}
    for which, res in out:
        for shape, r in res.items():
            best.setdefault(shape, {})[which] = max(best.get(shape, {}).get(which, 0), r["gflops"])
            pack.setdefault(shape, {})[which] = min(pack.get(shape, {}).get(which, 1e9), r["pack"])
            check.setdefault(shape, {})[which] = r["check"]
    print(f"kernel.js at {args.old} (old) and in the working tree (new); GFLOP/s, best of {args.rounds} rounds, one thread")
    print("| shape | old | new | new / old | same products | making W (scaled), ms: old / new |\n|---|---|---|---|---|---|")
    for shape, b in best.items():
        same = "yes" if check[shape]["old"] == check[shape]["new"] else "NO"
        print(f"| {shape} | {b['old']:.1f} | {b['new']:.1f} | {b['new'] / b['old']:.2f} | {same} | "
              f"{pack[shape]['old']:.2f} / {pack[shape]['new']:.2f} |")


if __name__ == "__main__":
    main()
