"""The sighting path's latency machinery: the core thread's priorities, the bus's coalescing of
an incident's queued sightings (planned once, every sighting named in the crews' messages), the
audit writer's cheap batch append, and the load client's undecoded frames."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from serving.audit import SqliteAuditLog
from serving.bus import InProcessBus
from serving.service import DEFERRED, URGENT, CoreThread

pytestmark = pytest.mark.timeout(30)


Call = tuple[int, str, str | None]  # priority, name, key


def _order_of_calls(
    queued: Sequence[Call], *, promote: str | None = None, then: Sequence[Call] = ()
) -> list[str]:
    """The order in which a core thread runs ``queued`` (submitted while a first call holds it),
    ``promote`` promoted, then ``then`` submitted."""
    core = CoreThread(max_defer_s=60.0)
    gate = threading.Event()
    order: list[str] = []
    try:
        first = core.submit(URGENT, gate.wait)  # holds the thread while the others queue

        def submit(priority: int, name: str, key: str | None) -> Future[None]:
            return core.submit(priority, lambda: order.append(name), key=key)

        futures = [submit(*call) for call in queued]
        if promote is not None:
            assert core.promote(promote) == 1 and core.promote("nobody") == 0
        futures += [submit(*call) for call in then]
        gate.set()
        first.result(5)
        for f in futures:
            f.result(5)
    finally:
        core.shutdown()
    return order


def test_core_thread_runs_urgent_calls_before_deferred_ones_in_order() -> None:
    queued: list[Call] = [
        (DEFERRED, "tick-1", None),
        (URGENT, "sighting-1", None),
        (DEFERRED, "tick-2", None),
        (URGENT, "sighting-2", None),
    ]
    assert _order_of_calls(queued) == ["sighting-1", "sighting-2", "tick-1", "tick-2"]


def test_a_promoted_deferred_call_goes_before_later_urgent_ones() -> None:
    """A periodic re-plan holds its incident's lock while its call waits as deferred; when a
    sighting of that incident comes, the call is promoted: it runs before the urgent calls
    that come after (without promotion it would run after them)."""
    queued: list[Call] = [
        (URGENT, "sighting-A", None),
        (DEFERRED, "replan-B", "B"),
        (DEFERRED, "geojson-C", "C"),
    ]
    then: list[Call] = [(URGENT, "sighting-D", None)]
    assert _order_of_calls(queued, then=then) == ["sighting-A", "sighting-D", "replan-B", "geojson-C"]
    assert _order_of_calls(queued, promote="B", then=then) == [
        "sighting-A",
        "replan-B",
        "sighting-D",
        "geojson-C",
    ]


def test_core_thread_never_starves_a_deferred_call() -> None:
    core = CoreThread(max_defer_s=0.05)
    order: list[str] = []
    try:
        gate = threading.Event()
        first = core.submit(URGENT, gate.wait)
        deferred = core.submit(DEFERRED, lambda: order.append("deferred"))
        time.sleep(0.1)  # the deferred call is now older than max_defer_s
        urgent = core.submit(URGENT, lambda: order.append("urgent"))
        gate.set()
        first.result(5)
        deferred.result(5)
        urgent.result(5)
        assert order == ["deferred", "urgent"]
    finally:
        core.shutdown()


def test_core_thread_passes_errors_and_refuses_after_shutdown() -> None:
    core = CoreThread()

    def boom() -> None:
        raise KeyError("camera")

    with pytest.raises(KeyError):
        core.submit(URGENT, boom).result(5)
    core.shutdown()
    with pytest.raises(RuntimeError):
        core.submit(URGENT, lambda: None)


async def _noop(_event: dict[str, Any]) -> None:
    return None


async def test_bus_hands_an_incident_all_its_queued_sightings_and_serves_the_oldest_first() -> None:
    bus = InProcessBus(maxsize=1000)
    release = asyncio.Event()
    batches: list[tuple[str, list[int]]] = []

    async def handler(group: list[dict[str, Any]]) -> None:
        await release.wait()
        batches.append((group[0]["incident_id"], [int(x["k"]) for x in group]))

    task = asyncio.create_task(bus.run_batched(handler, _noop, max_inflight=1))
    await bus.submit({"incident_id": "a", "k": 0})  # starts at once, waits on ``release``
    await asyncio.sleep(0.02)
    # queued while the slot is taken: b's oldest is older than a's next, then c
    for k, incident in enumerate(["b", "a", "b", "c", "a", "b"], start=1):
        await bus.submit({"incident_id": incident, "k": k})
    await asyncio.sleep(0.02)
    release.set()
    deadline = asyncio.get_running_loop().time() + 5
    while sum(len(ks) for _, ks in batches) < 7:
        assert asyncio.get_running_loop().time() < deadline, batches
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # every queued sighting of an incident in one batch, in arrival order; oldest incident first
    assert batches == [("a", [0]), ("b", [1, 3, 6]), ("a", [2, 5]), ("c", [4])]


def test_audit_batch_append_without_records_chains_like_with_them(tmp_path: Path) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    batch = [
        ("op", "operator", "sighting_received", at + timedelta(seconds=k), "I", None, {"k": k}, "")
        for k in range(5)
    ]
    a = SqliteAuditLog(tmp_path / "a.sqlite", key=b"k" * 32)
    b = SqliteAuditLog(tmp_path / "b.sqlite", key=b"k" * 32)
    assert len(a.append_many(batch)) == 5
    assert b.append_many(batch, return_records=False) == []
    assert [r.hash for r in a.records()] == [r.hash for r in b.records()]
    assert [r.payload for r in b.records()] == [{"k": k} for k in range(5)]
    assert b.verify().ok


def test_asyncapi_documents_the_sightings_a_suggestion_answers() -> None:
    from serving.asyncapi import asyncapi_document, message_validator

    schemas = asyncapi_document()["components"]["schemas"]
    for name in ("SuggestionMsg", "SuggestionUpdateMsg"):
        assert "sighting_ids" in schemas[name]["properties"], name
    validate = message_validator("/ws/crew").validate
    body = {
        "suggestion_id": "I:3:C1",
        "incident_id": "I",
        "crew_id": "C1",
        "target_node": 7,
        "lon": 6.1,
        "lat": 49.1,
        "street_names": ["Rue A"],
        "route_lonlat": [[6.1, 49.1]],
        "turns": [],
        "crew_eta_s": 30.0,
        "suspect_earliest_eta_s": 60.0,
        "suspect_likely_eta_s": 80.0,
        "margin_s": 30.0,
        "probability_covered": 0.5,
        "reason": "r",
        "plan_version": 3,
        "issued_at": "2026-01-01T00:00:00+00:00",
        "expires_at": "2026-01-01T00:02:00+00:00",
        "state": "sent",
    }
    message = {
        "type": "suggestion",
        "seq": 1,
        "sent_at": "2026-01-01T00:00:00+00:00",
        "expires_at": "2026-01-01T00:02:00+00:00",
        "suggestion": body,
        "sighting_id": "s-3",
        "sighting_ids": ["s-1", "s-2", "s-3"],
    }
    validate(message)
    with pytest.raises(jsonschema.ValidationError):
        validate(dict(message, sighting_ids="s-3"))  # a list, not a string
