"""End-to-end tests of one server process: a real uvicorn server on loopback, real websocket clients
(the ``websockets`` library through :mod:`serving.client`), the real core on a small generated city,
and the in-process bus. Every message the server sent is checked against its AsyncAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from test_server_support import check_against_asyncapi, city_for_tests, running_server, token
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from serving.client import Console, CordonClient, CordonHTTPError, Tablet
from serving.clock import SimulationClock
from serving.config import ServerConfig
from serving.hub import CLOSE_TOO_SLOW, Hub
from serving.messages import DispatchMode

pytestmark = pytest.mark.timeout(120)

SECRET = b"server-tests-shared-secret-0123456789abcdef"
COMMUNE = "Metz-Centre"


def crew_nodes(n: int) -> list[tuple[float, float]]:
    """``n`` crossings spread over the map (deterministic)."""
    graph = city_for_tests().graph
    step = max(1, graph.n_nodes // n)
    return [
        (float(graph.node_lonlat[i][0]), float(graph.node_lonlat[i][1])) for i in range(0, step * n, step)
    ]


def camera_ids() -> list[str]:
    return sorted(city_for_tests().cameras.cameras)


async def crews_online(base: str, n: int, *, commune: str = COMMUNE, **kw: Any) -> list[Tablet]:
    tablets = []
    for i, (lon, lat) in enumerate(crew_nodes(n)):
        crew_id = f"C-{i:02d}"
        t = Tablet(base, await token(base, "crew", crew_id=crew_id, communes=commune), crew_id, **kw)
        await t.connect()
        await t.next("snapshot")
        await t.position(lon, lat)
        tablets.append(t)
    return tablets


def sighting(incident: str, camera: str, event: str, at: datetime | None = None) -> dict[str, Any]:
    return {
        "incident_id": incident,
        "camera_id": camera,
        "observed_at": (at or datetime.now(UTC)).isoformat(),
        "source_event_id": event,
    }


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


async def close_all(*sockets: Any) -> None:
    for s in sockets:
        await s.close()


async def test_sighting_reaches_the_right_tablets_only() -> None:
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 8)
        console = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await console.connect()
        await console.next("snapshot")
        await wait_for(lambda: len([m for m in console.received if m["type"] == "crew"]) >= 0)
        await asyncio.sleep(0.2)  # positions applied
        await op.open_incident("inc-1", commune=COMMUNE)
        ack = await op.post_sighting(sighting("inc-1", camera_ids()[5], "ev-1"))
        assert ack == {
            "source_event_id": "ev-1",
            "accepted": True,
            "duplicate": False,
            "late": False,
            "flag": None,
        }
        plan = await console.next("plan", timeout_s=15)
        planned = set(plan["suggestion_ids"])
        assert planned, "the planner suggested nothing for 8 crews spread over the map"
        received: dict[str, str] = {}
        for t in tablets:
            expected = [s for s in planned if s.endswith(f":{t.crew_id}")]
            if expected:
                msg = await t.next("suggestion", timeout_s=5)
                received[msg["suggestion"]["suggestion_id"]] = t.crew_id
                assert msg["suggestion"]["crew_id"] == t.crew_id
                assert msg["seq"] == 1 and msg["expires_at"] > msg["sent_at"]
        await asyncio.sleep(0.3)
        for t in tablets:  # nobody got anybody else's suggestion
            for msg in t.received:
                if msg["type"] == "suggestion":
                    assert msg["suggestion"]["crew_id"] == t.crew_id
        assert set(received) == planned
        # the incident's state as GeoJSON
        state = await op.incident_state("inc-1")
        kinds = {f["properties"]["kind"] for f in state["track"]["features"]}
        assert {"track", "suggestion"} <= kinds
        assert state["prediction"]["type"] == "FeatureCollection" and state["prediction"]["features"]
        assert state["plan"]["version"] == plan["version"]
        types = [m["type"] for m in console.received]
        assert {"incident", "sighting", "track", "prediction", "plan"} <= set(types)
        assert {s["suggestion_id"] for s in plan["suggestions"]} == planned
        seqs = [m["seq"] for m in console.received]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert check_against_asyncapi(srv.app.state.hub.sent_log) > 10
        await close_all(console, *tablets)
        await op.aclose()


async def test_a_sighting_is_planned_for_when_its_report_arrived() -> None:
    """The operator's handoff came seconds after the camera saw the suspect: the crews act
    from now, so the plan is for the report's arrival, not for the moment of the sighting."""
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 4)
        console = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await console.connect()
        await console.next("snapshot")
        await op.open_incident("inc-late", commune=COMMUNE)
        await asyncio.sleep(2.5)
        before = datetime.now(UTC)
        seen_at = before - timedelta(seconds=2)  # seen after the incident was opened
        await op.post_sighting(sighting("inc-late", camera_ids()[5], "ev-late", at=seen_at))
        plan = await console.next("plan", timeout_s=15)
        planned_at = datetime.fromisoformat(plan["at"])
        assert before - timedelta(seconds=0.5) <= planned_at <= datetime.now(UTC), (planned_at, seen_at)
        await close_all(console, *tablets)


