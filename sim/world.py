"""The discrete-event world around Cordon: a fleeing suspect, cameras and operators, crews.

Mesa-style: a seeded :class:`numpy.random.Generator` per concern (spawned from the scenario's
seed), and a schedule of events over a heap (:meth:`World.schedule_event_relative`,
:meth:`World.run_for`) rather than fixed ticks. Movement is continuous along edges and every
vehicle only changes its mind at crossings, so each edge traversal is known when it starts;
outcomes are computed exactly from traversal times (the suspect enters crossing X at time t):

* interception — the suspect enters a crossing where a crew has been waiting, stopped, for at
  least :data:`INTERCEPT_WAIT_S` seconds (the run ends: success);
* pursuit contact — a moving crew comes within :data:`CONTACT_M` metres behind the suspect on
  the same edge (counted, once per crew and suspect edge traversal; not a success);
* escape — the suspect enters an exit crossing (leaves the map), or the duration ends.

Simulated time is seconds after the incident (``t``); the core gets timezone-aware datetimes
``incident_at + t`` (:meth:`World.at`), never the wall clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import numpy as np

from map_data.network_types import City
from map_data.types import BoolArray, CompiledGraph, EdgePosition, FloatArray, IntArray
from sim.navigation import Navigator, nearest_node
from sim.scenario import Scenario
from sim.suspects import Leg, SuspectBehaviour, Trajectory, make_behaviour

#: A crew must have been waiting this long at a crossing for the suspect's entry to count (s).
INTERCEPT_WAIT_S = 10.0
#: A moving crew this close behind the suspect on the same edge is a pursuit contact (m).
CONTACT_M = 50.0

OutcomeKind = Literal["interception", "escape", "timeout"]


# ----------------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Move:
    """``agent`` drives all of ``edge`` from ``t0`` to ``t1`` (s after the incident)."""

    agent: str
    edge: int
    t0: float
    t1: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Crew ``agent`` stands still at crossing ``node`` from ``t0`` until ``t1`` (None: to the end)."""

    agent: str
    node: int
    t0: float
    t1: float | None


@dataclass(frozen=True, slots=True)
class Pass:
    """The suspect passes camera ``camera_id``'s seen span at ``t`` (ground truth)."""

    camera_id: str
    edge: int
    t: float
    detected: bool


@dataclass(frozen=True, slots=True)
class SimSighting:
    """An operator's report: ``camera_id`` as reported (wrong on a wrong handoff), the true
    pass time ``observed_t`` and the time it reaches Cordon, ``delivered_t``."""

    n: int
    camera_id: str
    true_camera_id: str
    observed_t: float
    delivered_t: float
    wrong: bool


@dataclass(frozen=True, slots=True)
class Order:
    """A policy tells ``crew_id`` to go to ``target`` (None: hold) at ``t``; the crew complies
    (``accepted``) and acts from ``effective_t`` (reaction delay)."""

    crew_id: str
    target: int | None
    t: float
    effective_t: float
    accepted: bool
    source: str


@dataclass(frozen=True, slots=True)
class SuggestionRecord:
    """A suggestion of the guidance plan (or a baseline's order, for the map)."""

    crew_id: str
    target_node: int
    t: float
    plan_version: int
    lon: float
    lat: float


