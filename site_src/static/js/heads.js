// Per-head views (issue 13). An attention block's write splits exactly by query head (o_proj's
// column blocks); the build stores, per prompt, a separate per-head file (docs/data-format.md,
// "Per-head data"), fetched the first time a head view opens, so the first draw never waits.
//
//   * the "Heads" panel: for a pinned attention cell, a heads × sources heat map (rows heads,
//     columns the cell's top sources, the stored value on hover); click a head for its
//     attention pattern row at that position, labelled by source;
//   * "trace head" (state.head = {l, h}, URL th=l.h): the grid becomes a heat map of that head's
//     share of its layer's attention write at every position (headBatches, called by the viewer).
//
// Surface: headBatches(viewer) and the panel registered below; decodeHeads(buffer, D) for tests
// and for a computed result (a viewer whose D.heads is already a decoded object never fetches).
import { decode as msgpackDecode } from "../vendor/msgpack/dist.esm/index.mjs";
import { DataError, damaged, checkArray, decodeArray, LIMITS, SCHEMA, MAX_FILE_BYTES } from "./data.js";
import { el } from "./dom.js";
import { registerPanel } from "./panels.js";
import { rampIndex } from "./compute.js";
import { fmtPct, fmtStored } from "./format.js";

const TOP_SOURCES = 8;        // columns of the heat map
const TOP_KEYS = 12;          // rows of a head's pattern list

// ----------------------------------------------------------------------------- the file

const isCount = (x) => Number.isInteger(x) && x >= 0;

function expect(a, shape, what) {
  if (!a || !Array.isArray(a.shape) || a.shape.length !== shape.length || a.shape.some((d, i) => d !== shape[i])) {
    throw damaged(`${what} has shape [${a && a.shape}], expected [${shape.join(",")}]`);
  }
  return checkArray(a, what).total;
}

/**
 * A per-head document -> {labels, H, Hx, writeNorm, writeProj (L·Hx·P), variant(name) -> promise
 * of {norm, proj, normQ, projQ}, pattern() -> promise of {data (L·H·P·P), scale}}. Every size is
 * checked against the main result D (and LIMITS) before anything is allocated.
 */
export async function decodeHeads(buffer, D) {
  let doc;
  try {
    doc = msgpackDecode(new Uint8Array(buffer));
  } catch (e) {
    throw damaged(`the per-head file is not msgpack (${e.message})`);
  }
  if (!doc || typeof doc !== "object" || doc.kind !== "heads") throw damaged("the per-head file is not a per-head document");
  if (doc.schema !== SCHEMA) throw new DataError(`The per-head file has schema ${doc.schema}; this viewer reads ${SCHEMA}.`);
  const { L, P } = D;
  if (doc.layers !== L || doc.positions !== P) throw damaged("the per-head file does not match this prompt's data file");
  if (D.url && typeof doc.main === "string" && !decodeURI(D.url).endsWith("/" + doc.main) && decodeURI(D.url) !== doc.main) {
    throw damaged(`the per-head file belongs to ${doc.main}, not to this page's data file`);
  }
  const H = doc.heads, labels = doc.labels;
  if (!isCount(H) || H < 1 || H > 4096) throw damaged("the per-head file has a bad head count");
  if (!Array.isArray(labels) || !(labels.length === H || labels.length === H + 1) || !labels.every((x) => typeof x === "string")) {
    throw damaged("the per-head file has bad head labels");
  }
  const Hx = labels.length;
  let total = expect(doc.write_norm, [L, Hx, P], "heads.write_norm") + expect(doc.write_proj, [L, Hx, P], "heads.write_proj")
    + expect(doc.pattern, [L, H, P, P], "heads.pattern");
  const byName = new Map();
  if (!Array.isArray(doc.variants) || doc.variants.length > LIMITS.variants) throw damaged("the per-head file has bad variants");
  for (const v of doc.variants) {
    if (!v || typeof v.name !== "string") throw damaged("a per-head variant has no name");
    byName.set(v.name, v);
  }
  for (const V of D.variants) {
    let v = byName.get(V.name);
    if (v && v.same_as !== undefined) v = byName.get(v.same_as);
    if (!v) continue;
    total += expect(v.norm, [L, Hx, P, V.G], `heads.${V.name}.norm`) + expect(v.proj, [L, Hx, P, V.G], `heads.${V.name}.proj`);
  }
  if (total > LIMITS.total) throw damaged(`the per-head file declares ${total} values in all, more than this viewer reads`);
  const [wn, wp] = await Promise.all([decodeArray(doc.write_norm, "heads.write_norm"), decodeArray(doc.write_proj, "heads.write_proj")]);
  const cache = new Map();
  let pattern = null;
  return {
    labels, H, Hx, writeNorm: wn.data, writeProj: wp.data,
    has(name) { return byName.has(name); },
    variant(name) {
      if (!cache.has(name)) {
        let v = byName.get(name);
        if (v && v.same_as !== undefined) v = byName.get(v.same_as);
        cache.set(name, v ? Promise.all([decodeArray(v.norm, `heads.${name}.norm`), decodeArray(v.proj, `heads.${name}.proj`)])
          .then(([n, p]) => ({ norm: n.data, proj: p.data, normQ: { scale: n.scale, q: n.q }, projQ: { scale: p.scale, q: p.q } }))
          : Promise.resolve(null));
      }
      return cache.get(name);
    },
    pattern() {
      pattern = pattern || decodeArray(doc.pattern, "heads.pattern").then((a) => ({ data: a.data, scale: a.scale, q: a.q }));
      return pattern;
    },
  };
}