async def test_errors_are_precise() -> None:
    async with running_server(
        ServerConfig(audit_db="memory", demo_crews=0, token_secret=SECRET, max_body_bytes=20_000)
    ) as srv:
        op = CordonClient(srv.base, await token(srv.base, communes=COMMUNE))
        await op.open_incident("inc-e", commune=COMMUNE)
        cam = camera_ids()[0]
        with pytest.raises(CordonHTTPError) as err:
            await op.post_sighting(sighting("inc-e", "CAM-NOPE", "e1"))
        assert err.value.status == 422 and err.value.code == "unknown_camera"
        assert "CAM-NOPE" in err.value.body["message"]
        with pytest.raises(CordonHTTPError) as err:
            await op.post_sighting(sighting("inc-unknown", cam, "e2"))
        assert err.value.status == 404 and err.value.code == "unknown_incident"
        bad = sighting("inc-e", cam, "e3")
        bad["observed_at"] = "2026-01-01T08:00:00"  # naive time
        with pytest.raises(CordonHTTPError) as err:
            await op.post_sighting(bad)
        assert err.value.status == 422 and err.value.code == "invalid_message"
        assert err.value.body["detail"][0]["loc"][:2] == ["body", "observed_at"]
        extra = sighting("inc-e", cam, "e4") | {"colour": "red"}
        with pytest.raises(CordonHTTPError) as err:
            await op.post_sighting(extra)
        assert err.value.status == 422 and "colour" in json.dumps(err.value.body["detail"])
        first = await op.post_sighting(sighting("inc-e", cam, "e5"))
        again = await op.post_sighting(sighting("inc-e", cam, "e5"))
        assert first["duplicate"] is False and again["duplicate"] is True
        late = await op.post_sighting(sighting("inc-e", cam, "e6", datetime.now(UTC) - timedelta(minutes=5)))
        await wait_for(lambda: srv.app.state.service.processed >= 2)
        late = await op.post_sighting(sighting("inc-e", cam, "e7", datetime.now(UTC) - timedelta(minutes=4)))
        assert late["late"] is True and late["accepted"] is True
        batch = await op.post_sightings([sighting("inc-e", cam, "e8"), sighting("inc-e", cam, "e5")])
        assert [r["duplicate"] for r in batch["results"]] == [False, True]
        with pytest.raises(CordonHTTPError) as err:  # one bad item refuses the whole batch
            await op.post_sightings([sighting("inc-e", cam, "e9"), sighting("inc-e", "CAM-NOPE", "e10")])
        assert err.value.status == 422 and "item 1" in err.value.body["message"]
        async with httpx.AsyncClient(base_url=srv.base) as raw:
            r = await raw.post(
                "/api/sightings",
                content=b"["
                + b",".join([json.dumps(sighting("inc-e", cam, f"x{i}")).encode() for i in range(300)])
                + b"]",
                headers={"Authorization": f"Bearer {op.token}", "Content-Type": "application/json"},
            )
            assert r.status_code == 413 and r.json()["code"] == "too_large"
            r = await raw.post("/api/sightings", json=sighting("inc-e", cam, "e11"))
            assert r.status_code == 401
            r = await raw.get("/api/health")
            assert r.status_code == 200 and r.json()["status"] == "ok"
            r = await raw.get("/metrics")
            assert "cordon_sightings_total" in r.text
        # another commune's incident answers 404, as if it did not exist
        other = CordonClient(srv.base, await token(srv.base, communes="Woippy"))
        with pytest.raises(CordonHTTPError) as err:
            await other.incident_state("inc-e")
        assert err.value.status == 404
        with pytest.raises(CordonHTTPError) as err:
            await other.post_sighting(sighting("inc-e", cam, "e12"))
        assert err.value.status == 404
        await other.aclose()
        await op.aclose()


