// Text shown to people: tokens, source labels and numbers. Everything here returns plain
// strings; callers put them in the page with textContent only (tokens are untrusted).

/**
 * A token as shown: a space is "␣" (a lone "·" read as a bullet), a newline "⏎", a tab "⇥".
 */
export function displayToken(t) {
  return String(t).replace(/ /g, "\u2423").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5");
}

const SUB = "\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089";
/** 12 -> "₁₂" */
export const subscript = (n) => String(n).replace(/\d/g, (d) => SUB[+d]);

const LABELS = new WeakMap();
/**
 * One label per source of variant V: its text as displayToken shows it, plus the source's first
 * position as a subscript wherever two sources share a text ("John₃" and "John₉"), so that
 * "which John?" has an answer in the legend, tooltips, attribution and exports.
 */
export function sourceLabels(V) {
  let out = LABELS.get(V);
  if (out) return out;
  const isBias = (s) => V.hasBias && s === V.G - 1;
  const base = [];
  for (let s = 0; s < V.G; s++) base.push(isBias(s) ? "bias" : displayToken(V.sources[s]));
  const count = new Map();
  for (const b of base) count.set(b, (count.get(b) || 0) + 1);
  out = base.map((b, s) => (count.get(b) > 1 && !isBias(s) ? b + subscript(V.first[s]) : b));
  LABELS.set(V, out);
  return out;
}

export const fmtPct = (x) => `${(x * 100).toFixed(1)}%`;

/**
 * A stored value with as many digits as it was stored with: `step` is the quantization step
 * (the cell's largest value / 255 for u8), so 29.546 with a step of 0.116 prints "29.5".
 */
export function fmtStored(x, step) {
  if (!(step > 0)) return fmtNum(x);
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step))));
  return x.toFixed(decimals);
}

export const fmtNum = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(2));
