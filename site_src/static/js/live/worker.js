// The live page's Web Worker: tokenize, load the weights, run the engine, encode a data file.
//
// Messages in:  {type: "init", manifest}             the manifest URL (fetched now: ~60 KB)
//               {type: "count", seq, text, chat}     -> {type: "count", seq, n} or {type: "error"}
//               {type: "run", text, chat, maxTokens} -> progress..., then {type: "done", bytes,
//                                                       headsBytes, predIds (P·k token ids of the top-k
//                                                       predictions, for the Paths panel's pickers), timings}
//               {type: "regroup", seq, text, chat, groups, expectIds?, maxTokens?} -> progress..., then
//                                                       {type: "variant", seq, bytes, headsBytes}: the
//                                                       prompt with one variant "custom" (groups: one id
//                                                       per token, by first use; expectIds: refuse other
//                                                       token ids, e.g. a gallery page's data file)
//               {type: "graph", seq, text, chat, target, contrast, position, nodeThreshold?, edgeThreshold?, split?}
//                                                    -> {type: "graph", seq, graph, rerun, split, stateBytes}: the
//                                                       attribution graph of the prompt `text` (the
//                                                       last run's, else decomposed again)
//                                                       (engine-graph.js; graph: one decoded entry of
//                                                       graphfile.graph_entry). target / contrast: a token
//                                                       id or a one-token string (contrast null: the
//                                                       demeaned logit); position: -1 = the last. The
//                                                       run's frozen state is kept (GRAPH_KEEP_BYTES at
//                                                       most) so a new target needs no new decomposition;
//                                                       rerun: true when it had to decompose again
//                                                       split: with each node's effect by source
//                                                       (by_source), one more decomposition
//               {type: "ablate", seq, text, chat, target, contrast, position, nodes}
//                                                    -> {type: "progress", phase: "ablate", seq, step, total}...,
//                                                       then {type: "ablated", seq, values}: the ablation check's
//                                                       T (Float64Array: unablated, then each node zeroed;
//                                                       engine-ablate.js) in the real model, on the last
//                                                       run's prompt; not part of the run
//               {type: "cancel", job?}               -> the computations queued or running (of kind `job`:
//                                                       "run", "regroup", "graph", "ablate") reject with
//                                                       "cancelled"
// run, regroup, graph and ablate go one at a time, in the order asked (queued()).
// Messages out: {type: "progress", phase: "download", loaded, total, cached}
//               {type: "progress", phase: "layers", step, total, label}
//               {type: "error", kind, message, chunk?}   kind: input | download | memory | engine | cancelled
// The weights stay in this worker between runs; the page terminates it to free them.
import { fetchManifest, fetchTokenizer, loadModel, LoadError } from "./weights.js";
import { LiveTokenizer } from "./tokenize.js";
import { encodeDocument } from "./encode.js";
import { encodeHeads } from "./encode-heads.js";

/** The names the page gives the two downloads; the per-head file names the main one. */
export const FILE_NAMES = { main: "live.msgpack", heads: "live.heads.msgpack" };

let manifestUrl = null;
let manifestP = null;      // Promise of the manifest
let tokenizerP = null;     // Promise of a LiveTokenizer
let modelP = null;         // Promise of {live, engineModel}
const jobs = new Set();    // {kind, ctl} of the computations queued or in progress (see queued())
let queue = Promise.resolve();
let lastRun = null;        // {text, chat, ids, frozen | null, state | null, lensRows | null}: what "graph" and "lensToken" read

/** The frozen state (patterns, gates, scales, node writes) kept for new targets at most this big:
 * ~30 MB at P = 64 on the default model, next to the ~600 MB of weights and the run's own arrays
 * in the page's 1 GB budget. Above it, a graph request decomposes the prompt again. */
export const GRAPH_KEEP_BYTES = 256 * 2 ** 20;

class InputError extends Error {}

/** The manifest, checked against its content hash (weights.js fetchManifest): fetched once. */
function manifest() {
  if (!manifestP) {
    manifestP = fetchManifest(manifestUrl);
    manifestP.catch(() => { manifestP = null; });
  }
  return manifestP;
}

function tokenizer() {
  if (!tokenizerP) {
    tokenizerP = manifest().then(async (m) => new LiveTokenizer(await fetchTokenizer(m, manifestUrl), m.tokenizer));
    tokenizerP.catch(() => { tokenizerP = null; });
  }
  return tokenizerP;
}

