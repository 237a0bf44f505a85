"""The in-browser engine's speed, side by side with the Python engine, in one run.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_live_engine.py [--sizes 16,32] [--reps 3]

1. Matmul candidates in one module Web Worker of headless Chromium, float32, single thread:
   the engine's kernel (kernel.js: tfjs-backend-wasm with the weight held transposed, input and
   output copied in and out as the engine does), raw tfjs on resident tensors, tfjs with the
   transposed-operand flag, and a plain JS i-k-j loop.
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

from tests.test_live_engine import ARGS, HARNESS_HTML, STATIC, _Handler, engine_config  # noqa: E402

WORKER = r"""
import {initKernel, Weight, matmul} from "/static/js/live/kernel.js";
import {decompose} from "/static/js/live/engine.js";
const tf = globalThis.tf;

function rand(n) { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = Math.random() - 0.5; return a; }

function best(fn, flop, minMs = 400) {            // best GFLOP/s over repeats for ~minMs
  fn();
  let bestMs = Infinity, spent = 0;
  while (spent < minMs) {
    const t = performance.now(); fn(); const ms = performance.now() - t;
    bestMs = Math.min(bestMs, ms); spent += ms;
  }
  return flop / bestMs / 1e6;
}

function plainJs(x, w, m, k, n, out) {            // out[m, n] = x[m, k] · w[k, n], i-k-j
  out.fill(0);
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) {
    const a = x[i * k + p], wo = p * n, oo = i * n;
    for (let j = 0; j < n; j++) out[oo + j] += a * w[wo + j];
  }
}

async function simdKernel(url) {               // the hand-written candidate, B resident in its memory
  const inst = (await WebAssembly.instantiateStreaming(fetch(url))).instance;
  const mem = inst.exports.memory;
  return (x, m, k, n, bIn) => {                  // like matmul(): copy x in, C out; B placed once
    const need = 4 * (m * k + k * n + m * n);
    if (mem.buffer.byteLength < need) mem.grow(Math.ceil((need - mem.buffer.byteLength) / 65536));
    const f = new Float32Array(mem.buffer);
    if (bIn) f.set(bIn, m * k);
    f.set(x, 0);
    inst.exports.sgemm(0, 4 * m * k, 4 * (m * k + k * n), m, k, n);
    return f.slice(m * k + k * n, m * k + k * n + m * n);
  };
}

