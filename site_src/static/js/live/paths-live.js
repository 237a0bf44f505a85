// The live page's Paths panel (issue 23, items 4 and 5): after a run, the exact attribution
// graph of the top prediction at the last position, computed by the worker (engine-graph.js) out
// of the run's kept state and drawn by the gallery's Paths view (paths-view.js mountPaths). Pickers
// ask the worker for another target: any top-k prediction at any position, against the mean
// logit or another prediction there. The ablation check runs on request (a button): the worker
// runs the real model with each of the graph's top 20 head and top 20 MLP nodes zeroed
// (engine-ablate.js, as infoflow/ablate.py), with a progress bar and Cancel; its passes are not
// part of the run. Every string goes through textContent.
import { el } from "../dom.js";
import { displayToken } from "../format.js";
import { engineGraphDocument } from "../paths-data.js";
import { mountPaths, showPathsError } from "../paths-view.js";
import { checkFromValues, topNodes } from "../paths-check.js";
import { encodePathsHash, parsePathsHash } from "../paths-model.js";

const CHECK_NODES = 20;          // head nodes, and MLP nodes, ablated by the check (ablate.py's n)
const KEEP_GRAPHS = 16;          // computed graphs kept in the page, for going back to a target
const mb = (b) => `${(b / 2 ** 20).toFixed(1)} MB`;
const CHECK_NOTE = "The ablation check runs on request: press \u201cCheck against the real model\u201d under the graph "
  + `(the real model in your browser with each of the top ${CHECK_NODES} head and top ${CHECK_NODES} MLP nodes zeroed; not part of the run).`;

// ----------------------------------------------------------------------------- hash
// The panel's state in the live page's URL hash, after the prompt and the viewer's keys: the
// prompt page's keys (paths-model.js: pv=1 open, pn / pe shares, ps node) and the pickers', lp
// (position), lt (target token id), lc (contrast token id; absent: the mean logit), ls=1 (split
// by source). pv=0: closed.

/** The panel's part of the hash. */
export function encodeLivePathsHash(panel) {
  if (!panel.section.open) return "pv=0";
  const s = panel.spec(), state = panel.view ? panel.view.state : { nodeShare: 0.8, edgeShare: 0.9, ...panel.shares };
  let h = `${encodePathsHash({ ...state, target: 0 })}&lp=${s.position}&lt=${s.target}`;
  if (s.contrast !== null) h += `&lc=${s.contrast}`;
  return s.split ? `${h}&ls=1` : h;
}

/** The panel's state a hash describes: null (no Paths keys), {open: false}, or {open: true,
 * position, target, contrast, nodeShare, edgeShare, selected}; the caller checks them against
 * the run (a position or token that is not among its pickers' options falls back). */
