"""The guidance policy's cadence (when it consults the core) and the perfect-knowledge bound.

Runs on sim.testing.grid_city (8 × 8 two-way grid, 200 m blocks, 40 synthetic cameras).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import pytest

from guidance.coordinator import Coordinator
from sim.bounds import perfect_knowledge
from sim.policies import SIM_REPLAN_GAP_S, GuidancePolicy, make_policy, sim_coordinator
from sim.replay import replay_records
from sim.scenario import Scenario
from sim.testing import grid_city, small_guidance_scenario
from sim.world import CityContext, World

GRID = grid_city(cameras=40)


def _scenario(seed: int, duration_s: float = 200.0, **extra: Any) -> Scenario:
    return small_guidance_scenario(seed, duration_s=duration_s, **extra)


class _PlanClock(Coordinator):
    """The real Coordinator, noting the simulated time of every plan asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan_at: list[datetime] = []

    def set_crews(self, crews: Any, at: datetime) -> Any:
        self.plan_at.append(at)
        return super().set_crews(crews, at)


def _run(seed: int, cadence: str, **kw: Any) -> tuple[Any, _PlanClock, GuidancePolicy]:
    co = _PlanClock(GRID, reuse_prediction_s=30.0)
    policy = GuidancePolicy(co, cadence=cadence, **kw)
    world = World(CityContext(GRID), _scenario(seed), policy)
    return world, co, policy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_event_cadence_coalesces_bursts_and_refreshes_every_interval(seed: int) -> None:
    world, co, policy = _run(seed, "events")
    result = world.run_for()
    t = [(at - world.incident_at).total_seconds() for at in co.plan_at]  # to the microsecond
    assert t[0] == 0.0 and t == sorted(t)
    gaps = [b - a for a, b in itertools.pairwise(t)]
    # never two plans closer than the gap (reports of a burst wait for one re-plan) ...
    assert all(g >= SIM_REPLAN_GAP_S - 1e-5 for g in gaps), gaps
    # ... and never longer than update_interval_s without one while the run goes on
    interval = world.scenario.crew_model.update_interval_s
    assert all(g <= interval + 1e-5 for g in gaps), gaps
    assert result.outcome.t - t[-1] <= interval + 1e-5
    # every delivered report is followed by a plan within the gap (none is left unplanned)
    for s in result.recording.sightings:
        if s.delivered_t < result.outcome.t - SIM_REPLAN_GAP_S:
            assert any(s.delivered_t - 1e-5 <= x <= s.delivered_t + SIM_REPLAN_GAP_S + 1e-5 for x in t), s
    assert policy.replans == len(t)


def test_event_cadence_asks_fewer_plans_than_the_fixed_one() -> None:
    per_s = {}
    for cadence in ("fixed", "events"):
        plans, seconds = 0, 0.0
        for seed in range(4):
            world, co, _ = _run(seed, cadence)
            result = world.run_for()
            plans += len(co.plan_at)
            seconds += result.outcome.t
        per_s[cadence] = plans / seconds
    # plans per simulated second (runs may end at different times): at least a tenth fewer
    assert per_s["events"] < 0.9 * per_s["fixed"], per_s


def test_event_cadence_is_deterministic() -> None:
    a = list(replay_records(_run(3, "events")[0].run_for()))
    b = list(replay_records(_run(3, "events")[0].run_for()))
    assert a[1:] == b[1:]


def test_unknown_cadence_is_refused() -> None:
    with pytest.raises(ValueError, match="cadence"):
        GuidancePolicy(sim_coordinator(GRID), cadence="sometimes")


class _TickLog:
    """A policy that only notes when it is consulted."""

    name = "ticklog"

    def __init__(self) -> None:
        self.ticks: list[float] = []

    def start(self, world: World, t: float) -> None:
        world.wake_policy_at(2.0)
        world.wake_policy_at(5.0)

    def on_delivery(self, world: World, sighting: Any, t: float) -> None:
        return None

    def on_tick(self, world: World, t: float) -> None:
        self.ticks.append(t)

    def on_crew_arrival(self, world: World, crew: Any, t: float) -> None:
        return None

    def finish(self, world: World) -> None:
        return None


def test_a_policy_is_woken_through_on_tick_at_the_times_it_asks() -> None:
    policy = _TickLog()
    World(CityContext(GRID), _scenario(0).with_run(policy="static"), policy).run_for(12.0)
    # its own wake-ups (2 s, 5 s) and the regular update_interval_s ticks (10 s), in time order
    assert policy.ticks == [2.0, 5.0, 10.0]


@pytest.mark.parametrize("policy", ["chase", "nearest", "static", "guidance"])
def test_no_policy_intercepts_a_run_the_bound_says_is_lost(policy: str) -> None:
    ctx = CityContext(GRID)
    # Far crews and a quick suspect, so that some runs are lost whatever the policy does.
    sc = Scenario.model_validate(
        {
            "crews": {"count": 2, "area": {"radius_m": 2000, "min_distance_m": 600}},
            "incident": {"min_exit_time_s": 60},
            "suspect": {"speed_factor": [1.6, 1.8]},
            "policy": policy,
            "duration_s": 300.0,
        }
    )
    verdicts = []
    for seed in range(12):
        bound = perfect_knowledge(ctx, sc, seed)
        run = World(ctx, sc.with_run(seed=seed), make_policy(sc, ctx)).run_for()
        verdicts.append(bound.winnable)
        if run.outcome.kind == "interception":
            assert bound.winnable, (seed, bound)
            assert bound.best_margin_s is not None and bound.best_margin_s >= 0
    assert not all(verdicts), "the setup is meant to lose some runs"


def test_bound_replays_the_suspects_route_of_the_run() -> None:
    ctx = CityContext(GRID)
    sc = _scenario(5).with_run(policy="static")
    bound = perfect_knowledge(ctx, sc, 5)
    world = World(ctx, sc.with_run(seed=5), make_policy(sc, ctx))
    result = world.run_for()
    assert bound.origin == result.origin
    assert bound.suspect_speed_factor == result.suspect_speed_factor
    if result.outcome.kind == "escape":  # the same route to the same exit at the same time
        assert bound.end_kind == "escape" and bound.end_t == pytest.approx(result.outcome.t)
