// cratedigger's page: drop a song, see each sample it takes as a band on its timeline,
// linked to the matched region of the source track; browse the catalogue. Plain DOM and
// Web Audio, no libraries, everything from this server.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------- small helpers

/** Seconds as m:ss.s, rounded to the tenth first (179.97 s is 3:00.0, not 2:60.0). */
function clock(s) {
  const tenths = Number.isFinite(s) ? Math.round(Math.max(0, s) * 10) : 0;
  const m = Math.floor(tenths / 600);
  const rest = tenths - 600 * m;
  return `${m}:${rest < 100 ? "0" : ""}${(rest / 10).toFixed(1)}`;
}

/** A colour per match, well apart on the colour wheel. */
function colour(i) {
  return `hsl(${(i * 137.5 + 15) % 360}, 70%, 45%)`;
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "style") Object.assign(e.style, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function showError(message) {
  const p = $("#error");
  p.textContent = message;
  p.hidden = !message;
}

/** fetch that turns the API's {"error": ...} answers into thrown Errors. */
async function api(path, options = {}) {
  const res = await fetch(path, options);
  const type = res.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await res.json() : await res.text();
  if (!res.ok) {
    const why = body && body.error ? body.error : `${res.status} ${res.statusText}`;
    const err = new Error(why);
    err.status = res.status;
    err.retryAfter = res.headers.get("retry-after");
    throw err;
  }
  return body;
}

// ---------------------------------------------------------------- waveforms

/** Draws a min/max envelope on a canvas, filling its CSS box. */
function drawWaveform(canvas, wave) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  canvas.width = w;
  canvas.height = h;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, w, h);
  g.fillStyle = getComputedStyle(document.documentElement).getPropertyValue("--wave") || "#888";
  const n = wave.min.length;
  if (!n) return;
  const mid = h / 2;
  for (let x = 0; x < w; x++) {
    const i0 = Math.floor((x * n) / w);
    const i1 = Math.max(i0 + 1, Math.floor(((x + 1) * n) / w));
    let lo = 1, hi = -1;
    for (let i = i0; i < i1 && i < n; i++) {
      lo = Math.min(lo, wave.min[i]);
      hi = Math.max(hi, wave.max[i]);
    }
    if (hi < lo) continue;
    const top = mid - hi * mid * 0.95;
    const bottom = mid - lo * mid * 0.95;
    g.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
}

/** Tick labels under a timeline of `duration` seconds. */
function drawAxis(axis, duration) {
  axis.replaceChildren();
  if (!(duration > 0)) return;
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600];
  const step = steps.find((s) => duration / s <= 10) || 1200;
  for (let t = 0; t <= duration; t += step) {
    const label = `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, "0")}`;
    const left = `${(100 * t) / duration}%`;
    // The first label starts at the left edge instead of centring on it.
    axis.append(el("span", { textContent: label, style: t ? { left } : { left, transform: "none" } }));
  }
}

const pct = (t, duration) => `${Math.max(0, Math.min(100, (100 * t) / duration))}%`;

// ---------------------------------------------------------------- playback

let audioContext = null;
let queryFile = null;
let queryBuffer = null;
const referenceBuffers = new Map();
let playing = [];

function context() {
  if (!audioContext) audioContext = new AudioContext();
  return audioContext;
}

async function decode(arrayBuffer) {
  return context().decodeAudioData(arrayBuffer);
}

async function queryAudio() {
  if (!queryBuffer) queryBuffer = await decode(await queryFile.arrayBuffer());
  return queryBuffer;
}

async function referenceAudio(trackId) {
  if (!referenceBuffers.has(trackId)) {
    const res = await fetch(`/api/tracks/${trackId}/audio`);
    if (!res.ok) throw new Error(`the audio of track ${trackId} is not available (${res.status})`);
    referenceBuffers.set(trackId, await decode(await res.arrayBuffer()));
  }
  return referenceBuffers.get(trackId);
}

function stopPlayback() {
  for (const p of playing) {
    try { p.source.stop(); } catch (_) { /* already stopped */ }
    p.head.hidden = true;
  }
  playing = [];
}

