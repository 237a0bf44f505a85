// Text shown to people: tokens, source labels and numbers. Everything here returns plain
// strings; callers put them in the page with textContent only (tokens are untrusted).

/**
 * A token as shown: a space is "␣" (a lone "·" read as a bullet), a newline "⏎", a tab "⇥".
 */
export function displayToken(t) {
  return decodeMarkers(String(t)).replace(/ /g, "\u2423").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5");
}

const MARKER_RUN = /(?:<0x[0-9A-F]{2}>)+/g;
const markerBytes = (run) => Uint8Array.from(run.match(/[0-9A-F]{2}(?=>)/g), (h) => parseInt(h, 16));

/** Runs of byte pieces (<0xE6><0x88><0x91>) that form whole UTF-8 characters, as those characters. */
export function decodeMarkers(text) {
  return text.replace(MARKER_RUN, (run) => {
    try { return new TextDecoder("utf-8", { fatal: true }).decode(markerBytes(run)); } catch { return run; }
  });
}

/**
 * One label per token, where a character's bytes are spread over several tokens (byte fallback:
 * "<0xE6>", "<0x88><0x91>"): each such token shows the character it is part of, with its part
 * as a subscript ("我₁⁄₂", "我₂⁄₂"). Other tokens: displayToken.
 */
export function tokenTexts(tokens) {
  const out = tokens.map(displayToken);
  const isRun = (t) => /^(?:<0x[0-9A-F]{2}>)+$/.test(t);
  for (let i = 0; i < tokens.length; i++) {
    if (!isRun(tokens[i])) continue;
    // the shortest run of byte tokens from i that decodes as whole characters
    let bytes = [];
    for (let j = i; j < tokens.length && isRun(tokens[j]); j++) {
      bytes = [...bytes, ...markerBytes(tokens[j])];
      let text = null;
      try { text = new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(bytes)); } catch { continue; }
      const n = j - i + 1;
      const shown = displayToken(text);
      for (let q = i; q <= j; q++) out[q] = n > 1 ? `${shown}${subscript(q - i + 1)}\u2044${subscript(n)}` : shown;
      i = j;
      break;
    }
  }
  return out;
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
