"""The authenticator's cache of verified signatures: a token checked once is not decoded again,
yet its expiry, its revocation and its key are checked at every use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from serving.auth import (
    Authenticator,
    AuthError,
    AuthFailure,
    InMemoryRevocationList,
    Role,
    StaticKeys,
    TokenIssuer,
)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SECRET = b"token-cache-secret-0123456789abcdef0123"


def _setup() -> tuple[TokenIssuer, dict[str, Any], Authenticator, list[datetime]]:
    issuer = TokenIssuer(issuer="cordon-local", audience="cordon", key=SECRET, algorithm="HS256")
    keys: dict[str, Any] = {issuer.key_id: SECRET}
    now = [T0]
    auth = Authenticator(
        keys=StaticKeys(keys=keys, algorithms={issuer.key_id: "HS256"}),
        issuer="cordon-local",
        audience="cordon",
        revocations=InMemoryRevocationList(),
        clock=lambda: now[0],
    )
    return issuer, keys, auth, now


def test_a_verified_token_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    issuer, _keys, auth, _now = _setup()
    token = issuer.issue("vms-1", Role.operator, ["metz"], now=T0, ttl_s=600)
    first = auth.verify(token)
    calls: list[int] = []
    real = jwt.decode

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counted)
    assert auth.verify(token) == first
    assert calls == []
    other = issuer.issue("vms-2", Role.operator, ["metz"], now=T0, ttl_s=600)
    assert auth.verify(other).subject == "vms-2" and calls == [1]  # a new token is decoded


def test_a_cached_token_still_expires_is_revoked_and_follows_its_key() -> None:
    issuer, keys, auth, now = _setup()
    token = issuer.issue("vms-1", Role.operator, ["metz"], now=T0, ttl_s=60)
    auth.verify(token)
    now[0] = T0 + timedelta(seconds=60 + 31)
    with pytest.raises(AuthError) as err:
        auth.verify(token)
    assert err.value.failure is AuthFailure.expired

    now[0] = T0
    auth.revoke(auth.verify(token))
    with pytest.raises(AuthError) as err:
        auth.verify(token)
    assert err.value.failure is AuthFailure.revoked

    fresh = issuer.issue("vms-3", Role.operator, ["metz"], now=T0, ttl_s=600)
    auth.verify(fresh)
    keys.pop(issuer.key_id)  # the key rotated out: its tokens stop at once
    with pytest.raises(AuthError) as err:
        auth.verify(fresh)
    assert err.value.failure is AuthFailure.unknown_key
