/**
 * The exact attribution graph of one target logit in the browser: the same description as
 * infoflow/paths.py (read its docstring and docs/graph.md), the same definitions, node order,
 * pruning and completeness, with the function names mirrored so the two read alike.
 *
 * With patterns, gates and norm scales frozen (what engine.js's forward pass freezes: kept in
 * result.frozen when decompose() is called with {graph: true}), the target
 *     T = ⟨u, f ⊙ x_L[p*]⟩ (+ the unembedding bias's share)
 * is linear in every node's write w_b (u = W_U[t] − W_U[t'], or W_U[t] − mean_v W_U[v]).
 * g_b = ∂T/∂x just after b's write comes from one backward pass through the transposed frozen
 * maps (gradients), effect(b) = ⟨g_b, w_b⟩ (nodeEffects), and an edge a → b is
 * coef(b, k_a)·⟨M_b, w_a⟩ (edgeMatrix), M_b the read vector of b's frozen linear map.
 *
 * The engine runs Llama-family models (no post-norms), so A' = A and gs = gate / rms2.
 *
 * ## Interface
 *   const state = await prepare(model, frozen);                     // once per run: the node writes
 *   const entry = await graphFor(model, state, {token, contrast, position}, opts);
 *   entry: one entry of infoflow/graphfile.py's graph_entry, decoded (arrays as {shape, data}).
 *   opts: {nodeThreshold = 0.8, edgeThreshold = 0.98, tokenText(id) -> string}
 * `state` holds only what every target shares (frozen scales, patterns, gates, node writes):
 * stateBytes(state) says how much, so a caller can keep it for new targets or drop it.
 *   opts.split: async (grads, hasOBias) -> engine-split.js SourceSplit (a decomposition run with it
 *   as an observer): the entry then holds by_source (graphfile's, tokens grouping). The strongest
 *   paths are not computed here.
 */
import {Weight, matmul} from "./kernel.js";
import {finalScale} from "./engine-ops.js";
import {bySource} from "./engine-split.js";

export const EMBED = 0, HEAD = 1, MLP = 2, BIAS = 3, LOGIT = 4;
export const NODE_THRESHOLD = 0.8;    // keep nodes, largest |effect| first, up to this share
export const EDGE_THRESHOLD = 0.98;   // then edges among them, likewise

// ----------------------------------------------------------------------------- the frozen state

/** What engine.js's forward pass freezes, layer by layer (decompose(..., {graph: true})). */
export class FrozenRecorder {
  constructor(cfg, P) {
    this.cfg = cfg;
    this.P = P;
    this.inv1 = [];       // L × (P,)       1/rms of the attention pre-norm
    this.pattern = [];    // L × (H, P, P)  the attention pattern
    this.inv2 = [];       // L × (P,)       1/rms of the MLP pre-norm
    this.gate = [];       // L × (P, ff)    act(gate_proj(x̂)) (gate bias included)
  }

  attention(l, inv, pattern) { this.inv1[l] = inv; this.pattern[l] = pattern; }

  mlp(l, inv, gate) { this.inv2[l] = inv; this.gate[l] = gate; }

  finish(ids, xFinal) {
    return {cfg: this.cfg, P: this.P, ids: Int32Array.from(ids), xFinal, inv1: this.inv1,
            pattern: this.pattern, inv2: this.inv2, gate: this.gate};
  }
}

/** gate_scale = gate / rms2, (P, ff): what multiplies W_up x in the frozen MLP. */
function gateScale(frozen, l) {
  const {P} = frozen, ff = frozen.cfg.d_ff, g = frozen.gate[l], inv = frozen.inv2[l];
  const out = new Float32Array(P * ff);
  for (let p = 0; p < P; p++) for (let j = 0; j < ff; j++) out[p * ff + j] = g[p * ff + j] * inv[p];
  return out;
}

// ----------------------------------------------------------------------------- the target

const meanRows = new WeakMap();    // W_U -> mean_v W_U[v] (Float64Array), computed once per array

function meanUnembedding(W, V, d) {
  let m = meanRows.get(W);
  if (!m) {
    m = new Float64Array(d);
    for (let v = 0; v < V; v++) for (let j = 0; j < d; j++) m[j] += W[v * d + j];
    for (let j = 0; j < d; j++) m[j] /= V;
    meanRows.set(W, m);
  }
  return m;
}

/** {token, contrast, position, u (d,) float32, biasTerm}, as paths.target_direction. */
export function targetDirection(model, token, contrast, position) {
  const {d_model: d, vocab: V} = model.config, W = model.lmHead || model.embed;
  const u = new Float32Array(d);
  const other = contrast != null ? W.subarray(contrast * d, (contrast + 1) * d) : meanUnembedding(W, V, d);
  for (let j = 0; j < d; j++) u[j] = W[token * d + j] - other[j];
  let biasTerm = 0;
  const b = model.lmHeadBias;
  if (b) {
    let mean = 0;
    if (contrast == null) for (let v = 0; v < V; v++) mean += b[v];
    biasTerm = b[token] - (contrast != null ? b[contrast] : mean / V);
  }
  return {token, contrast: contrast ?? null, position, u, biasTerm};
}

