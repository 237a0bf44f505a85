/**
 * Each node's effect split by source (infoflow/paths.py SourceSplit), in the browser: an
 * observer of engine.js decompose ({observers: [split]}) that dots one target's gradients
 * (engine-graph.js gradients) with the per-source parts while the decomposition has them:
 *   head (l, h) at q, source group G_s:  Σ_{s ∈ G_s} ⟨g_after_attn[l][q] · W_o,h, O[q, s, h]⟩
 *   MLP l at q:                          Σ_{s ∈ G_s} ⟨g_after_mlp[l][q], δ_mlp[q, s]⟩
 *   the o_proj bias "head" (H' = H + 1): ⟨g_after_attn[l][q], b_o⟩, all from the bias source.
 * The parts exist only during a decomposition, and the gradients need the whole forward pass
 * first, so a split costs a decomposition after the one that froze the state (worker.js).
 * Over the sources a node's split sums to its effect (the parts sum to the node's write).
 *
 *   const split = new SourceSplit(cfg, grads, grouping, hasOBias);        // grouping: (S,) | null
 *   await decompose(model, ids, {main: null}, {observers: [split], ...});
 *   entry.by_source = bySource(entry.nodes, split, tokenGroups);          // graphfile's by_source
 */
import {EMBED, HEAD, MLP, BIAS} from "./engine-graph.js";

export const BY_SOURCE_NODES = 128;    // graphfile.BY_SOURCE_NODES: the largest kept nodes

export class SourceSplit {
  /** grads: one target's (engine-graph.js gradients); grouping (S,) a group per source, or null
   * (each token its own, the bias last); the arrays are made with the decomposition's triangle. */
  constructor(cfg, grads, grouping, hasOBias) {
    Object.assign(this, {cfg, grads, grouping, tri: null});
    this.Hx = cfg.n_heads + (hasOBias ? 1 : 0);
  }

  start(tri) {
    if (this.tri) {
      if (this.tri.T !== tri.T) throw new Error("a source split observes one decomposition");
      return;
    }
    const {grouping} = this, P = tri.P, L = this.cfg.n_layers;
    this.tri = tri;
    this.group = Int32Array.from(tri.src, (s) => (grouping ? grouping[s] : s));       // (T,)
    this.G = grouping ? Math.max(...grouping) + 1 : tri.S;
    this.heads = new Float64Array(L * this.Hx * P * this.G);     // (L, H', P, G)
    this.mlp = new Float64Array(L * P * this.G);                 // (L, P, G)
  }

  /** Layer l's mixed heads O (T, H·hd), before o_proj; w: the layer's weights (w.oBias). */
  attention(l, O, w, t) {
    this.start(t);
    const {n_heads: H, head_dim: hd, d_model: d} = this.cfg, {tri, group, G, Hx} = this, P = tri.P;
    const R = this.grads.heads[l], hx = H * hd;                  // (P, H·hd): g_after_attn · W_o
    for (let row = 0; row < tri.T; row++) {
      const p = tri.pos[row], cell = p * G + group[row];
      for (let h = 0; h < H; h++) {
        let s = 0;
        const a = p * hx + h * hd, b = row * hx + h * hd;
        for (let j = 0; j < hd; j++) s += R[a + j] * O[b + j];
        this.heads[(l * Hx + h) * P * G + cell] += s;
      }
    }
    if (Hx > H && w.oBias) {
      const g = this.grads.afterAttn[l];
      for (let p = 0; p < P; p++) {
        let s = 0;
        for (let j = 0; j < d; j++) s += g[p * d + j] * w.oBias[j];
        this.heads[((l * Hx + H) * P + p) * G + G - 1] = s;
      }
    }
  }

  /** Layer l's MLP write for every row (T, d), biases in the bias source's rows. */
  mlpWrite(l, delta, t) {
    this.start(t);
    const d = this.cfg.d_model, {tri, group, G} = this, P = tri.P, g = this.grads.afterMlp[l];
    for (let row = 0; row < tri.T; row++) {
      const p = tri.pos[row];
      let s = 0;
      for (let j = 0, a = p * d, b = row * d; j < d; j++) s += g[a + j] * delta[b + j];
      this.mlp[(l * P + p) * G + group[row]] += s;
    }
  }

  /** Node (kind, l, h, p)'s split (G,) into `out`; `effect` places an embedding's or the bias's. */
  node(kind, l, h, p, effect, posGroup, out) {
    const {G, Hx} = this, P = this.tri.P;
    out.fill(0);
    if (kind === HEAD) out.set(this.heads.subarray(((l * Hx + h) * P + p) * G, ((l * Hx + h) * P + p + 1) * G));
    else if (kind === MLP) out.set(this.mlp.subarray((l * P + p) * G, (l * P + p + 1) * G));
    else if (kind === EMBED) out[posGroup[p]] = effect;
    else if (kind === BIAS) out[G - 1] = effect;
    return out;
  }
}

/**
 * graphfile.graph_entry's by_source for the kept nodes `nodes` (decoded arrays, the target
 * last): the BY_SOURCE_NODES largest by |effect| (ties: the first), in node order ->
 * {node: {shape, data: Uint32Array}, values: {shape: [K, G], data: Float32Array}, floor}.
 * posGroup (P,): the group of each position's own token (an embedding's source).
 */
export function bySource(nodes, split, posGroup) {
  const eff = nodes.effect.data, kept = eff.length - 1, G = split.G;
  const order = Array.from({length: kept}, (_, i) => i).sort((a, b) => Math.abs(eff[b]) - Math.abs(eff[a]) || a - b);
  const which = Uint32Array.from(order.slice(0, BY_SOURCE_NODES)).sort();
  const values = new Float32Array(which.length * G), row = new Float64Array(G);
  which.forEach((i, r) => {
    split.node(nodes.kind.data[i], nodes.layer.data[i], nodes.head.data[i], nodes.position.data[i], eff[i], posGroup, row);
    values.set(row, r * G);
  });
  let floor = Infinity;
  for (const i of which) floor = Math.min(floor, Math.abs(eff[i]));
  return {node: {shape: [which.length], data: which}, values: {shape: [which.length, G], data: values},
          floor: which.length ? floor : 0};
}
