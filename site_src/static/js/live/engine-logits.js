/**
 * The unembedding side of the in-browser engine, as infoflow/logits.py computes it: top-k next
 * tokens with their probabilities (logit lens and predictions), the reconstructed logits' error,
 * and the exact per-source logit attribution.
 */
import {Weight, lensProducts} from "./kernel.js";

export const VOCAB_BLOCK = 256;    // vocabulary columns per product: a 576 KB block of W_U stays in L2
                                   // (measured 8–10 GFLOP/s vs 5.6 at 4096 columns,
                                   // docs/history/performance-2026.md, "In-browser kernels")

/**
 * W_U (V, d) packed into the kernel's memory as Weights of VOCAB_BLOCK vocabulary rows each.
 * Packing costs as much as a short prompt's products, so callers keep the blocks between calls
 * (packedBlocks below; a lens helper worker keeps its own).
 */
export function packBlocks(W_U, V, d) {
  const blocks = [];
  for (let v0 = 0; v0 < V; v0 += VOCAB_BLOCK) {
    const B = Math.min(VOCAB_BLOCK, V - v0);
    blocks.push(new Weight(W_U.subarray(v0 * d, (v0 + B) * d), B, d));
  }
  return blocks;
}

// The calling thread's blocks, kept for the next call on the same W_U (slice): the same
// buffer, offset and length. One at a time: another one frees these first. Costs a packed copy
// of the slice in the kernel's memory (56 MB for half the default model's vocabulary).
let packed = {buffer: null, offset: 0, length: 0, d: 0, blocks: []};

export function packedBlocks(W_U, V, d) {
  const p = packed;
  if (p.buffer === W_U.buffer && p.offset === W_U.byteOffset && p.length === V * d && p.d === d) return p.blocks;
  releasePacked();
  packed = {buffer: W_U.buffer, offset: W_U.byteOffset, length: V * d, d, blocks: packBlocks(W_U, V, d)};
  return packed.blocks;
}

/** Free the calling thread's packed blocks. */
function releasePacked() {
  for (const w of packed.blocks) w.dispose();
  packed = {buffer: null, offset: 0, length: 0, d: 0, blocks: []};
}

/**
 * Top-k of X · W_Uᵀ per row and the log of its softmax denominator, without the (N, V) logits.
 *
 *   X      Float32Array (N, d): residuals already through the final norm (w_f ⊙ r / rms_f(r))
 *   blocks W_U (V, d), the unembedding, as packBlocks() / packedBlocks() give it
 *   absRows the last `absRows` rows are differences; for them only max_v |logit| is kept
 *   signal  AbortSignal, checked once per vocabulary block
 *   bias    optional lm_head bias (V,), added to every row but the differences
 *   above   optional {ids Int32Array (m) token ids, thr Float32Array (N, m) their logits, v0}: also
 *           count, per row and token, the other tokens of this slice (ids v0 + j) with a larger
 *           logit (trackTokens below: the rank)
 * -> {ids Int32Array (N, k), logits Float32Array (N, k), logZ Float64Array (N), absMax number,
 *     above Int32Array (N, m) where asked}
 *
 * Per row, the vocabulary is walked in blocks with an online log-sum-exp (running max m,
 * running Σ exp(l − m)), like logits.logit_lens (Python).
 */
export function topLogits(X, N, blocks, V, d, k, {absRows = 0, signal = null, bias = null, above = null} = {}) {
  const ids = new Int32Array(N * k);
  const best = new Float32Array(N * k).fill(-Infinity);
  const m = new Float64Array(N).fill(-Infinity);
  const total = new Float64Array(N);
  const nTop = N - absRows;
  let absMax = 0;
  const counts = above ? new Int32Array(N * above.ids.length) : null;
  const blockMax = new Float64Array(N), mNew = new Float64Array(N), sums = new Float64Array(N);
  lensProducts(X, N, blocks, {mPrev: m, blockMax, mNew, sums, bias, biasRows: nTop}, (b, r0, n, F, off, ld) => {
    if (signal && signal.aborted) throw abortError();
    const v0 = b * VOCAB_BLOCK, B = blocks[b].out;
    for (let i = 0; i < n; i++) {
      const row = r0 + i, o = off + i * ld;
      if (row >= nTop) {                               // a difference row: only max |logit|
        for (let j = 0; j < B; j++) absMax = Math.max(absMax, Math.abs(F[o + j]));
        continue;
      }
      const top = row * k;
      let kth = best[top + k - 1];                     // the row's k-th best so far
      if (blockMax[row] > kth) {                       // else nothing in this block enters the top k
        for (let j = 0; j < B; j++) {
          const x = F[o + j];
          if (x > kth) {
            insertTop(best, ids, top, k, x, v0 + j);
            kth = best[top + k - 1];
          }
        }
      }
      total[row] = total[row] * Math.exp(m[row] - mNew[row]) + sums[row];
      m[row] = mNew[row];
      if (counts) countAbove(F, o, B, v0 + (above.v0 || 0), row, above, counts);
    }
  });
  const logZ = new Float64Array(N);
  for (let row = 0; row < nTop; row++) logZ[row] = m[row] + Math.log(total[row]);
  const out = {ids, logits: best, logZ, absMax};
  if (counts) out.above = counts;
  return out;
}

