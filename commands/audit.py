"""``cordon audit``: verify the chain, replay an incident's suggestions, export, legal holds, purge.

The database is ``--db`` (``sqlite:///path`` or ``postgresql://...?schema=name``), else the
``CORDON_AUDIT_DB`` environment variable, else ``sqlite:///cordon-audit.sqlite3``. A keyed chain
reads its key (hex) from ``CORDON_AUDIT_KEY``. Actions that change the log (export, hold,
release, purge) are themselves audited, as ``cli:<user>`` unless ``--actor`` says otherwise.
"""

from __future__ import annotations

import getpass
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from serving.audit import PostgresAuditLog, SqliteAuditLog

audit_app = typer.Typer(no_args_is_help=True, help="Audit trail: verify, replay, export, legal hold, purge.")

DB_OPTION = typer.Option(None, "--db", help="sqlite:///path or postgresql://... (default $CORDON_AUDIT_DB)")
ACTOR_OPTION = typer.Option(None, "--actor", help="Who runs this (default cli:<user>)")


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command group to ``app``."""
    app.add_typer(audit_app, name="audit")


def _open(db: str | None) -> SqliteAuditLog | PostgresAuditLog:
    from serving.audit import AuditError, open_audit_log

    url = db or os.environ.get("CORDON_AUDIT_DB") or "sqlite:///cordon-audit.sqlite3"
    raw_key = os.environ.get("CORDON_AUDIT_KEY")
    try:
        key = bytes.fromhex(raw_key) if raw_key else None
    except ValueError as exc:
        raise _fail(f"CORDON_AUDIT_KEY must be hex ({exc})") from exc
    try:
        return open_audit_log(url, key=key)
    except (AuditError, OSError) as exc:
        raise _fail(f"cannot open audit log {url}: {exc}") from exc
    except Exception as exc:  # database driver errors (server down, bad credentials)
        raise _fail(f"cannot open audit log {url}: {exc}") from exc


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


def _now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _fail(f"--now {text!r} is not an ISO time") from exc
    if value.tzinfo is None:
        raise _fail(f"--now {text!r} needs a time zone (e.g. +00:00)")
    return value


@audit_app.command("verify")
def verify(db: str | None = DB_OPTION) -> None:
    """Check the whole hash chain; exit 1 naming the first bad record on tampering."""
    log = _open(db)
    try:
        report = log.verify()
    finally:
        log.close()
    if report.ok:
        typer.echo(
            f"ok: {report.records_checked} records ({report.tombstones} purged), "
            f"head seq {report.head_seq} hash {report.head_hash}"
        )
        return
    typer.echo(f"TAMPERED: first bad record seq {report.first_bad_seq}: {report.problem}")
    raise typer.Exit(code=1)


@audit_app.command("replay")
def replay(
    incident: str = typer.Argument(..., help="Incident id"),
    db: str | None = DB_OPTION,
    map_path: str = typer.Option("default", "--map", help="'default' (the embedded city) or a map file"),
    cameras: Path | None = typer.Option(None, "--cameras", help="Camera file for --map"),
    communes: Path | None = typer.Option(None, "--communes", help="Commune file for --map"),
) -> None:
    """Recompute the incident's plans from the recorded inputs and compare them with the records."""
    from serving.audit_replay import ReplayError, replay_incident

    if map_path == "default":
        from map_data.city import default_city

        city = default_city()
    else:
        from map_data.city import load_city

        city = load_city(Path(map_path), cameras_path=cameras, communes_path=communes)
    log = _open(db)
    try:
        report = replay_incident(log.records(incident_id=incident), incident, city)
    except ReplayError as exc:
        raise _fail(str(exc), code=1) from exc
    finally:
        log.close()
    for m in report.mismatches:
        typer.echo(
            f"MISMATCH seq {m.seq} plan v{m.version} {m.field}: "
            f"recorded {m.recorded!r} replayed {m.replayed!r}"
        )
    if report.plans_checked == 0:
        typer.echo(f"{incident}: no plan_computed records to replay")
        raise typer.Exit(code=1)
    if not report.ok:
        typer.echo(f"{incident}: {len(report.mismatches)} mismatches in {report.plans_checked} plans")
        raise typer.Exit(code=1)
    typer.echo(
        f"{incident}: {report.plans_checked} plans from {report.sightings} sightings replayed: all match"
    )


