"""Clocks of the server. The core never reads a clock; the server does, through one of these.

:class:`WallClock` for live mode; :class:`SimulationClock` for simulation mode, where the simulator
(or an evaluation harness) sets the time, so the real server can run faster than real time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    name: str

    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class WallClock:
    name = "wall"

    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulationClock:
    """Time set from outside. It never goes backwards: :meth:`set` to an earlier time is ignored,
    and every event time seen (a sighting's ``observed_at``) can move it forward with :meth:`advance_to`."""

    name = "simulation"

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError(f"simulation clock start {start!r} is not timezone-aware")
        self._now = start if start is not None else datetime(2026, 1, 1, 8, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, at: datetime) -> datetime:
        if at.tzinfo is None:
            raise ValueError(f"simulation time {at!r} is not timezone-aware")
        if at > self._now:
            self._now = at.astimezone(UTC)
        return self._now

    advance_to = set
