"""Routing on compiled graphs (exact on a hand-drawn graph, equal to networkx on real maps) and
the on-disk cache of compiled graphs."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from map_data.cache import file_key, load_compiled, load_compiled_from_file
from map_data.compile import compile_graph, graph_hash
from map_data.errors import MapFileError
from map_data.graph import graph_from_xml
from map_data.handmade import graph_from_sketch
from map_data.routing import path_edges, shortest_path, times_from_nodes, times_from_positions, times_to_nodes
from map_data.speeds import SpeedTable
from map_data.types import CompiledGraph, EdgePosition

# Hand-drawn graph (metres). Residential streets at 36 km/h (10 m/s), the diagonals through 3
# are primary at 72 km/h (20 m/s), 2 -> 4 -> 1 is one-way.
#
#   0 ----100---- 1 ----100---- 2
#     \           ^           / |
#      \          '---141--- 4  |      4 at (200, 100): 2 -> 4 (100 m), 4 -> 1 (141 m)
#       141                 141 |
#         \                 /   |
#           ------ 3 ------     |      3 at (100, -100)
#
# From 0: 1 in 10 s, 3 in 7.071 s, 2 in 14.142 s (via 3, not via 1: 20 s), 4 in 24.142 s.
S2 = math.sqrt(2.0)
_SLOW = {"speed_kph": 36.0}
_FAST = {"speed_kph": 72.0, "highway": "primary"}
_EDGES: list[tuple[int, int, dict[str, object]]] = [
    (0, 1, _SLOW),
    (1, 0, _SLOW),
    (1, 2, _SLOW),
    (2, 1, _SLOW),
    (0, 3, _FAST),
    (3, 0, _FAST),
    (3, 2, _FAST),
    (2, 3, _FAST),
    (2, 4, _SLOW),
    (4, 1, _SLOW),
]


@pytest.fixture(scope="module")
def sketch() -> CompiledGraph:
    G = graph_from_sketch({0: (0, 0), 1: (100, 0), 2: (200, 0), 3: (100, -100), 4: (200, 100)}, _EDGES)
    return compile_graph(G)


def test_times_from_nodes_exact(sketch: CompiledGraph) -> None:
    times = times_from_nodes(sketch, [0])
    assert times.shape == (1, 5)
    np.testing.assert_allclose(times[0], [0.0, 10.0, 10 * S2, 5 * S2, 10 + 10 * S2], atol=1e-9)
    limited = times_from_nodes(sketch, [0, 4], limit_s=12.0)
    np.testing.assert_allclose(limited[0], [0.0, 10.0, np.inf, 5 * S2, np.inf])
    # From 4 the only way out is 4 -> 1 (10 * sqrt 2 = 14.1 s): everything is beyond 12 s.
    np.testing.assert_allclose(limited[1], [np.inf, np.inf, np.inf, np.inf, 0.0])


def test_times_to_nodes_exact(sketch: CompiledGraph) -> None:
    to_1 = times_to_nodes(sketch, [1])[0]
    np.testing.assert_allclose(to_1, [10.0, 0.0, 10.0, 5 * S2 + 10.0, 10 * S2], atol=1e-9)


def test_shortest_path_prefers_the_fast_diagonals(sketch: CompiledGraph) -> None:
    assert shortest_path(sketch, 0, 2) == [0, 3, 2]
    assert shortest_path(sketch, 4, 0) == [4, 1, 0]
    edges = path_edges(sketch, [0, 3, 2])
    assert float(sketch.edge_time_s[edges].sum()) == pytest.approx(10 * S2)
    # Not a path (0 and 2 are not neighbours; 1 -> 4 is against the one-way): the error says so.
    with pytest.raises(KeyError, match="no edge from node 0 to node 2"):
        path_edges(sketch, [0, 2])
    with pytest.raises(KeyError, match="no edge from node 1 to node 4"):
        sketch.edge_between(1, 4)


def test_times_from_positions_drive_to_the_edge_end(sketch: CompiledGraph) -> None:
    e01 = sketch.edge_between(0, 1)
    times = times_from_positions(sketch, [EdgePosition(e01, 40.0)])[0]
    # 60 m left to node 1 (6 s), then on: 0 via 1 -> 0, 2 via 1 -> 2.
    np.testing.assert_allclose(times, [16.0, 6.0, 16.0, 16.0 + 5 * S2, 26.0], atol=1e-9)


def test_times_from_positions_edge_cases(sketch: CompiledGraph) -> None:
    e01 = sketch.edge_between(0, 1)
    # No position: an empty (0, n) answer, not a crash on min() of nothing.
    assert times_from_positions(sketch, []).shape == (0, 5)
    assert times_from_positions(sketch, [], limit_s=10.0).shape == (0, 5)
    # Offsets outside the edge are clamped: before the tail = at the tail, past the head = at it.
    before, past, end = times_from_positions(
        sketch, [EdgePosition(e01, -50.0), EdgePosition(e01, 250.0), EdgePosition(e01, 100.0)]
    )
    np.testing.assert_allclose(before, times_from_positions(sketch, [EdgePosition(e01, 0.0)])[0])
    np.testing.assert_allclose(past, end)
    assert past[1] == 0.0
    with pytest.raises(IndexError, match="edge 99"):
        times_from_positions(sketch, [EdgePosition(99, 0.0)])
    with pytest.raises(ValueError, match=f"edge {e01}: offset_m nan"):
        times_from_positions(sketch, [EdgePosition(e01, math.nan)])


def test_node_queries_name_a_node_outside_the_graph(sketch: CompiledGraph) -> None:
    assert times_from_nodes(sketch, []).shape == (0, 5)
    with pytest.raises(IndexError, match="node 7"):
        times_from_nodes(sketch, [0, 7])
    with pytest.raises(IndexError, match="node -1"):
        times_to_nodes(sketch, [-1])


# --------------------------------------------------------------------------- real maps

REAL = ("monaco", "harrisburg", "paris_center", "helsinki_center")


@pytest.fixture(scope="module")
def real(shared_maps: Path) -> dict[str, tuple[nx.MultiDiGraph, CompiledGraph]]:
    out = {}
    for name in REAL:
        G = graph_from_xml(shared_maps / f"{name}.osm.bz2")
        out[name] = (G, compile_graph(G))
    return out


@pytest.mark.parametrize("name", REAL)
def test_compiled_times_equal_networkx_dijkstra(
    real: dict[str, tuple[nx.MultiDiGraph, CompiledGraph]], name: str
) -> None:
    G, compiled = real[name]
    rng = np.random.default_rng(20261126)
    sources = rng.integers(0, compiled.n_nodes, 50)
    targets = rng.integers(0, compiled.n_nodes, 50)
    times = times_from_nodes(compiled, sources)
    for row, (s, t) in enumerate(zip(sources, targets, strict=True)):
        su, tu = int(compiled.node_osmid[s]), int(compiled.node_osmid[t])
        expected = nx.dijkstra_path_length(G, su, tu, weight="travel_time")
        assert times[row, t] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        path = shortest_path(compiled, int(s), int(t))
        assert path[0] == s and path[-1] == t
        assert float(compiled.edge_time_s[path_edges(compiled, path)].sum()) == pytest.approx(expected)
    # Every node reaches every other: the graph is one strongly connected component.
    assert np.isfinite(times).all()


# --------------------------------------------------------------------------- cache


def _assert_same(a: CompiledGraph, b: CompiledGraph) -> None:
    for f in dataclasses.fields(CompiledGraph):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        elif f.name in ("time_csr", "pair_edge"):
            assert x.dtype == y.dtype and (x != y).nnz == 0, f.name
            np.testing.assert_array_equal(x.indptr, y.indptr)
        else:
            assert x == y, f.name


def test_load_compiled_caches_by_graph_hash(
    real: dict[str, tuple[nx.MultiDiGraph, CompiledGraph]], tmp_path: Path
) -> None:
    G, compiled = real["helsinki_center"]
    first = load_compiled(G, cache_dir=tmp_path)
    entries = list(tmp_path.glob("*.npz"))
    assert [p.name for p in entries] == [f"graph-{graph_hash(G)}.npz"]
    stamp = entries[0].stat().st_mtime_ns
    second = load_compiled(G, cache_dir=tmp_path)
    assert entries[0].stat().st_mtime_ns == stamp  # read, not rewritten
    _assert_same(first, compiled)
    _assert_same(second, compiled)
    np.testing.assert_array_equal(times_from_nodes(second, [0, 5]), times_from_nodes(compiled, [0, 5]))
    assert load_compiled(G, cache_dir=None).version == compiled.version


def test_a_node_commune_change_is_a_new_cache_entry(tmp_path: Path) -> None:
    # Communes retagged so that only a crossing changes commune (the edges keep theirs): the
    # cache must not hand back the old node communes, which guidance's commune rules read.
    G = graph_from_sketch({0: (0, 0), 1: (100, 0), 2: (200, 0), 3: (100, -100), 4: (200, 100)}, _EDGES)
    for _, data in G.nodes(data=True):
        data["commune"] = "Metz"
    before = load_compiled(G, cache_dir=tmp_path)
    G.nodes[4]["commune"] = "Montigny-lès-Metz"
    after = load_compiled(G, cache_dir=tmp_path)
    assert after.version != before.version
    assert after.node_commune[4] == "Montigny-lès-Metz" and before.node_commune[4] == "Metz"
    assert len(list(tmp_path.glob("graph-*.npz"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other_graph"])
def test_corrupted_cache_entry_is_rebuilt(
    real: dict[str, tuple[nx.MultiDiGraph, CompiledGraph]], tmp_path: Path, damage: str
) -> None:
    G, compiled = real["helsinki_center"]
    load_compiled(G, cache_dir=tmp_path)
    entry = tmp_path / f"graph-{graph_hash(G)}.npz"
    if damage == "garbage":
        entry.write_bytes(b"\x00not a zip file" * 100)
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:  # a valid entry of another graph under this key
        other = real["paris_center"][0]
        load_compiled(other, cache_dir=tmp_path)
        shutil.copy(tmp_path / f"graph-{graph_hash(other)}.npz", entry)
    rebuilt = load_compiled(G, cache_dir=tmp_path)
    _assert_same(rebuilt, compiled)
    _assert_same(load_compiled(G, cache_dir=tmp_path), compiled)  # and the entry is good again


def test_load_compiled_from_file(shared_maps: Path, tmp_path: Path) -> None:
    source = shared_maps / "helsinki_center.osm.bz2"
    fresh, hit = load_compiled_from_file(source, cache_dir=tmp_path)
    assert not hit
    cached, hit = load_compiled_from_file(source, cache_dir=tmp_path)
    assert hit
    _assert_same(cached, fresh)
    assert cached.version == graph_hash(graph_from_xml(source))
    assert cached.name == "helsinki_center"
    # Another speed table is another entry, with other travel times.
    # (Helsinki tags its limits; ignoring tags above 25 km/h falls back to the class defaults.)
    table = SpeedTable(max_kph=25.0)
    assert file_key(source, table) != file_key(source)
    other, hit = load_compiled_from_file(source, cache_dir=tmp_path, speeds=table)
    assert not hit and not np.array_equal(other.edge_time_s, fresh.edge_time_s)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # A corrupted entry is rebuilt.
    for entry in tmp_path.glob("*.npz"):
        entry.write_bytes(b"corrupt")
    again, hit = load_compiled_from_file(source, cache_dir=tmp_path)
    assert not hit
    _assert_same(again, fresh)
    # Without a cache directory nothing is written.
    plain, hit = load_compiled_from_file(source, cache_dir=None)
    assert not hit and plain.version == fresh.version


def test_load_compiled_from_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MapFileError, match=r"absent\.osm\.bz2"):
        load_compiled_from_file(tmp_path / "absent.osm.bz2", cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.npz"))
