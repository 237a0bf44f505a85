// The Paths view's pure parts: what is drawn at given thresholds, where, how large, node
// labels, the URL hash, and circuit-tracer's graph-file schema (a mirror of
// infoflow/graphfile.py's to_circuit_tracer). No DOM here.
import { KIND } from "./paths-data.js";
import { displayToken } from "./format.js";

/** Drawing caps: a stored graph is far smaller; a crafted one is cut here, and the view says so. */
export const DRAW_CAP = { nodes: 4000, edges: 12000 };

/** Indices of `idx` by |value| descending, up to `share` of their Σ|value| (at least one). */
export function cumulativeKeep(values, idx, share) {
  const order = Array.from(idx).sort((a, b) => Math.abs(values[b]) - Math.abs(values[a]) || a - b);
  if (share >= 1 || !order.length) return order;
  let total = 0;
  for (const i of order) total += Math.abs(values[i]);
  if (!(total > 0)) return order.slice(0, 1);
  let cum = 0, n = 0;
  while (n < order.length) {
    cum += Math.abs(values[order[n]]);
    n++;
    if (cum / total >= share - 1e-12) break;
  }
  return order.slice(0, n);
}

/**
 * What is drawn: the stored graph's nodes by |effect| up to `nodeShare` of the stored nodes'
 * Σ|effect| (the target always), then the edges among them by |weight| up to `edgeShare` of
 * their Σ|weight|. -> {nodes: sorted node indices, edges: sorted edge indices, nodeMass, edgeMass
 * (the shares actually drawn), capped: {nodes, edges} (how many the caps left out)}
 */
export function selectDrawn(entry, nodeShare, edgeShare) {
  const { nodes, edges } = entry, target = nodes.n - 1;
  const cand = [];
  for (let i = 0; i < target; i++) cand.push(i);
  let keep = cumulativeKeep(nodes.effect, cand, nodeShare);
  const capped = { nodes: Math.max(0, keep.length - DRAW_CAP.nodes), edges: 0 };
  keep = keep.slice(0, DRAW_CAP.nodes);
  let mass = 0, all = 0;
  for (const i of cand) all += Math.abs(nodes.effect[i]);
  for (const i of keep) mass += Math.abs(nodes.effect[i]);
  const on = new Uint8Array(nodes.n);
  for (const i of keep) on[i] = 1;
  on[target] = 1;
  const among = [];
  for (let j = 0; j < edges.m; j++) if (on[edges.src[j]] && on[edges.dst[j]]) among.push(j);
  let ek = cumulativeKeep(edges.weight, among, edgeShare);
  capped.edges = Math.max(0, ek.length - DRAW_CAP.edges);
  ek = ek.slice(0, DRAW_CAP.edges);
  let emass = 0, eall = 0;
  for (const j of among) eall += Math.abs(edges.weight[j]);
  for (const j of ek) emass += Math.abs(edges.weight[j]);
  keep.push(target);
  return {
    nodes: Int32Array.from(keep).sort(), edges: Int32Array.from(ek).sort(),
    nodeMass: all > 0 ? mass / all : 1, edgeMass: eall > 0 ? emass / eall : 1, capped,
    storedEdges: among.length,
  };
}

/** Row of a node, bottom (0: embeddings and the bias) to top (2L + 1: the target). */
export function nodeRow(kind, layer, L) {
  if (kind === KIND.EMBED || kind === KIND.BIAS) return 0;
  if (kind === KIND.HEAD) return 1 + 2 * layer;
  if (kind === KIND.MLP) return 2 + 2 * layer;
  return 2 * L + 1;
}

export const MARGIN = { left: 70, right: 34, top: 34, bottom: 78 };   // right: room for a name beside the last column
const MIN_COL = 18;
export const R_MIN = 1.6;        // the smallest node's radius: still visible, still hoverable

/**
 * Geometry of the drawn graph in CSS px for a container `width` wide:
 * {w, h, rowH, colW, cols, x(i), y(i), r(i), colX(c), rowY(r), hasBias}. Columns are token
 * positions (a bias node gets its own column on the left); heads sharing a layer and position
 * spread across the column. Radii: area ∝ |effect| (the target: the largest radius).
 */
