/**
 * The model side of the in-browser engine: checking the caller's config and inputs, a layer's
 * weights in the kernel (norms folded in), and HF's rotary embedding with its rope_scaling.
 */
import {Weight} from "./kernel.js";

/** The layer's weights in the kernel, each RMSNorm's weight folded into the matrices reading it
 * (W ⊙ w, as weights.extract_weights folds it), so both passes share them. A matrix in
 * raw.quantized goes from its Q4_1 blocks straight into the kernel, without its float array. */
export function layerWeights(raw, cfg) {
  const {d_model: d, n_heads: H, n_kv_heads: KV, head_dim: hd, d_ff: ff} = cfg;
  const made = [];
  const weight = (name, out, inDim, scale) => {
    const q = raw.quantized && raw.quantized[name];
    if (!q && !(raw[name] instanceof Float32Array)) throw new Error(`layer weight ${name} is missing`);
    if (q && q.type !== "Q4_1") throw new Error(`layer weight ${name}: the kernel cannot unpack ${q.type}`);
    const w = q ? new Weight(q.bytes, out, inDim, scale, {q4_1: true}) : new Weight(raw[name], out, inDim, scale);
    made.push(w);
    return w;
  };
  try {
    const w = {
      q: weight("q", H * hd, d, raw.inputNorm), k: weight("k", KV * hd, d, raw.inputNorm),
      v: weight("v", KV * hd, d, raw.inputNorm), o: weight("o", d, H * hd),
      gate: weight("gate", ff, d, raw.postNorm), up: weight("up", ff, d, raw.postNorm),
      down: weight("down", d, ff),
      raw,                                   // for the MLP slices of helper workers
      dispose: () => made.forEach((m) => m.dispose()),
    };
    for (const b of ["qBias", "kBias", "vBias", "oBias", "gateBias", "upBias", "downBias"]) {
      w[b] = raw[b] || null;
    }
    return w;
  } catch (e) {
    made.forEach((m) => m.dispose());
    throw e;
  }
}

/** cos/sin tables (P, hd/2) of HF's rotary embedding, with the model's rope_scaling. */
export function ropeTables(cfg, P) {
  const half = cfg.head_dim / 2, theta = cfg.rope_theta;
  let inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(theta, Math.fround((2 * i) / cfg.head_dim));
  inv = scaleRope(inv, cfg.rope_scaling);
  const cos = new Float32Array(P * half), sin = new Float32Array(P * half);
  for (let p = 0; p < P; p++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(inv[i] * p);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return {cos, sin, half};
}

/** transformers' rope init functions for the types a Llama-family config uses. */
function scaleRope(inv, scaling) {
  if (!scaling) return inv;
  const type = scaling.rope_type || scaling.type || "default";
  if (type === "default") return inv;
  if (type === "linear") return inv.map((f) => f / scaling.factor);
  if (type === "llama3") {
    const {factor, low_freq_factor: lo, high_freq_factor: hi} = scaling;
    const old = scaling.original_max_position_embeddings;
    const loWave = old / lo, hiWave = old / hi;
    return inv.map((f) => {
      const wave = (2 * Math.PI) / f;
      if (wave < hiWave) return f;
      if (wave > loWave) return f / factor;
      const smooth = (old / wave - lo) / (hi - lo);
      return (1 - smooth) * (f / factor) + smooth * f;
    });
  }
  throw new Error(`rope_scaling type "${type}" is not supported by the in-browser engine ` +
                  "(supported: default, linear, llama3).");
}

/** HF's rotate_half convention: pairs (i, i + hd/2) within each head, in place. */
export function applyRope(x, P, nh, hd, {cos, sin, half}) {
  for (let p = 0; p < P; p++) {
    for (let h = 0; h < nh; h++) {
      const o = (p * nh + h) * hd;
      for (let i = 0; i < half; i++) {
        const a = x[o + i], b = x[o + i + half], c = cos[p * half + i], s = sin[p * half + i];
        x[o + i] = Math.fround(a * c) - Math.fround(b * s);
        x[o + i + half] = Math.fround(b * c) + Math.fround(a * s);
      }
    }
  }
}

// ----------------------------------------------------------------------------- checks

const CONFIG_NUMBERS = ["n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab",
                        "rms_eps", "rope_theta"];

export function checkConfig(cfg) {
  if (!cfg) throw new Error("model.config is missing");
  for (const key of CONFIG_NUMBERS) {
    if (!(Number.isFinite(cfg[key]) && cfg[key] > 0)) throw new Error(`model.config.${key} must be a positive number`);
  }
  if (cfg.n_heads % cfg.n_kv_heads) throw new Error("n_heads must be a multiple of n_kv_heads");
  if (cfg.head_dim % 4) throw new Error(`head_dim ${cfg.head_dim} is not a multiple of 4, which the kernel's attention mixing needs`);
  if (cfg.hidden_act && cfg.hidden_act !== "silu") {
    throw new Error(`hidden_act "${cfg.hidden_act}" is not supported by the in-browser engine (silu only).`);
  }
  return cfg;
}

export function checkTopK(k, V) {
  if (!Number.isInteger(k) || k < 1 || k > V) throw new Error(`topK must be an integer from 1 to ${V}, not ${k}`);
}

export function checkIds(ids, V) {
  if (!ids || ids.length < 1) throw new Error("no token ids to decompose");
  for (const i of ids) {
    if (!Number.isInteger(i) || i < 0 || i >= V) throw new Error(`token id ${i} is outside the vocabulary (0..${V - 1})`);
  }
}

/** A variant's grouping of the sources: null, or Int32Array (S,) with the bias source last. */
export function sourceGrouping(name, groups, P, bias) {
  if (groups == null) return null;
  if (groups.length !== P) throw new Error(`variant "${name}" has ${groups.length} group ids for ${P} tokens`);
  let next = 0;
  for (const g of groups) {
    if (!Number.isInteger(g) || g < 0 || g > next) {
      throw new Error(`variant "${name}": group ids must be numbered 0.. in order of first use`);
    }
    if (g === next) next++;
  }
  const out = new Int32Array(P + (bias ? 1 : 0));
  out.set(groups);
  if (bias) out[P] = next;
  return out;
}

export function tokenGroups(groups, P) {
  return groups == null ? Int32Array.from({length: P}, (_, i) => i) : Int32Array.from(groups);
}
