"""Small hand-built worlds for tests of the simulator (and for anyone checking the rules by hand)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from map_data.compile import compile_graph
from map_data.network_types import CameraNetwork, City
from sim.scenario import Scenario, parse_scenario
from sim.suspects import Leg, SuspectContext
from sim.world import CrewAgent, SimSighting, World


def line_city(n: int = 5, *, step_m: float = 200.0, speed_kph: float = 36.0) -> City:
    """A straight two-way street of ``n`` crossings ``step_m`` apart, at ``speed_kph``::

        0 ──── 1 ──── 2 ──── 3 ──── 4      (200 m blocks, 36 km/h: 20 s a block)

    No cameras."""
    from map_data.handmade import graph_from_sketch

    nodes = {i: (i * step_m, 0.0) for i in range(n)}
    edges = [(i, i + 1) for i in range(n - 1)]
    graph = compile_graph(graph_from_sketch(nodes, edges, two_way=True, speed_kph=speed_kph, name="line"))
    return City(graph, CameraNetwork({}, {}, {}, 0.8))


def grid_city(n: int = 8, *, step_m: float = 200.0, cameras: int = 20, seed: int = 0) -> City:
    """An ``n × n`` two-way grid (``step_m`` blocks, 50 km/h) with ``cameras`` synthetic dome
    cameras at busy crossings (``map_data.cameras.place_synthetic_cameras``)::

        56 ─ 57 ─ ... ─ 63
        │    │          │
        ...
        0 ── 1 ── ... ── 7
    """
    from map_data.cameras import build_camera_network, place_synthetic_cameras
    from map_data.handmade import graph_from_sketch

    nodes = {i * n + j: (j * step_m, i * step_m) for i in range(n) for j in range(n)}
    edges: list[tuple[int, int]] = []
    for i in range(n):
        for j in range(n):
            if j + 1 < n:
                edges.append((i * n + j, i * n + j + 1))
            if i + 1 < n:
                edges.append((i * n + j, (i + 1) * n + j))
    graph = compile_graph(graph_from_sketch(nodes, edges, two_way=True, name=f"grid{n}"))
    network = build_camera_network(graph, place_synthetic_cameras(graph, cameras, seed=seed))
    return City(graph, network)


@dataclass
class Scripted:
    """A suspect that drives given node-to-node legs with given times (s)."""

    legs: Sequence[tuple[int, int, float]]
    name: str = "scripted"
    _i: int = 0

    def start(self, ctx: SuspectContext, origin: int) -> None:
        self._i = 0

    def choose(self, ctx: SuspectContext, node: int, in_edge: int | None, now_s: float) -> Leg | None:
        if self._i >= len(self.legs):
            return None
        u, v, t = self.legs[self._i]
        assert u == node, f"scripted leg {self._i} starts at {u}, the suspect is at {node}"
        self._i += 1
        return Leg(ctx.graph.edge_between(u, v), t)


@dataclass
class ScriptedPolicy:
    """Orders given in advance: ``(t, crew_id, target, own_sight)`` issued at the first tick or
    event at or after ``t`` (``t == 0``: at the start)."""

    orders: Sequence[tuple[float, str, int | None, bool]]
    name: str = "scripted"
    issued: list[int] = field(default_factory=list)

    def _issue(self, world: World, t: float) -> None:
        for i, (at, crew, target, own) in enumerate(self.orders):
            if i not in self.issued and at <= t:
                self.issued.append(i)
                world.order(crew, target, source=self.name, own_sight=own)

    def start(self, world: World, t: float) -> None:
        self._issue(world, t)

    def on_delivery(self, world: World, sighting: SimSighting, t: float) -> None:
        self._issue(world, t)

    def on_tick(self, world: World, t: float) -> None:
        self._issue(world, t)

    def on_crew_arrival(self, world: World, crew: CrewAgent, t: float) -> None:
        self._issue(world, t)

    def finish(self, world: World) -> None:
        return None


def scenario_on(city: City, **fields: Any) -> Scenario:
    """A scenario for a hand-built city: ``crews_at`` (crossings) places the crews there; other
    keyword arguments are scenario fields (dicts for the nested parts)."""
    crews_at: Sequence[int] = fields.pop("crews_at", ())
    data: dict[str, Any] = {
        "crews": {
            "count": len(crews_at),
            "positions": [
                {"lon": float(city.graph.node_lonlat[n, 0]), "lat": float(city.graph.node_lonlat[n, 1])}
                for n in crews_at
            ],
        }
        if crews_at
        else {"count": 0},
    }
    data.update(fields)
    return parse_scenario(data, source="test scenario")


def place(city: City, node: int) -> dict[str, float]:
    """``{"lon", "lat"}`` of a crossing, for scenario fields."""
    return {"lon": float(city.graph.node_lonlat[node, 0]), "lat": float(city.graph.node_lonlat[node, 1])}


def small_guidance_scenario(seed: int, *, duration_s: float, **extra: Any) -> Scenario:
    """Four crews within 2 km, an incident at least 60 s from any exit, every camera detecting:
    the guidance policy's scenario in the simulator's tests."""
    return Scenario.model_validate(
        {
            "crews": {"count": 4, "area": {"radius_m": 2000, "min_distance_m": 200}},
            "incident": {"min_exit_time_s": 60},
            "camera_model": {"p_detect": 1.0},
            "policy": "guidance",
            "duration_s": duration_s,
            "seed": seed,
            **extra,
        }
    )