export function layoutGraph(doc, entry, drawn, width, { maxHeight = 760, minRow = 7 } = {}) {
  const { nodes } = entry, L = doc.L, P = doc.P;
  let hasBias = false;
  for (const i of drawn.nodes) if (nodes.kind[i] === KIND.BIAS) hasBias = true;
  const cols = P + (hasBias ? 1 : 0), rows = 2 * L + 2;
  const col = (i) => (nodes.kind[i] === KIND.BIAS ? 0 : nodes.position[i] + (hasBias ? 1 : 0));
  // heads that share a cell spread across its column: a column with many gets more room (up to 4x)
  const cell = new Map();
  for (const i of drawn.nodes) {
    if (nodes.kind[i] !== KIND.HEAD) continue;
    const key = nodes.layer[i] * P + nodes.position[i];
    if (!cell.has(key)) cell.set(key, []);
    cell.get(key).push(i);
  }
  const weight = new Float64Array(cols).fill(1);
  for (const list of cell.values()) {
    const c = col(list[0]);
    weight[c] = Math.max(weight[c], 1 + Math.min(3, (list.length - 1) / 3));
  }
  const totalWeight = weight.reduce((a, b) => a + b, 0);
  const colW = Math.max(MIN_COL, (width - MARGIN.left - MARGIN.right) / totalWeight);   // one unit of width
  const left = new Float64Array(cols + 1);
  for (let c = 0; c < cols; c++) left[c + 1] = left[c] + weight[c] * colW;
  const plotW = left[cols];
  const rotate = colW < 60;                     // token labels turn when columns are narrow
  const bottom = rotate ? MARGIN.bottom : 30;
  const rowH = Math.max(minRow, Math.min(22, (maxHeight - MARGIN.top - bottom) / rows));
  const w = Math.ceil(MARGIN.left + MARGIN.right + plotW), h = Math.ceil(MARGIN.top + bottom + rows * rowH);
  const colX = (c) => MARGIN.left + (left[c] + left[c + 1]) / 2;
  const rowY = (r) => MARGIN.top + (rows - 1 - r + 0.5) * rowH;
  const X = new Float64Array(nodes.n), Y = new Float64Array(nodes.n), R = new Float64Array(nodes.n);
  let maxCell = 1;
  for (const list of cell.values()) {
    list.sort((a, b) => nodes.head[a] - nodes.head[b]);
    maxCell = Math.max(maxCell, list.length);
    const c = col(list[0]), cw = left[c + 1] - left[c];
    list.forEach((i, k) => { X[i] = MARGIN.left + left[c] + ((k + 0.5) / list.length) * cw; });
  }
  let top = 0;
  for (const i of drawn.nodes) if (nodes.kind[i] !== KIND.TARGET) top = Math.max(top, Math.abs(nodes.effect[i]));
  const rMax = Math.max(3, Math.min(rowH * 0.55, colW * 0.45, 13)), rMin = R_MIN;
  for (const i of drawn.nodes) {
    const k = nodes.kind[i];
    if (k !== KIND.HEAD) X[i] = colX(col(i));
    Y[i] = rowY(nodeRow(k, nodes.layer[i], L));
    R[i] = k === KIND.TARGET ? rMax : rMin + (rMax - rMin) * Math.sqrt(top > 0 ? Math.abs(nodes.effect[i]) / top : 0);
  }
  return { w, h, rows, cols, rowH, colW, plotW, hasBias, rotate, bottom, colX, rowY, X, Y, R, rMax, topEffect: top };
}

