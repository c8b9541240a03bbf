"""Replays of late sightings: a late sighting that changes nothing (flagged) leaves the later
steps as they are, and every order gives the belief of the in-order arrival."""

from __future__ import annotations

import itertools

from test_tracking_core import STRAIGHT_CAMS, STRAIGHT_EDGES, STRAIGHT_NODES
from test_tracking_helpers import at, city_from_sketch
from test_tracking_helpers import sighting as _sighting

from tracking.tracker import Tracker
from tracking.types import Sighting


def sighting(camera_id: str, at_s: float, event: str, *, confidence: float | None = None) -> Sighting:
    return _sighting(camera_id, at_s, event).model_copy(update={"confidence": confidence})


def _city():  # type: ignore[no-untyped-def]
    return city_from_sketch(STRAIGHT_NODES, STRAIGHT_EDGES, STRAIGHT_CAMS)


def test_a_late_flagged_sighting_replays_nothing_else() -> None:
    city = _city()
    events = [sighting(f"c{k}", 22.0 * k, f"ev{k}") for k in range(0, 8, 2)]
    late = sighting("c1", 25.0, "low", confidence=0.05)  # below min_confidence: flagged
    in_order = Tracker(city)
    for s in sorted([*events, late], key=lambda s: s.observed_at):
        in_order.update(s)
    tracker = Tracker(city)
    for s in events:
        tracker.update(s)
    kept = [step.hyps for step in tracker._steps]
    update = tracker.update(late)
    assert not update.accepted and update.flag is not None and update.flag.reason == "low_confidence"
    assert update.replayed == 1  # the three later sightings were not recomputed
    assert [step.hyps for step in tracker._steps if step.sighting is not late] == kept
    others = [st for st in tracker._steps if st.sighting is not late]
    assert all(step.hyps is k for step, k in zip(others, kept, strict=True))
    assert tracker.sightings() == in_order.sightings()
    for t in (0.0, 30.0, 50.0, 90.0, 150.0, 200.0):
        assert tracker.belief(at(t)) == in_order.belief(at(t))


def test_a_late_accepted_sighting_replays_the_later_ones() -> None:
    city = _city()
    events = [sighting(f"c{k}", 22.0 * k, f"ev{k}") for k in range(0, 8, 2)]
    tracker = Tracker(city)
    for s in events:
        tracker.update(s)
    update = tracker.update(sighting("c1", 25.0, "ev1"))
    assert update.accepted
    assert update.replayed == 4  # itself and the three later ones


def test_every_arrival_order_gives_the_in_order_beliefs() -> None:
    city = _city()
    events = [
        sighting("c0", 0.0, "a"),
        sighting("c2", 44.0, "b"),
        sighting("c3", 60.0, "low", confidence=0.1),
        sighting("c9", 70.0, "far"),  # unreachable in time: flagged
        sighting("c4", 90.0, "c"),
    ]
    in_order = Tracker(city)
    for s in events:
        in_order.update(s)
    expected = [in_order.belief(at(t)) for t in (10.0, 50.0, 65.0, 80.0, 120.0)]
    flags = [(s.source_event_id, acc, f.reason if f else None) for s, acc, f in in_order.sightings()]
    assert ("far", False, "unreachable_in_time") in flags and ("low", False, "low_confidence") in flags
    for order in itertools.permutations(events):
        tracker = Tracker(city)
        for s in order:
            tracker.update(s)
        assert [tracker.belief(at(t)) for t in (10.0, 50.0, 65.0, 80.0, 120.0)] == expected
        assert tracker.sightings() == in_order.sightings()
