"""The orchestration: sightings from the bus into the Coordinator, plans out as suggestions and events.

The service does I/O and bookkeeping only; every decision about where a suspect is and where a crew
should go comes from :class:`guidance.coordinator.Coordinator` (the one core entry point).

Several workers (processes) can share one CSU. The incident's sighting log in the state store is
the truth: before a worker applies a sighting it replays, into its own Coordinator, the log
entries other workers applied (the core is deterministic, so every worker reaches the same track),
all under the incident's lock. A sighting whose ``source_event_id`` is already in the log is
skipped, which makes the stream handler idempotent under at-least-once delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import ValidationError

from map_data import routing
from map_data.network_types import City
from map_data.snap import Snapper
from map_data.types import EdgePosition, LonLat
from serving import messages as m
from serving.audit import AuditSink
from serving.bus import Bus, InProcessBus
from serving.clock import Clock
from serving.core_process import PredictionRef
from serving.hub import Encoded, Hub
from serving.jsontext import dumps
from serving.metrics import Metrics
from serving.state import Json, StateStore
from tracking.errors import NoBeliefError
from tracking.types import Sighting

log = logging.getLogger("cordon.service")
T = TypeVar("T")

#: Suggestion states that are still in force (a crew may be acting on them).
ACTIVE = frozenset({"pending_approval", "sent", "accepted", "in_position"})
#: Of those, the states a crew has been told about.
DELIVERED = frozenset({"sent", "accepted", "in_position"})


# ---------------------------------------------------------------------------------------------
# What the service reads from the core (structural, to keep the core's types the core's own)


class SuggestionLike(Protocol):
    @property
    def suggestion_id(self) -> str: ...
    @property
    def incident_id(self) -> str: ...
    @property
    def crew_id(self) -> str: ...
    @property
    def target_node(self) -> int: ...
    @property
    def lon(self) -> float: ...
    @property
    def lat(self) -> float: ...
    @property
    def street_names(self) -> Sequence[str]: ...
    @property
    def route_lonlat(self) -> Sequence[tuple[float, float]]: ...
    @property
    def turns(self) -> Sequence[Any]: ...
    @property
    def crew_eta_s(self) -> float: ...
    @property
    def suspect_earliest_eta_s(self) -> float: ...
    @property
    def suspect_likely_eta_s(self) -> float: ...
    @property
    def margin_s(self) -> float: ...
    @property
    def probability_covered(self) -> float: ...
    @property
    def reason(self) -> str: ...
    @property
    def plan_version(self) -> int: ...
    @property
    def issued_at(self) -> datetime: ...
    @property
    def expires_at(self) -> datetime: ...


class PlanLike(Protocol):
    @property
    def incident_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def suggestions(self) -> Sequence[SuggestionLike]: ...
    @property
    def holds(self) -> Sequence[str]: ...
    @property
    def coverage_probability(self) -> float: ...


class CoordinatorLike(Protocol):
    """The contract of ``guidance.coordinator.Coordinator`` as the server uses it."""

    def open_incident(
        self,
        incident_id: str,
        *,
        at: datetime,
        commune: str | None = None,
        origin_lonlat: LonLat | None = None,
    ) -> Any: ...
    def share_incident(self, incident_id: str, communes: Iterable[str]) -> Any: ...
    def ingest(self, sighting: Sighting) -> Any: ...
    def set_crews(self, crews: Sequence[Any], at: datetime, *, replan: bool = ...) -> Any: ...
    def replan(self, incident_id: str, at: datetime) -> Any: ...
    def close_incident(self, incident_id: str) -> Any: ...


#: Core-call priorities: a sighting's calls first, then what can wait (a re-plan because time
#: passed, a prediction's GeoJSON for the maps).
URGENT = 0
DEFERRED = 1


class CoreThread:
    """The one thread that makes the core's calls (they never overlap), in priority order: a
    waiting ``URGENT`` call (a sighting's) goes before the ``DEFERRED`` ones (periodic
    re-plans, the maps' GeoJSON), except that a ``DEFERRED`` call never waits more than
    ``max_defer_s`` once it is the oldest of its kind (no starvation under load). Within one
    priority, calls run in the order they came. A ``DEFERRED`` call made under an incident's
    lock carries that incident as its ``key``; :meth:`promote` makes it ``URGENT`` when a
    sighting of that incident waits for the lock (no priority inversion)."""

    def __init__(self, name: str = "cordon-core", *, max_defer_s: float = 1.0) -> None:
        self.max_defer_s = max_defer_s
        self._queues: tuple[deque[tuple[float, Callable[[], Any], Future[Any], str | None]], ...] = (
            deque(),
            deque(),
        )
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable[[], T], *, key: str | None = None) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._stopped:
                raise RuntimeError("the core thread is shut down")
            self._queues[min(max(priority, URGENT), DEFERRED)].append((time.monotonic(), fn, future, key))
            self._cond.notify()
        return future

    def promote(self, key: str) -> int:
        """Make the waiting ``DEFERRED`` calls of ``key`` ``URGENT`` (after the urgent calls
        already waiting); returns how many."""
        with self._cond:
            urgent, deferred = self._queues
            moved = [item for item in deferred if item[3] == key]
            if moved:
                kept = [item for item in deferred if item[3] != key]
                deferred.clear()
                deferred.extend(kept)
                urgent.extend(moved)
                self._cond.notify()
            return len(moved)

    def _next(self) -> tuple[float, Callable[[], Any], Future[Any], str | None]:
        urgent, deferred = self._queues
        if deferred and (not urgent or time.monotonic() - deferred[0][0] > self.max_defer_s):
            return deferred.popleft()
        return urgent.popleft()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not any(self._queues) and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                _, fn, future, _key = self._next()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Stop after the running call; the calls still waiting are cancelled."""
        with self._cond:
            self._stopped = True
            for queue in self._queues:
                for _, _, future, _ in queue:
                    future.cancel()
                queue.clear()
            self._cond.notify_all()


class MemoryAudit:
    """Audit records kept in memory (tests, and when no audit store is configured)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(
        self,
        actor: str,
        role: str,
        action: str,
        *,
        at: datetime,
        incident_id: str | None = None,
        commune: str | None = None,
        payload: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        self.records.append(
            {
                "actor": actor,
                "role": role,
                "action": action,
                "at": at,
                "incident_id": incident_id,
                "commune": commune,
                "payload": payload,
                "reason": reason,
            }
        )


class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, ``code`` the error code."""

    def __init__(self, status: int, code: m.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does something (from the authenticated principal), for audit and events."""

    subject: str
    role: str
    communes: frozenset[str] | None  # None: every commune
    crew_id: str | None = None


SYSTEM = Actor("cordon", "system", None)


def suggestion_body(s: SuggestionLike, state: m.SuggestionState) -> Json:
    """The wire form (:class:`serving.messages.SuggestionBody`) of a core suggestion. Built
    directly (the core's values are trusted; the tests check the wire form against the schema);
    infinite or NaN times become ``null``."""

    def finite(x: float) -> float | None:
        return float(x) if x == x and abs(x) != float("inf") else None

    return {
        "suggestion_id": s.suggestion_id,
        "incident_id": s.incident_id,
        "crew_id": s.crew_id,
        "target_node": int(s.target_node),
        "lon": float(s.lon),
        "lat": float(s.lat),
        # Tuples, not lists: the state keeps every suggestion of every incident, and the garbage
        # collector stops tracking a tuple of numbers or strings (and then a dict of such values)
        # but traverses every list at each full collection: 70,000 suggestions' routes as lists
        # made a full collection pause the event loop for 0.8 s, as tuples 0.15 s. Same JSON.
        "street_names": tuple(str(n) for n in s.street_names),
        # 6 decimals (about 0.1 m, as the prediction's GeoJSON): the route is most of the
        # suggestion's size, sent to the crew and in every plan to the consoles
        "route_lonlat": tuple(
            map(tuple, np.round(np.asarray(s.route_lonlat, dtype=np.float64).reshape(-1, 2), 6).tolist())
        ),
        "turns": tuple(s.turns),
        "crew_eta_s": float(s.crew_eta_s),
        "suspect_earliest_eta_s": finite(s.suspect_earliest_eta_s),
        "suspect_likely_eta_s": finite(s.suspect_likely_eta_s),
        "margin_s": finite(s.margin_s),
        "probability_covered": float(s.probability_covered),
        "reason": s.reason,
        "plan_version": int(s.plan_version),
        "issued_at": s.issued_at.isoformat(),
        "expires_at": s.expires_at.isoformat(),
        "state": state.value,
    }


def _public_crew(crew: Json) -> Json:
    return {k: v for k, v in crew.items() if not k.startswith("_")}


class DispatchService:
    """One worker's orchestration. Build it, then run :meth:`run` as a background task."""

    def __init__(
        self,
        *,
        city: City,
        coordinator: CoordinatorLike,
        state: StateStore,
        bus: Bus,
        hub: Hub,
        clock: Clock,
        audit: AuditSink,
        metrics: Metrics,
        worker_id: str,
        default_mode: m.DispatchMode = m.DispatchMode.direct,
        crew_factory: Callable[[Json, EdgePosition], Any] | None = None,
        prediction_geojson: Callable[[Any], dict[str, Any]] | None = None,
        crew_refresh_s: float = 10.0,
        coalesce: bool = True,
        crew_speed_factor: float = 1.2,
        replan_s: float = 10.0,
        prediction_interval_s: float = 2.0,
        max_report_delay_s: float = 120.0,
    ) -> None:
        self.city = city
        self.coordinator = coordinator
        self.state = state
        self.bus = bus
        self.hub = hub
        self.clock = clock
        self.audit = audit
        self.metrics = metrics
        self.worker_id = worker_id
        self.default_mode = default_mode
        self.snapper = Snapper(city.graph)
        self._crew_factory = crew_factory or _default_crew_factory
        self._prediction_geojson = prediction_geojson or _default_prediction_geojson(city)
        self._applied: dict[str, int] = {}
        self._seen: dict[str, set[str]] = {}
        self._crew_status_key: int | None = None
        self._crew_version = -1
        self._crews_pushed_at: datetime | None = None
        self.crew_refresh_s = crew_refresh_s
        if not crew_speed_factor > 0:
            raise ValueError(f"crew_speed_factor must be > 0, got {crew_speed_factor}")
        self.crew_speed_factor = crew_speed_factor
        self.replan_s = replan_s
        # A sighting reported at most this long after it was seen is planned for the moment
        # it arrived (the crews act from now); an older one (a historical or replayed event)
        # at its own time.
        self.max_report_delay_s = max_report_delay_s
        # The prediction GeoJSON (tens of kB; for the consoles' maps) goes out at most every
        # prediction_interval_s of wall time per incident, the latest one after the interval.
        self.prediction_interval_s = prediction_interval_s
        self._prediction_sent: dict[str, float] = {}  # incident -> monotonic time of the last one
        self._prediction_pending: dict[str, Any] = {}  # incident -> latest prediction not sent yet
        self._prediction_flush: dict[str, asyncio.Task[None]] = {}
        # When a periodic tick runs (server.py, wall clock, one worker), it brings the crews'
        # positions to the core; the sighting path then pushes status changes only.
        self.positions_on_tick = False
        self._declines: dict[str, set[tuple[str, int]]] = {}  # declines given to this worker's core
        self._ticked_at: datetime | None = None  # last periodic re-plan (simulated or wall time)
        self._planned_at: dict[str, float] = {}  # incident -> monotonic time of its last plan published
        self._ticked_crew_version = -1
        # incidents a tick skipped (planned within the interval): the crews' move of that tick is
        # not seen by them yet, so the next tick re-plans them even if nothing moved since
        self._tick_deferred: set[str] = set()
        self.periodic_replans = 0  # core re-plans made because time advanced
        self.periodic_plans = 0  # of those, the plans published
        self.coalesce = coalesce
        self._crew_sync_lock = asyncio.Lock()
        self._can_defer = ingest_accepts(coordinator, "replan")
        self._can_plan_at = ingest_accepts(coordinator, "plan_at")
        self._core_thread = CoreThread()
        self.processed = 0
        self._audit_pending: deque[tuple[Any, ...]] = deque()
        self._audit_stop = threading.Event()
        self._audit_idle = threading.Event()
        self._audit_thread = threading.Thread(target=self._audit_writer, name="cordon-audit", daemon=True)
        self._audit_thread.start()

    # -----------------------------------------------------------------------------------------
    # Running

    async def run(self) -> None:
        if isinstance(self.bus, InProcessBus) and self.coalesce:
            await self.bus.run_batched(self.handle_sightings, self.handle_event)
        else:
            await self.bus.run(self.handle_sighting, self.handle_event)

    async def _core(
        self,
        fn: Callable[..., T],
        *args: Any,
        priority: int = URGENT,
        promote_key: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Run a (synchronous) core call on the single core thread: calls never overlap; a
        waiting ``URGENT`` call (a sighting's) goes before waiting ``DEFERRED`` ones.
        ``promote_key``: the incident whose lock the caller holds (see :meth:`CoreThread.promote`)."""
        name = getattr(fn, "__name__", "call")
        queued = time.perf_counter()

        def timed() -> T:
            start = time.perf_counter()
            self.metrics.core_wait_seconds.labels(name).observe(start - queued)
            try:
                return fn(*args, **kwargs)
            finally:
                self.metrics.core_seconds.labels(name).observe(time.perf_counter() - start)
                cpu_s = getattr(self.coordinator, "last_cpu_s", None)  # the core process's own
                if isinstance(cpu_s, float):
                    self.metrics.core_cpu_seconds.labels(name).observe(cpu_s)
                    wall_s = float(getattr(self.coordinator, "last_wall_s", 0.0))
                    self.metrics.core_child_seconds.labels(name).observe(wall_s)

        return await asyncio.wrap_future(self._core_thread.submit(priority, timed, key=promote_key))

    def shutdown(self) -> None:
        self._core_thread.shutdown()
        self._audit_stop.set()
        self._audit_thread.join(timeout=30)

    def now(self) -> datetime:
        return self.clock.now()

    def _audit(
        self,
        actor: Actor,
        action: str,
        *,
        incident_id: str | None = None,
        commune: str | None = None,
        payload: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        """Queue an audit record for the audit thread: a durable append costs milliseconds of
        fsync, which must not block the event loop. The thread drains the queue in batches
        (no per-record wake-up, which would cost a GIL hand-over each time)."""
        record = (actor.subject, actor.role, action, self.now(), incident_id, commune, payload, reason or "")
        self._audit_pending.append(record)

    def append(
        self,
        actor: str,
        role: str,
        action: str,
        *,
        at: datetime,
        incident_id: str | None = None,
        commune: str | None = None,
        payload: Any = None,
        reason: str | None = "",
    ) -> None:
        """An :class:`AuditSink` that queues for the audit thread (the core's recorder,
        :class:`serving.audit_replay.RecordingCoordinator`, writes through it: the core thread
        never waits for an fsync, and records keep the order the core made them in)."""
        self._audit_pending.append(
            (
                actor,
                role,
                action,
                at,
                incident_id,
                commune,
                None if payload is None else dict(payload),
                reason or "",
            )
        )

    def audit_login(self, actor: Actor, *, via: str, jti: str | None = None) -> None:
        """A ``login`` record: a token issued (demo endpoint) or a websocket authenticated."""
        self._audit(actor, "login", payload={"via": via, "jti": jti, "crew_id": actor.crew_id})

    def _audit_writer(self) -> None:
        many = getattr(self.audit, "append_many", None)
        while True:
            stopping = self._audit_stop.wait(0.05)
            while self._audit_pending:
                batch: list[tuple[Any, ...]] = []
                while self._audit_pending and len(batch) < 500:
                    batch.append(self._audit_pending.popleft())
                if many is not None:
                    try:
                        many(batch, return_records=False)  # one transaction, one fsync
                        continue
                    except Exception:
                        log.warning("audit batch of %d failed; appending one by one", len(batch))
                for record in batch:
                    self._append_one(record)
            self._audit_idle.set()
            if stopping:
                return

    def _append_one(self, record: tuple[Any, ...]) -> None:
        subject, role, action, at, incident_id, commune, payload, reason = record
        try:
            self.audit.append(
                subject,
                role,
                action,
                at=at,
                incident_id=incident_id,
                commune=commune,
                payload=payload,
                reason=reason,
            )
        except Exception:
            log.exception("audit append failed for %s %s", action, incident_id)
            self.metrics.audit_failures.inc()

    def flush_audit(self, timeout_s: float = 30.0) -> None:
        """Block until every audit record queued so far is written."""
        deadline = time.monotonic() + timeout_s
        while self._audit_pending and time.monotonic() < deadline:
            time.sleep(0.01)
        self._audit_idle.clear()
        self._audit_idle.wait(timeout_s)

    # -----------------------------------------------------------------------------------------
    # Incidents

    async def incident(self, incident_id: str) -> Json:
        info = await self.state.get_incident(incident_id)
        if info is None:
            raise ServiceError(404, m.ErrorCode.unknown_incident, f"unknown incident {incident_id!r}")
        return info

    @staticmethod
    def communes_of(info: Json) -> list[str]:
        home = [info["commune"]] if info.get("commune") else []
        return home + [c for c in info.get("shared_with", []) if c not in home]

    async def open_incident(self, body: m.IncidentOpen, actor: Actor) -> Json:
        if await self.state.get_incident(body.incident_id) is not None:
            raise ServiceError(
                409, m.ErrorCode.incident_exists, f"incident {body.incident_id!r} already exists"
            )
        commune = body.commune
        if commune is None and actor.communes is not None and len(actor.communes) == 1:
            commune = next(iter(actor.communes))
        at = body.at or self.now()
        info = m.IncidentInfo(
            incident_id=body.incident_id, commune=commune, shared_with=[], opened_at=at
        ).model_dump(mode="json")
        if body.lon is not None and body.lat is not None:
            info["_origin"] = [body.lon, body.lat]
            info["lon"], info["lat"] = body.lon, body.lat
        await self.state.put_incident(info)
        self._audit(
            actor,
            "incident_opened",
            incident_id=body.incident_id,
            commune=commune,
            payload=body.model_dump(mode="json"),
        )
        await self._publish_op(
            self.communes_of(info), {"type": "incident", "event": "opened", "incident": _public(info)}
        )
        self.metrics.incidents_opened.inc()
        if info.get("_origin"):
            # the Coordinator has a belief from the origin: plan at once, as the offline
            # simulator's guidance does when it opens the incident
            try:
                await self.replan(body.incident_id)
            except Exception:
                log.exception("first plan of %s (from its origin) failed", body.incident_id)
            info = await self.incident(body.incident_id)
        return info

    async def close_incident(self, incident_id: str, actor: Actor) -> Json:
        async with self.state.lock(incident_id):
            info = await self.incident(incident_id)
            if info.get("closed_at"):
                return info
            info["closed_at"] = self.now().isoformat()
            await self.state.put_incident(info)
            for s in await self.state.open_suggestions(incident_id):
                if s["state"] in ACTIVE:
                    await self._retract(s, "incident closed")
            if incident_id in self._applied:
                await self._core(self.coordinator.close_incident, incident_id)
                self._applied.pop(incident_id, None)
                self._seen.pop(incident_id, None)
            self._declines.pop(incident_id, None)
            self._forget_prediction(incident_id)
            self._planned_at.pop(incident_id, None)
            self._tick_deferred.discard(incident_id)
        self._audit(actor, "incident_closed", incident_id=incident_id, commune=info.get("commune"))
        await self._publish_op(
            self.communes_of(info), {"type": "incident", "event": "closed", "incident": _public(info)}
        )
        return info

    async def share_incident(self, incident_id: str, communes: Sequence[str], actor: Actor) -> Json:
        async with self.state.lock(incident_id):
            info = await self.incident(incident_id)
            shared = list(dict.fromkeys([*info.get("shared_with", []), *communes]))
            info["shared_with"] = [c for c in shared if c != info.get("commune")]
            await self.state.put_incident(info)
            if incident_id in self._applied:
                await self._core(self.coordinator.share_incident, incident_id, info["shared_with"])
        self._audit(
            actor,
            "share",
            incident_id=incident_id,
            commune=info.get("commune"),
            payload={"communes": list(communes)},
        )
        await self._publish_op(
            self.communes_of(info), {"type": "incident", "event": "shared", "incident": _public(info)}
        )
        return info

    # -----------------------------------------------------------------------------------------
    # Sightings in

    async def submit_sighting(self, sighting: Sighting, actor: Actor) -> m.SightingAck:
        """Check and queue one sighting; idempotent on ``source_event_id``."""
        try:
            self.city.cameras.view(sighting.camera_id)
        except KeyError:
            self.metrics.sightings_rejected.labels("unknown_camera").inc()
            raise ServiceError(
                422, m.ErrorCode.unknown_camera, f"unknown camera {sighting.camera_id!r}"
            ) from None
        info = await self.incident(sighting.incident_id)
        if info.get("closed_at"):
            raise ServiceError(
                409, m.ErrorCode.incident_closed, f"incident {sighting.incident_id!r} is closed"
            )
        # Queue first, claim after: a crash between the two only makes a retry queue it again
        # (the stream handler skips what the incident's log already holds); the other order
        # could answer "duplicate" for a sighting that never reached the stream.
        if await self.state.has_event(sighting.source_event_id):
            self.metrics.sightings.labels("duplicate").inc()
            return m.SightingAck(source_event_id=sighting.source_event_id, accepted=True, duplicate=True)
        last = info.get("_last_observed_at")
        late = last is not None and sighting.observed_at < datetime.fromisoformat(last)
        payload = sighting.model_dump(mode="json")
        payload["_received_ns"] = _epoch_ns()
        payload["_actor"] = [actor.subject, actor.role]
        await self.bus.submit(payload)
        if not await self.state.claim_event(sighting.source_event_id):
            self.metrics.sightings.labels("duplicate").inc()  # a concurrent copy won the claim
            return m.SightingAck(source_event_id=sighting.source_event_id, accepted=True, duplicate=True)
        self.metrics.sightings.labels("late" if late else "accepted").inc()
        self._audit(
            actor,
            "sighting_received",
            incident_id=sighting.incident_id,
            commune=info.get("commune"),
            payload=sighting.model_dump(mode="json"),
        )
        return m.SightingAck(source_event_id=sighting.source_event_id, accepted=True, late=late)

    async def _sync(self, info: Json) -> None:
        """Bring this worker's Coordinator up to date with the incident's log (caller holds the lock)."""
        incident_id = info["incident_id"]
        if incident_id not in self._applied:
            origin = info.get("_origin")
            # opened, but with no origin the Coordinator cannot describe it yet and refuses
            with contextlib.suppress(NoBeliefError):
                await self._core(
                    self.coordinator.open_incident,
                    incident_id,
                    at=datetime.fromisoformat(info["opened_at"]),
                    commune=info.get("commune"),
                    origin_lonlat=LonLat(origin[0], origin[1]) if origin else None,
                )
            if info.get("shared_with"):
                await self._core(self.coordinator.share_incident, incident_id, info["shared_with"])
            self._applied[incident_id] = 0
            self._seen[incident_id] = set()
        missing = await self.state.sightings(incident_id, self._applied[incident_id])
        for raw in missing:
            sighting = Sighting.model_validate(raw)
            try:
                await self._core(self.coordinator.ingest, sighting)
            except Exception:
                log.exception("replaying sighting %s failed", sighting.source_event_id)
            self._seen[incident_id].add(sighting.source_event_id)
        self._applied[incident_id] += len(missing)
        await self._sync_declines(incident_id)

    async def _sync_crews(
        self, at: datetime | None = None, *, positions: bool | None = None, due: bool = False
    ) -> None:
        """Give the Coordinator the crews (from the state store), without re-planning: each
        caller re-plans its own incident right after (a sighting, a decision, or :meth:`tick`
        one incident per core call), so one push never holds sightings behind every open
        incident's plan. Status changes go at once; position-only changes at most every
        ``crew_refresh_s``. ``positions=False``: status changes only (the sighting path, when
        :meth:`tick` refreshes positions); the default is ``not self.positions_on_tick``.
        ``due``: push moved crews now, whatever the time since the last push (a tick)."""
        async with self._crew_sync_lock:  # concurrent batches must not push crews out of order
            await self._sync_crews_locked(at, positions=positions, due=due)

    async def _sync_crews_locked(self, at: datetime | None, *, positions: bool | None, due: bool) -> None:
        if positions is None:
            positions = not self.positions_on_tick
        version, status_version = await self.state.crew_versions()
        now = at or self.now()
        status_key = status_version
        if status_key == self._crew_status_key:
            if version == self._crew_version or not positions:
                return
            if (
                not due
                and self._crews_pushed_at is not None
                and (now - self._crews_pushed_at).total_seconds() < self.crew_refresh_s
            ):
                return
        crews = await self.state.crews()
        objects = []
        for c in crews:
            if "_edge" not in c:
                continue
            c = dict(c, _speed_factor=float(c.get("_speed_factor") or self.crew_speed_factor))
            objects.append(self._crew_factory(c, EdgePosition(int(c["_edge"]), float(c["_offset_m"]))))
        # Without re-planning (each caller re-plans its own incident); a core may still refuse.
        with contextlib.suppress(NoBeliefError):
            await self._core(self.coordinator.set_crews, objects, now, replan=False)
        self._crew_status_key, self._crew_version, self._crews_pushed_at = status_key, version, now

    async def handle_sighting(self, payload: Json) -> None:
        """Bus handler: apply one sighting (idempotent), publish what changed."""
        await self.handle_sightings([payload])

    async def handle_sightings(self, payloads: Sequence[Json]) -> None:
        """Apply queued sightings of one incident in order (each idempotent) under one lock, and
        publish every sighting but only the last plan (with its track and prediction): the
        intermediate plans were superseded before anyone could act on them."""
        applied: list[tuple[Sighting, Any, bool, int | None]] = []
        sightings = []
        for payload in payloads:
            payload = dict(payload)
            received_ns = payload.pop("_received_ns", None)
            payload.pop("_actor", None)
            sightings.append((Sighting.model_validate(payload), received_ns))
        if not sightings:
            return
        incident_id = sightings[0][0].incident_id
        if any(s.incident_id != incident_id for s, _ in sightings):
            raise ValueError("handle_sightings takes sightings of one incident")
        stamps: dict[str, float] = {"start": time.time()}  # where the batch's time goes
        # a periodic re-plan of this incident holding its lock waits no longer as deferred
        self._core_thread.promote(incident_id)
        async with self.state.lock(incident_id):
            info = await self.state.get_incident(incident_id)
            if info is None or info.get("closed_at"):
                log.warning(
                    "%d sighting(s) (%s...) for unknown or closed incident %s dropped",
                    len(sightings),
                    sightings[0][0].source_event_id,
                    incident_id,
                )
                return
            await self._sync(info)
            fresh: list[tuple[Sighting, int | None]] = []
            ids: set[str] = set()
            for sighting, received_ns in sightings:
                if sighting.source_event_id in self._seen[incident_id] or sighting.source_event_id in ids:
                    self.metrics.sightings.labels("redelivered").inc()
                    continue
                ids.add(sighting.source_event_id)
                fresh.append((sighting, received_ns))
            if not fresh:
                return
            await self._sync_crews()
            calls: list[tuple[Sighting, dict[str, Any]]] = []
            for k, (sighting, _) in enumerate(fresh):
                # all but the last are only tracked when the core can defer its plan
                kwargs: dict[str, Any] = {}
                if k < len(fresh) - 1 and self._can_defer:
                    kwargs["replan"] = False
                elif self._can_plan_at:
                    kwargs["plan_at"] = self._plan_time(sighting)
                calls.append((sighting, kwargs))
            stamps["core_start"] = time.time()
            results = await self._ingest_batch(calls)
            stamps["core_end"] = time.time()
            deferred = False
            for (sighting, received_ns), (kind, value), (_, kwargs) in zip(
                fresh, results, calls, strict=False
            ):
                outcome: Any = value
                if kind == "error":
                    raise value
                if kind == "refused":  # unknown camera / incident raced with a config change
                    log.warning("sighting %s refused by the core: %s", sighting.source_event_id, value)
                    continue
                if kind == "no_belief":
                    # A late sighting older than the track's start: the tracker kept it but the
                    # core could not plan at its time; plan at the latest time seen instead.
                    last_seen = info.get("_last_observed_at")
                    at = datetime.fromisoformat(last_seen) if last_seen else self.now()
                    try:
                        plan = await self._core(self.coordinator.replan, incident_id, at)
                    except NoBeliefError:
                        plan = None
                    outcome = _LateOutcome(plan)
                await self._applied_one(info, sighting)
                deferred = deferred or kwargs.get("replan") is False
                last = info.get("_last_observed_at")
                late = last is not None and sighting.observed_at < datetime.fromisoformat(last)
                if not late:
                    info["_last_observed_at"] = sighting.observed_at.isoformat()
                applied.append((sighting, outcome, late, received_ns))
            if not applied:
                return
            if deferred and getattr(applied[-1][1], "plan", None) is None:
                # the batch's last sighting was a redelivery: plan with what was tracked
                last_seen = info.get("_last_observed_at")
                at = self._plan_time(applied[-1][0])
                if last_seen:
                    at = max(at, datetime.fromisoformat(last_seen))
                with contextlib.suppress(NoBeliefError):
                    plan = await self._core(self.coordinator.replan, incident_id, at)
                    sighting, _outcome, late, received_ns = applied[-1]
                    applied[-1] = (sighting, _LateOutcome(plan), late, received_ns)
            plan_at = [i for i, (_, o, _, _) in enumerate(applied) if getattr(o, "plan", None) is not None]
            full = plan_at[-1] if plan_at else len(applied) - 1
            plan = getattr(applied[full][1], "plan", None)
            if plan is not None:
                info["plan_version"] = int(plan.version)
            await self.state.put_incident(info)
            # the published plan answers every sighting of the batch (their plans were deferred)
            answered = [s.source_event_id for s, _, _, _ in applied]
            for i, (sighting, outcome, late, received_ns) in enumerate(applied):
                await self._publish_outcome(
                    info,
                    sighting,
                    outcome,
                    late=late,
                    received_ns=received_ns,
                    sighting_only=i != full,
                    sighting_ids=answered,
                    stamps=stamps,
                )
        self._observe_stages(stamps, [r for _, _, _, r in applied])
        self.processed += len(applied)
        self.metrics.sightings_processed.inc(len(applied))
        if len(applied) > 1:
            self.metrics.coalesced.inc(len(applied) - 1)

    def _observe_stages(self, stamps: dict[str, float], received_ns: Sequence[int | None]) -> None:
        """Stage timing of a batch (``cordon_sighting_stage_seconds``): each sighting's wait
        before its batch started, and the batch's preparation, core and publishing times."""
        start = stamps["start"]
        for r in received_ns:
            if r is not None:
                self.metrics.sighting_stage.labels("queued").observe(max(0.0, start - r / 1e9))
        core_start, core_end, sent = stamps.get("core_start"), stamps.get("core_end"), stamps.get("sent")
        if core_start is None or core_end is None:
            return
        self.metrics.sighting_stage.labels("prepare").observe(core_start - start)
        self.metrics.sighting_stage.labels("core").observe(core_end - core_start)
        if sent is not None:
            self.metrics.sighting_stage.labels("publish").observe(sent - core_end)

    def _plan_time(self, sighting: Sighting) -> datetime:
        """When a sighting's plan is for: now, when the report is at most
        ``max_report_delay_s`` old (its delay is the operator's handoff); else its own time."""
        now = self.now()
        delay_s = (now - sighting.observed_at).total_seconds()
        return now if 0.0 <= delay_s <= self.max_report_delay_s else sighting.observed_at

    async def _ingest_batch(self, calls: Sequence[tuple[Sighting, dict[str, Any]]]) -> list[tuple[str, Any]]:
        """One core call for a batch's sightings (see :func:`ingest_batch`): one round trip to
        the core process, and no other call between the batch's sightings."""
        batch = getattr(self.coordinator, "ingest_batch", None)  # the core in its own process
        if batch is not None:
            return await self._core(batch, list(calls))
        return await self._core(ingest_batch, self.coordinator, list(calls))

    async def _applied_one(self, info: Json, sighting: Sighting) -> None:
        """Record that the core took ``sighting`` (caller holds the lock)."""
        incident_id = sighting.incident_id
        await self.state.append_sighting(incident_id, sighting.model_dump(mode="json"))
        self._applied[incident_id] += 1
        self._seen[incident_id].add(sighting.source_event_id)
        info["n_sightings"] = int(info.get("n_sightings", 0)) + 1
        if info.get("lon") is None:  # no origin given: where it was first seen
            camera = self.city.cameras.cameras[sighting.camera_id]
            info["lon"], info["lat"] = float(camera.lon), float(camera.lat)

    async def _sync_declines(self, incident_id: str) -> None:
        """Give this worker's Coordinator the incident's declines it has not seen (made through
        another worker), in the order they were made (caller holds the lock, after ``_sync``)."""
        given = self._declines.setdefault(incident_id, set())
        missing = sorted(
            (
                s
                for s in await self.state.open_suggestions(incident_id)
                if s["state"] == "declined" and (s["crew_id"], int(s["target_node"])) not in given
            ),
            key=lambda s: (str(s.get("_declined_at") or ""), s["suggestion_id"]),
        )
        for s in missing:
            await self._core_decline(s)

    async def _core_decline(self, s: Json) -> Any:
        """``Coordinator.decline`` for a declined suggestion: that crew is never offered that
        crossing of the incident again, and stays available for other points. Returns the
        core's new plan (``None`` when the incident has no position yet)."""
        key = (str(s["crew_id"]), int(s["target_node"]))
        given = self._declines.setdefault(s["incident_id"], set())
        given.add(key)
        decline = getattr(self.coordinator, "decline", None)
        if decline is None:  # a core without declines (a stub)
            return None
        at = datetime.fromisoformat(s["_declined_at"]) if s.get("_declined_at") else self.now()
        try:
            return await self._core(
                decline,
                s["incident_id"],
                key[0],
                at=at,
                reason=str(s.get("_decline_reason") or ""),
                target_node=key[1],
            )
        except (KeyError, ValueError) as exc:  # no position yet, incident closed in the core
            log.info("decline of %s by %s not planned: %s", s["suggestion_id"], key[0], exc)
            return None
        except BaseException:
            given.discard(key)  # not given: the next _sync_declines tries again
            raise

    async def _publish_outcome(
        self,
        info: Json,
        sighting: Sighting,
        outcome: Any,
        *,
        late: bool,
        received_ns: int | None,
        sighting_only: bool = False,
        sighting_ids: Sequence[str] | None = None,
        stamps: dict[str, float] | None = None,
    ) -> None:
        """Publish what one applied sighting changed. The crews' suggestions go first (the
        latency that matters), then the consoles' sighting, track and plan; the prediction's
        GeoJSON (for the maps) is made and sent after, off the sighting's path.
        ``sighting_ids``: every sighting the plan answers (a batch's), named in the crews'
        messages beside ``sighting_id``."""
        communes = self.communes_of(info)
        camera = self.city.cameras.cameras[sighting.camera_id]
        update = getattr(outcome, "update", None)
        flag = getattr(update, "flag", None)
        seen: Json = {
            "type": "sighting",
            "incident_id": sighting.incident_id,
            "camera_id": sighting.camera_id,
            "observed_at": sighting.observed_at.isoformat(),
            "source_kind": str(sighting.source_kind),
            "source_event_id": sighting.source_event_id,
            "lon": camera.lon,
            "lat": camera.lat,
            "late": late,
            "flag": None if flag is None else f"{flag.reason}: {flag.detail}",
        }
        if sighting_only:
            await self._publish_op(communes, seen)
            return
        plan = getattr(outcome, "plan", None)
        summary = None
        if plan is not None:  # the hot path: suggestions to the tablets
            summary = await self._apply_plan(
                info,
                plan,
                received_ns=received_ns,
                publish=False,
                sighting_id=sighting.source_event_id,
                sighting_ids=sighting_ids,
            )
        if stamps is not None:
            stamps["sent"] = time.time()
        await self._publish_op(communes, seen)
        view: Json = dict(await self.state.get_view(sighting.incident_id) or {})
        pushed: list[Json] = []
        belief = getattr(outcome, "belief", None)
        if belief is not None:
            track = {
                "type": "track",
                "incident_id": sighting.incident_id,
                "at": belief.at.isoformat(),
                "lon": float(belief.mean_lonlat.lon),
                "lat": float(belief.mean_lonlat.lat),
                "sigma_along_m": float(belief.sigma_along_m),
                "speed_mps": float(belief.speed_mps),
                "heading_deg": None if belief.heading_deg is None else float(belief.heading_deg),
                "since_last_sighting_s": float(belief.since_last_sighting_s),
                "last_camera_id": belief.last_camera_id,
                "n_sightings": int(belief.n_sightings),
            }
            view["track"] = track
            await self._publish_op(communes, track)
            pushed.append(track)
        prediction = getattr(outcome, "prediction", None)
        if prediction is not None:
            self._prediction_due(sighting.incident_id, prediction)
        if summary is not None:
            await self._publish_op(communes, summary)
            view["plan"] = summary
        await self.state.put_view(sighting.incident_id, view)
        if pushed:
            await self._push_to_crews(sighting.incident_id, pushed)

    def _prediction_due(self, incident_id: str, prediction: Any) -> None:
        """Keep ``prediction`` as the incident's latest and have it sent: at once when none went
        out in the last ``prediction_interval_s``, else when the interval ends (unless a newer
        one replaces it meanwhile). The GeoJSON is made on the core thread behind the
        sightings' calls (``DEFERRED``), by a task of its own that holds no lock meanwhile: a
        sighting never waits for the maps. Caller holds the incident's lock."""
        self._prediction_pending[incident_id] = prediction
        if incident_id in self._prediction_flush:
            return  # the incident's sender takes the latest when its turn comes
        last = self._prediction_sent.get(incident_id)
        delay = 0.0 if last is None else max(0.0, last + self.prediction_interval_s - time.monotonic())
        task = asyncio.create_task(self._flush_prediction(incident_id, delay))
        self._prediction_flush[incident_id] = task

    async def _prediction_message(self, incident_id: str, prediction: Any) -> Json | None:
        """The ``prediction`` message, its GeoJSON already serialized (:class:`Encoded`). With
        the core in its own process the GeoJSON is made there (the outcome carries a
        :class:`~serving.core_process.PredictionRef`); else on the core thread. With it,
        ``crew_geojson``: the tablets' lighter collection (:func:`crew_prediction_geojson`),
        sent to the crews as their message's ``geojson``."""
        if isinstance(prediction, PredictionRef):
            made = await self._core(
                self.coordinator.prediction_message,  # type: ignore[attr-defined]
                incident_id,
                prediction.at,
                priority=DEFERRED,
            )
            return None if made is None else {"type": "prediction", "incident_id": incident_id, **made}
        convert = self._prediction_geojson

        def encoded() -> tuple[Encoded, Encoded]:
            geojson = convert(prediction)
            return Encoded(dumps(geojson)), Encoded(dumps(crew_prediction_geojson(geojson)))

        full, crew = await self._core(encoded, priority=DEFERRED)
        return {
            "type": "prediction",
            "incident_id": incident_id,
            "at": prediction.at.isoformat(),
            "geojson": full,
            "crew_geojson": crew,
        }

    async def _flush_prediction(self, incident_id: str, delay_s: float) -> None:
        """Send the incident's pending prediction after ``delay_s``, and the next ones while
        they come, one every ``prediction_interval_s`` (see :meth:`_prediction_due`)."""
        try:
            while True:
                await asyncio.sleep(max(0.0, delay_s))
                prediction = self._prediction_pending.pop(incident_id, None)
                if prediction is None:
                    # no await between this test and the ``finally`` below: a prediction that
                    # comes meanwhile finds no sender registered and starts one
                    return
                info = await self.state.get_incident(incident_id)
                if info is None or info.get("closed_at"):
                    return
                self._prediction_sent[incident_id] = time.monotonic()
                message = await self._prediction_message(incident_id, prediction)
                if message is not None:
                    async with self.state.lock(incident_id):  # the view: one writer at a time
                        info = await self.state.get_incident(incident_id)
                        if info is None or info.get("closed_at"):
                            return
                        view: Json = dict(await self.state.get_view(incident_id) or {})
                        view["prediction"] = message["geojson"]
                        await self.state.put_view(incident_id, view)
                        crew_geojson = message.pop("crew_geojson", None)
                        await self._publish_op(self.communes_of(info), self._wire(message))
                        if crew_geojson is not None:  # the tablets' lighter collection
                            message = dict(message, geojson=crew_geojson)
                        await self._push_to_crews(incident_id, [self._wire(message)])
                delay_s = self.prediction_interval_s
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sending the prediction of %s failed", incident_id)
        finally:
            if self._prediction_flush.get(incident_id) is asyncio.current_task():
                self._prediction_flush.pop(incident_id, None)

    def _wire(self, message: Json) -> Json:
        """A ``prediction`` message for the bus: its GeoJSON serialized once, for the consoles
        and the tablets alike (in-process bus); parsed back for a bus that serializes events
        itself (Redis)."""
        geojson = message["geojson"]
        if isinstance(self.bus, InProcessBus):
            if isinstance(geojson, Encoded):
                return message
            return dict(message, geojson=Encoded(dumps(geojson)))
        return dict(message, geojson=json.loads(geojson)) if isinstance(geojson, str) else message

    def _forget_prediction(self, incident_id: str) -> None:
        self._prediction_sent.pop(incident_id, None)
        self._prediction_pending.pop(incident_id, None)
        task = self._prediction_flush.pop(incident_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _push_to_crews(self, incident_id: str, messages: list[Json]) -> None:
        """The latest track / prediction to every crew holding a delivered suggestion for the
        incident, outside the crew stream (no ``seq``: latest state, not history). One event
        per message for all those crews: each worker serializes it once for all its tablets."""
        crews = sorted(
            {s["crew_id"] for s in await self.state.open_suggestions(incident_id) if s["state"] in DELIVERED}
        )
        if not crews:
            return
        sent_at = self.now().isoformat()
        for message in messages:
            await self.bus.publish(
                {"kind": "crews_direct", "crew_ids": crews, "message": dict(message, sent_at=sent_at)}
            )

    async def _mode(self, info: Json) -> m.DispatchMode:
        commune = info.get("commune")
        if commune:
            mode = (await self.state.modes()).get(commune)
            if mode:
                return m.DispatchMode(mode)
        return self.default_mode

    async def _apply_plan(
        self,
        info: Json,
        plan: PlanLike,
        *,
        received_ns: int | None,
        publish: bool = True,
        sighting_id: str | None = None,
        sighting_ids: Sequence[str] | None = None,
    ) -> Json:
        """Turn a plan into suggestion states and crews' messages (caller holds the incident's
        lock); returns the consoles' ``plan`` summary, published here unless ``publish`` is false.
        ``sighting_id``: the sighting this plan answers, named in the crews' messages;
        ``sighting_ids``: all the sightings it answers (a batch's, ``sighting_id`` last)."""
        incident_id = info["incident_id"]
        self._planned_at[incident_id] = time.monotonic()
        communes = self.communes_of(info)
        mode = await self._mode(info)
        current = {
            s["crew_id"]: s for s in await self.state.open_suggestions(incident_id) if s["state"] in ACTIVE
        }
        planned: set[str] = set()
        bodies: dict[str, Json] = {}  # the plan's suggestions as the operator sees them
        ended: list[str] = []  # suggestions no longer in force
        for sug in plan.suggestions:
            planned.add(sug.crew_id)
            old = current.get(sug.crew_id)
            if old is not None and old["suggestion_id"] == sug.suggestion_id:
                bodies[sug.suggestion_id] = _public(old)
                continue  # the same suggestion kept by the planner
            same_target = old is not None and int(old["target_node"]) == int(sug.target_node)
            if old is not None and old["state"] in DELIVERED and same_target:
                state = m.SuggestionState(old["state"])
            elif mode is m.DispatchMode.approval:
                state = m.SuggestionState.pending_approval
            else:
                state = m.SuggestionState.sent
            body = suggestion_body(sug, state)
            body["_communes"] = communes
            old_delivered = old is not None and old["state"] in DELIVERED
            if old is not None:
                old["state"] = "superseded"
                old["_delivered"] = old_delivered or bool(old.get("_delivered"))
                await self.state.put_suggestion(old)
                ended.append(old["suggestion_id"])
            await self.state.put_suggestion(body)
            public = _public(body)
            bodies[sug.suggestion_id] = public
            if state is m.SuggestionState.pending_approval:
                if old is not None and old_delivered:  # the crew must not keep acting on the old one
                    await self._tell_retracted(old, f"new target awaiting approval (plan v{plan.version})")
                continue
            if old is not None and old_delivered:
                message: Json = {
                    "type": "suggestion_update",
                    "expires_at": public["expires_at"],
                    "replaces": old["suggestion_id"],
                    "suggestion": public,
                }
            else:
                message = {"type": "suggestion", "expires_at": public["expires_at"], "suggestion": public}
            if sighting_id is not None:
                message["sighting_id"] = sighting_id
                message["sighting_ids"] = list(sighting_ids or [sighting_id])
            await self._to_crew(sug.crew_id, message, received_ns=received_ns)
            self._audit(
                SYSTEM,
                "suggestion_issued",
                incident_id=incident_id,
                commune=info.get("commune"),
                payload=public,
            )
        for crew_id, old in current.items():
            if crew_id not in planned:
                await self._retract(old, f"superseded by plan v{plan.version}", publish=False)
                ended.append(old["suggestion_id"])
        summary = {
            "type": "plan",
            "incident_id": incident_id,
            "version": int(plan.version),
            "at": plan.at.isoformat(),
            "coverage_probability": float(plan.coverage_probability),
            "suggestion_ids": [s.suggestion_id for s in plan.suggestions],
            "suggestions": [bodies[s.suggestion_id] for s in plan.suggestions if s.suggestion_id in bodies],
            "ended": ended,
            "holds": list(plan.holds),
            "dispatch_mode": mode.value,
        }
        if publish:
            await self._publish_op(communes, summary)
        return summary

    async def _retract(self, suggestion: Json, reason: str, *, publish: bool = True) -> None:
        delivered = suggestion["state"] in DELIVERED
        suggestion["state"] = "retracted"
        suggestion["_delivered"] = delivered or bool(suggestion.get("_delivered"))
        await self.state.put_suggestion(suggestion)
        if publish:
            communes = suggestion.get("_communes", [])
            await self._publish_op(communes, {"type": "suggestion", "suggestion": _public(suggestion)})
        if delivered:
            await self._tell_retracted(suggestion, reason)

    async def _tell_retracted(self, suggestion: Json, reason: str) -> None:
        await self._to_crew(
            suggestion["crew_id"],
            {
                "type": "suggestion_retracted",
                "suggestion_id": suggestion["suggestion_id"],
                "incident_id": suggestion["incident_id"],
                "crew_id": suggestion["crew_id"],
                "reason": reason,
            },
        )

    # -----------------------------------------------------------------------------------------
    # Publishing

    async def _to_crew(self, crew_id: str, message: Json, *, received_ns: int | None = None) -> None:
        message = dict(message, sent_at=self.now().isoformat())
        stamped = await self.state.crew_append(crew_id, message)
        self.metrics.crew_messages.inc()
        event: Json = {"kind": "crew", "crew_id": crew_id, "message": stamped}
        if received_ns is not None:
            event["received_ns"] = received_ns
        await self.bus.publish(event)

    async def _publish_op(self, communes: list[str] | None, message: Json) -> None:
        await self.bus.publish({"kind": "op", "communes": communes, "message": message})

    async def handle_event(self, event: Json) -> None:
        """Bus listener: route an event to this worker's connections."""
        kind = event.get("kind")
        if kind == "crew":
            self.hub.to_crew(str(event["crew_id"]), dict(event["message"]))
            received_ns = event.get("received_ns")
            if received_ns is not None:
                self.metrics.sighting_to_crew.observe((_epoch_ns() - int(received_ns)) / 1e9)
        elif kind == "op":
            self.hub.to_operators(event.get("communes"), dict(event["message"]))
        elif kind == "crews_direct":
            self.hub.to_crews_direct([str(c) for c in event["crew_ids"]], dict(event["message"]))
        elif kind == "crew_direct":  # one crew (from a worker of an earlier version)
            self.hub.to_crew_direct(str(event["crew_id"]), dict(event["message"]))

    # -----------------------------------------------------------------------------------------
    # Crews

    async def report_crew(
        self,
        crew_id: str,
        *,
        lon: float | None,
        lat: float | None,
        heading_deg: float | None,
        status: m.CrewStatusName | None,
        commune: str | None,
        actor: Actor,
        speed_factor: float | None = None,
    ) -> Json:
        """A crew's position and/or status (REST or tablet). ``speed_factor`` (legal speed ×
        factor, for the crew's ETAs) is kept until the crew sends another; without one the
        service's ``crew_speed_factor`` applies."""
        old = await self.state.get_crew(crew_id)
        if old is None and (lon is None or lat is None):
            raise ServiceError(404, m.ErrorCode.unknown_crew, f"crew {crew_id!r} has no position yet")
        crew: Json = dict(old or {})
        crew["crew_id"] = crew_id
        if lon is not None and lat is not None:
            pos = self.snapper.snap(lon, lat, heading_deg=heading_deg)
            crew.update(lon=lon, lat=lat, heading_deg=heading_deg, _edge=pos.edge, _offset_m=pos.offset_m)
        if status is not None:
            crew["status"] = status.value
        crew.setdefault("status", m.CrewStatusName.available.value)
        if speed_factor is not None:
            if not speed_factor > 0:
                raise ServiceError(
                    422, m.ErrorCode.invalid_message, f"crew {crew_id!r}: speed_factor must be > 0"
                )
            crew["_speed_factor"] = float(speed_factor)
        if commune is not None:
            crew["commune"] = commune
        elif "commune" not in crew and actor.communes is not None and len(actor.communes) == 1:
            crew["commune"] = next(iter(actor.communes))
        crew.setdefault("commune", None)
        crew["updated_at"] = self.now().isoformat()
        crew.setdefault("heading_deg", None)
        await self.state.put_crew(crew)
        public = _public_crew(crew)
        if status is not None and (old is None or old.get("status") != status.value):
            self._audit(
                actor,
                "crew_state",
                commune=crew.get("commune"),
                payload={"crew_id": crew_id, "status": status.value},
            )
        await self._publish_op(
            [crew["commune"]] if crew.get("commune") else [], {"type": "crew", "crew": public}
        )
        return public

    async def crew_snapshot(self, crew_id: str) -> list[Json]:
        """The crew's current suggestions: delivered and not expired (never an expired one)."""
        now = self.now()
        return [
            _public(s)
            for s in await self._open_suggestions(await self.state.incidents())
            if s["crew_id"] == crew_id
            and s["state"] in DELIVERED
            and datetime.fromisoformat(s["expires_at"]) > now
        ]

    async def _open_suggestions(self, incidents: Sequence[Json]) -> list[Json]:
        """The open suggestions of ``incidents`` (a closed incident has none): a snapshot reads
        these, never every suggestion the server has kept."""
        out: list[Json] = []
        for info in incidents:
            if not info.get("closed_at"):
                out.extend(await self.state.open_suggestions(info["incident_id"]))
        return out

    async def operator_snapshot(self, actor: Actor) -> Json:
        now = self.now()
        incidents = [i for i in await self.state.incidents() if self._visible(actor, self.communes_of(i))]
        suggestions = [
            _public(s)
            for s in await self._open_suggestions(incidents)
            if s["state"] in ACTIVE and datetime.fromisoformat(s["expires_at"]) > now
        ]
        crews = [
            _public_crew(c)
            for c in await self.state.crews()
            if "lon" in c and self._visible(actor, [c["commune"]] if c.get("commune") else [])
        ]
        return {"incidents": [_public(i) for i in incidents], "suggestions": suggestions, "crews": crews}

    @staticmethod
    def _visible(actor: Actor, communes: list[str]) -> bool:
        return actor.communes is None or bool(actor.communes.intersection(communes))

    async def _suggestion_for(self, suggestion_id: str, actor: Actor) -> Json:
        s = await self.state.get_suggestion(suggestion_id)
        if s is None:
            raise ServiceError(404, m.ErrorCode.unknown_suggestion, f"unknown suggestion {suggestion_id!r}")
        if actor.crew_id is not None and s["crew_id"] != actor.crew_id:
            raise ServiceError(404, m.ErrorCode.unknown_suggestion, f"unknown suggestion {suggestion_id!r}")
        if actor.crew_id is None and not self._visible(actor, s.get("_communes", [])):
            raise ServiceError(404, m.ErrorCode.unknown_suggestion, f"unknown suggestion {suggestion_id!r}")
        return s

    async def crew_decision(
        self,
        actor: Actor,
        decision: str,
        suggestion_id: str | None,
        *,
        reason: str | None = None,
        incident_id: str | None = None,
    ) -> Json | None:
        """accept / decline / in_position / contact from a tablet."""
        s: Json | None = None
        if suggestion_id is not None:
            s = await self._suggestion_for(suggestion_id, actor)
            incident_id = s["incident_id"]
            if decision in ("accept", "in_position"):
                if s["state"] not in DELIVERED:
                    raise ServiceError(
                        409, m.ErrorCode.unknown_suggestion, f"suggestion {suggestion_id!r} is {s['state']}"
                    )
                if datetime.fromisoformat(s["expires_at"]) <= self.now():
                    raise ServiceError(
                        409, m.ErrorCode.suggestion_expired, f"suggestion {suggestion_id!r} has expired"
                    )
        info = await self.state.get_incident(incident_id) if incident_id else None
        communes = self.communes_of(info) if info else []
        declined_now = False
        if s is not None and decision in ("accept", "decline", "in_position"):
            async with self.state.lock(s["incident_id"]):
                s = await self._suggestion_for(s["suggestion_id"], actor)
                if decision != "decline" and s["state"] not in DELIVERED:  # ended while we waited
                    raise ServiceError(
                        409, m.ErrorCode.unknown_suggestion, f"suggestion {suggestion_id!r} is {s['state']}"
                    )
                declined_now = decision == "decline" and s["state"] != "declined"
                s["state"] = {"accept": "accepted", "decline": "declined", "in_position": "in_position"}[
                    decision
                ]
                if declined_now:
                    s["_declined_at"] = self.now().isoformat()
                    s["_decline_reason"] = reason or ""
                await self.state.put_suggestion(s)
            await self._publish_op(communes, {"type": "suggestion", "suggestion": _public(s)})
        self._audit(
            actor,
            "crew_decision",
            incident_id=incident_id,
            commune=info.get("commune") if info else None,
            payload={"decision": decision, "suggestion_id": suggestion_id, "crew_id": actor.crew_id},
            reason=reason,
        )
        await self._publish_op(
            communes,
            {
                "type": "decision",
                "actor": actor.subject,
                "role": actor.role,
                "decision": decision,
                "suggestion_id": suggestion_id,
                "incident_id": incident_id,
                "crew_id": actor.crew_id,
                "reason": reason,
            },
        )
        if decision == "decline" and info is not None and s is not None:
            replanned = False
            if declined_now:
                async with self.state.lock(s["incident_id"]):
                    info = await self.state.get_incident(s["incident_id"])
                    if info is not None and not info.get("closed_at"):
                        replanned = await self._decline_and_replan(info, s)
            if not replanned and info is not None:
                await self.replan(info["incident_id"])
        return None if s is None else _public(s)

    async def _decline_and_replan(self, info: Json, s: Json) -> bool:
        """Give a fresh decline to the core and publish the plan it makes (caller holds the
        incident's lock and has stored the declined suggestion). Returns whether a plan went out."""
        incident_id = info["incident_id"]
        key = (str(s["crew_id"]), int(s["target_node"]))
        fresh = key not in self._declines.setdefault(incident_id, set())
        self._declines[incident_id].add(key)  # given below, after the ones it has not seen
        try:
            await self._sync(info)
        except BaseException:
            if fresh:
                self._declines[incident_id].discard(key)  # never given: a later sync gives it
            raise
        if not fresh:
            return False
        plan = await self._core_decline(s)  # the core re-plans at once
        if plan is None:
            return False
        await self._publish_plan(info, plan)
        return True

    async def _publish_plan(self, info: Json, plan: PlanLike) -> None:
        """Record a plan made without a sighting (a decline, time passing) as the incident's
        current one and send it (caller holds the incident's lock)."""
        incident_id = info["incident_id"]
        info["plan_version"] = int(plan.version)
        await self.state.put_incident(info)
        view = dict(await self.state.get_view(incident_id) or {})
        view["plan"] = await self._apply_plan(info, plan, received_ns=None)
        await self.state.put_view(incident_id, view)

    async def replan(
        self, incident_id: str, *, skip_unchanged: bool = False, at: datetime | None = None
    ) -> bool:
        """Ask the core for a new plan now (after a decline, an opening with an origin, time
        advancing). With ``skip_unchanged`` (time advancing, nothing new): an incident with an
        operator-modified suggestion in force is left alone (only new information overrides an
        operator's choice), and a plan that sends the same crews to the same crossings as the
        suggestions in force, none of which expires within ``2 * replan_s``, is not published
        (no churn on the tablets). Returns whether a plan was published."""
        async with self.state.lock(incident_id):
            info = await self.incident(incident_id)
            if info.get("closed_at"):
                return False
            await self._sync(info)
            if self._applied.get(incident_id, 0) == 0 and not info.get("_origin"):
                return False  # nothing to plan from yet
            active = [s for s in await self.state.open_suggestions(incident_id) if s["state"] in ACTIVE]
            if skip_unchanged and any(s.get("_modified") for s in active):
                return False
            await self._sync_crews(at)
            at = max(at or self.now(), datetime.fromisoformat(info["opened_at"]))
            try:
                # time passing can wait for the sightings' calls; other re-plans cannot
                priority = DEFERRED if skip_unchanged else URGENT
                plan = await self._core(
                    self.coordinator.replan, incident_id, at, priority=priority, promote_key=incident_id
                )
            except NoBeliefError:
                return False
            if plan is None:
                return False
            if skip_unchanged:
                self.periodic_replans += 1
            if skip_unchanged and _same_assignment(plan, active, at, 2 * self.replan_s):
                return False
            await self._publish_plan(info, plan)
            return True

    async def tick(self, *, force: bool = False) -> int:
        """Re-plan the open incidents that have a position when ``replan_s`` has passed since
        the last tick (the offline simulator's guidance re-plans every 10 s of simulated time
        as crews move and the suspect's prediction ages). On the wall clock (``force`` false)
        a tick only plans when some crew moved or changed status since the last one: with
        nothing new the plan would be the same. Returns the number of plans published."""
        now = self.now()
        if self.replan_s <= 0:
            return 0
        if self._ticked_at is not None and (now - self._ticked_at).total_seconds() < self.replan_s:
            return 0
        version, _status_version = await self.state.crew_versions()
        moved = version != self._ticked_crew_version
        if not force and not moved and not self._tick_deferred:
            self._ticked_at = now
            return 0
        deferred, self._tick_deferred = self._tick_deferred, set()
        self._ticked_at, self._ticked_crew_version = now, version
        # The crews' positions first (one push, no re-plan), then each incident is re-planned
        # in its own core call, so a sighting waits behind one incident's plan at most.
        await self._sync_crews(now, positions=True, due=True)
        published = 0
        fresh_before = time.monotonic() - self.replan_s
        for info in await self.state.incidents():
            incident_id = info["incident_id"]
            if info.get("closed_at") or not (info.get("_origin") or info.get("n_sightings")):
                continue
            if not force and not moved and incident_id not in deferred:
                continue  # it has seen the crews as they are (re-planned at an earlier tick)
            if not force and self._planned_at.get(incident_id, -math.inf) > fresh_before:
                # planned (on a sighting, a decision) within the interval: time has not passed
                # for it; re-planning would make sightings of it wait behind the re-plan. The
                # next tick looks at it again (this tick's crews' move is not seen by it), and
                # at it alone when no crew moved since.
                self._tick_deferred.add(incident_id)
                continue
            try:
                if await self.replan(incident_id, skip_unchanged=True, at=now):
                    published += 1
            except ServiceError:
                continue  # closed or purged meanwhile
            except Exception:
                log.exception("periodic re-plan of %s failed", incident_id)
        self.periodic_plans += published
        return published

    # -----------------------------------------------------------------------------------------
    # Operators

    async def operator_decision(self, actor: Actor, msg: m.ApproveMsg | m.ModifyMsg | m.RetractMsg) -> Json:
        s = await self._suggestion_for(msg.suggestion_id, actor)
        incident_id = s["incident_id"]
        reason: str | None = None
        async with self.state.lock(incident_id):
            s = await self._suggestion_for(msg.suggestion_id, actor)
            if s["state"] not in ACTIVE:
                raise ServiceError(
                    409, m.ErrorCode.unknown_suggestion, f"suggestion {msg.suggestion_id!r} is {s['state']}"
                )
            if isinstance(msg, m.ApproveMsg):
                if datetime.fromisoformat(s["expires_at"]) <= self.now():
                    raise ServiceError(
                        409, m.ErrorCode.suggestion_expired, f"suggestion {msg.suggestion_id!r} has expired"
                    )
                if s["state"] == "pending_approval":
                    s["state"] = "sent"
                    await self.state.put_suggestion(s)
                    public = _public(s)
                    await self._to_crew(
                        s["crew_id"],
                        {"type": "suggestion", "expires_at": public["expires_at"], "suggestion": public},
                    )
                    self._audit(SYSTEM, "suggestion_issued", incident_id=incident_id, payload=public)
            elif isinstance(msg, m.RetractMsg):
                reason = msg.reason
                await self._retract(s, msg.reason)
            else:
                s = await self._modify(s, msg)
        self._audit(
            actor,
            "operator_decision",
            incident_id=incident_id,
            payload=msg.model_dump(mode="json"),
            reason=reason,
        )
        communes = s.get("_communes", [])
        await self._publish_op(communes, {"type": "suggestion", "suggestion": _public(s)})
        await self._publish_op(
            communes,
            {
                "type": "decision",
                "actor": actor.subject,
                "role": actor.role,
                "decision": msg.type,
                "suggestion_id": msg.suggestion_id,
                "incident_id": incident_id,
                "crew_id": s["crew_id"],
                "reason": reason,
            },
        )
        return _public(s)

    async def _modify(self, s: Json, msg: m.ModifyMsg) -> Json:
        new = dict(s)
        n = int(s.get("_modified", 0)) + 1
        base = str(s.get("_base_id") or s["suggestion_id"])
        new["suggestion_id"] = f"{base}~m{n}"  # a valid SuggestionId, never a planner's id
        new["_base_id"] = base
        new["_modified"] = n
        if msg.crew_id is not None:
            if await self.state.get_crew(msg.crew_id) is None:
                raise ServiceError(404, m.ErrorCode.unknown_crew, f"unknown crew {msg.crew_id!r}")
            new["crew_id"] = msg.crew_id
        node = int(s["target_node"])
        if msg.lon is not None and msg.lat is not None:
            pos = self.snapper.snap(msg.lon, msg.lat)
            node = int(self.city.graph.edge_v[pos.edge])
            new["reason"] = f"Cible choisie par l'opérateur ; avant : {s['reason']}"[:500]
        crew = await self.state.get_crew(new["crew_id"])
        if crew is not None and "_edge" in crew:
            at = self.now()
            position = EdgePosition(int(crew["_edge"]), float(crew["_offset_m"]))
            if hasattr(self.coordinator, "evaluate_target"):  # the core in its own process
                evaluate = self.coordinator.evaluate_target
                evaluation = await self._core(evaluate, s["incident_id"], position, node, at)
            else:
                evaluation = await self._core(
                    evaluate_target, self.coordinator, self.city, s["incident_id"], position, node, at
                )
            new.update(evaluation)
        elif msg.lon is not None and msg.lat is not None:  # no crew position: the target only
            lon, lat = self.city.graph.node_lonlat[node]
            new.update(lon=float(lon), lat=float(lat), target_node=node, route_lonlat=[], turns=[])
        new["state"] = "sent"
        delivered = s["state"] in DELIVERED
        s["state"] = "superseded"
        s["_delivered"] = delivered or bool(s.get("_delivered"))
        await self.state.put_suggestion(s)
        await self.state.put_suggestion(new)
        await self._publish_op(s.get("_communes", []), {"type": "suggestion", "suggestion": _public(s)})
        public = _public(new)
        if delivered and s["crew_id"] == new["crew_id"]:
            await self._to_crew(
                new["crew_id"],
                {
                    "type": "suggestion_update",
                    "expires_at": public["expires_at"],
                    "replaces": s["suggestion_id"],
                    "suggestion": public,
                },
            )
        else:
            if delivered:
                await self._tell_retracted(s, "reassigned by operator")
            await self._to_crew(
                new["crew_id"],
                {"type": "suggestion", "expires_at": public["expires_at"], "suggestion": public},
            )
        self._audit(SYSTEM, "suggestion_issued", incident_id=new["incident_id"], payload=public)
        return new

    async def set_mode(self, commune: str, mode: m.DispatchMode, actor: Actor) -> None:
        await self.state.set_mode(commune, mode.value)
        self._audit(actor, "dispatch_mode", commune=commune, payload={"mode": mode.value})

    # -----------------------------------------------------------------------------------------
    # Retention

    async def purge_incidents(self, commune: str, before: datetime, keep: frozenset[str]) -> int:
        """Drop the incidents of home commune ``commune`` whose last activity (closing, last
        sighting, opening) is older than ``before``, except ``keep`` (legal holds)."""
        rows = 0
        for info in await self.state.incidents():
            incident_id = info["incident_id"]
            if info.get("commune") != commune or incident_id in keep:
                continue
            last = info.get("closed_at") or info.get("_last_observed_at") or info["opened_at"]
            if datetime.fromisoformat(last) >= before:
                continue
            async with self.state.lock(incident_id):
                if incident_id in self._applied:
                    with contextlib.suppress(Exception):
                        await self._core(self.coordinator.close_incident, incident_id)
                    self._applied.pop(incident_id, None)
                    self._seen.pop(incident_id, None)
                self._declines.pop(incident_id, None)
                self._forget_prediction(incident_id)
                self._planned_at.pop(incident_id, None)
                self._tick_deferred.discard(incident_id)
                rows += await self.state.drop_incident(incident_id)
        return rows

    # -----------------------------------------------------------------------------------------
    # Views

    async def incident_state(self, incident_id: str) -> Json:
        """Track belief, prediction and suggestions of an incident as GeoJSON feature collections."""
        info = await self.incident(incident_id)
        view = await self.state.get_view(incident_id) or {}
        now = self.now()
        features: list[Json] = []
        track = view.get("track")
        if track:
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [track["lon"], track["lat"]]},
                    "properties": {
                        "kind": "track",
                        **{k: v for k, v in track.items() if k not in ("lon", "lat", "type")},
                    },
                }
            )
        for s in await self.state.open_suggestions(incident_id):
            if s["state"] not in ACTIVE:
                continue
            if datetime.fromisoformat(s["expires_at"]) <= now:
                continue
            props = {k: v for k, v in _public(s).items() if k not in ("lon", "lat", "route_lonlat")}
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [s["lon"], s["lat"]]},
                    "properties": {"kind": "suggestion", **props},
                }
            )
            if s.get("route_lonlat"):
                features.append(
                    {
                        "type": "Feature",
                        "geometry": {"type": "LineString", "coordinates": s["route_lonlat"]},
                        "properties": {
                            "kind": "crew_route",
                            "suggestion_id": s["suggestion_id"],
                            "crew_id": s["crew_id"],
                        },
                    }
                )
        return {
            "incident": _public(info),
            "track": {"type": "FeatureCollection", "features": features},
            "prediction": _parsed(view.get("prediction")) or {"type": "FeatureCollection", "features": []},
            "plan": view.get("plan"),
        }

    def validate_sighting(self, raw: Any) -> Sighting:
        try:
            return Sighting.model_validate(raw)
        except ValidationError:
            raise


