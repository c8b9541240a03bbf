"""The in-process bus's batched consumer: each incident in order, incidents overlapping, and
back-pressure when the handlers fall behind (nothing lost, nothing held beyond the queue's size)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from serving.bus import InProcessBus

pytestmark = pytest.mark.timeout(30)


async def _noop(_event: dict[str, Any]) -> None:
    return None


async def test_batches_keep_each_incident_in_order_and_overlap_incidents() -> None:
    bus = InProcessBus(maxsize=1000)
    seen: dict[str, list[int]] = {}
    active: set[str] = set()
    overlap = 0

    async def handler(group: list[dict[str, Any]]) -> None:
        nonlocal overlap
        incident = group[0]["incident_id"]
        assert incident not in active, "two batches of one incident at once"
        active.add(incident)
        overlap = max(overlap, len(active))
        await asyncio.sleep(0.01)
        seen.setdefault(incident, []).extend(int(x["k"]) for x in group)
        active.discard(incident)

    task = asyncio.create_task(bus.run_batched(handler, _noop, max_inflight=4))
    for k in range(200):
        await bus.submit({"incident_id": f"inc-{k % 5}", "k": k})
    deadline = asyncio.get_running_loop().time() + 10
    while sum(len(v) for v in seen.values()) < 200:
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for incident, ks in seen.items():
        assert ks == sorted(ks), incident
    assert sorted(k for ks in seen.values() for k in ks) == list(range(200))
    assert 1 < overlap <= 4


async def test_a_slow_handler_pushes_back_on_submit() -> None:
    bus = InProcessBus(maxsize=10)
    release = asyncio.Event()
    handled: list[int] = []

    async def handler(group: list[dict[str, Any]]) -> None:
        await release.wait()
        handled.extend(int(x["k"]) for x in group)

    task = asyncio.create_task(bus.run_batched(handler, _noop))
    accepted = 0
    for k in range(100):
        try:
            await asyncio.wait_for(bus.submit({"incident_id": "inc", "k": k}), 0.05)
        except TimeoutError:
            break
        accepted += 1
    # at most the queue's size waits in the queue, and as many again taken off it
    assert 10 <= accepted <= 21, accepted
    release.set()
    for k in range(accepted, 100):
        await bus.submit({"incident_id": "inc", "k": k})
    deadline = asyncio.get_running_loop().time() + 10
    while len(handled) < 100:
        assert asyncio.get_running_loop().time() < deadline, len(handled)
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert handled == list(range(100))


async def test_the_client_posts_a_sighting_again_after_a_dropped_connection() -> None:
    """A keep-alive connection the server closed as the request went out (httpx ``ReadError``):
    sightings are idempotent on their source event id, so the client tries again; other calls
    are not retried."""
    import httpx

    from serving.client import CordonClient

    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ReadError("connection closed by the server", request=request)
        return httpx.Response(200, json={"source_event_id": "ev-1", "accepted": True})

    client = CordonClient("http://cordon.test")
    client.http = httpx.AsyncClient(base_url="http://cordon.test", transport=httpx.MockTransport(handle))
    try:
        ack = await client.post_sighting({"incident_id": "inc", "source_event_id": "ev-1"})
        assert ack["accepted"] and calls == ["/api/sightings", "/api/sightings"]
        calls.clear()
        with pytest.raises(httpx.ReadError):
            await client.health()
        assert calls == ["/api/health"]
    finally:
        await client.aclose()
