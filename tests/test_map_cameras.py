"""Cameras: file loaders, what each camera sees (hand-drawn graphs, Paris, Helsinki), synthetic placement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from map_data.cameras import (
    CROSSING_RANGE_M,
    DEFAULT_FOV_DEG,
    DEFAULT_RANGE_M,
    build_camera_network,
    build_camera_network_report,
    cameras_from_csv,
    cameras_from_file,
    cameras_from_geojson,
    cameras_from_osm,
    make_camera,
    metz_density,
    place_synthetic_cameras,
    through_traffic,
)
from map_data.compile import compile_graph
from map_data.errors import CameraError, CameraOutsideMapError, CameraSeesNothingError, MapFileError
from map_data.generate import generate_city
from map_data.graph import graph_from_xml
from map_data.handmade import METZ_L93, graph_from_sketch
from map_data.network_types import Camera, CameraNetwork
from map_data.types import CompiledGraph

# A crossing C with four arms and a street going on east to F (two-way, metres):
#
#              N (0,60)
#               |
#   W (-60,0) - C (0,0) - E (60,0) ---- F (120,0)
#               |
#              S (0,-60)
PLUS_NODES = {
    1: (0.0, 0.0),
    2: (-60.0, 0.0),
    3: (60.0, 0.0),
    4: (0.0, 60.0),
    5: (0.0, -60.0),
    6: (120.0, 0.0),
}
C, W, E, N, S, F = 1, 2, 3, 4, 5, 6


@pytest.fixture(scope="module")
def plus() -> CompiledGraph:
    return compile_graph(
        graph_from_sketch(PLUS_NODES, [(C, W), (C, E), (C, N), (C, S), (E, F)], two_way=True, name="plus")
    )


def _camera_at(graph: CompiledGraph, camera_id: str, x: float, y: float, **kwargs: float | None) -> Camera:
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs(graph.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(METZ_L93[0] + x, METZ_L93[1] + y)
    return make_camera(camera_id, lon, lat, **kwargs)  # type: ignore[arg-type]


def _spans(
    network: CameraNetwork, graph: CompiledGraph, camera_id: str
) -> dict[tuple[int, int], tuple[float, float]]:
    """What a camera sees, keyed by (tail osmid, head osmid)."""
    out = {}
    for span in network.view(camera_id).spans:
        u = int(graph.node_osmid[graph.edge_u[span.edge]])
        v = int(graph.node_osmid[graph.edge_v[span.edge]])
        out[(u, v)] = (span.start_m, span.end_m)
    return out


# --------------------------------------------------------------------------- coverage, hand-drawn


def test_camera_at_a_crossing_sees_its_approaches_both_ways(plus: CompiledGraph) -> None:
    network = build_camera_network(plus, [_camera_at(plus, "cam-c", 0, 0)])
    seen = _spans(network, plus, "cam-c")
    assert set(seen) == {(C, W), (W, C), (C, E), (E, C), (C, N), (N, C), (C, S), (S, C)}
    for (u, _v), (start, end) in seen.items():
        if u == C:  # leaving the crossing: the first 40 m
            assert start == pytest.approx(0.0, abs=1.0) and end == pytest.approx(40.0, abs=1.0)
        else:  # arriving: the last 40 m of 60
            assert start == pytest.approx(20.0, abs=1.0) and end == pytest.approx(60.0, abs=1.0)


def test_camera_facing_east_sees_only_the_eastern_edges(plus: CompiledGraph) -> None:
    cam = _camera_at(plus, "cam-east", 0, 0, heading_deg=90.0, fov_deg=90.0)
    seen = _spans(build_camera_network(plus, [cam]), plus, "cam-east")
    assert set(seen) == {(C, E), (E, C)}
    assert seen[(C, E)] == pytest.approx((0.0, 40.0), abs=1.0)
    assert seen[(E, C)] == pytest.approx((20.0, 60.0), abs=1.0)


def test_headings_are_true_north_not_grid_north(plus: CompiledGraph) -> None:
    # In Lambert-93 at Metz true north points 2.3° west of grid north (meridian convergence):
    # the street C-N runs along grid north, i.e. at a true heading of +2.3°.
    along = _camera_at(plus, "along", 0, 0, heading_deg=2.3, fov_deg=2.0)
    assert set(_spans(build_camera_network(plus, [along]), plus, "along")) == {(C, N), (N, C)}
    beside = _camera_at(plus, "beside", 0, 0, heading_deg=0.0, fov_deg=2.0)
    with pytest.raises(CameraSeesNothingError):
        build_camera_network(plus, [beside])


def test_heading_without_fov_gets_the_default_fov() -> None:
    cam = make_camera("c1", 6.17, 49.12, heading_deg="NE")
    assert cam.heading_deg == 45.0 and cam.fov_deg == DEFAULT_FOV_DEG
    dome = make_camera("c2", 6.17, 49.12, heading_deg=45, dome=True)
    assert dome.heading_deg is None and dome.fov_deg is None
    full = make_camera("c3", 6.17, 49.12, heading_deg=45, fov_deg=360)
    assert full.heading_deg is None


def test_camera_beside_the_road_sees_a_chord_of_it(plus: CompiledGraph) -> None:
    # 30 m north of the middle of E-F: sees sqrt(40² - 30²) = 26.46 m either side of offset 30.
    network = build_camera_network(plus, [_camera_at(plus, "cam-ef", 90, 30)])
    seen = _spans(network, plus, "cam-ef")
    half = math.sqrt(40**2 - 30**2)
    assert set(seen) == {(E, F), (F, E)}
    assert seen[(E, F)] == pytest.approx((30 - half, 30 + half), abs=1.0)
    assert seen[(F, E)] == pytest.approx((30 - half, 30 + half), abs=1.0)
    # The reverse index lists the camera on both directed edges.
    ef = plus.edge_between(plus.node_index[E], plus.node_index[F])
    assert [cid for cid, _, _ in network.on_edge[ef]] == ["cam-ef"]


def test_on_edge_index_matches_views(plus: CompiledGraph) -> None:
    cams = [_camera_at(plus, "a", 0, 0), _camera_at(plus, "b", 60, 0, range_m=25)]
    network = build_camera_network(plus, cams)
    ce = plus.edge_between(plus.node_index[C], plus.node_index[E])
    assert [cid for cid, _, _ in network.on_edge[ce]] == ["a", "b"]
    pairs = {(cid, s.edge) for cid, v in network.views.items() for s in v.spans}
    assert pairs == {(cid, e) for e, spans in network.on_edge.items() for cid, _, _ in spans}


def test_camera_outside_the_map(plus: CompiledGraph) -> None:
    far = _camera_at(plus, "far", 1000, 1000)
    with pytest.raises(CameraOutsideMapError, match="far"):
        build_camera_network(plus, [far])
    coverage = build_camera_network_report(plus, [far, _camera_at(plus, "ok", 0, 0)])
    assert list(coverage.network.cameras) == ["ok"]
    assert [s.camera.camera_id for s in coverage.skipped] == ["far"]
    assert isinstance(coverage.skipped[0].error, CameraOutsideMapError)
    # Within its range of the map's extent it is still inside (and here sees F's end).
    near = _camera_at(plus, "near", 150, 0)
    assert "near" in build_camera_network(plus, [near]).cameras
    with pytest.raises(CameraOutsideMapError):
        build_camera_network(plus, [near], max_distance_m=10.0)


def test_camera_that_sees_nothing(plus: CompiledGraph) -> None:
    # Inside the map, facing north, 5 m above E-F's start: its sector never reaches a street.
    blind = _camera_at(plus, "blind", 30, 5, heading_deg=0.0, fov_deg=60.0)
    with pytest.raises(CameraSeesNothingError, match="blind"):
        build_camera_network(plus, [blind])
    network = build_camera_network(plus, [blind], strict=False)
    assert len(network.cameras) == 0


def test_duplicate_ids_and_bad_probability(plus: CompiledGraph) -> None:
    cam = _camera_at(plus, "dup", 0, 0)
    with pytest.raises(CameraError, match="duplicate"):
        build_camera_network(plus, [cam, cam])
    with pytest.raises(ValueError, match="detection_probability"):
        build_camera_network(plus, [cam], detection_probability=1.0)


# --------------------------------------------------------------------------- loaders


def test_csv_loader_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "cams.csv"
    good.write_text(
        "camera_id,lon,lat,heading_deg,fov_deg,range_m,commune\n"
        "M-001,6.1757,49.1193,90,60,35,Metz\n"
        "M-002,6.1800,49.1200,,,,\n"
    )
    cams = cameras_from_csv(good)
    assert cams[0] == Camera("M-001", 6.1757, 49.1193, 90.0, 60.0, 35.0, "Metz")
    assert cams[1].heading_deg is None and cams[1].range_m == 40.0 and cams[1].commune is None
    assert cameras_from_file(good) == cams

    bad = tmp_path / "bad.csv"
    bad.write_text("camera_id,lon,lat\nA,6.1,49.1\nB,abc,49.1\n")
    with pytest.raises(CameraError, match=r"bad\.csv: line 3: lon 'abc'"):
        cameras_from_csv(bad)
    bad.write_text("camera_id,lon,lat\nA,6.1,95.0\n")
    with pytest.raises(CameraError, match=r"line 2.*out of range"):
        cameras_from_csv(bad)
    bad.write_text("camera_id,lon,lat\nhas space,6.1,49.0\n")
    with pytest.raises(CameraError, match=r"line 2.*camera id"):
        cameras_from_csv(bad)
    bad.write_text("id,lon,lat\nA,6.1,49.0\n")
    with pytest.raises(MapFileError, match="camera_id"):
        cameras_from_csv(bad)
    with pytest.raises(MapFileError, match="not found"):
        cameras_from_csv(tmp_path / "missing.csv")


def test_geojson_loader_errors(tmp_path: Path) -> None:
    path = tmp_path / "cams.geojson"
    point = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [6.17, 49.12]},
        "properties": {"id": "A"},
    }
    line = {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [[6.17, 49.12], [6.18, 49.12]]},
        "properties": {"id": "B"},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [point, line]}))
    with pytest.raises(CameraError, match=r"cams\.geojson: feature 1: geometry must be a Point"):
        cameras_from_geojson(path)
    path.write_text("{not json")
    with pytest.raises(MapFileError, match=r"cams\.geojson"):
        cameras_from_geojson(path)
    with pytest.raises(MapFileError, match="not found"):
        cameras_from_geojson(tmp_path / "nope.geojson")


OSM_CAMERAS = """<?xml version='1.0' encoding='UTF-8'?>
<osm version="0.6">
  <node id="10" lat="49.12" lon="6.17">
    <tag k="man_made" v="surveillance"/><tag k="camera:direction" v="NE"/>
  </node>
  <node id="11" lat="49.121" lon="6.171">
    <tag k="man_made" v="surveillance"/><tag k="camera:type" v="dome"/><tag k="camera:direction" v="90"/>
  </node>
  <node id="12" lat="49.122" lon="6.172">
    <tag k="man_made" v="surveillance"/><tag k="surveillance:type" v="guard"/>
  </node>
  <node id="13" lat="49.123" lon="6.173"><tag k="amenity" v="bench"/></node>
  <way id="1"><nd ref="10"/><nd ref="11"/><tag k="highway" v="residential"/></way>
