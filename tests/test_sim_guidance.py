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
from sim.policies import GuidancePolicy, coordinator_for, make_policy, sim_coordinator
from sim.replay import read_replay, replay_records, write_replay
from sim.scenario import Scenario
from sim.testing import grid_city, small_guidance_scenario
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

    def ingest(self, sighting: Any, **kw: Any) -> Any:
        self.calls.append(("ingest", sighting.observed_at))
        assert sighting.source_kind == "simulation"
        return super().ingest(sighting, **kw)

    def set_crews(self, crews: Any, at: datetime) -> Any:
        self.calls.append(("set_crews", at))
        return super().set_crews(crews, at)


def _scenario(seed: int, duration_s: float = 150.0) -> Scenario:
    return small_guidance_scenario(seed, duration_s=duration_s)


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
    b = list(replay_records(World(fresh, _scenario(2), GuidancePolicy(sim_coordinator(GRID))).run_for()))
    assert a[1:] == b[1:]


@pytest.mark.parametrize("seed", [4])
def test_followed_suggestions_move_crews_to_their_targets(seed: int) -> None:
    ctx = CityContext(GRID)
    result = World(ctx, _scenario(seed, 300.0), GuidancePolicy(Coordinator(GRID))).run_for()
    accepted = [o for o in result.recording.orders if o.accepted]
    assert accepted
    suggested = {(s.crew_id, s.target_node) for s in result.recording.suggestions}
    # Accepted orders are suggestions, or holds (None) of crews a later plan left out.
    assert {(o.crew_id, o.target) for o in accepted if o.target is not None} <= suggested
    # Every crew that moved was told to by an accepted guidance order.
    moved = {m.agent for m in result.recording.moves if m.agent != "suspect"}
    assert moved <= {o.crew_id for o in accepted}


def _scenario_with(seed: int, duration_s: float, **crew_model: Any) -> Scenario:
    data = _scenario(seed, duration_s).model_dump(mode="json", exclude_unset=True)
    data["crew_model"] = crew_model
    return Scenario.model_validate(data)


@pytest.mark.parametrize("seed", [1, 2])
def test_refusals_reach_the_planner_as_declines(seed: int) -> None:
    ctx = CityContext(GRID)
    spy = _DeclineSpy(GRID)
    policy = GuidancePolicy(spy)
    result = World(ctx, _scenario_with(seed, 300.0, compliance=0.4), policy).run_for()
    refused = [(o.crew_id, o.target, o.t) for o in result.recording.orders if not o.accepted]
    refused_targets = [(c, v) for c, v, _ in refused if v is not None]
    assert refused_targets, "with compliance 0.4 some suggestion is refused"
    # every refused suggestion was declined to the coordinator, once, at the time of refusal
    assert sorted(spy.declined) == sorted(refused_targets)
    assert policy.declines == len(refused_targets)
    # ... and never suggested to that crew again afterwards
    for crew_id, target, t in refused:
        if target is None:
            continue
        later = [
            s
            for s in result.recording.suggestions
            if s.crew_id == crew_id and s.target_node == target and s.t > t
        ]
        assert later == [], f"{crew_id} was offered {target} again after declining it"


class _DeclineSpy(Coordinator):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.declined: list[tuple[str, int]] = []

    def decline(self, incident_id: str, crew_id: str, **kw: Any) -> Any:
        self.declined.append((crew_id, int(kw["target_node"])))
        plan = super().decline(incident_id, crew_id, **kw)
        assert plan is not None and [crew_id, kw["target_node"]] in plan.parameters["declined"]
        assert plan.target_of(crew_id) != kw["target_node"]
        return plan


class _ScriptedCoordinator:
    """Plans from a script: plan 1 sends crew-1 to a far crossing, plan 2 holds it."""

    def __init__(self, city: Any, target: int) -> None:
        self.city, self.target, self.n = city, target, 0
        self.statuses: list[dict[str, str]] = []

    def open_incident(self, incident_id: str, **kw: Any) -> None:
        self.incident_id = incident_id

    def set_crews(self, crews: Any, at: datetime) -> dict[str, Any]:
        from guidance.types import Plan

        self.statuses.append({c.crew_id: str(c.status) for c in crews})
        self.n += 1
        if self.n == 1:
            sugg = (_suggestion(self.incident_id, "crew-1", self.target, at),)
            holds: tuple[str, ...] = ()
        else:
            sugg, holds = (), ("crew-1",)
        plan = Plan(self.incident_id, self.n, at, sugg, holds, 0.5, self.city.graph.version, "scripted")
        return {self.incident_id: plan}

    def ingest(self, sighting: Any, **kw: Any) -> Any:
        return None

    def close_incident(self, incident_id: str) -> None:
        return None


def _suggestion(incident_id: str, crew_id: str, node: int, at: datetime) -> Any:
    from datetime import timedelta

    from guidance.types import Suggestion

    return Suggestion(
        suggestion_id=f"{incident_id}:1:{crew_id}",
        incident_id=incident_id,
        crew_id=crew_id,
        target_node=node,
        lon=0.0,
        lat=0.0,
        street_names=(),
        route_lonlat=(),
        turns=(),
        crew_eta_s=10.0,
        suspect_earliest_eta_s=100.0,
        suspect_likely_eta_s=120.0,
        margin_s=90.0,
        probability_covered=0.5,
        reason="test",
        plan_version=1,
        issued_at=at,
        expires_at=at + timedelta(seconds=600),
    )


def test_a_held_crew_stops_at_the_next_crossing_and_is_available() -> None:
    from sim.testing import place, scenario_on

    # crew-1 at crossing 0 is sent to crossing 63 (the far corner), then held at the next tick.
    scenario = scenario_on(
        GRID,
        crews_at=[0],
        incident={"place": place(GRID, 36)},
        crew_model={"compliance": 1.0, "reaction_s": 0.0, "update_interval_s": 10.0},
        camera_model={"p_detect": 0.0},
        duration_s=60.0,
        seed=0,
    )
    co = _ScriptedCoordinator(GRID, 63)
    result = World(CityContext(GRID), scenario, GuidancePolicy(co)).run_for()
    orders = [(o.target, o.t) for o in result.recording.orders if o.crew_id == "crew-1"]
    assert orders[0] == (63, 0.0) and orders[1][0] is None, orders
    hold_t = orders[1][1]
    moves = [m for m in result.recording.moves if m.agent == "crew-1"]
    # it drove on to finish the edge it was on at the hold, then stopped there for good
    assert moves and all(m.t0 <= hold_t for m in moves)
    last = moves[-1]
    stop = int(GRID.graph.edge_v[last.edge])
    assert stop != 63 and len(moves) == 1
    waits = [w for w in result.recording.waits if w.agent == "crew-1" and w.t0 >= last.t1 - 1e-9]
    assert waits and waits[-1].node == stop
    # assigned while on its way to the plan's target, available once held
    assert co.statuses[1]["crew-1"] == "assigned"
    assert all(s["crew-1"] == "available" for s in co.statuses[2:])
