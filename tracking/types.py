"""Data types of tracking (apart from the algorithms): sightings in, beliefs out.

A :class:`Sighting` is what an operator (or a VMS rule, or the simulator) reports: *this*
camera saw the suspect vehicle at *that* time. The model rejects unknown fields, so nothing
but the listed, non-biometric facts can enter the tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from map_data.types import LonLat

#: Identifiers (incident, camera, source event): 1–64 characters of ``[A-Za-z0-9_.:-]``.
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class SourceKind(StrEnum):
    """Who reported a sighting."""

    operator = "operator"
    vms_rule = "vms_rule"
    simulation = "simulation"


class Sighting(BaseModel):
    """One camera report of the suspect vehicle.

    ``source_event_id`` is the idempotency key: the same id twice changes nothing.
    ``heading_deg`` is the direction the vehicle was going (0 = north, clockwise), when the
    operator could tell; ``speed_kmh`` an estimate of its speed; ``confidence`` how sure the
    reporter is (sightings below :attr:`tracking.tracker.TrackerConfig.min_confidence` are kept
    but flagged and not conditioned on).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    incident_id: Identifier
    camera_id: Identifier
    observed_at: AwareDatetime
    source_kind: SourceKind = SourceKind.operator
    source_event_id: Identifier
    heading_deg: Annotated[float, Field(ge=0.0, le=360.0)] | None = None
    speed_kmh: Annotated[float, Field(ge=0.0, le=250.0)] | None = None
    confidence: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    vehicle_description: Annotated[str, Field(max_length=200)] | None = None


@dataclass(frozen=True, slots=True)
class SightingFlag:
    """Why a sighting was kept but not conditioned on.

    ``reason`` is one of ``unreachable_in_time``, ``before_incident_open``, ``low_confidence``;
    ``detail`` says it in words with the numbers (e.g. the required speed against the maximum).
    """

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class TrackUpdate:
    """The outcome of giving a sighting to a tracker.

    ``accepted`` is true when the tracker conditioned on it; ``duplicate`` when its
    ``source_event_id`` was already known (nothing changed); ``flag`` says why it was not
    accepted. ``replayed`` counts the sightings recomputed (more than one when it arrived late).
    """

    incident_id: str
    source_event_id: str
    accepted: bool
    duplicate: bool
    flag: SightingFlag | None = None
    replayed: int = 0


@dataclass(frozen=True, slots=True)
class WeightedPosition:
    """A place the suspect may be: ``offset_m`` along directed ``edge``, with its probability
    and the speed estimate of that hypothesis."""

    edge: int
    offset_m: float
    probability: float
    speed_mps: float


@dataclass(frozen=True, slots=True)
class RouteProbability:
    """A route since the last sighting (edges in driving order, starting at the sighted edge)."""

    edges: tuple[int, ...]
    probability: float


@dataclass(frozen=True, slots=True)
class Belief:
    """Where the suspect is at ``at``, as far as the sightings up to ``at`` tell.

    ``positions`` probabilities sum to 1. ``sigma_along_m`` is the 1-sigma spread of the
    distance driven along the roads since the last sighting (within- and between-route
    variance of the mixture). ``speed_mps``/``speed_sigma_mps`` are the mixture mean and
    standard deviation of the speed; ``heading_deg`` the probability-weighted circular mean
    of the travel direction (0 = north, clockwise). ``last_camera_id``/``last_seen_at`` are
    ``None`` before the first accepted sighting (the belief then starts at the incident's
    origin and ``since_last_sighting_s`` counts from the opening of the incident).
    ``origin_node`` is the incident's crossing (the end of the origin's edge nearest to it) or,
    when the incident was opened without a position, the tail node of the first stretch seen by
    the first accepted sighting's camera. ``n_sightings`` counts the accepted sightings up to ``at``.
    """

    incident_id: str
    at: datetime
    positions: tuple[WeightedPosition, ...]
    mean_lonlat: LonLat
    sigma_along_m: float
    speed_mps: float
    speed_sigma_mps: float
    heading_deg: float
    since_last_sighting_s: float
    top_routes: tuple[RouteProbability, ...]
    last_camera_id: str | None
    last_seen_at: datetime | None
    origin_node: int
    n_sightings: int