/** T from the real forward pass: logit[t] − logit[t'] (or − the mean logit) at p*, in float64. */
export function realValue(model, frozen, target) {
  const {d_model: d, vocab: V, rms_eps: eps} = model.config, P = frozen.P;
  const f = finalScale(frozen.xFinal, model.finalNorm, eps, P, d);
  const p = target.position;
  let t = 0;
  for (let j = 0; j < d; j++) t += Math.fround(f[p * d + j] * frozen.xFinal[p * d + j]) * target.u[j];
  return t + target.biasTerm;
}

/** A target as asked for -> its token ids, or an Error naming what to fix. */
export function checkTarget(cfg, P, {token, contrast = null, position = -1}) {
  const id = (v, what) => {
    if (!Number.isInteger(v) || v < 0 || v >= cfg.vocab) throw new Error(`the ${what} must be a token id 0..${cfg.vocab - 1}, not ${v}`);
    return v;
  };
  if (!Number.isInteger(position) || position < -P || position >= P) {
    throw new Error(`position ${position} is out of range: the prompt has ${P} tokens (use 0 .. ${P - 1}, or -1 for the last)`);
  }
  const t = id(token, "target"), c = contrast == null ? null : id(contrast, "contrast");
  if (c === t) throw new Error("the target and the contrast are the same token; pick another contrast");
  return {token: t, contrast: c, position: ((position % P) + P) % P};
}

// ----------------------------------------------------------------------------- layer weights

/** The float32 matrices the graph reads, as kernel Weights: forward (x·Wᵀ) or back (g·W). */
function graphWeights(raw, cfg, which, {forward = true, back = true} = {}) {
  const {d_model: d, n_heads: H, n_kv_heads: KV, head_dim: hd, d_ff: ff} = cfg;
  const made = {};
  const shapes = {v: [KV * hd, d, raw.inputNorm], o: [d, H * hd, null], up: [ff, d, raw.postNorm], down: [d, ff, null]};
  try {
    for (const name of which) {
      const [out, inDim, scale] = shapes[name];
      if (forward) made[name] = new Weight(raw[name], out, inDim, scale);
      if (back) made[name + "T"] = new Weight(raw[name], inDim, out, null, {transposed: true});   // g · W
    }
  } catch (e) {
    Object.values(made).forEach((w) => w.dispose());
    throw e;
  }
  made.dispose = () => Object.values(made).forEach((w) => w instanceof Weight && w.dispose());
  return made;
}

function scaleColumns(x, rows, n, s) {
  if (s) for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) x[r * n + j] *= s[j];
  return x;
}

/** O[q, h] = Σ_k A[h, q, k] V[k, g(h)] (+ b_v through the pattern).   (P, KV·hd) -> (P, H·hd) */
function mixValues(V, pattern, cfg, P) {
  const {n_heads: H, n_kv_heads: KV, head_dim: hd} = cfg, rep = H / KV;
  const O = new Float32Array(P * H * hd);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / rep);
    for (let q = 0; q < P; q++) {
      const o = (q * H + h) * hd, A = (h * P + q) * P;
      for (let k = 0; k <= q; k++) {
        const a = pattern[A + k], v = (k * KV + g) * hd;
        for (let j = 0; j < hd; j++) O[o + j] += a * V[v + j];
      }
    }
  }
  return O;
}

/** Σ_q A[h, q, k] Gh[q, h], summed over the heads sharing a kv group: paths.heads_to_values. */
function headsToValues(Gh, pattern, cfg, P) {
  const {n_heads: H, n_kv_heads: KV, head_dim: hd} = cfg, rep = H / KV;
  const Gv = new Float32Array(P * KV * hd);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / rep);
    for (let q = 0; q < P; q++) {
      const o = (q * H + h) * hd, A = (h * P + q) * P;
      for (let k = 0; k <= q; k++) {
        const a = pattern[A + k], v = (k * KV + g) * hd;
        for (let j = 0; j < hd; j++) Gv[v + j] += a * Gh[o + j];
      }
    }
  }
  return Gv;
}

// ----------------------------------------------------------------------------- node writes

/**
 * Every node's write, from one pass of the frozen model started at the embeddings (paths.
 * node_writes): its residual is then exactly the sum of the writes before it.
 *   O[l] (P, H·hd): o_proj's input (b_v included);  mid[l] (P, d): the residual after
 *   attention;  mlpW[l] (P, d): the MLP's write;  emb (P, d)
 */
