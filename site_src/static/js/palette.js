// Source colours: at most ten, all colour-blind safe (Okabe-Ito's seven hues without black,
// plus Paul Tol's indigo, wine and olive). More than about ten colours cannot be told apart, so
// the viewer colours the ten largest visible sources and draws the rest as grey "others".
// infoflow/site.py reads the hex strings of PALETTE below (one line) to draw thumbnails.
export const PALETTE = [ "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#332288", "#882255", "#999933" ];
export const MAX_COLORS = PALETTE.length;
/** On a dark background: the same hues, with indigo and wine lightened so they stay visible. */
export const PALETTE_DARK = PALETTE.map((c) => ({ "#332288": "#7A6AD8", "#882255": "#C8578A" })[c] || c);

function rgbToHex([r, g, b]) {
  return "#" + [r, g, b].map((v) => Math.max(0, Math.min(255, Math.round(v))).toString(16).padStart(2, "0")).join("");
}

/** `n` colours of a sequential ramp from `bg` (share 0) to a saturated blue-violet (share 1). */
export function sequentialRamp(n, dark) {
  const stops = dark
    ? [[30, 32, 40], [40, 70, 130], [60, 140, 200], [150, 220, 190], [250, 250, 160]]
    : [[250, 250, 245], [200, 225, 240], [110, 170, 215], [40, 100, 175], [10, 40, 110]];
  return ramp(stops, n);
}

/** `n` colours of a diverging ramp: red (-1) through neutral (0) to blue (+1). */
export function divergingRamp(n, dark) {
  const stops = dark
    ? [[230, 90, 80], [150, 70, 70], [45, 47, 55], [70, 110, 160], [100, 170, 240]]
    : [[178, 24, 43], [239, 138, 98], [247, 247, 247], [103, 169, 207], [33, 102, 172]];
  return ramp(stops, n);
}

function ramp(stops, n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const t = (i / (n - 1)) * (stops.length - 1);
    const j = Math.min(Math.floor(t), stops.length - 2), f = t - j;
    out.push(rgbToHex(stops[j].map((v, c) => v + (stops[j + 1][c] - v) * f)));
  }
  return out;
}

export const NEG_COLOR = { light: "#B2182B", dark: "#F07060" };
export const POS_COLOR = { light: "#2166AC", dark: "#64AAF0" };
