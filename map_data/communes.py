"""Communes (French municipalities): loading their boundaries and tagging the street graph with them.

Boundaries are kept as lon/lat WKT in :class:`map_data.network_types.Commune`. Where communes
overlap (sloppy boundaries), the first one in the given order wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import numpy.typing as npt
import shapely
from pyproj import Transformer
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from map_data._osm_io import read_feature_collection
from map_data.errors import MapDataError, MapFileError
from map_data.network_types import Commune


def communes_from_geojson(path: str | Path) -> tuple[Commune, ...]:
    """Communes of a GeoJSON FeatureCollection of Polygon/MultiPolygon features (lon/lat).

    Each feature needs a ``name`` property (``nom`` or ``insee`` are accepted too).
    Raises :class:`MapFileError` naming the file and, for a bad feature, its index.
    """
    path = Path(path)
    features = read_feature_collection(path, "commune")
    communes = []
    seen: set[str] = set()
    for i, feature in enumerate(features):
        where = f"{path}: feature {i}"
        props = (feature.get("properties") or {}) if isinstance(feature, dict) else {}
        name = props.get("name", props.get("nom", props.get("insee")))
        if not isinstance(name, str) or not name.strip():
            raise MapFileError(f"{where}: no 'name' property")
        name = name.strip()
        if name in seen:
            raise MapFileError(f"{where}: commune {name!r} appears twice")
        seen.add(name)
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            kind = geometry.get("type") if isinstance(geometry, dict) else None
            raise MapFileError(
                f"{where}: commune {name!r} geometry must be a Polygon or MultiPolygon, got {kind!r}"
            )
        try:
            geom = shape(geometry)
        except Exception as exc:  # shapely raises several kinds on malformed coordinates
            raise MapFileError(f"{where}: commune {name!r} has malformed coordinates: {exc}") from exc
        if geom.is_empty:
            raise MapFileError(f"{where}: commune {name!r} has an empty boundary")
        if not geom.is_valid:
            geom = geom.buffer(0)
        lon_min, lat_min, lon_max, lat_max = geom.bounds
        if not (-180 <= lon_min <= lon_max <= 180 and -90 <= lat_min <= lat_max <= 90):
            raise MapFileError(f"{where}: commune {name!r} is not in lon/lat degrees")
        communes.append(Commune(name=name, boundary_wkt=geom.wkt))
    return tuple(communes)


def _geometries(communes: Sequence[Commune]) -> list[BaseGeometry]:
    geoms = []
    for c in communes:
        try:
            geoms.append(shapely.from_wkt(c.boundary_wkt))
        except Exception as exc:  # GEOSException
            raise MapDataError(f"commune {c.name!r}: malformed boundary WKT: {exc}") from exc
    return geoms


def communes_of_points(
    communes: Sequence[Commune], lon: npt.ArrayLike, lat: npt.ArrayLike
) -> list[str | None]:
    """Commune name of each point (``None`` outside them all); the first listed commune wins."""
    lon_a = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat_a = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    result: list[str | None] = [None] * lon_a.size
    if not communes or lon_a.size == 0:
        return result
    tree = shapely.STRtree(_geometries(communes))
    points = shapely.points(lon_a, lat_a)
    point_idx, commune_idx = tree.query(points, predicate="intersects")
    best = np.full(lon_a.size, len(communes), dtype=np.int64)
    np.minimum.at(best, point_idx, commune_idx)
    for i in np.flatnonzero(best < len(communes)).tolist():
        result[i] = communes[int(best[i])].name
    return result


def commune_at(communes: Sequence[Commune], lon: float, lat: float) -> str | None:
    """Name of the commune holding the point ``(lon, lat)``, or ``None``."""
    return communes_of_points(communes, [lon], [lat])[0]


def tag_communes(G: nx.MultiDiGraph, communes: Sequence[Commune]) -> None:
    """Set node and edge ``commune`` attributes of ``G`` in place (an edge by its midpoint).

    Nodes and edges outside every commune lose any ``commune`` attribute they had.
    """
    nodes = list(G.nodes)
    lon = [float(G.nodes[n]["lon"]) for n in nodes]
    lat = [float(G.nodes[n]["lat"]) for n in nodes]
    for node, name in zip(nodes, communes_of_points(communes, lon, lat), strict=True):
        _set(G.nodes[node], name)

    edges = list(G.edges(keys=True, data=True))
    if not edges:
        return
    mid_x = np.empty(len(edges))
    mid_y = np.empty(len(edges))
    for i, (u, v, _k, data) in enumerate(edges):
        geom = data.get("geometry")
        if geom is not None and geom.length > 0:
            mid = geom.interpolate(0.5, normalized=True)
            mid_x[i], mid_y[i] = mid.x, mid.y
        else:
            mid_x[i] = (float(G.nodes[u]["x"]) + float(G.nodes[v]["x"])) / 2
            mid_y[i] = (float(G.nodes[u]["y"]) + float(G.nodes[v]["y"])) / 2
    to_wgs84 = Transformer.from_crs(str(G.graph["crs"]), "EPSG:4326", always_xy=True)
    e_lon, e_lat = to_wgs84.transform(mid_x, mid_y)
    for (_u, _v, _k, data), name in zip(edges, communes_of_points(communes, e_lon, e_lat), strict=True):
        _set(data, name)


def _set(data: dict[str, Any], name: str | None) -> None:
    if name is None:
        data.pop("commune", None)
    else:
        data["commune"] = name
