/**
 * The in-browser decomposition engine: one forward pass of a Llama-family model, and the exact
 * per-source split of its residual stream, the same math as infoflow/engine.py (read that
 * module's docstring for the method). Runs in a Web Worker or a page; no DOM.
 *
 * Layer by layer: the layer's forward pass freezes its attention pattern, SwiGLU gate and
 * RMSNorm scales, then the same layer is applied to every (position, source) row of the packed
 * causal triangle, so only one layer's float32 weights are alive at a time.
 *
 * ## Interface (stable)
 *
 *   import {decompose} from "./engine.js";
 *   const result = await decompose(model, ids, variants, opts);
 *
 * model: {config, embed, finalNorm, lmHead, lmHeadBias?, layer}
 *   config: {n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, vocab, rms_eps, rope_theta,
 *            rope_scaling (null, or HF's dict: rope_type "default" | "linear" | "llama3"),
 *            tie_embeddings, attention_bias, mlp_bias, hidden_act? ("silu")}
 *   embed: Float32Array (vocab·d), row-major: the token embedding; the unembedding when tied
 *   finalNorm: Float32Array (d);  lmHead: Float32Array (vocab·d), or null when tied
 *   lmHeadBias: optional Float32Array (vocab)
 *   layer(i): Promise<{inputNorm (d), q (nh·hd·d), k (nkv·hd·d), v (nkv·hd·d), o (d·nh·hd),
 *             postNorm (d), gate (ff·d), up (ff·d), down (d·ff),
 *             qBias?, kBias?, vBias?, oBias?, gateBias?, upBias?, downBias?}>
 *     every one a Float32Array, row-major [out, in] exactly as the PyTorch nn.Linear weight
 *     (q/k rows in Hugging Face's order, i.e. after transformers' GGUF un-permutation).
 *     The engine neither keeps nor modifies these arrays. Optionally also quantized: {name:
 *     {type: "Q4_1", bytes: Uint8Array}}, the GGUF blocks of some of the matrices, rows in that
 *     same order: the kernel then unpacks those itself and reads the float array only where it
 *     needs one (o for the per-head maps, up and down for helpers sharing the MLP), so the
 *     model may make those arrays on first read (weights.js does).
 *   The bias source exists when config.attention_bias or config.mlp_bias is true, or the model
 *   has an lmHeadBias (as infoflow.weights.has_bias_source: any bias that writes to the logits).
 * ids: Int32Array (P) of token ids, BOS included, as the Python tokenizer gives them.
 * variants: {name: null | Int32Array (P)}: null = one source per token; otherwise a group id
 *   per token, numbered 0.. by first use (as Python's resolve_groups gives them).
 * opts: {topK = 5, logitLens = true, heads = true, onProgress(step, total, label), signal: AbortSignal,
 *        threads = min(4, navigator.hardwareConcurrency), kernel = "fused", lensMainShare}
 *   kernel: "fused" uses the fused multiply-add build of the matmul where the browser has relaxed
 *   SIMD (kernel.js); "plain" the mul-then-add build, whose bits are the same on every machine.
 *   The worker keeps the first variant it loads (result.timings.kernel says which).
 *   observers: objects with attention(l, O, w, tri) (O (T, H·hd): the mixed heads, before
 *   o_proj; tri: engine-stats.js triangle) and mlpWrite(l, delta, tri) (delta (T, d): the MLP's write per row), called as each layer's parts
 *   are made, as engine.decompose_stack's observers in Python (engine-split.js SourceSplit).
 *   heads: also split every attention write by query head (engine-heads.js), as Python's
 *   decompose(heads=True) does; false leaves result.heads null.
 *   threads > 1 splits the unembedding (predictions and logit lens) over helper workers, each
 *   holding a copy of its slice of the vocabulary (engine-lens.js; no SharedArrayBuffer). With
 *   the logit lens, each layer's lens rows go to the helpers as soon as the layer is done, and
 *   they unembed them while this thread does the next layers (alone); this thread keeps only
 *   lensMainShare of the vocabulary (default LENS_MAIN_SHARE), done at the end. Without the
 *   lens, the helpers share each layer's MLP decomposition by slices of d_ff (engine-mlp.js;
 *   each helper is sent its slice of W_up and W_down and the rows). The helpers are kept, with
 *   their split, for the next call with the same W_U array and thread count (another count
 *   restarts them, and so does an error or Cancel during the layers); releaseLens(W_U), also
 *   exported here, ends them.
 *   onProgress is called with step 0 .. total (total = n_layers + 1: the layers, then the
 *   unembedding). A signal that aborts rejects the promise with a DOMException "AbortError"
 *   (checked between layers and inside the long loops).
 *
 * result (names as in infoflow/decompose.py's Decomposition; arrays row-major, float32 unless
 * said otherwise; G = sources_count of the variant):
 *   {n_layers L, n_tokens P, top_k k, has_bias,
 *    token_ids Int32Array (P), embed_norm (P), recon_error (L, 2), logit_error number,
 *    pred_ids Int32Array (P, k), pred_probs (P, k), pred_logits (P, k),
 *    lens_ids Int32Array (L, 2, P, k) | null, lens_probs (L, 2, P, k) | null,
 *    heads: null | {n_heads H, labels [H'] ("0".."H-1", then "o_proj bias" where o_proj has a
 *           bias), write_norm, write_proj (L, H', P), pattern (L, H, P, P),
 *           variants: {name: {norm, proj (L, H', P, G)}}}   (docs/data-format.md "Per-head data")
 *    variants: {name: {grouping "tokens" (null) | "custom" (the caller knows when that is
 *                      Python's "words"), groups Int32Array (P), sources_count G,
 *                      has_bias, attn_norm, mlp_norm, attn_delta_norm, mlp_delta_norm,
 *                      attn_proj, mlp_proj (L, P, G), logit_attr (P, k, G)}},
 *    timings {layers_ms, logits_ms, total_ms, layers_kernel_ms, logits_kernel_ms, kernel_bytes,
 *             unembedding_threads, mlp_threads, heads_ms, kernel ("fused" | "plain"),
 *             lens_streamed, lens_helper_ms, lens_helper_kernel_ms (the busiest helper's time
 *             on the streamed lens, and in its kernel; 0 when not streamed)}}
 *   (the *_kernel_ms parts are the time inside the matmul kernel; kernel_bytes its memory, which
 *   grows to its peak and stays)
 *   With biases, the last source of every variant is "bias". Entries with a group not yet
 *   present at a position are zero.
 *   logit_error = max |logits(Σ_s c) − logits|, computed as max |((Σ_s c − r) ⊙ w_f / rms_f)·W_U|
 *   (the same quantity by linearity, without cancelling two float32 logits).
 */
