// The live page: a prompt box, a live token count, Run / Cancel, progress, then the viewer.
// All work happens in worker.js; this module only talks to it and to the DOM (textContent only).
import { decodeData, ensureAll, DataError } from "../data.js";
import { decodeHeads } from "../heads.js";
import { mountResult } from "./view.js";
import { attachLivePaths, encodeLivePathsHash, parseLivePathsHash } from "./paths-live.js";

const $ = (id) => document.getElementById(id);
const root = $("live");
const MAX = Number(root.dataset.maxTokens) || 64;
const TOTAL_MB = root.dataset.totalMb;
const MIN_MEMORY_GB = 2;         // navigator.deviceMemory below this: warn, a run needs ~1 GB

let worker = null;
let countSeq = 0, lastCount = null, countTimer = 0;
let busy = false;
let cancelTimer = 0;
let resultUrl = null, headsUrl = null;
let viewer = null;               // the mounted Viewer, destroyed before the next one mounts
let shown = null;                // {text, chat} of the result on screen
let running = null;              // {text, chat} of the prompt being computed
const recent = new Map();        // promptKey -> {bytes, headsBytes, timings}: the last results, for Back
const RECENT_MAX = 4;
let jobSeq = 0;                  // one numbering for graph, ablation and regroup requests (their errors carry it)
const graphJobs = new Map();     // seq -> {resolve, reject}: attribution graphs asked of the worker
const ablateJobs = new Map();    // seq -> {resolve, reject, onProgress}: ablation checks
let regroupJob = null;           // the exact custom grouping in progress: {seq, resolve, reject}
let paths = null;                // the Paths panel of the result on screen (paths-live.js)
const lensJobs = new Map();      // seq -> {resolve, reject}: the logit lens of other tokens (lens.js)

const ui = {
  form: $("live-form"), text: $("prompt"), chat: $("chat"), run: $("run"), cancel: $("cancel"),
  count: $("token-count"), notice: $("link-notice"), progress: $("progress"),
  dlBar: $("download-bar"), dlLabel: $("download-label"), layerBar: $("layer-bar"), layerLabel: $("layer-label"),
  error: $("live-error"), status: $("live-status"), result: $("live-result"),
};

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
  document.documentElement.dataset.liveState = message ? "error" : document.documentElement.dataset.liveState;
}

function setState(state) {
  document.documentElement.dataset.liveState = state;   // tests and benchmarks wait on this
}

function status(text) { ui.status.textContent = text; }

// ----------------------------------------------------------------------------- worker

function startWorker() {
  worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  worker.onmessage = (ev) => onMessage(ev.data);
  worker.onerror = (ev) => {
    ev.preventDefault();
    finish();
    showError(`The worker failed: ${ev.message || "it could not start"}.`);
  };
  worker.postMessage({ type: "init", manifest: new URL(root.dataset.manifest, location.href).href });
}