async function fetchHeads(url, D) {
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new DataError(`Could not fetch the per-head file ${url} (${e.message}).`);
  }
  if (!resp.ok) throw new DataError(`Could not fetch the per-head file ${url} (HTTP ${resp.status}); rebuild the site to get it.`);
  if (Number(resp.headers.get("content-length")) > MAX_FILE_BYTES) throw damaged("the per-head file is too large");
  const buf = await resp.arrayBuffer();
  const t0 = performance.now();
  const HD = await decodeHeads(buf, D);
  HD.bytes = buf.byteLength;
  HD.decodeMs = performance.now() - t0;
  return HD;
}

/**
 * The per-head data of viewer v, and the current variant's arrays: started on first use, then
 * the viewer redraws what depends on "heads". Returns {HD, H: variant arrays} or null meanwhile.
 */
export function heads(v) {
  const st = v.headState || (v.headState = { HD: null, error: null, loading: false, variants: new Map() });
  if (st.error) return null;
  if (!st.HD && !st.loading) {
    const url = v.root && v.root.dataset ? v.root.dataset.headsSrc : "";
    const ready = v.D.heads ? Promise.resolve(v.D.heads) : url ? fetchHeads(url, v.D) : null;
    if (!ready) {
      st.error = v.options.noHeads || "This page has no per-head data (it was built before heads were stored). Rebuild the site.";
      return null;
    }
    st.loading = true;
    ready.then((HD) => { st.HD = HD; st.loading = false; redraw(v); },
      (e) => { st.error = e.message; st.loading = false; redraw(v); });
    return null;
  }
  if (!st.HD) return null;
  if (v.V.heads) return { HD: st.HD, H: v.V.heads };     // a variant computed with its heads (exact-custom.js)
  const name = v.V.name;
  if (!st.variants.has(name)) {
    st.variants.set(name, null);
    st.HD.variant(name).then((arrays) => { st.variants.set(name, arrays || false); redraw(v); },
      (e) => { st.error = e.message; redraw(v); });
  }
  const H = st.variants.get(name);
  return H === null ? null : { HD: st.HD, H };
}

function redraw(v) { v.set({}, { push: false, changed: ["head", "heads"] }); }

// ----------------------------------------------------------------------------- shares

/**
 * Head h's share of layer l's attention write at position p: ‖write_h‖ / Σ_h' ‖write_h'‖
 * (metrics norm and delta), or ⟨write_h, r⟩ / Σ_h' |⟨write_h', r⟩| (proj, signed).
 */
export function headShare(HD, signed, l, h, p, P) {
  const a = signed ? HD.writeProj : HD.writeNorm;
  let sum = 0;
  for (let j = 0; j < HD.Hx; j++) sum += Math.abs(a[(l * HD.Hx + j) * P + p]);
  return sum > 0 ? a[(l * HD.Hx + h) * P + p] / sum : 0;
}

