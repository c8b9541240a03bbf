"""Cameras: loading them from files, mapping what each sees onto the street graph, placing synthetic ones.

A camera sees a sector of the plane (``heading_deg ± fov_deg/2`` out to ``range_m``), or the full
disc of radius ``range_m`` when it has no heading (a dome, or a camera whose direction nobody
recorded, like the Paris police list). What it sees of the street graph is, for each directed
edge, the stretch ``[start_m, end_m]`` of the edge's polyline inside that shape (computed with
shapely in the graph's projected metres). A camera at a crossing therefore sees the approaches
of that crossing in both directions.

File formats
    * GeoJSON Point features (:func:`cameras_from_geojson`): ``id``/``camera_id`` or OSM
      ``osm_id``; optional ``heading_deg`` or OSM ``camera:direction``/``direction`` (degrees or
      compass points), ``fov_deg``, ``range_m``, ``commune``, ``location``/``name`` as the label;
      OSM ``camera:type=dome`` sees all round; a dome whose ``placement`` is a crossing
      reaches :data:`CROSSING_RANGE_M` unless ``range_m`` says otherwise.
    * CSV (:func:`cameras_from_csv`): ``camera_id, lon, lat`` and optional ``heading_deg,
      fov_deg, range_m, commune, label``.
    * OSM XML (:func:`cameras_from_osm`): ``man_made=surveillance`` nodes, parsed with defusedxml.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import shapely
from defusedxml import ElementTree as DefusedET
from pyproj import Transformer
from scipy.sparse.csgraph import dijkstra
from shapely.geometry import Point, Polygon

from map_data._osm_io import open_compressed, read_feature_collection
from map_data.errors import CameraError, CameraOutsideMapError, CameraSeesNothingError, MapFileError
from map_data.network_types import Camera, CameraNetwork, CameraView, EdgeSpan
from map_data.types import CompiledGraph, FloatArray

#: Default reach of a camera (m): real cameras stand 10-30 m from the road's centreline.
DEFAULT_RANGE_M = 40.0
#: Default reach (m) of a camera with no heading placed at a crossing (``placement`` =
#: ``croisement`` in the Paris police list of 2019; all 707 of its cameras are so placed).
#: These are pan-tilt-zoom domes mounted several metres up on a mast at the crossing: the
#: operator who makes a sighting turns and zooms the dome toward the approach the suspect
#: takes, so it reads a car (make, colour, plate with zoom) well beyond the 40 m assumed for a
#: fixed camera. We take 60 m: about half of a central-Paris block (crossings 80-150 m apart),
#: so each dome covers the near half of every approach without claiming the next crossing,
#: which its own camera (if any) covers. Measured on ``paris_center``: 39 of its 46 police
#: cameras map at 60 m (38 at 40 m), seeing 225 of its 552 directed edges (188 at 40 m).
#: Pass ``crossing_range_m`` to :func:`cameras_from_geojson`, or a ``range_m`` property per
#: feature, to change it.
CROSSING_RANGE_M = 60.0
_CROSSING_PLACEMENTS = frozenset({"croisement", "carrefour", "crossing", "intersection"})
#: Field of view assumed for a camera whose heading is known but whose width is not.
DEFAULT_FOV_DEG = 90.0
#: Seen stretches shorter than this (a sector touching an edge at one point) are dropped.
MIN_SPAN_M = 0.5
#: Camera ids follow the sighting identifier rule of the tracking area.
_CAMERA_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_COMPASS = {
    name: i * 22.5
    for i, name in enumerate(
        ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW")
    )
}
_OSM_CAMERA_TYPES = (None, "", "camera", "alpr")


# --------------------------------------------------------------------------- records


def make_camera(
    camera_id: Any,
    lon: Any,
    lat: Any,
    *,
    heading_deg: Any = None,
    fov_deg: Any = None,
    range_m: Any = None,
    commune: Any = None,
    label: Any = "",
    dome: bool = False,
    where: str = "camera",
) -> Camera:
    """Validate raw values into a :class:`Camera`; :class:`CameraError` naming ``where`` otherwise.

    A heading without a field of view gets :data:`DEFAULT_FOV_DEG`; a field of view of 360° or
    more, or ``dome``, means no heading (sees all round).
    """
    cid = "" if camera_id is None else str(camera_id).strip()
    if not _CAMERA_ID.match(cid):
        raise CameraError(f"{where}: camera id {camera_id!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    lon_f = _number(lon, "lon", where)
    lat_f = _number(lat, "lat", where)
    if lon_f is None or lat_f is None:
        raise CameraError(f"{where}: camera {cid} has no coordinates")
    if not (-180.0 <= lon_f <= 180.0 and -90.0 <= lat_f <= 90.0):
        raise CameraError(f"{where}: camera {cid} has coordinates out of range ({lon_f}, {lat_f})")
    heading = _heading(heading_deg, where, cid)
    fov = _number(fov_deg, "fov_deg", where)
    if fov is not None and not 0.0 < fov <= 360.0:
        raise CameraError(f"{where}: camera {cid} has fov_deg {fov} outside (0, 360]")
    reach = _number(range_m, "range_m", where)
    if reach is None:
        reach = DEFAULT_RANGE_M
    if not 0.0 < reach <= 1000.0:
        raise CameraError(f"{where}: camera {cid} has range_m {reach} outside (0, 1000]")
    if dome or (fov is not None and fov >= 360.0):
        heading, fov = None, None
    elif heading is None:
        fov = None
    elif fov is None:
        fov = DEFAULT_FOV_DEG
    commune_s = None if commune is None or str(commune).strip() == "" else str(commune).strip()
    return Camera(
        camera_id=cid,
        lon=lon_f,
        lat=lat_f,
        heading_deg=heading,
        fov_deg=fov,
        range_m=reach,
        commune=commune_s,
        label="" if label is None else str(label),
    )


def _number(value: Any, what: str, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CameraError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise CameraError(f"{where}: {what} {value!r} is not finite")
    return number


def _heading(value: Any, where: str, cid: str) -> float | None:
    """Degrees clockwise from north, from a number or an OSM value (``45``, ``NE``, ``45;90``)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    text = text.split(";")[0].strip()
    if text.upper() in _COMPASS:
        return _COMPASS[text.upper()]
    number = _number(text, "heading", where)
    if number is None:
        return None
    if not -360.0 <= number <= 720.0:
        raise CameraError(f"{where}: camera {cid} has heading {number} out of range")
    return number % 360.0