async def test_websocket_errors_and_frame_limit() -> None:
    async with running_server(
        ServerConfig(audit_db="memory", demo_crews=0, token_secret=SECRET, ws_max_size=4096)
    ) as srv:
        crew_token = await token(srv.base, "crew", crew_id="C-01", communes=COMMUNE)
        url = srv.base.replace("http", "ws") + "/ws/crew"
        async with connect(url + f"?token={crew_token}") as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
            await ws.send(json.dumps({"type": "decline", "suggestion_id": "nope"}))  # no reason
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and err["code"] == "invalid_message" and "reason" in err["message"]
            await ws.send(json.dumps({"type": "accept", "suggestion_id": "nope"}))
            err = json.loads(await ws.recv())
            assert err["code"] == "unknown_suggestion" and err["ref"] == "nope"
            await ws.send(json.dumps({"type": "position", "lon": 6.17, "lat": 49.1, "x": "y" * 8000}))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009
        # auth by first message; a bad token is refused with 1008
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": crew_token}))
            assert json.loads(await ws.recv())["type"] == "snapshot"
        async with connect(url + "?token=garbage") as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        op_token = await token(srv.base, communes=COMMUNE)
        async with connect(url + f"?token={op_token}") as ws:  # an operator is not a crew
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        assert check_against_asyncapi(srv.app.state.hub.sent_log) >= 3


async def test_reconnect_resumes_from_last_seq_or_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 6, reconnect=False)
        await asyncio.sleep(0.2)
        await op.open_incident("inc-r", commune=COMMUNE)
        cams = camera_ids()
        await op.post_sighting(sighting("inc-r", cams[5], "r1"))
        await wait_for(lambda: srv.app.state.service.processed >= 1)
        await asyncio.sleep(0.2)
        got = [t for t in tablets if t.last_seq]
        assert got, "no tablet received a suggestion"
        tablet = got[0]
        seen = tablet.last_seq
        assert seen is not None
        await tablet.drop()  # a tunnel
        await wait_for(lambda: len(srv.app.state.hub.crews.get(tablet.crew_id, ())) == 0)
        t1 = datetime.now(UTC)
        for k, cam in enumerate(cams[6:9]):
            await op.post_sighting(sighting("inc-r", cam, f"r{k + 2}", t1 + timedelta(seconds=k)))
        await wait_for(lambda: srv.app.state.service.processed >= 4)
        stream_seq = await srv.app.state.service.state.crew_seq(tablet.crew_id)
        assert stream_seq > seen, "the crew's stream did not move while it was away"
        back = Tablet(srv.base, tablet.token, tablet.crew_id, reconnect=False)
        back.last_seq = seen
        await back.connect()
        missed: list[dict[str, Any]] = []
        while len(missed) < stream_seq - seen:
            missed.append(await back.next(timeout_s=5))
        assert [m["seq"] for m in missed] == list(range(seen + 1, stream_seq + 1))
        assert all(m["type"] != "snapshot" for m in missed)
        await back.close()
        # a gap older than what the server keeps: a fresh snapshot instead
        from serving import state as state_module

        kept = srv.app.state.service.state._crew_log[tablet.crew_id]
        kept.clear()  # as if the log had rolled over
        _ = state_module
        again = Tablet(srv.base, tablet.token, tablet.crew_id, reconnect=False)
        again.last_seq = seen
        await again.connect()
        snap = await again.next(timeout_s=5)
        assert snap["type"] == "snapshot" and snap["reason"] == "gap" and snap["seq"] == stream_seq
        assert all(s["crew_id"] == tablet.crew_id for s in snap["suggestions"])
        await close_all(again, *tablets)
        await op.aclose()
        assert check_against_asyncapi(srv.app.state.hub.sent_log) > 0


