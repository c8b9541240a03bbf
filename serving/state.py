"""Live state of the server: incidents, their sighting logs, crews, suggestions, per-crew message logs.

Two stores with one interface (:class:`StateStore`): :class:`MemoryState` for the embedded single
process, :class:`RedisState` when several server processes serve one CSU. Values are plain JSON
dicts (the wire models of :mod:`serving.messages`), so both stores hold exactly the same thing.

The incident's sighting log is the source of truth for the tracker: the core is deterministic, so a
worker that has not seen some sightings of an incident replays the log into its own Coordinator
before applying a new one (see :mod:`serving.service`).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis

from serving.jsontext import dumps

Json = dict[str, Any]

#: How many messages per crew are kept for resume; an older ``last_seq`` gets a fresh snapshot.
CREW_LOG_LENGTH = 200

#: Suggestion states after which nothing acts on a suggestion any more: kept (for a late
#: decision's precise answer) without their route and turns, and out of the open index.
ENDED_STATES = frozenset({"superseded", "retracted", "expired"})


def _thawed(value: Json | str) -> Json:
    """A value :class:`MemoryState` keeps as JSON text, read back (a fresh dict)."""
    return orjson.loads(value) if isinstance(value, str) else value


def _kept(suggestion: Json) -> Json:
    """What the live state keeps of a suggestion: all of it while it may still be acted on;
    without its route and turns once it has ended (the audit trail keeps them). An incident
    re-planned every few seconds for hours ends thousands of suggestions, each with a route of
    hundreds of points: kept whole they were most of the server's memory."""
    if suggestion.get("state") in ENDED_STATES:
        return dict(suggestion, route_lonlat=[], turns=[])
    return suggestion


