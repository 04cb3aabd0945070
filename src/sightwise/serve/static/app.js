// The Sightwise page: upload one image, show the top-k bars from /v1/predict, and the image
// beside its class activation map from /v1/explain (a translucent heat map with its colour
// legend); with a token, the drift monitor's chart. No dependencies; everything from this
// server.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const input = $("file-input");
  const zone = $("drop-zone");
  let overlayUrl = null;
  let originalUrl = null;
  let modelLabel = null;  // the readable name of the model, once /v1/model has answered

  // Class names like "scratch_on_the_left_hinge_cover" have no spaces: offer a line break
  // after each _ - . / so long names wrap at word boundaries instead of being cut.
  function setWrappable(el, text) {
    el.replaceChildren();
    for (const part of text.split(/(?<=[_\-./])/)) {
      if (el.childNodes.length) el.appendChild(document.createElement("wbr"));
      el.appendChild(document.createTextNode(part));
    }
  }

  function authHeaders() {
    const token = $("token-input").value.trim();
    return token ? { Authorization: "Bearer " + token } : {};
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      return body.error ? body.error.message : response.statusText;
    } catch (_) {
      return response.status + " " + response.statusText;
    }
  }

  // POST one upload as multipart form data (the field the API names "file").
  function postFile(url, file) {
    const form = new FormData();
    form.append("file", file);
    return fetch(url, { method: "POST", body: form, headers: authHeaders() });
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message;
    el.hidden = !message;
  }

  function showPredictions(body) {
    const list = $("predictions");
    list.replaceChildren();
    const result = body.results[0];
    for (const p of result.predictions) {
      const pct = (100 * p.probability).toFixed(1);
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.className = "label";
      setWrappable(label, p.label);
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = pct + "%";
      bar.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = pct + "%";
      item.append(label, bar, value);
      list.appendChild(item);
    }
    const top = result.predictions[0];
    setWrappable($("status"), "Predicted: " + top.label + " (" +
      (100 * top.probability).toFixed(1) + "%)");
    $("status").dataset.label = top.label;
    const by = $("answered-by");
    by.textContent = "Answered by " + (modelLabel || body.model.name) + " in " +
      result.ms.toFixed(1) + " ms.";
    by.title = "model " + body.model.name + ", version " + body.model.version;
    by.dataset.version = String(body.model.version);
  }

  // The chosen file itself, beside its heat map. Browsers cannot draw every format the
  // server reads (TIFF), so a failed preview says so instead of showing a broken image.
  function showOriginal(file) {
    if (originalUrl) URL.revokeObjectURL(originalUrl);
    originalUrl = URL.createObjectURL(file);
    const img = $("original");
    img.hidden = false;
    img.onerror = () => {
      img.hidden = true;
      $("original-caption").textContent = "Your image (this browser cannot display its format)";
    };
    $("original-caption").textContent = "Your image";
    img.src = originalUrl;
    $("overlay-figure").hidden = true;
    $("figures").hidden = false;
  }

  async function showOverlay(file) {
    const response = await postFile("/v1/explain", file);
    if (!response.ok) {
      showError("Heat map unavailable: " + await errorMessage(response));
      return;
    }
    const blob = await response.blob();
    if (overlayUrl) URL.revokeObjectURL(overlayUrl);
    overlayUrl = URL.createObjectURL(blob);
    const label = decodeURIComponent(response.headers.get("X-Sightwise-Label") || "");
    const img = $("overlay");
    img.src = overlayUrl;
    img.alt = "Heat map over the image: warm colours mark the regions that made the model say " +
      label + "; the colour scale is drawn below it.";
    setWrappable($("overlay-caption"), "Where the model looked for " + label +
      " (blue: less, red: more).");
    $("overlay-figure").hidden = false;
  }

  async function classify(file) {
    if (!file) return;
    showError("");
    $("status").textContent = "Classifying " + file.name + "…";
    delete $("status").dataset.label;
    $("predictions").replaceChildren();
    $("answered-by").textContent = "";
    showOriginal(file);
    let response;
    try {
      response = await postFile("/v1/predict?top_k=5", file);
    } catch (err) {
      $("status").textContent = "No answer.";
      showError("The server could not be reached.");
      return;
    }
    if (!response.ok) {
      $("status").textContent = "No prediction.";
      showError(await errorMessage(response));
      return;
    }
    showPredictions(await response.json());
    await showOverlay(file);
    await showInspection(file);
    await showSimilar(file);
    await showMonitor();
  }

  // The server's optional routes, read once from its OpenAPI schema rather than probed: a
  // 404 would be logged as a console error on every server started without them.
  let routes = null;

  async function hasRoute(path) {
    if (routes === null) {
      try {
        const r = await fetch("/openapi.json");
        routes = r.ok ? ((await r.json()).paths || {}) : {};
      } catch (_) {
        routes = {};
      }
    }
    return path in routes;
  }

  // Defect inspection (POST /v1/inspect, only when the server was started with --detector):
  // the overlay PNG, with the score, threshold and verdict in its response headers.
  let inspectUrl = null;

  async function showInspection(file) {
    if (!await hasRoute("/v1/inspect")) return;
    $("inspect-section").hidden = false;
    const status = $("inspect-status");
    status.textContent = "Inspecting…";
    delete status.dataset.verdict;
    let response;
    try {
      response = await postFile("/v1/inspect?format=png", file);
    } catch (_) {
      status.textContent = "Inspection unavailable: the server could not be reached.";
      return;
    }
    if (!response.ok) {
      status.textContent = "Inspection unavailable: " + await errorMessage(response);
      return;
    }
    const verdict = response.headers.get("X-Verdict");
    const score = Number(response.headers.get("X-Anomaly-Score"));
    const threshold = Number(response.headers.get("X-Threshold"));
    status.textContent = "Verdict: " + verdict + " (anomaly score " + score.toPrecision(4) +
      ", threshold " + threshold.toPrecision(4) + ")";
    status.dataset.verdict = verdict;
    if (inspectUrl) URL.revokeObjectURL(inspectUrl);
    inspectUrl = URL.createObjectURL(await response.blob());
    const img = $("inspect-overlay");
    img.src = inspectUrl;
    img.alt = "Anomaly heat map over the image; verdict " + verdict + ".";
    $("inspect-figure").hidden = false;
  }

  // Visual search (POST /v1/search, only when the server was started with --index): text
  // tiles, because the server keeps no uploads and serves no indexed pixels.
  async function showSimilar(file) {
    if (!await hasRoute("/v1/search")) return;
    let response;
    try {
      response = await postFile("/v1/search?k=8", file);
    } catch (_) {
      return;
    }
    $("similar-section").hidden = false;
    const list = $("similar");
    list.replaceChildren();
    if (!response.ok) {
      $("similar-status").textContent = "Search unavailable: " + await errorMessage(response);
      return;
    }
    const body = await response.json();
    $("similar-status").textContent = body.matches.length + " of " + body.index.count + " indexed images";
    for (const m of body.matches) {
      const li = document.createElement("li");
      const label = document.createElement("span");
      label.className = "label";
      setWrappable(label, m.label || "(no label)");
      const path = document.createElement("span");
      path.className = "path";
      path.textContent = m.path.split("/").slice(-2).join("/");
      path.title = m.path;
      const sim = document.createElement("span");
      sim.className = "value";
      sim.textContent = "similarity " + m.similarity.toFixed(3);
      li.append(label, path, sim);
      list.append(li);
    }
  }

  // The drift monitor (GET /v1/monitor and its chart, token-protected): shown only when
  // the page has a token; the server without a log (--no-log) answers 409 and the section
  // stays hidden.
  let chartUrl = null;

  async function showMonitor() {
    const headers = authHeaders();
    const section = $("monitor-section");
    const status = $("monitor-status");
    if (!headers.Authorization) {
      section.hidden = true;
      return;
    }
    let response;
    try {
      response = await fetch("/v1/monitor?last=50", { headers });
    } catch (_) {
      return;
    }
    if (response.status === 409) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    const figure = $("monitor-figure");
    if (!response.ok) {
      status.textContent = "Drift monitor unavailable: " + await errorMessage(response);
      delete status.dataset.alert;
      figure.hidden = true;
      return;
    }
    const summary = await response.json();
    const tested = summary.windows.filter((w) => w.tested);
    const last = tested[tested.length - 1];
    if (!last) {
      status.textContent = "No window tested yet (" + summary.pending + " of " +
        summary.config.window + " predictions so far).";
      delete status.dataset.alert;
      figure.hidden = true;
      return;
    }
    status.textContent = tested.length + " window(s) of " + summary.config.window +
      " predictions for version " + summary.version + "; the last: drift p = " +
      last.p_value.toPrecision(2) + ", estimated accuracy " +
      (100 * last.estimated_accuracy).toFixed(0) + "%" +
      (last.alert ? ". ALERT: the inputs have drifted." : ".");
    status.dataset.alert = last.alert ? "yes" : "no";
    const chart = await fetch("/v1/monitor/plot.png?dpi=70", { headers });
    if (!chart.ok) {
      figure.hidden = true;
      return;
    }
    if (chartUrl) URL.revokeObjectURL(chartUrl);
    chartUrl = URL.createObjectURL(await chart.blob());
    const img = $("monitor-chart");
    img.src = chartUrl;
    img.alt = "Drift chart over " + tested.length + " windows" +
      (last.alert ? ", the latest in alert." : ", no alert in the latest.");
    figure.hidden = false;
  }

  async function loadModelInfo() {
    try {
      const response = await fetch("/v1/model", { headers: authHeaders() });
      if (!response.ok) {
        $("model-label").textContent = "Model: " + await errorMessage(response);
        return;
      }
      const m = await response.json();
      modelLabel = m.label || m.name;
      $("model-label").textContent = "Model: " + modelLabel;
      const version = $("model-version");
      version.textContent = "version " + m.version;
      version.title = "The exact version answering: registry versions are numbers; a " +
        "bundle served from a folder is named by a hash of its contents.";
      $("class-summary").textContent = m.classes.length + " classes";
      const list = $("class-list");
      list.replaceChildren(...m.classes.map((c) => {
        const li = document.createElement("li");
        setWrappable(li, c);
        return li;
      }));
      $("class-details").hidden = false;
    } catch (_) {
      $("model-label").textContent = "Model information unavailable.";
    }
  }

  input.addEventListener("change", () => classify(input.files[0]));
  $("token-input").addEventListener("change", showMonitor);
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
  });
  $("upload-form").addEventListener("submit", (e) => e.preventDefault());
  loadModelInfo();
})();