@dataclass(frozen=True, slots=True)
class Contact:
    crew_id: str
    edge: int
    t: float


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended: ``kind`` at ``t`` (s), at crossing ``node`` (None for a timeout), by
    ``crew_id`` for an interception; and the pursuit contacts before the end."""

    kind: OutcomeKind
    t: float
    node: int | None
    crew_id: str | None
    contacts: tuple[Contact, ...]


@dataclass
class Recording:
    """Everything that happened, enough to recompute the outcome (see :mod:`sim.outcomes`)."""

    moves: list[Move] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    passes: list[Pass] = field(default_factory=list)
    sightings: list[SimSighting] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    suggestions: list[SuggestionRecord] = field(default_factory=list)


@dataclass
class RunResult:
    scenario: Scenario
    outcome: RunOutcome
    origin: int
    crew_ids: tuple[str, ...]
    crew_km: float
    suggestion_changes: int
    crew_minutes: float
    recording: Recording
    exits: IntArray
    graph: CompiledGraph
    crew_start_nodes: tuple[int, ...]
    suspect_speed_factor: float
    camera_lonlat: Mapping[str, tuple[float, float]]

    @property
    def graph_version(self) -> str:
        return self.graph.version


# ------------------------------------------------------------------------------ city context
def boundary_exits(graph: CompiledGraph, *, margin_m: float = 60.0) -> IntArray:
    """Fallback exits: crossings within ``margin_m`` of the convex hull of the map."""
    from scipy.spatial import ConvexHull

    xy = graph.node_xy
    hull = ConvexHull(xy)
    # hull.equations: a·x + b·y + c <= 0 inside; -(a·x+b·y+c) is the distance to each facet.
    dist = -(xy @ hull.equations[:, :2].T + hull.equations[:, 2])
    return np.flatnonzero(dist.min(axis=1) <= margin_m).astype(np.int64)


def city_exits(city: City) -> IntArray:
    """Exit crossings of a city: ``map_data.city.exit_nodes`` when available, else the hull margin."""
    try:
        from map_data.city import exit_nodes
    except ImportError:
        return boundary_exits(city.graph)
    exits = np.asarray(exit_nodes(city.graph), dtype=np.int64)  # type: ignore[arg-type,unused-ignore]
    return exits if exits.size else boundary_exits(city.graph)


class CityContext:
    """What every run on one city shares (built once per batch worker): the city, its exits, a
    :class:`Navigator` with its route cache, and the crossing nearest each camera."""

    def __init__(self, city: City, *, exits: IntArray | None = None) -> None:
        self.city = city
        self.graph = city.graph
        self.navigator = Navigator(city.graph)
        self.exits = city_exits(city) if exits is None else np.asarray(exits, dtype=np.int64)
        if self.exits.size == 0:
            raise ValueError(f"{city.graph.name}: the map has no exit crossing")
        self.exit_mask: BoolArray = np.zeros(city.graph.n_nodes, dtype=bool)
        self.exit_mask[self.exits] = True
        cams = list(city.cameras.cameras.values())
        self.camera_ids = [c.camera_id for c in cams]
        self.camera_node = {c.camera_id: nearest_node(city.graph, c.lon, c.lat) for c in cams}
        self.camera_lonlat = {c.camera_id: (c.lon, c.lat) for c in cams}
        self._neighbour: dict[str, str] = {}
        #: Per-city objects policies keep between runs (the guidance Coordinator).
        self.extras: dict[str, Any] = {}
        self._cam_ll = np.array([[c.lon, c.lat] for c in cams], dtype=np.float64).reshape(-1, 2)
        # Each seen edge's camera passes, as (camera_id, fraction along the edge).
        self.passes_on: dict[int, tuple[tuple[str, float], ...]] = {}
        length = city.graph.edge_length_m
        for e, seen in city.cameras.on_edge.items():
            L = float(length[e]) or 1.0
            self.passes_on[int(e)] = tuple(
                (cam, min(1.0, max(0.0, (s0 + s1) / 2 / L))) for cam, s0, s1 in seen
            )

    def neighbour(self, camera_id: str) -> str:
        """The camera nearest ``camera_id`` (what a wrong handoff names instead)."""
        got = self._neighbour.get(camera_id)
        if got is None:
            i = self.camera_ids.index(camera_id)
            if len(self.camera_ids) < 2:
                got = camera_id
            else:
                k = np.cos(np.radians(self._cam_ll[i, 1]))
                d = ((self._cam_ll[:, 0] - self._cam_ll[i, 0]) * k) ** 2 + (
                    self._cam_ll[:, 1] - self._cam_ll[i, 1]
                ) ** 2
                d[i] = np.inf
                got = self.camera_ids[int(np.argmin(d))]
            self._neighbour[camera_id] = got
        return got


# ----------------------------------------------------------------------------------- agents
@dataclass
class CrewAgent:
    crew_id: str
    node: int
    speed_factor: float
    move: Move | None = None
    waiting_since: float | None = 0.0
    target: int | None = None
    pending: tuple[float, int | None] | None = None
    refused: set[int | None] = field(default_factory=set)
    metres: float = 0.0

    @property
    def effective_target(self) -> int | None:
        return self.pending[1] if self.pending is not None else self.target


class Policy(Protocol):
    """A way of directing crews. The world calls it; it answers with :meth:`World.order`."""

    name: str

    def start(self, world: World, t: float) -> None: ...
    def on_delivery(self, world: World, sighting: SimSighting, t: float) -> None: ...
    def on_tick(self, world: World, t: float) -> None: ...
    def on_crew_arrival(self, world: World, crew: CrewAgent, t: float) -> None: ...
    def finish(self, world: World) -> None: ...


def contact_time(s0: float, s1: float, c0: float, c1: float, length_m: float) -> float | None:
    """Earliest time a crew crossing an edge over ``[c0, c1]`` is within :data:`CONTACT_M`
    behind a suspect crossing it over ``[s0, s1]`` (both at constant speed), or ``None``."""
    lo, hi = max(s0, c0), min(s1, c1)
    if hi < lo:
        return None
    vs = length_m / (s1 - s0) if s1 > s0 else 0.0
    vc = length_m / (c1 - c0) if c1 > c0 else 0.0
    d_lo = vs * (lo - s0) - vc * (lo - c0)  # suspect offset minus crew offset at lo
    k = vs - vc
    if k == 0.0:
        return lo if 0.0 <= d_lo <= CONTACT_M else None
    ta, tb = lo + (0.0 - d_lo) / k, lo + (CONTACT_M - d_lo) / k
    a, b = max(lo, min(ta, tb)), min(hi, max(ta, tb))
    return a if a <= b else None


# ------------------------------------------------------------------------------------ world
_SUSPECT_ARRIVE, _SUSPECT_GO, _CREW_ARRIVE, _CREW_WAKE, _DELIVER, _TICK, _WAKE = range(7)


class World:
    """One run of a scenario under a policy."""

    def __init__(
        self,
        ctx: CityContext,
        scenario: Scenario,
        policy: Policy,
        *,
        behaviour: SuspectBehaviour | None = None,
    ) -> None:
        self.ctx = ctx
        self.city = ctx.city
        self.graph = ctx.graph
        self.navigator = ctx.navigator
        self.exits = ctx.exits
        self.scenario = scenario
        self.policy = policy
        self.incident_at: datetime = scenario.incident.at
        streams = np.random.SeedSequence(scenario.seed).spawn(5)
        setup, s_rng, c_rng, k_rng, self.policy_rng = (np.random.default_rng(s) for s in streams)
        self.rng = s_rng  # the suspect's stream (SuspectContext)
        self._cam_rng = c_rng
        self._crew_rng = k_rng
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.record = Recording()
        self.entries: list[tuple[int, float]] = []
        self.behaviour = behaviour or make_behaviour(scenario.suspect)
        self.origin = self._pick_origin(setup)
        self.crews = self._place_crews(setup)
        self._crew_by_id = {c.crew_id: c for c in self.crews}
        self._crew_start = tuple(c.node for c in self.crews)
        lo, hi = scenario.suspect.speed_factor
        self.suspect_factor = float(s_rng.uniform(min(lo, hi), max(lo, hi)))
        self.suspect_node = self.origin
        self.suspect_move: Move | None = None
        self._suspect_in: int | None = None
        self._contacts: dict[tuple[str, float], Contact] = {}
        self._n_sightings = 0
        self.outcome: RunOutcome | None = None
        self.suggestion_changes = 0
        self._last_suggested: dict[str, int] = {}

    # ------------------------------------------------------------------ setup
    def _pick_origin(self, rng: np.random.Generator) -> int:
        g, inc = self.graph, self.scenario.incident
        if isinstance(self.behaviour, Trajectory) and inc.place is None:
            return self.behaviour.origin(g)
        if inc.place is not None:
            return nearest_node(g, inc.place.lon, inc.place.lat)
        to_exit = self.navigator.times_to(self.exits.tolist())
        ok = np.flatnonzero(np.isfinite(to_exit) & ~self.ctx.exit_mask & (to_exit >= inc.min_exit_time_s))
        if ok.size == 0:
            finite = np.where(np.isfinite(to_exit) & ~self.ctx.exit_mask, to_exit, -1.0)
            return int(np.argmax(finite))
        return int(rng.choice(ok))

    def _place_crews(self, rng: np.random.Generator) -> list[CrewAgent]:
        spec, g = self.scenario.crews, self.graph
        factor = self.scenario.crew_model.speed_factor
        if spec.positions:
            nodes = [nearest_node(g, p.lon, p.lat) for p in spec.positions]
        else:
            area = spec.area
            cx, cy = g.node_xy[self.origin]
            if area.center is not None:
                cx, cy = g.node_xy[nearest_node(g, area.center.lon, area.center.lat)]
            d_center = np.hypot(g.node_xy[:, 0] - cx, g.node_xy[:, 1] - cy)
            d_incident = np.hypot(*(g.node_xy - g.node_xy[self.origin]).T)
            reach = np.isfinite(self.navigator.times_from(self.origin))
            ok = np.flatnonzero(
                (d_center <= area.radius_m)
                & (d_incident >= area.min_distance_m)
                & ~self.ctx.exit_mask
                & reach
            )
            if ok.size == 0:
                ok = np.flatnonzero(~self.ctx.exit_mask & reach)
            nodes = [int(n) for n in rng.choice(ok, size=spec.count, replace=ok.size < spec.count)]
        return [CrewAgent(f"crew-{i + 1}", n, factor) for i, n in enumerate(nodes)]

    # --------------------------------------------------------------- schedule
    def schedule_event(self, t: float, kind: int, payload: Any = None) -> None:
        heapq.heappush(self._heap, (t, self._seq, kind, payload))
        self._seq += 1

    def schedule_event_relative(self, delay_s: float, kind: int, payload: Any = None) -> None:
        self.schedule_event(self.now + max(0.0, delay_s), kind, payload)

    def wake_policy_at(self, t: float) -> None:
        """Consult the policy (:meth:`Policy.on_tick`) at simulated time ``t`` too, besides the
        regular ``update_interval_s`` ticks: a policy's own timer (events at the same time run
        in the order they were scheduled). It goes through ``on_tick`` so that whatever wraps
        the policy (the server's paced trainer runs) sees it like any tick."""
        self.schedule_event(max(t, self.now), _WAKE)

    def at(self, t: float) -> datetime:
        """The aware datetime of simulated time ``t``."""
        return self.incident_at + timedelta(seconds=t)

    # ------------------------------------------------------------- positions
    def _xy_of(self, move: Move | None, node: int, t: float) -> FloatArray:
        g = self.graph
        if move is None:
            xy: FloatArray = g.node_xy[node]
            return xy
        f = 0.0 if move.t1 <= move.t0 else min(1.0, max(0.0, (t - move.t0) / (move.t1 - move.t0)))
        a, b = g.node_xy[g.edge_u[move.edge]], g.node_xy[g.edge_v[move.edge]]
        out: FloatArray = a + f * (b - a)
        return out

    def crews_xy(self, now_s: float) -> FloatArray:
        return np.array([self._xy_of(c.move, c.node, now_s) for c in self.crews]).reshape(-1, 2)

    def suspect_xy(self, t: float) -> FloatArray:
        return self._xy_of(self.suspect_move, self.suspect_node, t)

    def crew(self, crew_id: str) -> CrewAgent:
        try:
            return self._crew_by_id[crew_id]
        except KeyError:
            raise KeyError(f"unknown crew {crew_id!r}") from None

    def crew_position(self, crew: CrewAgent, t: float) -> EdgePosition:
        """Where a crew is, as an edge position (at a crossing: the end of an edge into it)."""
        g = self.graph
        if crew.move is not None:
            m = crew.move
            f = 0.0 if m.t1 <= m.t0 else min(1.0, max(0.0, (t - m.t0) / (m.t1 - m.t0)))
            return EdgePosition(m.edge, float(f * g.edge_length_m[m.edge]))
        into = g.into(crew.node)
        if into.size:
            e = int(into[0])
            return EdgePosition(e, float(g.edge_length_m[e]))
        return EdgePosition(int(g.out_of(crew.node)[0]), 0.0)

    def crew_heading_node(self, crew: CrewAgent) -> int:
        """The crossing a crew stands at, or the one it is driving to."""
        return crew.node if crew.move is None else int(self.graph.edge_v[crew.move.edge])

    def suspect_in_view(self, crew: CrewAgent, t: float) -> int | None:
        """The crossing the suspect heads for, when it is within the crew's sight; else None."""
        d = self.crews_xy_one(crew, t) - self.suspect_xy(t)
        if float(np.hypot(d[0], d[1])) > self.scenario.crew_model.sight_m:
            return None
        m = self.suspect_move
        return self.suspect_node if m is None else int(self.graph.edge_v[m.edge])

    def crews_xy_one(self, crew: CrewAgent, t: float) -> FloatArray:
        return self._xy_of(crew.move, crew.node, t)

    # ---------------------------------------------------------------- orders
    def order(self, crew_id: str, target: int | None, *, source: str, own_sight: bool = False) -> bool:
        """Tell a crew to drive to ``target`` (None: stop at the next crossing and hold).

        The crew complies with probability ``crew_model.compliance`` (a refusal of a given
        target is final) and acts after ``crew_model.reaction_s``. A crew acting on what it
        sees itself (``own_sight``: following the suspect in view) always does, at once.
        Returns whether the crew will act on it."""
        crew = self.crew(crew_id)
        if target == crew.effective_target or (target in crew.refused and not own_sight):
            return False
        model = self.scenario.crew_model
        if own_sight:
            accepted, effective = True, self.now
        else:
            accepted = bool(self._crew_rng.random() < model.compliance)
            effective = self.now + model.reaction_s
        self.record.orders.append(Order(crew_id, target, self.now, effective, accepted, source))
        if not accepted:
            crew.refused.add(target)
            return False
        crew.pending = (effective, target)
        if effective > self.now:
            self.schedule_event(effective, _CREW_WAKE, crew)
        elif crew.move is None:
            self._crew_go_or_wait(crew)
        return True

    def note_suggestion(self, crew_id: str, target: int, plan_version: int) -> None:
        """Record a suggestion (for the replay and the change count)."""
        prev = self._last_suggested.get(crew_id)
        if prev is not None and prev != target:
            self.suggestion_changes += 1
        self._last_suggested[crew_id] = target
        lon, lat = self.graph.node_lonlat[target]
        self.record.suggestions.append(
            SuggestionRecord(crew_id, target, self.now, plan_version, float(lon), float(lat))
        )

    # ----------------------------------------------------------------- crews
    def _crew_go_or_wait(self, crew: CrewAgent) -> None:
        if crew.pending is not None and crew.pending[0] <= self.now:
            crew.target = crew.pending[1]
            crew.pending = None
        target = crew.target
        edge = None
        if target is not None and target != crew.node:
            edge = self.navigator.next_edge_to(crew.node, target)
        if edge is None:
            if crew.waiting_since is None:
                crew.waiting_since = self.now
            return
        if crew.waiting_since is not None:
            self.record.waits.append(Wait(crew.crew_id, crew.node, crew.waiting_since, self.now))
            crew.waiting_since = None
        t1 = self.now + float(self.graph.edge_time_s[edge]) / crew.speed_factor
        move = Move(crew.crew_id, edge, self.now, t1)
        crew.move = move
        self.record.moves.append(move)
        sm = self.suspect_move
        if sm is not None and sm.edge == edge:
            self._check_contact(sm, move)
        self.schedule_event(t1, _CREW_ARRIVE, crew)

    def _crew_arrive(self, crew: CrewAgent) -> None:
        assert crew.move is not None
        crew.metres += float(self.graph.edge_length_m[crew.move.edge])
        crew.node = int(self.graph.edge_v[crew.move.edge])
        crew.move = None
        self.policy.on_crew_arrival(self, crew, self.now)
        if crew.move is None:
            self._crew_go_or_wait(crew)

    def _check_contact(self, suspect: Move, crew_move: Move) -> None:
        key = (crew_move.agent, suspect.t0)
        if key in self._contacts:
            return
        t = contact_time(
            suspect.t0, suspect.t1, crew_move.t0, crew_move.t1, float(self.graph.edge_length_m[suspect.edge])
        )
        if t is not None:
            self._contacts[key] = Contact(crew_move.agent, suspect.edge, t)

    # --------------------------------------------------------------- suspect
    def _suspect_enter(self, node: int) -> None:
        self.suspect_node = node
        self.suspect_move = None
        self.entries.append((node, self.now))
        stopped = [
            (crew.waiting_since, crew.crew_id)
            for crew in self.crews
            if crew.move is None
            and crew.node == node
            and crew.waiting_since is not None
            and crew.waiting_since + INTERCEPT_WAIT_S <= self.now
        ]
        if stopped:  # the crew waiting longest makes the interception
            self._end("interception", node, min(stopped)[1])
            return
        if self.ctx.exit_mask[node]:
            self._end("escape", node, None)
            return
        self._suspect_go()

    def _suspect_go(self) -> None:
        node = self.suspect_node
        leg: Leg | None = self.behaviour.choose(self, node, self._suspect_in, self.now)
        if leg is None:
            return  # parks; the run goes on until the duration ends
        g, e = self.graph, leg.edge
        if leg.time_s is not None:
            dt = leg.time_s
        else:
            noise = float(np.exp(self.rng.normal(0.0, self.scenario.suspect.edge_noise_sigma)))
            dt = float(g.edge_time_s[e]) / (self.suspect_factor * noise)
        move = Move("suspect", e, self.now, self.now + dt)
        self.suspect_move = move
        self._suspect_in = e
        self.record.moves.append(move)
        self._camera_passes(move)
        for crew in self.crews:
            if crew.move is not None and crew.move.edge == e:
                self._check_contact(move, crew.move)
        self.schedule_event(move.t1, _SUSPECT_ARRIVE, int(g.edge_v[e]))

    def _camera_passes(self, move: Move) -> None:
        model = self.scenario.camera_model
        default_p = model.p_detect if model.p_detect is not None else self.city.cameras.detection_probability
        rng = self._cam_rng
        for cam, frac in self.ctx.passes_on.get(move.edge, ()):
            t_pass = move.t0 + frac * (move.t1 - move.t0)
            p = model.per_camera.get(cam, default_p)
            detected = bool(rng.random() < p)
            self.record.passes.append(Pass(cam, move.edge, t_pass, detected))
            if not detected:
                continue
            delay = model.handoff_median_s * float(np.exp(model.handoff_sigma * rng.normal()))
            wrong = bool(rng.random() < model.p_wrong_handoff)
            reported = self.ctx.neighbour(cam) if wrong else cam
            self._n_sightings += 1
            sighting = SimSighting(self._n_sightings, reported, cam, t_pass, t_pass + delay, wrong)
            self.schedule_event(sighting.delivered_t, _DELIVER, sighting)

    # -------------------------------------------------------------------- run
    def _end(self, kind: OutcomeKind, node: int | None, crew_id: str | None) -> None:
        contacts = tuple(
            sorted(
                (c for c in self._contacts.values() if c.t <= self.now),
                key=lambda c: (c.t, c.crew_id),
            )
        )
        self.outcome = RunOutcome(kind, self.now, node, crew_id, contacts)

    def run_for(self, duration_s: float | None = None) -> RunResult:
        """Run until interception, escape or ``duration_s`` (default the scenario's)."""
        duration = self.scenario.duration_s if duration_s is None else duration_s
        interval = self.scenario.crew_model.update_interval_s
        start_delay = self.behaviour.start_delay_s if isinstance(self.behaviour, Trajectory) else 0.0
        self.behaviour.start(self, self.origin)
        self.policy.start(self, 0.0)
        self.schedule_event(start_delay, _SUSPECT_GO)
        self.schedule_event(interval, _TICK)
        handlers: dict[int, Callable[[Any], None]] = {
            _SUSPECT_ARRIVE: self._suspect_enter,
            _SUSPECT_GO: lambda _: self._suspect_go(),
            _CREW_ARRIVE: self._crew_arrive,
            _CREW_WAKE: lambda crew: self._crew_go_or_wait(crew) if crew.move is None else None,
            _DELIVER: self._deliver,
            _TICK: self._tick,
            _WAKE: lambda _: self.policy.on_tick(self, self.now),
        }
        try:
            while self._heap and self.outcome is None:
                t, _, kind, payload = self._heap[0]
                if t > duration:
                    break
                heapq.heappop(self._heap)
                self.now = t
                handlers[kind](payload)
            if self.outcome is None:
                self.now = duration
                self._end("timeout", None, None)
        finally:
            self.policy.finish(self)  # e.g. close the incident in a Coordinator shared by runs
        return self._result()

    def _deliver(self, sighting: SimSighting) -> None:
        self.record.sightings.append(sighting)
        self.policy.on_delivery(self, sighting, self.now)

    def _tick(self, _: Any) -> None:
        self.policy.on_tick(self, self.now)
        self.schedule_event_relative(self.scenario.crew_model.update_interval_s, _TICK)

    def _result(self) -> RunResult:
        assert self.outcome is not None
        end = self.outcome.t
        metres = 0.0
        for crew in self.crews:
            metres += crew.metres
            if crew.move is not None:  # the part of the current edge already driven
                m = crew.move
                f = min(1.0, max(0.0, (end - m.t0) / (m.t1 - m.t0))) if m.t1 > m.t0 else 1.0
                metres += f * float(self.graph.edge_length_m[m.edge])
            if crew.waiting_since is not None:
                self.record.waits.append(Wait(crew.crew_id, crew.node, crew.waiting_since, None))
        return RunResult(
            scenario=self.scenario,
            outcome=self.outcome,
            origin=self.origin,
            crew_ids=tuple(c.crew_id for c in self.crews),
            crew_km=metres / 1000.0,
            suggestion_changes=self.suggestion_changes,
            crew_minutes=len(self.crews) * end / 60.0,
            recording=self.record,
            exits=self.exits,
            graph=self.graph,
            crew_start_nodes=self._crew_start,
            suspect_speed_factor=self.suspect_factor,
            camera_lonlat=self.ctx.camera_lonlat,
        )


def run_scenario(
    ctx: CityContext,
    scenario: Scenario,
    *,
    policy: Policy | None = None,
    policy_factory: Callable[[Scenario, CityContext], Policy] | None = None,
) -> RunResult:
    """One run of ``scenario`` under its policy (or the one given)."""
    if policy is None:
        from sim.policies import make_policy

        policy = (policy_factory or make_policy)(scenario, ctx)
    return World(ctx, scenario, policy).run_for()
