"""Shared per-city tables and the fast paths of the tracker give exactly the numbers of the
plain ones (bit for bit, not approximately)."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from test_tracking_helpers import T0

from map_data.cameras import build_camera_network, metz_density, place_synthetic_cameras
from map_data.compile import compile_graph
from map_data.graph import graph_from_xml
from map_data.network_types import City
from map_data.routing import path_edges, shortest_path
from map_data.types import EdgePosition
from tracking.behaviour import BranchContext, RoadBehaviour, RoadBranchParts
from tracking.config import TrackerConfig
from tracking.hypotheses import BranchPriors, Context, _moment_match, _moment_match_one
from tracking.roads import RoadIndex
from tracking.tracker import Tracker, Tracks
from tracking.types import Sighting, SourceKind


@pytest.fixture(scope="module")
def monaco(shared_maps: Path) -> City:
    graph = compile_graph(graph_from_xml(shared_maps / "monaco.osm.bz2"))
    cameras = place_synthetic_cameras(graph, metz_density(graph), seed=3)
    return City(graph=graph, cameras=build_camera_network(graph, cameras, strict=False))


def _drives(city: City, n: int, seed: int) -> list[list[tuple[float, str]]]:
    """Camera passes ``(time s, camera)`` of ``n`` drives at 13 m/s between random crossings."""
    g = city.graph
    rng = np.random.default_rng(seed)
    out: list[list[tuple[float, str]]] = []
    while len(out) < n:
        a, b = (int(v) for v in rng.choice(g.n_nodes, 2, replace=False))
        try:
            edges = path_edges(g, shortest_path(g, a, b))
        except ValueError:
            continue
        passes: list[tuple[float, str]] = []
        t = float(rng.uniform(0.0, 30.0))
        for e in edges:
            for cid, s, end in sorted(city.cameras.on_edge.get(e, ()), key=lambda v: v[1]):
                if not passes or passes[-1][1] != cid:
                    passes.append((t + 0.5 * (s + end) / 13.0, cid))
            t += float(g.edge_length_m[e]) / 13.0
        if len(passes) >= 4:
            out.append(passes)
    return out


def test_shared_tables_give_the_beliefs_of_fresh_trackers(monaco: City) -> None:
    """Incidents of one :class:`Tracks` (shared road index and branch priors, some with an
    origin, some without) against one fresh :class:`Tracker` each, sighting by sighting."""
    g = monaco.graph
    tracks = Tracks(monaco)
    fresh: dict[str, Tracker] = {}
    events: list[tuple[float, str, str, int]] = []
    for j, passes in enumerate(_drives(monaco, 6, seed=11)):
        incident = f"inc-{j}"
        origin = EdgePosition(int(j * 37 % g.n_edges), 5.0) if j % 2 else None
        tracks.open(incident, T0, origin)
        fresh[incident] = Tracker(monaco, incident_id=incident, opened_at=T0, origin=origin)
        events.extend((t, incident, cid, k) for k, (t, cid) in enumerate(passes[::2]))
    events.sort()
    compared = 0
    for t, incident, cid, k in events:
        s = Sighting(
            incident_id=incident,
            camera_id=cid,
            observed_at=T0 + timedelta(seconds=round(t, 3)),
            source_kind=SourceKind.simulation,
            source_event_id=f"{incident}-{k}",
        )
        assert tracks.update(s) == fresh[incident].update(s)
        for later in (0.0, 30.0):
            at = s.observed_at + timedelta(seconds=later)
            assert tracks.belief(incident, at) == fresh[incident].belief(at)
            compared += 1
    assert compared >= 40
    # The incidents opened without a position share one set of branch priors.
    ctx = [tracks.tracker(f"inc-{j}")._ctx for j in range(6)]
    assert ctx[0].priors is ctx[2].priors is ctx[4].priors
    assert ctx[1].priors is not ctx[3].priors


def test_branch_parts_shared_between_contexts_are_exact(monaco: City) -> None:
    g = monaco.graph
    model = RoadBehaviour()
    parts = RoadBranchParts(model, g)
    contexts = [BranchContext()] + [
        BranchContext(origin_xy=(float(g.node_xy[n, 0]), float(g.node_xy[n, 1]))) for n in (0, 17, 400)
    ]
    for ctx in contexts + contexts[::-1]:  # reused parts, any order
        ptr, probs = parts.table(ctx)
        ptr_f, probs_f = RoadBranchParts(model, g).table(ctx)
        assert np.array_equal(ptr, ptr_f)
        assert np.array_equal(probs, probs_f)
        for e in (0, 5, g.n_edges - 1):
            outs = g.out_of(int(g.edge_v[e]))
            np.testing.assert_allclose(
                probs[ptr[e] : ptr[e + 1]], model.branch_probabilities(g, e, outs, ctx), rtol=1e-9
            )


def test_priors_for_another_context_are_refused(monaco: City) -> None:
    roads = RoadIndex(monaco.graph, monaco.cameras)
    model = RoadBehaviour()
    config = TrackerConfig()
    priors = BranchPriors(roads, model, BranchContext(), config.min_branch_probability)
    with pytest.raises(ValueError, match="another"):
        Context(roads, model, BranchContext(origin_xy=(0.0, 0.0)), config, priors)
    with pytest.raises(ValueError, match="another"):
        Context(roads, RoadBehaviour(turn_weight=1.0), BranchContext(), config, priors)
    assert Context(roads, RoadBehaviour(), BranchContext(), config, priors).priors is priors


def test_batched_moment_matching_is_the_per_cluster_one_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(20, 140))
        eff = rng.normal(size=n) * 4.0
        x = np.column_stack([rng.uniform(0, 500, n), rng.uniform(0, 30, n)])
        a = rng.normal(size=(n, 2, 2))
        P = a @ np.swapaxes(a, 1, 2) + 1e-3
        s_rel = x[:, 0] - rng.uniform(0, 400, n)
        order = rng.permutation(n).tolist()
        clusters: list[list[int]] = []
        while order:
            size = int(rng.integers(2, 14))
            if len(order) < size:
                break
            clusters.append(order[:size])
            order = order[size:]
        base = rng.uniform(0, 800, len(clusters)).tolist()
        means, covs = _moment_match(eff, x, P, s_rel, clusters, base)
        for k, cl in enumerate(clusters):
            mean, cov = _moment_match_one(eff, x, P, s_rel, cl, base[k])
            assert np.array_equal(means[k], mean)
            assert np.array_equal(covs[k], cov)


def _road_distance_reference(tracker: Tracker, a: str, b: str, limit_m: float | None) -> float:
    """The one-Dijkstra road distance (before the bounded first search)."""
    if a == b:
        return 0.0
    roads = tracker.roads
    src = tracker.city.cameras.view(a).spans
    dst = tracker.city.cameras.view(b).spans
    best = math.inf
    for s in src:
        for d in dst:
            if s.edge == d.edge and d.start_m + d.end_m >= s.start_m + s.end_m:
                best = min(best, 0.5 * (d.start_m + d.end_m - s.start_m - s.end_m))
    if limit_m is not None and limit_m <= 0:
        return best
    heads = sorted({roads.edge_v[s.edge] for s in src})
    dist = roads.directed_lengths_from(heads, limit_m=limit_m)
    row = {h: k for k, h in enumerate(heads)}
    for s in src:
        rem = roads.edge_len[s.edge] - 0.5 * (s.start_m + s.end_m)
        for d in dst:
            total = rem + float(dist[row[roads.edge_v[s.edge]]][roads.edge_u[d.edge]])
            best = min(best, total + 0.5 * (d.start_m + d.end_m))
    if limit_m is not None and best > limit_m:
        return math.inf
    return best


def test_road_distance_is_the_one_search_distance(monaco: City) -> None:
    tracker = Tracker(monaco)
    cams = sorted(cid for cid, view in monaco.cameras.views.items() if view.spans)
    rng = np.random.default_rng(2)
    finite = infinite = 0
    for _ in range(150):
        a, b = (cams[int(i)] for i in rng.choice(len(cams), 2, replace=False))
        for limit in (None, 0.0, 150.0, 600.0, 2500.0):
            got = tracker.road_distance_m(a, b, limit_m=limit)
            assert got == _road_distance_reference(tracker, a, b, limit), (a, b, limit)
            finite += math.isfinite(got)
            infinite += not math.isfinite(got)
    assert finite > 100 and infinite > 20  # both outcomes exercised


def test_positions_and_bearings_match_a_searchsorted_reference(monaco: City) -> None:
    g = monaco.graph
    roads = RoadIndex(g, monaco.cameras)
    rng = np.random.default_rng(8)
    for _ in range(400):
        e = int(rng.integers(g.n_edges))
        length = float(g.edge_length_m[e])
        off = float(rng.choice([-3.0, 0.0, length, length + 5.0, rng.uniform(0, length)]))
        a, b = int(g.geom_ptr[e]), int(g.geom_ptr[e + 1])
        arc = roads._arc[a:b]
        d = 0.0 if length <= 0 else min(max(off, 0.0), length) / length * float(arc[-1])
        i = min(max(int(np.searchsorted(arc, d, side="right")) - 1, 0), b - a - 2)
        span = float(arc[i + 1] - arc[i])
        f = 0.0 if span <= 0 else (d - float(arc[i])) / span
        ll = roads.position_lonlat(e, off)
        for coords, got in ((g.geom_xy, roads.position_xy(e, off)), (g.geom_lonlat, (ll.lon, ll.lat))):
            p0, p1 = coords[a + i], coords[a + i + 1]
            assert got == (float(p0[0] + f * (p1[0] - p0[0])), float(p0[1] + f * (p1[1] - p0[1])))
        xy = g.geom_xy
        bearing = (
            math.degrees(
                math.atan2(float(xy[a + i + 1, 0] - xy[a + i, 0]), float(xy[a + i + 1, 1] - xy[a + i, 1]))
            )
            % 360.0
        )
        assert roads.bearing_deg(e, off) == bearing
        assert roads.lonlat_bearing(e, off) == (roads.position_lonlat(e, off), bearing)