async function kernels(shapes, simd) {
  const info = await initKernel();
  const own = await Promise.all(simd.map((u) => simdKernel(`/fixture/${u}`)));
  const rows = [];
  for (const [m, k, n] of shapes) {
    const x = rand(m * k), wOutIn = rand(n * k), flop = 2 * m * k * n;
    const W = new Weight(wOutIn, n, k);
    const a = tf.tensor2d(x, [m, k]), wt = W.t, wRaw = tf.tensor2d(wOutIn, [n, k]);
    const r = {shape: `${m}x${k} · ${k}x${n}`};
    r.engine_kernel = best(() => matmul(x, m, W), flop);
    r.tfjs_resident = best(() => tf.matMul(a, wt).dispose(), flop);
    r.tfjs_transposed_flag = best(() => tf.matMul(a, wRaw, false, true).dispose(), flop, 150);
    const wIn = wt.dataSync(), out = new Float32Array(m * n);
    simd.forEach((name, i) => {
      const y = own[i](x, m, k, n, wIn), ref = matmul(x, m, W);
      let err = 0;
      for (let j = 0; j < y.length; j++) err = Math.max(err, Math.abs(y[j] - ref[j]));
      r[name] = best(() => own[i](x, m, k, n, null), flop);
      r[name + " max|diff|"] = err;
    });
    r.plain_js = best(() => plainJs(x, wIn, m, k, n, out), flop, 150);
    a.dispose(); wRaw.dispose(); W.dispose();
    rows.push(r);
  }
  return {info, rows};
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
    if (msg.kind === "kernels") self.postMessage({ok: true, out: await kernels(msg.shapes, msg.simd)});
    if (msg.kind === "load") { model = await loadAll(msg.url, msg.config); await initKernel(); self.postMessage({ok: true}); }
    if (msg.kind === "run") {
      const t = performance.now();
      const r = await decompose(model, Int32Array.from(msg.ids), {main: null}, {topK: 5, logitLens: msg.lens});
      self.postMessage({ok: true, wall_ms: performance.now() - t, timings: r.timings, top1: r.pred_ids[(msg.ids.length - 1) * 5]});
    }
  } catch (err) { self.postMessage({ok: false, message: String(err && err.stack || err)}); }
};
"""

# The hand-written candidate: a register-blocked WebAssembly SIMD sgemm (R rows × 4·V columns of
# f32x4 accumulators), generated as WAT and assembled with wabt (npm wabt@1.0.39).
WAT_GEN = r"""
// Generates the WAT of a 4×8 register-blocked float32 SIMD kernel.
const R = +(process.argv[2] || 4), V = +(process.argv[3] || 2);
const acc = [];
for (let r = 0; r < R; r++) for (let v = 0; v < V; v++) acc.push(`$c${r}${v}`);
const lines = [];
lines.push(`(module
  (memory (export "memory") 1)
  ;; C[m, n] = A[m, k] · B[k, n], float32, row-major, byte offsets a, b, c.
  ;; m a multiple of ${R}, n a multiple of ${4 * V}. Loop order: an 8-column panel of B stays in L1
  ;; while every 4-row strip of A passes over it; 8 f32x4 accumulators in registers.
  (func (export "sgemm") (param $a i32) (param $b i32) (param $c i32) (param $m i32) (param $k i32) (param $n i32)
    (local $j i32) (local $i i32) (local $p i32) (local $pb i32) (local $lda i32) (local $ldb i32) (local $pc i32)
    ${Array.from({length: R}, (_, r) => `(local $pa${r} i32)`).join(" ")}
    ${acc.map((c) => `(local ${c} v128)`).join(" ")}
    ${Array.from({length: V}, (_, v) => `(local $b${v} v128)`).join(" ")} (local $x v128)
    (local.set $lda (i32.shl (local.get $k) (i32.const 2)))
    (local.set $ldb (i32.shl (local.get $n) (i32.const 2)))
    (local.set $j (i32.const 0))
    (block $jdone (loop $jloop
      (br_if $jdone (i32.ge_u (local.get $j) (local.get $n)))
      (local.set $i (i32.const 0))
      (block $idone (loop $iloop
        (br_if $idone (i32.ge_u (local.get $i) (local.get $m)))
        ${acc.map((c) => `(local.set ${c} (v128.const i32x4 0 0 0 0))`).join("\n        ")}
        (local.set $pa0 (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $lda))))
        ${Array.from({length: R - 1}, (_, r) => `(local.set $pa${r + 1} (i32.add (local.get $pa${r}) (local.get $lda)))`).join("\n        ")}
        (local.set $pb (i32.add (local.get $b) (i32.shl (local.get $j) (i32.const 2))))
        (local.set $p (local.get $k))
        (loop $ploop
${Array.from({length: V}, (_, v) => `          (local.set $b${v} (v128.load offset=${16 * v} (local.get $pb)))`).join("\n")}`);
for (let r = 0; r < R; r++) {
  lines.push(`          (local.set $x (v128.load32_splat (local.get $pa${r})))`);
  for (let v = 0; v < V; v++) {
    lines.push(`          (local.set $c${r}${v} (f32x4.add (local.get $c${r}${v}) (f32x4.mul (local.get $x) (local.get $b${v}))))`);
  }
  lines.push(`          (local.set $pa${r} (i32.add (local.get $pa${r}) (i32.const 4)))`);
}
lines.push(`          (local.set $pb (i32.add (local.get $pb) (local.get $ldb)))
          (local.set $p (i32.sub (local.get $p) (i32.const 1)))
          (br_if $ploop (local.get $p)))
        (local.set $pc (i32.add (local.get $c) (i32.add (i32.mul (local.get $i) (local.get $ldb)) (i32.shl (local.get $j) (i32.const 2)))))`);
for (let r = 0; r < R; r++) {
  for (let v = 0; v < V; v++) lines.push(`        (v128.store offset=${16 * v} (local.get $pc) (local.get $c${r}${v}))`);
  lines.push(`        (local.set $pc (i32.add (local.get $pc) (local.get $ldb)))`);
}
lines.push(`        (local.set $i (i32.add (local.get $i) (i32.const ${R})))
        (br $iloop)))
      (local.set $j (i32.add (local.get $j) (i32.const ${4 * V})))
      (br $jloop)))))`);
