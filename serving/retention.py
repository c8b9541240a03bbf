"""Retention: per-commune limits (at most 30 days), legal holds, and the audited purge job.

Legal holds live in the audit log itself (``legal_hold`` and ``hold_released`` records), so they
survive restarts, are audited by construction, and are never purged while active: a held
incident's records, including the hold record, are kept by every purge.

The purge job (:meth:`Retention.purge`) takes ``now`` from its caller (the server's scheduler, the
CLI, or a test's frozen clock). For each commune, it first asks every :class:`PurgeableStore` to
drop what is older than the commune's limit, then tombstones the audit records, appending one
``purge`` record per commune that states what was removed and from where.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from serving.audit import AuditAction, AuditError, AuditLog, PurgeResult

__all__ = [
    "MAX_RETENTION_DAYS",
    "LegalHold",
    "PurgeReport",
    "PurgeableStore",
    "Retention",
    "RetentionError",
    "RetentionPolicy",
]

MAX_RETENTION_DAYS = 30
SYSTEM_COMMUNE: str | None = None
"""Records attached to no commune (logins, revocations): kept ``system_days``."""


class RetentionError(ValueError):
    """A retention setting or a legal hold request is invalid."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long ``commune``'s data is kept: ``days`` in 1..30 (French law caps it at 30)."""

    commune: str
    days: int

    def __post_init__(self) -> None:
        if not self.commune:
            raise RetentionError("retention policy needs a commune name")
        if isinstance(self.days, bool) or not isinstance(self.days, int):
            raise RetentionError(f"retention days for {self.commune!r} must be an integer, got {self.days!r}")
        if not 1 <= self.days <= MAX_RETENTION_DAYS:
            raise RetentionError(
                f"retention for {self.commune!r} is {self.days} days; it must be 1..{MAX_RETENTION_DAYS}"
            )


@dataclass(frozen=True, slots=True)
class LegalHold:
    """An incident kept beyond retention for a judicial procedure (``procedure_reference``)."""

    incident_id: str
    procedure_reference: str
    placed_by: str
    placed_at: datetime
    commune: str | None = None


class PurgeableStore(Protocol):
    """A store of incident data (the server's incident store, a sighting cache...): drop what of
    ``commune`` is older than ``before``, except ``keep_incidents``; return how many rows went."""

    name: str

    def purge_before(self, commune: str, before: datetime, keep_incidents: frozenset[str]) -> int: ...


@dataclass(frozen=True, slots=True)
class PurgeReport:
    at: datetime
    audit: tuple[PurgeResult, ...]
    store_rows: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """``{commune: {store name: rows removed}}``"""

    def tombstoned(self) -> int:
        return sum(r.tombstoned for r in self.audit)


