"""Loading street graphs: OSM speed parsing, the drivable filter, the builder, errors, real maps."""

from __future__ import annotations

import bz2
import gzip
import time
from pathlib import Path

import networkx as nx
import osmnx as ox
import pytest
from pyproj import Transformer

from map_data.compile import compile_graph
from map_data.errors import EmptyGraphError, MapDataError, MapFileError, NetworkUnavailableError
from map_data.graph import (
    graph_from_bbox,
    graph_from_file,
    graph_from_graphml,
    graph_from_place,
    graph_from_xml,
)
from map_data.handmade import graph_from_sketch
from map_data.speeds import SpeedTable, set_speeds

# --------------------------------------------------------------------------- speed table


@pytest.mark.parametrize(
    ("value", "kph"),
    [
        ("30", 30.0),
        ("50", 50.0),
        (" 70 km/h", 70.0),
        ("90kmh", 90.0),
        ("50 mph", 50 * 1.609344),
        ("10 knots", 18.52),
        ("FR:urban", 50.0),
        ("FR:rural", 80.0),
        ("FR:zone30", 30.0),
        ("fr:zone30", 30.0),
        ("FR:30", 30.0),
        ("FR:motorway", 130.0),
        ("DE:urban", 50.0),
        ("walk", 10.0),
        ("none", 130.0),
        ("50;30", 40.0),
        (["30", "40"], 35.0),
        (["30", "signals"], 30.0),
        (30, 30.0),
        ("signals", None),
        ("variable", None),
        ("", None),
        (None, None),
        (float("nan"), None),
        ("0", None),
        ("999", None),
        ("fast", None),
    ],
)
def test_parse_maxspeed(value: object, kph: float | None) -> None:
    got = SpeedTable().parse_maxspeed(value)
    if kph is None:
        assert got is None
    else:
        assert got == pytest.approx(kph)


@pytest.mark.parametrize(
    ("data", "kph"),
    [
        ({"highway": "residential"}, 30.0),
        ({"highway": "living_street"}, 20.0),
        ({"highway": "primary"}, 50.0),
        ({"highway": "trunk"}, 90.0),
        ({"highway": "motorway"}, 110.0),
        ({"highway": "motorway", "maxspeed": "FR:motorway"}, 130.0),
        ({"highway": "residential", "maxspeed": "50"}, 50.0),
        ({"highway": "primary", "zone:maxspeed": "FR:30"}, 30.0),
        ({"highway": "primary", "source:maxspeed": "FR:zone30"}, 30.0),
        ({"highway": "tertiary", "maxspeed:type": "FR:urban"}, 50.0),
        ({"highway": "primary", "maxspeed": "signals", "zone:maxspeed": "FR:30"}, 30.0),
        ({"highway": ["primary", "residential"]}, 40.0),
        ({"highway": "made_up_class"}, 50.0),
        ({}, 50.0),
    ],
)
def test_speed_for_edge(data: dict[str, object], kph: float) -> None:
    assert SpeedTable().speed_for(data) == pytest.approx(kph)


def test_speed_table_is_configurable_and_fingerprinted() -> None:
    default = SpeedTable()
    ville50 = SpeedTable(road_kph={**default.road_kph, "residential": 50.0}, fallback_kph=40.0)
    assert ville50.speed_for({"highway": "residential"}) == 50.0
    assert ville50.speed_for({"highway": "unknown"}) == 40.0
    assert default.fingerprint() == SpeedTable().fingerprint()
    assert ville50.fingerprint() != default.fingerprint()
    with pytest.raises(ValueError, match="fallback_kph"):
        SpeedTable(fallback_kph=0.0)
    with pytest.raises(ValueError, match="residential"):
        SpeedTable(road_kph={"residential": -1.0})


def test_set_speeds_sets_travel_time_from_length() -> None:
    # 0 ---100 m--- 1 ---100 m--- 2
    G = graph_from_sketch({0: (0, 0), 1: (100, 0), 2: (200, 0)}, [(0, 1), (1, 2, {"highway": "primary"})])
    G.edges[0, 1, 0]["maxspeed"] = "FR:zone30"
    set_speeds(G, SpeedTable())
    assert G.edges[0, 1, 0]["speed_kph"] == 30.0
    assert G.edges[0, 1, 0]["travel_time"] == pytest.approx(100 / (30 / 3.6))
    assert G.edges[1, 2, 0]["speed_kph"] == 50.0
    assert G.edges[1, 2, 0]["travel_time"] == pytest.approx(7.2)


