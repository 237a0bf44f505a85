//# allFunctionsCalledOnLoad
// (a V8 compile hint: this file is compiled with the module, while the data file downloads)
// Fetch and decode an infoflow data file (docs/data-format.md, schema 1) into dense typed arrays.
//
// Data files are untrusted: every declared size is checked against LIMITS and against the
// others before anything is allocated, and compressed arrays are inflated chunk by chunk into a
// buffer of exactly their declared size, stopping at the first byte past it (a deflate bomb
// stops there). Every problem becomes a DataError whose message says, in words, what is wrong
// and what to do. The arrays themselves: arrays.js.
import { decode as msgpackDecode } from "../vendor/msgpack/dist.esm/index.mjs";
import { LIMITS, DataError, damaged, tooBig, checkArray, decodeArray, isCount } from "./arrays.js";

export { LIMITS, DataError, damaged, checkArray, decodeArray };
export { inflateCapped } from "./arrays.js";

export const SCHEMA = 1;

// ----------------------------------------------------------------------------- document

function need(obj, key, where) {
  if (obj === null || typeof obj !== "object" || !(key in obj)) {
    throw damaged(`the field "${where ? where + "." : ""}${key}" is missing`);
  }
  return obj[key];
}

function count(obj, key, limit, what = key) {
  const x = need(obj, key);
  if (!isCount(x)) throw damaged(`"${key}" is not a count`);
  if (x > limit) throw tooBig(what, x, limit);
  return x;
}

function expectShape(a, shape, what) {
  const s = a && a.shape;
  if (!Array.isArray(s) || s.length !== shape.length || s.some((d, i) => d !== shape[i])) {
    throw damaged(`${what} has shape [${Array.isArray(s) ? s.join(",") : s}], expected [${shape.join(",")}]`);
  }
}

export const METRIC_KEYS = ["norm", "delta", "proj"];

/**
 * A variant: labels, groups and logit attribution decoded now; the (L, 2, P, G) metric arrays
 * `norm`, `delta`, `proj` are decoded on first use (`await ensureMetric(V, "delta")`), so the
 * first view waits only for what it shows. Until then `V.norm` etc. are null.
 */
async function decodeVariant(v, L, P, k) {
  const name = need(v, "name", "variant");
  const sources = need(v, "sources", name);
  if (!Array.isArray(sources) || !sources.every((x) => typeof x === "string")) throw damaged(`${name}.sources is not a list of strings`);
  const G = sources.length;
  if (G > P + 1) throw damaged(`${name} has ${G} sources for ${P} positions`);
  const store = { L, P, G, name, raw: {}, norm: null, delta: null, proj: null, quant: {}, pending: {} };
  for (const m of METRIC_KEYS) {
    const a = need(v, m, name);
    expectShape(a, [L, 2, P, G], `${name}.${m}`);
    checkArray(a, `${name}.${m}`);
    store.raw[m] = a;
  }
  const rawAttr = need(v, "logit_attr", name);
  expectShape(rawAttr, [P, k, G], `${name}.logit_attr`);
  checkArray(rawAttr, `${name}.logit_attr`);
  store.raw.logitAttr = rawAttr;             // decoded on first use too: ensureMetric(V, "logitAttr")
  store.logitAttr = null;
  const rawMean = v.logit_mean == null ? null : v.logit_mean;      // absent from older files
  if (rawMean) {
    expectShape(rawMean, [G], `${name}.logit_mean`);
    checkArray(rawMean, `${name}.logit_mean`);
  }
  const [groups, first, mean] = await Promise.all([
    decodeArray(need(v, "groups", name), `${name}.groups`),
    decodeArray(need(v, "first", name), `${name}.first`),
    rawMean && decodeArray(rawMean, `${name}.logit_mean`)]);
  if (groups.data.length !== P || first.data.length !== G) throw damaged(`${name}'s groups / first have the wrong length`);
  for (const g of groups.data) if (g >= G) throw damaged(`${name}'s groups name a source it does not have`);
  const out = {
    name, label: typeof v.label === "string" ? v.label : name, grouping: v.grouping || "custom", sources,
    hasBias: !!v.has_bias, exact: true, G, groups: groups.data, first: first.data, store,
    logitMean: mean ? mean.data : null,
  };
  for (const m of [...METRIC_KEYS, "logitAttr"]) Object.defineProperty(out, m, { get: () => store[m], enumerable: true });
  Object.defineProperty(out, "quant", { get: () => store.quant, enumerable: true });
  return out;
}

