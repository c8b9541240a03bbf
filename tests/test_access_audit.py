"""The audit chain on SQLite and PostgreSQL (same tests): append, query, tamper detection
(altered, inserted, removed records, forged tombstones), database guards, purge keeping the chain
verifiable, the keyed (HMAC) mode. PostgreSQL must be at 127.0.0.1:5432 (fails loudly if not)."""

from __future__ import annotations

import io
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from serving.audit import (
    GENESIS_HASH,
    AuditError,
    PostgresAuditLog,
    SqliteAuditLog,
    _SqlAuditLog,
    canonical_json,
    export_jsonl,
    open_audit_log,
    record_hash,
)

PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@dataclass
class Backend:
    """An audit log plus raw SQL access that bypasses its guards (the attacker's view)."""

    name: str
    log: _SqlAuditLog
    raw: Callable[[str, tuple[Any, ...]], None]
    reopen: Callable[[bytes | None], _SqlAuditLog]


def _sqlite(tmp_path: Path, key: bytes | None = None) -> Iterator[Backend]:
    path = tmp_path / "audit.sqlite3"
    log = SqliteAuditLog(path, key=key)

    def raw(sql: str, params: tuple[Any, ...] = ()) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute(sql, params)
        conn.close()

    yield Backend("sqlite", log, raw, lambda k: SqliteAuditLog(path, key=k))
    log.close()


def _postgres(key: bytes | None = None) -> Iterator[Backend]:
    import psycopg

    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_DSN} ({exc})")
    schema = f"cordon_test_{uuid.uuid4().hex[:12]}"
    log = PostgresAuditLog(PG_DSN, schema=schema, key=key)

    def raw(sql: str, params: tuple[Any, ...] = ()) -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {schema}")
            conn.execute("ALTER TABLE audit_records DISABLE TRIGGER USER")
            conn.execute("ALTER TABLE audit_head DISABLE TRIGGER USER")
            conn.execute(sql.replace("?", "%s"), params)
            conn.execute("ALTER TABLE audit_records ENABLE TRIGGER USER")
            conn.execute("ALTER TABLE audit_head ENABLE TRIGGER USER")

    try:
        yield Backend("postgres", log, raw, lambda k: PostgresAuditLog(PG_DSN, schema=schema, key=k))
    finally:
        log.close()
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield from _sqlite(tmp_path)
    else:
        yield from _postgres()


@pytest.fixture(params=["sqlite", "postgres"])
def keyed_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield from _sqlite(tmp_path, key=b"k" * 32)
    else:
        yield from _postgres(key=b"k" * 32)


def fill(log: _SqlAuditLog, n: int = 6) -> None:
    """n records alternating between two communes and three incidents, one a minute."""
    for i in range(n):
        log.append(
            f"agent{i % 2}",
            "operator",
            "sighting_received",
            at=T0 + timedelta(minutes=i),
            incident_id=f"INC-{i % 3}",
            commune="metz" if i % 2 == 0 else "woippy",
            payload={"camera_id": f"CAM-{i}", "heading_deg": 90.5, "note": "véhicule gris"},
            reason="handoff",
        )


# ---------------------------------------------------------------------------------------------


def test_append_links_each_record_to_the_previous(backend: Backend) -> None:
    log = backend.log
    first = log.append("a", "operator", "login", at=T0)
    second = log.append("a", "operator", "incident_opened", at=T0, incident_id="I1", commune="metz")
    assert first.seq == 1 and first.prev_hash == GENESIS_HASH
    assert second.seq == 2 and second.prev_hash == first.hash
    assert log.head() == (2, second.hash)
    assert second.hash == record_hash(
        seq=2,
        at=T0,
        actor="a",
        role="operator",
        action="incident_opened",
        incident_id="I1",
        commune="metz",
        payload_json="{}",
        reason="",
        prev_hash=first.hash,
    )
    report = log.verify()
    assert report.ok and report.records_checked == 2 and report.head_seq == 2


