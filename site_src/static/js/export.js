// Figures and numbers: the current view as PNG (2x) or SVG with its title, prompt, metric,
// legend, axis labels and colour scale; and the numbers behind it as CSV.
//
// A figure is first a scene, a flat list of rectangles and texts in CSS px; toSvg and
// toCanvas render the same scene, so the PNG and the SVG show the same thing.
import { MARGIN, rowLabel } from "./grid.js";
import { cellSources, hiddenShare, traceSeries, THRESHOLD } from "./compute.js";
import { METRICS } from "./state.js";
import { hiddenNames, shareCaption, shareCsvColumn, shareOf } from "./share-text.js";
import { heatEnds } from "./panels.js";
import { displayToken } from "./format.js";

const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

function wrapText(text, maxChars, maxLines) {
  const words = String(text).replace(/\s+/g, " ").split(" ");
  const lines = [""];
  for (const w of words) {
    const cur = lines[lines.length - 1];
    if ((cur + " " + w).trim().length > maxChars && cur) lines.push(w);
    else lines[lines.length - 1] = (cur + " " + w).trim();
  }
  if (lines.length > maxLines) {
    lines.length = maxLines;
    lines[maxLines - 1] = lines[maxLines - 1].slice(0, maxChars - 1) + "\u2026";
  }
  return lines;
}

