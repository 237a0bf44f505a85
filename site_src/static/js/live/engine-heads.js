/**
 * Per-head parts of every attention write (issue 13): the browser port of infoflow/engine.py's
 * HeadStats, the same quantities as docs/data-format.md "Per-head data".
 *
 * o_proj's input is the H heads side by side, so its weight splits into column blocks,
 * W_o = [W_o,0 | … | W_o,H-1] with W_o,h (d, hd), and for every row (p, s) of the triangle
 *
 *     write[p, s]  = W_o · O[p, s] (+ b_o)  =  Σ_h W_o,h · O_h[p, s] (+ b_o)
 *     part_h[p, s] = W_o,h · O_h[p, s]                  (d,)   O_h = O[:, h·hd:(h+1)·hd]
 *
 * exactly. Only each part's norm and signed share are kept, so the (T, H, d) parts never exist:
 *
 *     ‖part_h‖         = ‖R_h O_h‖,  R_hᵀR_h = W_o,hᵀW_o,h     R_h (hd, hd): T·H·hd² MACs in all
 *     ⟨part_h, r⟩/‖r‖² = O_h · (W_o,hᵀ r/‖r‖²)[p]             (P, H·hd): one product per layer
 *
 * Python takes R_h from a QR of W_o,h; here it is the Cholesky factor of the Gram matrix
 * (float32 product in the kernel, factorized in float64): the same R_h up to row signs, which
 * a norm does not see, for hd·d·hd MACs per head instead of a QR in plain JavaScript. A head
 * whose columns are all zero gets R_h = 0, so its parts are exactly zero.
 * r is the real residual after the attention block (resid_mid). Grouped sources sum O first
 * (part_h is linear in O). `write_*` is the same for the head's whole write at p, from the
 * forward pass's own head outputs (o_proj's input). b_o, written by no head, is one more
 * pseudo-head ("o_proj bias") where o_proj has a bias, non-zero only for the bias source.
 * Tables, row-major float32: norm, proj (L, H', P, G); write_norm, write_proj (L, H', P);
 * pattern (L, H, P, P); H' = H (+ 1).
 */
import {Weight, matmul, rowStats, rowSums} from "./kernel.js";
import {groupCells} from "./engine-stats.js";

/** R_h of every layer, per model object: weights only, so computed once per model (4.4 MB for
 * the default model), not once per run. */
const factors = new WeakMap();

/**
 * One layer's maps from W_o and r/‖r‖² (P, d): rt[h], a kernel Weight with matmul(x, n, rt[h]) =
 * x R_hᵀ, and proj (P, H·hd) = r/‖r‖² · W_o. dispose() frees them. raw: the layer's raw weights
 * (engine.js), W_o = raw.o, row-major (d, H·hd), read from its Q4_1 blocks when raw.quantized
 * has them. cacheKey (an object, e.g. the engine's model) and l: where R_h is kept between calls.
 */
export function headMaps(raw, rUnit, cfg, P, cacheKey = null, l = 0) {
  const {d_model: d, n_heads: H, head_dim: hd} = cfg, dh = H * hd;
  const cache = cacheKey ? (factors.get(cacheKey) || factors.set(cacheKey, new Map()).get(cacheKey)) : new Map();
  const made = [];
  try {
    const q = raw.quantized && raw.quantized.o, blocks = Boolean(q && q.type === "Q4_1");
    // x · W_o: W_o is this Weight's Wᵀ (from its Q4_1 blocks: raw.o's float array is then made
    // only the first time, for R_h)
    const all = new Weight(blocks ? q.bytes : raw.o, dh, d, null, {transposed: true, q4_1: blocks});
    made.push(all);
    const proj = matmul(rUnit, P, all);                            // (P, H·hd)
    if (!cache.has(l)) {
      const Wo = raw.o;
      const WoT = new Float32Array(dh * d);                        // (H·hd, d) = W_oᵀ
      for (let i = 0; i < d; i++) for (let c = 0; c < dh; c++) WoT[c * d + i] = Wo[i * dh + c];
      const Rs = [];
      for (let h = 0; h < H; h++) {
        const block = WoT.subarray(h * hd * d, (h + 1) * hd * d);  // W_o,hᵀ (hd, d)
        const wt = new Weight(block, hd, d);
        made.push(wt);
        Rs.push(choleskyUpper(matmul(block, hd, wt), hd));         // R_hᵀ R_h = W_o,hᵀ W_o,h
      }
      cache.set(l, Rs);
    }
    const rt = cache.get(l).map((R) => {
      const w = new Weight(R, hd, hd);                             // x · R_hᵀ
      made.push(w);
      return w;
    });
    return {rt, proj, dispose: () => made.forEach((m) => m.dispose())};
  } catch (e) {
    made.forEach((m) => m.dispose());
    throw e;
  }
}

