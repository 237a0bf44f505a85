// A roving tabindex (issue 24, item 9): a group of buttons is one Tab stop; the arrow keys,
// Home and End move between them. The group keeps which button was last focused across the
// re-renders that replace its buttons (data-roving holds its index).

const KEYS = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };

/** Make the `selector` items of `box` one Tab stop: call after every render of the box. */
export function applyRoving(box, selector) {
  const items = [...box.querySelectorAll(selector)].filter((b) => !b.disabled && !b.hidden);
  if (!items.length) return;
  const at = Math.min(items.length - 1, +(box.dataset.roving || 0));
  items.forEach((b, i) => b.setAttribute("tabindex", i === at ? "0" : "-1"));
}

/** Arrow keys, Home and End move the focus inside `box` (bind once). */
export function bindRoving(box, selector) {
  box.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const items = [...box.querySelectorAll(selector)].filter((b) => !b.disabled && !b.hidden);
    const i = items.indexOf(document.activeElement);
    if (i < 0) return;
    let j = null;
    if (e.key in KEYS) j = Math.max(0, Math.min(items.length - 1, i + KEYS[e.key]));
    else if (e.key === "Home") j = 0;
    else if (e.key === "End") j = items.length - 1;
    if (j === null) return;
    e.preventDefault();
    e.stopPropagation();
    box.dataset.roving = String(j);
    items.forEach((b, q) => b.setAttribute("tabindex", q === j ? "0" : "-1"));
    items[j].focus();
  });
  box.addEventListener("focusin", (e) => {          // a click also moves the group's Tab stop
    const items = [...box.querySelectorAll(selector)];
    const i = items.indexOf(e.target);
    if (i >= 0) {
      box.dataset.roving = String(i);
      items.forEach((b, q) => b.setAttribute("tabindex", q === i ? "0" : "-1"));
    }
  });
}