@audit_app.command("export")
def export(
    incident: str = typer.Argument(..., help="Incident id"),
    db: str | None = DB_OPTION,
    out: str = typer.Option("-", "--out", help="JSON-lines file ('-' for standard output)"),
    reason: str = typer.Option(..., "--reason", help="Why (procedure reference, requisition)"),
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Write the incident's records as JSON lines; the export is itself audited."""
    from serving.audit import AuditError, export_jsonl

    log = _open(db)
    try:
        if out == "-":
            record = export_jsonl(
                log,
                incident,
                sys.stdout,
                actor=_actor(actor),
                role="supervisor",
                at=_now(None),
                reason=reason,
            )
        else:
            with open(out, "w", encoding="utf-8") as handle:
                record = export_jsonl(
                    log,
                    incident,
                    handle,
                    actor=_actor(actor),
                    role="supervisor",
                    at=_now(None),
                    reason=reason,
                )
    except AuditError as exc:
        raise _fail(str(exc)) from exc
    finally:
        log.close()
    typer.echo(
        f"exported {record.payload['records'] if record.payload else 0} records (audit seq {record.seq})",
        err=True,
    )


@audit_app.command("hold")
def hold(
    incident: str = typer.Argument(..., help="Incident id"),
    reference: str = typer.Option(..., "--reference", help="Judicial procedure reference"),
    db: str | None = DB_OPTION,
    commune: str | None = typer.Option(None, "--commune"),
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Place a legal hold: the incident survives purges until released."""
    from serving.retention import Retention, RetentionError

    log = _open(db)
    try:
        placed = Retention(log).place_hold(
            incident, reference, placed_by=_actor(actor), role="supervisor", at=_now(None), commune=commune
        )
    except RetentionError as exc:
        raise _fail(str(exc)) from exc
    finally:
        log.close()
    typer.echo(f"legal hold on {placed.incident_id}: {placed.procedure_reference}")


@audit_app.command("release")
def release(
    incident: str = typer.Argument(..., help="Incident id"),
    reason: str = typer.Option(..., "--reason"),
    db: str | None = DB_OPTION,
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Release a legal hold (the incident then ages out like any other)."""
    from serving.retention import Retention, RetentionError

    log = _open(db)
    try:
        Retention(log).release_hold(
            incident, released_by=_actor(actor), role="supervisor", at=_now(None), reason=reason
        )
    except RetentionError as exc:
        raise _fail(str(exc)) from exc
    finally:
        log.close()
    typer.echo(f"legal hold on {incident} released")


@audit_app.command("purge")
def purge(
    db: str | None = DB_OPTION,
    retention: list[str] = typer.Option([], "--retention", help="commune=days (1..30), repeatable"),
    default_days: int = typer.Option(30, "--default-days", help="Communes without --retention"),
    now: str | None = typer.Option(None, "--now", help="ISO time to purge as of (default: now)"),
    actor: str | None = ACTOR_OPTION,
) -> None:
    """Purge what is older than each commune's retention, except legal holds (audited)."""
    from serving.retention import Retention, RetentionError, RetentionPolicy

    try:
        policies = []
        for item in retention:
            commune, sep, days = item.rpartition("=")
            if not sep or not commune or not days.isdigit():
                raise RetentionError(f"--retention {item!r} must be commune=days")
            policies.append(RetentionPolicy(commune, int(days)))
        at = _now(now)
        log = _open(db)
        try:
            report = Retention(log, policies, default_days=default_days).purge(at, actor=_actor(actor))
        finally:
            log.close()
    except RetentionError as exc:
        raise _fail(str(exc)) from exc
    for result in report.audit:
        typer.echo(
            f"{result.commune or '(no commune)'}: {result.tombstoned} records purged, "
            f"{result.kept_on_hold} kept on legal hold, before {result.before.isoformat()}"
        )
