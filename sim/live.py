"""The simulator driving a running Cordon server as an ordinary client (``cordon sim run --server``).

The world (:class:`sim.world.World`: suspect, cameras, crews, outcome rules) runs here, exactly as
offline; only the policy changes. :class:`LivePolicy` stands where
:class:`sim.policies.GuidancePolicy` calls the in-process Coordinator, and talks to the server
through :mod:`serving.client` instead:

* the server's clock is the simulation's: the server must run ``--clock simulation``, and before
  every step the policy sets it to the step's time (``POST /api/sim/time``), so a run goes as fast
  as the server answers;
* the incident is opened over REST at the incident's time and crossing;
* every crew is a tablet on ``/ws/crew`` (a crew token each): it reports its position (with the
  heading of the edge it drives) at the start, before each delivered sighting and every
  ``crew_model.update_interval_s``, and its status (``available``; ``out_of_service`` once the
  run ends, so a later run on the same server does not plan with it);
* each delivered sighting is posted over REST (``source_kind`` ``simulation``, ``observed_at`` the
  true pass time, ``source_event_id`` ``{incident}-{n}``: a retry is a duplicate, never a second
  sighting);
* each crew follows the suggestion its tablet holds: the world's crew model decides (compliance,
  reaction delay) and the tablet answers ``accept`` or ``decline``; a crew reaching its target
  sends ``in_position``.

Ordering is deterministic: after posting a sighting the policy waits for the server to have
processed it (the operator console's ``sighting`` message), then, when the incident's plan
version moved, for that ``plan`` message and for every new suggestion and retraction of the plan
to reach its tablet (each wait bounded by ``plan_timeout_s``) before the world advances. Position
reports wait for their echo on the console. What the server cannot be asked for is counted in
:class:`LiveStats` (``plan_timeouts``).

The server plans when a sighting arrives (and after a decline), not on a timer: unlike the
offline ``guidance`` policy, crews get no new plan every ``update_interval_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

from map_data.network_types import City
from map_data.types import CompiledGraph
from serving.client import Console, CordonClient, CordonHTTPError, Tablet
from sim.scenario import Scenario
from sim.world import CityContext, CrewAgent, RunResult, SimSighting, World

log = logging.getLogger("cordon.sim.live")
Json = dict[str, Any]
T = TypeVar("T")

#: Suggestion messages a tablet receives (``suggestion_update`` replaces an earlier one).
_SUGGESTION_TYPES = ("suggestion", "suggestion_update")


class LiveError(RuntimeError):
    """The server cannot be driven: wrong clock, another map, no tokens, no answer."""


@dataclass
class LiveStats:
    """What went over the wire during a live run."""

    base_url: str
    incident_id: str
    sightings_posted: int = 0
    duplicates: int = 0
    plans: int = 0
    plan_timeouts: int = 0
    positions_sent: int = 0
    suggestions_received: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    declined: int = 0
    in_position: int = 0
    foreign_crews: list[str] = field(default_factory=list)
    time_shift_s: float = 0.0

    def as_dict(self) -> Json:
        return {
            "base_url": self.base_url,
            "incident_id": self.incident_id,
            "sightings_posted": self.sightings_posted,
            "duplicates": self.duplicates,
            "plans": self.plans,
            "plan_timeouts": self.plan_timeouts,
            "positions_sent": self.positions_sent,
            "suggestions_received": dict(self.suggestions_received),
            "accepted": self.accepted,
            "declined": self.declined,
            "in_position": self.in_position,
            "foreign_crews": list(self.foreign_crews),
            "time_shift_s": self.time_shift_s,
        }


@dataclass
class LiveRun:
    result: RunResult
    stats: LiveStats


# ------------------------------------------------------------------------------------ helpers
async def _get_json(client: CordonClient, path: str) -> Any:
    response = await client.http.get(path)
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise CordonHTTPError(response.status_code, body)
    return body


def _rounded(lon: float, lat: float) -> tuple[float, float]:
    return (round(float(lon), 5), round(float(lat), 5))


async def check_same_map(client: CordonClient, city: City, health: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`LiveError` unless the server plays on ``city`` (its graph and cameras).

    With a ``graph_version`` in ``/api/health`` that is compared; otherwise the cameras (ids and
    positions, ``/api/map/cameras.geojson``) and the crossings (the ends of every street of
    ``/api/map/streets.geojson``) must be the same."""
    graph = city.graph
    version = (health or {}).get("graph_version")
    if version is not None:
        if version != graph.version:
            raise LiveError(
                f"the server's map (graph version {version}) is not the scenario's "
                f"({graph.name}, graph version {graph.version}); start the server on the same map"
            )
        return
    cams = await client.cameras()
    theirs = {
        str(f["properties"]["camera_id"]): _rounded(*f["geometry"]["coordinates"]) for f in cams["features"]
    }
    ours = {cid: _rounded(c.lon, c.lat) for cid, c in city.cameras.cameras.items()}
    if theirs != ours:
        only_theirs = sorted(set(theirs) - set(ours))[:3]
        only_ours = sorted(set(ours) - set(theirs))[:3]
        moved = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])[:3]
        raise LiveError(
            f"the server's cameras are not the scenario's ({len(theirs)} on the server, {len(ours)} in "
            f"{graph.name}; only on the server: {only_theirs}, only in the scenario: {only_ours}, "
            f"elsewhere: {moved}); start the server on the same map and cameras"
        )
    streets = await _get_json(client, "/api/map/streets.geojson")
    ends: set[tuple[float, float]] = set()
    for f in streets["features"]:
        coords = f["geometry"]["coordinates"]
        ends.add(_rounded(*coords[0]))
        ends.add(_rounded(*coords[-1]))
    crossings = {_rounded(lon, lat) for lon, lat in graph.node_lonlat}
    if ends != crossings:
        raise LiveError(
            f"the server's streets are not the scenario's: {len(ends)} crossings on the server, "
            f"{len(crossings)} in {graph.name} ({len(ends ^ crossings)} differ); start the server on "
            "the same map"
        )


