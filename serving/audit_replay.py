"""Replay of an incident's suggestions from its audit records, and the payloads that make it possible.

Every record replay needs carries the incident's id, so a legal hold on the incident keeps all of
them through purges. The server writes (helpers below build the payloads):

* ``incident_opened``: :func:`incident_opened_payload` (time, commune, origin lon/lat);
* ``share``: ``{"communes": [...]}``;
* ``sighting_received``: :func:`sighting_payload` (the :class:`tracking.types.Sighting` as JSON);
* ``plan_computed``: :func:`plan_payload`, once per *new* plan the coordinator returns for the
  incident (``ingest``, ``set_crews``, ``replan``): the plan's time, version, graph and model
  versions, parameters, suggestions and holds, *and the inputs of the planner*: the crews it was
  given (positions on the graph, statuses, communes), the no-go areas, horizon and step.

:func:`replay_incident` rebuilds the incident in a fresh :class:`guidance.coordinator.Coordinator`
on the same city (the graph version must match), feeds the sightings to its tracker in audit
order, and at every ``plan_computed`` record recomputes prediction and plan from the recorded
inputs (the previous plan being the replayed one, as live), then compares them field by field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import TYPE_CHECKING, Any

from serving.audit import AuditAction, AuditRecord, AuditSink

if TYPE_CHECKING:
    from guidance.coordinator import Coordinator
    from guidance.types import Crew, NoGoArea, Plan
    from map_data.network_types import City
    from map_data.types import LonLat
    from tracking.types import Sighting

__all__ = [
    "CORE_OPENED",
    "CORE_SHARED",
    "CORE_SIGHTING",
    "PLAN_COMPUTED",
    "PlanMismatch",
    "RecordingCoordinator",
    "ReplayError",
    "ReplayReport",
    "crew_payload",
    "incident_opened_payload",
    "plan_payload",
    "replay_incident",
    "sighting_payload",
]

PLAN_COMPUTED = "plan_computed"
CORE_OPENED = "core_opened"
CORE_SHARED = "core_shared"
CORE_SIGHTING = "core_sighting"
CORE_CLOSED = "core_closed"
_PLANNER_KEYS = (
    "safety_margin_s",
    "hysteresis",
    "max_crews_per_incident",
    "suggestion_ttl_s",
    "max_crew_travel_s",
    "max_wait_s",
    "max_candidates",
    "min_gain",
    "expiry_slack_s",
    "crew_shortlist",
)


class ReplayError(ValueError):
    """The records cannot be replayed (missing opening, another map, unreadable payload)."""


# ---------------------------------------------------------------------------------------------
# Payloads (what the server records)


def incident_opened_payload(
    at: datetime, commune: str | None, origin_lonlat: LonLat | None
) -> dict[str, Any]:
    return {
        "at": at.isoformat(),
        "commune": commune,
        "origin_lonlat": None if origin_lonlat is None else [origin_lonlat.lon, origin_lonlat.lat],
    }


def sighting_payload(sighting: Sighting) -> dict[str, Any]:
    return sighting.model_dump(mode="json")


def crew_payload(crew: Crew) -> dict[str, Any]:
    return {
        "crew_id": crew.crew_id,
        "edge": int(crew.position.edge),
        "offset_m": float(crew.position.offset_m),
        "heading_deg": crew.heading_deg,
        "status": crew.status.value,
        "commune": crew.commune,
        "speed_factor": float(crew.speed_factor),
    }


def _no_go_payload(area: NoGoArea) -> dict[str, Any]:
    return {
        "name": area.name,
        "polygon_wkt": area.polygon_wkt,
        "active_from": None if area.active_from is None else area.active_from.isoformat(),
        "active_to": None if area.active_to is None else area.active_to.isoformat(),
        "timezone": area.timezone,
    }


def _jsonable(value: Any) -> Any:
    """Plan parameters as JSON (non-finite floats become strings, tuples lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _suggestion_summary(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "suggestion_id": s.suggestion_id,
            "crew_id": s.crew_id,
            "target_node": int(s.target_node),
            "crew_eta_s": _jsonable(float(s.crew_eta_s)),
            "margin_s": _jsonable(float(s.margin_s)),
            "probability_covered": _jsonable(float(s.probability_covered)),
            "expires_at": s.expires_at.isoformat(),
        }
        for s in plan.suggestions
    ]


