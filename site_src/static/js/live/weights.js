// Download, verify and cache the exported model (docs/live-format.md); dequantize on demand.
//
// Nothing is fetched until load() is called. Each chunk is checked with sha256 and kept in the
// Cache Storage under its content-hashed URL, so a second visit reads it from disk. A network
// error is retried per chunk; a chunk whose sha256 is wrong is fetched once more, bypassing
// the HTTP cache, and then reported by name. Layers are dequantized one at a time when the
// engine asks, so only the quantized bytes (~97 MB) and one layer's float32 stay in memory
// (most of a layer's matrices go to the kernel as blocks: layerTensors()).
import { BLOCKS, dequantizeTensor, unpermuteRows } from "./dequant.js";
import { dequantizeFast } from "./kernel.js";

export const CACHE_NAME = "infoflow-live-v1";
const RETRIES = 3;                 // network errors per chunk before giving up
const BACKOFF_MS = [300, 1000, 3000];

/**
 * A failure the page shows as is; `chunk` names the file when one chunk is to blame;
 * `final`: retrying now will not help (corrupt twice, missing file).
 */
export class LoadError extends Error {
  constructor(message, chunk = null, final = false) {
    super(message);
    this.name = "LoadError";
    this.chunk = chunk;
    this.final = final;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function sha256hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function openCache() {
  try {
    return typeof caches !== "undefined" ? await caches.open(CACHE_NAME) : null;
  } catch {
    return null;     // Cache Storage refused (private mode, insecure origin): download every visit
  }
}

/** A response body that runs past what the manifest declares (readBody cut it off there). */
class TooLarge extends Error {}

/**
 * Read a response body of at most `limit` bytes, reporting bytes as they arrive. A body that
 * runs past it (a never-ending or wrong response) is cancelled at once with TooLarge: memory
 * stays bounded by the manifest's sizes, never by what a server sends.
 */
async function readBody(resp, limit, onBytes = () => {}, signal = null) {
  const declared = Number(resp.headers.get("Content-Length"));
  if (declared > limit || !resp.body) {
    if (resp.body) resp.body.cancel().catch(() => {});
    if (declared > limit) throw new TooLarge();
    const b = new Uint8Array(await resp.arrayBuffer());    // no stream (old browsers): size known only now
    if (b.byteLength > limit) throw new TooLarge();
    onBytes(b.byteLength);
    return b;
  }
  const reader = resp.body.getReader();
  const parts = [];
  let n = 0;
  for (;;) {
    if (signal && signal.aborted) { reader.cancel().catch(() => {}); throw new DOMException("cancelled", "AbortError"); }
    const { done, value } = await reader.read();
    if (done) break;
    if (n + value.byteLength > limit) { reader.cancel().catch(() => {}); throw new TooLarge(); }
    parts.push(value);
    n += value.byteLength;
    onBytes(value.byteLength);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.byteLength; }
  return out;
}

/** One chunk from the cache or the network, verified. onBytes(delta) reports progress. */
async function fetchChunk(chunk, url, cache, onBytes, signal) {
  if (cache) {
    const hit = await cache.match(url);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      if (bytes.byteLength === chunk.bytes && await sha256hex(bytes) === chunk.sha256) {
        onBytes(bytes.byteLength, true);
        return bytes;
      }
      await cache.delete(url);          // a damaged cache entry: fetch it again
    }
  }
  let corrupt = 0;
  for (let attempt = 0; ; attempt++) {
    let got = 0;
    const count = (n) => { got += n; onBytes(n, false); };
    try {
      const resp = await fetch(url, { cache: corrupt ? "reload" : "default", signal });
      if (resp.status === 404) {
        throw new LoadError(`The model file ${chunk.file} is missing from this site (HTTP 404).`, chunk.file, true);
      }
      if (!resp.ok) throw new LoadError(`HTTP ${resp.status} for ${chunk.file}`, chunk.file);
      let bytes = null, wrong = null;
      try {
        bytes = await readBody(resp, chunk.bytes, count, signal);
      } catch (e) {
        if (!(e instanceof TooLarge)) throw e;
        wrong = `arrived larger than the ${chunk.bytes} bytes the manifest declares`;
      }
      if (!wrong && (bytes.byteLength !== chunk.bytes || await sha256hex(bytes) !== chunk.sha256)) {
        wrong = "arrived corrupt (its sha256 does not match)";
      }
      if (wrong) {
        onBytes(-got, false);
        if (++corrupt > 1) {
          throw new LoadError(`The model file ${chunk.file} ${wrong}, twice. ` +
            "Try again later; if it persists, the site's copy is damaged.", chunk.file, true);
        }
        continue;                       // once more, past any cache
      }
      if (cache) {
        try {
          await cache.put(url, new Response(bytes, { headers: { "Content-Type": "application/octet-stream" } }));
        } catch { /* quota: still usable this visit */ }
      }
      return bytes;
    } catch (e) {
      if (e.name === "AbortError" || e.final) throw e;
      onBytes(-got, false);
      if (attempt >= RETRIES) {
        throw new LoadError(`Could not download ${chunk.file} after ${RETRIES + 1} tries (${e.message}). ` +
          "Check the connection and press Run again: the parts already downloaded are kept.", chunk.file);
      }
      await sleep(BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)]);
    }
  }
}

