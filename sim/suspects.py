"""How the simulated suspect drives: named behaviours, or an explicit ground-truth trajectory.

These are the simulator's own models, written apart from guidance's prediction models (which
they must not import) so that the simulator never grades the predictor against itself.

At each crossing the world asks the behaviour for the next :class:`Leg` (an out-edge, and
optionally a forced traversal time); ``None`` means the suspect parks there.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from map_data.types import CompiledGraph, FloatArray, IntArray
from sim.navigation import Navigator, nearest_node
from sim.scenario import SuspectSpec, TrajectoryPoint

#: Seconds of extra cost an evasive suspect puts on a crossing where it sees a crew.
_DREAD_S = 900.0
#: How long an evasive suspect remembers where it saw a crew (s).
_MEMORY_S = 120.0


@dataclass(frozen=True, slots=True)
class Leg:
    """The next edge to drive; ``time_s`` forces its traversal time (explicit trajectories)."""

    edge: int
    time_s: float | None = None


class SuspectContext(Protocol):
    """What a behaviour may look at: the map, its own random stream, and (for the evasive one)
    where the crews physically are."""

    @property
    def graph(self) -> CompiledGraph: ...
    @property
    def navigator(self) -> Navigator: ...
    @property
    def rng(self) -> np.random.Generator: ...
    @property
    def exits(self) -> IntArray: ...
    def crews_xy(self, now_s: float) -> FloatArray: ...


class SuspectBehaviour(Protocol):
    name: str

    def start(self, ctx: SuspectContext, origin: int) -> None: ...

    def choose(self, ctx: SuspectContext, node: int, in_edge: int | None, now_s: float) -> Leg | None: ...


def _pick_exit(ctx: SuspectContext, origin: int, choices: int) -> int:
    """One of the ``choices`` fastest exits from ``origin``, the nearer ones likelier (∝ 1/t)."""
    times = ctx.navigator.times_from(origin)[ctx.exits]
    ok = np.flatnonzero(np.isfinite(times) & (ctx.exits != origin))
    if ok.size == 0:
        raise ValueError(f"no exit crossing can be reached from crossing {origin}")
    order = ok[np.argsort(times[ok], kind="stable")][:choices]
    weights = 1.0 / np.maximum(times[order], 1.0)
    k = int(ctx.rng.choice(order.size, p=weights / weights.sum()))
    return int(ctx.exits[order[k]])


@dataclass
class ExitSeeking:
    """Drives the fastest route to one of the few fastest exits, chosen at the start."""

    exit_choices: int = 3
    name: str = "exit_seeking"
    target_exit: int = -1
    _field: FloatArray | None = field(default=None, repr=False)

    def start(self, ctx: SuspectContext, origin: int) -> None:
        self.target_exit = _pick_exit(ctx, origin, self.exit_choices)
        self._field = ctx.navigator.times_to([self.target_exit])

    def choose(self, ctx: SuspectContext, node: int, in_edge: int | None, now_s: float) -> Leg | None:
        assert self._field is not None, "start() first"
        e = ctx.navigator.next_edge(node, self._field)
        return None if e is None else Leg(e)


def _turn_cosines(graph: CompiledGraph, in_edge: int, out: IntArray) -> FloatArray:
    u, v = graph.edge_u[in_edge], graph.edge_v[in_edge]
    d_in = graph.node_xy[v] - graph.node_xy[u]
    d_out = graph.node_xy[graph.edge_v[out]] - graph.node_xy[v]
    n_in = np.hypot(*d_in) or 1.0
    n_out = np.maximum(np.hypot(d_out[:, 0], d_out[:, 1]), 1e-9)
    cos: FloatArray = (d_out @ d_in) / (n_out * n_in)
    return cos


@dataclass
class MainRoadWanderer:
    """Wanders with no destination, preferring main roads and going straight on; never turns
    round unless at a dead end. Leaves the map if it happens on an exit."""

    name: str = "main_road"
    rank_base: float = 2.5

    def start(self, ctx: SuspectContext, origin: int) -> None:
        return None

    def choose(self, ctx: SuspectContext, node: int, in_edge: int | None, now_s: float) -> Leg | None:
        g = ctx.graph
        out = g.out_of(node)
        if in_edge is not None and out.size > 1:
            back = g.edge_u[in_edge]
            keep = g.edge_v[out] != back
            if keep.any():
                out = out[keep]
        if out.size == 0:
            return None
        w = self.rank_base ** (-g.edge_rank[out].astype(np.float64))
        if in_edge is not None:
            cos = _turn_cosines(g, in_edge, out)
            w = w * (0.25 + 0.75 * np.clip(cos, 0.0, 1.0))
        k = int(ctx.rng.choice(out.size, p=w / w.sum()))
        return Leg(int(out[k]))


@dataclass
class Evasive:
    """Exit-seeking, but turns away from crews it sees: a crew within ``sight_m`` of the
    crossing it is at or of the next one on its way. It then heads for the nearest exit while
    dreading, for two minutes, the crossings where it saw crews."""

    exit_choices: int = 3
    sight_m: float = 150.0
    name: str = "evasive"
    _field: FloatArray | None = field(default=None, repr=False)
    _seen: list[tuple[float, float, float]] = field(default_factory=list, repr=False)

    def start(self, ctx: SuspectContext, origin: int) -> None:
        self._field = ctx.navigator.times_to([_pick_exit(ctx, origin, self.exit_choices)])
        self._seen = []

    def choose(self, ctx: SuspectContext, node: int, in_edge: int | None, now_s: float) -> Leg | None:
        assert self._field is not None, "start() first"
        g, nav = ctx.graph, ctx.navigator
        planned = nav.next_edge(node, self._field)
        crews = ctx.crews_xy(now_s)
        if crews.shape[0]:
            looks = [g.node_xy[node]]
            if planned is not None:
                looks.append(g.node_xy[g.edge_v[planned]])
            for xy in looks:
                d = np.hypot(crews[:, 0] - xy[0], crews[:, 1] - xy[1])
                for i in np.flatnonzero(d <= self.sight_m):
                    self._seen.append((now_s, float(crews[i, 0]), float(crews[i, 1])))
        self._seen = [s for s in self._seen if now_s - s[0] <= _MEMORY_S]
        if not self._seen:
            return None if planned is None else Leg(planned)
        # Another way out: the nearest exit, avoiding the crossings where crews stand.
        self._field = nav.times_to(ctx.exits.tolist())
        out = g.out_of(node)
        if out.size == 0:
            return None
        heads = g.edge_v[out]
        cost = g.edge_time_s[out] + self._field[heads]
        seen = np.array([[s[1], s[2]] for s in self._seen])
        for j, h in enumerate(heads):
            d = np.hypot(seen[:, 0] - g.node_xy[h, 0], seen[:, 1] - g.node_xy[h, 1])
            if (d <= self.sight_m).any():
                cost[j] += _DREAD_S
        best = int(np.argmin(cost))
        return Leg(int(out[best])) if np.isfinite(cost[best]) else None


@dataclass
class Rodeo:
    """Loops: drives to ``loops`` random crossings within ``radius_m`` of the incident, one after
    the other, then seeks an exit."""

    loops: int = 3
    radius_m: float = 700.0
    exit_choices: int = 3
    name: str = "rodeo"
    done: int = 0
    _candidates: IntArray | None = field(default=None, repr=False)
    _field: FloatArray | None = field(default=None, repr=False)
    _exiting: bool = False

    def _new_waypoint(self, ctx: SuspectContext, node: int) -> None:
        assert self._candidates is not None
        g = ctx.graph
        far = self._candidates[
            np.hypot(*(g.node_xy[self._candidates] - g.node_xy[node]).T) >= self.radius_m / 2
        ]
        pool = far if far.size else self._candidates
        self._field = ctx.navigator.times_to([int(ctx.rng.choice(pool))])

    def start(self, ctx: SuspectContext, origin: int) -> None:
        g = ctx.graph
        d = np.hypot(*(g.node_xy - g.node_xy[origin]).T)
        reach = np.isfinite(ctx.navigator.times_from(origin))
        exits = np.zeros(g.n_nodes, dtype=bool)
        exits[ctx.exits] = True
        cand = np.flatnonzero((d <= self.radius_m) & reach & ~exits & (np.arange(g.n_nodes) != origin))
        self._candidates = cand
        self.done = 0
        self._exiting = self.loops == 0 or cand.size == 0
        if self._exiting:
            self._field = ctx.navigator.times_to([_pick_exit(ctx, origin, self.exit_choices)])
        else:
            self._new_waypoint(ctx, origin)

    def choose(self, ctx: SuspectContext, node: int, in_edge: int | None, now_s: float) -> Leg | None:
        assert self._field is not None, "start() first"
        if not self._exiting and self._field[node] == 0.0:
            self.done += 1
            if self.done >= self.loops:
                self._exiting = True
                self._field = ctx.navigator.times_to([_pick_exit(ctx, node, self.exit_choices)])
            else:
                self._new_waypoint(ctx, node)
        e = ctx.navigator.next_edge(node, self._field)
        return None if e is None else Leg(e)


@dataclass
class Trajectory:
    """An explicit ground truth: timed lon/lat points, each snapped to its nearest crossing and
    joined by fastest routes; the time between two points is spread over the edges between
    them in proportion to their free-flow times."""

    points: Sequence[TrajectoryPoint]
    name: str = "trajectory"
    _legs: list[Leg] = field(default_factory=list, repr=False)
    _i: int = 0

    def origin(self, graph: CompiledGraph) -> int:
        p = self.points[0]
        return nearest_node(graph, p.lon, p.lat)

    def start(self, ctx: SuspectContext, origin: int) -> None:
        g, nav = ctx.graph, ctx.navigator
        times = [p.t_s for p in self.points]
        if any(b < a for a, b in itertools.pairwise(times)):
            raise ValueError("trajectory points must be in time order (t_s not decreasing)")
        nodes = [nearest_node(g, p.lon, p.lat) for p in self.points]
        legs: list[Leg] = []
        here, prev_t = origin, self.points[0].t_s
        for p, target in zip(self.points[1:], nodes[1:], strict=True):
            if target == here:
                continue
            field_ = nav.times_to([target])
            edges: list[int] = []
            node = here
            while node != target:
                e = nav.next_edge(node, field_)
                if e is None:
                    raise ValueError(
                        f"trajectory point t_s={p.t_s} ({p.lon}, {p.lat}) cannot be reached by road"
                    )
                edges.append(e)
                node = int(g.edge_v[e])
            span = p.t_s - prev_t
            if span <= 0:
                raise ValueError(f"trajectory point t_s={p.t_s} is not after the previous point")
            free = g.edge_time_s[edges]
            legs.extend(Leg(e, float(span * t / free.sum())) for e, t in zip(edges, free, strict=True))
            here, prev_t = target, p.t_s
        self._legs = legs
        self._i = 0

    @property
    def start_delay_s(self) -> float:
        """Seconds the suspect waits at the first point (its first ``t_s``)."""
        return float(self.points[0].t_s)

    def choose(self, ctx: SuspectContext, node: int, in_edge: int | None, now_s: float) -> Leg | None:
        if self._i >= len(self._legs):
            return None
        leg = self._legs[self._i]
        self._i += 1
        return leg


def make_behaviour(spec: SuspectSpec) -> SuspectBehaviour:
    """The behaviour named in a scenario (a trajectory wins over the name)."""
    if spec.trajectory:
        return Trajectory(spec.trajectory)
    if spec.behaviour == "exit_seeking":
        return ExitSeeking(exit_choices=spec.exit_choices)
    if spec.behaviour == "main_road":
        return MainRoadWanderer()
    if spec.behaviour == "evasive":
        return Evasive(exit_choices=spec.exit_choices, sight_m=spec.sight_m)
    if spec.behaviour == "rodeo":
        return Rodeo(loops=spec.loops, radius_m=spec.loop_radius_m, exit_choices=spec.exit_choices)
    raise ValueError(f"unknown suspect behaviour {spec.behaviour!r}")