# --------------------------------------------------------------------------- loaders


def cameras_from_file(path: str | Path) -> list[Camera]:
    """Cameras of a file, the reader chosen by suffix (``.geojson``, ``.csv``, ``.osm[.bz2|.gz]``)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".geojson", ".json")):
        return cameras_from_geojson(path)
    if name.endswith(".csv"):
        return cameras_from_csv(path)
    if name.endswith((".osm", ".osm.bz2", ".osm.gz", ".xml", ".xml.bz2", ".xml.gz")):
        return cameras_from_osm(path)
    raise MapFileError(f"{path}: unknown camera file format (expected .geojson, .csv or .osm[.bz2])")


def cameras_from_geojson(path: str | Path, *, crossing_range_m: float = CROSSING_RANGE_M) -> list[Camera]:
    """Cameras of a GeoJSON FeatureCollection of Point features (see the module doc for properties).

    A feature without ``range_m`` gets :data:`DEFAULT_RANGE_M`, except a camera with no heading
    whose ``placement`` is a crossing (``croisement``, ``carrefour``, ``crossing``, as in the
    Paris police list), which gets ``crossing_range_m`` (default :data:`CROSSING_RANGE_M`).

    Raises :class:`MapFileError` for a missing or unparsable file and :class:`CameraError`
    naming the file and the feature index for a bad feature.
    """
    path = Path(path)
    features = read_feature_collection(path, "camera")
    cameras = []
    for i, feature in enumerate(features):
        where = f"{path}: feature {i}"
        if not isinstance(feature, dict):
            raise CameraError(f"{where}: not a GeoJSON feature")
        geometry = feature.get("geometry") or {}
        props = feature.get("properties") or {}
        if not isinstance(geometry, dict) or geometry.get("type") != "Point":
            raise CameraError(f"{where}: geometry must be a Point, got {geometry.get('type')!r}")
        coords = geometry.get("coordinates")
        if not isinstance(coords, list) or len(coords) < 2:
            raise CameraError(f"{where}: Point without two coordinates")
        if not isinstance(props, dict):
            raise CameraError(f"{where}: properties must be an object")
        cid = props.get("camera_id", props.get("id", feature.get("id")))
        if cid is None and props.get("osm_id") is not None:
            cid = f"osm-{props['osm_id']}"
        heading = props.get("heading_deg")
        if heading is None:
            heading = props.get("camera:direction", props.get("direction"))
        range_m = props.get("range_m")
        placement = str(props.get("placement", "")).strip().lower()
        if range_m is None and heading is None and placement in _CROSSING_PLACEMENTS:
            range_m = crossing_range_m
        cameras.append(
            make_camera(
                cid,
                coords[0],
                coords[1],
                heading_deg=heading,
                fov_deg=props.get("fov_deg"),
                range_m=range_m,
                commune=props.get("commune"),
                label=props.get("location", props.get("name", "")),
                dome=str(props.get("camera:type", "")).lower() == "dome",
                where=where,
            )
        )
    return cameras


def cameras_from_csv(path: str | Path) -> list[Camera]:
    """Cameras of a CSV file with a header: ``camera_id, lon, lat`` and optional
    ``heading_deg, fov_deg, range_m, commune, label``. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MapFileError(f"{path}: camera file not found")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in ("camera_id", "lon", "lat") if c not in header]
            if missing:
                raise MapFileError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
            reader.fieldnames = header
            cameras = []
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                if None in row:
                    raise CameraError(f"{where}: more values than columns")
                cameras.append(
                    make_camera(
                        row.get("camera_id"),
                        row.get("lon"),
                        row.get("lat"),
                        heading_deg=row.get("heading_deg"),
                        fov_deg=row.get("fov_deg"),
                        range_m=row.get("range_m"),
                        commune=row.get("commune"),
                        label=row.get("label") or "",
                        where=where,
                    )
                )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MapFileError(f"{path}: cannot read CSV: {exc}") from exc
    return cameras


