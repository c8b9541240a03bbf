// Crew tablet: one crew's mission. Receives suggestions over the crew websocket, shows the
// target crossing and route, crew ETA against suspect ETA with a countdown, the suspect's last
// sighting and predicted area; sends accept / decline (reason) / in position / contact.
// A changed suggestion raises a full-width banner that must be acknowledged; a retraction shows
// ANNULÉ; while the link is down the last plan stays on screen under a "HORS LIGNE" overlay.

import { LinkState, LiveSocket, api, queryParam, takeToken, tokenClaims } from "./api.js";
import { clock, compass, esc, hms } from "./format.js";
import { createMap, loadStreets, restyleStreets, toLatLng, toLatLngs } from "./map.js";
import { messageType, normaliseSuggestion, suggestionTargetKey, trackFromState } from "./protocol.js";

const L = window.L;
const $ = (sel) => document.querySelector(sel);

const token = takeToken();
const crewId = queryParam("crew") || tokenClaims(token).crew_id || "";
const THEME_KEY = "cordon.crew.theme";

const state = {
  crew: null, // {crew_id, status, lon, lat}
  suggestion: null, // normalised current suggestion
  missionState: "idle", // idle | proposed | accepted | in_position | contact | declined | retracted | expired
  pendingBanner: null, // {kind, title, detail}
  belief: null,
  serverOffsetMs: 0,
  planReceivedAt: null, // client Date when the shown plan arrived
  link: LinkState.CONNECTING,
  history: [], // [{event, suggestion_id, at}]: what the tablet showed, for the debrief and tests
};

function remember(event, suggestionId) {
  state.history.push({ event, suggestion_id: suggestionId, at: new Date().toISOString() });
  if (state.history.length > 200) state.history.shift();
}

// ---------- theme ----------
function applyTheme(theme) {
  document.body.dataset.theme = theme;
  $('[data-testid="theme-toggle"]').textContent = theme === "night" ? "☀ Jour" : "☾ Nuit";
  localStorage.setItem(THEME_KEY, theme);
  restyleStreets(streets);
  redraw();
}
const initialTheme = queryParam("theme") || localStorage.getItem(THEME_KEY) || "day";
document.body.dataset.theme = initialTheme;

// ---------- map ----------
const map = createMap($("#map"), { zoomControl: false });
L.control.zoom({ position: "bottomleft" }).addTo(map);
let streets = null;
const layers = {
  area: L.layerGroup().addTo(map),
  route: L.layerGroup().addTo(map),
  suspect: L.layerGroup().addTo(map),
  crew: L.layerGroup().addTo(map),
};
loadStreets(map)
  .then((layer) => {
    streets = layer;
    fitToMission();
    redraw();
  })
  .catch((error) => console.error("cordon: streets", error));

function serverNow() {
  return Date.now() + state.serverOffsetMs;
}

// ---------- link ----------
const socket = new LiveSocket("/ws/crew", {
  token,
  onMessage: handleMessage,
  onDenied: (reason) => showError(`Accès refusé : ${reason}. Demander une nouvelle adresse de connexion.`, 0),
  onState: (linkState) => {
    state.link = linkState;
    renderLink();
  },
});

function renderLink() {
  const pill = $('[data-testid="link-state"]');
  pill.dataset.state = state.link;
  pill.textContent = { online: "En ligne", connecting: "Connexion…", offline: "Hors ligne" }[state.link];
  document.body.dataset.link = state.link;
  const stale = state.link !== LinkState.ONLINE && state.planReceivedAt !== null;
  document.body.classList.toggle("is-stale", stale);
  $("#stale").classList.toggle("hidden", !(state.link !== LinkState.ONLINE && state.everOnline));
  $('[data-testid="stale-text"]').textContent = state.planReceivedAt
    ? `plan du ${hms(state.planReceivedAt)}`
    : "aucun plan reçu";
}

