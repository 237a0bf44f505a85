// The grid: one data <canvas> (no DOM node per cell) and an overlay canvas above it.
//
// API, after uPlot: set what changed, then commit() once; the grid redraws at most once per
// animation frame, and only the layers whose inputs changed:
//   setData({L, P, batches, tokens, ...})  the cells and labels        -> data canvas
//   setLayout({emph, height})             row heights, canvas size     -> data canvas
//   setView({z, x, y})                    zoom and pan                 -> data canvas
//   setOverlay({hover, focus, pin, source}) hover, focus, pin, highlighted source -> overlay only
//   commit()                              schedule one redraw; flush() draws now
// Hover never repaints the data.
//
// World coordinates: at zoom 1 the grid fits the plot area; columns are positions, rows are
// sublayers (row 0 = L0 attn at the bottom, row 2L-1 = the last MLP at the top).
// Batches come from compute.js: {color, source, items: Float32Array of (cell, x0, x1, y0, y1)},
// x/y fractions of the cell and cell = row * P + position.
import { drawRowLabels, drawTokenLabels, drawAxisTitles, drawPredictions } from "./grid-labels.js";
import { drawOverlay } from "./grid-overlay.js";

// top: the next-token box (3 predictions); bottom: the rotated token labels
export const MARGIN = { left: 80, right: 12, top: 56, bottom: 80 };
/** Readable rows (issue 24, item 3): never under 10 CSS px per layer, so with the 60/40 split
 * no row is under 4 px (the emphasized one 6 px), whatever room the page leaves. */
export const MIN_LAYER_PX = 10;
const BIG_SHARE = 0.6;
const MAX_ZOOM = 64;

const COLOR32 = new Map();
/** "#rrggbb" (or any CSS colour) -> a little-endian RGBA uint32 for Uint32Array pixel buffers. */
export function rgba32(css) {
  let v = COLOR32.get(css);
  if (v !== undefined) return v;
  const [r, g, b] = parseColor(css);
  v = ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
  COLOR32.set(css, v);
  return v;
}

