"""Simulated exercises run by the server for the trainer's page (``/api/sim/...``).

A run is :func:`sim.world.World.run_for` on its own city, its own Coordinator (the scenario's
policy) and its own random streams, in a background thread: it never touches the server's live
state. Simulated time is paced against the wall clock at the chosen speed (×1 … ×60): the policy
is wrapped so that before the world hands it an event (a sighting delivered, a crew update tick)
the thread waits until the wall clock has caught up, and waits as long as the run is paused. When
the run ends its replay (``cordon-sim-replay`` JSON lines, :mod:`sim.replay`) and outcome figures
are kept in memory for the page to load.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("cordon.simulation")

RunState = Literal["running", "paused", "finished", "failed"]
MIN_SPEED = 1.0
MAX_SPEED = 60.0
SCENARIO_SUFFIXES = (".json", ".yaml", ".yml")


class SimulationError(ValueError):
    """A refused request: unknown scenario or run, a speed out of range, too many runs."""


class _Stopped(Exception):
    """Raised inside the simulation thread to end a run early (server shutdown)."""


@dataclass
class _Pacer:
    """Simulated time against the wall clock: ``sim_t = anchor_sim + (wall - anchor_wall) * speed``
    while running; frozen while paused."""

    speed: float
    clock: Callable[[], float] = time.monotonic
    anchor_sim: float = 0.0
    anchor_wall: float = field(default=0.0)
    paused: bool = False
    stopped: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.anchor_wall = self.clock()

    def now_sim(self) -> float:
        with self.cond:
            return self._now_sim()

    def _now_sim(self) -> float:
        if self.paused:
            return self.anchor_sim
        return self.anchor_sim + (self.clock() - self.anchor_wall) * self.speed

    def _reanchor(self) -> None:
        self.anchor_sim = self._now_sim()
        self.anchor_wall = self.clock()

    def pause(self) -> None:
        with self.cond:
            if not self.paused:
                self._reanchor()
                self.paused = True
            self.cond.notify_all()

    def resume(self) -> None:
        with self.cond:
            if self.paused:
                self.anchor_wall = self.clock()
                self.paused = False
            self.cond.notify_all()

    def set_speed(self, speed: float) -> None:
        with self.cond:
            self._reanchor()
            self.speed = speed
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def wait_until(self, t: float) -> None:
        """Block until simulated time ``t`` is due (never while paused); raise when stopped."""
        with self.cond:
            while True:
                if self.stopped:
                    raise _Stopped
                if not self.paused:
                    ahead = t - self._now_sim()
                    if ahead <= 0:
                        return
                    self.cond.wait(timeout=min(ahead / self.speed, 0.5))
                else:
                    self.cond.wait(timeout=0.5)


class _PacedPolicy:
    """The scenario's policy, entered only once the pacer says the event is due."""

    def __init__(self, inner: Any, pacer: _Pacer, run: SimRun) -> None:
        self.inner = inner
        self.pacer = pacer
        self.run = run
        self.name = getattr(inner, "name", "policy")

    def _due(self, t: float) -> None:
        self.pacer.wait_until(t)
        self.run.t_done = t

    def start(self, world: Any, t: float) -> None:
        self.inner.start(world, t)

    def on_delivery(self, world: Any, sighting: Any, t: float) -> None:
        self._due(t)
        self.inner.on_delivery(world, sighting, t)

    def on_tick(self, world: Any, t: float) -> None:
        self._due(t)
        self.inner.on_tick(world, t)

    def on_crew_arrival(self, world: Any, crew: Any, t: float) -> None:
        self.inner.on_crew_arrival(world, crew, t)

    def finish(self, world: Any) -> None:
        self.inner.finish(world)


@dataclass
class SimRun:
    run_id: str
    scenario: str
    pacer: _Pacer
    duration_s: float
    started_by: str
    state: RunState = "running"
    t_done: float = 0.0
    replay_text: str | None = None
    outcome: dict[str, Any] | None = None
    error: str | None = None
    thread: threading.Thread | None = None

    def pause(self) -> SimRun:
        """Freeze simulated time; a finished run stays finished."""
        self.pacer.pause()
        if self.state == "running":
            self.state = "paused"
        return self

    def resume(self) -> SimRun:
        """Let simulated time run again at the current speed."""
        self.pacer.resume()
        if self.state == "paused":
            self.state = "running"
        return self

    def view(self) -> dict[str, Any]:
        """The run as the trainer's page reads it (docs/pages.md)."""
        if self.state in ("finished", "failed"):
            t = self.outcome["t"] if self.outcome else self.t_done
        else:
            t = min(self.pacer.now_sim(), self.duration_s)
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "scenario": self.scenario,
            "state": self.state,
            "t": round(float(t), 3),
            "speed": self.pacer.speed,
            "duration_s": self.duration_s,
        }
        if self.outcome is not None:
            out["outcome"] = self.outcome
        if self.error is not None:
            out["error"] = self.error
        return out


