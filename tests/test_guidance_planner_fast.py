"""The planner's kernels for the crews × points step give exactly what the numpy they replace gave.

Each reference below is the previous numpy code of :meth:`InterceptionPlanner.plan` and
:meth:`InterceptionPlanner._point_times` (the ETAs from the Dijkstra rows, the in-time test on
the crews × points matrix of times, the tie-break bonus on that matrix, the incidence's covered
weights, the turn lines of :func:`turn_instructions`, ``np.unique``, and the coverage solver's full
product of residuals for its gains); the kernels must match them bit for bit
(``==`` on floats, not closeness), with infinite times, ties and thresholds at the limits.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
from test_guidance_planner_exact import _arrivals

from guidance.coverage import _columns, _gains_into, _move_row, _refresh_gains, _residual_into, _rho_pow
from guidance.planner import (
    InterceptionPlanner,
    _etas_into,
    _first_occurrences,
    _in_time,
    _incidence_covered,
    _pair_bonus,
    _sorted_unique,
    _turn_line,
    turn_instructions,
)
from map_data.city import default_city
from map_data.network_types import City
from map_data.types import CompiledGraph, FloatArray


def _times(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """Times with infinities, exact ties and values on a 10 s grid (thresholds met exactly)."""
    t = np.round(rng.uniform(0.0, 400.0, size=shape) / 10.0) * 10.0
    t[rng.random(shape) < 0.2] = np.inf
    return t


@pytest.mark.parametrize("seed", range(5))
def test_etas_are_the_numpy_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    C, N = 9, 50
    dist = _times(rng, (C, N))
    idx = np.sort(rng.choice(C + 4, size=C, replace=False)).astype(np.int64)
    remaining = rng.uniform(0.0, 30.0, size=C + 4)
    remaining[idx[0]] = 0.0
    factors = rng.choice([1.0, 1.2, 0.7], size=C + 4)
    limit_s = 300.0
    dist[1, :3] = limit_s * factors[idx[1]] - remaining[idx[1]]  # at the limit, or just either side
    want = np.full((C + 4, N), np.inf)
    sub = (dist + remaining[idx, None]) / factors[idx, None]
    sub[sub > limit_s] = np.inf
    want[idx] = sub
    got = np.full((C + 4, N), np.inf)
    _etas_into(got, idx, dist, remaining, factors, limit_s)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("seed", range(5))
def test_in_time_and_bonus_are_those_of_the_matrix_of_times(seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    C, N, P = 8, 30, 70
    eta_nodes = _times(rng, (C, N))
    col = rng.integers(N, size=P).astype(np.int64)
    tau = np.round(rng.uniform(-20.0, 500.0, size=P) / 10.0) * 10.0
    likely = rng.uniform(0.0, 900.0, size=P)
    likely[:2] = (np.inf, -np.inf)
    eta = eta_nodes[:, col]
    for margin_s in (20.0, 0.0):
        want = eta + margin_s <= tau[None, :]
        got = _in_time(eta_nodes, col, tau, margin_s)
        assert got.dtype == np.bool_
        assert np.array_equal(got, want)
        assert want.any() and not want.all()
    feasible = (eta + 20.0 <= tau[None, :]) | (rng.random((C, P)) < 0.1)  # inf ETAs too
    for max_wait_s in (240.0, 0.5):
        got_b = _pair_bonus(feasible, eta_nodes, col, tau, likely, max_wait_s, max(max_wait_s, 1.0))
        # The numpy of the bonus on the crews × points matrix of times ``eta``.
        want_b = np.zeros((C, P))
        fr, fc = np.nonzero(feasible)
        with np.errstate(invalid="ignore"):
            margin = np.nan_to_num(tau[fc] - eta[fr, fc], posinf=0.0)
            wait = np.nan_to_num(likely[fc] - eta[fr, fc], posinf=0.0)
        early = np.clip(margin, 0.0, 120.0) / 120.0
        idle = np.clip((wait - max_wait_s) / max(max_wait_s, 1.0), 0.0, 1.0)
        want_b[fr, fc] = 1e-6 * early - 1e-6 * idle
        assert np.array_equal(got_b, want_b)
        assert np.any(want_b != 0.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shuffle", [False, True])
def test_incidence_covered_weights_are_the_row_sums(seed: int, shuffle: bool) -> None:
    """Each point's covered weight: its routes' weights summed from 0.0 in increasing route
    order (scipy's product by the matrix of ones), with the routes a plain pass finds."""
    rng = np.random.default_rng(seed)
    n_nodes, K = 90, 40
    rows, nodes, times = _arrivals(rng, n_nodes, K, 20, tie_gap=1e-10)
    if shuffle:
        perm = rng.permutation(rows.size)
        rows, nodes, times = rows[perm], nodes[perm], times[perm]
    shift = float(rng.uniform(0.0, 30.0))
    cand = np.sort(rng.choice(n_nodes, size=45, replace=False))
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
    w = rng.uniform(size=K)
    inc, covered = _incidence_covered(rows, nodes, times, shift, tau, order_pt, first_of, count_of, (P, K), w)
    for p in range(P):
        routes = sorted(
            int(r)
            for r, v, t in zip(rows, nodes, times, strict=True)
            if v == pt_node[p] and t - shift >= tau[p] - 1e-9
        )
        assert inc.indices[inc.indptr[p] : inc.indptr[p + 1]].tolist() == routes
        s = 0.0
        for r in routes:
            s += float(w[r])
        assert covered[p] == s
    assert np.array_equal(covered, inc @ w)


def _plain_turns(graph: CompiledGraph, edges: list[int], target_names: tuple[str, ...]) -> tuple[str, ...]:
    """The turn list as :func:`turn_instructions` wrote it before :func:`_turn_line`."""

    def street(e: int) -> str:
        return graph.edge_name[e] or "la voie sans nom"

    def bearing(xy: FloatArray) -> float:
        d = xy[-1] - xy[0]
        return math.degrees(math.atan2(float(d[1]), float(d[0])))

    out = [f"Prendre {street(edges[0])}"]
    leave = [bearing(graph.edge_xy(x)[:2]) for x in edges]
    arrive = [bearing(graph.edge_xy(x)[-2:]) for x in edges]
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        delta = (leave[i + 1] - arrive[i] + 180.0) % 360.0 - 180.0
        same = graph.edge_name[a] == graph.edge_name[b] and graph.edge_name[a] != ""
        if abs(delta) > 150.0:
            out.append(f"Faire demi-tour sur {street(b)}")
        elif delta > 30.0:
            out.append(f"Tourner à gauche sur {street(b)}")
        elif delta < -30.0:
            out.append(f"Tourner à droite sur {street(b)}")
        elif not same:
            out.append(f"Continuer tout droit sur {street(b)}")
    names = " / ".join(target_names) if target_names else "le carrefour"
    out.append(f"Arrivée : {names}, s'arrêter et attendre")
    return tuple(out)


@pytest.fixture(scope="module")
def city() -> City:
    return default_city(n_crossings=800, seed=5)


def test_turn_lines_are_the_plain_ones(city: City) -> None:
    g = city.graph
    planner = InterceptionPlanner(city)
    rng = np.random.default_rng(3)
    kinds: set[str] = set()
    for _ in range(300):
        edges = [int(rng.integers(g.n_edges))]
        for _ in range(int(rng.integers(1, 12))):
            out = g.out_of(int(g.edge_v[edges[-1]]))
            if out.size == 0:
                break
            edges.append(int(rng.choice(out)))
        names = planner.street_names(int(g.edge_v[edges[-1]]))
        want = _plain_turns(g, edges, names)
        assert turn_instructions(g, edges, names) == want
        assert planner._route_geometry(edges, names)[1] == want
        kinds.update(line.split(" sur ")[0] for line in want[1:-1])
    # Every kind of line came up (the test reaches each branch of :func:`_turn_line`).
    assert kinds == {"Faire demi-tour", "Tourner à gauche", "Tourner à droite", "Continuer tout droit"}
    straight = () if g.edge_name[0] else ("Continuer tout droit sur la voie sans nom",)
    assert _turn_line(g, 0, 0, 10.0, 10.0) == straight


@pytest.mark.parametrize("size", [0, 1, 7, 3000])
def test_sorted_unique_and_first_occurrences_are_numpy_unique(size: int) -> None:
    rng = np.random.default_rng(size)
    a = rng.integers(0, max(size // 3, 1), size=size).astype(np.int64)
    values, first = np.unique(a, return_index=True)
    got = _sorted_unique(a)
    assert got.dtype == values.dtype
    assert np.array_equal(got, values)
    assert np.array_equal(_first_occurrences(a), first)
    if size > 7:
        assert values.size < size  # repeated values were there to drop


@pytest.mark.parametrize("rho", [1.0, 0.6])
def test_refreshed_gains_are_the_full_product(rho: float) -> None:
    """The greedy's gains kept up to date on the routes whose residual changed
    (:func:`_move_row`, :func:`_refresh_gains`) are the residuals' full product
    (:func:`_residual_into`, :func:`_gains_into`) after every move, bit for bit."""
    rng = np.random.default_rng(int(rho * 10))
    P, K = 60, 50
    dense = rng.random((P, K)) < 0.15
    inc = sp.csr_matrix(dense.astype(np.float64))
    indptr, indices = inc.indptr, inc.indices
    w = rng.uniform(size=K)
    w[:3] = 0.0  # residuals that do not change with the count
    rho_pow = _rho_pow(rho, 20)
    count = np.zeros(K, dtype=np.int64)
    residual = np.empty(K)
    _residual_into(residual, w, count, rho, rho_pow, np.arange(K))
    gains = np.empty(P)
    _gains_into(gains, indptr, indices, residual)
    col_ptr, col_points = _columns(indptr, indices, K)
    assert np.array_equal(col_ptr, inc.tocsc().indptr)
    assert np.array_equal(col_points, inc.tocsc().indices)
    stamp = np.zeros(K, dtype=np.int64)
    point_stamp = np.zeros(P, dtype=np.int64)
    pending = np.empty(K, dtype=np.int64)
    is_pending = np.zeros(K, dtype=np.bool_)
    tick = 1
    placed: list[int] = []
    for move in range(40):
        if placed and (move % 3 == 2 or len(placed) > 6):
            p, step = placed.pop(int(rng.integers(len(placed)))), -1
        else:
            p, step = int(rng.integers(P)), 1
            placed.append(p)
        n = _move_row(
            count,
            stamp,
            tick,
            indices,
            indptr[p],
            indptr[p + 1],
            step,
            residual,
            w,
            rho,
            rho_pow,
            pending,
            0,
            is_pending,
        )
        tick += 1
        _refresh_gains(
            gains, indptr, indices, residual, col_ptr, col_points, pending, n, is_pending, point_stamp, tick
        )
        tick += 1
        full_residual = np.empty(K)
        _residual_into(full_residual, w, count, rho, rho_pow, np.arange(K))
        full = np.empty(P)
        _gains_into(full, indptr, indices, full_residual)
        assert np.array_equal(residual, full_residual)
        assert np.array_equal(gains, full)
        assert not is_pending.any()
    assert count.max() >= 2  # routes manned twice: moves that change no residual (rho = 1)
