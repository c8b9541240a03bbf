"""Timing-aware coverage (arrival levels) and the proximity prior of exits."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import scipy.sparse as sp

from guidance.coverage import CoverageProblem, lazy_greedy
from guidance.models import DestinationKind, DestinationSet, destination_posterior
from guidance.planner import InterceptionPlanner, arrival_quantiles, crew_times
from guidance.prediction import prediction_from_samples
from guidance.testing import edge, t_city
from guidance.types import Crew, EscapePrediction, GuidanceError, PlannerConfig, RouteSamples
from map_data.network_types import City
from map_data.types import EdgePosition

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# The T-junction of guidance.testing.t_city:
#
#   L(0) ------------ J(1) ------------ R(2)      L, R: exits (600 m from J)
#                      |
#                     S(3)                        the suspect drives S -> J -> L or R


def split_prediction(
    city: City, early_s: float, late_s: float, n_early: int, n_late: int
) -> EscapePrediction:
    """All routes go S -> J -> L; ``n_early`` reach L at ``early_s``, ``n_late`` at ``late_s``."""
    g = city.graph
    J, L = g.node_index[1], g.node_index[0]
    K = n_early + n_late
    nodes = np.tile(np.array([J, L], dtype=np.int64), (K, 1))
    edges = np.tile(np.array([edge(city, 3, 1), edge(city, 1, 0)], dtype=np.int64), (K, 1))
    times = np.array([[10.0, early_s]] * n_early + [[10.0, late_s]] * n_late)
    samples = RouteSamples(
        nodes=nodes,
        edges=edges,
        times_s=times,
        lengths=np.full(K, 2, dtype=np.int64),
        weights=np.full(K, 1.0 / K),
        destinations=np.full(K, L, dtype=np.int64),
        models=np.zeros(K, dtype=np.int64),
        left=np.ones(K, dtype=bool),
    )
    return prediction_from_samples(
        g, samples, incident_id="inc-split", at=T0, horizon_s=600.0, destination_kinds={L: "exit"}
    )


def test_arrival_quantiles_are_weighted_per_node() -> None:
    nodes = np.array([5, 5, 5, 5, 2], dtype=np.int64)
    times = np.array([40.0, 10.0, 30.0, 20.0, 7.0])
    weights = np.array([0.1, 0.1, 0.1, 0.7, 1.0])
    q0, q25, q5 = arrival_quantiles(nodes, times, weights, 6, (0.0, 0.25, 0.5))
    # node 5 sorted: 10 (0.1), 20 (0.7), 30 (0.1), 40 (0.1): 25 % and 50 % fall on 20 s
    assert q0[5] == 10.0 and q25[5] == 20.0 and q5[5] == 20.0
    assert q0[2] == q5[2] == 7.0
    assert np.isinf(q0[[0, 1, 3, 4]]).all()


def test_a_crew_too_late_for_the_earliest_routes_covers_the_later_ones() -> None:
    city = t_city()
    g = city.graph
    L = g.node_index[0]
    c = Crew("c1", EdgePosition(edge(city, 1, 0), 0.0))  # at J, facing L
    eta_L = float(crew_times(g, [c], limit_s=300.0).eta_s[0, L])
    # Half the routes reach L before the crew could wait there with the margin, half after.
    pred = split_prediction(city, early_s=eta_L + 5.0, late_s=eta_L + 60.0, n_early=40, n_late=60)
    plan = InterceptionPlanner(city).plan(pred, [c], at=T0)
    (s,) = plan.suggestions
    assert s.target_node == L
    assert plan.coverage_probability == pytest.approx(0.6)
    assert s.probability_covered == pytest.approx(0.6)
    # The suggestion is feasible against the routes it covers.
    assert s.suspect_earliest_eta_s == pytest.approx(eta_L + 60.0)
    assert s.crew_eta_s + 20.0 <= s.suspect_earliest_eta_s
    assert s.suspect_earliest_eta_s <= s.suspect_likely_eta_s
    # With the earliest ETA only (the former rule), the crew cannot be placed at L.
    only_earliest = InterceptionPlanner(city, PlannerConfig(arrival_levels=(0.0,)))
    plan0 = only_earliest.plan(pred, [c], at=T0)
    assert plan0.target_of("c1") != L
    assert plan0.coverage_probability == pytest.approx(0.0)


def test_a_crew_in_time_for_every_route_still_covers_all_of_them() -> None:
    city = t_city()
    g = city.graph
    L = g.node_index[0]
    c = Crew("c1", EdgePosition(edge(city, 1, 0), 0.0))
    eta_L = float(crew_times(g, [c], limit_s=300.0).eta_s[0, L])
    pred = split_prediction(city, early_s=eta_L + 30.0, late_s=eta_L + 90.0, n_early=40, n_late=60)
    plan = InterceptionPlanner(city).plan(pred, [c], at=T0)
    assert plan.target_of("c1") == L and plan.coverage_probability == pytest.approx(1.0)
    (s,) = plan.suggestions
    assert s.suspect_earliest_eta_s == pytest.approx(eta_L + 30.0)


@pytest.mark.parametrize("levels", [(), (0.1, 0.5), (0.0, 0.5, 0.5), (0.0, 1.0)])
def test_bad_arrival_levels_are_named(levels: tuple[float, ...]) -> None:
    with pytest.raises(GuidanceError, match="arrival_levels"):
        PlannerConfig(arrival_levels=levels)


def test_nearer_exits_get_more_prior_weight() -> None:
    # Three exits 100, 200 and 400 s from the origin (node 0), one far destination.
    times = np.array([[100.0, 0.0], [200.0, 0.0], [400.0, 0.0], [50.0, 0.0]])
    dests = DestinationSet(
        nodes=np.array([1, 2, 3, 4], dtype=np.int64),
        kinds=(DestinationKind.exit,) * 3 + (DestinationKind.far,),
        times_to=times,
        is_exit=np.array([True, True, True, False]),
    )
    prior = {DestinationKind.exit: 0.6, DestinationKind.far: 0.4}
    heads = np.array([0], dtype=np.int64)
    w1 = np.array([1.0])
    flat = destination_posterior(dests, 0, heads, w1, prior)
    assert flat[:3] == pytest.approx([0.2, 0.2, 0.2])
    near = destination_posterior(dests, 0, heads, w1, prior, exit_detour_s=60.0, exit_detour_fraction=0.5)
    assert near[0] > near[1] > near[2] > 0
    assert near[:3].sum() == pytest.approx(0.6) and near[3] == pytest.approx(0.4)
    # scale max(60, 0.5 * 100) = 60 s: the exit 100 s farther weighs exp(-100 / 60) of the nearest
    assert near[1] / near[0] == pytest.approx(np.exp(-100.0 / 60.0))


def test_point_reliability_backs_up_the_likeliest_route() -> None:
    # Points 0 and 1 both lie on route A (weight 0.8); point 2 on route B (0.2). Two crews,
    # each able to reach every point.
    incidence = sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    weights = np.array([0.8, 0.2])
    feasible = np.ones((2, 3), dtype=bool)
    plain = lazy_greedy(CoverageProblem(incidence, weights, feasible, max_assignments=2))
    # Plain coverage: one crew on A, one on B.
    assert sorted(plain.assignment) == [0, 2] or sorted(plain.assignment) == [1, 2]
    assert plain.value == pytest.approx(1.0)
    # A manned point stops the suspect half of the time: a second crew on A (0.8 * 0.5 * 0.5
    # = 0.2 more) is worth more than B (0.2 * 0.5 = 0.1).
    backed = lazy_greedy(
        CoverageProblem(incidence, weights, feasible, max_assignments=2, point_reliability=0.5)
    )
    assert sorted(backed.assignment) == [0, 1]
    assert backed.value == pytest.approx(0.8)  # still the share of routes with a manned point
    with pytest.raises(GuidanceError, match="point_reliability"):
        CoverageProblem(incidence, weights, feasible, max_assignments=2, point_reliability=0.0)
    with pytest.raises(GuidanceError, match="point_reliability"):
        PlannerConfig(point_reliability=1.5)
