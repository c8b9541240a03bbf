// Operator console: the city map with its cameras, the incidents, live tracks with their
// uncertainty, predicted escape areas over time, crews, suggestions (approve / modify / retract)
// and the timeline. The core workflow: click the camera where the suspect is now seen, confirm.

import { LinkState, LiveSocket, api, newEventId, queryParam, takeToken } from "./api.js";
import { CREW_STATUS_LABEL, SUGGESTION_STATE_LABEL, clock, compass, esc, hms } from "./format.js";
import { createMap, cssVar, loadCameras, loadStreets, restyleStreets, toLatLng, toLatLngs } from "./map.js";
import { messageType, normaliseSuggestion, trackFromState } from "./protocol.js";

const L = window.L;
const $ = (sel) => document.querySelector(sel);
const token = takeToken();
const THEME_KEY = "cordon.console.theme";

const ACTIVE_STATES = new Set(["pending_approval", "sent", "accepted", "in_position"]);
const FINAL_STATES = new Set(["declined", "retracted", "expired", "superseded"]);

const state = {
  incidents: new Map(), // incident_id -> IncidentInfo
  selected: null, // incident_id
  tracks: new Map(), // incident_id -> TrackMsg
  sightings: new Map(), // incident_id -> [SightingEventMsg]
  predictions: new Map(), // incident_id -> {at, geojson}
  plans: new Map(), // incident_id -> PlanMsg
  crews: new Map(), // crew_id -> CrewBody
  crewActivity: new Map(), // crew_id -> last decision ("in_position", "contact", ...)
  suggestions: new Map(), // suggestion_id -> SuggestionBody
  timeline: [], // {at, incident_id, kind, text}
  pick: null, // null | {kind: "incident"} | {kind: "modify", suggestion_id}
  horizonIndex: 0,
  link: LinkState.CONNECTING,
  cameras: null,
};

// ---------- theme ----------
function applyTheme(theme) {
  document.body.dataset.theme = theme;
  $('[data-testid="theme-toggle"]').textContent = theme === "night" ? "☀ Jour" : "☾ Nuit";
  localStorage.setItem(THEME_KEY, theme);
  restyleStreets(streets);
  if (state.cameras) {
    for (const { marker } of state.cameras.byId.values()) {
      marker.setStyle({ color: cssVar("--camera-edge"), fillColor: cssVar("--camera") });
    }
  }
  renderMap();
}
$('[data-testid="theme-toggle"]').addEventListener("click", () =>
  applyTheme(document.body.dataset.theme === "night" ? "day" : "night"),
);
document.body.dataset.theme = queryParam("theme") || localStorage.getItem(THEME_KEY) || "day";

// ---------- map ----------
const map = createMap($("#map"));
let streets = null;
const layers = {
  areas: L.layerGroup().addTo(map),
  track: L.layerGroup().addTo(map),
  suggestions: L.layerGroup().addTo(map),
  crews: L.layerGroup().addTo(map),
};
loadStreets(map)
  .then((layer) => {
    streets = layer;
  })
  .catch((error) => toast(`Réseau routier indisponible : ${error.message}`, "error"));
loadCameras(map, { onClick: onCameraClick })
  .then((cameras) => {
    state.cameras = cameras;
  })
  .catch((error) => toast(`Caméras indisponibles : ${error.message}`, "error"));
map.on("click", onMapClick);

// ---------- toast ----------
function toast(text, kind = "info") {
  const el = $('[data-testid="toast"]');
  el.textContent = text;
  el.dataset.kind = kind;
  el.classList.remove("hidden");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.add("hidden"), kind === "error" ? 8000 : 3500);
}

function errorText(error) {
  const d = error.detail;
  if (d && typeof d === "object" && d.message) return d.message;
  if (typeof d === "string") return d;
  return error.message;
}

// ---------- timeline ----------
function addTimeline(at, incidentId, kind, text) {
  state.timeline.push({ at: at || new Date().toISOString(), incident_id: incidentId, kind, text });
  if (state.timeline.length > 2000) state.timeline.splice(0, state.timeline.length - 2000);
}