def test_append_many_chains_like_single_appends_and_is_all_or_nothing(backend: Backend) -> None:
    log = backend.log
    first = log.append("a", "operator", "login", at=T0)
    batch: list[Any] = [
        ("a", "operator", "incident_opened", T0, "I1", "metz", {"k": 1}, None),
        ("cordon", "system", "plan_computed", T0 + timedelta(seconds=1), "I1", "metz", {"v": 2.5}, "r"),
    ]
    written = log.append_many(batch)
    assert [r.seq for r in written] == [2, 3]
    assert written[0].prev_hash == first.hash and written[1].prev_hash == written[0].hash
    assert log.head() == (3, written[1].hash)
    assert [r.payload for r in log.records()] == [{}, {"k": 1}, {"v": 2.5}]
    bad: list[Any] = [
        ("a", "operator", "login", T0, None, None, None, None),
        ("a", "operator", "login", T0, None, None, {"x": float("nan")}, None),  # not finite: refused
    ]
    with pytest.raises(AuditError):
        log.append_many(bad)
    assert log.head() == (3, written[1].hash)  # nothing of the refused batch was written
    assert log.verify().ok


def test_records_are_filtered_and_round_trip(backend: Backend) -> None:
    fill(backend.log, 6)
    records = list(backend.log.records(incident_id="INC-1"))
    assert [r.seq for r in records] == [2, 5]
    assert records[0].payload == {"camera_id": "CAM-1", "heading_deg": 90.5, "note": "véhicule gris"}
    assert records[0].at == T0 + timedelta(minutes=1)
    assert [r.seq for r in backend.log.records(since=T0 + timedelta(minutes=4))] == [5, 6]
    assert [r.seq for r in backend.log.records(commune="metz")] == [1, 3, 5]
    assert backend.log.communes() == {"metz", "woippy"}


def test_records_pages_through_long_logs(backend: Backend) -> None:
    import serving.audit as audit_module

    page = audit_module._PAGE
    audit_module._PAGE = 4
    try:
        fill(backend.log, 10)
        assert [r.seq for r in backend.log.records()] == list(range(1, 11))
    finally:
        audit_module._PAGE = page


@pytest.mark.parametrize(
    "bad",
    [
        {"x": float("nan")},
        {"x": [1.0, float("inf")]},
        {1: "non-string key"},
        {"x": object()},
    ],
)
def test_bad_payloads_are_refused(backend: Backend, bad: dict[Any, Any]) -> None:
    with pytest.raises(AuditError):
        backend.log.append("a", "operator", "x", at=T0, payload=bad)
    assert backend.log.head()[0] == 0


def test_bad_fields_are_refused(backend: Backend) -> None:
    with pytest.raises(AuditError, match="timezone"):
        backend.log.append("a", "operator", "x", at=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(AuditError, match="actor"):
        backend.log.append("", "operator", "x", at=T0)
    with pytest.raises(AuditError, match="incident_id"):
        backend.log.append("a", "operator", "x", at=T0, incident_id="bad id with spaces")


# -- tamper detection ---------------------------------------------------------------------------


def test_altered_payload_is_detected_at_its_seq(backend: Backend) -> None:
    fill(backend.log)
    backend.raw("UPDATE audit_records SET payload = ? WHERE seq = 3", ('{"camera_id":"CAM-X"}',))
    report = backend.log.verify()
    assert not report.ok and report.first_bad_seq == 3
    assert "altered" in (report.problem or "")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "someone_else"),
        ("at", "2026-03-01T09:00:00.000000+00:00"),
        ("commune", "nancy"),
        ("reason", "edited"),
        ("action", "login"),
    ],
)
def test_altered_fields_are_detected(backend: Backend, column: str, value: str) -> None:
    fill(backend.log)
    backend.raw(f"UPDATE audit_records SET {column} = ? WHERE seq = 4", (value,))
    report = backend.log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 4)


def test_removed_record_in_the_middle_is_detected(backend: Backend) -> None:
    fill(backend.log)
    backend.raw("DELETE FROM audit_records WHERE seq = 3", ())
    report = backend.log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert "missing" in (report.problem or "")


def test_removed_tail_is_detected_by_the_head(backend: Backend) -> None:
    fill(backend.log)
    backend.raw("DELETE FROM audit_records WHERE seq >= 5", ())
    report = backend.log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 5)


def test_renumbered_chain_after_a_removal_is_detected(backend: Backend) -> None:
    fill(backend.log)
    backend.raw("DELETE FROM audit_records WHERE seq = 3", ())
    backend.raw("UPDATE audit_records SET seq = seq - 1 WHERE seq > 3", ())
    backend.raw("UPDATE audit_head SET seq = seq - 1", ())
    report = backend.log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 3)


