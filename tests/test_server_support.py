"""Helpers of the server tests: a real uvicorn server in the test's event loop, a real Redis on a
free port, server worker subprocesses; plus the checks of the helpers themselves."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from map_data.city import default_city
from map_data.network_types import City
from server import create_app
from serving.asyncapi import message_validator
from serving.client import CordonClient
from serving.config import ServerConfig

ROOT = Path(__file__).resolve().parents[1]
#: The generated city of the server tests (small: the core's cost is not what is tested here).
TEST_CROSSINGS = 600
SECRET = b"server-tests-shared-secret-0123456789abcdef"


@cache
def city_for_tests() -> City:
    return default_city(n_crossings=TEST_CROSSINGS, seed=7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    base: str
    app: FastAPI
    server: uvicorn.Server


@asynccontextmanager
async def running_server(config: ServerConfig | None = None, **kwargs: Any) -> AsyncIterator[Running]:
    """A real uvicorn server on a free loopback port, in this event loop."""
    port = free_port()
    config = (config or ServerConfig(audit_db="memory", demo_crews=0, token_secret=SECRET)).with_(port=port)
    app = create_app(config, city=kwargs.pop("city", None) or city_for_tests(), **kwargs)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws_max_size=config.ws_max_size,
            ws_per_message_deflate=False,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    app.state.hub.sent_log = []
    try:
        yield Running(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


async def token(base: str, role: str = "operator", *, crew_id: str | None = None, communes: str = "*") -> str:
    async with CordonClient(base) as anon:
        return await anon.dev_token(role, crew_id=crew_id, communes=communes)


def check_against_asyncapi(messages: list[dict[str, Any]]) -> int:
    """Validate every recorded server message against the served AsyncAPI document."""
    crew = message_validator("/ws/crew")
    operator = message_validator("/ws/operator")
    for message in messages:
        message = dict(message)
        role = message.pop("_role", "crew")
        (crew if role == "crew" else operator).validate(message)
    return len(messages)


# ---------------------------------------------------------------------------------------------
# Redis and worker subprocesses


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(
            "redis-server is not installed: the server's Redis tests need it (apt install redis-server)"
        )
    return path


class RedisProcess:
    """A private redis-server on a free port (no persistence, or AOF in ``data_dir``)."""

    def __init__(self, data_dir: Path, *, appendonly: bool = False, appendfsync: str = "everysec") -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # lets it flush the AOF
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


class Worker:
    """A ``cordon serve --redis`` subprocess."""

    def __init__(self, redis_url: str, *, worker_id: str, data_dir: Path, prefix: str = "cordon") -> None:
        self.port = free_port()
        self.worker_id = worker_id
        env = dict(
            os.environ,
            CORDON_TOKEN_SECRET=SECRET.decode(),
            CORDON_REDIS_PREFIX=prefix,
            CORDON_CLAIM_IDLE_MS="1500",
            PYTHONUNBUFFERED="1",
        )
        args = [
            sys.executable,
            "-m",
            "commands.serve",
            "serve",
            "--port",
            str(self.port),
            "--redis",
            redis_url,
            "--worker-id",
            worker_id,
            "--demo",
            "--audit-db",
            "memory",
            "--data-dir",
            str(data_dir),
            "--n-crossings",
            str(TEST_CROSSINGS),
            "--log-level",
            "warning",
        ]
        self.log_path = data_dir / f"{worker_id}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout_s: float = 60.0) -> None:
        async with CordonClient(self.base) as c:
            try:
                deadline = asyncio.get_running_loop().time() + timeout_s
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError("exited")
                    try:
                        await c.health()
                        return
                    except Exception:
                        if asyncio.get_running_loop().time() > deadline:
                            raise
                        await asyncio.sleep(0.1)
            except Exception:
                raise RuntimeError(
                    f"worker {self.worker_id} did not start:\n{self.log_path.read_text()[-3000:]}"
                ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------------------------------------
# Checks of the helpers


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_redis_fixture_answers(redis_proc: RedisProcess) -> None:
    import redis

    client = redis.Redis.from_url(redis_proc.url)
    assert client.ping()
    client.close()
