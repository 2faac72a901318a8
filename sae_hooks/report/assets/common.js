/* Shared helpers. Every text from the data goes through textContent, never innerHTML. */
var SAE = window.SAE = window.SAE || {};
SAE.NS = "http://www.w3.org/2000/svg";
SAE.el = function (tag, attrs, kids) {
  var e = tag.indexOf("svg:") === 0 ? document.createElementNS(SAE.NS, tag.slice(4))
                                   : document.createElement(tag);
  Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
  (kids || []).forEach(function (k) {
    e.appendChild(typeof k === "string" || typeof k === "number" ? document.createTextNode(String(k)) : k);
  });
  return e;
};
SAE.text = function (id) {
  var t = SAE.tokens && SAE.tokens[id];
  if (t === undefined) { t = id < 0 ? "" : "#" + id; }
  return t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
};
/* A token on its own (lists, not contexts): a leading space shows as a marker. */
SAE.chip = function (id, cls, title) {
  var t = SAE.text(id).replace(/^ /, "\u2423");
  return SAE.el("span", {"class": "tok " + (cls || ""), title: title || ""}, [t === "" ? "\u2205" : t]);
};
SAE.fmt = function (x, digits) { return Number(x).toPrecision(digits || 3).replace(/\.?0+(e|$)/, "$1"); };
SAE.pct = function (x) { return (100 * x).toPrecision(3) + "%"; };
SAE.latentHref = function (i) { return "latent.html?id=" + i; };
/* Dense: firing on more than dense_above of the rows (metrics.DENSE_FRACTION, as eval.json
   and `ablate --dense-above` count it). */
SAE.isDense = function (i) { var X = SAE.index; return X.density ? X.density[i] > X.dense_above : false; };
SAE.denseTitle = function () { return "fires on more than " + SAE.pct(SAE.index.dense_above) + " of the rows"; };
SAE.sparkline = function (digits) {
  var w = 64, h = 16, n = digits.length, bars = [];
  for (var i = 0; i < n; i++) {
    var v = parseInt(digits[i], 36) / 35 * h;
    if (v > 0) bars.push(SAE.el("svg:rect", {x: i * w / n, y: h - v, width: w / n - 0.5, height: v}));
  }
  return SAE.el("svg:svg", {width: w, height: h, "class": "spark", fill: "#e8710a"}, bars);
};
/* Bars with labelled axes: x (value range) and y (count). */
SAE.histogram = function (counts, xMax, xLabel, yLabel, width, height) {
  width = width || 320; height = height || 130;
  var L = 40, B = 30, T = 6, R = 18, pw = width - L - R, ph = height - B - T;
  var top = Math.max.apply(null, counts.concat([1])), n = counts.length, kids = [];
  counts.forEach(function (c, i) {
    if (!c) return;
    var h = c / top * ph;
    kids.push(SAE.el("svg:rect", {x: L + i * pw / n, y: T + ph - h, width: Math.max(pw / n - 1, 0.5),
      height: h, fill: "#e8710a"}, [SAE.el("svg:title", {}, [String(c)])]));
  });
  var axis = {stroke: "#999"};
  kids.push(SAE.el("svg:line", Object.assign({x1: L, x2: L + pw, y1: T + ph, y2: T + ph}, axis)));
  kids.push(SAE.el("svg:line", Object.assign({x1: L, x2: L, y1: T, y2: T + ph}, axis)));
  [0, 0.5, 1].forEach(function (f) {
    kids.push(SAE.el("svg:text", {x: L + f * pw, y: T + ph + 12, "text-anchor": "middle"}, [SAE.fmt(f * xMax)]));
    kids.push(SAE.el("svg:text", {x: L - 4, y: T + ph - f * ph + 3, "text-anchor": "end"}, [String(Math.round(f * top))]));
  });
  kids.push(SAE.el("svg:text", {x: L + pw / 2, y: height - 3, "text-anchor": "middle", "class": "xlabel"}, [xLabel]));
  kids.push(SAE.el("svg:text", {x: 10, y: T + ph / 2, "text-anchor": "middle", "class": "ylabel",
    transform: "rotate(-90 10 " + (T + ph / 2) + ")"}, [yLabel]));
  return SAE.el("svg:svg", {"class": "chart", width: width, height: height, role: "img",
    "aria-label": "histogram of " + xLabel}, kids);
};
/* Loads a data file by a script tag: fetch() of file:// URLs is blocked, script tags are not. */
SAE.load = function (src, onerror) {
  var s = SAE.el("script", {src: src});
  s.onerror = onerror;
  document.body.appendChild(s);
};
/* body[data-ready] once drawn and every image settled; data-images "loaded/failed". */
SAE.ready = function () {
  var imgs = Array.prototype.slice.call(document.images), left = imgs.length, ok = 0, bad = 0;
  var done = function () {
    document.body.setAttribute("data-images", ok + "/" + bad);
    document.body.setAttribute("data-ms", Math.round(performance.now()));
    document.body.setAttribute("data-ready", "1");
  };
  if (!left) { done(); return; }
  imgs.forEach(function (img) {
    var settle = function () {
      if (img.complete && img.naturalWidth > 0) { ok++; } else { bad++; }
      if (--left === 0) done();
    };
    if (img.complete) { settle(); } else { img.onload = img.onerror = settle; }
  });
};
