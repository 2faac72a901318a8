(function () {
  var X = SAE.index, root = document.getElementById("latent"), el = SAE.el;
  var id = parseInt(new URLSearchParams(location.search).get("id"), 10);
  var fail = function (msg) { root.textContent = msg; SAE.ready(); };
  if (!(id >= 0 && id < X.n)) { fail("No latent " + location.search + ": ids run from 0 to " + (X.n - 1) + "."); return; }
  document.getElementById("title").textContent = "Latent " + id;
  document.title = "Latent " + id + " · " + X.run;
  var pager = document.getElementById("pager");
  if (id > 0) pager.appendChild(el("a", {href: SAE.latentHref(id - 1)}, ["\u2190 " + (id - 1)]));
  pager.appendChild(document.createTextNode(" latent " + id + " of " + X.n + " "));
  if (id < X.n - 1) pager.appendChild(el("a", {href: SAE.latentHref(id + 1)}, [(id + 1) + " \u2192"]));

  var context = function (ex, peak) {
    var kids = [el("span", {"class": "v"}, [SAE.fmt(ex.v)])];
    ex.t.forEach(function (tok, j) {
      var a = ex.a[j] || 0, text = SAE.text(tok);
      if (a > 0 || j === ex.c) {
        var span = el("span", {"class": "on" + (j === ex.c ? " max" : ""), title: SAE.fmt(a),
          style: "--a:" + Math.min(peak > 0 ? a / peak : 0, 1).toFixed(2)}, [text]);
        kids.push(span);
      } else { kids.push(document.createTextNode(text)); }
    });
    return el("div", {"class": "ctx", "data-doc": ex.d}, kids);
  };
  var patch = function (ex, peak) {
    var n = 0, cls = null, size = 160, g, cells = [];
    ex.p.forEach(function (p, j) { if (p > 0) n = Math.max(n, p); else cls = ex.a[j]; });
    g = Math.max(1, Math.ceil(Math.sqrt(n)));
    var cell = size / g, kids = [];
    ex.p.forEach(function (p, j) {
      if (p <= 0) return;
      var y = Math.floor((p - 1) / g), x = (p - 1) % g, a = peak > 0 ? Math.min(ex.a[j] / peak, 1) : 0;
      var attrs = {x: x * cell, y: y * cell, width: cell, height: cell, fill: "rgb(232,113,10)",
                   "fill-opacity": (a * (ex.img ? 0.6 : 1)).toFixed(2)};
      if (j === ex.c) { attrs.stroke = "#d93025"; attrs["stroke-width"] = 2; }
      kids.push(el("svg:rect", attrs, [el("svg:title", {}, ["patch " + (p - 1) + " (row " + y + ", col " + x + "): " + SAE.fmt(ex.a[j])])]));
    });
    var frame = el("div", {"class": "frame"}, ex.img ? [el("img", {src: ex.img, alt: "image " + ex.d})] : []);
    frame.appendChild(el("svg:svg", {width: size, height: size, viewBox: "0 0 " + size + " " + size}, kids));
    var top = ex.p[ex.c], where = top > 0 ? "patch " + (top - 1) : "CLS";
    var caption = "image " + ex.d + " · max " + SAE.fmt(ex.v) + " at " + where +
      (cls !== null && top > 0 ? " · CLS " + SAE.fmt(Math.max(cls, 0)) : "");
    return el("figure", {"class": "patch"}, [frame, el("figcaption", {}, [caption])]);
  };
  var neighbours = function (label, pairs, fmt) {
    return el("p", {}, [el("b", {}, [label + " "])].concat(pairs.map(function (p) {
      return el("span", {"class": "tok"}, [el("a", {href: SAE.latentHref(p[0])}, [String(p[0])]), " " + fmt(p[1])]);
    })));
  };
  var draw = function (d) {
    root.textContent = "";
    var abl = (X.ablated || {})[id] || [];
    var title = document.getElementById("title");
    if (SAE.isDense(id)) title.appendChild(el("span", {"class": "badge dense", title: SAE.denseTitle()}, ["dense"]));
    abl.forEach(function (name) { title.appendChild(el("span", {"class": "badge"}, ["ablated: " + name])); });
    var facts = [el("b", {}, ["decoder norm "]), SAE.fmt(X.norm[id])];
    if (X.density) {
      facts = [el("b", {}, ["density "]), SAE.pct(X.density[id]) + " (" + X.fires[id] + " of " + X.rows + " rows)" +
        (SAE.isDense(id) ? ": dense, " + SAE.denseTitle() : ""),
        el("br"), el("b", {}, ["max "]), SAE.fmt(X.max[id]), " \u00b7 ", el("b", {}, ["mean when firing "]),
        SAE.fmt(X.mean[id]), el("br")].concat(facts);
    }
    var stats = el("div", {"class": "stats"}, [el("div", {}, facts)]);
    if (d.hist) stats.appendChild(SAE.histogram(d.hist, d.hist_max, "activation", "rows"));
    root.appendChild(stats);
    if (d.up) {
      root.appendChild(el("p", {"class": "logits"}, [el("b", {}, ["promotes "])].concat(
        d.up.map(function (p) { return SAE.chip(p[0], "up", "+" + SAE.fmt(p[1])); }),
        [el("br"), el("b", {}, ["suppresses "])],
        d.down.map(function (p) { return SAE.chip(p[0], "down", SAE.fmt(p[1])); }))));
    }
    if (d.cos) root.appendChild(neighbours("nearest by decoder cosine", d.cos, function (v) { return v.toFixed(2); }));
    if (d.co && d.co.length) root.appendChild(neighbours("fires most with (share of its rows)", d.co, SAE.pct));
    var groups = [];
    (d.ex || []).forEach(function (ex) {
      var g = groups.length && groups[groups.length - 1].name === ex.g ? groups[groups.length - 1] : null;
      if (!g) { g = {name: ex.g, items: []}; groups.push(g); }
      g.items.push(ex);
    });
    if (!groups.length && X.density) root.appendChild(el("p", {"class": "muted"}, ["Never fires on these rows."]));
    groups.forEach(function (g) {
      var title = g.name === "top" ? "Top activations" : "Activation quantile " + g.name;
      root.appendChild(el("h3", {}, [title]));
      var peak = X.max ? X.max[id] : 1;
      var box = el("div", {"class": X.vision ? "patches" : "contexts"},
        g.items.map(function (ex) { return X.vision ? patch(ex, peak) : context(ex, peak); }));
      root.appendChild(box);
    });
    SAE.ready();
  };
  SAE.chunk = function (n, data) { if (data[id]) { draw(data[id]); } else { fail("No data for latent " + id + "."); } };
  SAE.load("data/latents/" + Math.floor(id / X.chunk) + ".js", function () { fail("Missing data file for latent " + id + "."); });
})();
