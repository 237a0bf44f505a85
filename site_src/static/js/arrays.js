//# allFunctionsCalledOnLoad
// (a V8 compile hint: this file is compiled with the module, while the data file downloads)
// The arrays of a data file (docs/data-format.md, "Arrays"): size checks, capped inflate,
// typed views, tril layout and dequantization. Every size is checked before allocation.
// Errors: DataError, with a message for the page.

/**
 * What a file may declare. Far above any real result (the default model has 30 layers; a long
 * prompt 512 positions), far below what would freeze a tab.
 */
export const LIMITS = {
  layers: 1024,
  positions: 16384,
  topK: 1024,
  strings: 1 << 21,              // entries of the string table
  elements: 1 << 27,             // one dense array: 128 Mi values (512 MB as float32)
  total: 1 << 28,                // all dense arrays together: 1 GiB as float32
  variants: 64,
};

/** Every problem with a data file; `message` is shown on the page as is. */
export class DataError extends Error {
  constructor(message) {
    super(message);
    this.name = "DataError";
  }
}

const DAMAGED_ADVICE = "Reload the page; if this message comes back, the copy on the server is damaged: "
  + "rebuild the site (infoflow build) or tell whoever published it.";

/** The file is damaged (a flipped bit, a truncated download): say so, and what to do. */
export function damaged(detail) {
  return new DataError(`The data file is damaged (${detail}). ${DAMAGED_ADVICE}`);
}

export function tooBig(what, value, limit) {
  return new DataError(`The data file declares ${what} = ${value}, more than this viewer reads (at most ${limit}). `
    + "It is damaged or was not written by infoflow; nothing was loaded.");
}

// ----------------------------------------------------------------------------- f16

/** float16 bits -> float32, written through the float32's own bits (no table: a page decodes
 * far fewer f16 values than the 65,536 a table would take to build). */
function f16ToF32(raw, out) {
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < raw.length; i++) {
    const h = raw[i], sign = (h & 0x8000) << 16, e = h & 0x7c00;
    if (e === 0x7c00) bits[i] = sign | 0x7f800000 | ((h & 0x3ff) << 13);            // inf, NaN
    else if (e === 0) out[i] = (sign ? -1 : 1) * (h & 0x3ff) * 5.960464477539063e-8;  // subnormal: m·2⁻²⁴
    else bits[i] = sign | (((h & 0x7fff) + 0x1c000) << 13);                           // rebias 15 -> 127
  }
  return out;
}

// ----------------------------------------------------------------------------- arrays

const SIZES = { u8: 1, i8: 1, u16: 2, u32: 4, f16: 2, f32: 4 };

/** Compressed bytes fed to the inflater at a time: deflate expands at most ~1032x, so one
 * slice of a bomb costs at most ~16 MB of work before the cap below is checked again. */
const INFLATE_SLICE = 16384;

/**
 * Inflate a zlib stream into exactly `size` bytes. The input goes into DecompressionStream in
 * small slices, and the output is read chunk by chunk: past `size` it stops feeding and reading
 * and throws (so a deflate bomb costs `size` bytes and milliseconds, not gigabytes: Chrome
 * inflates a whole input chunk at once, so a bomb fed in one piece would run to the end).
 * Throws too when the stream is corrupt or ends short.
 */
export async function inflateCapped(bytes, size, what = "an array") {
  if (typeof DecompressionStream === "undefined") {
    throw new DataError("This browser cannot decompress the data file (no DecompressionStream): use a current Chrome, Firefox or Safari.");
  }
  const ds = new DecompressionStream("deflate");
  const writer = ds.writable.getWriter(), reader = ds.readable.getReader();
  let stop = false;
  const slice = Math.max(256, Math.min(INFLATE_SLICE, size));   // never more input than output
  const feed = (async () => {
    for (let i = 0; i < bytes.byteLength && !stop; i += slice) {
      await writer.ready;
      if (stop) return;
      await writer.write(bytes.subarray(i, Math.min(bytes.byteLength, i + slice)));
    }
    if (!stop) await writer.close();
  })();
  feed.catch(() => {});          // its error also reaches reader.read() below
  const out = new Uint8Array(size);
  let n = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (n + value.byteLength > size) throw damaged(`${what} inflates to more than its declared ${size} bytes`);
      out.set(value, n);
      n += value.byteLength;
    }
  } catch (e) {
    stop = true;
    reader.cancel().catch(() => {});
    writer.abort().catch(() => {});
    if (e instanceof DataError) throw e;
    throw damaged(`${what} does not inflate: ${e.message}`);
  }
  if (n !== size) throw damaged(`${what} inflates to ${n} bytes, its shape needs ${size}`);
  return out;
}