function onMessage(m) {
  if (m.type === "count") {
    if (m.seq !== countSeq) return;
    lastCount = m.n;
    renderCount(m.error);
  } else if (m.type === "graph" || (m.type === "error" && graphJobs.has(m.seq))) {
    const job = graphJobs.get(m.seq);
    graphJobs.delete(m.seq);
    if (job && m.type === "graph") job.resolve({ graph: m.graph, rerun: m.rerun, split: m.split, stateBytes: m.stateBytes });
    else if (job) job.reject(m.kind === "cancelled" ? new DOMException("cancelled", "AbortError") : new Error(m.message));
  } else if (m.type === "ablated" || (m.type === "error" && ablateJobs.has(m.seq)) || (m.type === "progress" && m.phase === "ablate")) {
    const job = ablateJobs.get(m.seq);
    if (!job) return;
    if (m.type === "progress") { job.onProgress(m.step, m.total); return; }
    ablateJobs.delete(m.seq);
    if (m.type === "ablated") job.resolve(m.values);
    else job.reject(m.kind === "cancelled" ? new DOMException("cancelled", "AbortError") : new Error(m.message));
  } else if (m.type === "lensToken" || m.type === "lensTokenError") {
    const job = lensJobs.get(m.seq);
    lensJobs.delete(m.seq);
    if (job) (m.type === "lensToken" ? job.resolve(m) : job.reject(new Error(m.message)));
  } else if (m.type === "progress") {
    if (graphJobs.size && m.phase === "layers" && !busy) return;     // a graph's rerun: not the page's run
    renderProgress(m);
  } else if (m.type === "variant" || (m.type === "error" && regroupJob && m.seq === regroupJob.seq)) {
    endRegroup(m);
  } else if (m.type === "done") {
    finish();
    shown = running;
    remember(shown.text, shown.chat, m.bytes, m.headsBytes, m.timings, m.predIds);
    showResult(m.bytes, m.headsBytes, m.timings, m.predIds);
  } else if (m.type === "error") {
    finish();
    if (m.kind === "cancelled") {
      setState("cancelled");
      status("Cancelled. Press Run to start again; the downloaded parts of the model are kept.");
    } else if (m.kind === "memory") {
      showError(`Not enough memory for this run (${m.message}). Close other tabs, or try a shorter prompt.`);
    } else {
      showError(m.message);
    }
  }
}

// ----------------------------------------------------------------------------- token count

function requestCount() {
  clearTimeout(countTimer);
  countTimer = setTimeout(() => {
    countSeq++;
    worker.postMessage({ type: "count", seq: countSeq, text: ui.text.value, chat: !!(ui.chat && ui.chat.checked) });
  }, 120);
}

function renderCount(error) {
  if (error) {
    ui.count.textContent = "token count unavailable";
    ui.count.title = error;
    return;
  }
  const n = lastCount ?? 0;
  ui.count.textContent = `${n} / ${MAX} tokens`;
  ui.count.classList.toggle("over", n > MAX);
  ui.count.dataset.count = String(n);
}

// ----------------------------------------------------------------------------- run

function renderProgress(m) {
  if (m.phase === "download") {
    const mb = (x) => (x / 1e6).toFixed(1);
    ui.dlBar.max = m.total;
    ui.dlBar.value = Math.max(0, m.loaded);
    const fromCache = m.cached >= m.total ? " (from this browser's cache)" : "";
    ui.dlLabel.textContent = `Model ${mb(m.loaded)} / ${mb(m.total)} MB${fromCache}`;
  } else {
    ui.layerBar.max = m.total;
    ui.layerBar.value = m.step;
    ui.layerLabel.textContent = m.step < m.total - 1 || !m.label
      ? `Layer ${Math.min(m.step, m.total - 1)} / ${m.total - 1}` : String(m.label);
    if (m.label) ui.layerLabel.title = String(m.label);
    if (!regroupJob) setState("running");
  }
}

function run(ev) {
  ev.preventDefault();
  if (busy) return;
  showError("");
  const text = ui.text.value;
  if (!text.trim()) {
    showError("The prompt is empty: type some text to decompose.");
    ui.text.focus();
    return;
  }
  if (lastCount !== null && lastCount > MAX) {
    showError(`The prompt has ${lastCount} tokens; the limit here is ${MAX}. Shorten it.`);
    return;
  }
  setState("loading");
  ui.notice.hidden = true;
  startBusy("Layers", "Working…");
  // the graph or check of the result on screen would hold the worker first: the new run goes now
  if (graphJobs.size || ablateJobs.size) {
    worker.postMessage({ type: "cancel", job: "graph" });
    worker.postMessage({ type: "cancel", job: "ablate" });
  }
  const chat = !!(ui.chat && ui.chat.checked);
  writeHash(text, chat);           // its own history entry; the result on screen stays `shown`
  running = { text, chat };
  worker.postMessage({ type: "run", text, chat, maxTokens: MAX });
}

