"""Access control on the real server: every role against every REST endpoint and websocket message
type (expectations derived from :class:`serving.auth.Policy`), commune isolation (404, never 403),
the tenant wall, size limits (413, 1009), and schemathesis over the OpenAPI (no 5xx)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from starlette.websockets import WebSocketDisconnect
from test_server_support import SECRET, city_for_tests, free_port

from server import create_app
from serving.auth import Action, Policy, Principal, Role, TokenIssuer
from serving.config import ServerConfig

pytestmark = pytest.mark.timeout(300)

HOME = "Metz-Centre"
OTHER = "Woippy"
POLICY = Policy()


def issuer() -> TokenIssuer:
    return TokenIssuer(issuer="cordon-local", audience="cordon", key=SECRET, algorithm="HS256")


def token(role: Role, communes: list[str], *, crew_id: str | None = None, tenant: str = "live") -> str:
    now = datetime.now(UTC)
    return issuer().issue(
        f"{role.value}-{'-'.join(communes)}",
        role,
        communes,
        now=now,
        crew_id=crew_id,
        tenant=tenant,  # type: ignore[arg-type]
        ttl_s=3600,
    )


def principal_for(role: Role) -> Principal:
    tenant = "simulation" if role is Role.trainer else "live"
    return Principal("x", role, frozenset({HOME}), "C-01" if role is Role.crew else None, tenant, "j")  # type: ignore[arg-type]


ROLE_TOKENS: dict[Role, dict[str, Any]] = {
    Role.crew: {"communes": [HOME], "crew_id": "C-01"},
    Role.operator: {"communes": [HOME]},
    Role.supervisor: {"communes": [HOME]},
    Role.trainer: {"communes": ["*"], "tenant": "simulation"},
    Role.admin: {"communes": ["*"]},
}


def headers(role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role, **ROLE_TOKENS[role])}"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    config = ServerConfig(audit_db="memory", token_secret=SECRET, demo=False)
    app = create_app(config, city=city_for_tests())
    with TestClient(app) as c:
        sup = {"Authorization": f"Bearer {token(Role.supervisor, ['*'])}"}
        for incident, commune in (("INC-HOME", HOME), ("INC-OTHER", OTHER)):
            r = c.post("/api/incidents", json={"incident_id": incident, "commune": commune}, headers=sup)
            assert r.status_code == 201, r.text
        yield c


def camera(client: TestClient) -> str:
    city = client.app.state.city  # type: ignore[attr-defined]
    return sorted(city.cameras.cameras)[0]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    action: Action
    body: Any = None


def endpoints(client: TestClient) -> list[Endpoint]:
    now = datetime.now(UTC).isoformat()
    return [
        Endpoint(
            "POST", "/api/incidents", Action.open_incident, {"incident_id": "INC-NEW-{role}", "commune": HOME}
        ),
        Endpoint("GET", "/api/incidents", Action.read_incident),
        Endpoint("GET", "/api/incidents/INC-HOME", Action.read_incident),
        Endpoint("GET", "/api/incidents/INC-HOME/state", Action.read_incident),
        Endpoint("POST", "/api/incidents/INC-HOME/share", Action.share_incident, {"communes": [OTHER]}),
        Endpoint(
            "POST",
            "/api/sightings",
            Action.post_sighting,
            {
                "incident_id": "INC-HOME",
                "camera_id": camera(client),
                "observed_at": now,
                "source_event_id": "ev-{role}",
            },
        ),
        Endpoint(
            "PUT", "/api/crews/C-01", Action.post_crew_position, {"lon": 6.17, "lat": 49.12, "commune": HOME}
        ),
        Endpoint("GET", "/api/crews", Action.read_crews),
        Endpoint("PUT", f"/api/communes/{HOME}/dispatch-mode", Action.operator_approve, {"mode": "direct"}),
        Endpoint("POST", "/api/sim/time", Action.sim_control, {"now": now}),
    ]


def _call(client: TestClient, endpoint: Endpoint, role: Role | None) -> Any:
    body = endpoint.body
    if body is not None and role is not None:
        body = json.loads(json.dumps(body).replace("{role}", role.value))
    return client.request(
        endpoint.method, endpoint.path, json=body, headers=headers(role) if role is not None else {}
    )


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.trainer])
def test_rest_authorisation_matrix(client: TestClient, role: Role) -> None:
    """401 without a token; 403 exactly when the policy says the role may never do it; no 5xx."""
    failures = []
    for endpoint in endpoints(client):
        anonymous = _call(client, endpoint, None)
        if anonymous.status_code != 401:
            failures.append(f"{endpoint.method} {endpoint.path} anonymous -> {anonymous.status_code}")
        r = _call(client, endpoint, role)
        allowed = POLICY.allowed(principal_for(role), endpoint.action)
        if r.status_code >= 500:
            failures.append(f"{endpoint.method} {endpoint.path} {role} -> {r.status_code}")
        elif allowed and r.status_code in (401, 403):
            failures.append(f"{endpoint.method} {endpoint.path} {role} allowed but got {r.status_code}")
        elif (
            not allowed
            and r.status_code != 403
            and not (
                endpoint.action is Action.sim_control and r.status_code == 409  # wall-clock server
            )
        ):
            failures.append(f"{endpoint.method} {endpoint.path} {role} forbidden but got {r.status_code}")
    assert not failures, "\n".join(failures)


def test_trainer_tokens_get_nothing_from_a_live_server(client: TestClient) -> None:
    failures = []
    for endpoint in endpoints(client):
        r = _call(client, endpoint, Role.trainer)
        if r.status_code < 400 or r.status_code >= 500:
            failures.append(f"{endpoint.method} {endpoint.path} trainer -> {r.status_code}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("role", [Role.operator, Role.supervisor])
def test_another_communes_incident_answers_404_like_a_missing_one(client: TestClient, role: Role) -> None:
    h = headers(role)
    now = datetime.now(UTC).isoformat()
    for incident in ("INC-OTHER", "INC-DOES-NOT-EXIST"):
        calls = [
            client.get(f"/api/incidents/{incident}", headers=h),
            client.get(f"/api/incidents/{incident}/state", headers=h),
            client.post(f"/api/incidents/{incident}/close", headers=h),
            client.post(
                "/api/sightings",
                json={
                    "incident_id": incident,
                    "camera_id": camera(client),
                    "observed_at": now,
                    "source_event_id": f"ev-x-{role}",
                },
                headers=h,
            ),
        ]
        if role is Role.supervisor:
            calls.append(
                client.post(f"/api/incidents/{incident}/share", json={"communes": [HOME]}, headers=h)
            )
        for r in calls:
            assert r.status_code == 404, (incident, r.request.url, r.status_code, r.text)
            assert r.json()["code"] == "unknown_incident"
    listed = {i["incident_id"] for i in client.get("/api/incidents", headers=h).json()}
    assert "INC-HOME" in listed and "INC-OTHER" not in listed


def test_crew_acts_for_its_own_unit_only(client: TestClient) -> None:
    h = headers(Role.crew)  # crew C-01
    assert client.put("/api/crews/C-01", json={"lon": 6.17, "lat": 49.12}, headers=h).status_code == 200
    r = client.put("/api/crews/C-02", json={"lon": 6.17, "lat": 49.12, "commune": HOME}, headers=h)
    assert r.status_code == 404


def test_operator_cannot_move_another_communes_crew(client: TestClient) -> None:
    other_crew = {"Authorization": f"Bearer {token(Role.crew, [OTHER], crew_id='W-07')}"}
    assert (
        client.put(
            "/api/crews/W-07", json={"lon": 6.17, "lat": 49.12, "commune": OTHER}, headers=other_crew
        ).status_code
        == 200
    )
    crews = client.get("/api/crews", headers=headers(Role.operator)).json()
    assert "W-07" not in {c["crew_id"] for c in crews}


def test_tampered_or_expired_tokens_are_refused(client: TestClient) -> None:
    good = token(Role.operator, [HOME])
    head, body, sig = good.split(".")
    forged = f"{head}.{body}.{sig[::-1]}"
    old = issuer().issue("op", Role.operator, [HOME], now=datetime.now(UTC) - timedelta(hours=2), ttl_s=600)
    for bad in (forged, old, "garbage"):
        r = client.get("/api/incidents", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401


# -- websockets -------------------------------------------------------------------------------


def _closed_code(client: TestClient, path: str) -> int | None:
    try:
        with client.websocket_connect(path) as ws:
            ws.receive_json()
            ws.receive_json()
    except WebSocketDisconnect as exc:
        return exc.code
    return None


def test_websocket_sockets_check_the_role(client: TestClient) -> None:
    op = token(Role.operator, [HOME])
    crew = token(Role.crew, [HOME], crew_id="C-01")
    assert _closed_code(client, f"/ws/crew?token={op}") == 1008
    assert _closed_code(client, f"/ws/operator?token={crew}") == 1008
    assert _closed_code(client, "/ws/operator?token=garbage") == 1008
    admin = token(Role.admin, ["*"])
    assert _closed_code(client, f"/ws/operator?token={admin}") == 1008


CREW_MESSAGES = [
    {"type": "position", "lon": 6.17, "lat": 49.12},
    {"type": "status", "status": "busy"},
    {"type": "accept", "suggestion_id": "S-unknown"},
    {"type": "decline", "suggestion_id": "S-unknown", "reason": "blocked"},
    {"type": "in_position", "suggestion_id": "S-unknown"},
    {"type": "contact", "incident_id": "INC-HOME"},
    {"type": "resume", "last_seq": 0},
]
OPERATOR_ONLY = [
    {"type": "approve", "suggestion_id": "S-unknown"},
    {"type": "modify", "suggestion_id": "S-unknown", "lon": 6.17, "lat": 49.12},
    {"type": "retract", "suggestion_id": "S-unknown"},
]


def _replies(ws: Any) -> list[dict[str, Any]]:
    out = []
    for _ in range(20):
        msg = ws.receive_json()
        out.append(msg)
        if msg.get("type") == "error":
            break
    return out


def test_crew_socket_message_types(client: TestClient) -> None:
    crew = token(Role.crew, [HOME], crew_id="C-01")
    with client.websocket_connect(f"/ws/crew?token={crew}") as ws:
        assert ws.receive_json()["type"] == "snapshot"
        for message in OPERATOR_ONLY:  # an operator's decision from a tablet: not a crew message
            ws.send_text(json.dumps(message))
            errors = [m for m in _replies(ws) if m["type"] == "error"]
            assert errors and errors[0]["code"] == "invalid_message", (message, errors)
        for message in CREW_MESSAGES[2:5]:  # decisions on a suggestion that is not the crew's
            ws.send_text(json.dumps(message))
            errors = [m for m in _replies(ws) if m["type"] == "error"]
            assert errors and errors[0]["code"] in {"unknown_suggestion", "not_your_suggestion"}, errors


def test_operator_socket_commune_isolation(client: TestClient) -> None:
    op = token(Role.operator, [HOME])
    with client.websocket_connect(f"/ws/operator?token={op}") as ws:
        snapshot = ws.receive_json()
        assert snapshot["type"] == "snapshot"
        assert "INC-OTHER" not in {i["incident_id"] for i in snapshot.get("incidents", [])}
        ws.send_text(
            json.dumps(
                {
                    "type": "sighting",
                    "incident_id": "INC-OTHER",
                    "camera_id": camera(client),
                    "observed_at": datetime.now(UTC).isoformat(),
                    "source_event_id": "ev-ws-1",
                }
            )
        )
        errors = [m for m in _replies(ws) if m["type"] == "error"]
        assert errors and errors[0]["code"] == "unknown_incident"
        for message in CREW_MESSAGES[:2]:  # crew messages on the operator socket
            ws.send_text(json.dumps(message))
            errors = [m for m in _replies(ws) if m["type"] == "error"]
            assert errors and errors[0]["code"] == "invalid_message"


# -- a real uvicorn server: frame and body limits, schemathesis -------------------------------


@dataclass
class Live:
    base: str
    config: ServerConfig


@pytest.fixture(scope="module")
def live_server() -> Iterator[Live]:
    port = free_port()
    config = ServerConfig(
        audit_db="memory", token_secret=SECRET, demo=False, port=port, max_body_bytes=64_000
    )
    app = create_app(config, city=city_for_tests())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_max_size=config.ws_max_size)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield Live(f"http://127.0.0.1:{port}", config)
    server.should_exit = True
    thread.join(20)


def test_websocket_frame_over_the_limit_closes_1009(live_server: Live) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    crew = token(Role.crew, [HOME], crew_id="C-09")
    url = live_server.base.replace("http", "ws") + f"/ws/crew?token={crew}"

    async def run() -> int | None:
        async with connect(url, max_size=None) as ws:
            await ws.recv()
            await ws.send(
                json.dumps(
                    {"type": "status", "status": "busy", "pad": "x" * (live_server.config.ws_max_size + 10)}
                )
            )
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None
        return None

    assert asyncio.run(run()) == 1009


def test_request_bodies_over_the_limit_get_413(live_server: Live) -> None:
    import httpx

    h = headers(Role.operator)
    big = b'{"incident_id": "INC-BIG", "commune": "' + b"x" * 100_000 + b'"}'
    r = httpx.post(
        f"{live_server.base}/api/incidents", content=big, headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 413


def test_streamed_request_bodies_over_the_limit_get_413(live_server: Live) -> None:
    import httpx

    h = headers(Role.operator)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
        yield b'{"incident_id": "INC-BIG2", "description": "'
        for _ in range(20):
            yield b"y" * 10_000
        yield b'"}'

    r = httpx.post(
        f"{live_server.base}/api/incidents",
        content=chunks(),
        headers={**h, "content-type": "application/json"},
    )
    assert r.status_code == 413, r.text


def _openapi() -> dict[str, Any]:
    return create_app(ServerConfig(audit_db="memory", token_secret=SECRET, demo=False)).openapi()


def _schema() -> Any:
    import schemathesis

    return schemathesis.openapi.from_dict(_openapi())


schema = _schema()


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_openapi_no_server_errors(case: Any, live_server: Live) -> None:
    from schemathesis.checks import not_a_server_error

    for role in (Role.operator, Role.crew):
        case.call_and_validate(base_url=live_server.base, headers=headers(role), checks=[not_a_server_error])