# --------------------------------------------------------------------------- synthetic OSM

# Unfiltered OSM extract in Metz (lat 49.12, lon 6.17); ~73 m between columns, ~111 m between rows.
#
#   9 ---- 1 ======= 2 ======= 3 ---- 10   ways 109/110 two-way dead ends "Impasse Ouest/Est"
#          |  \\ steps (108) ..|           way 100 "Rue Haute" residential (two-way) 1-2-3
#          |         :         |           way 108 steps 1-3 (dropped)
#          |         : footway |           way 102 "Avenue Ouest" primary maxspeed=50, 1-4
#          |         : (104)   |           way 103 "Avenue Est" secondary, FR:zone30, bridge, 3-6
#          4 ------> 5 ------> 6           way 104 footway 2-5 (dropped)
#                    :         |           way 101 "Rue Basse" residential oneway 4-5-6
#                    :        (106)        way 105 cycleway 5-7 (dropped)
#          8 .. 2    7 <-------+           way 106 oneway 6->7: 7 is a dead end, outside the SCC
#                                          way 107 residential access=no 2-8 (dropped)
#
# Left after the filter and the SCC: crossings 1, 3, 4, 6, 9, 10 (2 and 5 are simplified away):
# 1<->3, 1<->4, 3<->6, 4->6, 1<->9, 3<->10.
_NODES = {
    1: (49.1220, 6.1700),
    2: (49.1220, 6.1710),
    3: (49.1220, 6.1720),
    4: (49.1210, 6.1700),
    5: (49.1210, 6.1710),
    6: (49.1210, 6.1720),
    7: (49.1200, 6.1720),
    8: (49.1230, 6.1710),
    9: (49.1220, 6.1690),
    10: (49.1220, 6.1730),
}
_WAYS: list[tuple[int, list[int], dict[str, str]]] = [
    (100, [1, 2, 3], {"highway": "residential", "name": "Rue Haute"}),
    (101, [4, 5, 6], {"highway": "residential", "name": "Rue Basse", "oneway": "yes"}),
    (102, [1, 4], {"highway": "primary", "name": "Avenue Ouest", "maxspeed": "50"}),
    (
        103,
        [3, 6],
        {"highway": "secondary", "name": "Avenue Est", "source:maxspeed": "FR:zone30", "bridge": "yes"},
    ),
    (104, [2, 5], {"highway": "footway"}),
    (105, [5, 7], {"highway": "cycleway"}),
    (106, [6, 7], {"highway": "residential", "oneway": "yes"}),
    (107, [2, 8], {"highway": "residential", "access": "no"}),
    (108, [1, 3], {"highway": "steps"}),
    (109, [9, 1], {"highway": "residential", "name": "Impasse Ouest"}),
    (110, [3, 10], {"highway": "residential", "name": "Impasse Est"}),
]


def _osm_xml(ways: list[tuple[int, list[int], dict[str, str]]] = _WAYS) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    for node, (lat, lon) in _NODES.items():
        lines.append(f'  <node id="{node}" lat="{lat}" lon="{lon}" version="1"/>')
    for way, refs, tags in ways:
        lines.append(f'  <way id="{way}" version="1">')
        lines.extend(f'    <nd ref="{r}"/>' for r in refs)
        lines.extend(f'    <tag k="{k}" v="{v}"/>' for k, v in tags.items())
        lines.append("  </way>")
    lines.append("</osm>")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("osm") / "synthetic.osm"
    path.write_text(_osm_xml(), encoding="utf-8")
    return path


def test_drivable_filter_and_scc_on_unfiltered_osm(synthetic: Path) -> None:
    G = graph_from_xml(synthetic)
    assert sorted(G.nodes) == [1, 3, 4, 6, 9, 10]
    assert sorted((u, v) for u, v in G.edges()) == [
        (1, 3),
        (1, 4),
        (1, 9),
        (3, 1),
        (3, 6),
        (3, 10),
        (4, 1),
        (4, 6),
        (6, 3),
        (9, 1),
        (10, 3),
    ]
    highways = {d["highway"] for *_, d in G.edges(data=True)}
    assert highways == {"residential", "primary", "secondary"}
    assert nx.is_strongly_connected(G)


