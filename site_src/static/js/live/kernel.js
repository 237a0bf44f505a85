/**
 * The one matmul kernel of the in-browser engine: `y = x · Wᵀ` for a weight W stored as
 * PyTorch stores an nn.Linear weight, row-major [out, in]. The same WebAssembly module also
 * packs weights, dequantizes Q4_1 blocks (dequantizeFast), does the logit lens's per-block
 * maxima and exp-sums (lensProducts), the attention's mixing over the triangle (mixHeads) and
 * the statistics' row sums and norms (rowStats, rowSums): the loops that cost most outside the
 * products in JS.
 *
 * Backend: kernel-sgemm-fma.wasm where the browser has relaxed SIMD (fused multiply-add, the
 * default), else kernel-sgemm.wasm (mul then add, the same bits on every machine): two builds of
 * one 4 × 8 register-blocked WebAssembly SIMD sgemm (source and build commands in
 * kernel-sgemm.wat), one thread. Chosen by measurement over
 * @tensorflow/tfjs-backend-wasm (docs/history/performance-2026.md, "In-browser kernels"): on resident
 * weights the two run at about the same rate, but the engine uses each layer weight for only
 * two products (the forward pass and the decomposition), and tfjs/XNNPACK spends more time
 * uploading, transposing and packing a weight than those products take at small prompts. Here
 * a Weight is written once, transposed to [in, out] (with an RMSNorm weight folded in), into the
 * kernel's own memory, and products read it in place.
 *
 * No threads: they need SharedArrayBuffer, hence cross-origin isolation (COOP/COEP headers),
 * which GitHub Pages cannot send. WebAssembly needs `'wasm-unsafe-eval'` in the CSP's
 * script-src. Works in a module Web Worker and in a page.
 */

const WASM = {
  fused: {url: new URL("./kernel-sgemm-fma.wasm", import.meta.url),
          label: "kernel-sgemm-fma.wasm (WebAssembly SIMD, 4×8 blocks, fused multiply-add, one thread)"},
  plain: {url: new URL("./kernel-sgemm.wasm", import.meta.url),
          label: "kernel-sgemm.wasm (WebAssembly SIMD, 4×8 blocks, one thread)"},
};
const ROWS_PER_CALL = 64;    // rows of x per sgemm call: the strip of x stays in L2
const FLOAT = 4;

let ready = null;
let variant = null;          // "fused" | "plain": the module loaded
let sgemm = null;            // (a, b, c, m, k, n) byte offsets, m % 4 == 0, n % 8 == 0
let expsum = null;           // (x, rows, cols, ld, m, out) byte offsets, cols % 4 == 0
let rowmax = null;           // (x, rows, cols, ld, out) byte offsets, cols % 4 == 0
let q41 = null;              // (src, blocks, dst) byte offsets
let pack = null;             // (src, rows, cols, dst, scale) byte offsets, rows % 8 == 0
let rowstats = null;         // (a, b, r, ri, n, d, ldr, out) byte offsets (rowStats below)
let rowsum = null;           // (x, ri, n, d, out, wide) byte offsets (rowSums below)
let panels = null;           // (src, k, n, dst) byte offsets, n % 8 == 0: a transposed weight's panels
let mixheads = null;         // (v, pattern, start, offset, S, P, H, rep, hd, o) (mixHeads below)
let memory = null;
const live = new Set();      // blocks [start, end) in floats, held by live Weights
let top = 0;                 // first free float past every live block
let spentMs = 0;             // time inside matmul() and Weight(), for the engine's timings

async function fetchModule(which) {
  const response = await fetch(WASM[which].url);
  if (!response.ok) throw new Error(`could not load ${WASM[which].url} (HTTP ${response.status})`);
  return response.arrayBuffer();
}

/**
 * Load the kernel once; resolves to {kernel, variant, simd}. Rejects with a message a user can
 * act on. `want`: "fused" (the default: the fused multiply-add build where the browser validates
 * relaxed SIMD, else the plain one) or "plain" (always the plain build: the same bits on every
 * machine; the engine's helper workers are told the variant their caller loaded). A worker
 * loads one variant: asking for the other one afterwards rejects.
 */