export async function nodeWrites(model, frozen) {
  const cfg = model.config, {d_model: d} = cfg, P = frozen.P, L = cfg.n_layers;
  let x = new Float32Array(P * d);
  for (let p = 0; p < P; p++) x.set(model.embed.subarray(frozen.ids[p] * d, (frozen.ids[p] + 1) * d), p * d);
  const emb = x, O = [], mid = [], mlpW = [];
  for (let l = 0; l < L; l++) {
    const raw = await model.layer(l);
    const w = graphWeights(raw, cfg, ["v", "o", "up", "down"], {back: false});
    try {
      const xs = new Float32Array(P * d), s1 = frozen.inv1[l];
      for (let p = 0; p < P; p++) for (let j = 0; j < d; j++) xs[p * d + j] = x[p * d + j] * s1[p];
      const V = matmul(xs, P, w.v);
      addRows(V, raw.vBias, P);
      const o = mixValues(V, frozen.pattern[l], cfg, P);
      const attn = matmul(o, P, w.o);
      addRows(attn, raw.oBias, P);
      const m = new Float32Array(P * d);
      for (let i = 0; i < P * d; i++) m[i] = x[i] + attn[i];
      const write = mlpWrite(m, frozen, l, w, raw, cfg, P);
      x = new Float32Array(P * d);
      for (let i = 0; i < P * d; i++) x[i] = m[i] + write[i];
      O.push(o), mid.push(m), mlpW.push(write);
    } finally {
      w.dispose();
    }
  }
  return {O, mid, mlpW, emb};
}

function addRows(y, bias, rows) {
  if (!bias) return;
  const n = bias.length;
  for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) y[r * n + j] += bias[j];
}

/** W_down (gs ⊙ W_up x + gate ⊙ b_up) + b_down for the rows of x: paths.mlp_write. */
function mlpWrite(x, frozen, l, w, raw, cfg, rows, at = null) {
  const ff = cfg.d_ff, g = frozen.gate[l], inv = frozen.inv2[l];
  const h = matmul(x, rows, w.up);                                  // (rows, ff)
  for (let r = 0; r < rows; r++) {
    const p = at ? at[r] : r;
    for (let j = 0; j < ff; j++) {
      h[r * ff + j] *= g[p * ff + j] * inv[p];
      if (raw.upBias) h[r * ff + j] += raw.upBias[j] * g[p * ff + j];
    }
  }
  const out = matmul(h, rows, w.down);
  addRows(out, raw.downBias, rows);
  return out;
}

// ----------------------------------------------------------------------------- gradients

/**
 * One backward pass through the transposed frozen maps, last layer first (paths.gradients).
 *   afterAttn[l], afterMlp[l] (P, d): ∂T/∂(residual after layer l's attention / MLP);
 *   embed (P, d); direct (d,) = u ⊙ f[p*];
 *   heads[l] (P, H·hd) = afterAttn[l] · W_o: each head's read of its output (paths.read_heads);
 *   mlpRead[l] (P, d): M_b of the MLP at each position (W_upᵀ (gs ⊙ W_downᵀ g));
 *   headConst[l] (H', P), mlpConst[l] (P): the bias node's edge into each head and MLP.
 */
export async function gradients(model, frozen, target) {
  const cfg = model.config, {d_model: d, n_heads: H, head_dim: hd, d_ff: ff, n_layers: L} = cfg, P = frozen.P;
  const f = finalScale(frozen.xFinal, model.finalNorm, cfg.rms_eps, P, d);
  const direct = new Float32Array(d);
  for (let j = 0; j < d; j++) direct[j] = target.u[j] * f[target.position * d + j];
  let g = new Float32Array(P * d);
  g.set(direct, target.position * d);
  const afterAttn = [], afterMlp = [], heads = [], mlpRead = [], headConst = [], mlpConst = [];
  const Hx = H + (model.hasOBias ? 1 : 0);
  for (let l = L - 1; l >= 0; l--) {
    const raw = await model.layer(l);
    const w = graphWeights(raw, cfg, ["v", "o", "up", "down"], {forward: false});
    try {
      afterMlp[l] = g;
      const back = matmul(g, P, w.downT);                           // (P, ff) W_downᵀ g
      const gs = gateScale(frozen, l);
      const cm = new Float64Array(P);
      for (let p = 0; p < P; p++) {
        if (raw.upBias) {
          let c = 0;
          for (let j = 0; j < ff; j++) c += back[p * ff + j] * Math.fround(raw.upBias[j] * frozen.gate[l][p * ff + j]);
          cm[p] += c;
        }
        if (raw.downBias) cm[p] += dot(g, p * d, raw.downBias, 0, d);
      }
      mlpConst[l] = cm;
      for (let i = 0; i < P * ff; i++) back[i] *= gs[i];
      const read = scaleColumns(matmul(back, P, w.upT), P, d, raw.postNorm);     // (P, d)
      mlpRead[l] = read;
      const g2 = new Float32Array(P * d);
      for (let i = 0; i < P * d; i++) g2[i] = g[i] + read[i];
      g = g2;
      afterAttn[l] = g;
      const Gh = matmul(g, P, w.oT);                                 // (P, H·hd)
      heads[l] = Gh;
      const hc = new Float64Array(Hx * P);
      if (raw.vBias) {
        const {n_kv_heads: KV} = cfg, rep = H / KV, A = frozen.pattern[l];
        for (let h = 0; h < H; h++) {
          const gr = Math.floor(h / rep);
          for (let p = 0; p < P; p++) {
            let rowSum = 0;
            for (let k = 0; k <= p; k++) rowSum += A[(h * P + p) * P + k];
            hc[h * P + p] = dot(Gh, (p * H + h) * hd, raw.vBias, gr * hd, hd) * rowSum;
          }
        }
      }
      if (raw.oBias) for (let p = 0; p < P; p++) hc[H * P + p] = dot(g, p * d, raw.oBias, 0, d);
      headConst[l] = hc;
      const Gv = headsToValues(Gh, frozen.pattern[l], cfg, P);
      const up = scaleColumns(matmul(Gv, P, w.vT), P, d, raw.inputNorm);   // (P, d)
      const s1 = frozen.inv1[l];
      const g3 = new Float32Array(P * d);
      for (let p = 0; p < P; p++) for (let j = 0; j < d; j++) g3[p * d + j] = g[p * d + j] + up[p * d + j] * s1[p];
      g = g3;
    } finally {
      w.dispose();
    }
  }
  return {afterAttn, afterMlp, embed: g, direct, heads, mlpRead, headConst, mlpConst};
}

