// gatedvae explore: the page. Plain JavaScript, no library, nothing fetched from elsewhere.
// Served by `gatedvae explore RUN` it asks the server (/api/...); exported with --export it reads
// the precomputed answers embedded in the page (#static-data). Every text from the run (partition
// and factor names, messages) goes in with textContent, never as markup.
// A conditional VAE (info.condition) decodes with labels: S.cond holds each slot's, one class per
// condition factor; they start as the input's own and its dropdowns change them. Every decode of
// the slot's images (its reconstruction; for A the sliders and the traversals; a swap's output of
// that slot) uses them.
"use strict";

const S = {
  info: null, stat: null, slots: { a: null, b: null }, z: [], noise: 0, noiseDraws: 0, priorDraws: 0,
  randomDraws: { a: 0, b: 0 }, hot: -1, metricSource: 0, cond: { a: null, b: null },
};
// What the browser test reads: slider -> new image timings, decodes done, the last error shown.
window.__explore = {
  latencies: [], frameLatencies: [], decodes: 0, slots: 0, traversals: 0, swaps: 0, ready: false, errors: [], busy: 0,
};

// ------------------------------------------------------------------ small helpers
const $ = (sel) => document.querySelector(sel);
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);  // CSSOM: allowed by the page's CSP, unlike style=""
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}
function svgEl(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
const fmt = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v) ? "-" : Number(v).toFixed(d));
const codeParam = (z) => Array.from(z, (v) => String(v)).join(",");
// A conditional run's labels as a parameter (undefined, so left out, for any other run).
const condParam = (c) => (S.info.condition && c ? c.join(",") : undefined);
const sameLabels = (x, y) => !x || !y || (x.length === y.length && x.every((v, k) => v === y[k]));
function labelText(cond) {
  const c = S.info.condition;
  return c && cond ? c.factors.map((f, k) => `${f.name} ${f.values[cond[k]]}`).join(", ") : "";
}

function showError(err) {
  const msg = err && err.message ? err.message : String(err);
  const box = $("#message");
  box.textContent = msg;
  box.hidden = false;
  window.__explore.errors.push(msg);
}
function clearError() { $("#message").hidden = true; }

async function track(promise) {
  window.__explore.busy += 1;
  try { return await promise; } finally { window.__explore.busy -= 1; }
}

// ------------------------------------------------------------------ data sources
const STATIC = (() => {
  const node = document.getElementById("static-data");
  return node ? JSON.parse(node.textContent) : null;
})();

function query(params) {
  return Object.entries(params || {})
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v))
    .join("&");
}
async function readAnswer(r) {
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || `the server answered ${r.status}`);
  return data;
}
async function api(path, params) {
  const q = query(params);
  return readAnswer(await fetch(path + (q ? "?" + q : "")));
}

// ------------------------------------------------------------------ images on canvases
const imageCache = new Map();
function loadImage(url) {
  if (!imageCache.has(url)) {
    imageCache.set(url, new Promise((resolve, reject) => {
      const im = new Image();
      im.onload = () => resolve(im);
      im.onerror = () => reject(new Error("an image could not be decoded"));
      im.src = url;
    }));
  }
  return imageCache.get(url);
}
// src: a URL, an ImageBitmap, or a tile {sprite, row, col} of a sprite of tiles of the run's image size.
async function paint(canvas, src) {
  const [, h, w] = S.info.image_shape;
  let image = src, sx = 0, sy = 0;
  if (typeof src === "string") image = await loadImage(src);
  else if (src && src.sprite) { image = await loadImage(src.sprite); sx = src.col * w; sy = src.row * h; }
  if (!image) { canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height); return; }
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, sx, sy, w, h, 0, 0, w, h);
}
async function paintRow(canvas, sprite, row, steps) {
  const [, h, w] = S.info.image_shape;
  const image = await loadImage(sprite);
  canvas.width = w * steps; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, 0, row * h, w * steps, h, 0, 0, w * steps, h);
}

