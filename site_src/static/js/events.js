// Input: toolbar, token strip, legend, pointer, wheel, keyboard and window events -> viewer
// actions. Nothing here draws; it calls viewer.set(...) / viewer.grid setters and commit().
import { exportFigure, exportCsv } from "./export.js";
import { enableExact } from "./exact-custom.js";
import { applyRoving, bindRoving } from "./roving.js";
import { toolbarControls } from "./dom.js";

const $ = (id) => document.getElementById(id);

function bindToolbar(v) {
  for (const r of document.querySelectorAll('input[name="metric"]')) {
    r.addEventListener("change", () => { if (r.checked) v.set({ metric: r.value }); });
  }
  $("grouping").addEventListener("change", (e) => v.setVariant(e.target.value));
  $("order").addEventListener("change", (e) => v.set({ order: e.target.value }));
  $("share-of").addEventListener("change", (e) => v.set({ shown: e.target.value === "shown" }));
  $("emph").addEventListener("click", () => v.set({ emph: v.state.emph === "attn" ? "mlp" : "attn" }));
  $("heat").addEventListener("click", () => v.set({ heat: !v.state.heat }));
  $("fit").addEventListener("click", () => { v.grid.fit(); v.viewChanged(); });
  $("zoom-in").addEventListener("click", () => { v.grid.zoomCenter(1.5); v.viewChanged(); });
  $("zoom-out").addEventListener("click", () => { v.grid.zoomCenter(1 / 1.5); v.viewChanged(); });
  $("copy-link").addEventListener("click", () => v.copyLink());
  $("export-png").addEventListener("click", () => exportFigure(v, "png"));
  $("export-svg").addEventListener("click", () => exportFigure(v, "svg"));
  $("export-csv").addEventListener("click", () => exportCsv(v));
  $("help-button").addEventListener("click", () => v.toggleHelp());
  $("help-close").addEventListener("click", () => v.toggleHelp(false));
  $("group-make").addEventListener("click", () => v.groupSelection());
  $("group-clear").addEventListener("click", () => { v.selection = null; v.set({ custom: [...Array(v.D.P).keys()] }); });
  if ($("group-exact")) $("group-exact").addEventListener("click", () => enableExact(v));
  $("group-cancel").addEventListener("click", () => { const f = v.options.exactCustom; if (f && f.cancel) f.cancel(); });
}

/** Hovering anything that names a source (data-src) highlights it in the grid (overlay only). */
function bindSourceHover(v, box) {
  box.addEventListener("pointerover", (e) => {
    const t = e.target.closest("[data-src]");
    v.highlightSource(t ? +t.dataset.src : -1);
  });
  box.addEventListener("pointerleave", () => v.highlightSource(-1));
}

function bindStrip(v) {
  $("token-strip").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    const key = b.dataset.pos === "b" ? "b" : +b.dataset.pos;
    if (b.classList.contains("tok-hide")) { v.toggleHidden(key); return; }
    const custom = v.state.variant === "custom" && key !== "b";
    if (custom && (e.shiftKey || (v.anchor !== null && e.altKey))) {
      const a = v.anchor === null ? key : v.anchor;
      v.selection = [Math.min(a, key), Math.max(a, key)];
      v.set({}, { changed: ["selection"] });
      return;
    }
    if (custom) v.anchor = key;
    v.toggleTrace(key);
  });
  $("predictions").addEventListener("click", (e) => {
    const b = e.target.closest("button.pred");
    if (!b) return;
    v.predChoice = +b.dataset.j;
    v.set({}, { changed: ["predChoice"] });
  });
  for (const id of ["token-strip", "legend", "predictions", "cell-detail", "tooltip"]) bindSourceHover(v, $(id));
  bindRoving($("token-strip"), "button");
  bindRoving($("toolbar"), toolbarControls, { horizontal: true });
  const models = $("model-switch");                 // the page's model choices and its compare link: one stop
  if (models) {
    const links = [...models.querySelectorAll("a")];
    models.dataset.roving = String(Math.max(0, links.findIndex((a) => a.getAttribute("aria-current") === "page")));
    applyRoving(models, "a");
    bindRoving(models, "a");
  }
}

