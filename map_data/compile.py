"""Compile a networkx street graph into its array form (:class:`CompiledGraph`)."""

from __future__ import annotations

import hashlib
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
from pyproj import Transformer

from map_data._osm_io import as_flag, as_text, first_value
from map_data.errors import EmptyGraphError, GraphAttributeError
from map_data.types import CompiledGraph, road_rank

#: Bump when the compiled layout or its meaning changes: it invalidates on-disk caches.
COMPILER_VERSION = "1"

_REQUIRED_NODE = ("x", "y", "lon", "lat")
_REQUIRED_EDGE = ("length", "travel_time", "speed_kph", "highway")


def validate_graph(G: nx.MultiDiGraph) -> None:
    """Check that ``G`` follows the attribute conventions of :mod:`map_data.types`.

    Raises :class:`EmptyGraphError` for a graph without edges and
    :class:`GraphAttributeError` naming the first missing attribute.
    """
    name = G.graph.get("name", "graph")
    if G.number_of_edges() == 0:
        raise EmptyGraphError(f"{name}: the street graph has no edges")
    if "crs" not in G.graph:
        raise GraphAttributeError(f"{name}: graph attribute 'crs' is missing")
    for node, data in G.nodes(data=True):
        for attr in _REQUIRED_NODE:
            if attr not in data:
                raise GraphAttributeError(f"{name}: node {node} has no '{attr}'")
    for u, v, k, data in G.edges(keys=True, data=True):
        for attr in _REQUIRED_EDGE:
            if attr not in data:
                raise GraphAttributeError(f"{name}: edge ({u}, {v}, {k}) has no '{attr}'")
        if not float(data["travel_time"]) > 0:
            raise GraphAttributeError(f"{name}: edge ({u}, {v}, {k}) has travel_time <= 0")


def graph_hash(G: nx.MultiDiGraph) -> str:
    """Content hash of ``G`` as the core reads it (and of the compiler version).

    Covers node positions and communes, and edge lengths, travel times, road classes, names
    and communes: a change to any of them (e.g. a new commune file tagging the same streets)
    is a different graph version and a different cache entry.
    """
    h = hashlib.sha256(COMPILER_VERSION.encode())
    h.update(str(G.graph.get("crs")).encode())
    for node, data in sorted(G.nodes(data=True), key=lambda nd: nd[0]):
        h.update(f"{node}:{data['x']:.3f}:{data['y']:.3f}:{as_text(data.get('commune'))};".encode())
    for u, v, k, data in sorted(G.edges(keys=True, data=True), key=lambda e: (e[0], e[1], e[2])):
        h.update(
            f"{u}>{v}/{k}:{float(data['length']):.3f}:{float(data['travel_time']):.4f}:"
            f"{as_text(data.get('highway'))}:{as_text(data.get('name'))}:"
            f"{as_text(data.get('commune'))};".encode()
        )
    return h.hexdigest()[:16]


def _edge_polyline(G: nx.MultiDiGraph, u: Any, v: Any, data: dict[str, Any]) -> list[tuple[float, float]]:
    geom = data.get("geometry")
    if geom is not None:
        coords = [(float(x), float(y)) for x, y, *_ in geom.coords]
        if len(coords) >= 2:
            return coords
    return [
        (float(G.nodes[u]["x"]), float(G.nodes[u]["y"])),
        (float(G.nodes[v]["x"]), float(G.nodes[v]["y"])),
    ]


