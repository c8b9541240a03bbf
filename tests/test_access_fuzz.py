"""Hypothesis fuzzing of what clients send: sightings and crew/operator websocket messages.

Properties: parsing never raises anything but ``ValidationError``; what parses satisfies the
documented bounds and can be audited (canonical JSON, no NaN); and a log fed random accepted
inputs stays a valid chain. ``CORDON_FUZZ_EXAMPLES`` sets the examples of the sighting and crew
message tests (default 300; CI uses 10000); the raw-bytes and operator tests run a tenth of it.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serving.audit import AuditError, SqliteAuditLog, canonical_json
from tracking.types import Sighting

EXAMPLES = int(os.environ.get("CORDON_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LIGHT = settings(FUZZ, max_examples=max(100, EXAMPLES // 10))
IDENT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
)
junk = (
    json_scalars
    | st.lists(json_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=6), json_scalars, max_size=2)
)
IDENT_ALPHABET = "ABCXYZabcxyz0189_.:-"
identifiers = st.text(IDENT_ALPHABET, min_size=1, max_size=66) | st.text(max_size=8)
_ZONES = ["Z", "+00:00", "+02:00", "-11:30", ""]  # "" is a naive time
times = (
    st.tuples(st.integers(0, 4_102_444_800), st.sampled_from(_ZONES)).map(
        lambda t: datetime.fromtimestamp(t[0], UTC).replace(tzinfo=None).isoformat() + t[1]
    )
    | st.text(max_size=30)
    | st.integers()
)
numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-1000, 1000)
    | st.text(max_size=6)
    | st.none()
)


def maybe_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values (to reach deep validation), sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, junk)


@st.composite
def message_dicts(
    draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], *, type_: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {} if type_ is None else {"type": type_}
    for name, strategy in fields.items():
        if draw(_ONE_IN_TEN) > 0:  # sometimes leave a field out
            out[name] = draw(_wrapped(strategy))
    if draw(_ONE_IN_TWENTY) == 0:  # sometimes an unknown or misplaced field
        out[draw(_EXTRA_NAMES)] = draw(junk)
    return out


_ONE_IN_TEN = st.integers(0, 9)
_ONE_IN_TWENTY = st.integers(0, 19)
_EXTRA_NAMES = st.sampled_from(["extra", "type", "crew_id", "role", "seq"])
_WRAPPED: dict[int, st.SearchStrategy[Any]] = {}


def _wrapped(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``maybe_junk(strategy)``, built once per strategy (building strategies per draw is slow)."""
    key = id(strategy)
    if key not in _WRAPPED:
        _WRAPPED[key] = maybe_junk(strategy)
    return _WRAPPED[key]


def typed_messages(
    by_type: dict[str, dict[str, st.SearchStrategy[Any]]],
) -> st.SearchStrategy[dict[str, Any]]:
    """A message of a drawn type with that type's fields (so each example stays cheap to draw)."""
    return st.one_of(*(message_dicts(fields, type_=name) for name, fields in by_type.items()))


SIGHTING_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "incident_id": identifiers,
    "camera_id": identifiers,
    "observed_at": times,
    "source_kind": st.sampled_from(["operator", "vms_rule", "simulation", "camera", ""]),
    "source_event_id": identifiers,
    "heading_deg": numbers,
    "speed_kmh": numbers,
    "confidence": numbers,
    "vehicle_description": st.text(max_size=220) | st.none(),
}


def _finite_in(value: float | None, low: float, high: float) -> bool:
    return value is None or (math.isfinite(value) and low <= value <= high)


def check_sighting(s: Sighting) -> None:
    for ident in (s.incident_id, s.camera_id, s.source_event_id):
        assert IDENT.match(ident)
    assert s.observed_at.tzinfo is not None and s.observed_at.utcoffset() is not None
    assert _finite_in(s.heading_deg, 0, 360)
    assert _finite_in(s.speed_kmh, 0, 250)
    assert _finite_in(s.confidence, 0, 1)
    assert s.vehicle_description is None or len(s.vehicle_description) <= 200
    canonical_json(s.model_dump(mode="json"))  # auditable


@FUZZ
@given(message_dicts(SIGHTING_FIELDS))
def test_sighting_parsing_never_crashes(data: dict[str, Any]) -> None:
    try:
        sighting = Sighting.model_validate(data)
    except ValidationError:
        return
    check_sighting(sighting)
    assert set(data) <= set(SIGHTING_FIELDS)  # unknown fields never pass


