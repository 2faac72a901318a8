"""The dashboard's static parts: stylesheet and script, inlined into every page.

The script only sorts and filters the index table and reports itself ready
(`body[data-ready]`); every card is plain HTML, readable with scripts off.
"""

CSS = """
:root { --hot: 232, 113, 10; font-family: system-ui, sans-serif; color: #202124; }
body { margin: 0 auto; max-width: 1100px; padding: 1em 1.5em 4em; line-height: 1.4; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.meta, .muted { color: #5f6368; font-size: .9em; }
table { border-collapse: collapse; font-size: .9em; }
th, td { padding: .25em .6em; text-align: right; border-bottom: 1px solid #eee; }
th:first-child, td:first-child, td.text { text-align: left; }
#index th[data-key] { cursor: pointer; user-select: none; white-space: nowrap; }
#index th[data-key]::after { content: " \\2195"; color: #aaa; }
#index-wrap { max-height: 420px; overflow: auto; border: 1px solid #eee; }
#search { font-size: 1em; padding: .3em .5em; width: 16em; margin: .5em 0; }
.card { border: 1px solid #dadce0; border-radius: 8px; padding: .6em 1em; margin: 1em 0; }
.card:target { box-shadow: 0 0 0 3px rgba(var(--hot), .6); }
.card h3 { margin: .2em 0; } .card h3 a { color: inherit; text-decoration: none; }
.stats { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-end; }
.chart text { font-size: 10px; fill: #5f6368; }
.ctx { font-family: ui-monospace, monospace; font-size: .85em; white-space: pre-wrap;
       word-break: break-all; margin: .15em 0; padding: .1em .3em; border-left: 3px solid #eee; }
.ctx span[style] { background: rgba(var(--hot), var(--a)); border-radius: 2px; }
.ctx .max { outline: 1.5px solid #d93025; }
.ctx .v { color: #5f6368; float: right; padding-left: 1em; }
.logits span { font-family: ui-monospace, monospace; font-size: .85em; background: #f1f3f4;
               border-radius: 3px; padding: 0 .3em; margin: 0 .15em; white-space: pre; }
.logits .up { background: #e6f4ea; } .logits .down { background: #fce8e6; }
.patches { display: flex; flex-wrap: wrap; gap: .6em; }
.patch { margin: 0; text-align: center; font-size: .8em; color: #5f6368; }
.badge { background: #fce8e6; color: #a50e0e; border-radius: 10px; padding: 0 .5em;
         font-size: .8em; margin-left: .5em; }
img.curves { max-width: 100%; }
"""

JS = """
(function () {
  var table = document.getElementById("index");
  var count = document.getElementById("shown-count");
  if (table) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var order = {};
    Array.prototype.forEach.call(table.querySelectorAll("th[data-key]"), function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-key");
        var sign = order[key] = -(order[key] || 1);
        rows.sort(function (a, b) {
          return sign * (parseFloat(a.getAttribute("data-" + key)) -
                         parseFloat(b.getAttribute("data-" + key)));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
    var search = document.getElementById("search");
    var show = function () {
      var q = search.value.replace(/^#/, "").trim();
      var shown = 0;
      rows.forEach(function (r) {
        var hit = q === "" || r.getAttribute("data-id").indexOf(q) === 0;
        r.hidden = !hit;
        shown += hit ? 1 : 0;
      });
      count.textContent = shown + " of " + rows.length + " latents";
    };
    search.addEventListener("input", show);
    search.addEventListener("keydown", function (e) {
      var q = search.value.replace(/^#/, "").trim();
      if (e.key === "Enter" && document.getElementById("latent-" + q)) {
        location.hash = "latent-" + q;
      }
    });
    show();
  }
  document.body.setAttribute("data-ready", "1");
})();
"""
