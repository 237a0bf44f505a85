/**
 * The packed causal triangle and the per-sublayer statistics of the in-browser engine: the
 * same layout and the same quantities as infoflow/engine.py (Triangle, SublayerStats).
 */

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
  const total = new Float64Array(tri.P * d);
  for (let row = 0; row < tri.T; row++) {
    const o = tri.pos[row] * d;
    for (let j = 0; j < d; j++) total[o + j] += C[row * d + j];
  }
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
  }

  /** Σ of source vectors within each group, per position (float32, rows in packed order). */
  grouped(C, into = null) {
    const {tri, G, d} = this;
    const out = into ? into.fill(0) : new Float32Array(tri.P * G * d);
    for (let row = 0; row < tri.T; row++) {
      const o = (tri.pos[row] * G + this.grouping[tri.src[row]]) * d;
      for (let j = 0; j < d; j++) out[o + j] += C[row * d + j];
    }
    return out;
  }

  start(C) {
    if (this.grouping) this.prev = this.grouped(C);
  }

  /** One sublayer's statistics after `C += delta`. kind: "attn" or "mlp". */
  record(l, kind, C, delta, rUnit) {
    const {tri, G, d} = this;
    const norm = this[`${kind}_norm`], dnorm = this[`${kind}_delta_norm`], proj = this[`${kind}_proj`];
    const base = l * tri.P * G;
    if (!this.grouping) {
      for (let row = 0; row < tri.T; row++) {
        const p = tri.pos[row], o = row * d, u = p * d;
        let cc = 0, dd = 0, cr = 0;
        for (let j = 0; j < d; j++) {
          const c = C[o + j], e = delta[o + j];
          cc += c * c;
          dd += e * e;
          cr += c * rUnit[u + j];
        }
        const at = base + p * G + tri.src[row];
        norm[at] = Math.sqrt(cc);
        dnorm[at] = Math.sqrt(dd);
        proj[at] = cr;
      }
      return;
    }
    const Cg = this.grouped(C, this.next), prev = this.prev;
    for (let i = 0; i < tri.P * G; i++) {
      const o = i * d, u = Math.floor(i / G) * d;
      let cc = 0, dd = 0, cr = 0;
      for (let j = 0; j < d; j++) {
        const c = Cg[o + j], e = Math.fround(c - prev[o + j]);
        cc += c * c;
        dd += e * e;
        cr += c * rUnit[u + j];
      }
      norm[base + i] = Math.sqrt(cc);
      dnorm[base + i] = Math.sqrt(dd);
      proj[base + i] = cr;
    }
    this.next = prev;
    this.prev = Cg;
  }
}
