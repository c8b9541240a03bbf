"""The Cordon HTTP and websocket server: ``create_app(config) -> FastAPI``.

Thin by design: decode (pydantic models of :mod:`serving.messages`), authorise
(:mod:`serving.auth`), call :class:`serving.service.DispatchService` (which drives the core's
Coordinator), encode. Resources are built in the lifespan and kept on ``app.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import importlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from map_data.network_types import City
from serving import messages as m
from serving.asyncapi import asyncapi_document
from serving.audit import AuditSink
from serving.auth import (
    ALL_COMMUNES,
    Action,
    Authenticator,
    AuthError,
    InMemoryRevocationList,
    NotVisible,
    Policy,
    Principal,
    Resource,
    Role,
    StaticKeys,
    TokenIssuer,
    check,
    token_from_request,
)
from serving.bus import Bus, InProcessBus, RedisBus
from serving.clock import Clock, SimulationClock, WallClock
from serving.config import ServerConfig
from serving.hub import Connection, Hub
from serving.limits import BodySizeLimitMiddleware, RateLimiter, RateLimitMiddleware
from serving.metrics import Metrics, freeze_startup_heap
from serving.service import (
    Actor,
    CoordinatorLike,
    DispatchService,
    IncidentStore,
    MemoryAudit,
    ServiceError,
)
from serving.simulation import SimRun, SimulationError, Simulations, check_speed
from serving.state import MemoryState, RedisState, StateStore
from tracking.types import Sighting, SourceKind

log = logging.getLogger("cordon.server")
_Msg = TypeVar("_Msg")

ROOT = Path(__file__).resolve().parent
CoordinatorFactory = Callable[[City], CoordinatorLike]


def _default_coordinator(city: City) -> CoordinatorLike:
    coordinator: CoordinatorLike = importlib.import_module("guidance.coordinator").Coordinator(city)
    # the compiled kernels loaded now, not by the first sighting (~0.3 s from the disk cache)
    importlib.import_module("guidance.warmup").warm_up_kernels()
    return coordinator


def cameras_version(city: City) -> str:
    """A hash of the camera set: ids, positions, view direction, field of view, range, commune
    and the edge spans each sees (two servers with the same hash see the same network)."""
    h = hashlib.sha256()
    cams = city.cameras
    for cid in sorted(cams.cameras):
        c = cams.cameras[cid]
        h.update(
            f"{cid}|{c.lon:.7f}|{c.lat:.7f}|{c.heading_deg}|{c.fov_deg}|{c.range_m}|{c.commune}\n".encode()
        )
        view = cams.views.get(cid)
        for span in view.spans if view is not None else ():
            h.update(f" {span.edge}:{span.start_m:.2f}:{span.end_m:.2f}\n".encode())
    return h.hexdigest()[:16]


def _given(city: City) -> City:
    """A city given to :func:`create_app`, for a core process (it pickles the city)."""
    return city


def load_city_for(config: ServerConfig) -> City:
    """The configured map, or the embedded generated city."""
    if config.map_path is None:
        from map_data.city import default_city

        return default_city(n_crossings=config.n_crossings, seed=config.city_seed)
    from map_data.city import load_city

    return load_city(
        config.map_path,
        cameras_path=config.cameras_path,
        communes_path=config.communes_path,
        cache_dir=config.data_dir / "cache",
    )


def open_audit(config: ServerConfig) -> AuditSink:
    if config.audit_db == "memory":
        return MemoryAudit()
    from serving.audit import open_audit_log

    url = config.audit_db
    if url is None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        url = str(config.data_dir / "audit.sqlite")
    log_: AuditSink = open_audit_log(url)
    return log_


class BufferedBodyLimit(BodySizeLimitMiddleware):
    """:class:`serving.limits.BodySizeLimitMiddleware`, reading the whole body (counted, at most
    ``max_body_bytes``) before the app sees it: FastAPI turns an exception raised while it reads
    the body into a 400, so a streamed body over the limit must be refused before the app runs."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > self.max_body_bytes:
                        await self._refuse(send)
                        return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _DeferredAppender:
    """An audit appender whose target (the service's queue) is set once the service exists."""

    def __init__(self) -> None:
        self.target: DispatchService | None = None

    def append(self, actor: str, role: str, action: str, **kwargs: Any) -> None:
        if self.target is None:
            raise RuntimeError(f"audit record {action!r} before the service exists")
        self.target.append(actor, role, action, **kwargs)


class Principals:
    """Authentication and the demo token issuer of one app."""

    def __init__(self, config: ServerConfig) -> None:
        self.issuer = TokenIssuer(
            issuer=config.issuer, audience=config.audience, key=config.token_secret, algorithm="HS256"
        )
        keys = StaticKeys(
            keys={self.issuer.key_id: config.token_secret}, algorithms={self.issuer.key_id: "HS256"}
        )
        revocations = InMemoryRevocationList()
        self.authenticator = Authenticator(
            keys=keys,
            issuer=config.issuer,
            audience=config.audience,
            revocations=revocations,
            clock=WallClock().now,  # tokens live in wall time, even under a simulation clock
            tenant=config.tenant,  # a simulation token never reaches a live server (and vice versa)
        )
        # The simulated runs of /api/sim (their own world, never live data) take simulation tokens
        # (trainers) on every server; no other route accepts them on a live server.
        self.sim_authenticator = Authenticator(
            keys=keys,
            issuer=config.issuer,
            audience=config.audience,
            revocations=revocations,
            clock=WallClock().now,
            tenant="simulation",
        )
        self.policy = Policy()
        self.tenant = config.tenant

    def issue(
        self, role: Role, communes: list[str], *, crew_id: str | None = None, ttl_s: int = 12 * 3600
    ) -> str:
        names = "-".join("all" if c == ALL_COMMUNES else c for c in communes) or "none"
        subject = crew_id if crew_id else re.sub(r"[^A-Za-z0-9_.:@/-]", "_", f"{role.value}-{names}")
        return self.issuer.issue(
            subject[:128],
            role,
            communes,
            now=WallClock().now(),
            crew_id=crew_id,
            tenant="simulation" if role is Role.trainer else self.tenant,  # trainers: simulation only
            ttl_s=ttl_s,
        )

    def verify_any(self, token: str) -> Principal:
        """A token of this server's tenant, or a trainer's simulation token."""
        try:
            return self.authenticator.verify(token)
        except AuthError:
            return self.sim_authenticator.verify(token)


