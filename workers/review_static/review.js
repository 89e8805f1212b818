// The review page: sign-in, the queue, one job (before/after, zoom and pan, mask, regions),
// fixing the mask (brush, eraser, undo, redo, remove with it) and decisions. Plain JavaScript, no build step; every request goes to /review/api with
// the session cookie, and every POST carries the session's CSRF token.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  csrf: "",
  filters: {},
  page: 1,
  perPage: 50,
  total: 0,
  ids: [],          // the queue's job ids as loaded, for next / previous
  index: -1,        // the open job's place in ids
  job: null,
  view: { scale: 1, x: 0, y: 0, w: 0, h: 0 },
  tool: "pan",      // pan | brush | eraser
  // The reviewer's mask, at the photo's full resolution: the job's mask (every changed
  // pixel) as the base, then the strokes; undo and redo replay them on the base.
  edit: { mask: null, base: null, strokes: [], undone: [], stroke: null, polling: false },
};
const EDIT_COLOUR = "#00e5ff";

class SignedOut extends Error {}

async function api(path, body) {
  const options = { headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.headers["X-CSRF-Token"] = state.csrf;
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/review/api/" + path, options);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "sign-in") {
    showSignIn();
    throw new SignedOut();
  }
  if (!response.ok) {
    const error = new Error((data.error && data.error.message) || response.statusText);
    error.code = data.error && data.error.code;
    throw error;
  }
  return data;
}

function show(section) {
  for (const id of ["sign-in", "queue", "job"]) $(id).hidden = id !== section;
  document.body.dataset.view = section;
}

function text(tag, content, className) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (className) el.className = className;
  return el;
}

function fmt(value, digits = 2) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "-";
}

// --- sign-in -----------------------------------------------------------------------

async function loadSession() {
  const session = await api("session");
  state.csrf = session.csrf;
  if (!session.signed_in) return showSignIn(session);
  $("who").textContent = `${session.reviewer} · ${session.tenant}`;
  $("sign-out").hidden = false;
  await openQueue();
  route();
}

async function showSignIn(session) {
  if (!session) session = await fetch("/review/api/session").then((r) => r.json());
  state.csrf = session.csrf;
  $("who").textContent = "";
  $("sign-out").hidden = true;
  show("sign-in");
  $("key").focus();
}

async function signIn(event) {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  try {
    await api("sign-in", { key: $("key").value });
    $("key").value = "";
    await loadSession();
  } catch (error) {
    $("sign-in-error").textContent = error.message;
  }
}

async function signOut() {
  await api("sign-out", {});
  history.replaceState(null, "", "/review");
  await showSignIn();
}

// --- the queue -----------------------------------------------------------------------

function readFilters() {
  return {
    status: $("f-status").value,
    reason: $("f-reason").value.trim(),
    batch: $("f-batch").value,
    since: $("f-since").value,
    until: $("f-until").value,
    version: $("f-version").value,
    order: $("f-order").value,
  };
}

function queuePath(page) {
  const query = new URLSearchParams({ page: String(page), per_page: String(state.perPage) });
  for (const [k, v] of Object.entries(state.filters)) if (v) query.set(k, v);
  return "queue?" + query;
}

function fillChoices(select, items, label) {
  const keep = select.value;
  select.replaceChildren(new Option("any", ""));
  for (const item of items) select.append(new Option(label(item), item.id || item));
  select.value = keep;
}

