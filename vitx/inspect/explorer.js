/* vitx attention explorer: plain JavaScript, no framework, no network.
 * Reads the JSON in #vitx-explorer-data (written by vitx/inspect/explorer.py), inflates the
 * arrays with the browser's DecompressionStream and draws one canvas per image and model.
 * Each panel exposes its state on data-* attributes (data-row: the 0..255 values drawn,
 * one per patch), which is what the browser test reads. */
(function () {
  "use strict";
  var root = document.getElementById("vitx-explorer");
  var source = document.getElementById("vitx-explorer-data");
  if (!root || !source) { return; }
  var data = JSON.parse(source.textContent);
  var lut = hexBytes(data.lut);
  var LEVELS = 15, SCALE_STEPS = 32, SIZE = 224, ALPHA = 0.5;

  function hexBytes(hex) {
    var out = new Uint8Array(hex.length / 2);
    for (var i = 0; i < out.length; i++) { out[i] = parseInt(hex.substr(2 * i, 2), 16); }
    return out;
  }

  function inflate(b64) {
    var binary = atob(b64), bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer().then(function (buffer) { return new Uint8Array(buffer); });
  }

  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (k) { node.setAttribute(k, attributes[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function select(options, cls, label) {
    var wrap = element("label", {"class": "vx-control"}, label + " ");
    var node = element("select", {"class": cls});
    options.forEach(function (o) { node.appendChild(element("option", {value: o[0]}, o[1])); });
    wrap.appendChild(node);
    return [wrap, node];
  }

  function Panel(name, model, index, parent) {
    var self = this;
    this.name = name; this.model = model; this.index = index; this.item = model.images[index];
    this.patches = model.grid[0] * model.grid[1];
    this.rowBytes = Math.ceil(this.patches / 2);
    this.state = {mode: "attention", layer: model.layers - 1, head: "mean", token: Object.keys(model.prefix)[0] || "patch",
                  patch: Math.floor(this.patches / 2), pinned: false, hover: null};
    var node = this.node = element("div", {"class": "vx-panel", "data-model": name, "data-image": String(index)});
    node.appendChild(element("div", {"class": "vx-title"}, name + ": " + this.item.label + " (" +
      (100 * this.item.probability).toFixed(1) + " %)"));
    this.canvas = element("canvas", {"class": "vx-canvas"});
    node.appendChild(this.canvas);
    var controls = element("div", {"class": "vx-controls"});
    var modes = [["attention", "attention"]].concat(model.methods.map(function (m) { return [m, m]; }));
    var layers = [], heads = [["mean", "mean of heads"], ["max", "max of heads"]], tokens = [];
    for (var l = 0; l < model.layers; l++) { layers.push([String(l), String(l)]); }
    for (var h = 0; h < model.heads; h++) { heads.push([String(h), "head " + h]); }
    Object.keys(model.prefix).forEach(function (t) { tokens.push([t, t + " token"]); });
    tokens.push(["patch", "a patch (hover / click)"]);
    var pieces = [select(modes, "vx-mode", "show"), select(layers, "vx-layer", "layer"),
                  select(heads, "vx-head", "head"), select(tokens, "vx-token", "from")];
    pieces.forEach(function (p) { controls.appendChild(p[0]); });
    this.modeSelect = pieces[0][1]; this.layerSelect = pieces[1][1];
    this.headSelect = pieces[2][1]; this.tokenSelect = pieces[3][1];
    this.layerSelect.value = String(this.state.layer);
    this.headSelect.value = this.state.head;
    this.tokenSelect.value = this.state.token;
    node.appendChild(controls);
    this.caption = element("div", {"class": "vx-caption"});
    node.appendChild(this.caption);
    parent.appendChild(node);

    this.modeSelect.addEventListener("change", function () { self.state.mode = this.value; self.draw(); });
    this.layerSelect.addEventListener("change", function () { self.state.layer = +this.value; self.draw(); });
    this.headSelect.addEventListener("change", function () { self.state.head = this.value; self.draw(); });
    this.tokenSelect.addEventListener("change", function () {
      self.state.token = this.value; self.state.pinned = false; self.draw();
    });
    this.canvas.addEventListener("mousemove", function (event) {
      if (self.state.pinned || self.state.mode !== "attention") { return; }
      var patch = self.patchAt(event);
      if (patch !== self.state.hover) { self.state.hover = patch; self.draw(); }
    });
    this.canvas.addEventListener("mouseleave", function () {
      if (self.state.hover !== null) { self.state.hover = null; self.draw(); }
    });
    this.canvas.addEventListener("click", function (event) {
      var patch = self.patchAt(event);
      if (self.state.pinned && self.state.token === "patch" && self.state.patch === patch) {
        self.state.pinned = false;
      } else {
        self.state.pinned = true; self.state.token = "patch"; self.state.patch = patch;
        self.tokenSelect.value = "patch";
        if (self.state.mode !== "attention") { self.state.mode = "attention"; self.modeSelect.value = "attention"; }
      }
      self.state.hover = null;
      self.draw();
    });
  }

  Panel.prototype.load = function () {
    var self = this, item = this.item, jobs = [inflate(item.attention), inflate(item.scales)];
    this.model.methods.forEach(function (m) { jobs.push(inflate(item.methods[m])); });
    var image = new Image();
    jobs.push(new Promise(function (resolve) { image.onload = resolve; image.src = "data:image/png;base64," + item.view; }));
    return Promise.all(jobs).then(function (done) {
      self.attention = done[0]; self.scales = done[1]; self.maps = {};
      self.model.methods.forEach(function (m, i) { self.maps[m] = done[2 + i]; });
      self.image = image;
      var width = SIZE, height = Math.round(SIZE * image.height / image.width);
      self.canvas.width = width; self.canvas.height = height;
      self.draw();
    });
  };

  Panel.prototype.patchAt = function (event) {
    var box = this.canvas.getBoundingClientRect(), grid = this.model.grid;
    var column = Math.min(grid[1] - 1, Math.max(0, Math.floor((event.clientX - box.left) / box.width * grid[1])));
    var row = Math.min(grid[0] - 1, Math.max(0, Math.floor((event.clientY - box.top) / box.height * grid[0])));
    return row * grid[1] + column;
  };

  Panel.prototype.queryToken = function () {
    var s = this.state;
    if (s.mode === "attention" && s.hover !== null && !s.pinned) { return {name: "patch " + s.hover, patch: s.hover}; }
    if (s.token === "patch") { return {name: "patch " + s.patch, patch: s.patch}; }
    return {name: s.token, patch: null};
  };

  Panel.prototype.row = function () {
    var m = this.model, s = this.state, values = new Float64Array(this.patches), q = this.queryToken();
    if (s.mode !== "attention") {
      var map = this.maps[s.mode];
      for (var k = 0; k < this.patches; k++) { values[k] = map[k] / 255; }
      return values;
    }
    var token = q.patch === null ? m.prefix[q.name] : m.patch_start + q.patch;
    var heads = s.head === "mean" || s.head === "max" ? null : [+s.head];
    if (heads === null) { heads = []; for (var h = 0; h < m.heads; h++) { heads.push(h); } }
    for (var i = 0; i < heads.length; i++) {
      var site = (s.layer * m.heads + heads[i]) * m.tokens + token;
      var weight = heads.length > 1 ? Math.exp(-this.scales[site] / SCALE_STEPS) : 1;
      var offset = site * this.rowBytes;
      for (var p = 0; p < this.patches; p++) {
        var byte = this.attention[offset + (p >> 1)], level = p & 1 ? byte >> 4 : byte & 15;
        var value = Math.pow(level / LEVELS, 2) * weight;
        if (s.head === "max") { values[p] = Math.max(values[p], value); } else { values[p] += value; }
      }
    }
    if (heads.length > 1) {
      var peak = 0;
      for (var j = 0; j < this.patches; j++) { peak = Math.max(peak, values[j]); }
      for (var k2 = 0; k2 < this.patches && peak > 0; k2++) { values[k2] /= peak; }
    }
    return values;
  };

  Panel.prototype.draw = function () {
    if (!this.image) { return; }
    var s = this.state, m = this.model, ctx = this.canvas.getContext("2d");
    var width = this.canvas.width, height = this.canvas.height, grid = m.grid;
    var values = this.row(), shown = [], q = this.queryToken();
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = 1;
    ctx.drawImage(this.image, 0, 0, width, height);
    ctx.globalAlpha = ALPHA;
    for (var p = 0; p < this.patches; p++) {
      var v = Math.max(0, Math.min(255, Math.round(values[p] * 255)));
      shown.push(v);
      var r = Math.floor(p / grid[1]), c = p % grid[1];
      var x0 = Math.round(c * width / grid[1]), x1 = Math.round((c + 1) * width / grid[1]);
      var y0 = Math.round(r * height / grid[0]), y1 = Math.round((r + 1) * height / grid[0]);
      ctx.fillStyle = "rgb(" + lut[3 * v] + "," + lut[3 * v + 1] + "," + lut[3 * v + 2] + ")";
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    }
    ctx.globalAlpha = 1;
    if (s.mode === "attention" && q.patch !== null) {
      var pr = Math.floor(q.patch / grid[1]), pc = q.patch % grid[1];
      ctx.lineWidth = 2; ctx.strokeStyle = "#fff";
      ctx.strokeRect(pc * width / grid[1] + 1, pr * height / grid[0] + 1, width / grid[1] - 2, height / grid[0] - 2);
    }
    var node = this.node;
    node.setAttribute("data-mode", s.mode);
    node.setAttribute("data-layer", String(s.layer));
    node.setAttribute("data-head", s.head);
    node.setAttribute("data-query", q.patch === null ? q.name : "patch:" + q.patch);
    node.setAttribute("data-row", shown.join(","));
    this.caption.textContent = s.mode === "attention"
      ? "attention from " + q.name + (s.pinned ? " (pinned)" : "") + ", layer " + s.layer + ", " +
        (s.head === "mean" || s.head === "max" ? s.head + " of " + m.heads + " heads" : "head " + s.head)
      : s.mode + " map for the predicted class";
  };

  root.textContent = "";
  var names = Object.keys(data.models);
  var count = Math.min.apply(null, names.map(function (n) { return data.models[n].images.length; }));
  var panels = [];
  for (var i = 0; i < count; i++) {
    var card = element("div", {"class": "vx-image"});
    card.appendChild(element("h3", {}, data.models[names[0]].images[i].source));
    var row = element("div", {"class": "vx-row"});
    card.appendChild(row);
    root.appendChild(card);
    names.forEach(function (name) { panels.push(new Panel(name, data.models[name], i, row)); });
  }
  panels.reduce(function (previous, panel) { return previous.then(function () { return panel.load(); }); },
                Promise.resolve()).then(function () { root.setAttribute("data-ready", "1"); },
                                        function (error) { root.setAttribute("data-error", String(error)); });
}());
