// Leaflet map on a blank background: the street network comes from Cordon's own graph
// (`/api/map/streets.geojson`), never from internet tiles. Leaflet is loaded as the global `L`
// from `/vendor/leaflet/leaflet.js` (npm package, served by the server).

import { api } from "./api.js";

const L = window.L;

/** Major road classes drawn wider (OSM `highway` values or a `class` property). */
const MAJOR = new Set(["motorway", "trunk", "primary", "secondary", "motorway_link", "trunk_link", "primary_link", "arterial", "ring"]);

/** Theme colours read from CSS variables so day/night switch without reloading. */
export function cssVar(name, fallback) {
  const value = getComputedStyle(document.body).getPropertyValue(name).trim();
  return value || fallback;
}

/** A Leaflet map with no tile layer; `options` go to `L.map`. */
export function createMap(element, options = {}) {
  const map = L.map(element, {
    zoomControl: true,
    attributionControl: true,
    zoomSnap: 0.25,
    minZoom: 10,
    maxZoom: 20,
    ...options,
  });
  map.attributionControl.setPrefix(false);
  map.attributionControl.addAttribution("Cordon · réseau routier du graphe local");
  map.setView([49.1193, 6.1757], 14); // Metz until the street network is loaded
  map.createPane("streets").style.zIndex = 350;
  map.createPane("areas").style.zIndex = 380;
  map.createPane("routes").style.zIndex = 420;
  map.createPane("cameras").style.zIndex = 450;
  map.createPane("units").style.zIndex = 620;
  return map;
}

function isMajor(props) {
  const cls = props.highway ?? props.class ?? props.road_class ?? "";
  const values = Array.isArray(cls) ? cls : [cls];
  if (values.some((v) => MAJOR.has(String(v)))) return true;
  const speed = Number(props.speed_kph ?? props.speed_kmh ?? props.maxspeed ?? 0);
  return speed >= 60;
}

/** Fetch and draw the street network. Returns the GeoJSON layer (bounds fitted). */
export async function loadStreets(map, { fit = true } = {}) {
  const data = await api("/api/map/streets.geojson");
  const renderer = L.canvas({ pane: "streets", padding: 0.3 });
  const layer = L.geoJSON(data, {
    pane: "streets",
    renderer,
    interactive: false,
    style: (feature) => {
      const major = isMajor(feature.properties || {});
      return {
        color: major ? cssVar("--street-major", "#8a8f98") : cssVar("--street", "#b9bec6"),
        weight: major ? 4 : 2,
        opacity: 1,
        lineCap: "round",
        lineJoin: "round",
      };
    },
  }).addTo(map);
  if (fit && layer.getBounds().isValid()) map.fitBounds(layer.getBounds(), { padding: [10, 10], animate: false });
  map.getContainer().dataset.streets = String((data.features || []).length);
  return layer;
}

/** Re-apply theme colours to the street layer after a day/night switch. */
export function restyleStreets(layer) {
  if (!layer) return;
  layer.setStyle((feature) => ({
    color: isMajor(feature.properties || {}) ? cssVar("--street-major", "#8a8f98") : cssVar("--street", "#b9bec6"),
  }));
}

/** The camera id of a camera GeoJSON feature. */
export function cameraId(feature) {
  const p = feature.properties || {};
  return String(p.camera_id ?? p.id ?? feature.id ?? "");
}

/**
 * Fetch and draw the cameras as circle markers (SVG, one element per camera, with
 * `data-testid="camera-<id>"`). `onClick(id, feature, latlng)` is called on a click.
 * Returns `{layer, byId}`.
 */
export async function loadCameras(map, { onClick = null } = {}) {
  const radiusAt = (zoom) => (zoom >= 17 ? 9 : zoom >= 16 ? 7 : zoom >= 15 ? 5 : 3.5);
  const radius = radiusAt(map.getZoom());
  const data = await api("/api/map/cameras.geojson");
  const renderer = L.svg({ pane: "cameras" });
  const byId = new Map();
  const layer = L.geoJSON(data, {
    pane: "cameras",
    pointToLayer: (feature, latlng) =>
      L.circleMarker(latlng, {
        pane: "cameras",
        renderer,
        radius,
        color: cssVar("--camera-edge", "#1b3a6b"),
        weight: 2,
        fillColor: cssVar("--camera", "#2f6fd6"),
        fillOpacity: 0.9,
        bubblingMouseEvents: false,
      }),
    onEachFeature: (feature, marker) => {
      const id = cameraId(feature);
      byId.set(id, { feature, marker });
      const name = feature.properties?.name ? ` – ${feature.properties.name}` : "";
      marker.bindTooltip(`${id}${name}`, { direction: "top", offset: [0, -6] });
      if (onClick) marker.on("click", (event) => onClick(id, feature, event.latlng));
    },
  }).addTo(map);
  for (const [id, { marker }] of byId) {
    const el = marker.getElement();
    if (el) {
      el.setAttribute("data-testid", `camera-${id}`);
      el.setAttribute("data-camera-id", id);
      el.classList.add("cordon-camera");
    }
  }
  map.getContainer().dataset.cameras = String(byId.size);
  map.on("zoomend", () => {
    const r = radiusAt(map.getZoom());
    for (const { marker } of byId.values()) marker.setRadius(r);
  });
  return { layer, byId };
}

/** [lon, lat] pairs → Leaflet [lat, lon]. */
export function toLatLngs(lonlats) {
  return (lonlats || []).map((p) => (Array.isArray(p) ? [p[1], p[0]] : [p.lat, p.lon]));
}

/** A `{lon, lat}` / `[lon, lat]` value as a Leaflet latlng, or null. */
export function toLatLng(value) {
  if (!value) return null;
  if (Array.isArray(value)) return [value[1], value[0]];
  if (typeof value.lat === "number" && typeof value.lon === "number") return [value.lat, value.lon];
  return null;
}
