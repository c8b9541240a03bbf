// Message helpers: the server's websocket messages (serving/messages.py is the source of truth)
// reduced to what the pages need. Every message is an envelope `{type, seq, sent_at, ...}`.

/** The message type. */
export function messageType(message) {
  return String(message.type ?? message.kind ?? message.event ?? "");
}

/** The message body: `payload` / `data` when the envelope nests it, else the message itself. */
export function body(message) {
  return message.payload ?? message.data ?? message;
}

/** Street names of a suggestion as one label ("Rue A × Rue B"), or the node id. */
export function targetLabel(s) {
  const names = Array.isArray(s.street_names) ? s.street_names.filter(Boolean) : s.street_names ? [s.street_names] : [];
  if (s.target_name) return s.target_name;
  if (names.length) return names.slice(0, 2).join(" × ");
  return `Carrefour ${s.target_node ?? "?"}`;
}

/** A suggestion with every field the pages use, numbers as numbers. */
export function normaliseSuggestion(raw) {
  const s = { ...raw };
  s.crew_eta_s = Number(s.crew_eta_s ?? s.eta_s ?? 0);
  s.suspect_earliest_eta_s = Number(s.suspect_earliest_eta_s ?? s.suspect_eta_s ?? Infinity);
  s.suspect_likely_eta_s = Number(s.suspect_likely_eta_s ?? s.suspect_earliest_eta_s);
  s.margin_s = Number(s.margin_s ?? s.suspect_earliest_eta_s - s.crew_eta_s);
  if (s.lon === undefined && Array.isArray(s.target_lonlat)) [s.lon, s.lat] = s.target_lonlat;
  s.route_lonlat = s.route_lonlat ?? [];
  s.target_label = targetLabel(s);
  return s;
}

/** What makes two suggestions "the same destination". */
export function suggestionTargetKey(s) {
  return s ? `${s.incident_id ?? ""}/${s.target_node ?? `${s.lon},${s.lat}`}` : "";
}

/**
 * The track in a `GET /api/incidents/{id}/state` answer (its `track` FeatureCollection holds one
 * `kind: "track"` point), flattened like a websocket `track` message; null if none.
 */
export function trackFromState(view) {
  const feature = (view?.track?.features || []).find((f) => f.properties?.kind === "track");
  if (!feature) return null;
  const [lon, lat] = feature.geometry.coordinates;
  return { ...feature.properties, lon, lat };
}