// ------------------------------------------------------------------ header
function renderHeader() {
  const i = S.info;
  $("#run-title").textContent = i.run;
  document.title = `explore ${i.run}`;
  const kind = i.gan ? `GAN (${i.noise_dim} noise dims)` : i.gated ? `gated, ${i.groups.length} partitions` : "un-gated";
  const data = i.dataset.images ? `${i.dataset.name}, ${i.dataset.images.toLocaleString()} images` : `${i.dataset.name} (not available here)`;
  const cond = i.condition ? `; decoder${i.condition.encoder ? " and encoder" : ""} conditioned on ${i.condition.factors.map((f) => f.name).join(", ")}` : "";
  $("#run-meta").textContent = `${i.model} (${i.net}), step ${i.step.toLocaleString()}, ${i.latent_dim} latents, ${kind}${cond}; data: ${data}` +
    (STATIC ? "; static export" : "");
  const notes = $("#notes");
  const all = [...i.notes];
  if (i.collapsed.length) all.push(`collapsed (no latent carries 0.1 nats): ${i.collapsed.join(", ")}`);
  if (STATIC) all.push("static page: sliders show the nearest precomputed frame of one latent at a time; run gatedvae explore RUN for the live model");
  for (const n of all) notes.append(el("li", { text: n }));
  $("#recon-label").textContent = i.gan ? "G(0, Q(x))" : "reconstruction";
}

// ------------------------------------------------------------------ input slots
function buildSlot(name) {
  const box = document.getElementById(`slot-${name}`);
  const i = S.info;
  const title = name === "a" ? "A" : "B";
  const hint = name === "a" ? "(the sliders start from it)" : "(the other image of a swap)";
  box.append(el("h3", {}, `${title} `, el("small", { text: hint })));
  const row1 = el("div", { class: "row" });
  const hasData = i.dataset.images > 0 || STATIC;
  row1.append(el("button", { type: "button", class: "random", onclick: () => pickRandom(name), disabled: !hasData, text: "random image" }));
  if (!STATIC) row1.append(el("button", { type: "button", class: "sample", onclick: () => pickSample(name), text: "prior sample" }));
  if (STATIC) {
    const sel = el("select", { class: "item-select", onchange: (e) => setStaticItem(name, Number(e.target.value)) });
    STATIC.items.forEach((it, k) => sel.append(el("option", { value: k, text: `${k}: ${it.source}` })));
    row1.append(sel);
  } else {
    const idx = el("input", { type: "number", class: "index", min: 0, max: Math.max(0, i.dataset.images - 1), value: 0, disabled: !hasData, "aria-label": `${title} dataset index` });
    row1.append(idx, el("button", { type: "button", class: "show-index", disabled: !hasData, text: "show index", onclick: () => pickIndex(name, idx.value) }));
  }
  box.append(row1);
  if (!STATIC && i.dataset.factors.length) {
    const row2 = el("div", { class: "row factors" });
    for (const f of i.dataset.factors) {
      const sel = el("select", { "data-factor": f.name });
      sel.append(el("option", { value: "any", text: "any" }));
      f.values.forEach((v, k) => sel.append(el("option", { value: k, text: v })));
      row2.append(el("label", { class: "factor" }, f.name, sel));
    }
    row2.append(el("button", { type: "button", class: "find", text: "find", onclick: () => pickFactors(name) }));
    box.append(row2);
  }
  if (i.condition) {
    // the decoder's labels for this slot: the input's own to start with; an upload or a prior sample takes them as they stand
    const row3 = el("div", { class: "row labels" }, el("span", { text: "decoder labels:" }));
    i.condition.factors.forEach((f, k) => {
      const sel = el("select", { class: "cond-select", "data-cond": f.name, disabled: !!STATIC, "aria-label": `${title} decoder label ${f.name}`,
        onchange: (e) => setCond(name, k, Number(e.target.value)) });
      f.values.forEach((v, c) => sel.append(el("option", { value: c, text: v })));
      row3.append(el("label", { class: "factor" }, f.name, sel));
    });
    if (!STATIC) row3.append(el("button", { type: "button", class: "own-labels", text: "own labels", title: "back to the input's own labels", onclick: () => setCond(name, null) }));
    row3.append(el("small", { text: STATIC ? "(the image's own; the live explorer changes them)" : "(the image's own unless changed; an upload's or a prior sample's: pick them first)" }));
    box.append(row3);
  }
  if (!STATIC) {
    const file = el("input", { type: "file", class: "upload", accept: "image/*", "aria-label": `${title} upload an image` });
    file.addEventListener("change", () => { if (file.files.length) pickUpload(name, file.files[0]); });
    box.append(el("div", { class: "row" }, el("span", { text: "or upload:" }), file));
  }
  box.append(el("div", { class: "slot-error" }));
  box.append(el("div", { class: "pics" },
    el("figure", {}, el("canvas", { class: "img small input" }), el("figcaption", { text: "input" })),
    el("figure", {}, el("canvas", { class: "img small recon" }), el("figcaption", { text: i.gan ? "G(0, Q(x))" : "reconstruction" }))));
  box.append(el("div", { class: "caption" }));
}

