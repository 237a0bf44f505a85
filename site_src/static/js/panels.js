// Everything around the grid that is made of DOM: the token strip, the caption, the legend, the
// predictions, the pinned cell, the hidden summary table and the toolbar's state.
//
// A panel is {id, title?, deps, render(viewer, box)}. The viewer re-renders a panel only when a
// key in `deps` changed (a state key, or "colors": anything that changes the drawn sources).
// Panels with a title get a box in the panels row. To add one (e.g. a "heads" panel), call
// registerPanel({id: "heads", title: "Heads", deps: ["pin", "variant"], render}) before
// mountViewer; render(viewer, box) reads viewer.D, viewer.V, viewer.state, viewer.labels.
import { el, svgEl, toolbarControls } from "./dom.js";
import { cellSources, traceSeries, THRESHOLD } from "./compute.js";
import { displayToken, fmtPct, fmtStored, fmtNum } from "./format.js";
import { METRICS, METRIC_HELP } from "./state.js";
import { NEG_COLOR, POS_COLOR, MAX_COLORS } from "./palette.js";
import { shareCaption, shareColumn, hiddenSentence, hiddenNames, shareOf } from "./share-text.js";
import { depthPanel } from "./depth.js";
import { lensPanel } from "./lens.js";
import { rankingText } from "./answer.js";
import { applyRoving } from "./roving.js";

const swatch = (color, cls = "swatch") => {
  const sw = el("span", { class: cls, "aria-hidden": "true" });
  sw.style.background = color;
  return sw;
};
/** The hatched swatch of hidden sources (CSS draws the stripes, as the grid does). */
const hatchSwatch = () => el("span", { class: "swatch swatch-hatch", "aria-hidden": "true" });

// ----------------------------------------------------------------------------- strip

function renderStrip(v, box) {
  const { D, V, labels } = v;
  const frag = document.createDocumentFragment();
  const tok = (key, src, text, title, extraCls) => {
    const hidden = !!v.hidden[src], traced = v.traceSrc === src;
    const label = el("button", { type: "button", class: "tok-label", "data-pos": key, "data-src": src, text,
      "aria-pressed": String(traced), title });
    label.style.borderBottomColor = v.colorOf(src);
    const hide = el("button", { type: "button", class: "tok-hide", "data-pos": key, "data-src": src, "aria-pressed": String(hidden),
      "aria-label": `${hidden ? "Show" : "Hide"} source ${labels[src]}`, title: `${hidden ? "Show" : "Hide"} this source`,
      text: hidden ? "\u25cb" : "\u25c9" });
    const cls = ["tok", ...extraCls];
    if (hidden) cls.push("is-hidden");
    if (traced) cls.push("is-traced");
    if (v.traceSrc >= 0 && !traced) cls.push("is-dim");
    return el("span", { class: cls.join(" ") }, label, hide);
  };
  const sel = v.selection;
  for (let p = 0; p < D.P; p++) {
    const src = V.groups[p], cls = [];
    if (sel && p >= sel[0] && p <= sel[1]) cls.push("is-selected");
    if (p > 0 && V.groups[p - 1] === src) cls.push("same-group");
    frag.append(tok(p, src, v.tokenLabels[p], `Position ${p}: trace source ${labels[src]}`, cls));
  }
  if (V.hasBias) frag.append(tok("b", V.G - 1, "bias", "Trace the constant bias source", ["tok-bias"]));
  box.replaceChildren(frag);
  applyRoving(box, "button");              // one Tab stop; arrows move between the tokens' buttons
}

// ----------------------------------------------------------------------------- caption

function renderCaption(v, box) {
  const s = v.state, labels = v.labels;
  const parts = [];
  if (v.traceSrc >= 0) {
    const name = labels[v.traceSrc];
    parts.push(s.heat
      ? `Heat map of ${name}: each cell's colour is ${name}'s ${s.metric === "proj" ? "signed share" : "share"}, on a scale that ends at its largest (${heatEnds(v).join(" to ")}; in the legend).`
      : s.metric === "proj"
        ? `Tracing ${name}: a bar grows right of the cell's centre where ${name} pushes the residual, left where it cancels.`
        : `Tracing ${name}: each bar's width is ${name}'s share of that cell.`);
  } else {
    parts.push(`Each bar is one sublayer at one token position; its segments are sources, as wide as their share, `
      + `ordered ${s.order === "size" ? "largest first" : "by source position (left to right, the same in every row)"}. `
      + `Colours go first to the sources the shown prediction comes from (see Predictions), then to the largest sources, ${MAX_COLORS} in all; grey is all the others.`);
  }
  parts.push(shareCaption(v));
  parts.push(`Layer 0 is at the bottom. ${METRICS[s.metric]}: ${METRIC_HELP[s.metric]}`);
  box.textContent = parts.join(" ");
}