def actor_of(principal: Principal) -> Actor:
    return Actor(
        subject=principal.subject,
        role=principal.role.value,
        communes=None if principal.sees_all_communes() else frozenset(principal.communes),
        crew_id=principal.crew_id,
    )


def _error(
    status: int, code: m.ErrorCode, message: str, detail: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body = m.ErrorBody(code=code, message=message, detail=detail)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status)


_UNION_TAGS: dict[str, type] = {"Sighting": dict, "list[Sighting]": list}


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Errors with their field path; for a ``Sighting | list[Sighting]`` body only the errors of
    the branch the client meant (an object or an array), with the union's tag removed."""
    out = []
    body = getattr(exc, "body", None)
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if len(loc) > 1 and loc[0] == "body" and loc[1] in _UNION_TAGS:
            if not isinstance(body, _UNION_TAGS[loc[1]]):
                continue
            loc = [loc[0], *loc[2:]]
        out.append({"loc": loc, "msg": str(err.get("msg")), "type": str(err.get("type"))})
    return out


async def _principal_dep(request: Request) -> Principal:
    # async (a token check is microseconds of CPU): a sync dependency would cost a thread-pool
    # hop on every request, a third of the event loop's time under 50 sightings/s
    principals: Principals = request.app.state.principals
    try:
        token = token_from_request(request.headers.get("authorization"), None)
        return principals.authenticator.verify(token)
    except AuthError as exc:
        raise HTTPException(
            401, detail=f"invalid token: {exc.failure.value}", headers={"WWW-Authenticate": "Bearer"}
        ) from exc


async def _trainer_dep(request: Request) -> Principal:
    """A trainer's simulation-tenant token, allowed ``sim_control`` (403 otherwise)."""
    principals: Principals = request.app.state.principals
    try:
        token = token_from_request(request.headers.get("authorization"), None)
        principal = principals.sim_authenticator.verify(token)
    except AuthError as exc:
        raise HTTPException(
            401, detail=f"invalid token: {exc.failure.value}", headers={"WWW-Authenticate": "Bearer"}
        ) from exc
    if not principals.policy.allowed(principal, Action.sim_control):
        raise HTTPException(403, detail=f"role {principal.role.value} may not {Action.sim_control.value}")
    return principal


async def _service_dep(request: Request) -> DispatchService:
    service: DispatchService = request.app.state.service
    return service


Auth = Annotated[Principal, Depends(_principal_dep)]
Trainer = Annotated[Principal, Depends(_trainer_dep)]
Svc = Annotated[DispatchService, Depends(_service_dep)]