/** The engine's `model` object (engine.js JSDoc) over the exported weights. */
function engineModel(live) {
  const c = live.config;
  const embed = live.tensor("model.embed_tokens.weight");
  return {
    config: {
      n_layers: c.layers, d_model: c.d_model, n_heads: c.heads, n_kv_heads: c.kv_heads,
      head_dim: c.head_dim, d_ff: c.d_mlp, vocab: c.vocab, rms_eps: c.rms_norm_eps,
      rope_theta: c.rope_theta, rope_scaling: c.rope_scaling || null,
      tie_embeddings: c.tie_word_embeddings, attention_bias: c.attention_bias, mlp_bias: c.mlp_bias,
      hidden_act: "silu",
    },
    embed,
    finalNorm: live.tensor("model.norm.weight"),
    lmHead: c.tie_word_embeddings ? null : live.tensor("lm_head.weight"),
    layer: async (i) => live.layerTensors(i),
  };
}

function model(signal) {
  if (!modelP) {
    modelP = (async () => {
      const live = await loadModel(manifestUrl, {
        manifest: await manifest(), signal, onProgress: (p) => postMessage({ type: "progress", phase: "download", ...p }),
      });
      return { live, engine: engineModel(live) };
    })();
    modelP.catch(() => { modelP = null; });
  }
  return modelP;
}

function encodeIds(tok, text, chat) {
  if (typeof text !== "string" || !text.trim()) {
    throw new InputError("The prompt is empty: type some text to decompose.");
  }
  return tok.encode(text, { chat });
}

/** The engine's result plus the tokenizer's strings -> what encode.js writes. */
function toResult(res, tok, ids, tokens, variantInfo, live) {
  const L = res.n_layers, P = res.n_tokens, k = res.top_k;
  const used = new Set(res.pred_ids);
  if (res.lens_ids) for (const i of res.lens_ids) used.add(i);
  if (res.lens_last) for (const i of res.lens_last.ids) used.add(i);
  const token_text = new Map([...used].sort((a, b) => a - b).map((i) => [i, tok.display(i)]));
  const variants = variantInfo.map(({ name, label, grouping }) => {
    const v = res.variants[name];
    const groups = Array.from(v.groups);
    const nGroups = Math.max(...groups) + 1;
    const sources = new Array(nGroups).fill("");
    groups.forEach((g, p) => { sources[g] += tokens[p]; });
    if (v.has_bias) sources.push("bias");
    if (sources.length !== v.sources_count) throw new Error(`variant ${name}: ${sources.length} labels, ${v.sources_count} sources`);
    return { ...v, name, label, grouping, groups, sources };
  });
  return {
    L, P, k, tokens, token_ids: ids, embed_norm: res.embed_norm, recon_error: res.recon_error,
    logit_error: res.logit_error, pred_ids: res.pred_ids, pred_probs: res.pred_probs,
    pred_logits: res.pred_logits, lens_ids: res.lens_ids, lens_probs: res.lens_probs,
    lens_last: res.lens_last, token_text, variants, heads: res.heads, model: live.manifest.model, precision: "float32",
    generator: { ...live.manifest.generator, runtime: "browser" },
  };
}

async function run({ text, chat, maxTokens }, signal) {
  const t0 = performance.now();
  const tok = await tokenizer();
  const ids = encodeIds(tok, text, chat);
  if (ids.length > maxTokens) {
    throw new InputError(`The prompt has ${ids.length} tokens; the limit here is ${maxTokens}. Shorten it.`);
  }
  const { live, engine } = await model(signal);
  if (signal.aborted) throw new DOMException("cancelled", "AbortError");
  const t1 = performance.now();
  let decompose;
  try {
    ({ decompose } = await import("./engine.js"));
  } catch (e) {
    throw new Error(`The in-browser engine (live/engine.js) could not be loaded: ${e.message}`);
  }
  const tokens = tok.displayTokens(ids);
  const special = ids.map((i) => tok.isSpecial(i));
  const words = tok.wordGroups(tokens, special);
  const variantInfo = [
    { name: "tokens", label: "none (each token)", grouping: "tokens" },
    { name: "words", label: "by words", grouping: "words" },
  ];
  const res = await decompose(engine, Int32Array.from(ids), { tokens: null, words: Int32Array.from(words) }, {
    topK: 5, logitLens: true, signal, onProgress: layerProgress, graph: true,
  });
  const { frozenBytes } = await import("./engine-graph.js");
  const keep = frozenBytes(engine.config, ids.length) <= GRAPH_KEEP_BYTES;
  lastRun = { text, chat: !!chat, ids, frozen: keep ? res.frozen : null, state: null,
              lensRows: res.lens_last ? res.lens_last.rows : null };
  const t2 = performance.now();
  const result = toResult(res, tok, ids, tokens, variantInfo, live);
  const prompt = { id: "live", title: "Your prompt", text, tags: [], note: null, chat: !!chat };
  const bytes = await encodeDocument(result, prompt);
  const headsBytes = await encodeHeads(result, FILE_NAMES.main);
  const t3 = performance.now();
  return { bytes, headsBytes, predIds: Int32Array.from(res.pred_ids), timings: { load: t1 - t0, engine: t2 - t1, encode: t3 - t2, ...res.timings } };
}