def test_builder_attributes(synthetic: Path) -> None:
    G = graph_from_xml(synthetic)
    assert G.graph["name"] == "synthetic"
    assert G.graph["crs"] == "EPSG:32632"  # UTM zone 32N (6°E-12°E)
    assert G.nodes[1]["lon"] == pytest.approx(6.17) and G.nodes[1]["lat"] == pytest.approx(49.122)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(6.17, 49.122)
    assert (G.nodes[1]["x"], G.nodes[1]["y"]) == pytest.approx((x, y), abs=1e-3)
    haute = G.edges[1, 3, 0]
    assert haute["name"] == "Rue Haute"
    assert haute["oneway"] is False and haute["bridge"] is False and haute["tunnel"] is False
    assert haute["length"] == pytest.approx(146.0, abs=1.0)  # 2 × 0.001° of longitude at 49.12°N
    assert haute["speed_kph"] == 30.0
    assert haute["travel_time"] == pytest.approx(haute["length"] / (30 / 3.6))
    assert G.edges[1, 4, 0]["speed_kph"] == 50.0
    est = G.edges[3, 6, 0]
    assert est["speed_kph"] == 30.0 and est["bridge"] is True and est["name"] == "Avenue Est"
    basse = G.edges[4, 6, 0]
    assert basse["oneway"] is True and not G.has_edge(6, 4)
    compiled = compile_graph(G)
    assert compiled.n_nodes == 6 and compiled.n_edges == 11 and compiled.name == "synthetic"


@pytest.mark.parametrize(
    "way",
    [
        (101, [6, 5, 4], {"highway": "residential", "oneway": "-1"}),  # drawn backwards
        (101, [4, 5, 6], {"highway": "residential", "junction": "roundabout"}),  # implied one-way
    ],
)
def test_one_way_direction_follows_the_osm_tags(
    tmp_path: Path, way: tuple[int, list[int], dict[str, str]]
) -> None:
    path = tmp_path / "oneway.osm"
    path.write_text(_osm_xml([w for w in _WAYS if w[0] != 101] + [way]), encoding="utf-8")
    G = graph_from_xml(path)
    # Either way the street is driven 4 -> 6 only, as in the fixture's "Rue Basse".
    assert G.has_edge(4, 6) and not G.has_edge(6, 4)
    assert G.edges[4, 6, 0]["oneway"] is True
    compiled = compile_graph(G)
    e = compiled.edge_between(compiled.node_index[4], compiled.node_index[6])
    assert bool(compiled.edge_oneway[e]) and compiled.reverse_edge(e) is None


def test_custom_speed_table(synthetic: Path) -> None:
    table = SpeedTable(road_kph={**SpeedTable().road_kph, "residential": 50.0})
    G = graph_from_xml(synthetic, speeds=table)
    assert G.edges[1, 3, 0]["speed_kph"] == 50.0
    assert G.edges[1, 4, 0]["speed_kph"] == 50.0  # from its maxspeed tag


def test_compressed_files_load_the_same(synthetic: Path, tmp_path: Path) -> None:
    raw = synthetic.read_bytes()
    (tmp_path / "synthetic.osm.bz2").write_bytes(bz2.compress(raw))
    (tmp_path / "synthetic.osm.gz").write_bytes(gzip.compress(raw))
    plain = graph_from_xml(synthetic)
    for name in ("synthetic.osm.bz2", "synthetic.osm.gz"):
        G = graph_from_file(tmp_path / name)
        assert G.graph["name"] == "synthetic"
        assert sorted(G.edges(keys=True)) == sorted(plain.edges(keys=True))


def test_way_with_missing_nodes_is_split_at_the_gap(tmp_path: Path) -> None:
    # 1 --- 2 --- [99 missing] --- 3 : only 1-2 can be an edge; no edge may jump the gap to 3.
    ways = [(200, [1, 2, 99, 3], {"highway": "residential"})]
    path = tmp_path / "gap.osm"
    path.write_text(_osm_xml(ways), encoding="utf-8")
    G = graph_from_xml(path)
    assert sorted(G.edges()) == [(1, 2), (2, 1)]


