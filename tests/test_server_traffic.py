"""What the server sends on its websockets: batched frames (``?batch=1``: the messages queued
together in one JSON array) and the tablets' lighter prediction."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serving import messages as m
from serving.asyncapi import asyncapi_document
from serving.hub import BATCH_ITEM_MAX_CHARS, CLOSE_TOO_SLOW, Hub
from serving.service import CREW_MAX_CROSSINGS, CREW_MIN_CROSSING_PROBABILITY, crew_prediction_geojson


async def _frames(
    batch: bool, messages: list[dict[str, Any]], *, cut: bool = False
) -> tuple[list[str], list[int], Hub]:
    """What one operator connection's socket gets for ``messages`` queued at once."""
    frames: list[str] = []
    closed: list[int] = []

    async def send(text: str) -> None:
        frames.append(text)

    async def close(code: int, reason: str) -> None:
        closed.append(code)

    hub = Hub(now=lambda: "2026-01-01T00:00:00+00:00")
    conn = hub.add(role="operator", subject="op", send=send, close=close, batch=batch)
    for message in messages:
        hub.enqueue(conn, message)
    if cut:
        conn.queue.put_nowait(None)
    for _ in range(5):
        await asyncio.sleep(0)
    await hub.remove(conn)
    return frames, closed, hub


async def test_queued_messages_go_in_one_array_frame_in_order() -> None:
    messages = [{"type": "track", "n": i} for i in range(5)]
    frames, _, hub = await _frames(True, messages)
    assert len(frames) == 1
    got = json.loads(frames[0])
    assert isinstance(got, list)
    assert [g["n"] for g in got] == [0, 1, 2, 3, 4]
    assert [g["seq"] for g in got] == [1, 2, 3, 4, 5]
    assert (hub.frames_sent, hub.messages_sent) == (1, 5)


async def test_without_batch_one_message_per_frame() -> None:
    frames, _, _ = await _frames(False, [{"type": "track", "n": i} for i in range(3)])
    assert [json.loads(f)["n"] for f in frames] == [0, 1, 2]


async def test_a_large_message_has_a_frame_of_its_own_and_order_is_kept() -> None:
    big: dict[str, Any] = {"type": "prediction", "blob": "x" * (BATCH_ITEM_MAX_CHARS + 10)}
    messages: list[dict[str, Any]] = [{"type": "track", "n": 0}, {"type": "track", "n": 1}, big]
    messages.append({"type": "track", "n": 2})
    frames, _, _ = await _frames(True, messages)
    assert len(frames) == 3
    first, second, third = (json.loads(f) for f in frames)
    assert [m["n"] for m in first] == [0, 1]
    assert second["type"] == "prediction" and not isinstance(second, list)
    assert third["n"] == 2  # a single message is sent as itself, not as a one-item array


async def test_a_close_queued_behind_a_batch_is_honoured_after_it() -> None:
    frames, closed, _ = await _frames(True, [{"type": "track", "n": i} for i in range(2)], cut=True)
    assert [m["n"] for m in json.loads(frames[0])] == [0, 1]
    assert closed == [CLOSE_TOO_SLOW]


def test_asyncapi_documents_the_batch_query_parameter() -> None:
    doc = asyncapi_document()
    for path in ("/ws/crew", "/ws/operator"):
        channel = doc["channels"][path]
        assert channel["bindings"]["ws"]["query"]["properties"]["batch"]["type"] == "boolean"
        assert "JSON array" in channel["description"]


def test_crews_prediction_leaves_out_positions_only() -> None:
    def feature(kind: str) -> dict[str, Any]:
        return {"type": "Feature", "geometry": None, "properties": {"kind": kind}}

    geojson = {
        "type": "FeatureCollection",
        "at": "2026-01-01T00:00:00+00:00",
        "features": [feature("crossing"), feature("position"), feature("route"), feature("position")],
    }
    crew = crew_prediction_geojson(geojson)
    assert [f["properties"]["kind"] for f in crew["features"]] == ["crossing", "route"]
    assert crew["at"] == geojson["at"] and len(geojson["features"]) == 4  # the original is kept


