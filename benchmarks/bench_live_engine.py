"""The in-browser engine's speed, side by side with the Python engine, in one run.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_live_engine.py [--sizes 16,32] [--reps 3]

1. Matmul candidates in one module Web Worker of headless Chromium, float32, single thread:
   the engine's kernel (kernel.js: kernel-sgemm.wasm, weight resident and transposed, input
   and output copied in and out as the engine does), @tensorflow/tfjs-backend-wasm 4.22.0
   (npm-installed into a temp folder) used the same way, on resident tensors, and with the
   transposed-operand flag, and a plain JS i-k-j loop; then one layer's products including
   making the weights, both kernels, at P = 16 and 32.
2. engine.js on the default model at prompts of exactly P tokens (with the logit lens), weights
   already in the worker's memory (the live page's cached case), next to
   `infoflow.decompose` on the same prompts, alternating, best of --reps after a warm-up.
Run by hand, never as a test; the machine is shared, so read the ratios.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_live_engine import (ARGS, HARNESS_HTML, HARNESS_WORKER, RUN_IN_WORKER, STATIC,  # noqa: E402
                                     _Handler, engine_config)

WORKER = r"""
import {initKernel, Weight, matmul} from "/static/js/live/kernel.js";
import {decompose} from "/static/js/live/engine.js";
import "/npm/@tensorflow/tfjs-core/dist/tf-core.min.js";          // UMD builds set globalThis.tf
import "/npm/@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js";
const tf = globalThis.tf;

function rand(n) { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = Math.random() - 0.5; return a; }

function best(fn, minMs = 400) {                  // best time (ms) over repeats for ~minMs
  fn();
  let bestMs = Infinity, spent = 0;
  while (spent < minMs) {
    const t = performance.now(); fn(); const ms = performance.now() - t;
    bestMs = Math.min(bestMs, ms); spent += ms;
  }
  return bestMs;
}

function plainJs(x, w, m, k, n, out) {            // out[m, n] = x[m, k] · w[k, n], i-k-j
  out.fill(0);
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) {
    const a = x[i * k + p], wo = p * n, oo = i * n;
    for (let j = 0; j < n; j++) out[oo + j] += a * w[wo + j];
  }
}

// tfjs-backend-wasm used the way the engine would: W uploaded and transposed to [in, out] once,
// x copied in, y copied out.
class TfWeight {
  constructor(w, out, inDim, inScale = null) {
    this.out = out; this.in = inDim;
    this.t = tf.tidy(() => {
      let m = tf.tensor2d(w, [out, inDim]);
      if (inScale) m = tf.mul(m, tf.tensor1d(inScale));
      return tf.transpose(m);
    });
  }
  dispose() { this.t.dispose(); }
}
function tfMatmul(x, rows, w) {
  const a = tf.tensor2d(x.subarray(0, rows * w.in), [rows, w.in]);
  const y = tf.matMul(a, w.t);
  const out = y.dataSync();
  a.dispose(); y.dispose();
  return out;
}

async function kernels(shapes) {
  const info = await initKernel();
  tf.wasm.setWasmPaths("/npm/@tensorflow/tfjs-backend-wasm/dist/");
  await tf.setBackend("wasm");
  info.tfjs = `${tf.version_core} ${tf.getBackend()} simd=${await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT")}`;
  const rows = [];
  for (const [m, k, n] of shapes) {
    const x = rand(m * k), w = rand(n * k), flop = 2 * m * k * n, rate = (ms) => flop / ms / 1e6;
    const W = new Weight(w, n, k), T = new TfWeight(w, n, k);
    const a = tf.tensor2d(x, [m, k]), wRaw = tf.tensor2d(w, [n, k]);
    const y1 = matmul(x, m, W), y2 = tfMatmul(x, m, T);
    let diff = 0;
    for (let i = 0; i < y1.length; i++) diff = Math.max(diff, Math.abs(y1[i] - y2[i]));
    const wIn = T.t.dataSync(), out = new Float32Array(m * n);
    rows.push({shape: `${m}×${k} · ${k}×${n}`, max_diff: diff,
      own: rate(best(() => matmul(x, m, W))),
      tfjs: rate(best(() => tfMatmul(x, m, T))),
      tfjs_resident: rate(best(() => tf.matMul(a, T.t).dispose())),
      tfjs_transposed_flag: rate(best(() => tf.matMul(a, wRaw, false, true).dispose(), 150)),
      plain_js: rate(best(() => plainJs(x, wIn, m, k, n, out), 150))});
    a.dispose(); wRaw.dispose(); W.dispose(); T.dispose();
  }
  return {info, rows};
}

