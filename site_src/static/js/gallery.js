// Gallery index: client-side search over title, text and tags, and tag-chip filters.
const $ = (id) => document.getElementById(id);

function setup() {
  const input = $("search");
  const cards = [...document.querySelectorAll("#cards .card")];
  const chips = [...document.querySelectorAll("#tag-chips .chip")];
  const count = $("result-count");
  const none = $("no-results");
  if (!input) return;

  // index the text once (textContent: what the page shows, already unescaped)
  const index = cards.map((card) => ({
    card,
    tags: (card.dataset.tags || "").split("\n").filter(Boolean),
    text: [".card-title", ".card-text", ".card-note"].map((s) => card.querySelector(s)?.textContent || "")
      .concat((card.dataset.tags || "").split("\n")).join("\n").toLowerCase(),
  }));

  const active = new Set();

  function readHash() {
    const q = new URLSearchParams(location.hash.replace(/^#/, ""));
    input.value = q.get("q") || "";
    active.clear();
    for (const t of (q.get("tags") || "").split(",").filter(Boolean)) active.add(t);
  }

  function writeHash() {
    const q = new URLSearchParams();
    if (input.value.trim()) q.set("q", input.value.trim());
    if (active.size) q.set("tags", [...active].join(","));
    const h = q.toString();
    history.replaceState(null, "", h ? "#" + h : location.pathname + location.search);
  }

  function apply() {
    const terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const { card, tags, text } of index) {
      const ok = terms.every((t) => text.includes(t)) && [...active].every((t) => tags.includes(t));
      card.hidden = !ok;
      if (ok) shown++;
    }
    for (const chip of chips) chip.setAttribute("aria-pressed", String(active.has(chip.dataset.tag)));
    count.textContent = shown === cards.length ? `${cards.length} prompts` : `${shown} of ${cards.length} prompts`;
    none.hidden = shown > 0;
  }

  input.addEventListener("input", () => { apply(); writeHash(); });
  for (const chip of chips) {
    chip.addEventListener("click", () => {
      const t = chip.dataset.tag;
      if (active.has(t)) active.delete(t); else active.add(t);
      apply();
      writeHash();
    });
  }
  window.addEventListener("hashchange", () => { readHash(); apply(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== input) { e.preventDefault(); input.focus(); }
  });
  readHash();
  apply();
  document.documentElement.dataset.galleryReady = "1";
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
else setup();
