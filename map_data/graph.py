"""Load a drivable street graph: from OSM XML, an osmnx GraphML file, or online through osmnx.

Every entry point funnels into one private builder, :func:`_build`, which

1. keeps only drivable roads (:func:`map_data._osm_io.is_drivable`),
2. keeps the largest strongly connected component (every crossing reachable from every other),
3. adds node ``lon``/``lat`` (WGS84) and projects to the local UTM zone (metres),
4. normalises edge attributes to the conventions of :mod:`map_data.types` (``highway`` and
   ``name`` as one string, ``oneway``/``bridge``/``tunnel`` as booleans),
5. sets ``speed_kph`` and ``travel_time`` from a :class:`map_data.speeds.SpeedTable`.

The result is accepted by :func:`map_data.compile.compile_graph`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import networkx as nx
import osmnx as ox
from pyproj import CRS

from map_data._osm_io import as_flag, first_value, is_drivable, read_drivable_osm
from map_data.errors import EmptyGraphError, MapDataError, MapFileError, NetworkUnavailableError
from map_data.speeds import SpeedTable, set_speeds
from map_data.types import road_rank

#: Bump when the builder's output changes for the same input: it invalidates file caches.
BUILDER_VERSION = "1"

#: Way tags kept as edge attributes, beyond osmnx's defaults (zone tags feed the speed table).
EXTRA_WAY_TAGS = ("zone:maxspeed", "maxspeed:type", "source:maxspeed", "motor_vehicle", "motorcar")

_XML_SUFFIXES = (".osm", ".osm.bz2", ".osm.gz", ".osm.xz", ".xml", ".xml.bz2", ".xml.gz")
_GRAPHML_SUFFIXES = (".graphml", ".graphml.gz")


def graph_from_file(path: str | Path, *, speeds: SpeedTable | None = None) -> nx.MultiDiGraph:
    """Load a street graph from a file, choosing the reader from its suffix.

    ``.osm``, ``.osm.bz2``, ``.osm.gz``, ``.xml`` go to :func:`graph_from_xml`; ``.graphml`` to
    :func:`graph_from_graphml`. Raises :class:`MapFileError` for any other suffix.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_XML_SUFFIXES):
        return graph_from_xml(path, speeds=speeds)
    if name.endswith(_GRAPHML_SUFFIXES):
        return graph_from_graphml(path, speeds=speeds)
    raise MapFileError(f"{path}: unknown map format (expected .osm, .osm.bz2, .osm.gz or .graphml)")


def graph_from_xml(path: str | Path, *, speeds: SpeedTable | None = None) -> nx.MultiDiGraph:
    """Drivable street graph of an OSM XML file (``.osm``, ``.osm.bz2``, ``.osm.gz``).

    The file is parsed with defusedxml and filtered to drivable ways before osmnx builds the
    graph, so unfiltered extracts (footways, cycleways, ...) load correctly.

    Raises
    ------
    MapFileError
        The file is missing, unreadable or not OSM XML.
    EmptyGraphError
        No drivable edge is left.
    """
    path = Path(path)
    response = read_drivable_osm(path)
    if not any(e["type"] == "way" for e in response["elements"]):
        raise EmptyGraphError(f"{path}: no drivable road in the file")
    with _osmnx_settings(useful_tags_way=_way_tags()):
        G = ox.graph._create_graph([response], bidirectional=False)
        G = ox.simplification.simplify_graph(G)
    return _build(G, name=_stem(path), source=str(path), speeds=speeds)


def graph_from_graphml(
    path: str | Path, *, speeds: SpeedTable | None = None, keep_speeds: bool = False
) -> nx.MultiDiGraph:
    """Street graph of a GraphML file saved by osmnx (``osmnx.save_graphml``), in any CRS.

    With ``keep_speeds``, edges that carry a ``speed_kph`` keep it (a graph saved with its
    speeds, such as a generated city); otherwise every speed comes from the table.
    """
    path = Path(path)
    if not path.is_file():
        raise MapFileError(f"{path}: map file not found")
    try:
        G = ox.io.load_graphml(path)
    except Exception as exc:  # networkx/lxml/osmnx raise many kinds on a malformed file
        raise MapFileError(f"{path}: cannot read GraphML: {exc}") from exc
    return _build(G, name=_stem(path), source=str(path), speeds=speeds, keep_speeds=keep_speeds)


