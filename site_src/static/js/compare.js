// Compare mode (c/<id>.html): one prompt on two models side by side, two grids in shared
// source colours, and the traced source's share over depth for both on one chart.
//
// URL: ?a=<model>&b=<model> picks the models (default: the page's first two); the hash holds
// the view: m (metric), g (words | tokens), tc (the traced source, a portable key as models.js
// writes it: a prompt page's "Compare" link carries its trace here), rel=1 (relative depth),
// first=1 (show the first token, hidden by default as on the prompt pages).
import { loadData, ensureMetric, DataError } from "./data.js";
import { Grid } from "./grid.js";
import { METRICS } from "./state.js";
import { isDark } from "./theme.js";
import { topContributors, rankingText } from "./answer.js";
import { NEG_COLOR, POS_COLOR } from "./palette.js";
import { charStarts, localKey, portableKey } from "./models.js";
import { sourceKeys, sharedSlots, gridData, depthSeries, drawChart, traceChoices } from "./compare-draw.js";
import { el } from "./dom.js";
import { displayToken } from "./format.js";
import { attachComparePaths } from "./compare-paths.js";
import { bindCompareKeys, refreshCompareTip } from "./compare-keys.js";

const $ = (id) => document.getElementById(id);

class Compare {
  constructor(models, data) {
    this.models = models;            // [{key, label, layers, href}] of the two sides
    this.data = data;                // their decoded results
    this.grids = ["a", "b"].map((s) => new Grid($(`grid-${s}`)));
    this.frame = 0;
  }