def cameras_from_osm(path: str | Path) -> list[Camera]:
    """``man_made=surveillance`` camera nodes of an OSM XML file (``.osm``, ``.osm.bz2``, ``.osm.gz``).

    Parsed with defusedxml (no entity expansion, no DTD fetching). Surveillance that is not a
    camera (``surveillance:type=guard``, ...) is left out. Ids are ``osm-<node id>``.
    """
    path = Path(path)
    if not path.is_file():
        raise MapFileError(f"{path}: OSM file not found")
    cameras = []
    try:
        with open_compressed(path) as fh:
            for _event, elem in DefusedET.iterparse(fh, events=("end",)):
                if elem.tag != "node":
                    if elem.tag in ("way", "relation"):
                        elem.clear()
                    continue
                tags = {t.get("k", ""): t.get("v", "") for t in elem.iter("tag")}
                if tags.get("man_made") == "surveillance" and (
                    tags.get("surveillance:type", "").lower() in _OSM_CAMERA_TYPES
                ):
                    node_id = elem.get("id")
                    cameras.append(
                        make_camera(
                            f"osm-{node_id}",
                            elem.get("lon"),
                            elem.get("lat"),
                            heading_deg=tags.get("camera:direction", tags.get("direction")),
                            label=tags.get("name", ""),
                            dome=tags.get("camera:type", "").lower() == "dome",
                            where=f"{path}: node {node_id}",
                        )
                    )
                elem.clear()
    except CameraError:
        raise
    except Exception as exc:  # ParseError, EOFError, OSError, defusedxml's EntitiesForbidden ...
        raise MapFileError(f"{path}: cannot read OSM XML: {exc}") from exc
    return cameras


# --------------------------------------------------------------------------- coverage


@dataclass(frozen=True, slots=True)
class SkippedCamera:
    """A camera left out of a network, and why (the error that strict mode would have raised)."""

    camera: Camera
    error: CameraError

    @property
    def reason(self) -> str:
        return str(self.error)


@dataclass(frozen=True, slots=True)
class CameraCoverage:
    """A camera network and the cameras that could not be mapped onto the graph."""

    network: CameraNetwork
    skipped: tuple[SkippedCamera, ...]