async function openQueue(page = state.page) {
  state.filters = readFilters();
  const data = await api(queuePath(page));
  state.page = page;
  state.total = data.total;
  state.ids = data.jobs.map((j) => j.id);
  state.firstPage = page;
  $("counts").replaceChildren(
    ...["needs_review", "succeeded", "no_watermark", "failed"].map((s) =>
      text("span", `${s.replace("_", " ")}: ${data.counts[s]}`)),
  );
  fillChoices($("f-batch"), data.batches, (b) => `${b.kind} ${b.description || ""} ${when(b.created_at)}`);
  fillChoices($("f-version"), data.versions, (v) => v);
  const rows = data.jobs.map((job) => {
    const tr = document.createElement("tr");
    tr.dataset.id = job.id;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "pick";
    box.disabled = job.status !== "needs_review";
    box.addEventListener("click", (e) => { e.stopPropagation(); updateBulk(); });
    const pick = document.createElement("td");
    pick.append(box);
    tr.append(pick, text("td", job.name, "name"), text("td", job.review_reason || "", "why"),
      text("td", fmt(job.confidence), "n"), text("td", fmt(job.residual), "n"),
      text("td", when(job.finished_at), "when"));
    tr.addEventListener("click", () => openJob(job.id));
    return tr;
  });
  $("jobs").tBodies[0].replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
  const pages = Math.max(1, Math.ceil(data.total / state.perPage));
  $("page-info").textContent = `page ${page} of ${pages} · ${data.total} job(s)`;
  $("prev-page").disabled = page <= 1;
  $("next-page").disabled = page >= pages;
  $("select-all").checked = false;
  updateBulk();
  show("queue");
}

function picked() {
  return [...document.querySelectorAll("#jobs .pick:checked")].map((b) => b.closest("tr").dataset.id);
}

function updateBulk() {
  const n = picked().length;
  $("accept-selected").disabled = n === 0;
  $("accept-selected").textContent = n ? `Accept ${n} selected` : "Accept selected";
}

async function acceptSelected() {
  const ids = picked();
  if (!ids.length) return;
  const data = await api("decisions", { job_ids: ids, decision: "accept" });
  const failed = data.results.filter((r) => r.error);
  $("bulk-result").textContent = `${data.results.length - failed.length} accepted` +
    (failed.length ? `, ${failed.length} not: ${failed.map((r) => r.error.message).join("; ")}` : "");
  await openQueue(state.page);
}

// --- one job -------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#job\/([0-9a-f]+)$/);
  if (match) openJob(match[1], false);
}

async function openJob(id, push = true) {
  const job = await api("jobs/" + encodeURIComponent(id));
  state.job = job;
  state.index = state.ids.indexOf(id);
  if (push) history.pushState(null, "", "#job/" + id);
  $("job-name").textContent = job.name;
  showFacts(job);
  $("decide-result").textContent = "";
  $("note").value = "";
  resetEdit();
  $("edit-state").textContent = "";
  $("prev-job").disabled = state.index <= 0 && state.page <= 1;
  $("next-job").disabled = state.index < 0;
  show("job");
  loadImages(job);
  drawRegions(job.regions);
  listEvents(job.events);
}

function showFacts(job) {
  setStatus(job.status);
  $("job-reason").textContent = job.review_reason || (job.error ? job.error.message : "");
  $("job-scores").textContent = `${job.width || "?"} x ${job.height || "?"} px · confidence ` +
    `${fmt(job.confidence)} · residual ${fmt(job.residual)} · mask ${fmt(100 * (job.mask_area_fraction || 0), 1)}%`;
}

function setStatus(status) {
  $("job-status").textContent = status;
  $("job-status").className = "badge " + status;
  for (const id of ["accept", "reject", "no-mark"]) $(id).disabled = status !== "needs_review";
  $("remove-mask").disabled = status !== "needs_review" || !state.edit.base;
}

// The attempt in the query: a new result of the same job is another URL, never a cached one.
function imageUrl(job, which) {
  const attempt = encodeURIComponent(job.finished_at || "");
  return `/review/api/jobs/${encodeURIComponent(job.id)}/images/${which}?at=${attempt}`;
}

function loaded(img, src) {
  return new Promise((resolve) => {
    img.onload = img.onerror = () => resolve(img);
    img.src = src;
  });
}

// The upload, the result and the mask, each at full resolution; the viewer says
// data-loaded="yes" once all three are in.
async function loadImages(job, keepView = false) {
  const before = $("img-before");
  const viewer = $("viewer");
  viewer.dataset.loaded = "no";
  setSplit(job.has_result ? 0 : 100);
  const which = job.has_result ? "result" : "source";
  await Promise.all([
    loaded(before, imageUrl(job, "source")).then(() => {
      state.view.w = before.naturalWidth;
      state.view.h = before.naturalHeight;
      $("stage").style.width = state.view.w + "px";
      $("stage").style.height = state.view.h + "px";
      if (!keepView) fit();
    }),
    loaded($("img-after"), imageUrl(job, which)),
    drawMask(job),
  ]);
  if (state.job === job) {
    viewer.dataset.loaded = "yes";
    setStatus(job.status);
  }
}

