"""Hardening helpers: rate limits, request-body and websocket-frame size limits, input checks, safe XML.

* :class:`RateLimiter`: a token bucket per client key, the clock passed in (tests freeze it),
  memory bounded (idle buckets are evicted, least recently used first).
* :class:`BodySizeLimitMiddleware`: ASGI middleware answering 413 with a JSON error once a
  request body exceeds ``max_body_bytes``: checked against ``Content-Length`` up front *and*
  counted while streaming (chunked bodies, lying headers).
* :class:`RateLimitMiddleware`: ASGI middleware answering 429 (``Retry-After``) per client.
* Websocket frames: the server passes :data:`WS_MAX_MESSAGE_BYTES` to uvicorn (``ws_max_size``),
  which closes oversized frames with :data:`WS_CLOSE_TOO_BIG` (1009); :func:`ws_message_too_big`
  is the same check for messages that reach the application another way.
* :func:`parse_xml_safely`: defusedxml, refusing DTDs, entities and external references.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from xml.etree.ElementTree import Element

__all__ = [
    "IDENTIFIER_PATTERN",
    "MAX_BODY_BYTES",
    "WS_CLOSE_TOO_BIG",
    "WS_MAX_MESSAGE_BYTES",
    "BodySizeLimitMiddleware",
    "InputError",
    "RateLimitMiddleware",
    "RateLimiter",
    "check_identifier",
    "check_lonlat",
    "check_time",
    "client_key",
    "parse_xml_safely",
    "ws_message_too_big",
]

MAX_BODY_BYTES = 256 * 1024
"""Default limit of a REST request body (a batch of sightings fits with a wide margin)."""
WS_MAX_MESSAGE_BYTES = 16 * 1024
"""Default limit of one websocket message from a client (the largest, a decline reason, is < 1 KiB)."""
WS_CLOSE_TOO_BIG = 1009
"""RFC 6455 close code "message too big"."""
IDENTIFIER_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class InputError(ValueError):
    """An input value fails validation; the message names it."""


# ---------------------------------------------------------------------------------------------
# Rate limiting


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token bucket per key: ``burst`` requests at once, refilled at ``rate_per_s``.

    ``clock`` returns seconds (``time.monotonic`` in the server, a counter in tests).
    At most ``max_keys`` buckets are kept; the least recently used go first (a client evicted
    that way only gets a fresh, full bucket, so eviction never blocks anyone).
    """

    def __init__(
        self, *, rate_per_s: float, burst: float, clock: Callable[[], float], max_keys: int = 100_000
    ) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s={rate_per_s} must be positive and finite")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"burst={burst} must be >= 1 and finite")
        if max_keys < 1:
            raise ValueError(f"max_keys={max_keys} must be >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated_s)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_s)
            bucket.updated_s = now
        return bucket

    def allow(self, key: str, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it has them."""
        if cost < 0:
            raise ValueError(f"cost={cost} must be >= 0")
        bucket = self._bucket(key)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return True
        return False

    def retry_after_s(self, key: str, cost: float = 1.0) -> float:
        """Seconds until ``key`` could spend ``cost`` tokens (0 when it can now)."""
        bucket = self._bucket(key)
        missing = cost - bucket.tokens
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def __len__(self) -> int:
        return len(self._buckets)


def client_key(scope: Scope) -> str:
    """The rate-limit key of a request: the client's address (behind a trusted proxy, the server
    should put the forwarded address in ``scope["client"]`` with uvicorn's ``--proxy-headers``)."""
    client = scope.get("client")
    host = client[0] if client else "unknown"
    return f"ip:{host}"


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class RateLimitMiddleware:
    """429 with ``Retry-After`` when a client's bucket is empty (HTTP requests and websocket
    handshakes; messages on an open websocket are limited by the server with the same limiter)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        key: Callable[[Scope], str] = client_key,
        exempt_paths: frozenset[str] = frozenset({"/health", "/metrics"}),
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.key = key
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        key = self.key(scope)
        if self.limiter.allow(key):
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(self.limiter.retry_after_s(key)))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})
            return
        await _send_json(
            send,
            429,
            {"code": "rate_limited", "message": f"too many requests; retry in {retry} s"},
            [(b"retry-after", str(retry).encode())],
        )


# ---------------------------------------------------------------------------------------------
# Body size


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """413 with a JSON error when an HTTP request body exceeds ``max_body_bytes``.

    A ``Content-Length`` above the limit is refused before reading; otherwise the body is
    counted as it streams in, and the app's ``receive`` raises once the limit is passed (the
    middleware then answers 413 if the app has not started its response).
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes={max_body_bytes} must be >= 0")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await _send_json(
            send,
            413,
            {"code": "too_large", "message": f"request body exceeds {self.max_body_bytes} bytes"},
            [(b"connection", b"close")],
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def ws_message_too_big(message: str | bytes, max_bytes: int = WS_MAX_MESSAGE_BYTES) -> bool:
    """True when a websocket message is over the limit (close the socket with 1009)."""
    size = len(message.encode()) if isinstance(message, str) else len(message)
    return size > max_bytes


# ---------------------------------------------------------------------------------------------
# Input checks


def check_identifier(value: object, name: str) -> str:
    """An identifier of 1-64 characters ``[A-Za-z0-9_.:-]``, else :class:`InputError` naming it."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise InputError(f"{name}={value!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return value


def check_lonlat(lon: object, lat: object) -> tuple[float, float]:
    """Finite WGS84 longitude and latitude in range, else :class:`InputError`."""
    for name, value, bound in (("lon", lon, 180.0), ("lat", lat, 90.0)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{name}={value!r} must be a number")
        if not math.isfinite(value) or abs(value) > bound:
            raise InputError(f"{name}={value!r} must be finite and within ±{bound:g}")
    return float(lon), float(lat)  # type: ignore[arg-type]


def check_time(
    value: datetime,
    name: str,
    *,
    now: datetime,
    max_future_s: float = 30.0,
    max_age_s: float = 24 * 3600.0,
) -> datetime:
    """An aware time not more than ``max_future_s`` ahead of ``now`` nor ``max_age_s`` behind it."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InputError(f"{name}={value.isoformat()} must carry a time zone")
    if value > now + timedelta(seconds=max_future_s):
        raise InputError(f"{name}={value.isoformat()} is more than {max_future_s:g} s in the future")
    if value < now - timedelta(seconds=max_age_s):
        raise InputError(f"{name}={value.isoformat()} is more than {max_age_s:g} s old")
    return value


def parse_xml_safely(data: bytes | str, *, max_bytes: int = 50 * 1024 * 1024) -> Element:
    """Parse XML refusing DTDs, entity declarations and external references (billion laughs,
    XXE); :class:`InputError` on any of them or on malformed XML."""
    import defusedxml.ElementTree as safe_et
    from defusedxml import DefusedXmlException

    size = len(data.encode()) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise InputError(f"XML document of {size} bytes exceeds {max_bytes}")
    try:
        root: Element = safe_et.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise InputError(f"unsafe XML refused: {exc!r}") from exc
    except safe_et.ParseError as exc:
        raise InputError(f"malformed XML: {exc}") from exc
    return root
