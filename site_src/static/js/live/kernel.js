/**
 * The one matmul kernel of the in-browser engine: `y = x · Wᵀ` for a weight W stored as
 * PyTorch stores an nn.Linear weight, row-major [out, in].
 *
 * Backend: @tensorflow/tfjs-backend-wasm 4.22.0 (XNNPACK, WebAssembly SIMD, one thread),
 * vendored under static/vendor/tfjs/. Chosen by measurement (docs/performance.md, "In-browser
 * kernels"): ~30 GFLOP/s single-threaded here when the weight is held transposed, [in, out];
 * with tfjs's transposed-operand flag the same product runs at ~2.5 GFLOP/s. So a Weight
 * transposes once, inside the wasm heap, when it is made, and every product after that takes
 * the fast path. No threads: they need SharedArrayBuffer, hence cross-origin isolation
 * (COOP/COEP headers), which GitHub Pages cannot send; without it tfjs fetches only the
 * single-threaded SIMD binary. WebAssembly needs `'wasm-unsafe-eval'` in the CSP's script-src.
 *
 * The UMD builds are imported as ES modules for their side effect: they install
 * `globalThis.tf` (import maps, which the ESM builds would need, do not reach module workers).
 * Works in a module Web Worker and in a page.
 */
import "../../vendor/tfjs/tf-core.min.js";
import "../../vendor/tfjs/tf-backend-wasm.min.js";

const tf = globalThis.tf;
let ready = null;
let spentMs = 0;   // time inside matmul() and Weight(), for the engine's timings

/** Start the wasm backend once; resolves to {backend, simd}. */
export function initKernel() {
  if (!ready) {
    ready = (async () => {
      tf.wasm.setWasmPaths(new URL("../../vendor/tfjs/", import.meta.url).href);
      if (!(await tf.setBackend("wasm"))) {
        throw new Error("WebAssembly is not available in this browser; the live engine needs it.");
      }
      await tf.ready();
      return {backend: tf.getBackend(), simd: await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT")};
    })();
  }
  return ready;
}

/**
 * A linear layer's weight in the kernel's own memory, as Wᵀ [in, out].
 *   w      Float32Array [out·in], row-major [out, in] (the nn.Linear layout)
 *   inScale optional Float32Array [in]: folded in as W[o, i]·inScale[i] (an RMSNorm's weight)
 * dispose() frees it; a layer's weights live only while that layer is computed.
 */
export class Weight {
  constructor(w, out, inDim, inScale = null) {
    if (w.length !== out * inDim) {
      throw new Error(`weight has ${w.length} values, expected ${out}×${inDim}`);
    }
    const t0 = performance.now();
    this.out = out;
    this.in = inDim;
    this.t = tf.tidy(() => {
      let m = tf.tensor2d(w, [out, inDim]);
      if (inScale) m = tf.mul(m, tf.tensor1d(inScale));
      return tf.transpose(m);                                   // [in, out]
    });
    spentMs += performance.now() - t0;
  }

  dispose() {
    if (this.t) this.t.dispose();
    this.t = null;
  }
}

/** x · Wᵀ for `rows` rows of x (Float32Array [rows·in]) -> new Float32Array [rows·out]. */
export function matmul(x, rows, weight) {
  if (x.length < rows * weight.in) throw new Error("matmul: x is too short");
  const t0 = performance.now();
  const xs = x.length === rows * weight.in ? x : x.subarray(0, rows * weight.in);
  const a = tf.tensor2d(xs, [rows, weight.in]);
  const y = tf.matMul(a, weight.t);
  a.dispose();
  const out = y.dataSync();
  y.dispose();
  spentMs += performance.now() - t0;
  return out;
}

/** Milliseconds spent in the kernel (products and weight uploads) since the page started. */
export function kernelTime() {
  return spentMs;
}

/** Bytes the kernel holds in its heap now (for tests and the memory budget). */
export function kernelMemory() {
  return tf.memory().numBytes;
}
