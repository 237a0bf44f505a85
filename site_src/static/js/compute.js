// From a decoded variant and the view state to drawable batches, tooltips and summaries.

export const THRESHOLD = 0.02;   // segments narrower than this share merge into the remainder

/** Index of (layer l, sublayer k, position p, source s) in a dense (L, 2, P, G) array. */
export const at = (P, G, l, k, p, s) => ((l * 2 + k) * P + p) * G + s;

/** Rectangles of one colour: items are (cell, x0, x1, y0, y1), x and y fractions of the cell. */
class Batch {
  constructor(color, source = -1, hatch = null, kind = "source") {
    this.color = color;
    this.kind = kind;         // source | others | hidden | pos | neg | ramp: what a legend calls it
    this.source = source;     // the source it draws, or -1 (others, heat ramp, sign strips)
    this.hatch = hatch;       // a second colour: drawn as diagonal stripes (hidden sources)
    this.items = new Float32Array(256);
    this.n = 0;
  }
  push(cell, x0, x1, y0, y1) {
    if (x1 - x0 <= 0) return;
    if ((this.n + 1) * 5 > this.items.length) {
      const a = new Float32Array(this.items.length * 2);
      a.set(this.items);
      this.items = a;
    }
    const o = this.n * 5;
    this.items[o] = cell; this.items[o + 1] = x0; this.items[o + 2] = x1; this.items[o + 3] = y0; this.items[o + 4] = y1;
    this.n++;
  }
}

/**
 * Which sources get a colour of their own: first `lead` (answer.js topContributors: where the
 * shown prediction comes from), in its order; then, up to `max`, the visible sources with the
 * largest mean norm share over all cells (ranked on `norm` whatever the metric, so that switching
 * metric keeps the colours); plus the traced source. -> Int16Array(G): palette slot, or -1 (others).
 */
export function colorSlots(V, L, P, hidden, traced, max, lead = []) {
  const G = V.G, arr = V.norm, total = new Float64Array(G);
  // visible sources present at each position: sources are numbered by first use, so those
  // of position p are the ones with first <= p (plus the bias source, first = 0)
  const vis = Int32Array.from([...Array(G).keys()].filter((s) => !hidden[s]).sort((a, b) => V.first[a] - V.first[b]));
  const present = new Int32Array(P);
  for (let p = 0, j = 0; p < P; p++) {
    while (j < vis.length && V.first[vis[j]] <= p) j++;
    present[p] = j;
  }
  for (let c = 0; c < L * 2 * P; c++) {
    const base = c * G, m = present[c % P];
    let sum = 0;
    for (let i = 0; i < m; i++) sum += arr[base + vis[i]];
    if (sum <= 0) continue;
    const inv = 1 / sum;
    for (let i = 0; i < m; i++) total[vis[i]] += arr[base + vis[i]] * inv;
  }
  const led = lead.filter((s) => !hidden[s]).slice(0, max);
  const ranked = [...led, ...[...Array(G).keys()].filter((s) => !hidden[s] && total[s] > 0 && !led.includes(s))
    .sort((a, b) => total[b] - total[a] || a - b)];
  const slot = new Int16Array(G).fill(-1);
  ranked.slice(0, max).forEach((s, i) => { slot[s] = i; });
  if (traced >= 0 && slot[traced] < 0) slot[traced] = ranked.length ? Math.min(max, ranked.length) - 1 : 0;
  return slot;
}

/**
 * Batches for the whole grid.
 * opts: {metric: "norm"|"delta"|"proj", hidden: Uint8Array(G) (the traced source is not hidden),
 *        trace: source or -1, heat: bool, order: "position"|"size", colors: [G css colours, null
 *        for a source drawn as "others"], neutral, neg, pos, seqRamp: [hex], divRamp: [hex],
 *        shown: bool (shares of the sources shown; default false), hatch: [fg, bg] css colours}
 * A bar holds the coloured sources in `order`, then one grey "others" segment: the uncoloured
 * sources and those under THRESHOLD of the cell, then one hatched segment: the hidden sources.
 * Hidden sources stay in every share's denominator (issue 24) unless opts.shown, which divides
 * by the sources shown and draws no hatched segment (the caption then says so).
 * Hot path (P = 128: 7680 cells x 127 sources): typed arrays, no string keys, insertion sort.
 */
