"""The outcome rules on hand-built cases, online (sim.world) and recomputed from the replay (sim.outcomes).

The street used by most cases (sim.testing.line_city), two-way, 36 km/h (20 s a block at the
limit; crews at ×1.2 take 16.67 s)::

    0 ──── 1 ──── 2 ──── 3 ──── 4        exits: {4}
      200 m  200 m  200 m  200 m
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.outcomes import _first_contact, recompute, recorded_verdict
from sim.replay import read_replay, write_replay
from sim.testing import Scripted, ScriptedPolicy, line_city, place, scenario_on
from sim.world import CONTACT_M, INTERCEPT_WAIT_S, CityContext, RunResult, World, contact_time

CITY = line_city()
EXITS = np.array([4], dtype=np.int64)
CREW_MODEL = {"reaction_s": 0.0, "compliance": 1.0, "speed_factor": 1.2}


def _run(
    legs: list[tuple[int, int, float]],
    crews_at: list[int],
    orders: list[tuple[float, str, int | None, bool]] = (),  # type: ignore[assignment]
    *,
    tmp_path: Path,
    duration_s: float = 600.0,
    crew_model: dict[str, float] | None = None,
) -> RunResult:
    ctx = CityContext(CITY, exits=EXITS)
    scenario = scenario_on(
        CITY,
        crews_at=crews_at,
        incident={"place": place(CITY, legs[0][0] if legs else 0)},
        crew_model=crew_model or CREW_MODEL,
        duration_s=duration_s,
    )
    result = World(ctx, scenario, ScriptedPolicy(list(orders)), behaviour=Scripted(legs)).run_for()
    # Every case is also recomputed from its replay file alone, independently of the world.
    path = write_replay(result, tmp_path / "run.jsonl")
    replay = read_replay(path)
    got, recorded = recompute(replay), recorded_verdict(replay)
    assert (got.kind, got.node, got.crew_id) == (recorded.kind, recorded.node, recorded.crew_id)
    assert got.t == pytest.approx(recorded.t)
    assert [(c[0], c[1]) for c in got.contacts] == [(c[0], c[1]) for c in recorded.contacts]
    assert [c[2] for c in got.contacts] == pytest.approx([c[2] for c in recorded.contacts])
    return result


STRAIGHT = [(0, 1, 20.0), (1, 2, 20.0), (2, 3, 20.0), (3, 4, 20.0)]


def test_rules_are_the_documented_constants() -> None:
    assert INTERCEPT_WAIT_S == 10.0
    assert CONTACT_M == 50.0


def test_crew_waiting_at_a_crossing_intercepts(tmp_path: Path) -> None:
    # A crew stands at 3 from t=0; the suspect enters 3 at t=60.
    r = _run(STRAIGHT, crews_at=[3], tmp_path=tmp_path)
    assert r.outcome.kind == "interception"
    assert r.outcome.node == 3
    assert r.outcome.crew_id == "crew-1"
    assert r.outcome.t == pytest.approx(60.0)


def test_crew_waiting_less_than_ten_seconds_does_not_intercept(tmp_path: Path) -> None:
    # crew-1 stands at 4; at the tick of t=40 it drives 4 → 3 (16.7 s) and waits there from
    # 56.7; the suspect enters 3 at 60, only 3.3 s later: no interception; escape at 4 (t=80).
    r = _run(STRAIGHT, crews_at=[4], orders=[(40.0, "crew-1", 3, True)], tmp_path=tmp_path)
    arrival = next(m.t1 for m in r.recording.moves if m.agent == "crew-1")
    assert arrival == pytest.approx(40.0 + 200 / 12.0)
    assert 60.0 - arrival < INTERCEPT_WAIT_S
    assert (r.outcome.kind, r.outcome.node, r.outcome.t) == ("escape", 4, pytest.approx(80.0))


def test_crew_that_waited_long_enough_after_driving_intercepts(tmp_path: Path) -> None:
    # The same crew sent at t=30 waits at 3 from 46.7: 13.3 s before the suspect enters.
    r = _run(STRAIGHT, crews_at=[4], orders=[(30.0, "crew-1", 3, True)], tmp_path=tmp_path)
    assert (r.outcome.kind, r.outcome.node, r.outcome.crew_id) == ("interception", 3, "crew-1")
    assert r.outcome.t == pytest.approx(60.0)
    waits = [w for w in r.recording.waits if w.agent == "crew-1"]
    assert [w.node for w in waits] == [4, 3]
    assert waits[0].t1 == pytest.approx(30.0)
    assert waits[1].t0 == pytest.approx(30.0 + 200 / 12.0)


def test_crew_that_left_before_the_suspect_came_does_not_intercept(tmp_path: Path) -> None:
    # crew-1 waits at 3 from t=0 and leaves for 2 at t=50: the suspect enters 3 at 60.
    r = _run(STRAIGHT, crews_at=[3], orders=[(50.0, "crew-1", 2, True)], tmp_path=tmp_path)
    assert r.outcome.kind == "escape"
    assert r.outcome.t == pytest.approx(80.0)
    assert r.outcome.contacts == ()  # it drove 3 → 2 while the suspect drove 2 → 3


def test_escape_at_an_exit_and_timeout_when_time_runs_out(tmp_path: Path) -> None:
    r = _run(STRAIGHT, crews_at=[], tmp_path=tmp_path)
    assert (r.outcome.kind, r.outcome.node, r.outcome.t) == ("escape", 4, pytest.approx(80.0))
    # Parked at 2 (no more legs): the run ends with the duration.
    parked = _run(STRAIGHT[:2], crews_at=[], tmp_path=tmp_path, duration_s=120.0)
    assert (parked.outcome.kind, parked.outcome.node, parked.outcome.t) == ("timeout", None, 120.0)


def test_moving_crew_close_behind_is_a_pursuit_contact(tmp_path: Path) -> None:
    # Suspect 0 → 1 over [0, 20] (10 m/s). crew-1 at 0 follows at t=10, 100 m behind. At the
    # suspect's own speed (factor 1.0) the gap stays 100 m: no contact. At 20 m/s (factor 2)
    # it is 50 m behind at t=15, then reaches 1 with the suspect at t=20 and stops there.
    slow = _run(
        STRAIGHT,
        crews_at=[0],
        orders=[(10.0, "crew-1", 4, True)],
        tmp_path=tmp_path,
        crew_model={**CREW_MODEL, "speed_factor": 1.0},
    )
    assert slow.outcome.contacts == ()
    fast = _run(
        STRAIGHT,
        crews_at=[0],
        orders=[(10.0, "crew-1", 1, True)],
        tmp_path=tmp_path,
        crew_model={**CREW_MODEL, "speed_factor": 2.0},
    )
    assert len(fast.outcome.contacts) == 1
    first = fast.outcome.contacts[0]
    assert (first.crew_id, first.edge) == ("crew-1", CITY.graph.edge_between(0, 1))
    assert first.t == pytest.approx(15.0)
    assert fast.outcome.kind == "escape"  # a contact is not a success


def test_crew_ahead_or_coming_the_other_way_is_no_contact(tmp_path: Path) -> None:
    # crew-1 drives 0 → 4 from t=0, ahead of the suspect (it starts at 0 at t=0 but crews are
    # faster); crew-2 drives 4 → 0 (the opposite edges).
    r = _run(
        STRAIGHT,
        crews_at=[1, 4],
        orders=[(0.0, "crew-1", 4, True), (0.0, "crew-2", 0, True)],
        tmp_path=tmp_path,
    )
    assert r.outcome.contacts == ()


def test_contact_time_cases() -> None:
    # Same start, crew slower: the crew is behind from the start (gap 0 at t=0).
    assert contact_time(0.0, 20.0, 0.0, 40.0, 200.0) == pytest.approx(0.0)
    # Crew enters 100 m behind at the suspect's speed: gap stays 100 m.
    assert contact_time(0.0, 20.0, 10.0, 30.0, 200.0) is None
    # Crew enters 100 m behind twice as fast: 50 m behind 5 s later.
    assert contact_time(0.0, 20.0, 10.0, 20.0, 200.0) == pytest.approx(15.0)
    # Disjoint traversals.
    assert contact_time(0.0, 10.0, 20.0, 30.0, 200.0) is None
    # Crew in front (entered first, faster): never behind.
    assert contact_time(5.0, 25.0, 0.0, 10.0, 200.0) is None


@given(
    s0=st.floats(0, 100),
    s_len=st.floats(0.5, 60),
    c0=st.floats(0, 100),
    c_len=st.floats(0.5, 60),
    length=st.floats(5, 500),
)
@settings(max_examples=300, deadline=None)
def test_online_and_replay_contact_times_agree(
    s0: float, s_len: float, c0: float, c_len: float, length: float
) -> None:
    online = contact_time(s0, s0 + s_len, c0, c0 + c_len, length)
    offline = _first_contact(s0, s0 + s_len, c0, c0 + c_len, length, CONTACT_M)
    if online is None or offline is None:
        # Only a grazing touch (a single instant, to rounding) may be seen by one and not the other.
        assert (online is None) == (offline is None) or _grazing(s0, s_len, c0, c_len, length)
    else:
        assert online == pytest.approx(offline, abs=1e-6)
        # At that time the crew is behind the suspect by 0..50 m.
        gap = length * (online - s0) / s_len - length * (online - c0) / c_len
        assert -1e-6 <= gap <= CONTACT_M + 1e-6


def _grazing(s0: float, s_len: float, c0: float, c_len: float, length: float) -> bool:
    lo, hi = max(s0, c0), min(s0 + s_len, c0 + c_len)
    if hi < lo - 1e-9:
        return False
    gaps = [length * (t - s0) / s_len - length * (t - c0) / c_len for t in (lo, hi)]
    return any(abs(g) < 1e-6 or abs(g - CONTACT_M) < 1e-6 for g in gaps) or hi - lo < 1e-6