def crew_lonlat_heading(world: World, crew: CrewAgent, t: float) -> tuple[float, float, float | None]:
    """Where a crew is at ``t`` as a tablet would say it: lon/lat along its edge's geometry, and
    the heading of that edge (0 = north, clockwise) while it drives; at a crossing, no heading."""
    g = world.graph
    move = crew.move
    if move is None:
        lon, lat = g.node_lonlat[crew.node]
        return float(lon), float(lat), None
    f = 0.0 if move.t1 <= move.t0 else min(1.0, max(0.0, (t - move.t0) / (move.t1 - move.t0)))
    lon, lat = _along(g, move.edge, f)
    (ux, uy), (vx, vy) = g.node_xy[g.edge_u[move.edge]], g.node_xy[g.edge_v[move.edge]]
    heading = math.degrees(math.atan2(float(vx - ux), float(vy - uy))) % 360.0
    return lon, lat, heading


def _along(g: CompiledGraph, edge: int, f: float) -> tuple[float, float]:
    """The point a fraction ``f`` of the way along ``edge``'s polyline (equirectangular lengths)."""
    pts = g.edge_lonlat(edge)
    if len(pts) == 1:
        return float(pts[0][0]), float(pts[0][1])
    coslat = math.cos(math.radians(float(pts[0][1])))
    seg = [
        math.hypot((float(b[0]) - float(a[0])) * coslat, float(b[1]) - float(a[1]))
        for a, b in itertools.pairwise(pts)
    ]
    total = sum(seg)
    if total <= 0.0:
        return float(pts[0][0]), float(pts[0][1])
    want = f * total
    for i, length in enumerate(seg):
        if want <= length or i == len(seg) - 1:
            k = 0.0 if length <= 0.0 else min(1.0, want / length)
            a, b = pts[i], pts[i + 1]
            return float(a[0] + k * (b[0] - a[0])), float(a[1] + k * (b[1] - a[1]))
        want -= length
    return float(pts[-1][0]), float(pts[-1][1])  # pragma: no cover - the loop always returns


