"""Who may do what: signed short-lived tokens, principals, the access policy, FastAPI dependencies.

Layering (pure first, drivers last):

* :class:`TokenIssuer` signs tokens (the embedded local issuer); :class:`Authenticator` verifies
  them, against the local issuer's key or a real OIDC provider's JWKS (:class:`JwksKeys`), with the
  clock passed in, and turns the claims into a frozen :class:`Principal`.
* :class:`RevocationList` is a small Protocol (in memory, or a Redis set shared by all workers).
* :class:`Policy` is pure: it decides from a principal, an :class:`Action` and a :class:`Resource`
  whether to allow, answer 403 (the role may never do this) or answer 404 (the object lies outside
  what the principal may see: another commune, another tenant, another crew).
* :func:`bearer_principal`, :func:`websocket_principal`, :func:`require_action` are FastAPI
  dependency factories for the server.

Token claims (local issuer; an OIDC provider must be configured to emit the same private claims):
``iss aud sub exp iat nbf jti`` plus ``role`` (a :class:`Role` value), ``communes`` (list of
commune names, ``"*"`` for all), ``crew_id`` (crew tablets only) and ``tenant``
(``"live"`` or ``"simulation"``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Protocol

import jwt
from fastapi import HTTPException, Request, WebSocket, WebSocketException, status

__all__ = [
    "ALL_COMMUNES",
    "Action",
    "AuthError",
    "AuthFailure",
    "Authenticator",
    "Decision",
    "Forbidden",
    "InMemoryRevocationList",
    "JwksKeys",
    "NotVisible",
    "Policy",
    "Principal",
    "RedisRevocationList",
    "Resource",
    "RevocationList",
    "Role",
    "StaticKeys",
    "Tenant",
    "TokenIssuer",
    "bearer_principal",
    "check",
    "generate_ed25519_keys",
    "require_action",
    "require_role",
    "token_from_request",
    "visible_or_404",
    "websocket_principal",
]

ALL_COMMUNES = "*"
"""In a token's ``communes`` claim: every commune of the CSU (a metropolitan supervisor)."""

Tenant = Literal["live", "simulation"]
_TENANTS: frozenset[str] = frozenset({"live", "simulation"})

_ASYMMETRIC = ("EdDSA", "ES256", "RS256")
_SYMMETRIC = ("HS256",)


class Role(StrEnum):
    """The roles of the issue: see :data:`Policy.MATRIX` for what each may do."""

    crew = "crew"
    operator = "operator"
    supervisor = "supervisor"
    trainer = "trainer"
    admin = "admin"


class Action(StrEnum):
    """Everything a client can ask for, over REST or as a websocket message type.

    The server maps each endpoint and each message type to exactly one action.
    """

    # incidents (REST and operator websocket)
    open_incident = "open_incident"
    close_incident = "close_incident"
    read_incident = "read_incident"
    subscribe_incident = "subscribe_incident"
    post_sighting = "post_sighting"
    share_incident = "share_incident"
    # the operator's decisions on suggestions
    operator_approve = "operator_approve"
    operator_modify = "operator_modify"
    operator_retract = "operator_retract"
    # crews (tablet websocket and REST)
    read_crews = "read_crews"
    read_cameras = "read_cameras"
    subscribe_crew = "subscribe_crew"
    post_crew_position = "post_crew_position"
    post_crew_status = "post_crew_status"
    crew_accept = "crew_accept"
    crew_decline = "crew_decline"
    crew_in_position = "crew_in_position"
    crew_contact = "crew_contact"
    # audit, retention
    read_audit = "read_audit"
    export = "export"
    legal_hold = "legal_hold"
    release_hold = "release_hold"
    purge = "purge"
    set_retention = "set_retention"
    # administration, training
    manage_users = "manage_users"
    revoke_token = "revoke_token"
    sim_control = "sim_control"


class Decision(StrEnum):
    """What the policy says: allow, 403 (never for this role), 404 (not visible to this principal)."""

    allow = "allow"
    forbidden = "forbidden"
    not_found = "not_found"