/**
 * The attribution graph of the prompt on screen for one target (worker.js "graph";
 * engine-graph.js): {target, contrast, position, split} -> Promise of {graph (one decoded
 * graphfile.graph_entry; by_source with split), rerun, split, stateBytes}. target / contrast: a token id or a one-token
 * string (contrast null: the demeaned logit; target null: the top prediction).
 */
export function requestGraph({ target = null, contrast = null, position = -1, nodeThreshold, edgeThreshold, split = false } = {}) {
  if (!worker || !shown) return Promise.reject(new Error("Run a prompt first."));
  const seq = ++jobSeq;
  return new Promise((resolve, reject) => {
    graphJobs.set(seq, { resolve, reject });
    worker.postMessage({ type: "graph", seq, text: shown.text, chat: shown.chat, target, contrast, position,
                         nodeThreshold, edgeThreshold, split });
  });
}

/** The logit lens of any one-token text at the last position of the prompt on screen (lens.js). */
export function requestLensToken(token) {
  if (!worker || !shown) return Promise.reject(new Error("Run a prompt first."));
  const seq = ++jobSeq;
  return new Promise((resolve, reject) => {
    lensJobs.set(seq, { resolve, reject });
    worker.postMessage({ type: "lensToken", seq, text: shown.text, chat: shown.chat, token });
  });
}

/**
 * The ablation check of the prompt on screen (worker.js "ablate", engine-ablate.js): {target,
 * contrast, position, nodes} -> Promise of T (Float64Array: unablated, then each node zeroed);
 * onProgress(step, total) per layer. Rejects with an AbortError when cancelled.
 */
export function requestAblation({ target, contrast = null, position = -1, nodes }, onProgress = () => {}) {
  if (!worker || !shown) return Promise.reject(new Error("Run a prompt first."));
  const seq = ++jobSeq;
  return new Promise((resolve, reject) => {
    ablateJobs.set(seq, { resolve, reject, onProgress });
    worker.postMessage({ type: "ablate", seq, text: shown.text, chat: shown.chat, target, contrast, position, nodes });
  });
}

const promptKey = (text, chat) => `${chat ? 1 : 0}:${text}`;

function remember(text, chat, bytes, headsBytes, timings, predIds) {
  const key = promptKey(text, chat);
  recent.delete(key);
  recent.set(key, { bytes: bytes.slice(), headsBytes: headsBytes && headsBytes.slice(), timings, predIds });
  while (recent.size > RECENT_MAX) recent.delete(recent.keys().next().value);
}

/**
 * Back or Forward to an entry of another prompt (a run pushes one entry per prompt): show that
 * prompt's result again if it is one of the last few, else put the prompt in the box and ask
 * for Run, as a shared link does. Entries of the prompt on screen are the viewer's own.
 */
function historyMoved() {
  const { text, chat } = readHash();
  if (text === null || busy || (shown && text === shown.text && chat === shown.chat)) return;
  ui.text.value = text;
  if (ui.chat) ui.chat.checked = chat;
  requestCount();
  showError("");
  const kept = recent.get(promptKey(text, chat));
  if (kept) {
    shown = { text, chat };
    showResult(kept.bytes.slice(), kept.headsBytes && kept.headsBytes.slice(), kept.timings, kept.predIds);
    return;
  }
  if (viewer) viewer.destroy();
  if (paths) paths.destroy();
  viewer = null;
  paths = null;
  shown = null;
  ui.result.replaceChildren();
  ui.result.hidden = true;
  status("This earlier prompt's result is no longer kept in this tab: press Run to decompose it again.");
  setState("ready");
}

/** A computation starts: Run off, Cancel and the layer bar on. */
function startBusy(label, text) {
  busy = true;
  ui.run.disabled = true;
  ui.cancel.hidden = false;
  ui.progress.hidden = false;
  ui.layerBar.value = 0;
  ui.layerLabel.textContent = label;
  status(text);
}

