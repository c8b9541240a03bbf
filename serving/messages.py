"""Every REST body and websocket message of the server, as pydantic models (``extra="forbid"``).

The models are the single source of truth for the wire format: the server encodes through them,
:mod:`serving.asyncapi` generates the AsyncAPI document from them, and the tests validate what the
server really sent against that document.

Every server→client websocket message carries ``type``, ``seq`` (monotonic per connection stream:
per crew for a tablet, per connection for an operator console) and ``sent_at``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
SuggestionId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:~-]+$")]
"""A suggestion id: the planner's ``{incident}:{version}:{crew}`` (two identifiers and a number,
so up to ~140 characters), and an operator's modification appends ``~m{n}`` (``~`` is in no
identifier, so a modified id never collides with a planner's)."""
Longitude = Annotated[float, Field(ge=-180.0, le=180.0)]
Latitude = Annotated[float, Field(ge=-90.0, le=90.0)]
Heading = Annotated[float, Field(ge=0.0, le=360.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CrewStatusName(StrEnum):
    available = "available"
    assigned = "assigned"
    busy = "busy"
    out_of_service = "out_of_service"


class SuggestionState(StrEnum):
    """Where a suggestion stands. ``pending_approval``: waiting for an operator (approval mode)."""

    pending_approval = "pending_approval"
    sent = "sent"
    accepted = "accepted"
    declined = "declined"
    in_position = "in_position"
    retracted = "retracted"
    expired = "expired"
    superseded = "superseded"


class DispatchMode(StrEnum):
    """``direct``: suggestions reach crews at once; ``approval``: only once an operator approves."""

    direct = "direct"
    approval = "approval"


class ErrorCode(StrEnum):
    unknown_camera = "unknown_camera"
    unknown_incident = "unknown_incident"
    unknown_suggestion = "unknown_suggestion"
    unknown_crew = "unknown_crew"
    invalid_message = "invalid_message"
    forbidden = "forbidden"
    unauthenticated = "unauthenticated"
    incident_exists = "incident_exists"
    incident_closed = "incident_closed"
    suggestion_expired = "suggestion_expired"
    not_your_suggestion = "not_your_suggestion"
    too_large = "too_large"
    rate_limited = "rate_limited"
    unavailable = "unavailable"
    internal = "internal"


# ---------------------------------------------------------------------------------------------
# Payloads shared by REST and websockets


class SuggestionBody(_Model):
    """A suggested intercept point for one crew (from :class:`guidance.types.Suggestion`)."""

    suggestion_id: SuggestionId
    incident_id: Identifier
    crew_id: Identifier
    target_node: int
    lon: Longitude
    lat: Latitude
    street_names: list[str]
    route_lonlat: list[tuple[float, float]]
    turns: list[Any]
    crew_eta_s: float
    suspect_earliest_eta_s: float | None
    suspect_likely_eta_s: float | None
    margin_s: float | None
    probability_covered: float
    reason: str
    plan_version: int
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    state: SuggestionState = SuggestionState.sent


class CrewBody(_Model):
    crew_id: Identifier
    lon: Longitude
    lat: Latitude
    heading_deg: Heading | None = None
    status: CrewStatusName = CrewStatusName.available
    commune: str | None = None
    updated_at: AwareDatetime


# ---------------------------------------------------------------------------------------------
# REST bodies


class IncidentOpen(_Model):
    incident_id: Identifier
    commune: str | None = None
    lon: Longitude | None = None
    lat: Latitude | None = None
    at: AwareDatetime | None = None
    description: str | None = Field(default=None, max_length=500)


class IncidentShare(_Model):
    communes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)


class IncidentInfo(_Model):
    incident_id: str
    commune: str | None
    shared_with: list[str]
    opened_at: AwareDatetime
    closed_at: AwareDatetime | None = None
    n_sightings: int = 0
    plan_version: int = 0
    lon: float | None = None  # where it started (the origin given, else the first sighting's camera)
    lat: float | None = None


class SightingAck(_Model):
    source_event_id: str
    accepted: bool
    duplicate: bool = False
    late: bool = False
    flag: str | None = None


class SightingBatchAck(_Model):
    results: list[SightingAck]


class CrewReport(_Model):
    """A crew's position and/or status, by REST (``PUT /api/crews/{crew_id}``)."""

    lon: Longitude
    lat: Latitude
    heading_deg: Heading | None = None
    status: CrewStatusName | None = None
    commune: str | None = None
    at: AwareDatetime | None = None
    speed_factor: Annotated[float, Field(gt=0.0, le=3.0)] | None = None  # None: the server's default


class DispatchModeBody(_Model):
    mode: DispatchMode


class Health(_Model):
    status: Literal["ok", "degraded"]
    bus: str
    state: str
    worker_id: str
    clock: str
    now: AwareDatetime
    incidents: int
    connections: int
    graph_version: str | None = None  # CompiledGraph.version of the server's map
    cameras_version: str | None = None  # hash of the camera set (ids, positions, view edges)


class ErrorBody(_Model):
    code: ErrorCode
    message: str
    detail: list[dict[str, Any]] | None = None


class SimRunStart(_Model):
    """Start a simulated run of a scenario (trainers), paced at ``speed`` × the wall clock."""

    scenario: Identifier
    speed: float = Field(default=1.0, ge=1.0, le=60.0)
    seed: int | None = Field(default=None, ge=0, le=2**31)


class SimRunSpeed(_Model):
    speed: float = Field(ge=1.0, le=60.0)


class LegalHoldRequest(_Model):
    """Place an incident under legal hold for a judicial procedure."""

    procedure_reference: str = Field(min_length=1, max_length=128)


class LegalHoldInfo(_Model):
    incident_id: str
    procedure_reference: str
    placed_by: str
    placed_at: AwareDatetime
    commune: str | None = None


class SimTime(_Model):
    """Simulation clock control: set the server's time (simulation mode only)."""

    now: AwareDatetime


# ---------------------------------------------------------------------------------------------
# Websocket: server → client


class _ServerMessage(_Model):
    seq: int = Field(ge=0)
    sent_at: AwareDatetime


class SuggestionMsg(_ServerMessage):
    type: Literal["suggestion"] = "suggestion"
    expires_at: AwareDatetime
    suggestion: SuggestionBody
    sighting_id: str | None = Field(
        default=None,
        description="The source event id of the sighting whose plan issued this message "
        "(absent for a re-plan as time passes, a decline or an operator's change)",
    )
    sighting_ids: list[str] | None = Field(
        default=None,
        description="Every sighting this plan answers, ``sighting_id`` last: sightings of the "
        "incident that were queued together are tracked one by one and planned once "
        "(absent when ``sighting_id`` is)",
    )


class SuggestionUpdateMsg(_ServerMessage):
    """A new version of the crew's suggestion for the same incident; it replaces ``replaces``."""

    type: Literal["suggestion_update"] = "suggestion_update"
    expires_at: AwareDatetime
    replaces: str
    suggestion: SuggestionBody
    sighting_id: str | None = Field(
        default=None,
        description="The source event id of the sighting whose plan issued this message "
        "(absent for a re-plan as time passes, a decline or an operator's change)",
    )
    sighting_ids: list[str] | None = Field(
        default=None,
        description="Every sighting this plan answers, ``sighting_id`` last: sightings of the "
        "incident that were queued together are tracked one by one and planned once "
        "(absent when ``sighting_id`` is)",
    )


class SuggestionRetractedMsg(_ServerMessage):
    type: Literal["suggestion_retracted"] = "suggestion_retracted"
    suggestion_id: str
    incident_id: str
    crew_id: str
    reason: str


class SnapshotMsg(_ServerMessage):
    """The current picture, sent on connect and when a resume gap is too old.

    For a crew: its current (unexpired) suggestions. For an operator: incidents, crews and
    current suggestions in its communes."""

    type: Literal["snapshot"] = "snapshot"
    reason: Literal["connect", "gap", "resume_ok"]
    suggestions: list[SuggestionBody]
    incidents: list[IncidentInfo] = Field(default_factory=list)
    crews: list[CrewBody] = Field(default_factory=list)


class ErrorMsg(_ServerMessage):
    """Not part of any stream: no ``seq`` (a client dropping already-seen seqs loses nothing)."""

    seq: int | None = Field(default=None, ge=0)  # type: ignore[assignment]
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    ref: str | None = None


class SightingEventMsg(_ServerMessage):
    type: Literal["sighting"] = "sighting"
    incident_id: str
    camera_id: str
    observed_at: AwareDatetime
    source_kind: str
    source_event_id: str
    lon: float
    lat: float
    late: bool = False
    flag: str | None = None


class TrackMsg(_ServerMessage):
    type: Literal["track"] = "track"
    incident_id: str
    at: AwareDatetime
    lon: float
    lat: float
    sigma_along_m: float
    speed_mps: float
    heading_deg: float | None
    since_last_sighting_s: float
    last_camera_id: str | None
    n_sightings: int


class PredictionMsg(_ServerMessage):
    type: Literal["prediction"] = "prediction"
    incident_id: str
    at: AwareDatetime
    geojson: dict[str, Any]


class CrewTrackMsg(TrackMsg):
    """A ``track`` pushed to a crew holding a suggestion for the incident: the latest state, not
    part of the crew stream (no ``seq``; after a reconnect the tablet reads the incident's state)."""

    seq: int | None = Field(default=None, ge=0)  # type: ignore[assignment]


class CrewPredictionMsg(PredictionMsg):
    """A ``prediction`` pushed to a crew holding a suggestion for the incident (no ``seq``). Its
    ``geojson`` is compact: the likely ``route`` lines, as the consoles get them, and the
    ``crossing`` points passed with probability at least 0.1 (at most 100, the most likely;
    properties ``kind``, ``probability``, ``likely_eta_s``); not the ``position`` lines nor the
    unlikely crossings, which the tablet's map does not draw."""

    seq: int | None = Field(default=None, ge=0)  # type: ignore[assignment]


class CrewMsg(_ServerMessage):
    type: Literal["crew"] = "crew"
    crew: CrewBody


class SuggestionOpMsg(_ServerMessage):
    """A suggestion as the operator sees it (any state, including pending approval)."""

    type: Literal["suggestion"] = "suggestion"
    suggestion: SuggestionBody


class PlanMsg(_ServerMessage):
    type: Literal["plan"] = "plan"
    incident_id: str
    version: int
    at: AwareDatetime
    coverage_probability: float
    suggestion_ids: list[str]
    suggestions: list[SuggestionBody] = Field(
        default_factory=list,
        description="The plan's suggestions with their states (pending approval or sent)",
    )
    ended: list[str] = Field(
        default_factory=list,
        description="Suggestions of the incident no longer in force (superseded or retracted)",
    )
    holds: list[str]
    dispatch_mode: DispatchMode
    detail: bool = Field(
        default=True,
        description="false: the suggestions come without their route_lonlat and turns (empty), "
        "for a console not watching the incident (see the watch message); "
        "GET /api/incidents/{id}/state has them in full",
    )


class IncidentMsg(_ServerMessage):
    type: Literal["incident"] = "incident"
    event: Literal["opened", "closed", "shared"]
    incident: IncidentInfo


class DecisionMsg(_ServerMessage):
    type: Literal["decision"] = "decision"
    actor: str
    role: str
    decision: Literal["accept", "decline", "in_position", "contact", "approve", "modify", "retract"]
    suggestion_id: str | None
    incident_id: str | None
    crew_id: str | None
    reason: str | None = None


class HeartbeatMsg(_ServerMessage):
    """Every ``heartbeat_s`` (10 s) on every websocket, outside the stream (no ``seq``): a client
    that hears nothing for 25 s can treat the link as dead."""

    seq: int | None = Field(default=None, ge=0)  # type: ignore[assignment]
    type: Literal["heartbeat"] = "heartbeat"


CrewServerMessage = Annotated[
    SuggestionMsg
    | SuggestionUpdateMsg
    | SuggestionRetractedMsg
    | SnapshotMsg
    | ErrorMsg
    | HeartbeatMsg
    | CrewTrackMsg
    | CrewPredictionMsg,
    Field(discriminator="type"),
]
OperatorServerMessage = Annotated[
    SightingEventMsg
    | TrackMsg
    | PredictionMsg
    | CrewMsg
    | SuggestionOpMsg
    | PlanMsg
    | IncidentMsg
    | DecisionMsg
    | SnapshotMsg
    | ErrorMsg
    | HeartbeatMsg,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------------------------------------
# Websocket: client → server


class AuthMsg(_Model):
    """First message when the token was not given as ``?token=``."""

    type: Literal["auth"]
    token: str = Field(min_length=1, max_length=4096)


class ResumeMsg(_Model):
    type: Literal["resume"]
    last_seq: int = Field(ge=0)


class PositionMsg(_Model):
    type: Literal["position"]
    lon: Longitude
    lat: Latitude
    heading_deg: Heading | None = None
    at: AwareDatetime | None = None
    speed_factor: Annotated[float, Field(gt=0.0, le=3.0)] | None = None


class StatusMsg(_Model):
    type: Literal["status"]
    status: CrewStatusName
    speed_factor: Annotated[float, Field(gt=0.0, le=3.0)] | None = None


class AcceptMsg(_Model):
    type: Literal["accept"]
    suggestion_id: SuggestionId


class DeclineMsg(_Model):
    type: Literal["decline"]
    suggestion_id: SuggestionId
    reason: str = Field(min_length=1, max_length=500)


class InPositionMsg(_Model):
    type: Literal["in_position"]
    suggestion_id: SuggestionId


class ContactMsg(_Model):
    type: Literal["contact"]
    suggestion_id: SuggestionId | None = None
    incident_id: Identifier | None = None
    lon: Longitude | None = None
    lat: Latitude | None = None


class ApproveMsg(_Model):
    type: Literal["approve"]
    suggestion_id: SuggestionId


class ModifyMsg(_Model):
    """Change a suggestion's target point and/or crew before (or after) it goes out."""

    type: Literal["modify"]
    suggestion_id: SuggestionId
    lon: Longitude | None = None
    lat: Latitude | None = None
    crew_id: Identifier | None = None


class RetractMsg(_Model):
    type: Literal["retract"]
    suggestion_id: SuggestionId
    reason: str = Field(default="retracted by operator", min_length=1, max_length=500)


class OperatorSightingMsg(_Model):
    """An operator recording a handoff from the console (same fields as the REST sighting)."""

    type: Literal["sighting"]
    incident_id: Identifier
    camera_id: Identifier
    observed_at: AwareDatetime
    source_event_id: Identifier
    heading_deg: Heading | None = None
    speed_kmh: Annotated[float, Field(ge=0.0, le=250.0)] | None = None
    confidence: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    vehicle_description: Annotated[str, Field(max_length=200)] | None = None


class WatchMsg(_Model):
    """The incidents whose ``prediction`` messages this console wants (its map draws the
    selected incident's): ``null`` for every incident (the default of a new connection), ``[]``
    for none. Every other message still comes for every incident of the operator's communes;
    the ``plan`` of an incident not watched comes without its suggestions' routes and turns
    (``detail: false``)."""

    type: Literal["watch"]
    incident_ids: Annotated[list[Identifier], Field(max_length=100)] | None


CrewClientMessage = Annotated[
    AuthMsg | ResumeMsg | PositionMsg | StatusMsg | AcceptMsg | DeclineMsg | InPositionMsg | ContactMsg,
    Field(discriminator="type"),
]
OperatorClientMessage = Annotated[
    AuthMsg | ResumeMsg | ApproveMsg | ModifyMsg | RetractMsg | OperatorSightingMsg | WatchMsg,
    Field(discriminator="type"),
]

crew_client_adapter: TypeAdapter[CrewClientMessage] = TypeAdapter(CrewClientMessage)
operator_client_adapter: TypeAdapter[OperatorClientMessage] = TypeAdapter(OperatorClientMessage)
crew_server_adapter: TypeAdapter[CrewServerMessage] = TypeAdapter(CrewServerMessage)
operator_server_adapter: TypeAdapter[OperatorServerMessage] = TypeAdapter(OperatorServerMessage)


def stamp(message: dict[str, Any], *, seq: int, sent_at: datetime) -> dict[str, Any]:
    """``message`` (a server message without ``seq``/``sent_at``) with both filled in."""
    out = dict(message)
    out["seq"] = seq
    out["sent_at"] = sent_at.isoformat()
    return out