</osm>
"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<osm><node id="1" lat="49.1" lon="6.1"><tag k="man_made" v="&lol2;"/></node></osm>
"""


def test_osm_loader(tmp_path: Path) -> None:
    import bz2

    path = tmp_path / "cams.osm.bz2"
    path.write_bytes(bz2.compress(OSM_CAMERAS.encode()))
    cams = cameras_from_osm(path)
    assert [c.camera_id for c in cams] == ["osm-10", "osm-11"]
    assert cams[0].heading_deg == 45.0 and cams[0].fov_deg == DEFAULT_FOV_DEG
    assert cams[1].heading_deg is None  # a dome sees all round
    bomb = tmp_path / "bomb.osm"
    bomb.write_text(BILLION_LAUGHS)
    with pytest.raises(MapFileError, match=r"bomb\.osm"):
        cameras_from_osm(bomb)
    broken = tmp_path / "broken.osm"
    broken.write_text("<osm><node id='1'")
    with pytest.raises(MapFileError, match=r"broken\.osm"):
        cameras_from_osm(broken)


# --------------------------------------------------------------------------- real maps


def _inside_bbox(cam: Camera) -> bool:
    return 2.35 <= cam.lon <= 2.38 and 48.858 <= cam.lat <= 48.870


@pytest.fixture(scope="module")
def paris(shared_maps: Path) -> CompiledGraph:
    return compile_graph(graph_from_xml(shared_maps / "paris_center.osm.bz2"))


def test_paris_police_cameras(paris: CompiledGraph, shared_maps: Path) -> None:
    cams = cameras_from_geojson(shared_maps / "paris_cameras.geojson")
    assert len(cams) == 707
    assert all(c.heading_deg is None and c.label for c in cams)  # no direction recorded: discs
    # All are police domes at crossings ("croisement"): they reach CROSSING_RANGE_M, not 40 m.
    assert {c.range_m for c in cams} == {CROSSING_RANGE_M} and CROSSING_RANGE_M > DEFAULT_RANGE_M
    inside = [c for c in cams if _inside_bbox(c)]
    outside = [c for c in cams if not _inside_bbox(c)]
    assert len(inside) == 46
    coverage = build_camera_network_report(paris, cams)
    mapped = coverage.network.cameras
    # The drivable strongly connected graph covers a bit less than the bounding box, so a few
    # of the 46 fall outside its extent or see no drivable street; the rest map.
    # At 60 m, 39 of the 46 map (3 lie beyond the graph's extent, 4 see no drivable street).
    assert len(mapped) == 39
    assert all(_inside_bbox(mapped[cid]) for cid in mapped)
    n_spans = [len(coverage.network.views[cid].spans) for cid in mapped]
    assert min(n_spans) >= 1
    assert np.mean(n_spans) >= 3  # cameras at crossings see several approaches
    reasons = {s.camera.camera_id: s.error for s in coverage.skipped}
    assert all(isinstance(reasons[c.camera_id], CameraOutsideMapError) for c in outside)
    with pytest.raises(CameraOutsideMapError, match=outside[0].camera_id):
        build_camera_network(paris, [*list(mapped.values())[:3], outside[0]])
    for span in (s for v in coverage.network.views.values() for s in v.spans):
        assert 0.0 <= span.start_m < span.end_m <= paris.edge_length_m[span.edge] + 1e-6


def test_crossing_range_is_configurable(paris: CompiledGraph, shared_maps: Path) -> None:
    path = shared_maps / "paris_cameras.geojson"
    near = cameras_from_geojson(path, crossing_range_m=DEFAULT_RANGE_M)
    assert {c.range_m for c in near} == {DEFAULT_RANGE_M}
    at_40 = build_camera_network(paris, near, strict=False)
    at_60 = build_camera_network(paris, cameras_from_geojson(path), strict=False)
    assert len(at_40.cameras) == 38 and len(at_60.cameras) == 39
    assert set(at_40.on_edge) < set(at_60.on_edge)  # a longer reach sees strictly more streets


def test_crossing_range_only_for_domes_at_crossings(tmp_path: Path) -> None:
    def feature(i: int, **props: object) -> dict[str, object]:
        return {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [2.36, 48.86]},
            "properties": {"id": f"c{i}", **props},
        }

    path = tmp_path / "cams.geojson"
    features = [
        feature(0, placement="croisement"),
        feature(1, placement="Carrefour"),
        feature(2, placement="croisement", range_m=25),  # an explicit range wins
        feature(3, placement="croisement", heading_deg=90),  # a fixed camera facing one way
        feature(4, placement="façade"),
        feature(5),
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    ranges = [c.range_m for c in cameras_from_geojson(path, crossing_range_m=75.0)]
    assert ranges == [75.0, 75.0, 25.0, DEFAULT_RANGE_M, DEFAULT_RANGE_M, DEFAULT_RANGE_M]


def test_helsinki_osm_cameras(shared_maps: Path) -> None:
    graph = compile_graph(graph_from_xml(shared_maps / "helsinki_center.osm.bz2"))
    cams = cameras_from_geojson(shared_maps / "helsinki_center_cameras.geojson")
    assert len(cams) == 221
    assert all(c.camera_id.startswith("osm-") for c in cams)
    coverage = build_camera_network_report(graph, cams)
    # Many Helsinki cameras watch squares and shop fronts, away from drivable streets.
    assert len(coverage.network.cameras) >= 120
    assert all(isinstance(s.error, CameraSeesNothingError | CameraOutsideMapError) for s in coverage.skipped)
    assert len(coverage.network.on_edge) >= 50


# --------------------------------------------------------------------------- synthetic cameras

# A line A - B - C (two-way, 100 m): every fastest path between A and C passes B.
LINE_NODES = {1: (0.0, 0.0), 2: (100.0, 0.0), 3: (200.0, 0.0)}


def test_through_traffic_on_a_line() -> None:
    graph = compile_graph(graph_from_sketch(LINE_NODES, [(1, 2), (2, 3)], two_way=True))
    passes = through_traffic(graph, n_sources=10, seed=0)
    assert passes.tolist() == [0.0, 2.0, 0.0]


@pytest.fixture(scope="module")
def town() -> CompiledGraph:
    return compile_graph(generate_city(1500, seed=2))


def test_synthetic_cameras_are_deterministic(town: CompiledGraph) -> None:
    a = place_synthetic_cameras(town, 100, seed=4)
    b = place_synthetic_cameras(town, 100, seed=4)
    c = place_synthetic_cameras(town, 100, seed=5)
    assert a == b
    assert a != c
    assert len({cam.camera_id for cam in a}) == 100
    assert metz_density(town) == round(town.n_nodes / 3)
    with pytest.raises(ValueError, match="cannot place"):
        place_synthetic_cameras(town, town.n_nodes + 1, seed=0)


def test_synthetic_cameras_favour_busy_crossings_but_spread(town: CompiledGraph) -> None:
    cams = place_synthetic_cameras(town, metz_density(town), seed=1)
    by_lonlat = {(float(x), float(y)): i for i, (x, y) in enumerate(town.node_lonlat)}
    picked = np.array([by_lonlat[(c.lon, c.lat)] for c in cams])
    passes = through_traffic(town, seed=99)  # an independent estimate
    percentile = passes.argsort().argsort() / (town.n_nodes - 1)
    assert percentile[picked].mean() > 0.6  # random picks would average 0.5
    busiest = np.argsort(-passes)[: len(picked) // 5]
    assert np.isin(busiest, picked).mean() > 0.6
    # ... but not all on the main roads: many streets get a camera.
    streets = {town.edge_name[e] for n in picked for e in town.out_of(int(n))}
    assert len(streets) > 100
    network = build_camera_network(town, cams)
    assert len(network.cameras) == len(cams)