export function parseLivePathsHash(hash) {
  const q = new URLSearchParams(String(hash || "").replace(/^#/, ""));
  if (q.get("pv") === "0") return { open: false };
  const view = parsePathsHash(hash);
  if (!view) return null;
  const int = (k) => (/^\d{1,9}$/.test(q.get(k) || "") ? +q.get(k) : null);
  return { open: true, position: int("lp"), target: int("lt"), contrast: int("lc"), split: q.get("ls") === "1",
           nodeShare: view.nodeShare, edgeShare: view.edgeShare, selected: view.selected };
}

/** The label of a prediction in a picker: the token, its rank and probability at that position. */
function predLabel(D, p, j) {
  const s = D.strings[D.pred.ids[p * D.k + j]];
  return `${displayToken(s)} (top ${j + 1}, ${(100 * D.pred.probs[p * D.k + j]).toFixed(1)}%)`;
}

const select = (id, label) => {
  const s = el("select", { id });
  return { s, box: el("label", { class: "field" }, el("span", { text: label }), s) };
};

class LivePaths {
  constructor(container, D, predIds, calls, { hashState = null, onHash = () => {} } = {}) {
    Object.assign(this, { D, predIds, calls, view: null, doc: null, seq: 0, shares: {}, checking: null, onHash });
    this.cache = new Map();        // "p.t.c" -> decoded document (one graph, its check once made)
    this.build(container);
    const changed = () => { this.draw(); onHash(); };
    this.pos.s.addEventListener("change", () => { this.fillTargets(); changed(); });
    this.tgt.s.addEventListener("change", changed);
    this.con.s.addEventListener("change", changed);
    this.split.addEventListener("change", changed);
    // closed until opened, as on gallery pages: a run costs its graph only when the panel is open
    // (keeping the frozen state costs ~2 %; the node writes and the first graph ~0.7 s at P = 32)
    this.section.addEventListener("toggle", () => { if (this.section.open) this.open(); onHash(); });
    this.checkBtn.addEventListener("click", () => { this.checking = this.check(); });
    this.cancelBtn.addEventListener("click", () => calls.cancel("ablate"));
    this.ready = Promise.resolve(null);
    this.restore(hashState);
    if (this.section.open) this.open();
  }

  /** Open the panel and draw its first graph (once): a Promise of the view. */
  open() {
    this.section.open = true;
    if (!this.opened) {
      this.opened = true;
      this.ready = this.draw();
    }
    return this.ready;
  }

  /** The pickers, shares and open state a URL hash asked for, where the run has them. */
  restore(h) {
    const { D, pos, tgt, con } = this;
    if (h) this.section.open = h.open;
    if (h && h.open && h.position !== null && h.position < D.P) pos.s.value = String(h.position);
    this.fillTargets();
    if (!h || !h.open) return;
    const has = (s, v) => v !== null && [...s.options].some((o) => o.value === String(v));
    if (has(tgt.s, h.target)) tgt.s.value = String(h.target);
    if (h.contrast === null || has(con.s, h.contrast)) con.s.value = h.contrast === null ? "" : String(h.contrast);
    this.shares = { nodeShare: h.nodeShare, edgeShare: h.edgeShare, selected: h.selected };
    this.split.checked = h.split;
  }

  build(container) {
    const D = this.D;
    this.pos = select("live-paths-position", "Position");
    this.tgt = select("live-paths-target", "Target");
    this.con = select("live-paths-contrast", "Contrast");
    for (let p = D.P - 1; p >= 0; p--) this.pos.s.append(el("option", { value: p, text: `${p}: ${displayToken(D.tokens[p])}` }));
    this.split = el("input", { type: "checkbox", id: "live-paths-split" });
    const splitBox = el("label", { class: "field", title: "Each node's effect split among the source tokens, shown on hover: "
      + "the browser decomposes the prompt once more for each graph with it (the parts exist only during a decomposition)" },
    this.split, el("span", { text: " Split by source" }));
    this.status = el("p", { class: "paths-status muted", id: "live-paths-status", "aria-live": "polite" });
    this.body = el("div", { class: "paths-body", id: "live-paths-root" });
    this.checkBtn = el("button", { type: "button", id: "live-check-run", text: "Check against the real model",
      title: `Ablate each of the top ${CHECK_NODES} head and ${CHECK_NODES} MLP nodes in the real model, one at a time, and compare with the graph's predictions` });
    this.cancelBtn = el("button", { type: "button", id: "live-check-cancel", text: "Cancel", hidden: true });
    this.bar = el("progress", { id: "live-check-bar", max: 1, value: 0, hidden: true });
    this.checkStatus = el("span", { class: "muted", id: "live-check-status", "aria-live": "polite" });
    this.section = el("details", { class: "panel paths-panel", id: "live-paths" },
      el("summary", {}, el("h2", { text: "Paths: which heads and MLPs carried the prediction" })),
      el("p", { class: "muted paths-intro", text: "The exact attribution graph of one logit, computed in your browser from the run: "
        + "every node's effect on it, split among the nodes that feed it. Pick a prediction at any position, and a contrast; "
        + "tick \u201cSplit by source\u201d for each node's effect by source token (one more decomposition per graph)." }),
      el("div", { class: "toolbar live-paths-controls" }, this.pos.box, this.tgt.box, this.con.box, splitBox),
      this.status, this.body,
      el("div", { class: "live-check" }, this.checkBtn, " ", this.bar, " ", this.cancelBtn, " ", this.checkStatus));
    container.append(this.section);
  }

  /** The target and contrast pickers: the top-k predictions at the picked position. */
  fillTargets() {
    const { D, predIds, pos, tgt, con } = this, p = +pos.s.value, t = tgt.s.value, c = con.s.value;
    const options = () => Array.from({ length: D.k }, (_, j) => el("option", { value: predIds[p * D.k + j], text: predLabel(D, p, j) }));
    tgt.s.replaceChildren(...options());
    con.s.replaceChildren(el("option", { value: "", text: "none: the mean logit (demeaned)" }), ...options());
    if ([...tgt.s.options].some((o) => o.value === t)) tgt.s.value = t;
    if ([...con.s.options].some((o) => o.value === c)) con.s.value = c;
  }

  spec() {
    const c = this.con.s.value;
    return { position: +this.pos.s.value, target: +this.tgt.s.value, contrast: c === "" ? null : +c, split: this.split.checked };
  }

  show(doc) {
    if (this.view) {
      this.shares = { nodeShare: this.view.state.nodeShare, edgeShare: this.view.state.edgeShare };
      this.view.destroy();
    }
    this.doc = doc;
    // a slider sends many states: the URL follows once it rests (browsers throttle replaceState)
    const onState = () => { clearTimeout(this.hashTimer); this.hashTimer = setTimeout(this.onHash, 150); };
    this.view = mountPaths(this.body, doc, { idPrefix: "live-paths", id: "live", title: "Your prompt", tokenIds: this.D.tokenIds,
      state: { ...this.shares }, targetPicker: false, onState });
    this.onHash();
    this.status.textContent = doc.status;
    this.checkBtn.disabled = false;
    this.checkStatus.textContent = doc.graphs[0].check ? "Checked (see under the graph)." : "";
    return this.view;
  }

  /** The graph of the picked target: from the page's cache, else from the worker. */
  async draw() {
    const s = this.spec(), key = `${s.position}.${s.target}.${s.contrast}.${s.split}`, seq = ++this.seq;
    if (s.target === s.contrast) {
      this.status.textContent = "The target and the contrast are the same token: pick another contrast.";
      return null;
    }
    if (this.cache.has(key)) return this.show(this.cache.get(key));
    this.status.textContent = s.split ? "Computing the graph, then decomposing the prompt again for the per-source split\u2026"
      : "Computing the graph in your browser\u2026";
    this.checkBtn.disabled = true;
    const t0 = performance.now();
    try {
      const r = await this.calls.graph(s);
      if (seq !== this.seq) return null;                    // another target was picked meanwhile
      const doc = this.document(r, performance.now() - t0);
      this.cache.set(key, doc);
      if (this.cache.size > KEEP_GRAPHS) this.cache.delete(this.cache.keys().next().value);
      return this.show(doc);
    } catch (e) {
      if (seq !== this.seq) return null;
      if (e && e.name === "AbortError") {
        this.status.textContent = "The graph was not computed: a new run or Cancel stopped it. Pick a target to compute it.";
        this.checkBtn.disabled = !this.doc;
        return null;
      }
      this.status.textContent = "";
      showPathsError(this.body, e);
      return null;
    }
  }

  /** The worker's answer {graph, rerun, stateBytes} -> the view's document, with its status line. */
  document(r, ms) {
    const D = this.D, Hx = r.graph.heads.shape[1];
    const labels = D.heads && D.heads.Hx === Hx ? D.heads.labels : Array.from({ length: Hx }, (_, h) => String(h));
    const doc = engineGraphDocument({ tokens: D.tokens, layers: D.L, labels, model: (D.model && D.model.id) || "", prompt: "live", graphs: [r.graph] });
    doc.checkNote = CHECK_NOTE;
    doc.rerun = r.rerun;
    const split = r.split ? ` The split by source took one more decomposition of the prompt (${(r.graph.timings.split_ms / 1000).toFixed(1)} s `
      + "of it): the parts it needs exist only while the prompt is decomposed. Hover a node for its top sources." : "";
    doc.status = `Computed in ${(ms / 1000).toFixed(1)} s. ` + (r.rerun
      ? `The worker had to decompose the prompt again for it: the run's frozen state (${mb(r.stateBytes)}) is over what this page keeps for new targets, so each new target costs a decomposition.`
      : `From the run's frozen state, kept in the worker for new targets (${mb(r.stateBytes)})`
        + (r.split ? "." : ": no new decomposition.")) + split;
    return doc;
  }

  /** The ablation check of the graph on screen, in the worker; its result goes under the graph. */
  async check() {
    const doc = this.doc, entry = doc && doc.graphs[0];
    if (!entry) return null;
    const nodes = topNodes(doc, entry, CHECK_NODES), { bar } = this;
    this.checkBtn.disabled = true;
    this.cancelBtn.hidden = false;
    bar.hidden = false;
    bar.value = 0;
    this.checkStatus.textContent = `Running the real model with each of ${nodes.length} nodes zeroed\u2026`;
    const t0 = performance.now();
    try {
      const values = await this.calls.ablate({ target: entry.target.id, contrast: entry.contrast ? entry.contrast.id : null, position: entry.position,
        nodes: nodes.map(({ kind, layer, head, position }) => ({ kind, layer, head, position })) }, (step, total) => { bar.max = total; bar.value = step; });
      entry.check = checkFromValues(nodes, values);
      this.checkStatus.textContent = `Checked in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${nodes.length} ablated forward passes of the real model, nothing frozen (see under the graph).`;
      if (this.doc === doc) this.view.renderText();
      return entry.check;
    } catch (e) {
      this.checkStatus.textContent = e && e.name === "AbortError" ? "Check cancelled." : `The check failed: ${e && e.message}`;
      return null;
    } finally {
      this.checkBtn.disabled = false;
      this.cancelBtn.hidden = true;
      bar.hidden = true;
    }
  }

  destroy() {
    this.seq++;
    clearTimeout(this.hashTimer);
    if (this.view) this.view.destroy();
    this.section.remove();
  }
}

/**
 * Add the panel to `container` for the live result D (data.js), `predIds` (P·k token ids of
 * D.pred) and the page's worker calls: graph({target, contrast, position}) -> {graph, rerun,
 * stateBytes}; ablate({target, contrast, position, nodes}, onProgress) -> Float64Array; cancel(job).
 * options: {hashState (parseLivePathsHash of the hash the result opened with), onHash() (the
 * panel's state changed: the page rewrites its hash, reading encodeLivePathsHash(panel))}.
 * Returns the panel: {section, view, ready (Promise of the first view), checking (Promise of
 * the last check), open() (opens it and draws its first graph: a Promise of the view), draw(),
 * check(), destroy()}. The panel is closed until opened (or a hash says pv=1).
 */
export function attachLivePaths(container, D, predIds, calls, options = {}) {
  return new LivePaths(container, D, predIds, calls, options);
}
