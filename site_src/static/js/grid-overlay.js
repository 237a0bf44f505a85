// The grid's overlay canvas: hovered row and column, focus and pin outlines, and the highlighted
// source (a veil over the plot with that source's segments cut out). Drawn without touching the
// data canvas, so hover never repaints the data.
import { MARGIN, rowLabel } from "./grid.js";

export function drawOverlay(grid) {
  const ctx = grid.octx, C = grid.colors, dpr = grid.dpr;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, grid.over.width, grid.over.height);
  if (!grid.L || !grid.P) return;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const g = grid.geometry(dpr), v = grid.view, o = grid.overlay;
  ctx.save();
  ctx.beginPath();
  ctx.rect(MARGIN.left, MARGIN.top, grid.plotW, grid.plotH);
  ctx.clip();
  if (o.source >= 0) drawSourceHighlight(grid, ctx, g, o.source);
  const hv = o.hover;
  if (hv) {
    const r = 2 * hv.l + hv.k;
    ctx.fillStyle = C.highlight;
    if (hv.l >= 0 && !Number.isNaN(g.ry[r])) ctx.fillRect(MARGIN.left, g.ry[r], grid.plotW, g.rh[r]);
    ctx.fillRect(MARGIN.left + hv.p * g.colW - v.x, MARGIN.top, g.cw, grid.plotH);
  }
  for (const [cell, color, width] of [[o.focus, C.focus, 1.5], [o.pin, C.pin, 2.5]]) {
    if (!cell) continue;
    const r = 2 * cell.l + cell.k;
    if (Number.isNaN(g.ry[r])) continue;
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.strokeRect(MARGIN.left + cell.p * g.colW - v.x - 0.5, g.ry[r] - 0.5, g.cw + 1, g.rh[r] + 1);
  }
  ctx.restore();
  if (hv && hv.l >= 0 && !Number.isNaN(g.ry[2 * hv.l + hv.k])) {   // the hovered row's label
    const r = 2 * hv.l + hv.k, y = g.ry[r] + g.rh[r] / 2;
    ctx.font = "bold 10.5px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const label = rowLabel(hv.l, hv.k), w = ctx.measureText(label).width;
    ctx.fillStyle = C.bg;
    ctx.fillRect(MARGIN.left - 9 - w, y - 7, w + 6, 14);
    ctx.fillStyle = C.fg;
    ctx.fillText(label, MARGIN.left - 6, y);
  }
}

/** A veil over the plot with the source's segments cut out, so they stand out. */
export function drawSourceHighlight(grid, ctx, g, source) {
  const P = grid.P;
  ctx.fillStyle = grid.colors.veil;
  ctx.fillRect(MARGIN.left, MARGIN.top, grid.plotW, grid.plotH);
  const b = grid.data.batches.find((x) => x.source === source);
  if (!b) return;
  const it = b.items, v = grid.view;
  ctx.save();
  ctx.globalCompositeOperation = "destination-out";
  ctx.fillStyle = "#000";
  ctx.beginPath();
  for (let o = 0; o < b.n * 5; o += 5) {
    const cell = it[o], r = (cell / P) | 0, p = cell - r * P;
    if (p < g.p0 || p > g.p1 || Number.isNaN(g.ry[r])) continue;
    const x = MARGIN.left + p * g.colW - v.x;
    ctx.rect(x + it[o + 1] * g.cw, g.ry[r] + it[o + 3] * g.rh[r], (it[o + 2] - it[o + 1]) * g.cw, (it[o + 4] - it[o + 3]) * g.rh[r]);
  }
  ctx.fill();
  ctx.restore();
}
