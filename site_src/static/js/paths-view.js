// The Paths view (issue 23, item 4): one prompt's exact attribution graph, drawn on one canvas.
//
//   const view = mountPaths(root, G, options)    // G: a decoded graph document (paths-data.js)
//
// Layers run bottom to top (embeddings at the bottom, the target at the top), positions left to
// right; node area ∝ |effect|, edge width ∝ |weight|, colour = sign (the site's blue / red pair).
// Hover (an overlay canvas and a tooltip) names a node, its effect, its top sources and its
// strongest edges; a click highlights its upstream and downstream paths and calls
// options.onSelect (the prompt page pins the grid cell and opens the heads panel) and dispatches
// a "paths-select" event on root. The view takes a decoded object and never fetches: the page
// brings it (loadGraph) from a file, or the live page from its engine.
//
// options: {state: {target, nodeShare, edgeShare, selected} (e.g. parsePathsHash), onState(state)
// (the page keeps it in its URL), onSelect(node | null), id (export file names), title,
// tokenIds (for circuit-tracer's node ids), idPrefix (element ids; default "paths"),
// targetPicker (false: no picker over G.graphs, where the page has its own)}. Returns the view: {on(event, cb), state, set(patch),
// drawn, layout, exportSvg(), exportPng(), exportJson(), destroy()}; on("draw", cb) gets
// {nodes: [{index, kind, layer, head, position, effect, x, y, r, color}], edges: [{index, src, dst,
// weight, width, color}], nodeMass, edgeMass, w, h} after each drawing (for tests and pages).
import { el, svgEl } from "./dom.js";
import { KIND } from "./paths-data.js";
import {
  selectDrawn, layoutGraph, pathsThrough, nodeLabel, componentLabel, targetLabel, nodeKey, findNode,
  toCircuitTracer, DEFAULT_SHARES, MARGIN, nodeRow,
} from "./paths-model.js";
import { NEG_COLOR, POS_COLOR } from "./palette.js";
import { isDark } from "./theme.js";
import { displayToken, fmtNum, subscript } from "./format.js";

const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
export const FROZEN_NOTE = "Attention patterns, gates and norm scales are frozen, so edges follow the value path only: "
  + "a head that feeds another head's queries or keys (query/key composition, e.g. a previous-token head feeding an induction head) gets no edge.";
const TOP_SOURCES = 5, TOP_EDGES = 3, NAMED_NODES = 10;
const SHAPES = { [KIND.EMBED]: "square", [KIND.HEAD]: "circle", [KIND.MLP]: "diamond", [KIND.BIAS]: "triangle", [KIND.TARGET]: "hexagon" };

const sgn = (x) => (x >= 0 ? "+" : "\u2212");
const fmtSigned = (x) => `${sgn(x)}${Math.abs(x) >= 100 ? Math.abs(x).toFixed(1) : Math.abs(x).toFixed(3)}`;
const fmtRho = (x) => (typeof x === "number" && Number.isFinite(x) ? `${sgn(x)}${Math.abs(x).toFixed(2)}` : "n/a");
const fmtPct0 = (x) => (typeof x === "number" && Number.isFinite(x) ? `${Math.round(x * 100)}%` : "n/a");

function themeColors() {
  const cs = getComputedStyle(document.documentElement);
  const v = (name, fb) => cs.getPropertyValue(name).trim() || fb;
  const dark = isDark();
  return {
    dark, bg: v("--canvas-bg", "#fff"), fg: v("--fg", "#111"), muted: v("--muted", "#666"), grid: v("--track", "#eee"),
    accent: v("--accent", "#0060a0"), pos: dark ? POS_COLOR.dark : POS_COLOR.light, neg: dark ? NEG_COLOR.dark : NEG_COLOR.light,
  };
}

// ----------------------------------------------------------------------------- scene

/**
 * The drawing as a list of primitives in CSS px, rendered by drawScene (canvas) and sceneSvg
 * (export): {w, h, items: [{t: "rect"|"lines"|"node"|"text", ...}]}.
 */