/** The traced head's shares at every position, and the largest |share|: the ramp's end. */
export function traceHeadShares(HD, signed, l, h, P) {
  const shares = new Float32Array(P);
  let top = 0;
  for (let p = 0; p < P; p++) {
    shares[p] = headShare(HD, signed, l, h, p, P);
    top = Math.max(top, Math.abs(shares[p]));
  }
  return { shares, top };
}

/**
 * The trace-head grid (batches as compute.js makes them), [] while loading, null when off.
 * The ramp runs from 0 (or −top) to `top`, the head's largest |share| at any position, so a
 * head that never takes more than 1/H of the write is still readable; the legend says `top`.
 */
export function headBatches(v) {
  const s = v.state;
  if (!s.head) return null;
  const got = heads(v);
  if (!got) return [];
  const { HD } = got, { L, P } = v.D, { l, h } = s.head;
  if (l >= L || h >= HD.Hx) return [];
  const signed = s.metric === "proj";
  const ramp = signed ? v.divRamp : v.seqRamp;
  const { shares, top } = traceHeadShares(HD, signed, l, h, P);
  const batches = ramp.map((color) => ({ color, source: -1, items: new Float32Array(5 * P), n: 0 }));
  for (let p = 0; p < P; p++) {
    const x = top > 0 ? shares[p] / top : 0;
    const b = batches[rampIndex(x, signed ? -1 : 0, 1, ramp.length)];
    b.items.set([(2 * l) * P + p, 0, 1, 0, 1], 5 * b.n++);
  }
  return batches.filter((b) => b.n);
}

/** "l.h" -> {l, h} within bounds, else null (the URL's th=). */
export function parseHead(text, L, maxHeads = 4096) {
  const m = /^(\d+)\.(\d+)$/.exec(text || "");
  if (!m || +m[1] >= L || +m[2] >= maxHeads) return null;
  return { l: +m[1], h: +m[2] };
}

// ----------------------------------------------------------------------------- the panel

const headName = (HD, l, h) => (h < HD.H ? `${l}.${h}` : `${l}.${HD.labels[h]}`);

function swatchRamp(ramp, lo, hi) {
  const bar = el("span", { class: "ramp", "aria-hidden": "true" });
  for (const c of ramp) {
    const sw = el("span", { class: "ramp-step" });
    sw.style.background = c;
    bar.append(sw);
  }
  return el("span", {}, el("span", { text: `${lo} ` }), bar, el("span", { text: ` ${hi}` }));
}

/** The trace-head legend: what a cell's colour is, and the ramp's ends. */
function traceHeadLegend(v, HD, tag = "p") {
  const { l, h } = v.state.head, signed = v.state.metric === "proj";
  const { top } = traceHeadShares(HD, signed, l, h, v.D.P);
  return el(tag, { class: "heads-trace" },
    el("strong", { text: `Trace head ${headName(HD, l, h)}: ` }),
    el("span", { text: signed
      ? `each cell of layer ${l}'s attention row is this head's signed share of the block's write, ⟨write_h, r⟩ / Σ_h |⟨write_h, r⟩| (r: the residual after the block); `
      : `each cell of layer ${l}'s attention row is this head's share of the block's write, ‖write_h‖ / Σ_h ‖write_h‖ (${HD.Hx} heads); ` }),
    el("span", { text: "a head writes only in its own layer, so every other row is empty. " }),
    swatchRamp(signed ? v.divRamp : v.seqRamp, signed ? `\u2212${fmtPct(top)}` : "0%", fmtPct(top)),
    el("span", { class: "muted", text: " (the ramp ends at this head's largest share) " }),
    el("button", { type: "button", class: "heads-untrace", text: "End trace head", onclick: () => v.set({ head: null }) }));
}

function renderTraceHead(v, HD, frag) { frag.append(traceHeadLegend(v, HD)); }

/** In trace-head mode the caption under the grid explains the heat map (runs after the caption panel). */
function renderCaption(v, box) {
  if (!v.state.head || !box) return;
  const got = heads(v);
  box.replaceChildren(got ? traceHeadLegend(v, got.HD, "span")
    : el("span", { text: v.headState && v.headState.error ? v.headState.error : "Trace head: loading the per-head data…" }));
}

