"""Ways of directing crews, measured side by side under the same outcome rules.

* ``guidance`` — Cordon itself: :class:`guidance.coordinator.Coordinator`, the very facade the
  server drives. It gets the incident, every delivered sighting (``source_kind=simulation``,
  ``observed_at`` the true pass time) and the crews' positions, all stamped with simulated
  time; the crews follow its suggestions. It re-plans on events (a report, bursts of
  reports coalesced) and at least every ``update_interval_s`` (:class:`GuidancePolicy`).
* ``chase`` — every crew drives to the last sighting, then follows the suspect when in view.
* ``nearest`` — the crew nearest the last sighting goes there (and follows when in view);
  the rest stay.
* ``static`` — every crew holds its position.

Baselines know the incident's crossing at ``t = 0`` (as guidance does) and the crossing
nearest each reported camera; they are told nothing else about the suspect. "In view" is the
crew's own sight (``crew_model.sight_m``), not a camera.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from sim.scenario import Scenario
from sim.world import CityContext, CrewAgent, SimSighting, World


class StaticPolicy:
    """Crews hold where they are."""

    name = "static"

    def start(self, world: World, t: float) -> None:
        return None

    def on_delivery(self, world: World, sighting: SimSighting, t: float) -> None:
        return None

    def on_tick(self, world: World, t: float) -> None:
        return None

    def on_crew_arrival(self, world: World, crew: CrewAgent, t: float) -> None:
        return None

    def finish(self, world: World) -> None:
        return None


class _LastSighting:
    """The latest known position of the suspect (by observed time) as a crossing."""

    def __init__(self) -> None:
        self.node = -1
        self.observed_t = -1.0

    def update(self, world: World, sighting: SimSighting) -> bool:
        if sighting.observed_t <= self.observed_t:
            return False  # an older report delivered late changes nothing
        node = world.ctx.camera_node.get(sighting.camera_id)
        if node is None:
            return False
        self.node, self.observed_t = node, sighting.observed_t
        return True


def _follow(world: World, crew: CrewAgent, fallback: int | None, t: float, source: str) -> None:
    """Follow the suspect when the crew sees it (at once), else head for ``fallback``."""
    seen = world.suspect_in_view(crew, t)
    if seen is not None:
        world.order(crew.crew_id, seen, source=source, own_sight=True)
    elif fallback is not None:
        world.order(crew.crew_id, fallback, source=source)


class ChasePolicy:
    """Every crew drives to the last sighting, then follows the suspect when it sees it."""

    name = "chase"

    def __init__(self) -> None:
        self.last = _LastSighting()

    def start(self, world: World, t: float) -> None:
        self.last.node, self.last.observed_t = world.origin, 0.0
        for crew in world.crews:
            world.order(crew.crew_id, world.origin, source=self.name)

    def on_delivery(self, world: World, sighting: SimSighting, t: float) -> None:
        if self.last.update(world, sighting):
            for crew in world.crews:
                _follow(world, crew, self.last.node, t, self.name)

    def on_tick(self, world: World, t: float) -> None:
        for crew in world.crews:
            _follow(world, crew, self.last.node, t, self.name)

    def on_crew_arrival(self, world: World, crew: CrewAgent, t: float) -> None:
        _follow(world, crew, None, t, self.name)

    def finish(self, world: World) -> None:
        return None


class NearestPolicy:
    """The crew nearest (by driving time) the last sighting goes there; the others stay."""

    name = "nearest"

    def __init__(self) -> None:
        self.last = _LastSighting()
        self.sent: str | None = None

    def _send(self, world: World, t: float) -> None:
        to_target = world.navigator.times_to([self.last.node])
        heads = np.array([world.crew_heading_node(c) for c in world.crews], dtype=np.int64)
        if heads.size == 0:
            return
        crew = world.crews[int(np.argmin(to_target[heads]))]
        self.sent = crew.crew_id
        _follow(world, crew, self.last.node, t, self.name)

    def start(self, world: World, t: float) -> None:
        self.last.node, self.last.observed_t = world.origin, 0.0
        self._send(world, t)

    def on_delivery(self, world: World, sighting: SimSighting, t: float) -> None:
        if self.last.update(world, sighting):
            self._send(world, t)

    def on_tick(self, world: World, t: float) -> None:
        if self.sent is not None:
            _follow(world, world.crew(self.sent), self.last.node, t, self.name)

    def on_crew_arrival(self, world: World, crew: CrewAgent, t: float) -> None:
        if crew.crew_id == self.sent:
            _follow(world, crew, None, t, self.name)

    def finish(self, world: World) -> None:
        return None


class GuidancePolicy:
    """Cordon's tracker and planner, through :class:`guidance.coordinator.Coordinator`.

    Every delivered report is ingested at once. With the ``events`` cadence (the default) the
    policy re-plans at the start, at a report when its last re-plan is at least
    ``replan_gap_s`` old (reports delivered sooner wait for one re-plan ``replan_gap_s`` after
    the last: a burst gives one plan), and ``update_interval_s`` after its last re-plan when
    nothing else came. With ``fixed`` it re-plans at every report and every world tick."""

    name = "guidance"

    def __init__(
        self,
        coordinator: Any,
        *,
        replan_on_delivery: bool = True,
        cadence: str = "events",
        replan_gap_s: float | None = None,
    ) -> None:
        if cadence not in CADENCES:
            raise ValueError(f"unknown cadence {cadence!r}; expected one of {', '.join(CADENCES)}")
        self.coordinator = coordinator
        self.replan_on_delivery = replan_on_delivery
        self.cadence = cadence
        self.replan_gap_s = SIM_REPLAN_GAP_S if replan_gap_s is None else float(replan_gap_s)
        if not self.replan_gap_s >= 0:
            raise ValueError(f"replan_gap_s must be >= 0, got {replan_gap_s}")
        self.incident_id = "sim"
        self.plans = 0
        self.declines = 0
        #: Times the Coordinator was asked to plan (set_crews / replan), whatever it answered.
        self.replans = 0
        self.last_plan: Any = None
        self.last_replan_t: float | None = None
        self._coalesced_t: float | None = None  # a deferred re-plan for reports of a burst
        self._refresh_s = 10.0

    def _crews(self, world: World, t: float) -> list[Any]:
        """The crews as the Coordinator sees them: ``assigned`` while a crew heads for (or
        waits at) the target this incident's last plan gave it, else ``available``."""
        from guidance.types import Crew, CrewStatus

        plan = self.last_plan
        out = []
        for c in world.crews:
            target = c.effective_target
            on_task = plan is not None and target is not None and plan.target_of(c.crew_id) == target
            out.append(
                Crew(
                    crew_id=c.crew_id,
                    position=world.crew_position(c, t),
                    heading_deg=None,
                    status=CrewStatus.assigned if on_task else CrewStatus.available,
                    commune=None,
                    speed_factor=c.speed_factor,
                )
            )
        return out

    def _apply(self, world: World, plan: Any) -> None:
        """Order each suggestion; a crew that refuses its target declines it to the
        Coordinator (which re-plans without that pair; the new plan is applied in turn). A
        crew the plan holds, or leaves out, that still heads for (or waits at) an old target
        is told to hold: stop at the next crossing and wait there, available."""
        while plan is not None:
            self.plans += 1
            self.last_plan = plan
            declines: list[tuple[str, int]] = []
            suggested: set[str] = set()
            for s in plan.suggestions:
                target = int(s.target_node)
                suggested.add(s.crew_id)
                world.note_suggestion(s.crew_id, target, int(plan.version))
                crew = world.crew(s.crew_id)
                refused_before = target in crew.refused
                accepted = world.order(s.crew_id, target, source=self.name)
                if not accepted and not refused_before and target in crew.refused:
                    declines.append((s.crew_id, target))
            for crew in world.crews:
                if crew.crew_id not in suggested and crew.effective_target is not None:
                    world.order(crew.crew_id, None, source=self.name)
            if not declines:
                return
            at = world.at(world.now)
            for crew_id, target in declines:
                self.declines += 1
                plan = self.coordinator.decline(
                    self.incident_id, crew_id, at=at, reason="refused", target_node=target
                )

    def _replan(self, world: World, t: float) -> None:
        """Give the crews' positions at ``t`` (which re-plans) and follow the plan."""
        self.replans += 1
        self.last_replan_t = t
        if self.cadence == "events":
            world.wake_policy_at(t + self._refresh_s)
        plans = self.coordinator.set_crews(self._crews(world, t), world.at(t))
        plan = plans.get(self.incident_id)
        if plan is None:
            plan = self.coordinator.replan(self.incident_id, world.at(t))
        if plan is self.last_plan:
            return
        self._apply(world, plan)

    def start(self, world: World, t: float) -> None:
        from map_data.types import LonLat

        self.incident_id = f"sim-{world.scenario.seed}"
        self._refresh_s = float(world.scenario.crew_model.update_interval_s)
        lon, lat = world.graph.node_lonlat[world.origin]
        self.coordinator.open_incident(
            self.incident_id, at=world.at(t), origin_lonlat=LonLat(float(lon), float(lat))
        )
        self._replan(world, t)

    def on_delivery(self, world: World, sighting: SimSighting, t: float) -> None:
        """Ingest the sighting (stamped with the time it was seen); then, with
        ``replan_on_delivery``, give the crews' current positions, which re-plans at the time
        of delivery (plans then go forward in time; the ingest itself does not plan, as that
        plan would be superseded at once); otherwise follow the ingest's plan, as the server
        does."""
        from tracking.types import Sighting, SourceKind

        outcome = self.coordinator.ingest(
            Sighting(
                incident_id=self.incident_id,
                camera_id=sighting.camera_id,
                observed_at=world.at(sighting.observed_t),
                source_kind=SourceKind.simulation,
                source_event_id=f"{self.incident_id}-{sighting.n}",
            ),
            replan=not self.replan_on_delivery,
        )
        if not self.replan_on_delivery:
            self._apply(world, outcome.plan)
        elif self.cadence == "fixed" or self.last_replan_t is None:
            self._replan(world, t)
        elif self._coalesced_t is not None:
            return  # a re-plan is already due for this burst of reports
        elif t - self.last_replan_t >= self.replan_gap_s:
            self._replan(world, t)
        else:
            self._coalesced_t = self.last_replan_t + self.replan_gap_s
            world.wake_policy_at(self._coalesced_t)

    def on_tick(self, world: World, t: float) -> None:
        """A world tick, or a wake-up this policy asked for: with the ``events`` cadence,
        re-plan when reports wait for their coalesced re-plan, or when ``update_interval_s``
        passed since the last re-plan; with ``fixed``, re-plan at every tick."""
        if self.cadence == "fixed":
            self._replan(world, t)
            return
        due = self._coalesced_t
        if due is not None and t >= due - 1e-9:
            self._coalesced_t = None
            self._replan(world, t)
        elif (
            due is None
            and self.last_replan_t is not None
            and t - self.last_replan_t >= self._refresh_s - 1e-9
        ):
            self._replan(world, t)

    def on_crew_arrival(self, world: World, crew: CrewAgent, t: float) -> None:
        return None

    def finish(self, world: World) -> None:
        self.coordinator.close_incident(self.incident_id)