async function drawMask(job) {
  const canvas = $("mask-layer");
  const context = canvas.getContext("2d");
  canvas.width = canvas.height = 0;
  state.edit.mask = null;
  if (!job.has_mask) return;
  const mask = await loaded(new Image(), imageUrl(job, "mask"));
  if (state.job !== job || !mask.naturalWidth) return;
  state.edit.mask = mask;
  canvas.width = mask.naturalWidth;
  canvas.height = mask.naturalHeight;
  context.drawImage(mask, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i];  // grey: 0 untouched, 1-127 around the mark, 128+ the mark itself
    d[i] = 255; d[i + 1] = 0; d[i + 2] = 170;
    d[i + 3] = v >= 128 ? 150 : v > 0 ? 60 : 0;
  }
  context.putImageData(pixels, 0, 0);
}

function drawRegions(regions) {
  const layer = $("regions");
  const items = [];
  $("region-list").replaceChildren(...regions.map((r) => text("li", r.label, r.kind)));
  for (const r of regions) {
    const [x0, y0, x1, y1] = r.box;
    const box = document.createElement("div");
    box.className = "region " + r.kind;
    box.title = r.label;
    box.style.left = x0 + "px";
    box.style.top = y0 + "px";
    box.style.width = (x1 - x0) + "px";
    box.style.height = (y1 - y0) + "px";
    box.append(text("span", r.short));
    items.push(box);
  }
  layer.replaceChildren(...items);
}

function listEvents(events) {
  $("events").replaceChildren(...events.map((e) => {
    const who = e.reviewer ? ` by ${e.reviewer}` + (e.via ? ` (${e.via})` : "") : "";
    const what = e.decision ? `${e.decision}: ` : "";
    const note = e.note ? ` — ${e.note}` : "";
    return text("li", `${when(e.at)} ${e.kind} ${what}${e.from || ""} → ${e.to || ""}${who}${note}`);
  }));
}

// --- fixing the mask -------------------------------------------------------------------

function resetEdit() {
  Object.assign(state.edit, { base: null, strokes: [], undone: [], stroke: null });
  $("viewer").classList.remove("editing");
  const canvas = $("mask-edit");
  canvas.width = canvas.height = 0;
  setTool("pan");
  updateEditButtons();
}

// The first brush or eraser stroke starts from the job's mask: every pixel it changed.
function startEdit() {
  if (state.edit.base) return;
  const canvas = $("mask-edit");
  const { w, h } = state.view;
  canvas.width = w;
  canvas.height = h;
  const context = canvas.getContext("2d");
  const base = context.createImageData(w, h);
  const mask = state.edit.mask;
  if (mask && mask.naturalWidth === w && mask.naturalHeight === h) {
    const scratch = document.createElement("canvas");
    scratch.width = w;
    scratch.height = h;
    const sc = scratch.getContext("2d");
    sc.drawImage(mask, 0, 0);
    const grey = sc.getImageData(0, 0, w, h).data;
    const d = base.data;
    for (let i = 0; i < d.length; i += 4) {
      if (grey[i] > 0) { d[i] = 0; d[i + 1] = 229; d[i + 2] = 255; d[i + 3] = 255; }
    }
  }
  state.edit.base = base;
  $("viewer").classList.add("editing");
  redraw();
}

function brushSize() {
  return Number($("brush-size").value);
}

function setBrushSize(px) {
  $("brush-size").value = String(Math.min(200, Math.max(2, Math.round(px))));
  $("brush-px").textContent = `${brushSize()} px`;
}

function setTool(tool) {
  state.tool = tool;
  for (const t of ["pan", "brush", "eraser"]) $("tool-" + t).classList.toggle("on", t === tool);
  $("viewer").classList.toggle("painting", tool !== "pan");
  if (tool !== "pan" && state.job) {
    startEdit();
    $("show-mask").checked = true;
    toggleLayers();
  }
}

