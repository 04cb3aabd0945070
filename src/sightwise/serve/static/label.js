// The labelling page. Every action is one request; actions run strictly in order (a queue of
// promises), so fast typing never reorders answers. The server writes each answer to disk
// before it replies, so closing the tab loses nothing.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "sightwise-label-token";
const NAME_KEY = "sightwise-label-annotator";

const state = { classes: [], current: null, history: [], pos: null, imageUrl: null };
let chain = Promise.resolve();

function enqueue(fn) {
  chain = chain.then(fn).catch(showError);
  return chain;
}

function token() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of the address bar
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function annotator() {
  return $("annotator-input").value.trim();
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify({ annotator: annotator(), ...body });
  }
  const res = await fetch(path, opts);
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return res;
}

function showError(err) {
  $("error").textContent = String(err && err.message ? err.message : err);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function say(text) {
  $("status").textContent = text;
}

function renderProgress(p) {
  if (!p) return;
  $("progress").textContent = `${p.labelled} labelled · ${p.queued} queued · ${p.skipped} skipped` +
    (p.broken ? ` · ${p.broken} unreadable` : "");
  $("per-class").textContent = Object.entries(p.per_class).map(([c, n]) => `${c}: ${n}`).join(" · ");
}

function renderClasses() {
  const box = $("classes");
  box.replaceChildren();
  state.classes.forEach((c, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.label = c;
    b.setAttribute("aria-pressed", "false");
    if (i < 9) {
      const k = document.createElement("kbd");
      k.textContent = String(i + 1);
      b.append(k, " ");
    }
    b.append(c);
    b.addEventListener("click", () => enqueue(() => pick(c)));
    box.append(b);
  });
}

function shown() {
  return state.pos === null ? state.current : state.history[state.pos];
}

async function show(item) {
  const img = $("image");
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = null;
  $("suggestions").replaceChildren();
  $("guesses-heading").hidden = true;
  const mode = state.pos === null ? "queue" : "history";
  $("where").dataset.mode = mode;
  if (!item) {
    img.hidden = true;
    $("caption").textContent = "";
    $("where").textContent = "Nothing left to label: every image in the pool is answered or leased.";
    return;
  }
  $("where").textContent = mode === "history"
    ? `History ${state.pos + 1} of ${state.history.length} (a key changes this label; Esc returns)`
    : "Next in the queue";
  const label = item.label ? `labelled ${item.label}` : (item.skipped ? "skipped" : "not labelled yet");
  const given = item.given ? ` · given label: ${item.given}` : "";
  $("caption").textContent = `${item.path} · ${label}${given}`;
  document.querySelectorAll("#classes button").forEach((b) => {
    b.setAttribute("aria-pressed", String(b.dataset.label === item.label));
    b.classList.toggle("suggested", !!item.suggestions.length && b.dataset.label === item.suggestions[0].label);
  });
  $("guesses-heading").hidden = !item.suggestions.length;
  for (const s of item.suggestions) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = s.label;
    const barBox = document.createElement("span");
    barBox.className = "bar-fill";
    const fill = document.createElement("span");
    fill.style.width = `${Math.round(100 * (s.probability || 0))}%`;
    barBox.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = s.probability === null ? "" : s.probability.toFixed(2);
    li.append(name, barBox, value);
    $("suggestions").append(li);
  }
  try {
    const res = await api("GET", `/v1/label/image/${item.id}`);
    state.imageUrl = URL.createObjectURL(await res.blob());
    img.src = state.imageUrl;
    img.alt = `Image ${item.path}`;
    img.dataset.id = String(item.id);
    img.hidden = false;
    img.onload = () => img.classList.toggle("large", img.naturalWidth > 400);
  } catch (err) {
    if (err.status === 422 && mode === "queue") {
      say(`Skipped an unreadable image: ${item.path} (${err.message})`);
      return next();
    }
    throw err;
  }
}

async function next() {
  const data = await (await api("POST", "/v1/label/next", {})).json();
  state.current = data.item;
  state.pos = null;
  renderProgress(data.progress);
  await show(state.current);
}

function remember(item) {
  const at = state.history.findIndex((h) => h.id === item.id);
  if (at >= 0) state.history[at] = item;
  else state.history.push(item);
}

async function pick(label) {
  const item = shown();
  if (!item) return;
  clearError();
  const data = await (await api("POST", "/v1/label/answer", { id: item.id, label })).json();
  renderProgress(data.progress);
  say(`${item.path}: ${label}`);
  remember({ ...data.answered, skipped: false });
  if (state.pos === null) return next();
  return show(state.history[state.pos]);
}

async function accept() {
  const item = shown();
  if (!item || !item.suggestions.length) return say("No model guess for this image.");
  const guess = item.suggestions[0].label;
  if (!state.classes.includes(guess)) return say(`The guess ${guess} is not one of the classes.`);
  return pick(guess);
}

async function skip() {
  const item = shown();
  if (!item || state.pos !== null) return;
  clearError();
  const data = await (await api("POST", "/v1/label/skip", { id: item.id })).json();
  renderProgress(data.progress);
  remember({ ...data.answered, skipped: true });
  say(`${item.path}: skipped`);
  return next();
}

async function undo() {
  clearError();
  const data = await (await api("POST", "/v1/label/undo", {})).json();
  renderProgress(data.progress);
  if (!data.item) return say("Nothing to undo.");
  await loadHistory();
  state.current = data.item;
  state.pos = null;
  say(`Undone: ${data.item.path}`);
  return show(state.current);
}

function move(step) {
  if (!state.history.length) return;
  if (state.pos === null) {
    if (step > 0) return;
    state.pos = state.history.length - 1;
  } else {
    const to = state.pos + step;
    state.pos = to >= state.history.length ? null : Math.max(0, to);
  }
  return show(shown());
}

async function loadHistory() {
  const q = encodeURIComponent(annotator());
  const data = await (await api("GET", `/v1/label/state?annotator=${q}`)).json();
  state.classes = data.classes;
  state.history = data.history;
  renderProgress(data.progress);
  return data;
}

async function start() {
  clearError();
  if (!annotator()) {
    $("where").textContent = "Type your name above to start.";
    return;
  }
  localStorage.setItem(NAME_KEY, annotator());
  const data = await loadHistory();
  renderClasses();
  if (data.model_version) say(`Guesses by model ${data.model_version}.`);
  return next();
}

function onKey(ev) {
  if (ev.target instanceof HTMLInputElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key;
  let action = null;
  if (/^[1-9]$/.test(k) && Number(k) <= state.classes.length) {
    const label = state.classes[Number(k) - 1];
    action = () => pick(label);
  } else if (k === "Enter") action = accept;
  else if (k === "s" || k === "S") action = skip;
  else if (k === "u" || k === "U") action = undo;
  else if (k === "ArrowLeft") action = () => move(-1);
  else if (k === "ArrowRight") action = () => move(1);
  else if (k === "Escape") action = () => { state.pos = null; return show(state.current); };
  if (action) {
    ev.preventDefault();
    enqueue(action);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  token();
  const params = new URLSearchParams(location.search);
  $("annotator-input").value = params.get("annotator") || localStorage.getItem(NAME_KEY) || "";
  $("annotator-input").addEventListener("change", () => enqueue(start));
  $("accept").addEventListener("click", () => enqueue(accept));
  $("skip").addEventListener("click", () => enqueue(skip));
  $("undo").addEventListener("click", () => enqueue(undo));
  $("back").addEventListener("click", () => enqueue(() => move(-1)));
  $("forward").addEventListener("click", () => enqueue(() => move(1)));
  document.addEventListener("keydown", onKey);
  enqueue(start);
});
