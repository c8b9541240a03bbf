"""The planner's crew shortlist: which crews it keeps, and what it costs in coverage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from guidance.coverage import CoverageProblem, exact_milp
from guidance.planner import InterceptionPlanner, _ShortlistInput
from guidance.prediction import EscapePredictor
from guidance.testing import PointBelief, Position
from guidance.types import Crew, CrewStatus, EscapePrediction, PlannerConfig
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


def some_points(city: City, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` crossings, two points each (time thresholds), and pass probabilities."""
    g = city.graph
    rng = np.random.default_rng(seed)
    nodes = rng.choice(g.n_nodes, size=n, replace=False)
    pt_node = np.r_[nodes, nodes]
    tau = np.r_[rng.uniform(40.0, 150.0, n), rng.uniform(150.0, 320.0, n)]
    pp = np.zeros(g.n_nodes)
    pp[nodes] = rng.random(n)
    return pt_node, tau, pp


def crews_with_factors(city: City, n: int, seed: int) -> list[Crew]:
    """Crews all over the map, part way along their edges, with two speed factors."""
    g = city.graph
    rng = np.random.default_rng(seed)
    edges = rng.choice(g.n_edges, size=n, replace=False)
    return [
        Crew(
            f"crew-{i:03d}",
            EdgePosition(int(e), float(rng.uniform(0.0, 0.95) * g.edge_length_m[int(e)])),
            speed_factor=float(rng.choice([1.0, 1.3])),
        )
        for i, e in enumerate(edges)
    ]


def full_times(
    city: City, config: PlannerConfig, crews: list[Crew], pt_node: np.ndarray, tau: np.ndarray
) -> np.ndarray:
    """Every crew's ETA at each crossing of the points (columns: the sorted crossings)."""
    planner = InterceptionPlanner(city, config, prune_crews=False)
    return planner._point_times(crews, pt_node, tau, keep=()).eta_nodes


def test_shortlist_after_m_rounds_has_m_crews_as_fast_as_any_other(city: City) -> None:
    """The property that makes a shortlist of ``max_crews_per_incident`` rounds lose no
    coverage: for every crossing and every crew left out that could be in time there, at
    least ``max_crews_per_incident`` shortlisted crews are at least as fast there."""
    checked = 0
    for seed in range(4):
        M = 3
        crews = crews_with_factors(city, 150, seed)
        pt_node, tau, pp = some_points(city, 30, seed)
        config = PlannerConfig(max_crews_per_incident=M, crew_shortlist=149)
        planner = InterceptionPlanner(city, config)
        times = planner._point_times(
            crews, pt_node, tau, keep=(), shortlist=_ShortlistInput(pp, [], frozenset())
        )
        short = times.shortlisted
        assert short is not None and 0 < short.size < 149  # never full: all M rounds ran
        # Only shortlisted crews were searched.
        assert not times.searched[np.setdiff1d(np.arange(150), short)].any()
        eta = full_times(city, config, crews, pt_node, tau)
        latest = np.full(city.graph.n_nodes, -np.inf)
        np.maximum.at(latest, pt_node, tau)
        in_time = eta + config.safety_margin_s <= latest[np.unique(pt_node)][None, :]
        out = np.setdiff1d(np.arange(150), short)
        for j in range(eta.shape[1]):
            for c in out[in_time[out, j]].tolist():
                assert int((eta[short, j] <= eta[c, j] + 1e-6).sum()) >= M
                checked += 1
    assert checked > 50


def test_shortlist_keeps_the_best_coverage_exactly(city: City) -> None:
    """Exact MILP on random incidences: the shortlisted crews cover as much as all of them."""
    rng = np.random.default_rng(3)
    for seed in range(6):
        M = 2
        crews = crews_with_factors(city, 30, 100 + seed)
        pt_node, tau, pp = some_points(city, 6, 100 + seed)
        config = PlannerConfig(max_crews_per_incident=M, crew_shortlist=29)
        times = InterceptionPlanner(city, config)._point_times(
            crews, pt_node, tau, keep=(), shortlist=_ShortlistInput(pp, [], frozenset())
        )
        short = times.shortlisted
        assert short is not None and short.size < 29
        eta = full_times(city, config, crews, pt_node, tau)
        at_node = np.unique(pt_node, return_inverse=True)[1]
        feasible = eta[:, at_node] + config.safety_margin_s <= tau[None, :]
        incidence = sp.csr_matrix(rng.random((pt_node.size, 40)) < 0.3)
        weights = rng.random(40)
        full = exact_milp(CoverageProblem(incidence, weights, feasible, M))
        cut = exact_milp(CoverageProblem(incidence, weights, feasible[short], M))
        assert cut.value == pytest.approx(full.value, abs=1e-9)