def test_crews_prediction_keeps_the_routes_and_the_likely_crossings_only() -> None:
    def crossing(node: int, p: float) -> dict[str, Any]:
        props = {
            "kind": "crossing",
            "node": node,
            "probability": p,
            "earliest_eta_s": 1.0,
            "likely_eta_s": 2.0,
        }
        return {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [6.1, 49.1]},
            "properties": props,
        }

    route = {
        "type": "Feature",
        "geometry": None,
        "properties": {"kind": "route", "rank": 1, "probability": 0.3},
    }
    probabilities = [0.05, 0.5, 0.09, 0.1, 0.99] + [0.2] * (CREW_MAX_CROSSINGS + 10)
    geojson = {
        "type": "FeatureCollection",
        "features": [crossing(i, p) for i, p in enumerate(probabilities)] + [route],
    }
    crew = crew_prediction_geojson(geojson)
    kept = [f for f in crew["features"] if f["properties"]["kind"] == "crossing"]
    assert len(kept) == CREW_MAX_CROSSINGS
    ps = [f["properties"]["probability"] for f in kept]
    # the most likely (over the cap, 0.1 is left out), in the collection's order; none below
    # the threshold
    assert ps[:3] == [0.5, 0.99, 0.2] and min(ps) == 0.2
    assert set(kept[0]["properties"]) == {"kind", "probability", "likely_eta_s"}
    assert crew["features"][-1] == route
    few = crew_prediction_geojson(dict(geojson, features=geojson["features"][:5]))
    assert [f["properties"]["probability"] for f in few["features"]] == [0.5, 0.1, 0.99]
    assert CREW_MIN_CROSSING_PROBABILITY == 0.1
    assert len(geojson["features"]) == len(probabilities) + 1  # the original is kept


def _three_consoles() -> tuple[Hub, dict[str, list[dict[str, Any]]]]:
    """A hub with three consoles: ``all`` watching every incident (the default), ``a`` watching
    incident A, ``none`` watching none; and the messages each receives, in order."""
    got: dict[str, list[dict[str, Any]]] = {"all": [], "a": [], "none": []}

    def sender(name: str) -> Any:
        async def send(text: str) -> None:
            frame = json.loads(text)
            got[name].extend(frame if isinstance(frame, list) else [frame])

        return send

    async def close(code: int, reason: str) -> None:
        return None

    hub = Hub(now=lambda: "2026-01-01T00:00:00+00:00")
    conns = {name: hub.add(role="operator", subject=name, send=sender(name), close=close) for name in got}
    conns["a"].watching = frozenset({"A"})
    conns["none"].watching = frozenset()
    return hub, got


async def _drained(hub: Hub) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    await hub.close_all()


async def test_predictions_go_only_to_the_consoles_watching_their_incident() -> None:
    hub, received = _three_consoles()
    for incident in ("A", "B"):
        hub.to_operators(None, {"type": "prediction", "incident_id": incident, "geojson": {}})
        hub.to_operators(None, {"type": "track", "incident_id": incident})
    await _drained(hub)
    got = {name: [f"{m['type']}:{m['incident_id']}" for m in messages] for name, messages in received.items()}
    assert got["all"] == ["prediction:A", "track:A", "prediction:B", "track:B"]
    assert got["a"] == ["prediction:A", "track:A", "track:B"]
    assert got["none"] == ["track:A", "track:B"]


def _plan_message(incident_id: str) -> dict[str, Any]:
    suggestion = {
        "suggestion_id": f"{incident_id}-s1",
        "incident_id": incident_id,
        "crew_id": "C1",
        "target_node": 7,
        "lon": 2.35,
        "lat": 48.85,
        "street_names": ["Rue de Rivoli"],
        "route_lonlat": [[2.34, 48.85], [2.345, 48.851], [2.35, 48.85]],
        "turns": [{"at_m": 120.0, "instruction": "left", "street": "Rue de Rivoli"}],
        "crew_eta_s": 40.0,
        "suspect_earliest_eta_s": 70.0,
        "suspect_likely_eta_s": 90.0,
        "margin_s": 30.0,
        "probability_covered": 0.4,
        "reason": "covers the likeliest route",
        "plan_version": 3,
        "issued_at": "2026-01-01T00:00:00+00:00",
        "expires_at": "2026-01-01T00:02:00+00:00",
        "state": "sent",
    }
    return {
        "type": "plan",
        "incident_id": incident_id,
        "version": 3,
        "at": "2026-01-01T00:00:00+00:00",
        "coverage_probability": 0.4,
        "suggestion_ids": [suggestion["suggestion_id"]],
        "suggestions": [suggestion],
        "ended": [],
        "holds": [],
        "dispatch_mode": "direct",
    }