function dot(a, ia, b, ib, n) {
  let s = 0;
  for (let j = 0; j < n; j++) s += a[ia + j] * b[ib + j];
  return s;
}

// ----------------------------------------------------------------------------- node effects

/** Node effects (float64 sums), as paths.node_effects: embed (P), heads (L, H', P), mlp (L, P),
 * bias, the constant edges, and the direct parts at p*. */
export function nodeEffects(model, frozen, grads, writes, target) {
  const cfg = model.config, {d_model: d, n_heads: H, head_dim: hd, n_layers: L} = cfg, P = frozen.P;
  const Hx = H + (model.hasOBias ? 1 : 0), ps = target.position;
  const heads = new Float64Array(L * Hx * P), headConst = new Float64Array(L * Hx * P);
  const mlp = new Float64Array(L * P), mlpConst = new Float64Array(L * P);
  for (let l = 0; l < L; l++) {
    const Gh = grads.heads[l], O = writes.O[l];
    for (let h = 0; h < H; h++) {
      for (let p = 0; p < P; p++) heads[(l * Hx + h) * P + p] = dot(Gh, (p * H + h) * hd, O, (p * H + h) * hd, hd);
    }
    for (let i = 0; i < Hx * P; i++) headConst[l * Hx * P + i] = grads.headConst[l][i];
    if (Hx > H) for (let p = 0; p < P; p++) heads[(l * Hx + H) * P + p] = grads.headConst[l][H * P + p];
    for (let p = 0; p < P; p++) {
      mlp[l * P + p] = dot(grads.afterMlp[l], p * d, writes.mlpW[l], p * d, d);
      mlpConst[l * P + p] = grads.mlpConst[l][p];
    }
  }
  const embed = new Float64Array(P);
  for (let p = 0; p < P; p++) embed[p] = dot(grads.embed, p * d, writes.emb, p * d, d);
  let bias = target.biasTerm;
  for (const v of headConst) bias += v;
  for (const v of mlpConst) bias += v;
  return {embed, heads, mlp, bias, headConst, mlpConst, Hx, P, L};
}

/** The direct (logit-lens) part of each node's effect at p*: ⟨u ⊙ f[p*], w_b[p*]⟩. */
function directParts(model, frozen, grads, writes, target, eff) {
  const cfg = model.config, {d_model: d, n_heads: H, head_dim: hd, n_layers: L} = cfg, P = frozen.P;
  const ps = target.position, Hx = eff.Hx;
  const heads = new Float64Array(L * Hx), mlp = new Float64Array(L);
  return (async () => {
    for (let l = 0; l < L; l++) {
      const raw = await model.layer(l);
      const o = raw.o, O = writes.O[l];
      for (let h = 0; h < H; h++) {         // ⟨direct, W_o,h O[p*, h]⟩ = ⟨W_o,hᵀ direct, O[p*, h]⟩
        let s = 0;
        for (let i = 0; i < d; i++) {
          let r = 0;
          for (let j = 0; j < hd; j++) r += o[i * H * hd + h * hd + j] * O[ps * H * hd + h * hd + j];
          s += grads.direct[i] * r;
        }
        heads[l * Hx + h] = s;
      }
      if (Hx > H) heads[l * Hx + H] = dot(grads.direct, 0, raw.oBias, 0, d);
      mlp[l] = dot(grads.direct, 0, writes.mlpW[l], ps * d, d);
    }
    return {embed: dot(grads.direct, 0, writes.emb, ps * d, d), heads, mlp};
  })();
}