// ---------- incoming messages (serving/messages.py: CrewServerMessage) ----------
function handleMessage(message) {
  const type = messageType(message);
  if (message.sent_at) {
    const t = new Date(message.sent_at).getTime();
    if (!Number.isNaN(t)) state.serverOffsetMs = t - Date.now();
  }
  state.everOnline = true;
  switch (type) {
    case "snapshot":
      onSnapshot(message);
      break;
    case "suggestion":
      onSuggestion(message.suggestion, {});
      break;
    case "suggestion_update":
      onSuggestion(message.suggestion, { replaces: message.replaces });
      break;
    case "suggestion_retracted":
      onRetracted(message);
      break;
    case "error":
      console.warn("cordon: server error", message.code, message.message);
      showError(message.message || message.code);
      break;
    case "track":
      // Pushed by the server to crews holding a suggestion for the incident.
      if (state.suggestion && message.incident_id === state.suggestion.incident_id) {
        state.belief = message;
        lastPush = Date.now();
      }
      break;
    case "prediction":
      if (state.suggestion && message.incident_id === state.suggestion.incident_id && message.geojson) {
        drawPrediction(message.geojson);
        lastPush = Date.now();
      }
      break;
    case "heartbeat":
      return; // only keeps the link's silence timer alive (api.js)
    default:
      break;
  }
  renderLink();
  redraw();
  if (type === "snapshot" || type.startsWith("suggestion")) refreshIncident(true);
}

/** The connect / gap / resume snapshot lists this crew's current (unexpired) suggestions. */
function onSnapshot(message) {
  const current = (message.suggestions || []).filter((s) => mine(s) && !["retracted", "expired", "superseded", "declined"].includes(s.state));
  current.sort((a, b) => String(b.issued_at).localeCompare(String(a.issued_at)));
  const shown = state.suggestion;
  if (current.length) {
    onSuggestion(current[0], { quiet: true });
  } else if (shown && isLive()) {
    // The plan we were showing is no longer current (retracted or expired while we were away).
    const expired = shown.expires_at && new Date(shown.expires_at).getTime() <= serverNow();
    if (expired) state.missionState = "expired";
    else onRetracted({ suggestion_id: shown.suggestion_id, reason: "plan retiré pendant la coupure" });
  }
}

/**
 * The incident's latest track and prediction (`GET /api/incidents/{id}/state`): on a new
 * suggestion, and as a fallback every 30 s when the server has pushed nothing for that long
 * (it pushes `track` / `prediction` to crews holding a suggestion for the incident).
 */
let lastRefresh = 0;
let lastPush = 0;
async function refreshIncident(force = false) {
  const s = state.suggestion;
  if (!s || state.link !== LinkState.ONLINE) return;
  if (!force && (Date.now() - lastRefresh < 3000 || Date.now() - lastPush < 30000)) return;
  lastRefresh = Date.now();
  try {
    const view = await api(`/api/incidents/${encodeURIComponent(s.incident_id)}/state`, { token });
    const track = trackFromState(view);
    if (track) state.belief = track;
    if (view?.prediction?.features) drawPrediction(view.prediction);
    redraw();
  } catch (error) {
    console.warn("cordon: incident state", error);
  }
}
setInterval(() => refreshIncident(), 30000);

function mine(s) {
  return !crewId || !s || !s.crew_id || s.crew_id === crewId;
}

function isLive() {
  return ["proposed", "accepted", "in_position", "contact"].includes(state.missionState);
}

function onSuggestion(raw, { quiet = false, replaces = null }) {
  if (!raw) return;
  const s = normaliseSuggestion(raw);
  if (!mine(s)) return;
  if (s.expires_at && new Date(s.expires_at).getTime() <= serverNow()) return; // never show an expired plan as current
  const previous = state.suggestion;
  const previousState = state.missionState;
  const sameSuggestion = Boolean(previous && previous.suggestion_id === s.suggestion_id);
  const replacesShown = Boolean(previous && (replaces === previous.suggestion_id || previous.incident_id === s.incident_id));
  const changedTarget = replacesShown && !sameSuggestion && isLive() && suggestionTargetKey(previous) !== suggestionTargetKey(s);
  state.suggestion = s;
  state.planReceivedAt = new Date();
  const serverState = s.state && !["sent", "pending_approval"].includes(s.state) ? mapStatus(s.state) : null;
  if (serverState) state.missionState = serverState;
  else if (!sameSuggestion) state.missionState = "proposed";
  if (state.missionState === "accepted" && (!sameSuggestion || !state.acceptedAt || previous.crew_eta_s !== s.crew_eta_s)) {
    state.acceptedAt = serverNow();
    state.crewEtaAtAccept = s.crew_eta_s;
  }
  // After a retraction or an expiry, a new target is a change too: it must not pass unnoticed.
  const afterEnd = Boolean(previous) && !sameSuggestion && ["retracted", "expired"].includes(previousState);
  if ((changedTarget || afterEnd) && !quiet) {
    showBanner("changed", "NOUVELLE DESTINATION", `${s.target_label} – ETA ${clock(s.crew_eta_s)}`);
  } else if (!sameSuggestion && !quiet) {
    flashPanel();
  }
  if (!sameSuggestion) remember(changedTarget || afterEnd ? "changed" : "new", s.suggestion_id);
  if (!sameSuggestion) fitToMission();
}