import {initKernel, kernelMemory, kernelTime, matmul, mixHeads} from "./kernel.js";
import {applyRope, checkConfig, checkIds, checkTopK, layerWeights, ropeTables, sourceGrouping,
        tokenGroups} from "./engine-model.js";
import {SublayerStats, reconError, rowNorms, triangle, unitForProj} from "./engine-stats.js";
import {abortError, logitAttribution, meanLogitLast} from "./engine-logits.js";
import {LensStream, defaultThreads, helperMlp, helpersFor, releaseLens, topLogitsThreaded, trackTokens} from "./engine-lens.js";
import {MLP_ROWS, columns, mlpRows, sliceWeights} from "./engine-mlp.js";
import {HeadPatterns, HeadStats, headMaps, headsResult, recordHeads} from "./engine-heads.js";
import {FrozenRecorder} from "./engine-graph.js";
import {add, addBias, addBiasSource, addInPlace, finalNormed, finalScale, invRms, mulRows, reconDiff,
        scaleRows} from "./engine-ops.js";


export {releaseLens} from "./engine-lens.js";

// The calling thread's share of the vocabulary when the helpers stream the logit lens: they
// unembed while it does the layers, so it takes a small share at the end (measured in
// docs/history/performance-2026.md, sixth, ninth and tenth sessions).
export const LENS_MAIN_SHARE = 0.25;

// Lens rows go to the helpers in sends of at least this many (a few layers at once for short
// prompts): the kernel's row chunk, at which its products run ~10 % faster than at 32 rows.
export const LENS_PUSH_ROWS = 64;