def test_shortlist_takes_the_likeliest_crossings_fastest_crew_and_protected_crews(city: City) -> None:
    """A shortlist of ``max_crews_per_incident``: the fastest crew (in time) of the likeliest
    crossing is in, every protected crew is in, and a crew that declined the only crossing does
    not keep the next fastest out; no shortlist when all crews fit or it is off."""
    crews = crews_with_factors(city, 80, 7)
    pt_node, tau, pp = some_points(city, 20, 7)
    config = PlannerConfig(max_crews_per_incident=4, crew_shortlist=4)
    planner = InterceptionPlanner(city, config)
    eta = full_times(city, config, crews, pt_node, tau)
    nodes = np.unique(pt_node)
    likeliest = int(np.argmax(pp[nodes]))
    fastest = int(np.argmin(eta[:, likeliest]))
    assert np.isfinite(eta[fastest, likeliest])
    times = planner._point_times(crews, pt_node, tau, keep=(), shortlist=_ShortlistInput(pp, [], frozenset()))
    assert times.shortlisted is not None and times.shortlisted.size == 4
    assert fastest in times.shortlisted.tolist()
    protected = frozenset({0, 1, 2})
    times = planner._point_times(crews, pt_node, tau, keep=(), shortlist=_ShortlistInput(pp, [], protected))
    assert times.shortlisted is not None and protected <= set(times.shortlisted.tolist())
    assert times.shortlisted.size == 4
    # One crossing, declined by its fastest crew: the next fastest come forward (the decliner
    # does not keep them out), so the crossing still has as many crews as the plan may assign.
    one = np.array([nodes[likeliest]])
    eta_one = full_times(city, config, crews, one, np.array([400.0]))[:, 0]
    in_time = np.flatnonzero(eta_one + config.safety_margin_s <= 400.0)
    others = [int(c) for c in in_time[np.argsort(eta_one[in_time], kind="stable")] if c != fastest]
    assert len(others) >= 4
    times = planner._point_times(
        crews,
        one,
        np.array([400.0]),
        keep=(),
        shortlist=_ShortlistInput(pp, [(fastest, int(one[0]))], frozenset()),
    )
    assert times.shortlisted is not None
    assert set(others[:3]) <= set(times.shortlisted.tolist())
    off = InterceptionPlanner(city, PlannerConfig(crew_shortlist=0))
    assert (
        off._point_times(
            crews, pt_node, tau, keep=(), shortlist=_ShortlistInput(pp, [], frozenset())
        ).shortlisted
        is None
    )
    big = InterceptionPlanner(city, PlannerConfig(crew_shortlist=80))
    assert (
        big._point_times(
            crews, pt_node, tau, keep=(), shortlist=_ShortlistInput(pp, [], frozenset())
        ).shortlisted
        is None
    )


def spread_crews(city: City, n: int, seed: int) -> list[Crew]:
    g = city.graph
    rng = np.random.default_rng(seed)
    edges = rng.choice(g.n_edges, size=n, replace=False)
    return [
        Crew(
            f"crew-{i:03d}",
            EdgePosition(int(e), float(rng.uniform(0.0, 0.95) * g.edge_length_m[int(e)])),
            speed_factor=1.2,
        )
        for i, e in enumerate(edges)
    ]


class ShortlistSpy:
    """Records the shortlists a planner makes (crew indices into its eligible crews)."""

    def __init__(self, planner: InterceptionPlanner) -> None:
        self.calls: list[list[int]] = []
        self.original = planner._shortlist
        planner._shortlist = self  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray | None:
        out = self.original(*args, **kwargs)
        self.calls.append([] if out is None else out.tolist())
        return out


def predict(city: City, predictor: EscapePredictor, k: int) -> EscapePrediction:
    g = city.graph
    e0 = int(np.random.default_rng(2000 + k).integers(g.n_edges))
    belief = PointBelief(f"inc-{k}", T0, (Position(e0, 0.0, 1.0),), int(g.edge_u[e0]))
    return predictor.predict(belief, horizon_s=240.0)


def test_shortlisted_plans_cover_about_as_much_and_keep_previous_crews(
    city: City, predictor: EscapePredictor
) -> None:
    """200 crews, a shortlist of 24: coverage against the plan over every crew (mean ratio
    at least 0.99, none below 0.9); a re-plan keeps every crew the previous plan assigned in
    the shortlist, even when the shortlist would be full without it."""
    ratios = []
    kept_checked = 0
    for k in range(5):
        pred = predict(city, predictor, k)
        crews = spread_crews(city, 200, seed=k)
        short_planner = InterceptionPlanner(city, PlannerConfig(crew_shortlist=24))
        full_planner = InterceptionPlanner(city, PlannerConfig(crew_shortlist=0))
        p_short = short_planner.plan(pred, crews, at=T0)
        p_full = full_planner.plan(pred, crews, at=T0)
        assert p_short.parameters["n_eligible_crews"] == 200
        assert p_full.parameters["n_shortlisted_crews"] == 200
        if p_full.coverage_probability > 0:
            assert p_short.parameters["n_shortlisted_crews"] == 24
            ratios.append(p_short.coverage_probability / p_full.coverage_probability)
        # Every crew holds or has a suggestion, once.
        ids = sorted([s.crew_id for s in p_short.suggestions] + list(p_short.holds))
        assert ids == sorted(c.crew_id for c in crews)
        # The assigned crews move on; a shortlist of their size still keeps them all.
        assigned = {s.crew_id for s in p_short.suggestions}
        moved = [
            Crew(c.crew_id, c.position, status=CrewStatus.assigned, speed_factor=c.speed_factor)
            if c.crew_id in assigned
            else c
            for c in crews
        ]
        tight = InterceptionPlanner(city, PlannerConfig(crew_shortlist=1, max_crews_per_incident=4))
        spy = ShortlistSpy(tight)
        p2 = tight.plan(pred, moved, at=T0 + timedelta(seconds=5), previous=p_short)
        eligible = tight.eligible_crews(
            moved, previous=p_short, incident_commune=None, shared_communes=frozenset()
        )
        names = [eligible[i].crew_id for i in spy.calls[0]]
        assert assigned <= set(names)
        assert {s.crew_id for s in p2.suggestions} <= set(names)
        kept_checked += bool(assigned)
    assert kept_checked > 0
    assert len(ratios) >= 3
    assert np.mean(ratios) >= 0.99
    assert min(ratios) >= 0.9