// ----------------------------------------------------------------------------- the graph

/** Every node but the target (paths.all_nodes): embeddings, then per layer its heads (each
 * head's positions) then its MLP, then the bias node. */
export function allNodes(eff, hasBias) {
  const {P, L, Hx} = eff;
  const n = P + L * (Hx + 1) * P + (hasBias ? 1 : 0);
  const out = {kind: new Int8Array(n), layer: new Int16Array(n), head: new Int16Array(n),
               position: new Int32Array(n), effect: new Float64Array(n)};
  let i = 0;
  const add = (k, l, h, p, e) => {
    out.kind[i] = k; out.layer[i] = l; out.head[i] = h; out.position[i] = p; out.effect[i] = e; i++;
  };
  for (let p = 0; p < P; p++) add(EMBED, -1, -1, p, eff.embed[p]);
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < Hx; h++) for (let p = 0; p < P; p++) add(HEAD, l, h, p, eff.heads[(l * Hx + h) * P + p]);
    for (let p = 0; p < P; p++) add(MLP, l, -1, p, eff.mlp[l * P + p]);
  }
  if (hasBias) add(BIAS, -1, -1, -1, eff.bias);
  return out;
}

/** Indices of the largest |values|, in descending order (ties: the lower index first), up to
 * `share` of Σ|values| (at least one; share ≥ 1 keeps everything): paths.cumulative_keep. */
export function cumulativeKeep(values, share) {
  const n = values.length, a = Float64Array.from(values, Math.abs);
  const byIndex = (x, y) => a[y] - a[x] || x - y;
  if (share >= 1) return Array.from({length: n}, (_, i) => i).sort(byIndex);
  const sorted = Float64Array.from(a).sort().reverse();            // native sort: ~1e6 edges
  let total = 0;
  for (let i = 0; i < n; i++) total += sorted[i];
  let m = 1;
  if (total > 0) {
    let cum = 0;
    for (m = 0; m < n;) if ((cum += sorted[m++]) / total >= share - 1e-12) break;
  }
  // the m largest: every value above the m-th, then its ties by index (as a stable sort)
  const cut = sorted[m - 1], out = [];
  let ties = m;
  for (let i = 0; i < n; i++) if (a[i] > cut) { out.push(i); ties--; }
  for (let i = 0; i < n && ties > 0; i++) if (a[i] === cut) { out.push(i); ties--; }
  return out.sort(byIndex);
}

function select(nodes, idx) {
  const out = {};
  for (const [k, v] of Object.entries(nodes)) out[k] = v.constructor.from(idx, (i) => v[i]);
  return out;
}

/** Append the target (logit) node at the end: paths.with_logit. */
function withLogit(nodes, target, value) {
  const out = {};
  for (const [k, v] of Object.entries(nodes)) {
    out[k] = new v.constructor(v.length + 1);
    out[k].set(v);
  }
  const j = out.kind.length - 1;
  out.kind[j] = LOGIT; out.layer[j] = 10000; out.head[j] = -1; out.position[j] = target.position; out.effect[j] = value;
  return out;
}

/** A node's place in the forward pass (paths._order): heads of one layer share theirs. */
function order(kind, layer) {
  return kind === EMBED ? -1 : kind === HEAD ? 2 * layer : kind === MLP ? 2 * layer + 1 : kind === BIAS ? -2 : 1e6;
}

/** Node writes and read vectors for any set of nodes (paths.Reader). */
class Reader {
  constructor(model, frozen, grads, writes, target) {
    Object.assign(this, {model, frozen, grads, writes, target, cfg: model.config});
  }

  /** w_b (d,): a node's whole write at its position. */
  write(kind, l, h, p, raw) {
    const {d_model: d, n_heads: H, head_dim: hd} = this.cfg;
    if (kind === EMBED) return this.writes.emb.subarray(p * d, (p + 1) * d);
    if (kind === MLP) return this.writes.mlpW[l].subarray(p * d, (p + 1) * d);
    if (h === H) return raw.oBias;
    const out = new Float32Array(d), O = this.writes.O[l], o = raw.o;
    for (let i = 0; i < d; i++) {
      let s = 0;
      for (let j = 0; j < hd; j++) s += o[i * H * hd + h * hd + j] * O[p * H * hd + h * hd + j];
      out[i] = s;
    }
    return out;
  }

