// Where the shown prediction comes from (issue 24, item 5): each source's part of the prediction's
// logit *minus a baseline that every candidate shares*, so that the constant part the first token
// (the attention sink) carries into every logit cancels.
//
// The issue asks for the logit minus the vocabulary mean. A data file stores the logit attribution
// of the top k predictions only, so the baseline here is the mean over those k candidates:
// contrast_s = attr_s(shown) − mean_j attr_s(j). Where a variant carries the per-source vocabulary
// mean (`V.logitMean`, (P, G); not yet in the data format), it is used instead.

/** Per-source contrast of prediction j at position p: Float64Array(G), and what it is relative to. */
export function contrastAttr(V, D, p, j) {
  const G = V.G, k = D.k, out = new Float64Array(G);
  const at = (jj, s) => V.logitAttr[(p * k + jj) * G + s];
  const vocab = V.logitMean ? V.logitMean.subarray(p * G, (p + 1) * G) : null;
  for (let s = 0; s < G; s++) {
    if (V.first[s] > p) continue;
    let base = 0;
    if (vocab) base = vocab[s];
    else { for (let jj = 0; jj < k; jj++) base += at(jj, s); base /= k; }
    out[s] = at(j, s) - base;
  }
  return { values: out, baseline: vocab ? "the vocabulary mean" : `the mean of the top ${k} predictions` };
}

/**
 * The `n` sources that add the most to prediction j's contrast at position p, largest first,
 * leaving out `skip` (a Uint8Array(G) mask: hidden sources) and any with a contrast <= 0.
 */
export function topContributors(V, D, p, j, n, skip = null) {
  const { values } = contrastAttr(V, D, p, j);
  return [...values.keys()].filter((s) => values[s] > 0 && !(skip && skip[s]) && V.first[s] <= p)
    .sort((a, b) => values[b] - values[a] || a - b).slice(0, n);
}
