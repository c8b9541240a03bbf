"""Load the core's compiled kernels before the first sighting needs them.

Numba compiles a kernel at its first call, or loads it from the on-disk cache (``map_data.jit``):
tens of milliseconds per kernel, half a second in all, paid by the first sighting of a freshly
started server unless paid at startup. :func:`warm_up_kernels` predicts and plans once, with a few
crews, on a small hand-made grid, then tracks a suspect over three of the grid's synthetic cameras
through a :class:`~guidance.coordinator.Coordinator` (the tracker's kernels; the kernels are
compiled per argument types, which every compiled graph shares); nothing of it is kept.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from guidance.coordinator import Coordinator
from guidance.planner import InterceptionPlanner
from guidance.prediction import EscapePredictor
from guidance.testing import PointBelief, Position, grid_city
from guidance.types import Crew, Plan
from map_data.cameras import build_camera_network, place_synthetic_cameras
from map_data.network_types import City
from map_data.types import EdgePosition
from tracking.types import Sighting

_AT = datetime(2000, 1, 1, tzinfo=UTC)  # any aware time: nothing is kept


def warm_up_kernels() -> Plan:
    """Predict from a point on a 9×9 grid and plan for four crews (the greedy, its improving
    moves, the quantiles, the routes' kernels all run). Returns the plan (for tests)."""
    city = grid_city(9)
    g = city.graph
    centre = 4 * 9 + 4
    belief = PointBelief("warm-up", _AT, (Position(int(g.out_of(centre)[0]), 0.0, 1.0),), centre)
    prediction = EscapePredictor(city).predict(belief)
    crews = [Crew(f"warm-up-{i}", EdgePosition(int(e), 0.0)) for i, e in enumerate((0, 40, 80, 120))]
    plan = InterceptionPlanner(city).plan(prediction, crews, at=_AT)
    _track(city, crews)
    return plan


def _track(grid: City, crews: list[Crew]) -> None:
    """Three sightings, 30 s apart, at cameras of the grid, through a Coordinator: the tracker's
    update (propagate, condition, merge) and belief, and the prediction and plan after them."""
    g = grid.graph
    cameras = build_camera_network(g, place_synthetic_cameras(g, 12, seed=0))
    city = City(graph=g, cameras=cameras)
    coordinator = Coordinator(city)
    coordinator.open_incident("warm-up", at=_AT)
    coordinator.set_crews(crews, _AT)
    for k, camera_id in enumerate(sorted(cameras.cameras)[:3]):
        at = _AT + timedelta(seconds=30 * (k + 1))
        coordinator.ingest(
            Sighting(incident_id="warm-up", camera_id=camera_id, observed_at=at, source_event_id=f"w{k}")
        )
        coordinator.state("warm-up", at + timedelta(seconds=20))
