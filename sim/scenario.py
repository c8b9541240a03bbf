"""Scenario files: what a simulated exercise is made of, validated, with a published JSON Schema.

A scenario is a JSON (or YAML) document; :func:`load_scenario` reads and validates it and
:func:`scenario_schema` gives its JSON Schema (also written to ``sim/scenario.schema.json``).
Every part has defaults, so ``{"crews": {"count": 6}}`` is a complete scenario on the
generated city. The ``seed`` is kept with the scenario: the same scenario and seed give the
same run.
"""

from __future__ import annotations

import importlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from map_data.network_types import City

#: Project root (``sim/`` lives directly under it).
ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = Path(__file__).with_name("scenario.schema.json")

BehaviourName = Literal["exit_seeking", "main_road", "evasive", "rodeo"]
PolicyName = Literal["guidance", "chase", "nearest", "static"]
POLICIES: tuple[str, ...] = ("guidance", "chase", "nearest", "static")
BEHAVIOURS: tuple[str, ...] = ("exit_seeking", "main_road", "evasive", "rodeo")


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or invalid (the message names the file and field)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_Model):
    """A WGS84 position."""

    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)


class GeneratedMap(_Model):
    """The generated city (``map_data.generate``) with its seed."""

    kind: Literal["generated"] = "generated"
    n_crossings: int = Field(1500, ge=50, le=20000)
    seed: int = 7


class FileMap(_Model):
    """A map file (OSM XML, possibly .bz2). Relative paths are looked up beside the scenario file,
    then from the project root; a ``../shared/maps/NAME`` path also honours ``CORDON_SHARED_MAPS``."""

    kind: Literal["file"] = "file"
    path: str


class CityCameras(_Model):
    """The cameras that come with the city (the generated city has synthetic ones at Metz density)."""

    kind: Literal["city"] = "city"


class SyntheticCameras(_Model):
    """Synthetic cameras: ``density="metz"`` (about one per three crossings) or an explicit ``count``."""

    kind: Literal["synthetic"] = "synthetic"
    density: Literal["metz"] | None = "metz"
    count: int | None = Field(None, ge=1)
    seed: int = 0


class FileCameras(_Model):
    """A camera file (GeoJSON or CSV, read by ``map_data.cameras``)."""

    kind: Literal["file"] = "file"
    path: str


class CrewArea(_Model):
    """Where random crew positions are drawn: crossings within ``radius_m`` of ``center``
    (default: the incident) and at least ``min_distance_m`` from it."""

    center: Point | None = None
    radius_m: float = Field(2500.0, gt=0)
    min_distance_m: float = Field(300.0, ge=0)


class CrewSpec(_Model):
    """The crews: explicit positions (snapped to the nearest crossing) or ``count`` random ones."""

    count: int = Field(6, ge=0, le=200)
    positions: list[Point] | None = None
    area: CrewArea = CrewArea()


class Incident(_Model):
    """Where and when the incident starts. Without ``place`` a crossing is drawn at random
    (seeded) among those at least ``min_exit_time_s`` of free-flow driving from every exit."""

    place: Point | None = None
    at: AwareDatetime = datetime(2026, 1, 15, 22, 0, tzinfo=UTC)
    min_exit_time_s: float = Field(150.0, ge=0)


class TrajectoryPoint(_Model):
    """One timed ground-truth position (seconds after the incident), on the roads."""

    t_s: float = Field(ge=0)
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)


class SuspectSpec(_Model):
    """The fleeing suspect: a named behaviour with its parameters, or an explicit trajectory.

    ``speed_factor`` is drawn uniformly in ``[min, max]`` per run (speed = limit × factor) and each
    edge gets a log-normal noise of ``edge_noise_sigma``. ``sight_m`` is how far an evasive suspect
    sees crews; ``exit_choices`` how many of the fastest exits an exit-seeker picks among;
    ``loops`` and ``loop_radius_m`` shape the rodeo."""

    behaviour: BehaviourName = "exit_seeking"
    speed_factor: tuple[float, float] = (1.3, 1.6)
    edge_noise_sigma: float = Field(0.1, ge=0, le=1)
    sight_m: float = Field(150.0, ge=0)
    exit_choices: int = Field(3, ge=1)
    loops: int = Field(3, ge=0)
    loop_radius_m: float = Field(700.0, gt=0)
    trajectory: list[TrajectoryPoint] | None = None


class CameraModel(_Model):
    """Cameras and operators: detection probability (``p_detect``, default the network's), per-camera
    overrides, a log-normal handoff delay (median and sigma of its log), and the chance that the
    operator names a neighbouring camera instead (wrong handoff)."""

    p_detect: float | None = Field(None, ge=0, le=1)
    per_camera: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}
    handoff_median_s: float = Field(8.0, gt=0)
    handoff_sigma: float = Field(0.5, ge=0)
    p_wrong_handoff: float = Field(0.05, ge=0, le=1)


