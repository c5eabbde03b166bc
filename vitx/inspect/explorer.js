/* vitx attention explorer: plain JavaScript, no framework, no network.
 * Reads the JSON in #vitx-explorer-data (written by vitx/inspect/explorer.py), inflates the
 * arrays with the browser's DecompressionStream and draws one canvas per image and model.
 * Each panel exposes its state on data-* attributes (data-row: the 0..255 values drawn,
 * one per patch, or per token of the layer's stage for a hierarchical model), which is what
 * the browser test reads. A hierarchical model (model.stages) is drawn on its first grid:
 * every patch takes the value of the stage token that covers it (stages[s].cover), or for a
 * pooled layer (windows[l].pooled) of the pooled key that covers it (key_covers). */
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

  function int32(bytes) { return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4); }

  function headOptions(count) {
    var heads = [["mean", "mean of heads"], ["max", "max of heads"]];
    for (var h = 0; h < count; h++) { heads.push([String(h), "head " + h]); }
    return heads;
  }

  function fill(node, options) {
    node.textContent = "";
    options.forEach(function (o) { node.appendChild(element("option", {value: o[0]}, o[1])); });
  }

  // Add one stored row (count 4-bit levels from byte `offset`) times `weight` to values[keys[j]]
  // (keys: the grid token of each key slot, -1 = none; null = the identity).
  function addRow(values, bytes, offset, count, keys, weight, useMax) {
    for (var j = 0; j < count; j++) {
      var key = keys ? keys[j] : j;
      if (key < 0) { continue; }
      var byte = bytes[offset + (j >> 1)], level = j & 1 ? byte >> 4 : byte & 15;
      var value = Math.pow(level / LEVELS, 2) * weight;
      values[key] = useMax ? Math.max(values[key], value) : values[key] + value;
    }
  }

  function Panel(name, model, index, parent) {
    var self = this;
    this.name = name; this.model = model; this.index = index; this.item = model.images[index];
    this.patches = model.grid[0] * model.grid[1];
    this.rowBytes = Math.ceil(this.patches / 2);
    this.staged = !!model.stages;
    this.state = {mode: "attention", layer: model.layers - 1, head: "mean", token: Object.keys(model.prefix)[0] || "patch",
                  patch: Math.floor(this.patches / 2), pinned: false, hover: null};
    var node = this.node = element("div", {"class": "vx-panel", "data-model": name, "data-image": String(index)});
    node.appendChild(element("div", {"class": "vx-title"}, name + ": " + this.item.label + " (" +
      (100 * this.item.probability).toFixed(1) + " %)"));
    this.canvas = element("canvas", {"class": "vx-canvas"});
    node.appendChild(this.canvas);
    var controls = element("div", {"class": "vx-controls"});
    var modes = [["attention", "attention"]].concat(model.methods.map(function (m) { return [m, m]; }));
    var layers = [], tokens = [], heads = headOptions(this.headCount(this.state.layer));
    for (var l = 0; l < model.layers; l++) { layers.push([String(l), this.staged ? model.windows[l].label : String(l)]); }
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
    this.layerSelect.addEventListener("change", function () {
      var before = self.headCount(self.state.layer);
      self.state.layer = +this.value;
      if (self.headCount(self.state.layer) !== before) {  // a stage with other heads: rebuild the list
        fill(self.headSelect, headOptions(self.headCount(self.state.layer)));
        if (!(self.state.head in {mean: 1, max: 1}) && +self.state.head >= self.headCount(self.state.layer)) {
          self.state.head = "mean";
        }
        self.headSelect.value = self.state.head;
      }
      self.draw();
    });
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

  Panel.prototype.headCount = function (layer) {
    return this.staged ? this.model.windows[layer].heads : this.model.heads;
  };

  // A hierarchical model's geometry, inflated once per model: each stage's cover, each pooled
  // key grid's cover and, per window partition, the grid token of every slot and the slot of
  // every grid token.
  function geometry(model) {
    if (!model.stages || model.geometry) { return Promise.resolve(model.geometry); }
    var keyCovers = model.key_covers || [], stages = model.stages.length, keys = keyCovers.length;
    var jobs = model.stages.map(function (s) { return inflate(s.cover); })
      .concat(keyCovers.map(function (c) { return inflate(c); }))
      .concat(model.indices.map(function (i) { return inflate(i); }));
    return Promise.all(jobs).then(function (done) {
      var covers = done.slice(0, stages).map(int32);
      var pooledCovers = done.slice(stages, stages + keys).map(int32);
      var partitions = done.slice(stages + keys).map(function (bytes, k) {
        var index = int32(bytes), grid = model.stages[model.windows.filter(function (w) {
          return w.index === k; })[0].stage].grid, slot = new Int32Array(grid[0] * grid[1]).fill(-1);
        for (var j = 0; j < index.length; j++) { if (index[j] >= 0) { slot[index[j]] = j; } }
        return {index: index, slot: slot};
      });
      model.geometry = {covers: covers, keyCovers: pooledCovers, partitions: partitions};
      return model.geometry;
    });
  }

  Panel.prototype.load = function () {
    var self = this, item = this.item, staged = this.staged, parts = [].concat(item.attention, item.scales);
    var jobs = [geometry(this.model)].concat(parts.map(inflate));
    this.model.methods.forEach(function (m) { jobs.push(inflate(item.methods[m])); });
    var image = new Image();
    jobs.push(new Promise(function (resolve) { image.onload = resolve; image.src = "data:image/png;base64," + item.view; }));
    return Promise.all(jobs).then(function (done) {
      var half = parts.length / 2;
      self.geometry = done[0];
      self.attention = staged ? done.slice(1, 1 + half) : done[1];
      self.scales = staged ? done.slice(1 + half, 1 + parts.length) : done[2];
      self.maps = {};
      self.model.methods.forEach(function (m, i) { self.maps[m] = done[1 + parts.length + i]; });
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

  // What the current view reads (a hierarchical model's layer): the stage token under the
  // query patch (`own`: which stage token covers each first-grid patch) or the prefix token;
  // a window layer's slot and window keys; a pooled layer's query row (prefix first, -1: the
  // layer has no such token); and which key covers each patch of the first grid (`cover`).
  Panel.prototype.place = function () {
    var s = this.state, q = this.queryToken();
    if (!this.staged || s.mode !== "attention") { return {count: this.patches, cover: null, token: q.patch}; }
    var layer = this.model.windows[s.layer], own = this.geometry.covers[layer.stage];
    var token = q.patch === null ? q.name : own[q.patch];
    if (layer.pooled) {
      var prefix = q.patch === null ? this.model.prefix[q.name] : -1;
      return {count: layer.keys[0] * layer.keys[1], cover: this.geometry.keyCovers[layer.key_cover], own: own,
              token: token, layer: layer, keys: null,
              query: q.patch === null ? (prefix < layer.prefix ? prefix : -1) : layer.prefix + token};
    }
    var part = this.geometry.partitions[layer.index], grid = this.model.stages[layer.stage].grid;
    var slot = q.patch === null ? -1 : part.slot[token], window = Math.floor(slot / layer.n);
    return {count: grid[0] * grid[1], cover: own, own: own, token: token, layer: layer, slot: slot, query: slot,
            keys: slot < 0 ? new Int32Array(0) : part.index.subarray(window * layer.n, (window + 1) * layer.n)};
  };

  Panel.prototype.row = function (place) {
    var m = this.model, s = this.state, values = new Float64Array(place.count), q = this.queryToken();
    if (s.mode !== "attention") {
      var map = this.maps[s.mode];
      for (var k = 0; k < this.patches; k++) { values[k] = map[k] / 255; }
      return values;
    }
    if (this.staged && place.query < 0) { return values; }  // a prefix token this layer does not have
    var heads = s.head === "mean" || s.head === "max" ? null : [+s.head];
    if (heads === null) { heads = []; for (var h = 0; h < this.headCount(s.layer); h++) { heads.push(h); } }
    for (var i = 0; i < heads.length; i++) {
      var layer = place.layer, site, scales, bytes, width, count;
      if (this.staged && layer.pooled) {  // the query's row over the key grid
        site = heads[i] * layer.queries + place.query;
        count = layer.keys[0] * layer.keys[1]; width = Math.ceil(count / 2);
        scales = this.scales[s.layer]; bytes = this.attention[s.layer];
      } else if (this.staged) {  // the slot's row of its window's block: n keys, scattered to the window's tokens
        site = (heads[i] * layer.windows + Math.floor(place.slot / layer.n)) * layer.n + place.slot % layer.n;
        scales = this.scales[s.layer]; bytes = this.attention[s.layer]; width = Math.ceil(layer.n / 2); count = layer.n;
      } else {
        var token = q.patch === null ? m.prefix[q.name] : m.patch_start + q.patch;
        site = (s.layer * m.heads + heads[i]) * m.tokens + token;
        scales = this.scales; bytes = this.attention; width = this.rowBytes; count = this.patches;
      }
      var weight = heads.length > 1 ? Math.exp(-scales[site] / SCALE_STEPS) : 1;
      addRow(values, bytes, site * width, count, this.staged ? place.keys : null, weight, s.head === "max");
    }
    if (heads.length > 1) {
      var peak = 0;
      for (var j = 0; j < values.length; j++) { peak = Math.max(peak, values[j]); }
      for (var k2 = 0; k2 < values.length && peak > 0; k2++) { values[k2] /= peak; }
    }
    return values;
  };

  Panel.prototype.draw = function () {
    if (!this.image) { return; }
    var s = this.state, m = this.model, ctx = this.canvas.getContext("2d");
    var width = this.canvas.width, height = this.canvas.height, grid = m.grid;
    var place = this.place(), values = this.row(place), q = this.queryToken(), cover = place.cover;
    var shown = Array.prototype.map.call(values, function (v) { return Math.max(0, Math.min(255, Math.round(v * 255))); });
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = 1;
    ctx.drawImage(this.image, 0, 0, width, height);
    ctx.globalAlpha = ALPHA;
    for (var p = 0; p < this.patches; p++) {
      var v = cover ? (cover[p] < 0 ? 0 : shown[cover[p]]) : shown[p];
      var r = Math.floor(p / grid[1]), c = p % grid[1];
      var x0 = Math.round(c * width / grid[1]), x1 = Math.round((c + 1) * width / grid[1]);
      var y0 = Math.round(r * height / grid[0]), y1 = Math.round((r + 1) * height / grid[0]);
      ctx.fillStyle = "rgb(" + lut[3 * v] + "," + lut[3 * v + 1] + "," + lut[3 * v + 2] + ")";
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    }
    ctx.globalAlpha = 1;
    if (s.mode === "attention" && q.patch !== null && cover) {  // the window (dashed), then the token
      var inWindow = {}, own = place.own;
      if (place.keys) {
        Array.prototype.forEach.call(place.keys, function (key) { inWindow[key] = true; });
        this.outline(function (p) { return inWindow[own[p]] === true; }, "#ff0", [4, 3]);
      }
      this.outline(function (p) { return own[p] === place.token; }, "#fff", []);
    } else if (s.mode === "attention" && q.patch !== null) {
      this.outline(function (p) { return p === q.patch; }, "#fff", []);
    }
    var node = this.node;
    node.setAttribute("data-mode", s.mode);
    node.setAttribute("data-layer", String(s.layer));
    node.setAttribute("data-head", s.head);
    node.setAttribute("data-query", q.patch === null ? q.name : "patch:" + q.patch);
    node.setAttribute("data-row", shown.join(","));
    if (cover) {
      node.setAttribute("data-token", String(place.token));
      if (place.keys) {
        node.setAttribute("data-window", Array.prototype.filter.call(place.keys, function (k) { return k >= 0; }).join(","));
      } else {
        node.removeAttribute("data-window");
      }
    }
    var where = this.staged ? m.windows[s.layer].label : "layer " + s.layer;
    this.caption.textContent = s.mode === "attention"
      ? "attention from " + q.name + (cover && q.patch !== null ? " (token " + place.token + " of its stage" +
        (place.keys ? "; its window dashed)" : ")") : "") +
        (place.query < 0 ? " (not in this layer)" : "") +
        (s.pinned ? " (pinned)" : "") + ", " + where + ", " +
        (s.head === "mean" || s.head === "max" ? s.head + " of " + this.headCount(s.layer) + " heads" : "head " + s.head)
      : s.mode + " map for the predicted class";
  };

  // Outline the set of first-grid cells `inside(p)`: each cell edge whose neighbour is outside
  // (a shifted window may wrap around the grid: it is drawn as the pieces it has).
  Panel.prototype.outline = function (inside, colour, dash) {
    var grid = this.model.grid, ctx = this.canvas.getContext("2d");
    var sx = this.canvas.width / grid[1], sy = this.canvas.height / grid[0];
    ctx.lineWidth = 2; ctx.strokeStyle = colour; ctx.setLineDash(dash);
    ctx.beginPath();
    for (var p = 0; p < this.patches; p++) {
      if (!inside(p)) { continue; }
      var r = Math.floor(p / grid[1]), c = p % grid[1];
      var edges = [[r > 0 && inside(p - grid[1]), c, r, c + 1, r], [r < grid[0] - 1 && inside(p + grid[1]), c, r + 1, c + 1, r + 1],
                   [c > 0 && inside(p - 1), c, r, c, r + 1], [c < grid[1] - 1 && inside(p + 1), c + 1, r, c + 1, r + 1]];
      edges.forEach(function (e) {
        if (!e[0]) { ctx.moveTo(e[1] * sx, e[2] * sy); ctx.lineTo(e[3] * sx, e[4] * sy); }
      });
    }
    ctx.stroke();
    ctx.setLineDash([]);
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