function render(v, box) {
  const s = v.state, frag = document.createDocumentFragment();
  const pin = s.pin;
  const wanted = s.head || (pin && pin.k === 0);
  if (!wanted) {
    box.replaceChildren(el("p", { class: "muted", text: "Pin an attention cell to split its write by head."
      + (v.D.heads ? "" : " (The per-head file is fetched then, not before.)") }));
    return;
  }
  const got = heads(v);
  if (v.headState && v.headState.error) {
    box.replaceChildren(el("p", { class: "error-box", text: v.headState.error }));
    return;
  }
  if (!got) {
    box.replaceChildren(el("p", { class: "muted", text: "Loading the per-head data…" }));
    return;
  }
  const { HD, H } = got;
  if (s.head) renderTraceHead(v, HD, frag);
  if (pin && pin.k === 0) {
    if (!H) frag.append(el("p", { class: "muted", text: "Per-head data is stored for the exact groupings only; choose tokens, words or a declared grouping." }));
    else frag.append(heatMap(v, HD, H, pin));
  } else if (pin) {
    frag.append(el("p", { class: "muted", text: "The pinned cell is an MLP: heads live in attention cells." }));
  }
  box.replaceChildren(frag);
}

/** The pinned cell's heads × sources table, its hover readout, and the picked head's pattern. */
function heatMap(v, HD, H, pin) {
  const { D, V, labels, state: s } = v, { l, p } = pin, { P } = D, G = V.G, Hx = HD.Hx;
  const signed = s.metric === "proj";
  const arr = signed ? H.proj : H.norm, qz = signed ? H.projQ : H.normQ;
  // columns: the sources that wrote the most at this cell (what the block wrote, summed over heads)
  const delta = V.delta || V.norm;
  const base = ((l * 2) * P + p) * G;
  const cols = [];
  for (let src = 0; src < G; src++) if (V.first[src] <= p || (V.hasBias && src === G - 1)) cols.push(src);
  const colScore = (src) => {
    let x = 0;
    for (let h = 0; h < Hx; h++) x += Math.abs(arr[((l * Hx + h) * P + p) * G + src]);
    return x;
  };
  const score = new Map(cols.map((src) => [src, delta ? delta[base + src] + 1e-9 * colScore(src) : colScore(src)]));
  cols.sort((a, b) => score.get(b) - score.get(a));
  const shown = cols.slice(0, TOP_SOURCES);
  let max = 0;
  for (let h = 0; h < Hx; h++) for (const src of shown) max = Math.max(max, Math.abs(arr[((l * Hx + h) * P + p) * G + src]));
  const ramp = signed ? v.divRamp : v.seqRamp;
  const readout = el("p", { class: "heads-readout mono", "aria-live": "polite", text: "Hover a cell for its value." });
  const table = el("table", { class: "heads-map", "aria-label": `Heads by sources at layer ${l} attention, position ${p}` });
  table.style.borderCollapse = "collapse";
  table.append(el("tr", {}, el("th", { text: "head" }), ...shown.map((src) => el("th", { class: "mono", text: labels[src], title: labels[src] })),
    el("th", { text: "all", title: signed ? "the head's whole write at this position, all sources: ⟨write_h, r⟩/‖r‖² (float32)"
      : "the head's whole write at this position, all sources: ‖write_h‖ (float32)" })));
  const pick = v.headPick && v.headPick.l === l && v.headPick.p === p ? v.headPick.h : -1;
  for (let h = 0; h < Hx; h++) {
    const row = (l * Hx + h) * P + p, step = qz.scale[row] / qz.q;
    const name = headName(HD, l, h);
    const tr = el("tr", { class: h === pick ? "is-picked" : "", "data-head": h, title: h < HD.H ? `Show head ${name}'s attention pattern` : "" },
      el("th", { class: "mono", text: (h === pick ? "\u25b8\u00a0" : "") + name }));
    tr.firstChild.style.whiteSpace = "nowrap";
    if (h < HD.H) tr.style.cursor = "pointer";
    for (const src of shown) {
      const x = arr[row * G + src];
      const td = el("td", { "data-src": src });
      Object.assign(td.style, { minWidth: "2.2em", height: "1.3em", border: "1px solid var(--canvas-bg, #fff)", cursor: "crosshair" });
      td.style.background = ramp[rampIndex(max > 0 ? x / max : 0, signed ? -1 : 0, 1, ramp.length)];
      const what = signed ? "⟨part, r⟩/‖r‖²" : "‖part‖";
      const text = `head ${name} × ${labels[src]}: ${what} = ${fmtStored(x, step)} (stored in 8 bits: within ±${fmtStored(step / 2, step / 10)})`;
      td.title = text;
      td.addEventListener("mouseenter", () => { readout.textContent = text; });
      tr.append(td);
    }
    const whole = (signed ? HD.writeProj : HD.writeNorm)[row];
    tr.append(el("td", { class: "num", text: signed ? whole.toFixed(3) : whole.toPrecision(3) }));
    if (h < HD.H) tr.addEventListener("click", () => { v.headPick = { l, p, h }; v.set({}, { push: false, changed: ["heads"] }); });
    table.append(tr);
  }
  const head = el("p", {}, el("strong", { text: `Layer ${l} attention at position ${p} ` }),
    el("span", { class: "mono tok-inline", text: v.tokenLabels[p] }),
    el("span", { class: "muted", text: signed
      ? ": each head's part of what the block wrote for each source, as a signed share of the residual (Σ over heads = that source's share of the write)."
      : ": the norm of each head's part of what the block wrote for each source (the parts sum, as vectors, to the write)." }));
  const frag = document.createDocumentFragment();
  frag.append(head, el("div", { class: "heads-scroll" }, table), readout,
    el("p", { class: "muted", text: `Colour: ${signed ? "−" : "0 to "}the largest |value| in this table (${max.toPrecision(3)}). Click a head for its attention pattern.` }));
  if (pick >= 0) frag.append(patternBox(v, HD, l, pick, p));
  return frag;
}

