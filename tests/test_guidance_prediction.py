"""Escape-route prediction on tiny hand-drawn graphs and a small grid."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from guidance.geojson import belief_geojson, prediction_geojson
from guidance.models import MODELS, DestinationKind
from guidance.prediction import EscapePredictor, PredictorConfig
from guidance.testing import PointBelief, Position, edge, grid_city, t_city
from guidance.types import GuidanceError
from map_data.network_types import City
from tracking.behaviour import BranchContext

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# The T-junction (guidance.testing.t_city): the suspect comes up from S; L and R are exits.
#
#   L(0) ------------ J(1) ------------ R(2)
#   primary            |           residential
#                      |
#                     S(3)


def exits_only() -> PredictorConfig:
    return PredictorConfig(kind_prior={DestinationKind.exit: 1.0})


@pytest.fixture(scope="module")
def tee() -> tuple[City, EscapePredictor]:
    city = t_city()
    g = city.graph
    exits = np.array([g.node_index[0], g.node_index[2]])
    return city, EscapePredictor(city, config=exits_only(), exits=exits)


def test_same_belief_same_samples_and_seed_from_inputs(tee: tuple[City, EscapePredictor]) -> None:
    city, pred = tee
    b = PointBelief("inc-1", T0, (Position(edge(city, 3, 1), 50.0, 1.0),), city.graph.node_index[3])
    a1, a2 = pred.predict(b), pred.predict(b)
    assert a1.seed == a2.seed
    assert np.array_equal(a1.samples.nodes, a2.samples.nodes)
    assert np.array_equal(a1.suspect_likely_eta_s, a2.suspect_likely_eta_s)
    other = pred.predict(PointBelief("inc-2", T0, b.positions, b.origin_node))
    assert other.seed != a1.seed


def test_t_junction_statistics(tee: tuple[City, EscapePredictor]) -> None:
    city, pred = tee
    g = city.graph
    J, L, R = g.node_index[1], g.node_index[0], g.node_index[2]
    b = PointBelief("inc-1", T0, (Position(edge(city, 3, 1), 0.0, 1.0),), g.node_index[3])
    p = pred.predict(b, horizon_s=120.0, step_s=10.0)
    assert p.pass_probability[J] == pytest.approx(1.0)
    assert p.pass_probability[L] + p.pass_probability[R] == pytest.approx(1.0)
    assert np.all(p.suspect_earliest_eta_s <= p.suspect_likely_eta_s)
    assert np.all(p.suspect_earliest_eta_s >= p.suspect_bound_eta_s - 1e-9)
    # 300 m at 50 km/h × about 1.3-1.5: between 14 and 20 s.
    assert 12.0 < p.suspect_likely_eta_s[J] < 20.0
    assert p.horizons_s[0] == 10.0 and p.horizons_s[-1] == 120.0
    for h in p.horizons:
        assert h.probabilities.sum() + h.left_probability == pytest.approx(1.0)
    # Exits are 600 m from J: nearly everything has left the map by two minutes.
    assert p.horizon(120.0).left_probability > 0.95
    kinds = {r.destination_kind for r in p.routes}
    assert kinds == {"exit"} and sum(r.probability for r in p.routes) == pytest.approx(1.0)
    for r in p.routes:
        assert list(r.eta_s) == sorted(r.eta_s) and len(r.nodes) == len(r.edges)


def test_sightings_move_the_destination_weights(tee: tuple[City, EscapePredictor]) -> None:
    city, pred = tee
    g = city.graph
    L = g.node_index[0]
    # Seen past the junction, heading toward L: the L exit dominates.
    b = PointBelief("inc-1", T0, (Position(edge(city, 1, 0), 100.0, 1.0),), g.node_index[3], n_sightings=2)
    p = pred.predict(b, horizon_s=120.0)
    assert p.pass_probability[L] == pytest.approx(1.0)
    assert p.routes[0].destination == L and p.routes[0].probability > 0.9


def test_uncertain_position_spreads_the_prediction(tee: tuple[City, EscapePredictor]) -> None:
    city, pred = tee
    g = city.graph
    b = PointBelief(
        "inc-1",
        T0,
        (Position(edge(city, 1, 0), 10.0, 0.5), Position(edge(city, 1, 2), 10.0, 0.5)),
        g.node_index[3],
    )
    p = pred.predict(b, horizon_s=60.0)
    assert 0.3 < p.pass_probability[g.node_index[0]] < 0.7
    assert 0.3 < p.pass_probability[g.node_index[2]] < 0.7


def test_fleeing_drivers_head_out_rather_than_wander() -> None:
    city = grid_city(15)
    g = city.graph
    centre = 7 * 15 + 7
    pred = EscapePredictor(city, config=exits_only())
    b = PointBelief("inc-g", T0, (Position(int(g.out_of(centre)[0]), 0.0, 1.0),), centre)
    p = pred.predict(b, horizon_s=600.0)
    # 700 m to the nearest edge of the map: goal-directed drivers are out within ten minutes.
    assert p.horizon(600.0).left_probability > 0.8
    # and they got away from the incident: at one minute, most mass is 300 m or more from it.
    h = p.horizon(60.0)
    heads = g.edge_v[h.edges]
    far = np.hypot(*(g.node_xy[heads] - g.node_xy[centre]).T) >= 300.0
    assert h.probabilities[far].sum() > 0.5 * (1.0 - h.left_probability)


def test_models_follow_the_branch_model_protocol() -> None:
    city = t_city()
    g = city.graph
    in_edge = edge(city, 3, 1)
    outs = g.out_of(g.node_index[1])
    for model in MODELS.values():
        probs = model.branch_probabilities(g, in_edge, outs, BranchContext())
        assert probs.shape == outs.shape and probs.sum() == pytest.approx(1.0)
        uturn = int(np.flatnonzero(g.edge_v[outs] == g.node_index[3])[0])
        assert probs[uturn] == probs.min()
    main = MODELS["main_roads"].branch_probabilities(g, in_edge, outs, BranchContext())
    to_l = int(np.flatnonzero(g.edge_v[outs] == g.node_index[0])[0])
    to_r = int(np.flatnonzero(g.edge_v[outs] == g.node_index[2])[0])
    assert main[to_l] > main[to_r]  # primary beats residential


def test_bad_inputs_are_named(tee: tuple[City, EscapePredictor]) -> None:
    city, pred = tee
    with pytest.raises(GuidanceError, match="timezone-aware"):
        pred.predict(PointBelief("i", datetime(2026, 1, 1), (Position(0, 0.0, 1.0),), 0))  # noqa: DTZ001
    with pytest.raises(GuidanceError, match="edge 999"):
        pred.predict(PointBelief("i", T0, (Position(999, 0.0, 1.0),), 0))
    with pytest.raises(GuidanceError, match="no position"):
        pred.predict(PointBelief("i", T0, (), 0))
    with pytest.raises(GuidanceError, match="unknown models"):
        EscapePredictor(city, config=PredictorConfig(model_weights={"drunk": 1.0}))
    with pytest.raises(GuidanceError, match="top_k"):
        PredictorConfig(top_k=-1)


def test_geojson_is_rfc7946(tee: tuple[City, EscapePredictor]) -> None:
    city, pred = tee
    b = PointBelief("inc-1", T0, (Position(edge(city, 3, 1), 0.0, 1.0),), city.graph.node_index[3])
    p = pred.predict(b, horizon_s=60.0)
    gj = prediction_geojson(p, city.graph)
    json.dumps(gj)
    assert gj["type"] == "FeatureCollection" and "crs" not in gj
    assert gj["model_version"] == p.model_version and gj["incident_id"] == "inc-1"
    kinds = {f["properties"]["kind"] for f in gj["features"]}
    assert kinds == {"crossing", "route", "position"}
    for f in gj["features"]:
        props = f["properties"]
        assert 0 < props["probability"] <= 1
        if props["kind"] == "crossing":
            assert props["earliest_eta_s"] <= props["likely_eta_s"]
        coords = f["geometry"]["coordinates"]
        pts = [coords] if f["geometry"]["type"] == "Point" else coords
        for lon, lat in pts:
            assert 6.0 < lon < 6.4 and 49.0 < lat < 49.2  # Metz, lon first
        if props["kind"] == "position":
            assert props["time_s"] in (60.0,)
    bj = belief_geojson(b, city.graph)
    (feat,) = bj["features"]
    lon, lat = feat["geometry"]["coordinates"]
    s_lon, s_lat = city.graph.node_lonlat[city.graph.node_index[3]]
    assert lon == pytest.approx(s_lon, abs=1e-6) and lat == pytest.approx(s_lat, abs=1e-6)


def test_position_spread_marginalises_speed() -> None:
    from guidance.positions import position_distribution
    from guidance.types import RouteSamples

    # One route: edges 10, 11, 12 entered at 0, reaching their heads at 10, 20, 30 s; then it exits.
    samples = RouteSamples(
        nodes=np.array([[1, 2, 3]]),
        edges=np.array([[10, 11, 12]]),
        times_s=np.array([[10.0, 20.0, 30.0]]),
        lengths=np.array([3]),
        weights=np.array([1.0]),
        destinations=np.array([3]),
        models=np.array([0]),
        left=np.array([True]),
    )
    exact = position_distribution(samples, 15.0, spread=0.0)
    assert exact.edges.tolist() == [11] and exact.probabilities.tolist() == [1.0]
    spread = position_distribution(samples, 20.0, spread=0.25)  # window 15..25 s
    assert dict(zip(spread.edges.tolist(), spread.probabilities.tolist(), strict=True)) == pytest.approx(
        {11: 0.5, 12: 0.5}
    )
    late = position_distribution(samples, 32.0, spread=0.25)  # window 24..40 s: 6 s on 12, 10 s out
    assert late.left_probability == pytest.approx(10.0 / 16.0)
    assert late.probabilities.sum() + late.left_probability == pytest.approx(1.0)


@pytest.mark.parametrize("horizon_s", [45.0, 600.0])
def test_each_route_walks_until_its_horizon_or_destination_and_no_further(horizon_s: float) -> None:
    """The walk checks for the end of the routes only every few crossings: each sampled route
    must still follow the street graph, have growing times, and stop exactly at its first
    crossing at or past the horizon, or at its destination, or (a model with ``any_exit``, as
    ``cruise``) at an exit of the map, whichever comes first."""
    city = grid_city(15)
    g = city.graph
    pred = EscapePredictor(city)
    exits = set(pred.destinations.nodes[pred.destinations.is_exit].tolist())
    centre = 7 * 15 + 7
    b = PointBelief("inc-w", T0, (Position(int(g.out_of(centre)[0]), 20.0, 1.0),), centre)
    s = pred.predict(b, horizon_s=horizon_s).samples
    ended_at_destination = ended_at_other_exit = 0
    for k in range(s.lengths.size):
        n = int(s.lengths[k])
        edges, nodes, times = s.edges[k, :n], s.nodes[k, :n], s.times_s[k, :n]
        any_exit = MODELS[pred.model_names[int(s.models[k])]].any_exit
        assert np.all(s.edges[k, n:] == -1) and np.all(np.isinf(s.times_s[k, n:]))
        assert np.array_equal(g.edge_v[edges], nodes)
        assert np.array_equal(g.edge_u[edges[1:]], nodes[:-1])  # each step leaves the last crossing
        assert np.all(np.diff(times) > 0)
        # Walking until the last step: before it, neither the horizon nor the destination (nor,
        # with ``any_exit``, an exit).
        assert np.all(times[:-1] < horizon_s)
        assert not np.any(nodes[:-1] == s.destinations[k])
        assert not (any_exit and exits.intersection(nodes[:-1].tolist()))
        reached = nodes[-1] == s.destinations[k]
        out = any_exit and int(nodes[-1]) in exits
        assert reached or out or times[-1] >= horizon_s
        left = ((reached and int(nodes[-1]) in exits) or out) and times[-1] <= horizon_s
        assert bool(s.left[k]) == bool(left)
        ended_at_destination += bool(reached)
        ended_at_other_exit += bool(out and not reached)
    if horizon_s == 600.0:
        assert ended_at_destination > 0 and ended_at_other_exit > 0
    else:
        assert s.lengths.max() > 1 and np.all(s.times_s[:, 0] < horizon_s)
