"""The core in a process of its own (``ServerConfig.core_process``): the same flow as in-process
(suggestions to the right tablets, declines, predictions to the consoles), plans the audit replay
recomputes, and a dead core reported by the health endpoint."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_server_api import COMMUNE, SECRET, camera_ids, close_all, crews_online, sighting
from test_server_support import check_against_asyncapi, city_for_tests, running_server, token

from serving.client import Console, CordonClient
from serving.config import ServerConfig
from serving.core_process import CoreProcess

pytestmark = pytest.mark.timeout(180)


def config() -> ServerConfig:
    return ServerConfig(audit_db="memory", demo_crews=0, token_secret=SECRET, core_process=True)


async def test_core_process_guides_crews_declines_and_replays(tmp_path: Path) -> None:
    from serving.audit import SqliteAuditLog
    from serving.audit_replay import replay_incident

    audit = SqliteAuditLog(tmp_path / "audit.sqlite")
    incident = "inc-cp"
    async with running_server(config(), audit=audit) as srv:
        core = srv.app.state.service.coordinator
        assert isinstance(core, CoreProcess) and core.alive
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 8)
        console = Console(srv.base, await token(srv.base, communes=COMMUNE))
        await console.connect()
        await console.next("snapshot")
        await op.open_incident(incident, commune=COMMUNE)
        t0 = datetime.now(UTC)
        for i, cam in enumerate(camera_ids()[5:8]):
            await op.post_sighting(sighting(incident, cam, f"cp-{i}", t0 + timedelta(seconds=i)))
        plan = await console.next("plan", timeout_s=30, where=lambda m: m["suggestions"])
        prediction = await console.next("prediction", timeout_s=10)
        assert prediction["geojson"]["type"] == "FeatureCollection" and prediction["geojson"]["features"]
        by_crew = {t.crew_id: t for t in tablets}
        first = plan["suggestions"][0]
        decliner = by_crew[first["crew_id"]]
        got = await decliner.next(
            "suggestion", timeout_s=10, where=lambda m: m["suggestion"]["incident_id"] == incident
        )
        node = int(got["suggestion"]["target_node"])
        await decliner.decline(got["suggestion"]["suggestion_id"], "trop loin")
        await console.next("decision", timeout_s=10)
        after = await console.next("plan", timeout_s=30, where=lambda m: m["version"] > plan["version"])
        assert (decliner.crew_id, node) not in {
            (s["crew_id"], s["target_node"]) for s in after["suggestions"]
        }
        assert [(d.crew_id, d.target_node, d.reason) for d in core.declines(incident)] == [
            (decliner.crew_id, node, "trop loin")
        ]
        assert (await op.health())["status"] == "ok"
        assert check_against_asyncapi(srv.app.state.hub.sent_log) > 5
        await close_all(console, *tablets)
        await op.aclose()
        await asyncio.to_thread(srv.app.state.service.flush_audit)
    records = list(audit.records(incident_id=incident))
    actions = [r.action for r in records]
    assert actions.count("core_sighting") == 3 and actions.count("plan_computed") >= 2
    report = replay_incident(records, incident, city_for_tests())
    assert report.ok, report.mismatches[:3]
    assert report.plans_checked == actions.count("plan_computed")
    assert audit.verify().ok


async def test_a_dead_core_process_degrades_health() -> None:
    async with running_server(config()) as srv:
        core = srv.app.state.service.coordinator
        op = CordonClient(srv.base, await token(srv.base))
        assert (await op.health())["status"] == "ok"
        core._proc.kill()  # the child dies (OOM killer, a crash)
        await asyncio.to_thread(core._proc.join, 10)
        assert (await op.health())["status"] == "degraded"
        await op.aclose()


def _tiny_city() -> object:
    return "city"


class _PlainCore:
    """A stand-in core whose ``ingest`` takes no keywords (as a stub or an older core)."""

    def __init__(self, city: object) -> None:
        self.seen: list[str] = []

    def ingest(self, sighting: object) -> list[str]:
        self.seen.append(str(getattr(sighting, "source_event_id", "")))
        return list(self.seen)


def _plain_core(city: object) -> _PlainCore:
    return _PlainCore(city)


def test_core_process_passes_ingest_only_the_keywords_the_core_takes() -> None:
    """The service asks the proxy for ``replan``/``plan_at``; a core without them still ingests."""
    from serving.service import MemoryAudit
    from tracking.types import Sighting

    core = CoreProcess(
        _tiny_city, _plain_core, audit=MemoryAudit(), clock=lambda: datetime.now(UTC), record=False
    )
    try:
        s = Sighting(
            incident_id="inc", camera_id="cam", observed_at=datetime.now(UTC), source_event_id="ev-1"
        )
        assert core.ingest(s, replan=False) == ["ev-1"]
        assert core.ingest(s, plan_at=datetime.now(UTC)) == ["ev-1", "ev-1"]
    finally:
        core.close()
