// The graph sidecar (docs/data-format.md, "Graph data"; infoflow/graphfile.py writes it):
// fetch, check and decode one prompt's attribution graphs into the object the Paths view shows.
//
// The file is untrusted. Every count and shape it declares is checked against GRAPH_LIMITS
// before anything is allocated, arrays inflate into buffers of exactly their declared size
// (arrays.js), and every decoded index and number is checked before the view uses it: an edge
// to a node that does not exist, a NaN weight or a huge count ends in a DataError whose message
// the page shows, never in a frozen tab.
import { decode as msgpackDecode } from "../vendor/msgpack/dist.esm/index.mjs";
import { DataError, checkArray, decodeArray, isCount } from "./arrays.js";

export const GRAPH_SCHEMA = 1;
export const KIND = { EMBED: 0, HEAD: 1, MLP: 2, BIAS: 3, TARGET: 4 };

/** What a graph file may declare. A real sidecar (P = 64, 30 layers) holds a few thousand
 * nodes and edges; these bound what this viewer allocates and sorts. */
export const GRAPH_LIMITS = {
  bytes: 1 << 26,          // the file: 64 MB
  graphs: 16,
  tokens: 4096,
  layers: 1024,
  heads: 4097,             // head labels (an o_proj-bias pseudo-head adds one)
  nodes: 1 << 17,          // per graph
  edges: 1 << 19,          // per graph
  bySource: 4096,          // nodes with a stored per-source split
  paths: 64,
  pathLength: 4096,
  checkRows: 256,
  elements: 1 << 25,       // all arrays of the file together
};

const ADVICE = "Reload the page; if this message comes back, the graph file on the server is damaged: rebuild the site (infoflow build).";

export function graphError(detail) {
  return new DataError(`The graph file is damaged (${detail}). ${ADVICE}`);
}

function graphTooBig(what, value, limit) {
  return new DataError(`The graph file declares ${what} = ${value}, more than this viewer reads (at most ${limit}). `
    + "It is damaged or was not written by infoflow; nothing was drawn.");
}

const isMap = (x) => x !== null && typeof x === "object" && !Array.isArray(x) && !(x instanceof Uint8Array);
const finite = (x) => typeof x === "number" && Number.isFinite(x);

function need(ok, detail) {
  if (!ok) throw graphError(detail);
}

/** An array map's shape, checked to be exactly `shape` (and within arrays.js's limits). */
function shaped(a, shape, what) {
  need(isMap(a) && Array.isArray(a.shape), `${what} is not an array`);
  need(a.shape.length === shape.length && a.shape.every((d, i) => d === shape[i]),
    `${what} has shape [${a.shape.join(",")}], expected [${shape.join(",")}]`);
  try {
    return checkArray(a, what).total;
  } catch (e) {
    throw rename(e);
  }
}

/** A 1-D array map's declared length (-1 when it is not one). */
function length1(a) {
  return isMap(a) && Array.isArray(a.shape) && a.shape.length === 1 && isCount(a.shape[0]) ? a.shape[0] : -1;
}

/** arrays.js's messages speak of "the data file": here it is the graph file. */
function rename(e) {
  return e instanceof DataError ? new DataError(e.message.replace(/^The data file/, "The graph file")) : e;
}

async function decoded(a, what) {
  try {
    return (await decodeArray(a, what)).data;
  } catch (e) {
    throw rename(e);
  }
}

const strings = (x, max, what) => {
  need(Array.isArray(x) && x.every((t) => typeof t === "string"), `${what} is not a list of strings`);
  if (x.length > max) throw graphTooBig(`${what}'s length`, x.length, max);
  return x;
};

function tokenRef(x, what, optional) {
  if (optional && (x === null || x === undefined)) return null;
  need(isMap(x) && typeof x.text === "string" && isCount(x.id), `${what} is not a token`);
  return { id: x.id, text: x.text };
}

// ----------------------------------------------------------------------------- check, then decode

