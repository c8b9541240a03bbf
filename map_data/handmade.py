"""Small hand-drawn graphs, for tests and examples.

Coordinates are given in metres on a local grid; they are placed in Lambert-93 (EPSG:2154)
around Metz so that lon/lat are real and every other part of Cordon works on them unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx
from pyproj import Transformer

#: Lambert-93 coordinates of a point in Metz; hand-drawn grids are placed relative to it.
METZ_L93 = (931_000.0, 6_895_000.0)
LAMBERT93 = "EPSG:2154"


def graph_from_sketch(
    nodes: Mapping[int, tuple[float, float]],
    edges: Sequence[tuple[int, int]] | Sequence[tuple[int, int, dict[str, object]]],
    *,
    speed_kph: float = 50.0,
    highway: str = "residential",
    two_way: bool = False,
    name: str = "sketch",
) -> nx.MultiDiGraph:
    """Build a graph following :mod:`map_data.types` conventions from a sketch.

    ``nodes`` maps a node id to ``(x, y)`` metres on the local grid. Each edge is ``(u, v)`` or
    ``(u, v, attrs)``; ``attrs`` may override ``speed_kph``, ``highway``, ``name``, ``length``,
    ``bridge``, ``tunnel``, ``commune``. With ``two_way`` every edge is added in both directions.
    """
    to_wgs84 = Transformer.from_crs(LAMBERT93, "EPSG:4326", always_xy=True)
    G = nx.MultiDiGraph(crs=LAMBERT93, name=name)
    for node, (x, y) in nodes.items():
        X, Y = METZ_L93[0] + x, METZ_L93[1] + y
        lon, lat = to_wgs84.transform(X, Y)
        G.add_node(node, x=X, y=Y, lon=float(lon), lat=float(lat))
    for edge in edges:
        u, v = edge[0], edge[1]
        attrs: dict[str, object] = dict(edge[2]) if len(edge) > 2 else {}
        pairs = [(u, v), (v, u)] if two_way else [(u, v)]
        for a, b in pairs:
            ax, ay = G.nodes[a]["x"], G.nodes[a]["y"]
            bx, by = G.nodes[b]["x"], G.nodes[b]["y"]
            length = float(attrs.get("length", ((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5))  # type: ignore[arg-type]
            speed = float(attrs.get("speed_kph", speed_kph))  # type: ignore[arg-type]
            G.add_edge(
                a,
                b,
                length=length,
                speed_kph=speed,
                travel_time=length / (speed / 3.6),
                highway=str(attrs.get("highway", highway)),
                name=str(attrs.get("name", "")),
                oneway=not two_way,
                bridge=bool(attrs.get("bridge", False)),
                tunnel=bool(attrs.get("tunnel", False)),
                **({"commune": attrs["commune"]} if "commune" in attrs else {}),
            )
    return G
