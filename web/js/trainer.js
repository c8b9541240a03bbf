// Trainer's page: choose a scenario, start / pause / speed up a simulated run on the server, and
// debrief with the replay of a run (the `cordon-sim-replay` v1 JSON-lines file written by
// `cordon sim run`, see sim/replay.py) and the simulator's outcome figures.
// The replay player works with no server support at all: load a file and play it.

import { ApiError, api, queryParam, takeToken } from "./api.js";
import { clock, esc } from "./format.js";
import { createMap, cssVar, loadStreets, restyleStreets } from "./map.js";

const L = window.L;
const $ = (sel) => document.querySelector(sel);
const token = takeToken();
const THEME_KEY = "cordon.trainer.theme";

// ---------- theme ----------
function applyTheme(theme) {
  document.body.dataset.theme = theme;
  $('[data-testid="theme-toggle"]').textContent = theme === "night" ? "☀ Jour" : "☾ Nuit";
  localStorage.setItem(THEME_KEY, theme);
  restyleStreets(streets);
  if (player.replay) drawStatic();
  drawFrame();
}
$('[data-testid="theme-toggle"]').addEventListener("click", () =>
  applyTheme(document.body.dataset.theme === "night" ? "day" : "night"),
);

function toast(text, kind = "info") {
  const el = $('[data-testid="toast"]');
  el.textContent = text;
  el.dataset.kind = kind;
  el.classList.remove("hidden");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.add("hidden"), kind === "error" ? 8000 : 3500);
}

// ---------- map ----------
const map = createMap($("#map"));
let streets = null;
const staticLayer = L.layerGroup().addTo(map); // edges driven in the run (when no street map), exits, origin
const frameLayer = L.layerGroup().addTo(map); // agents at the current time, sightings so far
loadStreets(map, { fit: false })
  .then((layer) => {
    streets = layer;
    if (!player.replay) map.fitBounds(layer.getBounds(), { animate: false });
  })
  .catch(() => {
    // No server (a replay opened from a file): the replay's own edges are drawn instead.
  });

// ---------- replay parsing (format cordon-sim-replay v1) ----------
export class ReplayFormatError extends Error {}

/** Parse the JSON-lines text of a replay: `{header, events, byAgent, outcome, duration_s}`. */
export function parseReplay(text) {
  const lines = text.split(/\r?\n/).filter((l) => l.trim());
  if (!lines.length) throw new ReplayFormatError("fichier vide");
  const records = lines.map((line, i) => {
    try {
      return JSON.parse(line);
    } catch {
      throw new ReplayFormatError(`ligne ${i + 1} : JSON invalide`);
    }
  });
  const header = records[0];
  if (header.type !== "header" || header.format !== "cordon-sim-replay") {
    throw new ReplayFormatError("ligne 1 : en-tête cordon-sim-replay attendu");
  }
  if (header.format_version !== 1) throw new ReplayFormatError(`version de format ${header.format_version} non prise en charge (1 attendu)`);
  const events = records.slice(1);
  const byAgent = new Map(); // agent -> [{t0, t1, from, to} | {t0, t1, at}]
  let end = Number(header.duration_s) || 0;
  for (const e of events) {
    if (e.type === "move" || e.type === "wait") {
      const list = byAgent.get(e.agent) || [];
      list.push(e);
      byAgent.set(e.agent, list);
      end = Math.max(end, e.t1 ?? e.t0);
    } else if (typeof e.t === "number") {
      end = Math.max(end, e.t);
    }
  }
  for (const list of byAgent.values()) list.sort((a, b) => a.t0 - b.t0);
  const outcome = events.find((e) => e.type === "outcome") || null;
  const duration_s = outcome && Number.isFinite(outcome.t) && outcome.t > 0 ? outcome.t : end;
  return { header, events, byAgent, outcome, duration_s };
}