/** The computation ended (done, error or cancelled): Run on, and no Cancel watchdog left over. */
function finish() {
  clearTimeout(cancelTimer);
  cancelTimer = 0;
  busy = false;
  ui.run.disabled = false;
  ui.cancel.hidden = true;
  status("");
}

function cancel() {
  // a second click while cancelling changes nothing: one watchdog per computation, which
  // finish() clears (an overwritten one fired later and killed the next run)
  if (!busy || cancelTimer) return;
  worker.postMessage({ type: "cancel" });
  status("Cancelling…");
  // the engine checks between layers and in its long loops; if it does not answer, stop the worker
  cancelTimer = setTimeout(() => {
    cancelTimer = 0;
    worker.terminate();
    startWorker();
    requestCount();
    onMessage({ type: "error", kind: "cancelled", seq: regroupJob ? regroupJob.seq : undefined });
  }, 1500);
}

// ----------------------------------------------------------------------------- exact custom groups

/**
 * The viewer's exactCustom (exact-custom.js): the shown prompt decomposed again in the worker
 * with `groups` as its one variant. Progress and Cancel are the page's; resolves to the decoded
 * variant, or rejects (an AbortError on Cancel).
 */
function exactCustom(groups) {
  if (busy) return Promise.reject(new Error("another computation is running; wait for it or cancel it"));
  startBusy("Custom grouping", "Computing the custom grouping exactly in your browser…");
  setState("regrouping");
  const seq = ++jobSeq;
  return new Promise((resolve, reject) => {
    regroupJob = { seq, resolve, reject };
    worker.postMessage({ type: "regroup", seq, text: shown.text, chat: shown.chat, groups });
  }).then(async (m) => {
    const D = await decodeData(own(m.bytes));
    await ensureAll(D);
    const V = D.variants[0];
    if (m.headsBytes) V.heads = await (await decodeHeads(own(m.headsBytes), D)).variant(V.name);   // heads.js reads V.heads
    return V;
  });
}

function endRegroup(m) {
  const job = regroupJob;
  regroupJob = null;
  finish();
  setState("done");
  if (m.type === "variant") job.resolve(m);
  else if (m.kind === "cancelled") job.reject(new DOMException("cancelled", "AbortError"));
  else job.reject(new Error(m.message));
}

const own = (bytes) => (bytes.buffer.byteLength === bytes.byteLength ? bytes.buffer : bytes.slice().buffer);

async function showResult(bytes, headsBytes, timings, predIds) {
  let D;
  try {
    D = await decodeData(own(bytes));
    // the per-head views read D.heads, as gallery pages read their fetched per-head file
    if (headsBytes) D.heads = await decodeHeads(own(headsBytes), D);
  } catch (e) {
    showError(e instanceof DataError ? e.message : `The result could not be decoded: ${e.message}`);
    return;
  }
  for (const url of [resultUrl, headsUrl]) if (url) URL.revokeObjectURL(url);
  const blob = (b) => URL.createObjectURL(new Blob([b], { type: "application/octet-stream" }));
  resultUrl = blob(bytes);
  headsUrl = headsBytes ? blob(headsBytes) : null;
  window.infoflowLive = { bytes, headsBytes, timings, D, dataUrl: resultUrl, headsUrl, graph: requestGraph, ablate: requestAblation };
  ui.result.hidden = false;
  // the Paths panel's state in the hash (a shared link or a reload): read before the viewer
  // rewrites the hash with its own keys
  const pathsHash = isShownPrompt(location.hash) ? parseLivePathsHash(location.hash) : null;
  if (viewer) viewer.destroy();
  if (paths) paths.destroy();
  paths = null;
  try {
    viewer = await mountResult(ui.result, D, { dataUrl: resultUrl, fileName: "live.msgpack",
                                               headsUrl, headsFileName: "live.heads.msgpack",
                                               hashPrefix: hashParams(shown.text, shown.chat).toString(),
                                               ownsHash: isShownPrompt, exactCustom, lensToken: requestLensToken });
  } catch (e) {
    showError(`The viewer failed: ${e.message}`);
    return;
  }
  if (predIds && predIds.length === D.P * D.k) {
    // after the viewer, so the first view never waits for it; the graph goes after the run in the worker
    const v = viewer;
    paths = attachLivePaths(ui.result, D, predIds, { graph: requestGraph, ablate: requestAblation,
      cancel: (job) => worker.postMessage({ type: "cancel", job }) },
    { hashState: pathsHash, onHash: () => { if (v) v.writeHash(false); } });
    if (viewer) {
      const panel = paths;
      viewer.hashParts.push(() => encodeLivePathsHash(panel));
      viewer.writeHash(false);
    }
    window.infoflowLive.paths = paths;
  }
  const secs = (ms) => (ms / 1000).toFixed(1);
  status(`Done: model ready in ${secs(timings.load)} s, decomposition ${secs(timings.engine)} s, ` +
    `data file ${(bytes.byteLength / 1024).toFixed(0)} KB.`);
  setState("done");
}

