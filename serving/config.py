"""Server configuration: read once (from options or the environment) and passed in."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from serving.messages import DispatchMode

ClockName = Literal["wall", "simulation"]


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``create_app`` needs.

    With no options: the embedded default (one process, in-process bus and memory state, the
    generated city with its demo cameras, a local token issuer, demo token endpoint on).
    ``redis_url`` switches to the scale-out mode (Redis Streams bus, Redis state, pub/sub fan-out);
    every worker of one CSU must then share ``token_secret`` and ``redis_prefix``.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str | None = None
    redis_prefix: str = "cordon"
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    map_path: Path | None = None
    cameras_path: Path | None = None
    communes_path: Path | None = None
    n_crossings: int = 1500
    city_seed: int = 7
    clock: ClockName = "wall"
    demo: bool = True
    demo_crews: int = 12
    token_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    issuer: str = "cordon-local"
    audience: str = "cordon"
    data_dir: Path = Path(".cordon-data")
    audit_db: str | None = None  # None: SQLite file in data_dir; "memory": not persisted
    dispatch_mode: DispatchMode = DispatchMode.direct
    queue_size: int = 256
    max_body_bytes: int = 1_000_000
    ws_max_size: int = 64 * 1024
    web_dir: Path | None = None
    claim_idle_ms: int = 5_000
    auth_timeout_s: float = 5.0
    # Token buckets (serving.limits.RateLimiter): HTTP requests per client address, websocket
    # messages per principal. Generous defaults (a load test from one address passes); 0 = off.
    rate_per_s: float = 2_000.0
    rate_burst: float = 4_000.0
    ws_rate_per_s: float = 100.0
    ws_rate_burst: float = 200.0
    sim_scenarios_dir: Path | None = None  # scenarios for /api/sim (default: sim/scenarios)
    coalesce: bool = True  # apply queued sightings of one incident together (in-process bus)
    record_core: bool = True  # audit every core call and plan (serving.audit_replay), for replay
    heartbeat_s: float = 10.0  # application-level {"type": "heartbeat"} on every websocket
    # A console asking for batched frames (?batch=1) gets what came in this long in one frame
    # (crews' positions, sightings, plans...: tens of small messages a second per console);
    # never a tablet's suggestion. 0: at once.
    console_linger_s: float = 0.1
    retention_interval_s: float = 86_400.0  # the purge job runs this often (0: never)
    retention_default_days: int = 30
    # Crews' speed factor (legal speed x factor, for their ETAs) when a crew gives none; the
    # simulator's crew model drives at 1.2 (sim.scenario.CrewModel.speed_factor).
    crew_speed_factor: float = 1.2
    # Re-plan open incidents every replan_s of server time: on the simulation clock at each
    # POST /api/sim/time that advances it that far; on the wall clock when crews have moved.
    replan_s: float = 10.0
    # The prediction GeoJSON (tens of kB, for the consoles' maps) of an incident goes out at most
    # this often (wall seconds), the latest one at the end of the interval; suggestions never wait.
    prediction_interval_s: float = 2.0
    # The core (Coordinator) in a child process of its own (serving.core_process), so the event
    # loop and the core use two CPUs instead of sharing one interpreter lock.
    core_process: bool = False

    @property
    def tenant(self) -> Literal["live", "simulation"]:
        return "simulation" if self.clock == "simulation" else "live"

    def with_(self, **changes: object) -> ServerConfig:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> ServerConfig:
        """Options from ``CORDON_*`` variables, then ``overrides`` (``None`` values ignored)."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, object] = {}
        if env.get("CORDON_REDIS_URL"):
            values["redis_url"] = env["CORDON_REDIS_URL"]
        if env.get("CORDON_REDIS_PREFIX"):
            values["redis_prefix"] = env["CORDON_REDIS_PREFIX"]
        if env.get("CORDON_TOKEN_SECRET"):
            values["token_secret"] = env["CORDON_TOKEN_SECRET"].encode()
        if env.get("CORDON_AUDIT_DB"):
            values["audit_db"] = env["CORDON_AUDIT_DB"]
        if env.get("CORDON_DATA_DIR"):
            values["data_dir"] = Path(env["CORDON_DATA_DIR"])
        if env.get("CORDON_WORKER_ID"):
            values["worker_id"] = env["CORDON_WORKER_ID"]
        if env.get("CORDON_CLOCK"):
            values["clock"] = env["CORDON_CLOCK"]
        if env.get("CORDON_MAP"):
            values["map_path"] = Path(env["CORDON_MAP"])
        if env.get("CORDON_CLAIM_IDLE_MS"):
            values["claim_idle_ms"] = int(env["CORDON_CLAIM_IDLE_MS"])
        if env.get("CORDON_DEMO"):
            values["demo"] = env["CORDON_DEMO"] not in ("0", "false", "no")
        for name, key in (
            ("CORDON_RATE_PER_S", "rate_per_s"),
            ("CORDON_RATE_BURST", "rate_burst"),
            ("CORDON_WS_RATE_PER_S", "ws_rate_per_s"),
            ("CORDON_WS_RATE_BURST", "ws_rate_burst"),
            ("CORDON_HEARTBEAT_S", "heartbeat_s"),
            ("CORDON_CONSOLE_LINGER_S", "console_linger_s"),
            ("CORDON_RETENTION_INTERVAL_S", "retention_interval_s"),
            ("CORDON_CREW_SPEED_FACTOR", "crew_speed_factor"),
            ("CORDON_REPLAN_S", "replan_s"),
            ("CORDON_PREDICTION_INTERVAL_S", "prediction_interval_s"),
        ):
            if env.get(name):
                values[key] = float(env[name])
        if env.get("CORDON_CORE_PROCESS"):
            values["core_process"] = env["CORDON_CORE_PROCESS"] not in ("0", "false", "no")
        if env.get("CORDON_COALESCE"):
            values["coalesce"] = env["CORDON_COALESCE"] not in ("0", "false", "no")
        if env.get("CORDON_SIM_SCENARIOS"):
            values["sim_scenarios_dir"] = Path(env["CORDON_SIM_SCENARIOS"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)  # type: ignore[arg-type]
        if config.clock not in ("wall", "simulation"):
            raise ValueError(f"clock must be 'wall' or 'simulation', not {config.clock!r}")
        if not config.crew_speed_factor > 0:
            raise ValueError(f"crew speed factor must be > 0, not {config.crew_speed_factor}")
        if len(config.token_secret) < 32:
            raise ValueError("token secret (CORDON_TOKEN_SECRET) must be at least 32 bytes")
        return config