function paint(context, stroke, from) {
  context.save();
  context.globalCompositeOperation = stroke.mode === "eraser" ? "destination-out" : "source-over";
  context.strokeStyle = context.fillStyle = EDIT_COLOUR;
  context.lineWidth = stroke.size;
  context.lineCap = context.lineJoin = "round";
  const p = stroke.points;
  if (p.length === 1) {
    context.beginPath();
    context.arc(p[0][0], p[0][1], stroke.size / 2, 0, 2 * Math.PI);
    context.fill();
  } else {
    context.beginPath();
    const start = Math.max(0, from - 1);
    context.moveTo(p[start][0], p[start][1]);
    for (let i = start + 1; i < p.length; i++) context.lineTo(p[i][0], p[i][1]);
    context.stroke();
  }
  context.restore();
}

function redraw() {
  const context = $("mask-edit").getContext("2d");
  context.putImageData(state.edit.base, 0, 0);
  for (const stroke of state.edit.strokes) paint(context, stroke, 0);
  updateEditButtons();
}

function updateEditButtons() {
  $("undo").disabled = state.edit.strokes.length === 0;
  $("redo").disabled = state.edit.undone.length === 0;
  $("remove-mask").disabled = !state.edit.base || !state.job || state.job.status !== "needs_review";
}

function undo() {
  if (!state.edit.strokes.length) return;
  state.edit.undone.push(state.edit.strokes.pop());
  redraw();
}

function redo() {
  if (!state.edit.undone.length) return;
  state.edit.strokes.push(state.edit.undone.pop());
  redraw();
}

function imagePoint(e) {
  const box = $("viewer").getBoundingClientRect();
  const v = state.view;
  return [(e.clientX - box.left - v.x) / v.scale, (e.clientY - box.top - v.y) / v.scale];
}

function strokeStart(e) {
  startEdit();
  state.edit.stroke = { mode: state.tool, size: brushSize(), points: [imagePoint(e)] };
  paint($("mask-edit").getContext("2d"), state.edit.stroke, 0);
}

function strokeMove(e) {
  const stroke = state.edit.stroke;
  stroke.points.push(imagePoint(e));
  paint($("mask-edit").getContext("2d"), stroke, stroke.points.length - 1);
}

function strokeEnd() {
  state.edit.strokes.push(state.edit.stroke);
  state.edit.stroke = null;
  state.edit.undone = [];
  updateEditButtons();
}

// The mask as the server takes it: a grey PNG of the photo's size, white inside.
function maskPng() {
  const source = $("mask-edit");
  const out = document.createElement("canvas");
  out.width = source.width;
  out.height = source.height;
  const context = out.getContext("2d");
  const painted = source.getContext("2d").getImageData(0, 0, source.width, source.height);
  const d = painted.data;
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i + 3] >= 128 ? 255 : 0;
    d[i] = d[i + 1] = d[i + 2] = v;
    d[i + 3] = 255;
  }
  context.putImageData(painted, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

async function removeWithMask() {
  const job = state.job;
  if (!job || job.status !== "needs_review" || !state.edit.base) return;
  $("remove-mask").disabled = true;
  $("edit-state").textContent = "sending the mask…";
  try {
    const response = await fetch(`/review/api/jobs/${encodeURIComponent(job.id)}/mask`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "image/png", "X-CSRF-Token": state.csrf },
      body: await maskPng(),
    });
    const data = await response.json().catch(() => ({}));
    if (response.status === 401) return showSignIn();
    if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
    job.status = data.status;
    setStatus(data.status);
    $("edit-state").textContent = `removing with mask ${data.edit}…`;
    await waitForAttempt(job);
  } catch (error) {
    if (!(error instanceof SignedOut)) $("edit-state").textContent = error.message;
    updateEditButtons();
  }
}