/** Decode one metric array of a variant (once; concurrent callers share the promise). */
export function ensureMetric(V, metric) {
  const st = V.store;
  if (!st || st[metric]) return Promise.resolve();
  if (!st.pending[metric]) {
    st.pending[metric] = decodeArray(st.raw[metric], `${st.name}.${metric}`).then((a) => {
      st[metric] = a.data;
      if (a.scale) st.quant[metric] = { scale: a.scale, q: a.q };
      st.raw[metric] = null;
    });
  }
  return st.pending[metric];
}

/** Decode every metric of every variant and the logit lens (what the viewer does in the background). */
export function ensureAll(D) {
  return Promise.all([ensureLens(D), ...D.variants.flatMap((V) => [...METRIC_KEYS, "logitAttr"].map((m) => ensureMetric(V, m)))]);
}

function checkIds(ids, strings, what) {
  for (const i of ids) if (i >= strings.length) throw damaged(`${what} names a string the file does not have`);
}

/** Decode the logit lens once: D.lens = {ids, probs} ((L, 2, P, k) each); resolves to it (null: none). */
export function ensureLens(D) {
  if (D.lens || !D.lensRaw) return Promise.resolve(D.lens || null);
  if (!D.lensPending) {
    D.lensPending = Promise.all([decodeArray(D.lensRaw.ids, "lens.ids"), decodeArray(D.lensRaw.probs, "lens.probs")])
      .then(([ids, probs]) => {
        checkIds(ids.data, D.strings, "the logit lens");
        if (probs.data.length !== D.L * 2 * D.P * D.k) throw damaged("the logit lens has the wrong size");
        D.lens = { ids: ids.data, probs: probs.data };
        return D.lens;
      });
  }
  return D.lensPending;
}

/** lens_last's declared sizes (m tokens, m <= k + 1, each (L, 2)) -> m, 0 where there is none. */
function checkLensLast(t, L, k) {
  if (t == null) return 0;
  if (typeof t !== "object" || Array.isArray(t)) throw damaged("lens_last is not a map");
  const ids = need(t, "ids", "lens_last"), s = ids && ids.shape;
  const m = Array.isArray(s) && s.length === 1 && isCount(s[0]) ? s[0] : -1;
  if (m < 1 || m > k + 1) throw damaged(`lens_last names ${m < 0 ? "no list of" : m} tokens, expected 1 to ${k + 1}`);
  expectShape(need(t, "probs", "lens_last"), [m, L, 2], "lens_last.probs");
  expectShape(need(t, "ranks", "lens_last"), [m, L, 2], "lens_last.ranks");
  for (const key of ["ids", "probs", "ranks"]) checkArray(t[key], `lens_last.${key}`);
  if (t.target != null && !(isCount(t.target) && t.target < m)) throw damaged("lens_last.target is not one of its tokens");
  return m;
}

/** Decode lens_last: {ids (m) indices into strings, probs Float32Array (m·L·2), ranks, target} or null. */
async function decodeLensLast(t, strings, L) {
  if (t == null) return null;
  const [ids, probs, ranks] = await Promise.all(["ids", "probs", "ranks"].map((key) => decodeArray(t[key], `lens_last.${key}`)));
  checkIds(ids.data, strings, "lens_last");
  const m = ids.data.length;
  if (probs.data.length !== m * L * 2 || ranks.data.length !== m * L * 2) throw damaged("lens_last has the wrong size");
  return { ids: ids.data, probs: probs.data, ranks: ranks.data, target: t.target == null ? null : t.target };
}

