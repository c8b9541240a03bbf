"""The core (``guidance.coordinator.Coordinator``) in a process of its own, for two cores.

In one process the event loop (HTTP, websockets, fan-out) and the core thread share the GIL: under
load they take turns and the server tops out at one core. :class:`CoreProcess` runs the
Coordinator (and its audit recorder, :class:`serving.audit_replay.RecordingCoordinator`) in a
child process and answers the same calls, so the loop and the core each have a core.

* Calls are made one at a time (the service's single core thread) over a pipe, in the order the
  service makes them: the Coordinator sees exactly the calls it would see in-process, so plans
  are the same (it is deterministic) and the audit replay still recomputes them.
* The audit records the recorder makes during a call come back with its answer and go, in
  order, to the service's audit queue (the one writer of the hash chain).
* Answers are slimmed to what the service reads: an ingest's outcome carries the plan, the
  track's summary and the prediction's time; the prediction's GeoJSON (tens of kB) is built in
  the child, only when the service sends one (:meth:`CoreProcess.prediction_message`).
* A dead child is not restarted: every later call raises :class:`CoreProcessError` (the health
  endpoint says ``core: down``); restart the worker (its Coordinator is rebuilt from the state
  store's sighting logs, as after any restart).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("cordon.core_process")


class CoreProcessError(RuntimeError):
    """The core process is gone (crashed or stopped)."""


@dataclass(frozen=True, slots=True)
class PredictionRef:
    """An outcome's prediction, by reference: its GeoJSON is built in the core process on demand."""

    incident_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class BeliefSummary:
    """The fields of a :class:`tracking.types.Belief` the service publishes (``track``)."""

    at: datetime
    mean_lonlat: Any
    sigma_along_m: float
    speed_mps: float
    heading_deg: float | None
    since_last_sighting_s: float
    last_camera_id: str | None
    n_sightings: int


@dataclass(frozen=True, slots=True)
class UpdateSummary:
    flag: Any = None


@dataclass(frozen=True, slots=True)
class OutcomeSummary:
    update: Any
    belief: BeliefSummary | None
    prediction: PredictionRef | None
    plan: Any


