// The classic script of a self-contained viewer page (infoflow/notebook.py): it turns the page's
// embedded modules (base64 of a zlib-compressed JSON list of [name, source], the entry last, each
// import naming its module as the bare specifier "infoflow-module/<name>") into blob: URLs, writes
// an import map from those names to the URLs (modules may import each other in a cycle), and
// imports the entry. Inlined into the page; the page's CSP allows this script by its hash, the
// import map by the page's nonce, and blob: URLs, which only a script already running here can make.
(function () {
  "use strict";
  var nonce = document.currentScript && document.currentScript.nonce;
  function fail(text) {
    var box = document.getElementById("error");
    if (box) { box.textContent = text; box.hidden = false; }
    var loading = document.getElementById("loading");
    if (loading) loading.hidden = true;
    document.documentElement.setAttribute("data-viewer-ready", "error");
  }
  function bytes(id) {
    var s = atob(document.getElementById(id).textContent.trim());
    var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  if (typeof DecompressionStream === "undefined") {
    fail("This browser cannot show the infoflow viewer (it has no DecompressionStream): open the output in a current Chrome, Firefox or Safari.");
    return;
  }
  var stream = new Blob([bytes("infoflow-modules")]).stream().pipeThrough(new DecompressionStream("deflate"));
  new Response(stream).text().then(function (text) {
    var imports = {}, mods = JSON.parse(text);
    mods.forEach(function (m) {
      imports["infoflow-module/" + m[0]] = URL.createObjectURL(new Blob([m[1]], { type: "text/javascript" }));
    });
    var map = document.createElement("script");
    map.type = "importmap";
    map.nonce = nonce;
    map.textContent = JSON.stringify({ imports: imports });
    document.head.appendChild(map);
    return import("infoflow-module/" + mods[mods.length - 1][0]);
  }).catch(function (e) {
    fail("The viewer could not start here (" + (e && e.message ? e.message : e) + "). This front end may block "
      + "scripts in outputs: save the view with d.save_html(\"fig.html\") and open that file in a browser.");
  });
})();
