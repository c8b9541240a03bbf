"""An async client of a running Cordon server: REST (:class:`CordonClient`), crew tablets
(:class:`Tablet`) and operator consoles (:class:`Console`) over websockets.

The simulator (``cordon sim --server URL``), ``cordon demo``, the tests and the load benchmark drive
the server through this library exactly as real tablets and consoles would.

A :class:`Tablet` keeps its last ``seq``; when it sees a gap it asks to ``resume``, and when the
connection drops it reconnects with ``?last_seq=N``. It never reports an expired suggestion as
current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Json = dict[str, Any]
log = logging.getLogger("cordon.client")


class CordonHTTPError(RuntimeError):
    """A REST call answered an error; ``status``, ``code`` and ``body`` say which."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.code = body.get("code") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {body}")


def ws_url(base_url: str, path: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :].rstrip("/") + path
    return "ws://" + base_url.removeprefix("http://").rstrip("/") + path


class CordonClient:
    """REST calls, authenticated with a bearer token."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)

    async def __aenter__(self) -> CordonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(
        self, method: str, path: str, *, json_body: Any = None, params: Any = None, retries: int = 0
    ) -> Any:
        """One REST call; ``retries``: times to try again after a transport error (a keep-alive
        connection the server closed as the request went out), for idempotent requests only."""
        for attempt in range(retries + 1):
            try:
                response = await self.http.request(method, path, json=json_body, params=params)
                break
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise
                log.info("%s %s: %s; trying again", method, path, type(exc).__name__)
                await asyncio.sleep(0.05 * (attempt + 1))
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise CordonHTTPError(response.status_code, body)
        return body

    async def dev_token(
        self, role: str = "operator", *, crew_id: str | None = None, communes: str = "*"
    ) -> str:
        """A demo token (only a server in demo mode has ``/api/dev/tokens``)."""
        params = {"role": role, "communes": communes}
        if crew_id is not None:
            params["crew_id"] = crew_id
        body = await self._call("GET", "/api/dev/tokens", params=params)
        return str(body["token"])

    async def health(self) -> Json:
        result: Json = await self._call("GET", "/api/health")
        return result

    async def wait_ready(self, timeout_s: float = 60.0) -> Json:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                return await self.health()
            except (httpx.TransportError, CordonHTTPError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def open_incident(
        self,
        incident_id: str,
        *,
        commune: str | None = None,
        lon: float | None = None,
        lat: float | None = None,
        at: datetime | None = None,
    ) -> Json:
        body: Json = {"incident_id": incident_id}
        if commune is not None:
            body["commune"] = commune
        if lon is not None and lat is not None:
            body.update(lon=lon, lat=lat)
        if at is not None:
            body["at"] = at.isoformat()
        result: Json = await self._call("POST", "/api/incidents", json_body=body)
        return result

    async def close_incident(self, incident_id: str) -> Json:
        result: Json = await self._call("POST", f"/api/incidents/{incident_id}/close")
        return result

    async def share_incident(self, incident_id: str, communes: Sequence[str]) -> Json:
        result: Json = await self._call(
            "POST", f"/api/incidents/{incident_id}/share", json_body={"communes": list(communes)}
        )
        return result

    async def get_incident(self, incident_id: str) -> Json:
        """``GET /api/incidents/{id}``: the incident (commune, sightings count, plan version)."""
        result: Json = await self._call("GET", f"/api/incidents/{incident_id}")
        return result

    async def crews(self) -> list[Json]:
        """``GET /api/crews``: the crews (with a position) of the token's communes."""
        result: list[Json] = await self._call("GET", "/api/crews")
        return result

    async def incident_state(self, incident_id: str) -> Json:
        result: Json = await self._call("GET", f"/api/incidents/{incident_id}/state")
        return result

    async def post_sighting(self, sighting: Json) -> Json:
        """Post one sighting; tried again after a transport error (the server is idempotent on
        its ``source_event_id``: a copy that got through is answered ``duplicate``)."""
        result: Json = await self._call("POST", "/api/sightings", json_body=_jsonable(sighting), retries=2)
        return result

    async def post_sightings(self, sightings: Sequence[Json]) -> Json:
        result: Json = await self._call(
            "POST", "/api/sightings", json_body=[_jsonable(s) for s in sightings], retries=2
        )
        return result

    async def put_crew(
        self,
        crew_id: str,
        *,
        lon: float,
        lat: float,
        status: str | None = None,
        heading_deg: float | None = None,
        commune: str | None = None,
        speed_factor: float | None = None,
    ) -> Json:
        body: Json = {"lon": lon, "lat": lat}
        if speed_factor is not None:
            body["speed_factor"] = speed_factor
        if status is not None:
            body["status"] = status
        if heading_deg is not None:
            body["heading_deg"] = heading_deg
        if commune is not None:
            body["commune"] = commune
        result: Json = await self._call("PUT", f"/api/crews/{crew_id}", json_body=body)
        return result

    async def set_dispatch_mode(self, commune: str, mode: str) -> Json:
        result: Json = await self._call(
            "PUT", f"/api/communes/{commune}/dispatch-mode", json_body={"mode": mode}
        )
        return result

    async def set_time(self, now: datetime) -> Json:
        """Drive a simulation-mode server's clock."""
        result: Json = await self._call("POST", "/api/sim/time", json_body={"now": now.isoformat()})
        return result

    async def cameras(self) -> Json:
        result: Json = await self._call("GET", "/api/map/cameras.geojson")
        return result


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _count_sent_at(raw: str | bytes) -> int:
    return raw.count(b'"sent_at"') if isinstance(raw, bytes) else raw.count('"sent_at"')