/** The current view as a scene: {w, h, bg, items: [{t: "rect"|"text", ...}]}. */
export function figureScene(v) {
  const { D, grid, state: s, labels } = v, C = v.theme;
  const items = [];
  const text = (x, y, str, o = {}) => items.push({ t: "text", x, y, text: str, size: 12, fill: C.fg, anchor: "start", weight: "normal", rot: 0, ...o });
  const rect = (x, y, w, h, fill) => items.push({ t: "rect", x, y, w, h, fill });
  const W = grid.cssW, pad = 16;
  rect(0, 0, 0, 0, C.bg);               // the background: sized once the height is known
  // header
  let y = pad + 16;
  text(pad, y, D.prompt.title || "infoflow", { size: 16, weight: "bold" });
  for (const line of wrapText(D.prompt.text || D.tokens.join(""), Math.floor((W - 2 * pad) / 7), 2)) {
    y += 17;
    text(pad, y, line, { size: 12, fill: C.muted });
  }
  y += 18;
  let what = `${METRICS[s.metric]} · grouping: ${v.V.label} · ${D.model.id || "model"}`;
  if (v.traceSrc >= 0) what += ` · ${s.heat ? "heat map of" : "tracing"} ${labels[v.traceSrc]}`;
  text(pad, y, what, { size: 12 });
  for (const line of wrapText(shareCaption(v), Math.floor((W - 2 * pad) / 6.2), 2)) {   // what the widths are of
    y += 16;
    text(pad, y, line, { size: 11, fill: hiddenNames(v) ? C.fg : C.muted });
  }
  const top = y + 8;
  // the grid as drawn: visible cells only, clipped to the plot
  const g = grid.geometry(1), P = grid.P;
  const ox = MARGIN.left, oy = top + 28;
  for (let r = 0; r < 2 * grid.L; r++) {
    if (g.yb[r] <= g.ya[r]) continue;
    for (let p = g.p0; p <= g.p1; p++) if (g.xb[p] > g.xa[p]) rect(ox + g.xa[p], oy + g.ya[r], g.xb[p] - g.xa[p], g.yb[r] - g.ya[r], C.track);
  }
  const drawn = new Set();               // batches with a rectangle in the figure: the legend lists only these
  for (const b of grid.data.batches) {
    const it = b.items, hatch = b.hatch ? [b.color, b.hatch] : null;
    for (let o = 0; o < b.n * 5; o += 5) {
      const cell = it[o], r = (cell / P) | 0, p = cell - r * P;
      if (p < g.p0 || p > g.p1 || g.yb[r] <= g.ya[r]) continue;
      const a = Math.max(g.xa[p], g.cxa[p] + it[o + 1] * g.cwd), z = Math.min(g.xb[p], g.cxa[p] + it[o + 2] * g.cwd);
      const y0 = Math.max(g.ya[r], g.yu[r] + it[o + 3] * g.yh[r]), y1 = Math.min(g.yb[r], g.yu[r] + it[o + 4] * g.yh[r]);
      if (z > a && y1 > y0) {
        items.push({ t: "rect", x: ox + a, y: oy + y0, w: z - a, h: y1 - y0, fill: b.color, hatch });
        drawn.add(b);
      }
    }
  }
  // row labels, token labels, axis titles
  let lastY = Infinity;
  for (let r = 0; r < 2 * grid.L; r++) {
    if (Number.isNaN(g.ry[r])) continue;
    const cy = oy + g.ry[r] - MARGIN.top + g.rh[r] / 2;
    if (lastY - cy < 10) continue;
    text(ox - 6, cy + 3.5, rowLabel(r >> 1, r & 1), { size: 9.5, anchor: "end", fill: (r & 1) === (s.emph === "attn" ? 0 : 1) ? C.fg : C.muted });
    lastY = cy;
  }
  const step = g.colW >= 9 ? 1 : Math.ceil(9 / g.colW);
  const ly = oy + grid.plotH + 8;
  for (let p = g.p0; p <= g.p1; p++) {
    if (p % step) continue;
    const x = ox + p * g.colW - grid.view.x + g.cw / 2;
    if (x < ox || x > ox + grid.plotW) continue;
    let t = v.tokenLabels[p];
    if (t.length > 14) t = t.slice(0, 13) + "\u2026";
    text(x + 3, ly, t, { size: Math.min(11, Math.max(8, g.colW * 0.9)), anchor: "end", rot: -69 });
  }
  text(10, oy + grid.plotH / 2, "layer \u2191 (attention, then MLP)", { size: 11, fill: C.muted, anchor: "middle", rot: -90 });
  text(ox + grid.plotW, oy + grid.plotH + 78, "token position \u2192", { size: 11, fill: C.muted, anchor: "end" });
  // next-token predictions above the plot (only when the last column is in view)
  if (g.p1 === P - 1) {
    text(ox + grid.plotW, top + 16, `next token after ${v.tokenLabels[P - 1]}: ` + grid.data.predictions.slice(0, 3)
      .map((x) => `${displayToken(x.text)} ${(x.prob * 100).toFixed(1)}%`).join(", "), { size: 11, anchor: "end", fill: C.muted });
  }
  // legend or colour scale
  y = oy + grid.plotH + 100;
  let x = pad;
  const legend = [];
  const key = (color, label, hatch = null) => {
    const w = 18 + label.length * 6.6;
    if (x + w > W - pad) { x = pad; y += 18; }
    items.push({ t: "rect", x, y: y - 9, w: 11, h: 11, fill: color, hatch });
    text(x + 15, y, label, { size: 11 });
    x += w + 10;
    legend.push(label);
  };
  const kinds = new Map([...drawn].map((b) => [b.kind, b]));
  if (v.traceSrc >= 0 && s.heat) {
    const ramp = s.metric === "proj" ? v.divRamp : v.seqRamp;
    const [lo, hi] = heatEnds(v);
    text(pad, y, `${labels[v.traceSrc]}'s ${s.metric === "proj" ? "signed share" : "share"}:`, { size: 11 });
    const x0 = pad + 190;
    text(x0 - 4, y, lo, { size: 11, anchor: "end" });
    ramp.forEach((c, i) => rect(x0 + i * 6, y - 9, 6, 11, c));
    text(x0 + ramp.length * 6 + 4, y, `${hi} (its largest)`, { size: 11 });
    legend.push(`scale ${lo} to ${hi}`);
  } else if (s.head) {
    text(pad, y, `Trace head ${s.head.l}.${s.head.h}: each cell of its layer's attention row is this head's share of the block's write`, { size: 11 });
    legend.push(`head ${s.head.l}.${s.head.h}`);
  } else {
    // only what the figure draws, coloured sources in their palette order
    const sources = [...drawn].filter((b) => b.kind === "source" && b.source >= 0).map((b) => b.source)
      .sort((a, b) => (v.slots[a] - v.slots[b]) || a - b);
    for (const src of sources) key(v.colorOf(src), labels[src]);
    if (kinds.has("others")) key(C.neutral, `others (and < ${THRESHOLD * 100}%)`);
    if (kinds.has("hidden")) key(C.muted, `hidden: ${hiddenNames(v)} (hatched, still counted)`, [C.muted, C.track]);
    if (kinds.has("neg")) key(kinds.get("neg").color, "negative");
    if (kinds.has("pos")) key(kinds.get("pos").color, "positive");
  }
  y += 22;
  text(pad, y, `infoflow · ${D.model.id || ""} · worst reconstruction error ${typeof D.worstReconError === "number" ? D.worstReconError.toExponential(1) : "?"} · values stored in 8 bits per cell`,
    { size: 10, fill: C.muted });
  const h = Math.ceil(y + pad);
  items[0] = { t: "rect", x: 0, y: 0, w: W, h, fill: C.bg };
  return { w: W, h, items, legend, clip: { x: ox, y: oy, w: grid.plotW, h: grid.plotH } };
}