def evaluate_target(
    coordinator: Any, city: City, incident_id: str, crew_at: EdgePosition, node: int, at: datetime
) -> Json:
    """Route, street names, turns, crew ETA and the suspect's ETAs at an operator-chosen
    crossing (runs on the core thread, or in the core process). The arithmetic is the core's:
    map_data.routing for the crew's fastest path, the planner's street names and turn
    instructions, the current prediction's per-node ETA arrays shifted to ``at`` exactly as the
    planner does.
    (The Coordinator has no method for this yet; see the server's report.)"""
    g = city.graph
    times = routing.times_from_positions(g, [crew_at])[0]
    head = int(g.edge_v[crew_at.edge])
    nodes = routing.shortest_path(g, head, node) if np.isfinite(times[node]) else []
    edges = [crew_at.edge, *routing.path_edges(g, nodes)] if nodes else []
    planner = getattr(coordinator, "planner", None)
    names: tuple[str, ...] = tuple(planner.street_names(node)) if planner is not None else ()
    turns: tuple[str, ...] = ()
    if edges:
        from guidance.planner import turn_instructions

        turns = turn_instructions(g, edges, names)
    crew_eta = float(times[node])
    earliest: float | None = None
    likely: float | None = None
    covered = 0.0
    state = getattr(coordinator, "state", None)
    prediction = None
    if state is not None:
        with contextlib.suppress(Exception):
            prediction = state(incident_id, at).prediction
    if prediction is not None:
        shift = (at - prediction.at).total_seconds()
        earliest = float(prediction.suspect_earliest_eta_s[node]) - shift
        likely = float(prediction.suspect_likely_eta_s[node]) - shift
        covered = float(prediction.pass_probability[node])

    def finite(x: float | None) -> float | None:
        return x if x is not None and math.isfinite(x) else None

    lon, lat = g.node_lonlat[node]
    return {
        "target_node": node,
        "lon": float(lon),
        "lat": float(lat),
        "street_names": list(names),
        "route_lonlat": [[a, b] for a, b in routing.path_lonlat(g, edges)] if edges else [],
        "turns": list(turns),
        "crew_eta_s": crew_eta if math.isfinite(crew_eta) else 0.0,
        "suspect_earliest_eta_s": finite(earliest),
        "suspect_likely_eta_s": finite(likely),
        "margin_s": finite(None if earliest is None else earliest - crew_eta),
        "probability_covered": covered,
    }


