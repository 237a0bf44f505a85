// The prompt page: state (mirrored in the URL hash), the grid, and every panel around it.
import { loadData, DataError, ensureMetric, ensureAll, METRIC_KEYS } from "./data.js";
import { Grid, displayToken } from "./grid.js";
import { buildBatches, cellSources, customVariant, at, THRESHOLD } from "./compute.js";
import { sourceColor, sequentialRamp, divergingRamp, NEG_COLOR, POS_COLOR } from "./palette.js";
import { isDark } from "./theme.js";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const METRICS = {
  norm: "cumulative norm share",
  delta: "what this block wrote (delta)",
  proj: "signed projection share",
};
const fmtPct = (x) => `${(x * 100).toFixed(1)}%`;
const fmtNum = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(2));

// ----------------------------------------------------------------------------- state

const DEFAULT = () => ({
  metric: "norm", variant: null, trace: null, hidden: new Set([0]), heat: false, emph: "attn",
  view: { z: 1, x: 0, y: 0 }, pin: null, pred: null, custom: null,
});

function encodeHash(s, defaultVariant) {
  const q = [];
  q.push(`m=${s.metric}`);
  q.push(`g=${encodeURIComponent(s.variant || defaultVariant)}`);
  q.push(`h=${[...s.hidden].sort((a, b) => String(a).localeCompare(String(b), undefined, { numeric: true })).join(",")}`);
  if (s.trace !== null) q.push(`t=${s.trace}`);
  if (s.heat) q.push("heat=1");
  if (s.emph !== "attn") q.push(`e=${s.emph}`);
  const v = s.view;
  if (v.z > 1.0001) q.push(`z=${v.z.toFixed(3)},${Math.round(v.x)},${Math.round(v.y)}`);
  if (s.pin) q.push(`pin=${s.pin.l}.${s.pin.k}.${s.pin.p}`);
  if (s.pred !== null) q.push(`pp=${s.pred}`);
  if (s.custom) q.push(`cg=${s.custom.join(".")}`);
  return "#" + q.join("&");
}

function parseHash(hash, D, defaultVariant) {
  const s = DEFAULT();
  const P = D.P, L = D.L;
  const key = (x) => (x === "b" ? "b" : (/^\d+$/.test(x) && +x < P ? +x : null));
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  if (METRICS[params.get("m")]) s.metric = params.get("m");
  const g = params.get("g");
  if (g && (g === "custom" || D.variants.some((v) => v.name === g))) s.variant = g;
  if (params.has("h")) {
    s.hidden = new Set(params.get("h").split(",").map(key).filter((x) => x !== null));
  }
  if (params.has("t")) s.trace = key(params.get("t"));
  s.heat = params.get("heat") === "1";
  if (params.get("e") === "mlp") s.emph = "mlp";
  const z = (params.get("z") || "").split(",").map(Number);
  if (z.length === 3 && z.every(Number.isFinite)) s.view = { z: z[0], x: z[1], y: z[2] };
  const pin = (params.get("pin") || "").split(".").map(Number);
  if (pin.length === 3 && pin.every(Number.isInteger) && pin[0] >= 0 && pin[0] < L && (pin[1] === 0 || pin[1] === 1) && pin[2] >= 0 && pin[2] < P) {
    s.pin = { l: pin[0], k: pin[1], p: pin[2] };
  }
  const pp = params.get("pp");
  if (pp !== null && /^\d+$/.test(pp) && +pp < P) s.pred = +pp;
  const cg = params.get("cg");
  if (cg) {
    const a = cg.split(".").map(Number);
    if (a.length === P && a.every((x) => Number.isInteger(x) && x >= 0 && x < P)) s.custom = renumber(a);
  }
  if (s.variant === "custom" && !s.custom) s.custom = [...Array(P).keys()];
  if (!s.variant) s.variant = defaultVariant;
  return s;
}

/** Group ids numbered 0.. in order of first use. */
function renumber(a) {
  const m = new Map();
  return a.map((g) => { if (!m.has(g)) m.set(g, m.size); return m.get(g); });
}

// ----------------------------------------------------------------------------- the app

class Viewer {
  constructor(root) {
    this.root = root;
    this.src = root.dataset.src;
    this.timings = {};
    this.state = DEFAULT();
    this.grid = new Grid($("grid"));
    this.customCache = { key: null, V: null };
    this.selection = null;   // [a, b] token range for custom groups
    this.seq = 0;
    this.pending = false;
    this.loading = false;
    this.anchor = null;
    this.frame = 0;
  }