console.log(lines.join("\n"));
"""

WAT_BUILD = r"""
import fs from "fs";
import wabtInit from "wabt";
const wabt = await wabtInit();
const [src, out] = process.argv.slice(2);
const mod = wabt.parseWat(src, fs.readFileSync(src, "utf8"), {simd: true});
fs.writeFileSync(out, Buffer.from(mod.toBinary({}).buffer));
"""

SIMD_BLOCKS = [(4, 2), (4, 4)]


def build_simd_kernels(tmp: Path) -> list[str]:
    """kernel-simd-RxC.wasm for each block shape; wabt is installed into a cache folder once."""
    npm_dir = Path(tempfile.gettempdir()) / "live-engine-bench-wabt"
    if not (npm_dir / "node_modules" / "wabt").exists():
        subprocess.run(["npm", "install", "--prefix", str(npm_dir), "--ignore-scripts", "wabt@1.0.39"],
                       check=True, capture_output=True)
    (tmp / "gen.mjs").write_text(WAT_GEN)
    (npm_dir / "build.mjs").write_text(WAT_BUILD)
    names = []
    for r, v in SIMD_BLOCKS:
        wat = subprocess.run(["node", str(tmp / "gen.mjs"), str(r), str(v)], check=True, capture_output=True,
                             text=True).stdout
        (tmp / f"kernel-{r}x{4 * v}.wat").write_text(wat)
        name = f"kernel-simd-{r}x{4 * v}.wasm"
        subprocess.run(["node", str(npm_dir / "build.mjs"), str(tmp / f"kernel-{r}x{4 * v}.wat"), str(tmp / name)],
                       check=True, cwd=npm_dir)
        names.append(name)
    return names


CALL = """async (msg) => new Promise((resolve) => {
  if (!window.w) window.w = new Worker("/fixture/bench-worker.js", {type: "module"});
  window.w.onmessage = (e) => resolve(e.data);
  window.w.onerror = (e) => resolve({ok: false, message: e.message});
  window.w.postMessage(msg);
})"""

TEXT = ("The history of the city goes back more than two thousand years, to a small settlement on the "
        "river where traders met to exchange salt, grain and cloth, and later to a fortified town")


def prompt_of(tokenizer, P: int) -> str:
    """The shortest prefix of TEXT (in words) that tokenizes to exactly P tokens."""
    words = TEXT.split(" ")
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        if len(tokenizer(text)["input_ids"]) == P:
            return text
    raise SystemExit(f"no prefix of the benchmark text has exactly {P} tokens")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16,32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-kernels", action="store_true", help="skip the matmul comparison")
    ap.add_argument("--no-engine", action="store_true", help="only the matmul comparison")
    args = ap.parse_args()
    from playwright import sync_api

    from infoflow.decompose import decompose, get_model
    from infoflow.model import converted_default_model

    lm = get_model(None)
    tmp = Path(tempfile.mkdtemp(prefix="live-engine-bench"))
    (tmp / "harness.html").write_text(HARNESS_HTML)
    (tmp / "bench-worker.js").write_text(WORKER)
    (tmp / "model.safetensors").symlink_to(Path(converted_default_model()) / "model.safetensors")
    handler = functools.partial(_Handler, roots={"/static/": STATIC, "/fixture/": tmp})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        page = browser.new_page()
        page.goto(f"{base}/fixture/harness.html")
        print(f"Chromium {browser.version}, headless; one module worker, single thread\n")

        shapes = [] if args.no_kernels else [[512, 576, 1536], [528, 576, 576], [528, 1536, 576], [32, 576, 1536], [1024, 576, 4096]]
        simd = build_simd_kernels(tmp) if shapes else []
        out = page.evaluate(CALL, {"kind": "kernels", "shapes": shapes, "simd": simd})
        assert out["ok"], out
        print(f"## Matmul, float32, GFLOP/s (best sample), backend {out['out']['info']}")
        print("| shape | engine kernel (tfjs-wasm, W held [in,out], copies in/out) | tfjs-wasm resident | "
              "tfjs-wasm transposed flag | plain JS i-k-j | " + " | ".join(f"own SIMD {n[12:-5]} (copies in/out)" for n in simd)
              + " |\n|---|---|---|---|---|" + "---|" * len(simd))
        for r in out["out"]["rows"]:
            print(f"| {r['shape']} | {r['engine_kernel']:.1f} | {r['tfjs_resident']:.1f} | "
                  f"{r['tfjs_transposed_flag']:.1f} | {r['plain_js']:.2f} | "
                  + " | ".join(f"{r[n]:.1f} (max diff {r[n + ' max|diff|']:.0e})" for n in simd) + " |")

        if args.no_engine:
            browser.close()
            return
        t = time.perf_counter()
        out = page.evaluate(CALL, {"kind": "load", "url": "/fixture/model.safetensors",
                                   "config": engine_config(lm.hf)})
        assert out["ok"], out
        print(f"\n(weights loaded into the worker in {time.perf_counter() - t:.1f} s, not timed below)\n")
        print("## Engine, default model, logit lens on; best of", args.reps, "after a warm-up (median in brackets)")
        print("| P | engine.js in Chromium | of which layers / unembedding (in the matmul kernel) | "
              "`infoflow.decompose` | ratio |")
        print("|---|---|---|---|---|")
        for P in [int(s) for s in args.sizes.split(",")]:
            text = prompt_of(lm.tokenizer, P)
            ids = lm.tokenizer(text)["input_ids"]
            js, py, split = [], [], []
            for rep in range(args.reps + 1):
                r = page.evaluate(CALL, {"kind": "run", "ids": ids, "lens": True})
                assert r["ok"], r
                t = time.perf_counter()
                d = decompose(text, lm)
                py_s = time.perf_counter() - t
                assert int(d.pred_ids[-1, 0]) == r["top1"]
                if rep:
                    js.append(r["wall_ms"] / 1e3)
                    py.append(py_s)
                    tm = r["timings"]
                    split.append((tm["layers_ms"] / 1e3, tm["logits_ms"] / 1e3,
                                  tm["layers_kernel_ms"] / 1e3, tm["logits_kernel_ms"] / 1e3))
            i = min(range(len(js)), key=js.__getitem__)
            med = sorted(js)[len(js) // 2], sorted(py)[len(py) // 2]
            print(f"| {P} | {min(js):.2f} s ({med[0]:.2f}) | {split[i][0]:.2f} ({split[i][2]:.2f}) / {split[i][1]:.2f} ({split[i][3]:.2f}) s | "
                  f"{min(py):.2f} s ({med[1]:.2f}) | **{min(js) / min(py):.2f}×** ({med[0] / med[1]:.2f}×) |")
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