def view_shape(
    camera: Camera, x: float, y: float, *, north_deg: float = 0.0, resolution_deg: float = 5.0
) -> Polygon:
    """What ``camera`` (standing at projected ``(x, y)``) sees: a sector or a disc, in metres.

    ``camera.heading_deg`` is clockwise from true north; ``north_deg`` is the direction of true
    north on the projected grid at the camera (the meridian convergence, a degree or two in
    Lambert-93 or UTM), added to it.
    """
    if camera.heading_deg is None or camera.fov_deg is None or camera.fov_deg >= 360.0:
        disc: Polygon = Point(x, y).buffer(camera.range_m, quad_segs=16)
        return disc
    half = camera.fov_deg / 2.0
    steps = max(2, math.ceil(camera.fov_deg / resolution_deg) + 1)
    heading = camera.heading_deg + north_deg
    angles = np.radians(np.linspace(heading - half, heading + half, steps))
    arc = np.column_stack([x + camera.range_m * np.sin(angles), y + camera.range_m * np.cos(angles)])
    return Polygon([(x, y), *map(tuple, arc)])


def edge_lines(graph: CompiledGraph) -> np.ndarray[Any, np.dtype[np.object_]]:
    """One shapely ``LineString`` per directed edge, in projected metres."""
    owner = np.repeat(np.arange(graph.n_edges), np.diff(graph.geom_ptr))
    lines: np.ndarray[Any, np.dtype[np.object_]] = shapely.linestrings(graph.geom_xy, indices=owner)
    return lines


def _batch_spans(
    graph: CompiledGraph,
    lines: np.ndarray[Any, np.dtype[np.object_]],
    tree: shapely.STRtree,
    shapes: Sequence[Polygon],
) -> list[list[EdgeSpan]]:
    """For each view shape, the stretches of directed edges inside it (all shapes at once)."""
    out: list[list[EdgeSpan]] = [[] for _ in shapes]
    if not shapes:
        return out
    shape_arr = np.empty(len(shapes), dtype=object)
    shape_arr[:] = list(shapes)
    shape_idx, edge_idx = tree.query(shape_arr, predicate="intersects")
    if shape_idx.size == 0:
        return out
    pieces = shapely.intersection(lines[edge_idx], shape_arr[shape_idx])
    parts, owner = shapely.get_parts(pieces, return_index=True)
    is_line = shapely.get_type_id(parts) == 1  # LineString; points (a touch at the apex) are dropped
    parts, owner = parts[is_line], owner[is_line]
    edges = edge_idx[owner]
    along = lines[edges]
    a = shapely.line_locate_point(along, shapely.get_point(parts, 0))
    b = shapely.line_locate_point(along, shapely.get_point(parts, -1))
    lengths = graph.edge_length_m[edges]
    scale = lengths / np.maximum(shapely.length(along), 1e-9)
    start = np.clip(np.minimum(a, b) * scale, 0.0, lengths)
    end = np.clip(np.maximum(a, b) * scale, 0.0, lengths)
    ranges: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for k, e, s0, s1 in zip(
        shape_idx[owner].tolist(), edges.tolist(), start.tolist(), end.tolist(), strict=True
    ):
        ranges.setdefault((k, e), []).append((s0, s1))
    for (k, e), found in sorted(ranges.items()):
        for s0, s1 in _merge(found):
            if s1 - s0 >= MIN_SPAN_M:
                out[k].append(EdgeSpan(edge=e, start_m=s0, end_m=s1))
    return out


