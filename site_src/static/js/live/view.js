// Show a decoded live result: the gallery's viewer (viewer.js mountViewer) under a small bar
// with the "Data file" download. Every string goes through textContent.

function el(tag, attrs = {}, text = null) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  return e;
}

/** The line above the viewer: what was computed. */
function resultBar(D) {
  const bar = el("p", { class: "live-result-bar muted" });
  bar.append(el("span", {},
    ` ${D.P} tokens · ${D.L} layers · worst reconstruction error ${Number(D.worstReconError).toExponential(2)}` +
    ` · logit error ${Number(D.logitError).toExponential(2)}`));
  return bar;
}

/** A plain table of tokens and top-1 predictions, used only when the viewer cannot mount. */
function summary(D) {
  const table = el("table", { class: "live-summary" });
  const head = el("tr");
  for (const h of ["Position", "Token", "Top next token", "Probability"]) head.append(el("th", { scope: "col" }, h));
  table.append(el("thead"), el("tbody"));
  table.tHead.append(head);
  for (let p = 0; p < D.P; p++) {
    const tr = el("tr");
    const i = D.pred.ids[p * D.k];
    tr.append(el("td", {}, String(p)), el("td", { class: "mono" }, JSON.stringify(D.tokens[p])),
      el("td", { class: "mono" }, JSON.stringify(D.strings[i])), el("td", {}, (100 * D.pred.probs[p * D.k]).toFixed(1) + "%"));
    table.tBodies[0].append(tr);
  }
  return table;
}

/** The viewer's "Data file" link gets a file name (a blob: URL has none), and a "Heads file"
 * link beside it: the per-head data is a second file (docs/live-format.md, "Saving a result"). */
function nameDataLink(link, { dataUrl, fileName, headsUrl, headsFileName }) {
  link.href = dataUrl;
  link.setAttribute("download", fileName);
  link.title = "Download this result as an infoflow data file (infoflow.load reads it)";
  const old = document.getElementById("download-heads");
  if (old) old.remove();
  if (!headsUrl) return;
  const heads = el("a", { class: "button", id: "download-heads", href: headsUrl, download: headsFileName,
    title: `The per-head data, for infoflow.load("${fileName}").heads: save it beside ${fileName} as ${headsFileName}` },
  "Heads file");
  link.after(heads);
}

/**
 * Mount the standard viewer on D in `container`. options: {dataUrl, fileName, headsUrl,
 * headsFileName, hashPrefix, ownsHash, exactCustom}. The view is mirrored in the URL hash after
 * `hashPrefix` (the prompt: text=...&chat=1), so a link holds both; on Back and Forward the
 * viewer applies only hashes that ownsHash accepts (its own prompt's); exactCustom computes custom
 * groupings exactly (exact-custom.js). Returns the Viewer (null when it could not mount).
 */
export async function mountResult(container, D, options) {
  container.replaceChildren(resultBar(D));
  const host = el("div", { class: "viewer live-viewer" });
  container.append(host);
  let mod;
  try {
    mod = await import("../viewer.js");
  } catch (e) {
    mod = null;
  }
  if (mod && typeof mod.mountViewer === "function") {
    const viewer = await mod.mountViewer(host, D, { id: "live", dataUrl: options.dataUrl, hash: true,
                                                    hashPrefix: options.hashPrefix, ownsHash: options.ownsHash,
                                                    exactCustom: options.exactCustom, lensToken: options.lensToken });
    const link = document.getElementById("download-data");
    if (link) nameDataLink(link, options);
    return viewer;
  }
  const link = el("a", { class: "button", id: "download-data" }, "Data file");
  nameDataLink(link, options);
  host.append(link, el("p", { class: "muted" }, "This site's viewer cannot show computed results; here are the tokens and predictions."),
    summary(D));
  return null;
}