// ---------- websocket (serving/messages.py: OperatorServerMessage) ----------
const socket = new LiveSocket("/ws/operator", {
  token,
  resume: false,
  onMessage: handleMessage,
  onOpen: () => watchSelected(),
  onDenied: (reason) => toast(`Accès refusé : ${reason}. Ouvrir la console avec une adresse munie d'un jeton valide.`, "error"),
  onState: (linkState) => {
    state.link = linkState;
    const pill = $('[data-testid="link-state"]');
    pill.dataset.state = linkState;
    pill.textContent = { online: "En ligne", connecting: "Connexion…", offline: "Hors ligne" }[linkState];
    document.body.dataset.link = linkState;
  },
});

let serverOffsetMs = 0;
/** The server's clock (which may be a simulation clock), estimated from `sent_at`. */
function serverNow() {
  return new Date(Date.now() + serverOffsetMs);
}

function handleMessage(message) {
  if (message.sent_at) {
    const t = new Date(message.sent_at).getTime();
    if (!Number.isNaN(t)) serverOffsetMs = t - Date.now();
  }
  switch (messageType(message)) {
    case "snapshot":
      for (const info of message.incidents || []) state.incidents.set(info.incident_id, info);
      for (const crew of message.crews || []) state.crews.set(crew.crew_id, crew);
      for (const s of message.suggestions || []) state.suggestions.set(s.suggestion_id, s);
      if (!state.selected) {
        const open = [...state.incidents.values()].filter((i) => !i.closed_at);
        if (open.length) selectIncident(open[open.length - 1].incident_id);
      } else {
        loadIncidentState(state.selected);
      }
      break;
    case "incident": {
      state.incidents.set(message.incident.incident_id, message.incident);
      const label = { opened: "Incident ouvert", closed: "Incident clos", shared: "Incident partagé" }[message.event];
      addTimeline(message.sent_at, message.incident.incident_id, "incident", label);
      if (message.event === "opened" && (!state.selected || pendingOpen === message.incident.incident_id)) {
        selectIncident(message.incident.incident_id);
      }
      break;
    }
    case "sighting": {
      const list = state.sightings.get(message.incident_id) || [];
      if (!list.some((s) => s.source_event_id === message.source_event_id)) list.push(message);
      state.sightings.set(message.incident_id, list);
      addTimeline(message.observed_at, message.incident_id, "sighting", `Signalement ${message.camera_id}${message.late ? " (tardif)" : ""}`);
      if (message.flag) addTimeline(message.observed_at, message.incident_id, "flag", `⚠ ${message.flag}`);
      break;
    }
    case "track":
      state.tracks.set(message.incident_id, message);
      break;
    case "prediction":
      state.predictions.set(message.incident_id, { at: message.at, geojson: message.geojson });
      break;
    case "plan": {
      state.plans.set(message.incident_id, message);
      // The plan carries its suggestions (with their states) and the ids no longer in force;
      // without their routes (detail: false) when this console does not watch the incident.
      const slim = message.detail === false;
      for (const s of message.suggestions || []) {
        const known = state.suggestions.get(s.suggestion_id);
        state.suggestions.set(s.suggestion_id, slim && known ? { ...s, route_lonlat: known.route_lonlat, turns: known.turns } : s);
      }
      // sent before the server had our watch of the selected incident: fetch the routes
      if (slim && message.incident_id === state.selected) loadIncidentState(message.incident_id);
      // a superseded suggestion is forgotten (an incident re-planned for hours ends thousands);
      // declined and retracted ones stay in the incident's list
      for (const id of message.ended || []) { const s = state.suggestions.get(id); if (s && !FINAL_STATES.has(s.state)) state.suggestions.delete(id); }
      const holds = message.holds?.length ? `, ${message.holds.length} en attente` : "";
      addTimeline(message.at, message.incident_id, "plan", `Plan v${message.version} : ${message.suggestion_ids.length} point(s), couverture ${Math.round(100 * message.coverage_probability)} %${holds}`);
      break;
    }
    case "suggestion": {
      const previous = state.suggestions.get(message.suggestion.suggestion_id);
      state.suggestions.set(message.suggestion.suggestion_id, message.suggestion);
      if (previous && previous.state !== message.suggestion.state && FINAL_STATES.has(message.suggestion.state) && message.suggestion.state !== "superseded") {
        addTimeline(message.sent_at, message.suggestion.incident_id, "suggestion", `${message.suggestion.crew_id} : ${SUGGESTION_STATE_LABEL[message.suggestion.state] ?? message.suggestion.state}`);
      }
      break;
    }
    case "crew":
      state.crews.set(message.crew.crew_id, message.crew);
      break;
    case "decision": {
      if (message.crew_id && ["accept", "decline", "in_position", "contact"].includes(message.decision)) {
        state.crewActivity.set(message.crew_id, message.decision);
      }
      const s = message.suggestion_id ? state.suggestions.get(message.suggestion_id) : null;
      if (s) {
        const next = { accept: "accepted", decline: "declined", in_position: "in_position", retract: "retracted" }[message.decision];
        if (next) s.state = next;
      }
      const what = {
        accept: "accepte",
        decline: "refuse",
        in_position: "en position",
        contact: "CONTACT",
        approve: "validée",
        modify: "modifiée",
        retract: "annulée",
      }[message.decision];
      const who = message.role === "crew" ? message.crew_id : `${message.actor} (${message.crew_id ?? ""})`;
      const reason = message.reason ? ` – ${message.reason}` : "";
      addTimeline(message.sent_at, message.incident_id, message.decision === "contact" ? "flag" : "decision", `${who} : ${what}${reason}`);
      break;
    }
    case "error":
      toast(`Serveur : ${message.message}`, "error");
      break;
    default:
      break;
  }
  scheduleRender();
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

// ---------- incidents ----------
let pendingOpen = null;

/**
 * Predictions (tens of kB each, every few seconds per incident) only for the selected incident:
 * the map draws no other. Every other message still comes for every incident.
 */
function watchSelected() {
  socket.send({ type: "watch", incident_ids: state.selected ? [state.selected] : [] });
}

function selectIncident(incidentId) {
  if (incidentId !== state.selected) state.predictions.delete(incidentId); // stale: not pushed while unwatched
  state.selected = incidentId;
  watchSelected();
  state.horizonIndex = 0;
  loadIncidentState(incidentId);
  scheduleRender();
}

async function loadIncidentState(incidentId) {
  try {
    const view = await api(`/api/incidents/${encodeURIComponent(incidentId)}/state`, { token });
    if (!view) return;
    if (view.incident) state.incidents.set(incidentId, view.incident);
    const track = trackFromState(view);
    if (track && !state.tracks.has(incidentId)) state.tracks.set(incidentId, { ...track, incident_id: incidentId });
    if (view.prediction?.features?.length && !state.predictions.has(incidentId)) {
      state.predictions.set(incidentId, { at: track?.at ?? null, geojson: view.prediction });
    }
    if (view.plan && !state.plans.has(incidentId)) state.plans.set(incidentId, view.plan);
    // the routes of the suggestions we hold without them (plans of unwatched incidents): only
    // those, never adding one (this view may be older than a plan that ended it meanwhile)
    for (const s of view.plan?.suggestions || []) {
      const known = state.suggestions.get(s.suggestion_id);
      if (known && !known.route_lonlat?.length) Object.assign(known, { route_lonlat: s.route_lonlat, turns: s.turns });
    }
    scheduleRender();
  } catch (error) {
    if (error.status !== 404) console.warn("cordon: incident state", error);
  }
}

$('[data-testid="new-incident"]').addEventListener("click", () => startPick({ kind: "incident" }));

function startPick(pick) {
  state.pick = pick;
  $("#map").classList.add("picking");
  const hint = $('[data-testid="mode-hint"]');
  hint.textContent =
    pick.kind === "incident"
      ? "Cliquer le lieu de l'incident sur la carte (Échap : annuler)"
      : `Cliquer le nouveau point pour ${pick.crew_id} (Échap : annuler)`;
  hint.classList.remove("hidden");
}

function endPick() {
  state.pick = null;
  $("#map").classList.remove("picking");
  $('[data-testid="mode-hint"]').classList.add("hidden");
}

function onMapClick(event) {
  if (!state.pick) return;
  const pick = state.pick;
  endPick();
  const { lat, lng: lon } = event.latlng;
  if (pick.kind === "incident") openIncidentDialog(lon, lat);
  else if (pick.kind === "modify") {
    socket.send({ type: "modify", suggestion_id: pick.suggestion_id, lon: round6(lon), lat: round6(lat) });
    toast(`Modification envoyée pour ${pick.crew_id}`);
  }
}

function round6(x) {
  return Math.round(x * 1e6) / 1e6;
}

function openIncidentDialog(lon, lat) {
  const dialog = $("#incident-dialog");
  const form = dialog.querySelector("form");
  form.reset();
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  form.incident_id.value = `INC-${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}-${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
  $('[data-testid="incident-where"]').textContent = `Lieu : ${lat.toFixed(5)}, ${lon.toFixed(5)}`;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    const body = { incident_id: form.incident_id.value.trim(), lon: round6(lon), lat: round6(lat), at: serverNow().toISOString() };
    if (form.commune.value.trim()) body.commune = form.commune.value.trim();
    if (form.description.value.trim()) body.description = form.description.value.trim();
    pendingOpen = body.incident_id;
    try {
      const info = await api("/api/incidents", { method: "POST", body, token });
      if (info?.incident_id) state.incidents.set(info.incident_id, info);
      selectIncident(body.incident_id);
      map.setView([lat, lon], Math.max(map.getZoom(), 16), { animate: false });
      toast(`Incident ${body.incident_id} ouvert`);
    } catch (error) {
      toast(`Ouverture refusée : ${errorText(error)}`, "error");
    }
  };
  $('[data-testid="incident-cancel"]').onclick = () => dialog.close("cancel");
  dialog.showModal();
  form.incident_id.focus();
  form.incident_id.select();
}

async function closeIncident(incidentId) {
  if (!window.confirm(`Clore l'incident ${incidentId} ?`)) return;
  try {
    const info = await api(`/api/incidents/${encodeURIComponent(incidentId)}/close`, { method: "POST", token });
    if (info?.incident_id) state.incidents.set(info.incident_id, info);
    toast(`Incident ${incidentId} clos`);
    scheduleRender();
  } catch (error) {
    toast(`Clôture refusée : ${errorText(error)}`, "error");
  }
}

// ---------- sightings: the core workflow ----------
function onCameraClick(cameraId, feature, latlng) {
  if (state.pick) {
    onMapClick({ latlng }); // picking a place: a camera is just a point of the map
    return;
  }
  const incident = state.selected ? state.incidents.get(state.selected) : null;
  if (!incident || incident.closed_at) {
    toast("Sélectionnez ou ouvrez d'abord un incident (+ Nouvel incident)", "error");
    return;
  }
  const dialog = $("#sighting-dialog");
  const form = dialog.querySelector("form");
  form.reset();
  const observedAt = serverNow(); // the moment the operator saw it, not the moment they confirmed
  $('[data-testid="sighting-title"]').textContent = `Signalement à ${cameraId}`;
  $('[data-testid="sighting-sub"]').textContent = `Incident ${incident.incident_id} · vu à ${hms(observedAt)}`;
  dialog.returnValue = "";
  dialog.onclose = () => {
    if (dialog.returnValue !== "ok") return;
    const heading = form.querySelector('input[name="heading"]:checked')?.value;
    postSighting({
      incident_id: incident.incident_id,
      camera_id: cameraId,
      observed_at: observedAt.toISOString(),
      source_kind: "operator",
      source_event_id: newEventId(),
      heading_deg: heading ? Number(heading) : null,
      vehicle_description: form.vehicle.value.trim() || null,
    });
  };
  $('[data-testid="sighting-cancel"]').onclick = () => dialog.close("cancel");
  dialog.showModal();
  $('[data-testid="sighting-confirm"]').focus();
}

async function postSighting(sighting) {
  const body = Object.fromEntries(Object.entries(sighting).filter(([, v]) => v !== null && v !== undefined));
  try {
    const ack = await api("/api/sightings", { method: "POST", body, token });
    if (ack?.duplicate) toast(`Signalement ${sighting.camera_id} déjà reçu`);
    else if (ack?.flag) toast(`Signalement ${sighting.camera_id} enregistré, signalé : ${ack.flag}`, "error");
    else toast(`Signalement ${sighting.camera_id} enregistré`);
  } catch (error) {
    if (error instanceof TypeError) {
      // network down: the websocket queues it and sends it once the link is back
      const { source_kind: _kind, ...message } = body;
      socket.send({ type: "sighting", ...message });
      toast(`Hors ligne : signalement ${sighting.camera_id} mis en attente`, "error");
    } else {
      toast(`Signalement refusé : ${errorText(error)}`, "error");
    }
  }
}

// ---------- suggestions ----------
function approve(id) {
  socket.send({ type: "approve", suggestion_id: id });
}

function retract(id) {
  const s = state.suggestions.get(id);
  const reason = window.prompt(`Motif de l'annulation pour ${s?.crew_id ?? id} :`, "annulé par l'opérateur");
  if (reason === null) return;
  socket.send({ type: "retract", suggestion_id: id, reason: reason.trim() || "annulé par l'opérateur" });
}

/** Fit the map to the selected incident: track, sightings, active suggestions and their crews. */
function fitIncident() {
  const id = state.selected;
  if (!id) return;
  const points = [];
  const t = state.tracks.get(id);
  if (t) points.push([t.lat, t.lon]);
  for (const s of state.sightings.get(id) || []) points.push([s.lat, s.lon]);
  // The incident's own location (origin, else first sighting): an incident opened elsewhere.
  const incident = state.incidents.get(id);
  if (!points.length && incident && typeof incident.lon === "number") points.push([incident.lat, incident.lon]);
  for (const s of suggestionsOfSelected().filter((x) => ACTIVE_STATES.has(x.state))) {
    points.push([s.lat, s.lon]);
    const crew = state.crews.get(s.crew_id);
    if (crew) points.push([crew.lat, crew.lon]);
  }
  if (points.length) map.fitBounds(L.latLngBounds(points), { padding: [70, 70], maxZoom: 17, animate: false });
}
$('[data-testid="fit-incident"]').addEventListener("click", fitIncident);

// ---------- keyboard ----------
document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || document.querySelector("dialog[open]")) return;
  if (event.key === "Escape" && state.pick) endPick();
  else if (event.key === "n" || event.key === "N") startPick({ kind: "incident" });
  else if (event.key === "f" || event.key === "F") fitIncident();
});

