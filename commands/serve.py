"""``cordon serve`` (the HTTP/websocket server) and ``cordon demo`` (the server plus a simulated
incident played through it as an ordinary client)."""

from __future__ import annotations

import asyncio
import bisect
import importlib
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from serving.config import ServerConfig
from serving.messages import DispatchMode

log = logging.getLogger("cordon.serve")


def _factory(spec: str | None) -> Any:
    """``module:attribute`` → the attribute (a Coordinator class or factory), for tests and plugins."""
    if spec is None:
        return None
    module, _, attr = spec.partition(":")
    if not attr:
        raise typer.BadParameter(f"--coordinator {spec!r} must be 'module:attribute'")
    return getattr(importlib.import_module(module), attr)


def build_config(
    *,
    host: str,
    port: int,
    redis: str | None,
    map_path: Path | None,
    cameras: Path | None,
    communes: Path | None,
    clock: str,
    demo: bool | None,
    audit_db: str | None,
    data_dir: Path | None,
    worker_id: str | None,
    dispatch_mode: str,
    n_crossings: int,
    demo_crews: int | None = None,
    crew_speed_factor: float | None = None,
) -> ServerConfig:
    # The embedded default (no Redis, no map) is the demo; otherwise demo tokens are off unless asked.
    embedded = redis is None and map_path is None
    return ServerConfig.from_env(
        host=host,
        port=port,
        redis_url=redis,
        map_path=map_path,
        cameras_path=cameras,
        communes_path=communes,
        clock=clock,
        demo=embedded if demo is None else demo,
        audit_db=audit_db,
        data_dir=data_dir,
        worker_id=worker_id,
        dispatch_mode=DispatchMode(dispatch_mode),
        n_crossings=n_crossings,
        demo_crews=demo_crews,
        crew_speed_factor=crew_speed_factor,
    )


def run_server(config: ServerConfig, *, coordinator: str | None = None, log_level: str = "info") -> None:
    import uvicorn

    from server import create_app

    app = create_app(config, coordinator_factory=_factory(coordinator))
    # The core and audit threads are CPU-bound Python; with the default 5 ms GIL switch interval
    # the event loop, which gives the GIL up at every socket call, waits up to 5 ms each time
    # to get it back (the convoy effect). A shorter interval keeps websocket latency low.
    sys.setswitchinterval(0.0005)
    if config.demo:
        token = app.state.principals.issue(_operator_role(), ["*"])
        typer.echo(
            "DEMO MODE: local token issuer and /api/dev/tokens are on (never use this for live operations)\n"
            f"  operator console: http://{config.host}:{config.port}/console?token={token}\n"
            f"  API docs:         http://{config.host}:{config.port}/docs\n"
            f"  AsyncAPI:         http://{config.host}:{config.port}/asyncapi.json"
        )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        ws_max_size=config.ws_max_size,
        ws_per_message_deflate=False,
        log_level=log_level,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        lifespan="on",
    )