async def test_client_resumes_by_itself_after_a_drop() -> None:
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 6)
        await asyncio.sleep(0.2)
        await op.open_incident("inc-a", commune=COMMUNE)
        cams = camera_ids()
        await op.post_sighting(sighting("inc-a", cams[5], "a1"))
        await wait_for(lambda: any(t.last_seq for t in tablets))
        tablet = next(t for t in tablets if t.last_seq)
        await tablet.drop()
        for k, cam in enumerate(cams[6:8]):
            await op.post_sighting(sighting("inc-a", cam, f"a{k + 2}"))
        await wait_for(lambda: srv.app.state.service.processed >= 3)
        final = await srv.app.state.service.state.crew_seq(tablet.crew_id)
        await wait_for(lambda: tablet.last_seq == final, 10)
        assert tablet.connects == 2
        seqs = [m["seq"] for m in tablet.received if m["type"].startswith("suggestion")]
        assert seqs == list(range(1, final + 1))  # every message once, in order
        await close_all(*tablets)
        await op.aclose()


async def test_approval_mode_holds_suggestions_until_approved() -> None:
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base, communes=COMMUNE))
        await op.set_dispatch_mode(COMMUNE, DispatchMode.approval.value)
        tablets = await crews_online(srv.base, 6)
        console = Console(srv.base, op.token or "")
        await console.connect()
        await asyncio.sleep(0.2)
        await op.open_incident("inc-p", commune=COMMUNE)
        await op.post_sighting(sighting("inc-p", camera_ids()[5], "p1"))
        plan = await console.next("plan", timeout_s=15)
        assert plan["dispatch_mode"] == "approval" and plan["suggestion_ids"]
        pending = [s for s in plan["suggestions"] if s["state"] == "pending_approval"]
        assert {s["suggestion_id"] for s in pending} == set(plan["suggestion_ids"])
        await asyncio.sleep(0.3)
        assert not [m for t in tablets for m in t.received if m["type"] == "suggestion"]
        chosen = pending[0]
        await console.approve(chosen["suggestion_id"])
        tablet = next(t for t in tablets if t.crew_id == chosen["crew_id"])
        msg = await tablet.next("suggestion", timeout_s=5)
        assert msg["suggestion"]["suggestion_id"] == chosen["suggestion_id"]
        assert msg["suggestion"]["state"] == "sent"
        decision = await console.next("decision", timeout_s=5)
        assert decision["decision"] == "approve" and decision["suggestion_id"] == chosen["suggestion_id"]
        # the crew accepts; the operator then retracts: the tablet is told
        await tablet.accept(chosen["suggestion_id"])
        accepted = await console.next("decision", timeout_s=5)
        assert accepted["decision"] == "accept" and accepted["crew_id"] == chosen["crew_id"]
        await console.retract(chosen["suggestion_id"], "suspect stopped")
        gone = await tablet.next("suggestion_retracted", timeout_s=5)
        assert gone["suggestion_id"] == chosen["suggestion_id"] and gone["reason"] == "suspect stopped"
        assert chosen["incident_id"] not in tablet.current
        await close_all(console, *tablets)
        await op.aclose()
        await asyncio.to_thread(srv.app.state.service.flush_audit)
        records = srv.app.state.service.audit.records
        actions = [r["action"] for r in records]
        for needed in (
            "incident_opened",
            "sighting_received",
            "suggestion_issued",
            "operator_decision",
            "crew_decision",
        ):
            assert needed in actions, needed
        assert check_against_asyncapi(srv.app.state.hub.sent_log) > 5