  /** M_b (d,): edge(a → b) = coef(b, k_a) · ⟨M_b, w_a⟩. */
  readVector(kind, l, h, p, raw) {
    const {d_model: d, n_heads: H, n_kv_heads: KV, head_dim: hd} = this.cfg;
    if (kind === LOGIT) return this.grads.direct;
    if (kind === MLP) return this.grads.mlpRead[l].subarray(p * d, (p + 1) * d);
    const out = new Float32Array(d);
    if (h === H) return out;
    const gh = this.grads.heads[l], g = Math.floor(h / (H / KV)), v = raw.v, w1 = raw.inputNorm;
    for (let j = 0; j < hd; j++) {
      const c = gh[(p * H + h) * hd + j], row = (g * hd + j) * d;
      for (let i = 0; i < d; i++) out[i] += c * v[row + i];
    }
    for (let i = 0; i < d; i++) out[i] *= w1[i];
    return out;
  }

  /** How much of position k's residual node b reads (before M_b). */
  coef(kind, l, h, p, k) {
    if (kind === HEAD) {
      if (h === this.cfg.n_heads || k > p) return 0;
      const P = this.frozen.P;
      return this.frozen.pattern[l][(h * P + p) * P + k] * this.frozen.inv1[l][k];
    }
    return k === p ? 1 : 0;
  }
}

/** Edges src → dst among `nodes` (dst × src, float64), zero where src does not come before dst;
 * the bias node's column holds the constant parts: paths.edge_matrix. */
async function edgeMatrix(reader, nodes, eff) {
  const {d_model: d} = reader.cfg, n = nodes.kind.length;
  const writes = new Float32Array(n * d), reads = new Float32Array(n * d);
  const byLayer = new Map();
  for (let i = 0; i < n; i++) {
    const l = nodes.layer[i];
    if (!byLayer.has(l)) byLayer.set(l, []);
    byLayer.get(l).push(i);
  }
  for (const [l, idx] of byLayer) {               // one layer's weights at a time
    const raw = l >= 0 && l < reader.cfg.n_layers ? await reader.model.layer(l) : null;
    for (const i of idx) {
      const k = nodes.kind[i], h = nodes.head[i], p = nodes.position[i];
      if (k !== BIAS && k !== LOGIT) writes.set(reader.write(k, l, h, p, raw), i * d);
      if (k !== EMBED && k !== BIAS) reads.set(reader.readVector(k, l, h, p, raw), i * d);
    }
  }
  const W = new Weight(writes, n, d);
  let dots;
  try {
    dots = matmul(reads, n, W);                                     // (n, n) dst × src
  } finally {
    W.dispose();
  }
  const E = new Float64Array(n * n);
  const ord = Int32Array.from(nodes.kind, (k, i) => order(k, nodes.layer[i]));
  const biasCol = nodes.kind.indexOf(BIAS);
  const {Hx, P} = eff;
  for (let j = 0; j < n; j++) {
    const kind = nodes.kind[j];
    if (kind === EMBED || kind === BIAS) continue;
    const l = nodes.layer[j], h = nodes.head[j], p = nodes.position[j];
    for (let s = 0; s < n; s++) {
      if (ord[s] >= ord[j] || s === biasCol) continue;
      const c = kind === LOGIT ? (nodes.position[s] === p ? 1 : 0) : reader.coef(kind, l, h, p, nodes.position[s]);
      if (c) E[j * n + s] = c * dots[j * n + s];
    }
    if (biasCol >= 0) {
      E[j * n + biasCol] = kind === HEAD ? eff.headConst[(l * Hx + h) * P + p]
        : kind === MLP ? eff.mlpConst[l * P + p] : reader.target.biasTerm;
    }
  }
  return E;
}

/** (kept nodes + the target last, edges {src, dst, weight}, completeness): paths.prune. */
export async function prune(eff, reader, target, value, hasBias, nodeThreshold = NODE_THRESHOLD,
                            edgeThreshold = EDGE_THRESHOLD) {
  const every = allNodes(eff, hasBias);
  const kept = cumulativeKeep(every.effect, nodeThreshold).sort((a, b) => a - b);
  const nodes = withLogit(select(every, kept), target, value);
  const n = nodes.kind.length;
  const te = performance.now();
  const E = await edgeMatrix(reader, nodes, eff);
  const dst = [], src = [], wgt = [];
  for (let j = 0; j < n; j++) {
    for (let s = 0; s < n; s++) {
      if (E[j * n + s] !== 0) { dst.push(j); src.push(s); wgt.push(E[j * n + s]); }
    }
  }
  const keep = cumulativeKeep(wgt, edgeThreshold).sort((a, b) => dst[a] - dst[b] || src[a] - src[b]);
  const edges = {src: Uint32Array.from(keep, (i) => src[i]), dst: Uint32Array.from(keep, (i) => dst[i]),
                 weight: Float64Array.from(keep, (i) => wgt[i])};
  let frozenT = eff.bias;
  for (const v of eff.embed) frozenT += v;
  const tc = performance.now();
  const c = await completeness(reader, nodes, edges, target);
  return {nodes, edges, completeness: frozenT ? c / frozenT : NaN, frozenValue: frozenT,
          edgesMs: tc - te, completenessMs: performance.now() - tc};
}

