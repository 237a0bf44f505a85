// Dark mode: follows prefers-color-scheme; the toggle stores an explicit choice on <html data-theme>.
// Every page loads this module, so it also makes the header's links one Tab stop (issue 24, item 9).
import { applyRoving, bindRoving } from "./roving.js";
const KEY = "infoflow-theme";
const root = document.documentElement;

function stored() {
  try { return localStorage.getItem(KEY); } catch { return null; }
}

export function isDark() {
  const t = root.dataset.theme;
  if (t === "dark") return true;
  if (t === "light") return false;
  return window.matchMedia("(prefers-color-scheme: dark)").matches;
}

const s = stored();
if (s === "dark" || s === "light") root.dataset.theme = s;

/** The brand and the site links: one Tab stop, the arrow keys move between them. */
function headerLinks() {
  const header = document.querySelector(".site-header");
  if (!header) return;
  const nav = header.querySelector(".site-nav");
  if (nav) nav.setAttribute("aria-label", "Site (arrow keys move between the links)");
  const links = ".brand, .site-nav a";
  applyRoving(header, links);
  bindRoving(header, links);
}

function setup() {
  headerLinks();
  const btn = document.getElementById("theme-toggle");
  if (!btn) return;
  const sync = () => btn.setAttribute("aria-pressed", String(isDark()));
  sync();
  btn.addEventListener("click", () => {
    const next = isDark() ? "light" : "dark";
    root.dataset.theme = next;
    try { localStorage.setItem(KEY, next); } catch { /* private mode */ }
    sync();
    window.dispatchEvent(new CustomEvent("infoflow-theme"));
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    sync();
    window.dispatchEvent(new CustomEvent("infoflow-theme"));
  });
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
else setup();