/** For each tracked token, the tokens of this block (ids id0 ..) other than it with a larger logit. */
function countAbove(F, o, B, id0, row, {ids, thr}, counts) {
  const m = ids.length;
  for (let i = 0; i < m; i++) {
    const t = thr[row * m + i], own = ids[i] - id0;
    let n = 0;
    for (let j = 0; j < B; j++) if (F[o + j] > t && j !== own) n++;
    counts[row * m + i] += n;
  }
}

/** Insert (x, id) into the row's sorted top-k list starting at `top`. */
function insertTop(best, ids, top, k, x, id) {
  let j = k - 1;
  while (j > 0 && best[top + j - 1] < x) {
    best[top + j] = best[top + j - 1];
    ids[top + j] = ids[top + j - 1];
    j--;
  }
  best[top + j] = x;
  ids[top + j] = id;
}

/**
 * Per-source share of the logit of predIds[p, j] at p, the final norm's scale frozen:
 * ⟨c[p, s] ⊙ scaleF[p], W_U[id]⟩ summed within each group; the bias group gets the lm_head bias.
 *   C (T, d) packed parts after the last layer; scaleF (P, d) = w_f / rms_f[p]
 *   grouping: null or Int32Array (S,) -> (P, k, G) Float32Array, summing over G to the logit
 */
export function logitAttribution(C, tri, scaleF, W_U, lmBias, predIds, k, grouping, G, d) {
  const out = new Float64Array(tri.P * k * G);
  const x = new Float32Array(d);
  for (let row = 0; row < tri.T; row++) {
    const p = tri.pos[row];
    const g = grouping ? grouping[tri.src[row]] : tri.src[row];
    for (let j = 0; j < d; j++) x[j] = C[row * d + j] * scaleF[p * d + j];
    for (let i = 0; i < k; i++) {
      const u = predIds[p * k + i] * d;
      let acc = 0;
      for (let j = 0; j < d; j++) acc += x[j] * W_U[u + j];
      out[(p * k + i) * G + g] += Math.fround(acc);
    }
  }
  if (lmBias) {
    for (let p = 0; p < tri.P; p++) {
      for (let i = 0; i < k; i++) out[(p * k + i) * G + G - 1] += lmBias[predIds[p * k + i]];
    }
  }
  return Float32Array.from(out);
}

/**
 * Each source's part of the mean logit over the vocabulary at the last position, as
 * logits.mean_logit_parts (Python) takes it there: ⟨c[P-1, s] ⊙ scaleF[P-1], mean_v W_U[v]⟩ summed
 * within each group (+ mean lm_head bias for the bias group). A last-position prediction's
 * logitAttribution minus this is its demeaned attribution.   -> Float32Array (G)
 */
export function meanLogitLast(C, tri, scaleF, W_U, V, lmBias, grouping, G, d) {
  const uMean = vocabMean(W_U, V, d), p = tri.P - 1, out = new Float64Array(G);
  for (let row = 0; row < tri.T; row++) {
    if (tri.pos[row] !== p) continue;
    const g = grouping ? grouping[tri.src[row]] : tri.src[row];
    let acc = 0;
    for (let j = 0; j < d; j++) acc += Math.fround(C[row * d + j] * scaleF[p * d + j]) * uMean[j];
    out[g] += acc;
  }
  if (lmBias) {
    let b = 0;
    for (let v = 0; v < V; v++) b += lmBias[v];
    out[G - 1] += b / V;
  }
  return Float32Array.from(out);
}

const vocabMeans = new WeakMap();    // W_U -> Float64Array (d): one pass over W_U, kept

function vocabMean(W_U, V, d) {
  if (!vocabMeans.has(W_U)) {
    const u = new Float64Array(d);
    for (let v = 0; v < V; v++) for (let j = 0; j < d; j++) u[j] += W_U[v * d + j];
    for (let j = 0; j < d; j++) u[j] /= V;
    vocabMeans.set(W_U, u);
  }
  return vocabMeans.get(W_U);
}

/**
 * The logit of each token in `ids` for every row of X (N, d), already final-normed, as a direct
 * product (float64 sums), plus the lm_head bias.   -> Float32Array (N, m)
 */
export function tokenLogits(X, N, W_U, d, ids, bias = null) {
  const m = ids.length, out = new Float32Array(N * m);
  for (let r = 0; r < N; r++) {
    for (let i = 0; i < m; i++) {
      let acc = 0;
      const u = ids[i] * d;
      for (let j = 0; j < d; j++) acc += X[r * d + j] * W_U[u + j];
      out[r * m + i] = acc + (bias ? bias[ids[i]] : 0);
    }
  }
  return out;
}

export function abortError() {
  return new DOMException("The decomposition was cancelled.", "AbortError");
}