/**
 * T recomputed through the kept nodes and edges alone (paths.completeness): each kept node's
 * write is rebuilt from its kept in-edges only, in forward order, through its frozen map (with
 * its constant part when the bias node's edge into it is kept); the target reads its kept
 * sources' rebuilt writes. Unpruned, this is T.
 */
export async function completeness(reader, nodes, edges, target) {
  const cfg = reader.cfg, {d_model: d, d_ff: ff} = cfg;
  const n = nodes.kind.length, frozen = reader.frozen;
  const ins = Array.from({length: n}, () => []);
  for (let e = 0; e < edges.src.length; e++) ins[edges.dst[e]].push(edges.src[e]);
  const idx = Array.from({length: n}, (_, i) => i);
  const ord = idx.map((i) => order(nodes.kind[i], nodes.layer[i]));
  idx.sort((a, b) => ord[a] - ord[b] || a - b);
  const rebuilt = new Array(n);
  let total = 0;
  // the nodes of one order (a layer's heads, or its MLPs) read only earlier ones: one batch each
  for (let a = 0; a < n;) {
    let b = a;
    while (b < n && ord[idx[b]] === ord[idx[a]]) b++;
    const batch = idx.slice(a, b);
    a = b;
    const kind = nodes.kind[batch[0]];
    if (kind === BIAS) continue;
    if (kind === EMBED) {
      for (const j of batch) rebuilt[j] = reader.writes.emb.subarray(nodes.position[j] * d, (nodes.position[j] + 1) * d);
      continue;
    }
    const gathered = batch.map((j) => gather(reader, nodes, j, ins[j], rebuilt, d));
    if (kind === LOGIT) {
      const [x, hasConst] = gathered[0];
      total = dot(reader.grads.direct, 0, x, 0, d) + (hasConst ? target.biasTerm : 0);
      continue;
    }
    const l = nodes.layer[batch[0]];
    const raw = await reader.model.layer(l);
    if (kind === HEAD) {
      batch.forEach((j, i) => { rebuilt[j] = applyHead(raw, cfg, frozen, l, nodes.head[j], nodes.position[j], ...gathered[i]); });
    } else {
      const w = graphWeights(raw, cfg, ["up", "down"], {back: false});
      try {
        const X = new Float32Array(batch.length * d);
        gathered.forEach(([x], i) => X.set(x, i * d));
        const at = batch.map((j) => nodes.position[j]);
        const h = matmul(X, batch.length, w.up);
        batch.forEach((j, i) => {
          const p = at[i], g = frozen.gate[l], inv = frozen.inv2[l], withC = gathered[i][1];
          for (let k = 0; k < ff; k++) {
            h[i * ff + k] *= g[p * ff + k] * inv[p];
            if (withC && raw.upBias) h[i * ff + k] += raw.upBias[k] * g[p * ff + k];
          }
        });
        const out = matmul(h, batch.length, w.down);
        batch.forEach((j, i) => {
          const r = out.slice(i * d, (i + 1) * d);
          if (gathered[i][1] && raw.downBias) for (let k = 0; k < d; k++) r[k] += raw.downBias[k];
          rebuilt[j] = r;
        });
      } finally {
        w.dispose();
      }
    }
  }
  return total;
}

/** Σ coef(b, k_s) · rebuilt[s] over b's kept sources, and whether the bias node's edge is kept. */
function gather(reader, nodes, j, sources, rebuilt, d) {
  const x = new Float32Array(d);
  let hasConst = false;
  const kind = nodes.kind[j], l = nodes.layer[j], h = nodes.head[j], p = nodes.position[j];
  for (const s of sources) {
    if (nodes.kind[s] === BIAS) { hasConst = true; continue; }
    const c = kind === LOGIT ? (nodes.position[s] === p ? 1 : 0) : reader.coef(kind, l, h, p, nodes.position[s]);
    const r = rebuilt[s];
    for (let i = 0; i < d; i++) x[i] += c * r[i];
  }
  return [x, hasConst];
}

/** J_b(x) (+ c_b) for a head (paths._apply): W_o,h (W_v,g x + b_v,g Σ_k A'[h, p, k]). */
function applyHead(raw, cfg, frozen, l, h, p, x, withConst) {
  const {d_model: d, n_heads: H, n_kv_heads: KV, head_dim: hd} = cfg, P = frozen.P;
  if (h === H) return withConst ? Float32Array.from(raw.oBias) : new Float32Array(d);
  const g = Math.floor(h / (H / KV)), v = new Float32Array(hd);
  for (let j = 0; j < hd; j++) {
    let s = 0;
    const row = (g * hd + j) * d;
    for (let i = 0; i < d; i++) s += raw.v[row + i] * raw.inputNorm[i] * x[i];
    v[j] = s;
  }
  if (withConst && raw.vBias) {
    let rowSum = 0;
    for (let k = 0; k <= p; k++) rowSum += frozen.pattern[l][(h * P + p) * P + k];
    for (let j = 0; j < hd; j++) v[j] += raw.vBias[g * hd + j] * rowSum;
  }
  const out = new Float32Array(d);
  for (let i = 0; i < d; i++) out[i] = dot(raw.o, i * H * hd + h * hd, v, 0, hd);
  return out;
}

