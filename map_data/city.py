"""Assemble a :class:`City`: the compiled street graph, its cameras and its communes.

:func:`default_city` is the embedded map every demo, test and simulation can run on without any
file: a generated city (:func:`map_data.generate.generate_city`) split into three invented
communes, with synthetic cameras at Metz's density. :func:`load_city` does the same from real
files. :func:`exit_nodes` says where a suspect leaves the map.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np
import numpy.typing as npt
import shapely
from pyproj import Transformer
from shapely.geometry import Polygon, box

from map_data.cameras import (
    build_camera_network,
    cameras_from_file,
    metz_density,
    place_synthetic_cameras,
)
from map_data.communes import communes_from_geojson, tag_communes
from map_data.compile import compile_graph
from map_data.generate import generate_city
from map_data.network_types import Camera, City, Commune
from map_data.types import CompiledGraph, IntArray

#: The invented communes of the default city: the centre inside the ring, the south, the north.
DEFAULT_COMMUNES = ("Metz-Centre", "Montigny", "Woippy")
#: A crossing this close (m) to the edge of the map's extent, where a road ends, is an exit.
EXIT_MARGIN_M = 50.0


def default_city(*, n_crossings: int = 1500, seed: int = 7) -> City:
    """The embedded default map (deterministic from ``n_crossings`` and ``seed``).

    A generated city of about ``n_crossings`` crossings in three communes
    (:data:`DEFAULT_COMMUNES`: the centre, a square of half the map's width around its middle;
    the south and the north of the rest), with :func:`map_data.cameras.metz_density` synthetic
    cameras at the busiest crossings, each tagged with its commune.
    """
    G = generate_city(n_crossings, seed=seed, name=f"default-city-{n_crossings}-s{seed}")
    communes = _default_communes(G)
    tag_communes(G, communes)
    graph = compile_graph(G)
    cameras = place_synthetic_cameras(graph, metz_density(graph), seed=seed)
    return City(graph=graph, cameras=build_camera_network(graph, cameras), communes=communes)


def _default_communes(G: nx.MultiDiGraph) -> tuple[Commune, ...]:
    xy = np.array([[d["x"], d["y"]] for _, d in G.nodes(data=True)], dtype=np.float64)
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    pad = 500.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = (x1 - x0) / 4, (y1 - y0) / 4
    centre = box(cx - hx, cy - hy, cx + hx, cy + hy)
    south = box(x0 - pad, y0 - pad, x1 + pad, cy).difference(centre)
    north = box(x0 - pad, cy, x1 + pad, y1 + pad).difference(centre)
    to_wgs84 = Transformer.from_crs(str(G.graph["crs"]), "EPSG:4326", always_xy=True)

    def lonlat(geom: Polygon) -> str:
        def project(coords: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            lon, lat = to_wgs84.transform(coords[:, 0], coords[:, 1])
            return np.column_stack([lon, lat])

        return str(shapely.transform(geom, project).wkt)

    return tuple(
        Commune(name=name, boundary_wkt=lonlat(geom))
        for name, geom in zip(DEFAULT_COMMUNES, (centre, south, north), strict=True)
    )


def load_city(
    map_path: str | Path,
    *,
    cameras_path: str | Path | None = None,
    communes_path: str | Path | None = None,
    synthetic_cameras: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    detection_probability: float = 0.8,
) -> City:
    """A :class:`City` from real files.

    Parameters
    ----------
    map_path
        ``.osm``/``.osm.bz2``/``.graphml`` street map (:func:`map_data.graph.graph_from_file`).
    cameras_path
        Camera file (``.geojson``, ``.csv``, ``.osm[.bz2]``); cameras outside the map or
        seeing no street are left out (use :func:`map_data.cameras.build_camera_network_report`
        to list them).
    communes_path
        GeoJSON of commune boundaries; nodes and edges are tagged with them.
    synthetic_cameras
        Number of synthetic cameras added at busy crossings. When neither this nor
        ``cameras_path`` is given, Metz's density is used (one camera per three crossings).
    seed
        Seed of the synthetic camera placement.
    cache_dir
        Where compiled graphs are cached (:mod:`map_data.cache`; keyed by the file's bytes, or
        by the tagged graph when communes are given); no cache if None.
    """
    from map_data.cache import load_compiled, load_compiled_from_file
    from map_data.graph import graph_from_file

    cache = None if cache_dir is None else Path(cache_dir)
    communes: tuple[Commune, ...] = ()
    if communes_path is None:
        graph, _ = load_compiled_from_file(map_path, cache_dir=cache)
    else:
        communes = communes_from_geojson(communes_path)
        G = graph_from_file(map_path)
        tag_communes(G, communes)
        graph = load_compiled(G, cache_dir=cache)
    cameras: list[Camera] = []
    if cameras_path is not None:
        cameras.extend(cameras_from_file(cameras_path))
    if synthetic_cameras is None and cameras_path is None:
        synthetic_cameras = metz_density(graph)
    if synthetic_cameras:
        cameras.extend(place_synthetic_cameras(graph, synthetic_cameras, seed=seed))
    network = build_camera_network(graph, cameras, detection_probability=detection_probability, strict=False)
    return City(graph=graph, cameras=network, communes=communes)


def exit_nodes(graph: CompiledGraph, *, margin_m: float = EXIT_MARGIN_M) -> IntArray:
    """Crossings where a suspect leaves the map, sorted.

    An exit is a crossing within ``margin_m`` of the boundary of the map's extent (the convex
    hull of all crossings) where the road ends: it has a single neighbouring crossing. That is
    what an OSM extract looks like where a road was cut at the bounding box, and what
    :func:`map_data.generate.generate_city` builds (its ``exit=True`` crossings). A crossing
    on the map's edge where several streets meet is not an exit (its streets go on inside).
    """
    n = graph.n_nodes
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    hull = shapely.convex_hull(shapely.multipoints(graph.node_xy))
    boundary = hull.boundary if hull.geom_type == "Polygon" else hull
    dist = shapely.distance(shapely.points(graph.node_xy), boundary)
    near = np.asarray(dist, dtype=np.float64) <= margin_m
    a = np.concatenate([graph.edge_u, graph.edge_v])
    b = np.concatenate([graph.edge_v, graph.edge_u])
    pairs = np.unique(np.column_stack([a, b]), axis=0)
    neighbours = np.bincount(pairs[:, 0], minlength=n)
    out: IntArray = np.flatnonzero(near & (neighbours <= 1)).astype(np.int64)
    return out


def city_summary(city: City) -> dict[str, float]:
    """A few numbers about a city, for logs and reports."""
    graph = city.graph
    xy = graph.node_xy
    span = xy.max(axis=0) - xy.min(axis=0) if graph.n_nodes else np.zeros(2)
    return {
        "nodes": float(graph.n_nodes),
        "edges": float(graph.n_edges),
        "cameras": float(len(city.cameras.cameras)),
        "communes": float(len(city.communes)),
        "exits": float(exit_nodes(graph).size),
        "extent_km2": float(span[0] * span[1] / 1e6),
        "street_km": float(math.fsum(graph.edge_length_m) / 1000.0),
    }