@LIGHT
@given(st.binary(max_size=300) | message_dicts(SIGHTING_FIELDS).map(lambda d: json.dumps(d).encode()))
def test_sighting_json_bytes_never_crash(raw: bytes) -> None:
    try:
        sighting = Sighting.model_validate_json(raw)
    except ValidationError:
        return
    check_sighting(sighting)


def _message_models() -> tuple[Any, Any]:
    messages = pytest.importorskip("serving.messages")
    return messages.crew_client_adapter, messages.operator_client_adapter


POSITION = {"lon": numbers, "lat": numbers, "heading_deg": numbers, "at": times}
CREW_TYPES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "auth": {"token": st.text(max_size=50)},
    "resume": {"last_seq": st.integers(-5, 2**64) | numbers},
    "position": POSITION,
    "status": {"status": st.sampled_from(["available", "assigned", "busy", "out_of_service", "asleep"])},
    "accept": {"suggestion_id": identifiers},
    "decline": {"suggestion_id": identifiers, "reason": st.text(max_size=600)},
    "in_position": {"suggestion_id": identifiers},
    "contact": {"suggestion_id": identifiers, "incident_id": identifiers, "lon": numbers, "lat": numbers},
    "approve": {"suggestion_id": identifiers},  # an operator's message on the crew socket
    "teleport": POSITION,
}
OPERATOR_TYPES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "auth": CREW_TYPES["auth"],
    "resume": CREW_TYPES["resume"],
    "approve": {"suggestion_id": identifiers},
    "modify": {"suggestion_id": identifiers, "lon": numbers, "lat": numbers, "crew_id": identifiers},
    "retract": {"suggestion_id": identifiers, "reason": st.text(max_size=600)},
    "sighting": {k: v for k, v in SIGHTING_FIELDS.items() if k != "source_kind"},
    "position": POSITION,  # a crew's message on the operator socket
}


def check_message(message: Any) -> None:
    dumped = message.model_dump(mode="json")
    for name in ("lon", "lat"):
        value = dumped.get(name)
        bound = 180 if name == "lon" else 90
        assert value is None or (math.isfinite(value) and abs(value) <= bound)
    assert _finite_in(dumped.get("heading_deg"), 0, 360)
    for name in ("suggestion_id", "incident_id", "crew_id"):
        assert dumped.get(name) is None or IDENT.match(dumped[name])
    if "at" in dumped and dumped["at"] is not None:
        assert message.at.tzinfo is not None
    try:
        canonical_json(dumped)
    except AuditError:
        # only a token or a free reason can carry text that cannot be stored
        assert dumped["type"] in {"auth", "decline", "retract"}


@FUZZ
@given(typed_messages(CREW_TYPES))
def test_crew_messages_never_crash(data: dict[str, Any]) -> None:
    crew_adapter, _ = _message_models()
    try:
        message = crew_adapter.validate_python(data)
    except ValidationError:
        return
    assert data["type"] in {
        "auth",
        "resume",
        "position",
        "status",
        "accept",
        "decline",
        "in_position",
        "contact",
    }
    check_message(message)


@LIGHT
@given(typed_messages(OPERATOR_TYPES))
def test_operator_messages_never_crash(data: dict[str, Any]) -> None:
    _, operator_adapter = _message_models()
    try:
        message = operator_adapter.validate_python(data)
    except ValidationError:
        return
    check_message(message)


STATE_EXAMPLES = max(20, EXAMPLES // 100)


@settings(
    max_examples=STATE_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(message_dicts(SIGHTING_FIELDS), min_size=1, max_size=25))
def test_random_sightings_leave_a_valid_audit_chain(tmp_path: Path, batch: list[dict[str, Any]]) -> None:
    """No corrupted state: whatever mix arrives, the accepted ones are audited in order and the
    chain verifies; refused ones leave no trace."""
    path = tmp_path / f"fuzz-{os.getpid()}-{id(batch)}.sqlite3"
    log = SqliteAuditLog(path)
    try:
        accepted = 0
        at = datetime(2026, 3, 1, tzinfo=UTC)
        for i, data in enumerate(batch):
            try:
                sighting = Sighting.model_validate(data)
            except ValidationError:
                continue
            log.append(
                "op",
                "operator",
                "sighting_received",
                at=at + timedelta(seconds=i),
                incident_id=sighting.incident_id,
                payload=sighting.model_dump(mode="json"),
            )
            accepted += 1
        report = log.verify()
        assert report.ok and report.records_checked == accepted
        replayed = [Sighting.model_validate(r.payload) for r in log.records()]
        assert len(replayed) == accepted
    finally:
        log.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