/** Check the sizes a document declares, all together, before decoding any array. */
function checkDocument(doc) {
  const L = count(doc, "layers", LIMITS.layers);
  const P = count(doc, "positions", LIMITS.positions);
  const k = count(doc, "top_k", LIMITS.topK);
  if (!L || !P || !k) throw damaged("it declares no layers, positions or predictions");
  const tokens = need(doc, "tokens");
  if (!Array.isArray(tokens) || tokens.length !== P || !tokens.every((t) => typeof t === "string")) {
    throw damaged(`it has ${Array.isArray(tokens) ? tokens.length : "no"} tokens for ${P} positions`);
  }
  const strings = need(doc, "strings");
  if (!Array.isArray(strings) || !strings.every((t) => typeof t === "string")) throw damaged("its string table is not a list of strings");
  if (strings.length > LIMITS.strings) throw tooBig("the string table's length", strings.length, LIMITS.strings);
  const variants = need(doc, "variants");
  if (!Array.isArray(variants) || !variants.length) throw damaged("it has no variants");
  if (variants.length > LIMITS.variants) throw tooBig("the number of variants", variants.length, LIMITS.variants);
  let total = 0;
  for (const v of variants) {
    if (!v || typeof v !== "object") throw damaged("a variant is not a map");
    if (v.same_as !== undefined) continue;
    const G = Array.isArray(v.sources) ? v.sources.length : 0;
    total += METRIC_KEYS.length * L * 2 * P * G + P * k * G;
  }
  total += (doc.lens ? 2 * L * 2 * P * k : 0) + 3 * P * k + 2 * 2 * L * checkLensLast(doc.lens_last, L, k);
  if (total > LIMITS.total) throw tooBig("the total size of its arrays", total, LIMITS.total);
  return { L, P, k, tokens, strings };
}

/**
 * The decoded result the viewer shows (mountViewer(root, D) in viewer.js), whether it was
 * fetched (loadData) or computed in the browser and encoded to the same msgpack document:
 *
 *   D = {
 *     schema: 1, generator: {infoflow, engine}, built: string, prompt: {id, title, text, tags, note, chat},
 *     model: {id, fingerprint, architecture, layers, d_model, heads, kv_heads, d_mlp, vocab, dtype},
 *     precision: "float32" | "float64",
 *     L, P, k,                          // layers, positions, top-k
 *     tokens: string[P],                // display strings (untrusted: textContent only)
 *     tokenIds: Uint32Array(P), strings: string[] (string table for predictions and lens),
 *     embedNorm: Float32Array(P), reconError: Float32Array(L*2), worstReconError: number, logitError: number,
 *     pred: {ids: (P, k) indices into strings, probs: Float32Array(P*k), logits: Float32Array(P*k)},
 *     lens: {ids: (L, 2, P, k), probs: Float32Array(L*2*P*k)} | null: null until `await ensureLens(D)`
 *           (lensRaw: the file's lens, null when it has none),
 *     lensLast: {ids: (m) indices into strings, probs, ranks: (m, L, 2), target: row | null} | null:
 *           the last position's logit lens of its top-k predictions and the declared target (lens.js),
 *     variants: [V],                    // the first is "tokens"
 *     // loadData adds: url, bytes (file size), timings: {download, decode} (ms)
 *   }
 *   V = {
 *     name, label, grouping: "tokens" | "words" | "custom", sources: string[G], hasBias, exact: true, G,
 *     groups: Uint16Array(P) (source of each position), first: Uint16Array(G) (first position of each source),
 *     logitAttr: Float32Array(P*k*G), null until `await ensureMetric(V, "logitAttr")` (eager variants: decoded),
 *     logitMean: Float32Array(G) | null: each source's part of the vocabulary-mean logit at the last position (answer.js),
 *     norm, delta, proj: Float32Array(L*2*P*G) [layer, attn=0 / mlp=1, position, source],
 *                       null until `await ensureMetric(V, name)` (decodeData decodes `eager` ones),
 *     quant: {norm|delta|proj: {scale: Float32Array(L*2*P), q}}: a value is within scale/(2q) of the engine's,
 *   }
 * Arrays are dense and C-ordered; index (l, k, p, s) is ((l * 2 + k) * P + p) * G + s.
 */
