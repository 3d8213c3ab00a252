// The page of coop-serve --http-port (serving/rest.py, docs/serving.md): three views over the server's JSON
// API, which is coopnets.v1 in protobuf's JSON mapping (int64 as strings, PNG bytes as base64). No build step,
// no dependency: plain browser JavaScript. Images travel as the PNGs the gRPC API sends, so a seed shows the
// same pixels here as over gRPC; the page only enlarges them (nearest neighbour, in CSS).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "coopnets-token";
  const DIFF_GAIN = 4; // the difference view's brightness per grey level of |recovered − original|
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    info: null, // ModelInfoResponse
    shape: null, // [C, H, W]
    image: null, // the Complete view's image: {data: ImageData, png: base64, url}
    mask: null, // Uint8Array(H * W), 1 = missing
    result: null, // the last completion: {recovered: ImageData}
    running: null, // the Sample view's AbortController while a stream runs
  };

  // ---- calls ---------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, doc) {
      super(doc.error || `HTTP ${status}`);
      this.status = status;
      this.field = doc.field;
    }
  }

  /** fetch with the token (when one is set); a non-2xx answer throws its ApiError ({error, field}). */
  async function api(path, body, signal) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const init = { method: body === undefined ? "GET" : "POST", headers, signal };
    if (body !== undefined) init.body = JSON.stringify(body);
    const resp = await fetch(path, init);
    if (resp.ok) return resp;
    let doc = {};
    try {
      doc = await resp.json();
    } catch {
      // not JSON: the status says enough
    }
    if (resp.status === 401) askToken();
    throw new ApiError(resp.status, doc);
  }

  function describe(err) {
    if (!err.status) return String(err.message || err);
    const retry = err.status === 429 || err.status === 503 ? ": try again shortly" : "";
    return `${err.message} (HTTP ${err.status}${retry})`;
  }

  function setStatus(id, text, isError = false) {
    $(id).textContent = text;
    $(id).classList.toggle("error", isError);
  }

  /** The server's server-sent events ({event, data}) from a fetch answer, as they arrive. */
  async function* serverEvents(resp) {
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        for (let i = buffer.indexOf("\n\n"); i >= 0; i = buffer.indexOf("\n\n")) {
          const block = buffer.slice(0, i);
          buffer = buffer.slice(i + 2);
          const ev = { event: "message", data: "" };
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) ev.event = line.slice(7);
            else if (line.startsWith("data: ")) ev.data += line.slice(6);
          }
          ev.data = JSON.parse(ev.data);
          yield ev;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // ---- the token and the model ---------------------------------------------------------------------------

  function askToken() {
    $("token-box").open = true;
    $("token").focus();
    setStatus("model", "This server needs its access token: enter it under “Access token”.", true);
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    loadInfo();
  });

  async function loadInfo() {
    try {
      const doc = await (await api("/api/info")).json();
      state.info = doc.info;
      state.shape = doc.info.image_shape.map(Number);
      showModel(doc);
      setupSample(doc.info);
      setupExamples(doc.examples);
      setupOcclusions(doc.occlusions);
      $("token-box").open = false;
      document.body.dataset.ready = "true";
    } catch (err) {
      if (err.status !== 401) setStatus("model", `The server did not answer: ${describe(err)}`, true);
    }
  }

  /** The bundle's name, size and defaults (ModelInfo), in one line. */
  function showModel(doc) {
    const i = doc.info, [c, h, w] = state.shape, lv = i.langevin, cp = i.completion, lim = i.limits;
    const name = document.createElement("b");
    name.textContent = doc.name;
    const facts = [
      `${c === 1 ? "grey" : "color"} ${w}×${h}`,
      `latent ${i.latent_dim}`,
      i.arch,
      `Langevin ${lv.steps} steps of δ ${lv.step_size}`,
      `completion ${cp.restarts} chains × ${cp.latent_steps} latent steps, ${cp.refine_steps} refinement`,
      `up to ${lim.max_count} images and ${lim.max_steps} steps`,
      i.device,
    ];
    $("model").replaceChildren(name, ` · ${facts.filter(Boolean).join(" · ")}`);
    $("model").title = `bundle sha256 ${i.bundle_sha256}, created ${i.created}`;
    $("model").classList.remove("error");
  }

  // ---- tabs (WAI-ARIA: arrows, Home and End move between them) --------------------------------------------

  const tabs = [...document.querySelectorAll('[role="tab"]')];

  function selectTab(tab) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
  }

  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (to === undefined) return;
      e.preventDefault();
      const next = tabs[(to + tabs.length) % tabs.length];
      selectTab(next);
      next.focus();
    });
  });

  // ---- Sample: a grid from a stream of Langevin snapshots ---------------------------------------------------

  function setupSample(info) {
    $("count").max = info.limits.max_count;
    $("count").value = Math.min(Number($("count").value), info.limits.max_count);
    $("steps").max = info.limits.max_steps;
    if ($("steps").value === "") $("steps").value = info.langevin.steps;
  }

  /** Snapshots after every step up to 50 steps (the progress is per step), every k-th beyond. */
  function snapshotEvery(steps) {
    return steps < 2 ? 0 : Math.ceil(steps / 50);
  }

  function setRunning(on) {
    $("generate").disabled = on;
    $("stop").disabled = !on;
    if (!on) $("generate").focus();
  }

  function showProgress(step, steps) {
    $("progress").max = Math.max(steps, 1);
    $("progress").value = step;
    $("progress-text").textContent = `step ${step} of ${steps}`;
  }

  /** Shows image `g` (a GeneratedImage) in its tile, making the tile on its first snapshot. */
  function showTile(tiles, g, final) {
    let fig = tiles.get(g.index);
    if (!fig) {
      fig = document.createElement("figure");
      const img = document.createElement("img");
      img.className = "pixels";
      img.alt = `sample with seed ${g.seed}`;
      const caption = document.createElement("figcaption");
      caption.textContent = `seed ${g.seed}`;
      fig.append(img, caption);
      fig.dataset.seed = g.seed;
      tiles.set(g.index, fig);
      $("grid").append(fig);
    }
    fig.querySelector("img").src = `data:image/png;base64,${g.image.png}`;
    if (final) {
      fig.dataset.final = "true";
      fig.title = `seed ${g.seed}: energy ${Number(g.energy).toPrecision(5)}`;
    }
  }

  async function sample() {
    const count = Number($("count").value), steps = Number($("steps").value), seed = $("seed").value.trim();
    const body = { request: { count, seed, langevin: { steps } }, snapshot_every: snapshotEvery(steps) };
    const section = $("sample"), tiles = new Map(), t0 = performance.now();
    let step = 0, finals = 0, ended = false;
    state.running = new AbortController();
    section.dataset.state = "running";
    setRunning(true);
    $("grid").replaceChildren();
    showProgress(0, steps);
    try {
      const resp = await api("/api/synthesize/stream", body, state.running.signal);
      for await (const ev of serverEvents(resp)) {
        if (ev.event === "error") throw new ApiError(ev.data.status, ev.data);
        if (ev.event === "end") ended = true;
        if (ev.event !== "snapshot" && ev.event !== "image") continue;
        showTile(tiles, ev.data.image, ev.data.final);
        finals += ev.data.final ? 1 : 0;
        if (ev.data.step !== step) showProgress((step = ev.data.step), steps);
      }
      if (!ended) throw new Error("the stream ended early: the server went away");
      section.dataset.state = "done";
      const seconds = ((performance.now() - t0) / 1000).toFixed(1);
      $("progress-text").textContent = `${finals} images, ${steps} Langevin steps, ${seconds} s`;
    } catch (err) {
      const stopped = err.name === "AbortError";
      section.dataset.state = stopped ? "stopped" : "error";
      $("progress-text").textContent = stopped
        ? `stopped after step ${step} of ${steps}: the server stopped too`
        : describe(err);
    } finally {
      state.running = null;
      setRunning(false);
    }
  }

  $("sample-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!state.running) sample();
  });
  $("stop").addEventListener("click", () => state.running && state.running.abort());

  // ---- images: examples, uploads, pixels ------------------------------------------------------------------

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("that file is not an image this browser can read"));
      img.src = src;
    });
  }

  function canvas2d(w, h) {
    const cv = document.createElement("canvas");
    cv.width = w;
    cv.height = h;
    return [cv, cv.getContext("2d", { willReadFrequently: true })];
  }

  /** `img` at the model's size (centre-cropped, scaled) and channels (grey: R = G = B, as the server reads
   * it): {data: ImageData, png: base64, url}. An image already of the model's size is copied exactly. */
  function toModelImage(img) {
    const [c, h, w] = state.shape, [cv, ctx] = canvas2d(w, h);
    const s = Math.min(img.naturalWidth / w, img.naturalHeight / h);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(img, (img.naturalWidth - w * s) / 2, (img.naturalHeight - h * s) / 2, w * s, h * s, 0, 0, w, h);
    const data = ctx.getImageData(0, 0, w, h), p = data.data;
    for (let i = 0; i < p.length; i += 4) {
      if (c === 1) p[i] = p[i + 1] = p[i + 2] = Math.round(0.299 * p[i] + 0.587 * p[i + 1] + 0.114 * p[i + 2]);
      p[i + 3] = 255;
    }
    ctx.putImageData(data, 0, 0);
    const url = cv.toDataURL("image/png");
    return { data, png: url.slice(url.indexOf(",") + 1), url };
  }

  /** The pixels (ImageData at the model's size) of a base64 PNG the server sent. */
  async function pixelsOf(png) {
    const img = await loadImage(`data:image/png;base64,${png}`);
    const [, ctx] = canvas2d(img.naturalWidth, img.naturalHeight);
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(0, 0, img.naturalWidth, img.naturalHeight);
  }

  async function fromFile(input) {
    const file = input.files[0];
    if (!file) return null;
    const url = URL.createObjectURL(file);
    try {
      return toModelImage(await loadImage(url));
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  /** One row of example buttons per view; `onPick(image)` gets the chosen one at the model's size. */
  function exampleButtons(row, examples, onPick) {
    row.replaceChildren();
    for (const ex of examples) {
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-pressed", "false");
      button.setAttribute("aria-label", `example ${ex.name}`);
      button.dataset.example = ex.name;
      const img = document.createElement("img");
      img.src = ex.url;
      img.alt = "";
      img.className = "pixels";
      button.append(img);
      button.addEventListener("click", async () => {
        for (const b of row.children) b.setAttribute("aria-pressed", String(b === button));
        onPick(toModelImage(await loadImage(ex.url)));
      });
      row.append(button);
    }
  }

  function setupExamples(examples) {
    exampleButtons($("complete-examples"), examples, pickForCompletion);
    exampleButtons($("energy-examples"), examples, score);
  }

  // ---- Complete: draw a hole (or name an occlusion), see it filled ------------------------------------------

  function setupOcclusions(names) {
    const select = $("occlusion");
    select.replaceChildren(new Option("drawn on the image", ""));
    for (const name of names) select.append(new Option(name, name));
  }

  function pickForCompletion(image) {
    state.image = image;
    state.mask = new Uint8Array(state.shape[1] * state.shape[2]);
    state.result = null;
    for (const id of ["out-original", "out-occluded", "out-recovered"]) $(id).removeAttribute("src");
    $("diff-text").textContent = "";
    $("complete").dataset.state = "idle";
    renderDraw();
  }

  /** The image with the hole tinted red, on the drawing canvas (model pixels, enlarged in CSS). */
  function renderDraw() {
    const [, h, w] = state.shape, draw = $("draw");
    draw.width = w;
    draw.height = h;
    if (!state.image) return;
    const shown = new ImageData(new Uint8ClampedArray(state.image.data.data), w, h), p = shown.data;
    state.mask.forEach((m, i) => {
      if (!m) return;
      p[4 * i] = 0.35 * p[4 * i] + 0.65 * 255;
      p[4 * i + 1] *= 0.35;
      p[4 * i + 2] *= 0.35;
    });
    draw.getContext("2d").putImageData(shown, 0, 0);
  }

  /** Marks the model pixels within the brush's radius of the segment from `a` to `b` (model coordinates). */
  function stamp(a, b) {
    const [, h, w] = state.shape, r = Math.max(Number($("brush").value) / 2, 0.75) * (w / 28);
    const n = Math.max(1, Math.ceil(Math.hypot(b.x - a.x, b.y - a.y) * 2));
    for (let k = 0; k <= n; k++) {
      const x = a.x + ((b.x - a.x) * k) / n, y = a.y + ((b.y - a.y) * k) / n;
      for (let yy = Math.max(0, Math.floor(y - r)); yy <= Math.min(h - 1, Math.ceil(y + r)); yy++) {
        for (let xx = Math.max(0, Math.floor(x - r)); xx <= Math.min(w - 1, Math.ceil(x + r)); xx++) {
          if ((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= r * r) state.mask[yy * w + xx] = 1;
        }
      }
    }
  }

  function setupDrawing() {
    const draw = $("draw");
    let last = null;
    const at = (e) => {
      const r = draw.getBoundingClientRect();
      return { x: ((e.clientX - r.left) / r.width) * draw.width, y: ((e.clientY - r.top) / r.height) * draw.height };
    };
    const paint = (e) => {
      const p = at(e);
      stamp(last || p, p);
      last = p;
      $("occlusion").value = "";
      renderDraw();
    };
    draw.addEventListener("pointerdown", (e) => {
      if (!state.image) return setStatus("complete-status", "Pick or upload an image first.", true);
      draw.setPointerCapture(e.pointerId);
      last = null;
      paint(e);
    });
    draw.addEventListener("pointermove", (e) => last && paint(e));
    for (const type of ["pointerup", "pointercancel"]) draw.addEventListener(type, () => (last = null));
  }

  function maskPng() {
    const [, h, w] = state.shape, [cv, ctx] = canvas2d(w, h), data = ctx.createImageData(w, h);
    state.mask.forEach((m, i) => {
      data.data.fill(m ? 255 : 0, 4 * i, 4 * i + 3); // white = missing
      data.data[4 * i + 3] = 255;
    });
    ctx.putImageData(data, 0, 0);
    const url = cv.toDataURL("image/png");
    return url.slice(url.indexOf(",") + 1);
  }

  function completeRequest() {
    if (!state.image) throw new Error("Pick or upload an image first.");
    const body = { image: { png: state.image.png }, seed: "0" };
    const occlusion = $("occlusion").value;
    if (occlusion) body.occlusion = occlusion;
    else if (state.mask.some((m) => m)) body.mask = { png: maskPng() };
    else throw new Error("Draw the hole on the image, or choose an occlusion.");
    return body;
  }

  async function complete() {
    const section = $("complete");
    try {
      const body = completeRequest();
      section.dataset.state = "running";
      setStatus("complete-status", "Completing…");
      const doc = await (await api("/api/complete", body)).json();
      $("out-original").src = state.image.url;
      $("out-occluded").src = `data:image/png;base64,${doc.occluded.png}`;
      $("out-recovered").src = `data:image/png;base64,${doc.recovered.png}`;
      const mask = await pixelsOf(doc.mask.png); // the hole the server used (a named occlusion's too)
      state.mask = state.mask.map((_, i) => (mask.data[4 * i] >= 128 ? 1 : 0));
      state.result = { recovered: await pixelsOf(doc.recovered.png) };
      renderDraw();
      showDiff();
      section.dataset.state = "done";
      setStatus("complete-status", `Recovered: energy ${Number(doc.energy).toPrecision(5)}.`);
    } catch (err) {
      section.dataset.state = "error";
      setStatus("complete-status", describe(err), true);
    }
  }

  /** |recovered − original| per pixel (the largest over channels): zero wherever the pixel was observed. */
  function showDiff() {
    const [, h, w] = state.shape, canvas = $("out-diff");
    canvas.width = w;
    canvas.height = h;
    const a = state.image.data.data, b = state.result.recovered.data, ctx = canvas.getContext("2d");
    const out = ctx.createImageData(w, h);
    let outside = 0, observed = 0, inside = 0;
    for (let i = 0; i < w * h; i++) {
      const d = Math.max(...[0, 1, 2].map((k) => Math.abs(a[4 * i + k] - b[4 * i + k])));
      out.data.fill(Math.min(255, DIFF_GAIN * d), 4 * i, 4 * i + 3);
      out.data[4 * i + 3] = 255;
      if (state.mask[i]) inside = Math.max(inside, d);
      else [outside, observed] = [Math.max(outside, d), observed + 1];
    }
    ctx.putImageData(out, 0, 0);
    const text = $("diff-text");
    text.dataset.maxOutside = String(outside);
    text.dataset.observed = String(observed);
    text.textContent =
      `Outside the hole, ${observed} observed pixels: largest |difference| ${outside} ` +
      `(${outside === 0 ? "unchanged" : "CHANGED"}). Inside the hole: largest ${inside}.`;
  }

  $("show-diff").addEventListener("change", () => {
    $("diff-figure").hidden = !$("show-diff").checked;
    $("diff-text").hidden = !$("show-diff").checked;
  });
  $("complete-run").addEventListener("click", complete);
  $("clear-mask").addEventListener("click", () => {
    if (state.mask) state.mask.fill(0);
    renderDraw();
  });
  $("complete-upload").addEventListener("change", async (e) => {
    try {
      const image = await fromFile(e.target);
      if (image) pickForCompletion(image);
    } catch (err) {
      setStatus("complete-status", describe(err), true);
    }
  });

  // ---- Energy: E(Y) and the out-of-distribution score against the bundle's threshold -----------------------

  function row(dl, term, value, cls) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    if (cls) dd.className = cls;
    dl.append(dt, dd);
    return dd;
  }

  async function score(image) {
    const section = $("energy"), dl = $("energy-result");
    $("energy-image").src = image.url;
    dl.replaceChildren();
    section.dataset.state = "running";
    setStatus("energy-status", "Scoring…");
    try {
      const doc = await (await api("/api/energy", { images: [{ png: image.png }] })).json();
      row(dl, "energy E(Y)", Number(doc.energy[0]).toPrecision(6)).dataset.value = doc.energy[0];
      row(dl, "score f(Y)", Number(doc.score[0]).toPrecision(6)).dataset.value = doc.score[0];
      const ood = state.info.ood; // unset: the bundle has no out-of-distribution graph
      if (doc.ood.length && ood) {
        const v = doc.ood[0], flagged = v > ood.threshold;
        row(dl, "ood", Number(v).toPrecision(4), flagged ? "flagged" : "typical").id = "ood-value";
        $("ood-value").dataset.value = v;
        row(dl, "flag threshold", `${ood.threshold} (${Math.round(ood.false_alarm_rate * 100)}% false alarms ` +
          `on ${ood.calibration_images} calibration images)`).id = "ood-threshold";
        row(dl, "verdict", flagged ? "flagged: unlike the training data" : "typical of the training data",
          flagged ? "flagged" : "typical");
      } else {
        row(dl, "ood", "this bundle has no out-of-distribution score (exported before coopnets 0.2)");
      }
      section.dataset.state = "done";
      setStatus("energy-status", "");
    } catch (err) {
      section.dataset.state = "error";
      setStatus("energy-status", describe(err), true);
    }
  }

  $("energy-upload").addEventListener("change", async (e) => {
    try {
      const image = await fromFile(e.target);
      if (image) score(image);
    } catch (err) {
      setStatus("energy-status", describe(err), true);
    }
  });

  setupDrawing();
  loadInfo();
})();