export async function decompose(model, ids, variants = {main: null}, opts = {}) {
  const {topK = 5, logitLens = true, heads = true, onProgress = null, signal = null,
         threads = defaultThreads(), kernel = "fused", lensMainShare = LENS_MAIN_SHARE, graph = false,
         lensTarget = null, observers = []} = opts;
  const t0 = performance.now(), k0 = kernelTime();
  const cfg = checkConfig(model.config);
  const L = cfg.n_layers, P = ids.length;
  checkIds(ids, cfg.vocab);
  checkTopK(topK, cfg.vocab);
  const kernelInfo = await initKernel(kernel);
  const run = await startRun(model, cfg, ids, variants, {topK, logitLens, heads, signal, threads, lensMainShare});
  if (graph) run.frozen = new FrozenRecorder(cfg, P);
  run.observers = observers;                         // engine-split.js SourceSplit: the parts, as made
  const progress = (step, label) => onProgress && onProgress(step, L + 1, label);
  try {
    for (let l = 0; l < L; l++) {
      progress(l, `layer ${l + 1} of ${L}`);
      if (signal && signal.aborted) throw abortError();
      const w = layerWeights(await model.layer(l), cfg);
      try {
        const xMid = attentionStep(run, l, w);         // x_mid = x + attn(x), split over the sources
        run.x = await mlpStep(run, l, w, xMid);        // x = x_mid + mlp(x_mid), gate frozen, split
      } finally {
        w.dispose();
      }
    }
  } catch (e) {
    // helpers streaming the lens would go on with this run's rows, and one sharing the MLP may
    // still be busy with its slice: end them (the next call starts afresh)
    if (run.stream || run.mlpPool) await releaseLens(run.W_U);
    throw e;
  }
  const tLayers = performance.now(), kLayers = kernelTime();
  progress(L, "predictions and logit lens");
  const top = await unembed(model, cfg, run.C, run.tri, run.x, run.lensX, topK, {signal, threads, stream: run.stream});
  const out = {};
  run.groupings.forEach(([name, g], i) => {
    const st = run.stats[i];
    out[name] = {
      grouping: g ? "custom" : "tokens", groups: tokenGroups(variants[name], P), sources_count: st.G,
      has_bias: run.bias, attn_norm: st.attn_norm, mlp_norm: st.mlp_norm,
      attn_delta_norm: st.attn_delta_norm, mlp_delta_norm: st.mlp_delta_norm,
      attn_proj: st.attn_proj, mlp_proj: st.mlp_proj,
      logit_attr: logitAttribution(run.C, run.tri, top.scaleF, run.W_U, model.lmHeadBias, top.pred_ids, topK, g,
                                   st.G, cfg.d_model),
      logit_mean: meanLogitLast(run.C, run.tri, top.scaleF, run.W_U, cfg.vocab, model.lmHeadBias, g, st.G, cfg.d_model),
    };
  });
  const tTrack = performance.now();
  const lensLast = run.lensX ? await lensTrack(run, top.pred_ids.slice((P - 1) * topK, P * topK), lensTarget,
                                               {threads, signal}) : null;
  const trackMs = performance.now() - tTrack;
  progress(L + 1, "done");
  const tEnd = performance.now();
  return {
    n_layers: L, n_tokens: P, top_k: topK, has_bias: run.bias, token_ids: Int32Array.from(ids),
    embed_norm: run.embedNorm, recon_error: run.recon, logit_error: top.logit_error,
    pred_ids: top.pred_ids, pred_probs: top.pred_probs, pred_logits: top.pred_logits,
    lens_ids: top.lens_ids, lens_probs: top.lens_probs, lens_last: lensLast, variants: out,
    frozen: run.frozen ? run.frozen.finish(ids, run.x) : null,
    heads: headsResult(run.patterns, run.headStats, run.groupings.map(([name]) => name)),
    timings: {layers_ms: tLayers - t0, logits_ms: tEnd - tLayers, total_ms: tEnd - t0,
              layers_kernel_ms: kLayers - k0, logits_kernel_ms: kernelTime() - kLayers,
              kernel_bytes: kernelMemory(), unembedding_threads: top.threads,
              mlp_threads: run.mlpPool ? run.mlpPool.helpers.length + 1 : 1, lens_streamed: Boolean(run.stream),
              lens_helper_ms: top.helperMs || 0, lens_helper_kernel_ms: top.helperKernelMs || 0,
              heads_ms: run.headsMs, kernel: kernelInfo.variant, lens_last_ms: trackMs},
  };
}