/** Where `agent` is at time `t` ([lon, lat]), or null before its first record. */
export function agentPosition(segments, t) {
  if (!segments || !segments.length) return null;
  let lo = 0;
  let hi = segments.length - 1;
  if (t < segments[0].t0) return null;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (segments[mid].t0 <= t) lo = mid;
    else hi = mid - 1;
  }
  const s = segments[lo];
  if (s.type === "wait") return s.at;
  const span = s.t1 - s.t0;
  const f = span > 0 ? Math.min(1, Math.max(0, (t - s.t0) / span)) : 1;
  return [s.from[0] + f * (s.to[0] - s.from[0]), s.from[1] + f * (s.to[1] - s.from[1])];
}

// ---------- player ----------
const player = { replay: null, t: 0, playing: false, speed: 10, lastFrame: null, nodeLonLat: new Map() };
const playBtn = $('[data-testid="play"]');
const scrub = $('[data-testid="scrub"]');
const speedSel = $('[data-testid="speed"]');

function loadReplayText(text, name) {
  let replay;
  try {
    replay = parseReplay(text);
  } catch (error) {
    toast(`Rejeu illisible (${name}) : ${error.message}`, "error");
    $('[data-testid="replay-info"]').textContent = `Erreur : ${error.message}`;
    return;
  }
  $('[data-testid="toast"]').classList.add("hidden");
  player.replay = replay;
  player.t = 0;
  player.playing = false;
  player.nodeLonLat = new Map();
  for (const e of replay.events) {
    if (e.type === "move") {
      player.nodeLonLat.set(e.u, e.from);
      player.nodeLonLat.set(e.v, e.to);
    } else if (e.type === "wait") player.nodeLonLat.set(e.node, e.at);
  }
  const h = replay.header;
  $('[data-testid="replay-info"]').innerHTML = `<b>${esc(name)}</b><br>carte ${esc(h.map)} · politique <b>${esc(h.policy)}</b> · graine ${esc(h.seed)}<br>
    ${h.crews.length} équipage(s) · durée ${clock(replay.duration_s)} · incident ${esc(new Date(h.incident_at).toLocaleString("fr-FR"))}`;
  scrub.max = String(replay.duration_s);
  scrub.disabled = false;
  playBtn.disabled = false;
  renderOutcome();
  drawStatic();
  drawFrame();
  renderEvents();
  document.body.dataset.replay = "loaded";
}

$('[data-testid="replay-file"]').addEventListener("change", async (event) => {
  const file = event.target.files?.[0];
  if (file) loadReplayText(await file.text(), file.name);
});

async function loadReplayUrl(url) {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(url, { headers });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    loadReplayText(await response.text(), url.split("/").pop());
  } catch (error) {
    toast(`Rejeu indisponible : ${error.message}`, "error");
  }
}

playBtn.addEventListener("click", () => setPlaying(!player.playing));
speedSel.addEventListener("change", () => {
  player.speed = Number(speedSel.value);
});
scrub.addEventListener("input", () => {
  player.t = Number(scrub.value);
  drawFrame();
  renderEvents();
});
document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement && event.target.type !== "range") return;
  if (event.key === " " && player.replay) {
    event.preventDefault();
    setPlaying(!player.playing);
  }
});

function setPlaying(playing) {
  if (!player.replay) return;
  if (playing && player.t >= player.replay.duration_s) player.t = 0;
  player.playing = playing;
  player.lastFrame = null;
  playBtn.textContent = playing ? "❚❚" : "▶";
  playBtn.setAttribute("aria-label", playing ? "Pause" : "Lecture");
  document.body.dataset.playing = String(playing);
  if (playing) requestAnimationFrame(step);
}

function step(now) {
  if (!player.playing) return;
  if (player.lastFrame !== null) {
    player.t = Math.min(player.replay.duration_s, player.t + ((now - player.lastFrame) / 1000) * player.speed);
  }
  player.lastFrame = now;
  scrub.value = String(player.t);
  drawFrame();
  renderEvents();
  if (player.t >= player.replay.duration_s) {
    setPlaying(false);
    return;
  }
  requestAnimationFrame(step);
}

