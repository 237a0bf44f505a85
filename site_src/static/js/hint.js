// The prompt pages' first-visit hint: shown until the reader closes it, then never again on
// this browser (localStorage). Where storage is blocked it shows, and closes for the page only.
const KEY = "infoflow-hint-closed";

function closed() {
  try { return localStorage.getItem(KEY) === "1"; } catch { return false; }
}

const box = document.getElementById("first-hint");
if (box && !closed()) {
  box.hidden = false;
  document.getElementById("first-hint-close").addEventListener("click", () => {
    box.hidden = true;
    try { localStorage.setItem(KEY, "1"); } catch { /* storage blocked: closed for this page */ }
  });
}
