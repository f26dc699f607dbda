// rnnlab serve: draw a digit, ask POST /predict, and replay how the probabilities evolve as
// the recurrent network reads the image step by step. Plain JS and canvas, no dependencies.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const pad = $("pad"), ctx = pad.getContext("2d");
  const overlay = $("pad-overlay"), octx = overlay.getContext("2d");
  const seen = $("seen"), sctx = seen.getContext("2d");
  const heat = $("heatmap"), hctx = heat.getContext("2d");
  const slider = $("step-slider"), playButton = $("play");
  const SIZE = 28, BRUSH = 19, CLASSES = 10;
  const ACCENT = [79, 70, 229], HIGHLIGHT = "rgba(250, 204, 21, 0.95)";

  let info = { view: "rows", steps: 28, classes: CLASSES, permutation: null };
  let result = null; // the last answer of POST /predict
  let step = 0; // index into result.steps
  let uploaded = null; // the File shown on the pad, if the pad shows an upload
  let display = { x: 0, y: 0, s: 1 }; // source pixel -> pad pixel
  let drawing = false, hasInk = false, last = null, playing = null;
  let heatBase = null; // the heatmap without its cursor

  // ------------------------------------------------------------------ drawing
  function resetPad() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    hasInk = false;
    uploaded = null;
    display = { x: 0, y: 0, s: 1 };
    $("pad-hint").hidden = false;
    octx.clearRect(0, 0, overlay.width, overlay.height);
  }

  function position(event) {
    const box = pad.getBoundingClientRect();
    return { x: (event.clientX - box.left) * pad.width / box.width, y: (event.clientY - box.top) * pad.height / box.height };
  }

  function stroke(from, to) {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = BRUSH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }

  pad.addEventListener("pointerdown", (event) => {
    if (uploaded) resetPad(); // drawing after an upload starts a fresh drawing
    drawing = true;
    pad.setPointerCapture(event.pointerId);
    last = position(event);
    stroke(last, last);
    hasInk = true;
    $("pad-hint").hidden = true;
    octx.clearRect(0, 0, overlay.width, overlay.height);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) {
      const point = position(e);
      stroke(last, point);
      last = point;
    }
  });
  const endStroke = () => { drawing = false; };
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  $("clear").addEventListener("click", () => {
    stopPlaying();
    resetPad();
    hideError();
  });

  $("upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => {
      resetPad();
      const s = Math.min(pad.width / image.naturalWidth, pad.height / image.naturalHeight);
      display = { x: (pad.width - image.naturalWidth * s) / 2, y: (pad.height - image.naturalHeight * s) / 2, s };
      ctx.drawImage(image, display.x, display.y, image.naturalWidth * s, image.naturalHeight * s);
      URL.revokeObjectURL(url);
      uploaded = file;
      $("pad-hint").hidden = true;
      predict();
    };
    image.onerror = () => { // the browser cannot show it; the server may still read it (or explain why not)
      URL.revokeObjectURL(url);
      resetPad();
      uploaded = file;
      predict();
    };
    image.src = url;
  });

  // ------------------------------------------------------------------ talking to the server
  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }
  function hideError() { $("error").hidden = true; }

  async function predict() {
    hideError();
    if (!uploaded && !hasInk) {
      showError("Draw a digit first, or upload an image.");
      return;
    }
    const blob = uploaded || await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const form = new FormData();
    form.append("file", blob, uploaded ? uploaded.name : "drawing.png");
    $("predict").disabled = true;
    try {
      const response = await fetch("/predict", { method: "POST", body: form });
      const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      showResult(data);
    } catch (err) {
      showError(err.message || String(err));
    } finally {
      $("predict").disabled = false;
    }
  }
  $("predict").addEventListener("click", predict);

  async function loadInfo() {
    try {
      const response = await fetch("/info");
      info = await response.json();
    } catch (err) {
      $("model-info").textContent = "could not read the model's description";
      return;
    }
    const reads = info.view === "rows" ? `reads ${info.steps} rows of ${info.features} pixels`
      : `reads ${info.steps} pixels one at a time${info.view === "permuted-pixels" ? ", in a fixed random order" : ""}`;
    const accuracy = info.test_accuracy != null ? ` · test accuracy ${info.test_accuracy.toFixed(2)}%` : "";
    $("model-info").textContent = `${info.cell.toUpperCase()} ${info.layers}×${info.hidden}` +
      `${info.bidirectional ? " bidirectional" : ""}, readout ${info.readout} · ${reads}${accuracy}`;
    const unit = info.view === "rows" ? "row" : "pixel";
    $("unit-word").textContent = unit;
    $("unit-word2").textContent = unit;
    $("step-label").textContent = `After reading all ${info.steps} ${unit}s`;
    drawHeatmapBase();
    drawHeatmap();
  }

  // ------------------------------------------------------------------ showing a result
  function showResult(data) {
    stopPlaying();
    result = data;
    const n = data.steps.length;
    slider.max = String(n);
    slider.value = String(n);
    slider.disabled = false;
    playButton.disabled = false;
    step = n - 1;
    const p = data.probabilities[data.class];
    $("result-class").textContent = String(data.class);
    $("result-text").innerHTML = `It's ${info.class_names ? "" : "a "}<b>${escapeHtml(nameOf(data.class))}</b> — ` +
      `${(100 * p).toFixed(1)}% sure`;
    const second = ranked(data.probabilities)[1];
    $("result-sub").textContent = `runner-up: ${nameOf(second)} (${(100 * data.probabilities[second]).toFixed(1)}%)` +
      (data.inverted ? " · your image was dark on light, so it was inverted" : "");
    drawHeatmapBase();
    renderStep();
  }

  // A class as people know it: "2 Pullover" where the dataset names its classes, else the digit.
  function nameOf(c) { return info.class_names ? `${c} ${info.class_names[c]}` : String(c); }
  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]);
  }

  function ranked(probs) { return probs.map((p, c) => [p, c]).sort((a, b) => b[0] - a[0]).map((x) => x[1]); }

  // Which pixel the network read at a step, and whether a pixel has been read by then.
  function currentPixel(read) {
    if (info.view === "rows") return { row: read - 1, col: null };
    const index = info.view === "permuted-pixels" && info.permutation ? info.permutation[read - 1] : read - 1;
    return { row: Math.floor(index / SIZE), col: index % SIZE };
  }
  function readMask(read) {
    const mask = new Uint8Array(SIZE * SIZE);
    if (info.view === "rows") mask.fill(1, 0, read * SIZE);
    else if (info.view === "pixels") mask.fill(1, 0, read);
    else for (let i = 0; i < read; i++) mask[info.permutation ? info.permutation[i] : i] = 1;
    return mask;
  }

  function renderStep() {
    if (!result) return;
    const probs = result.steps[step];
    const read = result.steps_read[step];
    drawBars(probs);
    drawSeen(read);
    drawOverlay(read);
    drawHeatmap();
    const best = ranked(probs)[0];
    const where = info.view === "rows" ? `${read} of ${info.steps} rows`
      : `${read} of ${info.steps} pixels` + (info.view === "pixels" ? ` (row ${currentPixel(read).row + 1})` : "");
    $("step-label").innerHTML = `After reading ${where}: most likely <b>${escapeHtml(nameOf(best))}</b> (${(100 * probs[best]).toFixed(1)}%)`;
  }

  function drawBars(probs) {
    const bars = $("bars");
    if (!bars.children.length) buildBars();
    const best = ranked(probs)[0];
    probs.forEach((p, c) => {
      const bar = bars.children[c];
      bar.classList.toggle("top", c === best);
      bar.querySelector(".fill").style.height = `${Math.max(0.5, 100 * p)}%`;
      const label = bar.querySelector(".pct");
      label.textContent = p >= 0.015 ? `${Math.round(100 * p)}%` : "";
      label.style.bottom = `${Math.max(0.5, 100 * p)}%`;
      bar.title = `${nameOf(c)}: ${(100 * p).toFixed(2)}%`;
    });
  }
  function buildBars() {
    const bars = $("bars");
    const labels = document.createElement("div");
    labels.className = "bar-labels";
    for (let c = 0; c < CLASSES; c++) {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.innerHTML = '<span class="pct"></span><div class="fill" style="height:0.5%"></div>';
      bars.appendChild(bar);
      const label = document.createElement("span");
      label.textContent = String(c);
      labels.appendChild(label);
    }
    bars.after(labels);
  }

  function drawSeen(read) {
    const cell = seen.width / SIZE;
    const mask = readMask(read);
    const { row, col } = currentPixel(read);
    sctx.fillStyle = "#000";
    sctx.fillRect(0, 0, seen.width, seen.height);
    for (let r = 0; r < SIZE; r++) {
      for (let c = 0; c < SIZE; c++) {
        const v = result.image[r][c];
        if (mask[r * SIZE + c]) {
          sctx.fillStyle = `rgb(${v},${v},${v})`;
        } else { // not read yet: a dim blue-grey version
          sctx.fillStyle = `rgb(${43 + v * 0.25},${47 + v * 0.25},${69 + v * 0.3})`;
        }
        sctx.fillRect(c * cell, r * cell, cell, cell);
      }
    }
    sctx.strokeStyle = HIGHLIGHT;
    sctx.lineWidth = 2;
    if (info.view !== "permuted-pixels") sctx.strokeRect(1, row * cell + 1, seen.width - 2, cell - 2);
    if (col !== null) {
      sctx.fillStyle = HIGHLIGHT;
      sctx.fillRect(col * cell, row * cell, cell, cell);
    }
  }

  // The row being read, drawn on the user's own drawing (mapped back through the crop and scaling).
  function drawOverlay(read) {
    octx.clearRect(0, 0, overlay.width, overlay.height);
    const g = result.geometry;
    const toPad = (y, x) => [display.x + x * display.s, display.y + y * display.s];
    const [fx0, fy0] = toPad(g.origin[0], g.origin[1]);
    const [fx1, fy1] = toPad(g.origin[0] + SIZE / g.scale[0], g.origin[1] + SIZE / g.scale[1]);
    const rowHeight = (fy1 - fy0) / SIZE, colWidth = (fx1 - fx0) / SIZE;
    const { row, col } = currentPixel(read);
    octx.save();
    if (info.view !== "permuted-pixels") {
      const bandTop = fy0 + row * rowHeight;
      octx.fillStyle = "rgba(30, 34, 60, 0.55)"; // not read yet
      octx.fillRect(fx0, bandTop + rowHeight, fx1 - fx0, fy1 - bandTop - rowHeight);
      octx.fillStyle = "rgba(250, 204, 21, 0.30)";
      octx.fillRect(fx0, bandTop, fx1 - fx0, rowHeight);
      octx.strokeStyle = HIGHLIGHT;
      octx.lineWidth = 2;
      octx.strokeRect(fx0, bandTop, fx1 - fx0, rowHeight);
    }
    if (col !== null) {
      octx.fillStyle = HIGHLIGHT;
      octx.fillRect(fx0 + col * colWidth, fy0 + row * rowHeight, Math.max(2, colWidth), Math.max(2, rowHeight));
    }
    octx.setLineDash([5, 5]); // the 28x28 field the network sees
    octx.strokeStyle = "rgba(165, 180, 252, 0.7)";
    octx.lineWidth = 1;
    octx.strokeRect(fx0, fy0, fx1 - fx0, fy1 - fy0);
    octx.restore();
  }

  // ------------------------------------------------------------------ heatmap: classes x steps
  const H = { left: 24, top: 6, right: 6, bottom: 22 };
  function heatGeometry() {
    const n = result ? result.steps.length : info.steps;
    const w = heat.width - H.left - H.right, h = heat.height - H.top - H.bottom;
    return { n, w, h, colW: w / n, rowH: h / CLASSES };
  }

  function drawHeatmapBase() {
    const base = document.createElement("canvas");
    base.width = heat.width;
    base.height = heat.height;
    const c = base.getContext("2d");
    const { n, w, h, colW, rowH } = heatGeometry();
    c.fillStyle = "#fff";
    c.fillRect(0, 0, base.width, base.height);
    c.fillStyle = "#f3f4f9";
    c.fillRect(H.left, H.top, w, h);
    if (result) {
      for (let t = 0; t < n; t++) {
        for (let k = 0; k < CLASSES; k++) {
          const p = Math.pow(result.steps[t][k], 0.75); // a gentle gamma keeps small probabilities visible
          c.fillStyle = `rgb(${Math.round(255 - p * (255 - ACCENT[0]))},${Math.round(255 - p * (255 - ACCENT[1]))},` +
            `${Math.round(255 - p * (255 - ACCENT[2]))})`;
          c.fillRect(H.left + t * colW, H.top + k * rowH, Math.ceil(colW), Math.ceil(rowH));
        }
      }
    }
    c.fillStyle = "#374151";
    c.font = "600 11px system-ui, sans-serif";
    c.textAlign = "right";
    c.textBaseline = "middle";
    for (let k = 0; k < CLASSES; k++) c.fillText(String(k), H.left - 8, H.top + (k + 0.5) * rowH);
    c.fillStyle = "#6b7280";
    c.font = "11px system-ui, sans-serif";
    c.textAlign = "left";
    c.textBaseline = "alphabetic";
    const unit = info.view === "rows" ? "rows" : "pixels";
    c.fillText(`${unit} read →`, H.left, heat.height - 6);
    c.textAlign = "right";
    c.fillText(String(info.steps), heat.width - H.right, heat.height - 6);
    heatBase = base;
  }

  function drawHeatmap() {
    if (!heatBase) return;
    hctx.drawImage(heatBase, 0, 0);
    if (!result) return;
    const { colW, h } = heatGeometry();
    const x = H.left + (step + 0.5) * colW;
    hctx.strokeStyle = "#f59e0b";
    hctx.lineWidth = Math.max(2, Math.min(colW, 4));
    hctx.beginPath();
    hctx.moveTo(x, H.top - 2);
    hctx.lineTo(x, H.top + h + 2);
    hctx.stroke();
  }

  function stepFromHeatmap(event) {
    if (!result) return;
    const box = heat.getBoundingClientRect();
    const x = (event.clientX - box.left) * heat.width / box.width;
    const { n, colW } = heatGeometry();
    setStep(Math.max(0, Math.min(n - 1, Math.floor((x - H.left) / colW))));
  }
  heat.addEventListener("pointerdown", (event) => {
    stopPlaying();
    heat.setPointerCapture(event.pointerId);
    stepFromHeatmap(event);
  });
  heat.addEventListener("pointermove", (event) => { if (event.buttons) stepFromHeatmap(event); });

  // ------------------------------------------------------------------ travelling in time
  function setStep(index) {
    step = index;
    slider.value = String(index + 1);
    renderStep();
  }
  slider.addEventListener("input", () => {
    stopPlaying();
    setStep(Number(slider.value) - 1);
  });

  function stopPlaying() {
    if (playing) cancelAnimationFrame(playing.frame);
    playing = null;
    playButton.textContent = "▶";
    playButton.setAttribute("aria-label", "play the reading");
  }
  playButton.addEventListener("click", () => {
    if (!result) return;
    if (playing) { stopPlaying(); return; }
    const n = result.steps.length;
    const from = step >= n - 1 ? 0 : step;
    const msPerStep = Math.max(3, 3200 / n); // about three seconds for the whole image
    const started = performance.now();
    playButton.textContent = "❚❚";
    playButton.setAttribute("aria-label", "pause");
    const tick = (now) => {
      const index = Math.min(n - 1, from + Math.floor((now - started) / msPerStep));
      if (index !== step) setStep(index);
      if (index >= n - 1) { stopPlaying(); return; }
      playing.frame = requestAnimationFrame(tick);
    };
    playing = { frame: requestAnimationFrame(tick) };
  });

  resetPad();
  buildBars();
  loadInfo();
})();
