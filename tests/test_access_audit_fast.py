"""The audit chain's fast canonical JSON (orjson where it writes the standard library's bytes)
against the definition it must reproduce: ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` with NaN/inf paths named and lone surrogates refused.
Generated payloads with tricky floats and strings, the edges of the float range the fast path
takes, real suggestion bodies, the errors (same type, same message), and chains written with the
fast path off (as every existing database was) and on: same hashes, each verifies the other."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import serving.audit as audit
from serving.audit import AuditError, SqliteAuditLog, canonical_json, record_hash

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def reference(value: Any) -> str:
    """The canonical text as the chain has always defined it (the code before the fast path)."""

    def check(item: Any, path: str) -> None:
        if isinstance(item, float) and not math.isfinite(item):
            raise AuditError(f"{path} is {item!r}; NaN and infinities are not allowed")
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise AuditError(f"{path} has a non-string key {key!r}")
                check(inner, f"{path}.{key}")
        elif isinstance(item, list | tuple):
            for i, inner in enumerate(item):
                check(inner, f"{path}[{i}]")

    check(value, "payload")
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise AuditError(f"payload is not canonical JSON: {exc}") from exc
    return text


def outcome(fn: Any, value: Any) -> tuple[str, str]:
    """``("ok", text)`` or ``(exception type, message)``: what a caller of ``fn`` sees."""
    try:
        return "ok", fn(value)
    except Exception as exc:  # the comparison is of whatever is raised
        return type(exc).__name__, str(exc)


def same(value: Any) -> None:
    assert outcome(canonical_json, value) == outcome(reference, value)


# ---------------------------------------------------------------------------------------------
# Generators

TRICKY_FLOATS = [
    0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 1 / 3, 2 / 3, 1e-4, -1e-4, 1e-05, 1e-06, 9.5e-05, 1.5e-09, 1e-10,
    1e-300, 5e-324, -5e-324, 2.2250738585072014e-308, 1e15, 1e16, -1e16, 1e17, 1e22, 1.7976931348623157e308,
    9999999999999998.0, 123456789012345.67, 0.30000000000000004, 6.175932, 49.119308, 2.0**52, 2.0**53,
    2.0**53 + 2, 2.0**-14, 4.35e-05, 99999.99999999999,
    math.nextafter(1e-4, 0.0), math.nextafter(1e-4, 1.0), math.nextafter(1e16, 0.0),
    math.nextafter(1e16, 2e16),
]  # fmt: skip
TRICKY_STRINGS = [
    "", "a", "é", "Boulevard de Trèves", "quote\"back\\slash", "tab\tnl\ncr\r", "\x00\x01\x1f\x7f",
    "\u2028\u2029", "\ufeff", "\U0001f600 😀", "\uffff", "日本語", "\b\f", "/", "</script>", "null",
    "0.0000", "1e-05",
]  # fmt: skip


def random_float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(TRICKY_FLOATS)
    if pick < 0.5:
        return round(rng.uniform(-180, 180), rng.randint(0, 9))
    if pick < 0.7:
        return math.copysign(10 ** rng.uniform(-30, 30), rng.random() - 0.5)
    while True:  # any finite bit pattern
        x: float = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(x):
            return x


def random_scalar(rng: random.Random) -> Any:
    pick = rng.random()
    if pick < 0.35:
        return random_float(rng)
    if pick < 0.55:
        return rng.choice(TRICKY_STRINGS) + "".join(
            chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 6))
        )
    if pick < 0.75:
        return rng.choice(
            [0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**65), 10**40]
        )
    return rng.choice([None, True, False])


def random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth >= 4 or pick < 0.4:
        return random_scalar(rng)
    if pick < 0.6:
        n = rng.randint(0, 6)
        return {
            rng.choice(TRICKY_STRINGS) + str(rng.randint(0, 50)): random_value(rng, depth + 1)
            for _ in range(n)
        }
    if pick < 0.75:  # a route: pairs of floats, as lists or tuples
        pair = tuple if rng.random() < 0.5 else list
        return [pair((random_float(rng), random_float(rng))) for _ in range(rng.randint(0, 8))]
    items = [random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    return tuple(items) if rng.random() < 0.5 else items


def spoil(rng: random.Random, value: Any) -> Any:
    """``value`` with one leaf replaced by something the chain refuses or the fast path avoids."""
    bad = rng.choice([math.nan, -math.nan, math.inf, -math.inf, "\ud800", "x\udfff", 1e-05, 10**30])
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        return {**value, key: spoil(rng, value[key])}
    if isinstance(value, list | tuple) and value:
        i = rng.randrange(len(value))
        items = list(value)
        items[i] = spoil(rng, items[i])
        return type(value)(items)
    return bad


# ---------------------------------------------------------------------------------------------
# Equivalence


def test_generated_payloads_match_the_reference() -> None:
    rng = random.Random(20260301)
    fast_taken = 0
    for _ in range(4000):
        payload = {"p": random_value(rng), "q": random_value(rng)}
        fast_taken += audit._orjson_exact(payload)
        same(payload)
        same(spoil(rng, payload))
    assert fast_taken > 400  # the comparison covers the fast path, not only the fallback


def test_floats_match_the_reference() -> None:
    """Many floats of every kind, in lists (one orjson call each) and one by one at the edges."""
    rng = random.Random(7)
    for _ in range(40):
        floats = [random_float(rng) for _ in range(5000)]
        same(floats)
        same(
            {
                "lonlat": [
                    (round(rng.uniform(-180, 180), 6), round(rng.uniform(-90, 90), 6)) for _ in range(500)
                ]
            }
        )
        inside = [x for x in floats if x == 0.0 or 1e-4 <= abs(x) < 1e16]
        assert audit._orjson_exact(inside)
        same(inside)
    edges = [1e-4, 1e16, 2.0**53, 2.0**-13]
    for edge in edges:
        x = edge
        for _ in range(200):  # both sides of each edge, ulp by ulp
            below = math.nextafter(x, 0.0)
            same([x, -x, below, -below])
            same(x)
            x = below
    for e in range(-1074, 1024):  # every power of two (asymmetric rounding intervals)
        p = math.ldexp(1.0, e)
        same([p, math.nextafter(p, 0.0), math.nextafter(p, math.inf)])


def test_scalars_and_structures_match_the_reference() -> None:
    values: list[Any] = [
        None, True, False, 0, -0.0, "", [], (), {}, {"a": ()}, [[], {}], ((1,),), 2**64, -(2**64) - 1,
        10**400, {"b": 1, "a": 2, "é": 3, "z": 4, "\U0001f600": 5, "\uffff": 6, "": 7},
        {"a": {"b": {"c": [1, (2, [3.5, {"d": None}])]}}}, "".join(map(chr, range(0x800))),
    ]  # fmt: skip
    for value in values:
        same(value)
        same({"v": value})
    assert canonical_json((1, (2.0, 3))) == canonical_json([1, [2.0, 3]]) == "[1,[2.0,3]]"


def test_errors_are_the_reference_errors() -> None:
    for value in [
        {"a": [1, {"b": math.nan}]}, {"a": (1, (2, math.inf))}, {"r": [[6.1, -math.inf]]}, math.nan,
        {1: 2}, {"a": {(1, 2): 3}}, {"a": {None: 1}}, {"s": "\ud800"}, {"\udc00": 1}, ["ok", "\udfff"],
        {"x": object()}, {"d": T0}, {"s": {1, 2}}, {"b": b"bytes"},
    ]:  # fmt: skip
        kind, message = outcome(canonical_json, value)
        assert kind == "AuditError"
        assert (kind, message) == outcome(reference, value)
    with pytest.raises(AuditError, match=r"payload\.a\[1\]\.b is nan"):
        canonical_json({"a": [1, {"b": math.nan}]})


class Colour(StrEnum):
    grey = "gris"


class Level(IntEnum):
    high = 3


class Text(str):
    pass


class Number(float):
    pass


class Backwards(str):
    """A key that sorts in reverse: ``json.dumps`` sorts keys with their own comparison."""

    def __lt__(self, other: object) -> bool:
        return str.__gt__(self, other)  # type: ignore[operator]

    def __hash__(self) -> int:
        return str.__hash__(self)


def test_subclasses_take_the_reference_path() -> None:
    """orjson writes some subclasses (or refuses them) where ``json.dumps`` does otherwise: the fast
    path only takes exact types, so these give the reference's text or error."""
    values = [
        Colour.grey,
        Level.high,
        Text("t"),
        Number(1e-05),
        Number(0.5),
        np.float64(0.1),
        np.float64(1e-7),
    ]
    for value in values:
        assert not audit._orjson_exact({"v": value})
        same({"v": value})
        same([value, (value,)])
    same({Text("k"): 1})
    backwards = {Backwards("a"): 1, Backwards("b"): 2, Backwards("c"): 3}
    assert not audit._orjson_exact(backwards)
    assert canonical_json(backwards) == reference(backwards) == '{"c":3,"b":2,"a":1}'


