"""The tracker keeps its last belief: asking again is free, and any new sighting (late or not)
gives the belief a fresh tracker would."""

from __future__ import annotations

from datetime import timedelta, timezone

from test_tracking_helpers import T0, at, city_from_sketch, sighting

from tracking.tracker import Tracker

NODES = {i: (300.0 * i, 0.0) for i in range(11)}
EDGES = [(i, i + 1) for i in range(10)]
CAMS = {f"c{i}": [(i, i + 1, 140.0, 160.0)] for i in range(10)}


def test_belief_is_reused_and_follows_late_sightings() -> None:
    city = city_from_sketch(NODES, EDGES, CAMS)
    tracker = Tracker(city, incident_id="inc-1", opened_at=T0)
    tracker.update(sighting("c1", 20.0, "e1"))
    tracker.update(sighting("c4", 60.0, "e4"))
    first = tracker.belief(at(70.0))
    assert tracker.belief(at(70.0)) is first  # reused
    # The same instant in another time zone: an equal belief, stamped with that zone.
    paris = at(70.0).astimezone(timezone(timedelta(hours=1)))
    other = tracker.belief(paris)
    assert other.at.tzinfo == paris.tzinfo
    assert other.positions == first.positions
    # A late sighting (before the last one) at the same belief time changes it, as a fresh
    # tracker given every sighting says.
    tracker.update(sighting("c2", 35.0, "e2"))
    again = tracker.belief(at(70.0))
    fresh = Tracker(city, incident_id="inc-1", opened_at=T0)
    for s in (sighting("c1", 20.0, "e1"), sighting("c2", 35.0, "e2"), sighting("c4", 60.0, "e4")):
        fresh.update(s)
    assert again == fresh.belief(at(70.0))
    assert again.n_sightings == 3 and first.n_sightings == 2
    # A duplicate changes nothing.
    tracker.update(sighting("c2", 35.0, "e2"))
    assert tracker.belief(at(70.0)) is again