/** Little-endian typed view of raw bytes (copies when unaligned). */
function typedView(dtype, bytes) {
  const size = SIZES[dtype];
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
      return f16ToF32(new Uint16Array(buf, off, n), new Float32Array(n));
    }
  }
  throw damaged(`unknown array type ${JSON.stringify(dtype)}`);
}

export const isCount = (x) => Number.isSafeInteger(x) && x >= 0;

/**
 * Check an array map's declared shape, type and layout against LIMITS, before any allocation.
 * -> {total: dense elements, stored: stored elements, size: stored bytes}
 */
export function checkArray(obj, what) {
  if (!obj || typeof obj !== "object" || !(obj.data instanceof Uint8Array) || !Array.isArray(obj.shape)) {
    throw damaged(`${what} is not an array`);
  }
  const shape = obj.shape;
  if (shape.length > 6 || !shape.every(isCount)) throw damaged(`${what} has a malformed shape`);
  let total = 1;
  for (const d of shape) {
    total *= d;
    if (total > LIMITS.elements) {
      throw new DataError(`The data file declares ${what} of shape ${shape.join(" \u00d7 ")}, more than this viewer reads `
        + `(${LIMITS.elements} values at most). It is damaged or was not written by infoflow; nothing was loaded.`);
    }
  }
  if (!SIZES[obj.dtype]) throw damaged(`${what} has unknown type ${JSON.stringify(obj.dtype)}`);
  if (obj.codec !== undefined && obj.codec !== null && obj.codec !== "deflate") throw damaged(`${what} has unknown codec ${JSON.stringify(obj.codec)}`);
  let stored = total;
  if (obj.layout === "tril") {
    if (shape.length < 2) throw damaged(`${what} is tril with fewer than two axes`);
    const P = shape[shape.length - 2], G = shape[shape.length - 1];
    const rowLen = obj.row_len, tail = obj.tail === undefined ? 0 : obj.tail;
    if (!Array.isArray(rowLen) || rowLen.length !== P || !rowLen.every(isCount) || !(tail === 0 || tail === 1) || tail > G) {
      throw damaged(`${what} has a bad row_len`);
    }
    let per = 0;
    for (let p = 0; p < P; p++) per += Math.min(rowLen[p], G - tail) + tail;
    stored = P * G ? per * (total / (P * G)) : 0;
  } else if (obj.layout !== undefined && obj.layout !== null) {
    throw damaged(`${what} has unknown layout ${JSON.stringify(obj.layout)}`);
  }
  if (obj.q !== undefined && !(Number.isFinite(obj.q) && obj.q > 0)) throw damaged(`${what} has a bad quantization`);
  return { total, stored, size: stored * SIZES[obj.dtype] };
}

/**
 * One array map -> {shape, data, scale?, q?}. `data` is the dense C-order array: a
 * Float32Array for quantized / tril / float arrays, else the integer typed array. Quantized
 * arrays keep their per-row `scale` (the row's largest |value|) and `q`: a value is within
 * scale / (2q) of the engine's number.
 */
export async function decodeArray(obj, what = "array") {
  const { total, size } = checkArray(obj, what);
  const quant = obj.q !== undefined;
  // the values and their row scales inflate side by side
  const [bytes, scaleArray] = await Promise.all([
    obj.codec === "deflate" ? inflateCapped(obj.data, size, what) : obj.data,
    quant ? decodeArray(obj.scale, what + ".scale") : null]);
  if (bytes.byteLength !== size) throw damaged(`${what} holds ${bytes.byteLength} bytes, its shape needs ${size}`);
  const flat = typedView(obj.dtype, bytes);
  const shape = obj.shape;
  let scale = null;
  if (quant) {
    scale = scaleArray.data;
    if (scale.length * (shape[shape.length - 1] || 1) !== total && total !== 0) throw damaged(`${what} has a bad scale`);
  }
  let out;
  if (obj.layout === "tril") {
    const P = shape[shape.length - 2], G = shape[shape.length - 1];
    const lead = P * G ? total / (P * G) : 0;
    const rowLen = obj.row_len, tail = obj.tail | 0;
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
  return quant ? { shape, data: out, scale, q: obj.q } : { shape, data: out };
}