// Poll the job until the workers are done with it, then show the new result.
async function waitForAttempt(job) {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (state.job !== job) return;
    const fresh = await api("jobs/" + encodeURIComponent(job.id));
    if (state.job !== job) return;
    if (fresh.status === "queued" || fresh.status === "running") {
      setStatus(fresh.status);
      continue;
    }
    state.job = fresh;
    showFacts(fresh);
    resetEdit();
    drawRegions(fresh.regions);
    listEvents(fresh.events);
    await loadImages(fresh, true);
    $("edit-state").textContent = fresh.status === "needs_review"
      ? "the new result is in: decide on it, or paint again" : `the attempt ended ${fresh.status}`;
    return;
  }
}

// --- before / after, zoom and pan ------------------------------------------------------

function setSplit(value) {
  $("split").value = String(value);
  $("img-after").style.clipPath = `inset(0 0 0 ${value}%)`;
  const showing = Number(value) <= 0 ? "after" : Number(value) >= 100 ? "before" : "split";
  $("viewer").dataset.showing = showing;
  $("showing").textContent = showing === "split" ? "before | after" : `showing: ${showing}`;
}

function flip() {
  setSplit($("viewer").dataset.showing === "after" ? 100 : 0);
}

function applyView() {
  const v = state.view;
  $("stage").style.transform = `translate(${v.x}px, ${v.y}px) scale(${v.scale})`;
  $("stage").style.setProperty("--inv", String(1 / v.scale));
  $("zoom-level").textContent = `${Math.round(v.scale * 100)}%`;
  $("viewer").classList.toggle("pixels", v.scale > 1);
}

function fit() {
  const box = $("viewer").getBoundingClientRect();
  const v = state.view;
  if (!v.w || !v.h) return;
  v.scale = Math.min(box.width / v.w, box.height / v.h, 1);
  v.x = (box.width - v.w * v.scale) / 2;
  v.y = (box.height - v.h * v.scale) / 2;
  applyView();
}

function zoomAt(factor, cx, cy) {
  const v = state.view;
  const box = $("viewer").getBoundingClientRect();
  if (cx === undefined) { cx = box.width / 2; cy = box.height / 2; }
  const scale = Math.min(16, Math.max(0.05, v.scale * factor));
  v.x = cx - (cx - v.x) * (scale / v.scale);
  v.y = cy - (cy - v.y) * (scale / v.scale);
  v.scale = scale;
  applyView();
}

function oneToOne() {
  zoomAt(1 / state.view.scale);
}

function setUpPanning() {
  const viewer = $("viewer");
  let drag = null;
  viewer.addEventListener("pointerdown", (e) => {
    if (state.tool !== "pan") {
      viewer.setPointerCapture(e.pointerId);
      strokeStart(e);
      return;
    }
    drag = { x: e.clientX, y: e.clientY, vx: state.view.x, vy: state.view.y };
    viewer.setPointerCapture(e.pointerId);
    viewer.classList.add("panning");
  });
  viewer.addEventListener("pointermove", (e) => {
    if (state.edit.stroke) return strokeMove(e);
    if (!drag) return;
    state.view.x = drag.vx + e.clientX - drag.x;
    state.view.y = drag.vy + e.clientY - drag.y;
    applyView();
  });
  const stop = () => {
    if (state.edit.stroke) strokeEnd();
    drag = null;
    viewer.classList.remove("panning");
  };
  viewer.addEventListener("pointerup", stop);
  viewer.addEventListener("pointercancel", stop);
  viewer.addEventListener("wheel", (e) => {
    e.preventDefault();
    const box = viewer.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY / 300), e.clientX - box.left, e.clientY - box.top);
  }, { passive: false });
}

// --- decisions and moving on -----------------------------------------------------------

async function decideOpen(decision) {
  const job = state.job;
  if (!job || job.status !== "needs_review") return;
  try {
    const data = await api(`jobs/${encodeURIComponent(job.id)}/decision`, { decision, note: $("note").value });
    job.status = data.status;
    setStatus(data.status);
    $("decide-result").textContent = `${decision.replace("_", " ")}: now ${data.status}`;
    const fresh = await api("jobs/" + encodeURIComponent(job.id));
    listEvents(fresh.events);
  } catch (error) {
    if (!(error instanceof SignedOut)) $("decide-result").textContent = error.message;
  }
}

