"""Scale-out tests: real ``redis-server`` processes on free ports, server workers as
``cordon serve --redis`` subprocesses (and one in-loop uvicorn server), real websocket tablets.

* two server processes sharing one Redis: a sighting posted to one reaches a tablet on the other,
  and a tablet resumes on the other worker;
* a worker killed (SIGKILL) mid-stream loses no sighting: its pending stream entries are reclaimed;
* Redis restarted under load (AOF on): every sighting the server acknowledged is processed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from test_server_support import (
    SECRET,
    RedisProcess,
    Worker,
    check_against_asyncapi,
    city_for_tests,
    running_server,
    token,
)

from serving.client import Console, CordonClient, CordonHTTPError, Tablet
from serving.config import ServerConfig

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server (no persistence) for one test."""
    proc = RedisProcess(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


COMMUNE = "Metz-Centre"


def cameras() -> list[str]:
    return sorted(city_for_tests().cameras.cameras)


def crew_positions(n: int) -> list[tuple[float, float]]:
    graph = city_for_tests().graph
    step = max(1, graph.n_nodes // n)
    return [
        (float(graph.node_lonlat[i][0]), float(graph.node_lonlat[i][1])) for i in range(0, step * n, step)
    ]


def sighting(incident: str, camera: str, event: str, at: datetime) -> dict[str, Any]:
    return {
        "incident_id": incident,
        "camera_id": camera,
        "observed_at": at.isoformat(),
        "source_event_id": event,
    }


async def wait_for(predicate: Any, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.1)


async def logged_events(url: str, incident: str, prefix: str = "cordon") -> list[str]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        raw = await client.lrange(f"{prefix}:log:{incident}", 0, -1)
    finally:
        await client.aclose()
    return [json.loads(r)["source_event_id"] for r in raw]


async def place_crews(base: str, n: int) -> None:
    """Each crew reports its own position (with its own crew token), over REST."""
    for i, (lon, lat) in enumerate(crew_positions(n)):
        crew_id = f"C-{i:02d}"
        async with CordonClient(base, await token(base, "crew", crew_id=crew_id, communes=COMMUNE)) as crew:
            await crew.put_crew(crew_id, lon=lon, lat=lat, commune=COMMUNE)


async def post_with_retry(
    client: CordonClient, body: dict[str, Any], deadline_s: float = 30.0
) -> dict[str, Any]:
    """Post until the server acknowledges (a 503 or a broken connection is retried)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        try:
            return await client.post_sighting(body)
        except CordonHTTPError as exc:
            if exc.status != 503 or loop.time() > end:
                raise
        except Exception:
            if loop.time() > end:
                raise
        await asyncio.sleep(0.1)


async def test_two_workers_share_one_redis(redis_proc: RedisProcess, tmp_path: Path) -> None:
    a = Worker(redis_proc.url, worker_id="w-a", data_dir=tmp_path)
    b = Worker(redis_proc.url, worker_id="w-b", data_dir=tmp_path)
    try:
        await asyncio.gather(a.ready(), b.ready())
        op_b = CordonClient(b.base, await token(b.base))
        tablets = []
        for i, (lon, lat) in enumerate(crew_positions(8)):
            crew_id = f"C-{i:02d}"
            t = Tablet(
                a.base,
                await token(a.base, "crew", crew_id=crew_id, communes=COMMUNE),
                crew_id,
                reconnect=False,
            )
            await t.connect()
            await t.next("snapshot")
            await t.position(lon, lat)
            tablets.append(t)
        console = Console(a.base, await token(a.base, communes=COMMUNE))
        await console.connect()
        await console.next("snapshot")  # registered on worker a: it sees what b publishes
        await op_b.open_incident("inc-2w", commune=COMMUNE)
        now = datetime.now(UTC)
        await op_b.post_sighting(sighting("inc-2w", cameras()[5], "s1", now))
        plan = await console.next("plan", timeout_s=20)  # computed on a or b, seen on a's console
        planned = set(plan["suggestion_ids"])
        assert planned
        got: set[str] = set()
        for t in tablets:
            if any(s.endswith(f":{t.crew_id}") for s in planned):
                msg = await t.next("suggestion", timeout_s=10)
                assert msg["suggestion"]["crew_id"] == t.crew_id
                got.add(msg["suggestion"]["suggestion_id"])
        assert got == planned
        for t in tablets:
            assert all(
                m["suggestion"]["crew_id"] == t.crew_id for m in t.received if m["type"] == "suggestion"
            )
        # one tablet drops off worker a and comes back on worker b, resuming from its seq
        tablet = next(t for t in tablets if t.last_seq)
        seen = tablet.last_seq
        assert seen is not None
        await tablet.close()
        for k, cam in enumerate(cameras()[6:8]):
            await op_b.post_sighting(sighting("inc-2w", cam, f"s{k + 2}", now + timedelta(seconds=k + 1)))

        async def moved() -> bool:
            return len(await logged_events(redis_proc.url, "inc-2w")) == 3

        await wait_for(moved, 30)
        back = Tablet(b.base, tablet.token, tablet.crew_id, reconnect=False)
        back.last_seq = seen
        await back.connect()
        first = await back.next(timeout_s=10)
        assert first["type"] != "snapshot" and first["seq"] == seen + 1
        check_against_asyncapi([dict(m, _role="crew") for t in (*tablets, back) for m in t.received])
        check_against_asyncapi([dict(m, _role="operator") for m in console.received])
        for s in (console, back, *tablets):
            await s.close()
        await op_b.aclose()
    finally:
        a.stop()
        b.stop()


async def test_killed_worker_loses_no_sighting(redis_proc: RedisProcess, tmp_path: Path) -> None:
    a = Worker(redis_proc.url, worker_id="w-a", data_dir=tmp_path)
    b = Worker(redis_proc.url, worker_id="w-b", data_dir=tmp_path)
    try:
        await asyncio.gather(a.ready(), b.ready())
        op_a = CordonClient(a.base, await token(a.base))
        op_b = CordonClient(b.base, await token(b.base))
        await place_crews(b.base, 6)
        incidents = ["inc-k1", "inc-k2", "inc-k3"]
        for inc in incidents:
            await op_b.open_incident(inc, commune=COMMUNE)
        cams = cameras()
        t0 = datetime.now(UTC)
        sent: dict[str, list[str]] = {inc: [] for inc in incidents}
        n = 36
        for k in range(n):
            inc = incidents[k % 3]
            event = f"{inc}-e{k}"
            body = sighting(inc, cams[(k * 7) % len(cams)], event, t0 + timedelta(seconds=k))
            target = op_a if k % 2 == 0 else op_b
            if k == n // 2:
                # a burst to worker a, then kill it while it still holds read, unacknowledged entries
                burst = [
                    sighting(
                        incidents[j % 3], cams[(j * 11) % len(cams)], f"burst-{j}", t0 + timedelta(seconds=k)
                    )
                    for j in range(9)
                ]
                # worker b is stopped meanwhile, so the burst's entries are read by a alone
                os.kill(b.proc.pid, signal.SIGSTOP)
                try:
                    await op_a.post_sightings(burst)
                    for item in burst:
                        sent[item["incident_id"]].append(item["source_event_id"])
                    probe = aioredis.Redis.from_url(redis_proc.url, decode_responses=True)
                    stranded = []
                    for _ in range(100):  # kill a as soon as it holds read, unacknowledged entries
                        stranded = await probe.xpending_range(
                            "cordon:sightings", "workers", "-", "+", 100, consumername="w-a"
                        )
                        if stranded:
                            break
                        await asyncio.sleep(0.005)
                    await probe.aclose()
                    a.kill()
                finally:
                    os.kill(b.proc.pid, signal.SIGCONT)
            if target is op_a and a.proc.poll() is not None:
                target = op_b
            await post_with_retry(target, body)
            sent[inc].append(event)
            await asyncio.sleep(0.02)

        async def all_logged() -> bool:
            for inc in incidents:
                if sorted(await logged_events(redis_proc.url, inc)) != sorted(sent[inc]):
                    return False
            return True

        assert stranded, "worker a held no pending entry when killed: the test proves nothing"
        await wait_for(all_logged, 90)
        for inc in incidents:  # each exactly once
            events = await logged_events(redis_proc.url, inc)
            assert len(events) == len(set(events)) == len(sent[inc])
        client = aioredis.Redis.from_url(redis_proc.url, decode_responses=True)

        async def all_acked() -> bool:  # the ack follows the log write: give it a moment
            return int((await client.xpending("cordon:sightings", "workers"))["pending"]) == 0

        try:
            await wait_for(all_acked, 30)
            pending = await client.xpending("cordon:sightings", "workers")
        finally:
            await client.aclose()
        assert pending["pending"] == 0
        await op_a.aclose()
        await op_b.aclose()
    finally:
        a.stop()
        b.stop()


async def test_redis_restart_under_load(tmp_path: Path) -> None:
    rp = RedisProcess(tmp_path, appendonly=True, appendfsync="always")
    rp.start()
    try:
        config = ServerConfig(
            audit_db="memory",
            demo_crews=0,
            token_secret=SECRET,
            redis_url=rp.url,
            worker_id="w-solo",
            claim_idle_ms=1500,
        )
        async with running_server(config) as srv:
            op = CordonClient(srv.base, await token(srv.base))
            await place_crews(srv.base, 4)
            await op.open_incident("inc-rr", commune=COMMUNE)
            cams = cameras()
            t0 = datetime.now(UTC)
            acked: list[str] = []

            async def load() -> None:
                for k in range(40):
                    event = f"rr-{k}"
                    ack = await post_with_retry(
                        op, sighting("inc-rr", cams[(k * 5) % len(cams)], event, t0 + timedelta(seconds=k))
                    )
                    assert ack["accepted"]
                    acked.append(event)
                    await asyncio.sleep(0.05)

            loader = asyncio.create_task(load())

            async def under_way() -> bool:
                if loader.done():
                    loader.result()  # a failed loader fails the test now, not at the timeout
                return len(acked) >= 10

            await wait_for(under_way, 30)
            await asyncio.to_thread(rp.stop)  # SIGTERM: Redis flushes its AOF and exits
            await asyncio.sleep(1.0)
            await asyncio.to_thread(rp.start)
            await loader

            logged: list[str] = []

            async def all_logged() -> bool:
                try:
                    logged[:] = await logged_events(rp.url, "inc-rr")
                except Exception:
                    return False
                return sorted(logged) == sorted(acked)

            try:
                await wait_for(all_logged, 60)
            except TimeoutError:
                missing = sorted(set(acked) - set(logged))
                extra = len(logged) - len(set(logged))
                raise AssertionError(f"acked, not applied: {missing}; applied twice: {extra}") from None
            health = await op.health()
            assert health["status"] == "ok" and health["state"] == "redis"
            await op.aclose()
    finally:
        rp.stop()


async def _check_open_index(state: Any) -> None:
    """The open index follows each suggestion's state; an ended suggestion is kept without its
    route and turns, and a purge drops both."""
    from serving.state import ENDED_STATES

    def body(n: int, state_name: str) -> dict[str, Any]:
        return {
            "suggestion_id": f"INC-1:{n}:C{n}",
            "incident_id": "INC-1",
            "crew_id": f"C{n}",
            "route_lonlat": [[6.17, 49.11], [6.18, 49.12]],
            "turns": ["Prendre Rue Serpenoise"],
            "street_names": ["Rue Serpenoise"],
            "state": state_name,
        }

    await state.put_incident({"incident_id": "INC-1", "communes": []})
    for n, name in enumerate(["sent", "pending_approval", "accepted", "declined"]):
        await state.put_suggestion(body(n, name))
    assert sorted(s["crew_id"] for s in await state.open_suggestions("INC-1")) == ["C0", "C1", "C2", "C3"]
    for n, name in ((0, "superseded"), (1, "retracted"), (2, "expired")):
        await state.put_suggestion(body(n, name))
    assert [s["crew_id"] for s in await state.open_suggestions("INC-1")] == ["C3"]
    kept = {s["crew_id"]: s for s in await state.incident_suggestions("INC-1")}
    assert len(kept) == 4
    for crew_id in ("C0", "C1", "C2"):
        assert kept[crew_id]["state"] in ENDED_STATES
        assert kept[crew_id]["route_lonlat"] == [] and kept[crew_id]["turns"] == []
        assert kept[crew_id]["street_names"] == ["Rue Serpenoise"]
        assert await state.get_suggestion(f"INC-1:{crew_id[1:]}:{crew_id}") == kept[crew_id]
    assert kept["C3"]["route_lonlat"] == [[6.17, 49.11], [6.18, 49.12]]
    assert await state.open_suggestions("INC-2") == []
    assert await state.drop_incident("INC-1") > 0
    assert await state.open_suggestions("INC-1") == [] and await state.incident_suggestions("INC-1") == []


async def test_open_suggestions_index_in_memory() -> None:
    from serving.state import MemoryState

    await _check_open_index(MemoryState())


async def test_open_suggestions_index_in_redis(redis_proc: RedisProcess) -> None:
    from serving.state import RedisState

    state = RedisState.from_url(redis_proc.url, prefix="test-open")
    try:
        await _check_open_index(state)
    finally:
        await state.close()


async def test_a_worker_indexes_the_open_suggestions_of_state_written_without_the_index(
    redis_proc: RedisProcess,
) -> None:
    """State written before the open index existed (suggestions only in ``isugg``): a worker
    builds the index at start, so it still sees the suggestions in force."""
    from serving.state import RedisState

    state = RedisState.from_url(redis_proc.url, prefix="test-upgrade")
    try:
        await state.put_incident({"incident_id": "INC-9"})
        for n, name in enumerate(["sent", "superseded", "accepted"]):
            body = {"suggestion_id": f"INC-9:{n}", "incident_id": "INC-9", "crew_id": f"C{n}", "state": name}
            await state.client.hset("test-upgrade:isugg:INC-9", body["suggestion_id"], json.dumps(body))
        assert await state.open_suggestions("INC-9") == []
        assert await state.index_open_suggestions() == 1
        assert sorted(s["crew_id"] for s in await state.open_suggestions("INC-9")) == ["C0", "C2"]
        assert await state.index_open_suggestions() == 0  # done once per Redis
        await state.client.delete("test-upgrade:iopen_built")
        assert await state.index_open_suggestions() == 0  # an incident indexed stays as it is
        assert sorted(s["crew_id"] for s in await state.open_suggestions("INC-9")) == ["C0", "C2"]
    finally:
        await state.close()