function mapStatus(status) {
  const known = ["proposed", "accepted", "in_position", "contact", "declined", "retracted", "expired"];
  if (known.includes(status)) return status;
  if (status === "withdrawn" || status === "superseded") return "retracted";
  return "proposed";
}

function onRetracted(data) {
  if (!state.suggestion) return;
  const id = data.suggestion_id ?? data.suggestion?.suggestion_id;
  if (id && id !== state.suggestion.suggestion_id) return;
  state.missionState = "retracted";
  remember("retracted", state.suggestion.suggestion_id);
  const reason = data.reason ? ` – ${data.reason}` : "";
  showBanner("retracted", "ANNULÉ", `Destination ${state.suggestion.target_label} annulée${reason}`);
}

function clearMission() {
  state.suggestion = null;
  state.missionState = "idle";
}

// ---------- outgoing actions (serving/messages.py: CrewClientMessage) ----------
function act(type, extra = {}) {
  if (!state.suggestion) return;
  socket.send({ type, suggestion_id: state.suggestion.suggestion_id, ...extra });
}

function showError(text, ms = 8000) {
  const el = $('[data-testid="crew-error"]');
  el.textContent = text;
  el.classList.remove("hidden");
  clearTimeout(showError.timer);
  if (ms) showError.timer = setTimeout(() => el.classList.add("hidden"), ms);
}

$('[data-testid="btn-accept"]').addEventListener("click", () => {
  act("accept");
  state.missionState = "accepted";
  state.acceptedAt = serverNow();
  state.crewEtaAtAccept = state.suggestion?.crew_eta_s ?? 0;
  redraw();
});
$('[data-testid="btn-decline"]').addEventListener("click", () => $("#decline-sheet").classList.remove("hidden"));
$('[data-testid="decline-cancel"]').addEventListener("click", () => $("#decline-sheet").classList.add("hidden"));
for (const button of document.querySelectorAll("#decline-sheet [data-reason]")) {
  button.addEventListener("click", () => {
    act("decline", { reason: button.textContent.trim() });
    state.declineReason = button.textContent;
    state.missionState = "declined";
    $("#decline-sheet").classList.add("hidden");
    redraw();
  });
}
$('[data-testid="btn-in-position"]').addEventListener("click", () => {
  act("in_position");
  state.missionState = "in_position";
  redraw();
});
$('[data-testid="btn-contact"]').addEventListener("click", () => {
  act("contact", { incident_id: state.suggestion?.incident_id });
  state.missionState = "contact";
  redraw();
});
$('[data-testid="theme-toggle"]').addEventListener("click", () =>
  applyTheme(document.body.dataset.theme === "night" ? "day" : "night"),
);

// ---------- banner ----------
function showBanner(kind, title, detail) {
  const banner = $("#banner");
  banner.dataset.kind = kind;
  $('[data-testid="banner-title"]').textContent = title;
  $('[data-testid="banner-detail"]').textContent = detail;
  banner.classList.remove("hidden");
  // restart the flash animation
  banner.style.animation = "none";
  void banner.offsetWidth;
  banner.style.animation = "";
  if (navigator.vibrate) navigator.vibrate([200, 100, 200]);
}
$('[data-testid="banner-ack"]').addEventListener("click", () => {
  $("#banner").classList.add("hidden");
});

function flashPanel() {
  const panel = $(".crew-panel");
  panel.animate([{ background: "var(--warn)" }, { background: "var(--panel)" }], { duration: 900 });
}

