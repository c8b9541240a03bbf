"""Rate limiter on a counter clock, body-size middleware (declared and streamed bodies), the
rate-limit middleware, input checks, websocket size check, safe XML."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.limits import (
    WS_CLOSE_TOO_BIG,
    BodySizeLimitMiddleware,
    InputError,
    RateLimiter,
    RateLimitMiddleware,
    check_identifier,
    check_lonlat,
    check_time,
    parse_xml_safely,
    ws_message_too_big,
)


class Counter:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_burst_then_refill() -> None:
    clock = Counter()
    limiter = RateLimiter(rate_per_s=2.0, burst=5, clock=clock)
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("b")  # another client has its own bucket
    assert limiter.retry_after_s("a") == pytest.approx(0.5)
    clock.t = 0.49
    assert not limiter.allow("a")
    clock.t = 0.5
    assert limiter.allow("a")
    clock.t = 1000.0
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]  # capped at burst


def test_token_bucket_memory_is_bounded() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=Counter(), max_keys=3)
    for key in "abcd":
        assert limiter.allow(key)
    assert len(limiter) == 3
    assert limiter.allow("a")  # evicted, so a fresh bucket
    assert not limiter.allow("d")


def test_limiter_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(rate_per_s=0, burst=1, clock=Counter())
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(rate_per_s=1, burst=float("inf"), clock=Counter())


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"n": len(await request.body())}

    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=1000)  # type: ignore[arg-type]
    with TestClient(app) as c:
        yield c


def test_body_limit_by_declared_length(client: TestClient) -> None:
    assert client.post("/echo", content=b"x" * 1000).json() == {"n": 1000}
    r = client.post("/echo", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["code"] == "too_large"


def test_body_limit_counts_streamed_bodies(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"y" * 300

    r = client.post("/echo", content=chunks())  # chunked: no Content-Length
    assert r.status_code == 413


def test_body_limit_does_not_trust_a_lying_content_length(client: TestClient) -> None:
    r = client.post("/echo", content=b"z" * 5000, headers={"content-length": "10"})
    assert r.status_code in (400, 413)
    assert r.status_code != 200


async def test_body_limit_with_raw_asgi_messages() -> None:
    """A lying Content-Length through the raw ASGI interface: the streamed bytes decide."""
    sent: list[dict[str, object]] = []
    seen: list[int] = []

    async def app(scope: object, receive: object, send: object) -> None:
        total = 0
        while True:
            message = await receive()  # type: ignore[operator]
            total += len(message.get("body", b""))
            seen.append(total)
            if not message.get("more_body"):
                break

    chunks = [
        {"type": "http.request", "body": b"a" * 600, "more_body": True},
        {"type": "http.request", "body": b"a" * 600, "more_body": False},
    ]

    async def receive() -> dict[str, object]:
        return chunks.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    middleware = BodySizeLimitMiddleware(app, max_body_bytes=1000)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"5")]}
    await middleware(scope, receive, send)  # type: ignore[arg-type]
    assert seen == [600]
    assert sent[0]["status"] == 413


def test_rate_limit_middleware() -> None:
    clock = Counter()
    app = FastAPI()

    @app.get("/x")
    def x() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    limiter = RateLimiter(rate_per_s=1, burst=2, clock=clock)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)  # type: ignore[arg-type]
    with TestClient(app) as c:
        assert [c.get("/x").status_code for _ in range(3)] == [200, 200, 429]
        r = c.get("/x")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert all(c.get("/health").status_code == 200 for _ in range(5))
        clock.t = 1.0
        assert c.get("/x").status_code == 200


def test_ws_size_check() -> None:
    assert WS_CLOSE_TOO_BIG == 1009
    assert not ws_message_too_big("é" * 8, 16)
    assert ws_message_too_big("é" * 9, 16)  # counted in UTF-8 bytes
    assert ws_message_too_big(b"x" * 17, 16)


def test_input_checks() -> None:
    assert check_identifier("INC-2026.04:1_a", "incident_id") == "INC-2026.04:1_a"
    for bad in ("", "a b", "x" * 65, "é", None, 5, "a/b"):
        with pytest.raises(InputError, match="incident_id"):
            check_identifier(bad, "incident_id")
    assert check_lonlat(6.17, 49.12) == (6.17, 49.12)
    for lon, lat in ((181, 0), (0, -90.5), (float("nan"), 0), (0, float("inf")), (True, 0), ("6", 49)):
        with pytest.raises(InputError):
            check_lonlat(lon, lat)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    check_time(now - timedelta(minutes=5), "observed_at", now=now)
    with pytest.raises(InputError, match=r"observed_at.*future"):
        check_time(now + timedelta(minutes=5), "observed_at", now=now)
    with pytest.raises(InputError, match="old"):
        check_time(now - timedelta(days=2), "observed_at", now=now)
    with pytest.raises(InputError, match="time zone"):
        check_time(datetime(2026, 3, 1), "observed_at", now=now)  # noqa: DTZ001


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<osm>&lol3;</osm>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><osm>&xxe;</osm>"""


def test_xml_is_parsed_safely() -> None:
    root = parse_xml_safely(b"<osm version='0.6'><node id='1' lat='49.1' lon='6.2'/></osm>")
    assert root.tag == "osm" and root[0].get("lat") == "49.1"
    for evil in (BILLION_LAUGHS, XXE):
        with pytest.raises(InputError, match="unsafe XML"):
            parse_xml_safely(evil)
    with pytest.raises(InputError, match="malformed"):
        parse_xml_safely(b"<osm><node></osm>")
    with pytest.raises(InputError, match="exceeds"):
        parse_xml_safely(b"<a/>", max_bytes=2)
