// The depth chart (issue 24, item 3): always on screen beside the grid, the share of one source
// at the shown prediction's position after every sublayer, and the layer where it arrives.
//
// The source is the traced one, else the one adding most to the shown prediction (answer.js, the
// first colour). "Arrives at layer n": the first sublayer where its share reaches half its final
// value (after the last layer).
import { el, svgEl } from "./dom.js";
import { traceSeries } from "./compute.js";
import { fmtPct } from "./format.js";
import { shareOf } from "./share-text.js";
import { hasVocabMean } from "./answer.js";

const W = 260, H = 170, M = { l: 40, r: 10, t: 10, b: 30 };

/** The source the chart shows, or -1. */
export function depthSource(v) {
  if (v.traceSrc >= 0) return v.traceSrc;
  return v.answerSources && v.answerSources.length ? v.answerSources[0] : -1;
}

/** [{l, k, x, y}] one point per sublayer (x: attention at l + 0.5, MLP at l + 1), NaN before s starts. */
export function depthPoints(v, s, p) {
  const { D, V, state } = v;
  const series = traceSeries(V, D.L, D.P, state.metric, v.hidden, s, p, state.shown);
  const pts = [];
  for (let l = 0; l < D.L; l++) {
    pts.push({ l, k: 0, x: l + 0.5, y: series.attn[l] });
    pts.push({ l, k: 1, x: l + 1, y: series.mlp[l] });
  }
  return pts;
}

/** The first point whose value reaches half the final one, or null (nothing to reach). */
export function arrival(pts) {
  const final = pts[pts.length - 1].y;
  if (!(final > 0)) return null;
  return pts.find((pt) => pt.y >= final / 2) || null;
}

function render(v, box) {
  const { D, state: s } = v, src = depthSource(v), p = v.answerPos ?? D.P - 1;
  if (src < 0 || v.V.first[src] > p) {
    box.replaceChildren(el("p", { class: "muted", text: "Click a token to see its share layer by layer." }));
    return;
  }
  const pts = depthPoints(v, src, p), ok = pts.filter((pt) => Number.isFinite(pt.y));
  const lo = Math.min(0, ...ok.map((pt) => pt.y)), hi = Math.max(1e-9, ...ok.map((pt) => pt.y));
  const x = (t) => M.l + (t / D.L) * (W - M.l - M.r);
  const y = (val) => H - M.b - ((val - lo) / (hi - lo || 1)) * (H - M.t - M.b);
  const color = v.colorOf(src), name = v.labels[src];
  const what = s.metric === "proj" ? "signed share" : shareOf(v);
  const svg = svgEl("svg", { class: "depth-svg", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `${name}'s ${what} at position ${p}, after every sublayer` },
  svgEl("line", { x1: M.l, x2: W - M.r, y1: y(lo), y2: y(lo), class: "axis" }),
  svgEl("line", { x1: M.l, x2: M.l, y1: M.t, y2: H - M.b, class: "axis" }),
  svgEl("text", { x: M.l - 4, y: y(hi) + 4, "text-anchor": "end", text: fmtPct(hi) }),
  svgEl("text", { x: M.l - 4, y: y(lo) + 4, "text-anchor": "end", text: fmtPct(lo) }),
  svgEl("text", { x: (M.l + W - M.r) / 2, y: H - 2, "text-anchor": "middle", class: "muted", text: "layer" }));
  for (let l = 0; l <= D.L; l += 5) {                // ticks every 5 layers
    svg.append(svgEl("line", { x1: x(l), x2: x(l), y1: H - M.b, y2: H - M.b + 4, class: "axis tick", "data-layer": l }),
      svgEl("text", { x: x(l), y: H - M.b + 14, "text-anchor": "middle", class: "tick-label", text: String(l) }));
  }
  let d = "";
  for (const pt of ok) d += `${d ? "L" : "M"}${x(pt.x).toFixed(1)},${y(pt.y).toFixed(1)}`;
  svg.append(svgEl("path", { d, stroke: color, fill: "none", "stroke-width": 2 }));
  const arr = arrival(ok.length ? ok : pts);
  if (arr) {
    svg.append(svgEl("line", { x1: x(arr.x), x2: x(arr.x), y1: M.t, y2: H - M.b, class: "arrival", "stroke-dasharray": "3 3" }));
  }
  const dot = svgEl("circle", { r: 3.5, cx: -10, cy: -10, fill: color, class: "depth-dot" });
  svg.append(dot);
  const readout = el("p", { class: "depth-readout", "aria-live": "polite", text: "Hover the chart (or focus it and use the arrow keys) for each sublayer's value." });
  // hover: the nearest sublayer's value (a readout, not a tooltip: it stays readable on touch);
  // from the keyboard, the chart is a Tab stop whose arrow keys step through the sublayers
  let at = -1;
  const show = (i) => {
    const best = ok[i];
    if (!best) return;
    at = i;
    dot.setAttribute("cx", x(best.x));
    dot.setAttribute("cy", y(best.y));
    readout.textContent = `Layer ${best.l} ${best.k ? "MLP" : "attention"}: ${fmtPct(best.y)}`;
  };
  svg.addEventListener("pointermove", (e) => {
    const r = svg.getBoundingClientRect(), t = ((e.clientX - r.left) / r.width) * W;
    let best = -1;
    ok.forEach((pt, i) => { if (best < 0 || Math.abs(x(pt.x) - t) < Math.abs(x(ok[best].x) - t)) best = i; });
    show(best);
  });
  svg.setAttribute("tabindex", "0");
  svg.addEventListener("focus", () => show(at < 0 ? ok.length - 1 : at));
  svg.addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 }[e.key];
    if (step === undefined && e.key !== "Home" && e.key !== "End") return;
    e.preventDefault();
    e.stopPropagation();                     // the grid's arrow keys are the page's otherwise (events.js)
    show(e.key === "Home" ? 0 : e.key === "End" ? ok.length - 1 : Math.max(0, Math.min(ok.length - 1, at + step)));
  });
  box.replaceChildren(
    el("p", { class: "depth-title" }, el("strong", { class: "mono", text: name }),
      el("span", { text: ` ${what} at position ${p}${v.traceSrc >= 0 ? " (traced)" : ` (top source of the prediction, by ${hasVocabMean(v.V, D, p) ? "demeaned logit" : `logit minus the top-${D.k} mean`})`}` })),
    el("p", { class: "depth-arrival", text: arr ? `arrives at layer ${arr.l} (${arr.k ? "MLP" : "attention"}): half of its final ${fmtPct(ok[ok.length - 1].y)}` : "" }),
    svg, readout);
}

export const depthPanel = { id: "depth-chart", deps: ["colors", "pin", "pred", "predChoice"], render };