  /** The state the hash describes; anything unknown falls back to the default. */
  readHash() {
    const q = new URLSearchParams(location.hash.replace(/^#/, ""));
    const g = q.get("g");
    this.state = {
      metric: METRICS[q.get("m")] ? q.get("m") : "norm",
      variant: g === "tokens" ? "tokens" : "words",
      trace: q.get("tc"), relative: q.get("rel") === "1", first: q.get("first") === "1",
      paths: q.get("pv") === "1",
    };
  }

  writeHash() {
    const s = this.state, q = new URLSearchParams({ m: s.metric, g: s.variant });
    if (s.trace) q.set("tc", s.trace);
    if (s.relative) q.set("rel", "1");
    if (s.first) q.set("first", "1");
    if (s.paths) q.set("pv", "1");            // the Paths panel is open
    history.replaceState(null, "", "#" + q.toString());
    for (const [i, m] of this.models.entries()) {
      // back to a prompt page: the trace as a portable key, the rest as the page reads it
      const back = new URLSearchParams({ m: s.metric, g: s.variant });
      if (s.trace && this.sides[i].trace >= 0) back.set("tc", this.portable(this.sides[i]));
      $(`title-${"ab"[i]}`).href = m.href + "#" + back.toString();
    }
  }

  /** A source's portable key (models.js) for the prompt page: f for the first position. */
  portable(side) {
    const p = side.V.first[side.trace];
    if (side.V.hasBias && side.trace === side.V.G - 1) return "b";
    return portableKey(charStarts(side.D.tokens, side.D.prompt.text), p, side.D.tokens);
  }

  /** Both sides' variant, hidden mask, keys and traced source, for the current state. */
  resolve() {
    const s = this.state;
    this.sides = this.data.map((D) => {
      const V = D.variants.find((v) => v.name === s.variant) || D.variants.find((v) => v.name === "words") || D.variants[0];
      const keys = sourceKeys(D, V);
      const hidden = new Uint8Array(V.G);
      if (!s.first) hidden[V.groups[0]] = 1;
      return { D, V, keys, hidden, trace: -1 };
    });
    if (!s.trace || !this.sides.some((side) => this.traceIndex(side, s.trace) >= 0)) s.trace = this.defaultTrace();
    for (const side of this.sides) {
      side.trace = this.traceIndex(side, s.trace);
      if (side.trace >= 0) side.hidden[side.trace] = 0;
    }
  }

  /** The source a key names on one side: the same key, else the source holding that character. */
  traceIndex(side, key) {
    if (!key) return -1;
    const exact = side.keys.indexOf(key);
    if (exact >= 0) return exact;
    const starts = charStarts(side.D.tokens, side.D.prompt.text);
    const portable = /^s\d+$/.test(key) || key === "f" || key[0] === "c";   // from a prompt page (models.js)
    const p = portable ? localKey(starts, side.D.P, key) : null;
    return p === null || p === "b" ? -1 : side.V.groups[p];
  }

  /** By default, trace where the first model's top prediction comes from (answer.js: the source
   * adding most to its demeaned logit, its logit minus the vocabulary mean, at the last position;
   * files without the vocabulary mean: minus the top-k predictions' mean); without a logit
   * attribution, the largest share of its last position. Sets this.defaultWhy (said under the chart). */
  defaultTrace() {
    const { D, V, hidden, keys } = this.sides[0], G = V.G, P = D.P, own = V.groups[P - 1];
    this.defaultWhy = null;
    if (V.logitAttr) {
      const [top] = topContributors(V, D, P - 1, 0, 1, hidden);
      if (top !== undefined) {
        this.defaultWhy = { key: keys[top], text: `Traced by default: the source adding most to ${this.models[0].label}'s top `
          + `prediction ${displayToken(D.strings[D.pred.ids[(P - 1) * D.k]])}, ranked by ${rankingText(V, D, P - 1)}.` };
        return keys[top];
      }
    }
    const score = new Float64Array(G);
    for (let c = 0; c < 2 * D.L; c++) {
      const base = (c * P + P - 1) * G;
      let sum = 0;
      for (let s = 0; s < G; s++) if (!hidden[s]) sum += V.norm[base + s];
      for (let s = 0; s < G; s++) if (!hidden[s] && sum > 0) score[s] += V.norm[base + s] / sum;
    }
    let best = -1;
    for (let s = 0; s < G; s++) if (!hidden[s] && s !== own && (best < 0 || score[s] > score[best])) best = s;
    return best >= 0 ? keys[best] : null;
  }

  async ensure() {
    const names = [this.state.metric, "norm", "logitAttr"];   // logitAttr: the default trace (answer.js)
    await Promise.all(this.data.flatMap((D) => D.variants.flatMap((V) => names.map((m) => ensureMetric(V, m)))));
  }

  async set(patch) {
    Object.assign(this.state, patch);
    await this.ensure();
    this.render();
  }

  render() {
    this.resolve();
    const s = this.state, dark = isDark(), theme = readTheme(dark);
    const slots = sharedSlots(this.sides, s.trace);
    this.slots = slots;
    const width = Math.max(320, $("pane-a").clientWidth);
    this.sides.forEach((side, i) => {
      const g = this.grids[i];
      g.setTheme(theme);
      g.setLayout({ emph: "attn", width, height: Math.max(320, Math.min(window.innerHeight * 0.55, 520)),
        dpr: window.devicePixelRatio || 1 });
      g.setData(gridData(side, slots, s, theme, dark));
      g.flush();
    });
    this.fillControls();
    const color = this.sides.map((sd) => (sd.trace >= 0 ? sd.colors[sd.trace] : null)).find(Boolean) || theme.fg;
    this.series = this.sides.map((side) => (side.trace >= 0 ? depthSeries(side, s.metric, s.relative) : []));
    this.chart = drawChart($("chart"), this.series, { color, theme, relative: s.relative,
      width: $("compare-chart").clientWidth, dpr: window.devicePixelRatio || 1, signed: s.metric === "proj" });
    this.legend(color);
    refreshCompareTip(this);
    this.writeHash();
    document.documentElement.dataset.compareReady = "1";
  }

  fillControls() {
    const s = this.state, pick = $("cmp-trace");
    const choices = traceChoices(this.sides);
    pick.replaceChildren(...choices.map((c) => el("option", { value: c.key, text: c.label })));
    pick.value = s.trace || "";
    $("cmp-metric").value = s.metric;
    $("cmp-grouping").value = s.variant;
    $("cmp-relative").checked = s.relative;
    $("cmp-first").checked = s.first;
  }

  legend(color) {
    const box = $("chart-legend");
    const items = this.models.map((m, i) => {
      const side = this.sides[i];
      const sw = el("span", { class: "legend-line", text: i ? "╍╍ " : "━━ " });
      sw.style.color = color;
      const what = side.trace >= 0 ? ` (traced: ${JSON.stringify(side.V.sources[side.trace])})` : " (the traced text is not a source here)";
      return el("span", { class: "legend-model" }, sw, el("span", { text: `${m.label}, ${side.D.L} layers${what}` }));
    });
    const why = this.defaultWhy && this.defaultWhy.key === this.state.trace ? this.defaultWhy.text : "";
    box.replaceChildren(...items, el("span", { class: "legend-why muted", id: "chart-why", text: why ? ` ${why}` : "" }));
  }

  bind() {
    $("cmp-metric").addEventListener("change", (e) => this.set({ metric: e.target.value }));
    $("cmp-grouping").addEventListener("change", (e) => this.set({ variant: e.target.value }));
    $("cmp-trace").addEventListener("change", (e) => this.set({ trace: e.target.value }));
    $("cmp-relative").addEventListener("change", (e) => this.set({ relative: e.target.checked }));
    $("cmp-first").addEventListener("change", (e) => this.set({ first: e.target.checked }));
    this.grids.forEach((g, i) => g.canvas.addEventListener("click", (e) => this.clickToken(i, g, e)));
    window.addEventListener("infoflow-theme", () => this.render());
    window.addEventListener("hashchange", () => { this.readHash(); this.set({}); });
    let t = 0;
    new ResizeObserver(() => { clearTimeout(t); t = setTimeout(() => this.render(), 100); }).observe($("compare-grids"));
  }

  /** A click on a token label traces its source in both grids (again: stop tracing). */
  clickToken(i, grid, e) {
    const r = grid.canvas.getBoundingClientRect();
    const h = grid.hit(e.clientX - r.left, e.clientY - r.top);
    if (!h) return;
    const side = this.sides[i], key = side.keys[side.V.groups[h.p]];
    this.set({ trace: key === this.state.trace ? null : key });
  }
}

function readTheme(dark) {
  const cs = getComputedStyle(document.documentElement);
  const v = (name, fb) => (cs.getPropertyValue(name).trim() || fb);
  return {
    bg: v("--canvas-bg", "#fff"), fg: v("--fg", "#111"), muted: v("--muted", "#666"), track: v("--track", "#eee"),
    highlight: v("--highlight", "rgba(0,0,0,.08)"), focus: v("--focus", "#000"), pin: v("--pin", "#d00"),
    accent: v("--accent", "#0072B2"), barBg: v("--bar-bg", "#ddd"), neutral: v("--neutral", "#aaa"),
    veil: v("--veil", "rgba(255,255,255,.75)"), neg: dark ? NEG_COLOR.dark : NEG_COLOR.light,
    pos: dark ? POS_COLOR.dark : POS_COLOR.light,
  };
}

/** The two models this page compares: ?a= and ?b= among the page's, else its first two. */
export function chooseModels(links, search) {
  const q = new URLSearchParams(search);
  const find = (key, fallback) => links.find((a) => a.dataset.model === key) || fallback;
  const a = find(q.get("a"), links[0]);
  const b = find(q.get("b"), links.find((x) => x !== a));
  return [a, b].map((x) => ({ key: x.dataset.model, label: x.dataset.label, layers: +x.dataset.layers,
    src: x.dataset.src, href: x.getAttribute("href"), graphSrc: x.dataset.graphSrc || "" }));
}

async function boot(root) {
  const fail = (e) => {
    const box = $("error");
    box.replaceChildren(el("strong", { text: "Cannot compare the models. " }), el("span", { text: e.message }));
    box.hidden = false;
    $("loading").hidden = true;
    document.documentElement.dataset.compareReady = "error";
  };
  if (location.protocol === "file:") {
    fail(new DataError("This page was opened from a file (file://); serve the site folder instead (`infoflow serve`)."));
    return;
  }
  const links = [...document.querySelectorAll("#compare-sources a")];
  if (links.length < 2) { fail(new DataError("this prompt was computed on one model only.")); return; }
  const models = chooseModels(links, location.search);
  $("loading").hidden = false;
  try {
    const data = await Promise.all(models.map((m) => loadData(m.src, { eager: [["words", "norm"], ["tokens", "norm"]] })));
    const cmp = new Compare(models, data);
    models.forEach((m, i) => { $(`title-${"ab"[i]}`).textContent = `${m.label} (${data[i].L} layers)`; });
    for (const id of ["compare-controls", "compare-grids", "compare-chart"]) $(id).hidden = false;
    $("loading").hidden = true;
    cmp.readHash();
    await cmp.ensure();
    cmp.render();
    cmp.bind();
    bindCompareKeys(cmp);
    // closed until opened: the graph files are fetched then
    cmp.paths = attachComparePaths($("compare-chart"), models, data, { id: root.dataset.id || "compare", open: cmp.state.paths,
      onToggle: (open) => { cmp.state.paths = open; cmp.writeHash(); } });
    window.infoflowCompare = cmp;
  } catch (e) {
    console.warn(e);
    fail(e);
  }
}

const root = $("compare");
if (root) boot(root);
