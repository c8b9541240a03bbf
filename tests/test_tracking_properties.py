"""Property tests of the tracker on a small two-way grid (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tracking_helpers import at, city_from_sketch, sighting

from tracking.tracker import Tracker

# A 3×3 two-way grid, 200 m blocks; cameras see 30 m of every approach of 5 crossings.
#
#   6 ── 7 ── 8
#   │    │    │
#   3 ── 4 ── 5
#   │    │    │
#   0 ── 1 ── 2
_NODES = {r * 3 + c: (200.0 * c, 200.0 * r) for r in range(3) for c in range(3)}
_EDGES = [(r * 3 + c, r * 3 + c + 1) for r in range(3) for c in range(2)] + [
    (r * 3 + c, (r + 1) * 3 + c) for r in range(2) for c in range(3)
]
_NEIGHBOURS: dict[int, list[int]] = {}
for _u, _v in _EDGES:
    _NEIGHBOURS.setdefault(_u, []).append(_v)
    _NEIGHBOURS.setdefault(_v, []).append(_u)
_CAMS = {
    f"k{n}": [(m, n, 170.0, 200.0) for m in _NEIGHBOURS[n]] + [(n, m, 0.0, 30.0) for m in _NEIGHBOURS[n]]
    for n in (0, 2, 4, 6, 8)
}
CITY = city_from_sketch(_NODES, _EDGES, _CAMS, two_way=True)

sightings_st = st.lists(
    st.tuples(
        st.sampled_from(sorted(_CAMS)),
        # 0 s: two sightings at the same instant (zero elapsed time between them).
        st.one_of(st.just(0.0), st.floats(min_value=5.0, max_value=60.0)),
        st.one_of(st.none(), st.floats(min_value=0.0, max_value=359.0)),
    ),
    min_size=1,
    max_size=5,
)


def _events(spec: list[tuple[str, float, float | None]]):
    t = 0.0
    out = []
    for k, (cam, gap, heading) in enumerate(spec):
        t += gap
        out.append(sighting(cam, t, f"ev{k}", heading_deg=heading))
    return out, t


@settings(max_examples=60, deadline=None)
@given(spec=sightings_st, extra=st.floats(min_value=0.0, max_value=150.0))
def test_beliefs_are_well_formed(spec, extra) -> None:
    events, t_end = _events(spec)
    tracker = Tracker(CITY)
    for e in events:
        tracker.update(e)
    when = at(t_end + extra)
    hyps = tracker.hypotheses(when)
    assert hyps.probabilities().sum() == pytest.approx(1.0, abs=1e-9)
    for P in hyps.P:
        assert np.allclose(P, P.T)
        assert np.linalg.eigvalsh(P).min() >= -1e-9
    belief = tracker.belief(when)
    assert sum(wp.probability for wp in belief.positions) == pytest.approx(1.0, abs=1e-9)
    assert sum(r.probability for r in belief.top_routes) <= 1.0 + 1e-9
    for wp in belief.positions:
        assert 0 <= wp.edge < CITY.graph.n_edges
        assert 0.0 <= wp.offset_m <= CITY.graph.edge_length_m[wp.edge]
        assert wp.probability >= 0.0
    assert belief.sigma_along_m >= 0.0 and belief.speed_sigma_mps >= 0.0
    assert 0.0 <= belief.heading_deg < 360.0


@settings(max_examples=25, deadline=None)
@given(spec=sightings_st, order=st.randoms(use_true_random=False), dup=st.booleans())
def test_arrival_order_and_duplicates_do_not_matter(spec, order, dup) -> None:
    events, t_end = _events(spec)
    in_order = Tracker(CITY)
    for e in events:
        in_order.update(e)
    shuffled_events = list(events)
    order.shuffle(shuffled_events)
    if dup:
        shuffled_events += shuffled_events[: len(shuffled_events) // 2 + 1]
    shuffled = Tracker(CITY)
    for e in shuffled_events:
        shuffled.update(e)
    for t in (t_end, t_end + 45.0):
        assert shuffled.belief(at(t)) == in_order.belief(at(t))
    assert [s for s, _, _ in shuffled.sightings()] == [s for s, _, _ in in_order.sightings()]
