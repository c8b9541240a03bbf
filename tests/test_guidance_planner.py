"""Interception planning: tiny graphs with a known optimum, properties, constraints, stability."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guidance.planner import InterceptionPlanner
from guidance.prediction import EscapePredictor, PredictorConfig, prediction_from_samples
from guidance.testing import PointBelief, Position, edge, grid_city, t_city
from guidance.types import (
    Crew,
    CrewStatus,
    EscapePrediction,
    GuidanceError,
    NoGoArea,
    PlannerConfig,
    RouteSamples,
)
from map_data.network_types import City
from map_data.routing import shortest_path, times_from_positions
from map_data.types import EdgePosition

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # 13:00 in Metz

# The T-junction of test_guidance_prediction:
#
#   L(0) ------------ J(1) ------------ R(2)      L, R: exits (600 m from J)
#                      |
#                     S(3)                        the suspect drives S -> J (300 m)
#
# 70 % of the routes turn left to L, 30 % right to R; the suspect reaches J at 30 s and the
# exits at 70 s.


def tee_prediction(city: City, at: datetime = T0, n_left: int = 70, n_right: int = 30) -> EscapePrediction:
    g = city.graph
    S, J, L, R = (g.node_index[i] for i in (3, 1, 0, 2))
    rows = [(L, 0)] * n_left + [(R, 2)] * n_right
    K = len(rows)
    nodes = np.array([[J, x] for x, _ in rows], dtype=np.int64)
    edges = np.array([[edge(city, 3, 1), edge(city, 1, o)] for _, o in rows], dtype=np.int64)
    times = np.tile(np.array([30.0, 70.0]), (K, 1))
    samples = RouteSamples(
        nodes=nodes,
        edges=edges,
        times_s=times,
        lengths=np.full(K, 2, dtype=np.int64),
        weights=np.full(K, 1.0 / K),
        destinations=nodes[:, 1].copy(),
        models=np.zeros(K, dtype=np.int64),
        left=np.ones(K, dtype=bool),
    )
    assert S >= 0
    return prediction_from_samples(
        g, samples, incident_id="inc-t", at=at, horizon_s=120.0, destination_kinds={L: "exit", R: "exit"}
    )


def crew(crew_id: str, e: int, offset_m: float, **kw: object) -> Crew:
    return Crew(crew_id, EdgePosition(e, offset_m), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tee() -> City:
    return t_city()


def test_one_crew_known_optimum(tee: City) -> None:
    g = tee.graph
    pred = tee_prediction(tee)
    planner = InterceptionPlanner(tee)
    J, L, R = g.node_index[1], g.node_index[0], g.node_index[2]
    # Near J: J covers every route.
    plan = planner.plan(pred, [crew("c1", edge(tee, 0, 1), 590.0)], at=T0)
    assert plan.target_of("c1") == J and plan.coverage_probability == pytest.approx(1.0)
    # 100 m before L (J is behind it): L, the likelier exit.
    plan = planner.plan(pred, [crew("c1", edge(tee, 1, 0), 500.0)], at=T0)
    assert plan.target_of("c1") == L and plan.coverage_probability == pytest.approx(0.7)
    (s,) = plan.suggestions
    assert s.probability_covered == pytest.approx(0.7)
    assert "sortie" in s.reason and "70 %" in s.reason
    assert s.street_names == ("Avenue de Paris",)
    assert s.crew_eta_s + 20.0 <= s.suspect_earliest_eta_s and s.margin_s >= 20.0
    assert s.route_lonlat[-1] == pytest.approx(tuple(g.node_lonlat[L]))
    assert s.turns[-1].startswith("Arrivée")
    assert s.expires_at <= T0 + timedelta(seconds=120)
    # Near R: R only.
    plan = planner.plan(pred, [crew("c1", edge(tee, 1, 2), 500.0)], at=T0)
    assert plan.target_of("c1") == R and plan.coverage_probability == pytest.approx(0.3)


def test_two_crews_take_both_exits_and_nobody_chases(tee: City) -> None:
    g = tee.graph
    pred = tee_prediction(tee)
    planner = InterceptionPlanner(tee)
    crews = [crew("a", edge(tee, 1, 0), 500.0), crew("b", edge(tee, 1, 2), 500.0)]
    plan = planner.plan(pred, crews, at=T0)
    assert {plan.target_of("a"), plan.target_of("b")} == {g.node_index[0], g.node_index[2]}
    assert plan.coverage_probability == pytest.approx(1.0)
    # A crew behind the suspect (on S's dead end) can reach nothing ahead in time: it holds.
    plan = planner.plan(pred, [crew("behind", edge(tee, 1, 3), 280.0)], at=T0)
    assert plan.suggestions == () and plan.holds == ("behind",)


def test_margin_is_configurable(tee: City) -> None:
    pred = tee_prediction(tee)
    c = [crew("c1", edge(tee, 0, 1), 590.0)]  # ~1 s from J, suspect there at 30 s
    plan = InterceptionPlanner(tee, PlannerConfig(safety_margin_s=25.0)).plan(pred, c, at=T0)
    assert plan.target_of("c1") == tee.graph.node_index[1]
    plan = InterceptionPlanner(tee, PlannerConfig(safety_margin_s=30.0)).plan(pred, c, at=T0)
    assert plan.target_of("c1") != tee.graph.node_index[1]


def test_no_go_area_with_hours(tee: City) -> None:
    g = tee.graph
    pred = tee_prediction(tee)
    lon, lat = g.node_lonlat[g.node_index[0]]
    d = 0.0005
    ring = [
        (lon - d, lat - d),
        (lon + d, lat - d),
        (lon + d, lat + d),
        (lon - d, lat + d),
        (lon - d, lat - d),
    ]
    square = "POLYGON((" + ", ".join(f"{x} {y}" for x, y in ring) + "))"
    school = NoGoArea("école Jean Moulin", square, active_from=time(8, 0), active_to=time(17, 0))
    planner = InterceptionPlanner(tee)
    c = [crew("c1", edge(tee, 1, 0), 500.0)]
    assert planner.plan(pred, c, at=T0, no_go=[school]).holds == ("c1",)
    evening = T0.replace(hour=19)  # 20:00 in Metz: the school zone is not active
    assert (
        planner.plan(tee_prediction(tee, at=evening), c, at=evening, no_go=[school]).target_of("c1")
        == g.node_index[0]
    )
    with pytest.raises(GuidanceError, match="invalid WKT"):
        planner.plan(pred, c, at=T0, no_go=[NoGoArea("bad", "POLYGON((")])


def test_status_commune_and_max_crews(tee: City) -> None:
    pred = tee_prediction(tee)
    planner = InterceptionPlanner(tee, PlannerConfig(max_crews_per_incident=1))
    crews = [
        crew("a", edge(tee, 1, 0), 500.0, commune="Metz"),
        crew("b", edge(tee, 1, 2), 500.0, commune="Metz"),
        crew("busy", edge(tee, 0, 1), 590.0, status=CrewStatus.busy),
    ]
    plan = planner.plan(pred, crews, at=T0, incident_commune="Metz")
    assert len(plan.suggestions) == 1 and plan.target_of("a") is not None
    assert "busy" not in plan.holds and "b" in plan.holds
    other = [crew("w", edge(tee, 1, 0), 500.0, commune="Woippy")]
    assert planner.plan(pred, other, at=T0, incident_commune="Metz").holds == ()
    shared = planner.plan(pred, other, at=T0, incident_commune="Metz", shared_communes=frozenset({"Woippy"}))
    assert shared.target_of("w") is not None


def test_versions_and_bad_inputs(tee: City) -> None:
    pred = tee_prediction(tee)
    planner = InterceptionPlanner(tee)
    c = [crew("c1", edge(tee, 1, 0), 500.0)]
    p1 = planner.plan(pred, c, at=T0)
    p2 = planner.plan(pred, c, at=T0, previous=p1)
    assert (p1.version, p2.version) == (1, 2)
    assert p2.suggestions[0].kept and p2.suggestions[0].suggestion_id.endswith(":2:c1")
    with pytest.raises(GuidanceError, match="timezone-aware"):
        planner.plan(pred, c, at=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(GuidanceError, match="edge 99"):
        planner.plan(pred, [crew("x", 99, 0.0)], at=T0)
    with pytest.raises(GuidanceError, match="duplicate crew ids"):
        planner.plan(pred, c + c, at=T0)
    with pytest.raises(GuidanceError, match="speed_factor"):
        Crew("x", EdgePosition(0, 0.0), speed_factor=0.0)


# ------------------------------------------------------------------ on a grid

SIDE = 12


@pytest.fixture(scope="module")
def grid() -> tuple[City, EscapePredictor]:
    city = grid_city(SIDE)
    return city, EscapePredictor(city)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 10_000),
    crew_edges=st.lists(st.integers(0, 10_000), min_size=1, max_size=8),
    speed=st.sampled_from([1.0, 1.2]),
)
def test_every_suggestion_beats_the_suspect(
    grid: tuple[City, EscapePredictor], start: int, crew_edges: list[int], speed: float
) -> None:
    city, predictor = grid
    g = city.graph
    e0 = start % g.n_edges
    b = PointBelief(f"inc-{start}", T0, (Position(e0, 0.0, 1.0),), int(g.edge_u[e0]))
    pred = predictor.predict(b, horizon_s=300.0)
    crews = [crew(f"c{i}", e % g.n_edges, 0.0, speed_factor=speed) for i, e in enumerate(crew_edges)]
    plan = InterceptionPlanner(city, PlannerConfig(max_crews_per_incident=5)).plan(pred, crews, at=T0)
    targets = [s.target_node for s in plan.suggestions]
    assert len(targets) == len(set(targets)) <= 5
    assert len(plan.suggestions) + len(plan.holds) == len({c.crew_id for c in crews})
    by_id = {c.crew_id: c for c in crews}
    for s in plan.suggestions:
        assert s.crew_eta_s + 20.0 <= s.suspect_earliest_eta_s + 1e-9
        assert s.suspect_earliest_eta_s <= s.suspect_likely_eta_s
        assert pred.pass_probability[s.target_node] > 0
        c = by_id[s.crew_id]
        independent = times_from_positions(g, [c.position])[0, s.target_node] / c.speed_factor
        assert s.crew_eta_s == pytest.approx(independent)
    assert 0.0 <= plan.coverage_probability <= 1.0


def advance(city: City, c: Crew, target: int, dt_s: float) -> Crew:
    """The crew ``dt_s`` seconds further along its fastest path to ``target``."""
    g = city.graph
    e, off = c.position.edge, c.position.offset_m
    path = shortest_path(g, int(g.edge_v[e]), target)
    edges = [e] + [g.edge_between(a, b) for a, b in itertools.pairwise(path)]
    left = dt_s * c.speed_factor
    for i, edge_i in enumerate(edges):
        start = off if i == 0 else 0.0
        t_rest = g.edge_time_s[edge_i] * (1.0 - start / g.edge_length_m[edge_i])
        if left < t_rest or i == len(edges) - 1:
            along = start + min(left, t_rest) / g.edge_time_s[edge_i] * g.edge_length_m[edge_i]
            return Crew(c.crew_id, EdgePosition(edge_i, float(along)), status=CrewStatus.assigned)
        left -= t_rest
    raise AssertionError("unreachable")


def test_a_consistent_sighting_changes_no_assignment(grid: tuple[City, EscapePredictor]) -> None:
    city, _ = grid
    # 1,024 sampled routes: a crossing that 4 % of the routes take is then taken by ~40 of them
    # in both predictions (with 256, ~10: one prediction's draws can leave it out, and then no
    # plan should keep a crew there).
    predictor = EscapePredictor(city, config=PredictorConfig(n_routes=1024))
    g = city.graph
    centre = (SIDE // 2) * SIDE + SIDE // 2
    e0 = int(g.out_of(centre)[0])
    rng = np.random.default_rng(3)
    crews = [crew(f"c{i}", int(e), 0.0) for i, e in enumerate(rng.integers(0, g.n_edges, 6))]
    planner = InterceptionPlanner(city, PlannerConfig(max_crews_per_incident=4))
    b1 = PointBelief("inc-s", T0, (Position(e0, 0.0, 1.0),), centre)
    pred1 = predictor.predict(b1)
    p1 = planner.plan(pred1, crews, at=T0)
    assert len(p1.suggestions) >= 2
    # 5 s later the suspect is seen where the likeliest route put it, and the crews have driven
    # 5 s toward their targets.
    dt = 5.0
    first_eta = pred1.routes[0].eta_s[0]
    assert first_eta > dt
    offset = g.edge_length_m[e0] * dt / first_eta
    t1 = T0 + timedelta(seconds=dt)
    b2 = PointBelief("inc-s", t1, (Position(e0, float(offset), 1.0),), centre, n_sightings=1)
    moved = []
    for c in crews:
        target = p1.target_of(c.crew_id)
        moved.append(c if target is None else advance(city, c, target, dt))
    p2 = planner.plan(predictor.predict(b2), moved, at=t1, previous=p1)
    assert p2.parameters["kept_previous"]
    for s in p1.suggestions:
        assert p2.target_of(s.crew_id) == s.target_node
    assert p2.version == 2


def test_hysteresis_zero_takes_a_better_plan(tee: City) -> None:
    g = tee.graph
    pred = tee_prediction(tee)
    near_j = crew("c1", edge(tee, 0, 1), 590.0)
    # previous plan put c1 at L (70 %); J now covers 100 %.
    p1 = InterceptionPlanner(tee).plan(pred, [crew("c1", edge(tee, 1, 0), 500.0)], at=T0)
    sticky = InterceptionPlanner(tee, PlannerConfig(hysteresis=0.5)).plan(pred, [near_j], at=T0, previous=p1)
    assert sticky.target_of("c1") == g.node_index[0] and sticky.parameters["kept_previous"]
    eager = InterceptionPlanner(tee, PlannerConfig(hysteresis=0.0)).plan(pred, [near_j], at=T0, previous=p1)
    assert eager.target_of("c1") == g.node_index[1]


def test_a_waiting_crew_is_not_pulled_away_as_the_suspect_comes(tee: City) -> None:
    g = tee.graph
    L = g.node_index[0]
    planner = InterceptionPlanner(tee)
    p1 = planner.plan(tee_prediction(tee), [crew("c1", edge(tee, 1, 0), 500.0)], at=T0)
    assert p1.target_of("c1") == L
    # 60 s later the crew waits at L and the suspect is 10 s away: within the safety margin,
    # but the crew is already there.
    later = T0 + timedelta(seconds=60)
    waiting = [crew("c1", edge(tee, 1, 0), 600.0, status=CrewStatus.assigned)]
    p2 = planner.plan(tee_prediction(tee, at=T0), waiting, at=later, previous=p1)
    assert p2.target_of("c1") == L and p2.suggestions[0].kept
    # A fresh plan would not send a crew there any more.
    fresh = planner.plan(tee_prediction(tee, at=T0), waiting, at=later)
    assert fresh.target_of("c1") != L


def test_cached_crew_times_equal_fresh_ones() -> None:
    from guidance.planner import crew_times
    from map_data.city import default_city

    city = default_city()
    g = city.graph
    rng = np.random.default_rng(3)
    cache: dict[tuple[int, float], tuple[Any, Any]] = {}
    for _ in range(3):  # the second and third rounds are (partly) served from the cache
        edges = rng.choice(g.n_edges, size=6, replace=False)
        crews = [Crew(f"c{i}", EdgePosition(int(e), 1.0), speed_factor=1.2) for i, e in enumerate(edges[:3])]
        crews += [Crew("c-fixed", EdgePosition(7, 0.0), speed_factor=1.2)]
        fresh = crew_times(g, crews, limit_s=300.0)
        cached = crew_times(g, crews, limit_s=300.0, cache=cache)
        np.testing.assert_array_equal(fresh.eta_s, cached.eta_s)
        np.testing.assert_array_equal(fresh.predecessors, cached.predecessors)
        np.testing.assert_array_equal(fresh.heads, cached.heads)
    assert 4 <= len(cache) <= 10


def test_crew_times_when_the_cache_overflows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full cache is emptied; the rows this call needs must then all be searched again."""
    import guidance.planner as planner_module
    from map_data.city import default_city

    monkeypatch.setattr(planner_module, "_CREW_CACHE_BYTES", 0)  # room for 64 rows
    g = default_city().graph
    rng = np.random.default_rng(5)
    cache: dict[tuple[int, float], tuple[Any, Any]] = {}
    edges = rng.choice(g.n_edges, size=120, replace=False)
    first = [Crew(f"a{i}", EdgePosition(int(e), 0.0)) for i, e in enumerate(edges[:40])]
    planner_module.crew_times(g, first, limit_s=300.0, cache=cache)
    # 10 crews already cached and 40 new ones: more than 64 rows, so the cache is emptied.
    second = first[:10] + [Crew(f"b{i}", EdgePosition(int(e), 0.0)) for i, e in enumerate(edges[40:80])]
    cached = planner_module.crew_times(g, second, limit_s=300.0, cache=cache)
    fresh = planner_module.crew_times(g, second, limit_s=300.0)
    np.testing.assert_array_equal(fresh.eta_s, cached.eta_s)


def test_a_planner_reused_on_one_prediction_plans_as_a_fresh_one(grid: tuple[City, EscapePredictor]) -> None:
    """The planner's caches (crews' Dijkstra rows, the prediction's arrival quantiles) give
    exactly the plans of a fresh planner, as the audit replay recomputes them."""
    city, predictor = grid
    g = city.graph
    b = PointBelief("inc-cache", T0, (Position(5, 0.0, 1.0),), int(g.edge_u[5]))
    pred = predictor.predict(b, horizon_s=300.0)
    crews = [crew(f"c{i}", (37 * i + 11) % g.n_edges, 0.0, speed_factor=1.2) for i in range(6)]
    reused = InterceptionPlanner(city)
    previous = None
    for k in range(4):
        at = T0 + timedelta(seconds=5 * k)
        fresh_plan = InterceptionPlanner(city).plan(pred, crews, at=at, previous=previous)
        plan = reused.plan(pred, crews, at=at, previous=previous)
        assert plan == fresh_plan
        previous = plan
    assert previous is not None and previous.suggestions
