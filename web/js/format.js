// Small formatting helpers shared by the pages (French UI).

/** Seconds as m:ss (or h:mm:ss); negative values get a leading minus; null/NaN/Infinity -> "–". */
export function clock(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const sign = seconds < 0 ? "-" : "";
  let s = Math.round(Math.abs(seconds));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const ss = String(s).padStart(2, "0");
  return h > 0 ? `${sign}${h}:${String(m).padStart(2, "0")}:${ss}` : `${sign}${m}:${ss}`;
}

/** A Date (or ISO string) as HH:MM:SS local time. */
export function hms(value) {
  if (!value) return "–";
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return "–";
  return date.toLocaleTimeString("fr-FR", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** "il y a 1:05" style age of a timestamp, given the current time in ms. */
export function ago(value, nowMs) {
  if (!value) return "–";
  const t = new Date(value).getTime();
  if (Number.isNaN(t)) return "–";
  return `il y a ${clock(Math.max(0, (nowMs - t) / 1000))}`;
}

/** Heading in degrees as a French compass point. */
export function compass(deg) {
  if (deg === null || deg === undefined || !Number.isFinite(deg)) return "";
  const names = ["N", "NE", "E", "SE", "S", "SO", "O", "NO"];
  return names[Math.round((((deg % 360) + 360) % 360) / 45) % 8];
}

/** Escape text for innerHTML. */
export function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** Human labels for crew statuses. */
export const CREW_STATUS_LABEL = Object.freeze({
  available: "Disponible",
  assigned: "Engagé",
  busy: "Occupé",
  out_of_service: "Hors service",
  en_route: "En route",
  in_position: "En position",
  contact: "Contact",
});

/** Human labels for suggestion states. */
export const SUGGESTION_STATE_LABEL = Object.freeze({
  proposed: "Proposée",
  pending_approval: "À valider",
  pending: "En attente",
  approved: "Validée",
  sent: "Envoyée",
  accepted: "Acceptée",
  declined: "Refusée",
  in_position: "En position",
  contact: "Contact",
  retracted: "Annulée",
  superseded: "Remplacée",
  expired: "Expirée",
});