#: How the guidance policy consults the Coordinator: ``events`` (at a delivered report, at
#: most one re-plan per :data:`SIM_REPLAN_GAP_S` with the reports of a burst coalesced, and
#: ``update_interval_s`` after the last re-plan when nothing else came) or ``fixed`` (every
#: delivered report and every world tick; the cadence before 2026-11-26).
CADENCES: tuple[str, ...] = ("events", "fixed")
#: Reports delivered less than this long after a re-plan wait for one re-plan at the end of it (s).
SIM_REPLAN_GAP_S = 2.0

#: The simulator's Coordinator re-uses an incident's last prediction for this long when no
#: sighting arrived since (see ``Coordinator(reuse_prediction_s=...)`` and docs/simulator.md).
SIM_REUSE_PREDICTION_S = 30.0


def sim_coordinator(city: Any, *, reuse_prediction_s: float = SIM_REUSE_PREDICTION_S) -> Any:
    """A Coordinator configured as the simulator runs it."""
    from guidance.coordinator import Coordinator

    return Coordinator(city, reuse_prediction_s=reuse_prediction_s)


#: Whether this process has loaded the core's compiled kernels (:func:`warm_up_core`); forked
#: workers inherit it with the kernels.
_CORE_WARM = False


def warm_up_core() -> None:
    """Load the core's compiled kernels in this process, once: one short guidance run on a small
    grid (``sim.testing``) with a Coordinator of its own; nothing of it is kept.

    Numba loads a kernel from its disk cache at the kernel's first call (``map_data.jit``): about
    half a second for the tracker's, predictor's and planner's kernels. Paid in the parent before
    a batch forks its workers, it is paid once instead of by the first guidance run of every
    worker of every batch (the simulator bench forks two workers per cell). Running the policy
    itself, rather than a list of kernels, loads whatever kernels the core's calls use. Skipped
    with ``CORDON_NO_JIT=1`` (nothing to load)."""
    global _CORE_WARM
    if _CORE_WARM:
        return
    _CORE_WARM = True
    from map_data.jit import NO_JIT_ENV

    if os.environ.get(NO_JIT_ENV) == "1":
        return
    from sim.testing import grid_city, small_guidance_scenario
    from sim.world import run_scenario

    ctx = CityContext(grid_city(cameras=40))
    scenario = small_guidance_scenario(0, duration_s=120.0)
    run_scenario(ctx, scenario, policy=GuidancePolicy(sim_coordinator(ctx.city)))


