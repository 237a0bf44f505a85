// The grid: one <canvas>, no DOM node per cell. Cells are drawn in batches (one path per colour).
//
// World coordinates: at zoom 1 the grid fits the plot area; columns are positions, rows are
// sublayers (row 0 = L0 attn at the bottom, row 2L-1 = the last MLP at the top).
// Batches come from compute.js: {color, items: Float32Array of (cell, x0, x1, y0, y1)}, with x/y
// fractions of the cell and cell = row * P + position.

const MARGIN = { left: 66, right: 12, top: 92, bottom: 86 };
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

const MIXED = new Map();
/** `a` drawn with opacity `alpha` over `b`, as "#rrggbb". */
function mix(a, b, alpha) {
  const key = a + b + alpha;
  let v = MIXED.get(key);
  if (v) return v;
  const x = parseColor(a), y = parseColor(b);
  v = "#" + x.map((c, i) => Math.round(c * alpha + y[i] * (1 - alpha)).toString(16).padStart(2, "0")).join("");
  MIXED.set(key, v);
  return v;
}

export function displayToken(t) {
  return String(t).replace(/ /g, "\u00b7").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5");
}

export class Grid {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.L = 0;
    this.P = 0;
    this.view = { z: 1, x: 0, y: 0 };   // zoom; pan in screen px of the zoomed world
    this.emph = "attn";
    this.batches = [];
    this.tokens = [];
    this.tokenColor = [];
    this.tokenDim = [];               // per position: 0 normal, 1 dimmed (hidden / not traced)
    this.tokenHidden = [];
    this.tokenMark = -1;              // a token to highlight (traced)
    this.predPos = -1;                // column whose label is underlined (predictions shown)
    this.predictions = [];            // [{text, prob}] for the last position
    this.hover = null;                // {l, k, p}
    this.focus = null;
    this.pin = null;
    this.colors = {};
    this.cssW = 300;
    this.cssH = 150;
    this.dpr = 1;
    this.lastDraw = 0;
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

  setShape(L, P) {
    this.L = L;
    this.P = P;
    this.layout();
  }

  setTheme(colors) { this.colors = colors; }

  /** Size the canvas to its container; row heights from L. Call on resize. */
  resize(cssWidth, dpr = window.devicePixelRatio || 1) {
    this.cssW = Math.max(320, Math.floor(cssWidth));
    this.dpr = dpr;
    this.layout();
  }

  layout() {
    const L = Math.max(1, this.L);
    const target = Math.max(180, Math.min(660, L * 21));
    const unit = target / L;
    const big = unit * 0.64, small = unit - big;
    this.rowH = new Float32Array(2 * L);
    this.rowTop = new Float32Array(2 * L);
    for (let r = 0; r < 2 * L; r++) {
      const isAttn = r % 2 === 0;
      this.rowH[r] = (isAttn === (this.emph === "attn")) ? big : small;
    }
    // row 2L-1 at the top
    let y = 0;
    for (let r = 2 * L - 1; r >= 0; r--) { this.rowTop[r] = y; y += this.rowH[r]; }
    this.worldH = y;
    this.plotW = this.cssW - MARGIN.left - MARGIN.right;
    this.plotH = this.worldH;
    this.colW0 = this.plotW / Math.max(1, this.P);
    this.cssH = Math.ceil(MARGIN.top + this.plotH + MARGIN.bottom);
    const c = this.canvas;
    const w = Math.round(this.cssW * this.dpr), h = Math.round(this.cssH * this.dpr);
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    c.style.width = this.cssW + "px";
    c.style.height = this.cssH + "px";
    this.clampView();
  }

  setEmphasis(emph) {
    this.emph = emph;
    this.layout();
  }