export function buildBatches(V, L, P, opts) {
  const G = V.G;
  const arr = V[opts.metric];
  const hidden = opts.hidden, first = V.first, colors = opts.colors;
  const bySize = opts.order === "size";
  const srcB = new Array(G).fill(null);
  const rampB = [];
  let restB = null, posB = null, negB = null, hideB = null;
  const src = (s) => srcB[s] || (srcB[s] = new Batch(colors[s], s));
  const rest = () => restB || (restB = new Batch(opts.neutral, -1, null, "others"));
  const pos = () => posB || (posB = new Batch(opts.pos, -1, null, "pos"));
  const neg = () => negB || (negB = new Batch(opts.neg, -1, null, "neg"));
  const ramp = (colors, i) => rampB[i] || (rampB[i] = new Batch(colors[i], -1, null, "ramp"));
  const hatch = opts.hatch || [opts.neutral, opts.neutral];
  const hide = () => hideB || (hideB = new Batch(hatch[0], -1, hatch[1], "hidden"));
  const whole = !opts.shown;             // hidden sources count in the denominator
  const heatTop = opts.heatTop > 0 ? opts.heatTop : 1;   // the heat map's scale: 0..top, or -top..top
  const t = opts.trace;
  const signed = opts.metric === "proj";
  const idx = new Int32Array(G), val = new Float32Array(G), big = new Int32Array(G);
  // Sources are numbered by first use, so those present at p are a prefix (plus the bias
  // source): visible sources in position order, and for each p how many of them have started.
  const bias = V.hasBias ? G - 1 : -1;
  const order = Int32Array.from([...Array(G).keys()].filter((s) => (whole || !hidden[s]) && s !== bias)
    .sort((a, b) => first[a] - first[b]));
  const hasBias = bias >= 0 && (whole || !hidden[bias]);
  const started = new Int32Array(P);      // visible non-bias sources with first <= p
  for (let p = 0, j = 0; p < P; p++) {
    while (j < order.length && first[order[j]] <= p) j++;
    started[p] = j;
  }

  const sortDesc = (a, n, key) => {     // insertion sort of a[0..n) by key[a[i]] descending
    for (let i = 1; i < n; i++) {
      const x = a[i], kx = key[x];
      let j = i - 1;
      while (j >= 0 && key[a[j]] < kx) { a[j + 1] = a[j]; j--; }
      a[j + 1] = x;
    }
  };

  for (let l = 0; l < L; l++) {
    for (let k = 0; k < 2; k++) {
      const row = 2 * l + k;
      for (let p = 0; p < P; p++) {
        const cell = row * P + p;
        const base = ((l * 2 + k) * P + p) * G;
        let n = 0, sum = 0, abs = 0, hid = 0, hidPos = 0, hidNeg = 0;
        const m = started[p] + (hasBias ? 1 : 0);
        for (let i = 0; i < m; i++) {       // sources present here (whole: hidden too), in position order
          const s = i < started[p] ? order[i] : bias;
          const x = arr[base + s];
          if (x === 0) continue;
          sum += x; abs += x < 0 ? -x : x;
          if (hidden[s]) {                  // whole mode only: kept in the denominator, drawn hatched
            hid += x;
            if (x > 0) hidPos += x; else hidNeg -= x;
            continue;
          }
          idx[n] = s; val[n] = x; n++;
        }
        if (t >= 0) {
          if (first[t] > p) continue;
          const x = arr[base + t];
          if (signed) {
            const v = Math.max(-1, Math.min(1, x));
            if (opts.heat) {
              ramp(opts.divRamp, rampIndex(x, -heatTop, heatTop, opts.divRamp.length)).push(cell, 0, 1, 0, 1);
            } else if (v >= 0) pos().push(cell, 0.5, 0.5 + v / 2, 0, 1);
            else neg().push(cell, 0.5 + v / 2, 0.5, 0, 1);
          } else {
            const share = sum > 0 ? x / sum : 0;
            if (opts.heat) ramp(opts.seqRamp, rampIndex(share, 0, heatTop, opts.seqRamp.length)).push(cell, 0, 1, 0, 1);
            else {
              src(t).push(cell, 0, share, 0, 1);
              if (hid > 0 && sum > 0) hide().push(cell, 1 - hid / sum, 1, 0, 1);
            }
          }
          continue;
        }
        if (n === 0 && hid === 0) continue;
        if (!signed) {
          if (sum <= 0) continue;
          const cut = THRESHOLD * sum;
          let nb = 0;
          for (let i = 0; i < n; i++) if (val[i] >= cut && colors[idx[i]]) big[nb++] = i;
          if (bySize) sortDesc(big, nb, val);
          let x = 0;
          for (let j = 0; j < nb; j++) {
            const i = big[j], w = val[i] / sum;
            src(idx[i]).push(cell, x, x + w, 0, 1);
            x += w;
          }
          const h = hid / sum;
          if (x < 0.9999 - h) rest().push(cell, x, 1 - h, 0, 1);
          if (h > 0) hide().push(cell, 1 - h, 1, 0, 1);
        } else {
          if (abs <= 0) continue;
          // negative parts left of zero, positive parts right of it; in position order going
          // outwards, or largest next to zero
          let negSum = hidNeg;
          for (let i = 0; i < n; i++) if (val[i] < 0) negSum -= val[i];
          const zero = negSum / abs;
          const cut = THRESHOLD * abs;
          let np = 0, nn = 0, restPos = 0, restNeg = 0;
          const posI = big;
          // positives into big[0..np), negatives into big[G-1] downwards
          for (let i = 0; i < n; i++) {
            const w = val[i];
            if (w >= cut && colors[idx[i]]) posI[np++] = i;
            else if (w <= -cut && colors[idx[i]]) posI[G - 1 - nn++] = i;
            else if (w > 0) restPos += w; else restNeg -= w;
          }
          if (bySize) sortDesc(posI, np, val);
          let x = zero;
          for (let j = 0; j < np; j++) {
            const i = posI[j], w = val[i] / abs;
            src(idx[i]).push(cell, x, x + w, 0, 1);
            x += w;
          }
          if (restPos > 0) rest().push(cell, x, 1 - hidPos / abs, 0, 1);
          if (hidPos > 0) hide().push(cell, 1 - hidPos / abs, 1, 0, 1);
          const negs = posI.subarray(G - nn, G);
          negs.reverse();                      // back into position order
          if (bySize) {
            for (let a = 1; a < nn; a++) {     // ascending by value (most negative first)
              const xi = negs[a], kx = val[xi];
              let b = a - 1;
              while (b >= 0 && val[negs[b]] > kx) { negs[b + 1] = negs[b]; b--; }
              negs[b + 1] = xi;
            }
          }
          x = zero;
          for (let j = 0; j < nn; j++) {
            const i = negs[j], w = -val[i] / abs;
            src(idx[i]).push(cell, x - w, x, 0, 1);
            x -= w;
          }
          if (restNeg > 0) rest().push(cell, hidNeg / abs, x, 0, 1);
          if (hidNeg > 0) hide().push(cell, 0, hidNeg / abs, 0, 1);
          // diverging sign strips: red under the negative part, blue under the positive part
          if (zero > 0) neg().push(cell, 0, zero, 0.62, 1);
          pos().push(cell, zero, 1, 0.8, 1);
        }
      }
    }
  }
  // draw order: remainder, sources, heat, then sign strips on top
  return [restB, hideB, ...srcB, ...rampB, negB, posB].filter(Boolean);
}

