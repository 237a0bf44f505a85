// Where the shown prediction comes from (issue 24, item 5): each source's part of the prediction's
// *demeaned* logit, its logit minus the mean logit over the whole vocabulary, so that the constant
// part the first token (the attention sink) carries into every logit cancels.
//
// A data file stores, per variant, each source's part of the vocabulary-mean logit at the last
// position (`V.logitMean`, docs/data-format.md): there the contrast is attr_s(shown) − mean_s, as
// infoflow's Decomposition.top_sources ranks them. At other positions (a column picked on
// screen), and in files written before it, only the top k predictions' attributions are stored,
// so the baseline is their mean: attr_s(shown) − mean_j attr_s(j). `baseline` says which, and the
// page says it on screen.

/** Whether position p has the vocabulary-mean baseline. */
export function hasVocabMean(V, D, p) {
  return !!V.logitMean && p === D.P - 1;
}

/** Per-source contrast of prediction j at position p: Float64Array(G), and what it is relative to. */
export function contrastAttr(V, D, p, j) {
  const G = V.G, k = D.k, out = new Float64Array(G);
  const at = (jj, s) => V.logitAttr[(p * k + jj) * G + s];
  const vocab = hasVocabMean(V, D, p) ? V.logitMean : null;
  for (let s = 0; s < G; s++) {
    if (V.first[s] > p) continue;
    let base = 0;
    if (vocab) base = vocab[s];
    else { for (let jj = 0; jj < k; jj++) base += at(jj, s); base /= k; }
    out[s] = at(j, s) - base;
  }
  return { values: out, baseline: vocab ? "the vocabulary mean" : `the mean of the top ${k} predictions` };
}

/** The ranking's name, for captions: "demeaned logit (minus the vocabulary mean)" or the top-k fallback. */
export function rankingText(V, D, p) {
  return hasVocabMean(V, D, p)
    ? "its demeaned logit (its logit minus the mean logit over the vocabulary, so the first token's constant part cancels)"
    : `its logit minus the mean of the top ${D.k} predictions' (this position stores no vocabulary mean; a baseline every candidate shares, so the first token's constant part cancels)`;
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
