// The per-head file of a decomposition computed in the browser (docs/data-format.md, "Per-head
// data"): a straight translation of infoflow/datafile.py heads_document + heads_page_bytes, same
// keys in the same order, quantized as encode.js quantizes the main file's metrics.
import { encode as msgpackEncode } from "../../vendor/msgpack/dist.esm/index.mjs";
import { SCHEMA, encodeArray, encodeTril, rowLengths } from "./encode.js";

/**
 * r: the browser result (worker.js toResult) with r.heads = the engine's `heads` (engine.js
 * JSDoc) and r.variants [{name, groups, has_bias, sources}]; mainName: the main data file's
 * name, which readers check. Returns the msgpack bytes, or null when r has no heads.
 */
export async function encodeHeads(r, mainName) {
  const h = r.heads;
  if (!h) return null;
  const { L, P } = r, H = h.n_heads, Hx = h.labels.length;
  const variants = [], seen = new Map();
  for (const v of r.variants) {
    const key = Array.from(v.groups).join(",");
    if (seen.has(key)) {
      variants.push({ name: v.name, same_as: seen.get(key) });
      continue;
    }
    seen.set(key, v.name);
    const arrays = h.variants[v.name];
    if (!arrays) throw new Error(`no per-head data for variant ${v.name}`);
    const shape = [L, Hx, P, v.sources.length], rows = rowLengths(v.groups), tail = v.has_bias ? 1 : 0;
    variants.push({
      name: v.name,
      norm: await encodeTril(arrays.norm, shape, rows, tail, false),
      proj: await encodeTril(arrays.proj, shape, rows, tail, true),
    });
  }
  const doc = {
    schema: SCHEMA, kind: "heads", layers: L, heads: H, positions: P, labels: [...h.labels],
    write_norm: await encodeArray(h.write_norm, [L, Hx, P], "f32"),
    write_proj: await encodeArray(h.write_proj, [L, Hx, P], "f32"),
    pattern: await encodeTril(h.pattern, [L, H, P, P], Array.from({ length: P }, (_, p) => p + 1), 0, false),
    variants,
    main: mainName,
  };
  return msgpackEncode(doc);
}