def graph_from_place(
    query: str,
    *,
    speeds: SpeedTable | None = None,
    timeout_s: float = 30.0,
    overpass_url: str | None = None,
    nominatim_url: str | None = None,
) -> nx.MultiDiGraph:
    """Download the drivable street graph of a place (``"Metz, France"``) through osmnx.

    osmnx's settings are changed only for the duration of the call (timeout, endpoints, no HTTP
    cache) and restored afterwards.

    Raises
    ------
    NetworkUnavailableError
        An endpoint cannot be reached within ``timeout_s`` (checked first, so it fails fast).
    MapDataError
        The place is unknown to the geocoder.
    """
    nominatim = nominatim_url or ox.settings.nominatim_url
    overpass = overpass_url or ox.settings.overpass_url
    _probe(nominatim, timeout_s)
    _probe(overpass, timeout_s)
    G = _download(
        lambda: ox.graph_from_place(query, network_type="drive", simplify=True, retain_all=True),
        what=f"place {query!r}",
        timeout_s=timeout_s,
        overpass_url=overpass,
        nominatim_url=nominatim,
    )
    return _build(G, name=_slug(query), source=f"place {query!r}", speeds=speeds)


def graph_from_bbox(
    bbox: tuple[float, float, float, float],
    *,
    speeds: SpeedTable | None = None,
    timeout_s: float = 30.0,
    overpass_url: str | None = None,
    name: str = "bbox",
) -> nx.MultiDiGraph:
    """Download the drivable street graph inside ``bbox = (west, south, east, north)`` (degrees).

    Raises :class:`MapDataError` for an invalid box and :class:`NetworkUnavailableError` when
    the Overpass endpoint cannot be reached within ``timeout_s``.
    """
    west, south, east, north = (float(v) for v in bbox)
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise MapDataError(f"invalid bbox {bbox!r}: expected (west, south, east, north) in degrees")
    overpass = overpass_url or ox.settings.overpass_url
    _probe(overpass, timeout_s)
    G = _download(
        lambda: ox.graph_from_bbox((west, south, east, north), network_type="drive", retain_all=True),
        what=f"bbox {bbox!r}",
        timeout_s=timeout_s,
        overpass_url=overpass,
        nominatim_url=ox.settings.nominatim_url,
    )
    return _build(G, name=name, source=f"bbox {bbox!r}", speeds=speeds)


# --------------------------------------------------------------------------- the one builder


def _build(
    G: nx.MultiDiGraph,
    *,
    name: str,
    source: str,
    speeds: SpeedTable | None,
    keep_speeds: bool = False,
) -> nx.MultiDiGraph:
    """Drivable filter, largest SCC, lon/lat, UTM projection, attributes, speeds (see module doc)."""
    G = nx.MultiDiGraph(G)  # never modify the caller's graph
    G.remove_edges_from([(u, v, k) for u, v, k, d in G.edges(keys=True, data=True) if not is_drivable(d)])
    G.remove_edges_from([(u, v, k) for u, v, k in G.edges(keys=True) if u == v])  # self-loops
    G = _largest_scc(G)
    if G.number_of_edges() == 0:
        raise EmptyGraphError(f"{source}: no drivable street left after filtering")

    crs = CRS.from_user_input(G.graph.get("crs", "EPSG:4326"))
    if not crs.is_geographic:
        G = ox.projection.project_graph(G, to_latlong=True)
    for _, data in G.nodes(data=True):
        data["lon"], data["lat"] = float(data["x"]), float(data["y"])
    G = ox.projection.project_graph(G)
    G.graph["crs"] = CRS.from_user_input(G.graph["crs"]).to_string()

    for _, data in G.nodes(data=True):
        data["x"], data["y"] = float(data["x"]), float(data["y"])
        if "exit" in data:  # generated cities mark their exits; GraphML gives back a string
            data["exit"] = as_flag(data["exit"])
    for u, v, data in G.edges(data=True):
        _normalise_edge(G, u, v, data)
    set_speeds(G, speeds, keep_existing=keep_speeds)
    G.graph["name"] = name
    G.graph["source"] = source
    if speeds is not None:
        G.graph["speed_table"] = speeds.fingerprint()
    return G


