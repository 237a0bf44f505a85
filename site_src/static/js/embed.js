// A viewer with its data inside the page: a notebook output or a file written by save_html
// (infoflow/notebook.py, site_src/templates/notebook.html). The page's loader made this module
// and its imports from the page's own text; here the embedded result (base64 msgpack, as a
// data file) is decoded and mounted, opened on the view in <main data-view> (a URL hash).
import { decodeData, DataError, METRIC_KEYS } from "./data.js";
import { decodeHeads } from "./heads.js";
import { mountViewer, showError } from "./viewer.js";

const $ = (id) => document.getElementById(id);

function bytesOf(id) {
  const text = ($(id) && $(id).textContent.trim()) || "";
  if (!text) return null;
  try {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  } catch {
    throw new DataError(`The embedded ${id} is not base64: this output was damaged. Run the cell again.`);
  }
}

async function main(root) {
  const view = root.dataset.view || "";
  const q = new URLSearchParams(view.replace(/^#/, ""));
  const m = METRIC_KEYS.includes(q.get("m")) ? q.get("m") : "norm";
  const data = bytesOf("infoflow-data");
  if (!data) throw new DataError("This output holds no data. Run the cell again.");
  const D = await decodeData(data.buffer, { eager: [[q.get("g") || "words", m]] });
  D.bytes = data.byteLength;
  const heads = bytesOf("infoflow-heads");
  if (heads) D.heads = await decodeHeads(heads.buffer, D);
  if ($("loading")) $("loading").hidden = true;
  await mountViewer(root, D, { id: root.dataset.id || "infoflow", hash: false, view, noHeads: root.dataset.headsNote || "" });
}

const root = $("viewer");
main(root).catch((e) => showError(root, e));