class StateStore(Protocol):
    name: str

    async def claim_event(self, source_event_id: str) -> bool:
        """``True`` the first time ``source_event_id`` is claimed, ``False`` afterwards."""
        ...

    async def has_event(self, source_event_id: str) -> bool: ...

    async def put_incident(self, info: Json) -> None: ...

    async def get_incident(self, incident_id: str) -> Json | None: ...

    async def incidents(self) -> list[Json]: ...

    async def append_sighting(self, incident_id: str, sighting: Json) -> int:
        """Append to the incident's log; the log's new length."""
        ...

    async def sightings(self, incident_id: str, start: int = 0) -> list[Json]: ...

    async def put_crew(self, crew: Json) -> None: ...

    async def get_crew(self, crew_id: str) -> Json | None: ...

    async def crews(self) -> list[Json]: ...

    async def crew_versions(self) -> tuple[int, int]:
        """``(any change, status change)`` counters of the crews, to skip unchanged re-reads."""
        ...

    async def put_suggestion(self, suggestion: Json) -> None: ...

    async def get_suggestion(self, suggestion_id: str) -> Json | None: ...

    async def incident_suggestions(self, incident_id: str) -> list[Json]:
        """Every suggestion of one incident (any state; the ended ones without their routes)."""
        ...

    async def open_suggestions(self, incident_id: str) -> list[Json]:
        """The incident's suggestions not yet ended (not in :data:`ENDED_STATES`): what the
        re-plans, declines and pushes look at, without scanning the ended ones."""
        ...

    async def put_view(self, incident_id: str, view: Json) -> None:
        """The incident's latest track / prediction / plan, for ``GET /api/incidents/{id}/state``."""
        ...

    async def get_view(self, incident_id: str) -> Json | None: ...

    async def set_mode(self, commune: str, mode: str) -> None: ...

    async def modes(self) -> dict[str, str]: ...

    async def crew_append(self, crew_id: str, message: Json) -> Json:
        """Give ``message`` the crew stream's next ``seq``, keep it for resume, and return it."""
        ...

    async def crew_since(self, crew_id: str, last_seq: int) -> tuple[int, list[Json]] | None:
        """``(current_seq, messages after last_seq)``, or ``None`` if some were already dropped."""
        ...

    async def crew_seq(self, crew_id: str) -> int: ...

    async def drop_incident(self, incident_id: str) -> int:
        """Remove an incident with its sighting log, suggestions and view (retention purge);
        returns how many rows went."""
        ...

    def lock(self, incident_id: str) -> Any:
        """An async context manager serializing work on one incident (across processes for Redis)."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryState:
    """Everything in this process's memory.

    What only a rare request reads again (ended suggestions, the crews' resume logs) is kept as
    JSON text, not as dicts: the cyclic garbage collector traverses every dict at each full
    collection, and these pile up by the hundred thousand (a full collection over 190,000 such
    dicts stood the event loop still for 160 ms, a 2-minute load run had pauses of 270 ms);
    a string is not traversed. The dicts in force (open suggestions, incidents, crews) stay
    dicts: the handlers read and update them in place."""

    name = "memory"

    def __init__(self) -> None:
        self._events: set[str] = set()
        self._incidents: dict[str, Json] = {}
        self._logs: dict[str, list[Json]] = defaultdict(list)
        self._crews: dict[str, Json] = {}
        self._crew_version = 0
        self._status_version = 0
        self._suggestions: dict[str, Json | str] = {}  # an ended one as JSON text
        self._by_incident: dict[str, dict[str, Json | str]] = defaultdict(dict)
        self._open: dict[str, dict[str, Json]] = defaultdict(dict)
        self._views: dict[str, Json] = {}
        self._modes: dict[str, str] = {}
        self._crew_seq: dict[str, int] = defaultdict(int)
        # (seq, the message as JSON text)
        self._crew_log: dict[str, deque[tuple[int, str]]] = defaultdict(lambda: deque(maxlen=CREW_LOG_LENGTH))
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def claim_event(self, source_event_id: str) -> bool:
        if source_event_id in self._events:
            return False
        self._events.add(source_event_id)
        return True

    async def has_event(self, source_event_id: str) -> bool:
        return source_event_id in self._events

    async def put_incident(self, info: Json) -> None:
        self._incidents[info["incident_id"]] = info

    async def get_incident(self, incident_id: str) -> Json | None:
        return self._incidents.get(incident_id)

    async def incidents(self) -> list[Json]:
        return list(self._incidents.values())

    async def append_sighting(self, incident_id: str, sighting: Json) -> int:
        self._logs[incident_id].append(sighting)
        return len(self._logs[incident_id])

    async def sightings(self, incident_id: str, start: int = 0) -> list[Json]:
        return list(self._logs.get(incident_id, [])[start:])

    async def put_crew(self, crew: Json) -> None:
        old = self._crews.get(crew["crew_id"])
        self._crews[crew["crew_id"]] = crew
        self._crew_version += 1
        if old is None or old.get("status") != crew.get("status"):
            self._status_version += 1

    async def crew_versions(self) -> tuple[int, int]:
        return self._crew_version, self._status_version

    async def get_crew(self, crew_id: str) -> Json | None:
        return self._crews.get(crew_id)

    async def crews(self) -> list[Json]:
        return list(self._crews.values())

    async def put_suggestion(self, suggestion: Json) -> None:
        kept = _kept(suggestion)
        suggestion_id, incident_id = suggestion["suggestion_id"], suggestion["incident_id"]
        if kept is suggestion:
            self._open[incident_id][suggestion_id] = kept
            stored: Json | str = kept
        else:
            self._open[incident_id].pop(suggestion_id, None)
            stored = dumps(kept)
        self._suggestions[suggestion_id] = stored
        self._by_incident[incident_id][suggestion_id] = stored

    async def incident_suggestions(self, incident_id: str) -> list[Json]:
        return [_thawed(v) for v in self._by_incident.get(incident_id, {}).values()]

    async def open_suggestions(self, incident_id: str) -> list[Json]:
        return list(self._open.get(incident_id, {}).values())

    async def get_suggestion(self, suggestion_id: str) -> Json | None:
        value = self._suggestions.get(suggestion_id)
        return None if value is None else _thawed(value)

    async def put_view(self, incident_id: str, view: Json) -> None:
        self._views[incident_id] = view

    async def get_view(self, incident_id: str) -> Json | None:
        return self._views.get(incident_id)

    async def set_mode(self, commune: str, mode: str) -> None:
        self._modes[commune] = mode

    async def modes(self) -> dict[str, str]:
        return dict(self._modes)

    async def crew_append(self, crew_id: str, message: Json) -> Json:
        self._crew_seq[crew_id] += 1
        out = dict(message, seq=self._crew_seq[crew_id])
        self._crew_log[crew_id].append((out["seq"], dumps(out)))
        return out

    async def crew_since(self, crew_id: str, last_seq: int) -> tuple[int, list[Json]] | None:
        current = self._crew_seq[crew_id]
        kept = [orjson.loads(text) for seq, text in self._crew_log[crew_id] if seq > last_seq]
        return _since(current, kept, last_seq)

    async def crew_seq(self, crew_id: str) -> int:
        return self._crew_seq[crew_id]

    async def drop_incident(self, incident_id: str) -> int:
        if self._incidents.pop(incident_id, None) is None:
            return 0
        rows = 1 + len(self._logs.pop(incident_id, []))
        for suggestion_id in self._by_incident.pop(incident_id, {}):
            rows += self._suggestions.pop(suggestion_id, None) is not None
        self._open.pop(incident_id, None)
        rows += self._views.pop(incident_id, None) is not None
        return rows

    @asynccontextmanager
    async def lock(self, incident_id: str) -> AsyncIterator[None]:
        async with self._locks[incident_id]:
            yield

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _since(current: int, kept: list[Json], last_seq: int) -> tuple[int, list[Json]] | None:
    if last_seq >= current:
        return current, []
    missing = [m for m in kept if int(m["seq"]) > last_seq]
    if not missing or int(missing[0]["seq"]) != last_seq + 1:
        return None
    return current, missing


# Atomically: next seq for the crew, stamp the message, keep it in a capped list.
_CREW_APPEND = """
local seq = redis.call('INCR', KEYS[1])
local msg = cjson.decode(ARGV[1])
msg['seq'] = seq
local out = cjson.encode(msg)
redis.call('RPUSH', KEYS[2], out)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return out
"""


# Atomically, for one incident without an open index: index its suggestions not yet ended.
_INDEX_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local all = redis.call('HGETALL', KEYS[2])
local ended = {}
for i = 1, #ARGV do ended[ARGV[i]] = true end
local n = 0
for i = 1, #all, 2 do
  local s = cjson.decode(all[i + 1])
  if not ended[s['state']] then
    redis.call('HSET', KEYS[1], all[i], all[i + 1])
    n = n + 1
  end
end
return n
"""


class RedisState:
    """State in Redis, shared by every server process of one CSU. Keys are prefixed ``{prefix}:``."""

    name = "redis"

    def __init__(self, client: aioredis.Redis, *, prefix: str = "cordon", event_ttl_s: int = 86_400) -> None:
        self.client = client
        self.prefix = prefix
        self.event_ttl_s = event_ttl_s
        #: A crashed worker's lock on an incident frees itself after this long.
        self.lock_timeout_s = 10.0
        self._crew_append = client.register_script(_CREW_APPEND)
        self._index_open = client.register_script(_INDEX_OPEN)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "cordon") -> RedisState:
        return cls(aioredis.Redis.from_url(url, decode_responses=True), prefix=prefix)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def claim_event(self, source_event_id: str) -> bool:
        ok = await self.client.set(self._k("evt", source_event_id), "1", nx=True, ex=self.event_ttl_s)
        return bool(ok)

    async def has_event(self, source_event_id: str) -> bool:
        return bool(await self.client.exists(self._k("evt", source_event_id)))

    async def _hput(self, name: str, key: str, value: Json) -> None:
        await self.client.hset(self._k(name), key, json.dumps(value))

    async def _hget(self, name: str, key: str) -> Json | None:
        raw = await self.client.hget(self._k(name), key)
        return None if raw is None else _loads(raw)

    async def _hall(self, name: str) -> list[Json]:
        raw = await self.client.hvals(self._k(name))
        return [_loads(r) for r in raw]

    async def put_incident(self, info: Json) -> None:
        await self._hput("incidents", info["incident_id"], info)

    async def get_incident(self, incident_id: str) -> Json | None:
        return await self._hget("incidents", incident_id)

    async def incidents(self) -> list[Json]:
        return await self._hall("incidents")

    async def append_sighting(self, incident_id: str, sighting: Json) -> int:
        return int(await self.client.rpush(self._k("log", incident_id), json.dumps(sighting)))

    async def sightings(self, incident_id: str, start: int = 0) -> list[Json]:
        raw = await self.client.lrange(self._k("log", incident_id), start, -1)
        return [_loads(r) for r in raw]

    async def put_crew(self, crew: Json) -> None:
        old = await self._hget("crews", crew["crew_id"])
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._k("crews"), crew["crew_id"], json.dumps(crew))
        pipe.incr(self._k("crewver"))
        if old is None or old.get("status") != crew.get("status"):
            pipe.incr(self._k("crewstatusver"))
        await pipe.execute()

    async def crew_versions(self) -> tuple[int, int]:
        a, b = await self.client.mget(self._k("crewver"), self._k("crewstatusver"))
        return int(a or 0), int(b or 0)

    async def get_crew(self, crew_id: str) -> Json | None:
        return await self._hget("crews", crew_id)

    async def crews(self) -> list[Json]:
        return await self._hall("crews")

    async def put_suggestion(self, suggestion: Json) -> None:
        kept = _kept(suggestion)
        suggestion_id, incident_id = suggestion["suggestion_id"], suggestion["incident_id"]
        raw = json.dumps(kept)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._k("suggestions"), suggestion_id, raw)
        pipe.hset(self._k("isugg", incident_id), suggestion_id, raw)
        if kept is suggestion:
            pipe.hset(self._k("iopen", incident_id), suggestion_id, raw)
        else:
            pipe.hdel(self._k("iopen", incident_id), suggestion_id)
        await pipe.execute()

    async def incident_suggestions(self, incident_id: str) -> list[Json]:
        return await self._hall(f"isugg:{incident_id}")

    async def open_suggestions(self, incident_id: str) -> list[Json]:
        return await self._hall(f"iopen:{incident_id}")

    async def index_open_suggestions(self) -> int:
        """Build the open index (``iopen:{incident}``) of state written by a version without it,
        which a new worker must not take for incidents with no suggestion in force: once per
        Redis (a marker key says it was done), each incident in one script (no other worker's
        write can slip in between its reading and its indexing). Run at each worker's start;
        returns how many incidents it indexed. Workers of the older version must all be stopped
        first: they do not keep the index."""
        marker = self._k("iopen_built")
        if await self.client.exists(marker):
            return 0
        done = 0
        for info in await self.incidents():
            incident_id = info["incident_id"]
            keys = [self._k("iopen", incident_id), self._k("isugg", incident_id)]
            if int(await self._index_open(keys=keys, args=sorted(ENDED_STATES))):
                done += 1
        await self.client.set(marker, "1")
        return done

    async def get_suggestion(self, suggestion_id: str) -> Json | None:
        return await self._hget("suggestions", suggestion_id)

    async def put_view(self, incident_id: str, view: Json) -> None:
        await self._hput("views", incident_id, view)

    async def get_view(self, incident_id: str) -> Json | None:
        return await self._hget("views", incident_id)

    async def set_mode(self, commune: str, mode: str) -> None:
        await self.client.hset(self._k("modes"), commune, mode)

    async def drop_incident(self, incident_id: str) -> int:
        if await self.get_incident(incident_id) is None:
            return 0
        ids = list(await self.client.hkeys(self._k("isugg", incident_id)))
        n_log = int(await self.client.llen(self._k("log", incident_id)))
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self._k("incidents"), incident_id)
        pipe.hdel(self._k("views"), incident_id)
        if ids:
            pipe.hdel(self._k("suggestions"), *ids)
        pipe.delete(self._k("isugg", incident_id), self._k("iopen", incident_id), self._k("log", incident_id))
        await pipe.execute()
        return 1 + n_log + len(ids) + 1

    async def modes(self) -> dict[str, str]:
        raw: Any = await self.client.hgetall(self._k("modes"))
        return {str(k): str(v) for k, v in raw.items()}

    async def crew_append(self, crew_id: str, message: Json) -> Json:
        raw = await self._crew_append(
            keys=[self._k("crewseq", crew_id), self._k("crewlog", crew_id)],
            args=[json.dumps(message), CREW_LOG_LENGTH],
        )
        return _loads(raw)

    async def crew_since(self, crew_id: str, last_seq: int) -> tuple[int, list[Json]] | None:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self._k("crewseq", crew_id))
        pipe.lrange(self._k("crewlog", crew_id), 0, -1)
        current_raw, kept_raw = await pipe.execute()
        current = int(current_raw or 0)
        return _since(current, [_loads(r) for r in kept_raw], last_seq)

    async def crew_seq(self, crew_id: str) -> int:
        return int(await self.client.get(self._k("crewseq", crew_id)) or 0)

    def lock(self, incident_id: str) -> Any:
        return self.client.lock(
            self._k("lock", incident_id), timeout=self.lock_timeout_s, blocking_timeout=60
        )

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()


def _loads(raw: str | bytes) -> Json:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"state store holds a non-object value: {raw!r:.80}")
    return value