/**
 * The end of the heat map's scale for traced source s: its largest |share| over every cell, so
 * the ramp fits the data (signed: -top..top, symmetric; otherwise 0..top). 0 when s is absent.
 */
export function heatTop(V, L, P, metric, hidden, s, shown = false) {
  let top = 0;
  if (s < 0) return top;
  for (let p = V.first[s]; p < P; p++) {
    const series = traceSeries(V, L, P, metric, hidden, s, p, shown);
    for (let l = 0; l < L; l++) top = Math.max(top, Math.abs(series.attn[l]), Math.abs(series.mlp[l]));
  }
  return top;
}

/** The ramp colour index of value v in [lo, hi] (what the heat map and its legend use). */
export function rampIndex(v, lo, hi, n) {
  const f = Math.max(0, Math.min(1, (v - lo) / (hi - lo)));
  return Math.round(f * (n - 1));
}

/**
 * Source s's share of each cell at position p, per layer: {attn: Float32Array(L), mlp: ...},
 * NaN where s has not started yet. Shares as the grid draws them (proj: the signed share):
 * of the whole residual, or with `shown` of the sources not hidden.
 */
export function traceSeries(V, L, P, metric, hidden, s, p, shown = false) {
  const out = { attn: new Float32Array(L).fill(NaN), mlp: new Float32Array(L).fill(NaN) };
  if (s < 0 || V.first[s] > p) return out;
  const arr = V[metric], G = V.G;
  for (let l = 0; l < L; l++) {
    for (let k = 0; k < 2; k++) {
      const base = at(P, G, l, k, p, 0);
      let share = arr[base + s];
      if (metric !== "proj") {
        let sum = 0;
        for (let j = 0; j < G; j++) if ((!shown || !hidden[j]) && V.first[j] <= p) sum += arr[base + j];
        share = sum > 0 ? share / sum : 0;
      }
      (k ? out.mlp : out.attn)[l] = share;
    }
  }
  return out;
}