// ----------------------------------------------------------------------------- legend

function renderLegend(v, box) {
  const { V, state: s, labels } = v;
  const items = [el("p", { class: "legend-metric" }, el("strong", { text: METRICS[s.metric] }),
    el("span", { class: "muted", text: ` · grouping: ${V.label}${V.exact ? "" : " — approximate (sum of norms)"}` }))];
  const neg = v.dark ? NEG_COLOR.dark : NEG_COLOR.light, pos = v.dark ? POS_COLOR.dark : POS_COLOR.light;
  if (v.traceSrc >= 0) {
    const name = labels[v.traceSrc];
    if (s.heat) {
      const ramp = s.metric === "proj" ? v.divRamp : v.seqRamp;
      const bar = el("span", { class: "ramp", "aria-hidden": "true" });
      for (const c of ramp) bar.append(swatch(c, "ramp-step"));
      const [lo, hi] = heatEnds(v);
      items.push(el("p", { class: "heat-scale" }, el("span", { text: `Heat map of ${name}: ` }),
        el("span", { class: "heat-lo", text: `${lo} ` }), bar, el("span", { class: "heat-hi", text: ` ${hi}` }),
        el("span", { class: "muted", text: ` (the scale ends at ${name}'s largest ${s.metric === "proj" ? "|signed share|" : "share"})` })));
    } else if (s.metric === "proj") {
      items.push(el("p", {}, el("span", { text: `Tracing ${name}: bars from the centre; ` }),
        swatch(pos), el("span", { text: " positive " }), swatch(neg), el("span", { text: " negative" })));
    } else {
      items.push(el("p", {}, swatch(v.colorOf(v.traceSrc)), el("span", { text: ` Tracing ${name}: its share of each cell (Esc clears)` })));
    }
  }
  if (v.answerSources && v.answerSources.length) {
    const D = v.D, what = displayToken(D.strings[D.pred.ids[v.answerPos * D.k + v.answerJ]]);
    items.push(el("p", { class: "legend-answer muted", text: `First colours: where ${what} comes from, the sources adding most to `
      + `${rankingText(V, D, v.answerPos)}: ` + v.answerSources.map((src) => labels[src]).join(" ") }));
  }
  // coloured sources in their order of colour (largest first), then "others"
  const ul = el("ul", { class: "legend-list" });
  const coloured = [...Array(V.G).keys()].filter((i) => v.slots[i] >= 0).sort((a, b) => v.slots[a] - v.slots[b]);
  for (const src of coloured) {
    ul.append(el("li", { "data-src": src }, swatch(v.colorOf(src)), el("span", { class: "mono", text: labels[src] })));
  }
  const hidden = [...Array(V.G).keys()].filter((i) => v.hidden[i]);
  const others = V.G - coloured.length - hidden.length;
  ul.append(el("li", { class: "legend-others" }, swatch(v.theme.neutral),
    el("span", { text: ` others (${others} source${others === 1 ? "" : "s"} without a colour, and any segment < ${THRESHOLD * 100}%)` })));
  if (hidden.length) {
    ul.append(el("li", { class: "is-hidden legend-hidden" }, s.shown ? null : hatchSwatch(), el("span", {
      text: s.shown ? ` hidden: ${hiddenNames(v)} (left out: widths are ${shareOf(v)})`
        : ` hidden: ${hiddenNames(v)} (hatched; still counted in every share)` })));
  }
  if (s.metric === "proj" && v.traceSrc < 0) {
    ul.append(el("li", {}, swatch(neg), el("span", { text: " negative part (left of zero)" })));
    ul.append(el("li", {}, swatch(pos), el("span", { text: " positive part" })));
  }
  items.push(ul);
  box.replaceChildren(...items);
}

/** The heat map's printed ends: ["0%", top] or ["−top", "+top"] (app.js heatTop). */
export function heatEnds(v) {
  const top = fmtPct(v.heatTop);
  return v.state.metric === "proj" ? [`\u2212${top}`, `+${top}`] : ["0%", top];
}

// ----------------------------------------------------------------------------- predictions

