// Cordon web client: bearer-token REST calls and a self-healing websocket.
//
// The token comes from the page URL (`?token=...`, as printed by the server's demo mode),
// is kept in sessionStorage (so a reload keeps working) and is removed from the address bar
// so it does not linger in the browser history.

const TOKEN_KEY = "cordon.token";

/** Read `?token=` once, keep it in sessionStorage, and return the current token ("" if none). */
export function takeToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.toString());
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** The (unverified) claims of a JWT, for display only: `{}` if it is not a JWT. */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    return JSON.parse(json);
  } catch {
    return {};
  }
}

/** A query parameter of the page URL, or `fallback`. */
export function queryParam(name, fallback = null) {
  return new URL(window.location.href).searchParams.get(name) ?? fallback;
}

export class ApiError extends Error {
  constructor(status, detail, path) {
    super(`${path}: ${status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.status = status;
    this.detail = detail;
    this.path = path;
  }
}

/** REST call with the bearer token. Returns parsed JSON (or null for an empty body). */
export async function api(path, { method = "GET", body = undefined, token = takeToken() } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : data;
    throw new ApiError(response.status, detail, path);
  }
  return data;
}

/** Connection states of a LiveSocket. */
export const LinkState = Object.freeze({
  CONNECTING: "connecting",
  ONLINE: "online",
  OFFLINE: "offline",
});

/**
 * A websocket that reconnects by itself.
 *
 * - exponential backoff with jitter (0.5 s, 1 s, 2 s ... capped at `maxDelayMs`);
 * - `resume: true` (crew stream, whose `seq` survives reconnections): it reconnects with
 *   `?last_seq=N` and drops any message whose `seq` it has already seen;
 *   `resume: false` (operator stream, `seq` per connection): it starts afresh from the server's
 *   connect snapshot;
 * - the browser's `offline` event closes the link at once; once the server has been seen to send
 *   `heartbeat` messages, `silenceMs` without any message also counts as a dead link;
 * - messages sent while offline are queued and sent, in order, once the link is back.
 */
export class LiveSocket {
  constructor(path, { token = takeToken(), onMessage, onState, onOpen = null, onDenied = null, resume = true, silenceMs = 25000, maxDelayMs = 15000, params = {} }) {
    this.path = path;
    this.token = token;
    this.onMessage = onMessage;
    this.onState = onState || (() => {});
    this.silenceMs = silenceMs;
    this.maxDelayMs = maxDelayMs;
    this.params = params;
    this.resume = resume;
    this.onOpen = onOpen;
    this.onDenied = onDenied;
    this.heartbeats = false;
    this.lastSeq = null;
    this.attempt = 0;
    this.ws = null;
    this.state = LinkState.OFFLINE;
    this.outbox = [];
    this.stopped = false;
    this.reconnectTimer = null;
    this.silenceTimer = null;
    this.lastMessageAt = null;
    window.addEventListener("offline", () => this.drop("navigator offline"));
    window.addEventListener("online", () => this.reconnectNow());
  }

  url() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const url = new URL(`${scheme}//${window.location.host}${this.path}`);
    if (this.token) url.searchParams.set("token", this.token);
    if (this.resume && this.lastSeq !== null) url.searchParams.set("last_seq", String(this.lastSeq));
    // Messages queued together come in one frame, a JSON array, in order (fewer frames to send).
    url.searchParams.set("batch", "1");
    for (const [key, value] of Object.entries(this.params)) url.searchParams.set(key, value);
    return url.toString();
  }

  start() {
    this.stopped = false;
    this.open();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.silenceTimer);
    if (this.ws) this.ws.close(1000, "client stop");
  }

  deliver(message) {
    if (message === null || typeof message !== "object") return;
    if (message.type === "heartbeat") this.heartbeats = true;
    // Errors answer this client and may repeat the stream's current seq: never drop them.
    if (typeof message.seq === "number" && message.type !== "error") {
      if (this.lastSeq !== null && message.seq <= this.lastSeq) return;
      this.lastSeq = message.seq;
    }
    this.onMessage(message);
  }

  setState(state, detail = "") {
    if (state === this.state) return;
    this.state = state;
    this.onState(state, detail);
  }

  open() {
    clearTimeout(this.reconnectTimer);
    this.setState(LinkState.CONNECTING);
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (error) {
      this.scheduleReconnect(String(error));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.attempt = 0;
      if (!this.resume) this.lastSeq = null;
      this.setState(LinkState.ONLINE);
      this.touch();
      if (this.onOpen) this.onOpen();
      const pending = this.outbox.splice(0);
      for (const message of pending) ws.send(JSON.stringify(message));
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.touch();
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        console.warn("cordon: ignoring a non-JSON message", event.data);
        return;
      }
      for (const message of Array.isArray(data) ? data : [data]) this.deliver(message);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      clearTimeout(this.silenceTimer);
      if (event.code === 1008) {
        // Policy violation: no token, a bad or expired token, the wrong role. Retrying will not help.
        this.stopped = true;
        this.setState(LinkState.OFFLINE, event.reason || "accès refusé");
        if (this.onDenied) this.onDenied(event.reason || "accès refusé");
        return;
      }
      if (this.stopped) {
        this.setState(LinkState.OFFLINE, "stopped");
        return;
      }
      this.scheduleReconnect(`closed ${event.code} ${event.reason || ""}`.trim());
    };
    ws.onerror = () => {
      // onclose follows; nothing more to do here.
    };
  }

  touch() {
    this.lastMessageAt = Date.now();
    clearTimeout(this.silenceTimer);
    if (this.heartbeats && this.silenceMs) this.silenceTimer = setTimeout(() => this.drop("silent link"), this.silenceMs);
  }

  /** Treat the link as dead now (heartbeat missed, browser offline) and start reconnecting. */
  drop(reason) {
    const ws = this.ws;
    this.ws = null;
    clearTimeout(this.silenceTimer);
    if (ws) {
      try {
        ws.close(4000, reason);
      } catch {
        // already closing
      }
    }
    if (!this.stopped) this.scheduleReconnect(reason);
  }

  reconnectNow() {
    if (this.stopped || this.state === LinkState.ONLINE) return;
    this.attempt = 0;
    this.open();
  }

  scheduleReconnect(reason) {
    this.setState(LinkState.OFFLINE, reason);
    clearTimeout(this.reconnectTimer);
    const base = Math.min(this.maxDelayMs, 500 * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  /** Send a JSON message now, or once the link is back. */
  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    } else {
      this.outbox.push(message);
    }
  }
}

/** A fresh idempotency key for an operator or crew action. */
export function newEventId() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
  return `ev-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}