class Retention:
    """The retention job and the legal-hold procedure over one audit log and some stores."""

    def __init__(
        self,
        audit: AuditLog,
        policies: Iterable[RetentionPolicy] = (),
        *,
        stores: Iterable[PurgeableStore] = (),
        default_days: int = MAX_RETENTION_DAYS,
        system_days: int = MAX_RETENTION_DAYS,
    ) -> None:
        self.audit = audit
        self.stores = tuple(stores)
        self._policies: dict[str, RetentionPolicy] = {}
        for policy in policies:
            if policy.commune in self._policies:
                raise RetentionError(f"two retention policies for commune {policy.commune!r}")
            self._policies[policy.commune] = policy
        self.default_days = RetentionPolicy("*", default_days).days
        self.system_days = RetentionPolicy("*", system_days).days

    def days_for(self, commune: str | None) -> int:
        if commune is None:
            return self.system_days
        policy = self._policies.get(commune)
        return self.default_days if policy is None else policy.days

    def set_policy(self, policy: RetentionPolicy, *, actor: str, role: str, at: datetime) -> None:
        """Change a commune's retention (audited)."""
        previous = self.days_for(policy.commune)
        self._policies[policy.commune] = policy
        self.audit.append(
            actor,
            role,
            AuditAction.retention_changed.value,
            at=at,
            commune=policy.commune,
            payload={"days": policy.days, "previous_days": previous},
        )

    # -- legal holds ---------------------------------------------------------------------------

    def place_hold(
        self,
        incident_id: str,
        procedure_reference: str,
        *,
        placed_by: str,
        role: str,
        at: datetime,
        commune: str | None = None,
    ) -> LegalHold:
        """Put ``incident_id`` under legal hold for procedure ``procedure_reference`` (audited)."""
        reference = procedure_reference.strip()
        if not reference or len(reference) > 128:
            raise RetentionError(
                f"procedure reference {procedure_reference!r} must be 1..128 non-blank characters"
            )
        existing = self.holds().get(incident_id)
        if existing is not None:
            raise RetentionError(
                f"incident {incident_id!r} is already on legal hold ({existing.procedure_reference})"
            )
        try:
            record = self.audit.append(
                placed_by,
                role,
                AuditAction.legal_hold.value,
                at=at,
                incident_id=incident_id,
                commune=commune,
                payload={"procedure_reference": reference},
                reason=f"legal hold {reference}",
            )
        except AuditError as exc:
            raise RetentionError(str(exc)) from exc
        return LegalHold(incident_id, reference, placed_by, record.at, commune)

    def release_hold(
        self, incident_id: str, *, released_by: str, role: str, at: datetime, reason: str
    ) -> None:
        """End a legal hold (audited); the incident then ages out like any other."""
        hold = self.holds().get(incident_id)
        if hold is None:
            raise RetentionError(f"incident {incident_id!r} is not on legal hold")
        if not reason.strip():
            raise RetentionError("releasing a legal hold needs a reason")
        self.audit.append(
            released_by,
            role,
            AuditAction.hold_released.value,
            at=at,
            incident_id=incident_id,
            commune=hold.commune,
            payload={"procedure_reference": hold.procedure_reference},
            reason=reason,
        )

    def holds(self) -> dict[str, LegalHold]:
        """The active legal holds, replayed from the audit log in ``seq`` order."""
        events = sorted(
            [
                *self.audit.records(action=AuditAction.legal_hold.value),
                *self.audit.records(action=AuditAction.hold_released.value),
            ],
            key=lambda r: r.seq,
        )
        active: dict[str, LegalHold] = {}
        for record in events:
            if record.incident_id is None or record.payload is None:
                continue
            if record.action == AuditAction.legal_hold.value:
                active[record.incident_id] = LegalHold(
                    record.incident_id,
                    str(record.payload.get("procedure_reference", "")),
                    record.actor or "",
                    record.at,
                    record.commune,
                )
            else:
                active.pop(record.incident_id, None)
        return active

    # -- the purge job --------------------------------------------------------------------------

    def purge(
        self, now: datetime, *, communes: Collection[str] = (), actor: str = "system:retention"
    ) -> PurgeReport:
        """Remove everything older than each commune's retention, except legal holds; audited.

        Communes purged: those with a policy, those named in ``communes`` (the server passes the
        communes it serves), and every commune still present in the audit log.
        """
        if now.tzinfo is None:
            raise RetentionError(f"now={now!r} must be timezone-aware")
        held = frozenset(self.holds())
        targets: set[str | None] = {*self._policies, *communes, *self.audit.communes(), SYSTEM_COMMUNE}
        results: list[PurgeResult] = []
        store_rows: dict[str, dict[str, int]] = {}
        for commune in sorted(targets, key=lambda c: (c is not None, c or "")):
            before = now - timedelta(days=self.days_for(commune))
            rows: dict[str, int] = {}
            if commune is not None:
                for store in self.stores:
                    rows[store.name] = int(store.purge_before(commune, before, held))
                store_rows[commune] = rows
            results.append(
                self.audit.purge(
                    commune,
                    before,
                    held,
                    at=now,
                    actor=actor,
                    details={"retention_days": self.days_for(commune), "store_rows": rows},
                )
            )
        return PurgeReport(now, tuple(results), store_rows)