/** Drop cached chunks of older exports (other content hashes). */
async function pruneCache(cache, keep) {
  if (!cache) return;
  try {
    for (const req of await cache.keys()) if (!keep.has(req.url)) await cache.delete(req);
  } catch { /* best effort */ }
}

// The most a manifest may ask this page to hold: the export's own limits (infoflow/live.py:
// MAX_TOTAL_BYTES, MAX_PARAMETERS) with room to spare. Checked before anything is allocated.
const MAX_STREAM_BYTES = 256 * 2 ** 20;
const MAX_TENSOR_VALUES = 2 ** 28;                // 1 GiB of float32: no single tensor comes near
const MAX_MANIFEST_BYTES = 8 * 2 ** 20;           // ~0.1 MB today
const MAX_TOKENIZER_BYTES = 64 * 2 ** 20;         // 1.6 MB today

const isCount = (n) => Number.isSafeInteger(n) && n >= 0;

/**
 * The manifest's sizes, checked before the page allocates anything from them (a manifest is
 * data: a bad one gets a LoadError naming what is wrong, never a huge or out-of-range array).
 * Every tensor must lie inside the stream and have exactly the bytes its type and shape need.
 */
export function checkManifest(manifest) {
  const bad = (what) => new LoadError(`The model's manifest is inconsistent (${what}).`);
  const total = manifest.total_bytes;
  if (!isCount(total) || total === 0 || total > MAX_STREAM_BYTES) throw bad(`total_bytes ${total}`);
  if (!Array.isArray(manifest.chunks) || !manifest.chunks.length) throw bad("no chunks");
  let sum = 0;
  for (const c of manifest.chunks) {
    if (!c || !isCount(c.bytes) || typeof c.file !== "string") throw bad("a chunk without file or bytes");
    sum += c.bytes;
  }
  if (sum !== total) throw bad("chunk sizes");
  const tok = manifest.tokenizer;
  if (!tok || typeof tok.file !== "string" || !isCount(tok.bytes) || tok.bytes > MAX_TOKENIZER_BYTES ||
      typeof tok.sha256 !== "string") throw bad("tokenizer file, bytes or sha256");
  if (!Array.isArray(manifest.tensors)) throw bad("no tensors");
  for (const t of manifest.tensors) {
    const name = t && typeof t.name === "string" ? t.name : "?";
    const block = t && BLOCKS[t.type];
    const shape = t && Array.isArray(t.shape) && t.shape.length >= 1 && t.shape.length <= 2 &&
      t.shape.every((n) => isCount(n) && n > 0) ? t.shape : null;
    if (!block || !shape) throw bad(`tensor ${name}: type or shape`);
    const n = shape.reduce((a, b) => a * b, 1);
    if (n > MAX_TENSOR_VALUES || n % block[0]) throw bad(`tensor ${name}: ${n} values`);
    if (t.bytes !== (n / block[0]) * block[1]) throw bad(`tensor ${name}: ${t.bytes} bytes for ${n} values`);
    if (!isCount(t.offset) || t.offset + t.bytes > total) throw bad(`tensor ${name} lies outside the weights`);
    const heads = t.permute_heads;
    if (heads != null && !(shape.length === 2 && isCount(heads) && heads > 0 && shape[0] % (2 * heads) === 0)) {
      throw bad(`tensor ${name}: permute_heads ${heads}`);
    }
  }
  return manifest;
}

