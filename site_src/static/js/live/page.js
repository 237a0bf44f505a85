// The live page: a prompt box, a live token count, Run / Cancel, progress, then the viewer.
// All work happens in worker.js; this module only talks to it and to the DOM (textContent only).
import { decodeData, DataError } from "../data.js";
import { decodeHeads } from "../heads.js";
import { mountResult } from "./view.js";

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
  } else if (m.type === "progress") {
    renderProgress(m);
  } else if (m.type === "done") {
    clearTimeout(cancelTimer);
    finish();
    showResult(m.bytes, m.headsBytes, m.timings);
  } else if (m.type === "error") {
    clearTimeout(cancelTimer);
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
    setState("running");
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
  busy = true;
  setState("loading");
  ui.notice.hidden = true;
  ui.run.disabled = true;
  ui.cancel.hidden = false;
  ui.progress.hidden = false;
  ui.layerBar.value = 0;
  ui.layerLabel.textContent = "Layers";
  status("Working…");
  writeHash(text);
  worker.postMessage({ type: "run", text, chat: !!(ui.chat && ui.chat.checked), maxTokens: MAX });
}

function finish() {
  busy = false;
  ui.run.disabled = false;
  ui.cancel.hidden = true;
  status("");
}

function cancel() {
  if (!busy) return;
  worker.postMessage({ type: "cancel" });
  status("Cancelling…");
  // the engine checks between layers and in its long loops; if it does not answer, stop the worker
  cancelTimer = setTimeout(() => {
    worker.terminate();
    startWorker();
    requestCount();
    onMessage({ type: "error", kind: "cancelled" });
  }, 1500);
}

const own = (bytes) => (bytes.buffer.byteLength === bytes.byteLength ? bytes.buffer : bytes.slice().buffer);

async function showResult(bytes, headsBytes, timings) {
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
  window.infoflowLive = { bytes, headsBytes, timings, D, dataUrl: resultUrl, headsUrl };
  ui.result.hidden = false;
  try {
    await mountResult(ui.result, D, { dataUrl: resultUrl, fileName: "live.msgpack",
                                      headsUrl, headsFileName: "live.heads.msgpack" });
  } catch (e) {
    showError(`The viewer failed: ${e.message}`);
    return;
  }
  const secs = (ms) => (ms / 1000).toFixed(1);
  status(`Done: model ready in ${secs(timings.load)} s, decomposition ${secs(timings.engine)} s, ` +
    `data file ${(bytes.byteLength / 1024).toFixed(0)} KB.`);
  setState("done");
}

// ----------------------------------------------------------------------------- share links

function readHash() {
  const q = new URLSearchParams(location.hash.replace(/^#/, ""));
  return q.get("text");
}

function writeHash(text) {
  const q = new URLSearchParams(location.hash.replace(/^#/, ""));
  q.set("text", text);
  history.replaceState(null, "", "#" + q.toString());
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
  const text = readHash();
  if (text) {
    ui.text.value = text;
    ui.notice.hidden = false;        // a shared link: ask (Run) before downloading anything
  }
  ui.form.addEventListener("submit", run);
  ui.cancel.addEventListener("click", cancel);
  ui.text.addEventListener("input", requestCount);
  if (ui.chat) ui.chat.addEventListener("change", requestCount);
  requestCount();
  setState("ready");
}

start();