def ingest_batch(coordinator: Any, calls: Sequence[tuple[Sighting, dict[str, Any]]]) -> list[tuple[str, Any]]:
    """``coordinator.ingest(sighting, **kwargs)`` for each call, in order (on the core thread,
    or in the core process): for each, ``("ok", outcome)``, ``("refused", KeyError)`` (unknown
    camera or incident), ``("no_belief", NoBeliefError)`` (no plan at its time); another
    exception ends the batch as ``("error", exc)``, the later sightings not given."""
    out: list[tuple[str, Any]] = []
    for sighting, kwargs in calls:
        try:
            out.append(("ok", coordinator.ingest(sighting, **kwargs)))
        except KeyError as exc:
            out.append(("refused", exc))
        except NoBeliefError as exc:
            out.append(("no_belief", exc))
        except Exception as exc:
            out.append(("error", exc))
            break
    return out


def prediction_message(coordinator: Any, city: City, incident_id: str, at: datetime) -> Json | None:
    """``at`` and ``geojson`` (serialized: :class:`Encoded`, a string crosses the process pipe
    far cheaper than the nested lists) of the incident's latest prediction (the core process
    builds a ``prediction`` message's body with it); ``None`` when there is none."""
    with contextlib.suppress(Exception):
        latest = getattr(coordinator, "prediction", None)  # a stand-in core may lack it
        prediction = (
            latest(incident_id) if callable(latest) else coordinator.state(incident_id, at).prediction
        )
        if prediction is not None:
            geojson = _default_prediction_geojson(city)(prediction)
            return {
                "at": prediction.at.isoformat(),
                "geojson": Encoded(dumps(geojson)),
                "crew_geojson": Encoded(dumps(crew_prediction_geojson(geojson))),
            }
    return None