/** The document's sizes, all checked before any array is decoded. -> {P, L, Hx, G} */
function checkDocument(doc) {
  need(isMap(doc), "it is not a map");
  if (doc.kind !== "infoflow-graph") throw new DataError("This is not an infoflow graph file (its kind is not \"infoflow-graph\"). Check the link, or rebuild the site.");
  if (doc.schema !== GRAPH_SCHEMA) {
    throw new DataError(`The graph file has schema ${JSON.stringify(doc.schema)}, but this viewer reads schema ${GRAPH_SCHEMA} only. Rebuild the site with a matching infoflow.`);
  }
  const tokens = strings(doc.tokens, GRAPH_LIMITS.tokens, "tokens");
  const P = tokens.length;
  need(P > 0, "it has no tokens");
  const L = doc.layers;
  need(isCount(L) && L > 0, "\"layers\" is not a positive count");
  if (L > GRAPH_LIMITS.layers) throw graphTooBig("layers", L, GRAPH_LIMITS.layers);
  const labels = strings(doc.head_labels, GRAPH_LIMITS.heads, "head_labels");
  need(labels.length > 0, "it has no head labels");
  const sources = strings(doc.sources, P + 1, "sources");
  need(sources.length > 0, "it has no sources");
  const graphs = doc.graphs;
  need(Array.isArray(graphs) && graphs.length > 0, "it holds no graphs");
  if (graphs.length > GRAPH_LIMITS.graphs) throw graphTooBig("the number of graphs", graphs.length, GRAPH_LIMITS.graphs);
  const Hx = labels.length, G = sources.length;
  let total = 0;
  graphs.forEach((e, i) => { total += checkEntry(e, `graphs[${i}]`, { P, L, Hx, G }); });
  if (total > GRAPH_LIMITS.elements) throw graphTooBig("the total size of its arrays", total, GRAPH_LIMITS.elements);
  return { P, L, Hx, G, tokens, labels, sources };
}

/** One entry's declared sizes -> the number of elements its arrays hold. */
function checkEntry(e, w, { P, L, Hx, G }) {
  need(isMap(e), `${w} is not a map`);
  for (const key of ["value", "frozen_value", "completeness"]) {
    if (key === "completeness" && e[key] === null) continue;    // undefined: the frozen T is 0
    need(finite(e[key]), `${w}.${key} is not a finite number`);
  }
  need(isMap(e.nodes) && isMap(e.edges), `${w} has no nodes or edges`);
  const n = length1(e.nodes.kind), m = length1(e.edges.src);
  need(n >= 0 && m >= 0, `${w}'s nodes or edges are not arrays`);
  if (n > GRAPH_LIMITS.nodes) throw graphTooBig(`${w}'s node count`, n, GRAPH_LIMITS.nodes);
  if (m > GRAPH_LIMITS.edges) throw graphTooBig(`${w}'s edge count`, m, GRAPH_LIMITS.edges);
  need(n >= 1, `${w} has no nodes (not even its target)`);
  let total = 0;
  for (const key of ["kind", "layer", "head", "position", "effect"]) total += shaped(e.nodes[key], [n], `${w}.nodes.${key}`);
  for (const key of ["src", "dst", "weight"]) total += shaped(e.edges[key], [m], `${w}.edges.${key}`);
  if (e.direct !== undefined && e.direct !== null) {
    need(isMap(e.direct) && finite(e.direct.embed), `${w}.direct is malformed`);
    total += shaped(e.direct.heads, [L, Hx], `${w}.direct.heads`) + shaped(e.direct.mlp, [L], `${w}.direct.mlp`);
  }
  if (e.by_source !== undefined && e.by_source !== null) {
    const bs = e.by_source;
    need(isMap(bs) && finite(bs.floor) && bs.floor >= 0, `${w}.by_source is malformed`);
    const k = length1(bs.node);
    need(k >= 0, `${w}.by_source.node is not an array`);
    if (k > GRAPH_LIMITS.bySource) throw graphTooBig(`${w}'s per-source nodes`, k, GRAPH_LIMITS.bySource);
    total += shaped(bs.node, [k], `${w}.by_source.node`) + shaped(bs.values, [k, G], `${w}.by_source.values`);
  }
  return total;
}

/** Decode one checked entry and check every index and number in it. */
async function decodeEntry(e, w, dims) {
  const [kind, layer, head, position, effect, src, dst, weight] = await Promise.all([
    ...["kind", "layer", "head", "position", "effect"].map((k) => decoded(e.nodes[k], `${w}.nodes.${k}`)),
    ...["src", "dst", "weight"].map((k) => decoded(e.edges[k], `${w}.edges.${k}`))]);
  let direct = null, bySource = null;
  if (e.direct) {
    const [dh, dm] = await Promise.all([decoded(e.direct.heads, `${w}.direct.heads`), decoded(e.direct.mlp, `${w}.direct.mlp`)]);
    direct = { embed: e.direct.embed, heads: dh, mlp: dm };
  }
  if (e.by_source) {
    const [node, values] = await Promise.all([decoded(e.by_source.node, `${w}.by_source.node`), decoded(e.by_source.values, `${w}.by_source.values`)]);
    bySource = { node, values, floor: e.by_source.floor };
  }
  return buildEntry(e, { kind, layer, head, position, effect, src, dst, weight, direct, bySource }, w, dims);
}

