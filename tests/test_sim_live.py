"""The simulator driving a real server (``cordon sim run --server``): a uvicorn subprocess on the
simulation clock, no demo crews, the scenario's own generated city."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_server_support import ROOT, SECRET, TEST_CROSSINGS, free_port

from map_data.city import default_city
from serving.client import CordonClient
from sim.live import LiveError, check_same_map, run_live
from sim.outcomes import recompute
from sim.replay import read_replay, write_replay
from sim.scenario import Scenario, build_city
from sim.world import CityContext, run_scenario

pytestmark = pytest.mark.timeout(120)

SCENARIO = {
    "name": "live",
    "map": {"kind": "generated", "n_crossings": TEST_CROSSINGS, "seed": 7},
    "crews": {"count": 4},
    "duration_s": 240,
    "seed": 0,
}

_SERVER = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from server import create_app
from serving.config import ServerConfig
config = ServerConfig(
    port={port}, clock="simulation", demo=True, demo_crews=0, audit_db="memory",
    token_secret={secret!r}, n_crossings={n}, city_seed=7, data_dir=__import__("pathlib").Path({data!r}),
    retention_interval_s=0,
)
uvicorn.run(create_app(config), host="127.0.0.1", port={port}, log_level="warning",
            ws_per_message_deflate=False)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("live-server")
    port = free_port()
    code = textwrap.dedent(
        _SERVER.format(root=str(ROOT), port=port, secret=SECRET, n=TEST_CROSSINGS, data=str(data))
    )
    log_path = Path(data) / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _ready(base: str) -> None:
    async with CordonClient(base) as c:
        await c.wait_ready(60)


@pytest.fixture(scope="module")
def ctx() -> CityContext:
    return CityContext(build_city(Scenario.model_validate(SCENARIO)))


async def test_a_run_through_the_server(server: str, ctx: CityContext, tmp_path: Path) -> None:
    await _ready(server)
    scenario = Scenario.model_validate(SCENARIO)
    live = await run_live(ctx, scenario, server, plan_timeout_s=10.0)
    result, stats = live.result, live.stats

    # the crews were tablets and got their suggestions over the websocket
    assert stats.foreign_crews == []
    assert set(stats.suggestions_received) == {f"crew-{i}" for i in range(1, 5)}
    assert sum(stats.suggestions_received.values()) > 0
    assert stats.accepted + stats.declined > 0
    assert stats.plans > 0 and stats.plan_timeouts == 0
    # what the crews were told is in the run's record, from the server's plans
    assert result.recording.suggestions
    assert {s.crew_id for s in result.recording.suggestions} <= set(result.crew_ids)

    # every delivered sighting reached the server's incident
    delivered = len(result.recording.sightings)
    assert delivered > 0 and stats.sightings_posted == delivered
    async with CordonClient(server) as anon:
        trainer = await anon.dev_token("trainer")
    async with CordonClient(server, trainer) as c:
        info = await c.http.get(f"/api/incidents/{stats.incident_id}")
        assert info.status_code == 200
        body = info.json()
        assert body["n_sightings"] == delivered
        assert body["closed_at"] is not None
        state = await c.incident_state(stats.incident_id)
        track = [f for f in state["track"]["features"] if f["properties"]["kind"] == "track"]
        assert track and track[0]["properties"]["n_sightings"] == delivered
        crews = {c["crew_id"]: c for c in (await c.http.get("/api/crews")).json()}
        assert all(crews[f"crew-{i}"]["status"] == "out_of_service" for i in range(1, 5))

    # the replay recomputes to the run's own outcome
    path = write_replay(result, tmp_path / "live.replay.jsonl")
    verdict = recompute(read_replay(path))
    o = result.outcome
    assert (verdict.kind, verdict.node, verdict.crew_id, len(verdict.contacts)) == (
        o.kind,
        o.node,
        o.crew_id,
        len(o.contacts),
    )
    assert verdict.t == pytest.approx(o.t)

    # the world is the simulator's: the suspect (exit-seeking: it ignores crews) drove the same
    # route as offline, up to the end of the live run
    offline = run_scenario(ctx, scenario.with_run(policy="static"))
    end = min(o.t, offline.outcome.t)
    live_moves = [(m.edge, m.t0) for m in result.recording.moves if m.agent == "suspect" and m.t0 <= end]
    off_moves = [(m.edge, m.t0) for m in offline.recording.moves if m.agent == "suspect" and m.t0 <= end]
    assert live_moves == off_moves

    # a second run on the same server: its clock never goes back, so the incident is moved later
    again = await run_live(ctx, scenario.model_copy(update={"duration_s": 30.0}), server)
    assert again.stats.time_shift_s > 0
    assert again.stats.incident_id != stats.incident_id
    assert again.result.outcome.t <= 30.0


async def test_refuses_another_map(server: str) -> None:
    await _ready(server)
    async with CordonClient(server) as anon:
        trainer = await anon.dev_token("trainer")
        health = await anon.health()
    other = default_city(n_crossings=TEST_CROSSINGS - 100, seed=7)
    async with CordonClient(server, trainer) as c:
        with pytest.raises(LiveError, match="not the scenario's"):
            await check_same_map(c, other, health)
        await check_same_map(c, default_city(n_crossings=TEST_CROSSINGS, seed=7), health)


async def test_refuses_a_wall_clock_server(ctx: CityContext) -> None:
    from test_server_support import running_server

    async with running_server() as srv:
        with pytest.raises(LiveError, match="--clock simulation"):
            await run_live(ctx, Scenario.model_validate(SCENARIO), srv.base)


def test_cli_run_with_server(server: str, tmp_path: Path) -> None:
    import asyncio
    import json

    from typer.testing import CliRunner

    from cli import app

    asyncio.run(_ready(server))
    scenario = tmp_path / "live.json"
    scenario.write_text(json.dumps(dict(SCENARIO, seed=5, duration_s=120)), encoding="utf-8")
    runner = CliRunner()
    args = ["sim", "run", str(scenario), "--server", server, "--out", str(tmp_path), "--no-plot"]
    got = runner.invoke(app, args)
    assert got.exit_code == 0, got.output
    assert "sightings posted" in got.output and "0 timeouts" in got.output
    replay = next(tmp_path.glob("live-guidance-live-s5.replay.jsonl"))
    assert runner.invoke(app, ["sim", "check", str(replay)]).exit_code == 0
    # another policy has nothing to ask a server
    chase = runner.invoke(app, [*args, "--policy", "chase"])
    assert chase.exit_code == 2 and "--server drives the server's guidance" in chase.output
    bad = tmp_path / "tokens.json"
    bad.write_text("[1]", encoding="utf-8")
    refused = runner.invoke(app, [*args, "--crew-tokens", str(bad)])
    assert refused.exit_code == 2 and "tokens.json" in refused.output