class _RecordList:
    """The child's audit sink: records kept until the call's answer carries them back."""

    def __init__(self) -> None:
        self.records: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def append(self, *args: Any, **kwargs: Any) -> None:
        self.records.append((args, kwargs))

    def drain(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        out, self.records = self.records, []
        return out


def _slim(incident_id: str | None, value: Any) -> Any:
    if hasattr(value, "update") and hasattr(value, "plan") and hasattr(value, "belief"):
        belief = value.belief
        prediction = value.prediction
        return OutcomeSummary(
            update=UpdateSummary(getattr(value.update, "flag", None)),
            belief=None
            if belief is None
            else BeliefSummary(
                at=belief.at,
                mean_lonlat=belief.mean_lonlat,
                sigma_along_m=float(belief.sigma_along_m),
                speed_mps=float(belief.speed_mps),
                heading_deg=None if belief.heading_deg is None else float(belief.heading_deg),
                since_last_sighting_s=float(belief.since_last_sighting_s),
                last_camera_id=belief.last_camera_id,
                n_sightings=int(belief.n_sightings),
            ),
            prediction=None
            if prediction is None or incident_id is None
            else PredictionRef(incident_id, prediction.at),
            plan=value.plan,
        )
    return value


def _child(
    conn: Connection, load_city: Callable[[], Any], factory: Callable[[Any], Any], record: bool
) -> None:
    """The core process: build the city and the Coordinator, then answer calls until told to stop."""
    from serving.audit_replay import RecordingCoordinator
    from serving.metrics import freeze_startup_heap
    from serving.service import evaluate_target, ingest_accepts, ingest_batch, prediction_message

    now: list[datetime | None] = [None]
    sink = _RecordList()
    try:
        city = load_city()
        coordinator = factory(city)
        if record and hasattr(coordinator, "horizon_s"):

            def clock() -> datetime:
                assert now[0] is not None
                return now[0]

            coordinator = RecordingCoordinator(coordinator, sink, clock=clock)
        # the keywords of ``ingest`` this core takes (a stand-in core may take none of them)
        ingest_keywords = {k for k in ("replan", "plan_at") if ingest_accepts(coordinator, k)}
        freeze_startup_heap()  # the city and the Coordinator live as long as this process
        conn.send(("ready", None, [], (0.0, 0.0)))
    except BaseException as exc:  # tell the parent why, then give up
        conn.send(("err", exc, [], (0.0, 0.0)))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        name, args, kwargs, now[0] = message
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            if name == "evaluate_target":
                value: Any = evaluate_target(coordinator, city, *args, **kwargs)
            elif name == "prediction_message":
                value = prediction_message(coordinator, city, *args, **kwargs)
            elif name == "ingest":
                kwargs = {k: v for k, v in kwargs.items() if k in ingest_keywords}
                value = _slim(args[0].incident_id, coordinator.ingest(*args, **kwargs))
            elif name == "ingest_batch":
                calls = [(s, {k: v for k, v in kw.items() if k in ingest_keywords}) for s, kw in args[0]]
                value = [
                    (kind, _slim(s.incident_id, out) if kind == "ok" else out)
                    for (kind, out), (s, _) in zip(ingest_batch(coordinator, calls), calls, strict=False)
                ]
            elif name == "set_crews":
                coordinator.set_crews(*args, **kwargs)
                value = None  # the service does not read the plans (they are recorded here)
            elif name == "open_incident":
                coordinator.open_incident(*args, **kwargs)
                value = None
            else:
                value = getattr(coordinator, name)(*args, **kwargs)
        except BaseException as exc:
            kind, value = "err", exc
        else:
            kind = "ok"
        records = sink.drain()  # once: every way of answering below carries the call's records
        # the call's CPU and wall time in the child (the parent's wall adds the pipe)
        times = (time.process_time() - cpu0, time.perf_counter() - wall0)
        try:
            conn.send((kind, value, records, times))
        except Exception as exc:  # an answer that does not pickle
            failure = RuntimeError(f"{name}: answer not sent ({type(exc).__name__}: {exc})")
            conn.send(("err", failure, records, times))


class CoreProcess:
    """A :class:`serving.service.CoordinatorLike` whose Coordinator lives in a child process.

    ``load_city`` and ``factory`` must pickle (module-level functions or classes, or
    ``functools.partial`` of them): the child is spawned, not forked. ``audit`` receives the
    recorder's records in the parent; ``clock`` gives the time stamped on records the core
    makes without a time of its own (share, close)."""

    def __init__(
        self,
        load_city: Callable[[], Any],
        factory: Callable[[Any], Any],
        *,
        audit: Any,
        clock: Callable[[], datetime],
        record: bool = True,
        start_timeout_s: float = 300.0,
    ) -> None:
        self._audit = audit
        self._clock = clock
        self._lock = threading.Lock()
        #: CPU and wall seconds the child spent on the last call (read on the calling thread,
        #: after it; the call's wall time in the parent adds the pipe and the pickling)
        self.last_cpu_s = 0.0
        self.last_wall_s = 0.0
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child, args=(child, load_city, factory, record), name="cordon-core", daemon=True
        )
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise CoreProcessError(f"the core process did not start within {start_timeout_s} s")
        kind, value, _, _ = self._conn.recv()
        if kind != "ready":
            self.close()
            raise CoreProcessError(f"the core process failed to start: {value!r}") from value

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                self._conn.send((name, args, kwargs, self._clock()))
                kind, value, records, (self.last_cpu_s, self.last_wall_s) = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                raise CoreProcessError(f"core process gone ({name}): {exc}") from exc
        for rec_args, rec_kwargs in records:
            self._audit.append(*rec_args, **rec_kwargs)
        if kind == "err":
            raise value
        return value

    # The Coordinator's calls, as the service makes them.

    def open_incident(
        self,
        incident_id: str,
        *,
        at: datetime,
        commune: str | None = None,
        origin_lonlat: Any = None,
    ) -> None:
        self._call("open_incident", incident_id, at=at, commune=commune, origin_lonlat=origin_lonlat)

    def share_incident(self, incident_id: str, communes: Iterable[str]) -> Any:
        return self._call("share_incident", incident_id, list(communes))

    def ingest(self, sighting: Any, *, replan: bool = True, plan_at: datetime | None = None) -> Any:
        return self._call("ingest", sighting, replan=replan, plan_at=plan_at)

    def ingest_batch(self, calls: Sequence[tuple[Any, dict[str, Any]]]) -> list[tuple[str, Any]]:
        """:func:`serving.service.ingest_batch` in the core process: one round trip."""
        return self._call("ingest_batch", list(calls))  # type: ignore[no-any-return]

    def set_crews(self, crews: Sequence[Any], at: datetime, *, replan: bool = True) -> None:
        self._call("set_crews", list(crews), at, replan=replan)

    def replan(self, incident_id: str, at: datetime) -> Any:
        return self._call("replan", incident_id, at)

    def decline(self, incident_id: str, crew_id: str, **kwargs: Any) -> Any:
        return self._call("decline", incident_id, crew_id, **kwargs)

    def declines(self, incident_id: str) -> Any:
        return self._call("declines", incident_id)

    def crews(self) -> Any:
        return self._call("crews")

    def close_incident(self, incident_id: str) -> None:
        self._call("close_incident", incident_id)

    def evaluate_target(self, incident_id: str, crew_at: Any, node: int, at: datetime) -> Any:
        return self._call("evaluate_target", incident_id, crew_at, node, at)

    def prediction_message(self, incident_id: str, at: datetime) -> Any:
        return self._call("prediction_message", incident_id, at)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.send(None)
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        with contextlib.suppress(Exception):
            self._conn.close()