  async start() {
    const tStart = performance.now();
    let D;
    try {
      // decode first only what the first view shows (the hash may ask for another metric / grouping)
      const q = new URLSearchParams(location.hash.replace(/^#/, ""));
      const m = METRICS[q.get("m")] ? q.get("m") : "norm";
      const g = q.get("g") || "words";
      const eager = g === "custom" ? METRIC_KEYS.map((k) => ["tokens", k]) : [[g, m]];
      D = await loadData(this.src, { eager });
    } catch (e) {
      this.fail(e);
      return;
    }
    this.D = D;
    this.timings.download = D.timings.download;
    this.timings.decode = D.timings.decode;
    try {
      this.defaultVariant = (D.variants.find((v) => v.name === "words") || D.variants[0]).name;
      this.state = parseHash(location.hash, D, this.defaultVariant);
      $("loading").hidden = true;
      $("toolbar").hidden = false;
      $("grid-wrap").hidden = false;
      $("panels").hidden = false;
      this.buildControls();
      this.grid.setShape(D.L, D.P);
      this.readTheme();
      this.grid.resize($("grid-wrap").clientWidth);
      const t0 = performance.now();
      await this.ensureArrays();
      this.applyState({ push: false, first: true });
      this.timings.firstDraw = performance.now() - t0;
      // the rest of the file in the background, so later switches are instant
      this.loading = true;
      const t1 = performance.now();
      setTimeout(() => ensureAll(D).then(() => {
        this.timings.decodeRest = performance.now() - t1;
        this.loading = false;
      }, (e) => this.fail(e)), 0);
      this.timings.sinceStart = performance.now() - tStart;
      this.bindEvents();
      this.fillProvenance();
      history.replaceState(null, "", this.hash());
      document.documentElement.dataset.viewerReady = "1";
    } catch (e) {
      this.fail(e);
    }
  }

  fail(e) {
    console.warn(e);
    const box = $("error");
    box.replaceChildren(
      el("strong", { text: e instanceof DataError ? "Cannot show this prompt. " : "The viewer failed. " }),
      el("span", { text: e instanceof DataError ? e.message : `${e.name}: ${e.message}` }));
    box.hidden = false;
    $("loading").hidden = true;
    $("grid-wrap").hidden = true;
    $("toolbar").hidden = true;
    $("panels").hidden = true;
    document.documentElement.dataset.viewerReady = "error";
  }

  // ------------------------------------------------------------------ derived

  /** The variant in use (decoded, or the browser-made custom one). */
  get V() {
    const s = this.state, D = this.D;
    if (s.variant === "custom") {
      const key = s.custom.join(".");
      if (this.customCache.key !== key) {
        this.customCache = { key, V: customVariant(D.variants[0], D.P, D.L, D.k, s.custom) };
      }
      return this.customCache.V;
    }
    const name = s.variant || this.defaultVariant;
    return D.variants.find((v) => v.name === name) || D.variants[0];
  }

  isBias(V, s) { return V.hasBias && s === V.G - 1; }
  sourceKey(V, s) { return this.isBias(V, s) ? "b" : V.first[s]; }
  keySource(V, key) {
    if (key === null || key === undefined) return -1;
    if (key === "b") return V.hasBias ? V.G - 1 : -1;
    return V.groups[key];
  }
  sourceLabel(V, s) { return this.isBias(V, s) ? "bias" : V.sources[s]; }

  hiddenMask(V) {
    const m = new Uint8Array(V.G);
    for (const key of this.state.hidden) {
      const s = this.keySource(V, key);
      if (s >= 0) m[s] = 1;
    }
    return m;
  }

  // ------------------------------------------------------------------ state changes

  /** Arrays the current state needs, decoded (usually already are: see start()). */
  ensureArrays() {
    const s = this.state, D = this.D;
    if (s.variant === "custom") return Promise.all(METRIC_KEYS.map((k) => ensureMetric(D.variants[0], k)));
    const V = D.variants.find((v) => v.name === (s.variant || this.defaultVariant)) || D.variants[0];
    return Promise.all([ensureMetric(V, s.metric), ensureMetric(V, "norm")]);
  }

  haveArrays() {
    const s = this.state, D = this.D;
    if (s.variant === "custom") return METRIC_KEYS.every((k) => D.variants[0][k]);
    const V = D.variants.find((v) => v.name === (s.variant || this.defaultVariant)) || D.variants[0];
    return !!(V.norm && V[s.metric]);
  }

  /** Change state; push a history entry unless {push: false}. */
  set(patch, { push = true, recompute = true } = {}) {
    Object.assign(this.state, patch);
    const seq = ++this.seq;
    const ready = this.ensureArrays();
    const go = () => { if (seq === this.seq) this.applyState({ push, recompute }); };
    if (this.haveArrays()) go();
    else {
      this.pending = true;
      ready.then(() => { this.pending = false; go(); }, (e) => this.fail(e));
    }
  }

  applyState({ push = false, recompute = true, first = false } = {}) {
    const s = this.state, D = this.D, g = this.grid;
    if (g.emph !== s.emph) g.setEmphasis(s.emph);
    g.view = { ...s.view };
    g.clampView();
    s.view = { ...g.view };
    g.pin = s.pin;
    if (s.pin && !g.focus) g.focus = { ...s.pin };
    const parts = {};
    let t = performance.now();
    const mark = (name) => { const n = performance.now(); parts[name] = n - t; t = n; };
    if (recompute || first) this.recompute();
    mark("compute");
    this.drawNow();
    mark("draw");
    parts.drawPixels = this.grid.pixTime;
    parts.drawPut = this.grid.putTime;
    this.syncControls();
    this.renderStrip();
    mark("strip");
    this.renderLegend();
    this.renderPredictions();
    this.renderCellPanel();
    mark("panels");
    this.renderSummary();
    mark("summary");
    this.timings.parts = parts;
    if (push) {
      const h = this.hash();
      if (h !== location.hash) history.pushState(null, "", h);
    }
  }

  hash() { return encodeHash(this.state, this.defaultVariant); }

  recompute() {
    const t0 = performance.now();
    const V = this.V, D = this.D, s = this.state;
    this.hidden = this.hiddenMask(V);
    this.traceSrc = this.keySource(V, s.trace);
    const dark = this.dark;
    const colors = [];
    for (let i = 0; i < V.G; i++) colors.push(this.isBias(V, i) ? this.theme.bias : sourceColor(i));
    this.colors = colors;
    this.grid.batches = buildBatches(V, D.L, D.P, {
      metric: s.metric, hidden: this.hidden, trace: this.traceSrc, heat: s.heat, colors,
      neutral: this.theme.neutral, neg: dark ? NEG_COLOR.dark : NEG_COLOR.light,
      pos: dark ? POS_COLOR.dark : POS_COLOR.light,
      seqRamp: this.seqRamp, divRamp: this.divRamp,
    });
    const g = this.grid;
    g.tokens = D.tokens;
    g.tokenColor = D.tokens.map((_, p) => colors[V.groups[p]]);
    g.tokenHidden = D.tokens.map((_, p) => !!this.hidden[V.groups[p]]);
    g.tokenDim = D.tokens.map((_, p) => g.tokenHidden[p] || (this.traceSrc >= 0 && V.groups[p] !== this.traceSrc));
    g.tokenMark = this.traceSrc >= 0 ? V.first[this.traceSrc] : -1;
    g.predPos = s.pred === null ? -1 : s.pred;
    const last = D.P - 1;
    g.predictions = [];
    for (let j = 0; j < D.k; j++) {
      g.predictions.push({ text: D.strings[D.pred.ids[last * D.k + j]], prob: D.pred.probs[last * D.k + j] });
    }
    this.timings.compute = performance.now() - t0;
  }

  readTheme() {
    const cs = getComputedStyle(document.documentElement);
    const v = (name, fb) => (cs.getPropertyValue(name).trim() || fb);
    this.dark = isDark();
    this.theme = {
      bg: v("--canvas-bg", "#fff"), fg: v("--fg", "#111"), muted: v("--muted", "#666"),
      track: v("--track", "#eee"), highlight: v("--highlight", "rgba(0,0,0,.08)"),
      focus: v("--focus", "#000"), pin: v("--pin", "#d00"), accent: v("--accent", "#0072B2"),
      barBg: v("--bar-bg", "#ddd"), neutral: v("--neutral", "#aaa"), bias: v("--bias", "#777"),
      weakAlpha: parseFloat(v("--weak-alpha", "0.55")),
    };
    this.seqRamp = sequentialRamp(32, this.dark);
    this.divRamp = divergingRamp(33, this.dark);
    this.grid.setTheme(this.theme);
  }

  scheduleDraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.drawNow();
    });
  }

  drawNow() {
    this.timings.lastFrame = this.grid.draw();
  }

  /** Zoom and pan: replace the history entry (debounced) instead of pushing one per frame. */
  viewChanged() {
    this.state.view = { ...this.grid.view };
    this.scheduleDraw();
    clearTimeout(this.viewTimer);
    this.viewTimer = setTimeout(() => history.replaceState(null, "", this.hash()), 250);
    this.positionTooltip();
  }

  // ------------------------------------------------------------------ controls

  buildControls() {
    const D = this.D;
    const sel = $("grouping");
    sel.replaceChildren();
    for (const v of D.variants) {
      const label = v.grouping === "tokens" && v.name === "tokens" ? "none (tokens)"
        : v.name === "words" ? "by words (exact)" : `${v.label} (exact)`;
      sel.append(el("option", { value: v.name, text: label }));
    }
    sel.append(el("option", { value: "custom", text: "custom (approximate, sum of norms)" }));
  }

  syncControls() {
    const s = this.state;
    for (const r of document.querySelectorAll('input[name="metric"]')) r.checked = r.value === s.metric;
    $("grouping").value = s.variant || this.defaultVariant;
    $("emph").setAttribute("aria-pressed", String(s.emph === "mlp"));
    $("emph").textContent = s.emph === "mlp" ? "Emphasize attention" : "Emphasize MLP";
    $("heat").setAttribute("aria-pressed", String(s.heat));
    $("heat").disabled = s.trace === null;
    $("heat").title = s.trace === null ? "Trace a source first (click a token)" : "Heat map of the traced source's share";
    $("custom-groups").hidden = s.variant !== "custom";
    const selLabel = $("selection-label");
    selLabel.textContent = this.selection ? `selected tokens ${this.selection[0]}–${this.selection[1]}` : "no selection";
    $("grid").setAttribute("aria-label", this.ariaLabel());
  }

  ariaLabel() {
    const s = this.state, D = this.D, V = this.V;
    let t = `Information-flow grid: ${D.P} token positions by ${2 * D.L} sublayers (${D.L} layers, attention and MLP), `
      + `showing ${METRICS[s.metric]} per source, grouping ${V.label}.`;
    if (this.traceSrc >= 0) t += ` Tracing source "${this.sourceLabel(V, this.traceSrc)}".`;
    return t + " A table of the top sources per position follows.";
  }

  renderStrip() {
    const D = this.D, V = this.V, strip = $("token-strip"), s = this.state;
    const frag = document.createDocumentFragment();
    for (let p = 0; p < D.P; p++) {
      const src = V.groups[p];
      const hidden = !!this.hidden[src];
      const traced = this.traceSrc === src;
      const inSel = this.selection && p >= this.selection[0] && p <= this.selection[1];
      const label = el("button", {
        type: "button", class: "tok-label", "data-pos": p, text: displayToken(D.tokens[p]),
        "aria-pressed": String(traced),
        title: `Position ${p}: trace source "${this.sourceLabel(V, src)}"`,
      });
      label.style.borderBottomColor = this.colors[src];
      const hide = el("button", {
        type: "button", class: "tok-hide", "data-pos": p, "aria-pressed": String(hidden),
        "aria-label": `${hidden ? "Show" : "Hide"} source "${this.sourceLabel(V, src)}"`,
        title: `${hidden ? "Show" : "Hide"} this source`, text: hidden ? "\u25cb" : "\u25c9",
      });
      const cls = ["tok"];
      if (hidden) cls.push("is-hidden");
      if (traced) cls.push("is-traced");
      if (this.traceSrc >= 0 && !traced) cls.push("is-dim");
      if (inSel) cls.push("is-selected");
      if (p > 0 && V.groups[p - 1] === src) cls.push("same-group");
      frag.append(el("span", { class: cls.join(" ") }, label, hide));
    }
    if (V.hasBias) {
      const b = V.G - 1, hidden = !!this.hidden[b], traced = this.traceSrc === b;
      const label = el("button", { type: "button", class: "tok-label", "data-pos": "b", text: "bias", "aria-pressed": String(traced), title: "Trace the constant bias source" });
      label.style.borderBottomColor = this.colors[b];
      const hide = el("button", { type: "button", class: "tok-hide", "data-pos": "b", "aria-pressed": String(hidden), "aria-label": `${hidden ? "Show" : "Hide"} the bias source`, text: hidden ? "\u25cb" : "\u25c9" });
      frag.append(el("span", { class: `tok tok-bias${hidden ? " is-hidden" : ""}${traced ? " is-traced" : ""}` }, label, hide));
    }
    strip.replaceChildren(frag);
    void s;
  }

  renderLegend() {
    const D = this.D, V = this.V, s = this.state, box = $("legend");
    const items = [];
    const swatch = (color, cls = "swatch") => {
      const sw = el("span", { class: cls, "aria-hidden": "true" });
      sw.style.background = color;
      return sw;
    };
    items.push(el("p", { class: "legend-metric" },
      el("strong", { text: METRICS[s.metric] }),
      el("span", { class: "muted", text: ` · grouping: ${V.label}${V.exact ? "" : " — approximate (sum of norms)"}` })));
    if (this.traceSrc >= 0) {
      const name = this.sourceLabel(V, this.traceSrc);
      if (s.heat) {
        const ramp = s.metric === "proj" ? this.divRamp : this.seqRamp;
        const bar = el("span", { class: "ramp", "aria-hidden": "true" });
        for (const c of ramp) bar.append(swatch(c, "ramp-step"));
        items.push(el("p", {}, el("span", { text: `Heat map of "${displayToken(name)}": ` }),
          el("span", { text: s.metric === "proj" ? "−1 " : "0 " }), bar, el("span", { text: s.metric === "proj" ? " +1" : " 100%" })));
      } else if (s.metric === "proj") {
        items.push(el("p", {}, el("span", { text: `Tracing "${displayToken(name)}": bars from the centre; ` }),
          swatch(this.dark ? POS_COLOR.dark : POS_COLOR.light), el("span", { text: " positive " }),
          swatch(this.dark ? NEG_COLOR.dark : NEG_COLOR.light), el("span", { text: " negative" })));
      } else {
        items.push(el("p", {}, swatch(this.colors[this.traceSrc]),
          el("span", { text: ` Tracing "${displayToken(name)}": its share of each cell (Esc clears)` })));
      }
    }
    // sources, by their share at the top-right cell
    const ul = el("ul", { class: "legend-list" });
    const rows = cellSources(V, D.P, "norm", new Uint8Array(V.G), D.L - 1, 1, D.P - 1);
    const order = rows.map((r) => r.s);
    for (let i = 0; i < V.G; i++) if (!order.includes(i)) order.push(i);
    const shown = order.slice(0, 24);
    for (const src of shown) {
      const li = el("li", { class: this.hidden[src] ? "is-hidden" : "" }, swatch(this.colors[src]),
        el("span", { class: "mono", text: displayToken(this.sourceLabel(V, src)) }));
      if (this.hidden[src]) li.append(el("span", { class: "muted", text: " (hidden)" }));
      ul.append(li);
    }
    if (order.length > shown.length) ul.append(el("li", { class: "muted", text: `… ${order.length - shown.length} more (see the token strip)` }));
    ul.append(el("li", {}, swatch(this.theme.neutral), el("span", { text: ` others (each < ${THRESHOLD * 100}%)` })));
    if (s.metric === "proj" && this.traceSrc < 0) {
      ul.append(el("li", {}, swatch(this.dark ? NEG_COLOR.dark : NEG_COLOR.light), el("span", { text: " negative part (left of zero)" })));
      ul.append(el("li", {}, swatch(this.dark ? POS_COLOR.dark : POS_COLOR.light), el("span", { text: " positive part" })));
    }
    items.push(ul);
    box.replaceChildren(...items);
  }

  renderPredictions() {
    const D = this.D, V = this.V, s = this.state, box = $("predictions");
    const p = s.pred === null ? D.P - 1 : s.pred;
    const j = Math.min(this.predChoice || 0, D.k - 1);
    const head = el("p", {}, el("span", { text: `After position ${p} ` }),
      el("span", { class: "mono tok-inline", text: displayToken(D.tokens[p]) }),
      el("span", { class: "muted", text: s.pred === null ? " (last; click a column label for another)" : "" }));
    const list = el("ol", { class: "pred-list" });
    for (let i = 0; i < D.k; i++) {
      const idx = p * D.k + i;
      const prob = D.pred.probs[idx];
      const bar = el("span", { class: "pbar", "aria-hidden": "true" }, el("span"));
      bar.firstChild.style.width = fmtPct(Math.max(0, Math.min(1, prob)));
      const btn = el("button", {
        type: "button", class: "pred" + (i === j ? " is-active" : ""), "data-j": i,
        "aria-pressed": String(i === j), title: "Show this prediction's logit attribution",
      }, el("span", { class: "mono", text: displayToken(D.strings[D.pred.ids[idx]]) }), bar,
      el("span", { class: "num", text: fmtPct(prob) }));
      list.append(el("li", {}, btn));
    }
    // per-source logit attribution, signed
    const base = (p * D.k + j) * V.G;
    const attr = [];
    for (let src = 0; src < V.G; src++) {
      if (V.first[src] > p) continue;
      attr.push({ src, v: V.logitAttr[base + src] });
    }
    attr.sort((a, b) => Math.abs(b.v) - Math.abs(a.v));
    const top = attr.slice(0, 12), rest = attr.slice(12).reduce((x, a) => x + a.v, 0);
    const maxAbs = Math.max(1e-9, ...top.map((a) => Math.abs(a.v)), Math.abs(rest));
    const chart = el("div", { class: "attr-chart", role: "table", "aria-label": "Per-source logit attribution" });
    const addRow = (label, v, color) => {
      const neg = el("span", { class: "attr-neg" }), pos = el("span", { class: "attr-pos" });
      const b = el("span", { class: "attr-bar" });
      b.style.width = `${(Math.abs(v) / maxAbs) * 100}%`;
      b.style.background = v < 0 ? (this.dark ? NEG_COLOR.dark : NEG_COLOR.light) : (this.dark ? POS_COLOR.dark : POS_COLOR.light);
      (v < 0 ? neg : pos).append(b);
      const sw = el("span", { class: "swatch", "aria-hidden": "true" });
      sw.style.background = color;
      chart.append(el("div", { class: "attr-row", role: "row" },
        el("span", { class: "attr-label mono", role: "cell" }, sw, el("span", { text: label })), neg, pos,
        el("span", { class: "num", role: "cell", text: (v >= 0 ? "+" : "") + v.toFixed(2) })));
    };
    for (const a of top) addRow(displayToken(this.sourceLabel(V, a.src)), a.v, this.colors[a.src]);
    if (attr.length > 12) addRow(`${attr.length - 12} other sources`, rest, this.theme.neutral);
    const chosen = displayToken(D.strings[D.pred.ids[p * D.k + j]]);
    box.replaceChildren(head, list,
      el("p", { class: "muted" }, el("span", { text: "Logit of " }), el("span", { class: "mono", text: chosen }),
        el("span", { text: ` = ${D.pred.logits[p * D.k + j].toFixed(2)}, by source${V.exact ? "" : " (exact: logits are linear)"}:` })),
      chart);
  }

  /** Tooltip / pinned-cell content for one cell. */
  cellContent(cell) {
    const D = this.D, V = this.V, s = this.state;
    const { l, k, p } = cell;
    const frag = document.createDocumentFragment();
    frag.append(el("div", { class: "tt-head" },
      el("strong", { text: `Layer ${l} ${k === 0 ? "attention" : "MLP"}` }),
      el("span", { text: ` · position ${p} ` }), el("span", { class: "mono tok-inline", text: displayToken(D.tokens[p]) })));
    const rows = cellSources(V, D.P, s.metric, this.hidden, l, k, p);
    const table = el("table", { class: "tt-table" });
    const valueName = s.metric === "proj" ? "proj" : s.metric === "delta" ? "‖delta‖" : "‖norm‖";
    table.append(el("tr", {}, el("th", { text: "source" }), el("th", { text: s.metric === "proj" ? "signed share" : "share" }), el("th", { text: valueName })));
    const showRows = rows.slice(0, 6);
    if (this.traceSrc >= 0 && !showRows.some((r) => r.s === this.traceSrc)) {
      const r = rows.find((x) => x.s === this.traceSrc);
      if (r) showRows.push(r);
    }
    for (const r of showRows) {
      const sw = el("span", { class: "swatch", "aria-hidden": "true" });
      sw.style.background = this.colors[r.s];
      const value = s.metric === "proj" ? r.value : r.value;
      table.append(el("tr", { class: r.s === this.traceSrc ? "is-traced" : "" },
        el("td", { class: "mono" }, sw, el("span", { text: displayToken(this.sourceLabel(V, r.s)) })),
        el("td", { class: "num", text: fmtPct(r.share) }),
        el("td", { class: "num", text: fmtNum(value) })));
    }
    if (rows.length > showRows.length) table.append(el("tr", {}, el("td", { class: "muted", colspan: 3, text: `… ${rows.length - showRows.length} more sources` })));
    frag.append(table);
    if (!V.exact) frag.append(el("p", { class: "muted", text: "custom groups: approximate (sum of norms)" }));
    if (D.lens) {
      const lens = el("ol", { class: "lens" });
      const base = ((l * 2 + k) * D.P + p) * D.k;
      for (let j = 0; j < Math.min(5, D.k); j++) {
        lens.append(el("li", {}, el("span", { class: "mono", text: displayToken(D.strings[D.lens.ids[base + j]]) }),
          el("span", { class: "num", text: ` ${fmtPct(D.lens.probs[base + j])}` })));
      }
      frag.append(el("div", { class: "tt-lens" }, el("span", { class: "muted", text: "logit lens: " }), lens));
    }
    return frag;
  }

  renderCellPanel() {
    const box = $("cell-detail");
    if (!this.state.pin) {
      box.replaceChildren(el("p", { class: "muted", text: "Click a cell (or press Enter on the focused one) to pin it." }));
      return;
    }
    box.replaceChildren(this.cellContent(this.state.pin),
      el("button", { type: "button", class: "unpin", text: "Unpin", onclick: () => this.set({ pin: null }, { recompute: false }) }));
  }

  renderSummary() {
    const D = this.D, V = this.V, body = $("summary-table").tBodies[0];
    const frag = document.createDocumentFragment();
    for (let p = 0; p < D.P; p++) {
      const rows = cellSources(V, D.P, "norm", this.hidden, D.L - 1, 1, p).slice(0, 3);
      const text = rows.map((r) => `${displayToken(this.sourceLabel(V, r.s))} ${fmtPct(r.share)}`).join(", ");
      frag.append(el("tr", {}, el("td", { text: String(p) }), el("td", { text: displayToken(D.tokens[p]) }), el("td", { text })));
    }
    body.replaceChildren(frag);
  }

  fillProvenance() {
    const D = this.D;
    const w = D.worstReconError;
    $("recon-error").textContent = typeof w === "number" ? w.toExponential(2) : "unknown";
    $("logit-error").textContent = typeof D.logitError === "number" ? D.logitError.toExponential(2) : "unknown";
    const prov = $("prompt-provenance");
    prov.append(el("span", { text: ` Data: schema ${D.schema}, ${(D.bytes / 1024).toFixed(0)} KB, ${D.precision}${D.built ? `, built ${D.built}` : ""}, infoflow ${D.generator.infoflow || "?"}; model ${D.model.id || "?"} (${D.model.fingerprint || "?"}, ${D.model.dtype || "?"}).` }));
  }

  // ------------------------------------------------------------------ tooltip

  showTooltip(cell, sx, sy) {
    const tip = $("tooltip");
    tip.replaceChildren(this.cellContent(cell));
    tip.hidden = false;
    this.tipAt = [sx, sy];
    this.positionTooltip();
  }

  positionTooltip() {
    const tip = $("tooltip");
    if (tip.hidden || !this.tipAt) return;
    const wrap = $("grid-wrap");
    const [sx, sy] = this.tipAt;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let x = sx + 16, y = sy + 16;
    if (x + w > wrap.clientWidth) x = sx - w - 12;
    if (y + h > wrap.clientHeight) y = Math.max(0, sy - h - 12);
    tip.style.left = `${Math.max(0, x)}px`;
    tip.style.top = `${y}px`;
  }

  hideTooltip() {
    $("tooltip").hidden = true;
    this.tipAt = null;
  }

  // ------------------------------------------------------------------ actions

  toggleTrace(key) {
    const V = this.V;
    const src = this.keySource(V, key);
    const cur = this.traceSrc;
    if (src === cur) this.set({ trace: null, heat: false });
    else {
      const hidden = new Set(this.state.hidden);
      for (const h of [...hidden]) if (this.keySource(V, h) === src) hidden.delete(h);  // a traced source is shown
      this.set({ trace: this.sourceKey(V, src), hidden });
    }
  }

  toggleHidden(key) {
    const V = this.V, src = this.keySource(V, key);
    const hidden = new Set(this.state.hidden);
    if (this.hidden[src]) {
      for (const h of [...hidden]) if (this.keySource(V, h) === src) hidden.delete(h);
    } else hidden.add(this.sourceKey(V, src));
    const patch = { hidden };
    if (!this.hidden[src] && this.traceSrc === src) { patch.trace = null; patch.heat = false; }
    this.set(patch);
  }

  setVariant(name) {
    const patch = { variant: name };
    if (name === "custom" && !this.state.custom) patch.custom = [...Array(this.D.P).keys()];
    // keep the trace on the source that holds the traced token
    this.set(patch);
  }

  groupSelection() {
    if (!this.selection) return;
    const [a, b] = this.selection;
    const g = [...(this.state.custom || [...Array(this.D.P).keys()])];
    const id = g[a];
    for (let p = a; p <= b; p++) g[p] = id;
    this.selection = null;
    this.set({ custom: renumber(g) });
  }

  async copyLink() {
    const url = location.href.split("#")[0] + this.hash();
    let ok = false;
    try {
      await navigator.clipboard.writeText(url);
      ok = true;
    } catch { /* not allowed: fall back to selection */ }
    this.status(ok ? "Link copied." : `Copy this link: ${url}`);
  }

  status(text) {
    const s = $("status");
    s.textContent = text;
    clearTimeout(this.statusTimer);
    this.statusTimer = setTimeout(() => { s.textContent = ""; }, 4000);
  }

  exportPng() {
    const c = this.grid.exportCanvas(2);
    c.toBlob((blob) => {
      if (!blob) { this.status("PNG export failed."); return; }
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: `${this.root.dataset.id || "grid"}.png` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 5000);
    }, "image/png");
  }

  toggleHelp(force) {
    const h = $("help");
    h.hidden = force === undefined ? !h.hidden : !force;
    if (!h.hidden) $("help-close").focus();
  }

  moveFocus(dl, dk, dp) {
    const D = this.D;
    const f = this.grid.focus || this.state.pin || { l: D.L - 1, k: 1, p: D.P - 1 };
    let r = 2 * f.l + f.k + dl;
    r = Math.max(0, Math.min(2 * D.L - 1, r));
    const p = Math.max(0, Math.min(D.P - 1, f.p + dp));
    this.grid.focus = { l: r >> 1, k: r & 1, p };
    this.grid.reveal(this.grid.focus);
    this.state.view = { ...this.grid.view };
    this.viewChanged();
    const rect = this.focusRect();
    this.showTooltip(this.grid.focus, rect[0], rect[1]);
  }

  focusRect() {
    const g = this.grid, f = g.focus;
    const r = 2 * f.l + f.k;
    return [g.colX(f.p + 1), g.rowY(r) + g.rowH[r] * g.view.z];
  }

  escape() {
    const s = this.state;
    if (!$("help").hidden) { this.toggleHelp(false); return; }
    if (s.pin) { this.set({ pin: null }, { recompute: false }); return; }
    if (s.trace !== null) { this.set({ trace: null, heat: false }); return; }
    if (this.selection) { this.selection = null; this.applyState({ recompute: false }); return; }
    this.grid.focus = null;
    this.hideTooltip();
    this.scheduleDraw();
  }

  // ------------------------------------------------------------------ events

  bindEvents() {
    const canvas = $("grid");
    for (const r of document.querySelectorAll('input[name="metric"]')) {
      r.addEventListener("change", () => { if (r.checked) this.set({ metric: r.value }); });
    }
    $("grouping").addEventListener("change", (e) => this.setVariant(e.target.value));
    $("emph").addEventListener("click", () => this.set({ emph: this.state.emph === "attn" ? "mlp" : "attn" }, { recompute: false }));
    $("heat").addEventListener("click", () => this.set({ heat: !this.state.heat }));
    $("fit").addEventListener("click", () => { this.grid.fit(); this.viewChanged(); });
    $("zoom-in").addEventListener("click", () => { this.grid.zoomCenter(1.5); this.viewChanged(); });
    $("zoom-out").addEventListener("click", () => { this.grid.zoomCenter(1 / 1.5); this.viewChanged(); });
    $("copy-link").addEventListener("click", () => this.copyLink());
    $("export-png").addEventListener("click", () => this.exportPng());
    $("help-button").addEventListener("click", () => this.toggleHelp());
    $("help-close").addEventListener("click", () => this.toggleHelp(false));
    $("group-make").addEventListener("click", () => this.groupSelection());
    $("group-clear").addEventListener("click", () => { this.selection = null; this.set({ custom: [...Array(this.D.P).keys()] }); });

    $("token-strip").addEventListener("click", (e) => {
      const b = e.target.closest("button");
      if (!b) return;
      const key = b.dataset.pos === "b" ? "b" : +b.dataset.pos;
      if (b.classList.contains("tok-hide")) { this.toggleHidden(key); return; }
      if (this.state.variant === "custom" && key !== "b" && (e.shiftKey || this.anchor !== null && e.altKey)) {
        const a = this.anchor === null ? key : this.anchor;
        this.selection = [Math.min(a, key), Math.max(a, key)];
        this.applyState({ recompute: false });
        return;
      }
      if (this.state.variant === "custom" && key !== "b") this.anchor = key;
      this.toggleTrace(key);
    });

    $("predictions").addEventListener("click", (e) => {
      const b = e.target.closest("button.pred");
      if (!b) return;
      this.predChoice = +b.dataset.j;
      this.renderPredictions();
    });

    // pointer: hover, drag to pan, click to pin / trace
    let drag = null;
    const pos = (e) => {
      const r = canvas.getBoundingClientRect();
      return [e.clientX - r.left, e.clientY - r.top];
    };
    canvas.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      const [x, y] = pos(e);
      drag = { x, y, x0: x, y0: y, moved: false, id: e.pointerId };
    });
    canvas.addEventListener("pointermove", (e) => {
      const [x, y] = pos(e);
      if (drag && (e.buttons & 1)) {
        if (!drag.moved && Math.hypot(x - drag.x0, y - drag.y0) > 3) {
          drag.moved = true;
          canvas.setPointerCapture(drag.id);
          canvas.classList.add("is-dragging");
        }
        if (drag.moved) {
          this.grid.panBy(x - drag.x, y - drag.y);
          drag.x = x; drag.y = y;
          this.hideTooltip();
          this.grid.hover = null;
          this.viewChanged();
          return;
        }
      }
      const h = this.grid.hit(x, y);
      const cell = h && h.type === "cell" ? { l: h.l, k: h.k, p: h.p } : null;
      const prev = this.grid.hover;
      const same = prev && cell && prev.l === cell.l && prev.k === cell.k && prev.p === cell.p;
      if (cell) {
        if (!same) this.showTooltip(cell, x, y);
        else { this.tipAt = [x, y]; this.positionTooltip(); }
      } else this.hideTooltip();
      canvas.classList.toggle("is-pointer", !!h && h.type === "token");
      if (!same || (!cell && prev)) {
        this.grid.hover = cell || (h && h.type === "token" ? { l: -1, k: 0, p: h.p } : null);
        this.scheduleDraw();
      }
    });
    canvas.addEventListener("pointerleave", () => {
      if (drag && drag.moved) return;
      this.grid.hover = null;
      this.hideTooltip();
      this.scheduleDraw();
    });
    canvas.addEventListener("pointerup", (e) => {
      const d = drag;
      drag = null;
      canvas.classList.remove("is-dragging");
      if (!d || d.moved) return;
      const [x, y] = pos(e);
      const h = this.grid.hit(x, y);
      if (!h) return;
      if (h.type === "token") {
        // a column label: show that position's predictions, and trace its source
        this.state.pred = h.p;
        this.toggleTrace(h.p);
      } else if (h.type === "cell") {
        const pin = this.state.pin;
        const same = pin && pin.l === h.l && pin.k === h.k && pin.p === h.p;
        this.grid.focus = { l: h.l, k: h.k, p: h.p };
        this.set({ pin: same ? null : { l: h.l, k: h.k, p: h.p } }, { recompute: false });
      }
    });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y] = pos(e);
      const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
      this.grid.zoomAt(x, y, Math.exp(-dy * 0.0015));
      this.viewChanged();
    }, { passive: false });

    document.addEventListener("keydown", (e) => {
      const t = e.target;
      if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const onCanvas = t === canvas;
      switch (e.key) {
        case "?": this.toggleHelp(); break;
        case "Escape": this.escape(); break;
        case "+": case "=": this.grid.zoomCenter(1.5); this.viewChanged(); break;
        case "-": case "_": this.grid.zoomCenter(1 / 1.5); this.viewChanged(); break;
        case "0": this.grid.fit(); this.viewChanged(); break;
        case "ArrowUp": case "ArrowDown": case "ArrowLeft": case "ArrowRight":
          if (!onCanvas && t !== document.body) return;
          this.moveFocus(e.key === "ArrowUp" ? 1 : e.key === "ArrowDown" ? -1 : 0, 0,
            e.key === "ArrowLeft" ? -1 : e.key === "ArrowRight" ? 1 : 0);
          break;
        case "Enter":
          if (!onCanvas || !this.grid.focus) return;
          this.set({ pin: { ...this.grid.focus } }, { recompute: false });
          break;
        default: return;
      }
      e.preventDefault();
    });

    window.addEventListener("popstate", () => {
      const keepPred = this.predChoice;
      const s = parseHash(location.hash, this.D, this.defaultVariant);
      this.predChoice = keepPred;
      this.state = DEFAULT();
      this.set(s, { push: false });
    });
    window.addEventListener("infoflow-theme", () => {
      this.readTheme();
      this.applyState({ push: false });
    });
    let resizeTimer = 0;
    new ResizeObserver(() => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        const w = $("grid-wrap").clientWidth;
        if (Math.floor(w) !== this.grid.cssW) {
          this.grid.resize(w);
          this.grid.view = { ...this.state.view };
          this.grid.clampView();
          this.drawNow();
        }
      }, 60);
    }).observe($("grid-wrap"));
    matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`).addEventListener("change", () => {
      this.grid.resize($("grid-wrap").clientWidth, window.devicePixelRatio || 1);
      this.drawNow();
    });
  }
}

// ----------------------------------------------------------------------------- boot

const root = $("viewer");
if (root) {
  const viewer = new Viewer(root);
  window.infoflowViewer = {
    get state() {
      const s = viewer.state;
      return { ...s, hidden: [...s.hidden], view: { ...s.view } };
    },
    get timings() { return { ...viewer.timings, lastDraw: viewer.grid.lastDraw }; },
    get hash() { return viewer.D ? viewer.hash() : null; },
    /** true once nothing is being decoded or waiting to be drawn */
    get idle() { return !viewer.pending && !viewer.frame; },
    viewer,
    grid: viewer.grid,
  };
  viewer.start();
}
