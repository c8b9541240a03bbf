"""The tracker on a real street network (Monaco) with synthetic cameras at Metz density."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from test_tracking_helpers import T0

from map_data.cameras import build_camera_network, metz_density, place_synthetic_cameras
from map_data.compile import compile_graph
from map_data.graph import graph_from_xml
from map_data.network_types import City
from map_data.routing import path_edges, shortest_path
from map_data.snap import position_xy
from map_data.types import EdgePosition
from tracking.roads import RoadIndex
from tracking.tracker import Tracker
from tracking.types import Sighting, SourceKind


@pytest.fixture(scope="module")
def monaco(shared_maps) -> City:
    graph = compile_graph(graph_from_xml(shared_maps / "monaco.osm.bz2"))
    cameras = place_synthetic_cameras(graph, metz_density(graph), seed=3)
    return City(graph=graph, cameras=build_camera_network(graph, cameras, strict=False))


def test_follows_a_drive_across_monaco(monaco: City) -> None:
    g = monaco.graph
    roads = RoadIndex(g, monaco.cameras)
    # A long drive between two far-apart crossings, at a constant 13 m/s.
    a = int(g.node_xy[:, 0].argmin())
    b = int(g.node_xy[:, 0].argmax())
    edges = path_edges(g, shortest_path(g, a, b))
    speed = 13.0
    passes: list[tuple[float, str, int, float]] = []
    t = 0.0
    for e in edges:
        for cid, mid, _s, _e in sorted(roads.edge_spans.get(e, ()), key=lambda x: x[1]):
            if not passes or passes[-1][1] != cid:
                passes.append((t + mid / speed, cid, e, mid))
        t += roads.edge_len[e] / speed
    assert len(passes) >= 8
    tracker = Tracker(monaco, roads=roads)
    for k, (t_s, cid, e, mid) in enumerate(passes[::2]):  # every other camera reports
        update = tracker.update(
            Sighting(
                incident_id="inc-m",
                camera_id=cid,
                observed_at=T0 + timedelta(seconds=t_s),
                source_kind=SourceKind.simulation,
                source_event_id=f"m{k}",
            )
        )
        assert update.accepted, update.flag
        belief = tracker.belief(T0 + timedelta(seconds=t_s))
        assert sum(wp.probability for wp in belief.positions) == pytest.approx(1.0)
        # The camera sees several approaches of its crossing, so the mass spreads over them, but
        # most of it lies within 60 m of the truth (measured: at least 0.89 at every sighting).
        truth = position_xy(g, EdgePosition(e, mid))
        near = sum(
            wp.probability
            for wp in belief.positions
            if math.dist(position_xy(g, EdgePosition(wp.edge, wp.offset_m)), truth) <= 60.0
        )
        assert near >= 0.75, (cid, near)
    assert belief.speed_mps == pytest.approx(speed, abs=3.0)
    assert belief.n_sightings == len(passes[::2])
    assert math.isfinite(belief.mean_lonlat.lon) and math.isfinite(belief.sigma_along_m)


def test_branch_table_matches_per_crossing_priors_on_monaco(monaco: City) -> None:
    from tracking.behaviour import BranchContext, RoadBehaviour

    g = monaco.graph
    model = RoadBehaviour()
    ctx = BranchContext(origin_xy=(float(g.node_xy[10, 0]), float(g.node_xy[10, 1])))
    ptr, probs = model.branch_table(g, ctx)
    for e in range(0, g.n_edges, 7):
        expected = model.branch_probabilities(g, e, g.out_of(int(g.edge_v[e])), ctx)
        assert probs[ptr[e] : ptr[e + 1]] == pytest.approx(expected, rel=1e-9, abs=1e-12)
