"""This worker's websocket connections: one bounded queue and one relay task per connection.

Nothing ever awaits a client's socket except that client's own relay task, so one slow or dead
tablet never stalls the others. A client whose queue is full is cut (close code 4008) and resumes
from its last sequence number when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from serving.jsontext import dumps

Json = dict[str, Any]
Sender = Callable[[str], Awaitable[None]]
Closer = Callable[[int, str], Awaitable[None]]

log = logging.getLogger("cordon.hub")

#: Close code for a client that fell too far behind (application range 4000-4999).
CLOSE_TOO_SLOW = 4008

#: A batching connection's frame takes queued messages up to about this many characters;
#: a message above ``BATCH_ITEM_MAX_CHARS`` (a prediction's GeoJSON) always has a frame of its
#: own (a client can then skip it unparsed).
BATCH_MAX_CHARS = 256 * 1024
BATCH_ITEM_MAX_CHARS = 16 * 1024


class Encoded(str):
    """A message value already serialized as JSON (a prediction's GeoJSON, tens of kB, sent to
    consoles and tablets alike): :func:`encode` splices it in as it is. In-process only: a bus
    that serializes events would turn it into a JSON string."""


def encode(message: Json) -> str:
    """``message`` as JSON text (:func:`serving.jsontext.dumps`), with :class:`Encoded` values
    spliced in unchanged."""
    raw = {k: v for k, v in message.items() if isinstance(v, Encoded)}
    if not raw:
        return dumps(message)
    head = dumps({k: v for k, v in message.items() if not isinstance(v, Encoded)})
    tail = ",".join(f"{dumps(k)}:{v}" for k, v in raw.items())
    return head[:-1] + ("," if len(head) > 2 else "") + tail + "}"


def _decoded(message: Json) -> Json:
    """``message`` as the client parses it (the tests' record of what was sent): its JSON text
    read back, :class:`Encoded` values included (tuples become lists, as on the wire)."""
    parsed: Json = json.loads(encode(message))
    return parsed


class ConnectionState(enum.Enum):
    open = "open"
    closing = "closing"
    closed = "closed"


@dataclass(eq=False)
class Connection:
    """One websocket. ``crew_id`` for a tablet, ``communes`` for an operator console
    (``None`` = every commune). ``batch``: the client asked for batched frames (``?batch=1``):
    the messages queued when its relay wakes go in one frame, a JSON array of messages in
    order; a client that did not ask gets one message per frame."""

    conn_id: int
    role: str
    subject: str
    send: Sender
    close: Closer
    crew_id: str | None = None
    communes: frozenset[str] | None = None
    queue_size: int = 256
    seq: int = 0
    state: ConnectionState = ConnectionState.open
    queue: asyncio.Queue[str | None] = field(init=False)
    task: asyncio.Task[None] | None = field(default=None, init=False)
    last_crew_seq: int = 0
    ready: bool = False
    batch: bool = False
    linger_s: float = 0.0  # a batching console: wait this long for more before sending a frame
    watching: frozenset[str] | None = None  # a console's incidents for predictions (None: all)
    held: list[Json] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.queue_size)

    def sees(self, communes: list[str] | None) -> bool:
        if self.communes is None or communes is None:
            return True
        return bool(self.communes.intersection(communes))


class Hub:
    """The registry of this worker's connections and the place every outgoing message goes through."""

    def __init__(
        self, *, queue_size: int = 256, now: Callable[[], str], console_linger_s: float = 0.0
    ) -> None:
        self.queue_size = queue_size
        self.console_linger_s = console_linger_s
        self._now = now
        self._next_id = 0
        self.crews: dict[str, set[Connection]] = {}
        self.operators: set[Connection] = set()
        self.sent_log: list[Json] | None = None  # tests record every message sent
        self.cut = 0
        # sent on this worker's sockets (read by /metrics): frames, the messages in them, and
        # their characters (JSON is ASCII: bytes)
        self.frames_sent = 0
        self.messages_sent = 0
        self.chars_sent = 0
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return sum(len(c) for c in self.crews.values()) + len(self.operators)

    def add(
        self,
        *,
        role: str,
        subject: str,
        send: Sender,
        close: Closer,
        crew_id: str | None = None,
        communes: frozenset[str] | None = None,
        batch: bool = False,
    ) -> Connection:
        self._next_id += 1
        conn = Connection(
            self._next_id,
            role,
            subject,
            send,
            close,
            crew_id=crew_id,
            communes=communes,
            queue_size=self.queue_size,
            batch=batch,
            linger_s=self.console_linger_s if batch and crew_id is None else 0.0,
        )
        if crew_id is not None:
            self.crews.setdefault(crew_id, set()).add(conn)
        else:
            self.operators.add(conn)
        conn.task = asyncio.create_task(self._relay(conn), name=f"relay-{conn.conn_id}")
        return conn

    async def remove(self, conn: Connection) -> None:
        conn.state = ConnectionState.closed
        if conn.crew_id is not None:
            group = self.crews.get(conn.crew_id)
            if group is not None:
                group.discard(conn)
                if not group:
                    del self.crews[conn.crew_id]
        else:
            self.operators.discard(conn)
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await conn.task

    def enqueue(self, conn: Connection, message: Json) -> None:
        """Queue ``message`` for ``conn``; operators' messages get the connection's next ``seq``,
        crews' messages arrive stamped with the crew stream's ``seq``."""
        if conn.state is not ConnectionState.open:
            return
        if conn.crew_id is None:
            conn.seq += 1
            message = dict(message, seq=conn.seq)
        else:
            seq = int(message.get("seq", 0))
            if seq and seq <= conn.last_crew_seq:
                return  # already delivered (resume overlap)
            if seq:
                conn.last_crew_seq = seq
        message.setdefault("sent_at", self._now())
        if self.sent_log is not None:
            self.sent_log.append(dict(_decoded(message), _role=conn.role))
        try:
            conn.queue.put_nowait(encode(message))
        except asyncio.QueueFull:
            self._cut(conn)

    def enqueue_direct(self, conn: Connection, message: Json) -> None:
        """Queue a message that is not part of the connection's stream (a snapshot, an error, a
        heartbeat): no ``seq`` is added (a snapshot brings its own) and no duplicate filter."""
        if conn.state is not ConnectionState.open:
            return
        message = dict(message)
        message.setdefault("sent_at", self._now())
        if self.sent_log is not None:
            self.sent_log.append(dict(_decoded(message), _role=conn.role))
        try:
            conn.queue.put_nowait(encode(message))
        except asyncio.QueueFull:
            self._cut(conn)

    def _cut(self, conn: Connection) -> None:
        """Drop a client that fell behind: stop its relay (it may be stuck in a send) and close
        its socket with :data:`CLOSE_TOO_SLOW`; it reconnects and resumes from its last seq."""
        log.warning("connection %s (%s) fell behind; cutting it", conn.conn_id, conn.subject)
        self.cut += 1
        conn.state = ConnectionState.closing
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                conn.queue.get_nowait()
        if conn.task is not None:
            conn.task.cancel()
        task = asyncio.create_task(self._close_quietly(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(conn: Connection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(CLOSE_TOO_SLOW, "too far behind; reconnect and resume"), 2.0)

    def to_crew(self, crew_id: str, message: Json) -> int:
        """Deliver a stamped crew-stream message to every tablet of ``crew_id`` on this worker."""
        conns = self.crews.get(crew_id, ())
        for conn in list(conns):
            if conn.ready:
                self.enqueue(conn, message)
            else:
                conn.held.append(message)
        return len(conns)

    def to_operators(self, communes: list[str] | None, message: Json) -> int:
        """Fan a message out to the consoles that see ``communes`` (a ``prediction``: those of
        them watching its incident; a ``plan``: in full to those, slimmed by :func:`slim_plan`
        to the others). Each body is serialized once; each connection's ``seq`` is spliced in
        front of it."""
        targets = [c for c in self.operators if c.state is ConnectionState.open and c.sees(communes)]
        kind, incident = message.get("type"), message.get("incident_id")
        if kind == "prediction":  # tens of kB: only to the consoles watching it
            targets = [c for c in targets if c.watching is None or incident in c.watching]
        if not targets:
            return 0
        body = dict(message)
        body.pop("seq", None)
        body.setdefault("sent_at", self._now())
        texts: dict[bool, tuple[Json, str]] = {}  # full or not: the body and its text, made once
        for conn in targets:
            full = kind != "plan" or conn.watching is None or incident in conn.watching
            if full not in texts:
                variant = body if full else slim_plan(body)
                texts[full] = (variant, encode(variant))
            variant, text = texts[full]
            conn.seq += 1
            if self.sent_log is not None:
                self.sent_log.append(dict(_decoded(variant), seq=conn.seq, _role=conn.role))
            try:
                conn.queue.put_nowait(
                    f'{{"seq":{conn.seq},{text[1:]}' if len(text) > 2 else f'{{"seq":{conn.seq}}}'
                )
            except asyncio.QueueFull:
                self._cut(conn)
        return len(targets)

    def to_crew_direct(self, crew_id: str, message: Json) -> int:
        """Deliver a message outside the crew stream (no ``seq``: a pushed track or prediction)
        to every ready tablet of ``crew_id`` on this worker."""
        return self.to_crews_direct([crew_id], message)

    def to_crews_direct(self, crew_ids: list[str], message: Json) -> int:
        """:meth:`to_crew_direct` to several crews: the body is serialized once (a prediction's
        GeoJSON is tens of kilobytes) and the same text queued on every ready tablet."""
        conns = [
            c
            for crew_id in crew_ids
            for c in self.crews.get(crew_id, ())
            if c.ready and c.state is ConnectionState.open
        ]
        if not conns:
            return 0
        body = dict(message)
        body.setdefault("sent_at", self._now())
        text = encode(body)
        for conn in conns:
            if self.sent_log is not None:
                self.sent_log.append(dict(_decoded(body), _role=conn.role))
            try:
                conn.queue.put_nowait(text)
            except asyncio.QueueFull:
                self._cut(conn)
        return len(conns)

    def heartbeat(self) -> int:
        """Queue a ``heartbeat`` (no ``seq``) on every open connection; returns how many."""
        conns = [c for group in self.crews.values() for c in group] + list(self.operators)
        n = 0
        for conn in conns:
            if conn.state is ConnectionState.open:
                self.enqueue_direct(conn, {"type": "heartbeat"})
                n += 1
        return n

    def release(self, conn: Connection) -> None:
        """Mark a tablet ready after its resume/snapshot and flush what arrived meanwhile."""
        conn.ready = True
        held, conn.held = conn.held, []
        for message in held:
            self.enqueue(conn, message)

    async def _relay(self, conn: Connection) -> None:
        carried: list[str | None] = []  # a message taken off the queue for the next frame
        try:
            while True:
                text = await conn.queue.get()
                if conn.linger_s > 0 and text is not None and len(text) <= BATCH_ITEM_MAX_CHARS:
                    # a console's small message: what comes meanwhile goes in the same frame
                    await asyncio.sleep(conn.linger_s)
                while True:  # send what is queued (a lingering console: all of it, no more waits)
                    if text is None:
                        await conn.close(CLOSE_TOO_SLOW, "too far behind; reconnect and resume")
                        return
                    n = 1
                    if conn.batch and not conn.queue.empty() and len(text) <= BATCH_ITEM_MAX_CHARS:
                        text, n = _batched(text, conn.queue, carried)
                    self.frames_sent += 1
                    self.messages_sent += n
                    self.chars_sent += len(text)
                    await conn.send(text)
                    if carried:
                        text = carried.pop()
                    elif conn.linger_s > 0 and not conn.queue.empty():
                        text = conn.queue.get_nowait()
                    else:
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket died: the reader side cleans up
            log.info("relay for connection %s ended: %s", conn.conn_id, exc)
        finally:
            conn.state = ConnectionState.closed

    async def close_all(self) -> None:
        for conn in [c for group in self.crews.values() for c in group] + list(self.operators):
            await self.remove(conn)


def slim_plan(plan: Json) -> Json:
    """A ``plan`` message for a console not watching its incident: the suggestions without
    their routes and turns (``detail: false``), a tenth of the size. That console lists the
    plan and its crews' targets; it draws routes only for the incident it shows, and takes
    them from ``GET /api/incidents/{id}/state`` when the operator selects it."""
    return dict(
        plan,
        detail=False,
        suggestions=[dict(s, route_lonlat=[], turns=[]) for s in plan.get("suggestions", ())],
    )


def _batched(first: str, queue: asyncio.Queue[str | None], carried: list[str | None]) -> tuple[str, int]:
    """``first`` and the small messages queued behind it as one frame (a JSON array, in order),
    up to about :data:`BATCH_MAX_CHARS`. The message that ends the batch (a large one, which
    goes in a frame of its own, or a close) is put in ``carried``. Returns the frame and how
    many messages it holds. One frame for several
    messages: one send through the websocket stack and one socket write, the event loop's
    largest cost per message under load."""
    texts = [first]
    size = len(first)
    while size < BATCH_MAX_CHARS and not queue.empty():
        text = queue.get_nowait()
        if text is None or len(text) > BATCH_ITEM_MAX_CHARS:
            carried.append(text)
            break
        texts.append(text)
        size += len(text)
    if len(texts) == 1:
        return first, 1
    return "[" + ",".join(texts) + "]", len(texts)
