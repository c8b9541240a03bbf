"""Data types of guidance: crews, escape predictions, no-go areas, suggestions and plans.

Values are frozen dataclasses; those holding numpy arrays compare by identity (``eq=False``).
Times are seconds from the prediction's or plan's ``at`` (``eta_s``), datetimes are aware.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo

import numpy as np

from map_data.types import BoolArray, EdgePosition, FloatArray, IntArray


class GuidanceError(ValueError):
    """An input to guidance is invalid; the message names it."""


# --------------------------------------------------------------------------------------------
# What guidance reads from tracking (structural, so that tracking.types.Belief satisfies it).
# --------------------------------------------------------------------------------------------


class PositionLike(Protocol):
    """A weighted hypothesis of where the suspect is (``tracking.types.WeightedPosition``)."""

    @property
    def edge(self) -> int: ...
    @property
    def offset_m(self) -> float: ...
    @property
    def probability(self) -> float: ...
    @property
    def speed_mps(self) -> float: ...


class BeliefLike(Protocol):
    """The part of ``tracking.types.Belief`` that escape prediction reads."""

    @property
    def incident_id(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def positions(self) -> Sequence[PositionLike]: ...
    @property
    def origin_node(self) -> int: ...
    @property
    def n_sightings(self) -> int: ...
    @property
    def speed_mps(self) -> float: ...


# --------------------------------------------------------------------------------------------
# Crews
# --------------------------------------------------------------------------------------------


class CrewStatus(StrEnum):
    available = "available"
    assigned = "assigned"
    busy = "busy"
    out_of_service = "out_of_service"


@dataclass(frozen=True, slots=True)
class Crew:
    """A police crew: where it is (snapped to the graph), its status and its commune.

    ``speed_factor`` scales the legal speed (a crew under blue lights drives faster).
    """

    crew_id: str
    position: EdgePosition
    heading_deg: float | None = None
    status: CrewStatus = CrewStatus.available
    commune: str | None = None
    speed_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.crew_id:
            raise GuidanceError("crew_id must not be empty")
        if not self.speed_factor > 0:
            raise GuidanceError(f"crew {self.crew_id}: speed_factor must be > 0, got {self.speed_factor}")
        if self.position.offset_m < 0:
            raise GuidanceError(f"crew {self.crew_id}: offset_m must be >= 0, got {self.position.offset_m}")


# --------------------------------------------------------------------------------------------
# Escape prediction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EscapeRoute:
    """One of the k most likely escape routes: nodes, the edges joining them, arrival times.

    ``probability`` is the share of sampled routes heading to the same destination;
    ``eta_s[i]`` is the suspect's arrival at ``nodes[i]``.
    """

    nodes: tuple[int, ...]
    edges: tuple[int, ...]
    probability: float
    eta_s: tuple[float, ...]
    destination: int
    destination_kind: str


@dataclass(frozen=True, eq=False)
class RouteSamples:
    """The K sampled escape routes behind a prediction (rows padded with -1 / inf).

    ``nodes[k, s]`` is the s-th crossing reached by route k at ``times_s[k, s]`` through edge
    ``edges[k, s]`` (``edges[k, 0]`` is the edge the suspect is on). ``left[k]`` is true when
    route k left the map by an exit before the horizon.
    """

    nodes: IntArray
    edges: IntArray
    times_s: FloatArray
    lengths: IntArray
    weights: FloatArray
    destinations: IntArray
    models: IntArray
    left: BoolArray

    @property
    def n_routes(self) -> int:
        return int(self.nodes.shape[0])


@dataclass(frozen=True, eq=False)
class HorizonDistribution:
    """Where the suspect is ``horizon_s`` seconds after the prediction: a sparse probability over
    directed edges, plus the probability that it has left the map by then."""

    horizon_s: float
    edges: IntArray
    probabilities: FloatArray
    left_probability: float

    def node_probabilities(self, edge_v: IntArray) -> dict[int, float]:
        """The same distribution over crossings (each edge counted at its head node)."""
        out: dict[int, float] = {}
        for e, p in zip(self.edges.tolist(), self.probabilities.tolist(), strict=True):
            v = int(edge_v[e])
            out[v] = out.get(v, 0.0) + float(p)
        return out

    def credible_edges(self, mass: float = 0.9) -> tuple[frozenset[int], bool]:
        """Smallest set of edges holding at least ``mass`` (with "left the map" as one more
        element): returns the edges and whether "left" belongs to the set."""
        probs = np.concatenate([self.probabilities, [self.left_probability]])
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        n_take = int(np.searchsorted(cum, mass - 1e-12) + 1)
        chosen = order[: min(n_take, len(order))]
        n_edges = len(self.edges)
        left = bool(np.any(chosen == n_edges)) and self.left_probability > 0
        return frozenset(int(self.edges[i]) for i in chosen if i < n_edges), left


@dataclass(frozen=True, eq=False)
class EscapePrediction:
    """Where the suspect can be over the next minutes.

    Per-node arrays have one entry per crossing of the graph: ``pass_probability`` (share of
    sampled routes passing the node), ``suspect_earliest_eta_s`` (earliest sampled arrival,
    never below the physical bound), ``suspect_likely_eta_s`` (weighted median arrival of
    the routes that pass), ``suspect_bound_eta_s`` (fastest possible arrival at the top speed
    factor); ``inf`` where no sampled route arrives within the horizon.
    """

    incident_id: str
    at: datetime
    horizons_s: FloatArray
    pass_probability: FloatArray
    suspect_earliest_eta_s: FloatArray
    suspect_likely_eta_s: FloatArray
    suspect_bound_eta_s: FloatArray
    routes: tuple[EscapeRoute, ...]
    samples: RouteSamples
    destination_weights: Mapping[str, float]
    model_weights: Mapping[str, float]
    model_version: str
    graph_version: str
    seed: int
    horizon_s: float
    #: ``(route, node, time)`` of each sampled route's first arrival at each node (cache).
    first_arrivals: tuple[IntArray, IntArray, FloatArray] | None = None
    #: Relative speed uncertainty used to spread each route's position in time.
    position_spread: float = 0.0
    _cache: dict[float, HorizonDistribution] = field(default_factory=dict, repr=False)

    def horizon(self, horizon_s: float) -> HorizonDistribution:
        """Where the suspect is at the step nearest ``horizon_s`` (computed on demand, cached)."""
        from guidance.positions import position_distribution

        h = float(self.horizons_s[int(np.argmin(np.abs(self.horizons_s - horizon_s)))])
        got = self._cache.get(h)
        if got is None:
            got = position_distribution(self.samples, h, spread=self.position_spread)
            self._cache[h] = got
        return got

    @property
    def horizons(self) -> tuple[HorizonDistribution, ...]:
        """The distribution at every step of ``horizons_s``."""
        return tuple(self.horizon(float(h)) for h in self.horizons_s)


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoGoArea:
    """An area crews must not be sent into (pedestrian zone, school at given hours).

    ``polygon_wkt`` is in lon/lat. With ``active_from``/``active_to`` (local times of day in
    ``timezone``; the window may wrap past midnight) the area applies only then.
    """

    name: str
    polygon_wkt: str
    active_from: time | None = None
    active_to: time | None = None
    timezone: str = "Europe/Paris"

    def is_active(self, at: datetime) -> bool:
        """Whether the area applies at ``at`` (an aware datetime)."""
        if at.tzinfo is None:
            raise GuidanceError(f"no-go area {self.name!r}: 'at' must be timezone-aware")
        if self.active_from is None or self.active_to is None:
            return True
        local = at.astimezone(ZoneInfo(self.timezone)).time().replace(tzinfo=None)
        if self.active_from <= self.active_to:
            return self.active_from <= local < self.active_to
        return local >= self.active_from or local < self.active_to


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """Parameters of interception planning (all recorded in each plan for replay).

    A crossing is an interception point for a crew when
    ``crew ETA + safety_margin_s <= suspect earliest ETA`` there. Previous targets are kept
    unless the fresh plan's coverage probability exceeds that of the plan keeping them by more
    than ``hysteresis`` (absolute: 0.15 = fifteen points of probability); a kept target only
    needs ``crew ETA + keep_margin_s <= suspect earliest ETA`` (the crew is on its way or
    already waiting there, so it is not pulled away as the suspect comes close). Crews farther
    than ``max_crew_travel_s`` from a point are not sent there.

    ``arrival_levels``: a crew that cannot beat the earliest of the sampled routes through a
    crossing can still beat the later ones. Each crossing is offered at these quantiles of the
    routes' arrival times there (0 = the earliest ETA): the point "crossing at level q" covers
    the routes that reach the crossing at or after its q-quantile, and a crew may take it when
    ``crew ETA + safety_margin_s`` is at most that time. The objective is thus the probability
    that the suspect passes a manned crossing at least the margin after the crew got there.

    ``point_reliability``: the chance that one manned crossing stops a suspect whose route
    passes it in time (prediction and timing errors). Below 1, crews that plain coverage would
    leave idle back up the likeliest routes with a second manned point (each route counts
    ``1 - (1 - reliability)^n`` for ``n`` manned points); the plan's ``coverage_probability``
    stays the share of routes passing at least one manned point. 1 is plain max-coverage.

    ``crew_shortlist``: with more eligible crews than this (and than ``max_crews_per_incident``),
    the plan only considers a shortlist of them, made in rounds: each candidate crossing, the
    likeliest first, takes the fastest crew not taken yet that can be in time there, until the
    shortlist is full or ``max_crews_per_incident`` rounds are done; every crew of the previous
    plan is in. The others hold. A crew left out after all the rounds is never needed for the
    best coverage (each crossing it could reach has that many shortlisted crews at least as
    fast); a shortlist full before that is an approximation (``bench/guidance.py`` compares it
    with the plan over every crew). 0 = every eligible crew.
    """

    safety_margin_s: float = 20.0
    hysteresis: float = 0.15
    max_crews_per_incident: int = 16
    suggestion_ttl_s: float = 120.0
    max_crew_travel_s: float = 300.0
    keep_margin_s: float = 0.0
    max_wait_s: float = 240.0
    max_candidates: int = 1500
    min_gain: float = 0.005
    expiry_slack_s: float = 30.0
    arrival_levels: tuple[float, ...] = (0.0, 0.25, 0.5)
    point_reliability: float = 1.0
    crew_shortlist: int = 48

    def __post_init__(self) -> None:
        for name in (
            "safety_margin_s",
            "keep_margin_s",
            "hysteresis",
            "suggestion_ttl_s",
            "max_wait_s",
            "min_gain",
        ):
            if getattr(self, name) < 0:
                raise GuidanceError(f"PlannerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_crews_per_incident < 0:
            raise GuidanceError(
                f"PlannerConfig.max_crews_per_incident must be >= 0, got {self.max_crews_per_incident}"
            )
        if not self.max_crew_travel_s > 0:
            raise GuidanceError(f"PlannerConfig.max_crew_travel_s must be > 0, got {self.max_crew_travel_s}")
        if self.crew_shortlist < 0:
            raise GuidanceError(f"PlannerConfig.crew_shortlist must be >= 0, got {self.crew_shortlist}")
        if self.max_candidates < 1:
            raise GuidanceError(f"PlannerConfig.max_candidates must be >= 1, got {self.max_candidates}")
        levels = self.arrival_levels
        if (
            not levels
            or levels[0] != 0.0
            or any(not 0 <= q < 1 for q in levels)
            or list(levels) != sorted(set(levels))
        ):
            raise GuidanceError(
                f"PlannerConfig.arrival_levels must be increasing in [0, 1) and start at 0, got {levels}"
            )
        if not 0 < self.point_reliability <= 1:
            raise GuidanceError(
                f"PlannerConfig.point_reliability must be in (0, 1], got {self.point_reliability}"
            )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "safety_margin_s": self.safety_margin_s,
            "hysteresis": self.hysteresis,
            "max_crews_per_incident": self.max_crews_per_incident,
            "suggestion_ttl_s": self.suggestion_ttl_s,
            "max_crew_travel_s": self.max_crew_travel_s,
            "keep_margin_s": self.keep_margin_s,
            "max_wait_s": self.max_wait_s,
            "max_candidates": self.max_candidates,
            "min_gain": self.min_gain,
            "expiry_slack_s": self.expiry_slack_s,
            "crew_shortlist": self.crew_shortlist,
        }


@dataclass(frozen=True, slots=True)
class Suggestion:
    """Where one crew should go, why, and until when."""

    suggestion_id: str
    incident_id: str
    crew_id: str
    target_node: int
    lon: float
    lat: float
    street_names: tuple[str, ...]
    route_lonlat: tuple[tuple[float, float], ...]
    turns: tuple[str, ...]
    crew_eta_s: float
    suspect_earliest_eta_s: float
    suspect_likely_eta_s: float
    margin_s: float
    probability_covered: float
    reason: str
    plan_version: int
    issued_at: datetime
    expires_at: datetime
    kept: bool = False


@dataclass(frozen=True)
class Plan:
    """One version of the interception plan of an incident."""

    incident_id: str
    version: int
    at: datetime
    suggestions: tuple[Suggestion, ...]
    holds: tuple[str, ...]
    coverage_probability: float
    graph_version: str
    model_version: str
    parameters: Mapping[str, object] = field(default_factory=dict)

    def target_of(self, crew_id: str) -> int | None:
        """The target crossing of ``crew_id`` in this plan, or ``None`` (hold / not planned)."""
        for s in self.suggestions:
            if s.crew_id == crew_id:
                return s.target_node
        return None

    def expires_at(self) -> datetime:
        """When the plan's earliest suggestion expires (``at`` when there is none)."""
        return min((s.expires_at for s in self.suggestions), default=self.at + timedelta(seconds=0))