// ----------------------------------------------------------------------------- one graph

/** What every target's graph shares: the frozen state and the node writes (paths.prepare). */
export async function prepare(model, frozen) {
  const raw0 = await model.layer(0);
  const m = {...model, hasOBias: Boolean(raw0.oBias)};
  return {model: m, frozen, writes: await nodeWrites(m, frozen)};
}

/** Bytes the kept state will hold for a P-token prompt (frozen scales, patterns, gates, node
 * writes), before anything is allocated: the worker keeps it only under its budget. */
export function frozenBytes(cfg, P) {
  const {n_layers: L, n_heads: H, head_dim: hd, d_ff: ff, d_model: d} = cfg;
  return 4 * (L * (H * P * P + P * ff + 2 * P + P * (H * hd + 2 * d)) + 2 * P * d);
}

/** Bytes a prepared state holds (kept between targets). */
export function stateBytes(state) {
  let n = state.frozen.xFinal.byteLength;
  for (const k of ["inv1", "pattern", "inv2", "gate"]) for (const a of state.frozen[k]) n += a.byteLength;
  for (const k of ["O", "mid", "mlpW"]) for (const a of state.writes[k]) n += a.byteLength;
  return n + state.writes.emb.byteLength;
}

/** One target's graph, as one decoded entry of graphfile.graph_entry. */
export async function graphFor(state, spec, {nodeThreshold = NODE_THRESHOLD, edgeThreshold = EDGE_THRESHOLD,
                                             tokenText = (id) => String(id), hasBias = null, split = null} = {}) {
  const {model, frozen, writes} = state, cfg = model.config, P = frozen.P;
  const t0 = performance.now();
  const {token, contrast, position} = checkTarget(cfg, P, spec);
  const target = targetDirection(model, token, contrast, position);
  const value = realValue(model, frozen, target);
  const grads = await gradients(model, frozen, target);
  const t1 = performance.now();
  const eff = nodeEffects(model, frozen, grads, writes, target);
  const bias = hasBias ?? Boolean(cfg.attention_bias || cfg.mlp_bias || model.lmHeadBias);
  const reader = new Reader(model, frozen, grads, writes, target);
  const pr = await prune(eff, reader, target, value, bias, nodeThreshold, edgeThreshold);
  const t2 = performance.now();
  const direct = await directParts(model, frozen, grads, writes, target, eff);
  const {Hx, L} = eff, n = pr.nodes;
  const arr = (shape, data) => ({shape, data});
  const entry = {
    target: {id: token, text: tokenText(token)},
    contrast: contrast == null ? null : {id: contrast, text: tokenText(contrast)},
    position, value, frozen_value: pr.frozenValue, completeness: pr.completeness,
    node_threshold: nodeThreshold, edge_threshold: edgeThreshold, bias: bias ? eff.bias : 0,
    embed: arr([P], eff.embed), heads: arr([L, Hx, P], eff.heads), mlp: arr([L, P], eff.mlp),
    direct: {embed: direct.embed, heads: arr([L, Hx], direct.heads), mlp: arr([L], direct.mlp)},
    nodes: {
      kind: arr([n.kind.length], Uint8Array.from(n.kind)),
      layer: arr([n.kind.length], Uint16Array.from(n.kind, (k, i) => (k === LOGIT ? L : Math.max(n.layer[i], 0)))),
      head: arr([n.kind.length], Uint16Array.from(n.head, (h) => Math.max(h, 0))),
      position: arr([n.kind.length], Uint16Array.from(n.position, (p) => Math.min(Math.max(p, 0), P - 1))),
      effect: arr([n.kind.length], n.effect),
    },
    edges: {src: arr([pr.edges.src.length], pr.edges.src), dst: arr([pr.edges.dst.length], pr.edges.dst),
            weight: arr([pr.edges.weight.length], pr.edges.weight)},
    paths: [],
    timings: {graph_ms: 0, gradients_ms: t1 - t0, prune_ms: t2 - t1,
              edges_ms: pr.edgesMs, completeness_ms: pr.completenessMs, split_ms: 0},
  };
  if (split) {                      // the parts again, dotted with this target's gradients as made
    const t3 = performance.now();
    entry.by_source = bySource(entry.nodes, await split(grads, model.hasOBias), Int32Array.from({length: P}, (_, p) => p));
    entry.timings.split_ms = performance.now() - t3;
  }
  entry.timings.graph_ms = performance.now() - t0;
  return entry;
}
