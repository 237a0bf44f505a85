// The viewer application: state changes -> one update of the grid and the panels that depend on
// them. viewer.js mounts it (mountViewer) and boots the gallery pages.
import { DataError, ensureAll, ensureLens, ensureMetric, METRIC_KEYS } from "./data.js";
import { Grid } from "./grid.js";
import { buildBatches, cellSources, colorSlots, customVariant, heatTop } from "./compute.js";
import { PALETTE, PALETTE_DARK, MAX_COLORS, sequentialRamp, divergingRamp, NEG_COLOR, POS_COLOR } from "./palette.js";
import { isDark } from "./theme.js";
import { buildSkeleton, panelBox, el } from "./dom.js";
import { PANELS, cellContent } from "./panels.js";
import { bindEvents } from "./events.js";
import { headBatches } from "./heads.js";
import "./head-grid.js";                 // the "Attention patterns" panel (registers itself)
import { encodeHash, parseHash, renumber, keySource, sourceKey, hiddenMask } from "./state.js";
import { sourceLabels, subscript, tokenTexts } from "./format.js";
import { EXACT_LABEL, computeExact, exactVariant, needsExact } from "./exact-custom.js";
import { topContributors } from "./answer.js";

const $ = (id) => document.getElementById(id);

/** State keys that change what the cells show (so batches, colours and most panels). */
const DATA_KEYS = ["metric", "variant", "hidden", "shown", "trace", "heat", "order", "custom", "theme", "head",
  "pred", "predChoice"];           // the shown prediction picks the first colours (answer.js)
/** How many colours go first to the sources the shown prediction comes from. */
const ANSWER_COLORS = 5;
const ALL_KEYS = [...DATA_KEYS, "emph", "view", "pin", "pred", "predChoice", "selection"];

const sameValue = (a, b) => a === b || JSON.stringify(a instanceof Set ? [...a] : a) === JSON.stringify(b instanceof Set ? [...b] : b);

export class Viewer {
  /** options: {id: name for exported files, dataUrl: link for "Data file", hash: true to mirror the URL,
   *  hashPrefix: "k=v&..." kept first in the URL hash (the live page's prompt), ownsHash(hash):
   *  false for a hash this viewer must not apply on history navigation (another prompt's view),
   *  exactCustom: see exact-custom.js, view: the first view as a URL hash where hash is false,
   *  noHeads: what the Heads panel says when D has no per-head data and there is no file to fetch} */
  constructor(root, D, options = {}) {
    this.root = root;
    this.D = D;
    this.options = { id: "infoflow", hash: true, ...options };
    this.timings = { ...(D.timings || {}) };
    buildSkeleton(root, this.options);
    for (const p of PANELS) if (p.title && !$(p.id)) $("panels").append(panelBox(p.id, p.title));
    this.grid = new Grid($("grid"));
    this.customCache = { key: null, V: null };
    this.exactCache = new Map();      // custom grouping key -> exact variant (exact-custom.js)
    this.exactJobs = new Map();
    this.lifetime = new AbortController();   // window and document listeners end with destroy()
    this.selection = null;   // [a, b] token range for custom groups
    this.anchor = null;
    this.predChoice = 0;
    this.hoverSource = -1;
    this.seq = 0;
    this.pending = false;
    this.dirtyKeys = new Set();
    this.idleJobs = new Map();
    this.hashParts = [];     // () => "k=v&..." | "": other views' keys in the URL hash (paths-panel.js)
    const dup = new Map(), texts = tokenTexts(D.tokens);    // byte pieces as the characters they form
    for (const t of D.tokens) dup.set(t, (dup.get(t) || 0) + 1);
    this.tokenLabels = D.tokens.map((t, p) => texts[p] + (dup.get(t) > 1 && !/\u2044/.test(texts[p]) ? subscript(p) : ""));
  }