function drawStatic() {
  staticLayer.clearLayers();
  const r = player.replay;
  if (!r) return;
  const bounds = [];
  if (!streets) {
    // No street map from a server: draw the edges the run used, so the replay still reads as a map.
    const seen = new Set();
    for (const e of r.events) {
      if (e.type !== "move") continue;
      const key = e.u < e.v ? `${e.u}-${e.v}` : `${e.v}-${e.u}`;
      if (seen.has(key)) continue;
      seen.add(key);
      L.polyline([[e.from[1], e.from[0]], [e.to[1], e.to[0]]], { pane: "streets", color: cssVar("--street-major"), weight: 3, interactive: false }).addTo(staticLayer);
      bounds.push([e.from[1], e.from[0]], [e.to[1], e.to[0]]);
    }
  }
  for (const node of r.header.exit_nodes || []) {
    const ll = player.nodeLonLat.get(node);
    if (ll) L.circleMarker([ll[1], ll[0]], { pane: "routes", radius: 6, color: cssVar("--muted"), weight: 2, fillOpacity: 0, interactive: false }).addTo(staticLayer);
  }
  const o = r.header.origin;
  L.circleMarker([o.lat, o.lon], { pane: "routes", radius: 10, color: cssVar("--suspect"), weight: 3, fillOpacity: 0.15 })
    .bindTooltip("Lieu de l'incident")
    .addTo(staticLayer);
  bounds.push([o.lat, o.lon]);
  for (const c of r.header.crews) bounds.push([c.lat, c.lon]);
  const suspect = r.byAgent.get("suspect") || [];
  for (const s of suspect) if (s.type === "move") bounds.push([s.to[1], s.to[0]]);
  if (bounds.length) map.fitBounds(L.latLngBounds(bounds), { padding: [40, 40], maxZoom: 17, animate: false });
}

function drawFrame() {
  frameLayer.clearLayers();
  const r = player.replay;
  $('[data-testid="clock"]').textContent = r ? `T+${clock(player.t)} / ${clock(r.duration_s)}` : "T+0:00";
  if (!r) return;
  const t = player.t;
  // suspect trail so far
  const trail = [];
  for (const s of r.byAgent.get("suspect") || []) {
    if (s.t0 > t) break;
    if (s.type === "move") {
      if (!trail.length) trail.push([s.from[1], s.from[0]]);
      const p = agentPosition([s], Math.min(t, s.t1));
      trail.push([p[1], p[0]]);
    }
  }
  if (trail.length > 1) L.polyline(trail, { pane: "routes", color: cssVar("--suspect"), weight: 3, opacity: 0.7, dashArray: "6 6", interactive: false }).addTo(frameLayer);
  // sightings and suggestions so far
  for (const e of r.events) {
    if (typeof e.t !== "number" || e.t > t) continue;
    if (e.type === "sighting" && e.at && e.at[0] !== null) {
      L.circleMarker([e.at[1], e.at[0]], { pane: "cameras", radius: 7, color: e.wrong ? cssVar("--warn") : cssVar("--camera-edge"), weight: 3, fillColor: cssVar("--camera"), fillOpacity: 0.9 })
        .bindTooltip(`${e.camera_id}${e.wrong ? " (erreur de transfert)" : ""} à T+${clock(e.observed_t)}`)
        .addTo(frameLayer);
    }
  }
  const latestSuggestion = new Map();
  for (const e of r.events) {
    if (e.type === "suggestion" && e.t <= t) latestSuggestion.set(e.crew_id, e);
  }
  // crews
  for (const [agent, segments] of r.byAgent) {
    if (agent === "suspect") continue;
    const p = agentPosition(segments, t) ?? (() => {
      const c = r.header.crews.find((x) => x.crew_id === agent);
      return c ? [c.lon, c.lat] : null;
    })();
    if (!p) continue;
    const sg = latestSuggestion.get(agent);
    if (sg?.at) {
      L.polyline([[p[1], p[0]], [sg.at[1], sg.at[0]]], { pane: "routes", color: cssVar("--route"), weight: 2, dashArray: "2 6", interactive: false }).addTo(frameLayer);
      L.circleMarker([sg.at[1], sg.at[0]], { pane: "routes", radius: 9, color: cssVar("--target"), weight: 3, fillOpacity: 0, interactive: false }).addTo(frameLayer);
    }
    L.marker([p[1], p[0]], {
      pane: "units",
      icon: L.divIcon({ className: "", html: `<div class="crew-marker" data-testid="sim-crew-${esc(agent)}">${esc(agent)}</div>`, iconSize: [64, 24], iconAnchor: [32, 12] }),
      interactive: false,
    }).addTo(frameLayer);
  }
  const sp = agentPosition(r.byAgent.get("suspect"), t);
  if (sp) {
    L.marker([sp[1], sp[0]], {
      pane: "units",
      icon: L.divIcon({ className: "", html: '<div class="sim-suspect" data-testid="sim-suspect"></div>', iconSize: [18, 18], iconAnchor: [9, 9] }),
      interactive: false,
    }).addTo(frameLayer);
  }
}

