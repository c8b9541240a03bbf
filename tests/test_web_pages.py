"""The three web pages against the real server, driven in Debian's chromium by Playwright.

* an operator opens an incident and records sightings by clicking cameras on the console map;
  a crew tablet receives the resulting suggestion, accepts it, reports "in position", and the
  console shows that crew in position;
* a tablet whose link drops keeps its plan on screen under a "HORS LIGNE" overlay; a retraction
  made meanwhile reaches it on reconnection (resume from its last sequence number) as "ANNULÉ";
* the trainer's page plays a simulator replay file and shows the outcome figures.

The server is the embedded default (``uvicorn server:create_app --factory``: generated city, demo
token endpoint) in a subprocess on a free port. Set ``CORDON_SCREENSHOTS=docs/screenshots`` to
refresh the documentation's screenshots; otherwise they go to a temporary directory.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CORDON_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TABLET = {"width": 1280, "height": 800}
DESK = {"width": 1920, "height": 1080}
WAIT_MS = 20_000

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

playwright_sync = pytest.importorskip("playwright.sync_api")


# ---------------------------------------------------------------------------------------------
# The real server in a subprocess


@dataclass
class Server:
    url: str
    client: httpx.Client
    cameras: dict[str, tuple[float, float]]

    def token(self, role: str, crew_id: str | None = None) -> str:
        params = {"role": role}
        if crew_id:
            params["crew_id"] = crew_id
        response = self.client.get("/api/dev/tokens", params=params)
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    def put_crew(self, crew_id: str, lon: float, lat: float, *, status: str = "available") -> None:
        token = self.token("crew", crew_id)
        response = self.client.put(
            f"/api/crews/{crew_id}",
            json={"lon": lon, "lat": lat, "status": status},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (ROOT / "node_modules" / "leaflet" / "dist" / "leaflet.js").is_file():
        pytest.fail("Leaflet is missing: run `npm ci` at the repository root (see README)")
    if not CHROMIUM.exists():
        pytest.fail(f"no chromium at {CHROMIUM}: run scripts/setup.sh --test (or set CORDON_CHROMIUM)")
    port = _free_port()
    data = tmp_path_factory.mktemp("server-data")
    env = dict(os.environ, CORDON_DATA_DIR=str(data), PYTHONUNBUFFERED="1")
    log = (data / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "server:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=10)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited ({proc.returncode}): {(data / 'server.log').read_text()[-3000:]}")
            try:
                if client.get("/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after 90 s: {(data / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        operator = client.get("/api/dev/tokens", params={"role": "operator"}).json()["token"]
        features = client.get(
            "/api/map/cameras.geojson", headers={"Authorization": f"Bearer {operator}"}
        ).json()["features"]
        cameras = {f["properties"]["camera_id"]: tuple(f["geometry"]["coordinates"]) for f in features}
        yield Server(url, client, cameras)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("CORDON_SCREENSHOTS")
    path = (ROOT / target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _watch_errors(page: Any, errors: list[str]) -> None:
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    kx = 111_320 * math.cos(math.radians((a[1] + b[1]) / 2))
    return math.hypot((a[0] - b[0]) * kx, (a[1] - b[1]) * 111_320)


def _camera_pair(server: Server, near: tuple[float, float]) -> tuple[str, str]:
    """The camera nearest ``near`` and the next camera 120-400 m from it (a plausible handoff)."""
    first = min(server.cameras, key=lambda c: _metres(server.cameras[c], near))
    second = min(
        (c for c in server.cameras if 120 <= _metres(server.cameras[c], server.cameras[first]) <= 400),
        key=lambda c: _metres(server.cameras[c], server.cameras[first]),
    )
    return first, second


def _city_box(server: Server) -> tuple[float, float, float, float]:
    lons = [p[0] for p in server.cameras.values()]
    lats = [p[1] for p in server.cameras.values()]
    return min(lons), min(lats), max(lons), max(lats)


def _only_free(server: Server, crews: dict[str, tuple[float, float]]) -> None:
    """Place ``crews`` (available) and mark every other crew busy (the demo's parked crews, the
    other tests' crews), so the plan can only go to the tablets under test."""
    operator = {"Authorization": f"Bearer {server.token('operator')}"}
    for other in server.client.get("/api/crews", headers=operator).json():
        if other["crew_id"] not in crews and other["status"] != "busy":
            server.put_crew(other["crew_id"], other["lon"], other["lat"], status="busy")
    for crew_id, (lon, lat) in crews.items():
        server.put_crew(crew_id, lon, lat)


def _console_state(console: Any) -> str:
    """What the console knows, for a failure message."""
    return str(
        console.evaluate(
            "JSON.stringify({timeline: window.cordonConsole.state.timeline.map(e => e.text),"
            " suggestions: [...window.cordonConsole.state.suggestions.values()]"
            ".map(s => [s.suggestion_id, s.state, s.issued_at, s.expires_at]),"
            " plans: [...window.cordonConsole.state.plans.values()]})"
        )
    )


def _offset(p: tuple[float, float], east_m: float, north_m: float) -> tuple[float, float]:
    return (p[0] + east_m / (111_320 * math.cos(math.radians(p[1]))), p[1] + north_m / 111_320)


# ---------------------------------------------------------------------------------------------
# Operator → crew → operator


def test_operator_sightings_reach_a_crew_that_accepts_and_the_console_shows_it_in_position(
    server: Server, browser: Any, shots: Path
) -> None:
    errors: list[str] = []
    x0, y0, x1, y1 = _city_box(server)
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    first, second = _camera_pair(server, centre)
    crews = {
        "PS-11": _offset(server.cameras[first], 700, 450),
        "PS-12": _offset(server.cameras[first], -650, -500),
    }
    _only_free(server, crews)

    tablets = browser.new_context(viewport=TABLET)
    pads = {}
    for crew_id in crews:
        pad = tablets.new_page()
        _watch_errors(pad, errors)
        pad.goto(f"{server.url}/crew?token={server.token('crew', crew_id)}")
        pads[crew_id] = pad
    for crew_id, pad in pads.items():
        pad.wait_for_selector('[data-testid="link-state"][data-state="online"]', timeout=WAIT_MS)
        assert pad.inner_text('[data-testid="crew-id"]') == crew_id
        assert pad.is_visible('[data-testid="idle"]')
        assert "token=" not in pad.url, "the token must not stay in the address bar"

    desk = browser.new_context(viewport=DESK)
    console = desk.new_page()
    _watch_errors(console, errors)
    console.goto(f"{server.url}/console?token={server.token('operator')}")
    console.wait_for_selector('[data-testid="link-state"][data-state="online"]', timeout=WAIT_MS)
    console.wait_for_function(
        "Number(document.querySelector('#map').dataset.cameras || 0) > 100", timeout=WAIT_MS
    )
    assert int(console.get_attribute("#map", "data-streets") or 0) > 1000

    # Open an incident where the suspect was first seen: "+ Nouvel incident", then click the map.
    console.click('[data-testid="new-incident"]')
    assert console.is_visible('[data-testid="mode-hint"]')
    lon, lat = server.cameras[first]
    console.evaluate(f"void window.cordonConsole.map.setView([{lat}, {lon}], 16, {{animate: false}})")
    point = console.evaluate(
        "([lat, lon]) => { const p = window.cordonConsole.map.latLngToContainerPoint([lat, lon]);"
        " return [p.x, p.y]; }",
        [lat, lon],
    )
    console.click("#map", position={"x": point[0] + 14, "y": point[1] + 14})
    console.wait_for_selector('[data-testid="incident-dialog"][open]')
    incident_id = f"INC-WEB-{uuid.uuid4().hex[:6]}"
    console.fill('[data-testid="incident-id-input"]', incident_id)
    console.click('[data-testid="incident-confirm"]')
    console.wait_for_selector(f'[data-testid="incident-{incident_id}"].selected', timeout=WAIT_MS)
    assert incident_id in console.inner_text('[data-testid="current-incident"]')

    # The core workflow: click the camera where the suspect is now seen, confirm, done.
    for n, camera in enumerate((first, second), start=1):
        console.click(f'[data-testid="camera-{camera}"]')
        dialog = console.locator('[data-testid="sighting-dialog"]')
        assert dialog.is_visible()
        assert console.inner_text('[data-testid="sighting-title"]') == f"Signalement à {camera}"
        if n == 2:
            console.click('[data-testid="sighting-dialog"] label:has-text("SO")')
        console.keyboard.press("Enter")
        console.wait_for_function(
            f"document.querySelectorAll('[data-testid=\"sighting-dot\"]').length >= {n}", timeout=WAIT_MS
        )
        if n == 1:
            time.sleep(1.5)  # a few seconds between the two handoffs, as on a real screen
    console.wait_for_selector(f'[data-testid="track-camera"]:has-text("{second}")', timeout=WAIT_MS)
    assert console.is_visible('[data-testid="track-marker"]')
    timeline = console.inner_text('[data-testid="timeline"]')
    assert f"Signalement {first}" in timeline and f"Signalement {second}" in timeline

    # A suggestion goes out to one of the crews; its tablet shows it.
    try:
        row = console.wait_for_selector(
            '[data-testid="suggestion-list"] li[data-state="sent"]', timeout=WAIT_MS
        )
    except playwright_sync.TimeoutError:
        pytest.fail(f"no suggestion sent; console state: {_console_state(console)}")
    crew_id = row.get_attribute("data-crew")
    suggestion_id = row.get_attribute("data-id")
    assert crew_id in pads, f"suggestion for unknown crew {crew_id}"
    pad = pads[crew_id]
    pad.wait_for_selector('[data-testid="mission"]:not(.hidden)', timeout=WAIT_MS)
    assert pad.get_attribute("body", "data-mission-state") == "proposed"
    target = pad.inner_text('[data-testid="target-name"]')
    assert target and target in row.inner_text()
    assert re.fullmatch(r"\d+:\d\d", pad.inner_text('[data-testid="crew-eta"]'))
    assert re.fullmatch(r"\d+:\d\d", pad.inner_text('[data-testid="suspect-eta"]'))
    assert re.fullmatch(r"-?\d+:\d\d", pad.inner_text('[data-testid="countdown"]'))
    assert pad.is_visible('[data-testid="target-marker"]')
    assert pad.is_disabled('[data-testid="btn-in-position"]')
    pad.wait_for_selector(f'[data-testid="last-sighting"]:has-text("{second}")', timeout=WAIT_MS)

    # Accept: the console sees it; then in position: the console shows the crew in position.
    pad.click('[data-testid="btn-accept"]')
    assert pad.get_attribute("body", "data-mission-state") == "accepted"
    console.wait_for_selector(
        f'[data-testid="suggestion-{suggestion_id}"][data-state="accepted"]', timeout=WAIT_MS
    )
    pad.click('[data-testid="btn-in-position"]')
    console.wait_for_selector(
        f'[data-testid="crew-row-{crew_id}"][data-state="in_position"]', timeout=WAIT_MS
    )
    assert "En position" in console.inner_text(f'[data-testid="crew-row-{crew_id}"]')
    assert console.is_visible(f'[data-testid="crew-marker-{crew_id}"][data-status="in_position"]')
    console.wait_for_selector(
        f'[data-testid="timeline"]:has-text("{crew_id} : en position")', timeout=WAIT_MS
    )
    assert f"{crew_id} : en position" in console.inner_text('[data-testid="timeline"]')

    # The horizon slider steps through the prediction's position horizons (60, 120, 300 and
    # 600 s; a far horizon whose every edge is below 2 % is left out), not through every
    # crossing's ETA.
    console.wait_for_function(
        "Number(document.querySelector('[data-testid=\"horizon-slider\"]').max) > 0", timeout=WAIT_MS
    )
    assert 1 <= int(console.get_attribute('[data-testid="horizon-slider"]', "max") or 0) <= 3

    pad.screenshot(path=str(shots / "crew-day.png"))
    pad.click('[data-testid="theme-toggle"]')
    assert pad.get_attribute("body", "data-theme") == "night"
    pad.screenshot(path=str(shots / "crew-night.png"))
    console.click('[data-testid="fit-incident"]')
    assert console.is_visible(f'[data-testid="crew-marker-{crew_id}"]')
    console.screenshot(path=str(shots / "console.png"))
    pad.click('[data-testid="theme-toggle"]')

    # The operator moves the target ("Modifier", then a click on the map): the tablet raises a
    # full-width "NOUVELLE DESTINATION" banner that stays until the crew acknowledges it.
    console.click(f'[data-testid="suggestion-{suggestion_id}"] [data-testid="modify"]')
    assert console.is_visible('[data-testid="mode-hint"]')
    box = console.locator("#map").bounding_box()
    console.click("#map", position={"x": box["width"] / 2 + 150, "y": box["height"] / 2 - 120})
    pad.wait_for_selector('[data-testid="banner"]:not(.hidden)', timeout=WAIT_MS)
    assert pad.inner_text('[data-testid="banner-title"]') == "NOUVELLE DESTINATION"
    assert pad.get_attribute("body", "data-mission-state") == "proposed"
    assert pad.inner_text('[data-testid="target-name"]') != target
    time.sleep(0.5)
    assert pad.is_visible('[data-testid="banner"]'), "the banner must wait for an acknowledgement"
    pad.emulate_media(reduced_motion="reduce")  # the steady banner colour, not a flash frame
    pad.screenshot(path=str(shots / "crew-new-destination.png"))
    pad.click('[data-testid="banner-ack"]')
    assert pad.is_hidden('[data-testid="banner"]')
    new_id = pad.evaluate("window.cordonCrew.state.suggestion.suggestion_id")
    assert new_id != suggestion_id
    console.wait_for_selector(
        f'[data-testid="suggestion-list"] li[data-id="{new_id}"][data-crew="{crew_id}"]', timeout=WAIT_MS
    )
    assert not errors, errors
    tablets.close()
    desk.close()


# ---------------------------------------------------------------------------------------------
# A dropped link


def test_a_page_without_a_valid_token_says_access_is_refused(server: Server, browser: Any) -> None:
    page = browser.new_page(viewport=TABLET)
    page.goto(f"{server.url}/crew?token=not-a-token")
    page.wait_for_selector('[data-testid="crew-error"]:not(.hidden)', timeout=WAIT_MS)
    assert "Accès refusé" in page.inner_text('[data-testid="crew-error"]')
    assert page.get_attribute('[data-testid="link-state"]', "data-state") == "offline"
    page.close()


def _post_sightings(server: Server, token: str, incident_id: str, cameras: tuple[str, str]) -> None:
    now = datetime.now(UTC)
    for i, camera in enumerate(cameras):
        response = server.client.post(
            "/api/sightings",
            json={
                "incident_id": incident_id,
                "camera_id": camera,
                "observed_at": (now - timedelta(seconds=20 * (len(cameras) - 1 - i))).isoformat(),
                "source_kind": "operator",
                "source_event_id": str(uuid.uuid4()),
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 202, response.text


def test_the_console_draws_the_routes_of_the_incident_it_shows_after_slim_plans(
    server: Server, browser: Any
) -> None:
    """Plans of incidents a console does not watch come without routes (``detail: false``);
    when the operator selects such an incident, the console fetches its state and draws its
    crews' routes."""
    errors: list[str] = []
    x0, y0, x1, y1 = _city_box(server)
    first, second = _camera_pair(server, (x0 + 0.75 * (x1 - x0), y0 + 0.3 * (y1 - y0)))
    _only_free(
        server,
        {
            "PS-31": _offset(server.cameras[first], 600, 400),
            "PS-32": _offset(server.cameras[first], -550, -450),
        },
    )
    desk = browser.new_context(viewport=DESK)
    console = desk.new_page()
    _watch_errors(console, errors)
    console.goto(f"{server.url}/console?token={server.token('operator')}")
    console.wait_for_selector('[data-testid="link-state"][data-state="online"]', timeout=WAIT_MS)
    operator = server.token("operator")
    shown, chased = (f"INC-SLIM-{name}-{uuid.uuid4().hex[:6]}" for name in ("A", "B"))
    auth = {"Authorization": f"Bearer {operator}"}
    lon, lat = server.cameras[first]

    def open_incident(incident_id: str) -> None:
        response = server.client.post(
            "/api/incidents", json={"incident_id": incident_id, "lon": lon, "lat": lat}, headers=auth
        )
        assert response.status_code == 201, response.text

    # The operator shows another incident (closed: it holds no crew) while the suspect of
    # ``chased`` is handed off.
    open_incident(shown)
    response = server.client.post(f"/api/incidents/{shown}/close", headers=auth)
    assert response.status_code == 200, response.text
    console.click(f'[data-testid="incident-{shown}"] [data-act="select"]')
    console.wait_for_selector(f'[data-testid="incident-{shown}"].selected', timeout=WAIT_MS)
    time.sleep(0.5)  # the console's watch message reaches the server before the plan
    open_incident(chased)
    _post_sightings(server, operator, chased, (first, second))
    routes_of = (
        "(id) => { const p = window.cordonConsole.state.plans.get(id);"
        " if (!p) return [];"
        " return p.suggestion_ids.map((s) => (window.cordonConsole.state.suggestions.get(s)"
        "?.route_lonlat || []).length); }"
    )
    try:
        console.wait_for_function(f"({routes_of})({json.dumps(chased)}).length > 0", timeout=WAIT_MS)
    except playwright_sync.TimeoutError:
        pytest.fail(f"no suggestion for {chased}; console state: {_console_state(console)}")
    slim = console.evaluate(f"({routes_of})({json.dumps(chased)})")
    assert all(n == 0 for n in slim), f"the unwatched incident's plan came with routes: {slim}"
    drawn = "document.querySelectorAll('.leaflet-routes-pane path').length"

    # The operator selects it: its routes come from its state and are drawn.
    console.click(f'[data-testid="incident-{chased}"] [data-act="select"]')
    console.wait_for_function(f"({routes_of})({json.dumps(chased)}).some((n) => n > 0)", timeout=WAIT_MS)
    console.wait_for_function(f"{drawn} >= 1", timeout=WAIT_MS)
    assert not errors, errors
    desk.close()


def test_a_dropped_link_keeps_the_plan_marked_stale_and_resumes_with_what_was_missed(
    server: Server, browser: Any, shots: Path
) -> None:
    errors: list[str] = []
    x0, y0, x1, y1 = _city_box(server)
    corner = (x0 + 0.25 * (x1 - x0), y0 + 0.75 * (y1 - y0))  # away from the first test's incident
    first, second = _camera_pair(server, corner)
    crew_id = "PS-21"
    _only_free(server, {crew_id: _offset(server.cameras[second], 450, -300)})

    context = browser.new_context(viewport=TABLET)
    pad = context.new_page()
    _watch_errors(pad, errors)
    pad.goto(f"{server.url}/crew?token={server.token('crew', crew_id)}")
    pad.wait_for_selector('[data-testid="link-state"][data-state="online"]', timeout=WAIT_MS)

    operator = server.token("operator")
    incident_id = f"INC-LINK-{uuid.uuid4().hex[:6]}"
    lon, lat = server.cameras[first]
    response = server.client.post(
        "/api/incidents",
        json={"incident_id": incident_id, "lon": lon, "lat": lat},
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert response.status_code == 201, response.text
    _post_sightings(server, operator, incident_id, (first, second))
    pad.wait_for_selector('[data-testid="mission"]:not(.hidden)', timeout=WAIT_MS)
    target = pad.inner_text('[data-testid="target-name"]')

    # The link drops: the plan stays, greyed, under "HORS LIGNE – plan du HH:MM:SS".
    context.set_offline(True)
    pad.wait_for_selector('[data-testid="stale-overlay"]:not(.hidden)', timeout=WAIT_MS)
    assert pad.get_attribute('[data-testid="link-state"]', "data-state") != "online"
    assert re.fullmatch(r"plan du \d\d:\d\d:\d\d", pad.inner_text('[data-testid="stale-text"]'))
    assert pad.is_visible('[data-testid="mission"]')
    assert pad.inner_text('[data-testid="target-name"]') == target
    assert "is-stale" in (pad.get_attribute("body", "class") or "")
    pad.screenshot(path=str(shots / "crew-offline.png"))

    # Meanwhile the operator retracts the suggestion (over the operator websocket).
    from websockets.sync.client import connect

    ws_url = server.url.replace("http://", "ws://") + f"/ws/operator?token={operator}"
    with connect(ws_url) as ws:
        snapshot = json.loads(ws.recv(timeout=10))
        assert snapshot["type"] == "snapshot"
        current = [
            s
            for s in snapshot["suggestions"]
            if s["crew_id"] == crew_id and s["state"] in ("sent", "accepted")
        ]
        assert len(current) == 1, snapshot["suggestions"]
        suggestion_id = current[0]["suggestion_id"]  # the plan may have moved on since the tablet showed it
        ws.send(json.dumps({"type": "retract", "suggestion_id": suggestion_id, "reason": "test de reprise"}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=10))
            if message["type"] == "error":
                pytest.fail(f"retract refused: {message}")
            if message["type"] == "suggestion" and message["suggestion"]["state"] == "retracted":
                break
        else:
            pytest.fail("the server never confirmed the retraction")

    # The link comes back: the tablet reconnects by itself and shows the retraction unmistakably.
    context.set_offline(False)
    pad.wait_for_selector('[data-testid="link-state"][data-state="online"]', timeout=WAIT_MS)
    pad.wait_for_selector('[data-testid="stale-overlay"].hidden', state="attached", timeout=WAIT_MS)
    pad.wait_for_function(
        "(id) => window.cordonCrew.state.history"
        ".some(h => h.event === 'retracted' && h.suggestion_id === id)",
        arg=suggestion_id,
        timeout=WAIT_MS,
    )
    assert pad.is_visible('[data-testid="banner"]')
    if pad.evaluate("window.cordonCrew.state.suggestion.suggestion_id") == suggestion_id:
        assert pad.inner_text('[data-testid="banner-title"]') == "ANNULÉ"
        assert pad.inner_text('[data-testid="mission-state"]') == "ANNULÉ"
        assert pad.is_disabled('[data-testid="btn-accept"]')
    else:  # the server re-planned after the retraction: the new target is announced instead
        assert pad.inner_text('[data-testid="banner-title"]') == "NOUVELLE DESTINATION"
    pad.click('[data-testid="banner-ack"]')
    assert pad.is_hidden('[data-testid="banner"]')
    assert not errors, errors
    context.close()


# ---------------------------------------------------------------------------------------------
# The trainer's page


def _handmade_replay(path: Path) -> Path:
    """A tiny replay in the documented format (sim/replay.py): the suspect drives east along
    three edges, crew C1 waits at the third crossing and intercepts it."""
    base = (6.17, 49.12)
    node = {i: _offset(base, 150 * i, 0) for i in range(4)}
    records: list[dict[str, Any]] = [
        {
            "type": "header",
            "format": "cordon-sim-replay",
            "format_version": 1,
            "versions": {"cordon": "test", "graph": "hand"},
            "map": "hand-drawn",
            "scenario": {},
            "seed": 1,
            "policy": "guidance",
            "incident_at": "2026-01-15T22:00:00+00:00",
            "duration_s": 600.0,
            "rules": {"intercept_wait_s": 10.0, "contact_m": 50.0},
            "origin": {"node": 0, "lon": node[0][0], "lat": node[0][1]},
            "exit_nodes": [3],
            "crews": [{"crew_id": "C1", "node": 2, "lon": node[2][0], "lat": node[2][1]}],
            "suspect_speed_factor": 1.4,
        },
        {"type": "wait", "agent": "C1", "node": 2, "t0": 0.0, "t1": None, "at": list(node[2])},
    ]
    for i in range(2):
        records.append(
            {
                "type": "move",
                "agent": "suspect",
                "edge": i,
                "u": i,
                "v": i + 1,
                "length_m": 150.0,
                "t0": 10.0 * i,
                "t1": 10.0 * (i + 1),
                "from": list(node[i]),
                "to": list(node[i + 1]),
            }
        )
    records += [
        {"type": "pass", "camera_id": "CAM-1", "edge": 0, "t": 5.0, "detected": True},
        {
            "type": "sighting",
            "n": 1,
            "camera_id": "CAM-1",
            "true_camera_id": "CAM-1",
            "wrong": False,
            "observed_t": 5.0,
            "t": 8.0,
            "at": list(node[1]),
        },
        {
            "type": "suggestion",
            "crew_id": "C1",
            "target_node": 2,
            "plan_version": 1,
            "t": 9.0,
            "at": list(node[2]),
        },
        {
            "type": "outcome",
            "kind": "interception",
            "t": 20.0,
            "node": 2,
            "crew_id": "C1",
            "contacts": 0,
            "crew_km": 0.0,
            "suggestion_changes": 0,
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _scrub(page: Any, fraction: float) -> None:
    """Move the replay's time slider to ``fraction`` of the run, as a user would (an ``input`` event)."""
    page.evaluate(
        "(f) => { const s = document.querySelector('[data-testid=scrub]');"
        " s.value = String(Number(s.max) * f); s.dispatchEvent(new Event('input')); }",
        fraction,
    )


def test_trainer_plays_a_replay_and_shows_the_outcome(
    server: Server, browser: Any, shots: Path, tmp_path: Path
) -> None:
    errors: list[str] = []
    page = browser.new_page(viewport=DESK)
    _watch_errors(page, errors)
    page.goto(f"{server.url}/trainer?token={server.token('trainer')}")
    page.set_input_files('[data-testid="replay-file"]', str(_handmade_replay(tmp_path / "run.jsonl")))
    page.wait_for_selector('body[data-replay="loaded"]', timeout=WAIT_MS)
    assert page.inner_text('[data-testid="outcome-kind"]') == "Interception"
    assert "hand-drawn" in page.inner_text('[data-testid="replay-info"]')
    assert page.inner_text('[data-testid="clock"]') == "T+0:00 / 0:20"
    assert "Signalement CAM-1" in page.inner_text('[data-testid="events"]')

    # Scrub to the middle: the suspect is drawn between the first two crossings.
    _scrub(page, 0.25)
    assert page.inner_text('[data-testid="clock"]') == "T+0:05 / 0:20"
    assert page.is_visible('[data-testid="sim-suspect"]')
    assert page.is_visible('[data-testid="sim-crew-C1"]')

    # Play at ×30: the run ends and playback stops by itself at the outcome.
    page.select_option('[data-testid="speed"]', "30")
    page.click('[data-testid="play"]')
    page.wait_for_selector('body[data-playing="false"]', timeout=WAIT_MS)
    assert page.inner_text('[data-testid="clock"]') == "T+0:20 / 0:20"

    # A file that is not a replay is refused with a precise message.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "move"}\n', encoding="utf-8")
    page.set_input_files('[data-testid="replay-file"]', str(bad))
    page.wait_for_selector('[data-testid="replay-info"]:has-text("en-tête cordon-sim-replay attendu")')

    real = os.environ.get("CORDON_TRAINER_REPLAY")
    if real:  # documentation screenshot from a real `cordon sim run` replay
        page.set_input_files('[data-testid="replay-file"]', real)
        page.wait_for_selector('[data-testid="outcome-kind"]')
        _scrub(page, 0.7)
    page.screenshot(path=str(shots / "trainer.png"))
    assert not errors, errors
    page.close()


def test_trainer_starts_a_server_run_speeds_it_up_and_gets_its_replay(server: Server, browser: Any) -> None:
    errors: list[str] = []
    page = browser.new_page(viewport=DESK)
    _watch_errors(page, errors)
    page.goto(f"{server.url}/trainer?token={server.token('trainer')}")
    page.wait_for_selector('[data-testid="sim-start"]:not([disabled])', timeout=WAIT_MS)
    page.select_option('[data-testid="scenario-select"]', "demo")
    page.click('[data-testid="sim-start"]')
    page.wait_for_selector('[data-testid="sim-status"]:has-text("running")', timeout=WAIT_MS)
    page.wait_for_selector('[data-testid="sim-speed"]:not([disabled])', timeout=WAIT_MS)
    page.select_option('[data-testid="sim-speed"]', "60")
    page.wait_for_selector('[data-testid="sim-status"]:has-text("×60")', timeout=WAIT_MS)
    # at ×60 the 10-minute scenario ends within 10 s; the page then loads the run's replay
    page.wait_for_selector('body[data-replay="loaded"]', timeout=60_000)
    assert page.inner_text('[data-testid="outcome-kind"]') in ("Interception", "Fuite", "Temps écoulé")
    assert "finished" in page.inner_text('[data-testid="sim-status"]')
    assert not errors, errors
    page.close()
