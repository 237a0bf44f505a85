// The live page's Paths panel (issue 23, items 4 and 5): after a run, the exact attribution
// graph of the top prediction at the last position, computed by the worker (engine-graph.js) from
// the run's kept state and drawn by the gallery's Paths view (paths-view.js mountPaths). Pickers
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

const CHECK_NODES = 20;          // head nodes, and MLP nodes, ablated by the check (ablate.py's n)
const KEEP_GRAPHS = 16;          // computed graphs kept in the page, for going back to a target
const mb = (b) => `${(b / 2 ** 20).toFixed(1)} MB`;
const CHECK_NOTE = "The ablation check runs on request: press \u201cCheck against the real model\u201d under the graph "
  + `(the real model in your browser with each of the top ${CHECK_NODES} head and top ${CHECK_NODES} MLP nodes zeroed; not part of the run).`;

/** The label of a prediction in a picker: the token, its rank and probability at that position. */
function predLabel(D, p, j) {
  const s = D.strings[D.pred.ids[p * D.k + j]];
  return `${displayToken(s)} (top ${j + 1}, ${(100 * D.pred.probs[p * D.k + j]).toFixed(1)}%)`;
}

/**
 * Add the panel to `container` for the live result D (data.js), `predIds` (P·k token ids of
 * D.pred) and the page's worker calls: graph({target, contrast, position}) -> {graph, rerun,
 * stateBytes}; ablate({target, contrast, position, nodes}, onProgress) -> Float64Array; cancel(job).
 * Returns {section, ready (Promise of the first view), view(), destroy()}.
 */
