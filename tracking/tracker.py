"""Trackers: one per incident (:class:`Tracker`), and the set of open incidents (:class:`Tracks`).

A tracker keeps every sighting of its incident in time order. The belief at ``t`` is a pure
function of the sightings observed up to ``t`` and of ``t``: the sightings are replayed in
order (ties broken by ``source_event_id``), each accepted one conditioning the route
hypotheses of :mod:`tracking.hypotheses`. The state after each sighting is cached, so a
sighting arriving in order costs one step and a late one replays from where it belongs; both
give exactly the same belief as if every sighting had come in order.

For each sighting, in order:

1. flag it (keep, do not condition) when it predates the incident, has a confidence below
   ``min_confidence``, or lies farther by road from the last accepted sighting than
   ``max_speed_mps`` allows in the elapsed time (``unreachable_in_time``);
2. otherwise predict the hypotheses to its time and condition them on passing its camera;
   the first sighting (or one no hypothesis can explain) initiates hypotheses at the camera.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from map_data.errors import CameraSeesNothingError, UnknownCameraError
from map_data.network_types import City, EdgeSpan
from map_data.types import EdgePosition, LonLat
from tracking.behaviour import BranchContext, BranchModel, RoadBehaviour
from tracking.config import TrackerConfig
from tracking.errors import (
    IncidentAlreadyOpenError,
    NoBeliefError,
    UnknownIncidentError,
    WrongIncidentError,
)
from tracking.hypotheses import (
    BranchTables,
    Context,
    Hypotheses,
    condition,
    initiate_at_camera,
    initiate_at_origin,
    propagate,
)
from tracking.kernels import locate_kernel
from tracking.roads import RoadIndex
from tracking.types import Belief, RouteProbability, Sighting, SightingFlag, TrackUpdate, WeightedPosition

__all__ = ["Tracker", "TrackerConfig", "Tracks"]


@dataclass(frozen=True, slots=True)
class _Step:
    """The outcome of replaying one sighting and the state after it."""

    sighting: Sighting
    t_s: float
    accepted: bool
    flag: SightingFlag | None
    hyps: Hypotheses | None
    last_camera_id: str | None
    last_seen_at: datetime | None
    n_accepted: int
    origin_node: int | None


def _check_aware(at: datetime, what: str) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {at.isoformat()}")


class Tracker:
    """The track of one incident's suspect vehicle.

    ``incident_id`` (adopted from the first sighting when omitted), ``opened_at`` (sightings
    before it are flagged) and ``origin`` (the incident's position: the belief starts there
    before any sighting, and drivers are taken to flee away from it) are optional.
    ``roads`` lets several trackers of one city share the precomputed :class:`RoadIndex`, and
    ``branch_tables`` (built on that ``roads``) their branch priors; the belief is the same
    with or without them.
    """

    def __init__(
        self,
        city: City,
        *,
        behaviour: BranchModel | None = None,
        config: TrackerConfig | None = None,
        incident_id: str | None = None,
        opened_at: datetime | None = None,
        origin: EdgePosition | None = None,
        roads: RoadIndex | None = None,
        branch_tables: BranchTables | None = None,
    ) -> None:
        self.city = city
        self.config = config or TrackerConfig()
        if branch_tables is not None:
            roads = roads or branch_tables.roads
            behaviour = behaviour or branch_tables.behaviour
        self.roads = roads or RoadIndex(city.graph, city.cameras)
        self.incident_id = incident_id
        if opened_at is not None:
            _check_aware(opened_at, "opened_at")
        self.opened_at = opened_at
        graph = city.graph
        origin_xy: tuple[float, float] | None = None
        self._origin_node: int | None = None
        if origin is not None:
            if not 0 <= origin.edge < graph.n_edges:
                raise ValueError(
                    f"origin edge {origin.edge} is not an edge of the graph ({graph.n_edges} edges)"
                )
            if not math.isfinite(origin.offset_m):
                raise ValueError(f"origin offset_m {origin.offset_m!r} on edge {origin.edge} is not finite")
            # An offset outside the edge is the nearer end of it.
            length = float(graph.edge_length_m[origin.edge])
            origin = EdgePosition(origin.edge, min(max(float(origin.offset_m), 0.0), length))
            origin_xy = self.roads.position_xy(origin.edge, origin.offset_m)
            half = origin.offset_m < 0.5 * graph.edge_length_m[origin.edge]
            self._origin_node = int(graph.edge_u[origin.edge] if half else graph.edge_v[origin.edge])
        behaviour = behaviour or RoadBehaviour()
        branch_context = BranchContext(origin_xy=origin_xy)
        priors = branch_tables.priors(branch_context) if branch_tables is not None else None
        self._ctx = Context(self.roads, behaviour, branch_context, self.config, priors)
        self._initial: Hypotheses | None = None
        if origin is not None and opened_at is not None:
            self._initial = initiate_at_origin(self._ctx, opened_at.timestamp(), origin)
        self._keys: list[tuple[float, str]] = []
        self._steps: list[_Step] = []
        self._outcome: dict[str, tuple[bool, SightingFlag | None]] = {}
        self._flags: dict[tuple[str, str | None, datetime | None], SightingFlag | None] = {}
        # The last belief asked for, by (time, number of sightings): a belief is a function of
        # the set of sightings (which only grows) and the time.
        self._last_belief: tuple[float, int, Belief] | None = None

    # ------------------------------------------------------------------ updates

    def update(self, sighting: Sighting) -> TrackUpdate:
        """Take one sighting (in any order). The same ``source_event_id`` twice changes nothing.

        Raises :class:`map_data.errors.UnknownCameraError` for a camera the city does not know,
        :class:`map_data.errors.CameraSeesNothingError` for one whose view holds no street, and
        :class:`tracking.errors.WrongIncidentError` for another incident's sighting; the tracker
        is left unchanged then.
        """
        if self.incident_id is not None and sighting.incident_id != self.incident_id:
            raise WrongIncidentError(
                f"sighting {sighting.source_event_id!r} is for incident {sighting.incident_id!r}, "
                f"this tracker follows {self.incident_id!r}"
            )
        known = self._outcome.get(sighting.source_event_id)
        if known is not None:
            return TrackUpdate(
                sighting.incident_id, sighting.source_event_id, known[0], duplicate=True, flag=known[1]
            )
        view = self.city.cameras.views.get(sighting.camera_id)
        where = f"sighting {sighting.source_event_id!r} of incident {sighting.incident_id!r}"
        if view is None:
            raise UnknownCameraError(
                f"{where}: unknown camera {sighting.camera_id!r} "
                f"(not in the camera network of {self.city.graph.name!r})"
            )
        if not view.spans:
            raise CameraSeesNothingError(f"{where}: camera {sighting.camera_id!r} sees no street")
        self.incident_id = sighting.incident_id
        key = (sighting.observed_at.timestamp(), sighting.source_event_id)
        pos = bisect.bisect(self._keys, key)
        self._keys.insert(pos, key)
        later = self._steps[pos:]
        del self._steps[pos:]
        # The state the first later step was computed from (before this sighting came).
        before = self._state(self._steps[-1] if self._steps else None)
        step = self._process(self._steps[-1] if self._steps else None, sighting)
        self._steps.append(step)
        self._outcome[sighting.source_event_id] = (step.accepted, step.flag)
        replayed = 1
        for k, old in enumerate(later):
            if self._state(self._steps[-1]) == before:
                # The later steps would be recomputed from the very state they were computed
                # from (e.g. this sighting was flagged): they stand as they are.
                self._steps.extend(later[k:])
                break
            before = self._state(old)
            step = self._process(self._steps[-1], old.sighting)
            self._steps.append(step)
            self._outcome[old.sighting.source_event_id] = (step.accepted, step.flag)
            replayed += 1
        accepted, flag = self._outcome[sighting.source_event_id]
        return TrackUpdate(
            self.incident_id,
            sighting.source_event_id,
            accepted,
            duplicate=False,
            flag=flag,
            replayed=replayed,
        )

    def _state(self, step: _Step | None) -> tuple[int, str | None, int, int, int | None]:
        """What :meth:`_process` reads of the previous step (objects by identity: they are
        kept alive by the steps while compared)."""
        if step is None:
            return (id(self._initial), None, id(None), 0, self._origin_node)
        return (id(step.hyps), step.last_camera_id, id(step.last_seen_at), step.n_accepted, step.origin_node)

    def _process(self, prev: _Step | None, sighting: Sighting) -> _Step:
        t_s = sighting.observed_at.timestamp()
        hyps = prev.hyps if prev is not None else self._initial
        last_cam = prev.last_camera_id if prev is not None else None
        last_seen = prev.last_seen_at if prev is not None else None
        n_acc = prev.n_accepted if prev is not None else 0
        origin_node = prev.origin_node if prev is not None else self._origin_node
        # A flag is a pure function of the sighting and the last accepted one: memoised for
        # replays (a late sighting replays the later ones, mostly against the same last camera).
        flag_key = (sighting.source_event_id, last_cam, last_seen)
        if flag_key in self._flags:
            flag = self._flags[flag_key]
        else:
            flag = self._flags[flag_key] = self._flag(sighting, last_cam, last_seen)
        if flag is not None:
            return _Step(sighting, t_s, False, flag, hyps, last_cam, last_seen, n_acc, origin_node)
        speed = None if sighting.speed_kmh is None else sighting.speed_kmh / 3.6
        new: Hypotheses | None = None
        if hyps is not None and hyps.last_camera is not None:
            new = condition(
                self._ctx,
                propagate(self._ctx, hyps, t_s),
                sighting.camera_id,
                heading_deg=sighting.heading_deg,
                speed_mps=speed,
            )
        if new is None:
            new = initiate_at_camera(
                self._ctx, t_s, sighting.camera_id, heading_deg=sighting.heading_deg, speed_mps=speed
            )
        if origin_node is None:
            origin_node = self.roads.edge_u[self.city.cameras.view(sighting.camera_id).spans[0].edge]
        return _Step(
            sighting, t_s, True, None, new, sighting.camera_id, sighting.observed_at, n_acc + 1, origin_node
        )

    def _flag(
        self, sighting: Sighting, last_cam: str | None, last_seen: datetime | None
    ) -> SightingFlag | None:
        cfg = self.config
        if self.opened_at is not None and sighting.observed_at < self.opened_at:
            return SightingFlag(
                "before_incident_open",
                f"observed at {sighting.observed_at.isoformat()}, "
                f"incident opened at {self.opened_at.isoformat()}",
            )
        if sighting.confidence is not None and sighting.confidence < cfg.min_confidence:
            return SightingFlag(
                "low_confidence", f"confidence {sighting.confidence:.2f} below {cfg.min_confidence:.2f}"
            )
        if last_cam is None or last_seen is None:
            return None
        dt = (sighting.observed_at - last_seen).total_seconds()
        dist = self.road_distance_m(
            last_cam, sighting.camera_id, limit_m=cfg.max_speed_mps * dt + cfg.position_slack_m
        )
        excess = max(0.0, dist - cfg.position_slack_m)
        if excess == 0.0:
            return None
        required = math.inf if dt <= 0 else excess / dt
        if required > cfg.max_speed_mps:
            shown = "unreachable" if math.isinf(dist) else f"{dist:.0f} m by road"
            return SightingFlag(
                "unreachable_in_time",
                f"camera {sighting.camera_id!r} is {shown} from camera {last_cam!r} seen {dt:.1f} s earlier: "
                f"needs {required:.1f} m/s, more than the maximum {cfg.max_speed_mps:.1f} m/s",
            )
        return None

    def road_distance_m(self, from_camera: str, to_camera: str, *, limit_m: float | None = None) -> float:
        """Shortest driving distance (m) from a stretch ``from_camera`` sees to one ``to_camera`` sees
        (middle to middle); ``inf`` beyond ``limit_m``."""
        if from_camera == to_camera:
            return 0.0
        views = self.city.cameras
        src = views.view(from_camera).spans
        dst = views.view(to_camera).spans
        lengths = self.roads.edge_len
        best = math.inf
        for a in src:
            for b in dst:
                if a.edge == b.edge and b.start_m + b.end_m >= a.start_m + a.end_m:
                    best = min(best, 0.5 * (b.start_m + b.end_m - a.start_m - a.end_m))
        if limit_m is not None and limit_m <= 0:
            return best
        # Most pairs of cameras are much nearer than the limit: a Dijkstra bounded by a guess
        # from the straight line settles them; a distance within the bound is the exact one
        # (every node within it is settled with the same distance), else search to the limit.
        a0, b0 = src[0], dst[0]
        ax, ay = self.roads.position_xy(a0.edge, 0.5 * (a0.start_m + a0.end_m))
        bx, by = self.roads.position_xy(b0.edge, 0.5 * (b0.start_m + b0.end_m))
        guess = 2.0 * math.hypot(bx - ax, by - ay) + 100.0
        if limit_m is None or guess < limit_m:
            near = self._road_distance_upto(src, dst, best, guess)
            # A pair beyond the guess is farther than this (spans lie inside their edges).
            lengths = self.roads.edge_len
            bound = (
                guess
                + min(lengths[a.edge] - 0.5 * (a.start_m + a.end_m) for a in src)
                + min(0.5 * (b.start_m + b.end_m) for b in dst)
            )
            if near <= bound:
                return math.inf if limit_m is not None and near > limit_m else near
        best = self._road_distance_upto(src, dst, best, limit_m)
        if limit_m is not None and best > limit_m:
            return math.inf
        return best

    def _road_distance_upto(
        self, src: Sequence[EdgeSpan], dst: Sequence[EdgeSpan], best: float, limit_m: float | None
    ) -> float:
        """The smaller of ``best`` and the shortest ``src`` -> ``dst`` distance through the
        network (exact when at most ``limit_m``, else larger)."""
        roads = self.roads
        lengths = roads.edge_len
        heads = sorted({roads.edge_v[a.edge] for a in src})
        dist = roads.directed_lengths_from(heads, limit_m=limit_m)
        row = {h: k for k, h in enumerate(heads)}
        # The distances to the tails of the seen edges, as Python floats (same values).
        to_tails = dist[:, [roads.edge_u[b.edge] for b in dst]].tolist()
        mids = [0.5 * (b.start_m + b.end_m) for b in dst]
        for a in src:
            rem = lengths[a.edge] - 0.5 * (a.start_m + a.end_m)
            for d, mid in zip(to_tails[row[roads.edge_v[a.edge]]], mids, strict=True):
                total = rem + d + mid
                if total < best:
                    best = total
        return best

    # ------------------------------------------------------------------ queries

    @property
    def last_activity(self) -> datetime | None:
        """Time of the latest sighting (any), else the opening time."""
        if self._steps:
            return max(step.sighting.observed_at for step in self._steps)
        return self.opened_at

    def sightings(self) -> tuple[tuple[Sighting, bool, SightingFlag | None], ...]:
        """Every sighting in time order, with whether it was accepted and its flag."""
        return tuple((step.sighting, step.accepted, step.flag) for step in self._steps)

    def hypotheses(self, at: datetime) -> Hypotheses:
        """The route hypotheses predicted to ``at`` (for inspection and tests)."""
        _check_aware(at, "at")
        t_s = at.timestamp()
        k = bisect.bisect_right(self._keys, (t_s, "\U0010ffff"))
        hyps = self._steps[k - 1].hyps if k > 0 else self._initial
        if hyps is None:
            raise NoBeliefError(
                f"incident {self.incident_id!r}: no sighting up to {at.isoformat()} and no known origin"
            )
        if t_s < hyps.t_s:
            opened = self.opened_at.isoformat() if self.opened_at is not None else "?"
            raise NoBeliefError(
                f"incident {self.incident_id!r}: no belief at {at.isoformat()}, "
                f"before the incident was opened at {opened}"
            )
        return propagate(self._ctx, hyps, t_s)

    def belief(self, at: datetime) -> Belief:
        """Where the suspect is at ``at`` given the sightings observed up to ``at``.

        Raises :class:`tracking.errors.NoBeliefError` when nothing is known yet.
        """
        _check_aware(at, "at")
        t_s = at.timestamp()
        last = self._last_belief
        if (
            last is not None
            and last[0] == t_s
            and last[1] == len(self._keys)
            and last[2].at.tzinfo == at.tzinfo
        ):
            return last[2]
        hyps = self.hypotheses(at)
        k = bisect.bisect_right(self._keys, (t_s, "\U0010ffff"))
        step = self._steps[k - 1] if k > 0 else None
        belief = self._summarise(hyps, at, step)
        self._last_belief = (t_s, len(self._keys), belief)
        return belief

    def _summarise(self, h: Hypotheses, at: datetime, step: _Step | None) -> Belief:
        roads = self.roads
        p = h.probabilities()
        positions: list[WeightedPosition] = []
        routes: dict[tuple[int, ...], float] = {}
        lon = lat = 0.0
        sin_h = cos_h = 0.0
        driven = h.x[:, 0] - h.anchor
        # Where each hypothesis' mean is (edge, offset, index in its route) and the coordinates
        # and bearing there: :meth:`Context.locate` and :meth:`RoadIndex.lonlat_bearing`, compiled.
        routes_in = h.routes
        route_ptr = np.zeros(len(routes_in) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, routes_in), dtype=np.int64, count=len(routes_in)), out=route_ptr[1:])
        # the kernel reads route_edges[lo] unchecked: an empty route must fail here, as locate did
        assert bool(np.all(route_ptr[1:] > route_ptr[:-1])), "a hypothesis has an empty route"
        graph = roads.graph
        located = locate_kernel(
            route_ptr,
            np.fromiter(itertools.chain.from_iterable(routes_in), dtype=np.int64, count=int(route_ptr[-1])),
            np.ascontiguousarray(h.x[:, 0]),
            roads.edge_len_arr,
            roads.geom_ptr_arr,
            roads.arc,
            graph.geom_lonlat,
            graph.geom_xy,
        )
        edges, offsets, ks, lons, lats, bearings = (a.tolist() for a in located)
        p_list = p.tolist()
        v_list = h.x[:, 1].tolist()
        radians, sin, cos = math.radians, math.sin, math.cos
        for i, route in enumerate(routes_in):
            pi = p_list[i]
            positions.append(WeightedPosition(edges[i], offsets[i], pi, v_list[i]))
            prefix = route[: ks[i] + 1]
            routes[prefix] = routes.get(prefix, 0.0) + pi
            lon += pi * lons[i]
            lat += pi * lats[i]
            b = radians(bearings[i])
            sin_h += pi * sin(b)
            cos_h += pi * cos(b)
        positions.sort(key=lambda wp: (-wp.probability, wp.edge, wp.offset_m))
        mean_d = float(p @ driven)
        var_d = float(p @ (h.P[:, 0, 0] + (driven - mean_d) ** 2))
        v = h.x[:, 1]
        mean_v = float(p @ v)
        var_v = float(p @ (h.P[:, 1, 1] + (v - mean_v) ** 2))
        top = sorted(routes.items(), key=lambda kv: (-kv[1], kv[0]))[: self.config.top_routes]
        if step is not None and step.last_seen_at is not None:
            since = (at - step.last_seen_at).total_seconds()
        else:
            since = (at - self.opened_at).total_seconds() if self.opened_at is not None else 0.0
        origin_node = step.origin_node if step is not None else self._origin_node
        # ``x % 360`` of a tiny negative angle rounds to 360.0: that is north, 0.
        heading_deg = math.degrees(math.atan2(sin_h, cos_h)) % 360.0
        if heading_deg >= 360.0:
            heading_deg = 0.0
        return Belief(
            incident_id=self.incident_id or "",
            at=at,
            positions=tuple(positions),
            mean_lonlat=LonLat(lon, lat),
            sigma_along_m=math.sqrt(max(var_d, 0.0)),
            speed_mps=mean_v,
            speed_sigma_mps=math.sqrt(max(var_v, 0.0)),
            heading_deg=heading_deg,
            since_last_sighting_s=since,
            top_routes=tuple(RouteProbability(r, pr) for r, pr in top),
            last_camera_id=step.last_camera_id if step is not None else None,
            last_seen_at=step.last_seen_at if step is not None else None,
            origin_node=int(origin_node) if origin_node is not None else -1,
            n_sightings=step.n_accepted if step is not None else 0,
        )


class Tracks:
    """The tracks of every open incident of one city; each incident is its own :class:`Tracker`."""

    def __init__(
        self,
        city: City,
        *,
        behaviour: BranchModel | None = None,
        config: TrackerConfig | None = None,
    ) -> None:
        self.city = city
        self.config = config or TrackerConfig()
        self._behaviour = behaviour or RoadBehaviour()
        self._roads = RoadIndex(city.graph, city.cameras)
        # Branch priors shared by the incidents' trackers (exactly those each would build).
        self._branch_tables = BranchTables(self._roads, self._behaviour, self.config)
        self._branch_tables.priors(BranchContext())  # built now rather than at the first open
        self._tracks: dict[str, Tracker] = {}

    def open(self, incident_id: str, at: datetime, origin: EdgePosition | None = None) -> Tracker:
        """Open an incident at ``at`` (optionally at its position ``origin``) and return its tracker."""
        _check_aware(at, "at")
        if incident_id in self._tracks:
            raise IncidentAlreadyOpenError(f"incident {incident_id!r} is already open")
        tracker = Tracker(
            self.city,
            behaviour=self._behaviour,
            config=self.config,
            incident_id=incident_id,
            opened_at=at,
            origin=origin,
            roads=self._roads,
            branch_tables=self._branch_tables,
        )
        self._tracks[incident_id] = tracker
        return tracker

    def tracker(self, incident_id: str) -> Tracker:
        """The tracker of an open incident; :class:`UnknownIncidentError` otherwise."""
        try:
            return self._tracks[incident_id]
        except KeyError:
            raise UnknownIncidentError(f"incident {incident_id!r} is not open") from None

    def update(self, sighting: Sighting) -> TrackUpdate:
        """Give a sighting to its incident's tracker."""
        return self.tracker(sighting.incident_id).update(sighting)

    def belief(self, incident_id: str, at: datetime) -> Belief:
        return self.tracker(incident_id).belief(at)

    def close(self, incident_id: str) -> None:
        """End an incident's track."""
        self.tracker(incident_id)
        del self._tracks[incident_id]

    def expire(self, at: datetime) -> list[str]:
        """Close (and return, sorted) the incidents silent for more than ``silence_timeout_s`` at ``at``."""
        _check_aware(at, "at")
        gone: list[str] = []
        for incident_id, tracker in self._tracks.items():
            last = tracker.last_activity
            if last is not None and (at - last).total_seconds() > self.config.silence_timeout_s:
                gone.append(incident_id)
        gone.sort()
        for incident_id in gone:
            del self._tracks[incident_id]
        return gone

    def incident_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._tracks))

    def __contains__(self, incident_id: object) -> bool:
        return incident_id in self._tracks