async function step(delta) {
  if (state.index < 0) return;
  let next = state.index + delta;
  if (next >= state.ids.length) {
    const pages = Math.ceil(state.total / state.perPage);
    if (state.page >= pages) return;
    await loadMoreIds(state.page + 1);
  }
  if (next < 0 || next >= state.ids.length) return;
  await openJob(state.ids[next]);
}

async function loadMoreIds(page) {
  const data = await api(queuePath(page));
  state.page = page;
  state.ids.push(...data.jobs.map((j) => j.id).filter((id) => !state.ids.includes(id)));
}

function backToQueue() {
  history.pushState(null, "", "/review");
  openQueue(state.firstPage || 1);
}

function onKey(e) {
  if (document.body.dataset.view !== "job") return;
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
    e.preventDefault();
    return e.shiftKey ? redo() : undo();
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName) && e.target.type !== "range"
      && e.target.type !== "checkbox") return;
  const actions = {
    a: () => decideOpen("accept"),
    r: () => decideOpen("reject"),
    n: () => decideOpen("no_mark"),
    j: () => step(1), ArrowRight: () => step(1),
    k: () => step(-1), ArrowLeft: () => step(-1),
    f: flip, " ": flip,
    m: () => { $("show-mask").checked = !$("show-mask").checked; toggleLayers(); },
    g: () => { $("show-regions").checked = !$("show-regions").checked; toggleLayers(); },
    "+": () => zoomAt(1.25), "=": () => zoomAt(1.25), "-": () => zoomAt(0.8),
    0: fit, 1: oneToOne,
    b: () => setTool("brush"), e: () => setTool("eraser"), v: () => setTool("pan"),
    "[": () => setBrushSize(brushSize() / 1.25), "]": () => setBrushSize(brushSize() * 1.25),
    u: undo, U: redo,
    Escape: backToQueue,
  };
  const action = actions[e.key];
  if (action) {
    e.preventDefault();
    action();
  }
}

function toggleLayers() {
  $("viewer").classList.toggle("no-mask", !$("show-mask").checked);
  $("viewer").classList.toggle("no-regions", !$("show-regions").checked);
}

function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); openQueue(1); });
  $("prev-page").addEventListener("click", () => openQueue(state.page - 1));
  $("next-page").addEventListener("click", () => openQueue(state.page + 1));
  $("select-all").addEventListener("change", (e) => {
    for (const box of document.querySelectorAll("#jobs .pick:not(:disabled)")) box.checked = e.target.checked;
    updateBulk();
  });
  $("accept-selected").addEventListener("click", acceptSelected);
  $("back").addEventListener("click", backToQueue);
  $("prev-job").addEventListener("click", () => step(-1));
  $("next-job").addEventListener("click", () => step(1));
  $("flip").addEventListener("click", flip);
  $("split").addEventListener("input", (e) => setSplit(e.target.value));
  $("show-mask").addEventListener("change", toggleLayers);
  $("show-regions").addEventListener("change", toggleLayers);
  $("zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("zoom-out").addEventListener("click", () => zoomAt(0.8));
  $("zoom-fit").addEventListener("click", fit);
  $("zoom-1").addEventListener("click", oneToOne);
  $("accept").addEventListener("click", () => decideOpen("accept"));
  $("reject").addEventListener("click", () => decideOpen("reject"));
  $("no-mark").addEventListener("click", () => decideOpen("no_mark"));
  for (const t of ["pan", "brush", "eraser"]) $("tool-" + t).addEventListener("click", () => setTool(t));
  $("brush-size").addEventListener("input", (e) => setBrushSize(e.target.value));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("remove-mask").addEventListener("click", removeWithMask);
  document.addEventListener("keydown", onKey);
  window.addEventListener("popstate", () => (location.hash ? route() : openQueue(state.firstPage || 1)));
  setUpPanning();
  loadSession().catch((error) => { if (!(error instanceof SignedOut)) throw error; });
}

document.addEventListener("DOMContentLoaded", start);
