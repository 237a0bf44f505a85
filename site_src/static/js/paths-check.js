// The ablation check's bookkeeping on the live page, mirroring infoflow/ablate.py: which nodes
// to ablate (top_nodes), and how the measured changes compare with the graph's predictions
// (Check.stats: Spearman ρ, sign agreement, the direct effect alone as the baseline, the largest
// misses). The forward passes themselves run in the worker (live/engine-ablate.js). No DOM here.

/** Indices 0..n-1 by |values| descending, ties in index order (numpy's stable argsort of −|x|). */
function byMagnitude(values) {
  return Array.from(values.keys()).sort((a, b) => Math.abs(values[b]) - Math.abs(values[a]) || a - b);
}

/**
 * The n head nodes (the o_proj-bias pseudo-head aside: it is no slice of o_proj's input) and the
 * n MLP nodes with the largest |effect| of a graph entry (paths-data.js engineGraphDocument's, whose
 * `effects` hold every node's effect: heads (L·H'·P), mlp (L·P)).
 * -> [{kind, layer, head, position, effect, direct}]; direct: the node's direct effect (non-zero
 * only at the target position, where the entry stores it).
 */
export function topNodes(doc, entry, n = 20) {
  const { L, P, Hx } = doc, H = doc.labels.filter((x) => /^\d+$/.test(x)).length;
  const { heads, mlp } = entry.effects;
  const headEff = new Float64Array(L * H * P);
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) for (let p = 0; p < P; p++) headEff[(l * H + h) * P + p] = heads[(l * Hx + h) * P + p];
  const direct = (kind, l, h, p) => (!entry.direct || p !== entry.position ? 0
    : kind === "head" ? entry.direct.heads[l * Hx + h] : entry.direct.mlp[l]);
  const out = [];
  for (const i of byMagnitude(headEff).slice(0, n)) {
    const l = Math.floor(i / (H * P)), h = Math.floor(i / P) % H, p = i % P;
    out.push({ kind: "head", layer: l, head: h, position: p, effect: headEff[i], direct: direct("head", l, h, p) });
  }
  for (const i of byMagnitude(mlp).slice(0, n)) {
    const l = Math.floor(i / P), p = i % P;
    out.push({ kind: "mlp", layer: l, head: -1, position: p, effect: mlp[i], direct: direct("mlp", l, -1, p) });
  }
  return out;
}

/** ablate.Row.label */
export const rowLabel = (r) => (r.kind === "head" ? `${r.layer}.${r.head}@${r.position}` : `MLP ${r.layer}@${r.position}`);

/** Ranks from 0, ties at their mean rank (ablate._ranks). */
function ranks(x) {
  const order = Array.from(x.keys()).sort((a, b) => x[a] - x[b] || a - b), r = new Float64Array(x.length);
  order.forEach((i, k) => { r[i] = k; });
  const groups = new Map();
  x.forEach((v, i) => { if (!groups.has(v)) groups.set(v, []); groups.get(v).push(i); });
  for (const idx of groups.values()) {
    if (idx.length < 2) continue;
    const mean = idx.reduce((s, i) => s + r[i], 0) / idx.length;
    for (const i of idx) r[i] = mean;
  }
  return r;
}

/** Spearman's ρ: Pearson's r of the ranks; null where a side is constant (Python's NaN). */
export function spearman(a, b) {
  if (a.length < 2) return null;
  const ra = ranks(a), rb = ranks(b), n = a.length;
  const ma = ra.reduce((s, x) => s + x, 0) / n, mb = rb.reduce((s, x) => s + x, 0) / n;
  let sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < n; i++) { sab += (ra[i] - ma) * (rb[i] - mb); saa += (ra[i] - ma) ** 2; sbb += (rb[i] - mb) ** 2; }
  return saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : null;
}

export function signAgreement(pred, actual) {
  if (!pred.length) return null;
  let same = 0;
  for (let i = 0; i < pred.length; i++) if (Math.sign(pred[i]) === Math.sign(actual[i])) same++;
  return same / pred.length;
}

/** ablate.Check.stats for rows of one kind ({effect, direct, actual, ...}), in the Paths view's
 * check format: {n, rho, signs, rho_direct, signs_direct, worst: [{node, predicted, actual}]}. */
export function checkStats(rows) {
  if (!rows.length) return { n: 0 };
  const actual = rows.map((r) => r.actual), pred = rows.map((r) => -r.effect), base = rows.map((r) => -r.direct);
  const miss = rows.map((r, i) => Math.abs(actual[i] - pred[i]));
  const worst = Array.from(miss.keys()).sort((a, b) => miss[b] - miss[a] || a - b).slice(0, 3)
    .map((i) => ({ node: rowLabel(rows[i]), predicted: pred[i], actual: actual[i] }));
  return { n: rows.length, rho: spearman(pred, actual), signs: signAgreement(pred, actual),
    rho_direct: spearman(base, actual), signs_direct: signAgreement(base, actual), worst };
}

/** The measured values (T unablated, then with each node ablated) -> the view's check object. */
export function checkFromValues(nodes, values) {
  const rows = nodes.map((r, i) => ({ ...r, actual: values[i + 1] - values[0] }));
  return { value: values[0], rows, heads: checkStats(rows.filter((r) => r.kind === "head")),
    mlps: checkStats(rows.filter((r) => r.kind === "mlp")), notes: [] };
}