function slotCond(name) {
  // the labels in the slot's dropdowns (what an upload or a prior sample is given)
  const sels = document.querySelectorAll(`#slot-${name} select.cond-select`);
  return sels.length ? Array.from(sels, (x) => Number(x.value)) : null;
}
function syncCond(name) {
  const cond = S.cond[name];
  document.querySelectorAll(`#slot-${name} select.cond-select`).forEach((sel, k) => { if (cond) sel.value = String(cond[k]); });
  const item = S.slots[name];
  const own = !item || sameLabels(cond, item.cond);
  const label = S.info.gan ? "G(0, Q(x))" : own ? "reconstruction" : "decoded with the chosen labels";
  document.querySelector(`#slot-${name} .recon + figcaption`).textContent = label;
  if (name === "a") $("#recon-label").textContent = label;
}

async function setSlot(name, item) {
  S.slots[name] = item;
  S.cond[name] = item.cond ? item.cond.slice() : null;
  syncCond(name);
  const box = document.getElementById(`slot-${name}`);
  box.querySelector(".slot-error").textContent = "";
  const factors = Object.entries(item.factors || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  // a dataset image's labels are among its factors; an upload's or a prior sample's are said here
  const own = item.cond && (item.index === null || item.index === undefined) ? `labels ${labelText(item.cond)}` : "";
  box.querySelector(".caption").textContent = [item.source, factors, own, item.note].filter(Boolean).join("; ");
  await paint(box.querySelector("canvas.input"), item.input);
  await paint(box.querySelector("canvas.recon"), item.recon);
  if (name === "a") {
    S.z = item.mu.slice();
    await paint($("#input-a"), item.input);
    await paint($("#recon-a"), item.recon);
    renderGroups();
    await paint($("#decoded"), item.recon);
    refreshTraversals();
  }
  refreshSwaps();
  window.__explore.slots += 1;
}

async function pick(name, promise) {
  clearError();
  try {
    const item = await track(promise);
    await setSlot(name, item);
  } catch (err) {
    document.getElementById(`slot-${name}`).querySelector(".slot-error").textContent = err.message;
    showError(err);
  }
}
function pickRandom(name) {
  const k = ++S.randomDraws[name];
  if (STATIC) return setStaticItem(name, (k + (name === "b" ? 1 : 0)) % STATIC.items.length);
  return pick(name, api("/api/random", { seed: (name === "a" ? 0 : 1000003) + k }));
}
function pickSample(name) { return pick(name, api("/api/sample", { seed: ++S.randomDraws[name], cond: condParam(slotCond(name)) })); }
function pickIndex(name, value) { return pick(name, api("/api/image", { index: value })); }
function pickFactors(name) {
  const params = { seed: ++S.randomDraws[name] };
  for (const sel of document.querySelectorAll(`#slot-${name} select[data-factor]`)) {
    if (sel.value !== "any") params[sel.dataset.factor] = sel.value;
  }
  return pick(name, api("/api/find", params));
}
async function pickUpload(name, file) {
  const q = query({ cond: condParam(slotCond(name)) });
  const send = fetch("/api/upload" + (q ? "?" + q : ""), {
    method: "POST", body: file, headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
  }).then(readAnswer);
  return pick(name, send);
}
// A label dropdown changed (k: which factor; null: all back to the input's own): the slot's images
// are decoded again with the new labels.
async function setCond(name, k, value) {
  const item = S.slots[name];
  if (!item || !S.cond[name]) return;
  clearError();
  if (k === null) S.cond[name] = item.cond.slice(); else S.cond[name][k] = value;
  syncCond(name);
  if (name === "a") { scheduleDecode(performance.now()); refreshTraversals(); }
  refreshSwaps();
  try {
    const r = await track(fetch("/api/decode?" + query({ z: codeParam(item.mu), cond: condParam(S.cond[name]) })));
    if (!r.ok) await readAnswer(r);
    const bitmap = await createImageBitmap(await r.blob());
    if (S.slots[name] !== item) return;
    await paint(document.querySelector(`#slot-${name} canvas.recon`), bitmap);
    if (name === "a") await paint($("#recon-a"), bitmap);
  } catch (err) { showError(err); }
}

function setStaticItem(name, k) {
  const box = document.getElementById(`slot-${name}`);
  box.querySelector(".item-select").value = String(k);
  const item = Object.assign({ k }, STATIC.items[k]);
  return setSlot(name, item);
}

// ------------------------------------------------------------------ sliders
function topFactor(d) {
  const src = (S.info.metrics.sources || [])[S.metricSource];
  if (!src) return null;
  const row = src.importance[d] || [];
  let best = -1, value = 0;
  row.forEach((v, k) => { if (v !== null && v > value) { value = v; best = k; } });
  return best < 0 ? null : `${src.factors[best]} ${fmt(value)}`;
}

function renderGroups() {
  const box = $("#groups");
  box.textContent = "";
  const i = S.info, a = S.slots.a;
  for (const g of i.groups) {
    const owns = g.factors.length ? `owns ${g.factors.join(", ")}` : g.kind === "partition" ? "owns no named factor" : "";
    const head = el("div", { class: "group-head" },
      el("span", { class: "name", text: g.name }),
      el("span", { class: "owns", text: owns + (i.collapsed.includes(g.name) ? " (collapsed)" : "") }),
      el("button", { type: "button", class: "reset", text: "reset", title: "back to the input's posterior means", onclick: () => resetGroup(g) }),
      el("button", { type: "button", class: "prior", text: "sample from the prior", disabled: !!STATIC, onclick: () => priorGroup(g) }));
    const group = el("div", { class: "group" + (i.collapsed.includes(g.name) ? " collapsed" : ""), "data-group": g.name }, head);
    if (g.kind === "categorical") {
      const cats = el("div", { class: "cats" });
      for (let d = g.start; d < g.stop; d++) {
        const r = el("input", { type: "radio", name: `cat-${g.name}`, value: d, checked: S.z[d] === Math.max(...S.z.slice(g.start, g.stop)) });
        r.addEventListener("change", () => { for (let e = g.start; e < g.stop; e++) S.z[e] = e === d ? 1 : 0; scheduleDecode(performance.now()); });
        cats.append(el("label", {}, r, ` ${d - g.start}` + (a ? ` (Q ${fmt(a.mu[d])})` : "")));
      }
      group.append(cats);
    } else {
      for (let d = g.start; d < g.stop; d++) group.append(latentRow(d));
    }
    box.append(group);
  }
  const tools = $("#latent-tools");
  tools.textContent = "";
  tools.append(el("button", { type: "button", id: "reset-all", text: "reset all", onclick: () => resetGroup(null) }));
  if (i.gan && !STATIC) {
    tools.append(el("button", { type: "button", id: "resample-noise", text: "resample noise", onclick: resampleNoise }));
    tools.append(el("span", { id: "noise-label", text: noiseLabel() }));
  }
}

function latentRow(d) {
  const lat = S.info.latents[d], a = S.slots.a;
  const lo = Math.min(lat.lo, S.z[d]), hi = Math.max(lat.hi, S.z[d]);
  const step = (hi - lo) / 400;
  const slider = el("input", { type: "range", min: lo, max: hi, step, value: S.z[d], "data-dim": d, "aria-label": `latent z${d}` });
  const value = el("span", { class: "value", text: fmt(S.z[d]) });
  slider.addEventListener("input", () => {
    S.z[d] = Number(slider.value);
    value.textContent = fmt(S.z[d]);
    setHot(d);
    if (STATIC) staticSlider(d); else scheduleDecode(performance.now());
  });
  slider.addEventListener("focus", () => setHot(d));
  const band = el("div", { class: "band" });
  if (a) {
    const pos = (v) => `${(100 * (Math.min(Math.max(v, lo), hi) - lo)) / (hi - lo)}%`;
    const left = pos(a.mu[d] - a.std[d]), right = pos(a.mu[d] + a.std[d]);
    band.append(el("div", { class: "sd", style: { left, width: `calc(${right} - ${left})` } }));
    band.append(el("div", { class: "mu", style: { left: pos(a.mu[d]) } }));
  }
  const top = topFactor(d);
  const stats = el("div", { class: "stats" },
    a ? `posterior mean ${fmt(a.mu[d])}, std ${fmt(a.std[d])}` : "", el("br"),
    `KL ${fmt(lat.kl)} nats` + (lat.active === false ? " (inactive)" : "") + (top ? `; most: ${top}` : ""));
  const row = el("div", { class: "latent", "data-dim": d },
    el("span", { class: "dim", text: `z${d}` }), el("div", { class: "slider-wrap" }, slider, band), value, stats);
  return row;
}

function setHot(d) {
  if (S.hot === d) return;
  S.hot = d;
  for (const r of document.querySelectorAll(".latent")) r.classList.toggle("hot", Number(r.dataset.dim) === d);
  for (const r of document.querySelectorAll("svg.hinton rect.rowhot")) r.style.fill = Number(r.dataset.dim) === d ? "var(--hi)" : "transparent";
}

function syncSliders() {
  for (const s of document.querySelectorAll("#groups input[type=range]")) {
    const d = Number(s.dataset.dim);
    s.value = S.z[d];
    s.closest(".latent").querySelector(".value").textContent = fmt(S.z[d]);
  }
  for (const g of S.info.groups.filter((g) => g.kind === "categorical")) {
    const radios = document.querySelectorAll(`input[name="cat-${g.name}"]`);
    const best = S.z.slice(g.start, g.stop).indexOf(Math.max(...S.z.slice(g.start, g.stop)));
    radios.forEach((r, k) => { r.checked = k === best; });
  }
}

function resetGroup(g) {
  const a = S.slots.a;
  if (!a) return;
  const [start, stop] = g ? [g.start, g.stop] : [0, S.z.length];
  for (let d = start; d < stop; d++) S.z[d] = a.mu[d];
  syncSliders();
  if (STATIC) paint($("#decoded"), a.recon); else scheduleDecode(performance.now());
}

async function priorGroup(g) {
  clearError();
  try {
    const r = await track(api("/api/prior", { group: g.name, seed: ++S.priorDraws }));
    r.values.forEach((v, k) => { S.z[r.start + k] = v; });
    syncSliders();
    scheduleDecode(performance.now());
  } catch (err) { showError(err); }
}

function noiseLabel() { return S.noise ? `noise: draw ${S.noise}` : "noise: the prior's mode (0)"; }
function resampleNoise() {
  S.noise = ++S.noiseDraws;
  $("#noise-label").textContent = noiseLabel();
  scheduleDecode(performance.now());
  refreshTraversals();
  refreshSwaps();
}

// Decoding: one request at a time; inputs that arrive meanwhile are folded into the next request.
const dec = { busy: false, again: false, since: null };
function scheduleDecode(t) {
  if (dec.since === null) dec.since = t;
  if (dec.busy) { dec.again = true; return; }
  runDecode();
}
async function runDecode() {
  dec.busy = true; dec.again = false;
  const t0 = dec.since; dec.since = null;
  try {
    const r = await fetch("/api/decode?" + query({ z: codeParam(S.z), noise: S.info.gan ? S.noise : undefined, cond: condParam(S.cond.a) }));
    if (!r.ok) await readAnswer(r);
    const bitmap = await createImageBitmap(await r.blob());
    await paint($("#decoded"), bitmap);
    const drawn = performance.now() - t0;
    // on screen with the next frame; measured without holding up the next request
    requestAnimationFrame(() => window.__explore.frameLatencies.push(performance.now() - t0));
    window.__explore.latencies.push(drawn);
    window.__explore.decodes += 1;
    $("#latency").textContent = `(${drawn.toFixed(0)} ms)`;
  } catch (err) { showError(err); }
  finally {
    dec.busy = false;
    if (dec.again) runDecode();
  }
}

function staticSlider(d) {
  // The nearest precomputed frame of latent d (the others at A's means) over every exported span.
  const a = S.slots.a;
  let best = null, dist = Infinity;
  for (const [span, tr] of Object.entries(a.traversals)) {
    tr.rows.forEach((row, r) => {
      if (row.dim !== d || row.categorical) return;
      row.values.forEach((v, c) => {
        const e = Math.abs(v - S.z[d]);
        if (e < dist) { dist = e; best = { sprite: tr.sprite, row: r, col: c, span }; }
      });
    });
  }
  for (let e = 0; e < S.z.length; e++) if (e !== d) S.z[e] = a.mu[e];
  syncSliders();
  if (best) paint($("#decoded"), best);
  window.__explore.decodes += 1;
}

// ------------------------------------------------------------------ metrics
function renderMetrics() {
  const box = $("#metrics-body");
  box.textContent = "";
  const m = S.info.metrics;
  if (m.note) box.append(el("p", { class: "note", text: m.note }));
  if (!m.sources || !m.sources.length) {
    if (m.available) box.append(el("p", { class: "note", text: "metrics.json has no importance matrix (evaluate with dci or dci_lasso to see one)" }));
    renderHeadline(box, m);
    return;
  }
  if (m.sources.length > 1) {
    const sel = el("select", { onchange: (e) => { S.metricSource = Number(e.target.value); renderMetrics(); renderGroups(); } });
    m.sources.forEach((s, k) => sel.append(el("option", { value: k, text: s.metric, selected: k === S.metricSource })));
    box.append(el("label", {}, "importance from ", sel));
  }
  const src = m.sources[S.metricSource];
  box.append(el("h3", { text: `${src.metric}: importance of each latent for each factor (D ${fmt(src.disentanglement)}, C ${fmt(src.completeness)}, I ${fmt(src.informativeness)})` }));
  box.append(hinton(src.squares, src.factors, S.info.latents.map((l) => `z${l.dim}`), true));
  if (src.partition) {
    const p = src.partition;
    box.append(el("h3", { text: `by partition (D ${fmt(p.disentanglement)}, C ${fmt(p.completeness)})` }));
    box.append(hinton(p.squares, src.factors, p.names, false));
    const table = el("table", { class: "scores partition-scores" });
    table.append(el("tr", {}, el("th", { text: "partition" }), el("th", { text: "owns" }), el("th", { text: "disentanglement" }), el("th", { text: "share of its factors (chance)" })));
    p.names.forEach((name, k) => {
      const g = S.info.groups.find((x) => x.name === name);
      const owned = g ? g.factors : [];
      const shares = owned.map((f) => {
        const j = src.factors.indexOf(f);
        return j < 0 || !p.assigned ? null : `${f} ${fmt(p.assigned[j])} (${fmt(p.chance[j])})`;
      }).filter(Boolean).join(", ");
      table.append(el("tr", {}, el("td", { text: name }), el("td", { text: owned.join(", ") || "-" }),
        el("td", { class: "num", text: fmt(p.per_unit ? p.per_unit[k] : null) }), el("td", { text: shares || "-" })));
    });
    box.append(table);
  }
  renderHeadline(box, m);
}

function renderHeadline(box, m) {
  const keys = Object.keys(m.headline || {});
  if (!keys.length) return;
  const table = el("table", { class: "scores headline" });
  table.append(el("tr", {}, el("th", { text: `headline (metrics.json, preset ${m.preset || "?"})` }), el("th", { text: "" })));
  for (const k of keys) table.append(el("tr", {}, el("td", { text: k }), el("td", { class: "num", text: fmt(m.headline[k], 3) })));
  box.append(table);
}

function hinton(squares, factors, rowLabels, latentRows) {
  const cell = 18, left = 92, top = 64, right = 90;
  const rows = squares.length, cols = factors.length;
  const svg = svgEl("svg", { class: "hinton" + (latentRows ? " latents" : " partitions"), width: left + cols * cell + right, height: top + rows * cell + 4 });
  factors.forEach((f, c) => {
    const x = left + c * cell + cell / 2, y = top - 6;
    svg.append(svgEl("text", { x, y, transform: `rotate(-50 ${x} ${y})` }, f));
  });
  const groups = S.info.groups;
  const groupOf = (r) => groups.find((g) => r >= g.start && r < g.stop);
  for (let r = 0; r < rows; r++) {
    const y = top + r * cell;
    if (latentRows) {
      const hot = svgEl("rect", { class: "rowhot", x: 0, y, width: left + cols * cell + right, height: cell, fill: "transparent" });
      hot.dataset.dim = r;
      svg.append(hot);
    }
    svg.append(svgEl("text", { x: 4, y: y + cell * 0.7 }, rowLabels[r]));
    for (let c = 0; c < cols; c++) {
      svg.append(svgEl("rect", { class: "cell", x: left + c * cell + 1, y: y + 1, width: cell - 2, height: cell - 2 }));
      const s = (squares[r][c] || 0) * (cell - 2);
      if (s > 0) svg.append(svgEl("rect", { class: "sq", x: left + c * cell + (cell - s) / 2, y: y + (cell - s) / 2, width: s, height: s }));
    }
    const g = latentRows ? groupOf(r) : groups.find((x) => x.name === rowLabels[r]);
    if (g && g.kind === "partition") {
      for (const f of g.factors) {
        const c = factors.indexOf(f);
        if (c >= 0) svg.append(svgEl("rect", { class: "own", x: left + c * cell, y, width: cell, height: cell }));
      }
    }
  }
  if (latentRows) {
    for (const g of groups) {
      if (g.kind !== "partition") continue;
      if (g.start > 0) svg.append(svgEl("line", { class: "sep", x1: 0, x2: left + cols * cell + 6, y1: top + g.start * cell, y2: top + g.start * cell }));
      svg.append(svgEl("text", { x: left + cols * cell + 6, y: top + ((g.start + g.stop) / 2) * cell + 4 }, g.name));
    }
  }
  return svg;
}

// ------------------------------------------------------------------ traversals
function buildTraversalControls() {
  const box = $("#traversal-controls");
  if (STATIC) {
    const sel = el("select", { id: "span", onchange: refreshTraversals });
    STATIC.spans.forEach((s) => sel.append(el("option", { value: String(s), text: `+-${s}`, selected: s === 2 })));
    box.append(el("label", {}, "range ", sel, " aggregate-posterior standard deviations around its mean"));
    return;
  }
  const span = el("input", { id: "span", type: "range", min: 0.5, max: 4, step: 0.5, value: 2 });
  const spanText = el("span", { text: "+-2" });
  span.addEventListener("input", () => { spanText.textContent = `+-${span.value}`; });
  span.addEventListener("change", refreshTraversals);
  const unit = el("select", { id: "unit", onchange: refreshTraversals });
  for (const [v, t] of [["aggregate", "aggregate posterior (the data's spread of each latent, around its mean)"],
    ["image", "this image's posterior (around the sliders' value)"], ["prior", "prior N(0, 1) (around 0)"]]) unit.append(el("option", { value: v, text: t }));
  const steps = el("select", { id: "steps", onchange: refreshTraversals });
  for (const n of [5, 7, 9, 11, 15]) steps.append(el("option", { value: n, text: n, selected: n === 9 }));
  box.append(el("label", {}, "range ", span, " ", spanText, " standard deviations of the "), unit,
    el("label", {}, "steps ", steps), el("small", { text: "from the sliders' code; other latents held" + (S.info.condition ? "; A's decoder labels" : "") }));
}

let traversalTicket = 0;
async function refreshTraversals() {
  const a = S.slots.a;
  if (!a) return;
  const ticket = ++traversalTicket;
  try {
    let tr, steps;
    if (STATIC) {
      tr = a.traversals[$("#span").value] || Object.values(a.traversals)[0];
      steps = STATIC.steps;
    } else {
      const unit = $("#unit").value;
      tr = await track(api("/api/traverse", {
        z: codeParam(S.z), span: $("#span").value, unit, steps: $("#steps").value,
        std: unit === "image" ? codeParam(a.std) : undefined, noise: S.info.gan ? S.noise : undefined,
        cond: condParam(S.cond.a),
      }));
      steps = tr.steps;
    }
    if (ticket !== traversalTicket) return;
    const box = $("#strips");
    box.textContent = "";
    const byGroup = new Map();
    tr.rows.forEach((row, r) => {
      if (!byGroup.has(row.group)) byGroup.set(row.group, []);
      byGroup.get(row.group).push([row, r]);
    });
    for (const g of S.info.groups) {
      const rows = byGroup.get(g.name) || [];
      if (!rows.length) continue;
      const wrap = el("div", { class: "strip-group", "data-group": g.name },
        el("div", { class: "title", text: g.name + (g.factors.length ? ` (owns ${g.factors.join(", ")})` : "") }));
      for (const [row, r] of rows) {
        const lat = S.info.latents[row.dim];
        const canvas = el("canvas", { class: "strip-img", "data-dim": row.dim });
        const range = row.categorical ? "categories" : `${fmt(row.values[0])} .. ${fmt(row.values[row.values.length - 1])}`;
        wrap.append(el("div", { class: "strip" },
          el("div", { class: "label" }, row.categorical ? `${g.name}` : `z${row.dim}`, el("small", { text: `${range}; KL ${fmt(lat.kl)}` })), canvas));
        await paintRow(canvas, tr.sprite, r, steps);
        if (ticket !== traversalTicket) return;
      }
      box.append(wrap);
    }
    window.__explore.traversals += 1;
  } catch (err) { showError(err); }
}

// ------------------------------------------------------------------ swaps
function buildSwapControls() {
  const box = $("#swap-controls");
  const kind = STATIC ? "radio" : "checkbox";
  box.append(el("span", { text: STATIC ? "swap the partition:" : "swap these partitions:" }));
  S.info.groups.forEach((g, k) => {
    const input = el("input", { type: kind, name: "swap-group", value: g.name, checked: k === 0 });
    input.addEventListener("change", refreshSwaps);
    box.append(el("label", { class: "swap-choice" }, input, ` ${g.name}`));
  });
  if (S.info.condition) box.append(el("small", { text: "each output is decoded with its own slot's labels (A's or B's decoder labels)" }));
}
function checkedGroups() {
  return Array.from(document.querySelectorAll("input[name=swap-group]:checked"), (x) => x.value);
}

let swapTicket = 0;
async function refreshSwaps() {
  const a = S.slots.a, b = S.slots.b;
  if (!a || !b) return;
  const ticket = ++swapTicket;
  const names = checkedGroups();
  const out = $("#swap-result");
  try {
    let ab = null, ba = null, grid;
    if (STATIC) {
      const n = STATIC.swaps.n, sprite = STATIC.swaps.sprite;
      const tile = (g, i, j) => ({ sprite, row: g * n + i, col: j });
      const gi = STATIC.swaps.groups.indexOf(names[0]);
      if (gi >= 0) { ab = tile(gi, b.k, a.k); ba = tile(gi, a.k, b.k); }
      grid = { recon_a: a.recon, recon_b: b.recon, rows: STATIC.swaps.groups.map((g, k) => ({ group: g, a_from_b: tile(k, b.k, a.k), b_from_a: tile(k, a.k, b.k) })) };
    } else {
      // each output keeps its own slot's labels: A with B's partitions is decoded with A's, B's with B's
      const params = {
        a: codeParam(a.mu), b: codeParam(b.mu), noise: S.info.gan ? S.noise : undefined,
        cond_a: condParam(S.cond.a), cond_b: condParam(S.cond.b),
      };
      const [sw, gr] = await track(Promise.all([
        names.length ? api("/api/swap", Object.assign({ groups: names.join(",") }, params)) : Promise.resolve(null),
        api("/api/swapgrid", params),
      ]));
      if (sw) { ab = sw.a_from_b; ba = sw.b_from_a; S.lastSwap = sw; }
      grid = gr;
    }
    if (ticket !== swapTicket) return;
    out.textContent = "";
    const what = names.join(", ") || "nothing";
    const fig = (id, caption) => el("figure", {}, el("canvas", { id, class: "img" }), el("figcaption", { text: caption }));
    out.append(fig("swap-recon-a", "A"), fig("swap-ab", `A with B's ${what}`), fig("swap-ba", `B with A's ${what}`), fig("swap-recon-b", "B"));
    await paint($("#swap-recon-a"), grid.recon_a);
    await paint($("#swap-recon-b"), grid.recon_b);
    if (ab) await paint($("#swap-ab"), ab);
    if (ba) await paint($("#swap-ba"), ba);
    const table = $("#swap-grid");
    table.textContent = "";
    const head = el("tr", {}, el("th", { text: "" }));
    const rowAB = el("tr", {}, el("th", { text: "A with B's" }));
    const rowBA = el("tr", {}, el("th", { text: "B with A's" }));
    const cells = [];
    for (const row of grid.rows) {
      const c1 = el("canvas", { class: "img small" }), c2 = el("canvas", { class: "img small" });
      head.append(el("th", { text: row.group, "data-group": row.group }));
      rowAB.append(el("td", { "data-group": row.group }, c1));
      rowBA.append(el("td", { "data-group": row.group }, c2));
      cells.push([c1, row.a_from_b], [c2, row.b_from_a]);
    }
    table.append(head, rowAB, rowBA);
    for (const [canvas, src] of cells) {
      await paint(canvas, src);
      if (ticket !== swapTicket) return;
    }
    window.__explore.swaps += 1;
  } catch (err) { showError(err); }
}

// ------------------------------------------------------------------ start
async function start() {
  try {
    S.info = STATIC ? STATIC.info : await api("/api/info");
    renderHeader();
    buildSlot("a");
    buildSlot("b");
    renderMetrics();
    buildTraversalControls();
    buildSwapControls();
    if (STATIC) {
      await setStaticItem("a", 0);
      await setStaticItem("b", 1 % STATIC.items.length);
    } else if (S.info.gan || !S.info.dataset.images) {
      await pick("a", api("/api/sample", { seed: 0 }));
      await pick("b", api("/api/sample", { seed: 1000003 }));
    } else {
      await pick("a", api("/api/random", { seed: 0 }));
      await pick("b", api("/api/random", { seed: 1000003 }));
    }
  } catch (err) { showError(err); }
  window.__explore.ready = true;
}
document.addEventListener("DOMContentLoaded", start);