const HASH_NAME = /(?:^|\/)manifest\.([0-9a-f]{12})\.json$/;

/**
 * A small file the manifest vouches for, read whole: at most `limit` bytes, and `check(bytes)`
 * true. A wrong copy is fetched once more past the HTTP cache (a stale proxy), then refused
 * with `refusal`. Returns the bytes.
 */
async function fetchChecked(url, what, limit, check, refusal, signal) {
  for (let attempt = 0; ; attempt++) {
    let bytes = null;
    try {
      const r = await fetch(url, { signal, cache: attempt ? "reload" : "default" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      bytes = await readBody(r, limit, undefined, signal);
    } catch (e) {
      if (e.name === "AbortError") throw e;
      if (!(e instanceof TooLarge)) throw new LoadError(`Could not download ${what} (${e.message}).`);
    }
    if (bytes && await check(bytes)) return bytes;
    if (attempt) throw new LoadError(refusal);
  }
}

/**
 * The manifest at `url`, checked against the content hash in its file name
 * (manifest.<first 12 hex digits of its sha256>.json, which the page names): an edited manifest
 * (its config, a chunk's sha256) is refused, as a chunk with a wrong sha256 is. Then its format
 * and sizes (checkManifest). The root of the chain: the manifest vouches for the tokenizer and
 * the chunks by their sha256.
 */
export async function fetchManifest(url, signal = null) {
  const href = new URL(url, self.location.href).href;
  const named = HASH_NAME.exec(new URL(href).pathname);
  if (!named) throw new LoadError("The model's manifest has no content hash in its name (manifest.<hash>.json); build the site again.");
  const bytes = await fetchChecked(href, "the model's manifest", MAX_MANIFEST_BYTES,
    async (b) => (await sha256hex(b)).startsWith(named[1]),
    "The model's manifest does not match the content hash in its name: it was changed after the build. " +
    "Build the site again (or, if this persists, the site's copy is damaged).", signal);
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new LoadError(`The model's manifest is not valid JSON (${e.message}).`);
  }
  if (!manifest || manifest.format !== "infoflow-live" || manifest.version !== 1) {
    throw new LoadError(`Unknown model format ${JSON.stringify(manifest && manifest.format)} v${manifest && manifest.version}.`);
  }
  return checkManifest(manifest);
}

/** The tokenizer.json the manifest names, as parsed JSON, with the manifest's size and sha256. */
export async function fetchTokenizer(manifest, manifestUrl, signal = null) {
  const t = manifest.tokenizer;
  const url = new URL(t.file, new URL(manifestUrl, self.location.href));
  const bytes = await fetchChecked(url, "the tokenizer", t.bytes,
    async (b) => b.byteLength === t.bytes && await sha256hex(b) === t.sha256,
    `The tokenizer ${t.file} does not match the manifest's sha256: the site's copy is damaged or was ` +
    "changed after the build. Build the site again.", signal);
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new LoadError(`The tokenizer is not valid JSON (${e.message}).`);
  }
}

/**
 * Fetch every chunk of the manifest (fetchManifest's, given or fetched here); returns a LiveModel.
 * onProgress({loaded, total, cached}) in bytes; signal: an AbortSignal.
 */
export async function loadModel(manifestUrl, { manifest = null, onProgress = () => {}, signal } = {}) {
  const base = new URL(manifestUrl, self.location.href);
  if (!manifest) manifest = await fetchManifest(base.href, signal);
  const cache = await openCache();
  const total = manifest.total_bytes;
  const stream = new Uint8Array(total);
  let loaded = 0, fromCache = 0;
  const urls = manifest.chunks.map((c) => new URL(c.file, base).href);
  let offset = 0;
  const offsets = manifest.chunks.map((c) => { const o = offset; offset += c.bytes; return o; });
  onProgress({ loaded, total, cached: 0 });
  // two chunks at a time: enough to fill the pipe, little extra memory
  let next = 0;
  const worker = async () => {
    while (next < manifest.chunks.length) {
      const i = next++;
      const bytes = await fetchChunk(manifest.chunks[i], urls[i], cache, (n, hit) => {
        loaded += n;
        if (hit) fromCache += n;
        onProgress({ loaded, total, cached: fromCache });
      }, signal);
      stream.set(bytes, offsets[i]);
    }
  };
  await Promise.all([worker(), worker()]);
  pruneCache(cache, new Set(urls));
  return new LiveModel(manifest, stream, base);
}

