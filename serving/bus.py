"""The message bus: sightings in (work queue), events out (fan-out to every worker's websockets).

* :class:`InProcessBus`: one process; an ``asyncio.Queue`` for sightings, direct calls for events.
* :class:`RedisBus`: several processes. Sightings go through a Redis Stream with a consumer group
  (at-least-once: an entry is acknowledged only after it was handled; entries left pending by a
  crashed worker are reclaimed with ``XAUTOCLAIM``). Events cross workers by Redis pub/sub.

Handlers must be idempotent: a reclaimed entry may be handled twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Json = dict[str, Any]
Handler = Callable[[Json], Awaitable[None]]
Listener = Callable[[Json], Awaitable[None]]

log = logging.getLogger("cordon.bus")


class Bus(Protocol):
    name: str

    async def submit(self, sighting: Json) -> None:
        """Queue a sighting for processing by some worker."""
        ...

    async def publish(self, event: Json) -> None:
        """Send ``event`` to every worker's listener (including this one)."""
        ...

    async def run(self, handler: Handler, listener: Listener) -> None:
        """Consume sightings with ``handler`` and events with ``listener`` until cancelled."""
        ...

    async def close(self) -> None: ...


class InProcessBus:
    name = "in-process"

    def __init__(self, maxsize: int = 10_000) -> None:
        self._queue: asyncio.Queue[Json] = asyncio.Queue(maxsize)
        self._listener: Listener | None = None

    async def submit(self, sighting: Json) -> None:
        await self._queue.put(sighting)

    async def publish(self, event: Json) -> None:
        if self._listener is not None:
            await self._listener(event)

    async def run(self, handler: Handler, listener: Listener) -> None:
        self._listener = listener
        while True:
            item = await self._queue.get()
            try:
                await handler(item)
            except Exception:
                log.exception("sighting handler failed on %s", item.get("source_event_id"))

    async def run_batched(
        self,
        handler: Callable[[list[Json]], Awaitable[None]],
        listener: Listener,
        *,
        max_batch: int = 64,
        max_inflight: int = 3,
    ) -> None:
        """Like :meth:`run`, but hands ``handler`` every queued sighting of one incident at once
        (in arrival order, at most ``max_batch``), and runs the handlers of up to
        ``max_inflight`` incidents at once.

        Sightings are taken off the queue as they come and wait by incident; a free slot goes
        to the incident whose oldest waiting sighting is the oldest, with all its waiting
        sightings. So under load one incident's sightings go together in one batch (applying
        them together lets the service plan once) instead of queueing as batches of one, and
        no incident waits behind another's backlog. One incident's batches run one at a time,
        in order; different incidents overlap, so one incident's messages go out while the
        core plans another's (the core's calls are still one at a time)."""
        self._listener = listener
        waiting: dict[str, list[Json]] = {}  # incident -> sightings not handled yet (oldest first)
        running: dict[str, asyncio.Task[None]] = {}
        # Sightings taken off the queue and not yet handled (waiting or in a running batch) are
        # at most the queue's size: when full, the queue fills and ``submit`` waits (back-pressure).
        held = asyncio.Semaphore(self._queue.maxsize if self._queue.maxsize > 0 else 10_000)
        stopping = False

        def dispatch() -> None:
            """Start batches while slots are free: the oldest waiting incident first (dicts
            keep insertion order: an incident enters ``waiting`` with its oldest sighting)."""
            if stopping:
                return
            for incident in list(waiting):
                if len(running) >= max_inflight:
                    return
                if incident in running:
                    continue
                queued = waiting.pop(incident)
                group, rest = queued[:max_batch], queued[max_batch:]
                if rest:
                    waiting[incident] = rest
                running[incident] = asyncio.create_task(drive(incident, group))

        async def drive(incident: str, group: list[Json]) -> None:
            try:
                await handler(group)
            except Exception:
                log.exception("sighting handler failed on %s", group[0].get("source_event_id"))
            finally:
                for _ in group:
                    held.release()
                running.pop(incident, None)
                dispatch()

        try:
            while True:
                await held.acquire()
                item = await self._queue.get()
                waiting.setdefault(str(item.get("incident_id")), []).append(item)
                while not self._queue.empty() and not held.locked():
                    await held.acquire()  # free: returns at once
                    item = self._queue.get_nowait()
                    waiting.setdefault(str(item.get("incident_id")), []).append(item)
                dispatch()
        finally:
            stopping = True
            for task in list(running.values()):
                task.cancel()

    async def close(self) -> None:
        self._listener = None


class RedisBus:
    """Redis Streams work queue + pub/sub fan-out.

    ``consumer`` names this worker in the group; give each process its own (a restarted process
    may reuse its name and then first re-reads its own pending entries).
    """

    name = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        consumer: str,
        prefix: str = "cordon",
        group: str = "workers",
        claim_idle_ms: int = 5_000,
        block_ms: int = 500,
    ) -> None:
        self.client = client
        self.consumer = consumer
        self.stream = f"{prefix}:sightings"
        self.channel = f"{prefix}:events"
        self.group = group
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms

    @classmethod
    def from_url(cls, url: str, *, consumer: str, prefix: str = "cordon") -> RedisBus:
        return cls(aioredis.Redis.from_url(url, decode_responses=True), consumer=consumer, prefix=prefix)

    async def submit(self, sighting: Json) -> None:
        await self.client.xadd(self.stream, {"data": json.dumps(sighting)})

    async def publish(self, event: Json) -> None:
        await self.client.publish(self.channel, json.dumps(event))

    async def _ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, handler: Handler, listener: Listener) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._consume(handler))
            tg.create_task(self._listen(listener))

    async def _handle(self, handler: Handler, entry_id: str, fields: dict[str, str]) -> None:
        try:
            payload = json.loads(fields["data"])
            await handler(payload)
        except (RedisConnectionError, RedisTimeoutError):
            raise
        except Exception:
            # A poison entry is logged and acknowledged, not retried forever.
            log.exception("sighting handler failed on stream entry %s", entry_id)
        await self.client.xack(self.stream, self.group, entry_id)

    async def _consume(self, handler: Handler) -> None:
        while True:
            try:
                await self._ensure_group()
                # Our own pending entries first (a restarted worker with the same name), then others'.
                pending: Any = await self.client.xreadgroup(
                    self.group, self.consumer, {self.stream: "0"}, count=100
                )
                for _stream, entries in pending:
                    for entry_id, fields in entries:
                        await self._handle(handler, entry_id, fields)
                while True:
                    await self._reclaim(handler)
                    got: Any = await self.client.xreadgroup(
                        self.group, self.consumer, {self.stream: ">"}, count=50, block=self.block_ms
                    )
                    for _stream, entries in got:
                        for entry_id, fields in entries:
                            await self._handle(handler, entry_id, fields)
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis unavailable for the sighting stream (%s); retrying", exc)
                await asyncio.sleep(0.5)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted without persistence
                    continue
                log.exception("redis error on the sighting stream")
                await asyncio.sleep(0.5)

    async def _reclaim(self, handler: Handler) -> None:
        result = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=50
        )
        entries = result[1]
        for entry_id, fields in entries:
            if fields is None:  # deleted meanwhile
                await self.client.xack(self.stream, self.group, entry_id)
                continue
            log.info("reclaimed pending sighting entry %s", entry_id)
            await self._handle(handler, entry_id, fields)

    async def _listen(self, listener: Listener) -> None:
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    try:
                        await listener(json.loads(message["data"]))
                    except Exception:
                        log.exception("event listener failed")
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis pub/sub lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self.client.aclose()