/** Head (l, h)'s attention from position p to every key, summed within the variant's sources. */
function patternBox(v, HD, l, h, p) {
  const box = el("div", { class: "heads-pattern" }, el("p", { class: "muted", text: "Loading the pattern…" }));
  HD.pattern().then((A) => {
    const { D, V, labels } = v, P = D.P;
    const row = ((l * HD.H + h) * P + p), base = row * P, step = A.scale[row] / A.q;
    const bySource = new Map();
    for (let t = 0; t <= p; t++) bySource.set(V.groups[t], (bySource.get(V.groups[t]) || 0) + A.data[base + t]);
    const items = [...bySource.entries()].sort((a, b) => b[1] - a[1]);
    const top = items.slice(0, TOP_KEYS), rest = items.slice(TOP_KEYS).reduce((x, [, w]) => x + w, 0);
    const list = el("div", { class: "attr-chart", role: "table", "aria-label": `Head ${l}.${h}'s attention from position ${p}` });
    list.style.gridTemplateColumns = "minmax(80px, 1.2fr) 2fr 56px";
    const add = (label, w, src) => {
      const bar = el("span", { class: "attr-bar" });
      bar.style.width = fmtPct(Math.max(0, Math.min(1, w)));
      bar.style.background = src >= 0 ? v.colorOf(src) : v.theme.neutral;
      list.append(el("div", { class: "attr-row", role: "row", "data-src": src },
        el("span", { class: "attr-label mono", role: "cell", text: label }), el("span", { class: "attr-pos" }, bar),
        el("span", { class: "num", role: "cell", text: fmtPct(w) })));
    };
    for (const [src, w] of top) add(labels[src], w, src);
    if (items.length > TOP_KEYS) add(`${items.length - TOP_KEYS} other sources`, rest, -1);
    box.replaceChildren(
      el("p", {}, el("strong", { text: `Head ${l}.${h} attends from position ${p} ` }), el("span", { class: "mono tok-inline", text: v.tokenLabels[p] }),
        el("span", { text: " to:" })),
      list,
      el("p", { class: "muted", text: `Frozen attention weights, summed within each source; stored in 8 bits per row (each weight within ±${fmtPct(step / 2)}).` }),
      el("button", { type: "button", class: "heads-trace-button", text: `Trace head ${l}.${h}`, onclick: () => v.set({ head: { l, h } }) }));
  }, (e) => box.replaceChildren(el("p", { class: "error-box", text: e.message })));
  return box;
}

registerPanel({ id: "heads", title: "Heads", deps: ["pin", "variant", "custom", "metric", "head", "heads", "theme"], render });
registerPanel({ id: "heads-caption", deps: ["colors", "head", "heads", "metric"], render: renderCaption,
  box: () => document.getElementById("grid-caption") });