class AuthFailure(StrEnum):
    """Why a token was refused."""

    malformed = "malformed"
    bad_signature = "bad_signature"
    expired = "expired"
    not_yet_valid = "not_yet_valid"
    wrong_audience = "wrong_audience"
    wrong_issuer = "wrong_issuer"
    revoked = "revoked"
    missing_claim = "missing_claim"
    unknown_role = "unknown_role"
    bad_claim = "bad_claim"
    unknown_key = "unknown_key"
    missing_token = "missing_token"
    wrong_tenant = "wrong_tenant"


class AuthError(Exception):
    """A token was refused; ``failure`` says why and the message names the claim at fault."""

    def __init__(self, failure: AuthFailure, detail: str) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail


class Forbidden(PermissionError):
    """The principal's role may never perform this action (HTTP 403)."""


class NotVisible(LookupError):
    """The object lies outside what the principal may see (HTTP 404, never 403)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user or crew tablet, as the claims of its verified token describe it."""

    subject: str
    role: Role
    communes: frozenset[str]
    crew_id: str | None
    tenant: Tenant
    token_id: str
    expires_at: datetime | None = None

    def sees_all_communes(self) -> bool:
        return ALL_COMMUNES in self.communes


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action touches: its tenant, the communes it belongs to (an incident's home commune
    plus the communes it is shared with), and for crew actions the crew concerned."""

    tenant: Tenant = "live"
    communes: frozenset[str] = frozenset()
    crew_id: str | None = None

    @staticmethod
    def incident(commune: str, *, shared_with: Iterable[str] = (), tenant: Tenant = "live") -> Resource:
        return Resource(tenant=tenant, communes=frozenset({commune, *shared_with}))

    @staticmethod
    def crew(crew_id: str, commune: str | None, *, tenant: Tenant = "live") -> Resource:
        return Resource(
            tenant=tenant, communes=frozenset() if commune is None else frozenset({commune}), crew_id=crew_id
        )


# ---------------------------------------------------------------------------------------------
# Revocation


class RevocationList(Protocol):
    """Revoked token ids (until they would have expired anyway) and subjects revoked wholesale
    (a lost tablet, a departed agent: every token issued to them before a time)."""

    def revoke(self, token_id: str, *, expires_at: datetime) -> None: ...

    def revoke_subject(self, subject: str, *, issued_before: datetime) -> None: ...

    def is_revoked(self, token_id: str, *, subject: str, issued_at: datetime, now: datetime) -> bool: ...


class InMemoryRevocationList:
    """One process's revocations (the embedded default)."""

    def __init__(self) -> None:
        self._tokens: dict[str, datetime] = {}
        self._subjects: dict[str, datetime] = {}

    def revoke(self, token_id: str, *, expires_at: datetime) -> None:
        _require_aware(expires_at, "expires_at")
        self._tokens[token_id] = expires_at

    def revoke_subject(self, subject: str, *, issued_before: datetime) -> None:
        _require_aware(issued_before, "issued_before")
        previous = self._subjects.get(subject)
        self._subjects[subject] = issued_before if previous is None else max(previous, issued_before)

    def is_revoked(self, token_id: str, *, subject: str, issued_at: datetime, now: datetime) -> bool:
        until = self._tokens.get(token_id)
        if until is not None:
            if until > now:
                return True
            del self._tokens[token_id]  # expired anyway: forget it
        cutoff = self._subjects.get(subject)
        return cutoff is not None and issued_at < cutoff


class RedisClient(Protocol):
    """The few calls of ``redis.Redis`` that :class:`RedisRevocationList` uses."""

    def set(self, name: str, value: str, *, ex: int | None = None) -> Any: ...

    def get(self, name: str) -> Any: ...

    def exists(self, *names: str) -> Any: ...


