"""The simulated world: determinism, the baselines doing what they say, suspects, replays.

Most cases run on sim.testing.grid_city (8 × 8 two-way grid, 200 m blocks, 50 km/h, a camera
on every third directed edge; exits: the crossings on the grid's border)::

    56 ─ 57 ─ ... ─ 63
    │    │          │
    8 ── 9 ── ... ── 15
    │    │          │
    0 ── 1 ── ... ── 7
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from sim.batch import run_batch, summarise, wilson_interval
from sim.outcomes import recompute, recorded_verdict
from sim.replay import read_replay, replay_records, write_replay
from sim.scenario import BEHAVIOURS, Scenario
from sim.testing import grid_city, place, scenario_on
from sim.world import CityContext, RunResult, run_scenario

GRID = grid_city()
CTX = CityContext(GRID)
BASELINES = ("chase", "nearest", "static")


def _scenario(policy: str, seed: int, behaviour: str = "exit_seeking", crews: int = 5) -> Scenario:
    return Scenario.model_validate(
        {
            "crews": {"count": crews, "area": {"radius_m": 2000, "min_distance_m": 200}},
            "incident": {"min_exit_time_s": 60},
            "suspect": {"behaviour": behaviour},
            "policy": policy,
            "seed": seed,
        }
    )


def _canonical(result: RunResult) -> list[dict[str, object]]:
    records = list(replay_records(result))
    records[0].pop("versions")
    return records


def test_grid_exits_are_the_border() -> None:
    border = {i for i in range(64) if i < 8 or i >= 56 or i % 8 in (0, 7)}
    assert set(CTX.exits.tolist()) == border


@pytest.mark.parametrize("policy", BASELINES)
def test_same_scenario_and_seed_give_the_same_run(policy: str) -> None:
    for behaviour in BEHAVIOURS:
        a = run_scenario(CTX, _scenario(policy, 11, behaviour))
        b = run_scenario(CityContext(GRID), _scenario(policy, 11, behaviour))
        assert _canonical(a) == _canonical(b)
    c = run_scenario(CTX, _scenario(policy, 12))
    assert _canonical(c) != _canonical(run_scenario(CTX, _scenario(policy, 11)))


def test_policies_share_the_draws_of_a_seed() -> None:
    # Same incident, crews and (for a suspect that ignores crews) route for every policy.
    runs = [run_scenario(CTX, _scenario(p, 5)) for p in BASELINES]
    assert len({r.origin for r in runs}) == 1
    assert len({r.crew_start_nodes for r in runs}) == 1
    routes = [[m.edge for m in r.recording.moves if m.agent == "suspect"] for r in runs]
    shortest = min(len(x) for x in routes)
    assert all(x[:shortest] == routes[0][:shortest] for x in routes)


def test_static_crews_hold() -> None:
    for seed in range(5):
        r = run_scenario(CTX, _scenario("static", seed))
        assert r.recording.orders == []
        assert [m for m in r.recording.moves if m.agent != "suspect"] == []
        assert r.crew_km == 0.0


def test_chase_sends_every_crew_to_the_last_sighting() -> None:
    for seed in range(5):
        r = run_scenario(CTX, _scenario("chase", seed))
        first = [o for o in r.recording.orders if o.t == 0.0]
        assert {o.crew_id for o in first} == set(r.crew_ids)
        assert {o.target for o in first} == {r.origin}
        delivered = r.recording.sightings
        if delivered and CTX.camera_node[delivered[0].camera_id] != r.origin:
            s = delivered[0]
            later = [o for o in r.recording.orders if o.t == s.delivered_t and o.source == "chase"]
            # Each crew is re-targeted to the reported camera's crossing (or to the suspect in view).
            assert later
            assert any(o.target == CTX.camera_node[s.camera_id] for o in later)


def test_nearest_sends_only_the_nearest_crew() -> None:
    for seed in range(5):
        r = run_scenario(CTX, _scenario("nearest", seed))
        first = [o for o in r.recording.orders if o.t == 0.0]
        assert len(first) == 1 and first[0].target == r.origin
        to_origin = CTX.navigator.times_to([r.origin])
        starts = dict(zip(r.crew_ids, r.crew_start_nodes, strict=True))
        nearest = min(r.crew_ids, key=lambda c: (to_origin[starts[c]], r.crew_ids.index(c)))
        assert first[0].crew_id == nearest
        ordered = {o.crew_id for o in r.recording.orders}
        moved = {m.agent for m in r.recording.moves if m.agent != "suspect"}
        assert moved <= ordered


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_replays_recompute_to_the_simulators_outcome(behaviour: str, tmp_path: Path) -> None:
    for policy in BASELINES:
        for seed in range(8):
            result = run_scenario(CTX, _scenario(policy, seed, behaviour))
            replay = read_replay(write_replay(result, tmp_path / "r.jsonl"))
            got, recorded = recompute(replay), recorded_verdict(replay)
            assert (got.kind, got.node, got.crew_id) == (recorded.kind, recorded.node, recorded.crew_id)
            assert got.t == pytest.approx(recorded.t)
            assert [c[:2] for c in got.contacts] == [c[:2] for c in recorded.contacts]


def test_replay_holds_positions_sightings_and_the_header(tmp_path: Path) -> None:
    # The first seed whose suspect passes a camera.
    seed = next(s for s in range(20) if run_scenario(CTX, _scenario("chase", s)).recording.passes)
    result = run_scenario(CTX, _scenario("chase", seed))
    replay = read_replay(write_replay(result, tmp_path / "r.jsonl"))
    h = replay.header
    assert h["seed"] == seed and h["policy"] == "chase"
    assert h["rules"] == {"intercept_wait_s": 10.0, "contact_m": 50.0}
    assert len(h["crews"]) == 5
    times = [float(e.get("t", e.get("t0", 0.0))) for e in replay.events if e["type"] != "outcome"]
    assert times == sorted(times)
    moves = replay.of_type("move")
    suspect = [m for m in moves if m["agent"] == "suspect"]
    # Consecutive suspect moves join up, in space and time.
    for a, b in itertools.pairwise(suspect):
        assert a["v"] == b["u"] and a["t1"] == pytest.approx(b["t0"])
    assert replay.of_type("pass")
    for s in replay.of_type("sighting"):
        assert s["t"] >= s["observed_t"]  # delivered after it was seen


def test_sightings_follow_the_camera_model() -> None:
    # p_detect 1, no wrong handoff: every pass is delivered, from the right camera, later.
    sc = _scenario("static", 4).model_copy(
        update={
            "camera_model": Scenario.model_validate(
                {"camera_model": {"p_detect": 1.0, "p_wrong_handoff": 0.0}}
            ).camera_model
        }
    )
    r = run_scenario(CTX, sc)
    delivered_by = r.outcome.t
    passes = [p for p in r.recording.passes if p.t <= delivered_by]
    assert passes and all(p.detected for p in passes)
    assert all(s.camera_id == s.true_camera_id and not s.wrong for s in r.recording.sightings)
    # p_detect 0: nothing is ever reported.
    none = _scenario("static", 4).model_copy(
        update={"camera_model": Scenario.model_validate({"camera_model": {"p_detect": 0.0}}).camera_model}
    )
    assert run_scenario(CTX, none).recording.sightings == []
    # Wrong handoffs name a neighbouring camera.
    wrong = _scenario("static", 4).model_copy(
        update={
            "camera_model": Scenario.model_validate(
                {"camera_model": {"p_detect": 1.0, "p_wrong_handoff": 1.0}}
            ).camera_model
        }
    )
    w = run_scenario(CTX, wrong)
    assert w.recording.sightings
    assert all(s.wrong and s.camera_id == CTX.neighbour(s.true_camera_id) for s in w.recording.sightings)
    assert all(s.camera_id != s.true_camera_id for s in w.recording.sightings)


def test_exit_seeker_leaves_by_an_exit_and_rodeo_loops() -> None:
    for seed in range(6):
        r = run_scenario(CTX, _scenario("static", seed, "exit_seeking", crews=0))
        assert r.outcome.kind == "escape" and CTX.exit_mask[r.outcome.node]
        rodeo = run_scenario(CTX, _scenario("static", seed, "rodeo", crews=0))
        # A rodeo drives longer than the straight way out.
        assert rodeo.outcome.t > r.outcome.t


def test_evasive_suspect_turns_away_from_a_crew_ahead() -> None:
    # Without crews the evasive suspect drives like the exit seeker; with a crew standing on
    # its way it takes another route.
    base = run_scenario(CTX, _scenario("static", 2, "evasive", crews=0))
    route = [m.edge for m in base.recording.moves if m.agent == "suspect"]
    second = int(GRID.graph.edge_v[route[1]])
    sc = scenario_on(
        GRID,
        crews_at=[second],
        incident={"place": place(GRID, base.origin)},
        suspect={"behaviour": "evasive"},
        policy="static",
        seed=2,
    )
    evaded = run_scenario(CTX, sc)
    nodes = [int(GRID.graph.edge_v[m.edge]) for m in evaded.recording.moves if m.agent == "suspect"]
    assert second not in nodes
    assert evaded.outcome.kind == "escape"


def test_explicit_trajectory_is_followed_in_time() -> None:
    g = GRID.graph
    pts = [(9, 0.0), (12, 60.0), (36, 150.0)]
    sc = Scenario.model_validate(
        {
            "crews": {"count": 0},
            "suspect": {"trajectory": [{"t_s": t, **place(GRID, n)} for n, t in pts]},
            "policy": "static",
            "duration_s": 200,
        }
    )
    r = run_scenario(CityContext(GRID, exits=np.array([63], dtype=np.int64)), sc)
    entries = {int(g.edge_v[m.edge]): m.t1 for m in r.recording.moves if m.agent == "suspect"}
    assert entries[12] == pytest.approx(60.0)
    assert entries[36] == pytest.approx(150.0)
    assert r.outcome.kind == "timeout"  # parks at the last point


def test_batch_is_deterministic_and_parallel_equals_serial() -> None:
    sc = _scenario("static", 0)
    serial = run_batch(sc, runs=6, policies=BASELINES, workers=1, ctx=CTX, progress=False)
    parallel = run_batch(sc, runs=6, policies=BASELINES, workers=2, ctx=CTX, progress=False)
    strip = [(r.policy, r.seed, r.kind, r.t_s, r.contacts, r.crew_km) for r in serial]
    assert strip == [(r.policy, r.seed, r.kind, r.t_s, r.contacts, r.crew_km) for r in parallel]
    summary = summarise(serial)
    assert list(summary) == list(BASELINES)
    for s in summary.values():
        assert s["runs"] == 6
        assert s["interceptions"] + s["escapes"] == 6
        lo, hi = s["ci95"]
        assert lo <= s["interception_rate"] <= hi
    assert summary["static"]["crew_km_per_run"] == 0.0


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(20, 20)[1] == 1.0