// ---------- rendering ----------
function fitToMission() {
  const s = state.suggestion;
  if (!s) return;
  const points = toLatLngs(s.route_lonlat);
  const target = toLatLng([s.lon, s.lat]);
  if (target) points.push(target);
  if (points.length) map.fitBounds(L.latLngBounds(points), { padding: [60, 60], maxZoom: 17, animate: false });
}

/** The predicted escape area: reachable crossings (by probability) and the likely routes. */
function drawPrediction(geojson) {
  layers.area.clearLayers();
  if (!geojson || !Array.isArray(geojson.features)) return;
  const css = (name) => getComputedStyle(document.body).getPropertyValue(name).trim();
  L.geoJSON(geojson, {
    pane: "areas",
    interactive: false,
    filter: (f) => f.properties?.kind !== "position",
    style: (f) => ({ color: css("--area"), weight: 2 + 4 * Number(f.properties?.probability ?? 0.3), opacity: 0.55, dashArray: "8 6" }),
    pointToLayer: (f, latlng) => {
      const p = Math.min(1, Number(f.properties?.probability ?? 0.3));
      return L.circleMarker(latlng, { pane: "areas", radius: 4 + 10 * Math.sqrt(p), stroke: false, fillColor: css("--area"), fillOpacity: 0.2 + 0.6 * p });
    },
  }).addTo(layers.area);
}

let lastTargetKey = null;
function redraw() {
  const s = state.suggestion;
  const css = (name) => getComputedStyle(document.body).getPropertyValue(name).trim();
  document.body.dataset.missionState = state.missionState;
  $('[data-testid="crew-id"]').textContent = crewId || state.crew?.crew_id || "Équipage";

  // map: route + target
  layers.route.clearLayers();
  if (s) {
    const dead = ["retracted", "expired", "declined"].includes(state.missionState);
    if (s.route_lonlat?.length) {
      L.polyline(toLatLngs(s.route_lonlat), { pane: "routes", color: "#000", weight: 11, opacity: dead ? 0.2 : 0.5 }).addTo(layers.route);
      L.polyline(toLatLngs(s.route_lonlat), {
        pane: "routes",
        color: dead ? css("--muted") : css("--route"),
        weight: 7,
        dashArray: dead ? "8 12" : null,
      }).addTo(layers.route);
    }
    const target = toLatLng([s.lon, s.lat]);
    if (target) {
      L.marker(target, {
        pane: "units",
        icon: L.divIcon({ className: "", html: '<div class="target-marker" data-testid="target-marker"></div>', iconSize: [34, 34], iconAnchor: [17, 17] }),
        interactive: false,
      }).addTo(layers.route);
    }
    lastTargetKey = suggestionTargetKey(s);
  } else {
    lastTargetKey = null;
  }

  // map: suspect last position and uncertainty
  layers.suspect.clearLayers();
  const b = state.belief;
  const mean = b && toLatLng(b.mean_lonlat ?? (b.lon !== undefined ? [b.lon, b.lat] : null));
  if (mean) {
    if (b.sigma_along_m) {
      L.circle(mean, { pane: "areas", radius: b.sigma_along_m, color: css("--suspect"), weight: 2, fillOpacity: 0.12, interactive: false }).addTo(layers.suspect);
    }
    L.marker(mean, {
      pane: "units",
      icon: L.divIcon({ className: "", html: '<div class="suspect-marker"></div>', iconSize: [22, 22], iconAnchor: [11, 11] }),
      interactive: false,
    }).addTo(layers.suspect);
  }

  // map: own position
  layers.crew.clearLayers();
  const me = state.crew && toLatLng(state.crew.position_lonlat ?? state.crew.lonlat ?? (state.crew.lon !== undefined ? [state.crew.lon, state.crew.lat] : null));
  if (me) {
    L.marker(me, {
      pane: "units",
      icon: L.divIcon({ className: "", html: `<div class="crew-marker me" data-status="${esc(state.crew.status)}">${esc(crewId || "Moi")}</div>`, iconSize: [60, 26], iconAnchor: [30, 13] }),
      interactive: false,
    }).addTo(layers.crew);
  }

  // panel
  $("#idle").classList.toggle("hidden", Boolean(s));
  $("#mission").classList.toggle("hidden", !s);
  if (s) {
    const mission = $("#mission");
    mission.dataset.state = state.missionState;
    $('[data-testid="mission-state"]').textContent = {
      proposed: "PROPOSITION",
      accepted: "ACCEPTÉE – EN ROUTE",
      in_position: "EN POSITION",
      contact: "CONTACT",
      declined: "REFUSÉE",
      retracted: "ANNULÉ",
      expired: "EXPIRÉE",
    }[state.missionState] || state.missionState.toUpperCase();
    $('[data-testid="target-name"]').textContent = s.target_label;
  }
  const sighting = $('[data-testid="last-sighting"]');
  if (b && b.last_camera_id) {
    const heading = b.heading_deg !== null && b.heading_deg !== undefined ? `, cap ${compass(b.heading_deg)}` : "";
    const seenAt = b.last_seen_at ?? (b.at && b.since_last_sighting_s !== undefined ? new Date(new Date(b.at).getTime() - 1000 * b.since_last_sighting_s) : null);
    sighting.textContent = `Dernier signalement : ${b.last_camera_id} à ${hms(seenAt)}${heading}`;
  } else {
    sighting.textContent = "Dernier signalement : –";
  }
  tick();
}