# -------------------------------------------------------------------------------- the session
class LiveSession:
    """The asynchronous side of a live run: the server's clients, run in the event loop."""

    def __init__(
        self,
        base_url: str,
        control: CordonClient,
        console: Console,
        tablets: Mapping[str, Tablet],
        stats: LiveStats,
        *,
        plan_timeout_s: float,
    ) -> None:
        self.base_url = base_url
        self.control = control
        self.console = console
        self.tablets = dict(tablets)
        self.stats = stats
        self.incident_id = stats.incident_id
        self.plan_timeout_s = plan_timeout_s
        self.sim_now: datetime = datetime(2026, 1, 1, tzinfo=UTC)
        self.plan_version = 0
        self.handled: dict[str, str] = {}  # crew -> last suggestion id acted on
        self.targets: dict[str, tuple[str, int]] = {}  # crew -> (accepted suggestion id, target)
        self.reported_in: set[str] = set()

    # --- waiting on what the server says
    async def _wait_console(self, mark: int, pred: Callable[[Json], bool], timeout_s: float) -> Json | None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        i = mark
        while True:
            received = self.console.received
            while i < len(received):
                if pred(received[i]):
                    return received[i]
                i += 1
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(0.002)

    async def _wait_tablets(self, expected: list[tuple[str, str, tuple[str, ...]]], timeout_s: float) -> bool:
        """Wait until each (crew, suggestion id, message types) has reached the crew's tablet."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        pending = list(expected)
        while pending:
            still = []
            for crew_id, sid, types in pending:
                tablet = self.tablets[crew_id]
                if not any(_carries(m, sid, types) for m in reversed(tablet.received)):
                    still.append((crew_id, sid, types))
            pending = still
            if not pending:
                return True
            if asyncio.get_running_loop().time() > deadline:
                log.warning("tablets did not receive %s", pending)
                return False
            await asyncio.sleep(0.002)
        return True

    # --- steps
    async def set_time(self, at: datetime) -> None:
        self.sim_now = at
        await self.control.set_time(at)

    async def open_incident(self, at: datetime, lon: float, lat: float) -> None:
        await self.set_time(at)
        await self.control.open_incident(self.incident_id, lon=lon, lat=lat, at=at)

    async def report_positions(
        self, positions: Mapping[str, tuple[float, float, float | None]], *, status: str | None = None
    ) -> None:
        """Every tablet says where it is (and its status); wait for the server to have taken each."""
        mark = len(self.console.received)
        for crew_id, (lon, lat, heading) in positions.items():
            tablet = self.tablets[crew_id]
            await tablet.position(lon, lat, heading_deg=heading)
            if status is not None:
                await tablet.status(status)
        self.stats.positions_sent += len(positions)
        for crew_id in positions:
            got = await self._wait_console(
                mark,
                lambda m, c=crew_id: (
                    m.get("type") == "crew"  # type: ignore[misc]
                    and m["crew"]["crew_id"] == c
                    and (status is None or m["crew"].get("status") == status)
                ),
                self.plan_timeout_s,
            )
            if got is None:
                raise LiveError(
                    f"the server did not take crew {crew_id}'s position within {self.plan_timeout_s} s"
                )

    async def post_sighting(self, sighting: Json) -> None:
        """Post one sighting; wait until the server has processed it and, when it made a new plan,
        until that plan and its suggestions and retractions have reached the tablets."""
        mark = len(self.console.received)
        ack = await self.control.post_sighting(sighting)
        self.stats.sightings_posted += 1
        if ack.get("duplicate"):
            self.stats.duplicates += 1
            return
        sid = sighting["source_event_id"]
        seen = await self._wait_console(
            mark,
            lambda m: m.get("type") == "sighting" and m.get("source_event_id") == sid,
            self.plan_timeout_s,
        )
        if seen is None:
            self.stats.plan_timeouts += 1
            log.warning("no word of sighting %s within %.1f s", sid, self.plan_timeout_s)
            return
        info = await _get_json(self.control, f"/api/incidents/{self.incident_id}")
        version = int(info.get("plan_version") or 0)
        if version > self.plan_version:
            await self.await_plan(mark, version)

    async def await_plan(self, mark: int, version: int | None = None) -> bool:
        """Wait for the incident's ``plan`` message (of ``version`` or later; any newer one when
        None), then for its deliveries to the tablets."""
        least = self.plan_version + 1 if version is None else version
        plan = await self._wait_console(
            mark,
            lambda m: (
                m.get("type") == "plan"
                and m.get("incident_id") == self.incident_id
                and int(m.get("version", 0)) >= least
            ),
            self.plan_timeout_s,
        )
        if plan is None:
            self.stats.plan_timeouts += 1
            log.warning("no plan v%d of %s within %.1f s", least, self.incident_id, self.plan_timeout_s)
            return False
        self.stats.plans += 1
        self.plan_version = max(self.plan_version, int(plan["version"]))
        expected: list[tuple[str, str, tuple[str, ...]]] = []
        planned = set()
        for s in plan["suggestions"]:
            planned.add(s["crew_id"])
            if s["crew_id"] in self.tablets and s.get("state") == "sent":
                expected.append((s["crew_id"], s["suggestion_id"], _SUGGESTION_TYPES))
        ended = set(plan.get("ended", []))
        for crew_id, tablet in self.tablets.items():
            cur = tablet.current.get(self.incident_id)
            if crew_id not in planned and cur is not None and cur["suggestion_id"] in ended:
                expected.append((crew_id, cur["suggestion_id"], ("suggestion_retracted",)))
        await self._wait_tablets(expected, self.plan_timeout_s)
        return True

    async def current_suggestions(self) -> dict[str, Json]:
        """Each crew's suggestion in force (by simulated time) that it has not acted on yet."""
        out: dict[str, Json] = {}
        for crew_id, tablet in self.tablets.items():
            cur = tablet.current.get(self.incident_id)
            if cur is not None and self.handled.get(crew_id) != cur["suggestion_id"]:
                out[crew_id] = cur
        return out

    async def answer(self, accepts: list[tuple[str, str, int]], declines: list[tuple[str, str]]) -> None:
        """Send the crews' decisions; after declines (the server re-plans) wait for the new plan."""
        mark = len(self.console.received)
        for crew_id, sid, target in accepts:
            self.handled[crew_id] = sid
            self.targets[crew_id] = (sid, target)
            await self.tablets[crew_id].accept(sid)
            self.stats.accepted += 1
        for crew_id, sid in declines:
            self.handled[crew_id] = sid
            await self.tablets[crew_id].decline(sid, "simulated crew: not complying")
            self.stats.declined += 1
        for _crew, sid, _target in accepts:
            await self._wait_console(
                mark,
                lambda m, s=sid: (
                    m.get("type") == "decision"  # type: ignore[misc]
                    and m.get("suggestion_id") == s
                    and m.get("decision") == "accept"
                ),
                self.plan_timeout_s,
            )
        if declines:
            await self.await_plan(mark)

    async def in_position(self, crew_id: str, sid: str, at: datetime) -> None:
        await self.set_time(at)
        await self.tablets[crew_id].in_position(sid)
        self.stats.in_position += 1

    async def close(self, statuses: bool = True) -> None:
        if statuses:
            for tablet in self.tablets.values():
                try:
                    await tablet.status("out_of_service")
                except Exception as exc:  # the run's result matters more than this courtesy
                    log.warning("could not set %s out of service: %s", tablet.crew_id, exc)
        try:
            await self.control.close_incident(self.incident_id)
        except (CordonHTTPError, httpx.HTTPError) as exc:
            log.warning("closing incident %s: %s", self.incident_id, exc)


