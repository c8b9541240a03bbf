"""Tracking on tiny hand-drawn graphs with exact expectations."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError
from test_tracking_helpers import T0, at, city_from_sketch, edge_of, sighting

from map_data.errors import CameraSeesNothingError, UnknownCameraError
from map_data.network_types import CameraView
from map_data.types import EdgePosition
from tracking.behaviour import BranchContext, RoadBehaviour
from tracking.config import TrackerConfig
from tracking.errors import IncidentAlreadyOpenError, NoBeliefError, UnknownIncidentError, WrongIncidentError
from tracking.kalman import H_SPEED, GaussianState, predict, predict_batch, update, update_batch
from tracking.tracker import Tracker, Tracks
from tracking.types import Sighting

# A straight one-way road, 11 crossings 300 m apart, a camera in the middle of each block:
#
#   0 ──c0──► 1 ──c1──► 2 ──c2──► 3 ── ... ──► 9 ──c9──► 10
STRAIGHT_NODES = {i: (300.0 * i, 0.0) for i in range(11)}
STRAIGHT_EDGES = [(i, i + 1) for i in range(10)]
STRAIGHT_CAMS = {f"c{i}": [(i, i + 1, 140.0, 160.0)] for i in range(10)}

# A fork: one-way roads, a camera before the fork and one on the north branch only.
#
#                 ┌──cN──► 2 ──► 4
#   0 ──c0──► 1 ──┤
#                 └──────► 3 ──► 5
FORK_NODES = {
    0: (0.0, 0.0),
    1: (200.0, 0.0),
    2: (400.0, 150.0),
    3: (400.0, -150.0),
    4: (900.0, 150.0),
    5: (900.0, -150.0),
}
FORK_EDGES = [(0, 1), (1, 2), (1, 3), (2, 4), (3, 5)]
FORK_CAMS = {"c0": [(0, 1, 90.0, 110.0)], "cN": [(1, 2, 110.0, 140.0)]}


@pytest.fixture(scope="module")
def straight():
    return city_from_sketch(STRAIGHT_NODES, STRAIGHT_EDGES, STRAIGHT_CAMS)


@pytest.fixture(scope="module")
def fork():
    return city_from_sketch(FORK_NODES, FORK_EDGES, FORK_CAMS)


# ----------------------------------------------------------------------------- sightings


def test_sighting_rejects_unknown_fields_and_naive_times() -> None:
    base = {
        "incident_id": "inc-1",
        "camera_id": "c0",
        "observed_at": T0,
        "source_event_id": "ev-1",
    }
    assert Sighting(**base).source_kind == "operator"
    with pytest.raises(ValidationError, match="face"):
        Sighting(**base, face_embedding=[0.1, 0.2])
    with pytest.raises(ValidationError):
        Sighting(**{**base, "observed_at": datetime(2026, 3, 14, 22, 0)})  # noqa: DTZ001
    with pytest.raises(ValidationError):
        Sighting(**{**base, "camera_id": "cam 1; drop"})
    with pytest.raises(ValidationError):
        Sighting(**base, heading_deg=361.0)
    with pytest.raises(ValidationError):
        Sighting(**base, vehicle_description="x" * 201)
    with pytest.raises(ValidationError):
        Sighting(**base, source_kind="rumour")


# ----------------------------------------------------------------------------- Kalman adapter


def test_batch_kalman_matches_filterpy() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        a = rng.normal(size=(2, 2))
        P = a @ a.T + np.eye(2)
        x = rng.normal(size=2) * 10
        dt, q, z, r = float(rng.uniform(0.5, 60)), float(rng.uniform(0.1, 2)), float(rng.normal() * 30), 9.0
        ref = predict(GaussianState(x, P), dt, q)
        bx, bP = predict_batch(x[None], P[None], dt, q)
        np.testing.assert_allclose(bx[0], ref.x, rtol=1e-10)
        np.testing.assert_allclose(bP[0], ref.P, rtol=1e-10)
        for H in (np.array([[1.0, 0.0]]), H_SPEED):
            post, ll = update(ref, z, r, H)
            ux, uP, ull = update_batch(bx, bP, np.array([z]), r, H)
            np.testing.assert_allclose(ux[0], post.x, rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(uP[0], post.P, rtol=1e-7, atol=1e-9)
            assert ull[0] == pytest.approx(ll, rel=1e-9)


# ----------------------------------------------------------------------------- straight road


def test_speed_converges_to_true_speed_on_a_straight_road(straight) -> None:
    tracker = Tracker(straight)
    true_speed = 16.0
    for k in range(10):
        tracker.update(sighting(f"c{k}", 300.0 * k / true_speed, f"ev{k}"))
    b = tracker.belief(at(300.0 * 9 / true_speed))
    assert b.speed_mps == pytest.approx(true_speed, abs=0.5)
    assert b.speed_sigma_mps < 3.0
    assert b.positions[0].edge == edge_of(straight.graph, 9, 10)
    assert b.positions[0].offset_m == pytest.approx(150.0, abs=10.0)
    assert b.n_sightings == 10
    assert b.last_camera_id == "c9"
    assert b.heading_deg == pytest.approx(90.0, abs=1.0)  # driving east


def test_prediction_moves_forward_at_the_estimated_speed(straight) -> None:
    tracker = Tracker(straight)
    for k in range(4):
        tracker.update(sighting(f"c{k}", 300.0 * k / 15.0, f"ev{k}"))
    t_last = 300.0 * 3 / 15.0
    b = tracker.belief(at(t_last + 20.0))
    # 150 m (c3) + 20 s * 15 m/s = 450 m from crossing 3: 150 m along edge 4 -> 5.
    assert b.positions[0].edge == edge_of(straight.graph, 4, 5)
    assert b.positions[0].offset_m == pytest.approx(150.0, abs=30.0)
    assert b.since_last_sighting_s == pytest.approx(20.0)
    assert b.sigma_along_m > tracker.belief(at(t_last)).sigma_along_m


# ----------------------------------------------------------------------------- fork and silence


def _p_route_through(belief, edge: int) -> float:
    return sum(r.probability for r in belief.top_routes if edge in r.edges)


def test_silent_camera_moves_weight_to_the_other_branch(fork) -> None:
    g = fork.graph
    tracker = Tracker(fork)
    tracker.update(sighting("c0", 0.0, "ev0", heading_deg=90.0, speed_kmh=54.0))
    north, south = edge_of(g, 1, 2), edge_of(g, 1, 3)
    early = tracker.belief(at(8.0))  # 100 m past c0: just past the fork, before cN (≈ 125 m on)
    p_north_early = _p_route_through(early, north)
    assert 0.35 < p_north_early < 0.65
    late = tracker.belief(at(25.0))  # 375 m on: well past where cN would have seen it
    p_north, p_south = _p_route_through(late, north), _p_route_through(late, south)
    assert p_north + p_south == pytest.approx(1.0)
    # Bayes with detection probability 0.8: 0.5*0.2 / (0.5*0.2 + 0.5) = 1/6.
    assert p_north == pytest.approx(1 / 6, abs=0.05)
    assert p_south > 0.75


def test_camera_seeing_one_edge_twice_conditions_on_the_right_stretch() -> None:
    # A winding street passes camera c1 twice: it sees two stretches of the same edge 1 -> 2.
    # The suspect is sighted where the prediction puts it (the far stretch), whichever of the
    # two stretches the camera's view happens to list last.
    #
    #   0 ──c0──► 1 ──c1(20-40)────────c1(300-320)──► 2
    for spans in ([(1, 2, 300.0, 320.0), (1, 2, 20.0, 40.0)], [(1, 2, 20.0, 40.0), (1, 2, 300.0, 320.0)]):
        city = city_from_sketch(
            {0: (0.0, 0.0), 1: (200.0, 0.0), 2: (600.0, 0.0)},
            [(0, 1), (1, 2)],
            {"c0": [(0, 1, 90.0, 110.0)], "c1": spans},
        )
        tracker = Tracker(city)
        tracker.update(sighting("c0", 0.0, "ev0", speed_kmh=54.0))  # 15 m/s
        t = (100.0 + 310.0) / 15.0
        assert tracker.update(sighting("c1", t, "ev1", speed_kmh=54.0)).accepted
        b = tracker.belief(at(t))
        assert b.positions[0].edge == edge_of(city.graph, 1, 2)
        assert b.positions[0].offset_m == pytest.approx(310.0, abs=15.0)
        assert b.positions[0].probability > 0.9


def test_sighting_on_a_branch_picks_it(fork) -> None:
    g = fork.graph
    tracker = Tracker(fork)
    tracker.update(sighting("c0", 0.0, "ev0", heading_deg=90.0))
    tracker.update(sighting("cN", 20.0, "ev1"))
    b = tracker.belief(at(20.0))
    assert b.positions[0].edge == edge_of(g, 1, 2)
    assert b.positions[0].probability == pytest.approx(1.0)
    # 100 m to the fork + 125 m to cN in 20 s.
    assert b.speed_mps == pytest.approx(225.0 / 20.0, abs=2.0)


def test_a_dead_end_turns_the_suspect_round() -> None:
    # Two-way street ending at 2; camera cD at the dead end sees both directions there.
    #
    #   0 ══c0══ 1 ════════cD 2 (dead end)
    city = city_from_sketch(
        {0: (0.0, 0.0), 1: (300.0, 0.0), 2: (600.0, 0.0)},
        [(0, 1), (1, 2)],
        {"c0": [(0, 1, 140.0, 160.0)], "cD": [(1, 2, 270.0, 300.0), (2, 1, 0.0, 30.0)]},
        two_way=True,
    )
    tracker = Tracker(city)
    tracker.update(sighting("c0", 0.0, "ev0", heading_deg=90.0, speed_kmh=43.2))  # 12 m/s east
    # 45 s at 12 m/s = 540 m past c0: 450 m to the dead end, then 90 m back along 2 -> 1.
    b = tracker.belief(at(45.0))
    assert sum(p.probability for p in b.positions) == pytest.approx(1.0)
    assert b.positions[0].edge == edge_of(city.graph, 2, 1)
    assert b.positions[0].offset_m == pytest.approx(90.0, abs=30.0)
    assert b.heading_deg == pytest.approx(270.0, abs=1.0)  # driving west again
    # Seen again at the dead end's camera on the way back: accepted, on the edge back.
    assert tracker.update(sighting("cD", 40.0, "ev1")).accepted
    assert tracker.belief(at(40.0)).positions[0].edge == edge_of(city.graph, 2, 1)


# ----------------------------------------------------------------------------- order and duplicates


def test_duplicate_event_changes_nothing(straight) -> None:
    tracker = Tracker(straight)
    first = tracker.update(sighting("c0", 0.0, "ev0"))
    tracker.update(sighting("c2", 40.0, "ev1"))
    before = tracker.belief(at(70.0))
    again = tracker.update(sighting("c2", 40.0, "ev1"))
    changed = tracker.update(sighting("c5", 41.0, "ev0"))  # same key, other content: still a duplicate
    assert first.accepted and not first.duplicate
    assert again.duplicate and again.accepted
    assert changed.duplicate
    assert tracker.belief(at(70.0)) == before
    assert len(tracker.sightings()) == 2


def test_out_of_order_gives_the_same_belief_as_in_order(fork, straight) -> None:
    events = [sighting(f"c{k}", 300.0 * k / 14.0 + (k % 3), f"ev{k}") for k in range(0, 10, 2)]
    in_order = Tracker(straight)
    for s in events:
        in_order.update(s)
    shuffled = Tracker(straight)
    replays = [shuffled.update(s).replayed for s in (events[3], events[0], events[4], events[2], events[1])]
    assert max(replays) > 1  # late arrivals were replayed
    for t in (0.0, 100.0, 170.0, 200.0):
        assert shuffled.belief(at(t)) == in_order.belief(at(t))


def test_belief_only_uses_sightings_up_to_its_time(straight) -> None:
    tracker = Tracker(straight)
    tracker.update(sighting("c0", 0.0, "ev0"))
    early = tracker.belief(at(10.0))
    tracker.update(sighting("c4", 80.0, "ev1"))
    assert tracker.belief(at(10.0)) == early
    assert tracker.belief(at(80.0)).n_sightings == 2


# ----------------------------------------------------------------------------- implausible sightings


def test_unreachable_sighting_is_flagged_and_kept(straight) -> None:
    tracker = Tracker(straight)
    tracker.update(sighting("c0", 0.0, "ev0"))
    before = tracker.belief(at(5.0))
    result = tracker.update(sighting("c9", 5.0, "ev1"))  # 2.7 km in 5 s
    assert not result.accepted
    assert result.flag is not None and result.flag.reason == "unreachable_in_time"
    assert "m/s" in result.flag.detail and "c9" in result.flag.detail
    assert [s.source_event_id for s, _, _ in tracker.sightings()] == ["ev0", "ev1"]
    assert tracker.belief(at(5.0)).positions == before.positions
    # Going backwards on a one-way road cannot be done at all.
    tracker.update(sighting("c5", 100.0, "ev2"))
    back = tracker.update(sighting("c1", 110.0, "ev3"))
    assert back.flag is not None and "unreachable" in back.flag.detail


def test_two_sightings_at_the_same_instant(straight) -> None:
    # Zero elapsed time: the same camera twice is accepted (and changes nothing but the
    # spread), a camera 300 m away cannot have been reached in 0 s.
    tracker = Tracker(straight)
    tracker.update(sighting("c3", 50.0, "ev0"))
    again = tracker.update(sighting("c3", 50.0, "ev1"))
    assert again.accepted and not again.duplicate
    far = tracker.update(sighting("c4", 50.0, "ev2"))
    assert not far.accepted and far.flag is not None and far.flag.reason == "unreachable_in_time"
    assert "0.0 s earlier" in far.flag.detail
    b = tracker.belief(at(50.0))
    assert b.positions[0].edge == edge_of(straight.graph, 3, 4)
    assert b.positions[0].offset_m == pytest.approx(150.0, abs=1.0)
    assert b.n_sightings == 2 and b.since_last_sighting_s == 0.0


def test_before_open_and_unknown_camera(straight) -> None:
    tracker = Tracker(straight, incident_id="inc-1", opened_at=at(60.0))
    early = tracker.update(sighting("c0", 0.0, "ev0"))
    assert not early.accepted and early.flag is not None and early.flag.reason == "before_incident_open"
    named = "sighting 'ev1' of incident 'inc-1': unknown camera 'nowhere'"
    with pytest.raises(UnknownCameraError, match=named):
        tracker.update(sighting("nowhere", 70.0, "ev1"))
    with pytest.raises(WrongIncidentError, match="inc-2"):
        tracker.update(sighting("c1", 70.0, "ev2", incident="inc-2"))
    with pytest.raises(NoBeliefError):
        tracker.belief(at(70.0))


def test_bad_camera_leaves_the_tracker_unchanged(straight) -> None:
    # A camera whose view holds no street (a hand-built network) is refused with its name,
    # before the tracker records anything, like an unknown camera.
    blind_views = {**straight.cameras.views, "blind": CameraView("blind", ())}
    city = dataclasses.replace(straight, cameras=dataclasses.replace(straight.cameras, views=blind_views))
    tracker = Tracker(city)
    tracker.update(sighting("c0", 0.0, "ev0"))
    before = tracker.belief(at(30.0))
    with pytest.raises(CameraSeesNothingError, match="sighting 'ev1' of incident 'inc-1': camera 'blind'"):
        tracker.update(sighting("blind", 10.0, "ev1"))
    with pytest.raises(UnknownCameraError, match="'ev2'"):
        tracker.update(sighting("nowhere", 5.0, "ev2"))
    assert [s.source_event_id for s, _, _ in tracker.sightings()] == ["ev0"]
    assert tracker.belief(at(30.0)) == before
    # A tracker without an incident yet does not adopt it from a refused sighting.
    fresh = Tracker(city)
    with pytest.raises(UnknownCameraError):
        fresh.update(sighting("nowhere", 5.0, "ev0", incident="inc-x"))
    assert fresh.incident_id is None
    assert fresh.update(sighting("c0", 5.0, "ev0", incident="inc-y")).accepted


def test_low_confidence_is_flagged(straight) -> None:
    tracker = Tracker(straight)
    s = Sighting(incident_id="inc-1", camera_id="c0", observed_at=T0, source_event_id="ev0", confidence=0.05)
    result = tracker.update(s)
    assert not result.accepted and result.flag is not None and result.flag.reason == "low_confidence"


def test_sighting_no_hypothesis_explains_reinitiates(fork) -> None:
    # Reachable by road in time, but far beyond what the speed estimate predicts.
    tracker = Tracker(fork, config=TrackerConfig(lookahead_sigmas=0.5, lookahead_extra_m=0.0))
    tracker.update(sighting("c0", 0.0, "ev0", heading_deg=90.0, speed_kmh=10.0))
    result = tracker.update(sighting("cN", 6.0, "ev1"))
    assert result.accepted
    assert tracker.belief(at(6.0)).positions[0].edge == edge_of(fork.graph, 1, 2)


# ----------------------------------------------------------------------------- heading, origin


def test_heading_picks_the_direction_at_a_two_way_camera() -> None:
    #   0 ◄──c──► 1   (two-way, 400 m)
    city = city_from_sketch(
        {0: (0.0, 0.0), 1: (400.0, 0.0)},
        [(0, 1)],
        {"c": [(0, 1, 190.0, 210.0), (1, 0, 190.0, 210.0)]},
        two_way=True,
    )
    east, west = edge_of(city.graph, 0, 1), edge_of(city.graph, 1, 0)
    tracker = Tracker(city)
    tracker.update(sighting("c", 0.0, "ev0", heading_deg=270.0))
    b = tracker.belief(at(0.0))
    p = {wp.edge: wp.probability for wp in b.positions}
    assert p[west] > 0.95 > p[east]
    assert b.heading_deg == pytest.approx(270.0, abs=15.0)


def test_origin_gives_a_belief_before_any_sighting(straight) -> None:
    origin = EdgePosition(edge_of(straight.graph, 2, 3), 100.0)
    tracker = Tracker(straight, incident_id="inc-1", opened_at=T0, origin=origin)
    b = tracker.belief(at(10.0))
    assert b.last_camera_id is None and b.n_sightings == 0
    assert b.origin_node == straight.graph.node_index[2]
    assert b.since_last_sighting_s == pytest.approx(10.0)
    assert b.positions[0].edge == edge_of(straight.graph, 2, 3)
    assert b.positions[0].offset_m == pytest.approx(220.0, abs=1.0)
    with pytest.raises(NoBeliefError, match="before the incident was opened"):
        tracker.belief(at(-5.0))
    # An offset past the edge's end is its end; a NaN one is refused, naming it.
    end = Tracker(straight, opened_at=T0, origin=EdgePosition(origin.edge, 300.0))
    past = Tracker(straight, opened_at=T0, origin=EdgePosition(origin.edge, 1e6))
    assert past.belief(at(10.0)) == end.belief(at(10.0))
    with pytest.raises(ValueError, match="origin offset_m nan"):
        Tracker(straight, opened_at=T0, origin=EdgePosition(origin.edge, math.nan))


# ----------------------------------------------------------------------------- behaviour


def test_road_behaviour_prefers_straight_main_roads_and_rarely_u_turns() -> None:
    #            2 (north, residential)
    #            │
    #   0 ────── 1 ────── 3 (east, straight on, residential)
    #            │
    #            4 (south, primary)
    city = city_from_sketch(
        {0: (0.0, 0.0), 1: (200.0, 0.0), 2: (200.0, 200.0), 3: (400.0, 0.0), 4: (200.0, -200.0)},
        [(0, 1), (1, 2), (1, 3), (1, 4, {"highway": "primary"})],
        {},
        two_way=True,
    )
    g = city.graph
    model = RoadBehaviour()
    in_edge = edge_of(g, 0, 1)
    outs = g.out_of(g.node_index[1])
    p = dict(
        zip(
            outs.tolist(), model.branch_probabilities(g, in_edge, outs, BranchContext()).tolist(), strict=True
        )
    )
    assert sum(p.values()) == pytest.approx(1.0)
    straight_on, north, south, back = (edge_of(g, 1, v) for v in (3, 2, 4, 0))
    assert p[straight_on] > p[north]
    assert p[south] > p[north]  # main road favoured over the same turn on a residential street
    assert p[back] < 0.02
    # Away from an incident at node 3: going east towards it gets less likely.
    ctx = BranchContext(
        origin_xy=(float(g.node_xy[g.node_index[3], 0]), float(g.node_xy[g.node_index[3], 1]))
    )
    p_away = dict(zip(outs.tolist(), model.branch_probabilities(g, in_edge, outs, ctx).tolist(), strict=True))
    assert p_away[straight_on] < p[straight_on]


# ----------------------------------------------------------------------------- several incidents


def test_tracks_keep_incidents_apart_and_expire_silent_ones(straight) -> None:
    tracks = Tracks(straight, config=TrackerConfig(silence_timeout_s=300.0))
    tracks.open("a", T0)
    tracks.open("b", T0 + timedelta(seconds=100))
    with pytest.raises(IncidentAlreadyOpenError):
        tracks.open("a", T0)
    with pytest.raises(UnknownIncidentError, match="zzz"):
        tracks.update(sighting("c0", 0.0, "ev0", incident="zzz"))
    tracks.update(sighting("c0", 10.0, "a0", incident="a"))
    tracks.update(sighting("c5", 200.0, "b0", incident="b"))
    assert tracks.belief("a", at(10.0)).last_camera_id == "c0"
    assert tracks.belief("b", at(200.0)).last_camera_id == "c5"
    assert tracks.expire(at(320.0)) == ["a"]
    assert "a" not in tracks and "b" in tracks
    tracks.close("b")
    assert tracks.incident_ids() == ()
    with pytest.raises(UnknownIncidentError):
        tracks.belief("b", at(300.0))
    with pytest.raises(ValueError, match="timezone"):
        tracks.open("c", datetime(2026, 1, 1))  # noqa: DTZ001
    assert datetime(2026, 1, 1, tzinfo=UTC) < T0
    assert math.isfinite(tracks.config.silence_timeout_s)


def test_first_sighting_without_heading_leans_away_from_the_incident() -> None:
    #   0 ◄──► 1 ◄──c──► 2 ◄──► 3   (two-way, 300 m blocks; the incident happened at node 0)
    city = city_from_sketch(
        {0: (0.0, 0.0), 1: (300.0, 0.0), 2: (600.0, 0.0), 3: (900.0, 0.0)},
        [(0, 1), (1, 2), (2, 3)],
        {"c": [(1, 2, 140.0, 160.0), (2, 1, 140.0, 160.0)]},
        two_way=True,
    )
    g = city.graph
    tracks = Tracks(city)
    tracks.open("inc-1", T0, origin=EdgePosition(edge_of(g, 0, 1), 10.0))
    tracks.update(sighting("c", 30.0, "ev0"))
    b = tracks.belief("inc-1", at(30.0))
    p = {wp.edge: wp.probability for wp in b.positions}
    assert p[edge_of(g, 1, 2)] > p[edge_of(g, 2, 1)]
    assert b.origin_node == g.node_index[0]


def test_branch_table_matches_branch_probabilities(fork, straight) -> None:
    model = RoadBehaviour()
    for city in (fork, straight):
        g = city.graph
        for ctx in (
            BranchContext(),
            BranchContext(origin_xy=(float(g.node_xy[0, 0]), float(g.node_xy[0, 1]))),
        ):
            ptr, probs = model.branch_table(g, ctx)
            for e in range(g.n_edges):
                outs = g.out_of(int(g.edge_v[e]))
                expected = model.branch_probabilities(g, e, outs, ctx)
                np.testing.assert_allclose(probs[ptr[e] : ptr[e + 1]], expected, rtol=1e-9, atol=1e-12)
