// Attention, all heads at once (issue 24, item 4): for the pinned attention cell's layer, every
// head's full query x key pattern as small multiples (as CircuitsVis draws them), from the
// per-head file the heads panel already fetches, with each head's standard scores
// (docs/viewer.md): previous-token, induction and first-token (sink). A click opens the head in
// the Heads panel (its pattern at the pinned position, and "Trace head").
import { el } from "./dom.js";
import { registerPanel } from "./panels.js";
import { heads } from "./heads.js";
import { rampIndex } from "./compute.js";
import { fmtPct } from "./format.js";

/** Head (l, h)'s scores from its pattern A (data: L·H·P·P, rows = queries), tokens: the prompt's.
 * prev: mean over queries q >= 1 of A[q, q-1]; sink: mean over q >= 1 of A[q, 0]; induction: mean
 * over queries whose token occurred before (last at j, j + 1 < q) of A[q, j + 1], or null. */
export function headScores(A, H, P, l, h, tokens) {
  const w = (q, k) => A.data[((l * H + h) * P + q) * P + k];
  let prev = 0, sink = 0, ind = 0, nInd = 0;
  const last = new Map();
  for (let q = 0; q < P; q++) {
    if (q >= 1) { prev += w(q, q - 1); sink += w(q, 0); }
    const j = last.get(tokens[q]);
    if (j !== undefined && j + 1 < q) { ind += w(q, j + 1); nInd++; }
    last.set(tokens[q], q);
  }
  const n = Math.max(1, P - 1);
  return { prev: prev / n, sink: sink / n, induction: nInd ? ind / nInd : null };
}

function drawPattern(canvas, A, H, P, l, h, ramp) {
  const ctx = canvas.getContext("2d"), c = canvas.width / P;
  ctx.fillStyle = ramp[0];
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let q = 0; q < P; q++) {
    const row = ((l * H + h) * P + q) * P;
    for (let k = 0; k <= q; k++) {
      ctx.fillStyle = ramp[rampIndex(A.data[row + k], 0, 1, ramp.length)];
      ctx.fillRect(k * c, q * c, Math.ceil(c), Math.ceil(c));
    }
  }
}

function render(v, box) {
  const pin = v.state.pin;
  if (!pin || pin.k !== 0) {
    box.replaceChildren(el("p", { class: "muted", text: "Pin an attention cell: every head of its layer appears here." }));
    return;
  }
  const got = heads(v);
  if (!got) {
    box.replaceChildren(el("p", { class: "muted", text: v.headState && v.headState.error ? v.headState.error : "Loading the per-head data\u2026" }));
    return;
  }
  const { HD } = got, { D } = v, P = D.P, l = pin.l, H = HD.H;
  const seq = (box.seq = (box.seq || 0) + 1);
  HD.pattern().then((A) => {
    if (seq !== box.seq) return;                       // a newer render owns the box
    const px = Math.max(2, Math.min(8, Math.floor(96 / P)));
    const grid = el("div", { class: "head-grid", role: "list", "aria-label": `Layer ${l}: every head's attention pattern` });
    for (let h = 0; h < H; h++) {
      const sc = headScores(A, H, P, l, h, D.tokens);
      const canvas = el("canvas", { class: "head-pattern", width: P * px, height: P * px, "data-head": h,
        role: "img", "aria-label": `Head ${l}.${h}: queries down, keys across` });
      drawPattern(canvas, A, H, P, l, h, v.seqRamp);
      const open = () => { v.headPick = { l, p: pin.p, h }; v.set({}, { push: false, changed: ["heads"] }); };
      const item = el("button", { type: "button", class: "head-cell", role: "listitem", "data-head": h,
        title: `Open head ${l}.${h} in the Heads panel`, onclick: open },
      el("span", { class: "head-name mono", text: `${l}.${h}` }), canvas,
      el("span", { class: "head-scores", "data-prev": sc.prev, "data-induction": sc.induction ?? "", "data-sink": sc.sink,
        text: `prev ${fmtPct(sc.prev)} · ind ${sc.induction === null ? "n/a" : fmtPct(sc.induction)} · sink ${fmtPct(sc.sink)}` }));
      grid.append(item);
    }
    box.replaceChildren(el("p", { class: "muted", text: `Layer ${l}: each head's frozen attention, queries down, keys across (dark: more). `
      + "Scores: prev = attention to the previous token, ind = to the token after the current token's earlier occurrence (induction), "
      + "sink = to the first token; each the mean over queries. Click a head to open it." }), grid);
  }, (e) => box.replaceChildren(el("p", { class: "error-box", text: e.message })));
}

registerPanel({ id: "head-grid", title: "Attention patterns", deps: ["pin", "heads", "theme", "variant"], render });