/** One <path> per colour for the rectangles, one <text> per label. Text is escaped by the DOM. */
export function toSvg(scene) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("xmlns", NS);
  svg.setAttribute("width", scene.w);
  svg.setAttribute("height", scene.h);
  svg.setAttribute("viewBox", `0 0 ${scene.w} ${scene.h}`);
  const paths = new Map();
  const f = (x) => +x.toFixed(2);
  const defs = document.createElementNS(NS, "defs");
  const patterns = new Map();
  const fillOf = (it) => {               // a hatched rect (hidden sources) fills with a pattern
    if (!it.hatch) return it.fill;
    const k = it.hatch.join(" ");
    if (!patterns.has(k)) {
      const id = `hatch${patterns.size}`;
      const pat = document.createElementNS(NS, "pattern");
      for (const [a, b] of [["id", id], ["width", 4], ["height", 4], ["patternUnits", "userSpaceOnUse"], ["patternTransform", "rotate(45)"]]) pat.setAttribute(a, b);
      const bg = document.createElementNS(NS, "rect"), line = document.createElementNS(NS, "rect");
      for (const [a, b] of [["width", 4], ["height", 4], ["fill", it.hatch[1]]]) bg.setAttribute(a, b);
      for (const [a, b] of [["width", 1], ["height", 4], ["fill", it.hatch[0]]]) line.setAttribute(a, b);
      pat.append(bg, line);
      defs.append(pat);
      patterns.set(k, `url(#${id})`);
    }
    return patterns.get(k);
  };
  for (const it of scene.items) {
    if (it.t === "rect") {
      const fill = fillOf(it);
      if (!paths.has(fill)) paths.set(fill, []);
      paths.get(fill).push(`M${f(it.x)} ${f(it.y)}h${f(it.w)}v${f(it.h)}h${f(-it.w)}z`);
    }
  }
  if (patterns.size) svg.append(defs);
  for (const [fill, d] of paths) {
    const p = document.createElementNS(NS, "path");
    p.setAttribute("fill", fill);
    p.setAttribute("d", d.join(""));
    svg.append(p);
  }
  for (const it of scene.items) {
    if (it.t !== "text") continue;
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", f(it.x));
    t.setAttribute("y", f(it.y));
    t.setAttribute("font-family", FONT);
    t.setAttribute("font-size", it.size);
    t.setAttribute("fill", it.fill);
    if (it.anchor !== "start") t.setAttribute("text-anchor", it.anchor);
    if (it.weight !== "normal") t.setAttribute("font-weight", it.weight);
    if (it.rot) t.setAttribute("transform", `rotate(${it.rot} ${f(it.x)} ${f(it.y)})`);
    t.setAttribute("xml:space", "preserve");
    t.textContent = it.text;
    svg.append(t);
  }
  return new XMLSerializer().serializeToString(svg);
}

/** Diagonal stripes for a hatched rect (hidden sources), as the grid draws them. */
function hatchPattern(ctx, [fg, bg]) {
  const c = document.createElement("canvas");
  c.width = c.height = 8;
  const x = c.getContext("2d");
  x.fillStyle = bg;
  x.fillRect(0, 0, 8, 8);
  x.fillStyle = fg;
  for (let i = 0; i < 8; i++) { x.fillRect(i, 7 - i, 1, 1); x.fillRect((i + 4) % 8, 7 - i, 1, 1); }
  return ctx.createPattern(c, "repeat");
}

export function toCanvas(scene, scale = 2) {
  const c = document.createElement("canvas");
  c.width = Math.round(scene.w * scale);
  c.height = Math.round(scene.h * scale);
  const ctx = c.getContext("2d");
  ctx.scale(scale, scale);
  for (const it of scene.items) {
    if (it.t === "rect") {
      ctx.fillStyle = it.hatch ? hatchPattern(ctx, it.hatch) : it.fill;
      ctx.fillRect(it.x, it.y, it.w, it.h);
    } else {
      ctx.save();
      ctx.translate(it.x, it.y);
      if (it.rot) ctx.rotate((it.rot * Math.PI) / 180);
      ctx.font = `${it.weight === "bold" ? "bold " : ""}${it.size}px ${FONT}`;
      ctx.fillStyle = it.fill;
      ctx.textAlign = it.anchor === "middle" ? "center" : it.anchor === "end" ? "right" : "left";
      ctx.fillText(it.text, 0, 0);
      ctx.restore();
    }
  }
  return c;
}

