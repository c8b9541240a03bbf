"""Replay: a live run of the Coordinator recorded in the audit log is recomputed from the recorded
inputs and matches; altered inputs or another map are caught. Also the ``cordon audit`` CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from guidance.coordinator import Coordinator
from guidance.types import Crew, Plan
from map_data.city import default_city
from map_data.network_types import City
from map_data.types import EdgePosition, LonLat
from serving.audit import SqliteAuditLog
from serving.audit_replay import (
    PLAN_COMPUTED,
    ReplayError,
    incident_opened_payload,
    plan_payload,
    replay_incident,
    sighting_payload,
)
from tracking.types import Sighting

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INCIDENT = "inc-42"


@pytest.fixture(scope="module")
def city() -> City:
    return default_city()


def _crews(city: City, n: int = 8) -> list[Crew]:
    rng = np.random.default_rng(3)
    edges = rng.choice(city.graph.n_edges, size=n, replace=False)
    return [Crew(f"crew-{i:02d}", EdgePosition(int(e), 0.0), commune=None) for i, e in enumerate(edges)]


def _centre(city: City) -> LonLat:
    g = city.graph
    o = int(np.argmin(np.hypot(*(g.node_xy - g.node_xy.mean(axis=0)).T)))
    return LonLat(float(g.node_lonlat[o, 0]), float(g.node_lonlat[o, 1]))


def record_live_run(city: City, log: SqliteAuditLog) -> list[Plan]:
    """What the server does: drive the Coordinator and audit each call's inputs and each new plan."""
    co = Coordinator(city)
    plans: list[Plan] = []

    def audit_plan(plan: Plan | None, crews: list[Crew]) -> None:
        if plan is None or (plans and plans[-1] is plan):
            return
        plans.append(plan)
        log.append(
            "cordon",
            "system",
            PLAN_COMPUTED,
            at=plan.at,
            incident_id=INCIDENT,
            commune="metz",
            payload=plan_payload(plan, crews, horizon_s=co.horizon_s, step_s=co.step_s),
        )

    origin = _centre(city)
    co.open_incident(INCIDENT, at=T0, commune="metz", origin_lonlat=origin)
    log.append(
        "op",
        "operator",
        "incident_opened",
        at=T0,
        incident_id=INCIDENT,
        commune="metz",
        payload=incident_opened_payload(T0, "metz", origin),
    )
    crews = _crews(city)
    audit_plan(co.set_crews(crews, T0).get(INCIDENT), crews)
    audit_plan(co.replan(INCIDENT, T0 + timedelta(seconds=5)), crews)
    # the suspect passes a camera on a predicted route
    prediction = co.state(INCIDENT, T0 + timedelta(seconds=5)).prediction
    assert prediction is not None
    camera, eta = next(
        (city.cameras.on_edge[e][0][0], route.eta_s[i])
        for route in prediction.routes
        for i, e in enumerate(route.edges[1:], start=1)
        if city.cameras.on_edge.get(e)
    )
    sighting = Sighting(
        incident_id=INCIDENT,
        camera_id=camera,
        observed_at=T0 + timedelta(seconds=5 + float(eta)),
        source_event_id="ev-1",
        heading_deg=90.0,
    )
    log.append(
        "op",
        "operator",
        "sighting_received",
        at=sighting.observed_at,
        incident_id=INCIDENT,
        commune="metz",
        payload=sighting_payload(sighting),
    )
    audit_plan(co.ingest(sighting).plan, crews)
    moved = [
        replace(c, position=EdgePosition(c.position.edge, 5.0)) if i == 0 else c for i, c in enumerate(crews)
    ]
    audit_plan(co.set_crews(moved, sighting.observed_at + timedelta(seconds=3)).get(INCIDENT), moved)
    return plans


@pytest.fixture(scope="module")
def recorded(city: City, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Plan]]]:
    path = tmp_path_factory.mktemp("replay") / "audit.sqlite3"
    log = SqliteAuditLog(path)
    plans = record_live_run(city, log)
    log.close()
    yield path, plans


