"""GeoJSON (RFC 7946: WGS84 lon, lat; no ``crs`` member) views of beliefs, predictions and plans,
for the maps of the supervision room and the tablets."""

from __future__ import annotations

from typing import Any

import numpy as np

from guidance.types import BeliefLike, EscapePrediction, Plan
from map_data.types import CompiledGraph

Json = dict[str, Any]


def _feature(geometry: Json, properties: Json) -> Json:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _rounded(points: list[tuple[float, float]], digits: int = 6) -> list[list[float]]:
    return [[round(x, digits), round(y, digits)] for x, y in points]


def _path_coordinates(graph: CompiledGraph, edges: list[int], digits: int = 6) -> list[list[float]]:
    """The polyline of consecutive ``edges`` (:func:`map_data.routing.path_lonlat`: each
    edge's points, the joints once) with ``digits`` decimals, gathered and rounded as arrays:
    a prediction's routes and positions hold thousands of points, and rounding them one by
    one in Python was most of the GeoJSON's cost."""
    ptr = graph.geom_ptr
    index_of = np.asarray(edges, dtype=np.int64)
    starts = ptr[index_of]
    ends = ptr[index_of + 1]
    counts = ends - starts
    keep = counts > 0
    starts, counts = starts[keep], counts[keep]
    if counts.size == 0:
        return []
    starts[1:] += 1  # the joint with the previous edge is its last point
    counts[1:] -= 1
    offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
    index = offsets + np.arange(int(counts.sum()))
    return np.round(graph.geom_lonlat[index], digits).tolist()  # type: ignore[no-any-return]


def prediction_geojson(
    prediction: EscapePrediction,
    graph: CompiledGraph,
    *,
    min_probability: float = 0.02,
    horizons_s: tuple[float, ...] = (60.0, 120.0, 300.0, 600.0),
) -> Json:
    """A FeatureCollection of the prediction.

    * ``kind = "crossing"`` points: crossings passed with probability ``>= min_probability``
      (``node``, ``probability``, ``earliest_eta_s``, ``likely_eta_s``);
    * ``kind = "route"`` lines: the k most likely routes (``probability``, ``rank``, ``eta_s``
      at the end, ``destination_kind``);
    * ``kind = "position"`` lines: where the suspect is at each of ``horizons_s`` (``time_s``,
      the horizon; ``probability`` per edge, edges below ``min_probability`` left out).

    ``incident_id``, ``at`` (ISO 8601) and ``model_version`` are foreign members of the
    collection (RFC 7946 §6.1), said once rather than on each of its hundreds of features: the
    collection goes to every console of the incident's communes every few seconds, so its size
    is the server's cost. Coordinates have 6 decimals (about 0.1 m).
    """
    if prediction.graph_version != graph.version:
        raise ValueError(f"prediction was made on graph {prediction.graph_version}, not on {graph.version}")
    features: list[Json] = []
    nodes = np.flatnonzero(prediction.pass_probability >= min_probability)
    lonlat = np.round(graph.node_lonlat[nodes], 6).tolist()
    probability = np.round(prediction.pass_probability[nodes], 4).tolist()
    earliest = np.round(prediction.suspect_earliest_eta_s[nodes], 1).tolist()
    likely = np.round(prediction.suspect_likely_eta_s[nodes], 1).tolist()
    for v, xy, p, e, li in zip(nodes.tolist(), lonlat, probability, earliest, likely, strict=True):
        features.append(
            _feature(
                {"type": "Point", "coordinates": xy},
                {"kind": "crossing", "node": v, "probability": p, "earliest_eta_s": e, "likely_eta_s": li},
            )
        )
    for rank, route in enumerate(prediction.routes, start=1):
        if not route.edges:
            continue
        features.append(
            _feature(
                {"type": "LineString", "coordinates": _path_coordinates(graph, list(route.edges))},
                {
                    "kind": "route",
                    "rank": rank,
                    "probability": round(route.probability, 4),
                    "eta_s": round(route.eta_s[-1], 1),
                    "destination_kind": route.destination_kind,
                },
            )
        )
    for h in horizons_s:
        if h > prediction.horizon_s + 1e-9:
            continue
        dist = prediction.horizon(h)
        for e, p in zip(dist.edges.tolist(), dist.probabilities.tolist(), strict=True):
            if p < min_probability:
                continue
            features.append(
                _feature(
                    {"type": "LineString", "coordinates": _path_coordinates(graph, [e])},
                    {"kind": "position", "time_s": dist.horizon_s, "edge": e, "probability": round(p, 4)},
                )
            )
    return {
        "type": "FeatureCollection",
        "incident_id": prediction.incident_id,
        "at": prediction.at.isoformat(),
        "model_version": prediction.model_version,
        "features": features,
    }