// ---------- rendering ----------
function render() {
  renderHeader();
  renderIncidents();
  renderTrack();
  renderSuggestions();
  renderCrews();
  renderTimeline();
  renderMap();
}

function renderHeader() {
  const el = $('[data-testid="current-incident"]');
  const info = state.selected ? state.incidents.get(state.selected) : null;
  el.textContent = info ? `Incident ${info.incident_id}${info.closed_at ? " (clos)" : ""}` : "Aucun incident sélectionné";
}

function renderIncidents() {
  const list = $('[data-testid="incident-list"]');
  const items = [...state.incidents.values()].sort((a, b) => String(b.opened_at).localeCompare(String(a.opened_at)));
  list.innerHTML = items
    .map((i) => {
      const closed = Boolean(i.closed_at);
      const nSightings = Math.max(i.n_sightings ?? 0, state.sightings.get(i.incident_id)?.length ?? 0);
      const planVersion = Math.max(i.plan_version ?? 0, state.plans.get(i.incident_id)?.version ?? 0);
      return `<li data-testid="incident-${esc(i.incident_id)}" data-id="${esc(i.incident_id)}" class="${i.incident_id === state.selected ? "selected" : ""} ${closed ? "closed" : ""}">
        <div class="row"><span class="name">${esc(i.incident_id)}</span>
          <span class="badge" data-state="${closed ? "expired" : "sent"}">${closed ? "Clos" : "Ouvert"}</span></div>
        <div class="row meta">${i.commune ? `${esc(i.commune)} · ` : ""}ouvert ${hms(i.opened_at)} · ${nSightings} signalement(s) · plan v${planVersion}
          <span class="spacer"></span>
          <button type="button" class="btn-small" data-act="select">Suivre</button>
          ${closed ? "" : '<button type="button" class="btn-small danger" data-act="close">Clore</button>'}</div>
      </li>`;
    })
    .join("");
  for (const li of list.querySelectorAll("li")) {
    li.querySelector('[data-act="select"]').onclick = () => selectIncident(li.dataset.id);
    const close = li.querySelector('[data-act="close"]');
    if (close) close.onclick = () => closeIncident(li.dataset.id);
  }
}