/**
 * Per-source values of one cell: [{s, value, share, hidden}] sorted by |share|, largest first.
 * By default every source present is a row (hidden ones marked) and shares are of the whole
 * residual; with `shown`, hidden sources are left out and shares are of the sources shown.
 */
export function cellSources(V, P, metric, hidden, l, k, p, shown = false) {
  const G = V.G, arr = V[metric], base = at(P, G, l, k, p, 0);
  const rows = [];
  let sum = 0;
  for (let s = 0; s < G; s++) {
    if (V.first[s] > p || (shown && hidden[s])) continue;
    const x = arr[base + s];
    rows.push({ s, value: x, hidden: !!hidden[s] });
    sum += metric === "proj" ? 0 : x;
  }
  for (const r of rows) r.share = metric === "proj" ? r.value : (sum > 0 ? r.value / sum : 0);
  rows.sort((a, b) => Math.abs(b.share) - Math.abs(a.share));
  return rows;
}

/**
 * The hidden sources' share of the whole residual at cell (l, k, p) (proj: their signed share).
 * What "of the sources shown" leaves out, stated wherever that mode is used.
 */
export function hiddenShare(V, P, metric, hidden, l, k, p) {
  const G = V.G, arr = V[metric], base = at(P, G, l, k, p, 0);
  let sum = 0, hid = 0;
  for (let s = 0; s < G; s++) {
    if (V.first[s] > p) continue;
    const x = arr[base + s];
    sum += x;
    if (hidden[s]) hid += x;
  }
  if (metric === "proj") return hid;
  return sum > 0 ? hid / sum : 0;
}

/**
 * A browser-made grouping from the `tokens` variant: values are summed over the members of a
 * group. For norms that is a sum of norms (an upper bound, not the norm of the summed vector),
 * so the variant is marked approximate. proj, the logit attribution and the vocabulary mean's
 * parts are linear, so exact.
 */
export function customVariant(T, P, L, k, groupOf) {
  const G0 = T.G, bias = T.hasBias ? 1 : 0;
  const nGroups = Math.max(...groupOf) + 1;
  const G = nGroups + bias;
  const map = new Int32Array(G0);
  for (let s = 0; s < G0 - bias; s++) map[s] = groupOf[s];
  if (bias) map[G0 - 1] = G - 1;
  const sources = new Array(G).fill("");
  for (let p = 0; p < P; p++) sources[groupOf[p]] += T.sources[p];
  if (bias) sources[G - 1] = "bias";
  const first = new Uint16Array(G).fill(65535);
  for (let p = 0; p < P; p++) first[groupOf[p]] = Math.min(first[groupOf[p]], p);
  if (bias) first[G - 1] = 0;
  const sumInto = (src, lead) => {
    const out = new Float32Array(lead * G);
    for (let i = 0; i < lead; i++) {
      const a = i * G0, b = i * G;
      for (let s = 0; s < G0; s++) out[b + map[s]] += src[a + s];
    }
    return out;
  };
  const cells = L * 2 * P;
  return {
    name: "custom", label: "custom (approximate, sum of norms)", grouping: "custom", exact: false,
    sources, hasBias: T.hasBias, G, groups: Uint16Array.from(groupOf), first,
    norm: sumInto(T.norm, cells), delta: sumInto(T.delta, cells), proj: sumInto(T.proj, cells),
    logitAttr: sumInto(T.logitAttr, P * k),
    logitMean: T.logitMean ? sumInto(T.logitMean, 1) : null,      // linear too: exact (answer.js)
  };
}