def _largest_scc(G: nx.MultiDiGraph) -> nx.MultiDiGraph:
    G.remove_nodes_from([n for n in list(G.nodes) if G.degree(n) == 0])
    if len(G) == 0:
        return G
    # Largest by size; ties broken by the smallest node id, so the choice is deterministic.
    best = max(nx.strongly_connected_components(G), key=lambda c: (len(c), -min(c)))
    return nx.MultiDiGraph(G.subgraph(best))


def _normalise_edge(G: nx.MultiDiGraph, u: Any, v: Any, data: dict[str, Any]) -> None:
    highway = data.get("highway")
    if isinstance(highway, list):  # merged ways of several classes: keep the most important
        highway = min((str(h) for h in highway), key=road_rank)
    data["highway"] = str(highway)
    name = first_value(data.get("name"))
    if name is None or name != name:
        data.pop("name", None)
    else:
        data["name"] = str(name)
    data["oneway"] = as_flag(data.get("oneway", False))
    data["bridge"] = as_flag(data.get("bridge", False))
    data["tunnel"] = as_flag(data.get("tunnel", False))
    length = float(first_value(data.get("length", 0.0)) or 0.0)
    if not length > 0:  # osmnx measures great-circle lengths; coincident nodes give 0
        a, b = G.nodes[u], G.nodes[v]
        length = max(0.1, ((a["x"] - b["x"]) ** 2 + (a["y"] - b["y"]) ** 2) ** 0.5)
    data["length"] = length


# --------------------------------------------------------------------------- osmnx plumbing


def _way_tags() -> list[str]:
    return sorted({*ox.settings.useful_tags_way, *EXTRA_WAY_TAGS})


@contextmanager
def _osmnx_settings(**overrides: Any) -> Iterator[None]:
    """Set osmnx settings for the duration of a block, then restore them."""
    saved = {key: getattr(ox.settings, key) for key in overrides}
    try:
        for key, value in overrides.items():
            setattr(ox.settings, key, value)
        yield
    finally:
        for key, value in saved.items():
            setattr(ox.settings, key, value)


def _probe(url: str, timeout_s: float) -> None:
    """Fail fast with :class:`NetworkUnavailableError` when ``url``'s host does not answer."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise NetworkUnavailableError(f"invalid endpoint URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=min(timeout_s, 5.0)):
            pass
    except OSError as exc:
        raise NetworkUnavailableError(f"cannot reach {url} ({host}:{port}): {exc}") from exc


def _download(
    fetch: Any, *, what: str, timeout_s: float, overpass_url: str, nominatim_url: str
) -> nx.MultiDiGraph:
    import requests

    try:
        with _osmnx_settings(
            requests_timeout=timeout_s,
            use_cache=False,
            overpass_rate_limit=False,
            overpass_url=overpass_url,
            nominatim_url=nominatim_url,
            useful_tags_way=_way_tags(),
        ):
            G: nx.MultiDiGraph = fetch()
    except requests.exceptions.RequestException as exc:
        raise NetworkUnavailableError(f"{what}: download failed: {exc}") from exc
    except ox._errors.ResponseStatusCodeError as exc:
        raise NetworkUnavailableError(f"{what}: server refused the request: {exc}") from exc
    except ox._errors.InsufficientResponseError as exc:
        raise MapDataError(f"{what}: nothing found: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise MapDataError(f"{what}: {exc}") from exc
    return G


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*_XML_SUFFIXES, *_GRAPHML_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.strip().lower()).strip("_") or "place"