/**
 * The last position's logit lens of its top-k predictions, then of `target` where it is not one
 * of them, after every sublayer (decompose._lens_track in Python): {ids Int32Array (m),
 * probs Float32Array (m, L, 2), ranks Int32Array (m, L, 2), target (row of the target or null),
 * rows Float32Array (2L, d): the final-normed residuals, for other tokens (lensRowsTrack)}.
 */
async function lensTrack(run, top, target, {threads, signal}) {
  const {cfg, P, lensX, model} = run, {n_layers: L, d_model: d} = cfg;
  const rows = new Float32Array(2 * L * d);
  for (let c = 0; c < 2 * L; c++) rows.set(lensX.subarray((c * P + P - 1) * d, (c * P + P) * d), c * d);
  const ids = Array.from(top);
  if (target != null && !ids.includes(target)) ids.push(target);
  const t = await trackTokens(rows, 2 * L, run.W_U, cfg.vocab, d, ids, {bias: model.lmHeadBias, threads, signal});
  return {ids: Int32Array.from(ids), probs: t.probs, ranks: t.ranks, rows,
          target: target == null ? null : ids.indexOf(target)};
}

/**
 * Everything one decomposition carries from layer to layer, before layer 0: each position holds
 * only its own embedding, so the real residual x (P, d) is its own single part in C (T, d).
 */
async function startRun(model, cfg, ids, variants, {topK, logitLens, heads, signal, threads, lensMainShare}) {
  const {n_layers: L, d_model: d, vocab: V} = cfg, P = ids.length;
  const bias = Boolean(cfg.attention_bias || cfg.mlp_bias || model.lmHeadBias);
  const tri = triangle(P, bias);
  const groupings = Object.entries(variants).map(([name, g]) => [name, sourceGrouping(name, g, P, bias)]);
  const x = new Float32Array(P * d);                               // (P, d) the real residual
  for (let p = 0; p < P; p++) x.set(model.embed.subarray(ids[p] * d, (ids[p] + 1) * d), p * d);
  const C = new Float32Array(tri.T * d);                           // (T, d) its parts, per source
  for (let p = 0; p < P; p++) C.set(x.subarray(p * d, (p + 1) * d), tri.offset[p] * d);
  const stats = groupings.map(([, g]) => new SublayerStats(L, tri, g, d));
  for (const st of stats) st.start(C);
  const W_U = model.lmHead || model.embed;
  // With the lens and helpers, the helpers unembed each layer's lens rows while this thread
  // goes on with the next layers (which it then does alone); else they share the MLP.
  // (The same split without the lens, where the unembedding is only 2P rows.)
  const pool = await helpersFor(W_U, V, d, model.lmHeadBias, threads, lensMainShare);
  const stream = logitLens && pool ? new LensStream(pool, W_U, d, topK, model.lmHeadBias) : null;
  return {
    model, cfg, P, tri, bias, groupings, stats, x, C, W_U, stream, signal,
    embedNorm: Float32Array.from(rowNorms(x, P, d)),
    patterns: heads ? new HeadPatterns(L, cfg.n_heads, P) : null,
    headStats: [], headsMs: 0,                                     // made with layer 0 (o_proj bias?)
    rope: ropeTables(cfg, P),
    lensX: logitLens ? new Float32Array(2 * L * P * d) : null,     // (L, 2, P, d), final-normed
    lensSent: 0,                                                   // layers whose lens rows went to the helpers
    recon: new Float32Array(L * 2),
    buf: scratch(cfg, tri),                                        // reused by every layer
    mlpPool: stream ? null : pool,                                 // null: one thread
  };
}

/** Attention: run it on the real residual, then split its write over the sources (and the
 * heads). -> x_mid = x + attn(x); C becomes the parts of x_mid. */
function attentionStep(run, l, w) {
  const {cfg, P, tri, C, buf, stats} = run, d = cfg.d_model;
  const att = attentionForward(run.x, w, cfg, run.rope, P);
  const xMid = add(run.x, att.out);
  if (run.frozen) run.frozen.attention(l, att.inv, att.pattern);
  const dAttn = decomposeAttention(C, tri, w, att, cfg, buf);
  for (const ob of run.observers) ob.attention(l, buf.O, w, tri);      // before record(), which may reuse dAttn
  const rMid = unitForProj(xMid, P, d);
  for (const st of stats) st.record(l, "attn", C, dAttn, rMid);
  if (run.patterns) {                             // the same write, split by head (O is still in buf.O)
    const th = performance.now();
    if (l === 0) run.headStats = run.groupings.map(([, g]) => new HeadStats(cfg.n_layers, cfg, tri, g, w.oBias));
    run.patterns.record(l, att.pattern);
    const maps = headMaps(w.raw, rMid, cfg, P, run.model, l);     // R_h kept on the model's behalf
    try {
      recordHeads(l, run.headStats, buf.O, att.heads, maps, rMid, w.oBias);
    } finally {
      maps.dispose();
    }
    run.headsMs += performance.now() - th;
  }
  run.recon[2 * l] = reconError(C, xMid, tri, d);
  return xMid;
}