// One layer of the default model's shapes, the way the engine uses its kernel: each weight
// made once (norm folded in, transposed), then one product at P rows (forward pass) and one at
// T = P(P+1)/2 rows (decomposition).
function layerCost(P) {
  const T = P * (P + 1) / 2, d = 576, ff = 1536;
  const shapes = [[576, d, true], [192, d, true], [192, d, true], [d, 576, false], [ff, d, true], [ff, d, true], [d, ff, false]];
  const ws = shapes.map(([o, i]) => rand(o * i)), ln = rand(d), xT = rand(T * ff);
  const run = (Make, mm) => () => {
    const W = shapes.map(([o, i, fold], n) => new Make(ws[n], o, i, fold ? ln : null));
    W.forEach((w) => { mm(xT, P, w); mm(xT, T, w); });
    W.forEach((w) => w.dispose());
  };
  return {P, own_ms: best(run(Weight, matmul), 1500), tfjs_ms: best(run(TfWeight, tfMatmul), 1500)};
}

async function loadAll(url, config) {              // every tensor in memory, as after the cache
  const buf = await (await fetch(url)).arrayBuffer();
  const n = Number(new DataView(buf, 0, 8).getBigUint64(0, true));
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, n)));
  const get = (name) => meta[name] && new Float32Array(buf.slice(8 + n + meta[name].data_offsets[0], 8 + n + meta[name].data_offsets[1]));
  const L = (i, s) => get(`model.layers.${i}.${s}`);
  const layers = Array.from({length: config.n_layers}, (_, i) => ({
    inputNorm: L(i, "input_layernorm.weight"), q: L(i, "self_attn.q_proj.weight"), k: L(i, "self_attn.k_proj.weight"),
    v: L(i, "self_attn.v_proj.weight"), o: L(i, "self_attn.o_proj.weight"), postNorm: L(i, "post_attention_layernorm.weight"),
    gate: L(i, "mlp.gate_proj.weight"), up: L(i, "mlp.up_proj.weight"), down: L(i, "mlp.down_proj.weight")}));
  return {config, embed: get("model.embed_tokens.weight"), finalNorm: get("model.norm.weight"),
          lmHead: config.tie_embeddings ? null : get("lm_head.weight"), layer: async (i) => layers[i]};
}

let model = null;
self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.kind === "kernels") {
      const out = await kernels(msg.shapes);
      out.layers = msg.layerP.map(layerCost);
      self.postMessage({ok: true, out});
    }
    if (msg.kind === "load") { model = await loadAll(msg.url, msg.config); await initKernel(); self.postMessage({ok: true}); }
    if (msg.kind === "run") {
      const t = performance.now();
      const r = await decompose(model, Int32Array.from(msg.ids), {main: null},
                                {topK: 5, logitLens: msg.lens, heads: msg.heads !== false,
                                 ...(msg.threads ? {threads: msg.threads} : {})});
      self.postMessage({ok: true, wall_ms: performance.now() - t, timings: r.timings, top1: r.pred_ids[(msg.ids.length - 1) * 5]});
    }
  } catch (err) { self.postMessage({ok: false, message: String(err && err.stack || err)}); }
};
"""

NPM = ["@tensorflow/tfjs-core@4.22.0", "@tensorflow/tfjs-backend-wasm@4.22.0"]


def npm_cache() -> Path:
    """tfjs for the side-by-side comparison, installed once into a temp folder (not vendored:
    the site does not use it)."""
    folder = Path(tempfile.gettempdir()) / "live-engine-bench-npm"
    if not (folder / "node_modules" / "@tensorflow" / "tfjs-backend-wasm").exists():
        subprocess.run(["npm", "install", "--prefix", str(folder), "--ignore-scripts", *NPM],
                       check=True, capture_output=True)
    return folder / "node_modules"


CALL = """async (msg) => new Promise((resolve) => {
  if (!window.w) window.w = new Worker("/fixture/bench-worker.js", {type: "module"});
  window.w.onmessage = (e) => resolve(e.data);
  window.w.onerror = (e) => resolve({ok: false, message: e.message});
  window.w.postMessage(msg);
})"""

TEXT = ("The history of the city goes back more than two thousand years, to a small settlement on the "
        "river where traders met to exchange salt, grain and cloth, and later to a fortified town "
        "that guarded the only bridge for many miles. In the middle ages the town grew rich from the "
        "wool trade, built a cathedral and a market hall, and its merchants lent money to kings who "
        "needed it for their wars against the neighbours in the north and in the east")


def prompt_of(tokenizer, P: int) -> str:
    """The shortest prefix of TEXT (in words) that tokenizes to exactly P tokens."""
    words = TEXT.split(" ")
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        if len(tokenizer(text)["input_ids"]) == P:
            return text
    raise SystemExit(f"no prefix of the benchmark text has exactly {P} tokens")


def chromium_rss() -> tuple[int, int]:
    """(RSS of all Chromium processes, largest RSS of a renderer: the tab, its worker included)."""
    import psutil

    total = tab = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" in p.name():
                rss = p.memory_info().rss
                total += rss
                if "--type=renderer" in " ".join(p.cmdline()):
                    tab = max(tab, rss)
        except psutil.Error:
            pass
    return total, tab


def measure_memory(page, lm, P: int) -> None:
    """Peak RSS summed over Chromium's processes (an upper bound: shared pages count twice)."""
    ids = lm.tokenizer(prompt_of(lm.tokenizer, P))["input_ids"]
    base = chromium_rss()
    peak, done = list(base), threading.Event()

    def sample():
        while not done.is_set():
            now = chromium_rss()
            peak[:] = [max(a, b) for a, b in zip(peak, now)]
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    msg = {"url": "/fixture/default/model.safetensors", "config": engine_config(lm.hf),
           "runs": [{"ids": ids, "topK": 5, "logitLens": True, "variants": {"main": None}}]}
    reply = page.evaluate(RUN_IN_WORKER, msg)
    done.set()
    assert reply["ok"] and reply["results"][0]["ok"], reply
    tm = reply["results"][0]["result"]["timings"]
    print(f"## Memory at P = {P} (logit lens on; weights fetched layer by layer, embedding held)")
    print(f"Tab (renderer process, worker included): {base[1] / 2**20:.0f} MB before, peak "
          f"{peak[1] / 2**20:.0f} MB. All Chromium processes: {base[0] / 2**20:.0f} MB before, peak "
          f"{peak[0] / 2**20:.0f} MB (+{(peak[0] - base[0]) / 2**20:.0f} MB). Kernel memory "
          f"{tm['kernel_bytes'] / 2**20:.1f} MB; engine wall {tm['total_ms'] / 1e3:.1f} s")