const EVENT_TEXT = {
  pass: (e) => `Passage caméra ${e.camera_id}${e.detected ? " (détecté)" : " (non vu)"}`,
  sighting: (e) => `Signalement ${e.camera_id}${e.wrong ? ` ⚠ erreur (vrai : ${e.true_camera_id})` : ""}`,
  order: (e) => `${e.crew_id} : ${e.target === null ? "attente" : `vers carrefour ${e.target}`}${e.accepted === false ? " (non suivi)" : ""}`,
  suggestion: (e) => `Suggestion ${e.crew_id} → carrefour ${e.target_node} (plan v${e.plan_version})`,
  contact: (e) => `CONTACT ${e.crew_id}`,
  outcome: (e) => `Fin : ${OUTCOME_LABEL[e.kind] ?? e.kind}`,
};
const OUTCOME_LABEL = { interception: "Interception", escape: "Fuite", timeout: "Temps écoulé" };

let lastEventsKey = "";
function renderEvents() {
  const r = player.replay;
  if (!r) return;
  const shown = r.events.filter((e) => EVENT_TEXT[e.type] && (e.type !== "pass" || e.detected));
  const t = player.t;
  const key = `${shown.length}/${shown.filter((e) => (e.t ?? 0) <= t).length}`;
  if (key === lastEventsKey) return;
  lastEventsKey = key;
  $('[data-testid="events"]').innerHTML = shown
    .map((e) => `<li data-kind="${esc(e.type)}" class="${(e.t ?? 0) > t ? "future" : ""}"><time>T+${clock(e.t ?? 0)}</time><span class="what">${esc(EVENT_TEXT[e.type](e))}</span></li>`)
    .join("");
  const past = [...document.querySelectorAll('[data-testid="events"] li:not(.future)')];
  if (past.length) past[past.length - 1].scrollIntoView({ block: "nearest" });
}

function renderOutcome() {
  const r = player.replay;
  const o = r.outcome;
  const sightings = r.events.filter((e) => e.type === "sighting");
  const passes = r.events.filter((e) => e.type === "pass");
  const rows = [];
  if (o) {
    rows.push(["Issue", `<dd class="verdict" data-kind="${esc(o.kind)}" data-testid="outcome-kind">${esc(OUTCOME_LABEL[o.kind] ?? o.kind)}</dd>`]);
    rows.push(["À", `<dd>T+${clock(o.t)}</dd>`]);
    if (o.crew_id) rows.push(["Équipage", `<dd>${esc(o.crew_id)}</dd>`]);
    rows.push(["Contacts (poursuites)", `<dd data-testid="outcome-contacts">${esc(o.contacts)}</dd>`]);
    rows.push(["Distance équipages", `<dd>${Number(o.crew_km).toFixed(1)} km</dd>`]);
    rows.push(["Changements de consigne", `<dd>${esc(o.suggestion_changes)}</dd>`]);
  } else {
    rows.push(["Issue", "<dd>(pas d'évènement outcome)</dd>"]);
  }
  rows.push(["Passages caméra vus", `<dd>${passes.filter((p) => p.detected).length} / ${passes.length}</dd>`]);
  rows.push(["Signalements (erronés)", `<dd>${sightings.length} (${sightings.filter((s) => s.wrong).length})</dd>`]);
  rows.push(["Politique", `<dd>${esc(r.header.policy)}</dd>`]);
  $('[data-testid="outcome"]').innerHTML = rows.map(([k, v]) => `<dt>${esc(k)}</dt>${v}`).join("");
}

