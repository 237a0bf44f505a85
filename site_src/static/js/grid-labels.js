// The grid's text, drawn on the data canvas: row labels, token labels, axis titles and the
// next-token box. Functions of the Grid (grid.js), which calls them from drawBase().
import { displayToken } from "./format.js";
import { MARGIN, rowLabel } from "./grid.js";

const truncate = (t, n = 13) => (t.length > n ? t.slice(0, n - 1) + "\u2026" : t);

export function drawRowLabels(grid, ctx, g) {
  const C = grid.colors, R = 2 * grid.L;
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, MARGIN.top - 1, MARGIN.left, grid.plotH + 2);
  ctx.clip();
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  // which rows get a label, then one font at a time: layer 0 and every fifth layer's first
  // row always (issue 24, item 3), then any other row at least 10 px from the labels kept
  const rows = [], mid = (r) => g.ry[r] + g.rh[r] / 2;
  const kept = [];
  for (let r = 0; r < R; r += 2) {
    if ((r >> 1) % 5 === 0 && !Number.isNaN(g.ry[r])) kept.push(mid(r));
  }
  for (let r = 0; r < R; r++) {
    if (Number.isNaN(g.ry[r])) continue;
    const y = mid(r), always = (r & 1) === 0 && (r >> 1) % 5 === 0;
    if (!always && kept.some((ky) => Math.abs(ky - y) < 10)) continue;
    if (!always) kept.push(y);
    rows.push([r, y]);
  }
  grid.labelledRows = rows.map(([r]) => r);   // for the tests: which rows carry a label
  for (const emph of [true, false]) {
    ctx.font = `${emph ? "bold 10.5" : "9.5"}px system-ui, sans-serif`;
    ctx.fillStyle = emph ? C.fg : C.muted;
    for (const [r, y] of rows) {
      if (((r & 1) === 0) === (grid.emph === "attn") === emph) ctx.fillText(rowLabel(r >> 1, r & 1), MARGIN.left - 6, y);
    }
  }
  ctx.restore();
}

export function drawAxisTitles(grid, ctx) {
  const C = grid.colors;
  ctx.save();
  ctx.fillStyle = C.muted;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.translate(10, MARGIN.top + grid.plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.fillText("layer \u2191 (sublayers: attention, then MLP)", 0, 0);
  ctx.restore();
  ctx.save();
  ctx.fillStyle = C.muted;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.textBaseline = "bottom";
  ctx.fillText("token position \u2192", MARGIN.left + grid.plotW, grid.cssH - 3);
  ctx.restore();
}

/** `t`, cut with an ellipsis to `room` CSS px in the current font (so the clip never cuts its
 * start off); memoized per font, as the grid redraws its labels on every pan and zoom. */
function fitLabel(grid, ctx, t, room) {
  const key = `${ctx.font}|${room}|${t}`, memo = grid.labelFit || (grid.labelFit = new Map());
  let out = memo.get(key);
  if (out !== undefined) return out;
  out = t;
  if (ctx.measureText(t).width > room) {
    const chars = Array.from(t);                  // by code point: never half an emoji
    while (chars.length > 1 && ctx.measureText(chars.join("") + "\u2026").width > room) chars.pop();
    out = chars.join("") + "\u2026";
  }
  if (memo.size > 4096) memo.clear();
  memo.set(key, out);
  return out;
}

export function drawTokenLabels(grid, ctx, g) {
  const C = grid.colors, d = grid.data;
  const { p0, p1, colW, cw } = g;
  const top = MARGIN.top + grid.plotH + 3;
  ctx.save();
  ctx.beginPath();
  ctx.rect(MARGIN.left - 2, top - 3, grid.plotW + 4, MARGIN.bottom - 14);
  ctx.clip();
  const step = colW >= 9 ? 1 : Math.ceil(9 / colW);
  const room = (MARGIN.bottom - 14 - 11) / Math.sin(Math.PI / 2.6);   // a rotated label's length inside the clip
  // one font per style, set only when it changes (parsing a font string per label is slow)
  const normal = `${Math.min(12, Math.max(9, colW * 0.9))}px system-ui, sans-serif`, bold = `bold ${normal}`;
  let font = normal;
  ctx.font = font;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const base = ctx.getTransform();
  for (let p = p0; p <= p1; p++) {
    const x = MARGIN.left + p * colW - grid.view.x;
    ctx.globalAlpha = d.tokenDim[p] ? 0.35 : 1;
    ctx.fillStyle = d.tokenColor[p] || C.neutral;
    ctx.fillRect(x, top, cw, 7);
    if (d.tokenHidden[p]) {
      ctx.fillStyle = C.bg;
      ctx.fillRect(x + 1, top + 2, Math.max(0, cw - 2), 3);
    }
    const mark = p === d.tokenMark;
    if (p % step && !mark && p !== d.predPos) continue;
    if ((mark ? bold : normal) !== font) ctx.font = font = mark ? bold : normal;
    ctx.translate(x + cw / 2, top + 11);
    ctx.rotate(-Math.PI / 2.6);
    ctx.fillStyle = C.fg;
    const t = fitLabel(grid, ctx, truncate(d.tokenLabels ? d.tokenLabels[p] : displayToken(d.tokens[p])), room);
    ctx.fillText(t, 0, 0);
    if (p === d.predPos) ctx.fillRect(-ctx.measureText(t).width, 6, ctx.measureText(t).width, 1.5);
    ctx.setTransform(base);
  }
  ctx.globalAlpha = 1;
  ctx.restore();
}

export function drawPredictions(grid, ctx, colW) {
  const C = grid.colors, preds = grid.data.predictions;
  if (!preds.length) return;
  // the box points at the last column; when that column is out of view, it says so
  const lastX = MARGIN.left + grid.P * colW - grid.view.x;
  const inView = lastX <= MARGIN.left + grid.plotW + 1;
  // three lines, to keep the grid short enough for one screen; the Predictions panel lists all
  const lineH = 12, n = Math.min(preds.length, 3), boxW = 150;
  const right = Math.max(MARGIN.left + boxW, Math.min(grid.cssW - 2, lastX));
  const y0 = MARGIN.top - 8 - n * lineH;
  ctx.save();
  ctx.font = "bold 10.5px system-ui, sans-serif";
  ctx.fillStyle = C.muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "alphabetic";
  ctx.fillText(inView ? "next token \u2193 last position" : "next token after the last position \u2192", right, y0 - 4);
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  for (let i = 0; i < n; i++) {
    const y = y0 + i * lineH + lineH / 2;
    const { text, prob } = preds[i];
    ctx.fillStyle = C.barBg;
    ctx.fillRect(right - 60, y - 4, 60, 8);
    ctx.fillStyle = C.accent;
    ctx.fillRect(right - 60, y - 4, 60 * Math.max(0, Math.min(1, prob)), 8);
    ctx.fillStyle = C.fg;
    ctx.fillText(`${truncate(displayToken(text))}  ${(prob * 100).toFixed(1)}%`, right - 66, y);
  }
  if (inView) {                    // a tick linking the list to the last column
    ctx.strokeStyle = C.muted;
    ctx.beginPath();
    ctx.moveTo(right - 0.5, MARGIN.top - 6);
    ctx.lineTo(right - 0.5, MARGIN.top);
    ctx.stroke();
  }
  ctx.restore();
}

