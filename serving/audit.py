"""The audit trail: append-only, hash-chained, purgeable without losing verifiability.

Every record carries the hash of the previous one::

    hash(n) = SHA-256( canonical_json({seq, at, actor, role, action, incident_id, commune,
                                        payload, reason, prev_hash = hash(n-1)}) )

(HMAC-SHA-256 with a key kept outside the database when one is given), ``hash(0)`` being
:data:`GENESIS_HASH`. Canonical JSON: sorted keys, no whitespace, UTF-8, NaN and infinities refused.

Purge without breaking the chain: a purge turns records into **tombstones** (payload, actor, role,
incident and reason erased; ``seq``, ``at``, ``action``, ``commune``, ``prev_hash`` and ``hash`` kept)
and appends a ``purge`` record listing the tombstoned sequence numbers. :meth:`AuditLog.verify`
recomputes the hash of every live record, checks the links of every record (tombstones
included), checks that sequence numbers are contiguous from 1, that every tombstone is covered by
a later ``purge`` record, and that the last record matches the ``audit_head`` row (so removing the
tail is detected too). Purge records are never purged.

Database guards (SQLite triggers, PostgreSQL plpgsql triggers): inserts only at the head, no
DELETE or TRUNCATE, and UPDATE only to turn a live record into a tombstone, only inside the purge
path (a gate row in SQLite, a transaction-local setting in PostgreSQL). The guards stop mistakes
and ordinary writers; the hash chain catches whoever gets past them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

__all__ = [
    "GENESIS_HASH",
    "AuditAction",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "PostgresAuditLog",
    "PurgeResult",
    "SqliteAuditLog",
    "VerifyReport",
    "canonical_json",
    "export_jsonl",
    "open_audit_log",
    "record_hash",
]

GENESIS_HASH = "0" * 64
_NAME = re.compile(r"^[A-Za-z0-9_.:@/-]{1,128}$")
_PAGE = 1000


class AuditError(ValueError):
    """Bad input to the audit log, or a log that cannot be opened as asked."""


class AuditAction(StrEnum):
    """The kinds of record the server, the CLI and the retention job write (``action`` is a free
    identifier, these are the ones with a meaning fixed here)."""

    login = "login"
    logout = "logout"
    token_revoked = "token_revoked"
    incident_opened = "incident_opened"
    incident_closed = "incident_closed"
    sighting_received = "sighting_received"
    crew_state = "crew_state"
    suggestion_issued = "suggestion_issued"
    plan_computed = "plan_computed"
    operator_decision = "operator_decision"
    crew_decision = "crew_decision"
    share = "share"
    export = "export"
    legal_hold = "legal_hold"
    hold_released = "hold_released"
    retention_changed = "retention_changed"
    purge = "purge"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record. On a tombstone (``purged``) actor, role, incident_id, payload and reason are ``None``."""

    seq: int
    at: datetime
    actor: str | None
    role: str | None
    action: str
    incident_id: str | None
    commune: str | None
    payload: dict[str, Any] | None
    reason: str | None
    prev_hash: str
    hash: str
    purged: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": _at_text(self.at),
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "incident_id": self.incident_id,
            "commune": self.commune,
            "payload": self.payload,
            "reason": self.reason,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "purged": self.purged,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """``ok`` or the smallest ``first_bad_seq`` at fault and what is wrong with it."""

    ok: bool
    first_bad_seq: int | None
    problem: str | None
    records_checked: int
    tombstones: int
    head_seq: int
    head_hash: str


@dataclass(frozen=True, slots=True)
class PurgeResult:
    commune: str | None
    before: datetime
    tombstoned: int
    kept_on_hold: int
    record: AuditRecord


class AuditSink(Protocol):
    """Anything audit records can be appended to: an :class:`AuditLog`, the server's queue in
    front of one, or an in-memory list in tests."""

    def append(
        self,
        actor: str,
        role: str,
        action: str,
        *,
        at: datetime,
        incident_id: str | None = None,
        commune: str | None = None,
        payload: dict[str, Any] | None = None,
        reason: str | None = "",
    ) -> object: ...