def test_suggestion_bodies_match_the_reference() -> None:
    from serving import messages as m
    from serving.service import suggestion_body

    rng = random.Random(3)
    for i in range(200):
        route = [
            (6.17 + rng.uniform(-0.05, 0.05), 49.11 + rng.uniform(-0.05, 0.05))
            for _ in range(rng.randint(0, 200))
        ]
        s = SimpleNamespace(
            suggestion_id=f"s-{i}",
            incident_id="inc-1",
            crew_id=f"crew-{i % 7}",
            target_node=np.int64(rng.randint(0, 10**6)),
            lon=np.float64(route[-1][0] if route else 6.17),
            lat=np.float64(route[-1][1] if route else 49.11),
            street_names=["Rue Serpenoise", "Quai Félix Maréchal"],
            route_lonlat=route,
            turns=["Prendre Rue Serpenoise", "À droite « Avenue Foch »"],
            crew_eta_s=rng.uniform(0, 600),
            suspect_earliest_eta_s=rng.choice([math.inf, math.nan, rng.uniform(0, 900)]),
            suspect_likely_eta_s=rng.uniform(0, 900),
            margin_s=rng.choice([rng.uniform(-5, 300), 3e-05, 0.0]),
            probability_covered=rng.choice([rng.random(), 1e-07, 0.0, 1.0]),
            reason="couvre 3 itinéraires (41 %)",
            plan_version=rng.randint(1, 99),
            issued_at=T0 + timedelta(seconds=i),
            expires_at=T0 + timedelta(seconds=i + 90),
        )
        body = suggestion_body(s, rng.choice(list(m.SuggestionState)))
        same(body)
        same(json.loads(json.dumps(body)))  # as verify reads it back


