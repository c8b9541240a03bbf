"""Legal speeds of street edges: OSM ``maxspeed`` parsing and French urban defaults.

An edge's speed comes, in this order, from

1. its ``maxspeed`` tag: a number in km/h (``"30"``, ``"30 km/h"``), with a unit
   (``"50 mph"``, ``"10 knots"``), or a named limit (``"FR:urban"``, ``"FR:zone30"``,
   ``"walk"``, ``"none"``; see :data:`NAMED_KPH`);
2. the zone tags ``zone:maxspeed``, ``maxspeed:type`` and ``source:maxspeed``
   (``"FR:30"``, ``"FR:zone30"``, ``"FR:urban"``), common in French data;
3. the road class (``highway``) default of :data:`ROAD_KPH`;
4. :attr:`SpeedTable.fallback_kph`.

Several values (an osmnx list after merging ways, or ``"50;30"``) average, as osmnx does.

French defaults (Code de la route, art. R413-2 and R413-3, and common municipal practice):
50 km/h in built-up areas, 30 km/h on residential streets (many French cities are now
"ville 30"), 20 km/h in living streets (zones de rencontre), 110 km/h on urban motorways,
90 km/h on trunk roads (voies express), 80 km/h on rural roads and 130 km/h on open motorways.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx

#: Road-class default speeds (km/h) for French urban areas.
ROAD_KPH: Mapping[str, float] = MappingProxyType(
    {
        "motorway": 110.0,
        "motorway_link": 70.0,
        "trunk": 90.0,
        "trunk_link": 50.0,
        "primary": 50.0,
        "primary_link": 50.0,
        "secondary": 50.0,
        "secondary_link": 50.0,
        "tertiary": 50.0,
        "tertiary_link": 50.0,
        "unclassified": 50.0,
        "road": 50.0,
        "residential": 30.0,
        "living_street": 20.0,
        "service": 20.0,
    }
)

#: Named ``maxspeed`` values (lower case; a country prefix such as ``fr:`` is matched first
#: with it, then without it, so ``"DE:urban"`` also reads as 50).
NAMED_KPH: Mapping[str, float] = MappingProxyType(
    {
        "fr:urban": 50.0,
        "fr:rural": 80.0,
        "fr:zone30": 30.0,
        "fr:zone20": 20.0,
        "fr:living_street": 20.0,
        "fr:motorway": 130.0,
        "fr:expressway": 110.0,
        "fr:trunk": 110.0,
        "urban": 50.0,
        "rural": 80.0,
        "zone30": 30.0,
        "zone:30": 30.0,
        "zone20": 20.0,
        "zone:20": 20.0,
        "living_street": 20.0,
        "motorway": 130.0,
        "trunk": 110.0,
        "walk": 10.0,
        "none": 130.0,
    }
)

_NUMBER = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*([a-z/ ]*)\s*$")
_UNIT_KPH = {
    "": 1.0,
    "km/h": 1.0,
    "kmh": 1.0,
    "kph": 1.0,
    "km/ h": 1.0,
    "mph": 1.609344,
    "knots": 1.852,
    "knot": 1.852,
    "kn": 1.852,
}
_ZONE = re.compile(r"^(?:[a-z]{2}:)?(?:zone)?:?(\d+)$")


@dataclass(frozen=True)
class SpeedTable:
    """How legal speeds are chosen (see the module docstring for the order).

    Parameters
    ----------
    road_kph
        Default speed per OSM ``highway`` class (km/h).
    named_kph
        Speed of named ``maxspeed`` values (keys lower case).
    fallback_kph
        Speed of an edge whose class is unknown and that has no usable tag (the French
        built-up-area limit).
    min_kph, max_kph
        Parsed values outside this range are ignored as implausible.
    """

    road_kph: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(dict(ROAD_KPH)))
    named_kph: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(dict(NAMED_KPH)))
    fallback_kph: float = 50.0
    min_kph: float = 2.0
    max_kph: float = 200.0

    def __post_init__(self) -> None:
        for label, value in (("fallback_kph", self.fallback_kph), ("min_kph", self.min_kph)):
            if not value > 0:
                raise ValueError(f"SpeedTable.{label} must be > 0, got {value!r}")
        if not self.max_kph > self.min_kph:
            raise ValueError(f"SpeedTable.max_kph ({self.max_kph}) must exceed min_kph ({self.min_kph})")
        for name, kph in [*self.road_kph.items(), *self.named_kph.items()]:
            if not kph > 0:
                raise ValueError(f"SpeedTable: speed of {name!r} must be > 0, got {kph!r}")

    def fingerprint(self) -> str:
        """Stable hash of the table's content (it keys on-disk caches)."""
        payload = json.dumps(
            {
                "road": sorted(self.road_kph.items()),
                "named": sorted(self.named_kph.items()),
                "fallback": self.fallback_kph,
                "range": [self.min_kph, self.max_kph],
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def parse_maxspeed(self, value: Any) -> float | None:
        """km/h of a ``maxspeed`` value (str, number or list of them); ``None`` when unusable."""
        speeds = [s for s in (self._parse_one(v) for v in _values(value)) if s is not None]
        return sum(speeds) / len(speeds) if speeds else None

    def road_speed(self, highway: Any) -> float | None:
        """Default km/h of a road class (or the mean over a list of classes); ``None`` if unknown."""
        speeds = [self.road_kph[h] for h in _values(highway) if h in self.road_kph]
        return sum(speeds) / len(speeds) if speeds else None

    def speed_for(self, data: Mapping[str, Any]) -> float:
        """Legal speed (km/h) of an edge from its attributes (``maxspeed``, zone tags, ``highway``)."""
        for key in ("maxspeed", "zone:maxspeed", "maxspeed:type", "source:maxspeed"):
            if key in data:
                kph = self.parse_maxspeed(data[key])
                if kph is not None:
                    return kph
        road = self.road_speed(data.get("highway"))
        return road if road is not None else self.fallback_kph

    def _parse_one(self, text: str) -> float | None:
        text = text.strip().lower()
        if not text:
            return None
        kph: float | None = None
        match = _NUMBER.match(text)
        if match:
            factor = _UNIT_KPH.get(match.group(2).strip())
            if factor is not None:
                kph = float(match.group(1).replace(",", ".")) * factor
        elif text in self.named_kph:
            kph = self.named_kph[text]
        elif ":" in text and text.split(":", 1)[1] in self.named_kph:
            kph = self.named_kph[text.split(":", 1)[1]]
        else:
            zone = _ZONE.match(text)
            if zone:
                kph = float(zone.group(1))
        if kph is None or not self.min_kph <= kph <= self.max_kph:
            return None
        return kph


def _values(value: Any) -> Iterable[str]:
    """Flatten a tag value: osmnx lists, ``;``-separated values; ``None``/NaN give nothing."""
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        if item is None or (isinstance(item, float) and item != item):
            continue
        for part in str(item).split(";"):
            if part.strip():
                yield part.strip()


def set_speeds(G: nx.MultiDiGraph, table: SpeedTable | None = None, *, keep_existing: bool = False) -> None:
    """Set every edge's ``speed_kph`` and ``travel_time`` (s, from ``length``) in place.

    With ``keep_existing``, an edge that already has a positive ``speed_kph`` keeps it (a graph
    saved with its speeds, e.g. a generated city); its ``travel_time`` is still recomputed.
    """
    table = table or SpeedTable()
    for _, _, data in G.edges(data=True):
        kph = _existing_kph(data.get("speed_kph")) if keep_existing else None
        if kph is None:
            kph = table.speed_for(data)
        data["speed_kph"] = kph
        data["travel_time"] = float(data["length"]) / (kph / 3.6)


def _existing_kph(value: Any) -> float | None:
    try:
        kph = float(value[0] if isinstance(value, list) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return kph if kph > 0 and kph == kph and kph != float("inf") else None