/** Plays the query's region, then the reference's, moving a playhead over each. */
async function playPair(match, occ, refTimeline, button) {
  stopPlayback();
  button.disabled = true;
  button.textContent = "Loading audio...";
  try {
    const ctx = context();
    await ctx.resume();
    const [q, r] = await Promise.all([queryAudio(), referenceAudio(match.track_id)]);
    const qLen = occ.query_end_s - occ.query_start_s;
    const rLen = occ.ref_end_s - occ.ref_start_s;
    const gap = 0.4;
    const t0 = ctx.currentTime + 0.05;
    const parts = [
      { buffer: q, at: t0, from: occ.query_start_s, len: qLen, timeline: $("#query-timeline"), duration: q.duration },
      { buffer: r, at: t0 + qLen + gap, from: occ.ref_start_s, len: rLen, timeline: refTimeline, duration: r.duration },
    ];
    for (const p of parts) {
      const source = ctx.createBufferSource();
      source.buffer = p.buffer;
      source.connect(ctx.destination);
      source.start(p.at, p.from, p.len);
      playing.push({ source, head: $(".playhead", p.timeline), ...p });
    }
    button.textContent = "Stop";
    button.disabled = false;
    button.onclick = () => stopPlayback();
    const tick = () => {
      if (!playing.length) return;
      const now = ctx.currentTime;
      for (const p of playing) {
        const inside = now >= p.at && now <= p.at + p.len;
        p.head.hidden = !inside;
        if (inside) p.head.style.left = pct(p.from + (now - p.at), p.duration);
      }
      if (now > parts[1].at + parts[1].len) stopPlayback();
      else requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    parts[1].ended = new Promise((resolve) => { playing[1].source.onended = resolve; });
    await parts[1].ended;
  } catch (e) {
    showError(`Cannot play: ${e.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "▶ Play query, then source";
    button.onclick = () => playPair(match, occ, refTimeline, button);
  }
}

// ---------------------------------------------------------------- identify

function factorText(m) {
  if (m.speed != null) return `speed ×${m.speed.toFixed(3)}`;
  if (m.kind === "exact") return "unchanged";
  return `tempo ×${m.tempo.toFixed(3)}`;
}

function signed(x, digits) {
  return `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(digits)}`;
}

function matchTitle(m) {
  const name = m.title || m.path.split("/").pop();
  return m.artist ? `${m.artist} – ${name}` : name;
}

async function identify(file) {
  queryFile = file;
  queryBuffer = null;
  stopPlayback();
  showError("");
  $("#result").hidden = true;
  const state = $("#identify-state");
  state.textContent = `Looking for samples in ${file.name}...`;
  const form = new FormData();
  form.append("file", file, file.name);
  let found;
  try {
    found = await api("/api/identify", { method: "POST", body: form });
  } catch (e) {
    state.textContent = "";
    const wait = e.retryAfter ? ` (try again in ${e.retryAfter} s)` : "";
    showError(`Identify failed: ${e.message}${wait}`);
    return;
  }
  state.textContent = "";
  renderIdentification(found);
}

function renderIdentification(found) {
  $("#result").hidden = false;
  $("#query-name").textContent = found.query;
  const n = found.matches.length;
  $("#query-summary").textContent =
    `${clock(found.duration_s)} · ${n ? `${n} sample${n > 1 ? "s" : ""} found` : "no sample found"}`;
  const timeline = $("#query-timeline");
  drawWaveform($("canvas", timeline), found.waveform);
  drawAxis($("#query-axis"), found.duration_s);
  const bands = $(".bands", timeline);
  bands.replaceChildren();
  const list = $("#matches");
  list.replaceChildren();
  found.matches.forEach((m, i) => {
    const c = colour(i);
    const card = renderMatch(m, i, c);
    list.append(card);
    m.occurrences.forEach((o, k) => {
      bands.append(el("div", {
        className: "band",
        title: `${matchTitle(m)}: ${clock(o.query_start_s)}–${clock(o.query_end_s)} in the query, ` +
          `from ${clock(o.ref_start_s)}–${clock(o.ref_end_s)} (${factorText(m)})`,
        dataset: { trackId: m.track_id, match: i, occurrence: k },
        style: {
          left: pct(o.query_start_s, found.duration_s),
          width: pct(o.query_end_s - o.query_start_s, found.duration_s),
          background: c, borderColor: c,
        },
        onclick: () => {
          card.scrollIntoView({ behavior: "smooth", block: "center" });
          card.classList.add("lit");
          setTimeout(() => card.classList.remove("lit"), 1200);
        },
      }));
    });
  });
}

function renderMatch(m, i, c) {
  const refTimeline = el("div", { className: "timeline small" },
    el("canvas"), el("div", { className: "regions" }), el("div", { className: "playhead", hidden: true }));
  const axis = el("div", { className: "axis" });
  const occ = m.occurrences[0] || m;
  const play = el("button", { type: "button", textContent: "▶ Play query, then source" });
  play.onclick = () => playPair(m, occ, refTimeline, play);
  const loops = m.loop_count > 1 ? `${m.loop_count} times` : "once";
  const card = el("li", { className: "match", dataset: { trackId: m.track_id, match: i }, style: { borderLeftColor: c } },
    el("h3", {}, el("a", { href: `#track/${m.track_id}`, textContent: matchTitle(m) })),
    el("div", { className: "facts" },
      el("span", {}, el("b", { className: "factor", textContent: factorText(m), dataset: { tempo: m.tempo, speed: m.speed ?? "" } })),
      el("span", {}, "pitch ", el("b", { className: "pitch", textContent: `${signed(m.pitch_semitones, 2)} st` })),
      el("span", {}, "tempo ", el("b", { textContent: `×${m.tempo.toFixed(3)}` })),
      el("span", {}, "used ", el("b", { textContent: loops })),
      el("span", {}, "score ", el("b", { textContent: m.score.toFixed(3) }))),
    el("p", { className: "where", textContent:
      `In the query ${clock(m.query_start_s)}–${clock(m.query_end_s)}; ` +
      `in the source ${clock(m.ref_start_s)}–${clock(m.ref_end_s)}.` }),
    refTimeline, axis, play);
  // The source's picture and the matched region need its length: fetched after.
  showReference(m, c, refTimeline, axis);
  return card;
}

async function showReference(m, c, refTimeline, axis) {
  try {
    const wave = await api(`/api/tracks/${m.track_id}/waveform`);
    drawWaveform($("canvas", refTimeline), wave);
    drawAxis(axis, wave.duration_s);
    const regions = $(".regions", refTimeline);
    for (const o of m.occurrences) {
      regions.append(el("div", {
        className: "region",
        dataset: { trackId: m.track_id },
        title: `matched region ${clock(o.ref_start_s)}–${clock(o.ref_end_s)}`,
        style: {
          left: pct(o.ref_start_s, wave.duration_s),
          width: pct(o.ref_end_s - o.ref_start_s, wave.duration_s),
          background: c, borderColor: c,
        },
      }));
    }
  } catch (e) {
    refTimeline.replaceChildren(el("p", { className: "muted", textContent: `No picture: ${e.message}` }));
  }
}

function setUpDrop() {
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) identify(file);
  });
  $("#file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) identify(file);
    e.target.value = "";
  });
}

