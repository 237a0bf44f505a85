/**
 * The unembedding split over threads without SharedArrayBuffer: helper workers each hold a
 * copy of one slice of W_U's rows (made once per W_U and kept), the calling thread keeps the
 * first slice, and every thread computes topLogits() for all rows over its own slice. The
 * per-slice top-k lists are merged and the log-sum-exps combined, which gives the same ids
 * as one pass over the whole vocabulary.
 *
 * Costs: every thread keeps its slice of W_U packed in its kernel's memory (packing it again
 * for every call cost as much as a short prompt's products); a helper drops its raw copy once
 * packed, the calling thread holds the packed slice beside W_U itself (+28 MB for the default
 * model with the engine's share, engine.js LENS_MAIN_SHARE = 1/4). The rows X are copied to each helper per call (9 MB at P = 64 with
 * the lens).
 */
import {abortError, packedBlocks, tokenLogits, topLogits} from "./engine-logits.js";
import {kernelVariant} from "./kernel.js";

const pools = new WeakMap();   // W_U -> Promise<{helpers, bounds}>

/** Default number of threads: the cores the browser reports, at most 4 (the page's own thread
 * is idle while the engine runs in its worker). */
export function defaultThreads() {
  const cores = (typeof navigator !== "undefined" && navigator.hardwareConcurrency) || 1;
  return Math.max(1, Math.min(4, cores));
}

// Requests to a helper carry an id, so several can be in flight (a helper answers in order).
let nextId = 0;

function call(worker, msg, transfer = []) {
  if (!worker.pending) {
    worker.pending = new Map();
    worker.onmessage = (e) => {
      const done = worker.pending.get(e.data.id);
      worker.pending.delete(e.data.id);
      if (done) (e.data.ok ? done.resolve(e.data) : done.reject(new Error(e.data.message)));
    };
    worker.onerror = (e) => {
      for (const done of worker.pending.values()) done.reject(new Error(`lens worker failed: ${e.message}`));
      worker.pending.clear();
    };
  }
  const id = nextId++;
  return new Promise((resolve, reject) => {
    worker.pending.set(id, {resolve, reject});
    worker.postMessage({...msg, id}, transfer);
  });
}

/**
 * Vocabulary slices, in multiples of 8 rows: the calling thread's first (`mainShare` of V,
 * possibly empty), then the helpers' equal shares of the rest.
 */
function vocabBounds(V, threads, mainShare) {
  const own = Math.min(V, Math.ceil(V * mainShare / 8) * 8);
  const step = Math.ceil((V - own) / (threads - 1) / 8) * 8;
  const bounds = [[0, own]];
  for (let v0 = own; v0 < V; v0 += step) bounds.push([v0, Math.min(V, v0 + step)]);
  return bounds;
}