/** An entry's decoded arrays, every index and number checked, -> the view's entry. */
function buildEntry(e, a, w, { P, L, Hx, G }) {
  const { kind, layer, head, position, effect, src, dst, weight } = a;
  const n = kind.length, m = src.length;
  for (let i = 0; i < n; i++) {
    const k = kind[i];
    need(k <= 4, `${w}: node ${i} has unknown kind ${k}`);
    need((k === KIND.TARGET) === (i === n - 1), `${w}: the target must be the last node, and only it`);
    need(position[i] < P, `${w}: node ${i} is at position ${position[i]}, but the prompt has ${P} tokens`);
    need(k === KIND.TARGET || layer[i] < L, `${w}: node ${i} is in layer ${layer[i]}, but the model has ${L}`);
    need(k !== KIND.HEAD || head[i] < Hx, `${w}: node ${i} names head ${head[i]}, but there are ${Hx}`);
    need(Number.isFinite(effect[i]), `${w}: node ${i}'s effect is not a finite number`);
  }
  for (let j = 0; j < m; j++) {
    need(src[j] < n && dst[j] < n, `${w}: edge ${j} names a node that does not exist`);
    need(src[j] !== dst[j], `${w}: edge ${j} joins a node to itself`);
    need(Number.isFinite(weight[j]), `${w}: edge ${j}'s weight is not a finite number`);
  }
  // the sidecar stores at most graphfile.STORED_EDGES edges: how many the pruned graph had, and
  // the share of their Σ|weight| stored (absent: all of them are stored)
  const pruned = e.edges_pruned === undefined || e.edges_pruned === null ? m : e.edges_pruned;
  need(isCount(pruned) && pruned >= m, `${w}.edges_pruned is not a count of at least its ${m} stored edges`);
  const share = e.edges_stored_share === undefined || e.edges_stored_share === null ? 1 : e.edges_stored_share;
  need(finite(share) && share >= 0 && share <= 1 + 1e-6, `${w}.edges_stored_share is not a share`);
  const out = {
    target: tokenRef(e.target, `${w}.target`, false), contrast: tokenRef(e.contrast, `${w}.contrast`, true),
    position: e.position, value: e.value, frozenValue: e.frozen_value, completeness: e.completeness,
    nodeThreshold: finite(e.node_threshold) ? e.node_threshold : null, edgeThreshold: finite(e.edge_threshold) ? e.edge_threshold : null,
    bias: finite(e.bias) ? e.bias : 0,
    role: typeof e.role === "string" ? e.role.slice(0, 60) : null,       // optional: "declared", "top-2 prediction", ...
    nodes: { kind, layer, head, position, effect, n }, edges: { src, dst, weight, m },
    edgesPruned: pruned, edgesStoredShare: Math.min(1, share),
    direct: null, bySource: null, paths: [], check: null,
  };
  need(isCount(e.position) && e.position < P, `${w}.position is out of range`);
  if (a.direct) {
    const { heads: dh, mlp: dm } = a.direct;
    need(finite(a.direct.embed) && dh.length === L * Hx && dm.length === L, `${w}.direct is malformed`);
    need(dh.every(Number.isFinite) && dm.every(Number.isFinite), `${w}.direct holds a number that is not finite`);
    out.direct = a.direct;
  }
  if (a.bySource) {
    const { node, values } = a.bySource;
    need(values.length === node.length * G, `${w}.by_source is malformed`);
    need(node.every((i) => i < n - 1), `${w}.by_source names a node that does not exist`);
    need(values.every(Number.isFinite), `${w}.by_source holds a number that is not finite`);
    const row = new Map();
    node.forEach((i, r) => row.set(i, r));
    out.bySource = { row, values, G, floor: a.bySource.floor };
  }
  out.paths = readPaths(e.paths, n, w);
  out.check = readCheck(e.check, w);
  return out;
}

function readPaths(paths, n, w) {
  if (paths === undefined || paths === null) return [];
  need(Array.isArray(paths), `${w}.paths is not a list`);
  if (paths.length > GRAPH_LIMITS.paths) throw graphTooBig(`${w}'s paths`, paths.length, GRAPH_LIMITS.paths);
  return paths.map((p, i) => {
    need(isMap(p) && finite(p.value) && Array.isArray(p.nodes), `${w}.paths[${i}] is malformed`);
    if (p.nodes.length > GRAPH_LIMITS.pathLength) throw graphTooBig(`${w}.paths[${i}]'s length`, p.nodes.length, GRAPH_LIMITS.pathLength);
    need(p.nodes.every((x) => isCount(x) && x < n), `${w}.paths[${i}] names a node that does not exist`);
    return { value: p.value, nodes: p.nodes.slice() };
  });
}