#: The tablets' prediction: the crossings the suspect passes with at least this probability,
#: at most :data:`CREW_MAX_CROSSINGS` of them (the most likely).
CREW_MIN_CROSSING_PROBABILITY = 0.1
CREW_MAX_CROSSINGS = 100
_CREW_CROSSING_PROPERTIES = ("kind", "probability", "likely_eta_s")


def crew_prediction_geojson(geojson: Json) -> Json:
    """The prediction the tablets get, compact for a car on mobile data: the likely routes
    (``route`` lines, as the consoles get them) and the crossings the suspect passes with
    probability at least :data:`CREW_MIN_CROSSING_PROBABILITY` (at most
    :data:`CREW_MAX_CROSSINGS`, the most likely; properties ``kind``, ``probability`` and
    ``likely_eta_s``). Not the ``position`` lines (the suspect's position at each horizon) nor
    the unlikely crossings, most of the collection's size, which the crew map does not draw
    (``web/js/crew.js``: it draws a crossing's circle by its probability, and the routes).
    The tablets of an incident receive a fraction of the consoles' bytes. A crossing without a
    ``probability`` is kept as it is."""
    features = geojson.get("features")
    if not isinstance(features, list):
        return geojson
    crossings: list[tuple[float, int, Json]] = []
    routes: list[Json] = []
    for i, f in enumerate(features):
        props = f.get("properties") or {}
        kind = props.get("kind")
        if kind == "route":
            routes.append(f)
        elif kind == "crossing":
            p = props.get("probability")
            if p is None:
                crossings.append((math.inf, i, f))
            elif p >= CREW_MIN_CROSSING_PROBABILITY:
                slim = {k: props[k] for k in _CREW_CROSSING_PROPERTIES if k in props}
                crossings.append(
                    (float(p), i, {"type": "Feature", "geometry": f.get("geometry"), "properties": slim})
                )
    if len(crossings) > CREW_MAX_CROSSINGS:
        crossings = sorted(crossings, key=lambda c: (-c[0], c[1]))[:CREW_MAX_CROSSINGS]
        crossings.sort(key=lambda c: c[1])  # in the collection's order
    return dict(geojson, features=[c[2] for c in crossings] + routes)


