"""The outcome rules, recomputed from a replay file alone, independently of the simulator.

The rules are fixed and the same for every policy (see docs/simulator.md):

* **Interception** — the suspect enters a crossing where a crew has been waiting, stopped, for
  at least ``intercept_wait_s`` (10 s): the run ends, a success.
* **Pursuit contact** — a moving crew within ``contact_m`` (50 m) behind the suspect on the
  same edge; counted once per crew and suspect edge traversal, before the run's end. Not a success.
* **Escape** — the suspect enters an exit crossing (leaves the map); **timeout** — the duration
  ends first. Both count as escapes in the summaries.

This module reads only the replay's ``move`` and ``wait`` events and its header (rules, exits,
duration). It shares no code with :mod:`sim.world`, which detects the same outcomes online as
events happen; the tests check that both agree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.replay import Replay, read_replay

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Verdict:
    """A recomputed outcome: ``kind``, time ``t``, crossing and crew, and the pursuit contacts
    as ``(crew_id, edge, t)`` sorted by time."""

    kind: str
    t: float
    node: int | None
    crew_id: str | None
    contacts: tuple[tuple[str, int, float], ...]


def _first_contact(
    s0: float, s1: float, c0: float, c1: float, length_m: float, contact_m: float
) -> float | None:
    """Earliest t in both traversals where 0 <= suspect offset - crew offset <= contact_m.

    The gap is linear in t over the overlap, so the set is an interval whose start is one of:
    the overlap's ends, or where the gap equals 0 or ``contact_m``."""
    lo, hi = max(s0, c0), min(s1, c1)
    if hi < lo:
        return None

    def gap(t: float) -> float:
        s = length_m * (t - s0) / (s1 - s0) if s1 > s0 else length_m
        c = length_m * (t - c0) / (c1 - c0) if c1 > c0 else length_m
        return s - c

    g_lo, g_hi = gap(lo), gap(hi)
    candidates = [lo, hi]
    if hi > lo and g_hi != g_lo:
        slope = (g_hi - g_lo) / (hi - lo)
        for level in (0.0, contact_m):
            t = lo + (level - g_lo) / slope
            if lo <= t <= hi:
                candidates.append(t)
    ok = [t for t in candidates if -_EPS <= gap(t) <= contact_m + _EPS]
    return min(ok) if ok else None


def recompute(replay: Replay) -> Verdict:
    """Apply the outcome rules to a replay's moves and waits."""
    h = replay.header
    wait_s = float(h["rules"]["intercept_wait_s"])
    contact_m = float(h["rules"]["contact_m"])
    duration = float(h["duration_s"])
    exits = {int(n) for n in h["exit_nodes"]}
    moves = replay.of_type("move")
    suspect = sorted((m for m in moves if m["agent"] == "suspect"), key=lambda m: float(m["t0"]))
    crew_moves: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in moves:
        if m["agent"] != "suspect":
            crew_moves[int(m["edge"])].append(m)
    waits: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for w in replay.of_type("wait"):
        waits[int(w["node"])].append(w)

    kind, end, node, crew = "timeout", duration, None, None
    for m in suspect:
        t, v = float(m["t1"]), int(m["v"])
        if t > duration:
            break
        stopped = sorted(
            (
                w
                for w in waits.get(v, [])
                if float(w["t0"]) + wait_s <= t and (w["t1"] is None or t < float(w["t1"]))
            ),
            key=lambda w: (float(w["t0"]), str(w["agent"])),
        )
        if stopped:
            kind, end, node, crew = "interception", t, v, str(stopped[0]["agent"])
            break
        if v in exits:
            kind, end, node = "escape", t, v
            break

    contacts: list[tuple[str, int, float]] = []
    for m in suspect:
        if float(m["t0"]) > end:
            break
        seen: set[str] = set()
        hits: list[tuple[str, int, float]] = []
        for c in crew_moves.get(int(m["edge"]), []):
            hit = _first_contact(
                float(m["t0"]),
                float(m["t1"]),
                float(c["t0"]),
                float(c["t1"]),
                float(m["length_m"]),
                contact_m,
            )
            if hit is not None and hit <= end:
                hits.append((str(c["agent"]), int(m["edge"]), hit))
        for agent, edge, t in sorted(hits, key=lambda x: x[2]):
            if agent not in seen:
                seen.add(agent)
                contacts.append((agent, edge, t))
    contacts.sort(key=lambda x: (x[2], x[0]))
    return Verdict(kind, end, node, crew, tuple(contacts))


def recompute_file(path: str | Path) -> Verdict:
    """:func:`recompute` on a replay file."""
    return recompute(read_replay(path))


def recorded_verdict(replay: Replay) -> Verdict:
    """The simulator's own verdict as written in the replay (its ``outcome`` and ``contact`` events)."""
    outs = replay.of_type("outcome")
    if not outs:
        raise ValueError("replay has no outcome event")
    o = outs[-1]
    contacts = tuple(
        sorted(
            ((str(c["crew_id"]), int(c["edge"]), float(c["t"])) for c in replay.of_type("contact")),
            key=lambda x: (x[2], x[0]),
        )
    )
    return Verdict(str(o["kind"]), float(o["t"]), o["node"], o["crew_id"], contacts)