def _csr_order(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable").astype(np.int64)
    counts = np.bincount(keys, minlength=n)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, order


def compile_graph(G: nx.MultiDiGraph, *, version: str | None = None) -> CompiledGraph:
    """Derive the array form of ``G`` (which must follow :mod:`map_data.types` conventions).

    Nodes are indexed in sorted osmid order and edges in sorted ``(u, v, key)`` order, so the
    same graph always compiles to the same indices.
    """
    validate_graph(G)
    osmids = sorted(G.nodes)
    node_index = {int(o): i for i, o in enumerate(osmids)}
    n = len(osmids)
    node_xy = np.array([[G.nodes[o]["x"], G.nodes[o]["y"]] for o in osmids], dtype=np.float64)
    node_lonlat = np.array([[G.nodes[o]["lon"], G.nodes[o]["lat"]] for o in osmids], dtype=np.float64)
    node_commune = tuple(as_text(G.nodes[o].get("commune")) or None for o in osmids)

    edges = sorted(G.edges(keys=True, data=True), key=lambda e: (e[0], e[1], e[2]))
    m = len(edges)
    edge_u = np.fromiter((node_index[int(e[0])] for e in edges), dtype=np.int64, count=m)
    edge_v = np.fromiter((node_index[int(e[1])] for e in edges), dtype=np.int64, count=m)
    edge_key = np.fromiter((int(e[2]) for e in edges), dtype=np.int64, count=m)
    length = np.fromiter((float(e[3]["length"]) for e in edges), dtype=np.float64, count=m)
    time_s = np.fromiter((float(e[3]["travel_time"]) for e in edges), dtype=np.float64, count=m)
    speed = np.fromiter(
        (float(first_value(e[3]["speed_kph"])) / 3.6 for e in edges), dtype=np.float64, count=m
    )
    highway = tuple(as_text(e[3].get("highway")) for e in edges)
    rank = np.fromiter((road_rank(h) for h in highway), dtype=np.int64, count=m)
    names = tuple(as_text(e[3].get("name")) for e in edges)
    oneway = np.fromiter((as_flag(e[3].get("oneway", False)) for e in edges), dtype=np.bool_, count=m)
    bridge = np.fromiter((as_flag(e[3].get("bridge", False)) for e in edges), dtype=np.bool_, count=m)
    tunnel = np.fromiter((as_flag(e[3].get("tunnel", False)) for e in edges), dtype=np.bool_, count=m)
    edge_commune = tuple(as_text(e[3].get("commune")) or None for e in edges)

    polylines = [_edge_polyline(G, e[0], e[1], e[3]) for e in edges]
    geom_ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum([len(p) for p in polylines], out=geom_ptr[1:])
    geom_xy = np.array([pt for p in polylines for pt in p], dtype=np.float64).reshape(-1, 2)
    crs = str(G.graph["crs"])
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(geom_xy[:, 0], geom_xy[:, 1])
    geom_lonlat = np.column_stack([lon, lat]).astype(np.float64)

    out_ptr, out_edges = _csr_order(edge_u, n)
    in_ptr, in_edges = _csr_order(edge_v, n)

    # Fastest edge per ordered node pair: sort by time descending so the fastest is written last.
    best = np.lexsort((-time_s, edge_v, edge_u))
    pair_u, pair_v = edge_u[best], edge_v[best]
    last = np.ones(m, dtype=bool)
    last[:-1] = (pair_u[1:] != pair_u[:-1]) | (pair_v[1:] != pair_v[:-1])
    keep = best[last]
    time_csr = sp.csr_matrix((time_s[keep], (edge_u[keep], edge_v[keep])), shape=(n, n))
    pair_edge = sp.csr_matrix((keep + 1, (edge_u[keep], edge_v[keep])), shape=(n, n), dtype=np.int64)

    return CompiledGraph(
        version=version or graph_hash(G),
        crs=crs,
        name=str(G.graph.get("name", "graph")),
        node_osmid=np.array(osmids, dtype=np.int64),
        node_xy=node_xy,
        node_lonlat=node_lonlat,
        node_commune=node_commune,
        edge_u=edge_u,
        edge_v=edge_v,
        edge_key=edge_key,
        edge_length_m=length,
        edge_speed_mps=speed,
        edge_time_s=time_s,
        edge_rank=rank,
        edge_highway=highway,
        edge_name=names,
        edge_oneway=oneway,
        edge_bridge=bridge,
        edge_tunnel=tunnel,
        edge_commune=edge_commune,
        out_ptr=out_ptr,
        out_edges=out_edges,
        in_ptr=in_ptr,
        in_edges=in_edges,
        geom_ptr=geom_ptr,
        geom_xy=geom_xy,
        geom_lonlat=geom_lonlat,
        time_csr=time_csr,
        pair_edge=pair_edge,
        node_index=node_index,
    )