def test_graphml_round_trip(synthetic: Path, tmp_path: Path) -> None:
    G = graph_from_xml(synthetic)
    path = tmp_path / "synthetic.graphml"
    ox.save_graphml(G, path)
    H = graph_from_graphml(path)
    assert H.graph["name"] == "synthetic" and H.graph["crs"] == G.graph["crs"]
    assert sorted(H.edges(keys=True)) == sorted(G.edges(keys=True))
    for u, v, k, d in G.edges(keys=True, data=True):
        assert H.edges[u, v, k]["travel_time"] == pytest.approx(d["travel_time"])
        assert H.edges[u, v, k]["bridge"] is d["bridge"]
    for n, d in G.nodes(data=True):
        assert H.nodes[n]["x"] == pytest.approx(d["x"], abs=1e-3)
        assert H.nodes[n]["lat"] == pytest.approx(d["lat"])


def test_graphml_in_another_crs_is_reprojected_to_utm(tmp_path: Path) -> None:
    # A hand-drawn Lambert-93 two-way triangle, its primary side at 72 km/h, node 2 an exit:
    #
    #   2
    #   | \
    #   0 -- 1     0-1 primary 72 km/h (100 m), the others residential 50 km/h
    G = graph_from_sketch(
        {0: (0, 0), 1: (100, 0), 2: (0, 100)},
        [(0, 1, {"highway": "primary", "speed_kph": 72.0}), (1, 2), (2, 0)],
        two_way=True,
    )
    G.nodes[2]["exit"] = True
    path = tmp_path / "triangle.graphml"
    ox.save_graphml(G, path)
    H = graph_from_graphml(path)
    assert H.graph["crs"] == "EPSG:32632"  # Metz, 6.17°E: UTM zone 32N
    assert H.number_of_edges() == 6
    assert H.nodes[0]["lon"] == pytest.approx(G.nodes[0]["lon"])
    assert H.nodes[2]["exit"] is True and "exit" not in H.nodes[0]
    length_01 = ((H.nodes[0]["x"] - H.nodes[1]["x"]) ** 2 + (H.nodes[0]["y"] - H.nodes[1]["y"]) ** 2) ** 0.5
    assert length_01 == pytest.approx(100.0, rel=2e-3)
    # Speeds come from the table (primary 50, residential 30) unless the saved ones are kept.
    assert H.edges[0, 1, 0]["speed_kph"] == 50.0 and H.edges[1, 2, 0]["speed_kph"] == 30.0
    kept = graph_from_graphml(path, keep_speeds=True)
    assert kept.edges[0, 1, 0]["speed_kph"] == 72.0 and kept.edges[1, 2, 0]["speed_kph"] == 50.0
    assert kept.edges[0, 1, 0]["travel_time"] == pytest.approx(5.0)


# --------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.osm.bz2"
    with pytest.raises(MapFileError, match=r"nowhere\.osm\.bz2"):
        graph_from_xml(missing)
    with pytest.raises(MapFileError, match=r"nowhere\.graphml"):
        graph_from_graphml(tmp_path / "nowhere.graphml")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.osm", b"this is not xml at all <<<"),
        ("truncated.osm", b'<osm version="0.6"><node id="1" lat="1" lon="2"'),
        ("html.osm", b"<html><body>404</body></html>"),
        ("bomb.osm", b'<?xml version="1.0"?><!DOCTYPE osm [<!ENTITY a "aaaa">]><osm>&a;</osm>'),
        ("badbz.osm.bz2", b"not bzip2 data"),
        ("empty.osm", b""),
    ],
)
def test_unreadable_file_names_the_path(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MapFileError, match=name.replace(".", r"\.")):
        graph_from_xml(path)


def test_unknown_suffix_and_bad_graphml(tmp_path: Path) -> None:
    with pytest.raises(MapFileError, match=r"map\.pbf"):
        graph_from_file(tmp_path / "map.pbf")
    bad = tmp_path / "bad.graphml"
    bad.write_text("<graphml><nonsense", encoding="utf-8")
    with pytest.raises(MapFileError, match=r"bad\.graphml"):
        graph_from_graphml(bad)