def bench_heads(page, lm, args) -> None:
    """engine.js with heads (the live page's setting) and without, alternating in one worker."""
    print("## Engine, default model, logit lens on, with and without per-head data; best of", args.reps,
          "after a warm-up (median in brackets), alternating in one worker")
    print("| P | without heads | with heads | ratio | of which the heads' own work |")
    print("|---|---|---|---|---|")
    for P in [int(s) for s in args.sizes.split(",")]:
        ids = lm.tokenizer(prompt_of(lm.tokenizer, P))["input_ids"]
        times = {False: [], True: []}
        own = []
        for rep in range(args.reps + 1):
            for heads in (False, True):
                r = page.evaluate(CALL, {"kind": "run", "ids": ids, "lens": True, "threads": args.threads,
                                         "heads": heads})
                assert r["ok"], r
                if rep:
                    times[heads].append(r["wall_ms"] / 1e3)
                    if heads:
                        own.append(r["timings"]["heads_ms"] / 1e3)
        off, on = times[False], times[True]
        med = lambda a: sorted(a)[len(a) // 2]   # noqa: E731
        print(f"| {P} | {min(off):.2f} s ({med(off):.2f}) | {min(on):.2f} s ({med(on):.2f}) | "
              f"**{min(on) / min(off):.3f}×** ({med(on) / med(off):.3f}×) | {min(own):.3f} s ({med(own):.3f}) |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16,32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-kernels", action="store_true", help="skip the matmul comparison")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0: its default)")
    ap.add_argument("--no-engine", action="store_true", help="only the matmul comparison")
    ap.add_argument("--heads", action="store_true",
                    help="only: engine.js with and without per-head data, alternating, side by side")
    ap.add_argument("--memory", type=int, default=0, metavar="P",
                    help="only: peak RSS of all Chromium processes while the engine runs at P tokens, "
                         "weights fetched layer by layer as the live page does")
    args = ap.parse_args()
    from playwright import sync_api

    from infoflow.decompose import decompose, get_model
    from infoflow.model import converted_default_model

    lm = get_model(None)
    tmp = Path(tempfile.mkdtemp(prefix="live-engine-bench"))
    (tmp / "harness.html").write_text(HARNESS_HTML)
    (tmp / "bench-worker.js").write_text(WORKER)
    (tmp / "harness-worker.js").write_text(HARNESS_WORKER)
    (tmp / "default").mkdir()
    (tmp / "default" / "model.safetensors").symlink_to(Path(converted_default_model()) / "model.safetensors")
    (tmp / "model.safetensors").symlink_to(Path(converted_default_model()) / "model.safetensors")
    handler = functools.partial(_Handler, roots={"/static/": STATIC, "/fixture/": tmp, "/npm/": npm_cache()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        page = browser.new_page()
        page.goto(f"{base}/fixture/harness.html")
        print(f"Chromium {browser.version}, headless; the engine in one module worker (plus its helper "
              "workers when threads > 1); the kernel comparison on one thread\n")
        if args.memory:
            measure_memory(page, lm, args.memory)
            browser.close()
            return

        shapes = [] if args.no_kernels else [[512, 576, 1536], [528, 576, 576], [528, 1536, 576], [32, 576, 1536], [1024, 576, 4096]]
        out = page.evaluate(CALL, {"kind": "kernels", "shapes": shapes, "layerP": [16, 32] if shapes else []})
        assert out["ok"], out
        info = out["out"]["info"]
        if shapes:                      # (--no-kernels: no table, not an empty one)
            print(f"## Matmul, float32, GFLOP/s (best sample); kernel.js: {info['kernel']}; tfjs {info['tfjs']}")
            print("| shape | kernel.js (W resident, x in, y out) | tfjs-wasm, same use | tfjs-wasm, tensors resident | "
                  "tfjs-wasm, transposed flag | plain JS i-k-j | max abs diff kernel.js vs tfjs |")
            print("|---|---|---|---|---|---|---|")
            for r in out["out"]["rows"]:
                print(f"| {r['shape']} | {r['own']:.1f} | {r['tfjs']:.1f} | {r['tfjs_resident']:.1f} | "
                      f"{r['tfjs_transposed_flag']:.1f} | {r['plain_js']:.2f} | {r['max_diff']:.1e} |")
            print("\n## One layer as the engine uses it: 7 weights made (norm folded, transposed), "
                  "each used at P and at T = P(P+1)/2 rows; best ms")
            print("| P | kernel.js | tfjs-wasm |\n|---|---|---|")
            for r in out["out"]["layers"]:
                print(f"| {r['P']} | {r['own_ms']:.1f} | {r['tfjs_ms']:.1f} |")

        if args.no_engine:
            browser.close()
            return
        t = time.perf_counter()
        out = page.evaluate(CALL, {"kind": "load", "url": "/fixture/model.safetensors",
                                   "config": engine_config(lm.hf)})
        assert out["ok"], out
        print(f"\n(weights loaded into the worker in {time.perf_counter() - t:.1f} s, not timed below)\n")
        if args.heads:
            bench_heads(page, lm, args)
            browser.close()
            return
        print("## Engine, default model, logit lens on; best of", args.reps, "after a warm-up (median in brackets); "
              f"navigator.hardwareConcurrency = {page.evaluate('navigator.hardwareConcurrency')}")
        print("| P | engine.js in Chromium | of which layers / unembedding (in the matmul kernel) | "
              "`infoflow.decompose` | ratio | threads: MLP / unembedding |")
        print("|---|---|---|---|---|---|")
        for P in [int(s) for s in args.sizes.split(",")]:
            text = prompt_of(lm.tokenizer, P)
            ids = lm.tokenizer(text)["input_ids"]
            js, py, split = [], [], []
            for rep in range(args.reps + 1):
                r = page.evaluate(CALL, {"kind": "run", "ids": ids, "lens": True, "threads": args.threads})
                assert r["ok"], r
                t = time.perf_counter()
                d = decompose(text, lm)
                py_s = time.perf_counter() - t
                assert int(d.pred_ids[-1, 0]) == r["top1"]
                if rep:
                    js.append(r["wall_ms"] / 1e3)
                    py.append(py_s)
                    tm = r["timings"]
                    threads = (tm["mlp_threads"], tm["unembedding_threads"])
                    split.append((tm["layers_ms"] / 1e3, tm["logits_ms"] / 1e3,
                                  tm["layers_kernel_ms"] / 1e3, tm["logits_kernel_ms"] / 1e3))
            i = min(range(len(js)), key=js.__getitem__)
            med = sorted(js)[len(js) // 2], sorted(py)[len(py) // 2]
            print(f"| {P} | {min(js):.2f} s ({med[0]:.2f}) | {split[i][0]:.2f} ({split[i][2]:.2f}) / {split[i][1]:.2f} ({split[i][3]:.2f}) s | "
                  f"{min(py):.2f} s ({med[1]:.2f}) | **{min(js) / min(py):.2f}×** ({med[0] / med[1]:.2f}×) | "
                  f"{threads[0]} / {threads[1]} |")
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
