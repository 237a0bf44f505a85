/**
 * The ablation check's forward passes in the browser: the same measurement as
 * infoflow/ablate.py's target_values, in the real model with nothing frozen.
 *
 *   const values = await ablatedValues(model, ids, {token, contrast, position}, ablations, opts)
 *   ablations: [{kind: "head" | "mlp", layer, head, position}]; opts: {signal, onProgress(step, total)}
 *   values: Float64Array (1 + n): T unablated, then T with each ablation
 *
 * A head's ablation zeroes its slice of o_proj's input at that position (engine.js
 * attentionForward's zeroHead); an MLP's zeroes its output there, down_proj's bias included (as
 * ablate.py's hook on the MLP module's output). T = logit[t] − logit[t'] (or − the mean logit)
 * at the target position, as engine-graph.js realValue reads it from the final residual.
 *
 * The passes go layer by layer, all of them together, each layer's weights built once: an
 * ablation in layer l runs from a copy of the unablated residual entering layer l (the layers
 * before it are the unablated pass's), so the check costs Σ_b (L − l_b) layer passes of P rows.
 * None of this is part of the decomposition, and nothing here is kept afterwards.
 */
import {initKernel} from "./kernel.js";
import {checkConfig, checkIds, layerWeights, ropeTables} from "./engine-model.js";
import {attentionForward, mlpForward} from "./engine.js";
import {add} from "./engine-ops.js";
import {abortError} from "./engine-logits.js";
import {checkTarget, realValue, targetDirection} from "./engine-graph.js";

/** One layer of the real model on residual x (P, d), with at most one write zeroed. */
function layerForward(x, w, cfg, rope, P, zero) {
  const head = zero && zero.kind === "head" ? {h: zero.head, p: zero.position} : null;
  const xMid = add(x, attentionForward(x, w, cfg, rope, P, head).out);
  const mlp = mlpForward(xMid, w, cfg, P);
  if (zero && zero.kind === "mlp") mlp.out.fill(0, zero.position * cfg.d_model, (zero.position + 1) * cfg.d_model);
  return add(xMid, mlp.out);
}

function checkAblation(a, cfg, P, i) {
  const ok = a && (a.kind === "head" || a.kind === "mlp") && Number.isInteger(a.layer) && a.layer >= 0 && a.layer < cfg.n_layers
    && Number.isInteger(a.position) && a.position >= 0 && a.position < P
    && (a.kind === "mlp" || (Number.isInteger(a.head) && a.head >= 0 && a.head < cfg.n_heads));
  if (!ok) throw new Error(`ablation ${i} is not a head (layer, head < ${cfg.n_heads}, position) or an MLP (layer, position) of this model and prompt`);
}

export async function ablatedValues(model, ids, spec, ablations, {signal = null, onProgress = null} = {}) {
  const cfg = checkConfig(model.config), {n_layers: L, d_model: d} = cfg, P = ids.length;
  checkIds(ids, cfg.vocab);
  ablations.forEach((a, i) => checkAblation(a, cfg, P, i));
  const {token, contrast, position} = checkTarget(cfg, P, spec);
  await initKernel();
  const rope = ropeTables(cfg, P);
  let base = new Float32Array(P * d);
  for (let p = 0; p < P; p++) base.set(model.embed.subarray(ids[p] * d, (ids[p] + 1) * d), p * d);
  const runs = ablations.map(() => null);            // each ablated pass's residual, from its layer on
  for (let l = 0; l < L; l++) {
    // a macrotask between layers, so that the worker reads a "cancel" message meanwhile (the
    // layer arrays may come from memory, whose await alone would not let it in)
    await new Promise((resolve) => setTimeout(resolve, 0));
    if (signal && signal.aborted) throw abortError();
    if (onProgress) onProgress(l, L);
    const w = layerWeights(await model.layer(l), cfg);
    try {
      for (let b = 0; b < ablations.length; b++) {
        const a = ablations[b];
        if (a.layer === l) runs[b] = layerForward(base, w, cfg, rope, P, a);
        else if (runs[b]) runs[b] = layerForward(runs[b], w, cfg, rope, P, null);
        if (signal && signal.aborted) throw abortError();
      }
      base = layerForward(base, w, cfg, rope, P, null);
    } finally {
      w.dispose();
    }
  }
  if (onProgress) onProgress(L, L);
  const target = targetDirection(model, token, contrast, position);
  const T = (x) => realValue(model, {P, xFinal: x}, target);
  return Float64Array.from([base, ...runs], T);
}