/** The MLP, its gate frozen, on x_mid, then its write split over the sources; the layer's two
 * lens rows per position go to the helpers. -> x = x_mid + mlp(x_mid); C becomes its parts. */
async function mlpStep(run, l, w, xMid) {
  const {cfg, P, tri, C, buf, stats, model, lensX} = run, d = cfg.d_model;
  const mlp = mlpForward(xMid, w, cfg, P);
  const x = add(xMid, mlp.out);
  if (run.frozen) run.frozen.mlp(l, mlp.inv, mlp.gate);
  const dMlp = await decomposeMlp(C, tri, w, mlp, cfg, buf, run.signal, run.mlpPool);
  for (const ob of run.observers) ob.mlpWrite(l, dMlp, tri);
  const rOut = unitForProj(x, P, d);
  for (const st of stats) st.record(l, "mlp", C, dMlp, rOut);
  run.recon[2 * l + 1] = reconError(C, x, tri, d);
  if (lensX) {
    lensX.set(finalNormed(xMid, model.finalNorm, cfg.rms_eps, P, d), (2 * l) * P * d);
    lensX.set(finalNormed(x, model.finalNorm, cfg.rms_eps, P, d), (2 * l + 1) * P * d);
    // the rows of the layers not yet sent go to the helpers (a copy of them alone) once there are
    // a product's worth (LENS_PUSH_ROWS), or after the last layer
    const from = run.lensSent;
    if (run.stream && (2 * P * (l + 1 - from) >= LENS_PUSH_ROWS || l === cfg.n_layers - 1)) {
      run.stream.push(lensX.slice(2 * from * P * d, 2 * (l + 1) * P * d), 2 * P * (l + 1 - from));
      run.lensSent = l + 1;
    }
  }
  return x;
}

/**
 * Predictions, logit lens and the reconstructed logits' error in one pass over the vocabulary:
 * every lens row (the last P of them are the final residual), or just the final rows, then P
 * rows of (Σ_s c − r) ⊙ w_f/rms_f, whose logits are the reconstruction's logit error.
 */
async function unembed(model, cfg, C, tri, x, lensX, k, {signal, threads, stream}) {
  const {n_layers: L, d_model: d, vocab: V} = cfg, P = tri.P;
  const scaleF = finalScale(x, model.finalNorm, cfg.rms_eps, P, d);     // (P, d)
  const rows = lensX ? 2 * L * P : P;
  const X = new Float32Array((rows + P) * d);
  if (lensX) X.set(lensX); else X.set(mulRows(x, scaleF), 0);
  const diff = reconDiff(C, x, scaleF, tri, d);
  X.set(diff, rows * d);
  let top;
  if (stream) {
    stream.push(diff, P, P);
    top = await stream.finish(X, rows + P, P, signal);
  } else {
    top = await topLogitsThreaded(X, rows + P, model.lmHead || model.embed, V, d, k,
                                  {absRows: P, signal, bias: model.lmHeadBias, threads});
  }
  const probs = (from, n) => {                                   // exp(logit − logZ[row])
    const out = new Float32Array(n * k);
    for (let i = 0; i < n * k; i++) out[i] = Math.exp(top.logits[from * k + i] - top.logZ[from + Math.floor(i / k)]);
    return out;
  };
  const last = rows - P;
  return {
    scaleF, threads: top.threads, logit_error: top.absMax, helperMs: top.helperMs, helperKernelMs: top.helperKernelMs,
    pred_ids: top.ids.slice(last * k, rows * k), pred_logits: top.logits.slice(last * k, rows * k),
    pred_probs: probs(last, P),
    lens_ids: lensX ? top.ids.slice(0, rows * k) : null, lens_probs: lensX ? probs(0, rows) : null,
  };
}

// ----------------------------------------------------------------------------- forward pass

