"""The predictor's faster kernels give the values of the computations they replaced, exactly: the
walk on its packed successor table, the physical bound's Dijkstra, the arrival statistics in
one pass, the median without sorting, the top routes' grouping and the distances from the
origin."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from scipy.sparse.csgraph import dijkstra

import guidance.prediction as prediction
from guidance.prediction import EscapePredictor, PredictorConfig, first_arrivals
from guidance.testing import PointBelief, Position, grid_city, t_city
from guidance.types import RouteSamples
from map_data.network_types import City

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WALK = prediction._walk_routes


def _plain(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """The kernel's plain-Python function (itself under ``CORDON_NO_JIT=1``)."""
    return getattr(kernel, "py_func", kernel)


def _predictions(city: City, n_routes: int = 128) -> list[Any]:
    """A few predictions on ``city`` from spread beliefs (two positions each)."""
    g = city.graph
    pred = EscapePredictor(city, config=PredictorConfig(n_routes=n_routes))
    out = []
    for i, e in enumerate(range(0, g.n_edges, max(1, g.n_edges // 5))):
        outs = g.out_of(int(g.edge_v[e]))
        e2 = int(outs[0]) if outs.size else e
        b = PointBelief(
            f"f-{i}",
            T0,
            (Position(e, 0.3 * float(g.edge_length_m[e]), 0.7), Position(e2, 5.0, 0.3)),
            int(g.edge_u[e]),
            1 + i % 3,
            9.0,
        )
        out.append(pred.predict(b, horizon_s=(120.0, 300.0, 600.0)[i % 3], origin_known=i % 2 == 0))
    return out


# --------------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------------


def _reference_walk(
    pred: EscapePredictor, args: tuple[Any, ...], rng: np.random.Generator
) -> tuple[Any, Any, Any, Any]:
    """The walk as escape-mixture/5 wrote it, in plain Python on the predictor's unpacked
    tables (successors, their number and heads, the edges' times): K × (max_steps + 1) steps."""
    (cur_edge, t_s, factor, model, dest_idx, dest_node, any_exit) = args[:7]
    static_time, away_s, away_hm, times_to_flat, temperature_s = args[8:13]
    horizon_s, max_steps = args[16], args[17]
    g = pred.graph
    succ, n_succ, succ_head, exit_node = pred._succ, pred._n_succ, pred._succ_head, pred._exit_node
    E, n = succ.shape[0], away_hm.size
    routes: list[list[tuple[int, float]]] = []
    for k in range(cur_edge.size):
        ce = int(cur_edge[k])
        route = [(ce, float(t_s[k]))]
        node, dest, ax = g.edge_v[ce], dest_node[k], any_exit[k]
        if t_s[k] < horizon_s and node != dest and not (ax and exit_node[node]) and n_succ[ce] > 0:
            f = factor[k]
            walked_s, limit_s, m = t_s[k] * f, horizon_s * f, model[k]
            while len(route) < max_steps + 1:
                w_n, j_pick = n_succ[ce], 0
                if w_n > 1:
                    heads = succ_head[ce, :w_n]
                    score = (
                        static_time[m * E + ce, :w_n]
                        + away_hm[heads] * away_s[m]
                        - times_to_flat[dest_idx[k] * n + heads]
                    )
                    # (The difference in float32, as the kernel takes it, then over a float64.)
                    weight = [math.exp(float(x - score.max()) / temperature_s[m]) for x in score]
                    u, acc = rng.random() * sum(weight), 0.0
                    for j, w in enumerate(weight):
                        if w > 0.0:
                            j_pick = j
                            acc += w
                            if acc > u:
                                break
                ce = int(succ[ce, j_pick])
                walked_s += g.edge_time_s[ce]
                node = g.edge_v[ce]
                route.append((ce, float(walked_s / f)))
                if walked_s >= limit_s or node == dest or (ax and exit_node[node]) or n_succ[ce] == 0:
                    break
        routes.append(route)
    width = max(len(r) for r in routes)
    edges = np.full((len(routes), width), -1, dtype=np.int64)
    times = np.full((len(routes), width), np.inf)
    for k, r in enumerate(routes):
        edges[k, : len(r)] = [e for e, _ in r]
        times[k, : len(r)] = [t for _, t in r]
    nodes = np.where(edges >= 0, g.edge_v[np.maximum(edges, 0)], -1)
    return nodes, edges, times, np.array([len(r) for r in routes], dtype=np.int64)


@pytest.mark.parametrize("city_name", ["tee", "grid"])
def test_walk_on_the_packed_table_is_the_unpacked_walk(
    monkeypatch: pytest.MonkeyPatch, city_name: str
) -> None:
    """Same routes, same times, same draws as the plain walk over the unpacked tables (the
    successor table's rows, ``exp(0)`` taken as 1, the step buffer)."""
    city = t_city() if city_name == "tee" else grid_city(9)
    g = city.graph
    pred = EscapePredictor(city, config=PredictorConfig(n_routes=96))
    calls: list[tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...], dict[str, Any]]] = []

    def recording(*args: Any) -> Any:
        before = args[-1].bit_generator.state
        out = WALK(*args)
        calls.append((args[:-1], before, out, args[-1].bit_generator.state))
        return out

    monkeypatch.setattr(prediction, "_walk_routes", recording)
    for i, e in enumerate(range(0, g.n_edges, max(1, g.n_edges // 6))):
        b = PointBelief(f"w-{i}", T0, (Position(e, 1.0, 1.0),), int(g.edge_u[e]))
        pred.predict(b, horizon_s=(60.0, 300.0, 900.0)[i % 3], origin_known=i % 2 == 0)
    assert len(calls) >= 4
    longest = 0
    for args, before, out, after in calls:
        rng = np.random.default_rng(0)
        rng.bit_generator.state = before
        want = _reference_walk(pred, args, rng)
        assert rng.bit_generator.state == after
        longest = max(longest, int(out[3].max()))
        for a, b in zip(out, want, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert longest >= (2 if city_name == "tee" else 10)  # the routes walked


def test_walk_step_buffer_grows_for_long_routes() -> None:
    """Routes longer than the buffer's first share (64 steps a route) are kept whole: a ring
    of 4 edges walked 300 steps by each of 3 routes."""
    K, steps = 3, 300
    edge_v = np.array([1, 2, 3, 0], dtype=np.int64)  # edge i runs i -> i + 1 (mod 4)
    table = np.array([[1, (i + 1) % 4, (i + 2) % 4] for i in range(4)], dtype=np.int32)
    args = (
        np.zeros(K, dtype=np.int64),
        np.zeros(K),
        np.ones(K),
        np.zeros(K, dtype=np.int64),
        np.zeros(K, dtype=np.int64),
        np.full(K, 9, dtype=np.int64),  # a destination off the ring
        np.zeros(K, dtype=np.bool_),
        table,
        np.zeros((4, 1), dtype=np.float32),
        np.zeros(1, dtype=np.float32),
        np.zeros(4, dtype=np.float32),
        np.zeros(4, dtype=np.float32),
        np.ones(1),
        np.ones(4),  # 1 s an edge
        edge_v,
        np.zeros(4, dtype=np.bool_),
        1e9,
        steps,
    )
    for walk in (WALK, _plain(WALK)):
        nodes, edges, times, lengths = walk(*args, np.random.default_rng(0))
        assert np.all(lengths == steps + 1)
        assert np.array_equal(edges[1], np.arange(steps + 1) % 4)
        assert np.array_equal(times[2], np.arange(steps + 1, dtype=np.float64))
        assert np.array_equal(nodes[0], (np.arange(steps + 1) + 1) % 4)


# --------------------------------------------------------------------------------------------
# The physical bound
# --------------------------------------------------------------------------------------------


def _reference_bound(pred: EscapePredictor, pos_edges: Any, pos_off: Any, horizon_s: float) -> Any:
    """The bound as escape-mixture/5 computed it: scipy's multi-source Dijkstra."""
    g = pred.graph
    heads = np.unique(g.edge_v[pos_edges])
    rem = g.edge_time_s[pos_edges] * np.maximum(
        0.0, 1.0 - pos_off / np.maximum(g.edge_length_m[pos_edges], 1e-9)
    )
    limit = horizon_s * pred.max_speed_factor
    d = dijkstra(g.time_csr, directed=True, indices=heads, min_only=True, limit=limit)
    out = (np.asarray(d, dtype=np.float64) + float(rem.min())) / pred.max_speed_factor
    out[out > horizon_s] = np.inf
    return out


@pytest.mark.parametrize("city_name", ["tee", "grid", "fine grid"])
def test_physical_bound_is_scipys_dijkstra(city_name: str) -> None:
    cities: dict[str, Callable[[], City]] = {
        "tee": t_city,
        "grid": lambda: grid_city(9),
        "fine grid": lambda: grid_city(15, spacing_m=37.3),
    }
    city = cities[city_name]()
    g = city.graph
    pred = EscapePredictor(city)
    rng = np.random.default_rng(3)
    reached, beyond = 0, 0
    for _ in range(12):
        n = int(rng.integers(1, 5))
        pos_edges = rng.integers(0, g.n_edges, size=n)
        pos_off = rng.random(n) * g.edge_length_m[pos_edges] * 1.2  # some past the edge's end
        horizon_s = float(rng.choice([5.0, 30.0, 90.0, 600.0]))
        want = _reference_bound(pred, pos_edges, pos_off, horizon_s)
        got = pred._physical_bound(pos_edges, pos_off, horizon_s)
        assert np.array_equal(got, want)
        plain = _plain(prediction._physical_bound_kernel)(
            pos_edges,
            pos_off,
            g.edge_v,
            g.edge_time_s,
            g.edge_length_m,
            pred._csr_ptr,
            pred._csr_next,
            pred._csr_time_s,
            horizon_s,
            pred.max_speed_factor,
        )
        assert np.array_equal(plain, want)
        reached += int(np.isfinite(want).sum())
        beyond += int(np.isinf(want).sum())
    assert reached > 12 and (city_name == "tee" or beyond > 0)  # the limit cut some searches


# --------------------------------------------------------------------------------------------
# Arrival statistics
# --------------------------------------------------------------------------------------------


def _reference_statistics(nodes: Any, times: Any, w: Any, n_nodes: int) -> tuple[Any, Any]:
    """The earliest and median arrivals as the insertion-sort kernel of escape-mixture/5 found
    them: by node, then stably by time; the running weight over that whole order."""
    earliest = np.full(n_nodes, np.inf)
    likely = np.full(n_nodes, np.inf)
    cum = 0.0
    for v in range(n_nodes):
        run = sorted(
            ((float(times[i]), float(w[i])) for i in np.flatnonzero(nodes == v)), key=lambda tw: tw[0]
        )
        if not run:
            continue
        earliest[v] = run[0][0]
        before = cum
        for _, x in run:
            cum += x
        target = before + 0.5 * (cum - before) - 1e-12
        acc, med = before, len(run) - 1
        for i, (_, x) in enumerate(run):
            acc += x
            if acc >= target:
                med = i
                break
        likely[v] = run[med][0]
    return earliest, likely


@pytest.mark.parametrize("city_name", ["tee", "grid"])
def test_arrival_statistics_in_one_pass_are_the_separate_ones(city_name: str) -> None:
    """Rows, nodes, times of the first arrivals, the summed weights (``np.bincount``'s), the
    earliest and median arrivals: those of :func:`first_arrivals` then the statistics."""
    city = t_city() if city_name == "tee" else grid_city(9)
    g = city.graph
    rng = np.random.default_rng(5)
    for p in _predictions(city):
        s = p.samples
        for weights in (s.weights, rng.random(s.n_routes), np.round(rng.random(s.n_routes), 1)):
            want_rows, want_nodes, want_times = first_arrivals(s, p.horizon_s)
            want_pass = np.bincount(want_nodes, weights=weights[want_rows], minlength=g.n_nodes)
            want_e, want_l = _reference_statistics(want_nodes, want_times, weights[want_rows], g.n_nodes)
            for kernel in (
                prediction._arrival_statistics_kernel,
                _plain(prediction._arrival_statistics_kernel),
            ):
                got = kernel(
                    s.nodes, s.times_s, np.asarray(weights, dtype=np.float64), p.horizon_s, g.n_nodes
                )
                for a, b in zip(
                    got, (want_rows, want_nodes, want_times, want_pass, want_e, want_l), strict=True
                ):
                    assert np.array_equal(a, b)
        assert np.array_equal(p.first_arrivals[0], first_arrivals(s, p.horizon_s)[0])
        assert np.array_equal(
            p.pass_probability,
            np.bincount(p.first_arrivals[1], weights=s.weights[p.first_arrivals[0]], minlength=g.n_nodes)
            / s.weights.sum(),
        )


def test_arrival_times_with_ties_and_signed_zeros() -> None:
    """Equal weights, many equal times, and -0 beside 0 (equal, yet another value to report):
    the median found without sorting is the stably sorted one's, and -0 falls back to the sort."""
    rng = np.random.default_rng(11)
    for trial in range(60):
        n_nodes = int(rng.integers(1, 6))
        N = int(rng.integers(1, 120))
        nodes = rng.integers(0, n_nodes, size=N)
        times = rng.integers(0, 4, size=N).astype(np.float64)
        if trial % 3 == 0:
            times[rng.random(N) < 0.3] = -0.0
        w = np.full(N, 1.0 / N) if trial % 2 else np.round(rng.random(N), 1)
        want = _reference_statistics(nodes, times, w, n_nodes)
        for kernel in (prediction._arrival_times_kernel, _plain(prediction._arrival_times_kernel)):
            got = kernel(nodes, times, w, n_nodes)
            for a, b in zip(got, want, strict=True):
                assert np.array_equal(a, b) and np.array_equal(np.signbit(a), np.signbit(b))


def test_kth_smallest_is_the_sorted_value() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        values = rng.integers(0, int(rng.integers(1, 30)), size=int(rng.integers(1, 60))).astype(np.float64)
        lo = int(rng.integers(0, values.size))
        hi = int(rng.integers(lo + 1, values.size + 1))
        k = int(rng.integers(0, hi - lo))
        want = np.sort(values[lo:hi])[k]
        for kernel in (prediction._kth_smallest, _plain(prediction._kth_smallest)):
            copy = values.copy()
            assert kernel(copy, lo, hi, k) == want
            assert np.array_equal(np.sort(copy[lo:hi]), np.sort(values[lo:hi]))  # only reordered
            assert np.array_equal(copy[:lo], values[:lo]) and np.array_equal(copy[hi:], values[hi:])


# --------------------------------------------------------------------------------------------
# Top routes and distances
# --------------------------------------------------------------------------------------------


def _reference_top(samples: RouteSamples, top_k: int) -> list[tuple[int, int, float]]:
    """``(route, destination, weight)`` as escape-mixture/5's numpy grouping found them."""
    dest_values, dest_of = np.unique(samples.destinations, return_inverse=True)
    group_w = np.bincount(dest_of.ravel(), weights=samples.weights, minlength=dest_values.size)
    rows = np.ascontiguousarray(samples.nodes)
    route_key = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()
    out = []
    for g in np.lexsort((dest_values, -group_w))[:top_k].tolist():
        members = np.flatnonzero(dest_of.ravel() == g)
        _, first, which = np.unique(route_key[members], return_index=True, return_inverse=True)
        route_w = np.bincount(which.ravel(), weights=samples.weights[members], minlength=first.size)
        first_k = members[first]
        out.append((int(first_k[np.lexsort((first_k, -route_w))[0]]), int(dest_values[g]), float(group_w[g])))
    return out


def _repeating_samples(rng: np.random.Generator, K: int) -> RouteSamples:
    """Routes drawn from a few templates and their prefixes, to a few destinations."""
    templates = [rng.integers(0, 30, size=int(rng.integers(1, 7))) for _ in range(5)]
    width = max(t.size for t in templates)
    nodes = np.full((K, width), -1, dtype=np.int64)
    lengths = np.zeros(K, dtype=np.int64)
    for k in range(K):
        t = templates[int(rng.integers(0, len(templates)))]
        n = int(rng.integers(1, t.size + 1))
        nodes[k, :n] = t[:n]
        lengths[k] = n
    weights = np.full(K, 1.0 / K) if K % 2 else rng.random(K) + 0.01
    return RouteSamples(
        nodes=nodes,
        edges=nodes,
        times_s=np.where(nodes >= 0, 1.0, np.inf),
        lengths=lengths,
        weights=weights,
        destinations=rng.integers(100, 104, size=K),
        models=np.zeros(K, dtype=np.int64),
        left=np.zeros(K, dtype=np.bool_),
    )


@pytest.mark.parametrize("mask", [None, 0, 1, 7])
def test_top_routes_kernel_is_the_numpy_grouping(monkeypatch: pytest.MonkeyPatch, mask: int | None) -> None:
    """The compiled kernel on the predictor's samples, and the plain one with the hash cut to
    ``mask`` (0: every route collides with every other), on repeating routes."""
    rng = np.random.default_rng(13)
    cases = [_repeating_samples(rng, int(rng.integers(1, 90))) for _ in range(25)]
    cases += [p.samples for p in _predictions(grid_city(9), n_routes=64)]
    kernel = prediction._top_routes_kernel
    if mask is not None:  # (after the predictions: the compiled kernel keeps the true mask)
        monkeypatch.setattr(prediction, "_HASH_MASK", mask)
        kernel = _plain(kernel)
    for s in cases:
        for top_k in (1, 3, 5):
            reps, dests, weights = kernel(s.nodes, s.weights, s.destinations, top_k)
            want = _reference_top(s, top_k)
            assert list(zip(reps.tolist(), dests.tolist(), weights.tolist(), strict=True)) == want


def test_away_from_origin_is_numpys_hypot() -> None:
    city = grid_city(9, spacing_m=73.1)
    rng = np.random.default_rng(4)
    xy = np.vstack([city.graph.node_xy, rng.normal(0.0, 3e4, size=(500, 2))])
    for origin in (0, 40, 80, xy.shape[0] - 1):
        want = (np.hypot(*(xy - xy[origin]).T) / 100.0).astype(np.float32)
        for kernel in (prediction._away_hm_kernel, _plain(prediction._away_hm_kernel)):
            got = kernel(xy, origin)
            assert got.dtype == np.float32 and np.array_equal(got, want)


# --------------------------------------------------------------------------------------------
# Sampling and the routes' ends
# --------------------------------------------------------------------------------------------


def test_draw_is_generator_choice_draw_for_draw() -> None:
    """The same indices (and dtype) as ``Generator.choice`` and the generator in the same state
    after, for probabilities with zeros and sizes down to 0; invalid probabilities raise."""
    src = np.random.default_rng(17)
    for trial in range(400):
        n = int(src.integers(1, 60))
        p = src.random(n) ** 3
        if trial % 4 == 0:
            p[src.random(n) < 0.4] = 0.0
            p[int(src.integers(0, n))] = 1.0
        p = p / p.sum()
        size = int(src.integers(0, 300))
        seed = int(src.integers(0, 2**62))
        want_rng, got_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        want = want_rng.choice(n, size=size, p=p)
        got = prediction._draw(got_rng, p, size)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert got_rng.bit_generator.state == want_rng.bit_generator.state
    for bad in ([0.5, 0.6], [1.5, -0.5], [np.nan, 1.0]):
        with pytest.raises(ValueError):
            prediction._draw(np.random.default_rng(0), np.array(bad), 3)


def test_left_map_is_the_numpy_definition() -> None:
    for p in _predictions(grid_city(9)) + _predictions(t_city()):
        s = p.samples
        K = s.n_routes
        last = s.lengths - 1
        last_node = s.nodes[np.arange(K), last]
        rng = np.random.default_rng(K)
        dest_is_exit = rng.random(K) < 0.5
        any_exit = rng.random(K) < 0.5
        exit_node = rng.random(int(s.nodes.max()) + 1) < 0.3
        exit_node[s.destinations[s.destinations < exit_node.size]] = True
        want = ((last_node == s.destinations) & dest_is_exit | any_exit & exit_node[last_node]) & (
            s.times_s[np.arange(K), last] <= p.horizon_s
        )
        for kernel in (prediction._left_map, _plain(prediction._left_map)):
            got = kernel(
                s.nodes, s.times_s, s.lengths, s.destinations, dest_is_exit, any_exit, exit_node, p.horizon_s
            )
            assert got.dtype == np.bool_ and np.array_equal(got, want)
        assert want.any() and not want.all()