export async function decodeData(buffer, { eager = [["words", "norm"]] } = {}) {
  let doc;
  try {
    doc = msgpackDecode(new Uint8Array(buffer), {
      maxStrLength: 1 << 24, maxBinLength: 1 << 30, maxArrayLength: LIMITS.strings, maxMapLength: 4096, maxExtLength: 0,
    });
  } catch (e) {
    throw damaged(`it is not valid msgpack: ${e.message}`);
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc) || !("schema" in doc)) {
    throw new DataError("This is not an infoflow data file: it has no schema number. Check the link, or rebuild the site.");
  }
  if (doc.schema !== SCHEMA) {
    throw new DataError(`The data file has schema ${JSON.stringify(doc.schema)}, but this viewer reads schema ${SCHEMA} only. Rebuild the site with a matching infoflow.`);
  }
  const { L, P, k, tokens, strings } = checkDocument(doc);
  const pred = need(doc, "predictions");
  const lens = doc.lens;
  const rawVariants = doc.variants;
  expectShape(need(pred, "ids", "predictions"), [P, k], "predictions.ids");
  if (lens) expectShape(need(lens, "ids", "lens"), [L, 2, P, k], "lens.ids");

  if (lens) {
    expectShape(need(lens, "probs", "lens"), [L, 2, P, k], "lens.probs");
    checkArray(lens.ids, "lens.ids");
    checkArray(lens.probs, "lens.probs");
  }
  const small = Promise.all([
    decodeArray(need(doc, "token_ids"), "token_ids"),
    decodeArray(need(doc, "embed_norm"), "embed_norm"),
    decodeArray(need(doc, "recon_error"), "recon_error"),
    decodeArray(need(pred, "ids", "predictions"), "predictions.ids"),
    decodeArray(need(pred, "probs", "predictions"), "predictions.probs"),
    decodeArray(need(pred, "logits", "predictions"), "predictions.logits"),
  ]);
  small.catch(() => {});      // awaited below; a variant's error may come first
  const decoded = await Promise.all(rawVariants.map((v) => (v.same_as !== undefined ? null : decodeVariant(v, L, P, k))));

  const byName = new Map();
  const variants = [];
  rawVariants.forEach((v, i) => {
    let out = decoded[i];
    if (!out) {
      const base = byName.get(v.same_as);
      if (!base) throw damaged(`variant ${JSON.stringify(v.name)} is the same as unknown ${JSON.stringify(v.same_as)}`);
      // shares the base's lazily decoded arrays through the prototype
      out = Object.assign(Object.create(base), { name: v.name, label: v.label || v.name, grouping: v.grouping || base.grouping });
    }
    byName.set(out.name, out);
    variants.push(out);
  });

  // the first view's arrays and its logit attribution, inflating beside the small arrays
  const firstView = Promise.all(eager.flatMap(([name, metric]) => {
    const V = byName.get(name) || variants[0];
    return [ensureMetric(V, metric), ensureMetric(V, "logitAttr")];
  }));
  firstView.catch(() => {});
  const [tokenIds, embedNorm, recon, pIds, pProbs, pLogits] = await small;
  checkIds(pIds.data, strings, "a prediction");
  if (pProbs.data.length !== P * k || pLogits.data.length !== P * k) {
    throw damaged("the predictions have the wrong size");
  }
  await firstView;
  const lensLast = await decodeLensLast(doc.lens_last, strings, L);
  return {
    schema: doc.schema, generator: doc.generator || {}, built: doc.built || "", prompt: doc.prompt || {},
    model: doc.model || {}, precision: doc.precision || "", L, P, k, tokens,
    tokenIds: tokenIds.data, strings, embedNorm: embedNorm.data,
    reconError: recon.data, worstReconError: doc.worst_recon_error, logitError: doc.logit_error,
    pred: { ids: pIds.data, probs: pProbs.data, logits: pLogits.data },
    // the logit lens is read only by tooltips and the pinned cell: decoded after the first
    // draw (ensureLens), so the first view does not wait for it. null until then.
    lens: null, lensRaw: lens || null, lensPending: null,
    lensLast,
    variants,
  };
}

/** The largest data file fetched: a result at the limits above is far smaller. */
export const MAX_FILE_BYTES = 1 << 30;

/** Fetch a data file and decode it; every failure becomes a DataError naming the file. */
export async function loadData(url, options = {}) {
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new DataError(`Could not fetch the data file ${url} (${e.message}). Check your connection and reload the page.`);
  }
  if (!resp.ok) {
    throw new DataError(resp.status === 404
      ? `The data file ${url} is missing (HTTP 404): the site is incomplete. Rebuild it (infoflow build) or tell whoever published it.`
      : `Could not fetch the data file ${url} (HTTP ${resp.status}). Reload the page later.`);
  }
  const declared = Number(resp.headers.get("content-length"));
  if (declared > MAX_FILE_BYTES) throw tooBig("its file size", declared, MAX_FILE_BYTES);
  const t0 = performance.now();
  let buf;
  try {
    buf = await resp.arrayBuffer();
  } catch (e) {
    throw new DataError(`The data file ${url} did not download completely (${e.message}). Reload the page.`);
  }
  const t1 = performance.now();
  let data;
  try {
    data = await decodeData(buf, options);
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw damaged(`${e.name}: ${e.message}`);
  }
  const t2 = performance.now();
  data.timings = { download: t1 - t0, decode: t2 - t1 };
  data.url = url;
  data.bytes = buf.byteLength;
  return data;
}
