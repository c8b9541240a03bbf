"""Data types of the camera network and of the assembled city (apart from the algorithms)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from map_data.types import CompiledGraph


@dataclass(frozen=True, slots=True)
class Camera:
    """A fixed camera. ``heading_deg`` is the view direction (0 = north, clockwise) and
    ``fov_deg`` the field-of-view width; both ``None`` for a dome that sees all round."""

    camera_id: str
    lon: float
    lat: float
    heading_deg: float | None = None
    fov_deg: float | None = None
    range_m: float = 40.0
    commune: str | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class EdgeSpan:
    """The stretch ``[start_m, end_m]`` of directed edge ``edge`` that a camera sees."""

    edge: int
    start_m: float
    end_m: float


@dataclass(frozen=True, slots=True)
class CameraView:
    camera_id: str
    spans: tuple[EdgeSpan, ...]


@dataclass(frozen=True)
class CameraNetwork:
    """Cameras, what each sees, and the reverse index from an edge to the cameras that see it.

    ``on_edge[e]`` lists ``(camera_id, start_m, end_m)`` for every camera seeing edge ``e``.
    ``detection_probability`` is the chance that a suspect passing a seen stretch is reported
    (operators miss some; never 1.0 for negative information to stay honest).
    """

    cameras: Mapping[str, Camera]
    views: Mapping[str, CameraView]
    on_edge: Mapping[int, tuple[tuple[str, float, float], ...]]
    detection_probability: float = 0.8

    def view(self, camera_id: str) -> CameraView:
        """What ``camera_id`` sees; :class:`map_data.errors.UnknownCameraError` when unknown."""
        from map_data.errors import UnknownCameraError

        try:
            return self.views[camera_id]
        except KeyError:
            raise UnknownCameraError(f"unknown camera {camera_id!r}") from None


@dataclass(frozen=True, slots=True)
class Commune:
    """A commune (French municipality): its INSEE code or name, and its boundary (lon/lat WKT)."""

    name: str
    boundary_wkt: str


@dataclass(frozen=True)
class City:
    """Everything the core needs about one place: the compiled graph and its cameras.

    Built by :func:`map_data.city.load_city` / :func:`map_data.city.default_city`.
    """

    graph: CompiledGraph
    cameras: CameraNetwork
    communes: tuple[Commune, ...] = field(default=())
