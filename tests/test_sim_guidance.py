"""The guidance policy drives the same core as the server: guidance.coordinator.Coordinator.

Runs on sim.testing.grid_city (8 × 8 two-way grid, 200 m blocks, 40 synthetic cameras)::

    56 ─ 57 ─ ... ─ 63
    │    │          │
    0 ── 1 ── ... ── 7
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from guidance.coordinator import Coordinator
from sim.outcomes import recompute
from sim.policies import GuidancePolicy, coordinator_for, make_policy
from sim.replay import read_replay, replay_records, write_replay
from sim.scenario import Scenario
from sim.testing import grid_city
from sim.world import CityContext, World

GRID = grid_city(cameras=40)


class SpyCoordinator(Coordinator):
    """The real Coordinator, counting what the simulator asks of it and checking its clock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, datetime]] = []

    def open_incident(self, incident_id: str, *, at: datetime, **kw: Any) -> Any:
        self.calls.append(("open", at))
        return super().open_incident(incident_id, at=at, **kw)

    def ingest(self, sighting: Any) -> Any:
        self.calls.append(("ingest", sighting.observed_at))
        assert sighting.source_kind == "simulation"
        return super().ingest(sighting)

    def set_crews(self, crews: Any, at: datetime) -> Any:
        self.calls.append(("set_crews", at))
        return super().set_crews(crews, at)


def _scenario(seed: int, duration_s: float = 150.0) -> Scenario:
    return Scenario.model_validate(
        {
            "crews": {"count": 4, "area": {"radius_m": 2000, "min_distance_m": 200}},
            "incident": {"min_exit_time_s": 60},
            "camera_model": {"p_detect": 1.0},
            "policy": "guidance",
            "duration_s": duration_s,
            "seed": seed,
        }
    )


def test_make_policy_builds_the_servers_coordinator() -> None:
    ctx = CityContext(GRID)
    policy = make_policy(_scenario(0), ctx)
    assert isinstance(policy, GuidancePolicy)
    assert type(policy.coordinator) is Coordinator
    assert coordinator_for(ctx) is policy.coordinator  # one per city, shared by the runs


def test_guidance_policy_feeds_sightings_and_crews_in_simulated_time(tmp_path: Any) -> None:
    ctx = CityContext(GRID)
    # The first seed whose suspect is seen twice or more before the run ends (under static).
    seed = next(
        s
        for s in range(30)
        if len(
            World(
                ctx,
                _scenario(s).with_run(policy="static"),
                make_policy(_scenario(s).with_run(policy="static"), ctx),
            )
            .run_for()
            .recording.sightings
        )
        >= 2
    )
    spy = SpyCoordinator(GRID)
    sc = _scenario(seed)
    world = World(ctx, sc, GuidancePolicy(spy))
    result = world.run_for()
    kinds = [k for k, _ in spy.calls]
    assert kinds[0] == "open"
    assert spy.calls[0][1] == sc.incident.at  # simulated time, never the wall clock
    assert kinds.count("ingest") == len(result.recording.sightings) > 0
    # The sightings carry the true time they were seen (so they may arrive out of order).
    seen = [at for k, at in spy.calls if k == "ingest"]
    assert seen == [world.at(s.observed_t) for s in result.recording.sightings]
    ticks = [at for k, at in spy.calls if k == "set_crews"]
    assert ticks == sorted(ticks) and all(at >= sc.incident.at for at in ticks)
    assert result.recording.suggestions, "the plan's suggestions are recorded"
    assert {o.source for o in result.recording.orders} == {"guidance"}
    assert spy.incident_ids() == ()  # closed at the end
    replay = read_replay(write_replay(result, tmp_path / "g.jsonl"))
    assert recompute(replay).kind == result.outcome.kind
    assert replay.of_type("suggestion")


def test_guidance_runs_are_deterministic() -> None:
    ctx = CityContext(GRID)
    a = list(replay_records(World(ctx, _scenario(2), GuidancePolicy(coordinator_for(ctx))).run_for()))
    # Another run in between on the same (reused) Coordinator must not change the next one.
    World(ctx, _scenario(3), GuidancePolicy(coordinator_for(ctx))).run_for()
    fresh = CityContext(GRID)
    b = list(replay_records(World(fresh, _scenario(2), GuidancePolicy(Coordinator(GRID))).run_for()))
    assert a[1:] == b[1:]


@pytest.mark.parametrize("seed", [4])
def test_followed_suggestions_move_crews_to_their_targets(seed: int) -> None:
    ctx = CityContext(GRID)
    result = World(ctx, _scenario(seed, 300.0), GuidancePolicy(Coordinator(GRID))).run_for()
    accepted = [o for o in result.recording.orders if o.accepted]
    assert accepted
    suggested = {(s.crew_id, s.target_node) for s in result.recording.suggestions}
    assert {(o.crew_id, o.target) for o in accepted} <= suggested
    # Every crew that moved was told to by an accepted guidance order.
    moved = {m.agent for m in result.recording.moves if m.agent != "suspect"}
    assert moved <= {o.crew_id for o in accepted}