export function initKernel(want = "fused") {
  if (want !== "fused" && want !== "plain") return Promise.reject(new Error(`unknown kernel variant ${want}`));
  if (ready && want === "plain") {
    return ready.then((info) => (info.variant === "plain" ? info
      : Promise.reject(new Error("initKernel: this worker already loaded the fused kernel"))));
  }
  if (!ready) {
    ready = (async () => {
      if (typeof WebAssembly !== "object") {
        throw new Error("This browser has no WebAssembly; the live engine needs it.");
      }
      let which = want, bytes = await fetchModule(which);
      if (which === "fused" && !WebAssembly.validate(bytes)) {       // no relaxed SIMD here
        which = "plain";
        bytes = await fetchModule(which);
      }
      if (!WebAssembly.validate(bytes)) {
        throw new Error("This browser lacks WebAssembly SIMD (Chrome/Edge 91+, Firefox 89+, " +
                        "Safari 16.4+); the live engine needs it.");
      }
      const {instance} = await WebAssembly.instantiate(bytes);
      sgemm = instance.exports.sgemm;
      expsum = instance.exports.expsum;
      rowmax = instance.exports.rowmax;
      q41 = instance.exports.q4_1;
      pack = instance.exports.pack;
      rowstats = instance.exports.rowstats;
      rowsum = instance.exports.rowsum;
      panels = instance.exports.panels;
      mixheads = instance.exports.mixheads;
      memory = instance.exports.memory;
      variant = which;
      return {kernel: WASM[which].label, variant: which, simd: true};
    })();
    ready.catch(() => { ready = null; });
  }
  return ready;
}

/** The variant loaded ("fused" | "plain"), null before initKernel(). */
export function kernelVariant() {
  return variant;
}

function ensure(floats) {
  const need = floats * FLOAT - memory.buffer.byteLength;
  if (need > 0) memory.grow(Math.ceil(need / 65536));
}

function alloc(floats) {
  const block = {start: top, end: top + Math.ceil(floats / 4) * 4};   // 16-byte aligned
  ensure(block.end);
  live.add(block);
  top = block.end;
  return block;
}

function free(block) {
  live.delete(block);
  top = 0;
  for (const b of live) top = Math.max(top, b.end);
}

/**
 * A linear layer's weight in the kernel's memory, as Wᵀ [in, out] (out padded to a multiple
 * of 8 with zero columns), packed in panels of 8 columns.
 *   w       Float32Array [out·in], row-major [out, in] (the nn.Linear layout); not kept
 *   inScale optional Float32Array [in]: folded in as W[o, i]·inScale[i] (an RMSNorm's weight)
 *   transposed: w is given as Wᵀ, row-major [in, out] (no inScale): each panel is then 8
 *           contiguous values of every row, copied without a transpose (kernel-sgemm.wat's
 *           panels); with q4_1, the blocks are Wᵀ's rows
 *   q4_1:   w is given as W's GGUF Q4_1 blocks (Uint8Array, 20 bytes per 32 values, rows of W
 *           in order): they are dequantized straight into the kernel's memory and packed from
 *           there, the same values as dequantizeFast() then a Float32Array W, without the two
 *           copies of W through JavaScript (~110 ms of a P = 16 run, docs/history/performance-2026.md,
 *           ninth session)
 * dispose() frees it; a layer's weights live only while that layer is computed.
 */
export class Weight {
  constructor(w, out, inDim, inScale = null, {transposed = false, q4_1 = false} = {}) {
    if (!sgemm) throw new Error("initKernel() first");
    const values = q4_1 ? (w.byteLength / 20) * 32 : w.length;
    if (values !== out * inDim) throw new Error(`weight has ${values} values, expected ${out}×${inDim}`);
    if (transposed && inScale) throw new Error("Weight: a transposed weight takes no inScale");
    const t0 = performance.now();
    this.out = out;
    this.in = inDim;
    this.ld = Math.ceil(out / 8) * 8;                         // columns of Wᵀ, padded
    this.block = alloc(inDim * this.ld);
    // Panel o/8 of Wᵀ is [in, 8] contiguous, at float (o/8)·in·8 + i·8 + o%8 (kernel-sgemm.wat
    // says why)
    if (transposed) {
      // Wᵀ [in, out] goes past every live block, zero-padded to ld columns, and
      // kernel-sgemm.wat's panels copies each panel's 8 columns of every row
      const src = top, ld = this.ld, given = ld === out ? src : src + inDim * ld;   // Wᵀ as given: `out` apart
      const blocks = given + inDim * out;
      ensure(q4_1 ? blocks + Math.ceil(w.byteLength / 16) * 4 : blocks);
      const F = new Float32Array(memory.buffer);
      if (q4_1) unpackQ4_1(w, blocks, given);
      else F.set(w, given);
      if (given !== src) {                            // spread the rows to ld floats, zero-padded
        for (let i = 0; i < inDim; i++) {
          F.copyWithin(src + i * ld, given + i * out, given + (i + 1) * out);
          F.fill(0, src + i * ld + out, src + (i + 1) * ld);
        }
      }
      panels(src * FLOAT, inDim, ld, this.block.start * FLOAT);
    } else {
      // W, zero-padded to ld rows, and the scale go past every live block (this one included);
      // kernel-sgemm.wat's pack writes Wᵀ[i, o] = W[o, i]·s[i] into the block's panels
      const src = top, scale = src + this.ld * inDim, blocks = scale + Math.ceil(inDim / 4) * 4;
      ensure(q4_1 ? blocks + Math.ceil(w.byteLength / 16) * 4 : scale + (inScale ? inDim : 0));
      const F = new Float32Array(memory.buffer);
      if (q4_1) {                                     // the blocks go past the scale, W into src
        unpackQ4_1(w, blocks, src);
      } else {
        F.set(w, src);
      }
      if (this.ld !== out) F.fill(0, src + out * inDim, src + this.ld * inDim);
      if (inScale) F.set(inScale, scale);
      pack(src * FLOAT, this.ld, inDim, this.block.start * FLOAT, inScale ? scale * FLOAT : 0);
    }
    spentMs += performance.now() - t0;
  }

