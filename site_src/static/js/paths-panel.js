// The Paths panel on a gallery prompt page: a closed section under the viewer's panels when the
// page names a graph file (<main id="viewer" data-graph-src=URL>; absent: no panel). The file is
// fetched the first time the section opens (or when the URL hash says it is open: pv=1), then
// mountPaths (paths-view.js) draws it. The view's state rides in the viewer's URL hash, and a
// click on a node pins the matching grid cell and opens the Heads panel on that head.
import { el } from "./dom.js";
import { loadGraph } from "./paths-data.js";
import { mountPaths, showPathsError } from "./paths-view.js";
import { encodePathsHash, parsePathsHash } from "./paths-model.js";
import { DataError } from "./arrays.js";

/** The decoded graph must describe the viewer's prompt: same tokens, same depth. */
export function checkMatches(G, D) {
  if (G.P !== D.P || G.L !== D.L || G.tokens.some((t, p) => t !== D.tokens[p])) {
    throw new DataError(`The graph file describes a different prompt or model (${G.P} tokens, ${G.L} layers; this page: ${D.P} tokens, ${D.L} layers). Rebuild the site.`);
  }
}

/** A node clicked in the graph -> the grid's matching cell pinned, and the head picked in the Heads panel. */
function pinNode(viewer, node) {
  if (!node) return "";
  const L = viewer.D.L;
  if (node.kind === "head") {
    viewer.headPick = { l: node.layer, p: node.position, h: node.head };
    viewer.grid.setOverlay({ focus: { l: node.layer, k: 0, p: node.position } });
    viewer.set({ pin: { l: node.layer, k: 0, p: node.position } });
    return `The grid pins layer ${node.layer}'s attention cell at position ${node.position}, and the Heads panel shows head ${node.component.replace(/^head /, "")}.`;
  }
  if (node.kind === "mlp" || node.kind === "target") {
    const l = node.kind === "mlp" ? node.layer : L - 1;
    viewer.grid.setOverlay({ focus: { l, k: 1, p: node.position } });
    viewer.set({ pin: { l, k: 1, p: node.position } });
    return `The grid pins layer ${l}'s MLP cell at position ${node.position}.`;
  }
  return "";
}

/**
 * Add the Paths panel to `viewer` (app.js's Viewer) when its root names a graph file. `firstHash`:
 * the URL hash the page opened with (the viewer rewrites it with its own keys as it starts).
 * Returns the panel controller {section, open(), view (once mounted)} or null.
 */
export function attachPaths(viewer, firstHash = location.hash) {
  const url = viewer.root.dataset.graphSrc;
  if (!url) return null;
  const body = el("div", { class: "paths-body", id: "paths-root" });
  const section = el("details", { class: "panel paths-panel", id: "paths-panel" },
    el("summary", {}, el("h2", { text: "Paths: which heads and MLPs carried the prediction" })),
    el("p", { class: "muted paths-intro", text: "The exact attribution graph of a logit: every node's effect on it, split among the nodes "
      + "that feed it. Hover a node for its effect, its top sources and its strongest edges; click it to highlight its paths "
      + "(and pin its cell in the grid)." }),
    body);
  const panels = document.getElementById("panels");
  if (panels && panels.parentNode) panels.after(section);
  else viewer.root.append(section);

  const ctl = { section, view: null, loading: null };
  let hashState = parsePathsHash(firstHash);
  viewer.hashParts = viewer.hashParts || [];
  viewer.hashParts.push(() => (section.open && ctl.view ? encodePathsHash(ctl.view.state) : section.open ? "pv=1" : ""));

  ctl.open = () => {
    if (ctl.loading) return ctl.loading;
    body.replaceChildren(el("p", { class: "loading", text: "Loading the graph file\u2026" }));
    ctl.loading = loadGraph(url).then((G) => {
      checkMatches(G, viewer.D);
      ctl.view = mountPaths(body, G, {
        state: hashState || {}, id: viewer.options.id, title: viewer.D.prompt && viewer.D.prompt.title,
        tokenIds: viewer.D.tokenIds, onSelect: (node) => pinNode(viewer, node),
        // a slider sends many states: the URL follows once it rests (browsers throttle replaceState)
        onState: () => { clearTimeout(ctl.hashTimer); ctl.hashTimer = setTimeout(() => viewer.writeHash(false), 150); },
      });
      viewer.paths = ctl.view;
      viewer.writeHash(false);
      return ctl.view;
    }).catch((e) => {
      showPathsError(body, e);
      return null;
    });
    return ctl.loading;
  };
  section.addEventListener("toggle", () => {
    if (section.open) ctl.open();
    viewer.writeHash(false);
  });
  // Back / Forward: a hash with another Paths state redraws it
  window.addEventListener("popstate", () => {
    hashState = parsePathsHash(location.hash);
    if (hashState && !section.open) section.open = true;
    if (hashState && ctl.view) ctl.view.set(hashState);
  }, { signal: viewer.lifetime.signal });
  if (hashState) section.open = true;        // the toggle event loads it
  return ctl;
}

