"""The time a service acts on: the wall clock, or the time of the stream it consumes.

In production every service acts on the wall clock. A replay or a simulation
streams weeks of past events in minutes; a service that judges deadlines set in
event time (a reminder due before a suspension) against the wall clock finds
every one of them long past. ``StreamClock`` is for those runs only: its time is
the newest event time the service has consumed, so a deadline is judged against
the replayed day. It never goes backwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

ClockKind = Literal["wall", "stream"]
"""``wall`` in production; ``stream`` for replays and simulations (see the module)."""


class Clock(Protocol):
    """What a service asks for the current time."""

    def now(self) -> datetime:
        """The current time (timezone-aware, UTC)."""
        ...


class WallClock:
    """The wall clock."""

    def now(self) -> datetime:
        """``datetime.now(UTC)``."""
        return datetime.now(UTC)


MAX_AHEAD = timedelta(hours=1)
"""A stream time further ahead of the wall clock than this is a bad timestamp, not time."""


class StreamClock:
    """The newest event time observed; before any, the ``start`` it was given (or the epoch)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(1970, 1, 1, tzinfo=UTC)

    def observe(self, at: datetime) -> None:
        """An event of time ``at`` was consumed: time moves to it if it is newer.

        A replayed past is never ahead of the wall clock (ingest refuses events
        more than an hour ahead), so a time further ahead than ``MAX_AHEAD`` is a
        bad timestamp and is ignored: one task stamped in 2031 must not make
        every deadline until then pass.
        """
        if self._now < at <= datetime.now(UTC) + MAX_AHEAD:
            self._now = at

    def now(self) -> datetime:
        """The newest event time observed."""
        return self._now


def make_clock(kind: ClockKind) -> WallClock | StreamClock:
    """The clock a setting names."""
    return StreamClock() if kind == "stream" else WallClock()