function renderPredictions(v, box) {
  const { D, V, state: s, labels } = v;
  const p = s.pred === null ? D.P - 1 : s.pred;
  const j = Math.min(v.predChoice || 0, D.k - 1);
  const head = el("p", {}, el("span", { text: `After position ${p} ` }),
    el("span", { class: "mono tok-inline", text: v.tokenLabels[p] }),
    el("span", { class: "muted", text: s.pred === null ? " (last; click a column label for another)" : "" }));
  const list = el("ol", { class: "pred-list" });
  for (let i = 0; i < D.k; i++) {
    const idx = p * D.k + i, prob = D.pred.probs[idx];
    const bar = el("span", { class: "pbar", "aria-hidden": "true" }, el("span"));
    bar.firstChild.style.width = fmtPct(Math.max(0, Math.min(1, prob)));
    list.append(el("li", {}, el("button", {
      type: "button", class: "pred" + (i === j ? " is-active" : ""), "data-j": i,
      "aria-pressed": String(i === j), title: "Show this prediction's logit attribution",
    }, el("span", { class: "mono", text: displayToken(D.strings[D.pred.ids[idx]]) }), bar, el("span", { class: "num", text: fmtPct(prob) }))));
  }
  const base = (p * D.k + j) * V.G;
  const attr = [];
  for (let src = 0; src < V.G; src++) if (V.first[src] <= p) attr.push({ src, v: V.logitAttr[base + src] });
  attr.sort((a, b) => Math.abs(b.v) - Math.abs(a.v));
  const top = attr.slice(0, 12), rest = attr.slice(12).reduce((x, a) => x + a.v, 0);
  const maxAbs = Math.max(1e-9, ...top.map((a) => Math.abs(a.v)), Math.abs(rest));
  const chart = el("div", { class: "attr-chart", role: "table", "aria-label": "Per-source logit attribution" });
  const negC = v.dark ? NEG_COLOR.dark : NEG_COLOR.light, posC = v.dark ? POS_COLOR.dark : POS_COLOR.light;
  const addRow = (label, x, color, src) => {
    const neg = el("span", { class: "attr-neg" }), pos = el("span", { class: "attr-pos" });
    const b = el("span", { class: "attr-bar" });
    b.style.width = `${(Math.abs(x) / maxAbs) * 100}%`;
    b.style.background = x < 0 ? negC : posC;
    (x < 0 ? neg : pos).append(b);
    chart.append(el("div", { class: "attr-row", role: "row", "data-src": src },
      el("span", { class: "attr-label mono", role: "cell" }, swatch(color), el("span", { text: label })), neg, pos,
      el("span", { class: "num", role: "cell", text: (x >= 0 ? "+" : "") + x.toFixed(2) })));
  };
  for (const a of top) addRow(labels[a.src], a.v, v.colorOf(a.src), a.src);
  if (attr.length > 12) addRow(`${attr.length - 12} other sources`, rest, v.theme.neutral, -1);
  box.replaceChildren(head, list,
    el("p", { class: "muted" }, el("span", { text: "Logit of " }), el("span", { class: "mono", text: displayToken(D.strings[D.pred.ids[p * D.k + j]]) }),
      el("span", { text: ` = ${D.pred.logits[p * D.k + j].toFixed(2)}, by source${V.exact ? "" : " (exact: logits are linear)"}:` })),
    chart);
}

// ----------------------------------------------------------------------------- a cell

/** The quantization step of cell (l, k, p) in the current metric, or 0 when not quantized. */
export function cellStep(v, l, k, p) {
  const qz = v.V.quant && v.V.quant[v.state.metric];
  if (!qz) return 0;
  return qz.scale[(l * 2 + k) * v.D.P + p] / qz.q;
}

