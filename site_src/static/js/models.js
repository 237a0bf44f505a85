// Several models per prompt page: which model a page shows (?model=<key> in the URL, else the
// first), and a view state that survives a switch of model.
//
// The view state names sources by token position (state.js), and two tokenizers put the same
// word at different positions. So a link to another model's view carries *portable* keys,
// which the other page turns back into its own positions once its data is loaded:
//   f        the first position (an attention sink in both, whatever token it is)
//   c<n>     the token covering character n of the prompt text
//   s<p>     a token outside the prompt text (a chat template's), by position
//   b        the bias source
// Layers travel as relative depth (a pinned cell in layer 20 of 30 lands in layer 12 of 18).
import { METRICS } from "./state.js";

const PORTABLE = ["m", "g", "heat", "e", "o", "z"];   // state that means the same on every model

/** Where each token starts in the prompt text (null: outside it), or null when the tokens
 * do not spell the text. The same rule as infoflow/gallery_models.py char_starts. */
export function charStarts(tokens, text) {
  const joined = tokens.join("");
  const offset = text ? joined.indexOf(text) : -1;
  if (offset < 0) return null;
  const starts = [];
  let pos = 0;
  for (const t of tokens) {
    const rel = pos - offset;
    starts.push(t && rel >= 0 && rel < text.length ? rel : null);
    pos += t.length;
  }
  return starts;
}

/** The character a token's word starts at: its start, past a leading space (one tokenizer
 * puts " Paris" in one token, another " " and "Paris" in two: both name "Paris" by its P).
 * A token of spaces only is named by its own start. */
export function wordStart(starts, tokens, p) {
  const t = tokens[p], lead = t.length - t.trimStart().length;
  return starts[p] + (lead < t.length ? lead : 0);
}

/** The portable key of token position p. */
export function portableKey(starts, p, tokens) {
  if (p === "b") return "b";
  if (p === 0) return "f";
  if (starts && starts[p] !== null && starts[p] !== undefined) return `c${wordStart(starts, tokens, p)}`;
  return `s${p}`;
}

/** The position a portable key names in a model whose tokens start at `starts`, or null. */
export function localKey(starts, P, key) {
  if (key === "b" || key === "f") return key === "f" ? 0 : "b";
  const m = /^([cs])(\d+)$/.exec(key || "");
  if (!m) return null;
  const n = +m[2];
  if (m[1] === "s") return n < P ? n : null;
  if (!starts) return null;
  let best = null;                       // the last token starting at or before character n
  for (let p = 0; p < starts.length; p++) if (starts[p] !== null && starts[p] <= n) best = p;
  return best;
}

/** A URL hash that another model's page (or the compare page) can read: see the header. */
export function portableHash(state, D) {
  const starts = charStarts(D.tokens, D.prompt && D.prompt.text);
  const key = (p) => portableKey(starts, p, D.tokens);
  const q = new URLSearchParams();
  q.set("m", state.metric);
  q.set("g", state.variant === "custom" ? "words" : state.variant);
  if (state.heat) q.set("heat", "1");
  if (state.emph !== "attn") q.set("e", state.emph);
  if (state.order !== "position") q.set("o", state.order);
  const v = state.view;
  if (v && v.z > 1.0001) q.set("z", `${v.z.toFixed(3)},${Math.round(v.x)},${Math.round(v.y)}`);
  q.set("hc", [...state.hidden].map(key).join(","));
  if (state.trace !== null) q.set("tc", key(state.trace));
  if (state.pin) q.set("pinc", `${((state.pin.l + 0.5) / D.L).toFixed(4)}.${state.pin.k}.${key(state.pin.p)}`);
  if (state.pred !== null) q.set("ppc", key(state.pred));
  return "#" + q.toString();
}

/** The hash in this model's own terms (state.js parseHash reads it), from a portable one;
 * a hash without portable keys comes back as it is. */