def test_replay_matches_the_live_run(city: City, recorded: tuple[Path, list[Plan]]) -> None:
    path, plans = recorded
    assert len(plans) >= 3 and any(p.suggestions for p in plans)
    log = SqliteAuditLog(path)
    report = replay_incident(log.records(incident_id=INCIDENT), INCIDENT, city)
    log.close()
    assert report.mismatches == ()
    assert report.ok and report.plans_checked == len(plans) and report.sightings == 1


def test_replay_catches_altered_inputs(city: City, recorded: tuple[Path, list[Plan]]) -> None:
    """A crew recorded somewhere else than where the planner had it: that plan no longer matches."""
    path, _ = recorded
    log = SqliteAuditLog(path)
    records = list(log.records(incident_id=INCIDENT))
    log.close()
    index = next(
        i
        for i, r in enumerate(records)
        if r.action == PLAN_COMPUTED and r.payload and r.payload["suggestions"]
    )
    payload = json.loads(json.dumps(records[index].payload))
    chosen = {s["crew_id"] for s in payload["suggestions"]}
    for crew in payload["crews"]:
        if crew["crew_id"] in chosen:
            crew["edge"] = (crew["edge"] + 517) % city.graph.n_edges
    records[index] = replace(records[index], payload=payload)
    report = replay_incident(records, INCIDENT, city)
    assert not report.ok
    assert report.mismatches[0].seq == records[index].seq
    assert {m.field for m in report.mismatches} & {"suggestions", "coverage_probability", "parameters"}


def test_replay_refuses_another_map(recorded: tuple[Path, list[Plan]]) -> None:
    from guidance.testing import grid_city

    path, _ = recorded
    log = SqliteAuditLog(path)
    with pytest.raises(ReplayError, match="graph"):
        replay_incident(log.records(incident_id=INCIDENT), INCIDENT, grid_city(5))
    with pytest.raises(ReplayError, match="incident_opened"):
        replay_incident(log.records(incident_id=INCIDENT), "inc-unknown", grid_city(5))
    log.close()


# -- the CLI ----------------------------------------------------------------------------------