/** Tooltip / pinned-cell content for one cell. */
export function cellContent(v, cell, { chart = false } = {}) {
  const { D, V, state: s, labels } = v;
  const { l, k, p } = cell;
  const frag = document.createDocumentFragment();
  frag.append(el("div", { class: "tt-head" },
    el("strong", { text: `Layer ${l} ${k === 0 ? "attention" : "MLP"}` }),
    el("span", { text: ` · position ${p} ` }), el("span", { class: "mono tok-inline", text: v.tokenLabels[p] })));
  const rows = cellSources(V, D.P, s.metric, v.hidden, l, k, p, s.shown);
  const step = cellStep(v, l, k, p);
  const table = el("table", { class: "tt-table" });
  const valueName = s.metric === "proj" ? "proj" : s.metric === "delta" ? "\u2016delta\u2016" : "\u2016norm\u2016";
  table.append(el("tr", {}, el("th", { text: "source" }), el("th", { text: shareColumn(v) }), el("th", { text: valueName })));
  const showRows = rows.slice(0, 6);
  if (v.traceSrc >= 0 && !showRows.some((r) => r.s === v.traceSrc)) {
    const r = rows.find((x) => x.s === v.traceSrc);
    if (r) showRows.push(r);
  }
  for (const r of showRows) {
    table.append(el("tr", { class: r.s === v.traceSrc ? "is-traced" : r.hidden ? "is-hidden" : "", "data-src": r.s },
      el("td", { class: "mono" }, r.hidden ? hatchSwatch() : swatch(v.colorOf(r.s)),
        el("span", { text: r.hidden ? `${labels[r.s]} (hidden)` : labels[r.s] })),
      el("td", { class: "num", text: fmtPct(r.share) }),
      el("td", { class: "num", text: step ? fmtStored(r.value, step) : fmtNum(r.value) })));
  }
  if (rows.length > showRows.length) table.append(el("tr", {}, el("td", { class: "muted", colspan: 3, text: `… ${rows.length - showRows.length} more sources` })));
  frag.append(table);
  const hid = hiddenSentence(v, l, k, p);
  if (hid) frag.append(el("p", { class: "tt-hidden muted", text: hid }));
  frag.append(el("p", { class: "tt-foot muted", text: step
    ? `Stored in 8 bits: values are within ±${fmtStored(step / 2, step / 10)} (1/${s.metric === "proj" ? 254 : 510} of this cell's largest).`
    : (V.exact ? "" : "Custom groups: approximate (sum of norms).") }));
  if (D.lens) {
    const lens = el("ol", { class: "lens" });
    const base = ((l * 2 + k) * D.P + p) * D.k;
    for (let j = 0; j < Math.min(5, D.k); j++) {
      lens.append(el("li", {}, el("span", { class: "mono tok-inline", text: displayToken(D.strings[D.lens.ids[base + j]]) }),
        el("span", { class: "num", text: ` ${fmtPct(D.lens.probs[base + j])}` })));
    }
    frag.append(el("div", { class: "tt-lens" }, el("span", { class: "muted", text: "logit lens: " }), lens));
  } else if (D.lensRaw) {
    frag.append(el("div", { class: "tt-lens muted", text: "logit lens: loading\u2026" }));   // data.js ensureLens
  }
  if (chart && v.traceSrc >= 0) frag.append(traceChart(v, p));
  return frag;
}