function renderTrack() {
  const box = $('[data-testid="track-box"]');
  const t = state.selected ? state.tracks.get(state.selected) : null;
  const sightings = (state.selected && state.sightings.get(state.selected)) || [];
  if (!t) {
    box.textContent = sightings.length ? `${sightings.length} signalement(s), piste en calcul…` : "Aucune piste : cliquer une caméra pour signaler le suspect";
    return;
  }
  const heading = t.heading_deg === null || t.heading_deg === undefined ? "?" : `${compass(t.heading_deg)} (${Math.round(t.heading_deg)}°)`;
  box.innerHTML = `<b data-testid="track-camera">Dernière caméra : ${esc(t.last_camera_id ?? "–")}</b><br>
    Il y a ${clock(t.since_last_sighting_s)} · ${t.n_sightings} signalement(s)<br>
    Vitesse ${Math.round(3.6 * t.speed_mps)} km/h · cap ${heading}<br>
    Incertitude ± ${Math.round(t.sigma_along_m)} m le long de la route`;
}

function suggestionsOfSelected() {
  return [...state.suggestions.values()]
    .filter((s) => s.incident_id === state.selected)
    .sort((a, b) => (ACTIVE_STATES.has(b.state) - ACTIVE_STATES.has(a.state)) || String(b.issued_at).localeCompare(String(a.issued_at)));
}

