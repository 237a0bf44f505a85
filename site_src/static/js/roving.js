// A roving tabindex (issue 24, item 9): a group of controls is one Tab stop; the arrow keys,
// Home and End move between them. The group keeps which control was last focused across the
// re-renders that replace its controls (data-roving holds its index).
//
// `items` is a CSS selector, or a function (box) -> elements (the toolbar: its radio group
// counts as one control, the checked radio). With {horizontal: true} only Left/Right move, so
// Up/Down keep their own meaning on radios and selects (the WAI-ARIA toolbar pattern).

const KEYS = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
const FLAT = { ArrowRight: 1, ArrowLeft: -1 };

function listOf(box, items) {
  const all = typeof items === "function" ? items(box) : [...box.querySelectorAll(items)];
  return all.filter((b) => b && !b.disabled && !b.hidden && !b.closest("[hidden]"));
}

function setStop(list, at) {
  list.forEach((b, q) => b.setAttribute("tabindex", q === at ? "0" : "-1"));
}

/** Make the `items` of `box` one Tab stop: call after every render of the box. */
export function applyRoving(box, items) {
  if (!box) return;
  const list = listOf(box, items);
  if (!list.length) return;
  const at = Math.min(list.length - 1, +(box.dataset.roving || 0));
  if (typeof items === "function") {               // controls outside the list (an unchecked radio) leave the Tab order
    for (const c of box.querySelectorAll("input, select, button, a[href]")) if (!list.includes(c)) c.setAttribute("tabindex", "-1");
  }
  setStop(list, at);
}

/** Arrow keys, Home and End move the focus inside `box` (bind once). */
export function bindRoving(box, items, { horizontal = false } = {}) {
  if (!box) return;
  const keys = horizontal ? FLAT : KEYS;
  box.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const list = listOf(box, items);
    const i = list.indexOf(document.activeElement);
    if (i < 0) return;
    let j = null;
    if (e.key in keys) j = Math.max(0, Math.min(list.length - 1, i + keys[e.key]));
    else if (e.key === "Home") j = 0;
    else if (e.key === "End") j = list.length - 1;
    if (j === null) return;
    e.preventDefault();                             // also stops a radio's or a select's own arrow handling
    e.stopPropagation();
    box.dataset.roving = String(j);
    setStop(list, j);
    list[j].focus();
  });
  box.addEventListener("focusin", (e) => {          // a click (or a radio's Up/Down) also moves the group's Tab stop
    const list = listOf(box, items);
    const i = list.indexOf(e.target);
    if (i >= 0) {
      box.dataset.roving = String(i);
      setStop(list, i);
    }
  });
}
