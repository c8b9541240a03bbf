"""Helpers for the tracking tests: hand-drawn graphs with hand-placed camera spans."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from map_data.compile import compile_graph
from map_data.handmade import graph_from_sketch
from map_data.network_types import Camera, CameraNetwork, CameraView, City, EdgeSpan
from map_data.types import CompiledGraph
from tracking.types import Sighting, SourceKind

T0 = datetime(2026, 3, 14, 22, 0, 0, tzinfo=UTC)


def edge_of(graph: CompiledGraph, u_osm: int, v_osm: int) -> int:
    """Compiled index of the sketch edge ``u_osm -> v_osm``."""
    return graph.edge_between(graph.node_index[u_osm], graph.node_index[v_osm])


def city_from_sketch(
    nodes: Mapping[int, tuple[float, float]],
    edges: Sequence[tuple[int, int]] | Sequence[tuple[int, int, dict[str, object]]],
    cameras: Mapping[str, Sequence[tuple[int, int, float, float]]],
    *,
    two_way: bool = False,
    detection_probability: float = 0.8,
) -> City:
    """A city from a sketch; ``cameras[id]`` lists ``(u_osm, v_osm, start_m, end_m)`` seen stretches."""
    graph = compile_graph(graph_from_sketch(nodes, edges, two_way=two_way))
    views: dict[str, CameraView] = {}
    cams: dict[str, Camera] = {}
    on_edge: dict[int, list[tuple[str, float, float]]] = {}
    for cid, spans in cameras.items():
        built = []
        for u, v, a, b in spans:
            e = edge_of(graph, u, v)
            built.append(EdgeSpan(e, a, b))
            on_edge.setdefault(e, []).append((cid, a, b))
        views[cid] = CameraView(cid, tuple(built))
        lon, lat = graph.edge_lonlat(built[0].edge)[0]
        cams[cid] = Camera(cid, float(lon), float(lat))
    network = CameraNetwork(
        cameras=cams,
        views=views,
        on_edge={e: tuple(s) for e, s in on_edge.items()},
        detection_probability=detection_probability,
    )
    return City(graph=graph, cameras=network)


def sighting(
    camera_id: str,
    at_s: float,
    event: str,
    *,
    incident: str = "inc-1",
    heading_deg: float | None = None,
    speed_kmh: float | None = None,
) -> Sighting:
    return Sighting(
        incident_id=incident,
        camera_id=camera_id,
        observed_at=T0 + timedelta(seconds=at_s),
        source_kind=SourceKind.simulation,
        source_event_id=event,
        heading_deg=heading_deg,
        speed_kmh=speed_kmh,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