function renderSuggestions() {
  const list = $('[data-testid="suggestion-list"]');
  const plan = state.selected ? state.plans.get(state.selected) : null;
  $('[data-testid="plan-summary"]').textContent = plan
    ? `plan v${plan.version} · couverture ${Math.round(100 * plan.coverage_probability)} % · ${plan.dispatch_mode === "approval" ? "validation" : "direct"}`
    : "";
  const items = suggestionsOfSelected().filter((s) => ACTIVE_STATES.has(s.state) || s.state === "declined").slice(0, 30);
  list.innerHTML = items
    .map((raw) => {
      const s = normaliseSuggestion(raw);
      const active = ACTIVE_STATES.has(s.state);
      return `<li data-testid="suggestion-${esc(s.suggestion_id)}" data-id="${esc(s.suggestion_id)}" data-crew="${esc(s.crew_id)}" data-state="${esc(s.state)}">
        <div class="row"><span class="name">${esc(s.crew_id)} → ${esc(s.target_label)}</span>
          <span class="badge" data-state="${esc(s.state)}" data-testid="suggestion-state">${esc(SUGGESTION_STATE_LABEL[s.state] ?? s.state)}</span></div>
        <div class="eta-line">équipage ${clock(s.crew_eta_s)} · suspect ${clock(s.suspect_earliest_eta_s)} · marge ${clock(s.margin_s)} · couvre ${Math.round(100 * s.probability_covered)} %</div>
        ${s.reason ? `<div class="meta">${esc(s.reason)}</div>` : ""}
        <div class="row">
          ${s.state === "pending_approval" ? '<button type="button" class="btn-small primary" data-act="approve" data-testid="approve">Valider</button>' : ""}
          ${active ? '<button type="button" class="btn-small" data-act="modify" data-testid="modify">Modifier</button>' : ""}
          ${active ? '<button type="button" class="btn-small danger" data-act="retract" data-testid="retract">Annuler</button>' : ""}
        </div>
      </li>`;
    })
    .join("") || '<li class="meta">Aucune suggestion</li>';
  for (const li of list.querySelectorAll("li[data-id]")) {
    const id = li.dataset.id;
    const on = (act, fn) => {
      const b = li.querySelector(`[data-act="${act}"]`);
      if (b) b.onclick = fn;
    };
    on("approve", () => approve(id));
    on("modify", () => startPick({ kind: "modify", suggestion_id: id, crew_id: li.dataset.crew }));
    on("retract", () => retract(id));
  }
}

