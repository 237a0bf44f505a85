/**
 * A helper worker of the unembedding (engine-lens.js): it holds one contiguous slice of the
 * vocabulary's rows of W_U (its own copy: no SharedArrayBuffer) and answers topLogits() for
 * the rows it is sent. It also computes its share of a layer's MLP write (engine-mlp.js), from
 * the slice of the layer's weights it is sent with the rows.
 */
import {initKernel, kernelTime} from "./kernel.js";
import {packBlocks, topLogits} from "./engine-logits.js";
import {mlpRows, sliceWeights} from "./engine-mlp.js";

let slice = null;   // {blocks: its rows of W_U packed in the kernel (the raw copy is dropped), v0, n, d, bias}

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.kind === "slice") {
      const {variant} = await initKernel(msg.kernel);   // the variant its caller loaded
      const {W, v0, n, d, bias} = msg;
      if (slice) slice.blocks.forEach((w) => w.dispose());
      slice = {blocks: packBlocks(W, n, d), v0, n, d, bias};
      self.postMessage({ok: true, id: msg.id, kernel: variant});
    } else if (msg.kind === "mlp") {
      await initKernel();
      const {raw, d, ff, j0, j1, T} = msg;
      const w = sliceWeights(raw, d, ff, j0, j1);
      try {
        const into = new Float32Array(T * d), u = new Float32Array(Math.min(T, 2048) * (j1 - j0));
        mlpRows({...msg, up: w.up, down: w.down, nj: j1 - j0, into, u});
        self.postMessage({ok: true, id: msg.id, delta: into}, [into.buffer]);
      } finally {
        w.dispose();
      }
    } else if (msg.kind === "rows") {
      const {blocks, v0, n, d, bias} = slice;
      const t0 = performance.now(), k0 = kernelTime();
      const above = msg.above ? {...msg.above, v0} : null;
      const r = topLogits(msg.X, msg.N, blocks, n, d, msg.k, {absRows: msg.absRows, bias, above});
      Object.assign(r, {ms: performance.now() - t0, kernelMs: kernelTime() - k0});   // the helper's busy time
      for (let i = 0; i < r.ids.length; i++) r.ids[i] += v0;
      self.postMessage({ok: true, id: msg.id, ...r}, [r.ids.buffer, r.logits.buffer, r.logZ.buffer,
                                                      ...(r.above ? [r.above.buffer] : [])]);
    }
  } catch (err) {
    self.postMessage({ok: false, id: msg.id, message: String((err && err.message) || err)});
  }
};
