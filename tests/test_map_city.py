"""The assembled city: default city, real-file cities, communes, exits, and the ``cordon map`` commands."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from commands.map import register
from map_data.cameras import metz_density
from map_data.city import DEFAULT_COMMUNES, default_city, exit_nodes, load_city
from map_data.communes import commune_at, communes_from_geojson, tag_communes
from map_data.compile import compile_graph
from map_data.errors import MapDataError, MapFileError
from map_data.generate import generate_city
from map_data.handmade import graph_from_sketch
from map_data.network_types import City, Commune

# --------------------------------------------------------------------------- default city


@pytest.fixture(scope="module")
def city() -> City:
    return default_city()


def test_default_city_is_deterministic(city: City) -> None:
    again = default_city()
    assert again.graph.version == city.graph.version
    assert list(again.cameras.cameras.values()) == list(city.cameras.cameras.values())
    assert again.communes == city.communes
    other = default_city(seed=8)
    assert other.graph.version != city.graph.version


def test_default_city_contents(city: City) -> None:
    graph = city.graph
    assert abs(graph.n_nodes / 1500 - 1) <= 0.15
    assert tuple(c.name for c in city.communes) == DEFAULT_COMMUNES
    # Every crossing and street is in one of the three communes, each holding a fair share.
    node_communes = Counter(graph.node_commune)
    assert set(node_communes) == set(DEFAULT_COMMUNES)
    assert min(node_communes.values()) > graph.n_nodes / 6
    assert None not in graph.edge_commune
    # Cameras at Metz's density, all mapped, each with the commune of its crossing.
    cams = city.cameras.cameras
    assert len(cams) == metz_density(graph)
    assert len(city.cameras.views) == len(cams)
    for cam in cams.values():
        assert cam.commune == commune_at(city.communes, cam.lon, cam.lat)
    assert {cam.commune for cam in cams.values()} == set(DEFAULT_COMMUNES)
    assert city.cameras.detection_probability == 0.8


# --------------------------------------------------------------------------- exits


def test_exits_of_the_generated_city_are_its_flagged_crossings() -> None:
    G = generate_city(3000, seed=4)
    graph = compile_graph(G)
    flagged = sorted(graph.node_index[n] for n, d in G.nodes(data=True) if d.get("exit"))
    assert exit_nodes(graph).tolist() == flagged


# A plus with one long arm; only the ends of the arms on the map's edge are exits, not the
# dead end D inside the map nor the crossing C:
#
#              N (0,100)
#               |
#   W (-100,0) - C (0,0) -------- E (300,0)
#               |    \
#              S (0,-100)  D (60,-20)
EXIT_NODES = {
    1: (0.0, 0.0),
    2: (-100.0, 0.0),
    3: (300.0, 0.0),
    4: (0.0, 100.0),
    5: (0.0, -100.0),
    6: (60.0, -20.0),
}


def test_exits_of_a_hand_drawn_map() -> None:
    G = graph_from_sketch(EXIT_NODES, [(1, 2), (1, 3), (1, 4), (1, 5), (1, 6)], two_way=True)
    graph = compile_graph(G)
    exits = {int(graph.node_osmid[i]) for i in exit_nodes(graph)}
    assert exits == {2, 3, 4, 5}


def test_real_maps_have_exits(shared_maps: Path) -> None:
    city = load_city(shared_maps / "helsinki_center.osm.bz2", synthetic_cameras=10, seed=1)
    exits = exit_nodes(city.graph)
    assert 3 <= exits.size <= city.graph.n_nodes // 4
    # Every exit is a dead end: one neighbouring crossing.
    for node in exits.tolist():
        neighbours = set(city.graph.edge_v[city.graph.out_of(node)].tolist())
        neighbours |= set(city.graph.edge_u[city.graph.into(node)].tolist())
        assert len(neighbours) == 1
    assert len(city.cameras.cameras) == 10


# --------------------------------------------------------------------------- communes and real files


def _write_halves(path: Path, lon_split: float) -> None:
    west = [[[2.0, 48.0], [lon_split, 48.0], [lon_split, 49.5], [2.0, 49.5], [2.0, 48.0]]]
    east = [[[[lon_split, 48.0], [3.0, 48.0], [3.0, 49.5], [lon_split, 49.5], [lon_split, 48.0]]]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": west},
                "properties": {"name": "Ouest"},
            },
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": east},
                "properties": {"name": "Est"},
            },
        ],
    }
    path.write_text(json.dumps(doc))


def test_load_city_with_cameras_and_communes(shared_maps: Path, tmp_path: Path) -> None:
    communes_path = tmp_path / "communes.geojson"
    _write_halves(communes_path, 2.365)
    city = load_city(
        shared_maps / "paris_center.osm.bz2",
        cameras_path=shared_maps / "paris_cameras.geojson",
        communes_path=communes_path,
    )
    assert [c.name for c in city.communes] == ["Ouest", "Est"]
    assert 36 <= len(city.cameras.cameras) <= 46  # the outside ones are left out
    west = city.graph.node_lonlat[:, 0] < 2.365
    names = np.array(city.graph.node_commune, dtype=object)
    assert (names[west] == "Ouest").all() and (names[~west] == "Est").all()
    assert set(city.graph.edge_commune) == {"Ouest", "Est"}


def test_communes_from_geojson_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.geojson"
    point = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [6.1, 49.1]},
        "properties": {"name": "X"},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [point]}))
    with pytest.raises(MapFileError, match=r"feature 0: commune 'X' geometry must be a Polygon"):
        communes_from_geojson(path)
    path.write_text(
        json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}}]})
    )
    with pytest.raises(MapFileError, match="feature 0: no 'name'"):
        communes_from_geojson(path)
    with pytest.raises(MapFileError, match="not found"):
        communes_from_geojson(tmp_path / "missing.geojson")
    with pytest.raises(MapDataError, match="'Bad'"):
        commune_at([Commune("Bad", "POLYGON ((")], 6.1, 49.1)


# Two communes split at x = 50 m; the edge 1->2 has its midpoint in "A", 2->3 in "B":
#
#   1 (0,0) ---- 2 (40,0) ---- 3 (100,0)        (boundary at x = 50)
def test_tag_communes_by_node_and_edge_midpoint(tmp_path: Path) -> None:
    G = graph_from_sketch({1: (0.0, 0.0), 2: (40.0, 0.0), 3: (100.0, 0.0)}, [(1, 2), (2, 3)])
    lon_b = G.nodes[2]["lon"] + (G.nodes[3]["lon"] - G.nodes[2]["lon"]) / 6  # x = 50 m
    west = f"POLYGON ((6.0 49.0, {lon_b} 49.0, {lon_b} 49.3, 6.0 49.3, 6.0 49.0))"
    east = f"POLYGON (({lon_b} 49.0, 6.4 49.0, 6.4 49.3, {lon_b} 49.3, {lon_b} 49.0))"
    communes = (Commune("A", west), Commune("B", east))
    tag_communes(G, communes)
    assert [G.nodes[n]["commune"] for n in (1, 2, 3)] == ["A", "A", "B"]
    assert G.edges[1, 2, 0]["commune"] == "A"
    assert G.edges[2, 3, 0]["commune"] == "B"  # midpoint x = 70 m
    assert commune_at(communes, 7.0, 49.1) is None
    graph = compile_graph(G)
    assert graph.node_commune == ("A", "A", "B")


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root."""

    register(app)
    return app


