// Compare mode's drawing: colours shared by the two models, their grids, and one chart of the
// traced source's share over depth for both.
//
// Sources of the two models are matched by the text they cover: a source's key is the
// character of the prompt its first token starts at ("c5"), or, for a token outside the text
// (<bos>, a chat template's), "s<position>:<token>"; the bias source is "b". Each key gets one
// palette colour, whichever model shows it.
import { MAX_COLORS, PALETTE, PALETTE_DARK } from "./palette.js";
import { buildBatches, traceSeries } from "./compute.js";
import { charStarts, wordStart } from "./models.js";
import { displayToken, sourceLabels, subscript } from "./format.js";

/** One key per source of variant V (see the header). */
export function sourceKeys(D, V) {
  const starts = charStarts(D.tokens, D.prompt && D.prompt.text);
  return Array.from({ length: V.G }, (_, s) => {
    if (V.hasBias && s === V.G - 1) return "b";
    const p = V.first[s];
    return starts && starts[p] !== null ? `c${wordStart(starts, D.tokens, p)}` : `s${p}:${D.tokens[p]}`;
  });
}

/** Mean share of each source over all cells where it is present (hidden sources left out). */
export function meanShares(V, L, P, hidden) {
  const G = V.G, arr = V.norm, total = new Float64Array(G);
  for (let c = 0; c < L * 2 * P; c++) {
    const base = c * G, p = c % P;
    let sum = 0;
    for (let s = 0; s < G; s++) if (!hidden[s] && V.first[s] <= p) sum += arr[base + s];
    if (sum <= 0) continue;
    for (let s = 0; s < G; s++) if (!hidden[s] && V.first[s] <= p) total[s] += arr[base + s] / sum;
  }
  return total.map((t) => t / (L * 2 * P));
}

/**
 * Palette slots shared by both sides: the MAX_COLORS keys with the largest mean share summed
 * over the two models, plus the traced key. sides: [{D, V, hidden, keys}] -> Map(key -> slot)
 */
export function sharedSlots(sides, tracedKey, max = MAX_COLORS) {
  const score = new Map();
  for (const { D, V, hidden, keys } of sides) {
    const mean = meanShares(V, D.L, D.P, hidden);
    keys.forEach((k, s) => { if (!hidden[s] && mean[s] > 0) score.set(k, (score.get(k) || 0) + mean[s]); });
  }
  const ranked = [...score.keys()].sort((a, b) => score.get(b) - score.get(a) || (a < b ? -1 : 1));
  const slots = new Map(ranked.slice(0, max).map((k, i) => [k, i]));
  if (tracedKey && !slots.has(tracedKey)) slots.set(tracedKey, Math.min(max, ranked.length || 1) - 1);
  return slots;
}

/** What a side's grid shows: batches and labels, in the shared colours. */
export function gridData(side, slots, state, theme, dark) {
  const { D, V, hidden, keys, trace } = side;
  const palette = dark ? PALETTE_DARK : PALETTE;
  const colors = keys.map((k) => (slots.has(k) ? palette[slots.get(k)] : null));
  side.colors = colors;
  const batches = buildBatches(V, D.L, D.P, {
    metric: state.metric, hidden, trace, heat: false, order: "position", colors,
    neutral: theme.neutral, neg: theme.neg, pos: theme.pos, seqRamp: [], divRamp: [],
    hatch: [theme.muted, theme.track],     // the hidden first token: hatched, still in every share (issue 24)
  });
  const dup = new Map();
  for (const t of D.tokens) dup.set(t, (dup.get(t) || 0) + 1);
  const last = D.P - 1, predictions = [];
  for (let j = 0; j < D.k; j++) predictions.push({ text: D.strings[D.pred.ids[last * D.k + j]], prob: D.pred.probs[last * D.k + j] });
  const tokenHidden = D.tokens.map((_, p) => !!hidden[V.groups[p]]);
  return {
    L: D.L, P: D.P, batches, tokens: D.tokens, predictions, tokenHidden,
    tokenLabels: D.tokens.map((t, p) => displayToken(t) + (dup.get(t) > 1 ? subscript(p) : "")),
    tokenColor: D.tokens.map((_, p) => colors[V.groups[p]] || theme.neutral),
    tokenDim: tokenHidden.map((h, p) => h || (trace >= 0 && V.groups[p] !== trace)),
    tokenMark: trace >= 0 ? V.first[trace] : -1, predPos: -1,
  };
}

