// Dark mode: follows prefers-color-scheme; the toggle stores an explicit choice on <html data-theme>.
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

function setup() {
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