def test_no_drivable_road_is_an_empty_graph_error(tmp_path: Path) -> None:
    path = tmp_path / "paths_only.osm"
    path.write_text(
        _osm_xml([(1, [1, 2, 3], {"highway": "footway"}), (2, [4, 5], {"highway": "cycleway"})]),
        encoding="utf-8",
    )
    with pytest.raises(EmptyGraphError, match=r"paths_only\.osm"):
        graph_from_xml(path)
    # Drivable ways that leave no strongly connected street (a single one-way) are empty too.
    oneway = tmp_path / "oneway_only.osm"
    oneway.write_text(_osm_xml([(1, [1, 2], {"highway": "residential", "oneway": "yes"})]), encoding="utf-8")
    with pytest.raises(EmptyGraphError, match=r"oneway_only\.osm"):
        graph_from_xml(oneway)


def test_no_network_fails_fast_and_restores_osmnx_settings() -> None:
    before = (ox.settings.requests_timeout, ox.settings.use_cache, ox.settings.overpass_url)
    unreachable = "http://127.0.0.1:9/api"  # discard port: nothing listens there
    start = time.perf_counter()
    with pytest.raises(NetworkUnavailableError, match=r"127\.0\.0\.1:9"):
        graph_from_place("Metz, France", timeout_s=2.0, overpass_url=unreachable, nominatim_url=unreachable)
    with pytest.raises(NetworkUnavailableError, match=r"127\.0\.0\.1:9"):
        graph_from_bbox((6.15, 49.10, 6.20, 49.13), timeout_s=2.0, overpass_url=unreachable)
    assert time.perf_counter() - start < 15.0  # refused at once, not after osmnx's retries
    assert (ox.settings.requests_timeout, ox.settings.use_cache, ox.settings.overpass_url) == before


def test_invalid_bbox() -> None:
    with pytest.raises(MapDataError, match="bbox"):
        graph_from_bbox((6.2, 49.1, 6.1, 49.2))


# --------------------------------------------------------------------------- real maps

#: (nodes, edges) of the largest strongly connected component, self-loops removed.
REAL_COUNTS = {
    "monaco": (1254, 2507),
    "harrisburg": (3400, 9366),
    "paris_center": (301, 552),
    "helsinki_center": (141, 290),
}


@pytest.fixture(scope="module")
def real_graphs(shared_maps: Path) -> dict[str, nx.MultiDiGraph]:
    return {name: graph_from_xml(shared_maps / f"{name}.osm.bz2") for name in REAL_COUNTS}


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_map_counts_and_conventions(real_graphs: dict[str, nx.MultiDiGraph], name: str) -> None:
    G = real_graphs[name]
    assert (G.number_of_nodes(), G.number_of_edges()) == REAL_COUNTS[name]
    assert nx.is_strongly_connected(G)
    assert G.graph["name"] == name
    assert G.graph["crs"].startswith("EPSG:326")  # a northern UTM zone
    for _, _, d in G.edges(data=True):
        assert isinstance(d["highway"], str) and d["highway"]
        assert d["highway"] not in ("footway", "cycleway", "path", "steps", "service")
        assert d["length"] > 0 and d["speed_kph"] >= 2
        assert d["travel_time"] == pytest.approx(d["length"] / (d["speed_kph"] / 3.6))
        assert isinstance(d["oneway"], bool) and isinstance(d["bridge"], bool)
        assert "name" not in d or isinstance(d["name"], str)
    compiled = compile_graph(G)
    assert (compiled.n_nodes, compiled.n_edges) == REAL_COUNTS[name]


def test_real_map_speeds(real_graphs: dict[str, nx.MultiDiGraph]) -> None:
    paris = real_graphs["paris_center"]
    zone30 = [d for *_, d in paris.edges(data=True) if d.get("source:maxspeed") == "FR:zone30"]
    assert zone30 and all(d["speed_kph"] == 30.0 for d in zone30)
    harrisburg = real_graphs["harrisburg"]
    mph55 = [d for *_, d in harrisburg.edges(data=True) if d.get("maxspeed") == "55 mph"]
    assert mph55 and all(d["speed_kph"] == pytest.approx(88.514) for d in mph55)
