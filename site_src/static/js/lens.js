// The logit lens overview (issue 24, item 6): for one token, its probability and its rank in the
// logit lens of the last position after every sublayer (final norm and unembedding applied to the
// residual there), as a small canvas chart beside the depth chart.
//
// The tokens: the data file's `lens_last` (data.js D.lensLast): the last position's top-k
// predictions and the prompt's declared target. Default: the shown prediction. On the live page,
// options.lensToken(text) computes any one-token text (worker.js "lensToken"), added to the list.
// Test hook: the canvas's `lensDrawn` holds the values and the pixel positions drawn.
import { el } from "./dom.js";
import { displayToken, fmtPct } from "./format.js";

const W = 260, H = 150, M = { l: 40, r: 10, t: 8, b: 24 }, GAP = 12;
const PROB_H = 56;                       // the probability plot's height; the rank plot takes the rest

/** The tokens the chart can show: [{text, probs, ranks (Float32Array / Int32Array (L·2)), target, computed}]. */
export function lensTokens(v) {
  const D = v.D, t = D.lensLast, out = [];
  if (t) {
    const n = D.L * 2;
    for (let i = 0; i < t.ids.length; i++) {
      out.push({ text: D.strings[t.ids[i]], probs: t.probs.subarray(i * n, (i + 1) * n),
        ranks: t.ranks.subarray(i * n, (i + 1) * n), target: t.target === i, computed: false });
    }
  }
  return out.concat(v.lensExtra || []);
}

/** The geometry of the chart for L layers and a rank axis up to `vocab`: pixel of each value. */
export function lensAxes(L, probTop, vocab) {
  const x = (t) => M.l + (t / L) * (W - M.l - M.r);
  const p0 = M.t + PROB_H, yProb = (p) => p0 - (p / probTop) * PROB_H;
  const r0 = p0 + GAP, r1 = H - M.b, logMax = Math.log10(Math.max(10, vocab));
  const yRank = (r) => r0 + (Math.log10(Math.max(1, r)) / logMax) * (r1 - r0);   // rank 1 at the top
  return { x, yProb, yRank, p0, r0, r1, logMax };
}

/** Round a probability up to a readable axis end (the axis says it: the plot is not renormalised). */
function axisTop(max) {
  for (const t of [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1]) if (max <= t) return t;
  return 1;
}