/** The ablation check's summary (ablate.Check.to_dict): numbers may be null or NaN ("n/a":
 * a rank correlation of a constant); anything else malformed is refused. */
function readCheck(c, w) {
  if (c === undefined || c === null) return null;
  need(isMap(c), `${w}.check is not a map`);
  const num = (x) => (typeof x === "number" ? x : x === null || x === undefined ? NaN : undefined);
  const stats = (s, what) => {
    if (s === undefined || s === null) return { n: 0 };
    need(isMap(s) && isCount(s.n), `${what} is malformed`);
    if (!s.n) return { n: 0 };
    const out = {};
    for (const k of ["rho", "signs", "rho_direct", "signs_direct"]) {
      out[k] = num(s[k]);
      need(out[k] !== undefined, `${what}.${k} is not a number`);
    }
    const worst = s.worst === undefined ? [] : s.worst;
    need(Array.isArray(worst) && worst.length <= GRAPH_LIMITS.checkRows, `${what}.worst is malformed`);
    out.worst = worst.map((x) => {
      need(isMap(x) && typeof x.node === "string" && finite(x.predicted) && finite(x.actual), `${what}.worst is malformed`);
      return { node: x.node, predicted: x.predicted, actual: x.actual };
    });
    out.n = s.n;
    return out;
  };
  const notes = c.notes === undefined ? [] : strings(c.notes, 64, `${w}.check.notes`);
  need(c.value === undefined || finite(c.value), `${w}.check.value is not a finite number`);
  return { value: c.value, heads: stats(c.heads, `${w}.check.heads`), mlps: stats(c.mlps, `${w}.check.mlps`), notes };
}

/**
 * A graph document (msgpack bytes) -> the decoded object mountPaths shows:
 *
 *   {prompt, model, tokens: string[P], sources: string[G], labels: string[H'] (head labels),
 *    P, L, Hx, G, graphs: [entry]}
 *   entry = {target: {id, text}, contrast: {id, text} | null, position, value, frozenValue,
 *    completeness, nodeThreshold, edgeThreshold, bias,
 *    nodes: {kind, layer, head, position, effect, n} (typed arrays; the target last),
 *    edges: {src, dst, weight, m}, direct: {embed, heads (L·H'), mlp (L)} | null,
 *    bySource: {row: Map(node -> row), values (K·G), G, floor} | null,
 *    paths: [{value, nodes}], check: {value, heads, mlps, notes} | null}
 */
export async function decodeGraph(buffer) {
  let doc;
  try {
    doc = msgpackDecode(new Uint8Array(buffer), {
      maxStrLength: 1 << 20, maxBinLength: GRAPH_LIMITS.bytes, maxArrayLength: 1 << 16, maxMapLength: 256, maxExtLength: 0,
    });
  } catch (e) {
    throw graphError(`it is not valid msgpack: ${e.message}`);
  }
  const dims = checkDocument(doc);
  const graphs = [];
  for (let i = 0; i < doc.graphs.length; i++) graphs.push(await decodeEntry(doc.graphs[i], `graphs[${i}]`, dims));
  return {
    prompt: typeof doc.prompt === "string" ? doc.prompt : "", model: typeof doc.model === "string" ? doc.model : "",
    tokens: dims.tokens, sources: dims.sources, labels: dims.labels, P: dims.P, L: dims.L, Hx: dims.Hx, G: dims.G, graphs,
  };
}

/** Read a response body, stopping past `cap` bytes (a server that sends more than it declared). */
async function readCapped(resp, cap, url) {
  const declared = Number(resp.headers.get("content-length"));
  if (declared > cap) throw graphTooBig("its file size", declared, cap);
  if (!resp.body) return new Uint8Array(await resp.arrayBuffer());
  const reader = resp.body.getReader(), parts = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > cap) {
      reader.cancel().catch(() => {});
      throw graphTooBig(`the size of ${url}`, `more than ${cap}`, cap);
    }
    parts.push(value);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.byteLength; }
  return out;
}