/** A crew's displayed status: its live suggestion's progress beats its dispatch status. */
function crewDisplayState(crew) {
  const live = [...state.suggestions.values()].filter((s) => s.crew_id === crew.crew_id && ACTIVE_STATES.has(s.state));
  if (state.crewActivity.get(crew.crew_id) === "contact" && live.length) return "contact";
  if (live.some((s) => s.state === "in_position")) return "in_position";
  if (live.some((s) => s.state === "accepted")) return "accepted";
  return crew.status;
}

function renderCrews() {
  const list = $('[data-testid="crew-list"]');
  const crews = [...state.crews.values()].sort((a, b) => a.crew_id.localeCompare(b.crew_id));
  list.innerHTML = crews
    .map((c) => {
      const display = crewDisplayState(c);
      const label = display === "accepted" ? "En route" : (CREW_STATUS_LABEL[display] ?? SUGGESTION_STATE_LABEL[display] ?? display);
      return `<li data-testid="crew-row-${esc(c.crew_id)}" data-state="${esc(display)}">
        <div class="row"><span class="name">${esc(c.crew_id)}</span><span class="badge" data-state="${esc(display)}" data-testid="crew-state">${esc(label)}</span></div>
        <div class="meta">${esc(c.commune ?? "")} · position ${hms(c.updated_at)}</div>
      </li>`;
    })
    .join("") || '<li class="meta">Aucun équipage connecté</li>';
}