  async start() {
    const D = this.D;
    this.defaultVariant = (D.variants.find((v) => v.name === "words") || D.variants[0]).name;
    // without a URL hash to mirror, options.view (a hash) is the first view (a notebook output)
    this.state = parseHash(this.options.hash ? location.hash : (this.options.view || ""), D, this.defaultVariant);
    const grouping = $("grouping");
    for (const v of D.variants) {
      const label = v.name === "tokens" ? "none (tokens)" : v.name === "words" ? "by words (exact)" : `${v.label} (exact)`;
      grouping.append(el("option", { value: v.name, text: label }));
    }
    grouping.append(el("option", { value: "custom", text: this.options.exactCustom ? EXACT_LABEL : "custom (approximate, sum of norms)" }));
    this.readTheme();
    this.fitLayout();
    if (needsExact(this, this.state) && !(await new Promise((done) => computeExact(this, this.state, done)))) {
      this.state.variant = this.defaultVariant;       // cancelled or failed: the default grouping
    }
    const t0 = performance.now();
    await this.ensureArrays();
    this.update(new Set(ALL_KEYS), { push: false });
    this.fitLayout();              // the token strip above the grid is filled now: fit to where the grid starts
    const t1 = performance.now();
    this.grid.flush();
    this.timings.parts.draw = performance.now() - t1;
    this.timings.firstDraw = performance.now() - t0;
    // the rest of the file in the background, so later switches are instant
    this.loading = true;
    const t2 = performance.now();
    setTimeout(() => Promise.all([
      ensureLens(D).then(() => {                     // a pinned cell shows the lens: fill it in
        if (!this.state.pin) return;
        if (this.tipPinned) this.showPinned();
        this.set({}, { push: false, changed: ["pin"] });
      }),
      ensureAll(D)]).then(() => {
      this.timings.decodeRest = performance.now() - t2;
      this.loading = false;
    }, (e) => this.fail(e)), 0);
    bindEvents(this);
    this.fillProvenance();
    this.writeHash(false);
    document.documentElement.dataset.viewerReady = "1";
  }

  /** The page footer's numbers, where the page has them. */
  fillProvenance() {
    const D = this.D, num = (x) => (typeof x === "number" ? x.toExponential(2) : "unknown");
    if ($("recon-error")) $("recon-error").textContent = num(D.worstReconError);
    if ($("logit-error")) $("logit-error").textContent = num(D.logitError);
    const prov = $("prompt-provenance");
    if (prov) {
      prov.append(el("span", { text: ` Data: schema ${D.schema}, ${((D.bytes || 0) / 1024).toFixed(0)} KB, decomposed in ${D.precision}`
        + `${D.built ? `, built ${D.built}` : ""}, infoflow ${D.generator.infoflow || "?"}; model ${D.model.id || "?"} `
        + `(${D.model.fingerprint || "?"}, ${D.model.dtype || "?"}). The viewer shows values stored in 8 bits per cell `
        + "(1/255 of each cell's largest value); the errors above are the engine's, before that rounding." }));
    }
  }

  /** End this viewer's window and document listeners (a page that mounts another viewer). */
  destroy() {
    this.lifetime.abort();
    clearTimeout(this.viewTimer);
    this.relayoutPending = false;
    this.seq++;                                        // a pending update does nothing
  }

  fail(e) {
    showError(this.root, e);
    for (const id of ["grid-wrap", "toolbar", "panels", "token-strip", "grid-caption"]) if ($(id)) $(id).hidden = true;
  }

  // ------------------------------------------------------------------ derived

  /** The variant in use (decoded, or the browser-made custom one). */
  get V() {
    const s = this.state, D = this.D;
    if (s.variant === "custom") {
      const exact = exactVariant(this, s);
      if (exact) return exact;
      const key = s.custom.join(".");
      if (this.customCache.key !== key) this.customCache = { key, V: customVariant(D.variants[0], D.P, D.L, D.k, s.custom) };
      return this.customCache.V;
    }
    return D.variants.find((v) => v.name === s.variant) || D.variants[0];
  }

  colorOf(src) { return (this.colors && this.colors[src]) || this.theme.neutral; }

