"""Retention with a frozen clock: per-commune limits (≤ 30 days), legal holds that survive purges,
pluggable stores purged alongside the audit log, and purges that are themselves audited."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from serving.audit import SqliteAuditLog
from serving.retention import LegalHold, Retention, RetentionError, RetentionPolicy

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class FakeStore:
    """An incident store: rows (commune, incident_id, at)."""

    name = "incidents"

    def __init__(self, rows: list[tuple[str, str, datetime]]) -> None:
        self.rows = rows
        self.calls: list[tuple[str, datetime, frozenset[str]]] = []

    def purge_before(self, commune: str, before: datetime, keep_incidents: frozenset[str]) -> int:
        self.calls.append((commune, before, keep_incidents))
        keep = [
            r for r in self.rows if not (r[0] == commune and r[2] < before and r[1] not in keep_incidents)
        ]
        removed = len(self.rows) - len(keep)
        self.rows = keep
        return removed


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqliteAuditLog]:
    log = SqliteAuditLog(tmp_path / "audit.sqlite3")
    yield log
    log.close()


def seed(log: SqliteAuditLog) -> None:
    """Metz incidents on day 0 (I-old, I-held) and day 20 (I-new); Woippy on day 0 (W-old)."""
    for incident, commune, day in (("I-old", "metz", 0), ("I-held", "metz", 0), ("I-new", "metz", 20)):
        log.append(
            "op", "operator", "incident_opened", at=T0 + day * DAY, incident_id=incident, commune=commune
        )
        log.append(
            "op",
            "operator",
            "sighting_received",
            at=T0 + day * DAY,
            incident_id=incident,
            commune=commune,
            payload={"camera_id": "C1"},
        )
    log.append("op", "operator", "incident_opened", at=T0, incident_id="W-old", commune="woippy")
    log.append("op", "operator", "login", at=T0)  # no commune


def test_policy_refuses_more_than_30_days(log: SqliteAuditLog) -> None:
    RetentionPolicy("metz", 30)
    with pytest.raises(RetentionError, match=r"metz.*31 days"):
        RetentionPolicy("metz", 31)
    with pytest.raises(RetentionError):
        RetentionPolicy("metz", 0)
    with pytest.raises(RetentionError, match="45 days"):
        Retention(log, default_days=45)


def test_purge_with_frozen_clock_and_legal_hold(log: SqliteAuditLog) -> None:
    seed(log)
    store = FakeStore(
        [
            ("metz", "I-old", T0),
            ("metz", "I-held", T0),
            ("metz", "I-new", T0 + 20 * DAY),
            ("woippy", "W-old", T0),
        ]
    )
    retention = Retention(log, [RetentionPolicy("metz", 15), RetentionPolicy("woippy", 30)], stores=[store])
    hold = retention.place_hold(
        "I-held", "PV 2026/0412 TJ Metz", placed_by="sup", role="supervisor", at=T0 + DAY
    )
    assert hold == LegalHold("I-held", "PV 2026/0412 TJ Metz", "sup", T0 + DAY, None)

    now = T0 + 25 * DAY  # metz cut-off day 10, woippy cut-off before day 0 (nothing)
    report = retention.purge(now)

    alive = {(r.incident_id, r.action) for r in log.records()}
    assert ("I-old", "incident_opened") not in alive and ("I-old", "sighting_received") not in alive
    assert ("I-held", "sighting_received") in alive and ("I-held", "legal_hold") in alive
    assert ("I-new", "sighting_received") in alive
    assert ("W-old", "incident_opened") in alive
    assert [r[1] for r in store.rows] == ["I-held", "I-new", "W-old"]
    assert store.calls[0] == ("metz", T0 + 10 * DAY, frozenset({"I-held"}))
    by_commune = {r.commune: r for r in report.audit}
    assert by_commune["metz"].tombstoned == 2 and by_commune["metz"].kept_on_hold == 2
    assert by_commune["woippy"].tombstoned == 0
    assert report.store_rows["metz"] == {"incidents": 1}
    # the purge is audited, says what went where, and the chain still verifies
    purge = by_commune["metz"].record
    assert purge.payload is not None
    assert purge.payload["retention_days"] == 15 and purge.payload["store_rows"] == {"incidents": 1}
    assert purge.payload["holds"] == ["I-held"]
    assert log.verify().ok


def test_hold_survives_many_purges_then_release_lets_it_age_out(log: SqliteAuditLog) -> None:
    seed(log)
    retention = Retention(log)
    retention.place_hold("I-held", "PV 7", placed_by="sup", role="supervisor", at=T0, commune="metz")
    for day in (31, 60, 90):
        retention.purge(T0 + day * DAY)
        assert {r.action for r in log.records(incident_id="I-held")} >= {"sighting_received", "legal_hold"}
    retention.release_hold("I-held", released_by="sup", role="supervisor", at=T0 + 91 * DAY, reason="closed")
    assert retention.holds() == {}
    retention.purge(T0 + 92 * DAY)
    assert {r.action for r in log.records(incident_id="I-held")} == {"hold_released"}
    retention.purge(T0 + 122 * DAY)
    assert list(log.records(incident_id="I-held")) == []
    report = log.verify()
    assert report.ok and report.tombstones > 0


def test_system_records_age_out_too(log: SqliteAuditLog) -> None:
    seed(log)
    Retention(log, system_days=7).purge(T0 + 8 * DAY)
    assert not [r for r in log.records() if r.action == "login"]


def test_hold_procedure_checks(log: SqliteAuditLog) -> None:
    retention = Retention(log)
    with pytest.raises(RetentionError, match="procedure reference"):
        retention.place_hold("I1", "   ", placed_by="sup", role="supervisor", at=T0)
    retention.place_hold("I1", "PV 1", placed_by="sup", role="supervisor", at=T0)
    with pytest.raises(RetentionError, match="already on legal hold"):
        retention.place_hold("I1", "PV 2", placed_by="sup", role="supervisor", at=T0)
    with pytest.raises(RetentionError, match="not on legal hold"):
        retention.release_hold("I2", released_by="sup", role="supervisor", at=T0, reason="x")
    with pytest.raises(RetentionError, match="reason"):
        retention.release_hold("I1", released_by="sup", role="supervisor", at=T0, reason=" ")


def test_changing_a_policy_is_audited_and_bounded(log: SqliteAuditLog) -> None:
    retention = Retention(log)
    retention.set_policy(RetentionPolicy("metz", 10), actor="admin", role="admin", at=T0)
    assert retention.days_for("metz") == 10 and retention.days_for("nancy") == 30
    (record,) = log.records(action="retention_changed")
    assert record.payload == {"days": 10, "previous_days": 30}
    with pytest.raises(RetentionError):
        Retention(log, [RetentionPolicy("metz", 10), RetentionPolicy("metz", 12)])


def test_purge_needs_an_aware_now(log: SqliteAuditLog) -> None:
    with pytest.raises(RetentionError, match="timezone"):
        Retention(log).purge(datetime(2026, 1, 1))  # noqa: DTZ001


async def test_stopping_the_retention_job_waits_for_the_purge_running_in_its_thread() -> None:
    """The server closes the audit log once its background tasks have ended: a purge still
    committing in its thread meanwhile could crash the process, so a cancelled retention job
    ends only after the running purge."""
    import asyncio
    import threading
    import types

    from server import _purge_periodically

    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    class SlowRetention:
        def purge(self, now: datetime) -> Any:
            started.set()
            release.wait(10)
            finished.append(True)
            return types.SimpleNamespace(tombstoned=lambda: 0)

    clock = types.SimpleNamespace(now=lambda: datetime(2026, 11, 26, tzinfo=UTC))
    task = asyncio.create_task(_purge_periodically(SlowRetention(), clock, 0.01))  # type: ignore[arg-type]
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done(), "the job ended while its purge was still running"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]