def _carries(message: Json, sid: str, types: tuple[str, ...]) -> bool:
    kind = message.get("type")
    if kind not in types:
        if kind == "snapshot" and "suggestion" in types:
            return any(s.get("suggestion_id") == sid for s in message.get("suggestions", []))
        return False
    if kind == "suggestion_retracted":
        return bool(message.get("suggestion_id") == sid)
    return bool(message.get("suggestion", {}).get("suggestion_id") == sid)


# --------------------------------------------------------------------------------- the policy
class LivePolicy:
    """Guidance by a running server: the world's side. Its callbacks run in the world's thread
    and hand each exchange to the :class:`LiveSession` in the event loop, waiting for it."""

    name = "guidance"

    def __init__(self, loop: asyncio.AbstractEventLoop, *, call_timeout_s: float) -> None:
        self.loop = loop
        self.call_timeout_s = call_timeout_s
        self._session: LiveSession | None = None

    def attach(self, session: LiveSession) -> None:
        """The session (made once the world has placed the crews, whose tablets it holds)."""
        self._session = session

    @property
    def session(self) -> LiveSession:
        if self._session is None:
            raise LiveError("LivePolicy used before a session was attached")
        return self._session

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.call_timeout_s)

    def _positions(self, world: World, t: float) -> dict[str, tuple[float, float, float | None]]:
        return {c.crew_id: crew_lonlat_heading(world, c, t) for c in world.crews}

    def _follow(self, world: World) -> None:
        """Each crew acts on the suggestion its tablet holds, as the world's crew model says."""
        todo = self._run(self.session.current_suggestions())
        accepts: list[tuple[str, str, int]] = []
        declines: list[tuple[str, str]] = []
        for crew_id in sorted(todo):
            s = todo[crew_id]
            target = int(s["target_node"])
            world.note_suggestion(crew_id, target, int(s.get("plan_version") or 0))
            crew = world.crew(crew_id)
            before = len(world.record.orders)
            world.order(crew_id, target, source=self.name)
            new = world.record.orders[before:]
            if new and not new[-1].accepted:
                declines.append((crew_id, str(s["suggestion_id"])))
            elif new or crew.effective_target == target:
                accepts.append((crew_id, str(s["suggestion_id"]), target))
            else:  # a target it refused before: refused again
                declines.append((crew_id, str(s["suggestion_id"])))
        if accepts or declines:
            self._run(self.session.answer(accepts, declines))
            if declines:
                self._follow(world)  # the re-plan after a decline

    def start(self, world: World, t: float) -> None:
        lon, lat = world.graph.node_lonlat[world.origin]
        self._run(self.session.open_incident(world.at(t), float(lon), float(lat)))
        self._run(self.session.report_positions(self._positions(world, t), status="available"))

    def on_delivery(self, world: World, sighting: SimSighting, t: float) -> None:
        s = self.session
        self._run(s.set_time(world.at(t)))
        self._run(s.report_positions(self._positions(world, t)))
        self._run(
            s.post_sighting(
                {
                    "incident_id": s.incident_id,
                    "camera_id": sighting.camera_id,
                    "observed_at": world.at(sighting.observed_t).isoformat(),
                    "source_kind": "simulation",
                    "source_event_id": f"{s.incident_id}-{sighting.n}",
                }
            )
        )
        self._follow(world)

    def on_tick(self, world: World, t: float) -> None:
        self._run(self.session.set_time(world.at(t)))
        self._run(self.session.report_positions(self._positions(world, t)))
        self._follow(world)  # e.g. a suggestion an operator approved since

    def on_crew_arrival(self, world: World, crew: CrewAgent, t: float) -> None:
        got = self.session.targets.get(crew.crew_id)
        if got is None or got[1] != crew.node or got[0] in self.session.reported_in:
            return
        self.session.reported_in.add(got[0])
        self._run(self.session.in_position(crew.crew_id, got[0], world.at(t)))

    def finish(self, world: World) -> None:
        return None  # the session closes the incident (also when the run fails)


