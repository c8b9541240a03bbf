"""The one facade the server and the simulator call: tracking + prediction + planning.

A :class:`Coordinator` holds the open incidents of one city, the crews, and each incident's
last prediction and plan. It is synchronous and deterministic: every time comes from the
caller (``at``, ``sighting.observed_at``), never from the wall clock, so the live server, the
simulator and a replay of the audit log get the same plans.

Typical use::

    co = Coordinator(city)
    co.open_incident("inc-1", at=t0, commune="Metz", origin_lonlat=LonLat(6.17, 49.12))
    co.set_crews(crews, t0)                 # re-plans the open incidents
    outcome = co.ingest(sighting)           # track update, belief, prediction, new plan
    plan = co.replan("inc-1", t1)           # as time passes or crews move
    co.close_incident("inc-1")

Plans of one incident carry increasing versions. A crew suggested to one incident is not
offered to another while that plan stands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from guidance.geojson import belief_geojson as _belief_geojson
from guidance.geojson import plan_geojson as _plan_geojson
from guidance.geojson import prediction_geojson as _prediction_geojson
from guidance.planner import InterceptionPlanner
from guidance.prediction import EscapePredictor
from guidance.types import Crew, CrewStatus, EscapePrediction, GuidanceError, NoGoArea, Plan, PlannerConfig
from map_data.city import exit_nodes
from map_data.network_types import City
from map_data.snap import Snapper
from map_data.types import LonLat
from tracking.config import TrackerConfig
from tracking.errors import NoBeliefError, UnknownIncidentError
from tracking.tracker import Tracks
from tracking.types import Belief, Sighting, TrackUpdate


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one sighting did: the tracker's verdict, the new belief, prediction and plan
    (``None`` when nothing changed, e.g. a duplicate)."""

    update: TrackUpdate
    belief: Belief | None
    prediction: EscapePrediction | None
    plan: Plan | None


@dataclass(frozen=True, slots=True)
class IncidentState:
    """An incident as the coordinator sees it at ``at`` (``belief`` is ``None`` before the
    first sighting of an incident opened without an origin)."""

    incident_id: str
    at: datetime
    commune: str | None
    shared_communes: frozenset[str]
    belief: Belief | None
    prediction: EscapePrediction | None
    plan: Plan | None


@dataclass
class _Incident:
    incident_id: str
    opened_at: datetime
    commune: str | None
    origin_known: bool = False
    shared: set[str] = field(default_factory=set)
    prediction: EscapePrediction | None = None
    plan: Plan | None = None
    plan_key: tuple[object, ...] | None = None
    revision: int = 0
    sightings: int = 0  # non-duplicate sightings ingested (the belief's inputs)
    predicted_sightings: int = -1  # ``sightings`` when ``prediction`` was computed
    declined: dict[tuple[str, int], Decline] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decline:
    """A crew's refusal of a target of an incident: the planner never offers it again."""

    crew_id: str
    target_node: int
    at: datetime
    reason: str