def belief_geojson(belief: BeliefLike, graph: CompiledGraph, *, min_probability: float = 0.0) -> Json:
    """Points at the belief's weighted positions (``probability``, ``speed_mps``, ``edge``)."""
    features: list[Json] = []
    for p in belief.positions:
        if p.probability < min_probability:
            continue
        xy = graph.edge_lonlat(p.edge)
        lon, lat = _along(graph, p.edge, p.offset_m) if len(xy) else (0.0, 0.0)
        features.append(
            _feature(
                {"type": "Point", "coordinates": [round(lon, 7), round(lat, 7)]},
                {
                    "incident_id": belief.incident_id,
                    "at": belief.at.isoformat(),
                    "kind": "position",
                    "edge": int(p.edge),
                    "offset_m": round(float(p.offset_m), 1),
                    "probability": round(float(p.probability), 4),
                    "speed_mps": round(float(p.speed_mps), 2),
                },
            )
        )
    return {"type": "FeatureCollection", "features": features}


def _along(graph: CompiledGraph, edge: int, offset_m: float) -> tuple[float, float]:
    """lon/lat at ``offset_m`` along ``edge``, interpolating its projected polyline."""
    xy = graph.edge_xy(edge)
    ll = graph.edge_lonlat(edge)
    seg = np.hypot(*np.diff(xy, axis=0).T)
    cum = np.r_[0.0, np.cumsum(seg)]
    total = float(cum[-1]) or 1.0
    # The geometry length may differ from the edge length: scale the offset.
    s = min(max(offset_m * total / max(float(graph.edge_length_m[edge]), 1e-9), 0.0), total)
    i = min(int(np.searchsorted(cum, s, side="right")) - 1, len(seg) - 1)
    f = (s - cum[i]) / seg[i] if seg[i] > 0 else 0.0
    lon = ll[i, 0] + f * (ll[i + 1, 0] - ll[i, 0])
    lat = ll[i, 1] + f * (ll[i + 1, 1] - ll[i, 1])
    return float(lon), float(lat)


def plan_geojson(plan: Plan) -> Json:
    """Target points and crew routes of a plan (``crew_id``, ETAs, margin, reason, version)."""
    features: list[Json] = []
    for s in plan.suggestions:
        props = {
            "incident_id": plan.incident_id,
            "plan_version": plan.version,
            "crew_id": s.crew_id,
            "target_node": s.target_node,
            "crew_eta_s": round(s.crew_eta_s, 1),
            "suspect_earliest_eta_s": round(s.suspect_earliest_eta_s, 1),
            "suspect_likely_eta_s": round(s.suspect_likely_eta_s, 1),
            "margin_s": round(s.margin_s, 1),
            "probability": round(s.probability_covered, 4),
            "reason": s.reason,
            "expires_at": s.expires_at.isoformat(),
            "model_version": plan.model_version,
        }
        features.append(
            _feature(
                {"type": "Point", "coordinates": [round(s.lon, 7), round(s.lat, 7)]},
                {**props, "kind": "target"},
            )
        )
        if len(s.route_lonlat) >= 2:
            features.append(
                _feature(
                    {"type": "LineString", "coordinates": _rounded(list(s.route_lonlat))},
                    {**props, "kind": "crew_route"},
                )
            )
    return {"type": "FeatureCollection", "features": features}