// ---------------------------------------------------------------- catalogue

async function searchTracks(q) {
  showError("");
  try {
    const list = await api(`/api/tracks?limit=500&q=${encodeURIComponent(q)}`);
    const body = $("#tracks tbody");
    body.replaceChildren(...list.tracks.map((t) => el("tr", {
      dataset: { trackId: t.id },
      onclick: () => { location.hash = `#track/${t.id}`; },
    },
    el("td", { textContent: t.id }),
    el("td", { textContent: t.label }),
    el("td", { textContent: t.artist || "" }),
    el("td", { textContent: clock(t.duration_s) }),
    el("td", { textContent: t.uploaded_as ? "uploaded" : "indexed" }))));
    $("#track-count").textContent = `${list.total} track${list.total === 1 ? "" : "s"}`;
  } catch (e) {
    showError(`Search failed: ${e.message}`);
  }
}

async function showTrack(id) {
  const box = $("#track-detail");
  box.hidden = false;
  $("#track-title").textContent = `Track ${id}`;
  $("#track-meta").textContent = "";
  try {
    const t = await api(`/api/tracks/${id}`);
    $("#track-title").textContent = t.artist ? `${t.artist} – ${t.label}` : t.label;
    $("#track-meta").textContent = [
      clock(t.duration_s), t.album, t.year, t.uploaded_as ? `uploaded as ${t.uploaded_as}` : t.path,
    ].filter(Boolean).join(" · ");
    $("#track-audio").src = `/api/tracks/${id}/audio`;
    $("#track-remove").onclick = () => removeTrack(t);
    showRelations(id);
    const wave = await api(`/api/tracks/${id}/waveform`);
    drawWaveform($("#track-timeline canvas"), wave);
    $("#track-timeline canvas").dataset.drawn = "1";
  } catch (e) {
    showError(`Track ${id}: ${e.message}`);
  }
}

