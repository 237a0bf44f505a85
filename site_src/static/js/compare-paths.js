// The Paths panel of a compare page (c/<id>.html): each model's attribution graph side by side,
// each from that model's own graph file (<a data-graph-src> in #compare-sources; the build
// names it). The section is closed until opened (or the hash says pv=1); then both files are
// fetched and paths-view.js draws each with its own target picker and thresholds. A model
// whose file is missing, or damaged, gets a message in words in its pane; the other still draws.
import { el } from "./dom.js";
import { loadGraph } from "./paths-data.js";
import { mountPaths, showPathsError } from "./paths-view.js";
import { checkMatches } from "./paths-panel.js";
import { DataError } from "./arrays.js";

/**
 * Add the panel after `after` (an element) for `models` ([{key, label, graphSrc}]) and their
 * decoded data files `data` (the graph must describe the same tokens). Returns
 * {section, views: [view | null, view | null], open(): Promise of the views}.
 */
export function attachComparePaths(after, models, data, { id = "compare", open = false, onToggle = null } = {}) {
  const panes = models.map((m, i) => {
    const side = "ab"[i];
    const body = el("div", { class: "paths-body", id: `paths-root-${side}` });
    return { body, section: el("section", { class: "compare-paths-pane", id: `paths-pane-${side}` },
      el("h3", { text: `${m.label} (${data[i].L} layers)` }), body) };
  });
  const section = el("details", { class: "panel paths-panel", id: "compare-paths" },
    el("summary", {}, el("h2", { text: "Paths: which heads and MLPs carried the prediction, on each model" })),
    el("p", { class: "muted paths-intro", text: "Each model's exact attribution graph of its stored targets, from its own graph file: "
      + "every node's effect on the target logit, split among the nodes that feed it. The two models tokenize and layer "
      + "differently, so their graphs have their own columns and rows; under each graph, its completeness and its ablation check." }),
    el("div", { class: "compare-paths-panes" }, ...panes.map((p) => p.section)));
  after.after(section);
  const ctl = { section, views: [null, null], loading: null };

  const one = async (m, i) => {
    const { body } = panes[i];
    if (!m.graphSrc) {
      throw new DataError(`This site has no graph file for ${m.label} on this prompt (the build named none), so its paths cannot be shown. `
        + "Rebuild the site with this infoflow (infoflow build) to add it.");
    }
    body.replaceChildren(el("p", { class: "loading", text: `Loading ${m.label}'s graph file\u2026` }));
    const G = await loadGraph(m.graphSrc);
    checkMatches(G, data[i]);
    ctl.views[i] = mountPaths(body, G, { idPrefix: `paths-${"ab"[i]}`, id: `${id}-${m.key}`,
      title: data[i].prompt && data[i].prompt.title, tokenIds: data[i].tokenIds });
    return ctl.views[i];
  };
  ctl.open = () => {
    if (!ctl.loading) {
      ctl.loading = Promise.all(models.map((m, i) => one(m, i).catch((e) => {
        showPathsError(panes[i].body, e);
        return null;
      })));
    }
    return ctl.loading;
  };
  section.addEventListener("toggle", () => {
    if (section.open) ctl.open();
    if (onToggle) onToggle(section.open);
  });
  if (open) section.open = true;           // the toggle event loads them
  return ctl;
}