  // ------------------------------------------------------------------ view

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
  }

  zoomCenter(factor) {
    this.zoomAt(MARGIN.left + this.plotW / 2, MARGIN.top + this.plotH / 2, factor);
  }

  panBy(dx, dy) {
    this.view.x -= dx;
    this.view.y -= dy;
    this.clampView();
  }

  fit() { this.view = { z: 1, x: 0, y: 0 }; }

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
  }

  colX(p) { return MARGIN.left + p * this.colW0 * this.view.z - this.view.x; }
  rowY(r) { return MARGIN.top + this.rowTop[r] * this.view.z - this.view.y; }

  // ------------------------------------------------------------------ hit testing

  /** {type: "cell", l, k, p} | {type: "token", p} | {type: "row", l, k} | null */
  hit(sx, sy) {
    const { L, P } = this;
    const v = this.view;
    const inX = sx >= MARGIN.left && sx < MARGIN.left + this.plotW;
    const p = Math.floor((sx - MARGIN.left + v.x) / (this.colW0 * v.z));
    const inY = sy >= MARGIN.top && sy < MARGIN.top + this.plotH;
    if (inX && p >= 0 && p < P) {
      if (inY) {
        const wy = (sy - MARGIN.top + v.y) / v.z;
        for (let r = 0; r < 2 * L; r++) {
          if (wy >= this.rowTop[r] && wy < this.rowTop[r] + this.rowH[r]) return { type: "cell", l: r >> 1, k: r & 1, p };
        }
        return null;
      }
      if (sy >= MARGIN.top + this.plotH && sy < this.cssH) return { type: "token", p };
    }
    return null;
  }

  // ------------------------------------------------------------------ drawing

  draw(opts = {}) {
    const t0 = performance.now();
    const ctx = opts.ctx || this.ctx;
    const dpr = opts.dpr || this.dpr;
    const exporting = !!opts.ctx;
    const C = this.colors;
    const { L, P } = this;
    const v = this.view;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = C.bg;
    ctx.fillRect(0, 0, this.cssW, this.cssH);
    if (!L || !P) return;

    const colW = this.colW0 * v.z;
    const gapX = colW > 5 ? 1 : 0;
    const px0 = MARGIN.left, py0 = MARGIN.top;
    const p0 = Math.max(0, Math.floor(v.x / colW)), p1 = Math.min(P - 1, Math.ceil((v.x + this.plotW) / colW));
    const R = 2 * L;
    // css-px geometry (for overlays) ...
    const ry = new Float32Array(R), rh = new Float32Array(R);
    for (let r = 0; r < R; r++) {
      const y = py0 + this.rowTop[r] * v.z - v.y, h = this.rowH[r] * v.z;
      if (y + h < py0 || y > py0 + this.plotH) { ry[r] = NaN; continue; }
      ry[r] = y;
      rh[r] = h - (h > 4 ? 1 : 0);
    }
    const cw = colW - gapX;

    // ... and device-px geometry of the plot, drawn straight into an ImageData: every cell's
    // segments are filled on the first scanline of its row, which is then copied down the row.
    const W = Math.round(this.plotW * dpr), H = Math.round(this.plotH * dpr);
    const X0 = Math.round(px0 * dpr), Y0 = Math.round(py0 * dpr);
    const img = this.imageData(ctx, W, H);
    const buf = new Uint32Array(img.data.buffer);
    buf.fill(rgba32(C.bg));
    const cxa = new Float64Array(P), cwd = cw * dpr;          // unclamped device x of each column
    const xa = new Int32Array(P), xb = new Int32Array(P);     // clamped
    for (let p = p0; p <= p1; p++) {
      const x = (p * colW - v.x) * dpr;
      cxa[p] = x;
      xa[p] = Math.max(0, Math.min(W, Math.round(x)));
      xb[p] = Math.max(0, Math.min(W, Math.round(x + cwd)));
    }
    const ya = new Int32Array(R), yb = new Int32Array(R), yu = new Float64Array(R), yh = new Float64Array(R);
    for (let r = 0; r < R; r++) {
      if (ry[r] !== ry[r]) { ya[r] = yb[r] = 0; continue; }
      yu[r] = (ry[r] - py0) * dpr;
      yh[r] = rh[r] * dpr;
      ya[r] = Math.max(0, Math.min(H, Math.round(yu[r])));
      yb[r] = Math.max(0, Math.min(H, Math.round(yu[r] + yh[r])));
    }
    const track = rgba32(C.track);
    for (let r = 0; r < R; r++) {
      if (yb[r] <= ya[r]) continue;
      const line = ya[r] * W;
      for (let p = p0; p <= p1; p++) if (xb[p] > xa[p]) buf.fill(track, line + xa[p], line + xb[p]);
    }
    const emphK = this.emph === "attn" ? 0 : 1;
    const weak = C.weakAlpha;
    const partial = [];
    for (const b of this.batches) {
      const strong = rgba32(b.color), faint = rgba32(mix(b.color, C.track, weak));
      const it = b.items, n = b.n;
      for (let i = 0; i < n; i++) {
        const o = i * 5, cell = it[o];
        const r = (cell / P) | 0, p = cell - r * P;
        if (p < p0 || p > p1 || yb[r] <= ya[r]) continue;
        if (it[o + 3] !== 0 || it[o + 4] !== 1) { partial.push(b, i); continue; }
        let a = Math.round(cxa[p] + it[o + 1] * cwd), z = Math.round(cxa[p] + it[o + 2] * cwd);
        if (a < xa[p]) a = xa[p];
        if (z > xb[p]) z = xb[p];
        if (z <= a) continue;
        const line = ya[r] * W;
        buf.fill((r & 1) === emphK ? strong : faint, line + a, line + z);
      }
    }
    for (let r = 0; r < R; r++) {
      const a = ya[r], z = yb[r];
      if (z - a < 2) continue;
      const src = a * W, x0 = xa[p0], x1 = xb[p1];
      for (let y = a + 1; y < z; y++) buf.copyWithin(y * W + x0, src + x0, src + x1);
    }
    for (let j = 0; j < partial.length; j += 2) {     // sign strips (proj): part of the height
      const b = partial[j], it = b.items, o = partial[j + 1] * 5, cell = it[o];
      const r = (cell / P) | 0, p = cell - r * P;
      const color = (r & 1) === emphK ? rgba32(b.color) : rgba32(mix(b.color, C.track, weak));
      let a = Math.round(cxa[p] + it[o + 1] * cwd), z = Math.round(cxa[p] + it[o + 2] * cwd);
      a = Math.max(a, xa[p]); z = Math.min(z, xb[p]);
      const y0 = Math.max(ya[r], Math.round(yu[r] + it[o + 3] * yh[r]));
      const y1 = Math.min(yb[r], Math.round(yu[r] + it[o + 4] * yh[r]));
      if (z <= a) continue;
      for (let y = y0; y < y1; y++) buf.fill(color, y * W + a, y * W + z);
    }
    const tPix = performance.now();
    ctx.putImageData(img, X0, Y0);
    this.putTime = performance.now() - tPix;
    this.pixTime = tPix - t0;

    ctx.save();
    ctx.beginPath();
    ctx.rect(px0, py0, this.plotW, this.plotH);
    ctx.clip();

    if (!exporting) {
      // hovered row and column
      const hv = this.hover;
      if (hv) {
        const r = 2 * hv.l + hv.k;
        ctx.fillStyle = C.highlight;
        if (hv.l >= 0 && !Number.isNaN(ry[r])) ctx.fillRect(px0, ry[r], this.plotW, rh[r]);
        ctx.fillRect(px0 + hv.p * colW - v.x, py0, cw, this.plotH);
      }
      for (const [cell, color, width] of [[this.focus, C.focus, 1.5], [this.pin, C.pin, 2.5]]) {
        if (!cell) continue;
        const r = 2 * cell.l + cell.k;
        if (Number.isNaN(ry[r])) continue;
        ctx.strokeStyle = color;
        ctx.lineWidth = width;
        ctx.strokeRect(px0 + cell.p * colW - v.x - 0.5, ry[r] - 0.5, cw + 1, rh[r] + 1);
      }
    }
    ctx.restore();

    this.drawRowLabels(ctx, ry, rh);
    this.drawTokenLabels(ctx, p0, p1, colW, cw);
    this.drawPredictions(ctx, colW);
    this.lastDraw = performance.now() - t0;
    return this.lastDraw;
  }

  drawRowLabels(ctx, ry, rh) {
    const C = this.colors;
    const R = 2 * this.L;
    ctx.save();
    ctx.beginPath();
    ctx.rect(0, MARGIN.top - 1, MARGIN.left, this.plotH + 2);
    ctx.clip();
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    let lastY = Infinity;
    const hv = this.hover;
    for (let r = 0; r < R; r++) {
      if (Number.isNaN(ry[r])) continue;
      const y = ry[r] + rh[r] / 2;
      const l = r >> 1, k = r & 1;
      const isHover = hv && hv.l === l && hv.k === k;
      if (!isHover && lastY - y < 10) continue;
      const emph = (k === 0) === (this.emph === "attn");
      ctx.font = `${isHover ? "bold " : ""}${emph ? 10.5 : 9.5}px system-ui, sans-serif`;
      ctx.fillStyle = isHover ? C.fg : (emph ? C.fg : C.muted);
      ctx.fillText(k === 0 ? `L${l} attn` : `mlp${l}`, MARGIN.left - 6, y);
      lastY = y;
    }
    ctx.restore();
  }

  drawTokenLabels(ctx, p0, p1, colW, cw) {
    const C = this.colors;
    const top = MARGIN.top + this.plotH + 3;
    ctx.save();
    ctx.beginPath();
    ctx.rect(MARGIN.left - 2, top - 3, this.plotW + 4, MARGIN.bottom + 3);
    ctx.clip();
    const step = colW >= 9 ? 1 : Math.ceil(9 / colW);
    const hv = this.hover;
    for (let p = p0; p <= p1; p++) {
      const x = MARGIN.left + p * colW - this.view.x;
      const dim = this.tokenDim[p];
      ctx.globalAlpha = dim ? 0.35 : 1;
      ctx.fillStyle = this.tokenColor[p] || C.muted;
      ctx.fillRect(x, top, cw, 7);
      if (this.tokenHidden[p]) {
        ctx.fillStyle = C.bg;
        ctx.fillRect(x + 1, top + 2, Math.max(0, cw - 2), 3);
      }
      const mark = p === this.tokenMark, isHover = hv && hv.p === p;
      if (p % step && !mark && !isHover && p !== this.predPos) continue;
      ctx.save();
      ctx.translate(x + cw / 2, top + 11);
      ctx.rotate(-Math.PI / 2.6);
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.font = `${mark || isHover ? "bold " : ""}${Math.min(12, Math.max(9, colW * 0.9))}px system-ui, sans-serif`;
      ctx.fillStyle = mark ? (this.tokenColor[p] || C.fg) : C.fg;
      let t = displayToken(this.tokens[p]);
      if (t.length > 14) t = t.slice(0, 13) + "\u2026";
      ctx.fillText(t, 0, 0);
      if (p === this.predPos) {
        const w = ctx.measureText(t).width;
        ctx.fillRect(-w, 6, w, 1.5);
      }
      ctx.restore();
    }
    ctx.globalAlpha = 1;
    ctx.restore();
  }

  drawPredictions(ctx, colW) {
    const C = this.colors;
    const preds = this.predictions;
    if (!preds.length) return;
    const lineH = 14, n = Math.min(preds.length, 5);
    const boxW = 150;
    let right = MARGIN.left + this.P * colW - this.view.x;
    right = Math.max(MARGIN.left + boxW, Math.min(this.cssW - 2, right));
    const y0 = MARGIN.top - 8 - n * lineH;
    ctx.save();
    ctx.font = "bold 10.5px system-ui, sans-serif";
    ctx.fillStyle = C.muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "alphabetic";
    ctx.fillText("next token \u2193 last position", right, y0 - 4);
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
      let t = displayToken(text);
      if (t.length > 14) t = t.slice(0, 13) + "\u2026";
      ctx.fillText(`${t}  ${(prob * 100).toFixed(1)}%`, right - 66, y);
    }
    // a tick linking the list to the last column
    ctx.strokeStyle = C.muted;
    ctx.beginPath();
    ctx.moveTo(right - 0.5, MARGIN.top - 6);
    ctx.lineTo(right - 0.5, MARGIN.top);
    ctx.stroke();
    ctx.restore();
  }

  /** Render the grid alone at `scale`× into a new canvas (for PNG export). */
  exportCanvas(scale = 2) {
    const c = document.createElement("canvas");
    c.width = Math.round(this.cssW * scale);
    c.height = Math.round(this.cssH * scale);
    this.draw({ ctx: c.getContext("2d"), dpr: scale });
    return c;
  }
}

export { MARGIN };