function download(v, blob, ext) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = `${v.options.id || "infoflow"}.${ext}`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
  v.lastExport = { ext, blob };
}

export function exportFigure(v, kind) {
  const scene = figureScene(v);
  if (kind === "svg") {
    download(v, new Blob([toSvg(scene)], { type: "image/svg+xml" }), "svg");
    return;
  }
  toCanvas(scene, 2).toBlob((blob) => {
    if (blob) download(v, blob, "png");
    else v.status("PNG export failed.");
  }, "image/png");
}

/** A CSV field: quoted when needed, and never read as a formula by a spreadsheet. */
export function csvField(x) {
  let s = String(x);
  if (/^[=+\-@\t\r]/.test(s) && typeof x === "string") s = "'" + s;
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** Metadata lines ("# key: value") above the header: what the numbers are (issue 24). */
function csvMeta(v) {
  const { D, V, state: s } = v;
  const lines = [
    ["prompt", D.prompt.title || v.options.id || ""],
    ["model", `${D.model.id || "?"} (${D.model.fingerprint || "?"})`],
    ["metric", `${s.metric}: ${METRICS[s.metric]}`],
    ["grouping", `${V.name}: ${V.label}${V.exact ? "" : " (approximate, sum of norms)"}`],
    ["shares", s.metric === "proj" ? "signed share of the whole residual (proj is never renormalised)" : shareOf(v)],
    ["hidden sources", hiddenNames(v) ? `${hiddenNames(v)} (${s.shown && s.metric !== "proj" ? "left out of the denominator" : "still counted in every share"}); hidden_share column: their share of the whole at that cell` : "none"],
    ["precision", "values stored in 8 bits per cell (1/255 of the cell's largest value)"],
    ["tokens", "token column: the token's text as the model's tokenizer gives it; source column: the label the viewer shows (a subscript marks the first position of a repeated text)"],
  ];
  return lines.map(([k, x]) => `# ${k}: ${String(x).replace(/[\r\n]+/g, " ")}`);
}

/** The numbers behind the view: the traced source's share per layer and position, the pinned
 * cell's sources, or (nothing traced or pinned) every cell's sources. */
export function csvText(v) {
  const { D, V, state: s, labels } = v;
  const rows = [];
  const share = shareCsvColumn(v), tok = (p) => v.tokenLabels[p];
  if (v.traceSrc >= 0) {
    rows.push(["source", "layer", "sublayer", "position", "token", share, "hidden_share"]);
    for (let p = V.first[v.traceSrc]; p < D.P; p++) {
      const series = traceSeries(V, D.L, D.P, s.metric, v.hidden, v.traceSrc, p, s.shown);
      for (let l = 0; l < D.L; l++) {
        rows.push([labels[v.traceSrc], l, "attn", p, tok(p), series.attn[l].toPrecision(4), hiddenShare(V, D.P, s.metric, v.hidden, l, 0, p).toPrecision(4)]);
        rows.push([labels[v.traceSrc], l, "mlp", p, tok(p), series.mlp[l].toPrecision(4), hiddenShare(V, D.P, s.metric, v.hidden, l, 1, p).toPrecision(4)]);
      }
    }
  } else {
    const cells = [];
    if (s.pin) cells.push(s.pin);
    else for (let l = 0; l < D.L; l++) for (let k = 0; k < 2; k++) for (let p = 0; p < D.P; p++) cells.push({ l, k, p });
    rows.push(["layer", "sublayer", "position", "token", "source", "first_position", "hidden", share, s.metric]);
    for (const { l, k, p } of cells) {
      const cs = cellSources(V, D.P, s.metric, v.hidden, l, k, p, s.shown);
      if (!s.pin) cs.sort((a, b) => V.first[a.s] - V.first[b.s] || a.s - b.s);   // the whole grid: in source order
      for (const r of cs) {
        rows.push([l, k ? "mlp" : "attn", p, tok(p), labels[r.s], V.first[r.s], r.hidden ? 1 : 0, r.share.toPrecision(4), r.value.toPrecision(4)]);
      }
    }
  }
  return [...csvMeta(v), ...rows.map((r) => r.map(csvField).join(","))].join("\n") + "\n";
}

export function exportCsv(v) {
  download(v, new Blob([csvText(v)], { type: "text/csv" }), "csv");
}