function graphScene(view, { dx = 0, dy = 0 } = {}) {
  const { G, entry, drawn, lay, C } = view, n = entry.nodes, items = [];
  const focus = view.focus;                       // {nodes, edges} of the selected node, or null
  const text = (x, y, s, o = {}) => items.push({ t: "text", x: x + dx, y: y + dy, text: s, size: 11, fill: C.muted, anchor: "start", rot: 0, weight: "normal", ...o });
  // row guides (the MLP rows fainter) and labels: one per layer, every few layers when rows are thin
  const labelEvery = Math.max(1, Math.ceil(12 / (2 * lay.rowH)));
  for (let r = 0; r < lay.rows; r++) {
    const y = lay.rowY(r), l = (r - 1) >> 1, mlp = r > 0 && r < lay.rows - 1 && (r - 1) & 1;
    items.push({ t: "rect", x: MARGIN.left + dx, y: y - 0.5 + dy, w: lay.plotW, h: 1, fill: C.grid, alpha: mlp ? 0.5 : 1 });
    let label = null;
    if (r === 0) label = "embeddings";
    else if (r === lay.rows - 1) label = "target";
    else if (!mlp && (l % labelEvery === 0 || l === G.L - 1)) label = lay.rowH >= 11 ? `L${l} attn` : `layer ${l}`;
    else if (mlp && lay.rowH >= 11 && l % labelEvery === 0) label = "MLP";
    const mid = !mlp && r > 0 && r < lay.rows - 1 && lay.rowH < 11;      // "layer l" between its two rows
    if (label) text(MARGIN.left - 6, y + 3.5 - (mid ? lay.rowH / 2 : 0), label, { anchor: "end", size: 10 });
  }
  // token labels under the columns, rotated when narrow
  const rot = lay.rotate ? -60 : 0;
  for (let p = 0; p < G.P; p++) {
    const x = lay.colX(p + (lay.hasBias ? 1 : 0));
    let t = displayToken(G.tokens[p]);
    if (t.length > 14) t = t.slice(0, 13) + "\u2026";
    const isT = p === entry.position;
    text(rot ? x + 3 : x, lay.h - lay.bottom + 14, t, { anchor: rot ? "end" : "middle", rot, size: Math.max(8, Math.min(11, lay.colW * 0.8)), fill: isT ? C.fg : C.muted, weight: isT ? "bold" : "normal" });
  }
  if (lay.hasBias) text(lay.colX(0), lay.h - lay.bottom + 14, "bias", { anchor: "middle", size: 10 });
  // edges: batched by sign and width class, weakest first so the strong ones lie on top
  const top = view.topWeight || 1;
  const batches = new Map();
  const order = Array.from(drawn.edges).sort((a, b) => Math.abs(entry.edges.weight[a]) - Math.abs(entry.edges.weight[b]));
  view.edgeStyle = new Map();
  for (const j of order) {
    const w = entry.edges.weight[j], a = entry.edges.src[j], b = entry.edges.dst[j];
    const level = Math.min(7, Math.floor((Math.abs(w) / top) * 8));
    const dim = focus && !focus.edges.has(j);
    const key = `${w >= 0 ? 1 : 0}.${level}.${dim ? 1 : 0}`;
    if (!batches.has(key)) {
      batches.set(key, { t: "lines", stroke: w >= 0 ? C.pos : C.neg, width: 0.5 + level * 0.55,
        alpha: dim ? 0.06 : 0.25 + level * 0.09, segs: [] });
    }
    batches.get(key).segs.push([lay.X[a] + dx, lay.Y[a] + dy, lay.X[b] + dx, lay.Y[b] + dy]);
    view.edgeStyle.set(j, { width: 0.5 + level * 0.55, color: w >= 0 ? C.pos : C.neg });
  }
  for (const key of [...batches.keys()].sort((a, b) => +a.split(".")[1] - +b.split(".")[1] || +b.split(".")[2] - +a.split(".")[2])) items.push(batches.get(key));
  // nodes: largest first, so a small node is never hidden under a large one
  const nodesOrder = Array.from(drawn.nodes).sort((a, b) => lay.R[b] - lay.R[a]);
  for (const i of nodesOrder) {
    const e = n.effect[i];
    items.push({ t: "node", shape: SHAPES[n.kind[i]], x: lay.X[i] + dx, y: lay.Y[i] + dy, r: lay.R[i],
      fill: e >= 0 ? C.pos : C.neg, stroke: n.kind[i] === KIND.TARGET || (view.selected === i) ? C.fg : C.bg,
      alpha: focus && !focus.nodes.has(i) ? 0.2 : 1, lineWidth: view.selected === i ? 2 : 0.8 });
  }
  // names of the largest heads and MLPs beside them, where they do not overlap each other
  const placed = [];
  const named = Array.from(drawn.nodes).filter((i) => n.kind[i] === KIND.HEAD || n.kind[i] === KIND.MLP)
    .sort((a, b) => Math.abs(n.effect[b]) - Math.abs(n.effect[a])).slice(0, NAMED_NODES);
  for (const i of named) {
    const s = n.kind[i] === KIND.HEAD ? `${n.layer[i]}.${G.labels[n.head[i]]}` : `MLP${n.layer[i]}`;
    const x = lay.X[i] + lay.R[i] + 2, y = lay.Y[i] + 3.5, w = s.length * 5.6;
    if (placed.some((b) => x < b.x + b.w && b.x < x + w && Math.abs(b.y - y) < 10) || x + w > lay.w) continue;
    placed.push({ x, y, w });
    text(x, y, s, { size: 9.5, fill: C.fg, halo: C.bg, alpha: focus && !focus.nodes.has(i) ? 0.3 : 1 });
  }
  // the target's label above it
  const t = n.n - 1;
  text(Math.min(lay.w - 4, Math.max(MARGIN.left, lay.X[t])), lay.Y[t] - lay.R[t] - 5,
    `${targetLabel(entry)}: T = ${fmtSigned(entry.value)}`, { anchor: lay.X[t] > lay.w * 0.6 ? "end" : "middle", fill: C.fg, size: 12, weight: "bold" });
  return items;
}

function shapePath(ctx, shape, x, y, r) {
  ctx.beginPath();
  if (shape === "circle") ctx.arc(x, y, r, 0, 2 * Math.PI);
  else if (shape === "square") ctx.rect(x - r * 0.9, y - r * 0.9, r * 1.8, r * 1.8);
  else {
    const pts = shapePoints(shape, x, y, r);
    ctx.moveTo(pts[0][0], pts[0][1]);
    for (const [px, py] of pts.slice(1)) ctx.lineTo(px, py);
    ctx.closePath();
  }
}

