"""The predictor's mixture (the ``cruise`` mode) and the exactness of its fast paths."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from guidance.models import DEFAULT_MODEL_WEIGHTS, MODELS
from guidance.prediction import PREDICTOR_VERSION, EscapePredictor, PredictorConfig, _top_routes
from guidance.testing import PointBelief, Position, grid_city
from guidance.types import EscapePrediction, EscapeRoute, RouteSamples
from map_data.types import CompiledGraph

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIDE = 15
CENTRE = 7 * SIDE + 7


def _reference_top_routes(samples: RouteSamples, top_k: int) -> list[tuple[int, float, tuple[int, ...]]]:
    """The plain-Python definition: destinations by total weight (ties: lower node), and in
    each the route of largest total weight (ties: drawn first)."""
    group_w: dict[int, float] = {}
    for k, d in enumerate(samples.destinations.tolist()):
        group_w[d] = group_w.get(d, 0.0) + float(samples.weights[k])
    total = float(samples.weights.sum())
    out = []
    for d in sorted(group_w, key=lambda d: (-group_w[d], d))[:top_k]:
        counts: dict[tuple[int, ...], tuple[float, int]] = {}
        for k in np.flatnonzero(samples.destinations == d).tolist():
            key = tuple(samples.nodes[k, : samples.lengths[k]].tolist())
            w, first = counts.get(key, (0.0, k))
            counts[key] = (w + float(samples.weights[k]), first)
        route, _ = max(counts.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
        out.append((d, group_w[d] / total, route))
    return out


def _samples(rng: np.random.Generator, weights: np.ndarray) -> RouteSamples:
    """Routes drawn from a few templates (so that many repeat, some as prefixes of others)."""
    K = weights.size
    templates = [rng.integers(0, 50, size=int(rng.integers(1, 9))) for _ in range(6)]
    lengths = np.zeros(K, dtype=np.int64)
    width = max(t.size for t in templates)
    nodes = np.full((K, width), -1, dtype=np.int64)
    for k in range(K):
        t = templates[int(rng.integers(0, len(templates)))]
        n = int(rng.integers(1, t.size + 1))  # a prefix: routes of different lengths share nodes
        nodes[k, :n] = t[:n]
        lengths[k] = n
    times = np.where(nodes >= 0, np.cumsum(np.ones_like(nodes, dtype=np.float64), axis=1), np.inf)
    return RouteSamples(
        nodes=nodes,
        edges=np.where(nodes >= 0, nodes + 1000, -1),
        times_s=times,
        lengths=lengths,
        weights=weights,
        destinations=rng.integers(100, 106, size=K),
        models=np.zeros(K, dtype=np.int64),
        left=np.zeros(K, dtype=bool),
    )


def test_top_routes_are_the_heaviest_destinations_most_frequent_routes() -> None:
    rng = np.random.default_rng(7)
    for trial in range(40):
        K = int(rng.integers(1, 80))
        # Even weights (many ties, as the predictor's) and uneven ones.
        weights = np.full(K, 1.0 / K) if trial % 2 else rng.random(K) + 0.01
        samples = _samples(rng, weights)
        got = _top_routes(samples, {}, 4)
        want = _reference_top_routes(samples, 4)
        assert [(r.destination, r.probability, r.nodes) for r in got] == want
        for r in got:
            assert isinstance(r, EscapeRoute) and len(r.edges) == len(r.nodes) == len(r.eta_s)
            assert r.edges == tuple(x + 1000 for x in r.nodes)


def _belief(g: CompiledGraph, incident: str, node: int) -> PointBelief:
    return PointBelief(incident, T0, (Position(int(g.out_of(node)[0]), 0.0, 1.0),), node)


def test_score_tables_kept_per_origin_give_the_same_prediction() -> None:
    city = grid_city(SIDE)
    g = city.graph
    corner = 2 * SIDE + 2
    kept = EscapePredictor(city)
    first = kept.predict(_belief(g, "a", CENTRE))
    kept.predict(_belief(g, "b", corner))  # another origin in between
    again = kept.predict(_belief(g, "a", CENTRE))
    fresh = EscapePredictor(city).predict(_belief(g, "a", CENTRE))
    for p in (again, fresh):
        assert np.array_equal(p.samples.nodes, first.samples.nodes)
        assert np.array_equal(p.samples.times_s, first.samples.times_s)
        assert p.routes == first.routes


def test_cruise_wanders_on_main_roads_where_goal_directed_drivers_leave() -> None:
    """The ``cruise`` mode has no destination in mind: its routes seldom end at the destination
    they drew (they walk to the horizon or leave by whatever exit they happen on) and, at two
    minutes, fewer have left town than the goal-directed drivers'. At a crossing it prefers the
    primary roads and does not turn round."""
    city = grid_city(SIDE)
    g = city.graph
    exits = np.array([7, 14 * SIDE + 7, 7 * SIDE, 7 * SIDE + 14])  # the middle of each side
    b = _belief(g, "c", CENTRE)

    def predict(weights: dict[str, float]) -> EscapePrediction:
        # 1024 routes: the shares compared below are then a few standard deviations apart.
        config = PredictorConfig(model_weights=weights, n_routes=1024)
        return EscapePredictor(city, config=config, exits=exits).predict(b)

    cruise, goal = predict({"cruise": 1.0}), predict({"main_roads": 1.0})

    def at_own_destination(samples: RouteSamples) -> float:
        last = samples.nodes[np.arange(samples.n_routes), samples.lengths - 1]
        return float(np.mean(last == samples.destinations))

    assert at_own_destination(cruise.samples) < 0.4 < 0.9 < at_own_destination(goal.samples)
    # (About 0.30 against 0.58 over many seeds, the same before and after escape-mixture/5.)
    assert cruise.horizon(120.0).left_probability < 0.6 * goal.horizon(120.0).left_probability
    # At a crossing: straight on along a primary road is likeliest and a U-turn the rarest;
    # coming along a residential street to a primary road, turning onto it beats going on.
    from tracking.behaviour import BranchContext

    def choice(came_from: int, at: int) -> dict[int, float]:
        in_edge = int(np.flatnonzero((g.edge_u == came_from) & (g.edge_v == at))[0])
        outs = g.out_of(at)
        probs = MODELS["cruise"].branch_probabilities(g, in_edge, outs, BranchContext())
        return dict(zip(g.edge_v[outs].tolist(), probs.tolist(), strict=True))

    corner = 5 * SIDE + 5  # row 5 and column 5 are primary
    p = choice(corner - 1, corner)
    assert max(p, key=p.__getitem__) == corner + 1 and min(p, key=p.__getitem__) == corner - 1
    side = 7 * SIDE + 10  # residential row 7 meets primary column 10
    p = choice(side - 1, side)
    assert p[side - SIDE] > p[side + 1] and p[side + SIDE] > p[side + 1]


def test_default_mixture_includes_cruise_and_names_it_in_the_version() -> None:
    assert DEFAULT_MODEL_WEIGHTS.get("cruise", 0.0) > 0.0
    pred = EscapePredictor(grid_city(5))
    assert pred.model_version.startswith(PREDICTOR_VERSION + ":")
    assert "cruise=" in pred.model_version