# ------------------------------------------------------------------------------------- driver
def _shifted(scenario: Scenario, server_now: datetime) -> tuple[Scenario, float]:
    """The scenario moved after the server's clock (which never goes back), if it must be."""
    at = scenario.incident.at
    if at > server_now:
        return scenario, 0.0
    new_at = (server_now + timedelta(seconds=1)).replace(microsecond=0)
    incident = scenario.incident.model_copy(update={"at": new_at})
    return scenario.model_copy(update={"incident": incident}), (new_at - at).total_seconds()


async def run_live(
    ctx: CityContext,
    scenario: Scenario,
    base_url: str,
    *,
    token: str | None = None,
    crew_tokens: Mapping[str, str] | None = None,
    plan_timeout_s: float = 10.0,
    incident_id: str | None = None,
    echo: Callable[[str], Any] | None = None,
) -> LiveRun:
    """One run of ``scenario`` with its crews directed by the server at ``base_url``.

    ``token``: a trainer's token (opens the incident, posts sightings, sets the clock, watches
    the console); without it, one from the server's ``/api/dev/tokens`` (demo mode). ``crew_tokens``:
    a crew token per crew id (``crew-1`` ...); missing ones come from ``/api/dev/tokens``."""
    say = echo or (lambda _line: None)
    base_url = base_url.rstrip("/")
    if scenario.policy != "guidance":
        raise LiveError(
            f"policy {scenario.policy!r} runs in the simulator; --server drives the server's guidance"
        )
    async with CordonClient(base_url) as anon:
        try:
            health = await anon.health()
        except httpx.HTTPError as exc:
            raise LiveError(f"no Cordon server at {base_url}: {exc}") from exc

        async def dev_token(role: str, crew_id: str | None = None) -> str:
            try:
                return await anon.dev_token(role, crew_id=crew_id)
            except CordonHTTPError as exc:
                who = f"crew {crew_id}" if crew_id else "the trainer"
                raise LiveError(
                    f"no token for {who}: give --token/--crew-tokens, or run the server in demo mode "
                    f"(/api/dev/tokens answered {exc.status})"
                ) from exc

        if health.get("clock") != "simulation":
            raise LiveError(
                f"the server at {base_url} runs on the {health.get('clock')!r} clock; "
                "start it with `cordon serve --clock simulation`"
            )
        control_token = token or await dev_token("trainer")
        control = CordonClient(base_url, control_token)
        try:
            await check_same_map(control, ctx.city, health)
        except BaseException:
            await control.aclose()
            raise
        server_now = datetime.fromisoformat(str(health["now"]))
        scenario, shift = _shifted(scenario, server_now)
        if shift:
            say(
                f"the server's clock is at {server_now.isoformat()}: "
                f"incident moved to {scenario.incident.at.isoformat()}"
            )
        incident_id = incident_id or f"sim-{scenario.name}-s{scenario.seed}-{uuid.uuid4().hex[:8]}"
        stats = LiveStats(base_url=base_url, incident_id=incident_id, time_shift_s=shift)
        loop = asyncio.get_running_loop()
        # The world first (it places the crews); the session, holding their tablets, after.
        policy = LivePolicy(loop, call_timeout_s=plan_timeout_s * 6 + 30)
        world = World(ctx, scenario, policy)
        crew_ids = [c.crew_id for c in world.crews]
        tokens = dict(crew_tokens or {})
        for crew_id in crew_ids:
            if crew_id not in tokens:
                tokens[crew_id] = await dev_token("crew", crew_id)

        def sim_now() -> datetime:
            return policy.session.sim_now

        console = Console(base_url, control_token, now=sim_now)
        tablets = {c: Tablet(base_url, tokens[c], c, now=sim_now) for c in crew_ids}
        session = LiveSession(base_url, control, console, tablets, stats, plan_timeout_s=plan_timeout_s)
        session.sim_now = world.at(0.0)
        policy.attach(session)
        opened = False
        try:
            await console.connect()
            for tablet in tablets.values():
                await tablet.connect()
                await tablet.next("snapshot", timeout_s=plan_timeout_s)
            crews = await _get_json(control, "/api/crews")
            stats.foreign_crews = sorted(
                str(c["crew_id"])
                for c in crews
                if c["crew_id"] not in tablets and c.get("status") == "available"
            )
            if stats.foreign_crews:
                say(
                    f"warning: {len(stats.foreign_crews)} other available crew(s) on the server "
                    f"({', '.join(stats.foreign_crews[:5])}) may be planned too"
                )
            opened = True
            result = await asyncio.to_thread(world.run_for)
        finally:
            try:
                if opened:
                    await session.close()
            finally:
                for tablet in tablets.values():
                    await tablet.close()
                await console.close()
                await control.aclose()
        for crew_id, tablet in tablets.items():
            stats.suggestions_received[crew_id] = sum(
                1 for m in tablet.received if m.get("type") in _SUGGESTION_TYPES
            )
        return LiveRun(result, stats)


def run_live_sync(ctx: CityContext, scenario: Scenario, base_url: str, **kwargs: Any) -> LiveRun:
    """:func:`run_live` from synchronous code."""
    return asyncio.run(run_live(ctx, scenario, base_url, **kwargs))
