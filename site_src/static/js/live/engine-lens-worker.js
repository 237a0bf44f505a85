/**
 * A helper worker of the unembedding (engine-lens.js): it holds one contiguous slice of the
 * vocabulary's rows of W_U (its own copy: no SharedArrayBuffer) and answers topLogits() for
 * the rows it is sent.
 */
import {initKernel} from "./kernel.js";
import {topLogits} from "./engine-logits.js";

let slice = null;   // {W (n·d), v0, n, d, bias}

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.kind === "slice") {
      await initKernel();
      slice = msg;
      self.postMessage({ok: true});
    } else if (msg.kind === "rows") {
      const {W, v0, n, d, bias} = slice;
      const r = topLogits(msg.X, msg.N, W, n, d, msg.k, {absRows: msg.absRows, bias});
      for (let i = 0; i < r.ids.length; i++) r.ids[i] += v0;
      self.postMessage({ok: true, ...r}, [r.ids.buffer, r.logits.buffer, r.logZ.buffer]);
    }
  } catch (err) {
    self.postMessage({ok: false, message: String((err && err.message) || err)});
  }
};