class RedisRevocationList:
    """Revocations shared by every server worker through Redis; keys expire with the tokens.

    Keys: ``{prefix}jti:{token_id}`` and ``{prefix}sub:{subject}`` (ISO time of the cutoff).
    """

    def __init__(self, client: RedisClient, *, prefix: str = "cordon:revoked:", clock: Clock) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock

    def revoke(self, token_id: str, *, expires_at: datetime) -> None:
        _require_aware(expires_at, "expires_at")
        ttl_s = int((expires_at - self._clock()).total_seconds()) + 1
        if ttl_s > 0:
            self._client.set(f"{self._prefix}jti:{token_id}", "1", ex=ttl_s)

    def revoke_subject(self, subject: str, *, issued_before: datetime) -> None:
        _require_aware(issued_before, "issued_before")
        key = f"{self._prefix}sub:{subject}"
        previous = _decode_time(self._client.get(key))
        if previous is None or issued_before > previous:
            self._client.set(key, issued_before.isoformat())

    def is_revoked(self, token_id: str, *, subject: str, issued_at: datetime, now: datetime) -> bool:
        if int(self._client.exists(f"{self._prefix}jti:{token_id}")) > 0:
            return True
        cutoff = _decode_time(self._client.get(f"{self._prefix}sub:{subject}"))
        return cutoff is not None and issued_at < cutoff


def _decode_time(raw: object) -> datetime | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return datetime.fromisoformat(text)


# ---------------------------------------------------------------------------------------------
# Keys, issuing, verifying

Clock = Callable[[], datetime]


class KeySource(Protocol):
    """Where the verifier finds the key for a token header's ``kid`` and ``alg``."""

    def key_for(self, kid: str | None, alg: str) -> Any: ...


@dataclass(frozen=True)
class StaticKeys:
    """Verification keys known in advance: ``{kid: key}`` (a PEM public key, a cryptography key
    object, or the HS256 shared secret as bytes) and the algorithm each is used with."""

    keys: Mapping[str, Any]
    algorithms: Mapping[str, str]

    def key_for(self, kid: str | None, alg: str) -> Any:
        if kid is None:
            if len(self.keys) != 1:
                raise AuthError(AuthFailure.unknown_key, "token has no 'kid' and several keys are configured")
            kid = next(iter(self.keys))
        if kid not in self.keys:
            raise AuthError(AuthFailure.unknown_key, f"no key with kid {kid!r}")
        if self.algorithms[kid] != alg:
            raise AuthError(
                AuthFailure.bad_signature, f"key {kid!r} is for {self.algorithms[kid]}, not {alg}"
            )
        return self.keys[kid]


class JwksKeys:
    """The keys of an OIDC provider from its JWKS document (fetched by the caller, e.g. at start-up
    from ``jwks_uri``; this class does no network I/O)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        keyset = jwt.PyJWKSet.from_dict(dict(jwks))
        self._keys: dict[str | None, jwt.PyJWK] = {k.key_id: k for k in keyset.keys}

    def key_for(self, kid: str | None, alg: str) -> Any:
        key = self._keys.get(kid)
        if key is None:
            raise AuthError(AuthFailure.unknown_key, f"no JWKS key with kid {kid!r}")
        if key.algorithm_name != alg:
            raise AuthError(
                AuthFailure.bad_signature, f"JWKS key {kid!r} is for {key.algorithm_name}, not {alg}"
            )
        return key.key


def generate_ed25519_keys() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as (private PEM, public PEM) for the local issuer."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


class TokenIssuer:
    """The embedded local issuer. ``algorithm`` is ``EdDSA`` (preferred, needs ``cryptography``),
    ``ES256``, ``RS256`` or ``HS256`` (``key`` is then the shared secret, at least 32 bytes)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        key: Any,
        algorithm: str = "EdDSA",
        key_id: str = "local-1",
        max_ttl_s: int = 12 * 3600,
    ) -> None:
        if algorithm not in _ASYMMETRIC + _SYMMETRIC:
            raise ValueError(f"unsupported algorithm {algorithm!r}; use one of {_ASYMMETRIC + _SYMMETRIC}")
        if algorithm in _SYMMETRIC and (not isinstance(key, bytes) or len(key) < 32):
            raise ValueError("an HS256 secret must be bytes of length >= 32")
        self.issuer = issuer
        self.audience = audience
        self.algorithm = algorithm
        self.key_id = key_id
        self.max_ttl_s = max_ttl_s
        self._key = key

    def issue(
        self,
        subject: str,
        role: Role,
        communes: Collection[str],
        *,
        now: datetime,
        crew_id: str | None = None,
        tenant: Tenant = "live",
        ttl_s: int = 900,
        token_id: str | None = None,
    ) -> str:
        """A signed token for ``subject``; ``ttl_s`` seconds of validity from ``now``."""
        _require_aware(now, "now")
        if not 0 < ttl_s <= self.max_ttl_s:
            raise ValueError(f"ttl_s={ttl_s} must be in 1..{self.max_ttl_s}")
        claims = _validated_claims(
            subject=subject, role=Role(role), communes=communes, crew_id=crew_id, tenant=tenant
        )
        issued = int(now.timestamp())
        claims.update(
            {
                "iss": self.issuer,
                "aud": self.audience,
                "iat": issued,
                "nbf": issued,
                "exp": issued + ttl_s,
                "jti": token_id or uuid.uuid4().hex,
            }
        )
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.key_id})

    def verification_keys(self, public_key: Any = None) -> StaticKeys:
        """The :class:`StaticKeys` an :class:`Authenticator` needs for this issuer's tokens
        (pass the public key for asymmetric algorithms; HS256 reuses the secret)."""
        key = self._key if self.algorithm in _SYMMETRIC else public_key
        if key is None:
            raise ValueError(f"{self.algorithm} needs the public key to build verification keys")
        return StaticKeys(keys={self.key_id: key}, algorithms={self.key_id: self.algorithm})


