"""Second-round server features on a real uvicorn server: rate limits (HTTP 429, websocket
``rate_limited``), heartbeats and errors outside the crew stream, login audit records with demo
subjects the audit log accepts, camera scoping, incident locations, an operator's modification
evaluated by the core (route, streets, ETAs) with a valid id the crew can accept, and the track /
prediction pushed to crews holding a suggestion."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server_support import SECRET, check_against_asyncapi, city_for_tests, running_server, token
from websockets.asyncio.client import connect

from serving.client import Console, CordonClient, Tablet
from serving.config import ServerConfig
from serving.service import MemoryAudit

pytestmark = pytest.mark.timeout(120)

COMMUNE = "Metz-Centre"


def config(**kw: Any) -> ServerConfig:
    return ServerConfig(audit_db="memory", demo_crews=0, token_secret=SECRET).with_(**kw)


def cameras_by_commune() -> dict[str | None, list[str]]:
    out: dict[str | None, list[str]] = {}
    for c in sorted(city_for_tests().cameras.cameras.values(), key=lambda c: c.camera_id):
        out.setdefault(c.commune, []).append(c.camera_id)
    return out


def sighting(incident: str, camera: str, event: str) -> dict[str, Any]:
    return {
        "incident_id": incident,
        "camera_id": camera,
        "observed_at": datetime.now(UTC).isoformat(),
        "source_event_id": event,
    }


async def tablets_near(base: str, n: int, camera: str) -> list[Tablet]:
    """``n`` crews parked at crossings around ``camera`` (deterministic)."""
    graph = city_for_tests().graph
    cam = city_for_tests().cameras.cameras[camera]
    import numpy as np

    d = np.hypot(graph.node_lonlat[:, 0] - cam.lon, graph.node_lonlat[:, 1] - cam.lat)
    nodes = np.argsort(d)[20 : 20 + 12 * n : 12]
    out = []
    for i, node in enumerate(nodes.tolist()):
        crew_id = f"C-{i:02d}"
        t = Tablet(base, await token(base, "crew", crew_id=crew_id, communes=COMMUNE), crew_id)
        await t.connect()
        await t.next("snapshot")
        await t.position(float(graph.node_lonlat[node][0]), float(graph.node_lonlat[node][1]))
        out.append(t)
    return out


async def test_http_rate_limit_answers_429_with_retry_after() -> None:
    async with (
        running_server(config(rate_per_s=0.5, rate_burst=3)) as srv,
        httpx.AsyncClient(base_url=srv.base) as raw,
    ):
        codes = [(await raw.get("/api/map/streets.geojson")).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200]
        r = await raw.get("/api/map/streets.geojson")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["code"] == "rate_limited"
        assert (await raw.get("/api/health")).status_code == 200  # exempt


async def test_websocket_rate_limit_errors_without_closing() -> None:
    async with running_server(config(ws_rate_per_s=0.5, ws_rate_burst=3, heartbeat_s=0)) as srv:
        tok = await token(srv.base, "crew", crew_id="C-01", communes=COMMUNE)
        url = srv.base.replace("http", "ws") + f"/ws/crew?token={tok}"
        accept = json.dumps({"type": "accept", "suggestion_id": "nope:1:C-01"})
        async with connect(url) as ws:
            json.loads(await ws.recv())  # snapshot
            for _ in range(5):
                await ws.send(accept)
            errors = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(5)]
            # three handled (the suggestion is unknown), two refused by the bucket
            assert sorted(e["code"] for e in errors) == ["rate_limited"] * 2 + ["unknown_suggestion"] * 3
            assert all("seq" not in e for e in errors), "errors are outside the crew stream"
            # the connection is kept: once the bucket refills, messages are handled again
            await asyncio.sleep(2.5)
            await ws.send(accept)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (msg["type"], msg["code"]) == ("error", "unknown_suggestion")


async def test_heartbeats_and_errors_carry_no_seq() -> None:
    async with running_server(config(heartbeat_s=0.2)) as srv:
        tablet = Tablet(srv.base, await token(srv.base, "crew", crew_id="C-02", communes=COMMUNE), "C-02")
        await tablet.connect()
        snap = await tablet.next("snapshot")
        beat = await tablet.next("heartbeat", timeout_s=3)
        assert "seq" not in beat and beat["sent_at"]
        await tablet.send({"type": "accept", "suggestion_id": "nope:1:C-02"})
        err = await tablet.next("error", timeout_s=5)
        assert err["code"] == "unknown_suggestion" and "seq" not in err
        assert tablet.last_seq == snap["seq"]
        console = Console(srv.base, await token(srv.base))
        await console.connect()
        await console.next("snapshot")
        beat = await console.next("heartbeat", timeout_s=3)
        assert "seq" not in beat
        assert check_against_asyncapi(srv.app.state.hub.sent_log) >= 4
        await console.close()
        await tablet.close()


async def test_logins_are_audited_with_valid_demo_subjects(tmp_path: Path) -> None:
    from serving.audit import SqliteAuditLog

    audit = SqliteAuditLog(tmp_path / "audit.sqlite")
    cfg = ServerConfig(demo_crews=0, token_secret=SECRET, data_dir=tmp_path)
    async with running_server(cfg, audit=audit) as srv:
        op_token = await token(srv.base)  # subject operator-all: every audit write must succeed
        op = CordonClient(srv.base, op_token)
        await op.open_incident("inc-login", commune=COMMUNE)
        tablet = Tablet(srv.base, await token(srv.base, "crew", crew_id="C-03", communes=COMMUNE), "C-03")
        await tablet.connect()
        await tablet.next("snapshot")
        console = Console(srv.base, op_token)
        await console.connect()
        await console.next("snapshot")
        await tablet.close()
        await console.close()
        await op.aclose()
        service = srv.app.state.service
        await asyncio.to_thread(service.flush_audit)
        assert service.metrics.audit_failures._value.get() == 0
    records = list(audit.records())
    logins = [r for r in records if r.action == "login"]
    vias = sorted((r.payload or {})["via"] for r in logins)
    assert vias == ["demo_token", "demo_token", "ws_crew", "ws_operator"], vias
    assert all(re.fullmatch(r"[A-Za-z0-9_.:@/-]{1,128}", r.actor or "") for r in records)
    assert any(r.action == "incident_opened" and r.actor == "operator-all" for r in records)
    assert audit.verify().ok


async def test_cameras_are_scoped_to_the_principals_communes() -> None:
    by_commune = cameras_by_commune()
    other = next(c for c in by_commune if c not in (None, COMMUNE))
    async with running_server() as srv, httpx.AsyncClient(base_url=srv.base) as raw:
        assert (await raw.get("/api/map/cameras.geojson")).status_code == 401
        h = {"Authorization": f"Bearer {await token(srv.base, communes=COMMUNE)}"}
        got = (await raw.get("/api/map/cameras.geojson", headers=h)).json()
        ids = {f["properties"]["camera_id"] for f in got["features"]}
        assert set(by_commune[COMMUNE]) <= ids
        assert not ids.intersection(by_commune[other])
        one = await raw.get(f"/api/map/cameras/{by_commune[COMMUNE][0]}", headers=h)
        assert one.status_code == 200 and one.json()["properties"]["commune"] == COMMUNE
        assert (await raw.get(f"/api/map/cameras/{by_commune[other][0]}", headers=h)).status_code == 404
        assert (await raw.get("/api/map/cameras/NO-SUCH", headers=h)).status_code == 404
        crew = {"Authorization": f"Bearer {await token(srv.base, 'crew', crew_id='C-1', communes=COMMUNE)}"}
        assert (await raw.get("/api/map/cameras.geojson", headers=crew)).status_code == 403


async def test_incident_info_has_its_location() -> None:
    cam_id = cameras_by_commune()[COMMUNE][3]
    cam = city_for_tests().cameras.cameras[cam_id]
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base))
        opened = await op.open_incident("inc-here", commune=COMMUNE, lon=6.18, lat=49.12)
        assert (opened["lon"], opened["lat"]) == (6.18, 49.12)
        await op.open_incident("inc-there", commune=COMMUNE)
        await op.post_sighting(sighting("inc-there", cam_id, "there-1"))
        for _ in range(100):
            info = (await op.incident_state("inc-there"))["incident"]
            if info["n_sightings"]:
                break
            await asyncio.sleep(0.05)
        assert (info["lon"], info["lat"]) == (pytest.approx(cam.lon), pytest.approx(cam.lat))
        await op.aclose()


async def test_modified_suggestion_is_evaluated_by_the_core_and_acceptable() -> None:
    incident = "INC-" + "x" * 60  # 64 characters: planner ids are longer than an identifier
    cams = cameras_by_commune()[COMMUNE]
    graph = city_for_tests().graph
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await tablets_near(srv.base, 6, cams[0])
        console = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await console.connect()
        await console.next("snapshot")
        # a second console watching another incident: no prediction of this one
        other = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await other.connect()
        await other.next("snapshot")
        await other.send({"type": "watch", "incident_ids": ["INC-OTHER"]})
        await asyncio.sleep(0.2)
        await op.open_incident(incident, commune=COMMUNE)
        await op.post_sighting(sighting(incident, cams[0], "mod-1"))
        plan = await console.next("plan", timeout_s=20)
        assert plan["suggestions"], "the planner suggested nothing"
        first = plan["suggestions"][0]
        assert len(first["suggestion_id"]) > 64
        tablet = next(t for t in tablets if t.crew_id == first["crew_id"])
        await tablet.next("suggestion", timeout_s=5)
        # a second sighting: the crew holding a suggestion gets the track and prediction pushed
        await op.post_sighting(sighting(incident, cams[1], "mod-2"))
        track = await tablet.next("track", timeout_s=20, where=lambda m: m["incident_id"] == incident)
        assert "seq" not in track and track["n_sightings"] >= 1
        pred = await tablet.next("prediction", timeout_s=5, where=lambda m: m["incident_id"] == incident)
        assert pred["geojson"]["type"] == "FeatureCollection"
        # the tablet's collection leaves out the position features (the crew map never draws
        # them); the consoles' has them
        kinds = {f["properties"]["kind"] for f in pred["geojson"]["features"]}
        assert "position" not in kinds and kinds
        for _ in range(50):  # sent to the consoles first (already read off the inbox, perhaps)
            seen = [m for m in console.received if m["type"] == "prediction" and m["incident_id"] == incident]
            if seen:
                break
            await asyncio.sleep(0.1)
        assert "position" in {f["properties"]["kind"] for f in seen[-1]["geojson"]["features"]}
        other_types = {m["type"] for m in other.received if m.get("incident_id") == incident}
        assert "track" in other_types and "prediction" not in other_types
        await other.close()
        await console.next("plan", timeout_s=20, where=lambda m: m["version"] >= 2)
        await asyncio.sleep(0.5)
        current = tablet.current[incident]
        # the operator moves the target to another crossing, twice
        sid = current["suggestion_id"]
        for step in (1, 2):
            old_node = int(current["target_node"])
            node = (old_node + 37 * step) % graph.n_nodes
            lon, lat = (float(x) for x in graph.node_lonlat[node])
            await console.modify(sid, lon=lon, lat=lat)
            old_id: str = sid
            update = await tablet.next(
                "suggestion_update",
                timeout_s=5,
                where=lambda m: bool(m["replaces"] == old_id),  # noqa: B023 (awaited at once)
            )
            new = update["suggestion"]
            assert update["replaces"] == sid and new["suggestion_id"] == f"{sid.split('~')[0]}~m{step}"
            assert new["route_lonlat"] and new["turns"] and new["crew_eta_s"] > 0
            assert new["street_names"] == [] or all(isinstance(n, str) for n in new["street_names"])
            assert new["suspect_earliest_eta_s"] is None or new["margin_s"] == pytest.approx(
                new["suspect_earliest_eta_s"] - new["crew_eta_s"]
            )
            assert new["route_lonlat"][-1] == pytest.approx([new["lon"], new["lat"]], abs=1e-6)
            superseded = await console.next(
                "suggestion",
                timeout_s=5,
                where=lambda m: bool(
                    m["suggestion"]["suggestion_id"] == old_id  # noqa: B023 (awaited at once)
                    and m["suggestion"]["state"] != "sent"
                ),
            )
            assert superseded["suggestion"]["state"] == "superseded"
            sid, current = new["suggestion_id"], new
        await tablet.accept(sid)
        accepted = await console.next(
            "suggestion",
            timeout_s=5,
            where=lambda m: m["suggestion"]["suggestion_id"] == sid and m["suggestion"]["state"] != "sent",
        )
        assert accepted["suggestion"]["state"] == "accepted"
        assert check_against_asyncapi(srv.app.state.hub.sent_log) > 10
        await console.close()
        for t in tablets:
            await t.close()
        await op.aclose()


async def test_memory_audit_records_logins() -> None:
    audit = MemoryAudit()
    async with running_server(audit=audit) as srv:
        await token(srv.base, "crew", crew_id="C-07", communes=COMMUNE)
        await asyncio.to_thread(srv.app.state.service.flush_audit)
    assert [(r["actor"], r["action"]) for r in audit.records] == [("C-07", "login")]


async def test_an_incident_served_live_replays_from_its_audit_records(tmp_path: Path) -> None:
    from serving.audit import SqliteAuditLog
    from serving.audit_replay import replay_incident

    audit = SqliteAuditLog(tmp_path / "audit.sqlite")
    cams = cameras_by_commune()[COMMUNE]
    incident = "inc-replay"
    async with running_server(audit=audit) as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await tablets_near(srv.base, 5, cams[0])
        console = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await console.connect()
        await console.next("snapshot")
        # a second console watching another incident: no prediction of this one
        other = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await other.connect()
        await other.next("snapshot")
        await other.send({"type": "watch", "incident_ids": ["INC-OTHER"]})
        await asyncio.sleep(0.2)
        await op.open_incident(incident, commune=COMMUNE)
        for i, cam in enumerate(cams[:3]):
            await op.post_sighting(sighting(incident, cam, f"rp-{i}"))
            await asyncio.sleep(0.3)
        await console.next("plan", timeout_s=20)
        # a decline re-plans without the crew: one more plan_computed to replay
        plan = await console.next("plan", timeout_s=20, where=lambda m: m["version"] >= 2)
        if plan["suggestions"]:
            crew = plan["suggestions"][0]["crew_id"]
            tablet = next(t for t in tablets if t.crew_id == crew)
            sid = tablet.current[incident]["suggestion_id"] if incident in tablet.current else None
            if sid:
                await tablet.decline(sid, "trop loin")
                await console.next("decision", timeout_s=5)
        await asyncio.sleep(1.0)
        await console.close()
        for t in tablets:
            await t.close()
        await op.aclose()
        await asyncio.to_thread(srv.app.state.service.flush_audit)
    records = list(audit.records(incident_id=incident))
    actions = [r.action for r in records]
    assert "core_opened" in actions and actions.count("core_sighting") == 3
    assert actions.count("plan_computed") >= 2
    report = replay_incident(records, incident, city_for_tests())
    assert report.ok, report.mismatches[:3]
    assert report.plans_checked == actions.count("plan_computed")
    assert audit.verify().ok


async def test_retention_purges_old_incidents_except_legal_holds(tmp_path: Path) -> None:
    from datetime import timedelta

    from serving.audit import SqliteAuditLog
    from serving.clock import SimulationClock

    audit = SqliteAuditLog(tmp_path / "audit.sqlite")
    start = datetime.now(UTC) - timedelta(minutes=5)
    clock = SimulationClock(start)
    cam = cameras_by_commune()[COMMUNE][0]
    cfg = config(retention_interval_s=0.3)
    async with running_server(cfg, audit=audit, clock=clock) as srv:
        op = CordonClient(srv.base, await token(srv.base))
        sup = CordonClient(srv.base, await token(srv.base, "supervisor", communes=COMMUNE))
        for name in ("inc-held", "inc-old"):
            await op.open_incident(name, commune=COMMUNE, lon=6.18, lat=49.12)
            s = sighting(name, cam, f"{name}-1") | {"observed_at": clock.now().isoformat()}
            await op.post_sighting(s)
        await asyncio.sleep(0.5)
        for name in ("inc-held", "inc-old"):
            await op.close_incident(name)
        async with httpx.AsyncClient(base_url=srv.base) as raw:
            hold = {"procedure_reference": "PV 2026/0412"}
            r = await raw.post("/api/incidents/inc-held/hold", json=hold, headers=op_headers(op))
            assert r.status_code == 403  # operators may not place holds
            r = await raw.post("/api/incidents/inc-held/hold", json=hold, headers=op_headers(sup))
            assert r.status_code == 201, r.text
            assert r.json()["procedure_reference"] == "PV 2026/0412"
            again = await raw.post("/api/incidents/inc-held/hold", json=hold, headers=op_headers(sup))
            assert again.status_code == 409
            # 31 days later the periodic purge removes the old incident, not the held one
            clock.set(start + timedelta(days=31))
            for _ in range(100):
                if (await raw.get("/api/incidents/inc-old", headers=op_headers(op))).status_code == 404:
                    break
                await asyncio.sleep(0.1)
            assert (await raw.get("/api/incidents/inc-old", headers=op_headers(op))).status_code == 404
            assert (await raw.get("/api/incidents/inc-held", headers=op_headers(op))).status_code == 200
            await asyncio.sleep(0.7)  # another purge or two: the held incident's records stay
            held = list(audit.records(incident_id="inc-held"))
            assert {"legal_hold", "incident_opened", "sighting_received"} <= {r.action for r in held}
            r = await raw.delete(
                "/api/incidents/inc-held/hold", params={"reason": "procédure close"}, headers=op_headers(sup)
            )
            assert r.status_code == 204, r.text
            r = await raw.delete(
                "/api/incidents/inc-held/hold", params={"reason": "again"}, headers=op_headers(sup)
            )
            assert r.status_code == 409
        await op.aclose()
        await sup.aclose()
        await asyncio.to_thread(srv.app.state.service.flush_audit)
    assert not list(audit.records(incident_id="inc-old"))  # tombstones keep no incident id
    assert sum(r.purged for r in audit.records(include_purged=True)) >= 3
    # released: the incident ages out like any other (the release record itself is recent)
    assert "hold_released" in {r.action for r in audit.records(incident_id="inc-held")}
    assert any(r.action == "purge" for r in audit.records())
    assert audit.verify().ok


def op_headers(client: CordonClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.token}"}


async def test_trainer_runs_a_simulation_paused_resumed_and_sped_up(tmp_path: Path) -> None:
    scenario = {
        "name": "tiny",
        "map": {"kind": "generated", "n_crossings": 600, "seed": 7},
        "cameras": {"kind": "city"},
        "crews": {"count": 4, "area": {"radius_m": 2000, "min_distance_m": 300}},
        "incident": {"at": "2026-01-15T22:00:00+01:00", "min_exit_time_s": 100},
        "suspect": {"behaviour": "exit_seeking", "speed_factor": [1.3, 1.6]},
        "policy": "guidance",
        "duration_s": 120,
        "seed": 2,
    }
    (tmp_path / "tiny.json").write_text(json.dumps(scenario))
    async with (
        running_server(config(sim_scenarios_dir=tmp_path)) as srv,
        httpx.AsyncClient(base_url=srv.base, timeout=30) as raw,
    ):
        trainer = {"Authorization": f"Bearer {await token(srv.base, 'trainer')}"}
        operator = {"Authorization": f"Bearer {await token(srv.base)}"}
        # a live token (another tenant) is refused by the simulation routes
        assert (await raw.get("/api/sim/scenarios", headers=operator)).status_code == 401
        # a trainer's token is for the simulation tenant: refused by the live routes
        assert (await raw.get("/api/incidents", headers=trainer)).status_code == 401
        listed = (await raw.get("/api/sim/scenarios", headers=trainer)).json()
        assert listed == [{"name": "tiny", "title": "tiny"}]
        bad = await raw.post("/api/sim/runs", json={"scenario": "nope", "speed": 2}, headers=trainer)
        assert bad.status_code == 422
        r = await raw.post("/api/sim/runs", json={"scenario": "tiny", "speed": 1}, headers=trainer)
        assert r.status_code == 201, r.text
        run_id = r.json()["run_id"]
        assert r.json()["state"] == "running"
        await asyncio.sleep(1.0)
        paused = (await raw.post(f"/api/sim/runs/{run_id}/pause", headers=trainer)).json()
        assert paused["state"] == "paused" and 0 < paused["t"] < 5
        await asyncio.sleep(0.6)
        still = (await raw.get(f"/api/sim/runs/{run_id}", headers=trainer)).json()
        assert still["t"] == paused["t"], "simulated time must not move while paused"
        assert (await raw.get(f"/api/sim/runs/{run_id}/replay", headers=trainer)).status_code == 409
        resumed = (await raw.post(f"/api/sim/runs/{run_id}/resume", headers=trainer)).json()
        assert resumed["state"] == "running"
        too_fast = await raw.post(f"/api/sim/runs/{run_id}/speed", json={"speed": 500}, headers=trainer)
        assert too_fast.status_code == 422
        fast = await raw.post(f"/api/sim/runs/{run_id}/speed", json={"speed": 60}, headers=trainer)
        assert fast.json()["speed"] == 60
        for _ in range(300):
            run = (await raw.get(f"/api/sim/runs/{run_id}", headers=trainer)).json()
            if run["state"] in ("finished", "failed"):
                break
            await asyncio.sleep(0.1)
        assert run["state"] == "finished", run
        assert run["outcome"]["kind"] in ("interception", "escape", "timeout")
        assert run["t"] == pytest.approx(run["outcome"]["t"], abs=1e-3) and run["t"] <= 120
        replay = await raw.get(f"/api/sim/runs/{run_id}/replay", headers=trainer)
        assert replay.status_code == 200
        lines = [json.loads(line) for line in replay.text.splitlines()]
        header = lines[0]
        assert header.get("format") == "cordon-sim-replay", header
        (tmp_path / "run.jsonl").write_text(replay.text)
        from sim.outcomes import recompute
        from sim.replay import read_replay

        verdict = recompute(read_replay(tmp_path / "run.jsonl"))
        assert verdict.kind == run["outcome"]["kind"]


class SlowAudit(MemoryAudit):
    """An audit store whose every append takes 0.2 s (a slow fsync, a distant database)."""

    def append(self, *args: Any, **kwargs: Any) -> None:
        import time

        time.sleep(0.2)
        super().append(*args, **kwargs)


async def test_slow_audit_appends_never_block_the_event_loop() -> None:
    import time

    audit = SlowAudit()
    async with running_server(audit=audit) as srv:
        op = CordonClient(srv.base, await token(srv.base))  # one login record
        for i in range(5):
            await op.open_incident(f"inc-slow-{i}", commune=COMMUNE)  # five more
        start = time.perf_counter()
        async with httpx.AsyncClient(base_url=srv.base) as raw:
            assert (await raw.get("/api/health")).status_code == 200
        assert time.perf_counter() - start < 0.15, "a request waited for the audit log"
        assert len(audit.records) < 6, "the appends should still be queued"
        await asyncio.to_thread(srv.app.state.service.flush_audit)
        assert len(audit.records) == 6
        await op.aclose()


async def test_queued_sightings_of_one_incident_are_applied_together_one_plan_published(
    tmp_path: Path,
) -> None:
    from serving.audit import SqliteAuditLog
    from serving.audit_replay import replay_incident

    audit = SqliteAuditLog(tmp_path / "audit.sqlite")
    cams = cameras_by_commune()[COMMUNE]
    async with running_server(audit=audit) as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await tablets_near(srv.base, 4, cams[0])
        console = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await console.connect()
        await console.next("snapshot")
        await op.open_incident("inc-burst", commune=COMMUNE)
        t0 = datetime.now(UTC)
        from datetime import timedelta

        burst = [
            sighting("inc-burst", cams[i], f"burst-{i}")
            | {"observed_at": (t0 + timedelta(seconds=i)).isoformat()}
            for i in range(6)
        ]
        await op.post_sightings(burst)  # queued at once, while the core plans the first
        seen = [(await console.next("sighting", timeout_s=20))["source_event_id"] for _ in range(len(burst))]
        assert seen == [s["source_event_id"] for s in burst], "every sighting reaches the timeline, in order"
        await asyncio.sleep(1.0)
        service = srv.app.state.service
        assert service.processed == len(burst)
        coalesced = service.metrics.coalesced._value.get()
        assert coalesced >= 1, "a burst queued behind a plan is applied as one batch"
        plans = [m for m in console.received if m["type"] == "plan"]
        assert len(plans) == len(burst) - coalesced
        # a batch's plan answers all its sightings: the crews' messages name them, in order,
        # the planned one (``sighting_id``) last; each sighting is answered by one batch only
        ids = [s["source_event_id"] for s in burst]
        answered: dict[str, list[str]] = {}
        for m in srv.app.state.hub.sent_log:
            if m.get("type") in ("suggestion", "suggestion_update") and m.get("sighting_id"):
                assert m["sighting_ids"][-1] == m["sighting_id"]
                answered.setdefault(m["sighting_id"], m["sighting_ids"])
                assert answered[m["sighting_id"]] == m["sighting_ids"]
        assert answered, "the burst's plans sent the tablets something"
        runs = list(answered.values())
        for run in runs:
            start = ids.index(run[0])
            assert run == ids[start : start + len(run)]
        assert len({i for run in runs for i in run}) == sum(len(run) for run in runs)
        assert check_against_asyncapi(srv.app.state.hub.sent_log) > 0
        state = await op.incident_state("inc-burst")
        assert state["incident"]["n_sightings"] == len(burst)
        assert state["plan"]["version"] == plans[-1]["version"]
        for t in tablets:
            await t.close()
        await console.close()
        await op.aclose()
        await asyncio.to_thread(service.flush_audit)
    # the core planned once per batch (ingest(replan=False) for the others), and it replays
    records = list(audit.records(incident_id="inc-burst"))
    assert [r.action for r in records].count("core_sighting") == len(burst)
    assert [r.action for r in records].count("plan_computed") == len(plans)
    report = replay_incident(records, "inc-burst", city_for_tests())
    assert report.ok and report.sightings == len(burst), report.mismatches[:2]