def test_inserted_record_is_detected(backend: Backend) -> None:
    """A well-formed record (its own hash right, linked to record 2) slipped in as seq 3:
    the old record 3, now 4, no longer links, and its own hash no longer matches."""
    fill(backend.log)
    (two,) = [r for r in backend.log.records() if r.seq == 2]
    forged_at = T0 + timedelta(minutes=1, seconds=30)
    forged_hash = record_hash(
        seq=3,
        at=forged_at,
        actor="intruder",
        role="operator",
        action="operator_decision",
        incident_id="INC-1",
        commune="metz",
        payload_json="{}",
        reason="",
        prev_hash=two.hash,
    )
    backend.raw("UPDATE audit_records SET seq = seq + 1000 WHERE seq >= 3", ())
    backend.raw("UPDATE audit_records SET seq = seq - 999 WHERE seq >= 1000", ())
    backend.raw(
        "INSERT INTO audit_records (seq, at, actor, role, action, incident_id, commune, payload, reason, "
        "prev_hash, hash, purged) VALUES (3, ?, 'intruder', 'operator', 'operator_decision', 'INC-1', "
        "'metz', '{}', '', ?, ?, 0)",
        (forged_at.isoformat(timespec="microseconds"), two.hash, forged_hash),
    )
    report = backend.log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 4)


def test_record_appended_behind_the_logs_back_is_detected(backend: Backend) -> None:
    fill(backend.log, 3)
    _, head_hash = backend.log.head()
    at = T0 + timedelta(hours=1)
    digest = record_hash(
        seq=4,
        at=at,
        actor="intruder",
        role="operator",
        action="x",
        incident_id=None,
        commune=None,
        payload_json="{}",
        reason="",
        prev_hash=head_hash,
    )
    backend.raw(
        "INSERT INTO audit_records (seq, at, actor, role, action, payload, reason, prev_hash, hash, purged) "
        "VALUES (4, ?, 'intruder', 'operator', 'x', '{}', '', ?, ?, 0)",
        (at.isoformat(timespec="microseconds"), head_hash, digest),
    )
    report = backend.log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 4)


def test_forged_tombstone_is_detected(backend: Backend) -> None:
    """Erasing a record by hand (as if purged) without a purge record covering it."""
    fill(backend.log)
    backend.raw(
        "UPDATE audit_records SET actor = NULL, role = NULL, incident_id = NULL, payload = NULL, "
        "reason = NULL, purged = 1 WHERE seq = 2",
        (),
    )
    report = backend.log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "no purge record" in (report.problem or "")


def test_keyed_chain_detects_a_fully_recomputed_chain(keyed_backend: Backend) -> None:
    """Without the key an attacker who rewrites record 3 and recomputes every later hash with
    plain SHA-256 still fails: the chain is HMAC-keyed."""
    log = keyed_backend.log
    fill(log)
    records = list(log.records())
    prev = records[1].hash
    for r in records[2:]:
        payload = {"camera_id": "CAM-X"} if r.seq == 3 else r.payload
        digest = record_hash(
            seq=r.seq,
            at=r.at,
            actor=r.actor,
            role=r.role,
            action=r.action,
            incident_id=r.incident_id,
            commune=r.commune,
            payload_json=canonical_json(payload),
            reason=r.reason,
            prev_hash=prev,
        )
        keyed_backend.raw(
            "UPDATE audit_records SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (canonical_json(payload), prev, digest, r.seq),
        )
        prev = digest
    keyed_backend.raw("UPDATE audit_head SET hash = ?", (prev,))
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 3)
    with pytest.raises(AuditError, match="key"):
        keyed_backend.reopen(None)


# -- database guards ----------------------------------------------------------------------------


def _guarded(backend: Backend, sql: str) -> None:
    conn: Any
    if backend.name == "sqlite":
        assert isinstance(backend.log, SqliteAuditLog)
        conn = sqlite3.connect(backend.log.path, isolation_level=None)
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(sql)
        conn.close()
    else:
        import psycopg

        assert isinstance(backend.log, PostgresAuditLog)
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {backend.log.schema}")
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_records SET payload = '{}' WHERE seq = 2",
        "UPDATE audit_records SET payload = NULL, actor = NULL, role = NULL, incident_id = NULL, "
        "reason = NULL, purged = 1 WHERE seq = 2",
        "DELETE FROM audit_records WHERE seq = 3",
        "INSERT INTO audit_records (seq, at, action, prev_hash, hash) VALUES (99, 'x', 'x', 'x', 'x')",
        "UPDATE audit_head SET seq = 2",
        "DELETE FROM audit_head",
    ],
)
def test_the_database_refuses_ordinary_tampering(backend: Backend, sql: str) -> None:
    fill(backend.log, 4)
    _guarded(backend, sql)
    assert backend.log.verify().ok