export function localHash(hash, D) {
  const q = new URLSearchParams(hash.replace(/^#/, ""));
  if (!["hc", "tc", "pinc", "ppc"].some((k) => q.has(k))) return hash;
  const starts = charStarts(D.tokens, D.prompt && D.prompt.text);
  const local = (k) => localKey(starts, D.P, k);
  const out = new URLSearchParams();
  for (const k of PORTABLE) if (q.has(k)) out.set(k, q.get(k));
  if (out.has("m") && !METRICS[out.get("m")]) out.delete("m");
  if (q.has("hc")) out.set("h", [...new Set(q.get("hc").split(",").map(local).filter((x) => x !== null))].join(","));
  const t = q.has("tc") ? local(q.get("tc")) : null;
  if (t !== null) out.set("t", String(t));
  const pin = /^([\d.]+)\.([01])\.(\w+)$/.exec(q.get("pinc") || "");
  if (pin) {
    const l = Math.min(D.L - 1, Math.max(0, Math.floor(+pin[1] * D.L))), p = local(pin[3]);
    if (p !== null && p !== "b") out.set("pin", `${l}.${pin[2]}.${p}`);
  }
  const pp = q.has("ppc") ? local(q.get("ppc")) : null;
  if (pp !== null && pp !== "b") out.set("pp", String(pp));
  return "#" + out.toString().replace(/%2C/g, ",");
}

/**
 * On a prompt page with a model switch: point `root` at the data of the model the URL asks for
 * (?model=<key>), mark it current and show its credit line. -> its key, or null (no switch).
 * Throws an Error naming the models there are when the URL asks for one the page lacks.
 */
export function pickModel(root, search = location.search) {
  const links = [...document.querySelectorAll("#model-switch .model-choice")];
  const want = new URLSearchParams(search).get("model");
  const shown = links.length ? links[0].dataset.model : root.dataset.modelKey;
  const missing = [...document.querySelectorAll("#model-missing li")].find((li) => li.dataset.model === want);
  if (want !== null && want !== shown && (missing || !links.length)) {
    // a model this prompt was not built on: say so, then show the one it was built on
    notice(`This prompt was not built on ${want}${missing ? ` (${missing.textContent})` : ""}; `
      + `the page shows ${shown || "its own model"} instead.`);
    if (!links.length) return null;
    return chooseModel(root, links, links[0]);
  }
  if (!links.length) return null;
  const chosen = want === null ? links[0] : links.find((a) => a.dataset.model === want);
  if (!chosen) {
    throw new Error(`this prompt has no model "${want}" (it has ${links.map((a) => a.dataset.model).join(", ")}); `
      + "pick one above");
  }
  return chooseModel(root, links, chosen);
}

function notice(text) {
  const box = document.getElementById("model-notice");
  if (!box) return;
  box.textContent = text;
  box.hidden = false;
}

/** Point the page at link `chosen`'s model: its data, its credit line and its note. */
function chooseModel(root, links, chosen) {
  for (const a of links) {
    if (a === chosen) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  root.dataset.src = chosen.dataset.src;
  root.dataset.headsSrc = chosen.dataset.headsSrc || "";
  root.dataset.graphSrc = chosen.dataset.graphSrc || "";   // the graph sidecar, for the Paths view
  root.dataset.model = chosen.dataset.model;
  for (const p of document.querySelectorAll(".model-provenance[data-model], .prompt-note[data-model]")) {
    p.hidden = p.dataset.model !== chosen.dataset.model;
  }
  return chosen.dataset.model;
}

/** Keep the switch's and the compare link's hrefs carrying the current view, portably. */
export function linkModels(viewer) {
  const nav = document.getElementById("model-switch");
  if (!nav) return;
  const refresh = () => {
    if (!viewer.state) return;
    const hash = portableHash(viewer.state, viewer.D);
    for (const a of nav.querySelectorAll("a")) a.href = a.getAttribute("href").split("#")[0] + hash;
  };
  for (const type of ["pointerover", "focusin", "click", "touchstart"]) nav.addEventListener(type, refresh, { passive: true });
  refresh();
}
