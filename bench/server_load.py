"""Load benchmark of the server: Harrisburg, cameras at Metz density, many tablets and consoles.

The server runs as its own process (``python -m commands.serve serve --map harrisburg``, the
embedded in-process bus, audit in SQLite), driven over loopback by this process through
:mod:`serving.client`: 300 crew tablets (websockets, reporting positions every 10 s), 20 operator
consoles, and sightings posted over REST at a fixed rate, spread over several incidents, each
incident's sightings following the cameras along one route.

Measured:

* sighting-to-tablet latency: from posting a sighting to the first tablet receiving a suggestion
  of the plan made at that sighting's time (matched on incident and ``issued_at``);
* messages lost: crew-stream messages the server published (``cordon_crew_messages_total``)
  minus the distinct (crew, seq) the tablets received;
* server CPU (from ``/proc``) and peak RSS.

Baseline, in the same run: the same flow at 1 sighting per second (an unloaded server).
``--quick``: 20 s of load instead of 120 s. Writes ``bench/results/server_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.auth import Role, TokenIssuer  # noqa: E402
from serving.client import Console, CordonClient, Tablet  # noqa: E402

SECRET = b"bench-server-load-secret-0123456789abcdef"
STAGES = "cordon_sighting_stage_seconds"
MAPS = Path(os.environ.get("CORDON_SHARED_MAPS", ROOT.parent / "shared" / "maps"))


class StubCoordinator:
    """A near-free stand-in of ``guidance.coordinator.Coordinator`` (same calls), for measuring
    the serving stack alone: each sighting makes a plan sending the 3 crews nearest the camera
    to the crossing the camera looks at."""

    def __init__(self, city: Any) -> None:
        self.city = city
        self.crew_ids: list[str] = []
        self.crew_lonlat = np.zeros((0, 2))
        self.versions: dict[str, int] = {}
        self.last: dict[str, str] = {}

    def open_incident(
        self, incident_id: str, *, at: datetime, commune: str | None = None, origin_lonlat: Any = None
    ) -> None:
        self.versions[incident_id] = 0

    def share_incident(self, incident_id: str, communes: Any) -> None:
        return None

    def close_incident(self, incident_id: str) -> None:
        self.versions.pop(incident_id, None)

    def set_crews(self, crews: Any, at: datetime, *, replan: bool = True) -> dict[str, Any]:
        graph = self.city.graph
        self.crew_ids = [c.crew_id for c in crews]
        self.crew_lonlat = np.array(
            [graph.node_lonlat[int(graph.edge_u[c.position.edge])] for c in crews]
        ).reshape(-1, 2)
        return {}

    def _plan(self, incident_id: str, camera_id: str, at: datetime) -> Any:
        from guidance.types import Plan, Suggestion

        graph = self.city.graph
        camera = self.city.cameras.cameras[camera_id]
        node = int(graph.edge_v[self.city.cameras.views[camera_id].spans[0].edge])
        self.versions[incident_id] += 1
        version = self.versions[incident_id]
        d = np.hypot(self.crew_lonlat[:, 0] - camera.lon, self.crew_lonlat[:, 1] - camera.lat)
        chosen = [self.crew_ids[i] for i in np.argsort(d)[:3]]
        lon, lat = graph.node_lonlat[node]
        suggestions = tuple(
            Suggestion(
                suggestion_id=f"{incident_id}:{version}:{crew}",
                incident_id=incident_id,
                crew_id=crew,
                target_node=node,
                lon=float(lon),
                lat=float(lat),
                street_names=(graph.edge_name[int(graph.out_of(node)[0])] or "street",),
                route_lonlat=((float(lon), float(lat)),),
                turns=(),
                crew_eta_s=30.0,
                suspect_earliest_eta_s=60.0,
                suspect_likely_eta_s=80.0,
                margin_s=30.0,
                probability_covered=0.5,
                reason="stub",
                plan_version=version,
                issued_at=at,
                expires_at=at + timedelta(seconds=120),
            )
            for crew in chosen
        )
        return Plan(incident_id, version, at, suggestions, (), 0.5, graph.version, "stub")

    def ingest(self, sighting: Any) -> Any:
        from types import SimpleNamespace

        self.last[sighting.incident_id] = sighting.camera_id
        plan = self._plan(sighting.incident_id, sighting.camera_id, sighting.observed_at)
        return SimpleNamespace(update=None, belief=None, prediction=None, plan=plan)

    def replan(self, incident_id: str, at: datetime) -> Any:
        return self._plan(incident_id, self.last[incident_id], at)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def issuer() -> TokenIssuer:
    return TokenIssuer(issuer="cordon-local", audience="cordon", key=SECRET, algorithm="HS256")


def mint(role: Role, *, crew_id: str | None = None) -> str:
    return issuer().issue(
        crew_id or role.value, role, ["*"], now=datetime.now(UTC), crew_id=crew_id, ttl_s=3600
    )


class ServerProcess:
    def __init__(
        self, map_path: Path, work: Path, *, coordinator: str | None = None, core_process: bool = False
    ) -> None:
        self.port = free_port()
        env = dict(os.environ, CORDON_TOKEN_SECRET=SECRET.decode(), PYTHONUNBUFFERED="1")
        env["CORDON_CORE_PROCESS"] = "1" if core_process else "0"
        self.log = (work / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *(
                    ["-m", "cProfile", "-o", os.environ["CORDON_BENCH_PROFILE"]]
                    if os.environ.get("CORDON_BENCH_PROFILE")
                    else []
                ),
                "-m",
                "commands.serve",
                "serve",
                "--port",
                str(self.port),
                "--map",
                str(map_path),
                "--no-demo",
                "--data-dir",
                str(ROOT / ".cordon-cache" / "bench"),
                "--audit-db",
                str(work / "audit.sqlite"),
                "--log-level",
                "warning",
                *(["--coordinator", coordinator] if coordinator else []),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        """CPU seconds of the server and of its children (the core process, when there is one)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in (self.proc.pid, *self.children()):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def children(self) -> list[int]:
        """The server's child processes (made by any of its threads)."""
        out: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                out.extend(int(p) for p in (task / "children").read_text().split())
            except OSError:
                continue
        return out

    def thread_cpu_s(self) -> dict[str, float]:
        """CPU seconds: ``main`` the event loop's thread, ``threads`` the server's other threads
        (the core thread, the audit writer...), ``children`` its child processes (the core
        process, when there is one)."""
        ticks = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for pid in self.children():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out["children"] = out.get("children", 0.0) + (int(fields[11]) + int(fields[12])) / ticks
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            name = "main" if task.name == str(self.proc.pid) else "threads"
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
        return out

    def run_delay_s(self) -> dict[str, float]:
        """Seconds the server's threads (``server``) and its child processes (``children``)
        spent runnable but waiting for a CPU (``/proc/.../schedstat``): on a shared machine,
        the time other programs took from them."""
        out = {"server": 0.0, "children": 0.0}
        tasks = [("server", t) for t in Path(f"/proc/{self.proc.pid}/task").iterdir()]
        for pid in self.children():
            with contextlib.suppress(OSError):
                tasks += [("children", t) for t in Path(f"/proc/{pid}/task").iterdir()]
        for name, task in tasks:
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[name] += int((task / "schedstat").read_text().split()[1]) / 1e9
        return out

    def rss_mb(self) -> tuple[float, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return rss / 1024, hwm / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@dataclass
class Phase:
    name: str
    rate: float
    duration_s: float
    posted: dict[str, float] = field(default_factory=dict)  # source_event_id → t_post
    latencies_ms: list[float] = field(default_factory=list)
    post_errors: int = 0
    post_error_kinds: dict[str, int] = field(default_factory=dict)  # "CordonHTTPError 429": n


def routes(city: Any, n: int, rng: np.random.Generator) -> list[list[str]]:
    """For each of ``n`` incidents, the cameras along a fastest path between two far crossings."""
    from map_data.routing import shortest_path

    graph = city.graph
    out: list[list[str]] = []
    while len(out) < n:
        a, b = (int(x) for x in rng.choice(graph.n_nodes, 2, replace=False))
        try:
            nodes = shortest_path(graph, a, b)
        except ValueError:
            continue
        cams: list[str] = []
        for u, v in itertools.pairwise(nodes):
            for camera_id, _s, _e in city.cameras.on_edge.get(graph.edge_between(u, v), ()):
                if camera_id not in cams:
                    cams.append(camera_id)
        if len(cams) >= 6:
            out.append(cams)
    return out


async def run_phase(
    phase: Phase, op: CordonClient, cams_by_incident: dict[str, list[str]], stats: dict[str, Any]
) -> None:
    loop = asyncio.get_running_loop()
    incidents = sorted(cams_by_incident)
    cursor = dict.fromkeys(incidents, 0)
    t0 = loop.time()
    k = 0
    tasks: set[asyncio.Task[None]] = set()

    async def post(body: dict[str, Any], key: str) -> None:
        phase.posted[key] = time.time()
        try:
            await op.post_sighting(body)
        except Exception as exc:
            phase.post_errors += 1
            kind = f"{type(exc).__name__} {getattr(exc, 'status', '')}".strip()
            phase.post_error_kinds[kind] = phase.post_error_kinds.get(kind, 0) + 1

    while loop.time() - t0 < phase.duration_s:
        due = t0 + k / phase.rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        inc = incidents[k % len(incidents)]
        cams = cams_by_incident[inc]
        camera = cams[cursor[inc] % len(cams)]
        cursor[inc] += 1
        at = datetime.now(UTC).replace(microsecond=(datetime.now(UTC).microsecond // 1000) * 1000)
        at = at + timedelta(microseconds=k % 1000)  # unique per sighting
        body = {
            "incident_id": inc,
            "camera_id": camera,
            "observed_at": at.isoformat(),
            "source_event_id": f"{phase.name}-{k}",
        }
        task = asyncio.create_task(post(body, body["source_event_id"]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        k += 1
    if tasks:
        await asyncio.gather(*tasks)
    stats["posted"] = stats.get("posted", 0) + k


def _suggestion_frame(raw: str) -> bool:
    """Whether a crew frame is a suggestion message or a snapshot (frames begin
    ``{"seq": N, "type": ...``): the load generator emulates 300 tablets in one process, so it
    decodes only what it measures; the others (tracks, the incident's prediction) are counted."""
    head = raw[:64]
    return re.search(r'"type": ?"(suggestion|snapshot)', head) is not None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def main_async(args: argparse.Namespace, *, stub: bool) -> dict[str, Any]:
    from map_data.city import load_city

    map_path = MAPS / "harrisburg.osm.bz2"
    if not map_path.exists():
        raise SystemExit(f"map not found: {map_path} (set CORDON_SHARED_MAPS)")
    work = Path(tempfile.mkdtemp(prefix="cordon-bench-"))
    server = ServerProcess(
        map_path,
        work,
        coordinator="bench.server_load:StubCoordinator" if stub else None,
        core_process=args.core_process,
    )
    city = await asyncio.to_thread(load_city, map_path, cache_dir=ROOT / ".cordon-cache" / "bench" / "cache")
    rng = np.random.default_rng(args.seed)
    op = CordonClient(server.base, mint(Role.supervisor), timeout_s=60)
    try:
        await op.wait_ready(180)
        graph = city.graph
        crew_nodes = rng.choice(graph.n_nodes, args.tablets, replace=False)
        first: dict[str, float] = {}  # sighting id → first crew message answering it
        received: dict[str, set[int]] = {}
        phases: list[Phase] = []

        def on_message(crew_id: str) -> Any:
            def handle(message: dict[str, Any]) -> None:
                if message.get("type") in ("suggestion", "suggestion_update", "suggestion_retracted"):
                    received.setdefault(crew_id, set()).add(int(message["seq"]))
                if message.get("type") in ("suggestion", "suggestion_update") and message.get("sighting_id"):
                    # the sightings whose plan this is (several, when the server coalesced them)
                    now = time.time()
                    for key in message.get("sighting_ids") or [message["sighting_id"]]:
                        if key not in first:
                            first[key] = now

            return handle

        tablets: list[Tablet] = []
        t_connect = time.perf_counter()
        for i in range(len(crew_nodes)):
            crew_id = f"C-{i:03d}"
            t = Tablet(
                server.base,
                mint(Role.crew, crew_id=crew_id),
                crew_id,
                on_message=on_message(crew_id),
                decode_if=_suggestion_frame,
                keep=False,
            )
            tablets.append(t)
        await asyncio.gather(*(t.connect() for t in tablets))
        for t, node in zip(tablets, crew_nodes, strict=True):
            lon, lat = graph.node_lonlat[int(node)]
            await t.position(float(lon), float(lat))
        consoles = [Console(server.base, mint(Role.operator), count_only=True) for _ in range(args.consoles)]
        await asyncio.gather(*(c.connect() for c in consoles))
        connect_s = time.perf_counter() - t_connect

        async def positions(stop: asyncio.Event) -> None:
            """Every tablet reports its position every 10 s (small moves)."""
            k = 0
            while not stop.is_set():
                t = tablets[k % len(tablets)]
                node = int(crew_nodes[k % len(tablets)])
                lon, lat = graph.node_lonlat[node]
                await t.position(float(lon) + 1e-5 * (k % 7), float(lat))
                k += 1
                await asyncio.sleep(10.0 / len(tablets))

        cams = routes(city, args.incidents, rng)
        stats: dict[str, Any] = {}
        stop = asyncio.Event()
        mover = asyncio.create_task(positions(stop))
        # Baseline: one incident, 1 sighting per second.
        base_inc = "bench-base"
        await op.open_incident(base_inc)
        baseline = Phase("base", rate=1.0, duration_s=args.baseline_s)
        await run_phase(baseline, op, {base_inc: cams[0]}, stats)
        await asyncio.sleep(2.0)
        phases.append(baseline)
        # Load.
        load_incidents = {f"bench-{j:02d}": cams[j] for j in range(args.incidents)}
        for inc in load_incidents:
            await op.open_incident(inc)
        if args.consoles_watch:  # as web/js/console.js: the selected incident's predictions only
            names = list(load_incidents)
            for i, c in enumerate(consoles):
                await c.send({"type": "watch", "incident_ids": [names[i % len(names)]]})
        cpu0, wall0, threads0 = server.cpu_s(), time.perf_counter(), server.thread_cpu_s()
        delay0 = server.run_delay_s()
        own_cpu0 = time.process_time()  # the load generator's own CPU (tablets, consoles, posts)
        processed0 = _metric((await op.http.get("/metrics")).text, "cordon_sightings_processed_total")
        spy = _start_py_spy(server.proc.pid, args.duration_s)
        load = Phase("load", rate=args.rate, duration_s=args.duration_s)
        # The load generator stands in for 320 devices: its own collector's pauses (up to 245 ms
        # in a 20 s run) would delay posts and receipts alike and count as the server's latency.
        # Its heap so far is frozen and its collector off from the load until every message is
        # in (its garbage is reference-counted; cycles wait for the end); the pauses left are
        # reported.
        gc.collect()
        gc.freeze()
        gc.disable()
        own_pauses = _GcPauses()  # an explicit collection would still be seen
        await run_phase(load, op, load_incidents, stats)
        sent_s = time.perf_counter() - wall0
        # drain: wait until the server has processed everything posted (bounded)
        drain_deadline = time.perf_counter() + args.drain_s
        processed = 0.0
        async with httpx.AsyncClient(base_url=server.base) as raw:
            while time.perf_counter() < drain_deadline:
                text = await _metrics_text(raw)
                processed = _metric(text, "cordon_sightings_processed_total")
                if processed >= stats["posted"] - load.post_errors - baseline.post_errors:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)
            cpu1, wall1, threads1 = server.cpu_s(), time.perf_counter(), server.thread_cpu_s()
            delay1 = server.run_delay_s()
            own_cpu1 = time.process_time()
            text = await _metrics_text(raw)
        stop.set()
        await mover
        if spy is not None:
            spy.wait()
        published = _metric(text, "cordon_crew_messages_total")
        processed = max(_metric(text, "cordon_sightings_processed_total"), 1.0)
        # the core's time for the sightings (batches of one incident's queued sightings: one call)
        core_calls = ('call="ingest"', 'call="ingest_batch"')
        core_s = sum(_histogram_sum(text, "cordon_core_call_seconds", c) for c in core_calls)
        core = core_s / max(_metric(text, "cordon_sightings_processed_total"), 1.0)
        core_cpu_s = sum(_histogram_sum(text, "cordon_core_cpu_seconds", c) for c in core_calls)
        core_cpu = core_cpu_s / max(_metric(text, "cordon_sightings_processed_total"), 1.0)
        core_child_s = sum(_histogram_sum(text, "cordon_core_process_seconds", c) for c in core_calls)
        core_child = core_child_s / max(_metric(text, "cordon_sightings_processed_total"), 1.0)
        # what was published before the metrics were read may still be on its way
        deliver_deadline = time.perf_counter() + 5.0
        while sum(len(v) for v in received.values()) < published and time.perf_counter() < deliver_deadline:
            await asyncio.sleep(0.1)
        delivered = sum(len(v) for v in received.values())
        own_pauses.stop()
        gc.enable()
        # a crew stream's seq counts from 1 without gaps: a missing seq below the highest
        # received is a lost message, and so is a shortfall against the published count
        gaps = sum(max(v) - len(v) for v in received.values() if v)
        server_p50 = _histogram_quantile(text, "cordon_sighting_to_crew_seconds", 0.5)
        server_p99 = _histogram_quantile(text, "cordon_sighting_to_crew_seconds", 0.99)
        rss, hwm = server.rss_mb()
        n_load = max(processed - processed0, 1.0)
        for phase in [*phases, load]:
            phase_first[phase.name] = first
            for key, t_post in phase.posted.items():
                if key in first:
                    phase.latencies_ms.append((first[key] - t_post) * 1000.0)
        if samples_path := os.environ.get("CORDON_BENCH_SAMPLES"):  # each sighting's times, to study the tail
            with open(samples_path, "w") as out:
                json.dump({"posted": load.posted, "first_suggestion": first}, out)
        for t in tablets:
            await t.close()
        for c in consoles:
            await c.close()
        result = {
            "tablets": args.tablets,
            "consoles": args.consoles,
            "consoles_watch": args.consoles_watch,
            "incidents": args.incidents,
            "sightings_per_s": round(load.rate, 2),
            "sightings_posted": len(load.posted),
            "sightings_processed_total": processed,
            "offered_s": round(sent_s, 1),
            "processing_rate_per_s": round((processed - len(baseline.posted)) / max(wall1 - wall0, 1e-9), 2),
            "latency_ms_p50": round(percentile(load.latencies_ms, 50), 1),
            "latency_ms_p99": round(percentile(load.latencies_ms, 99), 1),
            "latency_samples": len(load.latencies_ms),
            "baseline_latency_ms_p50": round(percentile(baseline.latencies_ms, 50), 1),
            "baseline_latency_ms_p99": round(percentile(baseline.latencies_ms, 99), 1),
            "core_ingest_ms_per_sighting": round(core * 1000, 1),
            "core_ingest_cpu_ms_per_sighting": round(core_cpu * 1000, 1),  # in the core process
            "core_ingest_child_wall_ms_per_sighting": round(core_child * 1000, 1),
            "server_side_latency_ms_p50_le": _finite(server_p50 * 1000),
            "server_side_latency_ms_p99_le": _finite(server_p99 * 1000),
            "lost": int(gaps + max(0.0, published - delivered)),
            "crew_messages_published": int(published),
            "server_cpu_percent": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
            # CPU per sighting processed in the load phase: comparable on a busy machine
            "server_cpu_ms_per_sighting": round(1000 * (cpu1 - cpu0) / n_load, 1),
            "thread_cpu_ms_per_sighting": {
                name: round(1000 * (threads1[name] - threads0.get(name, 0.0)) / n_load, 1)
                for name in sorted(threads1)
                if threads1[name] - threads0.get(name, 0.0) > 0.05
            },
            # waiting for a CPU (runnable, not running) per sighting: the machine's other load
            "run_queue_wait_ms_per_sighting": {
                name: round(1000 * (delay1[name] - delay0[name]) / n_load, 1) for name in sorted(delay1)
            },
            "load_average_end": os.getloadavg()[0],
            "load_generator_cpu_percent": round(100 * (own_cpu1 - own_cpu0) / (wall1 - wall0), 1),
            "coalesced": _metric(text, "cordon_sightings_coalesced_total"),
            # websocket traffic over the whole run (baseline included), per sighting processed
            "ws_frames_per_sighting": round(_metric(text, "cordon_ws_frames_sent") / processed, 1),
            "ws_messages_per_frame": round(
                _metric(text, "cordon_ws_messages_sent") / max(_metric(text, "cordon_ws_frames_sent"), 1.0), 2
            ),
            "ws_kb_per_sighting": round(_metric(text, "cordon_ws_bytes_sent") / processed / 1000, 1),
            # where a sighting's time goes in the server (means; see cordon_sighting_stage_seconds)
            "stage_ms_mean": {
                stage: _finite(
                    round(
                        1000 * _histogram_mean(text, "cordon_sighting_stage_seconds", f'stage="{stage}"'), 1
                    )
                )
                for stage in ("queued", "prepare", "core", "publish")
            },
            "core_wait_ms_mean": {
                call: _finite(
                    round(1000 * _histogram_mean(text, "cordon_core_wait_seconds", f'call="{call}"'), 1)
                )
                for call in ("ingest_batch", "replan", "prediction_message", "set_crews")
            },
            # the core process's CPU per kind of call, per sighting processed (calls and ms)
            "core_cpu_ms_per_sighting_by_call": {
                call: round(
                    1000 * _histogram_sum(text, "cordon_core_cpu_seconds", f'call="{call}"') / processed, 2
                )
                for call in ("ingest_batch", "replan", "prediction_message", "set_crews")
            },
            "core_calls_per_sighting": {
                call: round(
                    _histogram_count(text, "cordon_core_cpu_seconds", f'call="{call}"') / processed, 3
                )
                for call in ("ingest_batch", "replan", "prediction_message", "set_crews")
            },
            # the server process's garbage-collector pauses (the event loop stands still)
            "gc_pauses_over_50ms": _count_over(text, "cordon_gc_pause_seconds", 0.05),
            "load_generator_gc_pauses_over_20ms": own_pauses.over(0.02),
            "load_generator_gc_pause_ms_max": round(1000 * max(own_pauses.pauses_s, default=0.0), 1),
            "rss_mb": round(hwm, 1),
            "rss_mb_end": round(rss, 1),
            "connect_s": round(connect_s, 2),
            "post_errors": load.post_errors + baseline.post_errors,
            "post_error_kinds": {
                k: load.post_error_kinds.get(k, 0) + baseline.post_error_kinds.get(k, 0)
                for k in sorted({*load.post_error_kinds, *baseline.post_error_kinds})
            },
            "connections_cut": _metric(text, "cordon_ws_cut_total"),
            "tablet_reconnects": sum(t.connects - 1 for t in tablets),
            "latency_ms_p99_by_5s": _windows(load),
            "quick": args.quick,
            "core_process": args.core_process,
        }
        return result
    finally:
        await op.aclose()
        server.stop()
        if sys.exc_info()[0] is None and not os.environ.get("CORDON_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)  # the server's audit database and log
        else:
            print(f"server log and audit database kept in {work}", file=sys.stderr)


class _GcPauses:
    """The collector's pauses in this process (``gc.callbacks``), from now until :meth:`stop`."""

    def __init__(self) -> None:
        self.pauses_s: list[float] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses_s.append(time.perf_counter() - self._start)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def over(self, limit_s: float) -> int:
        return sum(p > limit_s for p in self.pauses_s)


def _start_py_spy(pid: int, duration_s: float) -> subprocess.Popen[bytes] | None:
    """With ``CORDON_BENCH_PYSPY=out.txt`` (and py-spy on the PATH), sample the server during the
    load phase (all threads, collapsed stacks for a flame graph)."""
    out = os.environ.get("CORDON_BENCH_PYSPY")
    if not out:
        return None
    skip_s = min(5.0, duration_s / 4)  # past the first plans of the freshly opened incidents
    cmd = (
        f"sleep {skip_s}; exec py-spy record -p {pid} -d {int(duration_s - skip_s)} -r 250 --threads"
        f" --subprocesses --nonblocking -f raw -o {out}"
    )
    return subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _metrics_text(client: httpx.AsyncClient) -> str:
    """``GET /metrics``, retried once on a dropped keep-alive connection (the server closes idle
    ones after 5 s; a request can cross the close)."""
    try:
        return (await client.get("/metrics")).text
    except httpx.TransportError:
        return (await client.get("/metrics")).text


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _finite(x: float) -> float | None:
    """JSON has no infinity: ``None`` beyond the histogram's last bucket (2.5 s)."""
    return x if x == x and x != float("inf") else None


def _windows(phase: Phase) -> list[float]:
    """p99 latency per 5 s window of the phase (where the tail comes from)."""
    if not phase.posted:
        return []
    t0 = min(phase.posted.values())
    lat: dict[int, list[float]] = {}
    for key, t_post in phase.posted.items():
        if key in phase_first.get(phase.name, {}):
            lat.setdefault(int((t_post - t0) // 5), []).append((phase_first[phase.name][key] - t_post) * 1000)
    return [round(percentile(v, 99), 1) for _, v in sorted(lat.items())]


phase_first: dict[str, dict[str, float]] = {}


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_created"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _count_over(text: str, name: str, bound_s: float) -> int:
    """Observations of a Prometheus histogram (all label sets) above ``bound_s``, which must be
    one of its bucket bounds."""
    total = below = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            count = float(line.rsplit(" ", 1)[1])
            if bound == "+Inf":
                total += count
            elif float(bound) == bound_s:
                below += count
    return int(total - below)


def _histogram_quantile(text: str, name: str, q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` of a Prometheus histogram (seconds)."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    for le, count in sorted(buckets):
        if count >= q * total:
            return le
    return float("inf")


def _histogram_sum(text: str, name: str, label: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "_sum") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _histogram_count(text: str, name: str, label: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "_count") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _histogram_mean(text: str, name: str, label: str) -> float:
    s = c = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_sum") and label in line:
            s = float(line.rsplit(" ", 1)[1])
        if line.startswith(name + "_count") and label in line:
            c = float(line.rsplit(" ", 1)[1])
    return s / c if c else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 s of load instead of 120 s")
    parser.add_argument("--tablets", type=int, default=300)
    parser.add_argument("--consoles", type=int, default=20)
    parser.add_argument("--incidents", type=int, default=25)
    parser.add_argument("--rate", type=float, default=50.0, help="sightings per second")
    parser.add_argument("--duration-s", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stub-only", action="store_true", help="only the serving stack (stub core)")
    parser.add_argument("--real-only", action="store_true", help="only the real core (no stub run)")
    parser.add_argument(
        "--core-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the server's core in its own process (CORDON_CORE_PROCESS; default on)",
    )
    parser.add_argument(
        "--consoles-watch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each console watches one incident's predictions, as the web console watches its "
        "selected incident (--no-consoles-watch: every console gets every prediction)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "server_load.json")
    args = parser.parse_args()
    if args.duration_s is None:
        args.duration_s = 20.0 if args.quick else 120.0
    args.baseline_s = 5.0 if args.quick else 15.0
    args.drain_s = 10.0 if args.quick else 60.0
    keys = (
        "sightings_per_s",
        "processing_rate_per_s",
        "latency_ms_p50",
        "latency_ms_p99",
        "baseline_latency_ms_p50",
        "baseline_latency_ms_p99",
        "core_ingest_ms_per_sighting",
        "core_ingest_cpu_ms_per_sighting",
        "core_ingest_child_wall_ms_per_sighting",
        "server_side_latency_ms_p50_le",
        "server_side_latency_ms_p99_le",
        "lost",
        "server_cpu_percent",
        "server_cpu_ms_per_sighting",
        "thread_cpu_ms_per_sighting",
        "run_queue_wait_ms_per_sighting",
        "load_average_end",
        "load_generator_cpu_percent",
        "coalesced",
        "ws_frames_per_sighting",
        "ws_messages_per_frame",
        "ws_kb_per_sighting",
        "stage_ms_mean",
        "core_wait_ms_mean",
        "core_cpu_ms_per_sighting_by_call",
        "core_calls_per_sighting",
        "gc_pauses_over_50ms",
        "load_generator_gc_pauses_over_20ms",
        "load_generator_gc_pause_ms_max",
        "rss_mb",
    )
    try:  # the client side drives 320 sockets: uvloop (installed with uvicorn[standard]) keeps it light
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    serving = run(main_async(args, stub=True)) if not args.real_only else None
    real = run(main_async(args, stub=False)) if not args.stub_only else None
    result = dict(real or serving or {})
    result["core"] = "guidance.coordinator.Coordinator" if real else "stub"
    if serving is not None:
        result["serving_only"] = {k: serving[k] for k in keys} | {"core": "stub (3 nearest crews, ~0 ms)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
    print(f"{'metric':<28}  {'real core':>14}  {'stub core':>14}")
    shown = [k for k in keys if not isinstance((real or serving or {}).get(k), dict)]
    for key in (*shown, "tablets", "consoles", "incidents", "sightings_posted", "crew_messages_published"):
        r = "" if real is None else real.get(key)
        st = "" if serving is None else serving.get(key)
        print(f"{key:<28}  {r!s:>14}  {st!s:>14}")
    for name, res in (("real", real), ("stub", serving)):
        if res:
            print(f"{name} core: thread CPU ms per sighting {res['thread_cpu_ms_per_sighting']}")
            print(
                f"{name} core: stage ms (mean) {res['stage_ms_mean']}; core wait {res['core_wait_ms_mean']}"
            )
            print(
                f"{name} core: core CPU ms per sighting by call {res['core_cpu_ms_per_sighting_by_call']}; "
                f"calls per sighting {res['core_calls_per_sighting']}"
            )
    for name, res in (("stub", serving), ("real", real)):
        if res and res["baseline_latency_ms_p50"]:
            ratio = res["latency_ms_p50"] / res["baseline_latency_ms_p50"]
            print(f"{name} core: loaded/baseline p50 latency ratio {ratio:.1f}x")


if __name__ == "__main__":
    main()