// ----------------------------------------------------------------------------- share links

// #text=<prompt>[&chat=1] first, then the viewer's own view state (m=, g=, pin=, cg=, th=, ...,
// state.js encodeHash), so a shared link reopens the same view once the visitor has pressed Run.

function hashParams(text, chat) {
  return new URLSearchParams(chat ? { text, chat: "1" } : { text });
}

function readHash() {
  const q = new URLSearchParams(location.hash.replace(/^#/, ""));
  return { text: q.get("text"), chat: q.get("chat") === "1" };
}

/** The prompt into the hash; the view state stays only if it was for this same prompt. Another
 * prompt gets a new history entry, so Back returns to the previous prompt's result. */
function writeHash(text, chat) {
  const q = new URLSearchParams(location.hash.replace(/^#/, ""));
  const same = q.get("text") === text && (q.get("chat") === "1") === chat;
  const out = hashParams(text, chat);
  if (same) for (const [k, v] of q) if (k !== "text" && k !== "chat") out.append(k, v);
  if (same || q.get("text") === null) history.replaceState(null, "", "#" + out.toString());
  else history.pushState(null, "", "#" + out.toString());
}

/** Is `hash` a view of the prompt on screen? (The viewer applies only those on Back/Forward.) */
function isShownPrompt(hash) {
  const q = new URLSearchParams(hash.replace(/^#/, ""));
  return !!shown && q.get("text") === shown.text && (q.get("chat") === "1") === shown.chat;
}

// ----------------------------------------------------------------------------- start

function unsupported() {
  if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
    return "This browser has no WebAssembly, which the in-browser engine needs. Try a current Firefox, Chrome or Safari.";
  }
  if (typeof Worker === "undefined") return "This browser has no Web Workers, which the in-browser engine needs.";
  if (!globalThis.crypto || !crypto.subtle) {
    return "This page needs a secure (https) connection to check the model's files.";
  }
  return null;
}

function start() {
  const problem = unsupported();
  if (problem) {
    showError(problem);
    ui.run.disabled = true;
    setState("unsupported");
    return;
  }
  if (navigator.deviceMemory && navigator.deviceMemory < MIN_MEMORY_GB) {
    status(`This device reports ${navigator.deviceMemory} GB of memory; a run needs about 1 GB and may fail.`);
  }
  startWorker();
  const { text, chat } = readHash();
  if (text) {
    ui.text.value = text;
    if (ui.chat) ui.chat.checked = chat;
    ui.notice.hidden = false;        // a shared link: ask (Run) before downloading anything
  }
  ui.form.addEventListener("submit", run);
  window.addEventListener("popstate", historyMoved);
  ui.cancel.addEventListener("click", cancel);
  ui.text.addEventListener("input", requestCount);
  if (ui.chat) ui.chat.addEventListener("change", requestCount);
  requestCount();
  setState("ready");
}

start();