async def test_plans_reach_unwatching_consoles_without_routes() -> None:
    """A console gets a plan in full for the incidents it watches (or when it watches all), and
    without the suggestions' routes and turns (``detail: false``) for the others; both are
    valid ``plan`` messages and say the same otherwise."""
    hub, got = _three_consoles()
    for incident in ("A", "B"):
        hub.to_operators(None, _plan_message(incident))
    await _drained(hub)

    def detail(message: dict[str, Any]) -> tuple[bool, int, int]:
        parsed = m.operator_server_adapter.validate_python(message)
        assert isinstance(parsed, m.PlanMsg)
        s = parsed.suggestions[0]
        return parsed.detail, len(s.route_lonlat), len(s.turns)

    assert [detail(x) for x in got["all"]] == [(True, 3, 1), (True, 3, 1)]
    assert [detail(x) for x in got["a"]] == [(True, 3, 1), (False, 0, 0)]
    assert [detail(x) for x in got["none"]] == [(False, 0, 0), (False, 0, 0)]
    # the slim plan says everything else the full one says
    full, slim = got["all"][1], got["a"][1]
    assert {k: v for k, v in slim.items() if k not in ("seq", "detail", "suggestions")} == {
        k: v for k, v in full.items() if k not in ("seq", "suggestions")
    }
    keep = {k: v for k, v in full["suggestions"][0].items() if k not in ("route_lonlat", "turns")}
    assert {k: v for k, v in slim["suggestions"][0].items() if k not in ("route_lonlat", "turns")} == keep
    # each console's stream stays gapless
    assert [x["seq"] for x in got["a"]] == [1, 2] and [x["seq"] for x in got["none"]] == [1, 2]


def test_watch_message_is_an_operator_client_message() -> None:
    msg = m.operator_client_adapter.validate_json('{"type": "watch", "incident_ids": ["A"]}')
    assert isinstance(msg, m.WatchMsg) and msg.incident_ids == ["A"]
    every = m.operator_client_adapter.validate_json('{"type": "watch", "incident_ids": null}')
    assert isinstance(every, m.WatchMsg) and every.incident_ids is None
    names = [
        ref["$ref"].rsplit("/", 1)[1]
        for ref in asyncapi_document()["channels"]["/ws/operator"]["publish"]["message"]["oneOf"]
    ]
    assert "WatchMsg" in names


async def test_a_batching_console_gets_what_comes_within_the_linger_in_one_frame() -> None:
    frames: dict[str, list[str]] = {"console": [], "tablet": []}

    def sender(name: str) -> Any:
        async def send(text: str) -> None:
            frames[name].append(text)

        return send

    async def close(code: int, reason: str) -> None:
        return None

    hub = Hub(now=lambda: "2026-01-01T00:00:00+00:00", console_linger_s=0.05)
    console = hub.add(role="operator", subject="op", send=sender("console"), close=close, batch=True)
    assert console.linger_s == 0.05
    tablet = hub.add(role="crew", subject="c", send=sender("tablet"), close=close, crew_id="C1", batch=True)
    assert tablet.linger_s == 0.0
    tablet.ready = True
    hub.to_operators(None, {"type": "crew", "n": 0})
    hub.to_crew("C1", {"type": "suggestion", "seq": 1})
    await asyncio.sleep(0.01)
    assert frames["console"] == [] and len(frames["tablet"]) == 1  # a tablet never waits
    hub.to_operators(None, {"type": "crew", "n": 1})
    await asyncio.sleep(0.1)
    await hub.close_all()
    assert len(frames["console"]) == 1
    assert [m["n"] for m in json.loads(frames["console"][0])] == [0, 1]


async def test_a_lingering_console_is_never_throttled_by_large_messages() -> None:
    """Small and large messages alternating: one linger per wake-up, then everything queued
    goes (a wait per frame would let the queue grow until the console is cut)."""
    frames: list[str] = []

    async def send(text: str) -> None:
        frames.append(text)

    async def close(code: int, reason: str) -> None:
        return None

    hub = Hub(now=lambda: "2026-01-01T00:00:00+00:00", console_linger_s=0.05, queue_size=1000)
    hub.add(role="operator", subject="op", send=send, close=close, batch=True)
    big = "x" * (BATCH_ITEM_MAX_CHARS + 10)
    for i in range(100):
        hub.to_operators(None, {"type": "crew", "n": i})
        hub.to_operators(None, {"type": "plan", "n": i, "blob": big})
    await asyncio.sleep(0.2)  # one linger (0.05 s), not 100 of them
    await hub.close_all()
    got = [m for f in frames for m in (lambda x: x if isinstance(x, list) else [x])(json.loads(f))]
    assert len(got) == 200 and [m["n"] for m in got[::2]] == list(range(100))
    assert hub.cut == 0