def _app() -> object:
    import typer

    from commands.audit import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_verify_replay_export_hold_purge(recorded: tuple[Path, list[Plan]], tmp_path: Path) -> None:
    import shutil
    import sqlite3

    src, plans = recorded
    db = tmp_path / "audit.sqlite3"
    shutil.copy(src, db)
    url = f"sqlite:///{db}"
    runner = CliRunner()
    app = _app()

    result = runner.invoke(app, ["audit", "verify", "--db", url])  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    assert "ok" in result.output

    result = runner.invoke(app, ["audit", "replay", INCIDENT, "--db", url, "--map", "default"])  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    assert f"{len(plans)} plans" in result.output and "match" in result.output

    out = tmp_path / "export.jsonl"
    result = runner.invoke(
        app, ["audit", "export", INCIDENT, "--db", url, "--out", str(out), "--reason", "PV 9"]
    )  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(line["incident_id"] == INCIDENT for line in lines)

    result = runner.invoke(app, ["audit", "hold", INCIDENT, "--db", url, "--reference", "PV 2026/77"])  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["audit", "purge", "--db", url, "--now", "2026-06-01T00:00:00+00:00"])  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    log = SqliteAuditLog(db)
    actions = [r.action for r in log.records()]
    assert "export" in actions and "legal_hold" in actions and "purge" in actions
    assert any(r.action == PLAN_COMPUTED for r in log.records(incident_id=INCIDENT))  # held
    log.close()
    result = runner.invoke(app, ["audit", "replay", INCIDENT, "--db", url, "--map", "default"])  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output  # still replayable after the purge

    conn = sqlite3.connect(db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE audit_records SET reason = 'edited' WHERE seq = 2")
    conn.close()
    result = runner.invoke(app, ["audit", "verify", "--db", url])  # type: ignore[arg-type]
    assert result.exit_code == 1
    assert "seq 2" in result.output


# -- recording at the core's boundary ---------------------------------------------------------


def test_recording_coordinator_two_incidents_and_a_restart(city: City, tmp_path: Path) -> None:
    """Two incidents competing for the same crews (busy-elsewhere), crews moving, an incident
    opened without origin (placeholder plans), then a worker restart that re-feeds incident A:
    every recorded plan replays exactly."""
    from serving.audit_replay import CORE_OPENED, RecordingCoordinator

    log = SqliteAuditLog(tmp_path / "audit.sqlite3")
    now = [T0]
    co = RecordingCoordinator(Coordinator(city), log, clock=lambda: now[0])
    centre = _centre(city)
    co.open_incident("A", at=T0, commune="metz", origin_lonlat=centre)
    co.open_incident("B", at=T0, commune="metz", origin_lonlat=centre)
    co.open_incident("C", at=T0, commune="woippy")  # no origin: placeholder plans only
    crews = _crews(city, 6)
    co.set_crews(crews, T0)
    co.share_incident("A", ["woippy"])
    co.replan("C", T0 + timedelta(seconds=2))
    moved = [replace(c, position=EdgePosition(c.position.edge, 3.0)) for c in crews]
    co.set_crews(moved, T0 + timedelta(seconds=4))
    prediction = co.state("A", T0 + timedelta(seconds=4)).prediction
    assert prediction is not None
    camera, eta = next(
        (city.cameras.on_edge[e][0][0], route.eta_s[i])
        for route in prediction.routes
        for i, e in enumerate(route.edges[1:], start=1)
        if city.cameras.on_edge.get(e)
    )
    seen = Sighting(
        incident_id="A",
        camera_id=camera,
        observed_at=T0 + timedelta(seconds=4 + float(eta)),
        source_event_id="ev-A1",
    )
    co.ingest(seen)
    co.replan("B", seen.observed_at)
    now[0] = seen.observed_at
    co.close_incident("C")

    # B's planner never saw the crews A was using
    plans_b = [r.payload for r in log.records(incident_id="B", action=PLAN_COMPUTED) if r.payload]
    plans_a = [r.payload for r in log.records(incident_id="A", action=PLAN_COMPUTED) if r.payload]
    assert plans_a and plans_b
    a_crews = {s["crew_id"] for s in plans_a[0]["suggestions"]}
    assert a_crews and not a_crews & {c["crew_id"] for c in plans_b[0]["crews"]}

    # a restarted worker re-opens A and re-feeds its sighting
    co2 = RecordingCoordinator(Coordinator(city), log, clock=lambda: now[0])
    co2.open_incident("A", at=T0, commune="metz", origin_lonlat=centre)
    co2.share_incident("A", ["woippy"])
    co2.ingest(seen)
    co2.set_crews(moved, seen.observed_at + timedelta(seconds=1))
    assert sum(1 for r in log.records(incident_id="A") if r.action == CORE_OPENED) == 2

    for incident in ("A", "B", "C"):
        report = replay_incident(log.records(incident_id=incident), incident, city)
        assert report.mismatches == (), (incident, report.mismatches[:2])
        assert report.plans_checked >= 1
    assert log.verify().ok
    log.close()


def test_replay_after_a_crew_declines(city: City, tmp_path: Path) -> None:
    """A decline changes the planner's input: the replay must give it back and still match."""
    from serving.audit_replay import RecordingCoordinator

    log = SqliteAuditLog(tmp_path / "audit.sqlite3")
    co = RecordingCoordinator(Coordinator(city), log, clock=lambda: T0)
    co.open_incident("D", at=T0, commune="metz", origin_lonlat=_centre(city))
    first = co.set_crews(_crews(city, 6), T0)["D"]
    assert first.suggestions, "the test needs a suggestion to decline"
    refused = first.suggestions[0]
    after = co.decline("D", refused.crew_id, at=T0 + timedelta(seconds=2), reason="trop loin")
    assert after is not None
    assert [refused.crew_id, refused.target_node] in [list(p) for p in after.parameters["declined"]]
    assert after.target_of(refused.crew_id) != refused.target_node
    report = replay_incident(log.records(incident_id="D"), "D", city)
    assert report.mismatches == (), report.mismatches[:2]
    assert report.plans_checked >= 2
    log.close()