let probe = null;
export function parseColor(css) {
  const m = /^#([0-9a-f]{6})$/i.exec(css.trim());
  if (m) {
    const n = parseInt(m[1], 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  probe = probe || document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  probe.clearRect(0, 0, 1, 1);
  probe.fillStyle = "#000";
  probe.fillStyle = css;
  probe.fillRect(0, 0, 1, 1);
  const d = probe.getImageData(0, 0, 1, 1).data;
  return [d[0], d[1], d[2]];
}

export class Grid {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.over = document.createElement("canvas");
    this.over.className = "grid-overlay";
    this.over.setAttribute("aria-hidden", "true");
    canvas.after(this.over);
    this.octx = this.over.getContext("2d");
    this.L = 0;
    this.P = 0;
    this.view = { z: 1, x: 0, y: 0 };   // zoom; pan in screen px of the zoomed world
    this.emph = "attn";
    this.height = 0;                    // CSS px the canvas may take (0: as tall as L asks)
    this.data = { batches: [], tokens: [], tokenColor: [], tokenDim: [], tokenHidden: [],
      tokenMark: -1, predPos: -1, predictions: [] };
    this.overlay = { hover: null, focus: null, pin: null, source: -1 };
    this.colors = {};
    this.cssW = 300;
    this.cssH = 150;
    this.dpr = 1;
    this.dirty = { base: true, overlay: true };
    this.frame = 0;
    this.lastDraw = 0;
  }

  // ------------------------------------------------------------------ the API

  setData(d) {
    Object.assign(this.data, d);
    if (d.L !== undefined && (d.L !== this.L || d.P !== this.P)) {
      this.L = d.L;
      this.P = d.P;
      this.layout();
    }
    this.dirty.base = this.dirty.overlay = true;
  }

  setTheme(colors) {
    this.colors = colors;
    this.dirty.base = this.dirty.overlay = true;
  }

  setLayout({ emph = this.emph, height = this.height, width = this.cssW, dpr = this.dpr } = {}) {
    if (emph === this.emph && height === this.height && Math.floor(width) === this.cssW && dpr === this.dpr) return;
    this.emph = emph;
    this.height = height;
    this.cssW = Math.max(320, Math.floor(width));
    this.dpr = dpr;
    this.layout();
    this.dirty.base = this.dirty.overlay = true;
  }

  /** Marks the data dirty only when the view moves: a resize that changed nothing repaints nothing. */
  setView(v) {
    const old = this.view;
    this.view = { z: v.z, x: v.x, y: v.y };
    this.clampView();
    const n = this.view;
    if (!old || old.z !== n.z || old.x !== n.x || old.y !== n.y) this.dirty.base = this.dirty.overlay = true;
  }

  setOverlay(o) {
    for (const [k, v] of Object.entries(o)) {
      const cur = this.overlay[k];
      const same = k === "source" ? cur === v
        : (cur === v || (cur && v && cur.l === v.l && cur.k === v.k && cur.p === v.p));
      if (!same) {
        this.overlay[k] = v;
        this.dirty.overlay = true;
      }
    }
  }

  /** One redraw at the next animation frame, whatever was set before it. */
  commit() {
    if (this.frame || !(this.dirty.base || this.dirty.overlay)) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.flush();
    });
  }

  /** Draw what is dirty now (first draw, tests, benchmarks). */
  flush() {
    if (this.frame) { cancelAnimationFrame(this.frame); this.frame = 0; }
    if (this.dirty.base) this.drawBase();
    if (this.dirty.overlay) drawOverlay(this);
    this.dirty.base = this.dirty.overlay = false;
    return this.lastDraw;
  }

  // ------------------------------------------------------------------ layout and view

  layout() {
    const L = Math.max(1, this.L);
    // as tall as 21 px per layer asks, but no taller than the room we were given (fit the
    // viewport), and never below MIN_LAYER_PX per layer (readable rows beat fitting)
    let target = Math.max(180, Math.min(660, L * 21));
    if (this.height > 0) target = Math.max(Math.max(120, L * MIN_LAYER_PX), Math.min(target, this.height - MARGIN.top - MARGIN.bottom));
    const unit = target / L;
    const big = unit * BIG_SHARE, small = unit - big;
    this.rowH = new Float32Array(2 * L);
    this.rowTop = new Float32Array(2 * L);
    for (let r = 0; r < 2 * L; r++) {
      const isAttn = r % 2 === 0;
      this.rowH[r] = (isAttn === (this.emph === "attn")) ? big : small;
    }
    let y = 0;                         // row 2L-1 at the top
    for (let r = 2 * L - 1; r >= 0; r--) { this.rowTop[r] = y; y += this.rowH[r]; }
    this.worldH = y;
    this.plotW = this.cssW - MARGIN.left - MARGIN.right;
    this.plotH = this.worldH;
    this.colW0 = this.plotW / Math.max(1, this.P);
    this.cssH = Math.ceil(MARGIN.top + this.plotH + MARGIN.bottom);
    const w = Math.round(this.cssW * this.dpr), h = Math.round(this.cssH * this.dpr);
    for (const c of [this.canvas, this.over]) {
      if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
      c.style.width = this.cssW + "px";
      c.style.height = this.cssH + "px";
    }
    this.clampView();
  }

  clampView() {
    const v = this.view;
    // rounded, so that the URL hash (3 decimals, whole pixels) restores exactly this view
    v.z = Math.round(Math.max(1, Math.min(MAX_ZOOM, v.z)) * 1000) / 1000;
    v.x = Math.round(Math.max(0, Math.min(this.plotW * v.z - this.plotW, v.x)));
    v.y = Math.round(Math.max(0, Math.min(this.plotH * v.z - this.plotH, v.y)));
  }

  zoomAt(sx, sy, factor) {
    const v = this.view;
    const z2 = Math.max(1, Math.min(MAX_ZOOM, v.z * factor));
    const px = Math.max(0, Math.min(this.plotW, sx - MARGIN.left));
    const py = Math.max(0, Math.min(this.plotH, sy - MARGIN.top));
    const wx = (px + v.x) / v.z, wy = (py + v.y) / v.z;
    v.z = z2;
    v.x = wx * z2 - px;
    v.y = wy * z2 - py;
    this.clampView();
    this.dirty.base = this.dirty.overlay = true;
  }

  zoomCenter(factor) { this.zoomAt(MARGIN.left + this.plotW / 2, MARGIN.top + this.plotH / 2, factor); }

  panBy(dx, dy) {
    this.view.x -= dx;
    this.view.y -= dy;
    this.clampView();
    this.dirty.base = this.dirty.overlay = true;
  }

  fit() { this.setView({ z: 1, x: 0, y: 0 }); }

  /** Scroll so that a cell is visible. */
  reveal(cell) {
    if (!cell) return;
    const v = this.view;
    const r = 2 * cell.l + cell.k;
    const x0 = cell.p * this.colW0 * v.z, x1 = x0 + this.colW0 * v.z;
    const y0 = this.rowTop[r] * v.z, y1 = y0 + this.rowH[r] * v.z;
    if (x0 < v.x) v.x = x0;
    if (x1 > v.x + this.plotW) v.x = x1 - this.plotW;
    if (y0 < v.y) v.y = y0;
    if (y1 > v.y + this.plotH) v.y = y1 - this.plotH;
    this.clampView();
    this.dirty.base = this.dirty.overlay = true;
  }

  colX(p) { return MARGIN.left + p * this.colW0 * this.view.z - this.view.x; }
  rowY(r) { return MARGIN.top + this.rowTop[r] * this.view.z - this.view.y; }

  /** A cell's rectangle in CSS px of the canvas: {x, y, w, h}. */
  cellRect(l, k, p) {
    const r = 2 * l + k, colW = this.colW0 * this.view.z;
    return { x: this.colX(p), y: this.rowY(r), w: colW - (colW > 5 ? 1 : 0), h: this.rowH[r] * this.view.z };
  }

  /** First and last column in view. */
  visibleColumns() {
    const colW = this.colW0 * this.view.z;
    return [Math.max(0, Math.floor(this.view.x / colW)), Math.min(this.P - 1, Math.ceil((this.view.x + this.plotW) / colW) - 1)];
  }

  // ------------------------------------------------------------------ hit testing

  /** {type: "cell", l, k, p, fx} (fx: fraction across the cell) | {type: "token", p} | null */
  hit(sx, sy) {
    const { L, P } = this;
    const v = this.view;
    const inX = sx >= MARGIN.left && sx < MARGIN.left + this.plotW;
    const colW = this.colW0 * v.z;
    const p = Math.floor((sx - MARGIN.left + v.x) / colW);
    const inY = sy >= MARGIN.top && sy < MARGIN.top + this.plotH;
    if (inX && p >= 0 && p < P) {
      if (inY) {
        const wy = (sy - MARGIN.top + v.y) / v.z;
        for (let r = 0; r < 2 * L; r++) {
          if (wy >= this.rowTop[r] && wy < this.rowTop[r] + this.rowH[r]) {
            return { type: "cell", l: r >> 1, k: r & 1, p, fx: (sx - MARGIN.left + v.x) / colW - p };
          }
        }
        return null;
      }
      if (sy >= MARGIN.top + this.plotH && sy < this.cssH) return { type: "token", p };
    }
    return null;
  }

  /** The source whose segment covers fraction fx of a cell, or -1. */
  segmentAt(h) {
    const cell = (2 * h.l + h.k) * this.P + h.p;
    for (const b of this.data.batches) {
      if (b.source < 0) continue;
      const it = b.items;
      for (let o = 0; o < b.n * 5; o += 5) {
        if (it[o] === cell && h.fx >= it[o + 1] && h.fx < it[o + 2]) return b.source;
      }
    }
    return -1;
  }

  // ------------------------------------------------------------------ drawing: data

  /** Device-px geometry of the plot for the current view. */
  geometry(dpr) {
    const { L, P } = this, v = this.view, R = 2 * L;
    const colW = this.colW0 * v.z;
    const gapX = colW > 5 ? 1 : 0;
    const p0 = Math.max(0, Math.floor(v.x / colW)), p1 = Math.min(P - 1, Math.ceil((v.x + this.plotW) / colW));
    const cw = colW - gapX;
    const W = Math.round(this.plotW * dpr), H = Math.round(this.plotH * dpr);
    const cxa = new Float64Array(P), cwd = cw * dpr;          // unclamped device x of each column
    const xa = new Int32Array(P), xb = new Int32Array(P);     // clamped
    for (let p = p0; p <= p1; p++) {
      const x = (p * colW - v.x) * dpr;
      cxa[p] = x;
      xa[p] = Math.max(0, Math.min(W, Math.round(x)));
      xb[p] = Math.max(0, Math.min(W, Math.round(x + cwd)));
    }
    const ry = new Float32Array(R), rh = new Float32Array(R);   // CSS px, NaN: out of view
    const ya = new Int32Array(R), yb = new Int32Array(R), yu = new Float64Array(R), yh = new Float64Array(R);
    for (let r = 0; r < R; r++) {
      const y = MARGIN.top + this.rowTop[r] * v.z - v.y, h = this.rowH[r] * v.z;
      if (y + h < MARGIN.top || y > MARGIN.top + this.plotH) { ry[r] = NaN; continue; }
      ry[r] = y;
      rh[r] = h - (h > 4 ? 1 : 0);
      yu[r] = (y - MARGIN.top) * dpr;
      yh[r] = rh[r] * dpr;
      ya[r] = Math.max(0, Math.min(H, Math.round(yu[r])));
      yb[r] = Math.max(0, Math.min(H, Math.round(yu[r] + yh[r])));
    }
    return { colW, cw, cwd, p0, p1, W, H, cxa, xa, xb, ry, rh, ya, yb, yu, yh };
  }

  drawBase(opts = {}) {
    const t0 = performance.now();
    const ctx = opts.ctx || this.ctx;
    const dpr = opts.dpr || this.dpr;
    const C = this.colors;
    const { L, P } = this;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = C.bg;
    ctx.fillRect(0, 0, this.cssW, this.cssH);
    if (!L || !P) return 0;
    const g = this.geometry(dpr);
    const { p0, p1, W, H, cxa, cwd, xa, xb, ya, yb, yu, yh } = g;
    const R = 2 * L;
    // Drawn straight into an ImageData: every cell's segments are filled on the first
    // scanline of its row, which is then copied down the row.
    const img = this.imageData(ctx, W, H);
    const buf = new Uint32Array(img.data.buffer);
    buf.fill(rgba32(C.bg));
    const track = rgba32(C.track);
    for (let r = 0; r < R; r++) {
      if (yb[r] <= ya[r]) continue;
      const line = ya[r] * W;
      for (let p = p0; p <= p1; p++) if (xb[p] > xa[p]) buf.fill(track, line + xa[p], line + xb[p]);
    }
    const partial = [], hatched = [];
    for (const b of this.data.batches) {
      if (b.hatch) { hatched.push(b); continue; }     // after the rows are copied down
      const color = rgba32(b.color);
      const it = b.items, n = b.n;
      for (let i = 0; i < n; i++) {
        const o = i * 5, cell = it[o];
        const r = (cell / P) | 0, p = cell - r * P;
        if (p < p0 || p > p1 || yb[r] <= ya[r]) continue;
        if (it[o + 3] !== 0 || it[o + 4] !== 1) { partial.push(color, o, it); continue; }
        let a = Math.round(cxa[p] + it[o + 1] * cwd), z = Math.round(cxa[p] + it[o + 2] * cwd);
        if (a < xa[p]) a = xa[p];
        if (z > xb[p]) z = xb[p];
        if (z <= a) continue;
        const line = ya[r] * W;
        buf.fill(color, line + a, line + z);
      }
    }
    for (let r = 0; r < R; r++) {
      const a = ya[r], z = yb[r];
      if (z - a < 2) continue;
      const src = a * W, x0 = xa[p0], x1 = xb[p1];
      for (let y = a + 1; y < z; y++) buf.copyWithin(y * W + x0, src + x0, src + x1);
    }
    for (let j = 0; j < partial.length; j += 3) {     // sign strips (proj): part of the height
      const color = partial[j], o = partial[j + 1], it = partial[j + 2], cell = it[o];
      const r = (cell / P) | 0, p = cell - r * P;
      let a = Math.round(cxa[p] + it[o + 1] * cwd), z = Math.round(cxa[p] + it[o + 2] * cwd);
      a = Math.max(a, xa[p]); z = Math.min(z, xb[p]);
      const y0 = Math.max(ya[r], Math.round(yu[r] + it[o + 3] * yh[r]));
      const y1 = Math.min(yb[r], Math.round(yu[r] + it[o + 4] * yh[r]));
      if (z <= a) continue;
      for (let y = y0; y < y1; y++) buf.fill(color, y * W + a, y * W + z);
    }
    for (const b of hatched) drawHatch(buf, W, b, g, P);
    ctx.putImageData(img, Math.round(MARGIN.left * dpr), Math.round(MARGIN.top * dpr));
    drawRowLabels(this, ctx, g);
    drawTokenLabels(this, ctx, g);
    drawAxisTitles(this, ctx);
    drawPredictions(this, ctx, g.colW);
    this.lastDraw = performance.now() - t0;
    return this.lastDraw;
  }

  imageData(ctx, w, h) {
    this.images = this.images || new WeakMap();
    let img = this.images.get(ctx);
    if (!img || img.width !== w || img.height !== h) {
      img = ctx.createImageData(Math.max(1, w), Math.max(1, h));
      this.images.set(ctx, img);
    }
    return img;
  }

}

/** A hatched batch (hidden sources): diagonal stripes of b.color on b.hatch, 1 px in 4, so the
 * segment keeps its width (it stays in every share) but reads as "not a source shown". */
function drawHatch(buf, W, b, g, P) {
  const fg = rgba32(b.color), bg = rgba32(b.hatch), it = b.items;
  const { p0, p1, cxa, cwd, xa, xb, ya, yb } = g;
  for (let o = 0; o < b.n * 5; o += 5) {
    const cell = it[o], r = (cell / P) | 0, p = cell - r * P;
    if (p < p0 || p > p1 || yb[r] <= ya[r]) continue;
    const a = Math.max(xa[p], Math.round(cxa[p] + it[o + 1] * cwd)), z = Math.min(xb[p], Math.round(cxa[p] + it[o + 2] * cwd));
    for (let y = ya[r]; y < yb[r]; y++) {
      const line = y * W;
      for (let x = a; x < z; x++) buf[line + x] = (x + y) % 4 === 0 ? fg : bg;
    }
  }
}

export const rowLabel = (l, k) => (k === 0 ? `L${l} attn` : `L${l} mlp`);
