// The compare page's grids from the keyboard and the pointer (issue 24, item 9): each canvas is
// a Tab stop; the arrow keys move a focus cell, Enter pins it, Esc unpins; hover or focus shows
// the prompt page's tooltip (panels.js cellContent) with that side's stored values, and a pin is
// said in an aria-live region.
import { cellContent } from "./panels.js";
import { cellSources } from "./compute.js";
import { ensureLens } from "./data.js";
import { sourceLabels } from "./format.js";

const $ = (id) => document.getElementById(id);

/** What cellContent reads of a viewer, for side i of the comparison. */
export function sideView(cmp, i) {
  const side = cmp.sides[i], grid = cmp.grids[i];
  return {
    D: side.D, V: side.V, state: { metric: cmp.state.metric, shown: false }, hidden: side.hidden,
    labels: sourceLabels(side.V), tokenLabels: grid.data.tokenLabels, traceSrc: side.trace,
    colorOf: (s) => (side.colors && side.colors[s]) || grid.colors.neutral,
  };
}

/** The pin sentence (the prompt page's wording, app.js announcePin), with the model's name. */
function pinText(cmp, i, cell) {
  const v = sideView(cmp, i), { l, k, p } = cell;
  const rows = cellSources(v.V, v.D.P, v.state.metric, v.hidden, l, k, p, false), top = rows[0];
  return `${cmp.models[i].label}: pinned layer ${l} ${k ? "MLP" : "attention"} at position ${p}, ${v.tokenLabels[p]}`
    + (top ? `: largest source ${v.labels[top.s]}${top.hidden ? " (hidden)" : ""}, ${(top.share * 100).toFixed(1)}%.` : ".");
}

function showTip(cmp, i, cell) {
  const grid = cmp.grids[i], tip = $(`tooltip-${"ab"[i]}`), wrap = grid.canvas.parentElement;
  tip.replaceChildren(cellContent(sideView(cmp, i), cell));
  tip.hidden = false;
  const r = grid.cellRect(cell.l, cell.k, cell.p);
  let x = r.x + r.w + 12, y = r.y + r.h + 12;
  if (x + tip.offsetWidth > wrap.clientWidth) x = Math.max(0, r.x - tip.offsetWidth - 12);
  if (y + tip.offsetHeight > wrap.clientHeight) y = Math.max(0, r.y - tip.offsetHeight - 12);
  tip.style.left = `${x}px`;
  tip.style.top = `${y}px`;
  cmp.tipCell = { i, ...cell };
  const D = cmp.sides[i].D;
  if (!D.lens && D.lensRaw) {        // the logit lens decodes on first use: refill the tooltip then
    ensureLens(D).then(() => { const c = cmp.tipCell; if (c && c.i === i) showTip(cmp, i, { l: c.l, k: c.k, p: c.p }); });
  }
}

function hideTip(cmp, i) {
  $(`tooltip-${"ab"[i]}`).hidden = true;
  if (cmp.tipCell && cmp.tipCell.i === i) cmp.tipCell = null;
}

function moveFocus(cmp, i, dr, dp) {
  const grid = cmp.grids[i], { L, P } = grid;
  const f = grid.overlay.focus || grid.overlay.pin || { l: L - 1, k: 1, p: P - 1 };
  const r = Math.max(0, Math.min(2 * L - 1, 2 * f.l + f.k + dr));
  const focus = { l: r >> 1, k: r & 1, p: Math.max(0, Math.min(P - 1, f.p + dp)) };
  grid.setOverlay({ focus });
  grid.reveal(focus);
  grid.flush();
  showTip(cmp, i, focus);
}

function onKey(cmp, i, e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const grid = cmp.grids[i];
  const moves = { ArrowUp: [1, 0], ArrowDown: [-1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  if (e.key in moves) moveFocus(cmp, i, ...moves[e.key]);
  else if (e.key === "Enter" && grid.overlay.focus) {
    const pin = { ...grid.overlay.focus };
    grid.setOverlay({ pin });
    grid.flush();
    $("cmp-announce").textContent = pinText(cmp, i, pin);
  } else if (e.key === "Escape") {
    if (grid.overlay.pin) {
      grid.setOverlay({ pin: null });
      $("cmp-announce").textContent = `${cmp.models[i].label}: unpinned.`;
    } else grid.setOverlay({ focus: null });
    grid.flush();
    hideTip(cmp, i);
  } else return;
  e.preventDefault();
}

/** Bind both grids (once, after the first render). */
export function bindCompareKeys(cmp) {
  cmp.grids.forEach((grid, i) => {
    const c = grid.canvas;
    c.setAttribute("tabindex", "0");
    c.addEventListener("keydown", (e) => onKey(cmp, i, e));
    c.addEventListener("focus", () => moveFocus(cmp, i, 0, 0));
    c.addEventListener("blur", () => hideTip(cmp, i));
    c.addEventListener("pointermove", (e) => {
      const r = c.getBoundingClientRect(), h = grid.hit(e.clientX - r.left, e.clientY - r.top);
      if (h && h.type === "cell") showTip(cmp, i, h); else hideTip(cmp, i);
    });
    c.addEventListener("pointerleave", () => hideTip(cmp, i));
  });
}

/** After a re-render (metric, grouping, trace): a shown tooltip shows the new values. */
export function refreshCompareTip(cmp) {
  const c = cmp.tipCell;
  if (c) showTip(cmp, c.i, { l: c.l, k: c.k, p: c.p });
}
