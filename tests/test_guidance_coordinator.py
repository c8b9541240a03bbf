"""The Coordinator facade on the embedded default city: open, crews, sightings, re-plans."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from guidance.coordinator import Coordinator
from guidance.types import Crew, CrewStatus, EscapePrediction, GuidanceError
from map_data.city import default_city
from map_data.network_types import City
from map_data.types import EdgePosition, LonLat
from tracking.errors import UnknownIncidentError
from tracking.types import Sighting

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def city() -> City:
    return default_city()


def centre_lonlat(city: City) -> LonLat:
    g = city.graph
    o = int(np.argmin(np.hypot(*(g.node_xy - g.node_xy.mean(axis=0)).T)))
    return LonLat(float(g.node_lonlat[o, 0]), float(g.node_lonlat[o, 1]))


def some_crews(city: City, n: int = 10, seed: int = 0) -> list[Crew]:
    rng = np.random.default_rng(seed)
    edges = rng.choice(city.graph.n_edges, size=n, replace=False)
    return [Crew(f"crew-{i:02d}", EdgePosition(int(e), 0.0)) for i, e in enumerate(edges)]


def camera_on_route(city: City, prediction: EscapePrediction) -> tuple[str, float]:
    for route in prediction.routes:
        for i, e in enumerate(route.edges[1:], start=1):
            seen = city.cameras.on_edge.get(e)
            if seen:
                return seen[0][0], route.eta_s[i]
    raise AssertionError("no camera on the predicted routes")


def test_open_plan_sight_replan(city: City) -> None:
    co = Coordinator(city)
    state = co.open_incident("inc-1", at=T0, origin_lonlat=centre_lonlat(city))
    assert state.plan is None and state.belief is not None and state.belief.positions
    plans = co.set_crews(some_crews(city), T0)
    p1 = plans["inc-1"]
    assert p1.version == 1 and p1.suggestions and p1.coverage_probability > 0
    assert co.replan("inc-1", T0) is p1  # nothing changed
    p2 = co.replan("inc-1", T0 + timedelta(seconds=5))
    assert p2.version == 2
    pred = co.state("inc-1", T0 + timedelta(seconds=5)).prediction
    assert pred is not None and co.prediction("inc-1") is pred
    cam, eta = camera_on_route(city, pred)
    seen_at = T0 + timedelta(seconds=5 + eta)
    sighting = Sighting(incident_id="inc-1", camera_id=cam, observed_at=seen_at, source_event_id="ev-1")
    out = co.ingest(sighting)
    assert out.update.accepted and out.plan is not None and out.plan.version == 3
    assert out.belief is not None and out.belief.n_sightings == 1
    assert out.prediction is not None and out.prediction.at == seen_at
    for s in out.plan.suggestions:
        # a new target needs the safety margin; a kept one only that the crew gets there first
        margin = 0.0 if s.kept else 20.0
        assert s.crew_eta_s + margin <= s.suspect_earliest_eta_s + 1e-9
    again = co.ingest(sighting)
    assert again.update.duplicate and again.plan is None
    gj = co.prediction_geojson("inc-1")
    json.dumps(gj)
    assert gj["features"]
    assert co.belief_geojson("inc-1", seen_at)["features"]
    assert {f["properties"]["crew_id"] for f in co.plan_geojson("inc-1")["features"]} == {
        s.crew_id for s in out.plan.suggestions
    }
    co.close_incident("inc-1")
    with pytest.raises(UnknownIncidentError):
        co.replan("inc-1", seen_at)


def test_same_inputs_same_plans(city: City) -> None:
    def run() -> list[tuple[str, int]]:
        co = Coordinator(city)
        co.open_incident("inc-d", at=T0, origin_lonlat=centre_lonlat(city))
        co.set_crews(some_crews(city, seed=4), T0)
        plan = co.replan("inc-d", T0 + timedelta(seconds=10))
        return [(s.crew_id, s.target_node) for s in plan.suggestions]

    assert run() == run()


def test_crews_are_not_shared_between_incidents(city: City) -> None:
    co = Coordinator(city)
    co.open_incident("a", at=T0, origin_lonlat=centre_lonlat(city))
    g = city.graph
    other = LonLat(float(g.node_lonlat[0, 0]), float(g.node_lonlat[0, 1]))
    co.open_incident("b", at=T0, origin_lonlat=other)
    plans = co.set_crews(some_crews(city, n=12, seed=1), T0)
    a = {s.crew_id for s in plans["a"].suggestions}
    b = {s.crew_id for s in plans["b"].suggestions}
    assert a and not (a & b)


def test_commune_sharing_and_empty_incident(city: City) -> None:
    co = Coordinator(city)
    co.open_incident("inc-c", at=T0, commune="Metz-Centre", origin_lonlat=centre_lonlat(city))
    crews = [
        Crew(c.crew_id, c.position, commune="Woippy", status=CrewStatus.available)
        for c in some_crews(city, n=6)
    ]
    plan = co.set_crews(crews, T0)["inc-c"]
    assert plan.suggestions == () and plan.holds == ()
    assert co.share_incident("inc-c", ["Woippy"]) == frozenset({"Woippy"})
    assert co.replan("inc-c", T0).suggestions
    # An incident without an origin and without sightings: an empty plan, every crew holds.
    assert co.open_incident("inc-x", at=T0).belief is None
    assert co.belief_geojson("inc-x", T0)["features"] == []
    empty = co.replan("inc-x", T0)
    assert empty.suggestions == () and empty.version == 1
    with pytest.raises(GuidanceError, match="duplicate crew ids"):
        co.set_crews(crews + crews[:1], T0)


def test_incident_without_origin_plans_after_its_first_sighting(city: City) -> None:
    co = Coordinator(city)
    co.open_incident("inc-n", at=T0)
    co.set_crews(some_crews(city, n=8, seed=2), T0)
    cam = sorted(city.cameras.views)[len(city.cameras.views) // 2]
    seen = T0 + timedelta(seconds=30)
    out = co.ingest(Sighting(incident_id="inc-n", camera_id=cam, observed_at=seen, source_event_id="n-1"))
    assert out.update.accepted and out.prediction is not None and out.plan is not None
    assert out.plan.version == 1 and out.plan.at == seen
    # a late sighting re-plans at the last plan's time, never back in time
    late = co.ingest(
        Sighting(
            incident_id="inc-n", camera_id=cam, observed_at=T0 + timedelta(seconds=10), source_event_id="n-0"
        )
    )
    assert late.plan is None or late.plan.at == seen


def test_assigned_crews_stay_with_their_incident(city: City) -> None:
    """A crew reported ``assigned`` (on its way to a target of incident a's plan) is still a's
    resource at a's next plan, and never taken by incident b; an assigned crew in no plan is
    used by neither."""
    co = Coordinator(city)
    co.open_incident("a", at=T0, origin_lonlat=centre_lonlat(city))
    g = city.graph
    other = LonLat(float(g.node_lonlat[0, 0]), float(g.node_lonlat[0, 1]))
    co.open_incident("b", at=T0, origin_lonlat=other)
    crews = some_crews(city, n=12, seed=1)
    plans = co.set_crews(crews, T0)
    on_a = {s.crew_id for s in plans["a"].suggestions}
    on_b = {s.crew_id for s in plans["b"].suggestions}
    assert on_a and not (on_a & on_b)
    # a's crews are now en route: reported assigned; one other crew is assigned elsewhere.
    stray = "crew-stray"  # assigned by the operators to something else, near incident a
    reported = [
        Crew(c.crew_id, c.position, status=CrewStatus.assigned) if c.crew_id in on_a else c for c in crews
    ]
    a_crew = next(c for c in crews if c.crew_id in on_a)
    reported.append(Crew(stray, a_crew.position, status=CrewStatus.assigned))
    later = T0 + timedelta(seconds=10)
    plans = co.set_crews(reported, later)
    a2 = {s.crew_id for s in plans["a"].suggestions}
    b2 = {s.crew_id for s in plans["b"].suggestions}
    assert on_a <= a2, "a's assigned crews keep their places in a's plan"
    assert not (b2 & on_a) and stray not in a2 | b2
    # a closes: its crews, still reported assigned, are not taken by b.
    co.close_incident("a")
    plans = co.set_crews(reported, later + timedelta(seconds=10))
    assert not ({s.crew_id for s in plans["b"].suggestions} & (on_a | {stray}))


def test_a_declined_target_is_never_offered_again(city: City) -> None:
    def run() -> tuple[list[list[tuple[str, int]]], Coordinator]:
        co = Coordinator(city)
        co.open_incident("inc-dec", at=T0, origin_lonlat=centre_lonlat(city))
        first = co.set_crews(some_crews(city, seed=2), T0)["inc-dec"]
        s = first.suggestions[0]
        t1 = T0 + timedelta(seconds=5)
        after = co.decline("inc-dec", s.crew_id, at=t1, reason="route blocked")
        assert after is not None and after.version == first.version + 1
        assert after.target_of(s.crew_id) != s.target_node
        assert after.parameters["declined"] == [[s.crew_id, s.target_node]]
        seen = [[(x.crew_id, x.target_node) for x in p.suggestions] for p in (first, after)]
        for k in range(1, 6):
            p = co.replan("inc-dec", t1 + timedelta(seconds=10 * k))
            assert (s.crew_id, s.target_node) not in {(x.crew_id, x.target_node) for x in p.suggestions}
            assert p.parameters["declined"] == [[s.crew_id, s.target_node]]
            seen.append([(x.crew_id, x.target_node) for x in p.suggestions])
        (d,) = co.declines("inc-dec")
        assert (d.crew_id, d.target_node, d.at, d.reason) == (s.crew_id, s.target_node, t1, "route blocked")
        return seen, co

    seen, co = run()
    assert seen == run()[0]  # deterministic
    # the crew stays usable elsewhere: it is offered some other crossing in some plan, or held
    with pytest.raises(GuidanceError, match="no suggestion"):
        co.decline("inc-dec", "crew-nobody", at=T0)
    with pytest.raises(GuidanceError, match="out of range"):
        co.decline("inc-dec", "crew-00", at=T0, target_node=-1)


def test_a_reported_sighting_is_planned_for_its_arrival(city: City) -> None:
    """``plan_at``: the report reached the CSU 8 s after the camera saw the suspect; the plan
    (and its prediction) is for that moment, never for earlier than the sighting or the last plan."""
    co = Coordinator(city)
    co.open_incident("inc-1", at=T0, origin_lonlat=centre_lonlat(city))
    co.set_crews(some_crews(city), T0)
    pred = co.state("inc-1", T0).prediction
    assert pred is not None
    cam, eta = camera_on_route(city, pred)
    seen_at = T0 + timedelta(seconds=eta)
    reported_at = seen_at + timedelta(seconds=8)
    out = co.ingest(
        Sighting(incident_id="inc-1", camera_id=cam, observed_at=seen_at, source_event_id="ev-1"),
        plan_at=reported_at,
    )
    assert out.plan is not None and out.plan.at == reported_at
    assert out.prediction is not None and out.prediction.at == reported_at
    assert out.belief is not None and out.belief.at == reported_at
    # a plan_at earlier than the sighting does not move the plan before the sighting
    out2 = co.ingest(
        Sighting(
            incident_id="inc-1",
            camera_id=cam,
            observed_at=reported_at + timedelta(seconds=2),
            source_event_id="ev-2",
        ),
        plan_at=T0,
    )
    assert out2.plan is not None and out2.plan.at == reported_at + timedelta(seconds=2)
    with pytest.raises(GuidanceError, match="timezone-aware"):
        co.ingest(
            Sighting(incident_id="inc-1", camera_id=cam, observed_at=seen_at, source_event_id="ev-3"),
            plan_at=datetime(2026, 3, 1, 12, 5),  # noqa: DTZ001 (naive on purpose)
        )
