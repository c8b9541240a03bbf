"""Private file I/O of map_data: compressed files, GeoJSON FeatureCollections, and OSM XML
read safely (defusedxml) keeping only the drivable ways.

The output is the Overpass-like JSON that osmnx builds its graphs from, so that the street
graph is made by osmnx's own code (one-way handling, simplification) from a filtered input.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from map_data.errors import MapFileError

#: ``highway`` values that are not roads for cars (after osmnx's ``drive`` filter).
NOT_DRIVABLE: frozenset[str] = frozenset(
    {
        "abandoned",
        "bridleway",
        "bus_guideway",
        "bus_stop",
        "busway",
        "construction",
        "corridor",
        "cycleway",
        "disused",
        "elevator",
        "emergency_bay",
        "escalator",
        "footway",
        "no",
        "path",
        "pedestrian",
        "planned",
        "platform",
        "proposed",
        "raceway",
        "razed",
        "rest_area",
        "service",
        "services",
        "steps",
        "track",
        "via_ferrata",
    }
)

#: Access keys from the most to the least specific for a car.
_ACCESS_KEYS = ("motorcar", "motor_vehicle", "vehicle", "access")
_FORBIDDEN = frozenset({"no"})


def is_drivable(tags: Mapping[str, Any]) -> bool:
    """Whether a way with these OSM tags is a road a car may drive on.

    A way needs a ``highway`` tag outside :data:`NOT_DRIVABLE`, must not be an area, and the
    most specific of ``motorcar``, ``motor_vehicle``, ``vehicle``, ``access`` must not be ``no``.
    """
    highway = tags.get("highway")
    values = highway if isinstance(highway, list) else [highway]
    if not values or not all(isinstance(v, str) and v and v not in NOT_DRIVABLE for v in values):
        return False
    if str(tags.get("area", "no")).lower() == "yes":
        return False
    for key in _ACCESS_KEYS:
        value = tags.get(key)
        if isinstance(value, str) and value:
            return value.strip().lower() not in _FORBIDDEN
    return True


def first_value(value: Any) -> Any:
    """osmnx keeps a list when merged ways disagree; take the first value (``None`` if empty)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def as_flag(value: Any) -> bool:
    """An OSM yes/no tag (or an osmnx list of them) as a bool: true when any value says yes.

    ``""``, ``no``, ``false``, ``0``, ``nan``, ``None`` and NaN are false.
    """
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, str):
            if item.strip().lower() not in ("", "no", "false", "0", "nan"):
                return True
        elif item is not None and item == item and bool(item):
            return True
    return False


def as_text(value: Any) -> str:
    """A tag value as a string (the first of a list); ``""`` for ``None`` and NaN."""
    value = first_value(value)
    return "" if value is None or value != value else str(value)


def read_feature_collection(path: Path, what: str) -> list[Any]:
    """The ``features`` list of a GeoJSON FeatureCollection file.

    Raises :class:`MapFileError` naming ``path`` (and ``what`` it should hold, e.g. "camera")
    when the file is missing, unreadable or not a FeatureCollection.
    """
    if not path.is_file():
        raise MapFileError(f"{path}: {what} file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MapFileError(f"{path}: not a readable GeoJSON file: {exc}") from exc
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise MapFileError(f"{path}: not a GeoJSON FeatureCollection (no 'features' list)")
    return features


@contextmanager
def open_compressed(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading, decompressing ``.bz2``, ``.gz`` and ``.xz``."""
    name = path.name.lower()
    if name.endswith(".bz2"):
        with bz2.open(path, "rb") as fh:
            yield cast(BinaryIO, fh)
    elif name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            yield cast(BinaryIO, fh)
    elif name.endswith(".xz"):
        with lzma.open(path, "rb") as fh:
            yield cast(BinaryIO, fh)
    else:
        with path.open("rb") as fh:
            yield cast(BinaryIO, fh)


def _tags(elem: Element) -> dict[str, str]:
    return {t.get("k", ""): t.get("v", "") for t in elem.iter("tag")}


def read_drivable_osm(path: Path) -> dict[str, Any]:
    """Parse OSM XML at ``path`` and return Overpass-like JSON with the drivable ways only.

    Ways whose nodes are missing from the extract are split at the gaps (no edge jumps a gap).
    Raises :class:`MapFileError` naming ``path`` when it is missing, unreadable or not OSM XML.
    """
    if not path.is_file():
        raise MapFileError(f"{path}: map file not found")
    nodes: dict[int, dict[str, Any]] = {}
    ways: list[dict[str, Any]] = []
    root_tag: str | None = None
    try:
        with open_compressed(path) as fh:
            for event, elem in iterparse(fh, events=("start", "end"), forbid_dtd=True):
                if event == "start":
                    if root_tag is None:
                        root_tag = elem.tag
                        if root_tag != "osm":
                            raise MapFileError(f"{path}: not OSM XML (root element <{root_tag}>)")
                    continue
                if elem.tag == "node":
                    tags = _tags(elem)
                    nodes[int(elem.get("id", ""))] = {
                        "type": "node",
                        "id": int(elem.get("id", "")),
                        "lat": float(elem.get("lat", "")),
                        "lon": float(elem.get("lon", "")),
                        "tags": tags,
                    }
                    elem.clear()
                elif elem.tag == "way":
                    tags = _tags(elem)
                    if is_drivable(tags):
                        refs = [int(nd.get("ref", "")) for nd in elem.iter("nd")]
                        ways.append(
                            {"type": "way", "id": int(elem.get("id", "")), "nodes": refs, "tags": tags}
                        )
                    elem.clear()
                elif elem.tag == "relation":
                    elem.clear()
    except MapFileError:
        raise
    except (OSError, EOFError, ParseError, DefusedXmlException, ValueError, lzma.LZMAError) as exc:
        raise MapFileError(f"{path}: cannot read OSM XML: {exc}") from exc
    if root_tag is None:
        raise MapFileError(f"{path}: empty file")

    elements: list[dict[str, Any]] = []
    used: set[int] = set()
    for way in ways:
        for i, run in enumerate(_runs(way["nodes"], nodes)):
            part = dict(way, nodes=run)
            if i:  # osmnx keys paths by way id: a split way's later pieces need their own id
                part["id"] = -(abs(int(way["id"])) * 1000 + i)
            elements.append(part)
            used.update(run)
    elements[:0] = [nodes[n] for n in sorted(used)]
    return {"version": 0.6, "elements": elements}


def _runs(refs: list[int], nodes: Mapping[int, Any]) -> Iterator[list[int]]:
    """Maximal runs of consecutive node refs present in ``nodes``, of two nodes or more."""
    run: list[int] = []
    for ref in refs:
        if ref in nodes:
            run.append(ref)
            continue
        if len(run) >= 2:
            yield run
        run = []
    if len(run) >= 2:
        yield run