  /** Arrays the current state needs, decoded (usually already are: see start()). */
  ensureArrays() {
    const s = this.state, D = this.D;
    if (s.variant === "custom" && !exactVariant(this, s)) {
      return Promise.all([...METRIC_KEYS, "logitAttr"].map((k) => ensureMetric(D.variants[0], k)));
    }
    const V = this.V;
    return Promise.all([ensureMetric(V, s.metric), ensureMetric(V, "norm"), ensureMetric(V, "logitAttr")]);
  }

  haveArrays() {
    const s = this.state;
    if (s.variant === "custom" && !exactVariant(this, s)) return METRIC_KEYS.every((k) => this.D.variants[0][k]);
    const V = this.V;
    return !!(V.norm && V[s.metric]);
  }

  // ------------------------------------------------------------------ state changes

  /**
   * Change state and redraw what depends on it, once. `changed` names keys that changed
   * outside the state (selection, predChoice). Pushes a history entry unless {push: false}.
   */
  set(patch = {}, { push = true, changed = [] } = {}) {
    const next = { ...this.state, ...patch };
    if (needsExact(this, next)) {                      // keep showing what is shown until it is computed
      computeExact(this, next, (ok) => this.set(ok ? patch : {}, { push: ok && push, changed: [...changed, "variant"] }));
      return;
    }
    for (const k of changed) this.dirtyKeys.add(k);
    for (const [k, val] of Object.entries(patch)) if (!sameValue(this.state[k], val)) this.dirtyKeys.add(k);
    Object.assign(this.state, patch);
    const seq = ++this.seq;
    const go = () => {
      if (seq !== this.seq) return;
      const keys = this.dirtyKeys;
      this.dirtyKeys = new Set();
      this.update(keys, { push });
    };
    if (this.haveArrays()) go();
    else {
      this.pending = true;
      this.ensureArrays().then(() => { this.pending = false; go(); }, (e) => this.fail(e));
    }
  }

  update(keys, { push = false } = {}) {
    const s = this.state, g = this.grid, parts = {};
    let t = performance.now();
    const mark = (name) => { const n = performance.now(); parts[name] = n - t; t = n; };
    if (DATA_KEYS.some((k) => keys.has(k))) {
      this.recompute();
      keys.add("colors");
    }
    mark("compute");
    if (keys.has("emph")) this.fitLayout();
    if (keys.has("view")) {
      g.setView(s.view);
      s.view = { ...g.view };
    }
    if (keys.has("pin")) {
      if (this.announced !== undefined || s.pin) this.announcePin();
      this.announced = true;
      g.setOverlay({ pin: s.pin });
      if (s.pin && !g.overlay.focus) g.setOverlay({ focus: { ...s.pin } });
      if (!s.pin && this.tipPinned) this.hideTooltip();
    }
    this.renderPanels(keys);
    mark("panels");
    if (this.tipPinned && s.pin && keys.has("colors")) this.showPinned();
    g.commit();
    this.timings.parts = parts;
    if (push) this.writeHash(true);
  }

  renderPanels(keys) {
    for (const p of PANELS) {
      if (!(p.deps.includes("*") || p.deps.some((k) => keys.has(k)))) continue;
      const render = () => {
        this.idleJobs.delete(p.id);
        const box = p.box ? p.box() : $(p.id);
        if (box || p.id === "controls") p.render(this, box);
      };
      if (!p.idle) { render(); continue; }
      // off-screen panels (the screen readers' summary table) wait for an idle moment
      (window.cancelIdleCallback || clearTimeout)(this.idleJobs.get(p.id));
      this.idleJobs.set(p.id, (window.requestIdleCallback || setTimeout)(render, { timeout: 500 }));
    }
  }

  /** The view into the URL: a new history entry (push) or the current one. Not while the
   * current entry is another result's (the live page, with the next prompt computing). */
  writeHash(push) {
    if (!this.options.hash || (this.options.ownsHash && !this.options.ownsHash(location.hash))) return;
    const h = this.hash();
    if (!push) history.replaceState(null, "", h);
    else if (h !== location.hash) history.pushState(null, "", h);
  }