def test_cli_generate_then_info(cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "town.graphml"
    result = runner.invoke(cli, ["map", "generate", "--crossings", "400", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "bridge edges" in result.output
    result = runner.invoke(cli, ["map", "info", str(out)])
    assert result.exit_code == 0, result.output
    nodes = int(next(line.split()[1] for line in result.output.splitlines() if line.startswith("nodes")))
    assert nodes == generate_city(400, seed=3).number_of_nodes()
    assert "residential" in result.output and "trunk" in result.output
    result = runner.invoke(cli, ["map", "info", str(tmp_path / "missing.graphml")])
    assert result.exit_code == 2
    assert "not found" in result.output


def test_cli_camera_coverage_report(cli: typer.Typer, shared_maps: Path) -> None:
    runner = CliRunner()
    args = ["map", "cameras", str(shared_maps / "paris_center.osm.bz2"), "--cameras"]
    result = runner.invoke(cli, [*args, str(shared_maps / "paris_cameras.geojson")])
    assert result.exit_code == 0, result.output
    assert "cameras in file   707" in result.output
    assert "CameraOutsideMapError" in result.output
    result = runner.invoke(cli, [*args, str(shared_maps / "paris_cameras.geojson"), "--strict"])
    assert result.exit_code == 1


def test_load_city_uses_the_cache(shared_maps: Path, tmp_path: Path) -> None:
    first = load_city(shared_maps / "helsinki_center.osm.bz2", synthetic_cameras=20, cache_dir=tmp_path)
    assert list(tmp_path.glob("*.npz"))
    second = load_city(shared_maps / "helsinki_center.osm.bz2", synthetic_cameras=20, cache_dir=tmp_path)
    assert second.graph.version == first.graph.version
    assert list(second.cameras.cameras.values()) == list(first.cameras.cameras.values())
    with pytest.raises(MapFileError, match="not found"):
        load_city(tmp_path / "missing.osm.bz2")