function draw(canvas, v, tok) {
  const D = v.D, th = v.theme, dpr = window.devicePixelRatio || 1;
  canvas.width = W * dpr;
  canvas.height = H * dpr;
  canvas.style.width = `${W}px`;
  canvas.style.height = `${H}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const probTop = axisTop(Math.max(...tok.probs));
  const vocab = (D.model && D.model.vocab) || Math.max(...tok.ranks);
  const ax = lensAxes(D.L, probTop, vocab);
  ctx.font = "10px system-ui, sans-serif";
  ctx.strokeStyle = th.muted;
  ctx.fillStyle = th.muted;
  ctx.lineWidth = 1;
  const hline = (y) => { ctx.beginPath(); ctx.moveTo(M.l, y + 0.5); ctx.lineTo(W - M.r, y + 0.5); ctx.stroke(); };
  hline(ax.p0);
  hline(ax.r1);
  ctx.textAlign = "right";
  ctx.fillText(fmtPct(probTop), M.l - 4, ax.yProb(probTop) + 4);
  ctx.fillText("0%", M.l - 4, ax.p0 + 3);
  ctx.fillText("rank 1", M.l - 4, ax.r0 + 4);
  ctx.fillText(`${Math.round(10 ** ax.logMax)}`, M.l - 4, ax.r1 + 3);
  ctx.textAlign = "center";
  const ticks = [];
  for (let l = 0; l <= D.L; l += 5) {               // ticks every 5 layers
    ticks.push([l, ax.x(l)]);
    ctx.beginPath(); ctx.moveTo(ax.x(l) + 0.5, ax.r1); ctx.lineTo(ax.x(l) + 0.5, ax.r1 + 4); ctx.stroke();
    ctx.fillText(String(l), ax.x(l), ax.r1 + 14);
  }
  const points = [];
  for (let l = 0; l < D.L; l++) {
    for (let k = 0; k < 2; k++) {
      const i = 2 * l + k, t = l + (k ? 1 : 0.5);
      points.push({ l, k, prob: tok.probs[i], rank: tok.ranks[i], x: ax.x(t), yProb: ax.yProb(tok.probs[i]), yRank: ax.yRank(tok.ranks[i]) });
    }
  }
  const line = (key, color, width) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    points.forEach((pt, n) => (n ? ctx.lineTo(pt.x, pt[key]) : ctx.moveTo(pt.x, pt[key])));
    ctx.stroke();
  };
  line("yProb", th.accent, 2);
  line("yRank", th.fg, 1.5);
  canvas.lensDrawn = { token: tok.text, points, probTop, vocab, L: D.L, ticks,
    box: { W, H, left: M.l, right: W - M.r, p0: ax.p0, probH: PROB_H, r0: ax.r0, r1: ax.r1, logMax: ax.logMax } };
  return { ax, points };
}

/** The nearest sublayer to a pointer's x, in the chart's own units. */
function nearest(points, x) {
  let best = null;
  for (const pt of points) if (!best || Math.abs(pt.x - x) < Math.abs(best.x - x)) best = pt;
  return best;
}

function picker(v, tokens, current, redraw) {
  const sel = el("select", { class: "lens-pick", "aria-label": "Token whose logit lens is shown" });
  tokens.forEach((t, i) => sel.append(el("option", { value: String(i),
    text: `${displayToken(t.text)}${t.target ? " (declared target)" : ""}${t.computed ? " (computed here)" : ""}` })));
  sel.value = String(current);
  sel.addEventListener("change", () => { v.lensPick = +sel.value; redraw(); });
  return sel;
}

/** The live page's "any token" box: options.lensToken(text) -> {text, probs, ranks}. */
function anyToken(v, redraw) {
  const input = el("input", { type: "text", class: "lens-any", "aria-label": "Any one-token text", placeholder: "any token, e.g. \u2423Paris" });
  const go = el("button", { type: "button", class: "lens-any-go", text: "Show" });
  const note = el("span", { class: "lens-any-note muted", role: "status" });
  const run = async () => {
    const text = input.value.replace(/\u2423/g, " ");
    if (!text) return;
    go.disabled = true;
    note.textContent = " computing\u2026";
    try {
      const r = await v.options.lensToken(text);
      v.lensExtra = [...(v.lensExtra || []).filter((t) => t.text !== r.text), { ...r, target: false, computed: true }];
      v.lensPick = lensTokens(v).findIndex((t) => t.computed && t.text === r.text);
      note.textContent = "";
      redraw();
    } catch (e) {
      note.textContent = ` ${e.message}`;
    } finally {
      go.disabled = false;
    }
  };
  go.addEventListener("click", run);
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); run(); } });
  return el("p", { class: "lens-any-row" }, input, go, note);
}

function render(v, box) {
  const D = v.D, tokens = lensTokens(v);
  if (!tokens.length) {
    box.replaceChildren(el("p", { class: "muted", text: "This data file has no logit lens of the last position (rebuild it with this version of infoflow)." }));
    return;
  }
  // default: the shown prediction (its row among the top k), while it is the last position's
  const shownJ = v.answerPos === D.P - 1 ? v.answerJ || 0 : 0;
  const current = v.lensPick != null && v.lensPick < tokens.length ? v.lensPick : shownJ;
  const redraw = () => render(v, box);
  const tok = tokens[current];
  const canvas = el("canvas", { class: "lens-canvas", role: "img",
    "aria-label": `Logit lens of ${displayToken(tok.text)} at the last position: probability and rank after every sublayer` });
  const { points } = draw(canvas, v, tok);
  const last = points[points.length - 1];
  const readout = el("p", { class: "depth-readout lens-readout", "aria-live": "polite",
    text: `After the last layer: ${fmtPct(last.prob)}, rank ${last.rank}. Hover for each sublayer.` });
  canvas.addEventListener("pointermove", (e) => {
    const r = canvas.getBoundingClientRect(), pt = nearest(points, ((e.clientX - r.left) / r.width) * W);
    if (pt) readout.textContent = `Layer ${pt.l} ${pt.k ? "MLP" : "attention"}: ${fmtPct(pt.prob)}, rank ${pt.rank}`;
  });
  const probKey = el("span", { class: "lens-key-prob", text: "probability" });
  const rankKey = el("span", { class: "lens-key-rank", text: "rank" });
  probKey.style.color = v.theme.accent;
  rankKey.style.color = v.theme.fg;
  box.replaceChildren(...[
    el("p", { class: "depth-title" }, el("strong", { text: "Logit lens" }),
      el("span", { text: ` at ${v.tokenLabels ? v.tokenLabels[D.P - 1] : D.tokens[D.P - 1]} (last position), every sublayer: ` }),
      probKey, el("span", { text: " (top, linear), " }), rankKey, el("span", { text: " of all tokens (bottom, log)" })),
    el("p", { class: "lens-pick-row" }, el("span", { class: "muted", text: "Token " }), picker(v, tokens, current, redraw)),
    v.options && typeof v.options.lensToken === "function" ? anyToken(v, redraw) : null,
    canvas, readout].filter(Boolean));
}

export const lensPanel = { id: "lens-chart", deps: ["colors", "pred", "predChoice"], render };
