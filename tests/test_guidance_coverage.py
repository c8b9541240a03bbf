"""Max-coverage of escape routes: lazy greedy against the exact MIP (scipy HiGHS)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from guidance.coverage import CoverageProblem, coverage_value, exact_milp, lazy_greedy
from guidance.types import GuidanceError


def _problem(inc: list[list[int]], w: list[float], feasible: list[list[bool]], m: int) -> CoverageProblem:
    return CoverageProblem(
        incidence=sp.csr_matrix(np.array(inc, dtype=np.float64)),
        route_weights=np.array(w, dtype=np.float64),
        feasible=np.array(feasible, dtype=bool),
        max_assignments=m,
    )


def test_one_crew_takes_the_point_covering_most() -> None:
    # points: 0 = the junction (both routes), 1 = left exit (0.7), 2 = right exit (0.3)
    inc = [[1, 1], [1, 0], [0, 1]]
    w = [0.7, 0.3]
    assert lazy_greedy(_problem(inc, w, [[True, True, True]], 1)).assignment == (0,)
    # junction out of reach: the likelier exit
    sol = lazy_greedy(_problem(inc, w, [[False, True, True]], 1))
    assert sol.assignment == (1,) and sol.value == pytest.approx(0.7)
    # only the right exit reachable
    assert lazy_greedy(_problem(inc, w, [[False, False, True]], 1)).assignment == (2,)


def test_two_crews_spread_over_distinct_routes() -> None:
    inc = [[1, 0], [1, 0], [0, 1]]  # points 0 and 1 both on route 0
    w = [0.6, 0.4]
    sol = lazy_greedy(_problem(inc, w, [[True, True, True], [True, True, True]], 2))
    assert sol.value == pytest.approx(1.0)
    assert sorted(p for p in sol.assignment) in ([0, 2], [1, 2])


def test_greedy_gives_the_point_to_the_crew_least_useful_elsewhere() -> None:
    # crew 0 can reach both points, crew 1 only point 0: crew 1 must take point 0.
    inc = [[1, 0], [0, 1]]
    w = [0.6, 0.4]
    sol = lazy_greedy(_problem(inc, w, [[True, True], [True, False]], 2))
    assert sol.assignment == (1, 0)
    assert sol.value == pytest.approx(1.0)


def test_max_assignments_and_min_gain_hold_crews() -> None:
    inc = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    w = [0.5, 0.3, 0.2]
    all_ok = [[True] * 3] * 3
    sol = lazy_greedy(_problem(inc, w, all_ok, 2))
    assert sum(p >= 0 for p in sol.assignment) == 2 and sol.value == pytest.approx(0.8)
    sol = lazy_greedy(_problem(inc, w, all_ok, 3), min_gain=0.25)
    assert sum(p >= 0 for p in sol.assignment) == 2


def test_fixed_pairs_are_kept_and_checked() -> None:
    inc = [[1, 0], [0, 1]]
    w = [0.7, 0.3]
    prob = _problem(inc, w, [[True, True], [True, True]], 2)
    sol = lazy_greedy(prob, fixed={0: 1})
    assert sol.assignment == (1, 0)
    with pytest.raises(GuidanceError, match="not feasible"):
        lazy_greedy(_problem(inc, w, [[False, True]], 1), fixed={0: 0})
    with pytest.raises(GuidanceError, match="cannot reach"):
        coverage_value(_problem(inc, w, [[False, True]], 1), [0])


def test_problem_shapes_are_checked() -> None:
    with pytest.raises(GuidanceError, match="route_weights"):
        _problem([[1, 0]], [1.0], [[True]], 1)
    with pytest.raises(GuidanceError, match="feasible"):
        _problem([[1, 0]], [0.5, 0.5], [[True, True]], 1)


def test_lazy_greedy_against_exact_milp_on_random_small_cases() -> None:
    bound = 1.0 - 1.0 / math.e
    equal = 0
    n_cases = 60
    for seed in range(n_cases):
        rng = np.random.default_rng(seed)
        P, R, C = int(rng.integers(3, 12)), int(rng.integers(5, 30)), int(rng.integers(1, 5))
        w = rng.random(R)
        prob = CoverageProblem(
            incidence=sp.csr_matrix((rng.random((P, R)) < 0.3).astype(np.float64)),
            route_weights=w / w.sum(),
            feasible=rng.random((C, P)) < 0.5,
            max_assignments=int(rng.integers(1, C + 1)),
        )
        greedy, exact = lazy_greedy(prob), exact_milp(prob)
        assert exact.value == pytest.approx(coverage_value(prob, exact.assignment))
        assert greedy.value <= exact.value + 1e-9
        assert greedy.value >= bound * exact.value - 1e-9, f"seed {seed}"
        equal += abs(greedy.value - exact.value) < 1e-9
        # each crew at most one point, distinct points
        pts = [p for p in greedy.assignment if p >= 0]
        assert len(pts) == len(set(pts)) <= prob.max_assignments
    assert equal >= 0.75 * n_cases