/** What the scans found about a track: each relation as a sentence linking the other. */
async function showRelations(id) {
  const box = $("#track-relations");
  box.replaceChildren();
  let r;
  try {
    r = await api(`/api/tracks/${id}/relations`);
  } catch (e) {
    box.append(el("p", { className: "muted", textContent: `No relations: ${e.message}` }));
    return;
  }
  const groups = [
    ["Samples", r.samples],
    ["Sampled by", r.sampled_by],
    ["Shares material with", r.shares_material],
    ["Duplicates", r.duplicates],
  ];
  let any = false;
  for (const [title, edges] of groups) {
    if (!edges.length) continue;
    any = true;
    box.append(el("h3", { textContent: title }), el("ul", {}, ...edges.map((e) => {
      const other = e.from === r.track.id ? e.to : e.from;
      return el("li", { className: "relation", dataset: { other } },
        el("a", { href: `#track/${other}`, textContent: "open" }), " ", e.sentence);
    })));
  }
  if (!any) {
    box.append(el("p", { className: "muted", textContent:
      "No samples known for this track: scan the library to compare it with the others." }));
  }
}

async function startScan() {
  const state = $("#scan-state");
  showError("");
  sessionStorage.setItem("cratedigger-token", token());
  try {
    let job = await api("/api/scan", { method: "POST", headers: { Authorization: `Bearer ${token()}` } });
    while (job.state === "queued" || job.state === "running") {
      state.textContent = `Scanning: ${job.done} of ${job.total || "?"} tracks`;
      await new Promise((r) => setTimeout(r, 500));
      job = await api(`/api/jobs/${job.id}`);
    }
    if (job.state === "failed") throw new Error(job.error);
    const s = job.result;
    state.textContent = `Scanned ${s.tracks_scanned} of ${s.n_tracks} tracks (${s.pairs_examined} pairs): ` +
      `${s.samples_found} sample relation(s), ${s.duplicates_found} duplicate(s)` +
      (s.failed ? `, ${s.failed} failed` : "") + ".";
  } catch (e) {
    state.textContent = "";
    showError(`Scan failed: ${e.message}${e.status === 401 || e.status === 403 ? " (enter the token above)" : ""}`);
  }
}

// ---------------------------------------------------------------- the sample graph

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function nodeName(n) {
  return n.title || n.path.split("/").pop();
}

/** Tracks with relations on a circle, an arrow from each sampler to what it samples. */
async function showGraph() {
  showError("");
  let g;
  try {
    g = await api("/api/graph");
  } catch (e) {
    showError(`Graph: ${e.message}`);
    return;
  }
  const picture = $("#graph-picture");
  picture.replaceChildren();
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const related = [...new Set(g.edges.flatMap((e) => [e.from, e.to]))].sort((a, b) => a - b);
  $("#graph-summary").textContent = g.edges.length
    ? `${g.edges.length} relation(s) between ${related.length} of ${g.nodes.length} tracks.`
    : `No relations among ${g.nodes.length} tracks yet: scan the library (Catalogue, then "Scan the library").`;
  const w = picture.clientWidth || 1000;
  const h = picture.clientHeight || 560;
  const radius = Math.min(w, h) / 2 - 70;
  const place = new Map(related.map((id, i) => {
    // Turned off the vertical so that two tracks do not sit one above the other.
    const a = (2 * Math.PI * i) / related.length - Math.PI / 2 + 0.6;
    return [id, { x: w / 2 + radius * Math.cos(a), y: h / 2 + radius * Math.sin(a) }];
  }));
  picture.setAttribute("viewBox", `0 0 ${w} ${h}`);
  picture.append(svg("defs", {}, svg("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: "22", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse",
  }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }))));
  for (const e of g.edges) {
    const a = place.get(e.from);
    const b = place.get(e.to);
    const directed = e.direction === "directed";
    const line = svg("line", {
      class: `edge${directed ? "" : " undirected"}`, x1: a.x, y1: a.y, x2: b.x, y2: b.y,
      "data-from": e.from, "data-to": e.to,
    }, svg("title", {}, `${nodeName(byId.get(e.from))} ${directed ? "samples" : "shares material with"} ${nodeName(byId.get(e.to))}`));
    if (directed) line.setAttribute("marker-end", "url(#arrow)");
    picture.append(line);
  }
  for (const id of related) {
    const p = place.get(id);
    const n = byId.get(id);
    const right = p.x >= w / 2;
    const node = svg("g", { class: "node", "data-track-id": id, transform: `translate(${p.x},${p.y})` },
      svg("circle", { r: 9 }),
      svg("text", { x: right ? 14 : -14, y: 4, "text-anchor": right ? "start" : "end" },
        n.year ? `${nodeName(n)} (${n.year})` : nodeName(n)));
    node.addEventListener("click", () => { location.hash = `#track/${id}`; });
    picture.append(node);
  }
  const rows = g.edges.map((e) => el("tr", { dataset: { from: e.from, to: e.to } },
    el("td", {}, el("a", { href: `#track/${e.from}`, textContent: nodeName(byId.get(e.from)) })),
    el("td", { textContent: e.direction === "directed" ? "samples" : "shares material with" }),
    el("td", {}, el("a", { href: `#track/${e.to}`, textContent: nodeName(byId.get(e.to)) })),
    el("td", { textContent: e.kind === "duplicate" ? "duplicate" : `${factorText({ ...e, kind: e.transform })}, ${signed(e.pitch_semitones, 2)} st` }),
    el("td", { textContent: e.score.toFixed(3) })));
  $("#graph-edges tbody").replaceChildren(...rows);
}