  hash() {
    let h = encodeHash(this.state, this.defaultVariant);
    for (const part of this.hashParts.map((f) => f()).filter(Boolean)) h += `&${part}`;
    return this.options.hashPrefix ? `#${this.options.hashPrefix}&${h.slice(1)}` : h;
  }

  recompute() {
    const t0 = performance.now();
    const V = this.V, D = this.D, s = this.state, theme = this.theme;
    this.traceSrc = keySource(V, s.trace);
    this.hidden = hiddenMask(V, s.hidden, this.traceSrc);
    // the first colours: the sources the shown prediction comes from (at its position, its choice)
    this.answerPos = s.pred === null ? D.P - 1 : s.pred;
    this.answerJ = Math.min(this.predChoice || 0, D.k - 1);
    this.answerSources = V.logitAttr ? topContributors(V, D, this.answerPos, this.answerJ, ANSWER_COLORS, this.hidden) : [];
    const slotKey = `${this.hidden.join("")}|${this.traceSrc}|${this.answerSources.join(".")}`;    // colours change with these only
    if (!this.slotCache || this.slotCache.V !== V || this.slotCache.key !== slotKey) {
      this.slotCache = { V, key: slotKey, slots: colorSlots(V, D.L, D.P, this.hidden, this.traceSrc, MAX_COLORS, this.answerSources) };
    }
    this.slots = this.slotCache.slots;
    const palette = this.dark ? PALETTE_DARK : PALETTE;
    this.colors = Array.from(this.slots, (slot) => (slot >= 0 ? palette[slot] : null));
    this.labels = sourceLabels(V);
    // the heat map's scale fits the traced source's shares (legend and figure print its end)
    this.heatTop = s.heat && this.traceSrc >= 0 ? heatTop(V, D.L, D.P, s.metric, this.hidden, this.traceSrc, s.shown) : 1;
    const batches = headBatches(this) || buildBatches(V, D.L, D.P, {
      metric: s.metric, hidden: this.hidden, trace: this.traceSrc, heat: s.heat, order: s.order,
      shown: s.shown, hatch: [theme.muted, theme.track], heatTop: this.heatTop, colors: this.colors, neutral: theme.neutral, neg: this.dark ? NEG_COLOR.dark : NEG_COLOR.light,
      pos: this.dark ? POS_COLOR.dark : POS_COLOR.light, seqRamp: this.seqRamp, divRamp: this.divRamp,
    });
    const last = D.P - 1, predictions = [];
    for (let j = 0; j < D.k; j++) predictions.push({ text: D.strings[D.pred.ids[last * D.k + j]], prob: D.pred.probs[last * D.k + j] });
    const tokenHidden = D.tokens.map((_, p) => !!this.hidden[V.groups[p]]);
    this.grid.setData({
      L: D.L, P: D.P, batches, tokens: D.tokens, tokenLabels: this.tokenLabels, predictions, tokenHidden,
      tokenColor: D.tokens.map((_, p) => this.colorOf(V.groups[p])),
      tokenDim: tokenHidden.map((h, p) => h || (this.traceSrc >= 0 && V.groups[p] !== this.traceSrc)),
      tokenMark: this.traceSrc >= 0 ? V.first[this.traceSrc] : -1,
      predPos: s.pred === null ? -1 : s.pred,
    });
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
      barBg: v("--bar-bg", "#ddd"), neutral: v("--neutral", "#aaa"), veil: v("--veil", "rgba(255,255,255,.75)"),
    };
    this.seqRamp = sequentialRamp(32, this.dark);
    this.divRamp = divergingRamp(33, this.dark);
    this.grid.setTheme(this.theme);
  }

  themeChanged() {
    this.readTheme();
    this.set({}, { push: false, changed: ["theme"] });
  }

  /** Size the grid to its container, and its height to what is left of the viewport. */
  fitLayout() {
    const wrap = $("grid-wrap");
    const top = wrap.getBoundingClientRect().top + window.scrollY;
    const room = Math.max(0, window.innerHeight - Math.min(top, window.innerHeight * 0.5) - 12);
    this.grid.setLayout({ emph: this.state.emph, width: wrap.clientWidth, height: room, dpr: window.devicePixelRatio || 1 });
    this.grid.setView(this.state.view);
  }

  /** Zoom and pan: replace the history entry (debounced) instead of pushing one per frame. */
  viewChanged() {
    this.state.view = { ...this.grid.view };
    this.grid.commit();
    clearTimeout(this.viewTimer);
    this.viewTimer = setTimeout(() => this.writeHash(false), 250);
    this.positionTooltip();
  }

  restoreHash() {
    if (this.options.ownsHash && !this.options.ownsHash(location.hash)) return;   // another result's view
    this.set(parseHash(location.hash, this.D, this.defaultVariant), { push: false, changed: ALL_KEYS });
  }

  highlightSource(src) {
    if (src === this.hoverSource) return;
    this.hoverSource = src;
    this.grid.setOverlay({ source: this.state.trace === null ? src : -1 });
    this.grid.commit();
  }

  // ------------------------------------------------------------------ tooltip

  showTooltip(cell, sx, sy) {
    const tip = $("tooltip"), prev = this.tipCell;
    if (!(prev && prev.l === cell.l && prev.k === cell.k && prev.p === cell.p) || this.tipPinned) {
      tip.replaceChildren(cellContent(this, cell));
      this.tipCell = cell;
    }
    this.tipPinned = false;
    tip.hidden = false;
    this.tipAt = [sx, sy];
    this.positionTooltip();
  }

  /** Say a pin (or unpin) in the page's aria-live region: the cell and its largest source. */
  announcePin() {
    const box = $("announce"), pin = this.state.pin;
    if (!box) return;
    if (!pin) { box.textContent = "Unpinned."; return; }
    const rows = cellSources(this.V, this.D.P, this.state.metric, this.hidden, pin.l, pin.k, pin.p, this.state.shown);
    const top = rows[0];
    box.textContent = `Pinned layer ${pin.l} ${pin.k ? "MLP" : "attention"} at position ${pin.p}, ${this.tokenLabels[pin.p]}`
      + (top ? `: largest source ${this.labels[top.s]}${top.hidden ? " (hidden)" : ""}, ${(top.share * 100).toFixed(1)}%.` : ".");
  }

  /** The pinned cell's details next to the cell (touch screens: the panel is off-screen). */
  showPinned() {
    const pin = this.state.pin;
    if (!pin) return;
    const r = this.grid.cellRect(pin.l, pin.k, pin.p);
    this.showTooltip(pin, r.x + r.w, r.y + r.h);
    this.tipPinned = true;
  }

  positionTooltip() {
    const tip = $("tooltip");
    if (tip.hidden || !this.tipAt) return;
    const wrap = $("grid-wrap");
    const [sx, sy] = this.tipAt;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let x = sx + 16, y = sy + 16;
    if (x + w > wrap.clientWidth) x = Math.max(0, Math.min(wrap.clientWidth - w, sx - w - 12));
    if (y + h > wrap.clientHeight) y = Math.max(0, sy - h - 12);
    tip.style.left = `${Math.max(0, x)}px`;
    tip.style.top = `${y}px`;
  }

  hideTooltip() {
    $("tooltip").hidden = true;
    this.tipAt = null;
    this.tipCell = null;
    this.tipPinned = false;
  }

  // ------------------------------------------------------------------ actions

  /** Trace a source. The state's hidden set is left alone: tracing shows a hidden source, and
   * clearing the trace (click, Esc) hides it again. */
  toggleTrace(key, opts = {}) {
    const V = this.V, src = keySource(V, key);
    if (src === this.traceSrc) this.set({ trace: null, heat: false }, opts);
    else this.set({ trace: sourceKey(V, src) }, opts);
  }

  toggleHidden(key) {
    const V = this.V, src = keySource(V, key);
    const hidden = new Set(this.state.hidden);
    const patch = { hidden };
    if (this.hidden[src]) {
      for (const h of [...hidden]) if (keySource(V, h) === src) hidden.delete(h);
    } else {
      hidden.add(sourceKey(V, src));
      if (this.traceSrc === src) { patch.trace = null; patch.heat = false; }
    }
    this.set(patch);
  }

  setVariant(name) {
    const patch = { variant: name };
    if (name === "custom" && !this.state.custom) patch.custom = [...Array(this.D.P).keys()];
    this.set(patch);
  }

  groupSelection() {
    if (!this.selection) return;
    const [a, b] = this.selection;
    const g = [...(this.state.custom || [...Array(this.D.P).keys()])];
    for (let p = a; p <= b; p++) g[p] = g[a];
    this.selection = null;
    this.set({ custom: renumber(g) }, { changed: ["selection"] });
  }

  async copyLink() {
    const url = location.href.split("#")[0] + this.hash();
    let ok = false;
    try {
      await navigator.clipboard.writeText(url);
      ok = true;
    } catch { /* not allowed: show the link instead */ }
    this.status(ok ? "Link copied." : `Copy this link: ${url}`);
  }

  status(text) {
    const s = $("status");
    s.textContent = text;
    clearTimeout(this.statusTimer);
    this.statusTimer = setTimeout(() => { s.textContent = ""; }, 4000);
  }

  toggleHelp(force) {
    const h = $("help");
    h.hidden = force === undefined ? !h.hidden : !force;
    if (!h.hidden) $("help-close").focus();
  }

  moveFocus(dr, dp) {
    const D = this.D, g = this.grid;
    const f = g.overlay.focus || this.state.pin || { l: D.L - 1, k: 1, p: D.P - 1 };
    const r = Math.max(0, Math.min(2 * D.L - 1, 2 * f.l + f.k + dr));
    const focus = { l: r >> 1, k: r & 1, p: Math.max(0, Math.min(D.P - 1, f.p + dp)) };
    g.setOverlay({ focus });
    g.reveal(focus);
    this.viewChanged();
    const rect = g.cellRect(focus.l, focus.k, focus.p);
    this.showTooltip(focus, rect.x + rect.w, rect.y + rect.h);
  }

  escape() {
    const s = this.state;
    if (!$("help").hidden) { this.toggleHelp(false); return; }
    if (s.pin) { this.set({ pin: null }); return; }
    if (s.head) { this.set({ head: null }); return; }
    if (s.trace !== null) { this.set({ trace: null, heat: false }); return; }
    if (this.selection) { this.selection = null; this.set({}, { changed: ["selection"] }); return; }
    this.grid.setOverlay({ focus: null });
    this.hideTooltip();
    this.grid.commit();
  }

  /** Canvas pixel (device px) at fraction (fx, fy) of cell (l, k, p): for tests. */
  cellPixel(l, k, p, fx = 0.5, fy = 0.5) {
    const r = this.grid.cellRect(l, k, p), d = this.grid.dpr;
    return [Math.floor((r.x + fx * r.w) * d), Math.floor((r.y + fy * r.h) * d)];
  }
}

/** Show an error in place of the viewer: what happened, in words, and what to do. */
export function showError(root, e) {
  console.warn(e);
  let box = $("error");
  if (!box) {
    box = el("div", { class: "error-box", id: "error", role: "alert" });
    root.prepend(box);
  }
  box.replaceChildren(
    el("strong", { text: e instanceof DataError ? "Cannot show this prompt. " : "The viewer failed. " }),
    el("span", { text: e instanceof DataError ? e.message : `${e.name}: ${e.message}` }));
  box.hidden = false;
  if ($("loading")) $("loading").hidden = true;
  window.infoflowErrorAt = performance.now();     // ms from navigation start (tests)
  document.documentElement.dataset.viewerReady = "error";
}

