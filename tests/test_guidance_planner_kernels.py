"""The planner's and the coverage solver's compiled kernels give exactly what the numpy code
they replace gave.

Each reference below is the previous numpy implementation (the greedy with its sparse
products, the quantiles through ``lexsort``, the tie-break bonus through ``nan_to_num`` and
``clip``); the kernels must match them bit for bit (``==`` on floats, not closeness), on
random cases with ties, explicit zeros, fixed pairs, reliabilities below 1 and thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import scipy.sparse as sp
from test_guidance_planner_exact import _arrivals

from guidance.coverage import CoverageProblem, CoverageSolution, coverage_value, lazy_greedy
from guidance.planner import (
    InterceptionPlanner,
    _arrival_quantiles_sorted,
    _pair_bonus,
    _quantiles_into,
    arrival_quantiles,
)
from map_data.city import default_city
from map_data.routing import path_from_predecessors
from map_data.types import BoolArray, FloatArray, IntArray

# ---------------------------------------------------------------- the previous greedy (numpy)


def _ref_residual(w: FloatArray, count: IntArray, rho: float) -> FloatArray:
    if rho >= 1.0:
        out: FloatArray = w * (count == 0)
        return out
    res: FloatArray = w * rho * (1.0 - rho) ** count
    return res


def _ref_gains(inc: sp.csr_matrix, x: FloatArray) -> FloatArray:
    return np.asarray(inc @ x).ravel()


def _ref_best_alternative(feasible: BoolArray, gains: FloatArray, used: BoolArray, p: int) -> FloatArray:
    avail = ~used
    avail[p] = False
    out: FloatArray = np.where(feasible & avail[None, :], gains[None, :], 0.0).max(axis=1)
    return out


def _ref_improve(
    inc: sp.csr_matrix,
    w: FloatArray,
    feasible: BoolArray,
    bonus: FloatArray,
    movable: IntArray,
    assign: list[int],
    max_assignments: int,
    min_gain: float,
    rho: float,
    count: IntArray,
    used: BoolArray,
) -> None:
    def rows(p: int) -> IntArray:
        out: IntArray = inc.indices[inc.indptr[p] : inc.indptr[p + 1]]
        return out

    n_assigned = int(used.sum())
    order = movable.tolist()
    for _ in range(2):
        changed = False
        for k, c in enumerate(order):
            a = assign[c]
            if a < 0:
                if n_assigned >= max_assignments:
                    continue
                gains = _ref_gains(inc, _ref_residual(w, count, rho))
                score = np.where(feasible[k] & ~used, gains + bonus[k], -np.inf)
                b = int(np.argmax(score))
                if gains[b] > min_gain and score[b] > min_gain + 1e-9:
                    assign[c] = b
                    used[b] = True
                    n_assigned += 1
                    count[rows(b)] += 1
                    changed = True
                continue
            count[rows(a)] -= 1
            gains = _ref_gains(inc, _ref_residual(w, count, rho))
            mask = feasible[k] & ~used
            mask[a] = True
            score = np.where(mask, gains + bonus[k], -np.inf)
            b = int(np.argmax(score))
            if gains[b] > min_gain and score[b] > float(gains[a] + bonus[k, a]) + 1e-9:
                used[a] = False
                assign[c] = b
                used[b] = True
                changed = True
            count[rows(assign[c])] += 1
        if not changed:
            return


def _ref_greedy(
    problem: CoverageProblem, fixed: Mapping[int, int], min_gain: float, improve: bool
) -> CoverageSolution:
    """The plain greedy (every step recomputed with numpy), then the plain moves."""
    C, P = problem.feasible.shape
    inc = sp.csr_matrix(problem.incidence, dtype=np.float64, copy=True)
    inc.data[:] = 1.0
    w = problem.route_weights.astype(np.float64)
    feasible = problem.feasible
    bonus = problem.pair_bonus if problem.pair_bonus is not None else np.zeros((C, P))
    rho = problem.point_reliability
    assign = [-1] * C
    used = np.zeros(P, dtype=bool)
    count = np.zeros(inc.shape[1], dtype=np.int64)
    for c, p in sorted(fixed.items()):
        assign[c] = p
        used[p] = True
        count[inc.indices[inc.indptr[p] : inc.indptr[p + 1]]] += 1
    budget = problem.max_assignments - len(fixed)
    active = np.flatnonzero(np.array([a < 0 for a in assign]) & feasible.any(axis=1))
    free = np.ones(active.size, dtype=bool)
    while budget > 0 and free.any():
        gains = _ref_gains(inc, _ref_residual(w, count, rho))
        can = (feasible[active] & free[:, None]).any(axis=0)
        tie = np.where(feasible[active] & free[:, None], bonus[active], -np.inf).max(axis=0)
        reach = can & ~used & (gains > min_gain)
        if not reach.any():
            break
        p = int(np.argmax(np.where(reach, gains + tie, -np.inf)))
        cand = np.flatnonzero(free & feasible[active, p])
        if cand.size > 1:
            alt = _ref_best_alternative(feasible[active[cand]], gains, used, p)
        else:
            alt = np.zeros(cand.size)
        k = int(cand[np.lexsort((active[cand], -bonus[active[cand], p], alt))[0]])
        assign[int(active[k])] = p
        used[p] = True
        free[k] = False
        budget -= 1
        count[inc.indices[inc.indptr[p] : inc.indptr[p + 1]]] += 1
    if improve and active.size:
        _ref_improve(
            inc,
            w,
            feasible[active],
            bonus[active],
            active,
            assign,
            problem.max_assignments,
            min_gain,
            rho,
            count,
            used,
        )
    return CoverageSolution(tuple(assign), coverage_value(problem, assign))


@pytest.mark.parametrize("seed", range(60))
def test_lazy_greedy_is_the_plain_greedy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    P, K, C = int(rng.integers(1, 50)), int(rng.integers(1, 70)), int(rng.integers(1, 10))
    dense = rng.random((P, K)) < rng.uniform(0.05, 0.5)
    inc = sp.csr_matrix(dense.astype(np.float64))
    # Rounded weights and bonuses: exact ties between points and between crews.
    w = rng.uniform(size=K) if seed % 2 else np.round(rng.uniform(size=K), 1)
    w = w / w.sum()
    feasible = rng.random((C, P)) < rng.uniform(0.1, 0.8)
    bonus = None if seed % 5 == 0 else np.round(rng.uniform(-1e-6, 1e-6, size=(C, P)), 7 + seed % 3)
    rho = (1.0, 0.8, 0.35)[seed % 3]
    M = int(rng.integers(1, C + 2))
    fixed: dict[int, int] = {}
    if seed % 4 == 1 and feasible.any():
        c, p = np.argwhere(feasible)[int(rng.integers(int(feasible.sum())))]
        fixed = {int(c): int(p)}
    min_gain = (0.0, 0.01, 0.08)[seed % 3]
    problem = CoverageProblem(inc, w, feasible, max_assignments=M, pair_bonus=bonus, point_reliability=rho)
    for improve in (False, True):
        got = lazy_greedy(problem, fixed=fixed, min_gain=min_gain, improve=improve)
        want = _ref_greedy(problem, fixed, min_gain, improve)
        assert got.assignment == want.assignment
        assert got.value == want.value


# ---------------------------------------------------------------- arrival quantiles


@pytest.mark.parametrize("tie_gap", [0.0, 1e-13, 1e-9, 0.5])
@pytest.mark.parametrize("n_nodes", [6, 60, 3000])
def test_arrival_quantiles_kernel_is_the_sorted_one(n_nodes: int, tie_gap: float) -> None:
    """Few nodes (many arrivals each, ties within a node), many nodes; every node, and only
    some (``want``), with per-route weights as the planner passes them."""
    rng = np.random.default_rng(n_nodes + int(tie_gap * 1e13))
    rows, nodes, times = _arrivals(rng, n_nodes, 80, 40, tie_gap=tie_gap)
    if n_nodes == 60:  # extreme values in the range: bins far apart from the times
        times[:3] = [1e9, -1e9, np.inf]
    route_w = rng.uniform(0.0, 1.0, size=80)
    route_w[::7] = 0.0
    route_w /= route_w.sum()
    levels = (0.0, 0.25, 0.5, 0.9)
    got = arrival_quantiles(nodes, times, route_w[rows], n_nodes, levels)
    want = _arrival_quantiles_sorted(nodes, times, route_w[rows], n_nodes, levels)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
    some = np.zeros(n_nodes, dtype=bool)
    some[rng.choice(n_nodes, size=max(1, n_nodes // 3), replace=False)] = True
    out = np.full((len(levels), n_nodes), np.inf)
    _quantiles_into(out, some, rows, nodes, times, route_w, np.array(levels))
    sel = some[nodes]
    ref = _arrival_quantiles_sorted(nodes[sel], times[sel], route_w[rows[sel]], n_nodes, levels)
    for a, b in zip(out, ref, strict=True):
        assert np.array_equal(a, b)


def test_arrival_quantiles_with_nan_times_fall_back() -> None:
    nodes = np.array([1, 1, 2, 1], dtype=np.int64)
    times = np.array([3.0, np.nan, 1.0, 2.0])
    w = np.full(4, 0.25)
    got = arrival_quantiles(nodes, times, w, 3, (0.0, 0.5))
    want = _arrival_quantiles_sorted(nodes, times, w, 3, (0.0, 0.5))
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b, equal_nan=True)


# ---------------------------------------------------------------- tie-break bonus


def test_pair_bonus_is_the_numpy_one() -> None:
    rng = np.random.default_rng(4)
    C, P = 7, 40
    eta = rng.uniform(0.0, 400.0, size=(C, P))
    eta[0, :5] = np.inf
    tau = rng.uniform(0.0, 500.0, size=P)
    likely = rng.uniform(0.0, 900.0, size=P)
    likely[3] = np.inf
    likely[4] = -np.inf
    feasible = (eta + 20.0 <= tau[None, :]) | (rng.random((C, P)) < 0.1)
    feasible[0, :5] = True  # inf ETAs: NaN and -inf differences
    for max_wait_s in (240.0, 0.5):
        got = _pair_bonus(feasible, eta, np.arange(P), tau, likely, max_wait_s, max(max_wait_s, 1.0))
        want = np.zeros((C, P))
        fr, fc = np.nonzero(feasible)
        with np.errstate(invalid="ignore"):
            margin = np.nan_to_num(tau[fc] - eta[fr, fc], posinf=0.0)
            wait = np.nan_to_num(likely[fc] - eta[fr, fc], posinf=0.0)
        early = np.clip(margin, 0.0, 120.0) / 120.0
        idle = np.clip((wait - max_wait_s) / max(max_wait_s, 1.0), 0.0, 1.0)
        want[fr, fc] = 1e-6 * early - 1e-6 * idle
        assert np.array_equal(got, want)


# ---------------------------------------------------------------- route edges


def test_tree_edges_are_path_edges() -> None:
    from scipy.sparse.csgraph import dijkstra

    city = default_city(n_crossings=400, seed=3)
    g = city.graph
    planner = InterceptionPlanner(city)
    rng = np.random.default_rng(2)
    for source in rng.choice(g.n_nodes, size=8, replace=False).tolist():
        _, pred = dijkstra(g.time_csr, directed=True, indices=source, return_predecessors=True)
        pred = np.asarray(pred, dtype=np.int64)
        for target in [source, *rng.choice(g.n_nodes, size=20).tolist()]:
            want = planner._path_edges(path_from_predecessors(pred, source, target))
            assert planner._tree_edges(pred, source, target) == want


@pytest.mark.parametrize("bad", [-1, 5])
def test_arrival_quantiles_rejects_a_node_out_of_range(bad: int) -> None:
    # the compiled kernel would read and write out of bounds: the wrapper checks first
    nodes = np.array([0, bad], dtype=np.int64)
    with pytest.raises(IndexError):
        arrival_quantiles(nodes, np.array([1.0, 2.0]), np.array([0.5, 0.5]), 5, [0.5])
