// Fetch and decode an infoflow data file (docs/data-format.md, schema 1) into dense typed arrays.
import { decode as msgpackDecode } from "../vendor/msgpack/dist.esm/index.mjs";

export const SCHEMA = 1;

/** Every problem with a data file; `message` is shown on the page as is. */
export class DataError extends Error {
  constructor(message) {
    super(message);
    this.name = "DataError";
  }
}

// ----------------------------------------------------------------------------- f16

let F16 = null;
function f16Table() {
  if (F16) return F16;
  F16 = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    let v;
    if (e === 0) v = m * 2 ** -24;
    else if (e === 31) v = m ? NaN : Infinity;
    else v = (1 + m / 1024) * 2 ** (e - 15);
    F16[h] = s * v;
  }
  return F16;
}

// ----------------------------------------------------------------------------- arrays

const SIZES = { u8: 1, i8: 1, u16: 2, u32: 4, f16: 2, f32: 4 };

async function inflate(bytes) {
  if (typeof DecompressionStream === "undefined") {
    throw new DataError("This browser cannot decompress the data file (no DecompressionStream).");
  }
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  try {
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (e) {
    throw new DataError(`The data file is corrupt: a compressed array does not inflate (${e.message}).`);
  }
}

/** Little-endian typed view of raw bytes (copies when unaligned). */
function typedView(dtype, bytes) {
  const size = SIZES[dtype];
  if (!size) throw new DataError(`The data file is corrupt: unknown array dtype ${JSON.stringify(dtype)}.`);
  if (bytes.byteLength % size) throw new DataError(`The data file is corrupt: ${dtype} array of ${bytes.byteLength} bytes.`);
  let buf = bytes.buffer, off = bytes.byteOffset;
  if (off % size) {
    const copy = new Uint8Array(bytes.byteLength);
    copy.set(bytes);
    buf = copy.buffer;
    off = 0;
  }
  const n = bytes.byteLength / size;
  switch (dtype) {
    case "u8": return new Uint8Array(buf, off, n);
    case "i8": return new Int8Array(buf, off, n);
    case "u16": return new Uint16Array(buf, off, n);
    case "u32": return new Uint32Array(buf, off, n);
    case "f32": return new Float32Array(buf, off, n);
    case "f16": {
      const raw = new Uint16Array(buf, off, n), t = f16Table(), out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = t[raw[i]];
      return out;
    }
  }
}

const prod = (a) => a.reduce((x, y) => x * y, 1);

/**
 * One array map -> {shape, data}. `data` is the dense C-order array: a Float32Array for
 * quantized / tril / float arrays, else the integer typed array.
 */
export async function decodeArray(obj, what = "array") {
  if (!obj || typeof obj !== "object" || !(obj.data instanceof Uint8Array) || !Array.isArray(obj.shape)) {
    throw new DataError(`The data file is corrupt: ${what} is not an array map.`);
  }
  let bytes = obj.data;
  if (obj.codec === "deflate") bytes = await inflate(bytes);
  else if (obj.codec !== undefined && obj.codec !== null) throw new DataError(`The data file is corrupt: ${what} has unknown codec ${JSON.stringify(obj.codec)}.`);
  const flat = typedView(obj.dtype, bytes);
  const shape = obj.shape;
  const total = prod(shape);
  let out;
  const quant = obj.q !== undefined;
  let scale = null;
  if (quant) {
    scale = (await decodeArray(obj.scale, what + ".scale")).data;
    if (scale.length * shape[shape.length - 1] !== total) throw new DataError(`The data file is corrupt: ${what} has a bad scale.`);
  }
  if (obj.layout === "tril") {
    const P = shape[shape.length - 2], G = shape[shape.length - 1];
    const lead = total / (P * G);
    const rowLen = obj.row_len, tail = obj.tail | 0;
    if (!Array.isArray(rowLen) || rowLen.length !== P) throw new DataError(`The data file is corrupt: ${what} has a bad row_len.`);
    let per = 0;
    for (let p = 0; p < P; p++) per += Math.min(rowLen[p], G - tail) + tail;
    if (flat.length !== per * lead) throw new DataError(`The data file is corrupt: ${what} holds ${flat.length} values, expected ${per * lead}.`);
    out = new Float32Array(total);
    const q = quant ? obj.q : 1;
    let src = 0;
    for (let b = 0; b < lead; b++) {
      const base = b * P * G;
      for (let p = 0; p < P; p++) {
        const row = base + p * G, n = Math.min(rowLen[p], G - tail);
        const m = quant ? scale[b * P + p] / q : 1;   // dequantize in the same pass
        for (let s = 0; s < n; s++) out[row + s] = flat[src++] * m;
        for (let s = G - tail; s < G; s++) out[row + s] = flat[src++] * m;
      }
    }
  } else {
    if (flat.length !== total) throw new DataError(`The data file is corrupt: ${what} holds ${flat.length} values, its shape needs ${total}.`);
    out = flat;
    if (quant) {
      const G = shape[shape.length - 1], q = obj.q;
      const f = Float32Array.from(out);
      for (let r = 0, i = 0; r < scale.length; r++) {
        const m = scale[r] / q;
        for (let s = 0; s < G; s++, i++) f[i] *= m;
      }
      out = f;
    }
  }
  return { shape, data: out };
}

// ----------------------------------------------------------------------------- document

function need(obj, key, where) {
  if (obj === null || typeof obj !== "object" || !(key in obj)) {
    throw new DataError(`The data file is missing the field "${where ? where + "." : ""}${key}".`);
  }
  return obj[key];
}

export const METRIC_KEYS = ["norm", "delta", "proj"];

/**
 * A variant: labels, groups and logit attribution decoded now; the (L, 2, P, G) metric arrays
 * `norm`, `delta`, `proj` are decoded on first use (`await ensureMetric(V, "delta")`), so the
 * first view waits only for what it shows. Until then `V.norm` etc. are null.
 */
async function decodeVariant(v, L, P) {
  const name = need(v, "name", "variant");
  const sources = need(v, "sources", name);
  if (!Array.isArray(sources)) throw new DataError(`The data file is corrupt: ${name}.sources is not a list.`);
  const G = sources.length;
  const store = { L, P, G, name, raw: {}, norm: null, delta: null, proj: null, pending: {} };
  for (const k of METRIC_KEYS) {
    const a = need(v, k, name);
    const s = a && a.shape;
    if (!Array.isArray(s) || s.length !== 4 || s[0] !== L || s[1] !== 2 || s[2] !== P || s[3] !== G) {
      throw new DataError(`The data file is corrupt: ${name}.${k} has shape [${s}], expected [${L},2,${P},${G}].`);
    }
    store.raw[k] = a;
  }
  const [groups, first, attr] = await Promise.all(
    ["groups", "first", "logit_attr"].map((k) => decodeArray(need(v, k, name), `${name}.${k}`)));
  if (groups.data.length !== P || first.data.length !== G) throw new DataError(`The data file is corrupt: ${name} groups / first have the wrong length.`);
  const out = {
    name, label: v.label || name, grouping: v.grouping || "custom", sources, hasBias: !!v.has_bias,
    exact: true, G, groups: groups.data, first: first.data, logitAttr: attr.data, store,
  };
  for (const k of METRIC_KEYS) Object.defineProperty(out, k, { get: () => store[k], enumerable: true });
  return out;
}

/** Decode one metric array of a variant (once; concurrent callers share the promise). */
export function ensureMetric(V, metric) {
  const st = V.store;
  if (!st || st[metric]) return Promise.resolve();
  if (!st.pending[metric]) {
    st.pending[metric] = decodeArray(st.raw[metric], `${st.name}.${metric}`).then((a) => {
      st[metric] = a.data;
      st.raw[metric] = null;
    });
  }
  return st.pending[metric];
}

/** Decode every metric of every variant (what the viewer does in the background). */
export function ensureAll(D) {
  return Promise.all(D.variants.flatMap((V) => METRIC_KEYS.map((m) => ensureMetric(V, m))));
}

/** Decode the bytes of a data file. Throws DataError with a message fit for the page. */
export async function decodeData(buffer, { eager = [["words", "norm"]] } = {}) {
  let doc;
  try {
    doc = msgpackDecode(new Uint8Array(buffer));
  } catch (e) {
    throw new DataError(`The data file is corrupt: it is not valid msgpack (${e.message}).`);
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc) || !("schema" in doc)) {
    throw new DataError("This is not an infoflow data file: it has no schema number.");
  }
  if (doc.schema !== SCHEMA) {
    throw new DataError(`The data file has schema ${JSON.stringify(doc.schema)}, but this viewer reads schema ${SCHEMA} only. Rebuild the site with a matching infoflow.`);
  }
  const L = need(doc, "layers"), P = need(doc, "positions"), k = need(doc, "top_k");
  const tokens = need(doc, "tokens");
  if (!Array.isArray(tokens) || tokens.length !== P) throw new DataError(`The data file is corrupt: ${tokens.length} tokens for ${P} positions.`);
  const pred = need(doc, "predictions");
  const lens = doc.lens;
  const rawVariants = need(doc, "variants");
  if (!Array.isArray(rawVariants) || !rawVariants.length) throw new DataError("The data file is corrupt: it has no variants.");

  const [tokenIds, embedNorm, recon, pIds, pProbs, pLogits, lIds, lProbs, ...decoded] = await Promise.all([
    decodeArray(need(doc, "token_ids"), "token_ids"),
    decodeArray(need(doc, "embed_norm"), "embed_norm"),
    decodeArray(need(doc, "recon_error"), "recon_error"),
    decodeArray(need(pred, "ids", "predictions"), "predictions.ids"),
    decodeArray(need(pred, "probs", "predictions"), "predictions.probs"),
    decodeArray(need(pred, "logits", "predictions"), "predictions.logits"),
    lens ? decodeArray(need(lens, "ids", "lens"), "lens.ids") : null,
    lens ? decodeArray(need(lens, "probs", "lens"), "lens.probs") : null,
    ...rawVariants.map((v) => (v && v.same_as !== undefined ? null : decodeVariant(v, L, P))),
  ]);

  const byName = new Map();
  const variants = [];
  rawVariants.forEach((v, i) => {
    let out = decoded[i];
    if (!out) {
      const base = byName.get(v.same_as);
      if (!base) throw new DataError(`The data file is corrupt: variant ${JSON.stringify(v.name)} is the same as unknown ${JSON.stringify(v.same_as)}.`);
      // shares the base's lazily decoded arrays through the prototype
      out = Object.assign(Object.create(base), { name: v.name, label: v.label || v.name, grouping: v.grouping || base.grouping });
    }
    byName.set(out.name, out);
    variants.push(out);
  });

  for (const [name, metric] of eager) {
    const V = byName.get(name) || variants[0];
    await ensureMetric(V, metric);
  }
  return {
    schema: doc.schema, generator: doc.generator || {}, built: doc.built || "", prompt: doc.prompt || {},
    model: doc.model || {}, precision: doc.precision || "", L, P, k, tokens,
    tokenIds: tokenIds.data, strings: need(doc, "strings"), embedNorm: embedNorm.data,
    reconError: recon.data, worstReconError: doc.worst_recon_error, logitError: doc.logit_error,
    pred: { ids: pIds.data, probs: pProbs.data, logits: pLogits.data },
    lens: lens ? { ids: lIds.data, probs: lProbs.data } : null,
    variants,
  };
}

/** Fetch a data file and decode it; every failure becomes a DataError naming the file. */
export async function loadData(url, options = {}) {
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new DataError(`Could not fetch the data file ${url} (${e.message}).`);
  }
  if (!resp.ok) {
    throw new DataError(resp.status === 404
      ? `The data file ${url} is missing (HTTP 404).`
      : `Could not fetch the data file ${url} (HTTP ${resp.status}).`);
  }
  const t0 = performance.now();
  const buf = await resp.arrayBuffer();
  const t1 = performance.now();
  let data;
  try {
    data = await decodeData(buf, options);
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(`The data file ${url} is corrupt or malformed (${e.message}).`);
  }
  const t2 = performance.now();
  data.timings = { download: t1 - t0, decode: t2 - t1 };
  data.url = url;
  data.bytes = buf.byteLength;
  return data;
}