class Coordinator:
    """Tracks, predictions and plans of every open incident of one city.

    Parameters
    ----------
    city
        The city.
    tracker_config, planner_config
        Configuration of :class:`tracking.tracker.Tracks` and of
        :class:`guidance.planner.InterceptionPlanner`.
    predictor
        An :class:`EscapePredictor` (built on ``city`` with the map's exits when omitted).
    horizon_s, step_s
        Prediction horizon and step.
    reuse_prediction_s
        When > 0, a re-plan with no new sighting since the incident's last prediction reuses
        that prediction while it is at most this many seconds old (the planner shifts its ETAs
        by the elapsed time) instead of predicting again from the belief at the new time. An
        approximation for speed (the simulator uses it): the reused routes start from the
        older belief, so the negative information of cameras that stayed silent since is
        ignored. Deterministic for a given sequence of calls; such plans carry
        ``parameters["prediction_at"]``. Default 0: every re-plan predicts afresh (the server,
        and the audit replay, which recomputes each plan from the belief at its time).
    """

    def __init__(
        self,
        city: City,
        *,
        tracker_config: TrackerConfig | None = None,
        planner_config: PlannerConfig | None = None,
        predictor: EscapePredictor | None = None,
        horizon_s: float = 600.0,
        step_s: float = 10.0,
        reuse_prediction_s: float = 0.0,
    ) -> None:
        if not reuse_prediction_s >= 0:
            raise GuidanceError(f"reuse_prediction_s must be >= 0, got {reuse_prediction_s}")
        self.reuse_prediction_s = float(reuse_prediction_s)
        self.city = city
        self.tracks = Tracks(city, config=tracker_config)
        if predictor is None:
            exits = exit_nodes(city.graph)
            predictor = EscapePredictor(city, exits=exits if exits.size else None)
        elif predictor.graph is not city.graph:
            raise GuidanceError("predictor was built on another city graph")
        self.predictor = predictor
        self.planner = InterceptionPlanner(city, planner_config)
        self.horizon_s = horizon_s
        self.step_s = step_s
        self._snapper: Snapper | None = None
        self._incidents: dict[str, _Incident] = {}
        self._crews: dict[str, Crew] = {}
        self._crews_at: datetime | None = None
        self._crew_revision = 0
        self._no_go: tuple[NoGoArea, ...] = ()

    # ------------------------------------------------------------------ incidents

    def _incident(self, incident_id: str) -> _Incident:
        try:
            return self._incidents[incident_id]
        except KeyError:
            raise UnknownIncidentError(f"incident {incident_id!r} is not open") from None

    def open_incident(
        self,
        incident_id: str,
        *,
        at: datetime,
        commune: str | None = None,
        origin_lonlat: LonLat | None = None,
    ) -> IncidentState:
        """Open an incident at ``at``, at ``origin_lonlat`` when known (snapped to the graph)."""
        origin = None
        if origin_lonlat is not None:
            if self._snapper is None:
                self._snapper = Snapper(self.city.graph)
            origin = self._snapper.snap(origin_lonlat.lon, origin_lonlat.lat)
        self.tracks.open(incident_id, at, origin)
        self._incidents[incident_id] = _Incident(incident_id, at, commune, origin_known=origin is not None)
        return self.state(incident_id, at)

    def share_incident(self, incident_id: str, communes: Iterable[str]) -> frozenset[str]:
        """Let crews of ``communes`` work on the incident; returns all shared communes."""
        inc = self._incident(incident_id)
        inc.shared.update(communes)
        inc.revision += 1
        return frozenset(inc.shared)

    def close_incident(self, incident_id: str) -> None:
        """Close the incident; its crews become free for the other incidents."""
        self._incident(incident_id)
        self.tracks.close(incident_id)
        del self._incidents[incident_id]

    def incident_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._incidents))

    # ------------------------------------------------------------------ inputs

    def set_no_go(self, areas: Sequence[NoGoArea]) -> None:
        """Replace the no-go areas (applied from the next plan on)."""
        self._no_go = tuple(areas)
        for inc in self._incidents.values():
            inc.revision += 1

    def set_crews(self, crews: Sequence[Crew], at: datetime, *, replan: bool = True) -> dict[str, Plan]:
        """Replace the crews' positions and statuses, and re-plan every open incident at ``at``.

        Returns the new plan of each incident that could be planned (an incident without any
        position yet is skipped). With ``replan=False`` only the crews are replaced (returns
        ``{}``): a caller that re-plans each incident on its own afterwards (the server, one
        incident per core call so that sightings are not held behind every incident's plan)
        saves the plans it would throw away."""
        ids = [c.crew_id for c in crews]
        if len(set(ids)) != len(ids):
            raise GuidanceError(f"duplicate crew ids: {sorted({i for i in ids if ids.count(i) > 1})}")
        new = {c.crew_id: c for c in crews}
        if new != self._crews:
            self._crews = new
            self._crew_revision += 1
        self._crews_at = at
        plans: dict[str, Plan] = {}
        if not replan:
            return plans
        for incident_id in self.incident_ids():
            plan = self._replan(incident_id, at)
            if plan is not None:
                plans[incident_id] = plan
        return plans

    def ingest(self, sighting: Sighting, *, replan: bool = True, plan_at: datetime | None = None) -> Outcome:
        """Give a sighting to its incident's tracker and re-plan at its time (or at the last
        plan's time when the sighting arrives late).

        ``plan_at``: the time the plan is for, when later than the sighting: the moment its
        report reached the caller (an operator's handoff takes seconds, and the crews act from
        now, so a plan at the sighting's own time would think the suspect seconds behind where
        it is). The plan's time is the latest of the sighting's, ``plan_at`` and the last plan's.

        With ``replan=False`` only the track is updated (the outcome's belief, prediction and
        plan are ``None``); the next :meth:`set_crews` or :meth:`replan` plans with it. A
        caller that re-plans right after anyway (the simulator gives the crews' positions at
        once) saves a plan that would be superseded at once."""
        if plan_at is not None and plan_at.tzinfo is None:
            raise GuidanceError("ingest: 'plan_at' must be timezone-aware")
        inc = self._incident(sighting.incident_id)
        update = self.tracks.update(sighting)
        if update.duplicate:
            return Outcome(update=update, belief=None, prediction=None, plan=None)
        inc.revision += 1
        inc.sightings += 1
        if not replan:
            return Outcome(update=update, belief=None, prediction=None, plan=None)
        # A late sighting (older than the last plan) re-plans at the last plan's time.
        at = sighting.observed_at
        if plan_at is not None:
            at = max(at, plan_at)
        if inc.plan is not None and inc.plan.at > at:
            at = inc.plan.at
        plan = self._replan(inc.incident_id, at)
        belief = self._belief(inc.incident_id, at)
        return Outcome(update=update, belief=belief, prediction=inc.prediction, plan=plan)

    def decline(
        self,
        incident_id: str,
        crew_id: str,
        *,
        at: datetime,
        reason: str = "",
        target_node: int | None = None,
    ) -> Plan | None:
        """A crew declines its suggestion of ``incident_id`` (``target_node``, by default its
        target in the incident's last plan): the planner never offers that crew that crossing
        for this incident again, and the crew is free for other points. Re-plans at ``at``
        (or at the last plan's time when ``at`` is earlier) and returns the new plan (``None``
        when the incident has no position yet).

        The declined pairs go into every later plan's ``parameters["declined"]`` (a list of
        ``[crew_id, node]``), so a replay can give them back to the planner."""
        inc = self._incident(incident_id)
        if at.tzinfo is None:
            raise GuidanceError("decline: 'at' must be timezone-aware")
        if target_node is None:
            target_node = inc.plan.target_of(crew_id) if inc.plan is not None else None
            if target_node is None:
                raise GuidanceError(
                    f"decline: crew {crew_id!r} has no suggestion in the last plan of {incident_id!r}"
                )
        if not 0 <= target_node < self.city.graph.n_nodes:
            raise GuidanceError(
                f"decline: target_node {target_node} out of range 0..{self.city.graph.n_nodes - 1}"
            )
        key = (crew_id, int(target_node))
        if key not in inc.declined:
            inc.declined[key] = Decline(crew_id, int(target_node), at, reason)
            inc.revision += 1
        if inc.plan is not None and inc.plan.at > at:
            at = inc.plan.at
        return self._replan(incident_id, at)

    def declines(self, incident_id: str) -> tuple[Decline, ...]:
        """The incident's declines, in the order they were given."""
        return tuple(self._incident(incident_id).declined.values())

    # ------------------------------------------------------------------ planning

    def replan(self, incident_id: str, at: datetime) -> Plan:
        """The incident's plan at ``at`` (the same plan when nothing changed since). A plan's
        time never goes back: an ``at`` before the last plan's time plans at that time."""
        last = self._incident(incident_id).plan
        if last is not None and last.at > at:
            at = last.at
        plan = self._replan(incident_id, at)
        if plan is None:
            inc = self._incident(incident_id)
            version = inc.plan.version + 1 if inc.plan is not None else 1
            plan = Plan(
                incident_id=incident_id,
                version=version,
                at=at,
                suggestions=(),
                holds=tuple(
                    sorted(c.crew_id for c in self._crews.values() if c.status is CrewStatus.available)
                ),
                coverage_probability=0.0,
                graph_version=self.city.graph.version,
                model_version=self.predictor.model_version,
                parameters={"reason": "no position of the suspect yet"},
            )
            inc.plan = plan
            inc.plan_key = None
        return plan

    def _busy_elsewhere(self, incident_id: str) -> set[str]:
        out: set[str] = set()
        for other in self._incidents.values():
            if other.incident_id != incident_id and other.plan is not None:
                out.update(s.crew_id for s in other.plan.suggestions)
        return out

    def _replan(self, incident_id: str, at: datetime) -> Plan | None:
        inc = self._incident(incident_id)
        busy = self._busy_elsewhere(incident_id)
        key = (at, inc.revision, self._crew_revision, tuple(sorted(busy)))
        if inc.plan is not None and inc.plan_key == key:
            return inc.plan
        belief = self._belief(incident_id, at)
        if belief is None or not belief.positions:
            return None
        prediction = inc.prediction
        reused = (
            self.reuse_prediction_s > 0
            and prediction is not None
            and inc.predicted_sightings == inc.sightings
            and 0.0 <= (at - prediction.at).total_seconds() <= self.reuse_prediction_s
        )
        if not reused or prediction is None:
            prediction = self.predictor.predict(
                belief, horizon_s=self.horizon_s, step_s=self.step_s, origin_known=inc.origin_known
            )
            inc.predicted_sightings = inc.sightings
        crews = [c for c in self._crews.values() if c.crew_id not in busy]
        plan = self.planner.plan(
            prediction,
            crews,
            previous=inc.plan,
            at=at,
            no_go=self._no_go,
            shared_communes=frozenset(inc.shared),
            incident_commune=inc.commune,
            declined=frozenset(inc.declined),
        )
        if self.reuse_prediction_s > 0:
            parameters = dict(plan.parameters)
            parameters["prediction_at"] = prediction.at.isoformat()
            plan = replace(plan, parameters=parameters)
        inc.prediction, inc.plan, inc.plan_key = prediction, plan, key
        return plan

    # ------------------------------------------------------------------ views

    def _belief(self, incident_id: str, at: datetime) -> Belief | None:
        try:
            return self.tracks.belief(incident_id, at)
        except NoBeliefError:
            return None

    def state(self, incident_id: str, at: datetime) -> IncidentState:
        """Belief at ``at`` and the last prediction and plan of the incident."""
        inc = self._incident(incident_id)
        return IncidentState(
            incident_id=incident_id,
            at=at,
            commune=inc.commune,
            shared_communes=frozenset(inc.shared),
            belief=self._belief(incident_id, at),
            prediction=inc.prediction,
            plan=inc.plan,
        )

    def prediction(self, incident_id: str) -> EscapePrediction | None:
        """The incident's last prediction (``None`` before the first): :meth:`state` without
        the belief, which the server's prediction messages do not need."""
        return self._incident(incident_id).prediction

    def crews(self) -> tuple[Crew, ...]:
        return tuple(self._crews[k] for k in sorted(self._crews))

    def prediction_geojson(self, incident_id: str) -> dict[str, Any]:
        """GeoJSON of the incident's last prediction (empty collection before the first)."""
        inc = self._incident(incident_id)
        if inc.prediction is None:
            return {"type": "FeatureCollection", "features": []}
        return _prediction_geojson(inc.prediction, self.city.graph)

    def belief_geojson(self, incident_id: str, at: datetime) -> dict[str, Any]:
        """GeoJSON of the incident's belief at ``at`` (empty before any position is known)."""
        belief = self._belief(incident_id, at)
        if belief is None:
            return {"type": "FeatureCollection", "features": []}
        return _belief_geojson(belief, self.city.graph)

    def plan_geojson(self, incident_id: str) -> dict[str, Any]:
        """GeoJSON of the incident's last plan."""
        inc = self._incident(incident_id)
        if inc.plan is None:
            return {"type": "FeatureCollection", "features": []}
        return _plan_geojson(inc.plan)