function renderTimeline() {
  const all = $('[data-testid="timeline-all"]').checked;
  const items = state.timeline.filter((e) => all || !state.selected || e.incident_id === state.selected).slice(-300).reverse();
  $('[data-testid="timeline"]').innerHTML = items
    .map((e) => `<li data-kind="${esc(e.kind)}"><time>${hms(e.at)}</time><span class="what">${all && e.incident_id ? `[${esc(e.incident_id)}] ` : ""}${esc(e.text)}</span></li>`)
    .join("");
}
$('[data-testid="timeline-all"]').addEventListener("change", renderTimeline);

// ---------- map rendering ----------
/** The horizons (s) of a prediction: its `position` features' `time_s` (guidance/geojson.py). */
function horizonsOf(geojson) {
  const set = new Set();
  for (const f of geojson?.features || []) {
    if (f.properties?.kind !== "position") continue;
    const h = f.properties?.time_s ?? f.properties?.horizon_s;
    if (typeof h === "number") set.add(h);
  }
  return [...set].sort((a, b) => a - b);
}

/**
 * Whether a prediction feature belongs on the map at horizon `h` (null: everything):
 * crossings the suspect can have reached by then (`earliest_eta_s <= h`), the suspect's
 * likely position at that horizon (`position` lines with `time_s == h`) and the likely routes.
 */
function showAtHorizon(feature, h) {
  const p = feature.properties || {};
  if (h === null) return p.kind !== "position";
  if (p.kind === "crossing") return typeof p.earliest_eta_s === "number" && p.earliest_eta_s <= h;
  if (p.kind === "position") return (p.time_s ?? p.horizon_s) === h;
  return true;
}

const slider = $('[data-testid="horizon-slider"]');
slider.addEventListener("input", () => {
  state.horizonIndex = Number(slider.value);
  renderMap();
});

function horizonLabel(seconds) {
  if (seconds < 60) return `+${seconds} s`;
  return `+${clock(seconds)}`;
}