async def test_expired_suggestion_is_never_presented_as_current() -> None:
    clock = SimulationClock(datetime.now(UTC))
    # replan_s=0: moving the clock must not re-plan (that would issue a fresh suggestion)
    config = ServerConfig(
        audit_db="memory", demo_crews=0, token_secret=SECRET, clock="simulation", replan_s=0
    )
    async with running_server(config, clock=clock) as srv:
        op = CordonClient(srv.base, await token(srv.base, "trainer"))
        tablets = await crews_online(srv.base, 6, now=clock.now)
        await asyncio.sleep(0.2)
        await op.open_incident("inc-x", commune=COMMUNE, at=clock.now())
        await op.post_sighting(sighting("inc-x", camera_ids()[5], "x1", clock.now()))
        await wait_for(lambda: any(t.current for t in tablets))
        tablet = next(t for t in tablets if t.current)
        suggestion = next(iter(tablet.current.values()))
        expires = datetime.fromisoformat(suggestion["expires_at"])
        await op.set_time(expires + timedelta(seconds=1))
        assert tablet.current == {}
        fresh = Tablet(srv.base, tablet.token, tablet.crew_id, reconnect=False, now=clock.now)
        await fresh.connect()
        snap = await fresh.next("snapshot")
        assert snap["suggestions"] == []
        await fresh.accept(suggestion["suggestion_id"])
        err = await fresh.next("error")
        assert err["code"] == "suggestion_expired"
        await close_all(fresh, *tablets)
        await op.aclose()


async def test_slow_connection_is_cut_without_stalling_others() -> None:
    """Hub level: a tablet whose socket never drains is cut once its queue is full; another
    tablet keeps receiving everything meanwhile."""
    hub = Hub(queue_size=8, now=lambda: datetime.now(UTC).isoformat())
    stuck = asyncio.Event()
    closed: list[int] = []
    delivered: list[int] = []

    async def never(_text: str) -> None:
        await stuck.wait()

    async def fast(text: str) -> None:
        delivered.append(json.loads(text)["seq"])

    async def close_slow(code: int, _reason: str) -> None:
        closed.append(code)

    async def close_fast(code: int, _reason: str) -> None:
        raise AssertionError("the fast tablet must not be closed")

    slow = hub.add(role="crew", subject="C-1", send=never, close=close_slow, crew_id="C-1")
    hub.add(role="crew", subject="C-2", send=fast, close=close_fast, crew_id="C-2")
    for conn in [*hub.crews["C-1"], *hub.crews["C-2"]]:
        hub.release(conn)
    for seq in range(1, 51):
        hub.to_crew("C-1", {"type": "suggestion_retracted", "seq": seq})
        hub.to_crew("C-2", {"type": "suggestion_retracted", "seq": seq})
        await asyncio.sleep(0)
    await wait_for(lambda: len(delivered) == 50 and closed == [CLOSE_TOO_SLOW], 5)
    assert hub.cut == 1
    await hub.remove(slow)
    stuck.set()
    await hub.close_all()