/**
 * Upper-triangular R with RᵀR = G (G symmetric positive semi-definite, (n, n)), in float64.
 * A pivot that is not positive (a null direction: zero columns of W) leaves its row zero.
 */
export function choleskyUpper(G, n) {
  const R = new Float64Array(n * n);
  let top = 0;
  for (let i = 0; i < n; i++) top = Math.max(top, G[i * n + i]);
  const tiny = top * 1e-12;
  for (let j = 0; j < n; j++) {
    let s = G[j * n + j];
    for (let k = 0; k < j; k++) s -= R[k * n + j] * R[k * n + j];
    if (!(s > tiny)) continue;                                     // row j stays zero
    const rjj = Math.sqrt(s);
    R[j * n + j] = rjj;
    for (let i = j + 1; i < n; i++) {
      let t = G[j * n + i];
      for (let k = 0; k < j; k++) t -= R[k * n + j] * R[k * n + i];
      R[j * n + i] = t / rjj;
    }
  }
  return Float32Array.from(R);
}

/** The pattern of every layer, kept once for all groupings.   (L, H, P, P) */
export class HeadPatterns {
  constructor(L, H, P) {
    this.H = H;
    this.P = P;
    this.pattern = new Float32Array(L * H * P * P);
  }

  record(l, pattern) {
    this.pattern.set(pattern, l * this.H * this.P * this.P);
  }
}

/** The per-head tables of one grouping of the sources (null: one source per row). */
export class HeadStats {
  constructor(L, cfg, tri, grouping, oBias) {
    this.tri = tri;
    this.grouping = grouping;
    this.H = cfg.n_heads;
    this.hd = cfg.head_dim;
    this.Hx = this.H + (oBias ? 1 : 0);
    this.G = grouping ? Math.max(...grouping) + 1 : tri.S;
    const {Hx, G} = this, P = tri.P;
    this.norm = new Float32Array(L * Hx * P * G);
    this.proj = new Float32Array(L * Hx * P * G);
    this.write_norm = new Float32Array(L * Hx * P);
    this.write_proj = new Float32Array(L * Hx * P);
    if (grouping) {
      this.Og = new Float32Array(P * G * this.H * this.hd);       // (P·G, H·hd) O summed within groups
      Object.assign(this, groupCells(tri, grouping, G));           // cell, cellPos
    }
  }

  /** This grouping's rows of the layer's mixed heads O (T, H·hd): {X, n, pos (n,)}. */
  rows(O) {
    const {tri, G} = this;
    if (!this.grouping) return {X: O, n: tri.T, pos: tri.pos};
    rowSums(O, this.cell, tri.T, this.H * this.hd, tri.P * G, false, this.Og);   // grouped sources sum O first
    return {X: this.Og, n: tri.P * G, pos: this.cellPos};
  }

  /** Row i of rows()'s, head h of layer l: its norm and share. */
  put(l, h, i, norm, proj) {
    const {tri, G, Hx} = this;
    const p = this.grouping ? this.cellPos[i] : tri.pos[i], g = this.grouping ? i % G : tri.src[i];
    const at = ((l * Hx + h) * tri.P + p) * G + g;
    this.norm[at] = norm;
    this.proj[at] = proj;
  }

