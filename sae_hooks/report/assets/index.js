(function () {
  var X = SAE.index, table = document.getElementById("index"), body = table.tBodies[0];
  var count = document.getElementById("shown-count"), search = document.getElementById("search");
  var PAGE = 200, all = [], order = [], shown = PAGE, mode = "all";
  for (var i = 0; i < X.n; i++) all.push(i);
  var value = function (key, i) { return key === "id" ? i : X[key] ? X[key][i] : 0; };
  var row = function (i) {
    var tops = SAE.el("td", {"class": "text"}, (X.top[i] || []).map(function (t) { return SAE.chip(t); }));
    var spark = X.spark ? SAE.sparkline(X.spark[i] || "") : "";
    var cells = [SAE.el("td", {}, [SAE.el("a", {href: SAE.latentHref(i)}, [String(i)])])];
    if (X.density) {
      var dense = SAE.isDense(i) ? [SAE.el("span", {"class": "badge dense", title: SAE.denseTitle()}, ["dense"])] : [];
      cells.push(SAE.el("td", {}, [SAE.pct(X.density[i])].concat(dense)), SAE.el("td", {}, [SAE.fmt(X.max[i])]),
                 SAE.el("td", {}, [SAE.fmt(X.mean[i])]));
    } else { cells.push(SAE.el("td"), SAE.el("td"), SAE.el("td")); }
    cells.push(SAE.el("td", {}, [SAE.fmt(X.norm[i])]), tops, SAE.el("td", {}, spark ? [spark] : []));
    return SAE.el("tr", {"data-id": i}, cells);
  };
  var draw = function () {
    body.textContent = "";
    var frag = document.createDocumentFragment();
    order.slice(0, shown).forEach(function (i) { frag.appendChild(row(i)); });
    body.appendChild(frag);
    count.textContent = Math.min(shown, order.length) + " shown of " + order.length +
      (mode === "random" ? " randomly sampled" : " matching") + " (" + X.n + " latents)";
    document.getElementById("more").hidden = shown >= order.length;
  };
  var filter = function () {
    var q = search.value.trim().replace(/^#/, ""), low = q.toLowerCase();
    mode = "all";
    order = q === "" ? all.slice() : all.filter(function (i) {
      if (String(i).indexOf(q) === 0) return true;
      return (X.top[i] || []).some(function (t) { return SAE.text(t).toLowerCase().indexOf(low) >= 0; });
    });
    shown = PAGE; draw();
  };
  Array.prototype.forEach.call(table.querySelectorAll("th[data-key]"), function (th) {
    var sign = 1;
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      sign = -sign;
      order.sort(function (a, b) { return sign * (value(key, a) - value(key, b)) || a - b; });
      draw();
    });
  });
  search.addEventListener("input", filter);
  search.addEventListener("keydown", function (e) {
    var q = parseInt(search.value.replace(/^#/, ""), 10);
    if (e.key === "Enter" && q >= 0 && q < X.n) location.href = SAE.latentHref(q);
  });
  document.getElementById("more").addEventListener("click", function () { shown += PAGE; draw(); });
  document.getElementById("show-all").addEventListener("click", function () { search.value = ""; filter(); });
  document.getElementById("show-random").addEventListener("click", function () {
    var live = all.filter(function (i) { return !X.fires || X.fires[i] > 0; }), pick = [];
    while (pick.length < Math.min(24, live.length)) {
      var j = live[Math.floor(Math.random() * live.length)];
      if (pick.indexOf(j) < 0) pick.push(j);
    }
    order = pick; mode = "random"; shown = PAGE; draw();
  });
  if (X.density) {  // densest first, as researchers usually start, but dense latents last
    order = all.slice().sort(function (a, b) {
      return (SAE.isDense(a) - SAE.isDense(b)) || X.density[b] - X.density[a] || a - b;
    });
  } else { order = all.slice(); }
  draw();
  SAE.ready();
})();
