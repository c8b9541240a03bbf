"""Snapping points to edges, and positions back to coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer
from shapely.geometry import LineString

from map_data.compile import compile_graph
from map_data.graph import graph_from_xml
from map_data.handmade import METZ_L93, graph_from_sketch
from map_data.snap import Snapper, heading_at, position_lonlat, position_xy
from map_data.types import CompiledGraph, EdgePosition

X0, Y0 = METZ_L93

# Hand-drawn graph (metres, y up = north):
#
#   0 ============ 1          0 <-> 1: two-way, 100 m along +x (east)
#                  |
#                  v          1 -> 2: one-way south, 100 m
#                  2
#
#   3                         3 -> 4: one-way with an L-shaped geometry 3 -> (0, -200) -> 4,
#   |                         200 m of polyline but a ``length`` of 100 m (offsets scale by 1/2)
#   +------------- 4
#
# Edge indices (sorted by (u, v)): 0 = 0->1, 1 = 1->0, 2 = 1->2, 3 = 3->4.


@pytest.fixture(scope="module")
def sketch() -> CompiledGraph:
    G = graph_from_sketch(
        {0: (0, 0), 1: (100, 0), 2: (100, -100), 3: (0, -100), 4: (100, -200)},
        [(0, 1), (1, 0), (1, 2), (3, 4, {"length": 100.0})],
    )
    G.edges[3, 4, 0]["geometry"] = LineString([(X0, Y0 - 100), (X0, Y0 - 200), (X0 + 100, Y0 - 200)])
    graph = compile_graph(G)
    assert [(int(graph.edge_u[e]), int(graph.edge_v[e])) for e in range(4)] == [
        (0, 1),
        (1, 0),
        (1, 2),
        (3, 4),
    ]
    return graph


@pytest.fixture(scope="module")
def snapper(sketch: CompiledGraph) -> Snapper:
    return Snapper(sketch)


def test_snap_xy_exact(snapper: Snapper) -> None:
    # 3 m north of the two-way street, 40 m from 0: the lower edge index of the twins.
    assert snapper.snap_xy(X0 + 40, Y0 + 3) == EdgePosition(0, pytest.approx(40.0))  # type: ignore[arg-type]
    assert snapper.distance_xy(X0 + 40, Y0 + 3) == pytest.approx(3.0)
    # Same point, driving west: the twin 1 -> 0, 60 m from 1. Driving east: 0 -> 1.
    west = snapper.snap_xy(X0 + 40, Y0 + 3, heading_deg=270.0)
    assert west.edge == 1 and west.offset_m == pytest.approx(60.0)
    east = snapper.snap_xy(X0 + 40, Y0 + 3, heading_deg=80.0)
    assert east.edge == 0 and east.offset_m == pytest.approx(40.0)
    # The one-way 1 -> 2 has no twin: the heading cannot turn it round.
    south = snapper.snap_xy(X0 + 103, Y0 - 50, heading_deg=0.0)
    assert south.edge == 2 and south.offset_m == pytest.approx(50.0)


def test_snap_beyond_an_end_is_deterministic(snapper: Snapper) -> None:
    # Past node 1 (31.6 m away): 0->1 at its end, 1->0 and 1->2 at their start tie; lowest wins.
    pos = snapper.snap_xy(X0 + 130, Y0 + 10)
    assert pos.edge == 0 and pos.offset_m == pytest.approx(100.0)
    assert snapper.distance_xy(X0 + 130, Y0 + 10) == pytest.approx(np.hypot(30, 10))
    assert all(snapper.snap_xy(X0 + 130, Y0 + 10) == pos for _ in range(3))


def test_snap_on_a_bent_geometry_scales_to_the_edge_length(sketch: CompiledGraph, snapper: Snapper) -> None:
    # 150 m along the 200 m polyline = 75 m of the edge's 100 m length.
    pos = snapper.snap_xy(X0 + 50, Y0 - 203)
    assert pos.edge == 3 and pos.offset_m == pytest.approx(75.0)
    assert position_xy(sketch, pos) == pytest.approx((X0 + 50, Y0 - 200))
    corner = position_xy(sketch, EdgePosition(3, 50.0))
    assert corner == pytest.approx((X0, Y0 - 200))
    assert position_xy(sketch, EdgePosition(3, 0.0)) == pytest.approx((X0, Y0 - 100))
    assert position_xy(sketch, EdgePosition(3, 100.0)) == pytest.approx((X0 + 100, Y0 - 200))
    assert position_xy(sketch, EdgePosition(3, 500.0)) == pytest.approx((X0 + 100, Y0 - 200))  # clipped
    assert heading_at(sketch, EdgePosition(3, 10.0)) == pytest.approx(180.0)
    assert heading_at(sketch, EdgePosition(3, 90.0)) == pytest.approx(90.0)


def test_lonlat_entry_points(sketch: CompiledGraph, snapper: Snapper) -> None:
    to_wgs84 = Transformer.from_crs(sketch.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(X0 + 40, Y0 + 3)
    pos = snapper.snap(lon, lat)
    assert pos.edge == 0 and pos.offset_m == pytest.approx(40.0, abs=1e-3)
    assert snapper.distance_m(lon, lat) == pytest.approx(3.0, abs=1e-3)
    assert snapper.snap(lon, lat, heading_deg=265.0).edge == 1
    ll = position_lonlat(sketch, EdgePosition(0, 40.0))
    expected = to_wgs84.transform(X0 + 40, Y0)
    assert (ll.lon, ll.lat) == pytest.approx(expected, abs=1e-8)  # ~1 mm: interpolated in lon/lat
    many = snapper.snap_many([(lon, lat), (ll.lon, ll.lat)])
    assert many == [snapper.snap(lon, lat), snapper.snap(ll.lon, ll.lat)]


def test_position_on_unknown_edge(sketch: CompiledGraph) -> None:
    with pytest.raises(IndexError, match="edge 99"):
        position_xy(sketch, EdgePosition(99, 0.0))


# --------------------------------------------------------------------------- real maps

REAL = ("monaco", "harrisburg", "paris_center", "helsinki_center")


@pytest.fixture(scope="module")
def real(shared_maps: Path) -> dict[str, tuple[CompiledGraph, Snapper]]:
    out = {}
    for name in REAL:
        graph = compile_graph(graph_from_xml(shared_maps / f"{name}.osm.bz2"))
        out[name] = (graph, Snapper(graph))
    return out


@pytest.mark.parametrize("name", REAL)
def test_round_trip_on_real_maps(real: dict[str, tuple[CompiledGraph, Snapper]], name: str) -> None:
    graph, snapper = real[name]
    rng = np.random.default_rng(7)
    edges = rng.integers(0, graph.n_edges, 300)
    exact = 0
    for e in edges:
        e = int(e)
        length = float(graph.edge_length_m[e])
        pos = EdgePosition(e, float(rng.uniform(0.0, length)))
        ll = position_lonlat(graph, pos)
        got = snapper.snap(ll.lon, ll.lat)
        # The point is back where it was (within 0.5 m) ...
        assert np.hypot(*np.subtract(position_xy(graph, got), position_xy(graph, pos))) < 0.5
        # ... on the same street between the same crossings, at the same offset.
        pair = {int(graph.edge_u[got.edge]), int(graph.edge_v[got.edge])}
        assert pair == {int(graph.edge_u[e]), int(graph.edge_v[e])}
        if graph.edge_u[got.edge] == graph.edge_u[e]:
            assert got.offset_m == pytest.approx(pos.offset_m, abs=0.5)
        else:
            assert got.offset_m == pytest.approx(length - pos.offset_m, abs=0.5)
        exact += got.edge in (e, graph.reverse_edge(e))
        # With the driving direction, the direction is right: e itself or a parallel duplicate.
        headed = snapper.snap(ll.lon, ll.lat, heading_deg=heading_at(graph, pos))
        assert (int(graph.edge_u[headed.edge]), int(graph.edge_v[headed.edge])) == (
            int(graph.edge_u[e]),
            int(graph.edge_v[e]),
        )
        assert headed.offset_m == pytest.approx(pos.offset_m, abs=0.5)
    assert exact >= 0.95 * len(edges)  # the others are parallel duplicates of the same way


def test_snapping_many_points_finds_the_nearest(real: dict[str, tuple[CompiledGraph, Snapper]]) -> None:
    graph, snapper = real["harrisburg"]
    lo, hi = graph.node_lonlat.min(axis=0), graph.node_lonlat.max(axis=0)
    points = np.random.default_rng(3).uniform(lo, hi, size=(2000, 2))
    snapped = snapper.snap_many(points)  # throughput is measured by bench/routing.py
    assert len(snapped) == 2000
    # Brute force on a sample: no edge is nearer than the one found.
    for (lon, lat), pos in list(zip(points, snapped, strict=True))[:20]:
        x, y = snapper._to_xy.transform(lon, lat)
        found = np.hypot(*np.subtract(position_xy(graph, pos), (x, y)))
        a, b = graph.geom_xy[:-1], graph.geom_xy[1:]
        same_edge = np.repeat(np.arange(graph.n_edges), np.diff(graph.geom_ptr))
        valid = same_edge[:-1] == same_edge[1:]
        ab = b - a
        t = np.clip(
            np.einsum("ij,ij->i", [x, y] - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12), 0, 1
        )
        brute = np.hypot(*(a + t[:, None] * ab - [x, y]).T)[valid].min()
        assert found == pytest.approx(brute, abs=1e-6)