/** The traced source's share at the last position, per sublayer: [{x, y}] (NaN: not started). */
export function depthSeries(side, metric, relative) {
  const { D, V, hidden, trace } = side;
  const s = traceSeries(V, D.L, D.P, metric, hidden, trace, D.P - 1);
  const pts = [];
  for (let l = 0; l < D.L; l++) {
    for (let k = 0; k < 2; k++) {
      const x = l + (k ? 1 : 0.5);             // attention half-way through a layer, the MLP at its end
      pts.push({ l, k, x: relative ? x / D.L : x, y: (k ? s.mlp : s.attn)[l] });
    }
  }
  return pts;
}

const PAD = { left: 46, right: 14, top: 12, bottom: 34 };

/**
 * Both models' series on one canvas, in the traced source's colour: the first model solid with
 * dots, the second dashed with squares. -> the scales, for hit tests and the browser tests.
 */
export function drawChart(canvas, series, { color, theme, relative, width, dpr, signed }) {
  const height = 200;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = theme.bg;
  ctx.fillRect(0, 0, width, height);
  const ys = series.flatMap((pts) => pts.map((p) => p.y)).filter(Number.isFinite);
  // from 0 (or the lowest signed share) to a little above the highest share, at least 10 %
  const y0 = signed ? Math.min(0, ...ys) : 0, y1 = Math.min(signed ? Infinity : 1, Math.max(0.1, ...ys) * 1.1);
  const x1 = relative ? 1 : Math.max(...series.map((pts) => (pts.length ? pts[pts.length - 1].x : 1)));
  const W = width - PAD.left - PAD.right, H = height - PAD.top - PAD.bottom;
  const xOf = (x) => PAD.left + (x / x1) * W;
  const yOf = (y) => PAD.top + (1 - (y - y0) / (y1 - y0 || 1)) * H;
  axes(ctx, { xOf, yOf, x1, y0, y1, W, H, theme, relative });
  series.forEach((pts, i) => line(ctx, pts, { xOf, yOf, color, dashed: i === 1 }));
  return { xOf, yOf, y0, y1, x1, height };
}

function axes(ctx, { xOf, yOf, x1, y0, y1, H, theme, relative }) {
  ctx.strokeStyle = theme.track;
  ctx.fillStyle = theme.muted;
  ctx.lineWidth = 1;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const y of niceTicks(y0, y1, 4)) {
    ctx.beginPath();
    ctx.moveTo(xOf(0), Math.round(yOf(y)) + 0.5);
    ctx.lineTo(xOf(x1), Math.round(yOf(y)) + 0.5);
    ctx.stroke();
    ctx.fillText(`${Math.round(y * 100)}%`, xOf(0) - 6, yOf(y));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const x of niceTicks(0, x1, relative ? 4 : 6)) ctx.fillText(relative ? x.toFixed(2) : String(x), xOf(x), PAD.top + H + 4);
  ctx.fillText(relative ? "relative depth (layer / layers)" : "layer", xOf(x1 / 2), PAD.top + H + 18);
}

function line(ctx, pts, { xOf, yOf, color, dashed }) {
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 2;
  ctx.setLineDash(dashed ? [6, 4] : []);
  ctx.beginPath();
  let on = false;
  for (const p of pts) {
    if (!Number.isFinite(p.y)) { on = false; continue; }
    if (on) ctx.lineTo(xOf(p.x), yOf(p.y)); else ctx.moveTo(xOf(p.x), yOf(p.y));
    on = true;
  }
  ctx.stroke();
  ctx.setLineDash([]);
  for (const p of pts) {
    if (!Number.isFinite(p.y) || p.k !== 1) continue;     // a marker at each layer's end
    const x = xOf(p.x), y = yOf(p.y);
    ctx.beginPath();
    if (dashed) ctx.rect(x - 3, y - 3, 6, 6); else ctx.arc(x, y, 3, 0, 2 * Math.PI);
    ctx.fill();
  }
}

function niceTicks(lo, hi, n) {
  const span = hi - lo || 1, raw = span / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) out.push(Math.round(t / step) * step);
  return out;
}

/** Trace choices: every key of either side, in text order, labelled as its first side shows it. */
export function traceChoices(sides) {
  const seen = new Map();
  for (const side of sides) {
    const labels = sourceLabels(side.V);
    side.keys.forEach((k, s) => { if (!seen.has(k)) seen.set(k, labels[s]); });
  }
  const rank = (k) => (k === "b" ? 1e9 : k[0] === "c" ? +k.slice(1) : -1e6 + parseInt(k.slice(1), 10));
  return [...seen.entries()].sort((a, b) => rank(a[0]) - rank(b[0])).map(([key, label]) => ({ key, label }));
}
