"""Data types of the street network: the compiled array form and positions on it.

The networkx ``MultiDiGraph`` (osmnx conventions) stays the model; :class:`CompiledGraph`
is derived from it by :func:`map_data.compile.compile_graph` and is what routing, tracking
and guidance read. Indices are dense ``0..n-1`` (nodes) and ``0..m-1`` (directed edges).

Graph attribute conventions (checked by :func:`map_data.compile.validate_graph`):

* graph: ``crs`` (a projected, metric CRS string), optional ``name``, ``source_hash``.
* node: ``x``, ``y`` (metres, in ``crs``), ``lon``, ``lat`` (WGS84 degrees),
  optional ``commune`` (str).
* edge ``(u, v, key)``: ``length`` (m), ``speed_kph``, ``travel_time`` (s), ``highway``
  (str, the OSM road class), optional ``name`` (str), ``oneway`` (bool), ``bridge`` (bool),
  ``tunnel`` (bool), ``geometry`` (shapely LineString in ``crs``, from u to v),
  ``commune`` (str).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Road classes, most important first. ``ROAD_RANK[highway]`` is 0 for motorways and grows
#: toward service roads; unknown classes get the last rank.
ROAD_CLASSES: tuple[str, ...] = (
    "motorway",
    "trunk",
    "primary",
    "secondary",
    "tertiary",
    "unclassified",
    "residential",
    "living_street",
    "service",
)
ROAD_RANK: dict[str, int] = {name: rank for rank, name in enumerate(ROAD_CLASSES)}
ROAD_RANK.update(
    {
        "motorway_link": 1,
        "trunk_link": 2,
        "primary_link": 3,
        "secondary_link": 4,
        "tertiary_link": 5,
    }
)


def road_rank(highway: str) -> int:
    """Rank of an OSM ``highway`` value (0 = motorway); unknown values rank last."""
    return ROAD_RANK.get(highway, len(ROAD_CLASSES) - 1)


@dataclass(frozen=True, slots=True)
class EdgePosition:
    """A point on a directed edge: ``offset_m`` metres from the edge's tail node ``u``."""

    edge: int
    offset_m: float


@dataclass(frozen=True, slots=True)
class LonLat:
    lon: float
    lat: float


@dataclass(frozen=True, eq=False)
class CompiledGraph:
    """Array form of a drivable street graph, for fast routing.

    Nodes
        ``node_osmid[i]`` is the osmnx node id of index ``i``; ``node_xy`` metres in ``crs``;
        ``node_lonlat`` WGS84.
    Edges
        directed edge ``e`` goes from node ``edge_u[e]`` to ``edge_v[e]``; ``edge_key`` is the
        osmnx multi-edge key. ``edge_time_s`` is the free-flow travel time at the legal speed.
    Adjacency
        ``out_ptr``/``out_edges``: the edges leaving node ``i`` are
        ``out_edges[out_ptr[i]:out_ptr[i+1]]``; ``in_ptr``/``in_edges`` likewise for arriving.
    Geometry
        edge ``e``'s polyline (projected metres, from u to v) is
        ``geom_xy[geom_ptr[e]:geom_ptr[e+1]]``; ``geom_lonlat`` holds the same points in WGS84.
    Routing matrices
        ``time_csr`` (n×n, scipy CSR) holds, for each ordered node pair joined by an edge, the
        fastest such edge's travel time; ``pair_edge`` (same sparsity) that edge's index plus
        one (0 = no edge; read it with :meth:`edge_between`).
    ``version`` is a hash of the source graph's content and of the compiler version; it keys the
    on-disk cache and is recorded with every suggestion for replay.
    """

    version: str
    crs: str
    name: str
    node_osmid: IntArray
    node_xy: FloatArray
    node_lonlat: FloatArray
    node_commune: tuple[str | None, ...]
    edge_u: IntArray
    edge_v: IntArray
    edge_key: IntArray
    edge_length_m: FloatArray
    edge_speed_mps: FloatArray
    edge_time_s: FloatArray
    edge_rank: IntArray
    edge_highway: tuple[str, ...]
    edge_name: tuple[str, ...]
    edge_oneway: BoolArray
    edge_bridge: BoolArray
    edge_tunnel: BoolArray
    edge_commune: tuple[str | None, ...]
    out_ptr: IntArray
    out_edges: IntArray
    in_ptr: IntArray
    in_edges: IntArray
    geom_ptr: IntArray
    geom_xy: FloatArray
    geom_lonlat: FloatArray
    time_csr: Any  # scipy.sparse.csr_matrix, float64
    pair_edge: Any  # scipy.sparse.csr_matrix, int64 edge index + 1 (0 means no edge)
    node_index: dict[int, int] = field(repr=False)

    @property
    def n_nodes(self) -> int:
        return int(self.node_osmid.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_u.shape[0])

    def out_of(self, node: int) -> IntArray:
        """Indices of the edges leaving ``node``."""
        return self.out_edges[self.out_ptr[node] : self.out_ptr[node + 1]]

    def into(self, node: int) -> IntArray:
        """Indices of the edges arriving at ``node``."""
        return self.in_edges[self.in_ptr[node] : self.in_ptr[node + 1]]

    def edge_xy(self, edge: int) -> FloatArray:
        """Polyline of ``edge`` in projected metres, from its tail to its head."""
        return self.geom_xy[self.geom_ptr[edge] : self.geom_ptr[edge + 1]]

    def edge_lonlat(self, edge: int) -> FloatArray:
        """Polyline of ``edge`` in WGS84 (lon, lat), from its tail to its head."""
        return self.geom_lonlat[self.geom_ptr[edge] : self.geom_ptr[edge + 1]]

    def edge_between(self, u: int, v: int) -> int:
        """Fastest edge from node ``u`` to node ``v``; ``KeyError`` when none."""
        e = int(self.pair_edge[u, v])
        if e == 0:
            raise KeyError(f"no edge from node {u} to node {v} in graph {self.name!r}")
        return e - 1

    def reverse_edge(self, edge: int) -> int | None:
        """The edge running the other way between the same nodes, if any (for U-turns)."""
        u, v = int(self.edge_u[edge]), int(self.edge_v[edge])
        e = int(self.pair_edge[v, u])
        return e - 1 if e else None