def plan_payload(
    plan: Plan,
    crews: Iterable[Crew],
    *,
    no_go: Sequence[NoGoArea] = (),
    horizon_s: float = 600.0,
    step_s: float = 10.0,
) -> dict[str, Any]:
    """The ``plan_computed`` payload: the plan and every input the planner was given.

    ``crews``: the crews the coordinator holds (``Coordinator.crews()``); those busy on another
    incident's plan are named by the plan's ``parameters["crews_considered"]`` when guidance
    records it, else the server should pass only the crews offered to this incident.
    """
    return {
        "at": plan.at.isoformat(),
        "version": plan.version,
        "graph_version": plan.graph_version,
        "model_version": plan.model_version,
        "parameters": _jsonable(dict(plan.parameters)),
        "coverage_probability": _jsonable(float(plan.coverage_probability)),
        "holds": list(plan.holds),
        "suggestions": _suggestion_summary(plan),
        "crews": [crew_payload(c) for c in crews],
        "no_go": [_no_go_payload(a) for a in no_go],
        "horizon_s": horizon_s,
        "step_s": step_s,
    }


# ---------------------------------------------------------------------------------------------
# Recording at the core's boundary


class RecordingCoordinator:
    """A :class:`guidance.coordinator.Coordinator` that audits exactly what goes in and comes out.

    The server wraps its coordinator in it (``RecordingCoordinator(Coordinator(city), audit)``)
    and calls it as before. Each call is recorded in the order the core sees it (after the bus),
    with the incident's id so legal holds keep everything replay needs:

    * ``core_opened`` (time, commune, origin), ``core_shared`` (communes), ``core_sighting``
      (the Sighting), ``core_closed``;
    * ``plan_computed`` for every *new* plan returned (by ``ingest``, ``set_crews``, ``replan``),
      with the crews the planner was given (the coordinator's crews in ``set_crews`` order,
      without those busy in another incident's current plan), the no-go areas, horizon and step.

    A worker that restarts re-opens and re-feeds its incidents: replay starts afresh at each
    ``core_opened``, as the live coordinator did.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        audit: AuditSink,
        *,
        clock: Callable[[], datetime],
        actor: str = "cordon",
    ) -> None:
        self.inner = coordinator
        self.audit = audit
        self.clock = clock
        self.actor = actor
        self._commune: dict[str, str | None] = {}
        self._plans: dict[str, Plan] = {}
        self._crews: list[Crew] = []
        self._no_go: tuple[NoGoArea, ...] = ()

    def __getattr__(self, name: str) -> Any:  # state(), crews(), geojson views...
        return getattr(self.inner, name)

    def _record(self, action: str, incident_id: str, at: datetime, payload: Mapping[str, Any]) -> None:
        self.audit.append(
            self.actor,
            "system",
            action,
            at=at,
            incident_id=incident_id,
            commune=self._commune.get(incident_id),
            payload=dict(payload),
        )

    def _plan(self, plan: Plan | None) -> None:
        if plan is None or self._plans.get(plan.incident_id) is plan:
            return
        self._plans[plan.incident_id] = plan
        busy = {
            s.crew_id for other, p in self._plans.items() if other != plan.incident_id for s in p.suggestions
        }
        crews = [c for c in self._crews if c.crew_id not in busy]
        self._record(
            PLAN_COMPUTED,
            plan.incident_id,
            plan.at,
            plan_payload(
                plan, crews, no_go=self._no_go, horizon_s=self.inner.horizon_s, step_s=self.inner.step_s
            ),
        )

    def open_incident(
        self,
        incident_id: str,
        *,
        at: datetime,
        commune: str | None = None,
        origin_lonlat: LonLat | None = None,
    ) -> Any:
        state = self.inner.open_incident(incident_id, at=at, commune=commune, origin_lonlat=origin_lonlat)
        self._commune[incident_id] = commune
        self._plans.pop(incident_id, None)
        self._record(CORE_OPENED, incident_id, at, incident_opened_payload(at, commune, origin_lonlat))
        return state

    def share_incident(self, incident_id: str, communes: Iterable[str]) -> frozenset[str]:
        names = list(communes)
        shared = self.inner.share_incident(incident_id, names)
        self._record(CORE_SHARED, incident_id, self.clock(), {"communes": sorted(names)})
        return shared

    def ingest(self, sighting: Sighting, **kwargs: Any) -> Any:
        self._record(CORE_SIGHTING, sighting.incident_id, sighting.observed_at, sighting_payload(sighting))
        outcome = self.inner.ingest(sighting, **kwargs)  # e.g. replan=False: no plan to record
        self._plan(outcome.plan)
        return outcome

    def set_crews(self, crews: Sequence[Crew], at: datetime, *, replan: bool = True) -> dict[str, Plan]:
        plans = self.inner.set_crews(crews, at, replan=replan)
        if {c.crew_id: c for c in crews} != {c.crew_id: c for c in self._crews}:
            self._crews = list(crews)  # the coordinator keeps its old order for an equal set
        # the coordinator re-plans incidents in id order, each seeing the plans made before it
        for incident_id in sorted(plans):
            self._plan(plans[incident_id])
        return plans

    def replan(self, incident_id: str, at: datetime) -> Plan:
        plan = self.inner.replan(incident_id, at)
        self._plan(plan)
        return plan

    def decline(self, incident_id: str, crew_id: str, *, at: datetime, **kwargs: Any) -> Plan | None:
        # The declined (crew, node) pairs travel in every later plan's parameters["declined"].
        plan = self.inner.decline(incident_id, crew_id, at=at, **kwargs)
        self._plan(plan)
        return plan

    def set_no_go(self, areas: Sequence[NoGoArea]) -> None:
        self.inner.set_no_go(areas)
        self._no_go = tuple(areas)

    def close_incident(self, incident_id: str) -> None:
        self.inner.close_incident(incident_id)
        self._plans.pop(incident_id, None)
        self._record(CORE_CLOSED, incident_id, self.clock(), {})


# ---------------------------------------------------------------------------------------------
# Replay


@dataclass(frozen=True, slots=True)
class PlanMismatch:
    seq: int
    version: int
    field: str
    recorded: Any
    replayed: Any


@dataclass(frozen=True, slots=True)
class ReplayReport:
    incident_id: str
    plans_checked: int
    sightings: int
    mismatches: tuple[PlanMismatch, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.plans_checked > 0 and not self.mismatches


def _crews_from(payload: Sequence[Mapping[str, Any]]) -> list[Crew]:
    from guidance.types import Crew, CrewStatus
    from map_data.types import EdgePosition

    return [
        Crew(
            crew_id=str(c["crew_id"]),
            position=EdgePosition(int(c["edge"]), float(c["offset_m"])),
            heading_deg=None if c.get("heading_deg") is None else float(c["heading_deg"]),
            status=CrewStatus(c.get("status", "available")),
            commune=c.get("commune"),
            speed_factor=float(c.get("speed_factor", 1.0)),
        )
        for c in payload
    ]


def _no_go_from(payload: Sequence[Mapping[str, Any]]) -> list[NoGoArea]:
    from guidance.types import NoGoArea

    def clock(text: str | None) -> time | None:
        return None if text is None else time.fromisoformat(text)

    return [
        NoGoArea(
            name=str(a["name"]),
            polygon_wkt=str(a["polygon_wkt"]),
            active_from=clock(a.get("active_from")),
            active_to=clock(a.get("active_to")),
            timezone=str(a.get("timezone", "Europe/Paris")),
        )
        for a in payload
    ]


def _close(recorded: Any, replayed: Any, *, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    if isinstance(recorded, bool) or isinstance(replayed, bool):
        return bool(recorded == replayed)
    if isinstance(recorded, int | float) and isinstance(replayed, int | float):
        return math.isclose(float(recorded), float(replayed), rel_tol=rel, abs_tol=abs_)
    if isinstance(recorded, Mapping) and isinstance(replayed, Mapping):
        return set(recorded) == set(replayed) and all(_close(recorded[k], replayed[k]) for k in recorded)
    if isinstance(recorded, list) and isinstance(replayed, list):
        return len(recorded) == len(replayed) and all(
            _close(a, b) for a, b in zip(recorded, replayed, strict=True)
        )
    return bool(recorded == replayed)


def _compare(seq: int, recorded: Mapping[str, Any], replayed: Mapping[str, Any]) -> list[PlanMismatch]:
    version = int(recorded.get("version", -1))
    out: list[PlanMismatch] = []
    for name in (
        "version",
        "graph_version",
        "model_version",
        "holds",
        "suggestions",
        "coverage_probability",
        "parameters",
    ):
        if not _close(recorded.get(name), replayed.get(name)):
            out.append(PlanMismatch(seq, version, name, recorded.get(name), replayed.get(name)))
    return out


def _coordinator(city: City, plan: Mapping[str, Any]) -> Coordinator:
    from guidance.coordinator import Coordinator
    from guidance.types import PlannerConfig

    parameters = plan.get("parameters") or {}
    config_values = {k: parameters[k] for k in _PLANNER_KEYS if k in parameters}
    config = PlannerConfig(**config_values) if config_values else None
    return Coordinator(
        city,
        planner_config=config,
        horizon_s=float(plan.get("horizon_s", 600.0)),
        step_s=float(plan.get("step_s", 10.0)),
    )


def replay_incident(records: Iterable[AuditRecord], incident_id: str, city: City) -> ReplayReport:
    """Recompute every ``plan_computed`` record of ``incident_id`` and compare (see module doc)."""
    from guidance.types import Plan
    from map_data.types import LonLat
    from tracking.types import Sighting

    mine = sorted((r for r in records if r.incident_id == incident_id and not r.purged), key=lambda r: r.seq)
    core = any(r.action == CORE_OPENED for r in mine)
    opened_action = CORE_OPENED if core else AuditAction.incident_opened.value
    shared_action = CORE_SHARED if core else AuditAction.share.value
    sighting_action = CORE_SIGHTING if core else AuditAction.sighting_received.value
    if not any(r.action == opened_action and r.payload is not None for r in mine):
        raise ReplayError(f"incident {incident_id!r} has no {opened_action} record (purged, or never opened)")
    co: Coordinator | None = None
    pending: list[AuditRecord] = []  # records before the first plan (the coordinator needs its config)
    previous: Plan | None = None
    mismatches: list[PlanMismatch] = []
    plans = sightings = 0
    origin_known = True  # as the live coordinator: False for an incident opened without a position

    def apply(record: AuditRecord, co: Coordinator) -> None:
        nonlocal sightings, origin_known
        payload = record.payload or {}
        if record.action == opened_action:
            origin = payload.get("origin_lonlat")
            origin_known = origin is not None
            co.open_incident(
                incident_id,
                at=datetime.fromisoformat(payload.get("at") or record.at.isoformat()),
                commune=payload.get("commune"),
                origin_lonlat=None if origin is None else LonLat(float(origin[0]), float(origin[1])),
            )
        elif record.action == shared_action:
            co.share_incident(incident_id, [str(c) for c in payload.get("communes", [])])
        elif record.action == sighting_action:
            co.tracks.update(Sighting.model_validate(payload))
            sightings += 1

    for record in mine:
        if record.action == opened_action:  # a (re)start of the live coordinator: start afresh
            co, pending, previous = None, [], None
        if record.action != PLAN_COMPUTED:
            if co is None:
                pending.append(record)
            else:
                apply(record, co)
            continue
        recorded = record.payload or {}
        if co is None:
            if recorded.get("graph_version") != city.graph.version:
                raise ReplayError(
                    f"plan v{recorded.get('version')} was computed on graph {recorded.get('graph_version')}, "
                    f"this city is {city.graph.version}"
                )
            co = _coordinator(city, recorded)
            for early in pending:
                apply(early, co)
        plans += 1
        at = datetime.fromisoformat(str(recorded["at"]))
        crews = _crews_from(recorded.get("crews", []))
        considered = (recorded.get("parameters") or {}).get("crews_considered")
        if considered is not None:
            crews = [c for c in crews if c.crew_id in set(considered)]
        incident = co.state(incident_id, at)
        belief = incident.belief
        if (
            belief is None
            or not belief.positions
            or "planner_version" not in (recorded.get("parameters") or {})
        ):
            # the coordinator's placeholder plan before any position is known
            plan: Plan = Plan(
                incident_id=incident_id,
                version=int(recorded["version"]),
                at=at,
                suggestions=(),
                holds=tuple(recorded.get("holds", [])),
                coverage_probability=0.0,
                graph_version=city.graph.version,
                model_version=co.predictor.model_version,
                parameters=dict(recorded.get("parameters") or {}),
            )
        else:
            prediction = co.predictor.predict(
                belief, horizon_s=co.horizon_s, step_s=co.step_s, origin_known=origin_known
            )
            plan = co.planner.plan(
                prediction,
                crews,
                previous=previous,
                at=at,
                no_go=_no_go_from(recorded.get("no_go", [])),
                shared_communes=incident.shared_communes,
                incident_commune=incident.commune,
                declined=frozenset(
                    (str(c), int(n)) for c, n in (recorded.get("parameters") or {}).get("declined", [])
                ),
            )
        replayed = plan_payload(
            plan,
            crews,
            horizon_s=co.horizon_s,
            step_s=co.step_s,
            no_go=_no_go_from(recorded.get("no_go", [])),
        )
        mismatches.extend(_compare(record.seq, recorded, replayed))
        previous = plan
    return ReplayReport(incident_id, plans, sightings, tuple(mismatches))
