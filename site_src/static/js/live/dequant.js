// GGUF blocks -> float32, exactly as the Python conversion makes them (docs/live-format.md).
//
// gguf-py dequantizes in numpy float32: Q8_0 is x·d, Q4_1 is (d·q) + m, with d and m float16.
// Each product is exact in float32 (11-bit × 8-bit mantissas), and the Q4_1 sum of two such
// values is exact in float64, so Math.fround of the float64 expression is numpy's float32
// result bit for bit. Then transformers un-permutes the rows of q_proj and k_proj.
// Pure functions, no DOM: the same module runs in the worker and in node (tests/test_live.py).

/** float16 bits -> number (exact). */
export function f16(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1024 + m) * 2 ** (e - 25);
}

let F16 = null;
function f16Table() {
  if (!F16) {
    F16 = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) F16[h] = f16(h);
  }
  return F16;
}

export const BLOCKS = { F32: [1, 4], Q8_0: [32, 34], Q4_1: [32, 20] };   // values, bytes per block

/** Dequantize `n` values of `type` from `bytes` (a Uint8Array of that tensor) into `out`. */
export function dequantizeInto(type, bytes, out) {
  const n = out.length;
  const t = f16Table();
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (type === "F32") {
    if (bytes.byteLength !== 4 * n) throw new Error(`F32 tensor: ${bytes.byteLength} bytes for ${n} values`);
    for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
  } else if (type === "Q8_0") {
    if (bytes.byteLength !== (n / 32) * 34) throw new Error(`Q8_0 tensor: ${bytes.byteLength} bytes for ${n} values`);
    for (let b = 0, o = 0, i = 0; i < n; b++, o += 34) {
      const d = t[dv.getUint16(o, true)];
      for (let j = 0; j < 32; j++) out[i++] = dv.getInt8(o + 2 + j) * d;
    }
  } else if (type === "Q4_1") {
    if (bytes.byteLength !== (n / 32) * 20) throw new Error(`Q4_1 tensor: ${bytes.byteLength} bytes for ${n} values`);
    for (let o = 0, i = 0; i < n; o += 20, i += 32) {
      const d = t[dv.getUint16(o, true)], m = t[dv.getUint16(o + 2, true)];
      for (let j = 0; j < 16; j++) {
        const q = bytes[o + 4 + j];
        out[i + j] = d * (q & 15) + m;          // low nibbles: values 0..15 of the block
        out[i + j + 16] = d * (q >> 4) + m;     // high nibbles: values 16..31
      }
    }
  } else {
    throw new Error(`unsupported tensor type ${type}`);
  }
  return out;
}

/**
 * transformers' _reverse_permute_weights on a row-major (out, in) matrix: the GGUF's rows,
 * viewed as [head, dim, 2], are reordered to [head, 2, dim] (numpy: reshape, swapaxes(2, 1)).
 * w and out: typed arrays of cols elements a row (weights.js also moves rows of Q4_1 blocks).
 */
export function unpermuteRows(w, rows, cols, nHead, out = new Float32Array(w.length)) {
  const dim = rows / nHead / 2;
  for (let h = 0; h < nHead; h++) {
    for (let a = 0; a < 2; a++) {
      for (let i = 0; i < dim; i++) {
        const src = (h * dim * 2 + i * 2 + a) * cols;       // row [h, i, a] of the GGUF order
        const dst = (h * 2 * dim + a * dim + i) * cols;     // row [h, a, i] of the PyTorch order
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

/**
 * One manifest tensor entry -> Float32Array, row-major [out, in] (PyTorch Linear layout).
 * fast: optional (type, bytes, out) -> true when it dequantized them itself, bit for bit as
 * dequantizeInto (the worker passes kernel.js's WebAssembly Q4_1; node tests use this file alone).
 * into: optional {w, perm} Float32Arrays of the tensor's size to write into instead of fresh
 * ones (a fresh 14 MB of weights per layer costs page faults and garbage); perm is used, and
 * returned, for q/k rows that need un-permuting.
 */
export function dequantizeTensor(entry, stream, fast = null, into = null) {
  const n = entry.shape.reduce((a, b) => a * b, 1);
  const bytes = stream.subarray(entry.offset, entry.offset + entry.bytes);
  if (bytes.byteLength !== entry.bytes) throw new Error(`tensor ${entry.name} runs past the end of the weights`);
  let w = into && into.w.length === n ? into.w : new Float32Array(n);
  if (!(fast && fast(entry.type, bytes, w))) dequantizeInto(entry.type, bytes, w);
  if (entry.permute_heads) {
    w = unpermuteRows(w, entry.shape[0], entry.shape[1], entry.permute_heads,
                      into && into.perm && into.perm.length === n ? into.perm : undefined);
  }
  return w;
}