// ---------- server-side simulation control (optional: needs the server's /api/sim routes) ----------
const sim = { runId: null, poll: null };
const simStatus = $('[data-testid="sim-status"]');

/** The server paces runs at ×1 … ×60 (docs/pages.md): offer the faster speeds too. */
function addFastSpeeds() {
  const select = $('[data-testid="sim-speed"]');
  for (const speed of [20, 30, 60]) {
    if (![...select.options].some((o) => Number(o.value) === speed)) {
      const option = document.createElement("option");
      option.value = String(speed);
      option.textContent = `×${speed}`;
      select.append(option);
    }
  }
}

async function loadScenarios() {
  addFastSpeeds();
  const select = $('[data-testid="scenario-select"]');
  try {
    const scenarios = await api("/api/sim/scenarios", { token });
    select.innerHTML = scenarios
      .map((s) => `<option value="${esc(s.name ?? s.id)}">${esc(s.title ?? s.name ?? s.id)}</option>`)
      .join("");
    select.disabled = false;
    $('[data-testid="sim-start"]').disabled = scenarios.length === 0;
    simStatus.textContent = `${scenarios.length} scénario(s)`;
  } catch (error) {
    select.innerHTML = "<option>indisponible</option>";
    simStatus.textContent =
      error instanceof ApiError && (error.status === 404 || error.status === 405)
        ? "Ce serveur ne pilote pas de simulation (pas de /api/sim/scenarios) : chargez un fichier de rejeu."
        : `Scénarios indisponibles : ${error.message}`;
    document.body.dataset.sim = "unavailable";
  }
}

async function simCall(path, body, label) {
  try {
    const run = await api(path, { method: "POST", body, token });
    if (run?.run_id) sim.runId = run.run_id;
    showRun(run);
    return run;
  } catch (error) {
    toast(`${label} : ${error.message}`, "error");
    return null;
  }
}

function showRun(run) {
  if (!run) return;
  const running = run.state === "running";
  simStatus.textContent = `Exécution ${run.run_id} : ${run.state}${typeof run.t === "number" ? ` · T+${clock(run.t)}` : ""}${run.speed ? ` · ×${run.speed}` : ""}`;
  $('[data-testid="sim-pause"]').disabled = !running;
  $('[data-testid="sim-resume"]').disabled = run.state !== "paused";
  $('[data-testid="sim-speed"]').disabled = !(running || run.state === "paused");
  if (run.state === "finished") {
    clearInterval(sim.poll);
    sim.poll = null;
    loadReplayUrl(`/api/sim/runs/${encodeURIComponent(run.run_id)}/replay`);
  } else if (!sim.poll) {
    sim.poll = setInterval(async () => {
      try {
        showRun(await api(`/api/sim/runs/${encodeURIComponent(sim.runId)}`, { token }));
      } catch {
        // keep polling; the status line shows the last known state
      }
    }, 1000);
  }
}

$('[data-testid="sim-start"]').addEventListener("click", () =>
  simCall("/api/sim/runs", { scenario: $('[data-testid="scenario-select"]').value, speed: Number($('[data-testid="sim-speed"]').value) }, "Démarrage refusé"),
);
$('[data-testid="sim-pause"]').addEventListener("click", () => simCall(`/api/sim/runs/${sim.runId}/pause`, undefined, "Pause refusée"));
$('[data-testid="sim-resume"]').addEventListener("click", () => simCall(`/api/sim/runs/${sim.runId}/resume`, undefined, "Reprise refusée"));
$('[data-testid="sim-speed"]').addEventListener("change", (event) => {
  if (sim.runId) simCall(`/api/sim/runs/${sim.runId}/speed`, { speed: Number(event.target.value) }, "Accélération refusée");
});

applyTheme(queryParam("theme") || localStorage.getItem(THEME_KEY) || "day");
loadScenarios();
const replayUrl = queryParam("replay");
if (replayUrl) loadReplayUrl(replayUrl);
window.cordonTrainer = { player, loadReplayText, setPlaying }; // for debugging and tests