function tick() {
  const s = state.suggestion;
  if (!s) return;
  const now = serverNow();
  if (["proposed", "accepted"].includes(state.missionState) && s.expires_at && new Date(s.expires_at).getTime() <= now) {
    state.missionState = "expired";
    redraw();
    return;
  }
  const issued = new Date(s.issued_at ?? state.planReceivedAt).getTime();
  const elapsed = Number.isNaN(issued) ? 0 : Math.max(0, (now - issued) / 1000);
  // Before acceptance the crew has not left: its ETA holds while the suspect's shrinks, so the
  // margin counts down. Once accepted the crew is driving and its ETA shrinks too.
  const sinceAccepted = state.acceptedAt ? Math.max(0, (now - state.acceptedAt) / 1000) : 0;
  const crewLeft = ["in_position", "contact"].includes(state.missionState)
    ? 0
    : state.missionState === "accepted"
      ? Math.max(0, state.crewEtaAtAccept - sinceAccepted)
      : s.crew_eta_s;
  const suspectLeft = s.suspect_earliest_eta_s - elapsed;
  $('[data-testid="crew-eta"]').textContent = clock(crewLeft);
  $('[data-testid="suspect-eta"]').textContent = clock(Math.max(0, suspectLeft));
  const countdown = $('[data-testid="countdown"]');
  const margin = suspectLeft - crewLeft;
  countdown.textContent = clock(margin);
  countdown.dataset.level = margin < 0 ? "late" : margin < 15 ? "warn" : "ok";
  const live = isLive();
  const accepted = ["accepted", "in_position", "contact"].includes(state.missionState);
  $('[data-testid="btn-accept"]').disabled = !(state.missionState === "proposed");
  $('[data-testid="btn-decline"]').disabled = !(state.missionState === "proposed" || state.missionState === "accepted");
  $('[data-testid="btn-in-position"]').disabled = !(state.missionState === "accepted");
  $('[data-testid="btn-contact"]').disabled = !(live && accepted);
}
setInterval(tick, 250);

// ---------- own position (the tablet's GPS, when the browser offers it) ----------
let lastFixSent = 0;
if (navigator.geolocation && window.isSecureContext && queryParam("gps") !== "off") {
  navigator.geolocation.watchPosition(
    (fix) => {
      const { longitude: lon, latitude: lat, heading } = fix.coords;
      state.crew = { ...(state.crew || {}), lon, lat };
      if (Date.now() - lastFixSent > 5000 && state.link === LinkState.ONLINE) {
        lastFixSent = Date.now();
        const message = { type: "position", lon, lat, at: new Date(serverNow()).toISOString() };
        if (Number.isFinite(heading)) message.heading_deg = ((heading % 360) + 360) % 360;
        socket.send(message);
      }
      redraw();
    },
    () => {},
    { enableHighAccuracy: true, maximumAge: 5000 },
  );
}

applyTheme(initialTheme);
renderLink();
socket.start();
window.cordonCrew = { state, socket }; // for debugging and tests
