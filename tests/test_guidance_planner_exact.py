"""The planner's fast paths give exactly what the plain computations give.

Each fast path (the radix order of arrival quantiles, the incidence built in CSR directly, a
route's polyline and turns put together from kept edge pieces, the greedy's covered weight
from its counts) is checked against the plain computation it replaces, on varied cases, for
equality (not closeness): the plans must be identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import scipy.sparse as sp

from guidance.coverage import CoverageProblem, coverage_value, lazy_greedy
from guidance.planner import (
    InterceptionPlanner,
    _incidence_covered,
    _node_time_order,
    _polyline,
    arrival_quantiles,
    turn_instructions,
)
from map_data.city import default_city
from map_data.network_types import City
from map_data.types import FloatArray, IntArray


def _arrivals(
    rng: np.random.Generator, n_nodes: int, n_routes: int, per_route: int, *, tie_gap: float
) -> tuple[IntArray, IntArray, FloatArray]:
    """Row-major first arrivals (each route's nodes increasing), times with exact ties and
    near ties ``tie_gap`` apart."""
    rows, nodes, times = [], [], []
    base = rng.uniform(0.0, 600.0, size=n_nodes)
    for r in range(n_routes):
        vs = np.sort(rng.choice(n_nodes, size=min(per_route, n_nodes), replace=False))
        kind = rng.integers(3, size=vs.size)
        t = np.where(kind == 0, base[vs], base[vs] + rng.uniform(0.0, 60.0, size=vs.size))
        t = np.where(kind == 1, base[vs] + tie_gap * rng.integers(0, 3, size=vs.size), t)
        rows.append(np.full(vs.size, r))
        nodes.append(vs)
        times.append(t)
    return np.concatenate(rows), np.concatenate(nodes).astype(np.int64), np.concatenate(times)


@pytest.mark.parametrize("tie_gap", [0.0, 1e-13, 1e-9, 0.5])
@pytest.mark.parametrize("n_nodes", [40, 5000, 70000])
def test_node_time_order_is_lexsort(n_nodes: int, tie_gap: float) -> None:
    rng = np.random.default_rng(n_nodes + int(tie_gap * 1e13))
    _, nodes, times = _arrivals(rng, n_nodes, 64, 30, tie_gap=tie_gap)
    expected = np.lexsort((times, nodes))
    assert np.array_equal(_node_time_order(nodes, times, n_nodes), expected)
    shuffled = rng.permutation(nodes.size)
    n2, t2 = nodes[shuffled], times[shuffled]
    assert np.array_equal(_node_time_order(n2, t2, n_nodes), np.lexsort((t2, n2)))


def test_node_time_order_edge_cases() -> None:
    nodes = np.array([3, 1, 3, 1, 2], dtype=np.int64)
    for times in (
        np.zeros(5),  # every time equal: index order within a node
        np.array([5.0, np.inf, 1.0, 2.0, -np.inf]),  # non-finite
        np.array([1e9, 1e9 + 1e-6, 1e9 - 1e-6, 1e9, 0.0]),  # a span far above the gaps
    ):
        assert np.array_equal(_node_time_order(nodes, times, 4), np.lexsort((times, nodes)))
    one = np.array([7], dtype=np.int64)
    assert np.array_equal(_node_time_order(one, np.array([2.0]), 8), [0])


def _plain_quantiles(
    nodes: IntArray, times: FloatArray, weights: FloatArray, n_nodes: int, levels: Sequence[float]
) -> list[FloatArray]:
    """Arrival quantiles as the planner computed them before (``lexsort`` order)."""
    out = [np.full(n_nodes, np.inf) for _ in levels]
    order = np.lexsort((times, nodes))
    n_s, t_s, w_s = nodes[order], times[order], weights[order]
    starts = np.flatnonzero(np.r_[True, n_s[1:] != n_s[:-1]])
    ends = np.r_[starts[1:], n_s.size]
    cum = np.cumsum(w_s)
    before = np.r_[0.0, cum][starts]
    total = cum[ends - 1] - before
    for i, q in enumerate(levels):
        idx = np.searchsorted(cum, before + q * total + 1e-12, side="left")
        out[i][n_s[starts]] = t_s[np.clip(idx, starts, ends - 1)]
    return out


@pytest.mark.parametrize("tie_gap", [0.0, 1e-12, 0.5])
def test_arrival_quantiles_are_the_plain_ones(tie_gap: float) -> None:
    rng = np.random.default_rng(3)
    rows, nodes, times = _arrivals(rng, 50, 40, 20, tie_gap=tie_gap)
    weights = rng.uniform(0.1, 1.0, size=40)[rows]
    levels = (0.25, 0.5, 0.9)
    got = arrival_quantiles(nodes, times, weights, 50, levels)
    want = _plain_quantiles(nodes, times, weights, 50, levels)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)
    assert np.isfinite(got[0]).sum() == np.unique(nodes).size


def _plain_incidence(
    rows: IntArray,
    nodes: IntArray,
    times: FloatArray,
    tau: FloatArray,
    order_pt: IntArray,
    first_of: IntArray,
    count_of: IntArray,
    shape: tuple[int, int],
) -> sp.csr_matrix:
    """The incidence as the planner built it before (COO through ``csr_matrix``)."""
    has = first_of[nodes] >= 0
    r_sel, n_sel, t_sel = rows[has], nodes[has], times[has]
    pr_parts, pc_parts = [], []
    for k in range(int(count_of.max(initial=0))):
        ok = count_of[n_sel] > k
        pts = order_pt[first_of[n_sel[ok]] + k]
        hit = t_sel[ok] >= tau[pts] - 1e-9
        pr_parts.append(pts[hit])
        pc_parts.append(r_sel[ok][hit])
    pr = np.concatenate(pr_parts) if pr_parts else np.zeros(0, dtype=np.int64)
    pc = np.concatenate(pc_parts) if pc_parts else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(pr.size), (pr, pc)), shape=shape)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shuffle", [False, True])
def test_incidence_is_the_coo_one(seed: int, shuffle: bool) -> None:
    rng = np.random.default_rng(seed)
    n_nodes, K = 120, 48
    rows, nodes, times = _arrivals(rng, n_nodes, K, 25, tie_gap=1e-10)
    if shuffle:  # routes not in increasing order: the general path
        p = rng.permutation(rows.size)
        rows, nodes, times = rows[p], nodes[p], times[p]
    shift = float(rng.uniform(0.0, 30.0))
    # Points: some crossings at up to three levels, thresholds increasing by level, level-major.
    cand = np.sort(rng.choice(n_nodes, size=60, replace=False))
    L = 3
    pt_node = np.tile(cand, L)
    pt_level = np.repeat(np.arange(L), cand.size)
    tau = np.sort(rng.uniform(-20.0, 700.0, size=(cand.size, L)), axis=1).T.ravel()
    keep = rng.random(pt_node.size) < 0.7
    pt_node, pt_level, tau = pt_node[keep], pt_level[keep], tau[keep]
    P = pt_node.size
    order_pt = np.lexsort((pt_level, pt_node))
    first_of = np.full(n_nodes, -1, dtype=np.int64)
    count_of = np.zeros(n_nodes, dtype=np.int64)
    sn = pt_node[order_pt]
    starts = np.flatnonzero(np.r_[True, sn[1:] != sn[:-1]])
    first_of[sn[starts]] = starts
    count_of[sn[starts]] = np.diff(np.r_[starts, sn.size])
    got = _incidence_covered(rows, nodes, times, shift, tau, order_pt, first_of, count_of, (P, K))[0]
    want = _plain_incidence(rows, nodes, times - shift, tau, order_pt, first_of, count_of, (P, K))
    assert got.shape == want.shape
    assert np.array_equal(got.indptr, want.indptr)
    assert np.array_equal(got.indices, want.indices)
    assert np.array_equal(got.data, want.data)
    w = rng.uniform(size=K)
    assert np.array_equal(got @ w, want @ w)


@pytest.fixture(scope="module")
def city() -> City:
    return default_city(n_crossings=800, seed=5)


def test_route_geometry_is_polyline_and_turns(city: City) -> None:
    g = city.graph
    planner = InterceptionPlanner(city)
    rng = np.random.default_rng(9)
    for trial in range(60):
        e = int(rng.integers(g.n_edges))
        edges = [e]
        for _ in range(int(rng.integers(0, 15))):
            out = g.out_of(int(g.edge_v[edges[-1]]))
            if out.size == 0:
                break
            edges.append(int(rng.choice(out)))
        names = planner.street_names(int(g.edge_v[edges[-1]]))
        want = (_polyline(g, edges), turn_instructions(g, edges, names))
        assert planner._route_geometry(edges, names) == want
        assert planner._route_geometry(edges[trial % 3 :], ()) == (
            _polyline(g, edges[trial % 3 :]),
            turn_instructions(g, edges[trial % 3 :], ()),
        )


@pytest.mark.parametrize("seed", range(8))
def test_greedy_value_is_coverage_value(seed: int) -> None:
    rng = np.random.default_rng(seed)
    P, K, C = 30, 40, 6
    dense = rng.random((P, K)) < 0.2
    inc = sp.csr_matrix(dense.astype(np.float64))
    if seed % 2:  # an explicit zero: not a covered route (the counts cannot tell)
        inc.data[0] = 0.0
    w = rng.uniform(size=K)
    feasible = rng.random((C, P)) < 0.4
    bonus = rng.uniform(0, 1e-6, size=(C, P))
    rho = 1.0 if seed % 3 else 0.8
    problem = CoverageProblem(inc, w, feasible, max_assignments=4, pair_bonus=bonus, point_reliability=rho)
    fixed = {}
    if seed % 4 == 0:
        c, p = np.argwhere(feasible)[0]
        fixed = {int(c): int(p)}
    sol = lazy_greedy(problem, fixed=fixed)
    assert sol.value == coverage_value(problem, sol.assignment)
    plain = lazy_greedy(problem, fixed=fixed, improve=False)
    assert plain.value == coverage_value(problem, plain.assignment)