  /** The o_proj bias pseudo-head of layer l: non-zero only for the bias source. */
  putBias(l, rUnit, oBias) {
    const {tri, G, H, Hx} = this, P = tri.P, d = oBias.length;
    let bb = 0;
    for (let j = 0; j < d; j++) bb += oBias[j] * oBias[j];
    const bnorm = Math.sqrt(bb);
    for (let p = 0; p < P; p++) {
      let br = 0;
      for (let j = 0; j < d; j++) br += rUnit[p * d + j] * oBias[j];
      const at = (l * Hx + H) * P + p;
      this.norm[at * G + G - 1] = this.write_norm[at] = bnorm;
      this.proj[at * G + G - 1] = this.write_proj[at] = br;
    }
  }
}

/**
 * Layer l's per-head statistics of every grouping at once, from the mixed heads O (T, H·hd) of
 * the triangle, the forward pass's head outputs `whole` (P, H·hd), the layer's headMaps, r/‖r‖²
 * (P, d) and b_o (or null): every grouping's rows and the whole writes go through one product
 * with R_h per head (a product per grouping and head cost more in calls than in flops).
 */
export function recordHeads(l, stats, O, whole, maps, rUnit, oBias) {
  if (!stats.length) return;
  const {H, hd, tri} = stats[0], P = tri.P, dh = H * hd;
  const sets = [...stats.map((st) => st.rows(O)), {X: whole, n: P, pos: Int32Array.from({length: P}, (_, p) => p)}];
  const N = sets.reduce((a, set) => a + set.n, 0);
  const s0 = stats[0];
  if (!s0.scratch || s0.scratch.N !== N) {                          // kept for the next layers
    const pos = new Int32Array(N);
    let at = 0;
    for (const set of sets) { pos.set(set.pos, at); at += set.n; }
    s0.scratch = {N, pos, Xh: new Float32Array(N * hd), Y: new Float32Array(N * hd)};
  }
  const {pos, Xh, Y} = s0.scratch;
  for (let h = 0; h < H; h++) {
    let at = 0;                                                     // head h's columns of every row
    for (const {X, n} of sets) {
      for (let i = 0; i < n; i++, at++) Xh.set(X.subarray(i * dh + h * hd, i * dh + (h + 1) * hd), at * hd);
    }
    matmul(Xh, N, maps.rt[h], Y);                                   // (N, hd) rows R_h x
    // per row: ‖x_h‖² (unused), ‖R_h x_h‖², x_h · proj[pos, h·hd:(h+1)·hd] (float64, in the kernel)
    const st = rowStats(Xh, Y, maps.proj, pos, N, hd, {ldr: dh, rOffset: h * hd});
    at = 0;
    stats.forEach((hs, k) => {
      for (let i = 0; i < sets[k].n; i++, at++) hs.put(l, h, i, Math.sqrt(st[3 * at + 1]), st[3 * at + 2]);
    });
    for (let p = 0; p < P; p++, at++) {                             // the head's whole write at p
      for (const hs of stats) {
        const c = (l * hs.Hx + h) * P + p;
        hs.write_norm[c] = Math.sqrt(st[3 * at + 1]);
        hs.write_proj[c] = st[3 * at + 2];
      }
    }
  }
  if (oBias) for (const hs of stats) hs.putBias(l, rUnit, oBias);
}

/** The engine result's `heads` (engine.js JSDoc): patterns and per-variant tables, or null. */
export function headsResult(patterns, stats, names) {
  if (!patterns || !stats.length) return null;
  const s0 = stats[0], labels = [];
  for (let h = 0; h < s0.H; h++) labels.push(String(h));
  if (s0.Hx > s0.H) labels.push("o_proj bias");
  const variants = {};
  stats.forEach((st, i) => { variants[names[i]] = {norm: st.norm, proj: st.proj}; });
  return {n_heads: s0.H, labels, write_norm: s0.write_norm, write_proj: s0.write_proj,
          pattern: patterns.pattern, variants};
}
