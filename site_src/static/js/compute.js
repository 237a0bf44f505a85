// From a decoded variant and the view state to drawable batches, tooltips and summaries.

export const THRESHOLD = 0.02;   // segments narrower than this share merge into the remainder

/** Index of (layer l, sublayer k, position p, source s) in a dense (L, 2, P, G) array. */
export const at = (P, G, l, k, p, s) => ((l * 2 + k) * P + p) * G + s;

class Batch {
  constructor(color) {
    this.color = color;
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

/** A source is present at p when it has started (first[s] <= p); the bias source always is. */
function presentMask(V, p) {
  return (s) => V.first[s] <= p;
}

/**
 * Batches for the whole grid.
 * opts: {metric: "norm"|"delta"|"proj", hidden: Uint8Array(G), trace: source or -1, heat: bool,
 *        colors: [G hex], neutral, neg, pos, seqRamp: [hex], divRamp: [hex]}
 */
export function buildBatches(V, L, P, opts) {
  const G = V.G;
  const arr = V[opts.metric];
  const hidden = opts.hidden;
  const batches = new Map();
  const batch = (key, color) => {
    let b = batches.get(key);
    if (!b) { b = new Batch(color); batches.set(key, b); }
    return b;
  };
  const t = opts.trace;
  const signed = opts.metric === "proj";
  const idx = new Int32Array(G), val = new Float32Array(G);

  for (let l = 0; l < L; l++) {
    for (let k = 0; k < 2; k++) {
      const row = 2 * l + k;
      for (let p = 0; p < P; p++) {
        const cell = row * P + p;
        const base = at(P, G, l, k, p, 0);
        // visible, present sources of this cell
        let n = 0, sum = 0, abs = 0;
        for (let s = 0; s < G; s++) {
          if (hidden[s] && s !== t) continue;
          if (V.first[s] > p) continue;
          const x = arr[base + s];
          if (x === 0) continue;
          idx[n] = s; val[n] = x; n++;
          sum += x; abs += Math.abs(x);
        }
        if (t >= 0) {
          if (V.first[t] > p) continue;
          const x = arr[base + t];
          if (signed) {
            const v = Math.max(-1, Math.min(1, x));
            if (opts.heat) {
              const ramp = opts.divRamp, i = Math.round((v + 1) / 2 * (ramp.length - 1));
              batch("d" + i, ramp[i]).push(cell, 0, 1, 0, 1);
            } else if (v >= 0) batch("pos", opts.pos).push(cell, 0.5, 0.5 + v / 2, 0, 1);
            else batch("neg", opts.neg).push(cell, 0.5 + v / 2, 0.5, 0, 1);
          } else {
            const share = sum > 0 ? x / sum : 0;
            if (opts.heat) {
              const ramp = opts.seqRamp, i = Math.round(share * (ramp.length - 1));
              batch("h" + i, ramp[i]).push(cell, 0, 1, 0, 1);
            } else batch("s" + t, opts.colors[t]).push(cell, 0, share, 0, 1);
          }
          continue;
        }
        if (n === 0) continue;
        if (!signed) {
          if (sum <= 0) continue;
          // largest first; only segments above the threshold
          const big = [];
          for (let i = 0; i < n; i++) if (val[i] / sum >= THRESHOLD) big.push(i);
          big.sort((a, b) => val[b] - val[a]);
          let x = 0;
          for (const i of big) {
            const w = val[i] / sum;
            batch("s" + idx[i], opts.colors[idx[i]]).push(cell, x, x + w, 0, 1);
            x += w;
          }
          if (x < 0.9999) batch("rest", opts.neutral).push(cell, x, 1, 0, 1);
        } else {
          if (abs <= 0) continue;
          // negative parts left of zero, positive parts right of it; both largest next to zero
          let negSum = 0;
          for (let i = 0; i < n; i++) if (val[i] < 0) negSum -= val[i];
          const zero = negSum / abs;
          const pos = [], neg = [];
          let restPos = 0, restNeg = 0;
          for (let i = 0; i < n; i++) {
            const w = Math.abs(val[i]) / abs;
            if (w >= THRESHOLD) (val[i] > 0 ? pos : neg).push(i);
            else if (val[i] > 0) restPos += w; else restNeg += w;
          }
          pos.sort((a, b) => val[b] - val[a]);
          neg.sort((a, b) => val[a] - val[b]);
          let x = zero;
          for (const i of pos) {
            const w = val[i] / abs;
            batch("s" + idx[i], opts.colors[idx[i]]).push(cell, x, x + w, 0, 1);
            x += w;
          }
          if (restPos > 0) batch("rest", opts.neutral).push(cell, x, 1, 0, 1);
          x = zero;
          for (const i of neg) {
            const w = -val[i] / abs;
            batch("s" + idx[i], opts.colors[idx[i]]).push(cell, x - w, x, 0, 1);
            x -= w;
          }
          if (restNeg > 0) batch("rest", opts.neutral).push(cell, 0, x, 0, 1);
          // diverging sign strips: red under the negative part, blue under the positive part
          if (zero > 0) batch("neg", opts.neg).push(cell, 0, zero, 0.62, 1);
          batch("pos", opts.pos).push(cell, zero, 1, 0.8, 1);
        }
      }
    }
  }
  // draw order: sign strips last, so they sit on top of the segments
  const out = [...batches.entries()];
  out.sort((a, b) => order(a[0]) - order(b[0]));
  return out.map(([, b]) => b);
}

const order = (key) => (key === "neg" || key === "pos" ? 2 : key === "rest" ? 0 : 1);

/** Per-source values of one cell: [{s, value, share}] sorted by |share|, largest first. */
export function cellSources(V, P, metric, hidden, l, k, p) {
  const G = V.G, arr = V[metric], base = at(P, G, l, k, p, 0);
  const rows = [];
  let sum = 0;
  for (let s = 0; s < G; s++) {
    if (hidden[s] || V.first[s] > p) continue;
    const x = arr[base + s];
    rows.push({ s, value: x });
    sum += metric === "proj" ? 0 : x;
  }
  for (const r of rows) r.share = metric === "proj" ? r.value : (sum > 0 ? r.value / sum : 0);
  rows.sort((a, b) => Math.abs(b.share) - Math.abs(a.share));
  return rows;
}

/**
 * A browser-made grouping from the `tokens` variant: values are summed over the members of a
 * group. For norms that is a sum of norms (an upper bound, not the norm of the summed vector),
 * so the variant is marked approximate. proj and logit attribution are linear, so exact.
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
  };
}