def test_postgres_refuses_truncate(tmp_path: Path) -> None:
    import psycopg

    for backend in _postgres():
        fill(backend.log, 2)
        assert isinstance(backend.log, PostgresAuditLog)
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {backend.log.schema}")
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute("TRUNCATE audit_records CASCADE")
        assert backend.log.verify().ok


# -- purge --------------------------------------------------------------------------------------


def test_purge_tombstones_keeps_holds_and_still_verifies(backend: Backend) -> None:
    log = backend.log
    fill(log, 6)  # metz: seq 1 (INC-0), 3 (INC-2), 5 (INC-1); woippy: 2, 4, 6
    result = log.purge("metz", T0 + timedelta(minutes=3, seconds=30), {"INC-2"}, at=T0 + timedelta(days=31))
    assert (result.tombstoned, result.kept_on_hold) == (1, 1)  # seq 1 gone, seq 3 held, seq 5 too young
    assert result.record.action == "purge" and result.record.seq == 7
    assert result.record.payload is not None and result.record.payload["tombstoned"] == [[1, 1]]
    live = {r.seq for r in log.records()}
    assert live == {2, 3, 4, 5, 6, 7}
    (tomb,) = [r for r in log.records(include_purged=True) if r.seq == 1]
    assert tomb.purged and tomb.payload is None and tomb.actor is None and tomb.commune == "metz"
    report = log.verify()
    assert report.ok, report
    assert report.tombstones == 1
    # appending after a purge keeps the chain going
    log.append("a", "operator", "login", at=T0 + timedelta(days=31))
    assert log.verify().ok


def test_purge_records_survive_later_purges(backend: Backend) -> None:
    log = backend.log
    fill(log, 4)
    log.purge("metz", T0 + timedelta(days=1), (), at=T0 + timedelta(days=2))
    log.purge("metz", T0 + timedelta(days=40), (), at=T0 + timedelta(days=41))
    assert [r.action for r in log.records(commune="metz")] == ["purge", "purge"]
    assert log.verify().ok


def test_tampering_after_a_purge_is_still_detected(backend: Backend) -> None:
    log = backend.log
    fill(log, 6)
    log.purge("woippy", T0 + timedelta(days=1), (), at=T0 + timedelta(days=31))
    backend.raw("UPDATE audit_records SET hash = ? WHERE seq = 2", ("f" * 64,))  # a tombstone's hash
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 3)


def test_export_writes_json_lines_and_audits_itself(backend: Backend) -> None:
    fill(backend.log, 6)
    out = io.StringIO()
    record = export_jsonl(
        backend.log, "INC-1", out, actor="sup", role="supervisor", at=T0, reason="PV 12/2026"
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == [2, 5]
    assert record.action == "export" and record.payload == {"records": 2, "through_seq": 5, "format": "jsonl"}
    assert backend.log.verify().ok


def test_open_audit_log_urls(tmp_path: Path) -> None:
    log = open_audit_log(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    assert isinstance(log, SqliteAuditLog)
    log.close()
    with pytest.raises(AuditError, match="sqlite"):
        open_audit_log("mysql://x")


def test_sqlite_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.sqlite3")
    mode = log._conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = log._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)
    log.close()


def test_concurrent_appenders_keep_one_chain(tmp_path: Path) -> None:
    """Two processes' worth of writers (two connections) and threads: seq stays contiguous."""
    import threading

    path = tmp_path / "a.sqlite3"
    logs = [SqliteAuditLog(path), SqliteAuditLog(path)]

    def write(log: SqliteAuditLog, who: str) -> None:
        for i in range(20):
            log.append(who, "operator", "x", at=T0 + timedelta(seconds=i))

    threads = [threading.Thread(target=write, args=(logs[i % 2], f"w{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = logs[0].verify()
    assert report.ok and report.records_checked == 80
    for log in logs:
        log.close()


def test_concurrent_postgres_workers_keep_one_chain() -> None:
    """Two server workers (two connections) appending at once: the head row lock serialises them."""
    import threading

    for backend in _postgres():
        assert isinstance(backend.log, PostgresAuditLog)
        second = PostgresAuditLog(PG_DSN, schema=backend.log.schema)
        logs = [backend.log, second]

        def write(log: _SqlAuditLog, who: str) -> None:
            for i in range(15):
                log.append(who, "operator", "x", at=T0 + timedelta(seconds=i))

        threads = [threading.Thread(target=write, args=(logs[i % 2], f"w{i}")) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report = second.verify()
        second.close()
        assert report.ok and report.records_checked == 60
