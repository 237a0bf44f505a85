// The viewer's markup, built into the element it is mounted on, so that any page (the gallery's
// prompt pages, the live page) gets the same viewer from mountViewer(root, D). All text goes in
// with textContent: nothing here parses HTML.
import { METRICS, METRIC_HELP } from "./state.js";

/** el("p", {class: "x", text: "hi", onclick: f}, child...) */
export function el(tag, attrs = {}, ...children) {
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

const SVG_NS = "http://www.w3.org/2000/svg";
export function svgEl(tag, attrs = {}, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

/** The toolbar's controls in Tab order, its metric radios as one (the checked radio): a roving group (roving.js). */
export function toolbarControls(box) {
  const radio = box.querySelector('input[name="metric"]:checked') || box.querySelector('input[name="metric"]');
  return [radio, ...box.querySelectorAll("select, .buttons button, .buttons a")];
}

const button = (id, text, title, extra = {}) => el("button", { type: "button", id, title, text, ...extra });

function toolbar(options) {
  const metric = el("fieldset", { class: "seg", id: "metric" }, el("legend", { text: "Metric" }),
    ...Object.entries({ norm: "cumulative norm share", delta: "block write (delta)", proj: "signed projection" })
      .map(([value, text]) => el("label", {}, el("input", { type: "radio", name: "metric", value }), el("span", { text: ` ${text}` }))));
  return el("div", { class: "toolbar", id: "toolbar", role: "toolbar",
    "aria-label": "View settings and exports (one Tab stop: Left and Right move between the controls, Up and Down change a choice)" }, metric,
    el("label", { class: "field" }, el("span", { text: "Grouping" }), el("select", { id: "grouping" })),
    el("label", { class: "field" }, el("span", { text: "Shares of" }), el("select", { id: "share-of",
      title: "What a share is divided by: the whole residual (hidden sources drawn hatched, still counted) or only the sources shown" },
    el("option", { value: "whole", text: "the whole residual" }), el("option", { value: "shown", text: "the sources shown" }))),
    el("label", { class: "field" }, el("span", { text: "Order" }), el("select", { id: "order", title: "Order of the segments inside each bar" },
      el("option", { value: "position", text: "by position (stable)" }), el("option", { value: "size", text: "by size" }))),
    el("div", { class: "buttons", role: "group", "aria-label": "View and export" },
      button("emph", "Emphasize MLP rows", "Make the MLP rows the tall ones (the attention rows are by default)", { "aria-pressed": "false" }),
      button("heat", "Heat map", "Heat map of the traced source's share", { "aria-pressed": "false" }),
      button("fit", "Fit", "Reset zoom (0)"),
      button("zoom-in", "+", "Zoom in (+)", { "aria-label": "Zoom in" }),
      button("zoom-out", "\u2212", "Zoom out (-)", { "aria-label": "Zoom out" }),
      button("copy-link", "Copy link", "Copy a link to this view"),
      button("export-png", "PNG", "Download this view as a figure: PNG at 2x, with title, legend and scale"),
      button("export-svg", "SVG", "Download this view as an SVG figure"),
      button("export-csv", "CSV", "Download the numbers behind this view: the traced source, the pinned cell, or the whole grid"),
      options.dataUrl ? el("a", { class: "button", id: "download-data", href: options.dataUrl, download: "" , text: "Data file" }) : null,
      button("help-button", "?", "How to read this, and keys (?)", { "aria-label": "Help" })),
    el("span", { class: "status", id: "status", "aria-live": "polite" }));
}

function helpDialog() {
  const keys = [
    ["Click a token", "trace that source (its share in every cell); click again or Esc to clear"],
    ["Hover a source", "in the legend, the token strip or a bar: highlight it everywhere"],
    ["Click a cell", "pin it: its sources, the logit lens, and the traced source's line chart"],
    ["Click a column label", "(the tokens under the grid) show the predictions after that position and where they come from "
      + "(the first colours follow them), and trace that token's source"],
    ["Tab", "one stop per group: the site links, the model switch, the toolbar and the token strip are each one stop; "
      + "the arrow keys move inside them (in the toolbar Left and Right, as Up and Down change a choice); "
      + "\u201cSkip to the grid\u201d (the page's second link) goes straight to the grid"],
    ["Ctrl/\u2318 + wheel", "zoom at the cursor (plain wheel scrolls the page until you click the grid)"],
    ["Drag", "pan"], ["+ \u2212 0", "zoom in, out, fit"], ["Arrows", "move the focus cell"],
    ["Enter", "pin the focus cell"], ["Esc", "close this, unpin, end trace head, stop tracing, clear focus"], ["?", "this help"],
  ];
  const heads = [
    ["Pin an attention cell", "the Heads panel splits that block's write by query head: a table of head \u00d7 source "
      + "(norm, or signed share with the signed metric) and each head's whole write; click a head for its attention "
      + "pattern at that position"],
    ["Trace head l.h", "the grid becomes that head's share of each attention cell's write (the URL keeps it as th=l.h); "
      + "\u201cEnd trace head\u201d or Esc returns to the sources"],
  ];
  return el("div", { class: "help", id: "help", role: "dialog", "aria-modal": "false", "aria-labelledby": "help-h", hidden: true },
    el("h2", { id: "help-h", text: "How to read the grid" }),
    el("p", { text: "Columns are token positions (left to right). Rows are sublayers, layer 0 at the bottom: "
      + "in each layer the attention block, then the MLP. Each row of a column is one bar; its coloured segments "
      + "are the sources (tokens, or groups of tokens) that the residual stream at that position is made of, "
      + "and a segment's width is the source's share. The ten largest sources get colours; grey is all the others." }),
    el("dl", {}, ...Object.keys(METRICS).flatMap((m) => [el("dt", { text: METRICS[m] }), el("dd", { text: METRIC_HELP[m] })])),
    el("p", { class: "muted", id: "help-precision", text: "Values are stored in 8 bits per cell: each is a fraction (1/255 steps) of the "
      + "cell's largest value, so a value is within 1/510 of that largest value of the engine's number (signed "
      + "projection: 1/254). The tooltips print them to that precision. The reconstruction error in the footer is the "
      + "engine's, before this rounding." }),
    el("h3", { text: "Attention heads" }),
    el("dl", {}, ...heads.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    el("h3", { text: "Keys and mouse" }),
    el("dl", {}, ...keys.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    button("help-close", "Close", "Close (Esc)"));
}

/** Build the viewer into `root` (once). The page may hold its own title, error and loading boxes. */
export function buildSkeleton(root, options = {}) {
  if (root.querySelector("#grid")) return;
  const panels = el("div", { class: "panels", id: "panels" });
  root.append(
    toolbar(options),
    el("div", { class: "custom-groups", id: "custom-groups", hidden: true },
      el("strong", { text: "Custom groups" }), options.exactCustom
        ? el("span", { id: "custom-approx", text: " exact (each change is computed in your browser)" })
        : el("span", { id: "custom-approx", class: "approx", text: " approximate (sum of norms)" }),
      el("span", { text: ": shift-click a second token in the strip to select a range, then " }),
      button("group-make", "Group selection"), el("span", { text: " " }), button("group-clear", "Clear groups"),
      options.exactOffer && !options.exactCustom ? el("span", { text: " " }) : null,
      options.exactOffer && !options.exactCustom ? button("group-exact", options.exactMB
        ? `Recompute exactly in your browser (downloads the model once: ${options.exactMB} MB)` : "Recompute exactly in your browser",
      "Runs the model in this page: the first time, it downloads the model, then keeps it in this browser's cache") : null,
      el("span", { text: " " }),
      Object.assign(button("group-cancel", "Cancel"), { hidden: true }),
      el("span", { id: "selection-label" })),
    el("div", { class: "token-strip", id: "token-strip", role: "group", "aria-label": "Tokens: click to trace a source, use the eye to hide it" }),
    el("div", { class: "grid-row", id: "grid-row" },      // the grid, and the depth chart beside it (depth.js)
      el("div", { class: "grid-wrap", id: "grid-wrap" },
        el("canvas", { id: "grid", tabindex: "0", role: "img", "aria-label": "Information-flow grid" }),
        el("div", { class: "wheel-hint", id: "wheel-hint", hidden: true, "aria-hidden": "true",
          text: "Ctrl + wheel (\u2318 + wheel) zooms; or click the grid first" }),
        el("div", { class: "tooltip", id: "tooltip", role: "status", hidden: true })),
      el("div", { class: "side-charts", id: "side-charts" },      // depth.js, then the logit lens overview (lens.js)
        el("aside", { class: "depth-box", id: "depth-chart", "aria-label": "Depth chart: one source's share layer by layer" }),
        el("aside", { class: "depth-box lens-box", id: "lens-chart", "aria-label": "Logit lens of one token at the last position, layer by layer" }))),
    el("p", { class: "grid-caption", id: "grid-caption" }),
    el("p", { class: "visually-hidden", id: "announce", "aria-live": "polite" }),   // pinning, for screen readers
    panels,
    el("div", { class: "visually-hidden" },
      el("table", { id: "summary-table" },
        el("caption", { text: "Top sources per position at the last layer" }),
        el("thead", {}, el("tr", {}, ...["Position", "Token", "Top sources (share)"].map((t) => el("th", { scope: "col", text: t })))),
        el("tbody"))),
    helpDialog());
}

/** A panel box in the panels row: <section><h2>title</h2><div id=id></div></section>. */
export function panelBox(id, title) {
  return el("section", { class: "panel", id: `${id}-panel`, "aria-labelledby": `${id}-h` },
    el("h2", { id: `${id}-h`, text: title }), el("div", { id }));
}
