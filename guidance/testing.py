"""Helpers for tests and benchmarks of guidance: a hand-made belief and a grid city.

:class:`PointBelief` carries what guidance reads from ``tracking.types.Belief`` (see
:class:`guidance.types.BeliefLike`), so prediction can be exercised without a tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from map_data.compile import compile_graph
from map_data.handmade import graph_from_sketch
from map_data.network_types import CameraNetwork, City


@dataclass(frozen=True, slots=True)
class Position:
    edge: int
    offset_m: float
    probability: float
    speed_mps: float = 14.0


@dataclass(frozen=True, slots=True)
class PointBelief:
    incident_id: str
    at: datetime
    positions: tuple[Position, ...]
    origin_node: int
    n_sightings: int = 1
    speed_mps: float = 0.0


#: A T-junction: the suspect comes up from S; L and R are the two exits of the map.
#:
#:   L(0) ------------ J(1) ------------ R(2)
#:   primary            |           residential (a bridge)
#:                      |
#:                     S(3)
T_NODES: dict[int, tuple[float, float]] = {0: (-600.0, 0.0), 1: (0.0, 0.0), 2: (600.0, 0.0), 3: (0.0, -300.0)}
T_EDGES: list[tuple[int, int, dict[str, object]]] = [
    (0, 1, {"highway": "primary", "name": "Avenue de Paris"}),
    (1, 2, {"highway": "residential", "speed_kph": 30.0, "name": "Rue du Pont", "bridge": True}),
    (1, 3, {"highway": "secondary", "name": "Rue Haute"}),
]


def t_city() -> City:
    """The T-junction of :data:`T_NODES` / :data:`T_EDGES`, two-way streets."""
    G = graph_from_sketch(T_NODES, T_EDGES, two_way=True, name="tee")
    return City(graph=compile_graph(G), cameras=CameraNetwork(cameras={}, views={}, on_edge={}))


def edge(city: City, u: int, v: int) -> int:
    """Compiled index of the edge from sketch node ``u`` to sketch node ``v``."""
    g = city.graph
    return g.edge_between(g.node_index[u], g.node_index[v])


def grid_city(side: int, *, spacing_m: float = 100.0, main_every: int = 5) -> City:
    """A ``side``×``side`` two-way grid; every ``main_every``-th row/column is a 50 km/h
    primary road, the rest 30 km/h residential streets (``Rue <row>``, ``Avenue <col>``)."""
    nodes = {i * side + j: (j * spacing_m, i * spacing_m) for i in range(side) for j in range(side)}
    edges: list[tuple[int, int, dict[str, object]]] = []
    for i in range(side):
        for j in range(side):
            a = i * side + j
            if j + 1 < side:
                main = i % main_every == 0
                edges.append(
                    (
                        a,
                        a + 1,
                        {
                            "highway": "primary" if main else "residential",
                            "speed_kph": 50.0 if main else 30.0,
                            "name": f"Rue {i}",
                        },
                    )
                )
            if i + 1 < side:
                main = j % main_every == 0
                edges.append(
                    (
                        a,
                        a + side,
                        {
                            "highway": "primary" if main else "residential",
                            "speed_kph": 50.0 if main else 30.0,
                            "name": f"Avenue {j}",
                        },
                    )
                )
    G = graph_from_sketch(nodes, edges, two_way=True, name=f"grid{side}")
    return City(graph=compile_graph(G), cameras=CameraNetwork(cameras={}, views={}, on_edge={}))