/** Fetch and decode a graph file; every failure is a DataError with a message for the page. */
export async function loadGraph(url) {
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new DataError(`Could not fetch the graph file ${url} (${e.message}). Check your connection and reload the page.`);
  }
  if (!resp.ok) {
    throw new DataError(resp.status === 404
      ? `The graph file ${url} is missing (HTTP 404): the site is incomplete. Rebuild it (infoflow build).`
      : `Could not fetch the graph file ${url} (HTTP ${resp.status}). Reload the page later.`);
  }
  let bytes;
  try {
    bytes = await readCapped(resp, GRAPH_LIMITS.bytes, url);
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(`The graph file ${url} did not download completely (${e.message}). Reload the page.`);
  }
  try {
    const doc = await decodeGraph(bytes);
    doc.url = url;
    doc.bytes = bytes.byteLength;
    return doc;
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw graphError(`${e.name}: ${e.message}`);
  }
}

/**
 * The live page's graphs (engine-graph.js graphFor: one decoded graphfile.graph_entry each, its
 * arrays {shape, data} with typed data) -> the same object decodeGraph makes, through the same
 * checks: {tokens, layers, labels, model, prompt, graphs: [entry]}. An entry computed with the
 * per-source split (engine-split.js) holds graphfile's by_source over the tokens (G = P, or
 * P + 1 with the bias source last, as Python's `sources`); the others have none.
 */
export function engineGraphDocument({ tokens, layers, labels, model = "", prompt = "", graphs }) {
  const P = tokens.length, L = layers, Hx = labels.length;
  const split = Array.isArray(graphs) && graphs.find((e) => isMap(e) && isMap(e.by_source));
  const G = split && isMap(split.by_source.values) && Array.isArray(split.by_source.values.shape)
    ? split.by_source.values.shape[1] : P;
  need(G === P || G === P + 1, "its per-source split has neither one source per token nor one more (the bias)");
  need(P > 0 && P <= GRAPH_LIMITS.tokens && isCount(L) && L > 0 && Hx > 0, "the prompt or the model has no size");
  need(Array.isArray(graphs) && graphs.length > 0 && graphs.length <= GRAPH_LIMITS.graphs, "it holds no graphs or too many");
  const typed = (x, len, what) => {
    need(isMap(x) && ArrayBuffer.isView(x.data) && (len === null || x.data.length === len), `${what} is not an array of ${len}`);
    return x.data;
  };
  const out = graphs.map((e, i) => {
    const w = `graphs[${i}]`;
    need(isMap(e) && isMap(e.nodes) && isMap(e.edges), `${w} has no nodes or edges`);
    for (const key of ["value", "frozen_value"]) need(finite(e[key]), `${w}.${key} is not a finite number`);
    need(e.completeness === null || finite(e.completeness), `${w}.completeness is not a finite number`);
    const kind = typed(e.nodes.kind, null, `${w}.nodes.kind`), n = kind.length;
    const src = typed(e.edges.src, null, `${w}.edges.src`), m = src.length;
    need(n >= 1 && n <= GRAPH_LIMITS.nodes && m <= GRAPH_LIMITS.edges, `${w} has ${n} nodes and ${m} edges`);
    const a = { kind, src };
    for (const key of ["layer", "head", "position", "effect"]) a[key] = typed(e.nodes[key], n, `${w}.nodes.${key}`);
    for (const key of ["dst", "weight"]) a[key] = typed(e.edges[key], m, `${w}.edges.${key}`);
    a.direct = e.direct ? { embed: e.direct.embed, heads: typed(e.direct.heads, L * Hx, `${w}.direct.heads`),
      mlp: typed(e.direct.mlp, L, `${w}.direct.mlp`) } : null;
    a.bySource = null;
    if (isMap(e.by_source)) {
      const bs = e.by_source, node = typed(bs.node, null, `${w}.by_source.node`);
      need(node.length <= GRAPH_LIMITS.bySource && finite(bs.floor) && bs.floor >= 0, `${w}.by_source is malformed`);
      a.bySource = { node, values: typed(bs.values, node.length * G, `${w}.by_source.values`), floor: bs.floor };
    }
    const entry = buildEntry(e, a, w, { P, L, Hx, G });
    // the full node effects, for the ablation check's top nodes (paths.Graph.heads / .mlp)
    entry.effects = { heads: typed(e.heads, L * Hx * P, `${w}.heads`), mlp: typed(e.mlp, L * P, `${w}.mlp`) };
    return entry;
  });
  return { prompt, model, tokens: tokens.slice(), sources: G === P ? tokens.slice() : [...tokens, "bias"], labels: labels.slice(),
    P, L, Hx, G, graphs: out,
    splitNote: "This graph has no per-source split: tick \u201cSplit by source\u201d above it (the browser decomposes the prompt "
      + "once more for it)." };
}