def _operator_role() -> Any:
    from serving.auth import Role

    return Role.supervisor


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        redis: Annotated[
            str | None, typer.Option("--redis", help="Redis URL: scale-out mode (Streams bus, shared state).")
        ] = None,
        map_path: Annotated[
            Path | None, typer.Option("--map", help="OSM/GraphML map (default: generated city).")
        ] = None,
        cameras: Annotated[Path | None, typer.Option(help="Cameras file (GeoJSON/CSV).")] = None,
        communes: Annotated[Path | None, typer.Option(help="Communes GeoJSON.")] = None,
        clock: Annotated[
            str, typer.Option(help="'wall' (live) or 'simulation' (time set by a simulator).")
        ] = "wall",
        demo: Annotated[
            bool | None,
            typer.Option("--demo/--no-demo", help="Demo token endpoint (default: on when embedded)."),
        ] = None,
        audit_db: Annotated[
            str | None, typer.Option(help="Audit store: SQLite path or postgresql://... (default: data dir).")
        ] = None,
        data_dir: Annotated[
            Path | None, typer.Option(help="Where the SQLite audit log and caches go.")
        ] = None,
        worker_id: Annotated[
            str | None, typer.Option(help="This process's consumer name (Redis mode).")
        ] = None,
        dispatch_mode: Annotated[
            str, typer.Option(help="Default dispatch mode: 'direct' or 'approval'.")
        ] = "direct",
        n_crossings: Annotated[int, typer.Option(help="Size of the generated city.")] = 1500,
        demo_crews: Annotated[
            int | None,
            typer.Option(
                min=0,
                help="Crews parked on the map in demo mode (default 12; 0: none, e.g. for "
                "'cordon sim run --server'). The demo token endpoint stays on.",
            ),
        ] = None,
        crew_speed_factor: Annotated[
            float | None,
            typer.Option(min=0.01, help="Crews' speed factor when a crew sends none (default 1.2)."),
        ] = None,
        coordinator: Annotated[
            str | None, typer.Option(hidden=True, help="module:attr of a Coordinator factory (tests).")
        ] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    ) -> None:
        """Run the server. With no options: the embedded default, one process, no external service."""
        logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO))
        config = build_config(
            host=host,
            port=port,
            redis=redis,
            map_path=map_path,
            cameras=cameras,
            communes=communes,
            clock=clock,
            demo=demo,
            audit_db=audit_db,
            data_dir=data_dir,
            worker_id=worker_id,
            dispatch_mode=dispatch_mode,
            n_crossings=n_crossings,
            demo_crews=demo_crews,
            crew_speed_factor=crew_speed_factor,
        )
        run_server(config, coordinator=coordinator, log_level=log_level)

    @app.command()
    def demo(
        port: Annotated[
            int | None, typer.Option(help="Port of the demo server (default: a free one).")
        ] = None,
        duration: Annotated[float, typer.Option(help="Seconds of simulated pursuit to play.")] = 45.0,
        crews: Annotated[int, typer.Option(help="Simulated crews.")] = 8,
        seed: Annotated[int, typer.Option(help="Random seed of the simulated incident.")] = 1,
        n_crossings: Annotated[int, typer.Option(help="Size of the generated city.")] = 900,
    ) -> None:
        """Start the embedded server and play a simulated incident through it (crews as tablets)."""
        logging.basicConfig(level=logging.WARNING)
        config = ServerConfig.from_env(
            port=port or _free_port(),
            demo=True,
            demo_crews=0,
            n_crossings=n_crossings,
            audit_db="memory",
            data_dir=Path(".cordon-data"),
        )
        server = _start_in_thread(config)
        base = f"http://{config.host}:{config.port}"
        token = server.config.app.state.principals.issue(_operator_role(), ["*"])
        typer.echo(f"Cordon demo server on {base}\n  operator console: {base}/console?token={token}")
        try:
            summary = asyncio.run(
                play(
                    base,
                    server.config.app.state.city,
                    duration_s=duration,
                    n_crews=crews,
                    seed=seed,
                    echo=typer.echo,
                )
            )
        finally:
            server.should_exit = True
        typer.echo(summary.text())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_in_thread(config: ServerConfig) -> Any:
    import uvicorn

    from server import create_app

    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            ws_max_size=config.ws_max_size,
            ws_per_message_deflate=False,
        )
    )
    thread = threading.Thread(target=server.run, name="cordon-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise typer.Exit(code=1)
        time.sleep(0.05)
    os.environ.setdefault("CORDON_DEMO_URL", f"http://{config.host}:{config.port}")
    return server


# ---------------------------------------------------------------------------------------------
# The demo: a simulated incident played through the server's REST and websocket API


@dataclass
class DemoSummary:
    sightings: int = 0
    missed: int = 0
    plans: int = 0
    suggestions: int = 0
    accepted: int = 0
    in_position: int = 0
    contact: str | None = None
    escaped: bool = False
    elapsed_s: float = 0.0
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        end = (
            f"contact by {self.contact}"
            if self.contact
            else ("the suspect left the map" if self.escaped else "no contact before the end of the demo")
        )
        return (
            f"Demo over after {self.elapsed_s:.0f} s: {self.sightings} sightings posted "
            f"({self.missed} passes missed by operators), {self.plans} plans, {self.suggestions} suggestions "
            f"to tablets, {self.accepted} accepted, {self.in_position} crews in position; {end}."
        )


@dataclass
class _Drive:
    """A route through the graph driven at the legal speed: where the vehicle is at ``t`` seconds."""

    nodes: list[int]
    times_s: list[float]  # arrival at each node

    @classmethod
    def along(cls, graph: Any, nodes: list[int], *, speed_factor: float = 1.0) -> _Drive:
        times = [0.0]
        for u, v in itertools.pairwise(nodes):
            times.append(times[-1] + float(graph.edge_time_s[graph.edge_between(u, v)]) / speed_factor)
        return cls(nodes, times)

    @property
    def duration_s(self) -> float:
        return self.times_s[-1]

    def lonlat(self, graph: Any, t: float) -> tuple[float, float]:
        if t >= self.times_s[-1] or len(self.nodes) == 1:
            lon, lat = graph.node_lonlat[self.nodes[-1]]
            return float(lon), float(lat)
        i = max(0, bisect.bisect_right(self.times_s, t) - 1)
        t0, t1 = self.times_s[i], self.times_s[i + 1]
        f = 0.0 if t1 <= t0 else (t - t0) / (t1 - t0)
        (x0, y0), (x1, y1) = graph.node_lonlat[self.nodes[i]], graph.node_lonlat[self.nodes[i + 1]]
        return float(x0 + f * (x1 - x0)), float(y0 + f * (y1 - y0))


def _camera_passes(city: Any, drive: _Drive) -> list[tuple[float, str]]:
    """(time, camera) each time the drive passes through a camera's view."""
    graph = city.graph
    out: list[tuple[float, str]] = []
    for i, (u, v) in enumerate(zip(drive.nodes, drive.nodes[1:], strict=False)):
        e = graph.edge_between(u, v)
        length = float(graph.edge_length_m[e]) or 1.0
        for camera_id, start_m, end_m in city.cameras.on_edge.get(e, ()):
            f = ((start_m + end_m) / 2) / length
            out.append((drive.times_s[i] + f * (drive.times_s[i + 1] - drive.times_s[i]), camera_id))
    out.sort()
    seen: set[str] = set()
    unique = []
    for t, cam in out:  # one report per camera and pass
        if cam not in seen:
            unique.append((t, cam))
            seen.add(cam)
    return unique


def _plan_line(trigger: str, plan: dict[str, Any], suggestions: dict[str, dict[str, Any]]) -> str:
    parts = []
    for sid in plan["suggestion_ids"][:2]:
        s = suggestions.get(sid)
        if s is None:
            continue
        where = " × ".join(s["street_names"][:2]) or f"crossing {s['target_node']}"
        suspect = s["suspect_earliest_eta_s"]
        vs = f" vs suspect {suspect:.0f} s" if suspect is not None else ""
        parts.append(f"crew {s['crew_id']} → {where}, ETA {s['crew_eta_s']:.0f} s{vs}")
    more = len(plan["suggestion_ids"]) - len(parts)
    tail = f" (+{more} more)" if more > 0 else ""
    return f"{trigger} → plan v{plan['version']}: " + ("; ".join(parts) or "hold") + tail


async def play(
    base: str,
    city: Any,
    *,
    duration_s: float = 45.0,
    n_crews: int = 8,
    seed: int = 1,
    echo: Callable[[str], Any] = print,
    incident_id: str | None = None,
) -> DemoSummary:
    """Play one simulated pursuit through a running server, as its clients would.

    The suspect drives the fastest way to one of the map's exits from a crossing near the centre;
    each camera it passes reports it with probability 0.8 (a ``simulation`` sighting posted over
    REST). Crews are tablets on the crew websocket: they report their positions, accept their
    suggestions and drive there; a crew reaching the suspect's crossing reports contact.
    """
    import numpy as np

    from map_data.city import exit_nodes
    from map_data.routing import shortest_path
    from serving.client import Console, CordonClient, Tablet

    graph = city.graph
    rng = np.random.default_rng(seed)
    summary = DemoSummary()
    loop = asyncio.get_running_loop()
    start = loop.time()
    incident_id = incident_id or f"demo-{seed}-{int(time.time())}"

    centre = graph.node_xy.mean(axis=0)
    near_centre = np.argsort(np.hypot(*(graph.node_xy - centre).T))[:50]
    origin = int(rng.choice(near_centre))
    exits = exit_nodes(graph)
    drive = None
    for target in rng.permutation(exits)[:20]:
        try:
            drive = _Drive.along(graph, shortest_path(graph, origin, int(target)))
            break
        except ValueError:
            continue
    if drive is None:
        raise RuntimeError("no exit reachable from the demo's origin")
    # The pursuit starts a second before the first camera sees the suspect (its drive so far is
    # skipped); that first pass is always reported, later ones with probability 0.8.
    raw_passes = _camera_passes(city, drive)
    if not raw_passes:
        raise RuntimeError("the demo's escape route passes no camera")
    skip_s = max(0.0, raw_passes[0][0] - 1.0)
    all_passes = [(t - skip_s, cam) for t, cam in raw_passes]
    passes = all_passes[:1] + [(t, cam) for t, cam in all_passes[1:] if rng.random() < 0.8]

    async with CordonClient(base) as anon:
        op_token = await anon.dev_token("supervisor")
    op = CordonClient(base, op_token)
    console = Console(base, op_token)
    await console.connect()
    suggestions: dict[str, dict[str, Any]] = {}
    crew_nodes = [int(n) for n in rng.choice(graph.n_nodes, n_crews, replace=False)]
    crew_drives: dict[str, tuple[float, _Drive]] = {}
    tablets: dict[str, Tablet] = {}
    for i, node in enumerate(crew_nodes):
        crew_id = f"C-{i + 1:02d}"
        async with CordonClient(base) as anon:
            tok = await anon.dev_token("crew", crew_id=crew_id)
        tablet = Tablet(base, tok, crew_id)
        await tablet.connect()
        lon, lat = graph.node_lonlat[node]
        await tablet.position(float(lon), float(lat))
        tablets[crew_id] = tablet
        crew_drives[crew_id] = (0.0, _Drive([node], [0.0]))
    await asyncio.sleep(0.3)
    olon, olat = drive.lonlat(graph, skip_s)
    await op.open_incident(incident_id, lon=float(olon), lat=float(olat))
    echo(f"incident {incident_id} opened; suspect leaving crossing {origin}; {n_crews} crews online")

    t0 = loop.time()
    next_pass = 0
    trigger = "incident opened"  # what the next plan answers
    handled: set[str] = set()
    while True:
        t = loop.time() - t0
        if t > duration_s or summary.contact:
            break
        if t + skip_s > drive.duration_s + 5:
            summary.escaped = True
            break
        while next_pass < len(passes) and passes[next_pass][0] <= t:
            _, cam = passes[next_pass]
            next_pass += 1
            trigger = f"sighting at {cam}"
            await op.post_sighting(
                {
                    "incident_id": incident_id,
                    "camera_id": cam,
                    "observed_at": datetime.now(UTC).isoformat(),
                    "source_kind": "simulation",
                    "source_event_id": f"{incident_id}-{cam}",
                }
            )
            summary.sightings += 1
        while not console.inbox.empty():
            msg = console.inbox.get_nowait()
            if msg["type"] == "plan" and msg["incident_id"] == incident_id:
                suggestions.update({s["suggestion_id"]: s for s in msg["suggestions"]})
                summary.plans += 1
                line = _plan_line(trigger, msg, suggestions)
                trigger = "re-plan (time, crews moving)"
                summary.lines.append(line)
                echo(f"[{t:5.1f} s] {line}")
        sx, sy = drive.lonlat(graph, t + skip_s)
        for crew_id, tablet in tablets.items():
            since, cdrive = crew_drives[crew_id]
            current = tablet.current.get(incident_id)
            if current is not None and current["suggestion_id"] not in handled:
                handled.add(current["suggestion_id"])
                summary.suggestions += 1
                await tablet.accept(current["suggestion_id"])
                summary.accepted += 1
                here = cdrive.nodes[
                    min(len(cdrive.nodes) - 1, bisect.bisect_right(cdrive.times_s, t - since))
                ]
                try:
                    path = shortest_path(graph, here, int(current["target_node"]))
                except ValueError:
                    continue
                crew_drives[crew_id] = (t, _Drive.along(graph, path, speed_factor=1.3))
                since, cdrive = crew_drives[crew_id]
            lon, lat = cdrive.lonlat(graph, t - since)
            if current is not None and t - since >= cdrive.duration_s and len(cdrive.nodes) > 1:
                key = current["suggestion_id"] + ":in"
                if key not in handled:
                    handled.add(key)
                    summary.in_position += 1
                    await tablet.in_position(current["suggestion_id"])
                    where = " × ".join(current["street_names"][:2])
                    echo(f"[{t:5.1f} s] crew {crew_id} in position at {where}")
            if abs(lon - sx) < 0.0003 and abs(lat - sy) < 0.0002 and t > 2:
                summary.contact = crew_id
                await tablet.contact(incident_id=incident_id)
                echo(f"[{t:5.1f} s] crew {crew_id} reports contact with the suspect")
                break
            if int(t * 2) % 4 == 0:
                await tablet.position(lon, lat)
        await asyncio.sleep(0.5)
    summary.elapsed_s = loop.time() - start
    passed_by = loop.time() - t0
    summary.missed = sum(1 for t, _cam in all_passes if t <= passed_by) - summary.sightings
    await op.close_incident(incident_id)
    for tablet in tablets.values():
        await tablet.close()
    await console.close()
    await op.aclose()
    return summary


def main() -> None:
    """``python -m commands.serve serve ...``: the server commands alone (without the other areas')."""
    app = typer.Typer(no_args_is_help=True, add_completion=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
