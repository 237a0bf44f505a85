// The viewer: mountViewer(root, D) shows a decoded result (data.js decodeData's object, fetched
// or computed in the browser) in `root`. On a gallery prompt page this module also boots itself:
// it fetches the page's data file (<main id="viewer" data-src=...>) and mounts.
//
// Modules: app.js (the Viewer: state changes -> one update), state.js (state and URL hash),
// grid.js (the canvas), compute.js (cells -> batches), panels.js (DOM around the grid),
// events.js (input), export.js (figures and CSV), data.js + arrays.js (the data file).
import { loadData, DataError, METRIC_KEYS } from "./data.js";
import { Viewer, showError } from "./app.js";
import { METRICS } from "./state.js";
import { pickModel, localHash, linkModels } from "./models.js";

const $ = (id) => document.getElementById(id);

/**
 * Show decoded result `D` (what data.js decodeData returns) in element `root`, which the viewer
 * fills with its toolbar, token strip, grid and panels. One viewer per page (it uses element
 * ids). options: {id: name for exported files, dataUrl: a "Data file" link, hash: mirror the
 * view in the URL hash (default true)}. Returns the Viewer once its first frame is drawn.
 */
export async function mountViewer(root, D, options = {}) {
  const viewer = new Viewer(root, D, options);
  window.infoflowViewer = api(viewer);
  try {
    await viewer.start();
  } catch (e) {
    viewer.fail(e);
  }
  return viewer;
}

function api(viewer) {
  return {
    get state() {
      const s = viewer.state;
      return { ...s, hidden: [...s.hidden], view: { ...s.view } };
    },
    get timings() { return { ...viewer.timings, lastDraw: viewer.grid.lastDraw }; },
    get hash() { return viewer.state ? viewer.hash() : null; },
    /** true once nothing is being decoded or waiting to be drawn */
    get idle() { return !viewer.pending && !viewer.grid.frame && !viewer.idleJobs.size && !viewer.relayoutPending && !viewer.loading; },
    viewer,
    grid: viewer.grid,
  };
}

// ----------------------------------------------------------------------------- boot (gallery page)

async function boot(root) {
  const loading = $("loading");
  const firstHash = location.hash;      // the viewer rewrites the hash with its own keys when it starts
  if (location.protocol === "file:") {
    showError(root, new DataError("This page was opened from a file (file://), and browsers do not let such a page read its "
      + "data file. Serve the site folder instead: run `infoflow serve` (or `python3 -m http.server` in the folder), "
      + "then open http://127.0.0.1:8000/."));
    return;
  }
  try {
    pickModel(root);                    // ?model=<key>: which of the page's models to show
  } catch (e) {
    showError(root, new DataError(e.message));
    return;
  }
  if (loading) loading.hidden = false;
  // decode first only what the first view shows (the hash may ask for another metric / grouping)
  const q = new URLSearchParams(location.hash.replace(/^#/, ""));
  const m = METRICS[q.get("m")] ? q.get("m") : "norm";
  const g = q.get("g") || "words";
  const eager = g === "custom" ? METRIC_KEYS.map((k) => ["tokens", k]) : [[g, m]];
  let D;
  try {
    D = await loadData(root.dataset.src, { eager });
  } catch (e) {
    showError(root, e);
    return;
  }
  if (loading) loading.hidden = true;
  const hash = localHash(location.hash, D);   // a link from another model's view: its keys to ours
  if (hash !== location.hash) history.replaceState(null, "", hash);
  const id = root.dataset.model ? `${root.dataset.id}-${root.dataset.model}` : root.dataset.id;
  const options = { id, dataUrl: root.dataset.src };
  const manifest = root.dataset.liveManifest;
  // the live page's model is the gallery's first model: only its pages can recompute in the browser
  const first = document.querySelector("#model-switch .model-choice");
  const liveModel = !root.dataset.model || !first || root.dataset.model === first.dataset.model;
  if (manifest && liveModel && D.prompt && typeof D.prompt.text === "string") {
    // custom groups can be recomputed exactly by the live page's engine (exact-custom.js)
    options.exactOffer = async (onProgress) => (await import("./live/exact-gallery.js")).galleryExact(manifest, D, onProgress);
    options.exactMB = +root.dataset.liveMb || 0;       // the button says the download before it starts
  }
  const viewer = await mountViewer(root, D, options);
  linkModels(viewer);
  // the Paths panel, where the build wrote a graph file (its code loads only then)
  if (root.dataset.graphSrc) {
    import("./paths-panel.js").then((m) => m.attachPaths(viewer, firstHash), (e) => console.warn(e));
  }
}

const root = $("viewer");
if (root && root.dataset.src) boot(root);

export { Viewer, showError };
export { registerPanel } from "./panels.js";
