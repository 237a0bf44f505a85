"""The live engine's logit lens alone, two builds side by side: topLogits() of engine-logits.js.

    .venv/bin/python benchmarks/bench_lens.py OLD_SITE [NEW_SITE] [--rows 32] [--reps 7]
    .venv/bin/python benchmarks/bench_lens.py SITE SITE --together     # one worker vs two at once

OLD_SITE and NEW_SITE are built sites (NEW_SITE defaults to build/); their
static/js/live/kernel.js, engine-logits.js and kernel .wasm files are copied side by side and
run in one browser, one module worker each, alternating. Each run is `480 / rows` calls of
topLogits() on `rows` random rows (d = 576) over 43,008 vocabulary rows: a lens helper's 7/8
of the default model's vocabulary (its share until the ninth session, kept so that runs
compare; 3/4 now), as it gets one layer's 2P rows at a time (32 rows at P = 16).
Prints each build's median time and rate, every run, and whether the two gave the same top-k
ids and log-sum-exp on the last call. Run by hand, never as a test: the machine is shared.

--together: each rep runs each build alone, then both at once (two workers, two threads), to
show whether two threads' lens products slow each other (the engine's calling thread and its
helper both unembed at the end of a run).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from _browser import served_page

ROOT = Path(__file__).resolve().parent.parent
FILES = ["kernel.js", "engine-logits.js", "kernel-sgemm.wasm", "kernel-sgemm-fma.wasm"]
V, D = 43008, 576

WORKER = """
const dir = new URL(location.href).searchParams.get("v");
const ready = Promise.all([import(`./${dir}/kernel.js`), import(`./${dir}/engine-logits.js`)])
  .then(async ([K, E]) => { await K.initKernel("fused"); return [K, E]; });
function rnd(n, seed) { const a = new Float32Array(n); let s = seed; for (let i = 0; i < n; i++) { s = (s * 1103515245 + 12345) >>> 0; a[i] = (s / 4294967296 - 0.5) * 0.2; } return a; }
let blocks = null;
onmessage = async (e) => {
  const [K, E] = await ready;
  const {V, d, rows, calls} = e.data;
  if (!blocks) blocks = E.packBlocks(rnd(V * d, 3), V, d);
  const X = rnd(rows * d, 5);
  const t = performance.now();
  let r;
  for (let c = 0; c < calls; c++) r = E.topLogits(X, rows, blocks, V, d, 5);
  postMessage({ms: performance.now() - t, ids: Array.from(r.ids), logZ: Array.from(r.logZ)});
};
"""

PAGE = """<!doctype html><meta charset=utf-8><title>bench_lens</title><script type="module">
const workers = {};
window.go = (a) => new Promise((res) => {
  const w = workers[a.v] || (workers[a.v] = new Worker(`worker.js?v=${a.v}`, {type: "module"}));
  w.onmessage = (e) => res(e.data);
  w.postMessage(a);
});
window.both = (a, b) => Promise.all([go(a), go(b)]);
</script>"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path, nargs="?", default=ROOT / "build")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--together", action="store_true", help="also time both builds at once")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-lens-"))
    for name, site in (("old", args.old), ("new", args.new)):
        (work / name).mkdir()
        for f in FILES:
            shutil.copy(site / "static" / "js" / "live" / f, work / name / f)
    (work / "worker.js").write_text(WORKER)
    (work / "index.html").write_text(PAGE)
    calls = max(1, 480 // args.rows)
    gflop = 2 * args.rows * D * V * calls / 1e9
    times: dict[str, list[float]] = {"old": [], "new": [], "old together": [], "new together": []}
    last = {}

    def request(v: str) -> dict:
        return {"v": v, "V": V, "d": D, "rows": args.rows, "calls": calls}

    with served_page(work) as tab:
        for i in range(args.reps):
            for v in ("old", "new") if i % 2 == 0 else ("new", "old"):
                r = tab.evaluate("(a) => go(a)", request(v))
                times[v].append(r["ms"])
                last[v] = r
            if args.together:
                ra, rb = tab.evaluate("([a, b]) => both(a, b)", [request("old"), request("new")])
                times["old together"].append(ra["ms"])
                times["new together"].append(rb["ms"])
    print(f"topLogits, {args.rows} rows × {V} vocabulary rows, {calls} calls per run ({gflop:.1f} GFLOP), "
          f"{args.reps} alternating runs; the first run of each (packing, compilation) left out of the median")
    runs = [("old", args.old), ("new", args.new)]
    if args.together:
        runs += [("old together", args.old), ("new together", args.new)]
    for v, site in runs:
        med = statistics.median(times[v][1:] or times[v])
        print(f"  {v} {site}: median {med:.0f} ms, {gflop * 1e3 / med:.1f} GFLOP/s; runs "
              + " ".join(f"{t:.0f}" for t in times[v]))
    same = last["old"]["ids"] == last["new"]["ids"]
    dz = max(abs(a - b) for a, b in zip(last["old"]["logZ"], last["new"]["logZ"]))
    print(f"  same top-k ids: {same}; largest log-sum-exp difference {dz:.2e}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