function renderMap() {
  const id = state.selected;
  // prediction for the chosen horizon
  layers.areas.clearLayers();
  const prediction = id ? state.predictions.get(id) : null;
  const horizons = horizonsOf(prediction?.geojson);
  slider.max = String(Math.max(0, horizons.length - 1));
  state.horizonIndex = Math.min(state.horizonIndex, Math.max(0, horizons.length - 1));
  slider.value = String(state.horizonIndex);
  slider.disabled = horizons.length < 2;
  const horizon = horizons.length ? horizons[state.horizonIndex] : null;
  $('[data-testid="horizon-label"]').textContent = horizon === null ? (prediction ? "tout" : "–") : horizonLabel(horizon);
  if (prediction?.geojson?.features?.length) {
    const area = cssVar("--area", "#e2571e");
    L.geoJSON(prediction.geojson, {
      pane: "areas",
      interactive: false,
      filter: (f) => showAtHorizon(f, horizon),
      style: (f) => {
        const p = Math.min(1, Number(f.properties?.probability ?? 0.3));
        if (f.properties?.kind === "route") return { color: area, weight: 2 + 4 * p, opacity: 0.45, dashArray: "8 6" };
        return { color: cssVar("--suspect"), weight: 6 + 6 * p, opacity: 0.5 + 0.5 * p, lineCap: "round" };
      },
      pointToLayer: (f, latlng) => {
        const p = Math.min(1, Number(f.properties?.probability ?? 0.3));
        return L.circleMarker(latlng, { pane: "areas", radius: 4 + 10 * Math.sqrt(p), stroke: false, fillColor: area, fillOpacity: 0.25 + 0.6 * p });
      },
    }).addTo(layers.areas);
  }

  // track: sightings, mean position, 1-sigma circle
  layers.track.clearLayers();
  const sightings = (id && state.sightings.get(id)) || [];
  const path = sightings.map((s) => [s.lat, s.lon]);
  if (path.length > 1) L.polyline(path, { pane: "routes", color: cssVar("--suspect"), weight: 2, dashArray: "4 6", interactive: false }).addTo(layers.track);
  sightings.forEach((s, i) => {
    L.marker([s.lat, s.lon], {
      pane: "units",
      icon: L.divIcon({ className: "", html: `<div class="sighting-dot" data-testid="sighting-dot">${i + 1}</div>`, iconSize: [22, 22], iconAnchor: [11, 11] }),
      interactive: false,
    }).addTo(layers.track);
  });
  const t = id ? state.tracks.get(id) : null;
  if (t) {
    L.circle([t.lat, t.lon], { pane: "areas", radius: Math.max(5, t.sigma_along_m), color: cssVar("--suspect"), weight: 2, fillOpacity: 0.12, interactive: false }).addTo(layers.track);
    L.marker([t.lat, t.lon], {
      pane: "units",
      icon: L.divIcon({ className: "", html: '<div class="suspect-marker" data-testid="track-marker"></div>', iconSize: [22, 22], iconAnchor: [11, 11] }),
      title: `Suspect estimé (± ${Math.round(t.sigma_along_m)} m)`,
    }).addTo(layers.track);
  }

  // suggestions: route + target
  layers.suggestions.clearLayers();
  for (const raw of suggestionsOfSelected().filter((s) => ACTIVE_STATES.has(s.state))) {
    const s = normaliseSuggestion(raw);
    const pending = s.state === "pending_approval";
    if (s.route_lonlat.length) {
      L.polyline(toLatLngs(s.route_lonlat), { pane: "routes", color: cssVar("--route"), weight: 4, opacity: 0.85, dashArray: pending ? "6 8" : null, interactive: false }).addTo(layers.suggestions);
    }
    const target = toLatLng([s.lon, s.lat]);
    if (target) {
      L.marker(target, {
        pane: "units",
        icon: L.divIcon({ className: "", html: '<div class="target-marker"></div>', iconSize: [34, 34], iconAnchor: [17, 17] }),
        title: `${s.crew_id} → ${s.target_label}`,
        interactive: false,
      }).addTo(layers.suggestions);
    }
  }

  // crews
  layers.crews.clearLayers();
  for (const c of state.crews.values()) {
    const display = crewDisplayState(c);
    L.marker([c.lat, c.lon], {
      pane: "units",
      icon: L.divIcon({ className: "", html: `<div class="crew-marker" data-status="${esc(display)}" data-testid="crew-marker-${esc(c.crew_id)}">${esc(c.crew_id)}</div>`, iconSize: [64, 26], iconAnchor: [32, 13] }),
      title: `${c.crew_id} – ${CREW_STATUS_LABEL[display] ?? display}`,
      interactive: false,
    }).addTo(layers.crews);
  }
}

// periodic refresh of relative times ("il y a ...") and expiries
setInterval(() => {
  const now = serverNow().getTime();
  let changed = false;
  for (const s of state.suggestions.values()) {
    if (ACTIVE_STATES.has(s.state) && s.state !== "in_position" && s.expires_at && new Date(s.expires_at).getTime() < now - 2000) {
      s.state = "expired";
      changed = true;
    }
  }
  if (changed) scheduleRender();
}, 1000);

applyTheme(document.body.dataset.theme);
render();
socket.start();
window.cordonConsole = { state, socket, map }; // for debugging and tests