def test_record_hash_is_unchanged() -> None:
    """The head of the hashed message goes through the fast path too: hashes of records with
    every kind of field equal the hash computed from the reference text."""
    rng = random.Random(11)
    for i in range(300):
        fields: dict[str, Any] = {
            "seq": rng.choice([1, i, 2**62]),
            "at": T0 + timedelta(microseconds=rng.randint(0, 10**12)),
            "actor": rng.choice(["operator-all", "cordon", None]),
            "role": rng.choice(["operator", None]),
            "action": rng.choice(["suggestion_issued", "purge"]),
            "incident_id": rng.choice([None, "inc-1"]),
            "commune": rng.choice([None, "Metz", "Montigny-lès-Metz", "日本"]),
            "reason": rng.choice(["", "retention purge", "accès « urgent »\n"]),
            "prev_hash": f"{rng.getrandbits(256):064x}",
        }
        payload_json = reference({"p": random_value(rng)}) if rng.random() < 0.5 else "{}"
        key = rng.choice([None, b"k" * 32])
        head = reference({**fields, "at": fields["at"].astimezone(UTC).isoformat(timespec="microseconds")})
        message = f"{head}\n{payload_json}".encode()
        want = (
            hashlib.sha256(message).hexdigest()
            if key is None
            else hmac.new(key, message, "sha256").hexdigest()
        )
        assert record_hash(payload_json=payload_json, key=key, **fields) == want


# ---------------------------------------------------------------------------------------------
# Chains written before and after


@pytest.fixture
def reference_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The module as it was: every text from ``json.dumps``."""
    monkeypatch.setattr(audit, "_ORJSON_EXACT", False)
    yield


def records(seed: int, n: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    out: list[tuple[Any, ...]] = []
    for i in range(n):
        payload = {
            "p": random_value(rng),
            "route": [(random_float(rng), random_float(rng)) for _ in range(20)],
        }
        reference(payload)  # valid: generated values are finite, with string keys and no surrogates
        at = T0 + timedelta(seconds=i, microseconds=rng.randint(0, 999999))
        out.append(("operator-all", "operator", "suggestion_issued", at, "inc-1", "Metz", payload, f"r{i}"))
    return out


def rows(path: Path) -> list[tuple[Any, ...]]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT seq, at, payload, prev_hash, hash FROM audit_records ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def test_chains_before_and_after_are_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = records(1, 300)
    monkeypatch.setattr(audit, "_ORJSON_EXACT", False)
    before = SqliteAuditLog(tmp_path / "before.sqlite3")
    before.append_many(batch[:150], return_records=False)
    before.append_many(batch[150:])
    before.close()
    monkeypatch.setattr(audit, "_ORJSON_EXACT", True)
    after = SqliteAuditLog(tmp_path / "after.sqlite3")
    after.append_many(batch[:150], return_records=False)
    for record in batch[150:]:
        actor, role, action, at, incident_id, commune, payload, reason = record
        after.append(
            actor,
            role,
            action,
            at=at,
            incident_id=incident_id,
            commune=commune,
            payload=payload,
            reason=reason,
        )
    after.close()
    assert rows(tmp_path / "before.sqlite3") == rows(tmp_path / "after.sqlite3")


def test_chain_written_before_verifies_after_and_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.sqlite3"
    monkeypatch.setattr(audit, "_ORJSON_EXACT", False)
    log = SqliteAuditLog(path, key=b"secret")
    log.append_many(records(2, 120), return_records=False)
    log.close()
    monkeypatch.setattr(audit, "_ORJSON_EXACT", True)
    log = SqliteAuditLog(path, key=b"secret")
    assert log.verify().ok
    log.append_many(records(3, 120), return_records=False)
    log.purge("Metz", T0 + timedelta(seconds=60), holds=(), at=T0 + timedelta(days=1))
    assert log.verify().ok
    log.close()
    monkeypatch.setattr(audit, "_ORJSON_EXACT", False)
    log = SqliteAuditLog(path, key=b"secret")
    report = log.verify()
    assert report.ok and report.records_checked == 241 and report.tombstones == 120
    log.close()


def test_installed_orjson_agrees() -> None:
    """The import-time probe passed, so the fast path is on (else these tests prove nothing)."""
    assert audit._ORJSON_EXACT and audit._orjson_agrees()
