/**
 * The unembedding split over threads without SharedArrayBuffer: helper workers each hold a
 * copy of one slice of W_U's rows (made once per W_U and kept), the calling thread keeps the
 * first slice, and every thread computes topLogits() for all rows over its own slice. The
 * per-slice top-k lists are merged and the log-sum-exps combined, which gives the same ids
 * as one pass over the whole vocabulary.
 *
 * Costs: every thread keeps its slice of W_U packed in its kernel's memory (packing it again
 * for every call cost as much as a short prompt's products); a helper drops its raw copy once
 * packed, the calling thread holds the packed slice beside W_U itself (+56 MB for the default
 * model on two threads). The rows X are copied to each helper per call (9 MB at P = 64 with
 * the lens).
 */
import {abortError, packedBlocks, topLogits} from "./engine-logits.js";
import {kernelVariant} from "./kernel.js";

const pools = new WeakMap();   // W_U -> Promise<{helpers, bounds}>

/** Default number of threads: the cores the browser reports, at most 4 (the page's own thread
 * is idle while the engine runs in its worker). */
export function defaultThreads() {
  const cores = (typeof navigator !== "undefined" && navigator.hardwareConcurrency) || 1;
  return Math.max(1, Math.min(4, cores));
}

function call(worker, msg, transfer = []) {
  return new Promise((resolve, reject) => {
    worker.onmessage = (e) => (e.data.ok ? resolve(e.data) : reject(new Error(e.data.message)));
    worker.onerror = (e) => reject(new Error(`lens worker failed: ${e.message}`));
    worker.postMessage(msg, transfer);
  });
}

async function startPool(W_U, V, d, bias, threads) {
  const bounds = [];                                   // vocabulary slices, in multiples of 8 rows
  const step = Math.ceil(V / threads / 8) * 8;
  for (let v0 = 0; v0 < V; v0 += step) bounds.push([v0, Math.min(V, v0 + step)]);
  const helpers = bounds.slice(1).map(() => new Worker(new URL("./engine-lens-worker.js", import.meta.url),
                                                       {type: "module"}));
  const kernel = kernelVariant() || "fused";
  try {
    const replies = await Promise.all(helpers.map((w, i) => {
      const [v0, v1] = bounds[i + 1];
      const W = W_U.slice(v0 * d, v1 * d);
      return call(w, {kind: "slice", W, v0, n: v1 - v0, d, bias: bias && bias.slice(v0, v1), kernel}, [W.buffer]);
    }));
    // every thread multiplies with the same build, so a result does not depend on the split's timing
    if (replies.some((r) => r.kernel !== kernel)) throw new Error(`a lens helper did not load the ${kernel} kernel`);
  } catch (e) {
    helpers.forEach((w) => w.terminate());
    throw e;
  }
  return {helpers, bounds, threads};
}

/** The helper workers for W_U (started on first use), or null for one thread. */
export async function helpersFor(W_U, V, d, bias, threads) {
  if (pools.has(W_U) && (await pools.get(W_U).catch(() => null))?.threads !== threads) await releaseLens(W_U);
  if (threads <= 1 || V < 8 * threads) return null;
  if (!pools.has(W_U)) {
    const started = startPool(W_U, V, d, bias, threads);
    pools.set(W_U, started);
    started.catch(() => pools.delete(W_U));
  }
  return pools.get(W_U);
}

/** Ask a helper for its share of the MLP write (engine-mlp.js); resolves to Float32Array (T, d).
 * `transfer`: buffers made for this helper alone, moved to it instead of copied. */
export function helperMlp(worker, msg, transfer = []) {
  return call(worker, {kind: "mlp", ...msg}, transfer).then((r) => r.delta);
}

/** End the helper workers held for W_U (they are otherwise kept for the next call). */
export async function releaseLens(W_U) {
  const pool = pools.get(W_U);
  pools.delete(W_U);
  if (pool) (await pool.catch(() => ({helpers: []}))).helpers.forEach((w) => w.terminate());
}

/** topLogits() over the whole vocabulary on `threads` threads; same result object. */
export async function topLogitsThreaded(X, N, W_U, V, d, k, {absRows = 0, signal = null, bias = null, threads = 1} = {}) {
  const pool = await helpersFor(W_U, V, d, bias, threads);
  if (!pool) return {...topLogits(X, N, packedBlocks(W_U, V, d), V, d, k, {absRows, signal, bias}), threads: 1};
  const {helpers, bounds} = pool;
  const pending = helpers.map((w) => call(w, {kind: "rows", X, N, k, absRows}));
  pending.forEach((p) => p.catch(() => {}));
  let parts;
  try {
    const [v0, v1] = bounds[0];
    const own = topLogits(X, N, packedBlocks(W_U.subarray(v0 * d, v1 * d), v1 - v0, d), v1 - v0, d, k,
                          {absRows, signal, bias: bias && bias.subarray(v0, v1)});
    parts = [own, ...(await Promise.all(pending))];
  } catch (e) {
    await releaseLens(W_U);                            // a helper may still be busy: start afresh
    throw e;
  }
  if (signal && signal.aborted) throw abortError();
  return merge(parts, N - absRows, k);
}

function merge(parts, nTop, k) {
  const N = parts[0].logZ.length;
  const ids = new Int32Array(N * k), logits = new Float32Array(N * k), logZ = new Float64Array(N);
  const cand = [];
  for (let row = 0; row < nTop; row++) {
    cand.length = 0;
    let m = -Infinity;
    for (const r of parts) {
      for (let j = 0; j < k; j++) cand.push([r.logits[row * k + j], r.ids[row * k + j]]);
      m = Math.max(m, r.logZ[row]);
    }
    cand.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    for (let j = 0; j < k; j++) [logits[row * k + j], ids[row * k + j]] = cand[j];
    let s = 0;
    for (const r of parts) s += Math.exp(r.logZ[row] - m);
    logZ[row] = m + Math.log(s);
  }
  return {ids, logits, logZ, absMax: Math.max(...parts.map((r) => r.absMax)), threads: parts.length};
}
