/**
 * The MLP's write for every row of the packed triangle, gate frozen, for one slice of the
 * d_ff hidden units (all of them on one thread, or a share per helper worker: the writes of
 * the slices sum to the MLP's write, because W_down · u splits over u's entries).
 *   u[row] = gateScale[pos] ⊙ (W_up ⊙ w2) · c[row]   (+ b_up ⊙ g[pos] for the bias source)
 *   δ[row] = W_down · u[row]
 */
import {abortError} from "./engine-logits.js";
import {Weight, matmul} from "./kernel.js";

export const MLP_ROWS = 2048;   // rows per product: u is (2048, d_ff), 12.6 MB at d_ff 1536

/**
 *   C (T, d); pos, src (T,); biasSource: the bias source's index or -1
 *   up, down: kernel Weights of the slice, (nj, d) and (d, nj); gateScale (P, nj) = g / rms2;
 *   gate (P, nj) and upBias (nj) only when the model has an up_proj bias
 *   into (T, d) receives δ; u: scratch of at least min(MLP_ROWS, T)·nj floats
 */
export function mlpRows({C, T, pos, src, biasSource, up, down, gateScale, gate, upBias, d, nj, into, u, signal}) {
  for (let a = 0; a < T; a += MLP_ROWS) {
    if (signal && signal.aborted) throw abortError();
    const n = Math.min(MLP_ROWS, T - a);
    const h = matmul(C.subarray(a * d, (a + n) * d), n, up, u);      // (n, nj)
    for (let i = 0; i < n; i++) {
      const o = i * nj, gs = pos[a + i] * nj;
      for (let j = 0; j < nj; j++) h[o + j] *= gateScale[gs + j];
      if (upBias && src[a + i] === biasSource) {
        for (let j = 0; j < nj; j++) h[o + j] += upBias[j] * gate[gs + j];
      }
    }
    matmul(h, n, down, into.subarray(a * d, (a + n) * d));
  }
  return into;
}

/** Columns j0..j1 of a row-major (rows, cols) array, as a new (rows, j1 − j0) array. */
export function columns(a, rows, cols, j0, j1) {
  const nj = j1 - j0, out = new Float32Array(rows * nj);
  for (let r = 0; r < rows; r++) out.set(a.subarray(r * cols + j0, r * cols + j1), r * nj);
  return out;
}

/** The slice's kernel weights from the layer's raw arrays: rows j0..j1 of W_up (norm folded),
 * columns j0..j1 of W_down. */
export function sliceWeights(raw, d, ff, j0, j1) {
  const up = new Weight(raw.up.subarray(j0 * d, j1 * d), j1 - j0, d, raw.postNorm);
  const down = new Weight(j0 === 0 && j1 === ff ? raw.down : columns(raw.down, d, ff, j0, j1), d, j1 - j0);
  return {up, down, dispose: () => { up.dispose(); down.dispose(); }};
}
