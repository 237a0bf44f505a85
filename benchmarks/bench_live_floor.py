"""The live engine's matmul floor: how long its products alone take in this browser.

    .venv/bin/python benchmarks/bench_live_floor.py [--P 16] [--threads 2] [--rounds 3]

Only the products of one decomposition of the default model (SmolLM2-135M: L = 30, d = 576,
d_ff = 1536, 3 KV heads of 64, vocabulary 49,152) at P tokens, with the logit lens, through
the live page's own kernel (site_src/static/js/live/kernel.js, the fused build where the
browser has relaxed SIMD):

  per layer, forward (P rows):        q, k, v, o, gate, up, down
  per layer, decomposition (T rows):  values (d -> 192), o_proj (d -> d), up (d -> d_ff),
                                      down (d_ff -> d);  T = P(P+1)/2
  unembedding (2·L·P + 2P rows):      every lens row, the predictions, the reconstruction check

Every product is split evenly over --threads module workers by output columns (the most
favourable split any engine could make), the weights are packed before the clock starts and
reused by every layer (so they may sit in cache), and nothing else runs: no attention
softmax, no statistics, no copies, no messages between layers. So this is a lower bound on
the engine's time, not an estimate of it. It prints the wall time from the start of the
products to the last worker's end, per round, and the rate. Run by hand, never as a test.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from _browser import served_page

ROOT = Path(__file__).resolve().parent.parent
LIVE = ROOT / "site_src" / "static" / "js" / "live"
L, D, FF, DKV, V = 30, 576, 1536, 192, 49152

WORKER = """
// onmessage is set at once: a message that arrives during a top-level await would be lost
const ready = import("./kernel.js").then(async (K) => [K, await K.initKernel("fused")]);
function rnd(n, seed) { const a = new Float32Array(n); let s = seed; for (let i = 0; i < n; i++) { s = (s * 1103515245 + 12345) >>> 0; a[i] = s / 4294967296 - 0.5; } return a; }
let plan = null;
onmessage = async (e) => {
  const [K, info] = await ready;
  if (e.data.kind === "plan") {           // pack this worker's columns of every weight, once
    plan = e.data.products.map(([rows, k, n], i) => {
      const W = new K.Weight(rnd(n * k, i + 7), n, k);
      return {rows, W, x: rnd(rows * k, i + 1), y: new Float32Array(rows * n), times: e.data.times[i]};
    });
    postMessage({ready: true, kernel: info.variant});
  } else {
    const t0 = performance.now();
    let flop = 0;
    for (const p of plan) for (let r = 0; r < p.times; r++) { K.matmul(p.x, p.rows, p.W, p.y); flop += 2 * p.rows * p.W.in * p.W.out; }
    postMessage({ms: performance.now() - t0, flop});
  }
};
"""

PAGE = """<!doctype html><script type="module">
const start = (plan) => new Promise((res, rej) => { const w = new Worker("w.js", {type: "module"});
  w.onmessage = (e) => res([w, e.data]); w.onerror = (e) => rej(new Error(e.message)); w.postMessage({kind: "plan", ...plan}); });
const go1 = (w) => new Promise((res) => { w.onmessage = (e) => res(e.data); w.postMessage({kind: "go"}); });
window.go = async (plans, rounds) => {
  const started = await Promise.all(plans.map(start));
  const workers = started.map(([w]) => w), out = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    const parts = await Promise.all(workers.map(go1));
    out.push({wall: performance.now() - t0, parts});
  }
  workers.forEach((w) => w.terminate());
  return {kernel: started[0][1].kernel, rounds: out};
};
</script>"""


def products(P: int, lens_rows: int | None = None) -> list[tuple[int, int, int, int]]:
    """(rows, in, out, times) of every product of one decomposition at P tokens; the
    unembedding in one product, or in products of `lens_rows` rows (as when it is streamed)."""
    T = P * (P + 1) // 2
    forward = [(P, D, D, L), (P, D, DKV, 2 * L), (P, D, D, L), (P, D, FF, 2 * L), (P, FF, D, L)]
    decomposition = [(T, D, DKV, L), (T, D, D, L), (T, D, FF, L), (T, FF, D, L)]
    N = 2 * L * P + 2 * P
    unembedding = [(N, D, V, 1)] if not lens_rows else [(lens_rows, D, V, N // lens_rows)]
    return forward + decomposition + unembedding


def split(prods, threads: int) -> list[dict]:
    """Each worker's columns of every product (multiples of 8, as the kernel pads them)."""
    plans = [{"products": [], "times": []} for _ in range(threads)]
    for rows, k, n, times in prods:
        step = -(-n // threads // 8) * 8
        for i, plan in enumerate(plans):
            cols = max(0, min(n, (i + 1) * step) - i * step)
            if cols:
                plan["products"].append([rows, k, cols])
                plan["times"].append(times)
    return plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--P", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lens-rows", type=int, default=None,
                    help="unembed in products of this many rows (the streamed lens sends 2P per layer)")
    args = ap.parse_args()

    prods = products(args.P, args.lens_rows)
    total = sum(2 * r * k * n * t for r, k, n, t in prods)
    work = Path(tempfile.mkdtemp(prefix="live-floor-"))
    for name in ("kernel.js", "kernel-sgemm.wasm", "kernel-sgemm-fma.wasm"):
        shutil.copy(LIVE / name, work / name)
    (work / "w.js").write_text(WORKER)
    (work / "index.html").write_text(PAGE)
    try:
        with served_page(work) as page:
            out = {t: page.evaluate("([plans, rounds]) => go(plans, rounds)", [split(prods, t), args.rounds])
                   for t in sorted({1, args.threads})}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"P = {args.P}: {total / 1e9:.1f} GFLOP of products ({out[1]['kernel']} kernel); "
          f"wall of the products alone, {args.rounds} rounds")
    for t, res in out.items():
        walls = [r["wall"] / 1000 for r in res["rounds"]]
        assert all(abs(sum(p["flop"] for p in r["parts"]) - total) < 1 for r in res["rounds"])
        print(f"  {t} thread{'s' if t > 1 else ' '}: best {min(walls):.3f} s, median {statistics.median(walls):.3f} s "
              f"({total / min(walls) / 1e9:.1f} GFLOP/s at best); rounds: "
              + ", ".join(f"{w:.3f}" for w in walls))


if __name__ == "__main__":
    main()