function layerProgress(step, total, label) {
  postMessage({ type: "progress", phase: "layers", step, total, label });
}

/**
 * A prompt again (the page's result), with the visitor's custom grouping as its one variant:
 * exact, as infoflow.decompose(text, groups=[...]) computes it (the weights are usually still in
 * this worker). No logit lens: it does not depend on the grouping, and the page has it.
 */
async function regroup({ text, chat, groups, expectIds = null, maxTokens = null }, signal) {
  const tok = await tokenizer();
  const ids = encodeIds(tok, text, chat);
  if (expectIds && (expectIds.length !== ids.length || expectIds.some((id, i) => id !== ids[i]))) {
    throw new InputError("The browser's tokenizer splits this prompt differently from the page's data file, "
      + "so it cannot be recomputed here; use infoflow.decompose(text, groups=[...]) in Python.");
  }
  if (maxTokens && ids.length > maxTokens) {
    throw new InputError(`This prompt has ${ids.length} tokens; the browser recomputes at most ${maxTokens}. `
      + "Use infoflow.decompose(text, groups=[...]) in Python.");
  }
  if (!Array.isArray(groups) || groups.length !== ids.length) {
    throw new InputError(`A custom grouping needs one group per token (${ids.length}).`);
  }
  const { live, engine } = await model(signal);
  const { decompose } = await import("./engine.js");
  const res = await decompose(engine, Int32Array.from(ids), { custom: Int32Array.from(groups) }, {
    topK: 5, logitLens: false, signal, onProgress: layerProgress,
  });
  const info = [{ name: "custom", label: "custom (exact)", grouping: "custom" }];
  const result = toResult(res, tok, ids, tok.displayTokens(ids), info, live);
  const prompt = { id: "live", title: "Your prompt", text, tags: [], note: null, chat: !!chat };
  const bytes = await encodeDocument(result, prompt);
  return { bytes, headsBytes: await encodeHeads(result, FILE_NAMES.main) };
}

/** A target or contrast: a token id, or a string that is one token on this model. */
function oneToken(tok, value, what, V) {
  if (Number.isInteger(value)) return value;
  if (typeof value !== "string" || value === "") throw new InputError(`The ${what} must be a token id or a one-token string.`);
  const ids = tok.tok.encode(value, { add_special_tokens: false }).ids;
  if (ids.length !== 1) {
    throw new InputError(`The ${what} ${JSON.stringify(value)} is ${ids.length} tokens on this model `
      + `(${ids.map((i) => JSON.stringify(tok.display(i))).join(", ")}); give a single token.`);
  }
  if (ids[0] >= V) throw new InputError(`The ${what} is outside the vocabulary.`);
  return ids[0];
}

/**
 * The attribution graph of the last run's prompt for one target (engine-graph.js), from the
 * run's kept frozen state; where that was not kept (too big), the prompt is decomposed again.
 */