/** Upstream and downstream of node `i` along the drawn edges. -> {nodes: Set, edges: Set} */
export function pathsThrough(entry, drawn, i) {
  const { src, dst } = entry.edges;
  const ins = new Map(), outs = new Map();
  for (const j of drawn.edges) {
    if (!ins.has(dst[j])) ins.set(dst[j], []);
    if (!outs.has(src[j])) outs.set(src[j], []);
    ins.get(dst[j]).push(j);
    outs.get(src[j]).push(j);
  }
  const nodes = new Set([i]), edges = new Set();
  const walk = (adj, end) => {
    const stack = [i], seen = new Set([i]);
    while (stack.length) {
      const a = stack.pop();
      for (const j of adj.get(a) || []) {
        edges.add(j);
        const b = end[j];
        nodes.add(b);
        if (!seen.has(b)) { seen.add(b); stack.push(b); }
      }
    }
  };
  walk(ins, src);
  walk(outs, dst);
  return { nodes, edges };
}

// ----------------------------------------------------------------------------- labels

/** "head 12.3", "MLP 5", "embedding", "bias", "target": the node's component, without position. */
export function componentLabel(doc, entry, i) {
  const n = entry.nodes, k = n.kind[i];
  if (k === KIND.HEAD) return `head ${n.layer[i]}.${doc.labels[n.head[i]]}`;
  if (k === KIND.MLP) return `MLP ${n.layer[i]}`;
  if (k === KIND.EMBED) return "embedding";
  if (k === KIND.BIAS) return "bias";
  return "target";
}

/** A node's name as people read it: "head 12.3 at ␣to (13)". */
export function nodeLabel(doc, entry, i) {
  const n = entry.nodes, k = n.kind[i], p = n.position[i];
  if (k === KIND.BIAS) return "bias (no token)";
  if (k === KIND.TARGET) return `target ${targetLabel(entry)} at ${displayToken(doc.tokens[p])} (${p})`;
  return `${componentLabel(doc, entry, i)} at ${displayToken(doc.tokens[p])} (${p})`;
}

export function targetLabel(entry) {
  const t = displayToken(entry.target.text);
  return entry.contrast ? `${t} \u2212 ${displayToken(entry.contrast.text)}` : `${t} (demeaned)`;
}

/** A node's key in the URL: kind.layer.head.position. */
export const nodeKey = (entry, i) => {
  const n = entry.nodes;
  return `${n.kind[i]}.${n.layer[i]}.${n.head[i]}.${n.position[i]}`;
};

export function findNode(entry, key) {
  if (typeof key !== "string" || !/^\d+\.\d+\.\d+\.\d+$/.test(key)) return -1;
  for (let i = 0; i < entry.nodes.n; i++) if (nodeKey(entry, i) === key) return i;
  return -1;
}

// ----------------------------------------------------------------------------- hash

export const DEFAULT_SHARES = { node: 0.8, edge: 0.9 };

/** The view's part of a URL hash: pv=1 (open), pt (graph), pn / pe (shares, %), ps (node). */
export function encodePathsHash(s) {
  const q = ["pv=1"];
  if (s.target) q.push(`pt=${s.target}`);
  if (Math.round(s.nodeShare * 100) !== Math.round(DEFAULT_SHARES.node * 100)) q.push(`pn=${Math.round(s.nodeShare * 100)}`);
  if (Math.round(s.edgeShare * 100) !== Math.round(DEFAULT_SHARES.edge * 100)) q.push(`pe=${Math.round(s.edgeShare * 100)}`);
  if (s.selected) q.push(`ps=${s.selected}`);
  return q.join("&");
}

/** The Paths state a hash describes (null: the view is not open); bad values fall back. */
export function parsePathsHash(hash) {
  const q = new URLSearchParams(String(hash || "").replace(/^#/, ""));
  if (q.get("pv") !== "1") return null;
  const pct = (x, d) => (/^\d{1,3}$/.test(x || "") && +x >= 1 && +x <= 100 ? +x / 100 : d);
  const t = q.get("pt");
  const sel = q.get("ps");
  return {
    target: /^\d{1,2}$/.test(t || "") ? +t : 0,
    nodeShare: pct(q.get("pn"), DEFAULT_SHARES.node), edgeShare: pct(q.get("pe"), DEFAULT_SHARES.edge),
    selected: sel && /^\d+\.\d+\.\d+\.\d+$/.test(sel) ? sel : null,
  };
}

// ----------------------------------------------------------------------------- circuit-tracer

const NONPRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;

/** Python's repr() of a str (what graphfile.py's f"{x!r}" writes). */
export function pyRepr(s) {
  s = String(s);
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === "\\") out += "\\\\";
    else if (ch === quote) out += "\\" + quote;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (NONPRINTABLE.test(ch)) {
      out += c < 0x100 ? "\\x" + c.toString(16).padStart(2, "0")
        : c < 0x10000 ? "\\u" + c.toString(16).padStart(4, "0") : "\\U" + c.toString(16).padStart(8, "0");
    } else out += ch;
  }
  return out + quote;
}