/** Attention of one layer over the real residual x (P, d); freezes rms1 and the pattern.
 * zeroHead {h, p}: that head's slice of o_proj's input at that position is zeroed (the ablation
 * check, engine-ablate.js, as infoflow/ablate.py's o_proj pre-hook). */
export function attentionForward(x, w, cfg, rope, P, zeroHead = null) {
  const {d_model: d, n_heads: H, n_kv_heads: KV, head_dim: hd} = cfg;
  const inv = invRms(x, P, d, cfg.rms_eps);                      // (P,)  1 / rms1
  const xhat = scaleRows(x, inv, P, d);                           // the norm's weight is in W
  const q = addBias(matmul(xhat, P, w.q), w.qBias, P);            // (P, H·hd)
  const k = addBias(matmul(xhat, P, w.k), w.kBias, P);            // (P, KV·hd)
  const v = addBias(matmul(xhat, P, w.v), w.vBias, P);            // (P, KV·hd)
  applyRope(q, P, H, hd, rope);
  applyRope(k, P, KV, hd, rope);
  // pattern[h, p, t] = softmax over t ≤ p of q_h[p]·k_g[t] / √hd; heads[p, h] = Σ_t pattern·v_g[t]
  const pattern = new Float32Array(H * P * P);                    // (H, P, P)
  const heads = new Float32Array(P * H * hd);                     // (P, H·hd)
  const scaling = Math.fround(1 / Math.sqrt(hd)), rep = H / KV;
  const scores = new Float64Array(P);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / rep);
    for (let p = 0; p < P; p++) {
      let max = -Infinity;
      for (let t = 0; t <= p; t++) {
        let dot = 0;
        for (let j = 0; j < hd; j++) dot += q[p * H * hd + h * hd + j] * k[t * KV * hd + g * hd + j];
        scores[t] = Math.fround(Math.fround(dot) * scaling);
        max = Math.max(max, scores[t]);
      }
      let sum = 0;
      for (let t = 0; t <= p; t++) sum += (scores[t] = Math.exp(scores[t] - max));
      const A = (h * P + p) * P, o = p * H * hd + h * hd;
      for (let t = 0; t <= p; t++) {
        const a = pattern[A + t] = scores[t] / sum;
        for (let j = 0; j < hd; j++) heads[o + j] += a * v[t * KV * hd + g * hd + j];
      }
    }
  }
  let into = heads;
  if (zeroHead) {                              // a copy: `heads` stays the real one for the caller
    into = heads.slice();
    into.fill(0, zeroHead.p * H * hd + zeroHead.h * hd, zeroHead.p * H * hd + (zeroHead.h + 1) * hd);
  }
  const out = addBias(matmul(into, P, w.o), w.oBias, P);         // (P, d)
  return {inv, pattern, heads, out};
}

/** SwiGLU MLP of one layer over x_mid (P, d); freezes rms2 and the gate act(gate_proj(x)). */
export function mlpForward(xMid, w, cfg, P) {
  const {d_model: d, d_ff: ff} = cfg;
  const inv = invRms(xMid, P, d, cfg.rms_eps);                   // (P,)  1 / rms2
  const xhat = scaleRows(xMid, inv, P, d);
  const gate = addBias(matmul(xhat, P, w.gate), w.gateBias, P);  // (P, ff), then SiLU in place
  const up = addBias(matmul(xhat, P, w.up), w.upBias, P);        // (P, ff)
  for (let i = 0; i < P * ff; i++) {
    gate[i] = gate[i] / (1 + Math.exp(-gate[i]));
    up[i] *= gate[i];
  }
  const out = addBias(matmul(up, P, w.down), w.downBias, P);     // (P, d)
  return {inv, gate, out};
}

// ----------------------------------------------------------------------------- decomposition

/**
 * The attention block's write for every (position, source) row; adds it into C, returns it.
 *   V[row] = (W_v ⊙ w1) · c[row] / rms1[pos]                (T, d) -> (T, KV·hd)
 *   O[p, s] = Σ_{t = start[s]}^{p} A[h, p, t] V[t, s]       per query head, GQA   -> (T, H·hd)
 *   δ[row] = W_o · O[row]                                   (T, H·hd) -> (T, d)
 * O stays in buf.O for the per-head parts (engine-heads.js) until the next layer.
 */