  dispose() {
    if (this.block) free(this.block);
    this.block = null;
  }
}

/**
 * x · Wᵀ for `rows` rows of x (Float32Array [rows·in]) -> Float32Array [rows·out], written into
 * `into` (its first rows·out values; returned as that view) when given, else a new array.
 * Reusing one buffer matters: a fresh tens-of-MB array per product is garbage the tab holds
 * until the collector runs.
 */
export function matmul(x, rows, weight, into = null) {
  if (!weight.block) throw new Error("matmul: the weight was disposed");
  if (x.length < rows * weight.in) throw new Error("matmul: x is too short");
  const t0 = performance.now();
  const k = weight.in, n = weight.ld, out = weight.out;
  if (into && into.length < rows * out) throw new Error("matmul: the output buffer is too short");
  const y = into ? into.subarray(0, rows * out) : new Float32Array(rows * out);
  const a = top, c = top + ROWS_PER_CALL * k;                // scratch past the live weights
  ensure(c + ROWS_PER_CALL * n);
  const F = new Float32Array(memory.buffer);
  for (let r0 = 0; r0 < rows; r0 += ROWS_PER_CALL) {
    const m = Math.min(ROWS_PER_CALL, rows - r0), m4 = Math.ceil(m / 4) * 4;
    F.set(x.subarray(r0 * k, (r0 + m) * k), a);
    if (m4 > m) F.fill(0, a + m * k, a + m4 * k);
    sgemm(a * FLOAT, weight.block.start * FLOAT, c * FLOAT, m4, k, n);
    if (n === out) {
      y.set(F.subarray(c, c + m * n), r0 * out);
    } else {
      for (let i = 0; i < m; i++) y.set(F.subarray(c + i * n, c + i * n + out), (r0 + i) * out);
    }
  }
  spentMs += performance.now() - t0;
  return y;
}

/**
 * The logit lens's inner loop, without copies: the rows of x (Float32Array [rows·in]) are
 * written into the kernel's memory once, then for each weight (a vocabulary block of W_U) and
 * each chunk of up to ROWS_PER_CALL rows, the chunk's logits x · Wᵀ stay where the product
 * wrote them while their maxima and exp-sums are taken in place. For block b, whose columns
 * start at `col` of the concatenated blocks, and row r:
 *   logits[r, c] = x[r] · W[c] (+ bias[col + c] for r < biasRows)
 *   blockMax[r] = max_c logits[r, c];  mNew[r] = max(mPrev[r], blockMax[r]);
 *   sums[r] = Σ_c exp(logits[r, c] − mNew[r])
 *   (mPrev, blockMax, mNew, sums: Float64Array (rows); the caller moves mNew into mPrev in visit)
 *   visit(b, r0, m, F, off, ld) once per chunk of rows r0 .. r0 + m − 1: F a Float32Array over
 *   the kernel's memory, logits[r0 + i, c] at F[off + i·ld + c]; valid only during the call
 * Blocks outside, chunks inside: a block (576 KB for the default model) stays in cache while
 * every chunk passes over it. kernel-sgemm.wat's rowmax and expsum (SIMD; exp float32-accurate,
 * summed in float64) take the first multiple of 4 columns, JS with Math.exp the rest. Copying x
 * in and every block of logits out and back (matmul, then a separate pass) cost about as much
 * as the exp-sums at 32 rows.
 */