class IncidentStore:
    """The service's incident store as a :class:`serving.retention.PurgeableStore`. The purge
    job runs in a worker thread; the store's calls are made on the service's event loop."""

    name = "incidents"

    def __init__(self, service: DispatchService, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.loop = loop

    def purge_before(self, commune: str, before: datetime, keep_incidents: frozenset[str]) -> int:
        future = asyncio.run_coroutine_threadsafe(
            self.service.purge_incidents(commune, before, keep_incidents), self.loop
        )
        return future.result(timeout=600)


@dataclass(frozen=True, slots=True)
class _LateOutcome:
    plan: Any
    update: Any = None
    belief: Any = None
    prediction: Any = None


def _same_assignment(plan: PlanLike, active: Sequence[Json], at: datetime, fresh_s: float) -> bool:
    """Whether ``plan`` sends the same crews to the same crossings as the ``active`` suggestions,
    none of which expires within ``fresh_s`` of ``at``."""
    planned = {(s.crew_id, int(s.target_node)) for s in plan.suggestions}
    current = {(s["crew_id"], int(s["target_node"])) for s in active}
    if planned != current:
        return False
    return all((datetime.fromisoformat(s["expires_at"]) - at).total_seconds() > fresh_s for s in active)


def _parsed(value: Any) -> Any:
    """A view's value, parsed when it is kept serialized (a prediction's GeoJSON)."""
    return json.loads(value) if isinstance(value, str) else value


def _public(d: Json) -> Json:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def ingest_accepts(coordinator: Any, keyword: str) -> bool:
    """Whether ``coordinator.ingest`` takes ``keyword`` (``replan=False``: track now, plan
    later; ``plan_at``); a recording wrapper passes keywords through to the one it wraps."""
    import inspect

    target = coordinator
    while True:
        try:
            params = inspect.signature(target.ingest).parameters
        except (AttributeError, TypeError, ValueError):
            return False
        if keyword in params:
            return True
        inner = getattr(target, "inner", None)
        if inner is None or not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
        target = inner


def _epoch_ns() -> int:
    return time.time_ns()


def _default_crew_factory(crew: Json, position: EdgePosition) -> Any:
    from guidance.types import Crew, CrewStatus

    return Crew(
        crew_id=crew["crew_id"],
        position=position,
        heading_deg=crew.get("heading_deg"),
        status=CrewStatus(crew.get("status", "available")),
        commune=crew.get("commune"),
        speed_factor=float(crew.get("_speed_factor") or 1.0),
    )


def _default_prediction_geojson(city: City) -> Callable[[Any], dict[str, Any]]:
    try:
        fn = importlib.import_module("guidance.geojson").prediction_geojson
    except (ImportError, AttributeError):
        return lambda _prediction: {"type": "FeatureCollection", "features": []}

    def convert(prediction: Any) -> dict[str, Any]:
        out = fn(prediction, city.graph)
        return dict(out)

    return convert