class CrewModel(_Model):
    """Crews: reaction delay to an order, probability of complying with it, speed factor over
    the limit (lights and siren), and how often the policy is consulted (seconds)."""

    reaction_s: float = Field(5.0, ge=0)
    compliance: float = Field(0.95, ge=0, le=1)
    speed_factor: float = Field(1.2, gt=0)
    update_interval_s: float = Field(10.0, gt=0)
    sight_m: float = Field(150.0, ge=0)


class Scenario(_Model):
    """One simulated exercise. See docs/simulator.md."""

    name: str = "scenario"
    map: Annotated[GeneratedMap | FileMap, Field(discriminator="kind")] = GeneratedMap()
    cameras: Annotated[CityCameras | SyntheticCameras | FileCameras, Field(discriminator="kind")] = (
        CityCameras()
    )
    communes: str | None = None
    crews: CrewSpec = CrewSpec()
    incident: Incident = Incident()
    suspect: SuspectSpec = SuspectSpec()
    camera_model: CameraModel = CameraModel()
    crew_model: CrewModel = CrewModel()
    policy: PolicyName = "guidance"
    duration_s: float = Field(600.0, gt=0, le=24 * 3600)
    seed: int = 0
    base_dir: str | None = Field(None, description="directory relative paths are resolved from")

    def with_run(self, *, seed: int | None = None, policy: str | None = None) -> Scenario:
        """A copy with another seed and/or policy."""
        update: dict[str, Any] = {}
        if seed is not None:
            update["seed"] = seed
        if policy is not None:
            if policy not in POLICIES:
                raise ScenarioError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
            update["policy"] = policy
        return self.model_copy(update=update)


def scenario_schema() -> dict[str, Any]:
    """The JSON Schema of scenario files."""
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://cordon.example/schemas/sim-scenario.json"
    return schema


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario ({exc.strerror})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            yaml: Any = importlib.import_module("yaml")
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError, ImportError
        raise ScenarioError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be an object, not {type(data).__name__}")
    return data


def parse_scenario(data: dict[str, Any], *, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping; :class:`ScenarioError` names the first bad field."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ScenarioError(f"{source}: {where}: {err['msg']} ({exc.error_count()} error(s))") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (JSON, or YAML by extension)."""
    p = Path(path)
    data = _read_mapping(p)
    data.setdefault("base_dir", str(p.resolve().parent))
    if "name" not in data:
        data["name"] = p.stem
    return parse_scenario(data, source=str(p))


def resolve_path(scenario: Scenario, path: str) -> Path:
    """Find a file named in a scenario (see :class:`FileMap`)."""
    p = Path(path)
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = []
        shared = os.environ.get("CORDON_SHARED_MAPS")
        parts = p.parts
        if shared and "shared" in parts and "maps" in parts:
            candidates.append(Path(shared) / p.name)
        if scenario.base_dir:
            candidates.append(Path(scenario.base_dir) / p)
        candidates.append(ROOT / p)
        if shared:
            candidates.append(Path(shared) / p.name)
    for c in candidates:
        if c.exists():
            return c
    raise ScenarioError(f"{path}: file not found (looked at {', '.join(str(c) for c in candidates)})")


def build_city(scenario: Scenario) -> City:
    """The :class:`map_data.network_types.City` a scenario plays on (map, cameras, communes).

    The compiled-graph cache directory is ``$CORDON_CACHE_DIR`` when set (none otherwise)."""
    from map_data.cameras import build_camera_network, cameras_from_file, place_synthetic_cameras
    from map_data.city import default_city, load_city
    from map_data.network_types import City

    cache_dir = os.environ.get("CORDON_CACHE_DIR") or None
    cams = scenario.cameras
    if isinstance(scenario.map, GeneratedMap):
        if scenario.communes is not None:
            raise ScenarioError(
                "communes: the generated city has its own communes; give a map file to use a file"
            )
        city = default_city(n_crossings=scenario.map.n_crossings, seed=scenario.map.seed)
        if isinstance(cams, CityCameras):
            return city
        graph = city.graph
        if isinstance(cams, SyntheticCameras):
            from map_data.cameras import metz_density

            n = cams.count if cams.count is not None else metz_density(graph)
            cameras = place_synthetic_cameras(graph, n, seed=cams.seed)
        else:
            cameras = cameras_from_file(resolve_path(scenario, cams.path))
        return City(graph, build_camera_network(graph, cameras, strict=False), city.communes)
    map_path = resolve_path(scenario, scenario.map.path)
    communes = resolve_path(scenario, scenario.communes) if scenario.communes else None
    if isinstance(cams, FileCameras):
        return load_city(
            map_path,
            cameras_path=resolve_path(scenario, cams.path),
            communes_path=communes,
            synthetic_cameras=0,
            cache_dir=cache_dir,
        )
    count = cams.count if isinstance(cams, SyntheticCameras) else None
    seed = cams.seed if isinstance(cams, SyntheticCameras) else 0
    return load_city(
        map_path, communes_path=communes, synthetic_cameras=count, seed=seed, cache_dir=cache_dir
    )