def _outcome(result: Any) -> dict[str, Any]:
    o = result.outcome
    sightings = result.recording.sightings
    return {
        "kind": str(o.kind),
        "t": float(o.t),
        "crew_id": o.crew_id,
        "node": o.node,
        "contacts": len(o.contacts),
        "crew_km": round(float(result.crew_km), 3),
        "suggestion_changes": int(result.suggestion_changes),
        "sightings": len(sightings),
        "wrong_sightings": sum(1 for s in sightings if s.wrong),
        "policy": result.scenario.policy,
        "seed": result.scenario.seed,
    }


class Simulations:
    """The server's simulated runs (in memory; a handful at a time)."""

    def __init__(self, scenarios_dir: Path, *, max_running: int = 4) -> None:
        self.scenarios_dir = scenarios_dir
        self.max_running = max_running
        self.runs: dict[str, SimRun] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def scenarios(self) -> list[dict[str, Any]]:
        """``[{"name", "title"}]``: the scenario files of ``scenarios_dir``."""
        out = []
        if self.scenarios_dir.is_dir():
            for path in sorted(self.scenarios_dir.iterdir()):
                if path.suffix in SCENARIO_SUFFIXES and path.is_file():
                    out.append({"name": path.stem, "title": path.stem.replace("_", " ")})
        return out

    def _path(self, name: str) -> Path:
        for path in sorted(self.scenarios_dir.iterdir()) if self.scenarios_dir.is_dir() else ():
            if path.stem == name and path.suffix in SCENARIO_SUFFIXES:
                return path
        raise SimulationError(f"unknown scenario {name!r}")

    def start(self, name: str, speed: float, *, started_by: str, seed: int | None = None) -> SimRun:
        check_speed(speed)
        path = self._path(name)
        with self._lock:
            running = sum(1 for r in self.runs.values() if r.state in ("running", "paused"))
            if running >= self.max_running:
                raise SimulationError(f"{running} runs already in progress (at most {self.max_running})")
            run_id = f"run-{next(self._ids)}"
        from sim.scenario import load_scenario

        scenario = load_scenario(path).with_run(seed=seed)
        run = SimRun(run_id, name, _Pacer(speed), float(scenario.duration_s), started_by)
        run.thread = threading.Thread(
            target=self._run, args=(run, scenario), name=f"cordon-{run_id}", daemon=True
        )
        with self._lock:
            self.runs[run_id] = run
        run.thread.start()
        return run

    def _run(self, run: SimRun, scenario: Any) -> None:
        from sim.policies import make_policy
        from sim.replay import replay_records
        from sim.scenario import build_city
        from sim.world import CityContext, World

        try:
            ctx = CityContext(build_city(scenario))
            policy = _PacedPolicy(make_policy(scenario, ctx), run.pacer, run)
            result = World(ctx, scenario, policy).run_for()
            lines = [json.dumps(r, separators=(",", ":")) for r in replay_records(result)]
            run.replay_text = "\n".join(lines) + "\n"
            run.outcome = _outcome(result)
            run.state = "finished"
        except _Stopped:
            run.state, run.error = "failed", "stopped (server shutdown)"
        except Exception as exc:
            log.exception("simulated run %s failed", run.run_id)
            run.state, run.error = "failed", f"{type(exc).__name__}: {exc}"[:500]

    def get(self, run_id: str) -> SimRun:
        run = self.runs.get(run_id)
        if run is None:
            raise SimulationError(f"unknown run {run_id!r}")
        return run

    def stop_all(self, timeout_s: float = 5.0) -> None:
        for run in list(self.runs.values()):
            run.pacer.stop()
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join(timeout_s)


def check_speed(speed: float) -> float:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise SimulationError(f"speed {speed} must be within ×{MIN_SPEED:g} … ×{MAX_SPEED:g}")
    return speed