async function startPool(W_U, V, d, bias, threads, mainShare) {
  const bounds = vocabBounds(V, threads, mainShare);
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

/**
 * The helper workers for W_U (started on first use), or null for one thread. `mainShare`: the
 * calling thread's fraction of the vocabulary when the pool is started (default: an equal
 * share); a pool already running keeps its split (results do not depend on it), and one with
 * another thread count is restarted.
 */
export async function helpersFor(W_U, V, d, bias, threads, mainShare = 1 / threads) {
  const old = pools.has(W_U) && await pools.get(W_U).catch(() => null);
  if (old && old.threads !== threads) await releaseLens(W_U);
  if (threads <= 1 || V < 8 * threads) return null;
  if (!pools.has(W_U)) {
    const started = startPool(W_U, V, d, bias, threads, mainShare);
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
export async function topLogitsThreaded(X, N, W_U, V, d, k, {absRows = 0, signal = null, bias = null, threads = 1,
                                                              above = null} = {}) {
  const pool = await helpersFor(W_U, V, d, bias, threads);
  if (!pool) return {...topLogits(X, N, packedBlocks(W_U, V, d), V, d, k, {absRows, signal, bias, above}), threads: 1};
  const {helpers, bounds} = pool;
  const pending = helpers.map((w) => call(w, {kind: "rows", X, N, k, absRows, above}));
  pending.forEach((p) => p.catch(() => {}));
  let parts;
  try {
    parts = [...ownPart(X, N, W_U, bounds[0], d, k, {absRows, signal, bias, above}), ...(await Promise.all(pending))];
  } catch (e) {
    await releaseLens(W_U);                            // a helper may still be busy: start afresh
    throw e;
  }
  if (signal && signal.aborted) throw abortError();
  return merge(parts, N - absRows, k, helpers.length + 1);
}

/** The calling thread's topLogits() over its vocabulary slice [v0, v1), as a list of 0 or 1 parts. */
function ownPart(X, N, W_U, [v0, v1], d, k, {absRows, signal, bias, above = null}) {
  if (v1 === v0) return [];
  return [topLogits(X, N, packedBlocks(W_U.subarray(v0 * d, v1 * d), v1 - v0, d), v1 - v0, d, k,
                    {absRows, signal, bias: bias && bias.subarray(v0, v1), above: above && {...above, v0}})];
}

/**
 * The unembedding streamed to the helpers while the layers run: each layer's lens rows are
 * sent as soon as they exist, and each helper works through them over its vocabulary slice
 * while the calling thread goes on with the next layer. finish() sends the last rows (the
 * reconstruction check's differences), does the calling thread's own slice of every row, and
 * merges: the same result as topLogitsThreaded() over all the rows at once.
 */
export class LensStream {
  constructor(pool, W_U, d, k, bias) {
    Object.assign(this, {pool, W_U, d, k, bias, chunks: []});   // chunks: [{N, replies}]
  }

  /** Rows X (N, d), already through the final norm, for every helper's slice. */
  push(X, N, absRows = 0) {
    const replies = this.pool.helpers.map((w) => call(w, {kind: "rows", X, N, k: this.k, absRows}));
    replies.forEach((r) => r.catch(() => {}));
    this.chunks.push({N, replies});
  }

  /** All rows pushed so far, X (N, d), are their concatenation; the last `absRows` of them
   * came in the last push, as differences. -> topLogitsThreaded()'s result. */
  async finish(X, N, absRows, signal) {
    const {W_U, d, k, bias, pool} = this;
    let parts;
    try {
      const own = ownPart(X, N, W_U, pool.bounds[0], d, k, {absRows, signal, bias});
      const helpers = await Promise.all(pool.helpers.map((_, h) => Promise.all(this.chunks.map((c) => c.replies[h]))));
      parts = [...own, ...helpers.map((replies) => concatParts(replies, N, k))];
    } catch (e) {
      await releaseLens(W_U);
      throw e;
    }
    if (signal && signal.aborted) throw abortError();
    return merge(parts, N - absRows, k, pool.helpers.length + 1);
  }
}

/** One helper's replies for consecutive chunks of rows, as one part over all N rows. */
function concatParts(replies, N, k) {
  const ids = new Int32Array(N * k), logits = new Float32Array(N * k), logZ = new Float64Array(N);
  let row = 0, absMax = 0, ms = 0, kernelMs = 0;
  for (const r of replies) {
    ms += r.ms;
    kernelMs += r.kernelMs;
    ids.set(r.ids, row * k);
    logits.set(r.logits, row * k);
    logZ.set(r.logZ, row);
    row += r.logZ.length;
    absMax = Math.max(absMax, r.absMax);
  }
  if (row !== N) throw new Error(`lens stream: ${row} rows came back for ${N}`);
  return {ids, logits, logZ, absMax, ms, kernelMs};
}

function merge(parts, nTop, k, threads) {
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
  let above;                                       // counts per slice add up (trackTokens)
  if (parts[0].above) {
    above = new Int32Array(parts[0].above.length);
    for (const r of parts) for (let i = 0; i < above.length; i++) above[i] += r.above[i];
  }
  const helperMs = Math.max(0, ...parts.map((r) => r.ms || 0));
  const helperKernelMs = Math.max(0, ...parts.map((r) => r.kernelMs || 0));
  return {ids, logits, logZ, absMax: Math.max(...parts.map((r) => r.absMax)), threads,
          helperMs, helperKernelMs, ...(above ? {above} : {})};
}

/**
 * The logit lens of a few tokens over rows X (N, d), already final-normed (the last position
 * after every sublayer): probability and rank of each, as logits.lens_track (Python). One pass
 * over the vocabulary (on the helpers where there are some) counts the tokens above each.
 *   ids: token ids (m) -> {probs Float32Array (m, N), ranks Int32Array (m, N)}
 */
export async function trackTokens(X, N, W_U, V, d, ids, {bias = null, threads = 1, signal = null} = {}) {
  const m = ids.length, thr = tokenLogits(X, N, W_U, d, ids, bias);
  const top = await topLogitsThreaded(X, N, W_U, V, d, 1, {bias, threads, signal, above: {ids: Int32Array.from(ids), thr}});
  const probs = new Float32Array(m * N), ranks = new Int32Array(m * N);
  for (let r = 0; r < N; r++) {
    for (let i = 0; i < m; i++) {
      probs[i * N + r] = Math.exp(thr[r * m + i] - top.logZ[r]);
      ranks[i * N + r] = 1 + top.above[r * m + i];
    }
  }
  return {probs, ranks};
}
