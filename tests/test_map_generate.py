"""The generated city: determinism, size, structure (arterials, ring, river and bridges, one-ways, exits)."""

from __future__ import annotations

from collections import Counter, defaultdict

import networkx as nx
import pytest
import shapely
from shapely.geometry import LineString

from map_data.compile import compile_graph, graph_hash
from map_data.generate import generate_city


@pytest.fixture(scope="module")
def city_1k() -> nx.MultiDiGraph:
    return generate_city(1000, seed=3)


@pytest.fixture(scope="module")
def city_10k() -> nx.MultiDiGraph:
    return generate_city(10_000, seed=11)


def _segments(G: nx.MultiDiGraph) -> dict[frozenset[int], list[dict[str, object]]]:
    """Undirected street segments and the directed edges along each."""
    seg: dict[frozenset[int], list[dict[str, object]]] = defaultdict(list)
    for u, v, data in G.edges(data=True):
        seg[frozenset((u, v))].append(data)
    return seg


def test_same_seed_same_city_other_seed_other_city() -> None:
    a = generate_city(1000, seed=5)
    b = generate_city(1000, seed=5)
    c = generate_city(1000, seed=6)
    assert graph_hash(a) == graph_hash(b)
    assert a.graph["river_wkt"] == b.graph["river_wkt"]
    assert graph_hash(a) != graph_hash(c)


@pytest.mark.parametrize(("fixture", "wanted"), [("city_1k", 1000), ("city_10k", 10_000)])
def test_node_count_within_15_percent(fixture: str, wanted: int, request: pytest.FixtureRequest) -> None:
    G = request.getfixturevalue(fixture)
    assert abs(G.number_of_nodes() / wanted - 1.0) <= 0.15
    assert nx.is_strongly_connected(G)


def test_fifty_thousand_crossings() -> None:
    # Generation time is measured by bench/routing.py, not asserted here.
    G = generate_city(50_000, seed=1)
    assert abs(G.number_of_nodes() / 50_000 - 1.0) <= 0.15


def test_out_of_range_size_is_refused() -> None:
    with pytest.raises(ValueError, match="n_crossings"):
        generate_city(10)


def test_compiles_and_follows_conventions(city_1k: nx.MultiDiGraph) -> None:
    graph = compile_graph(city_1k)
    assert graph.crs == "EPSG:2154"
    lon, lat = graph.node_lonlat.mean(axis=0)
    assert 6.0 < lon < 6.35 and 49.0 < lat < 49.25  # around Metz
    assert (graph.edge_length_m > 0).all() and (graph.edge_time_s > 0).all()
    assert all(name for name in graph.edge_name)


def test_road_classes_and_speeds(city_10k: nx.MultiDiGraph) -> None:
    speeds: dict[str, set[float]] = defaultdict(set)
    for _, _, data in city_10k.edges(data=True):
        speeds[data["highway"]].add(data["speed_kph"])
    assert set(speeds) == {"residential", "secondary", "primary", "trunk"}
    assert speeds["residential"] == {30.0}
    assert speeds["secondary"] == speeds["primary"] == {50.0}
    assert all(70.0 <= s <= 90.0 for s in speeds["trunk"])
    counts = Counter(d["highway"] for _, _, d in city_10k.edges(data=True))
    assert counts["residential"] > counts["secondary"] + counts["primary"] > counts["trunk"] > 0


def test_one_way_share_and_only_local_streets_one_way(city_10k: nx.MultiDiGraph) -> None:
    segments = _segments(city_10k)
    oneway = [s for s in segments.values() if len(s) == 1]
    share = len(oneway) / len(segments)
    assert 0.15 <= share <= 0.35
    assert all(s[0]["oneway"] and s[0]["highway"] == "residential" for s in oneway)
    assert not any(d["oneway"] for s in segments.values() if len(s) == 2 for d in s)


@pytest.mark.parametrize("fixture", ["city_1k", "city_10k"])
def test_river_is_crossed_only_by_bridges(fixture: str, request: pytest.FixtureRequest) -> None:
    G = request.getfixturevalue(fixture)
    river = shapely.from_wkt(G.graph["river_wkt"])
    crossing = 0
    bridges = 0
    for u, v, data in G.edges(data=True):
        segment = LineString([(G.nodes[u]["x"], G.nodes[u]["y"]), (G.nodes[v]["x"], G.nodes[v]["y"])])
        crosses = segment.intersects(river)
        crossing += crosses
        bridges += bool(data["bridge"])
        assert crosses == bool(data["bridge"]), (u, v, data)
    assert crossing == bridges
    n_bridges = len({frozenset((u, v)) for u, v, d in G.edges(data=True) if d["bridge"]})
    assert 3 <= n_bridges <= 12  # a few bridges, two-way
    assert bridges == 2 * n_bridges
    # The ring road crosses the river too.
    assert any(d["bridge"] and d["highway"] == "trunk" for _, _, d in G.edges(data=True))


def test_arterials_keep_one_name_along_their_length(city_10k: nx.MultiDiGraph) -> None:
    by_name: dict[str, nx.Graph] = defaultdict(nx.Graph)
    for u, v, data in city_10k.edges(data=True):
        if data["highway"] in ("primary", "secondary", "trunk"):
            by_name[data["name"]].add_edge(u, v)
    assert len(by_name) >= 10
    for name, lines in by_name.items():
        assert name.split()[0] in ("Avenue", "Boulevard", "Rue", "Route"), name
        # One line per name; a line without a bridge is cut in two by the river.
        assert nx.number_connected_components(lines) <= 2, name
        assert lines.number_of_edges() >= 5, name
    assert "Boulevard Périphérique" in by_name
    local_kinds = Counter(d["name"].split()[0] for _, _, d in city_10k.edges(data=True))
    assert local_kinds["Rue"] > local_kinds["Allée"] > 0


def test_exits_are_stubs_on_the_map_edge(city_10k: nx.MultiDiGraph) -> None:
    xs = [d["x"] for _, d in city_10k.nodes(data=True)]
    ys = [d["y"] for _, d in city_10k.nodes(data=True)]
    exits = [n for n, d in city_10k.nodes(data=True) if d.get("exit")]
    assert len(exits) >= 40
    sides: Counter[int] = Counter()
    for n in exits:
        x, y = city_10k.nodes[n]["x"], city_10k.nodes[n]["y"]
        side = [abs(x - min(xs)) < 1, abs(x - max(xs)) < 1, abs(y - min(ys)) < 1, abs(y - max(ys)) < 1]
        assert any(side), n
        sides[side.index(True)] += 1
        assert len(set(city_10k.successors(n)) | set(city_10k.predecessors(n))) == 1
    assert len(sides) == 4  # roads leave the map on every side
    # Every arterial reaching the edge is an exit: some exits are on arterials.
    assert any(
        d["highway"] in ("primary", "secondary")
        for n in exits
        for _, _, d in city_10k.out_edges(n, data=True)
    )