def create_app(
    config: ServerConfig | None = None,
    *,
    city: City | None = None,
    coordinator_factory: CoordinatorFactory | None = None,
    audit: AuditSink | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """Build the app; heavy resources (city, coordinator, bus, state) are made in the lifespan."""
    config = config or ServerConfig()
    principals = Principals(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_clock: Clock = clock or (SimulationClock() if config.clock == "simulation" else WallClock())
        the_city: City = city if city is not None else await asyncio.to_thread(load_city_for, config)
        the_audit: AuditSink = audit if audit is not None else await asyncio.to_thread(open_audit, config)
        recorder = _DeferredAppender()
        coordinator: CoordinatorLike
        if config.core_process:
            from serving.core_process import CoreProcess

            # the core on its own CPU: the Coordinator (and its audit recorder) in a child
            # process, which loads the same city; records come back to the service's queue
            coordinator = await asyncio.to_thread(
                CoreProcess,
                functools.partial(load_city_for, config) if city is None else functools.partial(_given, city),
                coordinator_factory or _default_coordinator,
                audit=recorder,
                clock=the_clock.now,
                record=config.record_core,
            )
        else:
            coordinator = (coordinator_factory or _default_coordinator)(the_city)
        if config.record_core and not config.core_process and hasattr(coordinator, "horizon_s"):
            from serving.audit_replay import RecordingCoordinator

            # every core call and new plan goes to the audit log, so ``cordon audit replay``
            # recomputes this server's plans; written through the service's audit queue
            coordinator = RecordingCoordinator(coordinator, recorder, clock=the_clock.now)  # type: ignore[arg-type]
        state: StateStore
        bus: Bus
        if config.redis_url:
            redis_state = RedisState.from_url(config.redis_url, prefix=config.redis_prefix)
            await redis_state.index_open_suggestions()  # state written before the open index
            state = redis_state
            bus = RedisBus.from_url(config.redis_url, consumer=config.worker_id, prefix=config.redis_prefix)
            bus.claim_idle_ms = config.claim_idle_ms
        else:
            state = MemoryState()
            bus = InProcessBus()
        metrics = Metrics()
        hub = Hub(
            queue_size=config.queue_size,
            now=lambda: the_clock.now().isoformat(),
            console_linger_s=config.console_linger_s,
        )
        service = DispatchService(
            city=the_city,
            coordinator=coordinator,
            state=state,
            bus=bus,
            hub=hub,
            clock=the_clock,
            audit=the_audit,
            metrics=metrics,
            worker_id=config.worker_id,
            default_mode=config.dispatch_mode,
            coalesce=config.coalesce,
            crew_speed_factor=config.crew_speed_factor,
            replan_s=config.replan_s,
            prediction_interval_s=config.prediction_interval_s,
        )
        recorder.target = service
        retention = None
        if callable(getattr(the_audit, "purge", None)) and callable(getattr(the_audit, "records", None)):
            from serving.retention import Retention

            retention = Retention(
                the_audit,  # type: ignore[arg-type]
                stores=[IncidentStore(service, asyncio.get_running_loop())],
                default_days=config.retention_default_days,
            )
        app.state.retention = retention
        app.state.simulations = Simulations(config.sim_scenarios_dir or ROOT / "sim" / "scenarios")
        app.state.config = config
        app.state.city = the_city
        app.state.cameras_version = cameras_version(the_city)
        app.state.service = service
        app.state.hub = hub
        app.state.metrics = metrics
        app.state.clock = the_clock
        app.state.principals = principals
        app.state.streets = None
        if config.demo and config.demo_crews > 0 and not config.redis_url:
            await _park_demo_crews(service, config.demo_crews)
        runner = asyncio.create_task(service.run(), name="cordon-service")
        background = [runner]
        if retention is not None and config.retention_interval_s > 0:
            purge = _purge_periodically(retention, the_clock, config.retention_interval_s)
            background.append(asyncio.create_task(purge, name="cordon-retention"))
        if config.replan_s > 0 and the_clock.name == "wall" and not config.redis_url:
            # one worker only: with several, each would re-plan (a Redis lease would fix that)
            service.positions_on_tick = True  # crews' moves reach the core at each tick
            ticks = _replan_periodically(service, config.replan_s)
            background.append(asyncio.create_task(ticks, name="cordon-replan"))
        if config.heartbeat_s > 0:
            beat = _heartbeats(hub, config.heartbeat_s)
            background.append(asyncio.create_task(beat, name="cordon-heartbeat"))
        stop_watching_gc = metrics.watch_gc()
        gc_thresholds = freeze_startup_heap()
        log.info(
            "cordon worker %s ready (bus=%s, state=%s, clock=%s)",
            config.worker_id,
            bus.name,
            state.name,
            the_clock.name,
        )
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await asyncio.to_thread(app.state.simulations.stop_all)
            await hub.close_all()
            service.shutdown()
            close_core = getattr(coordinator, "close", None)
            if config.core_process and close_core is not None:
                await asyncio.to_thread(close_core)
            await bus.close()
            await state.close()
            close = getattr(service.audit, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            stop_watching_gc()
            gc.unfreeze()  # an app stopped in a longer-lived process (tests) is collectable again
            gc.set_threshold(*gc_thresholds)

    app = FastAPI(
        title="Cordon",
        version="0.1.0",
        summary="Dispatch guidance for a CSU: sightings in, interception suggestions out.",
        lifespan=lifespan,
    )
    app.state.principals = principals

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        log.info("refused %s %s: %s %s", request.method, request.url.path, exc.code.value, exc.message)
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RedisError)
    async def redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        return _error(503, m.ErrorCode.unavailable, "state store unavailable; retry")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _validation_detail(exc)
        log.info("invalid body on %s %s: %s", request.method, request.url.path, detail)
        return _error(422, m.ErrorCode.invalid_message, "invalid request", detail)

    # 413 on a declared or streamed body above the limit; 429 + Retry-After per client address
    # (the outermost middleware: a flood is refused before its body is read).
    app.add_middleware(BufferedBodyLimit, max_body_bytes=config.max_body_bytes)
    if config.rate_per_s > 0:
        http_limiter = RateLimiter(
            rate_per_s=config.rate_per_s, burst=config.rate_burst, clock=time.monotonic
        )
        app.add_middleware(
            RateLimitMiddleware, limiter=http_limiter, exempt_paths=frozenset({"/api/health", "/metrics"})
        )
    ws_limiter = (
        RateLimiter(rate_per_s=config.ws_rate_per_s, burst=config.ws_rate_burst, clock=time.monotonic)
        if config.ws_rate_per_s > 0
        else None
    )

    def allow(principal: Principal, action: Action, resource: Resource | None = None) -> None:
        try:
            check(principal, action, resource, policy=principals.policy)
        except PermissionError as exc:
            raise HTTPException(403, detail=str(exc)) from exc
        except NotVisible as exc:
            raise ServiceError(404, m.ErrorCode.unknown_incident, "not found") from exc

    async def incident_resource(
        service: DispatchService, incident_id: str, principal: Principal, action: Action
    ) -> dict[str, Any]:
        try:
            info = await service.incident(incident_id)
        except ServiceError:
            allow(principal, action)
            raise
        communes = service.communes_of(info)
        resource = Resource(tenant=principals.tenant, communes=frozenset(communes))
        try:
            check(principal, action, resource, policy=principals.policy)
        except PermissionError as exc:
            raise HTTPException(403, detail=str(exc)) from exc
        except NotVisible as exc:
            raise ServiceError(
                404, m.ErrorCode.unknown_incident, f"unknown incident {incident_id!r}"
            ) from exc
        return info

    api = APIRouter(prefix="/api")

    @api.get("/health", response_model=m.Health)
    async def health(request: Request) -> m.Health:
        service: DispatchService = request.app.state.service
        ok = await service.state.ping() and bool(getattr(service.coordinator, "alive", True))
        return m.Health(
            status="ok" if ok else "degraded",
            bus=service.bus.name,
            state=service.state.name,
            worker_id=config.worker_id,
            clock=service.clock.name,
            now=service.now(),
            incidents=len(await service.state.incidents()) if ok else 0,
            connections=len(service.hub),
            graph_version=str(service.city.graph.version),
            cameras_version=request.app.state.cameras_version,
        )

    @api.post("/incidents", status_code=201, response_model=m.IncidentInfo)
    async def open_incident(body: m.IncidentOpen, principal: Auth, service: Svc) -> dict[str, Any]:
        allow(principal, Action.open_incident)
        actor = actor_of(principal)
        commune = body.commune
        if commune is not None:
            allow(
                principal,
                Action.open_incident,
                Resource(tenant=principals.tenant, communes=frozenset({commune})),
            )
        info = await service.open_incident(body, actor)
        return _public(info)

    @api.get("/incidents", response_model=list[m.IncidentInfo])
    async def list_incidents(principal: Auth, service: Svc) -> list[dict[str, Any]]:
        allow(principal, Action.read_incident)
        actor = actor_of(principal)
        return [
            _public(i)
            for i in await service.state.incidents()
            if actor.communes is None or actor.communes.intersection(service.communes_of(i))
        ]

    @api.get("/incidents/{incident_id}", response_model=m.IncidentInfo)
    async def get_incident(incident_id: str, principal: Auth, service: Svc) -> dict[str, Any]:
        return _public(await incident_resource(service, incident_id, principal, Action.read_incident))

    @api.post("/incidents/{incident_id}/close", response_model=m.IncidentInfo)
    async def close_incident(incident_id: str, principal: Auth, service: Svc) -> dict[str, Any]:
        await incident_resource(service, incident_id, principal, Action.close_incident)
        return _public(await service.close_incident(incident_id, actor_of(principal)))

    @api.post("/incidents/{incident_id}/share", response_model=m.IncidentInfo)
    async def share_incident(
        incident_id: str, body: m.IncidentShare, principal: Auth, service: Svc
    ) -> dict[str, Any]:
        await incident_resource(service, incident_id, principal, Action.share_incident)
        return _public(await service.share_incident(incident_id, body.communes, actor_of(principal)))

    def retention_of(request: Request) -> Any:
        retention = request.app.state.retention
        if retention is None:
            raise ServiceError(
                409, m.ErrorCode.unavailable, "legal holds need a durable audit log (--audit-db)"
            )
        return retention

    @api.post("/incidents/{incident_id}/hold", status_code=201, response_model=m.LegalHoldInfo)
    async def place_hold(
        incident_id: str, body: m.LegalHoldRequest, principal: Auth, service: Svc, request: Request
    ) -> m.LegalHoldInfo:
        """Supervisors: keep the incident beyond retention for a judicial procedure (audited)."""
        info = await incident_resource(service, incident_id, principal, Action.legal_hold)
        retention = retention_of(request)
        from serving.retention import RetentionError

        try:
            hold = await asyncio.to_thread(
                retention.place_hold,
                incident_id,
                body.procedure_reference,
                placed_by=principal.subject,
                role=principal.role.value,
                at=service.now(),
                commune=info.get("commune"),
            )
        except RetentionError as exc:
            raise ServiceError(409, m.ErrorCode.invalid_message, str(exc)) from exc
        return m.LegalHoldInfo(
            incident_id=hold.incident_id,
            procedure_reference=hold.procedure_reference,
            placed_by=hold.placed_by,
            placed_at=hold.placed_at,
            commune=hold.commune,
        )

    @api.delete("/incidents/{incident_id}/hold", status_code=204)
    async def release_hold(
        incident_id: str,
        reason: Annotated[str, Query(min_length=1, max_length=2000)],
        principal: Auth,
        service: Svc,
        request: Request,
    ) -> Response:
        """Supervisors: end a legal hold (audited, with a reason); the incident then ages out."""
        await incident_resource(service, incident_id, principal, Action.release_hold)
        retention = retention_of(request)
        from serving.retention import RetentionError

        try:
            await asyncio.to_thread(
                retention.release_hold,
                incident_id,
                released_by=principal.subject,
                role=principal.role.value,
                at=service.now(),
                reason=reason,
            )
        except RetentionError as exc:
            raise ServiceError(409, m.ErrorCode.invalid_message, str(exc)) from exc
        return Response(status_code=204)

    @api.get("/incidents/{incident_id}/state")
    async def incident_state(incident_id: str, principal: Auth, service: Svc) -> dict[str, Any]:
        """The incident's track belief, suggestions (GeoJSON), escape prediction (GeoJSON) and plan."""
        await incident_resource(service, incident_id, principal, Action.read_incident)
        return await service.incident_state(incident_id)

    @api.post(
        "/sightings",
        status_code=202,
        response_model=m.SightingAck | m.SightingBatchAck,
        responses={200: {"model": m.SightingAck, "description": "a duplicate (same source_event_id)"}},
    )
    async def post_sightings(
        principal: Auth,
        service: Svc,
        body: Annotated[Sighting | list[Sighting], Body()],
    ) -> JSONResponse:
        """One sighting, or a batch (a JSON array). Idempotent on ``source_event_id``."""
        allow(principal, Action.post_sighting)
        items = body if isinstance(body, list) else [body]
        if len(items) > 500:
            raise ServiceError(413, m.ErrorCode.too_large, f"batch of {len(items)} sightings (max 500)")
        for i, s in enumerate(items):  # every item checked before any is queued
            if (
                s.source_kind is SourceKind.simulation
                and principals.tenant != "simulation"
                and not config.demo
            ):
                raise ServiceError(
                    422, m.ErrorCode.invalid_message, f"item {i}: simulation sightings refused in live mode"
                )
            try:
                service.city.cameras.view(s.camera_id)
            except KeyError:
                where = f"item {i}: " if isinstance(body, list) else ""
                raise ServiceError(
                    422, m.ErrorCode.unknown_camera, f"{where}unknown camera {s.camera_id!r}"
                ) from None
            await incident_resource(service, s.incident_id, principal, Action.post_sighting)
        actor = actor_of(principal)
        acks = [await service.submit_sighting(s, actor) for s in items]
        if isinstance(body, list):
            return JSONResponse(m.SightingBatchAck(results=acks).model_dump(mode="json"), status_code=202)
        ack = acks[0]
        return JSONResponse(ack.model_dump(mode="json"), status_code=200 if ack.duplicate else 202)

    @api.put("/crews/{crew_id}", response_model=m.CrewBody)
    async def put_crew(
        crew_id: Annotated[str, FPath(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")],
        body: m.CrewReport,
        principal: Auth,
        service: Svc,
    ) -> dict[str, Any]:
        """A crew's position and status (tablets may send the same over their websocket)."""
        existing = await service.state.get_crew(crew_id)
        commune = body.commune or (existing or {}).get("commune")
        allow(principal, Action.post_crew_position, Resource.crew(crew_id, commune, tenant=principals.tenant))
        return await service.report_crew(
            crew_id,
            lon=body.lon,
            lat=body.lat,
            heading_deg=body.heading_deg,
            status=body.status,
            commune=body.commune,
            actor=actor_of(principal),
            speed_factor=body.speed_factor,
        )

    @api.get("/crews", response_model=list[m.CrewBody])
    async def list_crews(principal: Auth, service: Svc) -> list[dict[str, Any]]:
        allow(principal, Action.read_crews)
        snap = await service.operator_snapshot(actor_of(principal))
        crews: list[dict[str, Any]] = snap["crews"]
        return crews

    @api.put("/communes/{commune}/dispatch-mode", response_model=m.DispatchModeBody)
    async def set_dispatch_mode(
        commune: str, body: m.DispatchModeBody, principal: Auth, service: Svc
    ) -> m.DispatchModeBody:
        """``direct``: suggestions reach crews at once; ``approval``: only once an operator approves."""
        allow(
            principal,
            Action.operator_approve,
            Resource(tenant=principals.tenant, communes=frozenset({commune})),
        )
        await service.set_mode(commune, body.mode, actor_of(principal))
        return body

    @api.get("/map/streets.geojson")
    async def streets(request: Request) -> Response:
        """The city's streets (one LineString per two-way pair), for drawing without tiles."""
        if request.app.state.streets is None:
            request.app.state.streets = json.dumps(_streets_geojson(request.app.state.city)).encode()
        return Response(request.app.state.streets, media_type="application/geo+json")

    def camera_feature(c: Any) -> dict[str, Any]:
        return {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [c.lon, c.lat]},
            "properties": {
                "camera_id": c.camera_id,
                "commune": c.commune,
                "label": c.label,
                "heading_deg": c.heading_deg,
            },
        }

    def camera_visible(principal: Principal, camera: Any) -> bool:
        communes = frozenset({camera.commune}) if camera.commune else frozenset()
        resource = Resource(tenant=principal.tenant, communes=communes)
        return principals.policy.decide(principal, Action.read_cameras, resource).value == "allow"

    @api.get("/map/cameras.geojson")
    async def cameras(request: Request, principal: Auth) -> Response:
        """The cameras of the principal's communes (a camera of no commune: every operator)."""
        allow(principal, Action.read_cameras)
        city: City = request.app.state.city
        features = [
            camera_feature(c)
            for c in city.cameras.cameras.values()
            if principal.sees_all_communes() or not c.commune or camera_visible(principal, c)
        ]
        return JSONResponse(
            {"type": "FeatureCollection", "features": features}, media_type="application/geo+json"
        )

    @api.get("/map/cameras/{camera_id}")
    async def camera(camera_id: str, request: Request, principal: Auth) -> Response:
        """One camera as a GeoJSON Feature; a camera of another commune answers 404."""
        allow(principal, Action.read_cameras)
        city: City = request.app.state.city
        c = city.cameras.cameras.get(camera_id)
        if c is None or not (principal.sees_all_communes() or not c.commune or camera_visible(principal, c)):
            raise ServiceError(404, m.ErrorCode.unknown_camera, f"unknown camera {camera_id!r}")
        return JSONResponse(camera_feature(c), media_type="application/geo+json")

    @api.post("/sim/time", response_model=m.SimTime)
    async def sim_time(body: m.SimTime, principal: Auth, request: Request) -> m.SimTime:
        """Set the server's clock (simulation mode only): a simulator drives time."""
        the_clock = request.app.state.clock
        if not isinstance(the_clock, SimulationClock):
            raise ServiceError(
                409,
                m.ErrorCode.forbidden,
                "the server runs on the wall clock (start it with --clock simulation)",
            )
        allow(principal, Action.sim_control)
        now = the_clock.set(body.now)
        service: DispatchService = request.app.state.service
        # like the offline simulator's guidance: re-plan every replan_s of simulated time
        await service.tick(force=True)
        return m.SimTime(now=now)

    def sims(request: Request) -> Simulations:
        simulations: Simulations = request.app.state.simulations
        return simulations

    def sim_call(fn: Callable[[], SimRun]) -> dict[str, Any]:
        try:
            return fn().view()
        except SimulationError as exc:
            status = 404 if str(exc).startswith("unknown run") else 422
            raise ServiceError(status, m.ErrorCode.invalid_message, str(exc)) from exc

    @api.get("/sim/scenarios", tags=["simulation"])
    async def sim_scenarios(principal: Trainer, request: Request) -> list[dict[str, Any]]:
        """Trainers: the scenarios the server can run (simulated world, never live data)."""
        return sims(request).scenarios()

    @api.post("/sim/runs", status_code=201, tags=["simulation"])
    async def sim_start(body: m.SimRunStart, principal: Trainer, request: Request) -> dict[str, Any]:
        """Trainers: start a simulated run, paced at ``speed`` × the wall clock."""
        simulations = sims(request)
        try:
            run = await asyncio.to_thread(
                simulations.start, body.scenario, body.speed, started_by=principal.subject, seed=body.seed
            )
        except SimulationError as exc:
            raise ServiceError(422, m.ErrorCode.invalid_message, str(exc)) from exc
        return run.view()

    @api.get("/sim/runs/{run_id}", tags=["simulation"])
    async def sim_run(run_id: str, principal: Trainer, request: Request) -> dict[str, Any]:
        return sim_call(lambda: sims(request).get(run_id))

    @api.post("/sim/runs/{run_id}/pause", tags=["simulation"])
    async def sim_pause(run_id: str, principal: Trainer, request: Request) -> dict[str, Any]:
        return sim_call(lambda: sims(request).get(run_id).pause())

    @api.post("/sim/runs/{run_id}/resume", tags=["simulation"])
    async def sim_resume(run_id: str, principal: Trainer, request: Request) -> dict[str, Any]:
        return sim_call(lambda: sims(request).get(run_id).resume())

    @api.post("/sim/runs/{run_id}/speed", tags=["simulation"])
    async def sim_speed(
        run_id: str, body: m.SimRunSpeed, principal: Trainer, request: Request
    ) -> dict[str, Any]:
        def speed() -> SimRun:
            run = sims(request).get(run_id)
            run.pacer.set_speed(check_speed(body.speed))
            return run

        return sim_call(speed)

    @api.get("/sim/runs/{run_id}/replay", tags=["simulation"])
    async def sim_replay(run_id: str, principal: Trainer, request: Request) -> Response:
        """The finished run's replay (``cordon-sim-replay`` JSON lines); 409 until it ends."""
        try:
            run = sims(request).get(run_id)
        except SimulationError as exc:
            raise ServiceError(404, m.ErrorCode.invalid_message, str(exc)) from exc
        if run.replay_text is None:
            raise ServiceError(409, m.ErrorCode.invalid_message, f"run {run_id} is {run.state}")
        return Response(run.replay_text, media_type="application/x-ndjson")

    if config.demo:

        @api.get("/dev/tokens", tags=["demo only"])
        async def dev_tokens(
            request: Request,
            role: Literal["operator", "crew", "supervisor", "trainer"] = "operator",
            crew_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
            communes: str = ALL_COMMUNES,
        ) -> dict[str, str]:
            """DEMO MODE ONLY: mint a token without credentials. Absent unless the server runs as
            the embedded demo (``cordon serve`` with no options / ``--demo``)."""
            names = [c for c in communes.split(",") if c]
            try:
                token = principals.issue(Role(role), names, crew_id=crew_id if role == "crew" else None)
                principal = principals.verify_any(token)
            except (ValueError, AuthError) as exc:
                raise ServiceError(422, m.ErrorCode.invalid_message, str(exc)) from exc
            service: DispatchService = request.app.state.service
            service.audit_login(actor_of(principal), via="demo_token", jti=principal.token_id)
            return {"token": token, "warning": "demo token: this endpoint exists only in demo mode"}

    app.include_router(api)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        metrics: Metrics = request.app.state.metrics
        hub: Hub = request.app.state.hub
        metrics.ws_frames_sent.set(hub.frames_sent)
        metrics.ws_messages_sent.set(hub.messages_sent)
        metrics.ws_bytes_sent.set(hub.chars_sent)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> dict[str, Any]:
        return asyncapi_document()

    # ------------------------------------------------------------------------------------------
    # Websockets

    async def ws_principal(websocket: WebSocket) -> Principal | None:
        """The token from ``?token=`` / the Authorization header, or a first ``auth`` message."""
        try:
            token = token_from_request(
                websocket.headers.get("authorization"), websocket.query_params.get("token")
            )
        except AuthError:
            token = None
        if token is None:
            await websocket.accept()
            try:
                raw = await asyncio.wait_for(websocket.receive_text(), config.auth_timeout_s)
                token = m.AuthMsg.model_validate_json(raw).token
            except (TimeoutError, ValidationError, WebSocketDisconnect, RuntimeError):
                await _close(websocket, 1008, "authenticate first: ?token= or an auth message")
                return None
        try:
            return principals.authenticator.verify(token)
        except AuthError as exc:
            await _accept_close(websocket, 1008, f"invalid token: {exc.failure.value}")
            return None

    async def send_error(
        conn: Connection, hub: Hub, code: m.ErrorCode, message: str, ref: str | None = None
    ) -> None:
        # Outside the stream: no seq, so a client dropping already-seen seqs never drops an error.
        msg: dict[str, Any] = {"type": "error", "code": code.value, "message": message, "ref": ref}
        hub.enqueue_direct(conn, msg)

    def rate_limited(principal: Principal) -> bool:
        return ws_limiter is not None and not ws_limiter.allow(f"ws:{principal.subject}")

    async def receive_message(
        websocket: WebSocket, conn: Connection, hub: Hub, principal: Principal, adapter: TypeAdapter[_Msg]
    ) -> _Msg | None:
        """The next client message, or ``None`` after answering a rate-limited or invalid one."""
        metrics: Metrics = websocket.app.state.metrics
        raw = await websocket.receive_text()
        if rate_limited(principal):
            metrics.ws_errors.labels("rate_limited").inc()
            await send_error(conn, hub, m.ErrorCode.rate_limited, "too many messages; slow down")
            return None
        try:
            return adapter.validate_json(raw)
        except ValidationError as exc:
            metrics.ws_errors.labels("invalid_message").inc()
            await send_error(conn, hub, m.ErrorCode.invalid_message, _short(exc))
            return None

    def audit_login(websocket: WebSocket, principal: Principal, via: str) -> None:
        service: DispatchService = websocket.app.state.service
        service.audit_login(actor_of(principal), via=via, jti=principal.token_id)

    @app.websocket("/ws/crew")
    async def crew_socket(websocket: WebSocket, last_seq: int | None = None, batch: bool = False) -> None:
        """A crew tablet. Resume with ``?last_seq=N`` (or a ``resume`` message). ``?batch=1``:
        the messages queued together come in one frame, a JSON array (see :class:`Connection`)."""
        principal = await ws_principal(websocket)
        if principal is None:
            return
        if principal.crew_id is None or principal.role not in (Role.crew, Role.trainer):
            await _accept_close(websocket, 1008, "a crew token is needed")
            return
        service: DispatchService = websocket.app.state.service
        hub: Hub = websocket.app.state.hub
        metrics: Metrics = websocket.app.state.metrics
        if websocket.application_state is WebSocketState.CONNECTING:
            await websocket.accept()
        crew_id = principal.crew_id
        actor = actor_of(principal)
        audit_login(websocket, principal, "ws_crew")
        conn = hub.add(
            role="crew",
            subject=principal.subject,
            send=websocket.send_text,
            close=_closer(websocket),
            crew_id=crew_id,
            batch=batch,
        )
        metrics.connections.labels("crew").inc()
        try:
            await _crew_resume(service, hub, conn, last_seq)
            while True:
                msg = await receive_message(websocket, conn, hub, principal, m.crew_client_adapter)
                if msg is None:
                    continue
                metrics.ws_messages_in.labels("crew", msg.type).inc()
                try:
                    await _crew_message(service, hub, conn, actor, msg)
                except ServiceError as exc:
                    metrics.ws_errors.labels(exc.code.value).inc()
                    await send_error(conn, hub, exc.code, exc.message, getattr(msg, "suggestion_id", None))
        except WebSocketDisconnect:
            pass
        finally:
            metrics.connections.labels("crew").dec()
            await hub.remove(conn)

    @app.websocket("/ws/operator")
    async def operator_socket(websocket: WebSocket, batch: bool = False) -> None:
        """An operator console: everything in the operator's communes. ``?batch=1``: the
        messages queued together come in one frame, a JSON array."""
        principal = await ws_principal(websocket)
        if principal is None:
            return
        if principal.role not in (Role.operator, Role.supervisor, Role.trainer):
            await _accept_close(websocket, 1008, "an operator token is needed")
            return
        service: DispatchService = websocket.app.state.service
        hub: Hub = websocket.app.state.hub
        metrics: Metrics = websocket.app.state.metrics
        if websocket.application_state is WebSocketState.CONNECTING:
            await websocket.accept()
        actor = actor_of(principal)
        audit_login(websocket, principal, "ws_operator")
        conn = hub.add(
            role="operator",
            subject=principal.subject,
            send=websocket.send_text,
            close=_closer(websocket),
            communes=actor.communes,
            batch=batch,
        )
        metrics.connections.labels("operator").inc()
        try:
            snap = await service.operator_snapshot(actor)
            hub.enqueue(conn, {"type": "snapshot", "reason": "connect", **snap})
            while True:
                msg = await receive_message(websocket, conn, hub, principal, m.operator_client_adapter)
                if msg is None:
                    continue
                metrics.ws_messages_in.labels("operator", msg.type).inc()
                try:
                    await _operator_message(service, hub, conn, principal, principals, msg)
                except ServiceError as exc:
                    metrics.ws_errors.labels(exc.code.value).inc()
                    await send_error(conn, hub, exc.code, exc.message, getattr(msg, "suggestion_id", None))
        except WebSocketDisconnect:
            pass
        finally:
            metrics.connections.labels("operator").dec()
            await hub.remove(conn)

    _mount_static(app, config)
    return app


async def _purge_periodically(retention: Any, clock: Clock, every_s: float) -> None:
    """The retention job (:meth:`serving.retention.Retention.purge`), in a worker thread: first
    a minute after start (or ``every_s`` if shorter), then every ``every_s``."""
    await asyncio.sleep(min(every_s, 60.0))
    while True:
        running = asyncio.ensure_future(asyncio.to_thread(retention.purge, clock.now()))
        try:
            report = await asyncio.shield(running)
            log.info("retention purge: %d audit records tombstoned", report.tombstoned())
        except asyncio.CancelledError:
            # Stopping: the thread cannot be interrupted; the audit log is closed after this
            # task ends, so let the purge finish first (closing a SQLite connection another
            # thread is committing on can crash the process).
            with contextlib.suppress(Exception):
                await running
            raise
        except Exception:
            log.exception("retention purge failed")
        await asyncio.sleep(every_s)


async def _replan_periodically(service: DispatchService, every_s: float) -> None:
    """Wall-clock mode: :meth:`DispatchService.tick` every ``every_s`` seconds."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await service.tick()
        except Exception:
            log.exception("periodic re-plan failed")


async def _heartbeats(hub: Hub, every_s: float) -> None:
    """An application-level ``heartbeat`` on every websocket every ``every_s`` seconds."""
    while True:
        await asyncio.sleep(every_s)
        hub.heartbeat()


async def _park_demo_crews(service: DispatchService, n: int) -> None:
    """Demo mode: ``n`` crews parked at crossings spread over the map (``DEMO-01``...), so the
    console shows crews and plans have someone to send even before any tablet connects."""
    graph = service.city.graph
    system = Actor("cordon-demo", "system", None)
    for i in range(n):
        node = (i * 7919 + 13) % graph.n_nodes
        lon, lat = graph.node_lonlat[node]
        await service.report_crew(
            f"DEMO-{i + 1:02d}",
            lon=float(lon),
            lat=float(lat),
            heading_deg=None,
            status=m.CrewStatusName.available,
            commune=graph.node_commune[node],
            actor=system,
        )


async def _crew_resume(service: DispatchService, hub: Hub, conn: Connection, last_seq: int | None) -> None:
    """Send what the tablet missed since ``last_seq``, or a snapshot, then release held messages."""
    assert conn.crew_id is not None
    conn.ready = False
    got = None if last_seq is None else await service.state.crew_since(conn.crew_id, last_seq)
    if got is None:
        current = await service.state.crew_seq(conn.crew_id)
        suggestions = await service.crew_snapshot(conn.crew_id)
        reason = "connect" if last_seq is None else "gap"
        hub.enqueue_direct(
            conn, {"type": "snapshot", "seq": current, "reason": reason, "suggestions": suggestions}
        )
        conn.last_crew_seq = current
    else:
        _current, missing = got
        conn.last_crew_seq = min(conn.last_crew_seq, last_seq or 0) if conn.ready else (last_seq or 0)
        for message in missing:
            if _expired(message, service):
                continue  # an expired suggestion is never presented as current
            hub.enqueue(conn, message)
        conn.last_crew_seq = max(conn.last_crew_seq, _current)
    hub.release(conn)


def _expired(message: dict[str, Any], service: DispatchService) -> bool:
    expires = message.get("expires_at")
    if expires is None:
        return False
    from datetime import datetime

    return datetime.fromisoformat(expires) <= service.now()


async def _crew_message(service: DispatchService, hub: Hub, conn: Connection, actor: Actor, msg: Any) -> None:
    assert conn.crew_id is not None
    if isinstance(msg, m.ResumeMsg):
        await _crew_resume(service, hub, conn, msg.last_seq)
    elif isinstance(msg, m.PositionMsg):
        await service.report_crew(
            conn.crew_id,
            lon=msg.lon,
            lat=msg.lat,
            heading_deg=msg.heading_deg,
            status=None,
            commune=None,
            actor=actor,
            speed_factor=msg.speed_factor,
        )
    elif isinstance(msg, m.StatusMsg):
        await service.report_crew(
            conn.crew_id,
            lon=None,
            lat=None,
            heading_deg=None,
            status=msg.status,
            commune=None,
            actor=actor,
            speed_factor=msg.speed_factor,
        )
    elif isinstance(msg, m.AcceptMsg):
        await service.crew_decision(actor, "accept", msg.suggestion_id)
    elif isinstance(msg, m.DeclineMsg):
        await service.crew_decision(actor, "decline", msg.suggestion_id, reason=msg.reason)
    elif isinstance(msg, m.InPositionMsg):
        await service.crew_decision(actor, "in_position", msg.suggestion_id)
    elif isinstance(msg, m.ContactMsg):
        await service.crew_decision(actor, "contact", msg.suggestion_id, incident_id=msg.incident_id)
    elif isinstance(msg, m.AuthMsg):
        pass  # already authenticated


async def _operator_message(
    service: DispatchService,
    hub: Hub,
    conn: Connection,
    principal: Principal,
    principals: Principals,
    msg: Any,
) -> None:
    actor = actor_of(principal)
    action = {
        "approve": Action.operator_approve,
        "modify": Action.operator_modify,
        "retract": Action.operator_retract,
        "sighting": Action.post_sighting,
    }.get(msg.type)
    if action is not None and not principals.policy.allowed(principal, action):
        raise ServiceError(403, m.ErrorCode.forbidden, f"role {principal.role.value} may not {action.value}")
    if isinstance(msg, m.WatchMsg):
        conn.watching = None if msg.incident_ids is None else frozenset(msg.incident_ids)
    elif isinstance(msg, m.ResumeMsg):
        snap = await service.operator_snapshot(actor)
        hub.enqueue(conn, {"type": "snapshot", "reason": "gap", **snap})
    elif isinstance(msg, m.ApproveMsg | m.ModifyMsg | m.RetractMsg):
        await service.operator_decision(actor, msg)
    elif isinstance(msg, m.OperatorSightingMsg):
        info = await service.incident(msg.incident_id)
        if actor.communes is not None and not actor.communes.intersection(service.communes_of(info)):
            raise ServiceError(404, m.ErrorCode.unknown_incident, f"unknown incident {msg.incident_id!r}")
        sighting = Sighting.model_validate(msg.model_dump(exclude={"type"}) | {"source_kind": "operator"})
        await service.submit_sighting(sighting, actor)


def _closer(websocket: WebSocket) -> Callable[[int, str], Any]:
    async def close(code: int, reason: str) -> None:
        await _close(websocket, code, reason)

    return close


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code, reason)


async def _accept_close(websocket: WebSocket, code: int, reason: str) -> None:
    """Accept then close with ``code``: the client learns why (a refused handshake says only 403)."""
    if websocket.application_state is WebSocketState.CONNECTING:
        await websocket.accept()
    await _close(websocket, code, reason)


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)[:1000]


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def _streets_geojson(city: City, *, step: int = 1) -> dict[str, Any]:
    """Streets as LineStrings (two-way pairs drawn once), coordinates rounded to ~1 m."""
    g = city.graph
    features = []
    seen: set[tuple[int, int]] = set()
    for e in range(g.n_edges):
        u, v = int(g.edge_u[e]), int(g.edge_v[e])
        if (v, u) in seen:
            continue
        seen.add((u, v))
        pts = g.edge_lonlat(e)
        if len(pts) > 2:
            pts = pts[:: max(1, step)] if step > 1 else pts
        coords = [[round(float(x), 5), round(float(y), 5)] for x, y in pts]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": coords},
                "properties": {
                    "name": g.edge_name[e],
                    "highway": g.edge_highway[e],
                    "oneway": bool(g.edge_oneway[e]),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _mount_static(app: FastAPI, config: ServerConfig) -> None:
    """Serve the web pages if ``web/`` exists, and Leaflet from node_modules."""
    web = config.web_dir or ROOT / "web"
    dist = web / "dist" if (web / "dist").is_dir() else web
    leaflet = ROOT / "node_modules" / "leaflet" / "dist"
    if leaflet.is_dir():
        app.mount("/vendor/leaflet", StaticFiles(directory=leaflet), name="leaflet")
    if not dist.is_dir():
        return
    pages = {"/": "index.html", "/console": "console.html", "/crew": "crew.html", "/trainer": "trainer.html"}
    for route, name in pages.items():
        path = dist / name
        if path.is_file():

            async def page(path: Path = path) -> FileResponse:
                return FileResponse(path)

            app.add_api_route(route, page, include_in_schema=False, methods=["GET"])
    app.mount("/static", StaticFiles(directory=dist), name="static")