function decomposeAttention(C, tri, w, att, cfg, buf) {
  const {d_model: d, n_heads: H, n_kv_heads: KV, head_dim: hd} = cfg;
  const dkv = KV * hd;
  const V = matmul(C, tri.T, w.v, buf.V);                         // (T, dkv)
  for (let row = 0; row < tri.T; row++) {
    const s = att.inv[tri.pos[row]];
    for (let j = row * dkv, e = j + dkv; j < e; j++) V[j] *= s;
  }
  addBiasSource(V, w.vBias, tri, dkv);
  const O = mixHeads(V, att.pattern, tri, H, KV, hd, buf.O);      // (T, H·hd), in the kernel
  const delta = matmul(O, tri.T, w.o, buf.delta);                 // (T, d)
  addBiasSource(delta, w.oBias, tri, d);
  addInPlace(C, delta);
  return delta;
}

/**
 * The MLP's write for every row, gate frozen (engine-mlp.js); adds it into C, returns it.
 * With helper workers, each computes the write of its slice of the d_ff hidden units from its
 * slice of W_up and W_down; the slices' writes are summed in a fixed order.
 */
async function decomposeMlp(C, tri, w, mlp, cfg, buf, signal, pool) {
  const {d_model: d, d_ff: ff} = cfg;
  const gateScale = new Float32Array(tri.P * ff);                  // g / rms2, (P, ff)
  for (let p = 0; p < tri.P; p++) {
    for (let j = 0; j < ff; j++) gateScale[p * ff + j] = mlp.gate[p * ff + j] * mlp.inv[p];
  }
  const rows = {C, T: tri.T, pos: tri.pos, src: tri.src, biasSource: tri.biasSource, d, signal};
  const delta = buf.delta;
  if (!pool) {
    mlpRows({...rows, up: w.up, down: w.down, gateScale, gate: mlp.gate, upBias: w.upBias, nj: ff,
             into: delta, u: buf.u});
  } else {
    const n = pool.helpers.length + 1, step = Math.ceil(ff / n / 8) * 8;
    const part = (j0, j1) => ({gateScale: columns(gateScale, tri.P, ff, j0, j1),
                               gate: w.upBias && columns(mlp.gate, tri.P, ff, j0, j1),
                               upBias: w.upBias && w.upBias.slice(j0, j1)});
    const shares = pool.helpers.map((worker, i) => {
      const j0 = Math.min(ff, (i + 1) * step), j1 = Math.min(ff, (i + 2) * step);
      if (j0 === j1) return Promise.resolve(null);
      // the helper gets its slice alone: rows j0..j1 of W_up, columns j0..j1 of W_down
      const raw = {up: w.raw.up.slice(j0 * d, j1 * d), postNorm: w.raw.postNorm,
                   down: columns(w.raw.down, d, ff, j0, j1)};
      const mine = part(j0, j1);          // like raw, made for this helper: moved, not copied
      return helperMlp(worker, {...rows, signal: undefined, raw, ff: j1 - j0, j0: 0, j1: j1 - j0, ...mine},
                       [raw.up, raw.down, mine.gateScale, mine.gate, mine.upBias].filter(Boolean).map((a) => a.buffer));
    });
    shares.forEach((s) => s.catch(() => {}));
    const own = sliceWeights(w.raw, d, ff, 0, Math.min(ff, step));
    try {
      mlpRows({...rows, up: own.up, down: own.down, nj: Math.min(ff, step), into: delta,
               u: buf.u, ...part(0, Math.min(ff, step))});
    } finally {
      own.dispose();
    }
    for (const s of await Promise.all(shares)) if (s) addInPlace(delta, s);
  }
  addBiasSource(delta, w.downBias, tri, d);
  addInPlace(C, delta);
  return delta;
}

/** The decomposition's working arrays, made once per call and reused by every layer. */
function scratch(cfg, tri) {
  const {d_model: d, n_heads: H, n_kv_heads: KV, head_dim: hd, d_ff: ff} = cfg;
  return {
    V: new Float32Array(tri.T * KV * hd),                          // (T, KV·hd) values
    O: new Float32Array(tri.T * H * hd),                           // (T, H·hd) mixed heads
    delta: new Float32Array(tri.T * d),                            // (T, d) a block's write
    u: new Float32Array(Math.min(MLP_ROWS, tri.T) * ff),           // (rows, ff) one MLP chunk
  };
}
