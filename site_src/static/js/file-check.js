// A classic (non-module) script, so that it runs where module scripts do not: a page opened
// from file:// cannot load ES modules or fetch its data file. Say so, and what to do.
(function () {
  if (location.protocol !== "file:") return;
  function show() {
    var text = "This page was opened from a file (file://), so the browser blocks its scripts and data: "
      + "the search and the viewer cannot work. Serve the site folder instead: run `infoflow serve` "
      + "(or `python3 -m http.server` inside the folder), then open http://127.0.0.1:8000/.";
    var box = document.getElementById("error");
    if (!box) {
      box = document.createElement("p");
      box.className = "error-box";
      box.setAttribute("role", "alert");
      var content = document.getElementById("content") || document.body;
      content.insertBefore(box, content.firstChild);
    }
    box.textContent = text;
    box.hidden = false;
    box.id = "error";
    var loading = document.getElementById("loading");
    if (loading) loading.hidden = true;
    document.documentElement.setAttribute("data-file-protocol", "1");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", show);
  else show();
})();