async function graph({ text, chat = false, target = null, contrast = null, position = -1, nodeThreshold, edgeThreshold,
                       split = false }, signal) {
  const tok = await tokenizer();
  if (typeof text === "string" && !(lastRun && lastRun.text === text && lastRun.chat === !!chat)) {
    // the page shows another prompt than the last run's (from its history): this one's state
    lastRun = { text, chat: !!chat, ids: encodeIds(tok, text, chat), frozen: null, state: null };
  }
  if (!lastRun) throw new InputError("Run a prompt first: the graph explains the last run's prediction.");
  const { engine } = await model(signal);
  const { prepare, graphFor, stateBytes, checkTarget } = await import("./engine-graph.js");
  const V = engine.config.vocab, P = lastRun.ids.length;
  let spec;
  try {
    const t = target == null ? null : oneToken(tok, target, "target", V);
    const c = contrast == null ? null : oneToken(tok, contrast, "contrast", V);
    spec = checkTarget(engine.config, P, { token: t ?? (c === 0 ? 1 : 0), contrast: null, position });
    spec.contrast = c;
    spec.token = t ?? null;
  } catch (e) {
    throw e instanceof InputError ? e : new InputError(e.message.charAt(0).toUpperCase() + e.message.slice(1) + ".");
  }
  let state = lastRun.state, rerun = false;
  if (!state) {
    let frozen = lastRun.frozen;
    if (!frozen) {                   // not kept (too big for the page's budget): decompose again
      rerun = true;
      const { decompose } = await import("./engine.js");
      frozen = (await decompose(engine, Int32Array.from(lastRun.ids), { main: null }, {
        topK: 1, logitLens: false, heads: false, graph: true, signal, onProgress: layerProgress,
      })).frozen;
    }
    state = await prepare(engine, frozen);
    if (!rerun) lastRun.state = state;       // kept: the next target needs neither pass
  }
  if (spec.token == null) spec.token = topPrediction(state, engine, spec.position);
  if (spec.token === spec.contrast) throw new InputError("The target and the contrast are the same token; pick another contrast.");
  const entry = await graphFor(state, spec, {
    tokenText: (i) => tok.display(i), ...(nodeThreshold ? { nodeThreshold } : {}), ...(edgeThreshold ? { edgeThreshold } : {}),
    split: split ? (grads, hasOBias) => splitBySource(engine, lastRun.ids, grads, hasOBias, signal) : null,
  });
  return { graph: entry, rerun, split: !!split, stateBytes: stateBytes(state) };
}

/**
 * Each node's effect split by source token (engine-split.js): the parts exist only while the
 * prompt is decomposed, and the target's gradients only after the forward pass, so this is one
 * more decomposition (no lens, no heads) with the split as its observer.
 */
async function splitBySource(engine, ids, grads, hasOBias, signal) {
  const [{ decompose }, { SourceSplit }] = await Promise.all([import("./engine.js"), import("./engine-split.js")]);
  const split = new SourceSplit(engine.config, grads, null, hasOBias);
  await decompose(engine, Int32Array.from(ids), { main: null }, {
    topK: 1, logitLens: false, heads: false, signal, onProgress: layerProgress, observers: [split],
  });
  return split;
}

/**
 * The logit lens of any one-token text at the last position of the last run (issue 24 item 6):
 * its probability and rank after every sublayer, from the run's kept final-normed residuals
 * there (engine.js lensTrack), as the data file's lens_last rows.
 */
async function lensToken({ text, chat = false, token }) {
  const tok = await tokenizer();
  if (!lastRun || lastRun.text !== text || lastRun.chat !== !!chat || !lastRun.lensRows) {
    throw new InputError("Run this prompt again to look up other tokens: the residuals of another run are kept.");
  }
  const { engine } = await model(null);
  const { n_layers: L, d_model: d, vocab: V } = engine.config;
  const id = oneToken(tok, token, "token", V);
  const { trackTokens, defaultThreads } = await import("./engine-lens.js");
  const r = await trackTokens(lastRun.lensRows, 2 * L, engine.lmHead || engine.embed, V, d, [id],
                              { bias: engine.lmHeadBias, threads: defaultThreads() });
  return { id, text: tok.display(id), probs: r.probs, ranks: r.ranks };
}

/** target null: the top-1 prediction at that position, from the real final residual. */
function topPrediction(state, engine, position) {
  const { d_model: d, vocab: V, rms_eps: eps } = engine.config, x = state.frozen.xFinal;
  let ss = 0;
  for (let j = 0; j < d; j++) ss += x[position * d + j] * x[position * d + j];
  const inv = 1 / Math.sqrt(ss / d + eps), W = engine.lmHead || engine.embed, f = engine.finalNorm;
  let best = 0, bestLogit = -Infinity;
  for (let v = 0; v < V; v++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += W[v * d + j] * f[j] * x[position * d + j];
    s = s * inv + (engine.lmHeadBias ? engine.lmHeadBias[v] : 0);
    if (s > bestLogit) { bestLogit = s; best = v; }
  }
  return best;
}

