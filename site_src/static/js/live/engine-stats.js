/**
 * The packed causal triangle and the per-sublayer statistics of the in-browser engine: the
 * same layout and the same quantities as infoflow/engine.py (Triangle, SublayerStats). The
 * row sums and norms run in the kernel (kernel.js rowStats, rowSums).
 */
import {rowStats, rowSums} from "./kernel.js";

/**
 * Source-major layout of the causal triangle: source s owns rows offset[s] .. offset[s+1]-1,
 * for positions start[s] .. P-1. With biases, one extra source ("bias", start 0) comes last.
 */
export function triangle(P, bias) {
  const S = P + (bias ? 1 : 0);
  const start = new Int32Array(S);
  const offset = new Int32Array(S + 1);
  for (let s = 0; s < S; s++) {
    start[s] = s < P ? s : 0;
    offset[s + 1] = offset[s] + P - start[s];
  }
  const T = offset[S];
  const pos = new Int32Array(T);                      // (T,) position of each row
  const src = new Int32Array(T);                      // (T,) source of each row
  for (let s = 0; s < S; s++) {
    for (let r = offset[s]; r < offset[s + 1]; r++) {
      pos[r] = start[s] + r - offset[s];
      src[r] = s;
    }
  }
  return {P, S, T, start, offset, pos, src, bias, biasSource: bias ? P : -1};
}

/**
 * The (position, group) cells of a grouping of the sources (G groups): cell[row] (T,) is the
 * cell p·G + group of each row of the triangle, cellPos[c] (P·G,) the position of each cell.
 * Summing rows into their cells (kernel.js rowSums) sums the sources within each group.
 */
export function groupCells(tri, grouping, G) {
  return {
    cell: Int32Array.from(tri.pos, (p, row) => p * G + grouping[tri.src[row]]),
    cellPos: Int32Array.from({length: tri.P * G}, (_, c) => Math.floor(c / G)),
  };
}

/** Row norms ‖x[i]‖ of a (n, d) array, accumulated in float64.   -> Float64Array (n,) */
export function rowNorms(x, n, d) {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let acc = 0;
    for (let j = i * d, e = j + d; j < e; j++) acc += x[j] * x[j];
    out[i] = Math.sqrt(acc);
  }
  return out;
}

/** r / ‖r‖² per position, so that ⟨c, r⟩/‖r‖² is one dot product.   (P, d) -> (P, d) */
export function unitForProj(r, P, d) {
  const out = new Float32Array(P * d);
  for (let p = 0; p < P; p++) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += r[p * d + j] * r[p * d + j];
    const inv = 1 / Math.fround(ss);
    for (let j = 0; j < d; j++) out[p * d + j] = r[p * d + j] * inv;
  }
  return out;
}

/** max_p ‖Σ_s c[p, s] − r[p]‖ / ‖r[p]‖: the sum identity, in float64. */
export function reconError(C, r, tri, d) {
  const total = rowSums(C, tri.pos, tri.T, d, tri.P, true);      // (P, d) float64: Σ_s c[p, s]
  let worst = 0;
  for (let p = 0; p < tri.P; p++) {
    let num = 0, den = 0;
    for (let j = 0; j < d; j++) {
      const e = total[p * d + j] - r[p * d + j];
      num += e * e;
      den += r[p * d + j] * r[p * d + j];
    }
    worst = Math.max(worst, Math.sqrt(num / (den > 0 ? den : 1)));   // r[p] = 0: the absolute error, as engine.py
  }
  return worst;
}

/**
 * Norms and shares of both sublayers of every layer, for one grouping of the sources.
 * grouping: null (each source its own group) or Int32Array (S,) source -> group, numbered by
 * first use, the bias source (if any) in the last group. Grouped vectors are summed before
 * norms are taken; arrays are (L, P, G) row-major, zero where a group is not yet present.
 */
export class SublayerStats {
  constructor(L, tri, grouping, d) {
    this.tri = tri;
    this.d = d;
    this.grouping = grouping;
    this.G = grouping ? Math.max(...grouping) + 1 : tri.S;
    const n = L * tri.P * this.G;
    this.attn_norm = new Float32Array(n);
    this.mlp_norm = new Float32Array(n);
    this.attn_delta_norm = new Float32Array(n);
    this.mlp_delta_norm = new Float32Array(n);
    this.attn_proj = new Float32Array(n);
    this.mlp_proj = new Float32Array(n);
    this.prev = null;                                  // grouped state (P·G, d) before the block
    this.next = null;                                  // the other of the two buffers, reused
    if (grouping) {
      Object.assign(this, groupCells(tri, grouping, this.G));   // cell, cellPos
      this.diff = new Float32Array(tri.P * this.G * d);   // a cell's change over the block
    }
  }

  /** Σ of source vectors within each group, per position (float32, summed in row order). */
  grouped(C, into = null) {
    const {tri, G, d} = this;
    return rowSums(C, this.cell, tri.T, d, tri.P * G, false, into);
  }

  start(C) {
    if (this.grouping) this.prev = this.grouped(C);
  }

  /** One sublayer's statistics after `C += delta`. kind: "attn" or "mlp". */
  record(l, kind, C, delta, rUnit) {
    const {tri, G, d} = this;
    const norm = this[`${kind}_norm`], dnorm = this[`${kind}_delta_norm`], proj = this[`${kind}_proj`];
    const base = l * tri.P * G;
    // per row: ‖c‖², ‖δ‖², ⟨c, r/‖r‖²⟩ (float64, in the kernel)
    if (!this.grouping) {
      const st = rowStats(C, delta, rUnit, tri.pos, tri.T, d);
      for (let row = 0; row < tri.T; row++) {
        const at = base + tri.pos[row] * G + tri.src[row];
        norm[at] = Math.sqrt(st[3 * row]);
        dnorm[at] = Math.sqrt(st[3 * row + 1]);
        proj[at] = st[3 * row + 2];
      }
      return;
    }
    const Cg = this.grouped(C, this.next), prev = this.prev, diff = this.diff;
    for (let i = 0; i < diff.length; i++) diff[i] = Cg[i] - prev[i];    // float32, as the grouped block's write
    const st = rowStats(Cg, diff, rUnit, this.cellPos, tri.P * G, d);
    for (let i = 0; i < tri.P * G; i++) {
      norm[base + i] = Math.sqrt(st[3 * i]);
      dnorm[base + i] = Math.sqrt(st[3 * i + 1]);
      proj[base + i] = st[3 * i + 2];
    }
    this.next = prev;
    this.prev = Cg;
  }
}