function token() {
  return $("#token").value.trim();
}

async function removeTrack(t) {
  if (!confirm(`Remove "${t.label}" from the catalogue?`)) return;
  try {
    await api(`/api/tracks/${t.id}`, { method: "DELETE", headers: { Authorization: `Bearer ${token()}` } });
    $("#track-detail").hidden = true;
    location.hash = "#catalogue";
    searchTracks($("#q").value);
  } catch (e) {
    showError(`Remove failed: ${e.message}${e.status === 401 || e.status === 403 ? " (enter the token under Add references)" : ""}`);
  }
}

async function addTracks(e) {
  e.preventDefault();
  const files = $("#add-files").files;
  if (!files.length) return;
  sessionStorage.setItem("cratedigger-token", token());
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  const state = $("#add-state");
  state.textContent = `Uploading ${files.length} file(s)...`;
  try {
    let job = await api("/api/tracks", { method: "POST", body: form, headers: { Authorization: `Bearer ${token()}` } });
    while (job.state === "queued" || job.state === "running") {
      state.textContent = `Indexing: ${job.done} of ${job.total} done`;
      await new Promise((r) => setTimeout(r, 500));
      job = await api(`/api/jobs/${job.id}`);
    }
    if (job.state === "failed") throw new Error(job.error);
    state.textContent = job.result.map((f) => `${f.label || "file"}: ${f.outcome}` +
      (f.track_id != null ? ` (track ${f.track_id})` : "") + (f.error ? ` – ${f.error}` : "")).join("; ");
    searchTracks($("#q").value);
    refreshStatus();
  } catch (err) {
    state.textContent = "";
    showError(`Upload failed: ${err.message}`);
  }
}

// ---------------------------------------------------------------- views

async function refreshStatus() {
  try {
    const s = await api("/api/status");
    $("#status").textContent = `${s.n_tracks} tracks · ${(s.total_duration_s / 3600).toFixed(1)} h` +
      (s.writes_enabled ? "" : " · read-only");
  } catch (_) {
    $("#status").textContent = "server unreachable";
  }
}

function route() {
  const hash = location.hash || "#identify";
  const [view, arg] = hash.slice(1).split("/");
  const name = view === "track" ? "catalogue" : view;
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${name}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
  if (name === "graph") showGraph();
  if (name === "catalogue") {
    if (!$("#tracks tbody").children.length) searchTracks($("#q").value);
    if (view === "track" && arg) showTrack(arg);
    else $("#track-detail").hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDrop();
  $("#search").addEventListener("submit", (e) => { e.preventDefault(); searchTracks($("#q").value); });
  $("#add-form").addEventListener("submit", addTracks);
  $("#scan").addEventListener("click", startScan);
  $("#token").value = sessionStorage.getItem("cratedigger-token") || "";
  window.addEventListener("hashchange", route);
  route();
  refreshStatus();
});
