"""Crew pruning in the planner: skipping the Dijkstra of crews that cannot be in time is exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

import guidance.planner as planner_module
from guidance.planner import InterceptionPlanner
from guidance.prediction import EscapePredictor
from guidance.testing import PointBelief, Position
from guidance.types import Crew, CrewStatus, EscapePrediction, Plan, PlannerConfig
from map_data.city import default_city, exit_nodes
from map_data.network_types import City
from map_data.types import EdgePosition

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def city() -> City:
    return default_city(n_crossings=3000, seed=11)


@pytest.fixture(scope="module")
def predictor(city: City) -> EscapePredictor:
    exits = exit_nodes(city.graph)
    return EscapePredictor(city, exits=exits if exits.size else None)


def spread_crews(city: City, n: int, seed: int) -> list[Crew]:
    """``n`` crews all over the map, part way along their edges, with mixed speed factors."""
    g = city.graph
    rng = np.random.default_rng(seed)
    edges = rng.choice(g.n_edges, size=n, replace=False)
    return [
        Crew(
            f"crew-{i:03d}",
            EdgePosition(int(e), float(rng.uniform(0.0, 0.95) * g.edge_length_m[int(e)])),
            speed_factor=float(rng.choice([1.0, 1.2, 1.5])),
        )
        for i, e in enumerate(edges)
    ]


def predict(city: City, predictor: EscapePredictor, k: int) -> EscapePrediction:
    g = city.graph
    e0 = int(np.random.default_rng(1000 + k).integers(g.n_edges))
    belief = PointBelief(f"inc-{k}", T0, (Position(e0, 0.0, 1.0),), int(g.edge_u[e0]))
    return predictor.predict(belief, horizon_s=120.0)


class SearchCounter:
    """Counts the crews whose Dijkstra rows the planner asks for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.heads = 0
        original = planner_module._dijkstra_rows

        def counting(graph: Any, heads: Any, limit: float, cache: Any) -> Any:
            self.heads += int(heads.size)
            return original(graph, heads, limit, cache)

        monkeypatch.setattr(planner_module, "_dijkstra_rows", counting)


def three_plans(planner: InterceptionPlanner, pred: EscapePrediction, crews: list[Crew]) -> list[Plan]:
    """A fresh plan, a re-plan keeping its targets (the assigned crews moved on), and one with
    declines."""
    p1 = planner.plan(pred, crews, at=T0)
    moved = [
        Crew(c.crew_id, c.position, status=CrewStatus.assigned, speed_factor=c.speed_factor)
        if p1.target_of(c.crew_id) is not None
        else c
        for c in crews
    ]
    p2 = planner.plan(pred, moved, at=T0 + timedelta(seconds=6), previous=p1)
    declined = frozenset((s.crew_id, s.target_node) for s in p2.suggestions[:2])
    p3 = planner.plan(pred, moved, at=T0 + timedelta(seconds=15), previous=p2, declined=declined)
    return [p1, p2, p3]


@pytest.mark.parametrize("reverse_search", [False, True])
def test_pruned_plans_equal_unpruned_plans(
    city: City, predictor: EscapePredictor, monkeypatch: pytest.MonkeyPatch, reverse_search: bool
) -> None:
    """Short travel limits on a 3000-crossing city: most crews cannot reach any point, are not
    searched, and every plan (suggestions, ETAs, routes, holds, coverage) is the unpruned one."""
    if reverse_search:  # the exact reverse-Dijkstra test, whatever the number of crews
        monkeypatch.setattr(planner_module, "_REVERSE_PRUNE_MIN", 0)
    counter = SearchCounter(monkeypatch)
    searched_pruned = searched_full = n_suggestions = 0
    for k in range(6):
        pred = predict(city, predictor, k)
        crews = spread_crews(city, 80, seed=k)
        # Every crew (no shortlist, which searches fewer crews in its own way).
        config = PlannerConfig(
            max_crew_travel_s=[60.0, 120.0, 240.0][k % 3],
            max_wait_s=60.0,
            max_crews_per_incident=8,
            crew_shortlist=0,
        )
        counter.heads = 0
        pruned = three_plans(InterceptionPlanner(city, config), pred, crews)
        searched_pruned += counter.heads
        counter.heads = 0
        full = three_plans(InterceptionPlanner(city, config, prune_crews=False), pred, crews)
        searched_full += counter.heads
        assert pruned == full
        n_suggestions += sum(len(p.suggestions) for p in full)
    assert n_suggestions > 0
    # Pruning did something: the straight-line test alone drops some crews, the reverse
    # Dijkstra (exact for the fastest crews) more.
    assert searched_pruned < (0.6 if reverse_search else 0.85) * searched_full


def test_pruning_never_drops_a_crew_that_could_be_in_time(
    city: City, predictor: EscapePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every crew with a feasible point (from the unpruned ETAs) is searched by the pruned
    planner, so no crew that would have been assigned is ever removed; and the crews the plan
    assigns are all among them."""
    for reverse_min in (0, 10_000):
        monkeypatch.setattr(planner_module, "_REVERSE_PRUNE_MIN", reverse_min)
        pruned_any = 0
        for k in range(8):
            pred = predict(city, predictor, 10 + k)
            crews = spread_crews(city, 60, seed=50 + k)
            config = PlannerConfig(max_crew_travel_s=[45.0, 90.0, 180.0, 300.0][k % 4], max_wait_s=60.0)
            full_planner = InterceptionPlanner(city, config, prune_crews=False)
            plan = full_planner.plan(pred, crews, at=T0)
            # The planner's own points for this prediction, via a plan's inputs.
            pt_node, tau = points_of(full_planner, pred, crews)
            full = full_planner._point_times(crews, pt_node, tau, keep=())
            pruned = InterceptionPlanner(city, config)._point_times(crews, pt_node, tau, keep=())
            feasible = (full.eta_s + config.safety_margin_s <= tau[None, :]).any(axis=1)
            assert np.all(pruned.searched[feasible])
            np.testing.assert_array_equal(pruned.eta_s[pruned.searched], full.eta_s[pruned.searched])
            assert np.all(np.isinf(pruned.eta_s[~pruned.searched]))
            index = {c.crew_id: i for i, c in enumerate(crews)}
            for s in plan.suggestions:
                assert pruned.searched[index[s.crew_id]]
            pruned_any += int((~pruned.searched).sum())
        assert pruned_any > 0


def points_of(planner: InterceptionPlanner, pred: EscapePrediction, crews: list[Crew]) -> tuple[Any, Any]:
    """The (crossing, time threshold) points the planner builds for ``pred`` at T0, captured
    from its call to ``_point_times``."""
    captured: dict[str, Any] = {}
    original = planner._point_times

    def capture(cs: Any, pt_node: Any, tau: Any, keep: Any, **kwargs: Any) -> Any:
        captured["pt"] = (pt_node.copy(), tau.copy())
        return original(cs, pt_node, tau, keep, **kwargs)

    planner._point_times = capture  # type: ignore[method-assign,assignment]
    try:
        planner.plan(pred, crews, at=T0)
    finally:
        del planner._point_times
    pt_node, tau = captured["pt"]
    return pt_node, tau