export function attachLivePaths(container, D, predIds, calls) {
  const sel = (id, label) => {
    const s = el("select", { id });
    return { s, box: el("label", { class: "field" }, el("span", { text: label }), s) };
  };
  const pos = sel("live-paths-position", "Position"), tgt = sel("live-paths-target", "Target"), con = sel("live-paths-contrast", "Contrast");
  for (let p = D.P - 1; p >= 0; p--) pos.s.append(el("option", { value: p, text: `${p}: ${displayToken(D.tokens[p])}` }));
  const status = el("p", { class: "paths-status muted", id: "live-paths-status", "aria-live": "polite" });
  const body = el("div", { class: "paths-body", id: "live-paths-root" });
  const checkBtn = el("button", { type: "button", id: "live-check-run", text: "Check against the real model",
    title: `Ablate each of the top ${CHECK_NODES} head and ${CHECK_NODES} MLP nodes in the real model, one at a time, and compare with the graph's predictions` });
  const cancelBtn = el("button", { type: "button", id: "live-check-cancel", text: "Cancel", hidden: true });
  const bar = el("progress", { id: "live-check-bar", max: 1, value: 0, hidden: true });
  const checkStatus = el("span", { class: "muted", id: "live-check-status", "aria-live": "polite" });
  const section = el("details", { class: "panel paths-panel", id: "live-paths", open: true },
    el("summary", {}, el("h2", { text: "Paths: which heads and MLPs carried the prediction" })),
    el("p", { class: "muted paths-intro", text: "The exact attribution graph of one logit, computed in your browser from the run: "
      + "every node's effect on it, split among the nodes that feed it. Pick a prediction at any position, and a contrast." }),
    el("div", { class: "toolbar live-paths-controls" }, pos.box, tgt.box, con.box),
    status, body,
    el("div", { class: "live-check" }, checkBtn, " ", bar, " ", cancelBtn, " ", checkStatus));
  container.append(section);

  const cache = new Map();       // "p.t.c" -> decoded document (one graph, its check once made)
  const ctl = { section, view: null, seq: 0, shares: {} };
  const fillTargets = () => {
    const p = +pos.s.value, t = tgt.s.value, c = con.s.value;
    tgt.s.replaceChildren(...Array.from({ length: D.k }, (_, j) => el("option", { value: predIds[p * D.k + j], text: predLabel(D, p, j) })));
    con.s.replaceChildren(el("option", { value: "", text: "none: the mean logit (demeaned)" }),
      ...Array.from({ length: D.k }, (_, j) => el("option", { value: predIds[p * D.k + j], text: predLabel(D, p, j) })));
    if ([...tgt.s.options].some((o) => o.value === t)) tgt.s.value = t;
    if ([...con.s.options].some((o) => o.value === c)) con.s.value = c;
  };
  const spec = () => ({ position: +pos.s.value, target: +tgt.s.value, contrast: con.s.value === "" ? null : +con.s.value });

  const show = (doc) => {
    if (ctl.view) {
      ctl.shares = { nodeShare: ctl.view.state.nodeShare, edgeShare: ctl.view.state.edgeShare };
      ctl.view.destroy();
    }
    ctl.doc = doc;
    ctl.view = mountPaths(body, doc, { idPrefix: "live-paths", id: "live", title: "Your prompt", tokenIds: D.tokenIds,
      state: { ...ctl.shares }, targetPicker: false });
    status.textContent = doc.status;
    checkBtn.disabled = false;
    checkStatus.textContent = doc.graphs[0].check ? "Checked (see under the graph)." : "";
    return ctl.view;
  };

  const draw = async () => {
    const s = spec(), key = `${s.position}.${s.target}.${s.contrast}`, seq = ++ctl.seq;
    if (s.target === s.contrast) {
      status.textContent = "The target and the contrast are the same token: pick another contrast.";
      return null;
    }
    if (cache.has(key)) return show(cache.get(key));
    status.textContent = "Computing the graph in your browser\u2026";
    checkBtn.disabled = true;
    const t0 = performance.now();
    try {
      const r = await calls.graph(s);
      if (seq !== ctl.seq) return null;                     // another target was picked meanwhile
      const labels = D.heads && D.heads.Hx === r.graph.heads.shape[1] ? D.heads.labels
        : Array.from({ length: r.graph.heads.shape[1] }, (_, h) => String(h));
      const doc = engineGraphDocument({ tokens: D.tokens, layers: D.L, labels, model: (D.model && D.model.id) || "", prompt: "live", graphs: [r.graph] });
      doc.checkNote = CHECK_NOTE;
      doc.rerun = r.rerun;
      cache.set(key, doc);
      if (cache.size > KEEP_GRAPHS) cache.delete(cache.keys().next().value);
      doc.status = `Computed in ${((performance.now() - t0) / 1000).toFixed(1)} s. ` + (r.rerun
        ? `The worker had to decompose the prompt again for it: the run's frozen state (${mb(r.stateBytes)}) is over what this page keeps for new targets, so each new target costs a decomposition.`
        : `From the run's frozen state, kept in the worker for new targets (${mb(r.stateBytes)}): no new decomposition.`);
      return show(doc);
    } catch (e) {
      if (seq !== ctl.seq) return null;
      if (e && e.name === "AbortError") {
        status.textContent = "The graph was not computed: a new run or Cancel stopped it. Pick a target to compute it.";
        checkBtn.disabled = !ctl.doc;
        return null;
      }
      status.textContent = "";
      showPathsError(body, e);
      return null;
    }
  };

  const check = async () => {
    const doc = ctl.doc, entry = doc && doc.graphs[0];
    if (!entry) return null;
    const nodes = topNodes(doc, entry, CHECK_NODES);
    checkBtn.disabled = true;
    cancelBtn.hidden = false;
    bar.hidden = false;
    bar.value = 0;
    checkStatus.textContent = `Running the real model with each of ${nodes.length} nodes zeroed\u2026`;
    const t0 = performance.now();
    try {
      const values = await calls.ablate({ target: entry.target.id, contrast: entry.contrast ? entry.contrast.id : null, position: entry.position,
        nodes: nodes.map(({ kind, layer, head, position }) => ({ kind, layer, head, position })) }, (step, total) => { bar.max = total; bar.value = step; });
      entry.check = checkFromValues(nodes, values);
      checkStatus.textContent = `Checked in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${nodes.length} ablated forward passes of the real model, nothing frozen (see under the graph).`;
      if (ctl.doc === doc) ctl.view.renderText();
      return entry.check;
    } catch (e) {
      checkStatus.textContent = e && e.name === "AbortError" ? "Check cancelled." : `The check failed: ${e && e.message}`;
      return null;
    } finally {
      checkBtn.disabled = false;
      cancelBtn.hidden = true;
      bar.hidden = true;
    }
  };

  pos.s.addEventListener("change", () => { fillTargets(); draw(); });
  tgt.s.addEventListener("change", draw);
  con.s.addEventListener("change", draw);
  checkBtn.addEventListener("click", () => { ctl.checking = check(); });
  cancelBtn.addEventListener("click", () => calls.cancel("ablate"));
  fillTargets();
  ctl.ready = draw();
  ctl.draw = draw;
  ctl.destroy = () => {
    ctl.seq++;
    if (ctl.view) ctl.view.destroy();
    section.remove();
  };
  return ctl;
}
