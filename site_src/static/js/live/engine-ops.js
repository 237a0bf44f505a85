/**
 * Small row-wise pieces of the in-browser engine (engine.js): RMS scales, the final norm, the
 * reconstruction's difference, and adding biases and arrays.
 */

export function invRms(x, P, d, eps) {
  const inv = new Float32Array(P);
  for (let p = 0; p < P; p++) {
    let ss = 0;
    for (let j = p * d; j < (p + 1) * d; j++) ss += x[j] * x[j];
    inv[p] = 1 / Math.sqrt(Math.fround(Math.fround(ss / d) + eps));
  }
  return inv;
}

export function scaleRows(x, s, P, d) {
  const out = new Float32Array(P * d);
  for (let p = 0; p < P; p++) for (let j = p * d; j < (p + 1) * d; j++) out[j] = x[j] * s[p];
  return out;
}

/** w_f / rms_f[p], the final norm with its real per-position scale.   (P, d) */
export function finalScale(x, wf, eps, P, d) {
  const inv = invRms(x, P, d, eps), out = new Float32Array(P * d);
  for (let p = 0; p < P; p++) for (let j = 0; j < d; j++) out[p * d + j] = wf[j] * inv[p];
  return out;
}

export function finalNormed(x, wf, eps, P, d) {
  return mulRows(x, finalScale(x, wf, eps, P, d));
}

export function mulRows(a, b) {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] * b[i];
  return out;
}

/** (Σ_s c[p, s] − r[p]) ⊙ scaleF[p]   (P, d) */
export function reconDiff(C, r, scaleF, tri, d) {
  const total = new Float32Array(tri.P * d);
  for (let row = 0; row < tri.T; row++) {
    const o = tri.pos[row] * d;
    for (let j = 0; j < d; j++) total[o + j] += C[row * d + j];
  }
  for (let i = 0; i < total.length; i++) total[i] = (total[i] - r[i]) * scaleF[i];
  return total;
}

export function add(a, b) {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] + b[i];
  return out;
}

export function addInPlace(a, b) {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

export function addBias(y, bias, rows) {
  if (!bias) return y;
  const n = bias.length;
  for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) y[r * n + j] += bias[j];
  return y;
}

/** Add a bias to the rows of the bias source (it exists only when the model has biases). */
export function addBiasSource(y, bias, tri, n) {
  if (!bias || !tri.bias) return;
  const s = tri.biasSource;
  for (let row = tri.offset[s]; row < tri.offset[s + 1]; row++) {
    for (let j = 0; j < n; j++) y[row * n + j] += bias[j];
  }
}

