// The viewer's state, and its mirror in the URL hash (every view is a link).
//
// Sources are named in the state by a *key* that survives a change of grouping: the position of
// a token (the source is the group holding it) or "b" for the bias source.

export const METRICS = {
  norm: "cumulative norm share",
  delta: "what this block wrote (delta)",
  proj: "signed projection share",
};

/** What each metric means, for the caption under the grid and the help dialog. */
export const METRIC_HELP = {
  norm: "each segment is one source's share of the residual stream's size after this block "
    + "(‖its part‖ / Σ‖parts‖): where the information at this position came from so far.",
  delta: "each segment is one source's share of what this block itself wrote at this position "
    + "(‖its part of the block's output‖ / Σ): what the block moved, not what was already there.",
  proj: "signed share ⟨part, residual⟩ / ‖residual‖²: right of the zero line pushes the residual's "
    + "direction, left of it cancels; the shares sum to 1.",
};

/** Segment order inside a bar: by source position (stable across rows) or by size. */
export const ORDERS = ["position", "size"];
export const DEFAULT_ORDER = "position";

/** What a share is a share of. "whole": the whole residual, hidden sources included (drawn
 * hatched); "shown": the sources not hidden, a mode every caption, tooltip and export names. */
export const SHARE_OF = {
  whole: "share of the whole residual",
  shown: "share of the sources shown",
};

export const DEFAULT_STATE = () => ({
  metric: "norm", variant: null, trace: null, hidden: new Set([0]), shown: false, heat: false, emph: "attn",
  order: DEFAULT_ORDER, view: { z: 1, x: 0, y: 0 }, pin: null, pred: null, custom: null,
  head: null,   // trace head {l, h} (heads.js)
});

const byKey = (a, b) => String(a).localeCompare(String(b), undefined, { numeric: true });

export function encodeHash(s, defaultVariant) {
  const q = [`m=${s.metric}`, `g=${encodeURIComponent(s.variant || defaultVariant)}`,
    `h=${[...s.hidden].sort(byKey).join(",")}`];
  if (s.trace !== null) q.push(`t=${s.trace}`);
  if (s.shown) q.push("n=shown");
  if (s.heat) q.push("heat=1");
  if (s.emph !== "attn") q.push(`e=${s.emph}`);
  if (s.order !== DEFAULT_ORDER) q.push(`o=${s.order}`);
  const v = s.view;
  if (v.z > 1.0001) q.push(`z=${v.z.toFixed(3)},${Math.round(v.x)},${Math.round(v.y)}`);
  if (s.pin) q.push(`pin=${s.pin.l}.${s.pin.k}.${s.pin.p}`);
  if (s.pred !== null) q.push(`pp=${s.pred}`);
  if (s.custom) q.push(`cg=${s.custom.join(".")}`);
  if (s.head) q.push(`th=${s.head.l}.${s.head.h}`);
  return "#" + q.join("&");
}

/** The state a hash describes; anything malformed or out of range falls back to the default. */
export function parseHash(hash, D, defaultVariant) {
  const s = DEFAULT_STATE();
  const { P, L } = D;
  const key = (x) => (x === "b" ? "b" : (/^\d+$/.test(x) && +x < P ? +x : null));
  const q = new URLSearchParams(hash.replace(/^#/, ""));
  if (METRICS[q.get("m")]) s.metric = q.get("m");
  const g = q.get("g");
  if (g && (g === "custom" || D.variants.some((v) => v.name === g))) s.variant = g;
  if (q.has("h")) s.hidden = new Set(q.get("h").split(",").map(key).filter((x) => x !== null));
  if (q.has("t")) s.trace = key(q.get("t"));
  s.heat = q.get("heat") === "1";
  s.shown = q.get("n") === "shown";
  if (q.get("e") === "mlp") s.emph = "mlp";
  if (ORDERS.includes(q.get("o"))) s.order = q.get("o");
  const z = (q.get("z") || "").split(",").map(Number);
  if (z.length === 3 && z.every(Number.isFinite)) s.view = { z: z[0], x: z[1], y: z[2] };
  const pin = (q.get("pin") || "").split(".").map(Number);
  if (pin.length === 3 && pin.every(Number.isInteger) && pin[0] >= 0 && pin[0] < L
      && (pin[1] === 0 || pin[1] === 1) && pin[2] >= 0 && pin[2] < P) {
    s.pin = { l: pin[0], k: pin[1], p: pin[2] };
  }
  const pp = q.get("pp");
  if (pp !== null && /^\d+$/.test(pp) && +pp < P) s.pred = +pp;
  const cg = q.get("cg");
  if (cg) {
    const a = cg.split(".").map(Number);
    if (a.length === P && a.every((x) => Number.isInteger(x) && x >= 0 && x < P)) s.custom = renumber(a);
  }
  if (s.variant === "custom" && !s.custom) s.custom = [...Array(P).keys()];
  if (!s.variant) s.variant = defaultVariant;
  const th = /^(\d+)\.(\d+)$/.exec(q.get("th") || "");           // trace head l.h (+1: an o_proj bias)
  if (th && +th[1] < L && +th[2] <= ((D.model && D.model.heads) || 4096)) s.head = { l: +th[1], h: +th[2] };
  return s;
}

/** Group ids numbered 0.. in order of first use. */
export function renumber(a) {
  const m = new Map();
  return a.map((g) => { if (!m.has(g)) m.set(g, m.size); return m.get(g); });
}

// ----------------------------------------------------------------------------- source keys

export const isBias = (V, s) => V.hasBias && s === V.G - 1;
export const sourceKey = (V, s) => (isBias(V, s) ? "b" : V.first[s]);
/** The source index a key names in variant V, or -1. */
export function keySource(V, key) {
  if (key === null || key === undefined) return -1;
  if (key === "b") return V.hasBias ? V.G - 1 : -1;
  return V.groups[key];
}

/** Hidden sources of V as a mask. The traced source is hidden in the state but shown. */
export function hiddenMask(V, hidden, traced = -1) {
  const m = new Uint8Array(V.G);
  for (const key of hidden) {
    const s = keySource(V, key);
    if (s >= 0) m[s] = 1;
  }
  if (traced >= 0) m[traced] = 0;
  return m;
}