export function lensProducts(x, rows, weights, {mPrev, blockMax, mNew, sums, bias = null, biasRows = 0}, visit) {
  const t0 = performance.now();
  let visitMs = 0;                   // the caller's JS, not the kernel's time
  const k = weights[0].in, rows4 = Math.ceil(rows / 4) * 4, R = ROWS_PER_CALL;
  const ldMax = Math.max(...weights.map((w) => w.ld));
  const a = top, c = a + rows4 * k, mo = Math.ceil((c + R * ldMax) / 2) * 2;   // x, logits, f64 [maxima | m, sums]
  ensure(mo + 4 * R);
  const F = new Float32Array(memory.buffer);
  const D = new Float64Array(memory.buffer, mo * FLOAT, 2 * R);
  F.set(x.subarray(0, rows * k), a);
  F.fill(0, a + rows * k, a + rows4 * k);                          // the last chunk's padding rows
  for (let b = 0, col = 0; b < weights.length; col += weights[b].out, b++) {
    const w = weights[b], n = w.ld, cols = w.out, c4 = cols & ~3;
    if (!w.block) throw new Error("lensProducts: the weight was disposed");
    if (w.in !== k) throw new Error("lensProducts: weights of different widths");
    for (let r0 = 0; r0 < rows; r0 += R) {
      const m = Math.min(R, rows - r0), m4 = Math.ceil(m / 4) * 4;
      sgemm((a + r0 * k) * FLOAT, w.block.start * FLOAT, c * FLOAT, m4, k, n);
      if (bias) {
        for (let i = 0; i < Math.min(m, biasRows - r0); i++) {
          for (let j = 0; j < cols; j++) F[c + i * n + j] += bias[col + j];
        }
      }
      if (c4) rowmax(c * FLOAT, m, c4, n, mo * FLOAT);
      for (let i = 0; i < m; i++) {
        let mx = c4 ? D[i] : -Infinity;
        for (let j = c4; j < cols; j++) mx = Math.max(mx, F[c + i * n + j]);
        blockMax[r0 + i] = mx;
        mNew[r0 + i] = D[m + i] = Math.max(mPrev[r0 + i], mx);
      }
      if (c4) expsum(c * FLOAT, m, c4, n, (mo + 2 * m) * FLOAT, mo * FLOAT);
      for (let i = 0; i < m; i++) {
        let s = c4 ? D[i] : 0;
        for (let j = c4; j < cols; j++) s += Math.exp(F[c + i * n + j] - mNew[r0 + i]);
        sums[r0 + i] = s;
      }
      const v0 = performance.now();
      visit(b, r0, m, F, c, n);
      visitMs += performance.now() - v0;
    }
  }
  spentMs += performance.now() - t0 - visitMs;
}

/**
 * GGUF Q4_1 blocks (Uint8Array, 20 bytes per 32 values) -> out (Float32Array), by
 * kernel-sgemm.wat's q4_1: bit for bit dequant.js's dequantizeInto, ~9× faster. Returns false
 * (nothing done) for other types or before initKernel(), so it fits dequantizeTensor's `fast`.
 */
export function dequantizeFast(type, bytes, out) {
  if (type !== "Q4_1" || !q41) return false;
  const blocks = bytes.byteLength / 20;
  if (!Number.isInteger(blocks) || blocks * 32 !== out.length) return false;   // dequant.js says why
  const src = top, dst = top + Math.ceil(bytes.byteLength / 16) * 4;          // floats; 16-byte aligned
  ensure(dst + out.length);
  unpackQ4_1(bytes, src, dst);
  out.set(new Float32Array(memory.buffer, dst * FLOAT, out.length));
  return true;                       // not in kernelTime(): that is the products' time
}

/** Q4_1 blocks (Uint8Array) copied into the kernel's memory at float offset `at`, then
 * dequantized by kernel-sgemm.wat's q4_1 to floats from offset `dst` (both already ensured). */
function unpackQ4_1(bytes, at, dst) {
  new Uint8Array(memory.buffer, at * FLOAT, bytes.byteLength).set(bytes);
  q41(at * FLOAT, bytes.byteLength / 20, dst * FLOAT);
}

/**
 * Per-row sums of squares and a dot product, in float64 (kernel-sgemm.wat's rowstats): for each
 * of n rows i, out[3i] = Σ_j a[i, j]², out[3i + 1] = Σ_j b[i, j]², out[3i + 2] = Σ_j a[i, j]·
 * r[rOffset + ri[i]·ldr + j].   a, b: Float32Array (n, d); r: Float32Array; ri: Int32Array (n)
 * -> Float64Array (3n). The engine's statistics (norms and shares) ran as JavaScript loops at
 * ~3 ns an element; this is the same float64 arithmetic in SIMD lanes
 * (docs/history/performance-2026.md, tenth session).
 */