class AuditLog(Protocol):
    """What the server, the retention job and the CLI use."""

    def append(
        self,
        actor: str,
        role: str,
        action: str,
        *,
        at: datetime,
        incident_id: str | None = None,
        commune: str | None = None,
        payload: Mapping[str, Any] | None = None,
        reason: str | None = "",
    ) -> AuditRecord: ...

    def records(
        self,
        incident_id: str | None = None,
        since: datetime | None = None,
        *,
        action: str | None = None,
        commune: str | None = None,
        include_purged: bool = False,
    ) -> Iterator[AuditRecord]: ...

    def verify(self) -> VerifyReport: ...

    def purge(
        self,
        commune: str | None,
        before: datetime,
        holds: Collection[str],
        *,
        at: datetime,
        actor: str = "system:retention",
        role: str = "system",
        details: Mapping[str, Any] | None = None,
    ) -> PurgeResult: ...

    def communes(self) -> set[str | None]: ...

    def head(self) -> tuple[int, str]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Canonical form and hashing


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept, NaN/inf refused (``AuditError`` naming the path).

    The text is :func:`_reference_json`'s (the standard library's ``json.dumps``, which every
    existing chain was hashed with). A payload that :func:`_orjson_exact` accepts is written by
    orjson instead, a few times cheaper in the audit thread: for those values both write the
    same bytes (tested on generated and real payloads in ``tests/test_access_audit_fast.py``,
    and checked once at import). Whatever orjson refuses (integers beyond 64 bits, lone
    surrogates, deep nesting) goes to the reference, which then raises as it always did."""
    if _ORJSON_EXACT and _orjson_exact(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:
            pass
    return _reference_json(value)


def _reference_json(value: Any) -> str:
    """The canonical text by definition: ``json.dumps`` with sorted keys and no whitespace."""
    if not _plain(value):  # the path-naming check only when the quick one finds a fault
        _check_finite(value, "payload")
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # lone surrogates cannot be stored or hashed
    except (TypeError, ValueError) as exc:
        raise AuditError(f"payload is not canonical JSON: {exc}") from exc
    return text


# Types orjson writes exactly as ``json.dumps`` does (not their subclasses: a ``str`` or ``int``
# subclass may override what the standard library calls, an ``IntEnum``'s text differs).
_SCALARS = frozenset({str, int, bool, type(None)})


def _orjson_exact(value: Any) -> bool:
    """Whether orjson's text for ``value`` is the reference's: only dicts with ``str`` keys,
    lists, tuples, exact ``str``/``int``/``bool``/``None``, and floats that ``repr`` writes
    without an exponent (``0.0``, or ``1e-4 <= |x| < 1e16``: both libraries then write the
    shortest digits that read back as ``x``, ``.0`` on integers; outside that range orjson
    writes ``1e-05`` as ``0.00001`` and ``1e-06`` as ``1e-6``). NaN and infinities fail the
    range test, so the reference names their path; a ``False`` costs only speed.

    One walk in place of :func:`_plain`'s (without its per-leaf ``isinstance`` against
    ``Mapping``); the items of a list of lists are tested inline, without a call per item (a
    route is a tuple of hundreds of ``(lon, lat)`` pairs)."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            itype = type(item)
            if itype in _SCALARS:
                continue
            if itype is float:
                if not (1e-4 <= abs(item) < 1e16 or item == 0.0):
                    return False
            elif not _orjson_exact(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            itype = type(item)
            if itype in _SCALARS:
                continue
            if itype is float:
                if not (1e-4 <= abs(item) < 1e16 or item == 0.0):
                    return False
            elif itype is tuple or itype is list:
                for inner in item:
                    ktype = type(inner)
                    if ktype is float:
                        if not (1e-4 <= abs(inner) < 1e16 or inner == 0.0):
                            return False
                    elif ktype not in _SCALARS and not _orjson_exact(inner):
                        return False
            elif not _orjson_exact(item):
                return False
        return True
    if kind is float:
        return bool(1e-4 <= abs(value) < 1e16 or value == 0.0)
    return kind in _SCALARS


def _orjson_agrees() -> bool:
    """Whether the installed orjson writes the reference's text on the cases the fast path
    relies on (the range's edges, digits, escapes, key order): a different orjson release that
    formats a float or escapes a character otherwise turns the fast path off, never the chain."""
    probe: dict[str, Any] = {
        "floats": [
            0.0,
            -0.0,
            1e-4,
            -1e-4,
            0.00010000000000000002,
            0.1,
            0.3333333333333333,
            1.0,
            -2.5,
            6.175932,
            49.119308,
            123456789012345.6,
            1e15,
            9999999999999998.0,
            2.0**52,
            2.0**53 - 1,
            0.000123456789,
            1.7976931348623157e15,
        ],
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "text": "".join(map(chr, range(0x80))) + "\u00e9\u2028\u2029\ufeff\U0001f600",
        "keys": {"b": 1, "a": 2, "\u00e9": 3, "z": 4, "\U0001f600": 5, "\uffff": 6, "": 7},
        "nested": ({"t": (True, False, None)}, [[], {}]),
    }
    try:
        fast = orjson.dumps(probe, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:  # pragma: no cover - an orjson that cannot write these
        return False
    return fast == _reference_json(probe)


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only dicts with string keys, lists, tuples, finite floats and
    other scalars: :func:`_check_finite`'s test without building a path per item (a
    suggestion's route has hundreds of points); :func:`_check_finite` then names the fault."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v) for v in value)
    return not isinstance(value, float | Mapping | list | tuple)  # a subclass: the full check


def _check_finite(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise AuditError(f"{path} is {value!r}; NaN and infinities are not allowed")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"{path} has a non-string key {key!r}")
            _check_finite(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]")


_ORJSON_EXACT = _orjson_agrees()


def _at_text(at: datetime) -> str:
    """Fixed-width UTC ISO text (sorts like the instants it names)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def record_hash(
    *,
    seq: int,
    at: datetime,
    actor: str | None,
    role: str | None,
    action: str,
    incident_id: str | None,
    commune: str | None,
    payload_json: str,
    reason: str | None,
    prev_hash: str,
    key: bytes | None = None,
) -> str:
    """The chained hash of one record (``payload_json`` is the canonical JSON of its payload)."""
    return _chain_hash(
        seq, _at_text(at), actor, role, action, incident_id, commune, payload_json, reason, prev_hash, key
    )


def _chain_hash(
    seq: int,
    at_text: str,
    actor: str | None,
    role: str | None,
    action: str,
    incident_id: str | None,
    commune: str | None,
    payload_json: str,
    reason: str | None,
    prev_hash: str,
    key: bytes | None,
) -> str:
    """:func:`record_hash` with the time already as :func:`_at_text` (the writer needs that
    text for the row too, so it is made once per record)."""
    head = canonical_json(
        {
            "seq": seq,
            "at": at_text,
            "actor": actor,
            "role": role,
            "action": action,
            "incident_id": incident_id,
            "commune": commune,
            "reason": reason,
            "prev_hash": prev_hash,
        }
    )
    message = f"{head}\n{payload_json}".encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise AuditError(f"{name}={value!r} must be timezone-aware")


def _require_name(value: str | None, name: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not _NAME.match(value):
        raise AuditError(f"{name}={value!r} must be 1-128 characters of [A-Za-z0-9_.:@/-]")


# ---------------------------------------------------------------------------------------------
# The SQL implementation shared by SQLite and PostgreSQL

_COLUMNS = "seq, at, actor, role, action, incident_id, commune, payload, reason, prev_hash, hash, purged"

_TABLES = (
    """CREATE TABLE IF NOT EXISTS audit_records (
        seq BIGINT PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT,
        role TEXT,
        action TEXT NOT NULL,
        incident_id TEXT,
        commune TEXT,
        payload TEXT,
        reason TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        purged INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS audit_records_incident ON audit_records (incident_id, seq)",
    "CREATE INDEX IF NOT EXISTS audit_records_commune_at ON audit_records (commune, at)",
    "CREATE INDEX IF NOT EXISTS audit_records_action ON audit_records (action, seq)",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL)""",
    f"INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}') ON CONFLICT DO NOTHING",
    "CREATE TABLE IF NOT EXISTS audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

_SQLITE_GUARDS = (
    "CREATE TABLE IF NOT EXISTS audit_gate (id INTEGER PRIMARY KEY CHECK (id = 1), open INTEGER NOT NULL)",
    "INSERT INTO audit_gate (id, open) VALUES (1, 0) ON CONFLICT DO NOTHING",
    """CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
       BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_records_append_at_head BEFORE INSERT ON audit_records
       WHEN NEW.seq IS NOT (SELECT seq FROM audit_head WHERE id = 1) + 1
         OR NEW.prev_hash IS NOT (SELECT hash FROM audit_head WHERE id = 1)
         OR NEW.purged IS NOT 0
       BEGIN SELECT RAISE(ABORT, 'audit records are appended at the head'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_records_tombstone_only BEFORE UPDATE ON audit_records
       WHEN (SELECT open FROM audit_gate WHERE id = 1) IS NOT 1
         OR OLD.purged = 1 OR NEW.purged IS NOT 1 OR OLD.action = 'purge'
         OR NEW.seq IS NOT OLD.seq OR NEW.at IS NOT OLD.at OR NEW.action IS NOT OLD.action
         OR NEW.commune IS NOT OLD.commune OR NEW.prev_hash IS NOT OLD.prev_hash OR NEW.hash IS NOT OLD.hash
         OR NEW.actor IS NOT NULL OR NEW.role IS NOT NULL OR NEW.incident_id IS NOT NULL
         OR NEW.payload IS NOT NULL OR NEW.reason IS NOT NULL
       BEGIN SELECT RAISE(ABORT, 'audit records can only be tombstoned by a purge'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_head_forward BEFORE UPDATE ON audit_head
       WHEN NEW.seq IS NOT OLD.seq + 1 OR NEW.id IS NOT OLD.id
         OR NEW.hash IS NOT (SELECT hash FROM audit_records WHERE seq = NEW.seq)
       BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward to the last record'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
       BEGIN SELECT RAISE(ABORT, 'the audit head cannot be deleted'); END""",
)

_POSTGRES_GUARDS = (
    """CREATE OR REPLACE FUNCTION audit_records_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE head_seq BIGINT; head_hash TEXT;
    BEGIN
      IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'audit records are append-only';
      END IF;
      IF TG_OP = 'INSERT' THEN
        SELECT h.seq, h.hash INTO head_seq, head_hash FROM audit_head h WHERE h.id = 1;
        IF NEW.seq IS DISTINCT FROM head_seq + 1 OR NEW.prev_hash IS DISTINCT FROM head_hash
           OR NEW.purged <> 0 THEN
          RAISE EXCEPTION 'audit records are appended at the head';
        END IF;
        RETURN NEW;
      END IF;
      IF coalesce(current_setting('cordon.audit_purge', true), '') <> 'on'
         OR OLD.purged = 1 OR NEW.purged IS DISTINCT FROM 1 OR OLD.action = 'purge'
         OR NEW.seq IS DISTINCT FROM OLD.seq OR NEW.at IS DISTINCT FROM OLD.at
         OR NEW.action IS DISTINCT FROM OLD.action OR NEW.commune IS DISTINCT FROM OLD.commune
         OR NEW.prev_hash IS DISTINCT FROM OLD.prev_hash OR NEW.hash IS DISTINCT FROM OLD.hash
         OR NEW.actor IS NOT NULL OR NEW.role IS NOT NULL OR NEW.incident_id IS NOT NULL
         OR NEW.payload IS NOT NULL OR NEW.reason IS NOT NULL THEN
        RAISE EXCEPTION 'audit records can only be tombstoned by a purge';
      END IF;
      RETURN NEW;
    END $$""",
    """CREATE OR REPLACE TRIGGER audit_records_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_records
       FOR EACH ROW EXECUTE FUNCTION audit_records_guard()""",
    """CREATE OR REPLACE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
       FOR EACH STATEMENT EXECUTE FUNCTION audit_records_guard()""",
    """CREATE OR REPLACE FUNCTION audit_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'the audit head cannot be deleted';
      END IF;
      IF NEW.seq IS DISTINCT FROM OLD.seq + 1 OR NEW.id IS DISTINCT FROM OLD.id
         OR NEW.hash IS DISTINCT FROM (SELECT r.hash FROM audit_records r WHERE r.seq = NEW.seq) THEN
        RAISE EXCEPTION 'the audit head only moves forward to the last record';
      END IF;
      RETURN NEW;
    END $$""",
    """CREATE OR REPLACE TRIGGER audit_head_guard BEFORE UPDATE OR DELETE ON audit_head
       FOR EACH ROW EXECUTE FUNCTION audit_head_guard()""",
    """CREATE OR REPLACE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
       FOR EACH STATEMENT EXECUTE FUNCTION audit_head_guard()""",
)


class _SqlAuditLog:
    """Everything but the connection handling, written once for both databases."""

    _placeholder = "?"
    _for_update = ""

    def __init__(self, *, key: bytes | None) -> None:
        self._key = key
        self._lock = threading.Lock()

    # -- backend hooks --------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Any]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    @contextmanager
    def _snapshot(self) -> Iterator[Any]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    def _open_gate(self, cur: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _close_gate(self, cur: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def _q(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def _init_meta(self, cur: Any) -> None:
        scheme = "sha256" if self._key is None else "hmac-sha256"
        cur.execute(self._q("SELECT value FROM audit_meta WHERE name = ?"), ("hash_scheme",))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                self._q("INSERT INTO audit_meta (name, value) VALUES (?, ?)"), ("hash_scheme", scheme)
            )
        elif row[0] != scheme:
            raise AuditError(
                f"this audit log uses {row[0]} hashes; open it "
                + ("with its key" if row[0] == "hmac-sha256" else "without a key")
            )

    def head(self) -> tuple[int, str]:
        with self._snapshot() as cur:
            cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
            seq, digest = cur.fetchone()
            return int(seq), str(digest)

    def append(
        self,
        actor: str,
        role: str,
        action: str,
        *,
        at: datetime,
        incident_id: str | None = None,
        commune: str | None = None,
        payload: Mapping[str, Any] | None = None,
        reason: str | None = "",
    ) -> AuditRecord:
        """Append one record at the head and return it (with its ``seq`` and ``hash``)."""
        reason = reason or ""
        payload_json = self._checked(actor, role, action, at, incident_id, commune, payload, reason)
        with self._write() as cur:
            return self._append_in(cur, actor, role, action, at, incident_id, commune, payload_json, reason)

    def append_many(
        self,
        records: Sequence[
            tuple[str, str, str, datetime, str | None, str | None, Mapping[str, Any] | None, str | None]
        ],
        *,
        return_records: bool = True,
    ) -> list[AuditRecord]:
        """Append ``(actor, role, action, at, incident_id, commune, payload, reason)`` records in
        order, in one transaction (one fsync instead of one per record). Every record is checked
        before any is written: one invalid record raises :class:`AuditError` and writes none.
        ``return_records=False``: return nothing (``[]``; the server's writer thread does not
        read them, and building them parses every payload back)."""
        checked = []
        for actor, role, action, at, incident_id, commune, payload, reason in records:
            text = reason or ""
            payload_json = self._checked(actor, role, action, at, incident_id, commune, payload, text)
            checked.append((actor, role, action, at, incident_id, commune, payload_json, text))
        if not checked:
            return []
        with self._write() as cur:
            if return_records:
                return [self._append_in(cur, *record) for record in checked]
            self._insert_many(cur, checked)
        return []

    def _checked(
        self,
        actor: str,
        role: str,
        action: str,
        at: datetime,
        incident_id: str | None,
        commune: str | None,
        payload: Mapping[str, Any] | None,
        reason: str,
    ) -> str:
        _require_aware(at, "at")
        _require_name(actor, "actor", optional=False)
        _require_name(role, "role", optional=False)
        _require_name(action, "action", optional=False)
        _require_name(incident_id, "incident_id", optional=True)
        if commune is not None and (not commune or len(commune) > 128):
            raise AuditError(f"commune={commune!r} must be 1-128 characters")
        if not isinstance(reason, str) or len(reason) > 2000:
            raise AuditError("reason must be a string of at most 2000 characters")
        if payload is not None and not isinstance(payload, Mapping):
            raise AuditError(f"payload must be a mapping, got {type(payload).__name__}")
        return canonical_json(dict(payload or {}))

    def _append_in(
        self,
        cur: Any,
        actor: str,
        role: str,
        action: str,
        at: datetime,
        incident_id: str | None,
        commune: str | None,
        payload_json: str,
        reason: str,
    ) -> AuditRecord:
        seq, prev_hash, digest = self._insert(
            cur, actor, role, action, at, incident_id, commune, payload_json, reason
        )
        return AuditRecord(
            seq=seq,
            at=at.astimezone(UTC),
            actor=actor,
            role=role,
            action=action,
            incident_id=incident_id,
            commune=commune,
            payload=json.loads(payload_json),
            reason=reason,
            prev_hash=prev_hash,
            hash=digest,
        )

    def _insert_many(
        self, cur: Any, records: Sequence[tuple[str, str, str, datetime, str | None, str | None, str, str]]
    ) -> tuple[int, str, str]:
        """Write checked records at the head, in order, in the caller's transaction: the head
        read once (locked where the database locks rows), then each record inserted and the
        head moved past it (the database's guard checks every insert against the head): for a
        batch, a third fewer statements than one record at a time. The last record's ``(seq,
        prev_hash, hash)`` (with no record: the head's seq and hash, twice)."""
        cur.execute(f"SELECT seq, hash FROM audit_head WHERE id = 1{self._for_update}")
        last_seq, prev_hash = cur.fetchone()
        seq, prev = int(last_seq), str(prev_hash)
        before = prev
        insert = self._q(
            f"INSERT INTO audit_records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
        )
        move = self._q("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1")
        for actor, role, action, at, incident_id, commune, payload_json, reason in records:
            seq += 1
            at_text = _at_text(at)
            digest = _chain_hash(
                seq, at_text, actor, role, action, incident_id, commune, payload_json, reason, prev, self._key
            )
            row = (
                seq,
                at_text,
                actor,
                role,
                action,
                incident_id,
                commune,
                payload_json,
                reason,
                prev,
                digest,
            )
            cur.execute(insert, row)
            cur.execute(move, (seq, digest))
            before, prev = prev, digest
        return seq, before, prev

    def _insert(
        self,
        cur: Any,
        actor: str,
        role: str,
        action: str,
        at: datetime,
        incident_id: str | None,
        commune: str | None,
        payload_json: str,
        reason: str,
    ) -> tuple[int, str, str]:
        """Write one record at the head; its ``(seq, prev_hash, hash)``."""
        return self._insert_many(cur, [(actor, role, action, at, incident_id, commune, payload_json, reason)])

    def records(
        self,
        incident_id: str | None = None,
        since: datetime | None = None,
        *,
        action: str | None = None,
        commune: str | None = None,
        include_purged: bool = False,
    ) -> Iterator[AuditRecord]:
        """Records in ``seq`` order, filtered; read page by page so appending while iterating is safe."""
        where: list[str] = ["seq > ?"]
        params: list[Any] = []
        if incident_id is not None:
            where.append("incident_id = ?")
            params.append(incident_id)
        if since is not None:
            _require_aware(since, "since")
            where.append("at >= ?")
            params.append(_at_text(since))
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if commune is not None:
            where.append("commune = ?")
            params.append(commune)
        if not include_purged:
            where.append("purged = 0")
        sql = self._q(
            f"SELECT {_COLUMNS} FROM audit_records WHERE {' AND '.join(where)} ORDER BY seq LIMIT {_PAGE}"
        )
        after = 0
        while True:
            with self._snapshot() as cur:
                cur.execute(sql, (after, *params))
                rows = cur.fetchall()
            for row in rows:
                yield _row_record(row)
            if len(rows) < _PAGE:
                return
            after = int(rows[-1][0])

    def communes(self) -> set[str | None]:
        """Every commune (``None`` for records of no commune) that still has live records."""
        with self._snapshot() as cur:
            cur.execute("SELECT DISTINCT commune FROM audit_records WHERE purged = 0 AND action <> 'purge'")
            return {row[0] for row in cur.fetchall()}

    def verify(self) -> VerifyReport:
        """Check the whole chain in one consistent snapshot (see the module docstring)."""
        problems: list[tuple[int, str]] = []
        tombstones: dict[int, str] = {}  # tombstone seq -> hash
        covered: set[int] = set()
        expected, prev_hash, checked = 1, GENESIS_HASH, 0
        with self._snapshot() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM audit_records ORDER BY seq")
            while rows := cur.fetchmany(_PAGE):
                for row in rows:
                    checked += 1
                    seq = int(row[0])
                    if seq != expected:
                        problems.append((expected, f"records {expected}..{seq - 1} are missing"))
                    if row[9] != prev_hash:
                        problems.append(
                            (
                                seq,
                                f"record {seq} does not link to record {seq - 1} (inserted, removed or altered)",  # noqa: E501
                            )
                        )
                    try:
                        problem = self._check_row(row, covered, tombstones)
                    except (ValueError, TypeError, KeyError, AttributeError) as exc:
                        problem = f"record {seq} is unreadable ({exc})"
                    if problem is not None:
                        problems.append((seq, problem))
                    expected, prev_hash = seq + 1, str(row[10])
            cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
            head_seq, head_hash = cur.fetchone()
        head_seq = int(head_seq)
        last_seq = expected - 1
        if head_seq > last_seq:
            problems.append((last_seq + 1, f"records {last_seq + 1}..{head_seq} at the end are missing"))
        elif head_seq < last_seq:
            problems.append((head_seq + 1, f"records after the head {head_seq} were inserted"))
        elif head_hash != prev_hash:
            problems.append((last_seq, f"record {last_seq} does not match the head hash"))
        for seq in tombstones:
            if seq not in covered:
                problems.append((seq, f"record {seq} is erased but no purge record covers it"))
        if not problems:
            return VerifyReport(True, None, None, checked, len(tombstones), head_seq, str(head_hash))
        first_seq, first_problem = min(problems, key=lambda p: p[0])
        return VerifyReport(
            False, first_seq, first_problem, checked, len(tombstones), head_seq, str(head_hash)
        )

    def _check_row(self, row: Any, covered: set[int], tombstones: dict[int, str]) -> str | None:
        seq = int(row[0])
        if int(row[11]) == 1:
            tombstones[seq] = str(row[10])
            if row[4] == AuditAction.purge.value:
                return f"purge record {seq} was erased"
            if any(row[i] is not None for i in (2, 3, 5, 7, 8)):
                return f"tombstone {seq} still holds content"
            return None
        try:
            at = datetime.fromisoformat(str(row[1]))
            payload_json = canonical_json(json.loads(row[7]))
        except (ValueError, TypeError) as exc:
            return f"record {seq} is unreadable ({exc})"
        if at.tzinfo is None:
            return f"record {seq} has a naive time"
        digest = record_hash(
            seq=seq,
            at=at,
            actor=row[2],
            role=row[3],
            action=row[4],
            incident_id=row[5],
            commune=row[6],
            payload_json=payload_json,
            reason=row[8],
            prev_hash=str(row[9]),
            key=self._key,
        )
        if not hmac.compare_digest(digest, str(row[10])):
            return f"record {seq} was altered (its hash does not match its content)"
        if row[4] == AuditAction.purge.value:
            for first, last in json.loads(row[7]).get("tombstoned", []):
                if last >= seq:
                    return f"purge record {seq} claims later records"
                covered.update(range(int(first), int(last) + 1))
        return None

    def purge(
        self,
        commune: str | None,
        before: datetime,
        holds: Collection[str],
        *,
        at: datetime,
        actor: str = "system:retention",
        role: str = "system",
        details: Mapping[str, Any] | None = None,
    ) -> PurgeResult:
        """Tombstone the live records of ``commune`` (``None``: records of no commune) older than
        ``before``, except those of incidents in ``holds`` and purge records; append the purge
        record listing what was erased, in the same transaction."""
        _require_aware(before, "before")
        held = frozenset(holds)
        commune_sql = "commune IS NULL" if commune is None else "commune = ?"
        params: tuple[Any, ...] = (_at_text(before),) if commune is None else (_at_text(before), commune)
        with self._write() as cur:
            cur.execute(
                self._q(
                    "SELECT seq, incident_id FROM audit_records WHERE purged = 0 AND action <> 'purge' "
                    f"AND at < ? AND {commune_sql} ORDER BY seq"
                ),
                params,
            )
            rows = cur.fetchall()
            doomed = [int(seq) for seq, incident in rows if incident is None or incident not in held]
            kept = len(rows) - len(doomed)
            if doomed:
                self._open_gate(cur)
                cur.executemany(
                    self._q(
                        "UPDATE audit_records SET actor = NULL, role = NULL, incident_id = NULL, "
                        "payload = NULL, reason = NULL, purged = 1 WHERE seq = ?"
                    ),
                    [(seq,) for seq in doomed],
                )
                self._close_gate(cur)
            payload = {
                **dict(details or {}),
                "commune": commune,
                "before": _at_text(before),
                "tombstoned": _ranges(doomed),
                "count": len(doomed),
                "kept_on_hold": kept,
                "holds": sorted(held),
            }
            payload_json = self._checked(actor, role, "purge", at, None, commune, payload, "")
            record = self._append_in(
                cur, actor, role, AuditAction.purge.value, at, None, commune, payload_json, "retention purge"
            )
        return PurgeResult(commune, before, len(doomed), kept, record)


def _row_record(row: Any) -> AuditRecord:
    return AuditRecord(
        seq=int(row[0]),
        at=datetime.fromisoformat(str(row[1])),
        actor=row[2],
        role=row[3],
        action=str(row[4]),
        incident_id=row[5],
        commune=row[6],
        payload=None if row[7] is None else json.loads(row[7]),
        reason=row[8],
        prev_hash=str(row[9]),
        hash=str(row[10]),
        purged=int(row[11]) == 1,
    )


class SqliteAuditLog(_SqlAuditLog):
    """The embedded default: one SQLite file, WAL, ``synchronous=FULL``, one writer at a time."""

    def __init__(self, path: str | Path, *, key: bytes | None = None) -> None:
        super().__init__(key=key)
        self.path = Path(path)
        self._conn = self._connect()
        with self._write() as cur:
            for statement in _TABLES + _SQLITE_GUARDS:
                cur.execute(statement)
            self._init_meta(cur)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Cursor]:
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute("BEGIN")
            yield cur
            cur.execute("COMMIT")
        finally:
            conn.close()

    def _open_gate(self, cur: Any) -> None:
        cur.execute("UPDATE audit_gate SET open = 1 WHERE id = 1")

    def _close_gate(self, cur: Any) -> None:
        cur.execute("UPDATE audit_gate SET open = 0 WHERE id = 1")

    def close(self) -> None:
        self._conn.close()


class PostgresAuditLog(_SqlAuditLog):
    """Production: PostgreSQL through psycopg 3, tables in ``schema`` (created if missing).
    Appends lock the head row (``SELECT ... FOR UPDATE``), so several server processes may write."""

    _placeholder = "%s"
    _for_update = " FOR UPDATE"

    def __init__(self, dsn: str, *, schema: str = "public", key: bytes | None = None) -> None:
        import psycopg

        if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", schema):
            raise AuditError(f"schema {schema!r} must be a lower-case SQL identifier")
        super().__init__(key=key)
        self._psycopg = psycopg
        self.dsn = dsn
        self.schema = schema
        self._conn = self._connect()
        with self._write() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.cordon_audit_init'))")
            for statement in _TABLES + _POSTGRES_GUARDS:
                cur.execute(statement)
            self._init_meta(cur)

    def _connect(self) -> Any:
        from psycopg import sql

        conn = self._psycopg.connect(self.dsn, autocommit=True)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return conn

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            yield cur

    @contextmanager
    def _snapshot(self) -> Iterator[Any]:
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield cur

    def _open_gate(self, cur: Any) -> None:
        cur.execute("SELECT set_config('cordon.audit_purge', 'on', true)")

    def _close_gate(self, cur: Any) -> None:
        cur.execute("SELECT set_config('cordon.audit_purge', 'off', true)")

    def close(self) -> None:
        self._conn.close()


def open_audit_log(url: str, *, key: bytes | None = None) -> SqliteAuditLog | PostgresAuditLog:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path``, a plain file path, or
    ``postgresql://user@host:port/db?schema=name`` (``schema`` defaults to ``public``)."""
    if url.startswith("sqlite:///"):
        return SqliteAuditLog(url.removeprefix("sqlite:///"), key=key)
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        schema = next((v for k, v in query if k == "schema"), "public")
        rest = urlencode([(k, v) for k, v in query if k != "schema"])
        return PostgresAuditLog(urlunsplit(parts._replace(query=rest)), schema=schema, key=key)
    if "://" in url:
        raise AuditError(f"audit database URL {url!r} must start with sqlite:/// or postgresql://")
    return SqliteAuditLog(url, key=key)


def export_jsonl(
    log: AuditLog,
    incident_id: str,
    out: IO[str],
    *,
    actor: str,
    role: str,
    at: datetime,
    reason: str = "",
    commune: str | None = None,
    include: Callable[[AuditRecord], bool] | None = None,
) -> AuditRecord:
    """Write an incident's records as JSON lines, then audit the export itself (returned)."""
    count = 0
    last_seq = 0
    for record in log.records(incident_id=incident_id):
        if include is not None and not include(record):
            continue
        out.write(json.dumps(record.to_json(), sort_keys=True, ensure_ascii=False) + "\n")
        count += 1
        last_seq = record.seq
    return log.append(
        actor,
        role,
        AuditAction.export.value,
        at=at,
        incident_id=incident_id,
        commune=commune,
        payload={"records": count, "through_seq": last_seq, "format": "jsonl"},
        reason=reason,
    )