class _Socket:
    """Shared machinery: one connection, a reader task, an inbox, reconnection."""

    path = "/"

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        reconnect: bool = True,
        on_message: Callable[[Json], None] | None = None,
        now: Callable[[], datetime] | None = None,
        count_only: bool = False,
        decode_if: Callable[[str], bool] | None = None,
        keep: bool = True,
        batch: bool = True,
    ) -> None:
        self.base_url = base_url
        self.count_only = count_only  # load tests: count messages without decoding them
        # load tests: decode only the frames this accepts, given the frame's first 128 bytes as
        # text (the others are counted, never decoded), and do not keep the decoded messages in
        # ``received`` (300 emulated tablets in one process)
        self.decode_if = decode_if
        self.keep = keep
        # ``?batch=1``: messages queued together come in one frame, a JSON array (fewer frames
        # for the server to send); messages larger than 16 kB always come alone
        self.batch = batch
        self.counted = 0
        self.token = token
        self.reconnect = reconnect
        self.on_message = on_message
        self.now = now or (lambda: datetime.now(UTC))
        self.inbox: asyncio.Queue[Json] = asyncio.Queue()
        self.received: list[Json] = []
        self.ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self.connects = 0
        self.close_codes: list[int | None] = []
        self._connected = asyncio.Event()

    def _url(self) -> str:
        return ws_url(self.base_url, self.path) + f"?token={self.token}" + ("&batch=1" if self.batch else "")

    async def connect(self) -> None:
        self.ws = await connect(self._url(), open_timeout=10, max_size=2**22, compression=None)
        self.connects += 1
        self._connected.set()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while not self._closing:
            ws = self.ws
            assert ws is not None
            raw_frames = self.count_only or self.decode_if is not None
            try:
                while True:
                    # frames taken as bytes when they may be only counted: no UTF-8 decoding
                    raw = await ws.recv(decode=False) if raw_frames else await ws.recv()
                    batched = raw[:1] in (b"[", "[")  # a batch: small messages, all decoded
                    if self.count_only or (
                        not batched
                        and self.decode_if is not None
                        and not self.decode_if(
                            raw[:128].decode("utf-8", "ignore") if isinstance(raw, bytes) else raw[:128]
                        )
                    ):
                        # every server message has one top-level sent_at
                        self.counted += _count_sent_at(raw) if batched else 1
                        continue
                    decoded = json.loads(raw)
                    for message in decoded if isinstance(decoded, list) else [decoded]:
                        if self.keep:
                            self.received.append(message)
                        await self._on(message)
            except ConnectionClosed:
                pass
            self.close_codes.append(ws.close_code)
            self._connected.clear()
            if self._closing or not self.reconnect:
                return
            delay = 0.05
            while not self._closing:
                try:
                    self.ws = await connect(self._url(), open_timeout=10, max_size=2**22, compression=None)
                    self.connects += 1
                    self._connected.set()
                    break
                except (OSError, ConnectionClosed, TimeoutError, Exception) as exc:
                    log.debug("reconnect failed: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)

    async def _on(self, message: Json) -> None:
        if self.on_message is not None:
            self.on_message(message)
        self.inbox.put_nowait(message)

    async def send(self, message: Json) -> None:
        await asyncio.wait_for(self._connected.wait(), 30)
        assert self.ws is not None
        await self.ws.send(json.dumps(message))

    async def next(
        self, *types: str, timeout_s: float = 10.0, where: Callable[[Json], bool] | None = None
    ) -> Json:
        """The next inbox message of one of ``types`` (any type if none) matching ``where``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no {types or 'message'} within {timeout_s} s")
            message = await asyncio.wait_for(self.inbox.get(), remaining)
            if (not types or message.get("type") in types) and (where is None or where(message)):
                return message

    async def drop(self) -> None:
        """Cut the connection abruptly (tests: a tablet going through a tunnel)."""
        if self.ws is not None:
            self.ws.transport.abort()

    async def close(self) -> None:
        self._closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


class Tablet(_Socket):
    """A crew tablet. ``current`` holds the crew's unexpired suggestions, by incident."""

    path = "/ws/crew"

    def __init__(self, base_url: str, token: str, crew_id: str, **kwargs: Any) -> None:
        super().__init__(base_url, token, **kwargs)
        self.crew_id = crew_id
        self.last_seq: int | None = None
        self._current: dict[str, Json] = {}
        self.gaps = 0

    def _url(self) -> str:
        url = super()._url()
        return url if self.last_seq is None else f"{url}&last_seq={self.last_seq}"

    async def _on(self, message: Json) -> None:
        kind = message.get("type")
        seq = int(message.get("seq", 0))
        if kind == "snapshot":
            self._current = {s["incident_id"]: s for s in message["suggestions"]}
            self.last_seq = seq
        elif kind in ("suggestion", "suggestion_update", "suggestion_retracted"):
            if self.last_seq is not None and seq > self.last_seq + 1:
                self.gaps += 1  # missed some: ask for them (or a snapshot)
                await self.send({"type": "resume", "last_seq": self.last_seq})
                return
            if self.last_seq is not None and seq <= self.last_seq:
                return  # duplicate after a resume
            self.last_seq = seq
            if kind == "suggestion_retracted":
                cur = self._current.get(message["incident_id"])
                if cur is not None and cur["suggestion_id"] == message["suggestion_id"]:
                    del self._current[message["incident_id"]]
            else:
                s = message["suggestion"]
                self._current[s["incident_id"]] = s
        await super()._on(message)

    @property
    def current(self) -> dict[str, Json]:
        """The crew's suggestions in force now (expired ones are never shown as current)."""
        now = self.now()
        return {k: s for k, s in self._current.items() if datetime.fromisoformat(s["expires_at"]) > now}

    async def position(
        self, lon: float, lat: float, *, heading_deg: float | None = None, speed_factor: float | None = None
    ) -> None:
        msg: Json = {"type": "position", "lon": lon, "lat": lat}
        if heading_deg is not None:
            msg["heading_deg"] = heading_deg
        if speed_factor is not None:
            msg["speed_factor"] = speed_factor
        await self.send(msg)

    async def status(self, status: str, *, speed_factor: float | None = None) -> None:
        msg: Json = {"type": "status", "status": status}
        if speed_factor is not None:
            msg["speed_factor"] = speed_factor
        await self.send(msg)

    async def accept(self, suggestion_id: str) -> None:
        await self.send({"type": "accept", "suggestion_id": suggestion_id})

    async def decline(self, suggestion_id: str, reason: str) -> None:
        """Refuse a suggestion; it stops being current at once (the server sends no retraction)."""
        await self.send({"type": "decline", "suggestion_id": suggestion_id, "reason": reason})
        for incident, s in list(self._current.items()):
            if s["suggestion_id"] == suggestion_id:
                del self._current[incident]

    async def in_position(self, suggestion_id: str) -> None:
        await self.send({"type": "in_position", "suggestion_id": suggestion_id})

    async def contact(self, *, suggestion_id: str | None = None, incident_id: str | None = None) -> None:
        msg: Json = {"type": "contact"}
        if suggestion_id:
            msg["suggestion_id"] = suggestion_id
        if incident_id:
            msg["incident_id"] = incident_id
        await self.send(msg)


class Console(_Socket):
    """An operator console."""

    path = "/ws/operator"

    async def approve(self, suggestion_id: str) -> None:
        await self.send({"type": "approve", "suggestion_id": suggestion_id})

    async def retract(self, suggestion_id: str, reason: str = "retracted by operator") -> None:
        await self.send({"type": "retract", "suggestion_id": suggestion_id, "reason": reason})

    async def modify(
        self,
        suggestion_id: str,
        *,
        lon: float | None = None,
        lat: float | None = None,
        crew_id: str | None = None,
    ) -> None:
        msg: Json = {"type": "modify", "suggestion_id": suggestion_id}
        if lon is not None and lat is not None:
            msg.update(lon=lon, lat=lat)
        if crew_id is not None:
            msg["crew_id"] = crew_id
        await self.send(msg)