async def test_asyncapi_and_openapi_are_served() -> None:
    async with running_server() as srv, httpx.AsyncClient(base_url=srv.base) as raw:
        doc = (await raw.get("/asyncapi.json")).json()
        assert doc["asyncapi"].startswith("2.6")
        crew_out = {
            r["$ref"].rsplit("/", 1)[1] for r in doc["channels"]["/ws/crew"]["subscribe"]["message"]["oneOf"]
        }
        assert {
            "SuggestionMsg",
            "SuggestionUpdateMsg",
            "SuggestionRetractedMsg",
            "SnapshotMsg",
            "ErrorMsg",
            "HeartbeatMsg",
            "CrewTrackMsg",
            "CrewPredictionMsg",
        } == crew_out
        openapi = (await raw.get("/openapi.json")).json()
        assert (
            "/api/sightings" in openapi["paths"] and "/api/incidents/{incident_id}/state" in openapi["paths"]
        )
        streets = (await raw.get("/api/map/streets.geojson")).json()
        assert len(streets["features"]) > 100
        assert (await raw.get("/api/map/cameras.geojson")).status_code == 401
        h = {"Authorization": f"Bearer {await token(srv.base)}"}
        cams = (await raw.get("/api/map/cameras.geojson", headers=h)).json()
        assert len(cams["features"]) == len(city_for_tests().cameras.cameras)


async def test_no_dev_tokens_outside_demo_mode() -> None:
    async with running_server(
        ServerConfig(audit_db="memory", demo_crews=0, token_secret=SECRET, demo=False)
    ) as srv:
        async with httpx.AsyncClient(base_url=srv.base) as raw:
            assert (await raw.get("/api/dev/tokens")).status_code == 404
        with contextlib.suppress(Exception):
            pass


async def test_demo_crews_are_parked_in_demo_mode() -> None:
    async with running_server(ServerConfig(audit_db="memory", demo_crews=3, token_secret=SECRET)) as srv:
        op = CordonClient(srv.base, await token(srv.base))
        crews = await op._call("GET", "/api/crews")
        assert sorted(c["crew_id"] for c in crews) == ["DEMO-01", "DEMO-02", "DEMO-03"]
        assert all(c["status"] == "available" for c in crews)
        await op.aclose()


async def test_demo_plays_a_pursuit_through_the_api() -> None:
    """``cordon demo``'s player: sightings in over REST, crews as tablets following suggestions."""
    from commands.serve import play

    lines: list[str] = []
    async with running_server() as srv:
        summary = await play(srv.base, city_for_tests(), duration_s=15, n_crews=6, seed=3, echo=lines.append)
    assert summary.sightings >= 1 and summary.plans >= 1
    assert summary.suggestions >= 1 and summary.accepted == summary.suggestions
    assert any("→ plan v" in line and "ETA" in line for line in lines)
    assert "sightings posted" in summary.text()