def coordinator_for(ctx: CityContext) -> Any:
    """The Coordinator of a city, built once per :class:`CityContext` (per batch worker), with
    the core's kernels loaded (:func:`warm_up_core`: workers forked afterwards inherit them)."""
    got = ctx.extras.get("coordinator")
    if got is None:
        warm_up_core()
        got = sim_coordinator(
            ctx.city, reuse_prediction_s=ctx.extras.get("reuse_prediction_s", SIM_REUSE_PREDICTION_S)
        )
        ctx.extras["coordinator"] = got
    return got


POLICY_FACTORIES: dict[str, Callable[[CityContext], Any]] = {
    "static": lambda ctx: StaticPolicy(),
    "chase": lambda ctx: ChasePolicy(),
    "nearest": lambda ctx: NearestPolicy(),
    "guidance": lambda ctx: GuidancePolicy(
        coordinator_for(ctx),
        cadence=ctx.extras.get("cadence", "events"),
        replan_gap_s=ctx.extras.get("replan_gap_s"),
    ),
}


def make_policy(scenario: Scenario, ctx: CityContext) -> Any:
    """The policy named by ``scenario.policy``."""
    try:
        factory = POLICY_FACTORIES[scenario.policy]
    except KeyError:
        raise ValueError(
            f"unknown policy {scenario.policy!r}; expected one of {sorted(POLICY_FACTORIES)}"
        ) from None
    return factory(ctx)