/**
 * The drawn graph in circuit-tracer's graph-file schema (frontend/graph_models.Model, 0.5.0):
 * the same mapping as infoflow/graphfile.py's to_circuit_tracer (docs/graph.md), so that with
 * both sliders at 100% this is that function's output for the stored graph. `tokenIds`: the
 * prompt's token ids (the sidecar does not hold them; the page's data file does).
 */
export function toCircuitTracer(doc, entry, drawn, { tokenIds = null, slug = "infoflow-graph" } = {}) {
  const n = entry.nodes, L = doc.L, Hx = doc.Hx;
  const ids = new Map(), nodes = [];
  for (const i of drawn.nodes) {
    const kind = n.kind[i], l = n.layer[i], h = n.head[i], p = n.position[i], eff = n.effect[i];
    let node;
    if (kind === KIND.EMBED) {
      node = { node_id: `E_${tokenIds ? tokenIds[p] : p}_${p}`, feature: p, layer: "E", ctx_idx: p, feature_type: "embedding",
        jsNodeId: `E_${p}-${p}`, clerp: `embedding ${pyRepr(doc.tokens[p])}`, activation: eff };
    } else if (kind === KIND.BIAS) {
      node = { node_id: "E_bias_0", feature: -1, layer: "E", ctx_idx: 0, feature_type: "embedding",
        jsNodeId: "E_bias-0", clerp: "bias (no token)", activation: eff };
    } else if (kind === KIND.TARGET) {
      const t = entry.target.id;
      const label = pyRepr(entry.target.text) + (entry.contrast ? ` \u2212 ${pyRepr(entry.contrast.text)}` : " (demeaned)");
      node = { node_id: `${L + 1}_${t}_${p}`, feature: t, layer: String(L + 1), ctx_idx: p, feature_type: "logit",
        is_target_logit: true, jsNodeId: `L_${t}-${p}`, clerp: `Output ${label} (T=${entry.value.toFixed(3)})`, activation: eff };
    } else {
      const idx = kind === KIND.HEAD ? h : Hx;
      const what = kind === KIND.HEAD ? `attention head ${l}.${doc.labels[h]}` : `MLP ${l}`;
      node = { node_id: `${l}_${idx}_${p}`, feature: ((l + idx) * (l + idx + 1)) / 2 + idx, layer: String(l), ctx_idx: p,
        feature_type: "cross layer transcoder", jsNodeId: `${l}_${idx}-${p}`, clerp: `${what} at ${pyRepr(doc.tokens[p])}`, activation: eff };
    }
    ids.set(i, node.node_id);
    nodes.push(node);
  }
  const { src, dst, weight } = entry.edges;
  const links = Array.from(drawn.edges, (j) => ({ source: ids.get(src[j]), target: ids.get(dst[j]), weight: weight[j] }));
  const meta = { slug, scan: doc.model || "infoflow", transcoder_list: [], prompt_tokens: [...doc.tokens], prompt: doc.tokens.join(""),
    node_threshold: entry.nodeThreshold, schema_version: 1,
    info: { generator: "infoflow", value: entry.value, completeness: entry.completeness, edge_threshold: entry.edgeThreshold,
      edges_pruned: entry.edgesPruned, edges_stored_share: entry.edgesStoredShare } };
  return { metadata: meta, qParams: { pinnedIds: [], supernodes: [], linkType: "both", clickedId: "", sg_pos: "" }, nodes, links };
}