function report(e, seq) {
  let kind = "engine";
  if (e instanceof InputError) kind = "input";
  else if (e instanceof LoadError) kind = "download";
  else if (e && e.name === "AbortError") kind = "cancelled";
  else if (e instanceof RangeError && /alloc|memory|Array buffer/i.test(e.message)) kind = "memory";
  postMessage({ type: "error", kind, message: e && e.message ? e.message : String(e), chunk: e && e.chunk, seq });
}

/**
 * The ablation check of the last run's prompt (engine-ablate.js): T in the real model, unablated
 * and with each node zeroed. nodes: [{kind, layer, head, position}] (paths-check.js topNodes).
 * Its forward passes are not the run's: nothing of them is kept.
 */
async function ablate({ seq, text, chat = false, target, contrast = null, position = -1, nodes }, signal) {
  if (!lastRun || lastRun.text !== text || lastRun.chat !== !!chat) throw new InputError("Run this prompt first: the check ablates the last run's prompt.");
  if (!Array.isArray(nodes) || nodes.length > 256) throw new InputError("The check takes a list of at most 256 nodes.");
  const { engine } = await model(signal);
  const { ablatedValues } = await import("./engine-ablate.js");
  return ablatedValues(engine, Int32Array.from(lastRun.ids), { token: target, contrast, position }, nodes, {
    signal, onProgress: (step, total) => postMessage({ type: "progress", phase: "ablate", seq, step, total }),
  });
}

/**
 * fn(signal) after every computation asked for before it: they share the model's layer arrays
 * and the kernel, so one at a time. A "cancel" aborts the queued and running ones (of one kind
 * with `job`).
 */
function queued(kind, fn) {
  const job = { kind, ctl: new AbortController() };
  jobs.add(job);
  const out = queue.then(() => {
    if (job.ctl.signal.aborted) throw new DOMException("cancelled", "AbortError");
    return fn(job.ctl.signal);
  });
  queue = out.catch(() => {});
  return out.finally(() => jobs.delete(job));
}

self.onmessage = async (ev) => {
  const m = ev.data || {};
  try {
    if (m.type === "init") {
      manifestUrl = new URL(m.manifest, self.location.href).href;
    } else if (m.type === "count") {
      const tok = await tokenizer();
      const n = m.text ? tok.encode(m.text, { chat: !!m.chat }).length : 0;
      postMessage({ type: "count", seq: m.seq, n });
    } else if (m.type === "run") {
      const { bytes, headsBytes, predIds, timings } = await queued("run", (signal) => run(m, signal));
      postMessage({ type: "done", bytes, headsBytes, predIds, timings }, [bytes.buffer, ...(headsBytes ? [headsBytes.buffer] : [])]);
    } else if (m.type === "regroup") {
      const { bytes, headsBytes } = await queued("regroup", (signal) => regroup(m, signal));
      postMessage({ type: "variant", seq: m.seq, bytes, headsBytes }, [bytes.buffer, ...(headsBytes ? [headsBytes.buffer] : [])]);
    } else if (m.type === "graph") {
      const out = await queued("graph", (signal) => graph(m, signal));
      postMessage({ type: "graph", seq: m.seq, ...out });
    } else if (m.type === "ablate") {
      const values = await queued("ablate", (signal) => ablate(m, signal));
      postMessage({ type: "ablated", seq: m.seq, values }, [values.buffer]);
    } else if (m.type === "lensToken") {
      postMessage({ type: "lensToken", seq: m.seq, ...(await queued("lensToken", () => lensToken(m))) });
    } else if (m.type === "cancel") {
      for (const job of jobs) if (!m.job || job.kind === m.job) job.ctl.abort();
    }
  } catch (e) {
    if (m.type === "count") postMessage({ type: "count", seq: m.seq, n: null, error: e.message });
    else if (m.type === "lensToken") postMessage({ type: "lensTokenError", seq: m.seq, message: e.message });
    else report(e, m.type === "regroup" || m.type === "graph" || m.type === "ablate" ? m.seq : undefined);
  }
};