export function rowStats(a, b, r, ri, n, d, {ldr = d, rOffset = 0} = {}) {
  let rows = 0;
  for (let i = 0; i < n; i++) rows = Math.max(rows, ri[i] + 1);
  const rLen = n ? (rows - 1) * ldr + d : 0;
  if (a.length < n * d || b.length < n * d || r.length < rOffset + rLen) throw new Error("rowStats: arrays too short");
  const A = top, B = A + n * d, R = B + n * d, RI = R + rLen, O = Math.ceil((RI + n) / 2) * 2;
  ensure(O + 6 * n);
  const F = new Float32Array(memory.buffer);
  F.set(a.subarray(0, n * d), A);
  F.set(b.subarray(0, n * d), B);
  F.set(r.subarray(rOffset, rOffset + rLen), R);
  new Int32Array(memory.buffer, RI * FLOAT, n).set(ri.subarray(0, n));
  rowstats(A * FLOAT, B * FLOAT, R * FLOAT, RI * FLOAT, n, d, ldr, O * FLOAT);
  return new Float64Array(memory.buffer, O * FLOAT, 3 * n).slice();
}

/**
 * out[ri[i]] += x[i] over n rows of d floats, in row order (kernel-sgemm.wat's rowsum), into a
 * zeroed (rowsOut, d) array: Float32Array, or Float64Array with wide (each float32 promoted);
 * written into `into` (of that type and size) when given. The same bits as the JavaScript loop
 * over Float32Array / Float64Array rows.
 */
export function rowSums(x, ri, n, d, rowsOut, wide = false, into = null) {
  for (let i = 0; i < n; i++) if (!(ri[i] >= 0 && ri[i] < rowsOut)) throw new Error("rowSums: row index out of range");
  if (x.length < n * d) throw new Error("rowSums: x is too short");
  const X = top, RI = X + n * d, O = Math.ceil((RI + n) / 4) * 4, size = rowsOut * d * (wide ? 2 : 1);
  ensure(O + size);
  const F = new Float32Array(memory.buffer);
  F.set(x.subarray(0, n * d), X);
  new Int32Array(memory.buffer, RI * FLOAT, n).set(ri.subarray(0, n));
  F.fill(0, O, O + size);
  rowsum(X * FLOAT, RI * FLOAT, n, d, O * FLOAT, wide ? 1 : 0);
  const sums = wide ? new Float64Array(memory.buffer, O * FLOAT, rowsOut * d) : F.subarray(O, O + rowsOut * d);
  if (!into) return sums.slice();
  into.set(sums);
  return into;
}

/**
 * The attention's mixing of the values over the packed causal triangle (kernel-sgemm.wat's
 * mixheads): O[row(p, s), h] = Σ_{t = start[s]}^{p} pattern[h, p, t] · V[row(t, s), h / (H / KV)]
 * per head of hd values, summed over t in order in float32.   V (T, KV·hd), pattern (H, P, P),
 * tri: engine-stats.js triangle() -> into (T, H·hd). hd a multiple of 4.
 */
export function mixHeads(V, pattern, tri, H, KV, hd, into) {
  const {T, S, P} = tri, dkv = KV * hd, dh = H * hd;
  if (hd % 4 || H % KV || V.length < T * dkv || pattern.length < H * P * P || into.length < T * dh) {
    throw new Error("mixHeads: shapes");
  }
  const v = top, pat = v + T * dkv, st = pat + H * P * P, off = st + S, o = Math.ceil((off + S + 1) / 4) * 4;
  ensure(o + T * dh);
  const F = new Float32Array(memory.buffer), I = new Int32Array(memory.buffer);
  F.set(V.subarray(0, T * dkv), v);
  F.set(pattern.subarray(0, H * P * P), pat);
  I.set(tri.start, st);
  I.set(tri.offset, off);
  mixheads(v * FLOAT, pat * FLOAT, st * FLOAT, off * FLOAT, S, P, H, H / KV, hd, o * FLOAT);
  into.set(F.subarray(o, o + T * dh));
  return into;
}

/** Bytes of the kernel's memory (it grows to the peak and stays). */
export function kernelMemory() {
  return memory ? memory.buffer.byteLength : 0;
}

/** Milliseconds spent in the kernel (products and weight uploads) since the worker started. */
export function kernelTime() {
  return spentMs;
}