/** The traced source's share over the layers at position p: attention and MLP lines (SVG). */
function traceChart(v, p) {
  const { D, V, state: s } = v;
  const series = traceSeries(V, D.L, D.P, s.metric, v.hidden, v.traceSrc, p, s.shown);
  const W = 300, H = 120, m = { l: 34, r: 8, t: 8, b: 22 };
  const lo = s.metric === "proj" ? Math.min(0, ...[...series.attn, ...series.mlp].filter(Number.isFinite)) : 0;
  const hi = Math.max(s.metric === "proj" ? 0.05 : 1e-9, ...[...series.attn, ...series.mlp].filter(Number.isFinite));
  const x = (l) => m.l + (l / Math.max(1, D.L - 1)) * (W - m.l - m.r);
  const y = (val) => H - m.b - ((val - lo) / (hi - lo || 1)) * (H - m.t - m.b);
  const path = (a) => {
    let d = "";
    a.forEach((val, l) => { if (Number.isFinite(val)) d += `${d ? "L" : "M"}${x(l).toFixed(1)},${y(val).toFixed(1)}`; });
    return d;
  };
  const color = v.colorOf(v.traceSrc);
  const svg = svgEl("svg", { class: "trace-chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `${v.labels[v.traceSrc]}'s share over the layers at position ${p}` },
    svgEl("line", { x1: m.l, x2: W - m.r, y1: y(lo), y2: y(lo), class: "axis" }),
    svgEl("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: "axis" }),
    svgEl("text", { x: m.l - 4, y: y(hi) + 4, "text-anchor": "end", text: fmtPct(hi) }),
    svgEl("text", { x: m.l - 4, y: y(lo) + 4, "text-anchor": "end", text: fmtPct(lo) }),
    svgEl("text", { x: m.l, y: H - 6, text: "layer 0" }),
    svgEl("text", { x: W - m.r, y: H - 6, "text-anchor": "end", text: `layer ${D.L - 1}` }),
    svgEl("path", { d: path(series.attn), stroke: color, fill: "none", "stroke-width": 2 }),
    svgEl("path", { d: path(series.mlp), stroke: color, fill: "none", "stroke-width": 1.5, "stroke-dasharray": "4 3" }));
  return el("div", { class: "trace-box" },
    el("p", { class: "muted", text: `${v.labels[v.traceSrc]}: ${s.metric === "proj" ? "signed share" : shareOf(v)} at position ${p} by layer (solid: attention, dashed: MLP)` }), svg);
}

function renderCell(v, box) {
  const pin = v.state.pin;
  if (!pin) {
    box.replaceChildren(el("p", { class: "muted", text: "Click a cell (or press Enter on the focused one) to pin it." }));
    return;
  }
  box.replaceChildren(cellContent(v, pin, { chart: true }),
    el("button", { type: "button", class: "unpin", text: "Unpin", onclick: () => v.set({ pin: null }) }));
}

// ----------------------------------------------------------------------------- summary table

function renderSummary(v, box) {
  const { D, V, labels } = v;
  const frag = document.createDocumentFragment();
  for (let p = 0; p < D.P; p++) {
    const rows = cellSources(V, D.P, "norm", v.hidden, D.L - 1, 1, p, v.state.shown).filter((r) => !r.hidden).slice(0, 3);
    frag.append(el("tr", {}, el("td", { text: String(p) }), el("td", { text: v.tokenLabels[p] }),
      el("td", { text: rows.map((r) => `${labels[r.s]} ${fmtPct(r.share)}`).join(", ") })));
  }
  box.replaceChildren(frag);
}

// ----------------------------------------------------------------------------- controls

function renderControls(v) {
  const s = v.state, $ = (id) => document.getElementById(id);
  for (const r of document.querySelectorAll('input[name="metric"]')) r.checked = r.value === s.metric;
  $("grouping").value = s.variant;
  $("order").value = s.order;
  $("share-of").value = s.shown ? "shown" : "whole";
  $("emph").setAttribute("aria-pressed", String(s.emph === "mlp"));
  $("heat").setAttribute("aria-pressed", String(s.heat));
  $("heat").disabled = s.trace === null;
  applyRoving($("toolbar"), toolbarControls);      // one Tab stop (roving.js)
  $("heat").title = s.trace === null ? "Trace a source first (click a token)" : "Heat map of the traced source's share";
  $("custom-groups").hidden = s.variant !== "custom";
  $("selection-label").textContent = v.selection ? ` selected tokens ${v.selection[0]}–${v.selection[1]}` : " no selection";
  const V = v.V;
  let t = `Information-flow grid: ${v.D.P} token positions by ${2 * v.D.L} sublayers (${v.D.L} layers, attention and MLP, layer 0 at the bottom), `
    + `showing ${METRICS[s.metric]} per source, grouping ${V.label}.`;
  if (v.traceSrc >= 0) t += ` Tracing source ${v.labels[v.traceSrc]}.`;
  $("grid").setAttribute("aria-label", t + " A table of the top sources per position follows.");
}

// ----------------------------------------------------------------------------- registry

const DRAWN = ["colors"];   // "shown" is a data key: it marks "colors" too
export const PANELS = [
  { id: "controls", deps: ["*"], render: renderControls },
  { id: "token-strip", deps: [...DRAWN, "selection"], render: renderStrip },
  { id: "grid-caption", deps: [...DRAWN], render: renderCaption },
  depthPanel,
  lensPanel,
  { id: "legend", title: "Legend", deps: [...DRAWN], render: renderLegend },
  { id: "predictions", title: "Predictions", deps: [...DRAWN, "pred", "predChoice"], render: renderPredictions },
  { id: "cell-detail", title: "Pinned cell", deps: [...DRAWN, "pin"], render: renderCell },
  { id: "summary", deps: ["variant", "custom", "hidden", "trace"], render: renderSummary, idle: true, box: () => document.querySelector("#summary-table tbody") },
];

/** Add a panel (see the top of this file). Call before mountViewer. */
export function registerPanel(panel) {
  if (!panel.id || typeof panel.render !== "function") throw new Error("a panel needs an id and a render(viewer, box)");
  PANELS.push({ deps: ["*"], ...panel });
}