function bindPointer(v) {
  const canvas = v.grid.canvas, grid = v.grid;
  let drag = null;
  const pos = (e) => {
    const r = canvas.getBoundingClientRect();
    return [e.clientX - r.left - canvas.clientLeft, e.clientY - r.top - canvas.clientTop];
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    const [x, y] = pos(e);
    drag = { x, y, x0: x, y0: y, moved: false, id: e.pointerId };
  });
  canvas.addEventListener("pointermove", (e) => {
    const [x, y] = pos(e);
    if (drag && (e.buttons & 1)) {
      if (!drag.moved && Math.hypot(x - drag.x0, y - drag.y0) > 3) {
        drag.moved = true;
        canvas.setPointerCapture(drag.id);
        canvas.classList.add("is-dragging");
      }
      if (drag.moved) {
        grid.panBy(x - drag.x, y - drag.y);
        drag.x = x; drag.y = y;
        v.hideTooltip();
        grid.setOverlay({ hover: null });
        v.viewChanged();
        return;
      }
    }
    if (e.pointerType === "touch") return;     // a tap pins; no hover on touch screens
    const h = grid.hit(x, y);
    const cell = h && h.type === "cell" ? { l: h.l, k: h.k, p: h.p } : null;
    if (cell) v.showTooltip(cell, x, y);
    else v.hideTooltip();
    canvas.classList.toggle("is-pointer", !!h && h.type === "token");
    grid.setOverlay({
      hover: cell || (h && h.type === "token" ? { l: -1, k: 0, p: h.p } : null),
      source: cell && v.state.trace === null ? grid.segmentAt(h) : v.hoverSource,
    });
    grid.commit();
  });
  canvas.addEventListener("pointerleave", (e) => {
    if ((drag && drag.moved) || e.pointerType === "touch") return;   // a lifted finger "leaves"
    grid.setOverlay({ hover: null, source: v.hoverSource });
    v.hideTooltip();
    grid.commit();
  });
  canvas.addEventListener("pointerup", (e) => {
    const d = drag;
    drag = null;
    canvas.classList.remove("is-dragging");
    if (!d || d.moved) return;
    const [x, y] = pos(e);
    const h = grid.hit(x, y);
    if (!h) return;
    if (h.type === "token") {
      // a column label: show that position's predictions, and trace its source
      v.state.pred = h.p;
      v.toggleTrace(h.p, { changed: ["pred"] });
    } else if (h.type === "cell") {
      const pin = v.state.pin;
      const same = pin && pin.l === h.l && pin.k === h.k && pin.p === h.p;
      grid.setOverlay({ focus: { l: h.l, k: h.k, p: h.p } });
      v.set({ pin: same ? null : { l: h.l, k: h.k, p: h.p } });
      // on a touch screen the pinned cell's details open next to the cell, not off-screen
      if (e.pointerType === "touch" && !same) v.showPinned();
    }
  });
}

/** Like a map widget: the wheel scrolls the page unless Ctrl/⌘ is held or the grid has focus. */
function bindWheel(v) {
  const canvas = v.grid.canvas;
  let hintTimer = 0;
  canvas.addEventListener("wheel", (e) => {
    if (!(e.ctrlKey || e.metaKey || document.activeElement === canvas)) {
      const hint = $("wheel-hint");
      hint.hidden = false;
      clearTimeout(hintTimer);
      hintTimer = setTimeout(() => { hint.hidden = true; }, 1500);
      return;
    }
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
    v.grid.zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-dy * 0.0015));
    v.viewChanged();
  }, { passive: false });
}

function bindKeys(v) {
  const canvas = v.grid.canvas;
  const { signal } = v.lifetime;           // a page that mounts another viewer ends this one's listeners
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const onCanvas = t === canvas;
    switch (e.key) {
      case "?": v.toggleHelp(); break;
      case "Escape": v.escape(); break;
      case "+": case "=": v.grid.zoomCenter(1.5); v.viewChanged(); break;
      case "-": case "_": v.grid.zoomCenter(1 / 1.5); v.viewChanged(); break;
      case "0": v.grid.fit(); v.viewChanged(); break;
      case "ArrowUp": case "ArrowDown": case "ArrowLeft": case "ArrowRight":
        if (!onCanvas && t !== document.body) return;
        v.moveFocus(e.key === "ArrowUp" ? 1 : e.key === "ArrowDown" ? -1 : 0,
          e.key === "ArrowLeft" ? -1 : e.key === "ArrowRight" ? 1 : 0);
        break;
      case "Enter":
        if (!onCanvas || !v.grid.overlay.focus) return;
        v.set({ pin: { ...v.grid.overlay.focus } });
        break;
      default: return;
    }
    e.preventDefault();
  }, { signal });
}

function bindWindow(v) {
  const { signal } = v.lifetime;
  window.addEventListener("popstate", () => v.restoreHash(), { signal });
  window.addEventListener("infoflow-theme", () => v.themeChanged(), { signal });
  let resizeTimer = 0;
  const relayout = () => { v.relayoutPending = false; v.fitLayout(); v.grid.commit(); };
  // Debounced; `relayoutPending` keeps the viewer from calling itself idle until it has run.
  const schedule = () => {
    clearTimeout(resizeTimer);
    v.relayoutPending = true;
    resizeTimer = setTimeout(relayout, 60);
  };
  const observer = new ResizeObserver(schedule);
  observer.observe($("grid-wrap"));
  signal.addEventListener("abort", () => { observer.disconnect(); clearTimeout(resizeTimer); });
  window.addEventListener("resize", schedule, { signal });
  matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`).addEventListener("change", relayout, { signal });
}

/** "Skip to the grid" (prompt pages): focus the grid itself, so the keys work at once. */
function bindSkip(v) {
  const skip = $("skip-grid");
  if (skip) skip.addEventListener("click", (e) => { e.preventDefault(); v.grid.canvas.focus(); });
}

export function bindEvents(v) {
  bindSkip(v);
  bindToolbar(v);
  bindStrip(v);
  bindPointer(v);
  bindWheel(v);
  bindKeys(v);
  bindWindow(v);
}
