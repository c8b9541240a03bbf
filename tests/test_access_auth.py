"""Tokens: issue/verify, expiry on a frozen clock, revocation (memory and Redis), audience,
issuer, signature, roles, and the FastAPI dependencies on a tiny app of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from fastapi import Depends, FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from serving.auth import (
    Action,
    Authenticator,
    AuthError,
    AuthFailure,
    InMemoryRevocationList,
    JwksKeys,
    Principal,
    RedisRevocationList,
    Role,
    TokenIssuer,
    bearer_principal,
    generate_ed25519_keys,
    require_action,
    require_role,
    websocket_principal,
)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class FrozenClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def ed_keys() -> tuple[bytes, bytes]:
    return generate_ed25519_keys()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def issuer(ed_keys: tuple[bytes, bytes]) -> TokenIssuer:
    return TokenIssuer(issuer="cordon-local", audience="cordon", key=ed_keys[0])


@pytest.fixture
def auth(issuer: TokenIssuer, ed_keys: tuple[bytes, bytes], clock: FrozenClock) -> Authenticator:
    return Authenticator(
        keys=issuer.verification_keys(ed_keys[1]),
        issuer="cordon-local",
        audience="cordon",
        revocations=InMemoryRevocationList(),
        clock=clock,
    )


def test_round_trip_gives_the_principal(issuer: TokenIssuer, auth: Authenticator) -> None:
    token = issuer.issue("agent.dupont", Role.operator, ["metz", "woippy"], now=T0, ttl_s=900)
    p = auth.verify(token)
    assert p.subject == "agent.dupont"
    assert p.role is Role.operator
    assert p.communes == frozenset({"metz", "woippy"})
    assert p.crew_id is None and p.tenant == "live"
    assert p.expires_at == T0 + timedelta(seconds=900)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) >= {"iss", "aud", "sub", "exp", "iat", "nbf", "jti", "role", "communes", "tenant"}
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"


def test_crew_token_carries_its_unit(issuer: TokenIssuer, auth: Authenticator) -> None:
    p = auth.verify(issuer.issue("tablet-12", Role.crew, ["metz"], crew_id="BAC-12", now=T0))
    assert p.role is Role.crew and p.crew_id == "BAC-12"


def test_expiry_follows_the_injected_clock(
    issuer: TokenIssuer, auth: Authenticator, clock: FrozenClock
) -> None:
    token = issuer.issue("a", Role.operator, ["metz"], now=T0, ttl_s=60)
    clock.advance(60 + 29)  # within the 30 s leeway
    auth.verify(token)
    clock.advance(2)
    with pytest.raises(AuthError) as err:
        auth.verify(token)
    assert err.value.failure is AuthFailure.expired


def test_not_yet_valid(issuer: TokenIssuer, auth: Authenticator) -> None:
    token = issuer.issue("a", Role.operator, ["metz"], now=T0 + timedelta(minutes=5))
    with pytest.raises(AuthError) as err:
        auth.verify(token)
    assert err.value.failure is AuthFailure.not_yet_valid


def test_revoked_token_and_revoked_subject(
    issuer: TokenIssuer, auth: Authenticator, clock: FrozenClock
) -> None:
    first = issuer.issue("a", Role.operator, ["metz"], now=T0)
    second = issuer.issue("a", Role.operator, ["metz"], now=T0)
    auth.revoke(auth.verify(first))
    with pytest.raises(AuthError) as err:
        auth.verify(first)
    assert err.value.failure is AuthFailure.revoked
    auth.verify(second)  # only that token
    # a lost tablet: every token of the subject issued before now
    auth.revocations.revoke_subject("a", issued_before=T0 + timedelta(seconds=1))
    with pytest.raises(AuthError):
        auth.verify(second)
    clock.advance(10)
    auth.verify(issuer.issue("a", Role.operator, ["metz"], now=clock()))


def test_wrong_audience_issuer_and_signature(issuer: TokenIssuer, auth: Authenticator) -> None:
    other_aud = TokenIssuer(issuer="cordon-local", audience="elsewhere", key=issuer._key)
    with pytest.raises(AuthError) as err:
        auth.verify(other_aud.issue("a", Role.operator, ["metz"], now=T0))
    assert err.value.failure is AuthFailure.wrong_audience

    other_iss = TokenIssuer(issuer="evil", audience="cordon", key=issuer._key)
    with pytest.raises(AuthError) as err:
        auth.verify(other_iss.issue("a", Role.operator, ["metz"], now=T0))
    assert err.value.failure is AuthFailure.wrong_issuer

    forged = TokenIssuer(issuer="cordon-local", audience="cordon", key=generate_ed25519_keys()[0])
    with pytest.raises(AuthError) as err:
        auth.verify(forged.issue("a", Role.admin, ["*"], now=T0))
    assert err.value.failure is AuthFailure.bad_signature

    token = issuer.issue("a", Role.operator, ["metz"], now=T0)
    head, body, sig = token.split(".")
    with pytest.raises(AuthError):
        auth.verify(f"{head}.{body}.{sig[:-4]}AAAA")
    with pytest.raises(AuthError) as err:
        auth.verify("not-a-token")
    assert err.value.failure is AuthFailure.malformed


def test_alg_none_and_hs_confusion_are_refused(ed_keys: tuple[bytes, bytes], auth: Authenticator) -> None:
    claims = {
        "iss": "cordon-local",
        "aud": "cordon",
        "sub": "a",
        "role": "admin",
        "communes": ["*"],
        "tenant": "live",
        "iat": int(T0.timestamp()),
        "nbf": int(T0.timestamp()),
        "exp": int(T0.timestamp()) + 60,
        "jti": "x",
    }
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "local-1"})
    with pytest.raises(AuthError) as err:
        auth.verify(unsigned)
    assert err.value.failure is AuthFailure.bad_signature
    # HS256 signed with the *public* key as secret (the classic key-confusion attack)
    confused = jwt.encode(claims, "x" * 40, algorithm="HS256", headers={"kid": "local-1"})
    with pytest.raises(AuthError) as err:
        auth.verify(confused)
    assert err.value.failure is AuthFailure.bad_signature


def _raw(issuer_key: bytes, **overrides: object) -> str:
    claims: dict[str, object] = {
        "iss": "cordon-local",
        "aud": "cordon",
        "sub": "a",
        "role": "operator",
        "communes": ["metz"],
        "tenant": "live",
        "iat": int(T0.timestamp()),
        "nbf": int(T0.timestamp()),
        "exp": int(T0.timestamp()) + 60,
        "jti": "j1",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, issuer_key, algorithm="EdDSA", headers={"kid": "local-1"})


@pytest.mark.parametrize(
    ("overrides", "failure"),
    [
        ({"role": "god"}, AuthFailure.unknown_role),
        ({"role": None}, AuthFailure.unknown_role),
        ({"jti": None}, AuthFailure.missing_claim),
        ({"exp": None}, AuthFailure.missing_claim),
        ({"communes": "metz"}, AuthFailure.bad_claim),
        ({"role": "trainer", "tenant": "live"}, AuthFailure.bad_claim),
        ({"role": "crew"}, AuthFailure.bad_claim),  # a crew token without crew_id
        ({"tenant": "staging"}, AuthFailure.bad_claim),
        ({"exp": int(T0.timestamp()) + 86400 * 30}, AuthFailure.bad_claim),  # far too long-lived
    ],
)
def test_bad_claims_are_refused(
    ed_keys: tuple[bytes, bytes], auth: Authenticator, overrides: dict[str, object], failure: AuthFailure
) -> None:
    with pytest.raises(AuthError) as err:
        auth.verify(_raw(ed_keys[0], **overrides))
    assert err.value.failure is failure


def test_issuer_refuses_bad_requests(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="simulation"):
        issuer.issue("t", Role.trainer, ["*"], now=T0)
    with pytest.raises(ValueError, match="crew_id"):
        issuer.issue("t", Role.crew, ["metz"], now=T0)
    with pytest.raises(ValueError, match="ttl_s"):
        issuer.issue("t", Role.operator, ["metz"], now=T0, ttl_s=86400)
    with pytest.raises(ValueError, match="timezone"):
        issuer.issue("t", Role.operator, ["metz"], now=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="32"):
        TokenIssuer(issuer="i", audience="a", key=b"short", algorithm="HS256")


def test_hs256_local_issuer(clock: FrozenClock) -> None:
    secret = b"s" * 32
    issuer = TokenIssuer(issuer="i", audience="a", key=secret, algorithm="HS256")
    auth = Authenticator(
        keys=issuer.verification_keys(),
        issuer="i",
        audience="a",
        revocations=InMemoryRevocationList(),
        clock=clock,
    )
    assert auth.verify(issuer.issue("s", Role.supervisor, ["*"], now=T0)).sees_all_communes()


def test_oidc_style_jwks_verification(clock: FrozenClock) -> None:
    """A provider's token checked against its JWKS document, exactly as the local issuer's."""
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update({"kid": "provider-2026", "alg": "ES256", "use": "sig"})
    provider = TokenIssuer(
        issuer="https://idp.example/realms/csu",
        audience="cordon",
        key=private,
        algorithm="ES256",
        key_id="provider-2026",
    )
    auth = Authenticator(
        keys=JwksKeys({"keys": [jwk]}),
        issuer="https://idp.example/realms/csu",
        audience="cordon",
        revocations=InMemoryRevocationList(),
        clock=clock,
    )
    p = auth.verify(provider.issue("agent", Role.operator, ["metz"], now=T0))
    assert p.subject == "agent"
    other = TokenIssuer(
        issuer="https://idp.example/realms/csu",
        audience="cordon",
        key=private,
        algorithm="ES256",
        key_id="rotated",
    )
    with pytest.raises(AuthError) as err:
        auth.verify(other.issue("agent", Role.operator, ["metz"], now=T0))
    assert err.value.failure is AuthFailure.unknown_key


@pytest.fixture
def redis_revocations(clock: FrozenClock) -> Iterator[RedisRevocationList]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at 127.0.0.1:6379 ({exc})")
    prefix = f"cordon-test:{uuid.uuid4().hex}:"
    yield RedisRevocationList(client, prefix=prefix, clock=clock)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def test_redis_revocations_shared_between_authenticators(
    issuer: TokenIssuer,
    ed_keys: tuple[bytes, bytes],
    clock: FrozenClock,
    redis_revocations: RedisRevocationList,
) -> None:
    def worker() -> Authenticator:
        return Authenticator(
            keys=issuer.verification_keys(ed_keys[1]),
            issuer="cordon-local",
            audience="cordon",
            revocations=redis_revocations,
            clock=clock,
        )

    a, b = worker(), worker()
    token = issuer.issue("a", Role.operator, ["metz"], now=T0)
    a.revoke(a.verify(token))
    with pytest.raises(AuthError) as err:
        b.verify(token)
    assert err.value.failure is AuthFailure.revoked
    redis_revocations.revoke_subject("tablet-3", issued_before=T0 + timedelta(seconds=5))
    with pytest.raises(AuthError):
        b.verify(issuer.issue("tablet-3", Role.crew, ["metz"], crew_id="C3", now=T0))
    b.verify(issuer.issue("tablet-4", Role.crew, ["metz"], crew_id="C4", now=T0))


# ---------------------------------------------------------------------------------------------
# FastAPI dependencies on the test's own app


@pytest.fixture
def app_client(auth: Authenticator) -> TestClient:
    app = FastAPI()
    who = bearer_principal(auth)

    @app.get("/me")
    def me(p: Principal = Depends(who)) -> dict[str, str]:
        return {"subject": p.subject, "role": p.role.value}

    @app.post("/incidents/share")
    def share(p: Principal = Depends(require_action(auth, Action.share_incident))) -> dict[str, str]:
        return {"ok": p.subject}

    @app.get("/admin")
    def admin(p: Principal = Depends(require_role(auth, Role.admin))) -> dict[str, str]:
        return {"ok": p.subject}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, p: Principal = Depends(websocket_principal(auth))) -> None:
        await websocket.accept()
        await websocket.send_json({"subject": p.subject})
        await websocket.close()

    return TestClient(app)


def test_http_dependencies(app_client: TestClient, issuer: TokenIssuer) -> None:
    op = issuer.issue("op", Role.operator, ["metz"], now=T0)
    sup = issuer.issue("sup", Role.supervisor, ["metz"], now=T0)
    assert app_client.get("/me").status_code == 401
    r = app_client.get("/me", headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert app_client.get("/me", headers={"Authorization": f"Basic {op}"}).status_code == 401
    assert app_client.get("/me", headers={"Authorization": f"Bearer {op}"}).json() == {
        "subject": "op",
        "role": "operator",
    }
    assert app_client.get(f"/me?token={op}").status_code == 401  # query tokens only for websockets
    assert app_client.post("/incidents/share", headers={"Authorization": f"Bearer {op}"}).status_code == 403
    assert app_client.post("/incidents/share", headers={"Authorization": f"Bearer {sup}"}).status_code == 200
    assert app_client.get("/admin", headers={"Authorization": f"Bearer {sup}"}).status_code == 403


def test_websocket_dependency(app_client: TestClient, issuer: TokenIssuer) -> None:
    crew = issuer.issue("tablet", Role.crew, ["metz"], crew_id="C1", now=T0)
    with app_client.websocket_connect(f"/ws?token={crew}") as ws:
        assert ws.receive_json() == {"subject": "tablet"}
    with app_client.websocket_connect("/ws", headers={"Authorization": f"Bearer {crew}"}) as ws:
        assert ws.receive_json() == {"subject": "tablet"}
    with pytest.raises(WebSocketDisconnect) as closed, app_client.websocket_connect("/ws?token=bad") as ws:
        ws.receive_json()
    assert closed.value.code == 1008


def test_a_server_accepts_only_its_own_tenant(
    issuer: TokenIssuer, ed_keys: tuple[bytes, bytes], clock: FrozenClock
) -> None:
    live = Authenticator(
        keys=issuer.verification_keys(ed_keys[1]),
        issuer="cordon-local",
        audience="cordon",
        revocations=InMemoryRevocationList(),
        clock=clock,
        tenant="live",
    )
    trainer = issuer.issue("trainer", Role.trainer, ["*"], now=T0, tenant="simulation")
    with pytest.raises(AuthError) as err:
        live.verify(trainer)
    assert err.value.failure is AuthFailure.wrong_tenant
    assert live.verify(issuer.issue("op", Role.operator, ["metz"], now=T0)).tenant == "live"