def _merge(ranges: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1e-6:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def build_camera_network_report(
    graph: CompiledGraph,
    cameras: Sequence[Camera],
    *,
    detection_probability: float = 0.8,
    max_distance_m: float | None = None,
) -> CameraCoverage:
    """Map every camera onto ``graph``; cameras that cannot be mapped are returned as skipped.

    A camera is *outside the map* when it stands farther than ``max_distance_m`` (default: its
    own ``range_m``) from the convex hull of the graph's crossings; it *sees nothing* when its
    view shape (:func:`view_shape`) holds no stretch of street of at least :data:`MIN_SPAN_M`.
    A repeated camera id is skipped too.
    """
    if not 0.0 < detection_probability < 1.0:
        raise ValueError(f"detection_probability must be in (0, 1), got {detection_probability}")
    lines = edge_lines(graph)
    tree = shapely.STRtree(lines)
    hull = shapely.convex_hull(shapely.multipoints(graph.node_xy))
    shapely.prepare(hull)
    to_xy = Transformer.from_crs("EPSG:4326", graph.crs, always_xy=True)
    if cameras:
        xs, ys = to_xy.transform(
            np.array([c.lon for c in cameras], dtype=np.float64),
            np.array([c.lat for c in cameras], dtype=np.float64),
        )
    else:
        xs = ys = np.zeros(0)
    xs, ys = np.atleast_1d(xs), np.atleast_1d(ys)
    off_by = np.asarray(shapely.distance(hull, shapely.points(xs, ys)), dtype=np.float64)
    problems: dict[int, CameraError] = {}
    candidates: list[int] = []
    shapes: list[Polygon] = []
    seen: set[str] = set()
    for i, cam in enumerate(cameras):
        where = f"camera {cam.camera_id} ({cam.lon:.6f}, {cam.lat:.6f})"
        if cam.camera_id in seen:
            problems[i] = CameraError(f"{where}: duplicate camera id")
            continue
        seen.add(cam.camera_id)
        limit = cam.range_m if max_distance_m is None else max_distance_m
        if not math.isfinite(off_by[i]) or off_by[i] > limit:
            problems[i] = CameraOutsideMapError(
                f"{where}: outside the map {graph.name!r} "
                f"({off_by[i]:.0f} m beyond its extent, limit {limit:.0f} m)"
            )
            continue
        north = 0.0
        if cam.heading_deg is not None:
            nx_, ny_ = to_xy.transform(cam.lon, min(cam.lat + 1e-4, 90.0))
            north = math.degrees(math.atan2(float(nx_) - xs[i], float(ny_) - ys[i]))
        candidates.append(i)
        shapes.append(view_shape(cam, float(xs[i]), float(ys[i]), north_deg=north))
    spans_of = dict(zip(candidates, _batch_spans(graph, lines, tree, shapes), strict=True))
    kept: dict[str, Camera] = {}
    views: dict[str, CameraView] = {}
    skipped: list[SkippedCamera] = []
    for i, cam in enumerate(cameras):
        spans = spans_of.get(i)
        if spans:
            kept[cam.camera_id] = cam
            views[cam.camera_id] = CameraView(cam.camera_id, tuple(spans))
            continue
        error = problems.get(i)
        if error is None:
            point = Point(float(xs[i]), float(ys[i]))
            gap = float(lines[int(tree.nearest(point))].distance(point))
            error = CameraSeesNothingError(
                f"camera {cam.camera_id} ({cam.lon:.6f}, {cam.lat:.6f}): sees no street within "
                f"{cam.range_m:.0f} m"
                + ("" if cam.heading_deg is None else f" facing {cam.heading_deg:.0f}°")
                + f" (nearest street {gap:.0f} m away)"
            )
        skipped.append(SkippedCamera(cam, error))
    on_edge: dict[int, list[tuple[str, float, float]]] = {}
    for cid in sorted(views):
        for span in views[cid].spans:
            on_edge.setdefault(span.edge, []).append((cid, span.start_m, span.end_m))
    network = CameraNetwork(
        cameras=kept,
        views=views,
        on_edge={e: tuple(v) for e, v in sorted(on_edge.items())},
        detection_probability=detection_probability,
    )
    return CameraCoverage(network=network, skipped=tuple(skipped))


def build_camera_network(
    graph: CompiledGraph,
    cameras: Sequence[Camera],
    *,
    detection_probability: float = 0.8,
    strict: bool = True,
    max_distance_m: float | None = None,
) -> CameraNetwork:
    """Map every camera onto ``graph`` (see :func:`build_camera_network_report`).

    With ``strict`` the first camera that cannot be mapped raises its error
    (:class:`CameraOutsideMapError`, :class:`CameraSeesNothingError`, :class:`CameraError` for a
    repeated id); otherwise such cameras are left out.
    """
    coverage = build_camera_network_report(
        graph, cameras, detection_probability=detection_probability, max_distance_m=max_distance_m
    )
    if strict and coverage.skipped:
        raise coverage.skipped[0].error
    return coverage.network


# --------------------------------------------------------------------------- synthetic cameras


def through_traffic(graph: CompiledGraph, *, n_sources: int = 200, seed: int = 0) -> FloatArray:
    """Sampled betweenness: how many fastest paths from ``n_sources`` random crossings pass each node.

    For each seeded random source the fastest-path tree is built (scipy Dijkstra predecessors)
    and each node is credited with the number of its descendants in that tree, i.e. the
    number of destinations whose fastest path goes through it (endpoints excluded).
    """
    n = graph.n_nodes
    passes = np.zeros(n, dtype=np.float64)
    if n == 0:
        return passes
    rng = np.random.default_rng(seed)
    k = min(n_sources, n)
    sources = np.sort(rng.choice(n, size=k, replace=False))
    _, preds = dijkstra(graph.time_csr, directed=True, indices=sources, return_predecessors=True)
    nodes = np.arange(n)
    for row in range(k):
        pred = np.asarray(preds[row], dtype=np.int64)
        has_parent = pred >= 0
        parent = np.where(has_parent, pred, nodes)
        # Depth in the tree by pointer jumping (log2(depth) rounds).
        depth = has_parent.astype(np.int64)
        anc = parent
        while True:
            nxt = anc[anc]
            if np.array_equal(nxt, anc):
                break
            depth = depth + depth[anc]
            anc = nxt
        reached = has_parent.copy()
        reached[sources[row]] = True
        size = reached.astype(np.float64)
        order = np.argsort(depth, kind="stable")
        bounds = np.searchsorted(depth[order], np.arange(int(depth.max()) + 2))
        for level in range(int(depth.max()), 0, -1):
            members = order[bounds[level] : bounds[level + 1]]
            np.add.at(size, parent[members], size[members])
        through = size - reached
        through[sources[row]] = 0.0
        passes += through
    return passes


def place_synthetic_cameras(
    graph: CompiledGraph,
    n: int,
    *,
    seed: int,
    commune_of: Callable[[float, float], str | None] | None = None,
    range_m: float = DEFAULT_RANGE_M,
    n_sources: int = 200,
) -> list[Camera]:
    """``n`` dome cameras at crossings, favouring the crossings most fastest paths go through.

    Crossings are drawn without replacement with probability proportional to
    ``1 + through_traffic`` (a Gumbel top-k draw), so busy crossings are likely picked but the
    cameras spread over many roads. Same graph and seed, same cameras. Ids are ``SYN-0001``...
    in draw order; ``commune`` comes from ``commune_of(lon, lat)`` or the graph's node commune.
    """
    if n < 0 or n > graph.n_nodes:
        raise ValueError(f"cannot place {n} cameras on {graph.n_nodes} crossings")
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    passes = through_traffic(graph, n_sources=n_sources, seed=int(rng.integers(2**31)))
    keys = np.log1p(passes) + rng.gumbel(size=graph.n_nodes)
    picked = np.argsort(-keys, kind="stable")[:n]
    width = max(4, len(str(n)))
    cameras = []
    for i, node in enumerate(picked.tolist()):
        lon, lat = (float(v) for v in graph.node_lonlat[node])
        commune = commune_of(lon, lat) if commune_of is not None else graph.node_commune[node]
        cameras.append(
            Camera(
                camera_id=f"SYN-{i + 1:0{width}d}",
                lon=lon,
                lat=lat,
                range_m=range_m,
                commune=commune,
                label=f"crossing {int(graph.node_osmid[node])}",
            )
        )
    return cameras


def metz_density(graph: CompiledGraph | nx.MultiDiGraph) -> int:
    """Camera count at Metz's density: about one camera per three crossings (1,600 planned)."""
    n = graph.n_nodes if isinstance(graph, CompiledGraph) else graph.number_of_nodes()
    return max(1, round(n / 3))


def coverage_summary(network: CameraNetwork) -> Mapping[str, float]:
    """Numbers for a report: cameras mapped, edges seen, metres of street seen."""
    seen_m = sum(end - start for spans in network.on_edge.values() for _, start, end in spans)
    return {
        "cameras": float(len(network.cameras)),
        "edges_seen": float(len(network.on_edge)),
        "metres_seen": float(seen_m),
    }
