"""What any policy could achieve on a run: the perfect-knowledge upper bound of interception.

For a suspect that does not react to crews (every behaviour but ``evasive``) its route is the
same under every policy: it depends only on the run's seed. :func:`perfect_knowledge` plays
that route alone (no crew can end the run) and asks: could some crew, knowing the whole route
at ``t = 0``, have driven to one of its crossings and waited there :data:`INTERCEPT_WAIT_S`
before the suspect entered it? A crew that must move acts after the crew model's
``reaction_s`` and drives the fastest route at limit × its speed factor, as in the world; a
crew already standing on the route waits from ``t = 0``. No policy can intercept a run this
bound says is lost (compliance, sightings and handoff delays can only make things worse), so
the share of runs it wins caps every policy's interception rate on the same draws.

It also says why a run is lost: how long the suspect took to leave the map, the best margin any
crew had at any crossing of the route (negative: too late by that much), how far the nearest crew
was, and when the first report reached Cordon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from map_data.routing import times_from_nodes
from sim.scenario import Scenario
from sim.world import INTERCEPT_WAIT_S, CityContext, World


@dataclass(frozen=True, slots=True)
class Bound:
    """The perfect-knowledge verdict on one run (times in s after the incident)."""

    seed: int
    winnable: bool
    #: The best ``pass time − (crew in place + 10 s)`` over the route's crossings and crews.
    best_margin_s: float | None
    #: Winnable again when the crews only learn the route at the first delivered report.
    winnable_from_first_report: bool
    end_kind: str  # how the suspect's route ends: "escape" (an exit) or "timeout"
    end_t: float
    first_report_t: float | None
    origin: int
    origin_exit_free_flow_s: float
    nearest_crew_to_origin_s: float
    suspect_speed_factor: float


class _NoCrews:
    """A policy for the route alone (the world has no crew to order)."""

    name = "none"

    def start(self, world: World, t: float) -> None:
        return None

    def on_delivery(self, world: World, sighting: object, t: float) -> None:
        return None

    def on_tick(self, world: World, t: float) -> None:
        return None

    def on_crew_arrival(self, world: World, crew: object, t: float) -> None:
        return None

    def finish(self, world: World) -> None:
        return None


def perfect_knowledge(ctx: CityContext, scenario: Scenario, seed: int) -> Bound:
    """The bound for run ``seed`` of ``scenario`` (not meaningful for an ``evasive`` suspect,
    whose route depends on where crews are)."""
    sc = scenario.with_run(seed=seed, policy="static")
    world = World(ctx, sc, _NoCrews())
    starts = np.array([c.node for c in world.crews], dtype=np.int64)
    # The suspect's route does not depend on the crews (separate random streams): play it alone.
    world.crews = []
    world._crew_by_id = {}
    result = world.run_for()
    g, o = ctx.graph, result.outcome
    pass_t: dict[int, float] = {}
    for m in result.recording.moves:
        if m.agent == "suspect" and m.t1 <= o.t + 1e-9:
            pass_t.setdefault(int(g.edge_v[m.edge]), m.t1)
    model = sc.crew_model
    first = min((s.delivered_t for s in result.recording.sightings), default=None)
    origin_exit = float(ctx.navigator.times_to(ctx.exits.tolist())[world.origin])
    if starts.size == 0 or not pass_t:
        return Bound(
            seed=seed,
            winnable=False,
            best_margin_s=None,
            winnable_from_first_report=False,
            end_kind=o.kind,
            end_t=o.t,
            first_report_t=first,
            origin=world.origin,
            origin_exit_free_flow_s=origin_exit,
            nearest_crew_to_origin_s=float("inf"),
            suspect_speed_factor=world.suspect_factor,
        )
    drive = times_from_nodes(g, starts) / model.speed_factor  # (crews, nodes)
    in_place = np.where(drive > 0.0, drive + model.reaction_s, 0.0)
    nodes = np.fromiter(pass_t, dtype=np.int64)
    passes = np.fromiter(pass_t.values(), dtype=np.float64)
    margin = passes - in_place[:, nodes].min(axis=0) - INTERCEPT_WAIT_S
    late_start = np.where(drive > 0.0, (np.inf if first is None else first) + drive + model.reaction_s, 0.0)
    margin_first = passes - late_start[:, nodes].min(axis=0) - INTERCEPT_WAIT_S
    return Bound(
        seed=seed,
        winnable=bool((margin >= 0).any()),
        best_margin_s=float(margin.max()),
        winnable_from_first_report=bool((margin_first >= 0).any()),
        end_kind=o.kind,
        end_t=o.t,
        first_report_t=first,
        origin=world.origin,
        origin_exit_free_flow_s=origin_exit,
        nearest_crew_to_origin_s=float(drive[:, world.origin].min()),
        suspect_speed_factor=world.suspect_factor,
    )