function shapePoints(shape, x, y, r) {
  if (shape === "diamond") return [[x, y - r * 1.15], [x + r * 1.15, y], [x, y + r * 1.15], [x - r * 1.15, y]];
  if (shape === "triangle") return [[x, y - r * 1.2], [x + r * 1.1, y + r * 0.8], [x - r * 1.1, y + r * 0.8]];
  const out = [];
  for (let k = 0; k < 6; k++) out.push([x + r * 1.15 * Math.cos((Math.PI / 3) * k), y + r * 1.15 * Math.sin((Math.PI / 3) * k)]);
  return out;
}

export function drawScene(ctx, items) {
  for (const it of items) {
    if (it.t === "rect") {
      ctx.globalAlpha = it.alpha === undefined ? 1 : it.alpha;
      ctx.fillStyle = it.fill;
      ctx.fillRect(it.x, it.y, it.w, it.h);
      ctx.globalAlpha = 1;
    } else if (it.t === "lines") {
      ctx.globalAlpha = it.alpha;
      ctx.strokeStyle = it.stroke;
      ctx.lineWidth = it.width;
      ctx.beginPath();
      for (const [x1, y1, x2, y2] of it.segs) { ctx.moveTo(x1, y1); ctx.lineTo(x2, y2); }
      ctx.stroke();
      ctx.globalAlpha = 1;
    } else if (it.t === "node") {
      ctx.globalAlpha = it.alpha;
      shapePath(ctx, it.shape, it.x, it.y, it.r);
      ctx.fillStyle = it.fill;
      ctx.fill();
      ctx.lineWidth = it.lineWidth;
      ctx.strokeStyle = it.stroke;
      ctx.stroke();
      ctx.globalAlpha = 1;
    } else if (it.t === "text") {
      ctx.save();
      ctx.globalAlpha = it.alpha === undefined ? 1 : it.alpha;
      ctx.translate(it.x, it.y);
      if (it.rot) ctx.rotate((it.rot * Math.PI) / 180);
      ctx.font = `${it.weight === "bold" ? "bold " : ""}${it.size}px ${FONT}`;
      ctx.fillStyle = it.fill;
      ctx.textAlign = it.anchor === "middle" ? "center" : it.anchor === "end" ? "right" : "left";
      if (it.halo) {                                   // a label over edges: a background rim first
        ctx.strokeStyle = it.halo;
        ctx.lineWidth = 3;
        ctx.lineJoin = "round";
        ctx.strokeText(it.text, 0, 0);
      }
      ctx.fillText(it.text, 0, 0);
      ctx.restore();
    }
  }
}