def _validated_claims(
    *, subject: str, role: Role, communes: Collection[str], crew_id: str | None, tenant: str
) -> dict[str, Any]:
    if not subject or len(subject) > 128:
        raise ValueError(f"subject {subject!r} must be 1..128 characters")
    if tenant not in _TENANTS:
        raise ValueError(f"tenant {tenant!r} must be one of {sorted(_TENANTS)}")
    if role is Role.trainer and tenant != "simulation":
        raise ValueError("a trainer token must be for the 'simulation' tenant")
    if role is Role.crew and not crew_id:
        raise ValueError("a crew token needs crew_id")
    if role is not Role.crew and crew_id is not None:
        raise ValueError(f"crew_id is only for crew tokens, not {role.value}")
    names = sorted(set(communes))
    if any(not isinstance(c, str) or not c for c in names):
        raise ValueError(f"communes {names!r} must be non-empty strings")
    return {"sub": subject, "role": role.value, "communes": names, "crew_id": crew_id, "tenant": tenant}


class Authenticator:
    """Verifies tokens and returns :class:`Principal`; every failure is an :class:`AuthError`.

    ``tenant``: the one tenant this server serves (``"live"`` or ``"simulation"``); tokens of the
    other tenant are refused (``wrong_tenant``), so a trainer's token never reaches a live server
    even for the role-only checks that carry no object. ``None`` accepts both (tests, tools).

    Time checks (``exp``, ``nbf``, ``iat``) use ``clock`` (tests freeze it), with ``leeway_s``
    of tolerance for clock skew between issuer and server.
    """

    def __init__(
        self,
        *,
        keys: KeySource,
        issuer: str,
        audience: str,
        revocations: RevocationList,
        clock: Clock,
        algorithms: Collection[str] = ("EdDSA", "ES256", "RS256", "HS256"),
        leeway_s: int = 30,
        max_lifetime_s: int = 12 * 3600,
        tenant: Tenant | None = None,
    ) -> None:
        if tenant is not None and tenant not in _TENANTS:
            raise ValueError(f"tenant {tenant!r} must be one of {sorted(_TENANTS)}")
        self.tenant = tenant
        self._keys = keys
        self.issuer = issuer
        self.audience = audience
        self.revocations = revocations
        self._clock = clock
        self._algorithms = tuple(algorithms)
        self._leeway = timedelta(seconds=leeway_s)
        self._max_lifetime = timedelta(seconds=max_lifetime_s)
        # token -> (kid, alg, key, claims) of a verified signature: a tablet or a VMS posts with
        # the same token for hours, and the signature check is most of a request's auth cost.
        # The time claims, the tenant and the revocation list are checked at every use, and the
        # key is looked up again (a rotated-out key stops its tokens at once).
        self._verified: dict[str, tuple[str | None, str, Any, dict[str, Any]]] = {}

    def verify(self, token: str) -> Principal:
        """The principal of a valid token, else :class:`AuthError` naming the reason."""
        if not token or len(token) > 8192:
            raise AuthError(AuthFailure.malformed, "token is empty or longer than 8192 characters")
        cached = self._verified.get(token)
        if cached is not None:
            if cached[1] in self._algorithms and self._keys.key_for(cached[0], cached[1]) is cached[2]:
                return self._principal(cached[3])
            self._verified.pop(token, None)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(AuthFailure.malformed, f"unreadable token header ({exc})") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError(AuthFailure.bad_signature, f"algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        key = self._keys.key_for(kid if isinstance(kid, str) else None, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                # time claims are checked below against the injected clock
                options={
                    "require": ["iss", "aud", "sub", "exp", "iat", "nbf", "jti"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError as exc:
            raise AuthError(AuthFailure.wrong_audience, f"audience is not {self.audience!r}") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError(AuthFailure.wrong_issuer, f"issuer is not {self.issuer!r}") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(AuthFailure.missing_claim, f"claim {exc.claim!r} is missing") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError(AuthFailure.bad_signature, "signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(AuthFailure.malformed, str(exc)) from exc
        principal = self._principal(claims)
        if len(self._verified) >= 4096:  # bounded: tokens expire, a dict of them need not
            self._verified.clear()
        self._verified[token] = (kid if isinstance(kid, str) else None, alg, key, claims)
        return principal

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        now = self._clock()
        exp = _time_claim(claims, "exp")
        nbf = _time_claim(claims, "nbf")
        iat = _time_claim(claims, "iat")
        if now >= exp + self._leeway:
            raise AuthError(AuthFailure.expired, f"token expired at {exp.isoformat()}")
        if now < nbf - self._leeway or now < iat - self._leeway:
            raise AuthError(AuthFailure.not_yet_valid, f"token not valid before {nbf.isoformat()}")
        if exp - iat > self._max_lifetime:
            raise AuthError(AuthFailure.bad_claim, f"token lifetime exceeds {self._max_lifetime}")
        raw_role = claims.get("role")
        try:
            role = Role(str(raw_role))
        except ValueError as exc:
            raise AuthError(
                AuthFailure.unknown_role, f"role {raw_role!r} is not one of {list(Role)}"
            ) from exc
        communes = claims.get("communes", [])
        if not isinstance(communes, list) or not all(isinstance(c, str) and c for c in communes):
            raise AuthError(AuthFailure.bad_claim, "claim 'communes' must be a list of names")
        tenant = claims.get("tenant", "live")
        crew_id = claims.get("crew_id")
        subject = claims["sub"]
        token_id = claims["jti"]
        if not isinstance(subject, str) or not isinstance(token_id, str):
            raise AuthError(AuthFailure.bad_claim, "claims 'sub' and 'jti' must be strings")
        try:
            _validated_claims(subject=subject, role=role, communes=communes, crew_id=crew_id, tenant=tenant)
        except ValueError as exc:
            raise AuthError(AuthFailure.bad_claim, str(exc)) from exc
        if self.tenant is not None and tenant != self.tenant:
            raise AuthError(
                AuthFailure.wrong_tenant, f"token is for tenant {tenant!r}, this server is {self.tenant!r}"
            )
        if self.revocations.is_revoked(token_id, subject=subject, issued_at=iat, now=now):
            raise AuthError(AuthFailure.revoked, f"token {token_id} of {subject!r} is revoked")
        return Principal(
            subject=subject,
            role=role,
            communes=frozenset(communes),
            crew_id=crew_id,
            tenant="simulation" if tenant == "simulation" else "live",
            token_id=token_id,
            expires_at=exp,
        )

    def revoke(self, principal: Principal) -> None:
        """Revoke the token a principal came from (logout, or a supervisor's decision)."""
        expires = principal.expires_at or self._clock() + self._max_lifetime
        self.revocations.revoke(principal.token_id, expires_at=expires)


def _time_claim(claims: Mapping[str, Any], name: str) -> datetime:
    from datetime import UTC

    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(AuthFailure.bad_claim, f"claim {name!r} must be a number, got {value!r}")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise AuthError(AuthFailure.bad_claim, f"claim {name!r}={value!r} is out of range") from exc


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}={value!r} must be timezone-aware")


# ---------------------------------------------------------------------------------------------
# Policy


_OPERATIONS = frozenset(
    {
        Action.open_incident,
        Action.close_incident,
        Action.read_incident,
        Action.subscribe_incident,
        Action.post_sighting,
        Action.operator_approve,
        Action.operator_modify,
        Action.operator_retract,
        Action.read_crews,
        Action.read_cameras,
        Action.post_crew_status,
    }
)
_CREW_OWN = frozenset(
    {
        Action.subscribe_crew,
        Action.post_crew_position,
        Action.post_crew_status,
        Action.crew_accept,
        Action.crew_decline,
        Action.crew_in_position,
        Action.crew_contact,
    }
)


@dataclass(frozen=True)
class Policy:
    """Pure access decisions. ``MATRIX[role]`` is what a role may ever do (else 403); then the
    resource must be visible to the principal (else 404): same tenant, a shared commune, and for
    a crew token its own unit.

    Role summary (docs/security.md has the full table):

    * crew: its own unit only (position, status, accept/decline, in position, contact,
      its own suggestion stream); reads the incidents of its communes.
    * operator: incidents, sightings, decisions and crews of its authorised communes.
    * supervisor: as operator, plus sharing incidents across communes, legal holds, audit, export.
    * trainer: as supervisor's operational rights plus simulation control, in the simulation tenant only.
    * admin: users, token revocation, retention settings and purges; no incident data.
    """

    MATRIX: Mapping[Role, frozenset[Action]] = field(
        default_factory=lambda: {
            Role.crew: _CREW_OWN | {Action.read_incident},
            Role.operator: _OPERATIONS,
            Role.supervisor: _OPERATIONS
            | {
                Action.share_incident,
                Action.legal_hold,
                Action.release_hold,
                Action.read_audit,
                Action.export,
            },
            Role.trainer: _OPERATIONS | _CREW_OWN | {Action.share_incident, Action.sim_control},
            Role.admin: frozenset(
                {Action.manage_users, Action.revoke_token, Action.set_retention, Action.purge}
            ),
        }
    )

    def allowed(self, principal: Principal, action: Action) -> bool:
        """May this principal's role ever perform ``action`` (regardless of the object)?"""
        if principal.role is Role.trainer and principal.tenant != "simulation":
            return False
        return action in self.MATRIX.get(principal.role, frozenset())

    def can_view_commune(self, principal: Principal, commune: str | None) -> bool:
        """May the principal see data of ``commune``? ``None`` (no commune) is visible only to
        principals authorised for every commune."""
        if principal.sees_all_communes():
            return True
        return commune is not None and commune in principal.communes

    def can_act_on_crew(self, principal: Principal, crew_id: str, crew_commune: str | None) -> bool:
        """A crew token acts on its own unit only; others on crews of their communes."""
        if principal.role is Role.crew:
            return crew_id == principal.crew_id
        return self.can_view_commune(principal, crew_commune)

    def decide(self, principal: Principal, action: Action, resource: Resource | None = None) -> Decision:
        """403 if the role may never do ``action``; 404 if ``resource`` is not visible; else allow."""
        if not self.allowed(principal, action):
            return Decision.forbidden
        if resource is None:
            return Decision.allow
        if resource.tenant != principal.tenant:
            return Decision.not_found
        if resource.crew_id is not None and action in _CREW_OWN | {Action.read_crews}:
            commune = min(resource.communes) if resource.communes else None
            if principal.role is Role.trainer:
                return Decision.allow
            ok = self.can_act_on_crew(principal, resource.crew_id, commune)
            return Decision.allow if ok else Decision.not_found
        if principal.role is Role.crew and action in _CREW_OWN:
            return Decision.not_found  # a crew action on no crew at all
        if principal.sees_all_communes():
            return Decision.allow
        if resource.communes & principal.communes:
            return Decision.allow
        return Decision.not_found


DEFAULT_POLICY = Policy()


def check(
    principal: Principal, action: Action, resource: Resource | None = None, *, policy: Policy = DEFAULT_POLICY
) -> None:
    """Raise :class:`Forbidden` (403) or :class:`NotVisible` (404) unless allowed."""
    decision = policy.decide(principal, action, resource)
    if decision is Decision.forbidden:
        raise Forbidden(f"role {principal.role.value} may not {action.value}")
    if decision is Decision.not_found:
        raise NotVisible("not found")


def visible_or_404(
    principal: Principal, action: Action, resource: Resource | None, *, policy: Policy = DEFAULT_POLICY
) -> None:
    """For HTTP handlers: :func:`check` translated to ``HTTPException`` 403/404. An object the
    principal may not see (or that does not exist: pass ``resource=None`` after a failed lookup
    only when the role is allowed) answers the same 404, so its existence does not leak."""
    try:
        check(principal, action, resource, policy=policy)
    except Forbidden as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc
    except NotVisible as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found") from exc


# ---------------------------------------------------------------------------------------------
# FastAPI dependencies


def token_from_request(authorization: str | None, query_token: str | None) -> str:
    """The bearer token from an ``Authorization`` header or a ``?token=`` query parameter."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError(AuthFailure.malformed, "Authorization header must be 'Bearer <token>'")
        return value.strip()
    if query_token:
        return query_token
    raise AuthError(AuthFailure.missing_token, "no bearer token (Authorization header or ?token=)")


def bearer_principal(authenticator: Authenticator) -> Callable[[Request], Principal]:
    """Dependency: the principal of an HTTP request's ``Authorization: Bearer`` token (401 otherwise)."""

    def dependency(request: Request) -> Principal:
        try:
            token = token_from_request(request.headers.get("authorization"), None)
            return authenticator.verify(token)
        except AuthError as exc:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=f"invalid token: {exc.failure.value}",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from exc

    return dependency


def websocket_principal(authenticator: Authenticator) -> Callable[[WebSocket], Awaitable[Principal]]:
    """Dependency for websocket routes: token from ``?token=`` or the ``Authorization`` header;
    refused tokens close the socket with 1008 (policy violation) before it is accepted."""

    async def dependency(websocket: WebSocket) -> Principal:
        try:
            token = token_from_request(
                websocket.headers.get("authorization"), websocket.query_params.get("token")
            )
            return authenticator.verify(token)
        except AuthError as exc:
            raise WebSocketException(
                code=status.WS_1008_POLICY_VIOLATION, reason=f"invalid token: {exc.failure.value}"
            ) from exc

    return dependency


def require_action(
    authenticator: Authenticator, action: Action, *, policy: Policy = DEFAULT_POLICY
) -> Callable[[Request], Principal]:
    """Dependency: an authenticated principal whose role may perform ``action`` (401, then 403).
    Object visibility (404) is checked in the handler with :func:`visible_or_404`."""
    authenticate = bearer_principal(authenticator)

    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        if not policy.allowed(principal, action):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"role {principal.role.value} may not {action.value}"
            )
        return principal

    return dependency


def require_role(authenticator: Authenticator, *roles: Role) -> Callable[[Request], Principal]:
    """Dependency: an authenticated principal with one of ``roles`` (401, then 403)."""
    authenticate = bearer_principal(authenticator)
    wanted = frozenset(roles)

    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        if principal.role not in wanted:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"role {principal.role.value} not allowed")
        return principal

    return dependency