async def test_decline_replans_without_that_crossing_for_the_crew_and_modify_reassigns() -> None:
    """A decline goes to the core (``Coordinator.decline``): the crew is never offered that
    crossing of the incident again but stays available (for other points and incidents)."""
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 8)
        console = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await console.connect()
        await asyncio.sleep(0.2)
        await op.open_incident("inc-d", commune=COMMUNE)
        await op.post_sighting(sighting("inc-d", camera_ids()[5], "d1"))
        first = await console.next("plan", timeout_s=15)
        assert len(first["suggestions"]) >= 2
        by_crew = {t.crew_id: t for t in tablets}
        decliner = by_crew[first["suggestions"][0]["crew_id"]]
        declined = (await decliner.next("suggestion", timeout_s=5))["suggestion"]
        sid, node = declined["suggestion_id"], int(declined["target_node"])
        await decliner.decline(sid, "déjà engagé")
        decision = await console.next("decision", timeout_s=5)
        assert (decision["decision"], decision["reason"], decision["crew_id"]) == (
            "decline",
            "déjà engagé",
            decliner.crew_id,
        )
        replan = await console.next("plan", timeout_s=15, where=lambda m: m["version"] > first["version"])
        pairs = {(s["crew_id"], s["target_node"]) for s in replan["suggestions"]}
        assert (decliner.crew_id, node) not in pairs
        # the core holds the decline, with its reason, for that crossing only
        core = srv.app.state.service.coordinator
        assert [(d.crew_id, d.target_node, d.reason) for d in core.declines("inc-d")] == [
            (decliner.crew_id, node, "déjà engagé")
        ]
        # and the crew is still available to the core (not taken out of every plan)
        statuses = {c.crew_id: c.status.value for c in core.crews()}
        assert statuses[decliner.crew_id] == "available"
        await asyncio.sleep(0.3)
        if "inc-d" in decliner.current:  # another crossing of the incident, never the declined one
            assert int(decliner.current["inc-d"]["target_node"]) != node
        # the plan's parameters carry the declined pair (the audit replay gives it back)
        plan = core.state("inc-d", datetime.now(UTC)).plan
        assert [decliner.crew_id, node] in [list(p) for p in plan.parameters["declined"]]
        # the operator moves another crew's suggestion to a crew that had none
        moved = replan["suggestions"][0]
        # (the decliner stays available, so every crew may hold a suggestion: one more crew)
        lon, lat = crew_nodes(9)[8]
        idle = Tablet(srv.base, await token(srv.base, "crew", crew_id="C-idle", communes=COMMUNE), "C-idle")
        await idle.connect()
        await idle.next("snapshot")
        await idle.position(lon, lat)
        tablets.append(idle)
        await console.modify(moved["suggestion_id"], crew_id=idle.crew_id)
        got = await idle.next("suggestion", timeout_s=5)
        assert got["suggestion"]["crew_id"] == idle.crew_id
        assert got["suggestion"]["target_node"] == moved["target_node"]
        old_crew = by_crew[moved["crew_id"]]
        gone = await old_crew.next(
            "suggestion_retracted",
            timeout_s=5,
            where=lambda msg: msg["suggestion_id"] == moved["suggestion_id"],
        )
        assert gone["reason"] == "reassigned by operator"
        assert check_against_asyncapi(srv.app.state.hub.sent_log) > 10
        await close_all(console, *tablets)
        await op.aclose()


def test_pre_encoded_values_are_spliced_into_messages_unchanged() -> None:
    from serving.hub import Encoded, encode

    geojson = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"p": 0.5}}]}
    message = {"type": "prediction", "incident_id": "I", "geojson": Encoded(json.dumps(geojson))}
    assert json.loads(encode(message)) == {"type": "prediction", "incident_id": "I", "geojson": geojson}
    assert json.loads(encode({"geojson": Encoded("[1, 2]")})) == {"geojson": [1, 2]}
    assert json.loads(encode({"a": 1, "b": [1.5, "x"]})) == {"a": 1, "b": [1.5, "x"]}
    assert json.loads(encode({"seq": 3, "g": Encoded("{}")})) == {"seq": 3, "g": {}}


def test_outgoing_json_is_strict_and_takes_numpy_values() -> None:
    """Frames are JSON a browser parses: NaN and infinities become null (the standard
    library would write ``NaN``); numpy scalars and arrays serialize as numbers; a value the
    fast path does not take falls back to the standard library."""
    import numpy as np

    from serving.jsontext import dumps

    text = dumps({"t": float("nan"), "u": float("inf"), "v": np.float64(2.5), "w": np.arange(3), 4: "k"})
    assert json.loads(text) == {"t": None, "u": None, "v": 2.5, "w": [0, 1, 2], "4": "k"}
    assert "NaN" not in text and "Infinity" not in text

    class Odd(dict):  # type: ignore[type-arg]
        pass

    assert json.loads(dumps({"o": Odd(a=1)})) == {"o": {"a": 1}}
    # orjson refuses integers beyond 64 bits: the standard library's fallback, still strict
    assert json.loads(dumps({"a": 2**70, "b": [float("nan")]})) == {"a": 2**70, "b": [None]}