/** The same scene as an SVG document (text through textContent: the DOM escapes it). */
export function sceneSvg(items, w, h, bg) {
  const f = (x) => +x.toFixed(2);
  const svg = svgEl("svg", { xmlns: "http://www.w3.org/2000/svg", width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  svg.append(svgEl("rect", { x: 0, y: 0, width: w, height: h, fill: bg }));
  for (const it of items) {
    if (it.t === "rect") svg.append(svgEl("rect", { x: f(it.x), y: f(it.y), width: f(it.w), height: f(it.h), fill: it.fill, opacity: it.alpha === undefined || it.alpha === 1 ? null : it.alpha }));
    else if (it.t === "lines") {
      svg.append(svgEl("path", { d: it.segs.map(([a, b, c, d]) => `M${f(a)} ${f(b)}L${f(c)} ${f(d)}`).join(""),
        stroke: it.stroke, "stroke-width": it.width, "stroke-opacity": it.alpha, fill: "none" }));
    } else if (it.t === "node") {
      const common = { fill: it.fill, stroke: it.stroke, "stroke-width": it.lineWidth, opacity: it.alpha };
      if (it.shape === "circle") svg.append(svgEl("circle", { cx: f(it.x), cy: f(it.y), r: f(it.r), ...common }));
      else if (it.shape === "square") svg.append(svgEl("rect", { x: f(it.x - it.r * 0.9), y: f(it.y - it.r * 0.9), width: f(it.r * 1.8), height: f(it.r * 1.8), ...common }));
      else svg.append(svgEl("polygon", { points: shapePoints(it.shape, it.x, it.y, it.r).map(([a, b]) => `${f(a)},${f(b)}`).join(" "), ...common }));
    } else if (it.t === "text") {
      const t = svgEl("text", { x: f(it.x), y: f(it.y), "font-family": FONT, "font-size": it.size, fill: it.fill,
        "text-anchor": it.anchor === "start" ? null : it.anchor, "font-weight": it.weight === "bold" ? "bold" : null,
        transform: it.rot ? `rotate(${it.rot} ${f(it.x)} ${f(it.y)})` : null, opacity: it.alpha === undefined || it.alpha === 1 ? null : it.alpha,
        stroke: it.halo || null, "stroke-width": it.halo ? 3 : null, "paint-order": it.halo ? "stroke" : null, "xml:space": "preserve" });
      t.textContent = it.text;
      svg.append(t);
    }
  }
  return new XMLSerializer().serializeToString(svg);
}

// ----------------------------------------------------------------------------- text

/** The lines under the graph: completeness, the ablation check, the frozen-pattern caveat. */
export function summaryLines(view) {
  const { entry, drawn } = view, lines = [];
  const kept = `${entry.nodes.n - 1} nodes and ${entry.edgesPruned} edges`;
  lines.push(`Drawn: ${drawn.nodes.length - 1} of the stored graph's ${entry.nodes.n - 1} nodes (${fmtPct0(drawn.nodeMass)} of their \u03a3|effect|) `
    + `and ${drawn.edges.length} of the ${drawn.storedEdges} edges among them (${fmtPct0(drawn.edgeMass)} of their \u03a3|weight|)`
    + (drawn.capped.nodes || drawn.capped.edges ? `; the ${drawn.capped.nodes} weakest nodes and ${drawn.capped.edges} weakest edges past the drawing limit are left out.` : "."));
  const full = drawn.nodes.length === entry.nodes.n && drawn.edges.length === entry.edges.m;
  lines.push(`Completeness: T recomputed through the stored graph alone (${kept}, kept at ${fmtPct0(entry.nodeThreshold)} of \u03a3|effect| `
    + `and ${fmtPct0(entry.edgeThreshold)} of \u03a3|weight|) is ${entry.completeness === null ? "undefined (the frozen T is 0)" : entry.completeness.toFixed(3) + " of T (1 = nothing lost)"}. `
    + (full ? "That is what is drawn." : "What is drawn is a part of it; the completeness of that part needs the model's weights, which this page does not load."));
  lines.push(...storedLines(view.G, entry));
  const c = entry.check;
  if (c) {
    const part = (s, name) => (s.n ? `${name} (top ${s.n}): \u03c1 = ${fmtRho(s.rho)}, signs agree ${fmtPct0(s.signs)}; direct effect alone \u03c1 = ${fmtRho(s.rho_direct)}, signs ${fmtPct0(s.signs_direct)}` : null);
    const parts = [part(c.heads, "heads"), part(c.mlps, "MLPs")].filter(Boolean);
    lines.push(`Ablation check in the real model, nothing frozen (predicted \u0394T = \u2212effect against the measured \u0394T, Spearman \u03c1): ${parts.join("; ") || "no rows"}.`
      + (c.notes.length ? ` ${c.notes.join(" ")}` : ""));
    const worst = [...(c.heads.worst || []), ...(c.mlps.worst || [])].slice(0, 4);
    if (worst.length) lines.push(`Largest misses: ${worst.map((w) => `${w.node} predicted ${fmtSigned(w.predicted)}, measured ${fmtSigned(w.actual)}`).join("; ")}.`);
  } else {
    lines.push(view.G.checkNote ? view.G.checkNote : view.G.graphs[0].check ? "The ablation check is stored for the first target only; pick it to see \u03c1." : "No ablation check is stored for this graph.");
  }
  lines.push(FROZEN_NOTE);
  return lines;
}

const fmtShare = (x) => (x < 1 && x * 100 > 99.9 ? ">99.9 %" : `${(x * 100).toFixed(1)} %`);

/** What the file leaves out of the pruned graph: edges past graphfile.STORED_EDGES, and the
 * per-source splits of all but the largest nodes (graphfile.BY_SOURCE_NODES). */
export function storedLines(G, entry) {
  const lines = [];
  if (entry.edgesPruned > entry.edges.m) {
    lines.push(`${entry.edges.m} of ${entry.edgesPruned} edges stored (${fmtShare(entry.edgesStoredShare)} of |weight|): `
      + `the file keeps the pruned graph's ${entry.edges.m} largest edges; the other ${entry.edgesPruned - entry.edges.m} are not drawn, `
      + "and the completeness above counts them (it is that of the whole pruned graph).");
  }
  const bs = entry.bySource;
  if (bs && bs.row.size < entry.nodes.n - 1) {
    lines.push(`Per-source splits are stored for the ${bs.row.size} of ${entry.nodes.n - 1} nodes with the largest |effect| only `
      + `(|effect| \u2265 ${fmtNum(bs.floor)}); a smaller node's tooltip names no sources.`);
  } else if (!bs && G.splitNote) lines.push(G.splitNote);
  return lines;
}

/** One label per source: a text that two sources share gets the source's position as a
 * subscript where the sources are the tokens (G = P, + the bias), else its occurrence (#2). */
function sourceNames(G) {
  if (G.sourceNames) return G.sourceNames;
  const byToken = G.G === G.P || (G.G === G.P + 1 && G.sources[G.P] === "bias");
  const count = new Map(), seen = new Map();
  for (const t of G.sources) count.set(t, (count.get(t) || 0) + 1);
  G.sourceNames = G.sources.map((t, s) => {
    const k = (seen.get(t) || 0) + 1;
    seen.set(t, k);
    if (count.get(t) < 2 || (byToken && s === G.P)) return displayToken(t);
    return byToken ? displayToken(t) + subscript(s) : `${displayToken(t)} #${k}`;
  });
  return G.sourceNames;
}

/** The top sources of node i from the stored per-source split, or why there are none. */
function sourceRows(view, i) {
  const { G, entry } = view, bs = entry.bySource;
  if (!bs) return { note: G.splitNote || "No per-source split is stored in this graph file." };
  const r = bs.row.get(i);
  if (r === undefined) return { note: `Per-source split not stored below |effect| ${fmtNum(bs.floor)}.` };
  const vals = bs.values.subarray(r * bs.G, (r + 1) * bs.G);
  const idx = [...vals.keys()].sort((a, b) => Math.abs(vals[b]) - Math.abs(vals[a])).slice(0, TOP_SOURCES).filter((s) => vals[s] !== 0);
  const names = sourceNames(G);
  return { rows: idx.map((s) => [names[s], vals[s]]) };
}

function strongestEdges(view, i, dir) {
  const { entry } = view, { src, dst, weight } = entry.edges, out = [];
  for (let j = 0; j < entry.edges.m; j++) if ((dir === "in" ? dst[j] : src[j]) === i) out.push(j);
  out.sort((a, b) => Math.abs(weight[b]) - Math.abs(weight[a]));
  return { n: out.length, top: out.slice(0, TOP_EDGES).map((j) => [nodeLabel(view.G, entry, dir === "in" ? src[j] : dst[j]), weight[j]]) };
}

function tooltipContent(view, i) {
  const { G, entry } = view, n = entry.nodes, k = n.kind[i];
  const frag = document.createDocumentFragment();
  frag.append(el("div", { class: "tt-head" }, el("strong", { text: nodeLabel(G, entry, i) })));
  const e = n.effect[i];
  let line = k === KIND.TARGET ? `T = ${fmtSigned(entry.value)} (the real model's logit difference)`
    : `effect on T ${fmtSigned(e)}${entry.value ? ` (${((e / entry.value) * 100).toFixed(1)}% of T)` : ""}`;
  if (entry.direct && n.position[i] === entry.position) {
    const d = k === KIND.HEAD ? entry.direct.heads[n.layer[i] * G.Hx + n.head[i]] : k === KIND.MLP ? entry.direct.mlp[n.layer[i]] : k === KIND.EMBED ? entry.direct.embed : null;
    if (d !== null) line += `; direct ${fmtSigned(d)}`;
  }
  frag.append(el("div", { class: "mono", text: line }));
  if (k !== KIND.TARGET) {
    const s = sourceRows(view, i);
    if (s.note) frag.append(el("div", { class: "muted", text: s.note }));
    else frag.append(el("div", { class: "paths-tt-sources" }, el("span", { class: "muted", text: "top sources: " }),
      el("span", { class: "mono", text: s.rows.map(([t, v]) => `${t} ${fmtSigned(v)}`).join(", ") })));
  }
  for (const dir of ["in", "out"]) {
    if ((dir === "in" && (k === KIND.EMBED || k === KIND.BIAS)) || (dir === "out" && k === KIND.TARGET)) continue;
    const { n: count, top } = strongestEdges(view, i, dir);
    const head = dir === "in" ? `strongest in-edges (${count} stored)` : `strongest out-edges (${count} stored)`;
    const box = el("div", { class: "paths-tt-edges" }, el("div", { class: "muted", text: `${head}:` }));
    if (!top.length) box.append(el("div", { class: "muted", text: "none in the stored graph" }));
    for (const [label, w] of top) box.append(el("div", { class: "mono", text: `${dir === "in" ? "\u2190" : "\u2192"} ${fmtSigned(w)}  ${label}` }));
    frag.append(box);
  }
  return frag;
}

// ----------------------------------------------------------------------------- the view

class PathsView {
  constructor(root, G, options) {
    this.root = root;
    this.G = G;
    this.options = options;
    this.listeners = { draw: [], select: [], state: [] };
    const s = options.state || {};
    this.state = {
      target: Number.isInteger(s.target) && s.target >= 0 && s.target < G.graphs.length ? s.target : 0,
      nodeShare: s.nodeShare > 0 && s.nodeShare <= 1 ? s.nodeShare : DEFAULT_SHARES.node,
      edgeShare: s.edgeShare > 0 && s.edgeShare <= 1 ? s.edgeShare : DEFAULT_SHARES.edge,
      selected: typeof s.selected === "string" ? s.selected : null,
    };
    this.lifetime = new AbortController();
    this.build();
    this.C = themeColors();
    this.recompute();
    const ro = new ResizeObserver(() => { clearTimeout(this.resizeTimer); this.resizeTimer = setTimeout(() => this.relayout(), 60); });
    ro.observe(this.wrap);
    this.lifetime.signal.addEventListener("abort", () => ro.disconnect());
    window.addEventListener("infoflow-theme", () => { this.C = themeColors(); this.draw(); this.renderText(); }, { signal: this.lifetime.signal });
  }

  on(event, cb) {
    (this.listeners[event] || (this.listeners[event] = [])).push(cb);
    if (event === "draw" && this.lastDraw) cb(this.lastDraw);
    return this;
  }

  emit(event, payload) { for (const cb of this.listeners[event] || []) cb(payload); }

  get entry() { return this.G.graphs[this.state.target]; }

  build() {
    const G = this.G, id = (x) => `${this.options.idPrefix || "paths"}-${x}`;
    this.targetSelect = el("select", { id: id("target"), "aria-label": "Target" });
    G.graphs.forEach((e, i) => {
      const notes = [e.role, e.check ? "ablation-checked" : null].filter(Boolean);
      this.targetSelect.append(el("option", { value: i, text: `${targetLabel(e)} at ${displayToken(G.tokens[e.position])} (${e.position}): `
        + `T = ${fmtSigned(e.value)}${notes.length ? ` (${notes.join(", ")})` : ""}` }));
    });
    const slider = (name, label, value) => {
      const input = el("input", { type: "range", id: id(name), min: 5, max: 100, step: 1, value: Math.round(value * 100) });
      const out = el("output", { for: id(name), class: "mono" });
      return { input, out, box: el("label", { class: "field paths-slider" }, el("span", { text: label }), input, out) };
    };
    this.nodeSlider = slider("nodes", "Nodes", this.state.nodeShare);
    this.edgeSlider = slider("edges", "Edges", this.state.edgeShare);
    const button = (name, text, title, onclick) => el("button", { type: "button", id: id(name), text, title, onclick });
    this.canvas = el("canvas", { id: id("canvas"), class: "paths-canvas", role: "img", tabindex: "0",
      "aria-label": "Attribution graph: layers bottom to top, token positions left to right" });
    this.overlay = el("canvas", { class: "paths-overlay", "aria-hidden": "true" });
    this.tooltip = el("div", { class: "tooltip paths-tooltip", role: "status", hidden: true });
    this.inner = el("div", { class: "paths-inner" }, this.canvas, this.overlay);
    this.wrap = el("div", { class: "paths-wrap", id: id("wrap") }, this.inner);
    // the tooltip lives outside the scrolling wrap, so that the wrap never clips it
    this.stage = el("div", { class: "paths-stage" }, this.wrap, this.tooltip);
    this.summary = el("div", { class: "paths-summary", id: id("summary"), "aria-live": "polite" });
    this.status = el("p", { class: "paths-status muted", id: id("status"), "aria-live": "polite" });
    this.legend = el("p", { class: "paths-legend", id: id("legend") });
    this.root.replaceChildren(
      el("div", { class: "toolbar paths-controls" },
        // a page with its own target pickers (the live page) hides this one
        el("label", { class: "field", hidden: this.options.targetPicker === false }, el("span", { text: "Target" }), this.targetSelect),
        this.nodeSlider.box, this.edgeSlider.box,
        el("div", { class: "buttons" },
          button("svg", "SVG", "Download the graph as drawn, with legend and caption, as SVG", () => this.exportSvg()),
          button("png", "PNG", "Download the graph as drawn, with legend and caption, as PNG (2x)", () => this.exportPng()),
          button("json", "JSON", "Download the drawn graph in circuit-tracer's graph-file schema", () => this.exportJson()))),
      this.stage, this.legend, this.status, this.summary);
    this.targetSelect.value = String(this.state.target);
    this.targetSelect.addEventListener("change", () => this.set({ target: +this.targetSelect.value, selected: null }));
    for (const [s, key] of [[this.nodeSlider, "nodeShare"], [this.edgeSlider, "edgeShare"]]) {
      s.input.addEventListener("input", () => this.set({ [key]: +s.input.value / 100 }));
    }
    this.bindPointer();
  }

  /** Change the view's state and redraw once. */
  set(patch) {
    Object.assign(this.state, patch);
    this.recompute();
    this.emit("state", { ...this.state });
    if (this.options.onState) this.options.onState({ ...this.state });
  }

  recompute() {
    const s = this.state;
    this.targetSelect.value = String(s.target);
    this.nodeSlider.input.value = Math.round(s.nodeShare * 100);
    this.edgeSlider.input.value = Math.round(s.edgeShare * 100);
    this.nodeSlider.out.textContent = `${Math.round(s.nodeShare * 100)}%`;
    this.edgeSlider.out.textContent = `${Math.round(s.edgeShare * 100)}%`;
    this.drawn = selectDrawn(this.entry, s.nodeShare, s.edgeShare);
    let top = 0;
    for (const j of this.drawn.edges) top = Math.max(top, Math.abs(this.entry.edges.weight[j]));
    this.topWeight = top;
    const i = s.selected ? findNode(this.entry, s.selected) : -1;
    this.selected = i >= 0 && this.drawn.nodes.includes(i) ? i : -1;
    this.focus = this.selected >= 0 ? pathsThrough(this.entry, this.drawn, this.selected) : null;
    this.relayout();
    this.renderText();
  }

  relayout() {
    const width = Math.max(300, this.wrap.clientWidth || 300);
    const maxHeight = Math.max(360, Math.min(900, (window.innerHeight || 800) * 0.92));
    this.lay = layoutGraph(this.G, this.entry, this.drawn, width, { maxHeight });
    const dpr = window.devicePixelRatio || 1;
    this.dpr = dpr;
    for (const c of [this.canvas, this.overlay]) {
      c.width = Math.round(this.lay.w * dpr);
      c.height = Math.round(this.lay.h * dpr);
      c.style.width = `${this.lay.w}px`;
      c.style.height = `${this.lay.h}px`;
    }
    this.inner.style.width = `${this.lay.w}px`;
    this.inner.style.height = `${this.lay.h}px`;
    // wider than the screen (a long prompt on a phone): the wrap scrolls sideways; start where
    // the target is, since that is where the paths end
    const t = this.entry.nodes.n - 1, visible = this.wrap.clientWidth;
    if (this.lay.w > visible + 1 && this.scrolledFor !== this.state.target) {
      this.wrap.scrollLeft = Math.max(0, this.lay.X[t] - visible * 0.7);
      this.scrolledFor = this.state.target;
    }
    this.wrap.title = this.lay.w > visible + 1 ? "Scroll sideways for the other positions" : "";
    this.draw();
  }

  draw() {
    const ctx = this.canvas.getContext("2d"), { lay, C } = this;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.fillStyle = C.bg;
    ctx.fillRect(0, 0, lay.w, lay.h);
    drawScene(ctx, graphScene(this));
    this.drawOverlay();
    const n = this.entry.nodes, e = this.entry.edges;
    this.lastDraw = {
      target: this.state.target, w: lay.w, h: lay.h, nodeMass: this.drawn.nodeMass, edgeMass: this.drawn.edgeMass,
      nodes: Array.from(this.drawn.nodes, (i) => ({ index: i, kind: n.kind[i], layer: n.layer[i], head: n.head[i], position: n.position[i],
        effect: n.effect[i], x: lay.X[i], y: lay.Y[i], r: lay.R[i], row: nodeRow(n.kind[i], n.layer[i], this.G.L),
        color: n.effect[i] >= 0 ? C.pos : C.neg })),
      edges: Array.from(this.drawn.edges, (j) => ({ index: j, src: e.src[j], dst: e.dst[j], weight: e.weight[j], ...this.edgeStyle.get(j) })),
      selected: this.selected, focus: this.focus ? { nodes: [...this.focus.nodes], edges: [...this.focus.edges] } : null,
    };
    this.emit("draw", this.lastDraw);
  }

  /** The hovered node: a ring and its drawn edges, on the overlay canvas (the graph stays). */
  drawOverlay() {
    const ctx = this.overlay.getContext("2d"), { lay, C } = this, i = this.hover;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, lay.w, lay.h);
    if (i === undefined || i < 0) return;
    const { src, dst, weight } = this.entry.edges;
    for (const j of this.drawn.edges) {
      if (src[j] !== i && dst[j] !== i) continue;
      ctx.strokeStyle = weight[j] >= 0 ? C.pos : C.neg;
      ctx.lineWidth = 1 + 3 * Math.abs(weight[j]) / (this.topWeight || 1);
      ctx.beginPath();
      ctx.moveTo(lay.X[src[j]], lay.Y[src[j]]);
      ctx.lineTo(lay.X[dst[j]], lay.Y[dst[j]]);
      ctx.stroke();
    }
    ctx.strokeStyle = C.fg;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(lay.X[i], lay.Y[i], lay.R[i] + 4, 0, 2 * Math.PI);
    ctx.stroke();
  }

  renderText() {
    const C = themeColors(), sw = (color, shape) => {
      const s = el("span", { class: `paths-key paths-key-${shape}`, "aria-hidden": "true" });
      s.style.background = color;
      return s;
    };
    this.legend.replaceChildren(
      sw(C.pos, "circle"), el("span", { text: " raises T   " }), sw(C.neg, "circle"), el("span", { text: " lowers T   " }),
      el("span", { class: "muted", text: "\u25a0 embedding  \u25cf head  \u25c6 MLP  \u25b2 bias  \u2b22 target \u00b7 area \u221d |effect|, width \u221d |weight|" }));
    this.summary.replaceChildren(...summaryLines(this).map((t) => el("p", { text: t })));
  }

  hit(x, y) {
    let best = -1, bd = Infinity;
    for (const i of this.drawn.nodes) {
      const d = Math.hypot(this.lay.X[i] - x, this.lay.Y[i] - y);
      if (d <= this.lay.R[i] + 5 && d < bd) { bd = d; best = i; }
    }
    return best;
  }

  bindPointer() {
    const pos = (e) => {
      const r = this.canvas.getBoundingClientRect();
      return [e.clientX - r.left, e.clientY - r.top];
    };
    const { signal } = this.lifetime;
    this.overlay.style.pointerEvents = "none";
    this.canvas.addEventListener("pointermove", (e) => {
      const [x, y] = pos(e);
      this.setHover(this.hit(x, y), x, y);
    }, { signal });
    this.canvas.addEventListener("pointerleave", (e) => { if (e.pointerType !== "touch") this.setHover(-1); }, { signal });
    this.canvas.addEventListener("click", (e) => {
      const [x, y] = pos(e);
      const i = this.hit(x, y);
      this.select(i >= 0 && i !== this.selected ? i : -1);
      if (i >= 0 && e.pointerType === "touch") this.setHover(i, x, y);
    }, { signal });
    this.canvas.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.selected >= 0) { this.select(-1); e.preventDefault(); }
    }, { signal });
  }

  setHover(i, x, y) {
    if (i !== this.hover) {
      this.hover = i;
      this.drawOverlay();
      if (i >= 0) this.tooltip.replaceChildren(tooltipContent(this, i));
    }
    this.canvas.style.cursor = i >= 0 ? "pointer" : "default";
    this.tooltip.hidden = i < 0;
    if (i < 0) return;
    // place the tooltip beside the pointer, inside the visible part of the wrap
    const wrap = this.wrap, tw = this.tooltip.offsetWidth, th = this.tooltip.offsetHeight;
    const left = x - wrap.scrollLeft, vis = wrap.clientWidth;
    let tx = left + 16, ty = y + 16;
    if (tx + tw > vis) tx = Math.max(0, Math.min(vis - tw, left - tw - 12));
    if (ty + th > Math.max(this.lay.h, th + 16) && y - th - 12 >= 0) ty = y - th - 12;
    this.tooltip.style.left = `${tx}px`;
    this.tooltip.style.top = `${ty}px`;
  }

  /** Select node i (-1: none): highlight its paths, tell the page. */
  select(i) {
    const node = i >= 0 ? this.nodeInfo(i) : null;
    this.set({ selected: i >= 0 ? nodeKey(this.entry, i) : null });
    this.status.textContent = node ? `Selected ${nodeLabel(this.G, this.entry, i)}: its upstream and downstream paths are highlighted (click it again or press Esc to clear).` : "";
    this.emit("select", node);
    this.root.dispatchEvent(new CustomEvent("paths-select", { bubbles: true, detail: node }));
    if (this.options.onSelect) {
      const said = this.options.onSelect(node);
      if (node && typeof said === "string" && said) this.status.textContent += ` ${said}`;
    }
  }

  nodeInfo(i) {
    const n = this.entry.nodes;
    return { index: i, kind: ["embedding", "head", "mlp", "bias", "target"][n.kind[i]], layer: n.layer[i], head: n.head[i],
      position: n.position[i], effect: n.effect[i], label: nodeLabel(this.G, this.entry, i), component: componentLabel(this.G, this.entry, i) };
  }

  // ------------------------------------------------------------------ export

  /** The figure: a header, the graph, its legend and the caption lines. */
  figure() {
    const { G, entry, lay, C } = this, W = Math.max(lay.w, 640), pad = 16, items = [];
    const text = (x, y, s, o = {}) => items.push({ t: "text", x, y, text: s, size: 12, fill: C.fg, anchor: "start", rot: 0, weight: "normal", ...o });
    text(pad, pad + 14, `${this.options.title || G.prompt || "infoflow"}: paths to ${targetLabel(entry)}`, { size: 16, weight: "bold" });
    text(pad, pad + 32, `${G.model || "model"} \u00b7 T = ${fmtSigned(entry.value)} at ${displayToken(G.tokens[entry.position])} (${entry.position}) \u00b7 `
      + `nodes ${Math.round(this.state.nodeShare * 100)}%, edges ${Math.round(this.state.edgeShare * 100)}% of the stored graph`, { fill: C.muted });
    const oy = pad + 40;
    items.push(...graphScene(this, { dx: (W - lay.w) / 2, dy: oy }));
    let y = oy + lay.h + 8;
    // legend: the two signs and the five shapes
    const keys = [["circle", C.pos, "raises T"], ["circle", C.neg, "lowers T"], ["square", C.muted, "embedding"], ["circle", C.muted, "head"],
      ["diamond", C.muted, "MLP"], ["triangle", C.muted, "bias"], ["hexagon", C.muted, "target"]];
    let x = pad;
    for (const [shape, color, label] of keys) {
      items.push({ t: "node", shape, x: x + 6, y: y + 6, r: 5, fill: color, stroke: C.bg, alpha: 1, lineWidth: 0.8 });
      text(x + 16, y + 10, label, { size: 11 });
      x += 26 + label.length * 6.5;
    }
    text(x, y + 10, "node area \u221d |effect|, edge width \u221d |weight|", { size: 11, fill: C.muted });
    y += 24;
    const maxChars = Math.floor((W - 2 * pad) / 6.2);
    for (const line of summaryLines(this)) {
      for (const part of wrap(line, maxChars)) { text(pad, y + 10, part, { size: 10.5, fill: C.muted }); y += 14; }
      y += 3;
    }
    return { w: W, h: Math.ceil(y + pad), items };
  }

  exportSvg() {
    const f = this.figure();
    const svg = sceneSvg(f.items, f.w, f.h, this.C.bg);
    this.download(new Blob([svg], { type: "image/svg+xml" }), "svg", svg);
    return svg;
  }

  exportPng() {
    const f = this.figure(), c = document.createElement("canvas");
    c.width = f.w * 2;
    c.height = f.h * 2;
    const ctx = c.getContext("2d");
    ctx.scale(2, 2);
    ctx.fillStyle = this.C.bg;
    ctx.fillRect(0, 0, f.w, f.h);
    drawScene(ctx, f.items);
    return new Promise((done) => c.toBlob((blob) => {
      if (blob) this.download(blob, "png");
      else this.status.textContent = "PNG export failed.";
      done(blob);
    }, "image/png"));
  }

  exportJson() {
    const doc = toCircuitTracer(this.G, this.entry, this.drawn, { tokenIds: this.options.tokenIds || this.G.tokenIds || null,
      slug: `${this.options.id || "infoflow"}-graph` });
    const text = JSON.stringify(doc);
    this.download(new Blob([text], { type: "application/json" }), "json", text);
    return doc;
  }

  download(blob, ext, text) {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: `${this.options.id || "infoflow"}-paths.${ext}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 5000);
    this.lastExport = { ext, blob, text };
  }

  destroy() {
    this.lifetime.abort();
    clearTimeout(this.resizeTimer);
  }
}

function wrap(text, maxChars) {
  const words = String(text).split(" "), lines = [""];
  for (const w of words) {
    const cur = lines[lines.length - 1];
    if ((cur + " " + w).trim().length > maxChars && cur) lines.push(w);
    else lines[lines.length - 1] = (cur + " " + w).trim();
  }
  return lines;
}

/** Show decoded graph document G in element `root` (see the top of this file). */
export function mountPaths(root, G, options = {}) {
  return new PathsView(root, G, options);
}

/** A message in place of the view (a damaged or missing file): what happened and what to do. */
export function showPathsError(root, e) {
  root.replaceChildren(el("p", { class: "error-box paths-error", role: "alert" },
    el("strong", { text: "Cannot show the paths. " }), el("span", { text: e && e.name === "DataError" ? e.message : `${e && e.name}: ${e && e.message}` })));
}
