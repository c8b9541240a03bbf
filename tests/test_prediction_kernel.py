"""The predictor's compiled kernels: the walk samples the softmax of the scores, its compiled and
plain-Python runs agree draw for draw, and the statistics kernels give the numpy definitions'
values exactly."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

import guidance.prediction as prediction
from guidance.prediction import EscapePredictor, PredictorConfig, first_arrivals
from guidance.testing import PointBelief, Position, edge, grid_city, t_city
from guidance.types import RouteSamples

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WALK = prediction._walk_routes  # (the tests below wrap the module's)


def _plain(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """The kernel's plain-Python function (itself under ``CORDON_NO_JIT=1``)."""
    return getattr(kernel, "py_func", kernel)


def _capture_walks(
    monkeypatch: pytest.MonkeyPatch, pred: EscapePredictor, beliefs: list[PointBelief]
) -> list[tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...], dict[str, Any]]]:
    """Run ``pred.predict`` on each belief, recording each walk's arguments, the generator's
    state before it, the walk's result and the state after it."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...], dict[str, Any]]] = []

    def recording(*args: Any) -> Any:
        rng = args[-1]
        before = rng.bit_generator.state
        out = WALK(*args)
        calls.append((args[:-1], before, out, rng.bit_generator.state))
        return out

    monkeypatch.setattr(prediction, "_walk_routes", recording)
    for b in beliefs:
        pred.predict(b, horizon_s=300.0)
    return calls


def _rng_at(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng(0)
    rng.bit_generator.state = state
    return rng


def test_walk_compiled_and_plain_python_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same walks, step for step, and the same draws (the generator ends in the same state)."""
    city = grid_city(9)
    g = city.graph
    pred = EscapePredictor(city, config=PredictorConfig(n_routes=64))
    centre = 4 * 9 + 4
    beliefs = [
        PointBelief(
            f"inc-{i}",
            T0,
            (Position(int(np.flatnonzero(g.edge_v == centre)[i % 4]), 20.0, 1.0),),
            centre,
        )
        for i in range(3)
    ]
    calls = _capture_walks(monkeypatch, pred, beliefs)
    assert len(calls) == 3
    plain = _plain(WALK)
    for args, before, out, after in calls:
        rng = _rng_at(before)
        again = plain(*args, rng)
        assert rng.bit_generator.state == after
        for a, b in zip(out, again, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        _nodes, _edges, times, lengths = out
        assert lengths.max() > 3  # the routes walked
        for k in range(lengths.size):  # times grow along each route, padded with inf
            assert np.all(np.diff(times[k, : lengths[k]]) > 0) and np.all(np.isinf(times[k, lengths[k] :]))


def test_walk_samples_the_softmax_of_the_scores() -> None:
    """One crossing with three dead-end successors of scores 0, -1 and -2 s at a temperature of
    1 s: the successors are taken in the proportions e^0 : e^-1 : e^-2."""
    K = 20_000
    # Edge 0 runs 0 -> 1; edges 1, 2, 3 leave node 1 for nodes 2, 3, 4 (dead ends).
    edge_v = np.array([1, 2, 3, 4], dtype=np.int64)
    succ = np.array([[1, 2, 3], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=np.int64)
    n_succ = np.array([3, 0, 0, 0], dtype=np.int64)
    succ_head = edge_v[succ]
    # The walk's table: per edge, its number of successors, the successors, their heads.
    succ_table = np.column_stack([n_succ, succ, succ_head]).astype(np.int32)
    static_time = np.array([[0.0, -1.0, -2.0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    args = (
        np.zeros(K, dtype=np.int64),  # every route on edge 0
        np.zeros(K),  # at its end
        np.ones(K),
        np.zeros(K, dtype=np.int64),  # model 0
        np.zeros(K, dtype=np.int64),  # destination 0 (node 0: never reached)
        np.zeros(K, dtype=np.int64),
        np.zeros(K, dtype=np.bool_),
        succ_table,
        static_time,
        np.zeros(1, dtype=np.float32),
        np.zeros(5, dtype=np.float32),
        np.zeros(5, dtype=np.float32),  # times to the destination: all equal
        np.ones(1),  # temperature 1 s
        np.full(4, 10.0),
        edge_v,
        np.zeros(5, dtype=np.bool_),
        600.0,
        10,
    )
    _nodes, edges, times, lengths = prediction._walk_routes(*args, np.random.default_rng(1))
    assert np.all(lengths == 2) and np.all(edges[:, 0] == 0) and np.all(times[:, 1] == 10.0)
    freq = np.bincount(edges[:, 1], minlength=4)[1:] / K
    want = np.exp([0.0, -1.0, -2.0])
    want /= want.sum()
    assert np.all(np.abs(freq - want) < 4 * np.sqrt(want * (1 - want) / K))
    plain = _plain(prediction._walk_routes)(*args, np.random.default_rng(1))
    assert np.array_equal(plain[1], edges)


def _reference_first_arrivals(samples: RouteSamples, horizon_s: float) -> tuple[Any, Any, Any]:
    """The numpy definition (escape-mixture/4)."""
    K, S = samples.nodes.shape
    valid = (samples.nodes >= 0) & (samples.times_s <= horizon_s)
    rows = np.broadcast_to(np.arange(K)[:, None], (K, S))[valid]
    nodes = samples.nodes[valid]
    times = samples.times_s[valid]
    key = rows * (int(nodes.max(initial=0)) + 1) + nodes
    _, first = np.unique(key, return_index=True)
    return rows[first], nodes[first], times[first]


def _reference_arrival_times(
    n_nodes: int, horizon_s: float, nodes: Any, times: Any, w: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The numpy definition (escape-mixture/4) of the earliest and median arrivals."""
    earliest = np.full(n_nodes, np.inf)
    likely = np.full(n_nodes, np.inf)
    if nodes.size:
        order = np.argsort(nodes + times / (horizon_s + 1.0))
        n_s, t_s, w_s = nodes[order], times[order], w[order]
        starts = np.flatnonzero(np.r_[True, n_s[1:] != n_s[:-1]])
        earliest[n_s[starts]] = t_s[starts]
        cum = np.cumsum(w_s)
        before = np.r_[0.0, cum][starts]
        ends = np.r_[starts[1:], n_s.size]
        target = before + 0.5 * (cum[ends - 1] - before)
        med = np.searchsorted(cum, target - 1e-12)
        likely[n_s[starts]] = t_s[np.minimum(med, ends - 1)]
    return earliest, likely


@pytest.mark.parametrize("city_name", ["tee", "grid"])
def test_statistics_kernels_match_their_numpy_definitions(city_name: str) -> None:
    city = t_city() if city_name == "tee" else grid_city(9)
    g = city.graph
    pred = EscapePredictor(city, config=PredictorConfig(n_routes=128))
    e = edge(city, 3, 1) if city_name == "tee" else int(np.flatnonzero(g.edge_v == 40)[0])
    for i, horizon_s in enumerate((60.0, 300.0)):
        p = pred.predict(
            PointBelief(f"s-{i}", T0, (Position(e, 10.0, 1.0),), int(g.edge_u[e])), horizon_s=horizon_s
        )
        got = first_arrivals(p.samples, horizon_s)
        want = _reference_first_arrivals(p.samples, horizon_s)
        assert got[0].size > p.samples.n_routes
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b)
        plain = _plain(prediction._first_arrivals_kernel)(
            p.samples.nodes, p.samples.times_s, horizon_s, g.n_nodes
        )
        for a, b in zip(plain, want, strict=True):
            assert np.array_equal(a, b)
        rows, nodes, times = got
        # Unequal weights too (the kernels take any weights).
        for w in (p.samples.weights[rows], np.random.default_rng(i).random(rows.size)):
            want_e, want_l = _reference_arrival_times(g.n_nodes, horizon_s, nodes, times, w)
            for kernel in (prediction._arrival_times_kernel, _plain(prediction._arrival_times_kernel)):
                got_e, got_l = kernel(nodes, times, w, g.n_nodes)
                assert np.array_equal(got_e, want_e) and np.array_equal(got_l, want_l)
        assert np.all(p.suspect_likely_eta_s >= p.suspect_earliest_eta_s)


def test_same_belief_same_prediction() -> None:
    city = grid_city(9)
    g = city.graph
    e = int(np.flatnonzero(g.edge_v == 40)[0])
    b = PointBelief("inc-d", T0, (Position(e, 30.0, 0.6), Position(e, 60.0, 0.4)), int(g.edge_u[e]), 2, 9.0)
    kept = EscapePredictor(city)
    a1 = kept.predict(b)
    kept.predict(PointBelief("other", T0, b.positions, 0))  # another origin in between
    a2 = kept.predict(b)
    a3 = EscapePredictor(city).predict(b)
    for p in (a2, a3):
        assert p.seed == a1.seed
        for name in ("nodes", "edges", "times_s", "lengths", "destinations", "models", "left"):
            assert np.array_equal(getattr(p.samples, name), getattr(a1.samples, name))
        assert np.array_equal(p.pass_probability, a1.pass_probability)
        assert np.array_equal(p.suspect_likely_eta_s, a1.suspect_likely_eta_s)
        assert p.routes == a1.routes