/** The exported weights in memory, quantized; float32 tensors made on demand. */
export class LiveModel {
  constructor(manifest, stream, base) {
    this.manifest = manifest;
    this.config = manifest.config;
    this.stream = stream;
    this.base = base;
    this.byName = new Map(manifest.tensors.map((t) => [t.name, t]));
    this.reused = new Map();   // layer tensor suffix -> {w, perm}; "<key> blocks" -> q/k's moved blocks
  }

  tensor(name, into = null) {
    const t = this.byName.get(name);
    if (!t) throw new LoadError(`The model has no tensor ${name}.`);
    return dequantizeTensor(t, this.stream, dequantizeFast, into);
  }

  /**
   * A Q4_1 matrix's blocks, rows in PyTorch's order: a view of the stream, or for q/k rows that
   * transformers un-permutes, those rows of blocks moved in an array kept for the next layer
   * (a row of 32·m values is m whole blocks, so moving rows of blocks moves rows of values).
   */
  layerBlocks(entry, key) {
    const bytes = this.stream.subarray(entry.offset, entry.offset + entry.bytes);
    if (!entry.permute_heads) return bytes;
    let out = this.reused.get(`${key} blocks`);
    if (!out || out.length !== bytes.length) this.reused.set(`${key} blocks`, out = new Uint8Array(bytes.length));
    return unpermuteRows(bytes, entry.shape[0], bytes.length / entry.shape[0], entry.permute_heads, out);
  }

  /** A layer tensor written into arrays kept for the same tensor of the next layer. */
  layerTensor(i, suffix) {
    const t = this.byName.get(`model.layers.${i}.${suffix}`);
    const n = t ? t.shape.reduce((a, b) => a * b, 1) : 0;
    let into = this.reused.get(suffix);
    if (!into || into.w.length !== n) {
      into = {w: new Float32Array(n), perm: t && t.permute_heads ? new Float32Array(n) : null};
      this.reused.set(suffix, into);
    }
    return this.tensor(`model.layers.${i}.${suffix}`, into);
  }

  /**
   * Layer i's float32 weights, row-major [out, in] as PyTorch's Linear weights (engine.js names).
   * The arrays are reused for every layer: valid until the next layerTensors() call. The engine
   * asks for layer l + 1 only once it is done with layer l, and keeps none of them.
   * `quantized` holds the GGUF blocks of the matrices the kernel can unpack itself (Q4_1, rows
   * in PyTorch's order); their float32 arrays are then made only if read (engine.js).
   */
  layerTensors(i) {
    const t = (suffix) => this.layerTensor(i, suffix);
    const raw = {
      inputNorm: t("input_layernorm.weight"),            // (d,)
      postNorm: t("post_attention_layernorm.weight"),     // (d,)
      quantized: {},
    };
    const lazy = {
      q: "self_attn.q_proj.weight",                      // (H·dh, d)
      k: "self_attn.k_proj.weight",                      // (Hkv·dh, d)
      v: "self_attn.v_proj.weight",                      // (Hkv·dh, d)
      o: "self_attn.o_proj.weight",                      // (d, H·dh)
      gate: "mlp.gate_proj.weight",                      // (d_mlp, d)
      up: "mlp.up_proj.weight",                          // (d_mlp, d)
      down: "mlp.down_proj.weight",                      // (d, d_mlp)
    };
    for (const [key, suffix] of Object.entries(lazy)) {
      const entry = this.byName.get(`model.layers.${i}.${suffix}`);     // inside the stream: checkManifest
      if (entry && entry.type === "Q4_1" && entry.shape.length === 2 && entry.shape[1] % 32 === 0) {
        raw.quantized[key] = {type: "Q4_1", bytes: this.layerBlocks(entry, key)};
      }
      let value = null;
      Object.defineProperty(raw, key, {enumerable: true, get: () => value || (value = t(suffix))});
    }
    return raw;
  }
}
