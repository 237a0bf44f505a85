// A decomposition computed in the browser -> the data-file document (docs/data-format.md).
//
// A straight translation of infoflow/datafile.py encode(): same keys in the same order, the
// same "tril" layout and u8 / i8 quantization (numpy's float32 arithmetic and round-half-even
// reproduced), deflate above 256 bytes. infoflow.load reads the bytes back (tests/test_live.py).
import { encode as msgpackEncode } from "../../vendor/msgpack/dist.esm/index.mjs";

export const SCHEMA = 1;

const TYPED = {
  u8: Uint8Array, i8: Int8Array, u16: Uint16Array, u32: Uint32Array, f32: Float32Array,
};

/** numpy's float32 -> float16 (round to nearest even), as bits. */
function f16bits(x) {
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** numpy.rint: round half to even. */
function rint(x) {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

async function deflate(bytes) {
  const s = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(s).arrayBuffer());
}

/** datafile.encode_array: values (array-like) as `dtype`, little-endian, deflated past 256 bytes. */
export async function encodeArray(values, shape, dtype, { deflate: z = true } = {}) {
  let data;
  if (dtype === "f16") {
    const h = new Uint16Array(values.length);
    for (let i = 0; i < values.length; i++) h[i] = f16bits(values[i]);
    data = new Uint8Array(h.buffer);
  } else {
    const a = new TYPED[dtype](values.length);
    for (let i = 0; i < values.length; i++) a[i] = values[i];
    data = new Uint8Array(a.buffer);
  }
  const out = { dtype, shape: [...shape], data };
  if (z && data.byteLength > 256 && typeof CompressionStream !== "undefined") {
    out.data = await deflate(data);
    out.codec = "deflate";
  }
  return out;
}

/** datafile.row_lengths: sources present at each position (groups numbered by first use). */
export function rowLengths(groups) {
  const out = [];
  let m = -1;
  for (const g of groups) { m = Math.max(m, g); out.push(m + 1); }
  return out;
}

/**
 * datafile.encode_tril: a (lead, P, G) array (flat, C order) -> ragged rows quantized per row
 * to u8 (norms) or i8 (signed shares).
 */
export async function encodeTril(a, shape, rowLen, tail, signed) {
  const P = shape[shape.length - 2], G = shape[shape.length - 1];
  const lead = a.length / (P * G);
  const q = signed ? 127 : 255;
  const scale = new Float32Array(lead * P);
  let kept = 0;
  for (let p = 0; p < P; p++) kept += rowLen[p] + tail;
  const packed = new (signed ? Int8Array : Uint8Array)(lead * kept);
  let o = 0;
  for (let b = 0; b < lead; b++) {
    for (let p = 0; p < P; p++) {
      const row = (b * P + p) * G;
      let m = 0;
      for (let s = 0; s < G; s++) m = Math.max(m, Math.abs(a[row + s]));
      scale[b * P + p] = m;
      const safe = Math.fround(m > 0 ? m : 1);
      const put = (s) => { packed[o++] = rint(Math.fround(Math.fround(a[row + s] / safe) * q)); };
      for (let s = 0; s < rowLen[p]; s++) put(s);
      for (let s = G - tail; s < G; s++) put(s);
    }
  }
  const out = await encodeArray(packed, [packed.length], signed ? "i8" : "u8");
  Object.assign(out, {
    shape: [...shape], layout: "tril", row_len: [...rowLen], tail, q,
    scale: await encodeArray(scale, shape.slice(0, -1), "f32"),
  });
  return out;
}

/** Interleave attn and mlp (L, P, G) arrays into one (L, 2, P, G) array. */
function stack2(attn, mlp, L, P, G) {
  const n = P * G, out = new Float32Array(L * 2 * n);
  for (let l = 0; l < L; l++) {
    out.set(attn.subarray(l * n, (l + 1) * n), (2 * l) * n);
    out.set(mlp.subarray(l * n, (l + 1) * n), (2 * l + 1) * n);
  }
  return out;
}

/**
 * r: the browser result (see worker.js toResult): L, P, k, tokens, token_ids, embed_norm,
 * recon_error, logit_error, pred_ids, pred_probs, pred_logits, lens_ids, lens_probs,
 * lens_last ({ids, probs (m, L, 2), ranks, target} or null: engine.js lensTrack),
 * token_text (Map id -> display string), variants [{name, label, grouping, groups, sources,
 * has_bias, attn_norm, mlp_norm, attn_delta_norm, mlp_delta_norm, attn_proj, mlp_proj,
 * logit_attr, logit_mean}] (flat typed arrays, C order), model, precision, generator.
 * prompt: {id, title, text, tags, note, chat}. Returns the msgpack bytes.
 */
export async function encodeDocument(r, prompt, { built } = {}) {
  const { L, P, k } = r;
  const ids = [...r.token_text.keys()].sort((a, b) => a - b);
  const index = new Map(ids.map((id, n) => [id, n]));
  const idxDtype = ids.length < 65536 ? "u16" : "u32";
  const toIndex = (a) => Array.from(a, (i) => index.get(Number(i)));

  const outVariants = [], seen = new Map();
  for (const v of r.variants) {
    const G = v.sources.length, tail = v.has_bias ? 1 : 0;
    const key = Array.from(v.groups).join(",");
    const entry = { name: v.name, label: v.label || v.name, grouping: v.grouping };
    if (seen.has(key)) {
      entry.same_as = seen.get(key);
    } else {
      seen.set(key, v.name);
      const rows = rowLengths(v.groups);
      const nGroups = Math.max(...v.groups) + 1;
      const first = [];
      for (let g = 0; g < nGroups; g++) first.push(Array.from(v.groups).indexOf(g));
      if (v.has_bias) first.push(0);
      const shape = [L, 2, P, G];
      const metric = (name, signed) => encodeTril(
        stack2(v[`attn_${name}`], v[`mlp_${name}`], L, P, G), shape, rows, tail, signed);
      Object.assign(entry, {
        sources: [...v.sources], groups: await encodeArray(v.groups, [P], "u16"),
        first: await encodeArray(first, [first.length], "u16"), has_bias: !!v.has_bias,
        norm: await metric("norm", false), delta: await metric("delta_norm", false),
        proj: await metric("proj", true),
        logit_attr: await encodeArray(v.logit_attr, [P, k, G], "f16"),
      });
      if (v.logit_mean) entry.logit_mean = await encodeArray(v.logit_mean, [G], "f32");
    }
    outVariants.push(entry);
  }

  let worst = 0;
  for (const e of r.recon_error) worst = Math.max(worst, e);
  const doc = {
    schema: SCHEMA,
    generator: r.generator,
    built: built || new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    prompt,
    model: r.model,
    precision: r.precision,
    layers: L, positions: P, top_k: k,
    tokens: [...r.tokens],
    token_ids: await encodeArray(r.token_ids, [P], "u32"),
    strings: ids.map((i) => r.token_text.get(i)),
    embed_norm: await encodeArray(r.embed_norm, [P], "f32"),
    recon_error: await encodeArray(r.recon_error, [L, 2], "f32"),
    worst_recon_error: worst,
    logit_error: r.logit_error,
    predictions: {
      ids: await encodeArray(toIndex(r.pred_ids), [P, k], idxDtype),
      probs: await encodeArray(r.pred_probs, [P, k], "f32"),
      logits: await encodeArray(r.pred_logits, [P, k], "f32"),
    },
    lens: r.lens_ids == null ? null : {
      ids: await encodeArray(toIndex(r.lens_ids), [L, 2, P, k], idxDtype),
      probs: await encodeArray(r.lens_probs, [L, 2, P, k], "f16"),
    },
    lens_last: r.lens_last == null ? null : {
      ids: await encodeArray(toIndex(r.lens_last.ids), [r.lens_last.ids.length], idxDtype),
      probs: await encodeArray(r.lens_last.probs, [r.lens_last.ids.length, L, 2], "f32"),
      ranks: await encodeArray(r.lens_last.ranks, [r.lens_last.ids.length, L, 2], "u32"),
      target: r.lens_last.target,
    },
    variants: outVariants,
  };
  return msgpackEncode(doc);
}
