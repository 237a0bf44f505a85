// "Recompute exactly in your browser" on gallery prompt pages: the live page's worker (worker.js),
// started when the visitor asks, decomposes the page's prompt again with a custom grouping as
// its one variant. The viewer calls it through options.exactCustom (exact-custom.js).
//
//   const exactCustom = galleryExact(manifestUrl, D, onProgress);
//   const V = await exactCustom(groups);    // a decoded variant, with V.heads
//   exactCustom.cancel();                   // the computation in progress rejects (AbortError)
//
// The model (97 MB) downloads on the first call, or comes from the Cache Storage as on the live
// page. The worker checks that its tokenizer gives the data file's token ids, and refuses
// prompts over MAX_TOKENS (the browser engine's memory at P = 64 is ~0.75 GB).
import { decodeData, ensureAll } from "../data.js";
import { decodeHeads } from "../heads.js";

export const MAX_TOKENS = 64;

const own = (bytes) => (bytes.buffer.byteLength === bytes.byteLength ? bytes.buffer : bytes.slice().buffer);

/** onProgress(text): a line for the viewer's status (download MB, then layer n of L). */
export function galleryExact(manifestUrl, D, onProgress) {
  let worker = null, job = null, seq = 0;

  function start() {
    worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    worker.onmessage = (ev) => onMessage(ev.data);
    worker.onerror = (ev) => {
      ev.preventDefault();
      end(null, new Error(`the in-browser engine could not start (${ev.message || "worker error"})`));
      worker = null;
    };
    worker.postMessage({ type: "init", manifest: new URL(manifestUrl, location.href).href });
  }

  function onMessage(m) {
    if (!job || (m.seq !== undefined && m.seq !== job.seq)) return;
    if (m.type === "progress") {
      const mb = (x) => (x / 1e6).toFixed(1);
      onProgress(m.phase === "download"
        ? `Exact grouping: model ${mb(m.loaded)} / ${mb(m.total)} MB${m.cached >= m.total ? " (from this browser's cache)" : ""}…`
        : `Exact grouping: layer ${Math.min(m.step + 1, m.total)} of ${m.total}…`);
    } else if (m.type === "variant") {
      end(m, null);
    } else if (m.type === "error") {
      end(null, m.kind === "cancelled" ? new DOMException("cancelled", "AbortError") : new Error(m.message));
    }
  }

  function end(m, error) {
    const j = job;
    job = null;
    if (!j) return;
    if (error) j.reject(error);
    else j.resolve(m);
  }

  async function exactCustom(groups) {
    if (job) throw new Error("an exact grouping is already being computed");
    if (D.P > MAX_TOKENS) {
      throw new Error(`this prompt has ${D.P} tokens; the browser recomputes at most ${MAX_TOKENS}`);
    }
    if (!worker) start();
    const m = await new Promise((resolve, reject) => {
      job = { seq: ++seq, resolve, reject };
      worker.postMessage({ type: "regroup", seq: job.seq, text: D.prompt.text, chat: !!D.prompt.chat, groups,
                           expectIds: Array.from(D.tokenIds), maxTokens: MAX_TOKENS });
    });
    const R = await decodeData(own(m.bytes));
    await ensureAll(R);
    const V = R.variants[0];
    if (m.headsBytes) V.heads = await (await decodeHeads(own(m.headsBytes), R)).variant(V.name);
    return V;
  }

  exactCustom.cancel = () => {
    if (!job) return;
    worker.postMessage({ type: "cancel" });
    const waiting = job;
    setTimeout(() => {                       // no answer: stop the worker (the weights go with it)
      if (job !== waiting) return;
      worker.terminate();
      worker = null;
      end(null, new DOMException("cancelled", "AbortError"));
    }, 1500);
  };
  return exactCustom;
}
