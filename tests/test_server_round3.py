"""Server, third round: planning cadence like the offline simulator (a plan from the origin at
opening, re-plans as simulated or wall time passes), map versions in ``/api/health``, crews'
speed factor, ``--demo-crews``, and the client's ``get_incident`` / ``crews``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_server_api import COMMUNE, SECRET, close_all, crews_online, wait_for
from test_server_support import city_for_tests, running_server, token

from commands.serve import build_config
from map_data.network_types import CameraNetwork
from server import cameras_version
from serving.client import Console, CordonClient, CordonHTTPError
from serving.clock import SimulationClock
from serving.config import ServerConfig

pytestmark = pytest.mark.timeout(120)


def origin() -> tuple[float, float]:
    graph = city_for_tests().graph
    lon, lat = graph.node_lonlat[graph.n_nodes // 2]
    return float(lon), float(lat)


def inner_coordinator(app: Any) -> Any:
    coordinator = app.state.service.coordinator
    return getattr(coordinator, "inner", coordinator)


def config(**changes: Any) -> ServerConfig:
    values: dict[str, Any] = {"audit_db": "memory", "demo_crews": 0, "token_secret": SECRET, **changes}
    return ServerConfig(**values)


async def test_health_names_the_graph_and_camera_versions() -> None:
    city = city_for_tests()
    async with running_server() as srv, CordonClient(srv.base) as anon:
        health = await anon.health()
    assert health["graph_version"] == city.graph.version
    assert health["cameras_version"] == cameras_version(city)


def test_cameras_version_changes_with_the_camera_set() -> None:
    city = city_for_tests()
    assert cameras_version(city) == cameras_version(city)
    first = sorted(city.cameras.cameras)[0]
    moved = dict(city.cameras.cameras)
    moved[first] = replace(moved[first], lon=moved[first].lon + 0.001)
    other = replace(city, cameras=CameraNetwork(moved, city.cameras.views, city.cameras.on_edge))
    assert cameras_version(other) != cameras_version(city)
    fewer = {k: v for k, v in city.cameras.cameras.items() if k != first}
    views = {k: v for k, v in city.cameras.views.items() if k != first}
    smaller = replace(city, cameras=CameraNetwork(fewer, views, city.cameras.on_edge))
    assert cameras_version(smaller) != cameras_version(city)


async def test_opening_with_an_origin_plans_before_any_sighting() -> None:
    async with running_server() as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 6)
        await wait_for(lambda: len(srv.app.state.service.state._crews) == 6)
        lon, lat = origin()
        opened = await op.open_incident("inc-o", commune=COMMUNE, lon=lon, lat=lat)
        assert opened["plan_version"] >= 1 and opened["n_sightings"] == 0
        await wait_for(lambda: any(t.current for t in tablets))
        info = await op.get_incident("inc-o")
        assert info["plan_version"] == opened["plan_version"]
        # without an origin there is nothing to plan from
        plain = await op.open_incident("inc-p", commune=COMMUNE)
        assert plain["plan_version"] == 0
        await close_all(*tablets)
        await op.aclose()


async def test_simulated_time_replans_every_ten_seconds() -> None:
    clock = SimulationClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    async with running_server(config(clock="simulation"), clock=clock) as srv:
        service = srv.app.state.service
        op = CordonClient(srv.base, await token(srv.base, "trainer"))
        tablets = await crews_online(srv.base, 6, now=clock.now)
        await wait_for(lambda: len(service.state._crews) == 6)
        t0 = clock.now()
        lon, lat = origin()
        first = await op.open_incident("inc-t", commune=COMMUNE, lon=lon, lat=lat, at=t0)
        assert first["plan_version"] >= 1
        await wait_for(lambda: any(t.current for t in tablets))
        await op.set_time(t0 + timedelta(seconds=1))  # the first tick
        replans = service.periodic_replans
        assert replans == 1
        after_first = (await op.get_incident("inc-t"))["plan_version"]
        await op.set_time(t0 + timedelta(seconds=6))  # 5 s later: no re-plan
        assert service.periodic_replans == replans
        await op.set_time(t0 + timedelta(seconds=12))  # 11 s after the tick: re-planned
        assert service.periodic_replans == replans + 1
        # the suggestions in force near their expiry: the re-plan is published (renewed)
        expiry = min(datetime.fromisoformat(s["expires_at"]) for t in tablets for s in t.current.values())
        published = service.periodic_plans
        await op.set_time(expiry - timedelta(seconds=5))
        assert service.periodic_replans == replans + 2
        assert service.periodic_plans == published + 1
        assert (await op.get_incident("inc-t"))["plan_version"] > after_first
        await wait_for(
            lambda: any(
                datetime.fromisoformat(s["expires_at"]) > expiry for t in tablets for s in t.current.values()
            )
        )
        # a closed incident is not re-planned
        await op.close_incident("inc-t")
        await op.set_time(expiry + timedelta(seconds=30))
        assert service.periodic_replans == replans + 2
        await close_all(*tablets)
        await op.aclose()


async def test_wall_clock_replans_only_when_crews_move() -> None:
    # replan_s large: the background task never fires here; the test calls its tick itself
    async with running_server(config(replan_s=3600.0)) as srv:
        service = srv.app.state.service
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 4)
        await wait_for(lambda: len(service.state._crews) == 4)
        lon, lat = origin()
        await op.open_incident("inc-w", commune=COMMUNE, lon=lon, lat=lat)
        # planned at its opening, less than replan_s ago: time has not passed for it
        assert await service.tick() == 0
        assert service.periodic_replans == 0
        service._ticked_at = None
        service._planned_at.clear()  # as if replan_s had passed since that plan
        assert await service.tick() in (0, 1)  # crews changed since the start: a re-plan
        assert service.periodic_replans == 1
        assert await service.tick() == 0  # within replan_s: nothing at all
        service._ticked_at = None
        assert await service.tick() == 0  # nothing moved: no re-plan
        assert service.periodic_replans == 1
        version = (await service.state.crew_versions())[0]
        graph = city_for_tests().graph
        await tablets[0].position(*map(float, graph.node_lonlat[graph.n_nodes // 2 + 1]))

        async def moved() -> bool:
            return bool((await service.state.crew_versions())[0] != version)

        deadline = asyncio.get_running_loop().time() + 10
        while not await moved():
            assert asyncio.get_running_loop().time() < deadline, "the crew's position never arrived"
            await asyncio.sleep(0.02)
        service._ticked_at = None
        service._planned_at.clear()
        await service.tick()
        assert service.periodic_replans == 2
        await close_all(*tablets)
        await op.aclose()


async def test_a_tick_that_skipped_one_incident_replans_only_that_one_next() -> None:
    # one incident planned within the interval is skipped by a tick; the next tick (no crew
    # moved since) re-plans that incident alone, not every incident again
    async with running_server(config(replan_s=3600.0)) as srv:
        service = srv.app.state.service
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 4)
        await wait_for(lambda: len(service.state._crews) == 4)
        lon, lat = origin()
        for incident_id in ("inc-a", "inc-b", "inc-c"):
            await op.open_incident(incident_id, commune=COMMUNE, lon=lon, lat=lat)
        replanned: list[str] = []
        real_replan = service.replan

        async def counting_replan(incident_id: str, **kw: Any) -> bool:
            if kw.get("skip_unchanged"):
                replanned.append(incident_id)
            return bool(await real_replan(incident_id, **kw))

        service.replan = counting_replan
        service._planned_at.clear()
        service._planned_at["inc-a"] = time.monotonic()  # just planned: skipped
        service._ticked_at = None
        await service.tick()  # the crews are new to the ticks: every incident but inc-a
        assert sorted(replanned) == ["inc-b", "inc-c"]
        replanned.clear()
        service._planned_at.clear()
        service._ticked_at = None
        await service.tick()  # nothing moved since: inc-a alone has not seen the crews
        assert replanned == ["inc-a"]
        replanned.clear()
        service._planned_at.clear()
        service._ticked_at = None
        await service.tick()  # nothing moved, nothing skipped: no re-plan
        assert replanned == []
        await close_all(*tablets)
        await op.aclose()


async def test_crews_get_their_speed_factor_or_the_default() -> None:
    async with running_server(config(crew_speed_factor=1.25)) as srv:
        op = CordonClient(srv.base, await token(srv.base))
        tablets = await crews_online(srv.base, 3)
        lon, lat = origin()
        await tablets[0].position(lon, lat, speed_factor=1.6)
        rest = CordonClient(srv.base, await token(srv.base, "crew", crew_id="C-REST", communes=COMMUNE))
        await rest.put_crew("C-REST", lon=lon, lat=lat, commune=COMMUNE, speed_factor=0.9)
        await wait_for(lambda: srv.app.state.service.state._crews.get("C-00", {}).get("_speed_factor") == 1.6)
        # the status message keeps the factor unless it gives one
        await tablets[1].status("available", speed_factor=1.1)
        await wait_for(lambda: srv.app.state.service.state._crews["C-01"].get("_speed_factor") == 1.1)
        await op.open_incident("inc-s", commune=COMMUNE, lon=lon, lat=lat)
        factors = {c.crew_id: c.speed_factor for c in inner_coordinator(srv.app).crews()}
        assert factors == {"C-00": 1.6, "C-01": 1.1, "C-02": 1.25, "C-REST": 0.9}
        listed = {c["crew_id"] for c in await op.crews()}
        assert listed == {"C-00", "C-01", "C-02", "C-REST"}
        with pytest.raises(CordonHTTPError) as bad:
            await rest.put_crew("C-REST", lon=lon, lat=lat, speed_factor=0.0)
        assert bad.value.status == 422
        await close_all(*tablets)
        await op.aclose()
        await rest.aclose()


def test_default_crew_speed_factor_matches_the_simulators_crews() -> None:
    from sim.scenario import CrewModel

    assert ServerConfig().crew_speed_factor == CrewModel().speed_factor
    with pytest.raises(ValueError, match="speed factor"):
        ServerConfig.from_env({}, crew_speed_factor=0.0)


def build(**kw: Any) -> ServerConfig:
    args: dict[str, Any] = dict(
        host="127.0.0.1",
        port=8000,
        redis=None,
        map_path=None,
        cameras=None,
        communes=None,
        clock="simulation",
        demo=None,
        audit_db="memory",
        data_dir=None,
        worker_id=None,
        dispatch_mode="direct",
        n_crossings=300,
    )
    args.update(kw)
    return build_config(**args)


def test_demo_crews_option_keeps_demo_tokens() -> None:
    assert build().demo_crews == 12
    none = build(demo_crews=0)
    assert none.demo and none.demo_crews == 0
    assert build(demo_crews=3).demo_crews == 3


async def test_demo_crews_are_parked_and_listed() -> None:
    async with running_server(config(demo_crews=3)) as srv:
        op = CordonClient(srv.base, await token(srv.base))
        crews = await op.crews()
        assert len(crews) == 3 and all(c["status"] == "available" for c in crews)
        with pytest.raises(CordonHTTPError) as missing:
            await op.get_incident("nope")
        assert missing.value.status == 404
        await op.aclose()


async def test_time_alone_never_overrides_an_operators_modification() -> None:
    clock = SimulationClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    async with running_server(config(clock="simulation"), clock=clock) as srv:
        service = srv.app.state.service
        trainer = await token(srv.base, "trainer")
        op = CordonClient(srv.base, trainer)
        tablets = await crews_online(srv.base, 6, now=clock.now)
        await wait_for(lambda: len(service.state._crews) == 6)
        t0 = clock.now()
        lon, lat = origin()
        await op.open_incident("inc-m", commune=COMMUNE, lon=lon, lat=lat, at=t0)
        await wait_for(lambda: any(t.current for t in tablets))
        tablet = next(t for t in tablets if t.current)
        chosen = next(iter(tablet.current.values()))
        console = Console(srv.base, trainer, now=clock.now)
        await console.connect()
        await console.next("snapshot")
        graph = city_for_tests().graph
        await console.modify(
            chosen["suggestion_id"], lon=float(graph.node_lonlat[3][0]), lat=float(graph.node_lonlat[3][1])
        )
        await wait_for(lambda: any(s["suggestion_id"].endswith("~m1") for s in tablet.current.values()))
        expiry = datetime.fromisoformat(next(iter(tablet.current.values()))["expires_at"])
        await op.set_time(expiry - timedelta(seconds=5))
        assert service.periodic_replans == 0  # left alone: no re-plan at all
        assert any(s["suggestion_id"].endswith("~m1") for s in tablet.current.values())
        await close_all(console, *tablets)
        await op.aclose()


async def test_an_accept_waiting_for_the_lock_is_refused_if_the_suggestion_ended_meanwhile() -> None:
    """A crew's accept checks the suggestion, then waits for the incident's lock (a sighting's
    plan holds it); a suggestion superseded meanwhile must not come back as accepted."""
    from serving.service import Actor, ServiceError

    async with running_server() as srv:
        service = srv.app.state.service
        expires = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
        suggestion = {
            "suggestion_id": "INC-R:3:PS-1",
            "incident_id": "INC-R",
            "crew_id": "PS-1",
            "route_lonlat": (),
            "turns": (),
            "state": "sent",
            "expires_at": expires,
            "_communes": [],
        }
        await service.state.put_suggestion(dict(suggestion))
        crew = Actor("PS-1", "crew", None, crew_id="PS-1")
        async with service.state.lock("INC-R"):
            accept = asyncio.create_task(service.crew_decision(crew, "accept", "INC-R:3:PS-1"))
            await asyncio.sleep(0.05)  # past its first check, waiting for the lock
            assert not accept.done()
            await service.state.put_suggestion(dict(suggestion, state="superseded"))
        with pytest.raises(ServiceError) as refused:
            await accept
        assert refused.value.status == 409
        kept = await service.state.get_suggestion("INC-R:3:PS-1")
        assert kept is not None and kept["state"] == "superseded"
