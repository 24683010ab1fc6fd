"""One background loop: an async pass every N seconds until stopped.

The services' periodic work (the retention purge, the alerting sweep, outreach's
SMS dispatcher and reconciler, outbox relay, call queue keeper, KPI gauges and
VIP escalation) shares this plumbing; each keeps its own pass. The first pass
runs at once. A pass that raises is logged (with its traceback, on the caller's
logger) and the loop goes on: a database or broker away for a while must never
end the loop. The wait between passes ends early on :meth:`Periodic.wake` or
:meth:`Periodic.stop`, so a stopped service does not sit out the rest of an
interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Periodic:
    """Runs ``work`` at once and then every ``interval_s`` seconds, until :meth:`stop`.

    ``work`` returns True when more is waiting (a full batch, tasks still due):
    the next pass then starts at once, without the wait. An exception from it
    is logged on ``log`` at ``level`` as ``failure`` with the traceback, and the
    loop waits the interval as after an idle pass. ``interval_s`` may be a
    callable, read before every wait.
    """

    def __init__(
        self,
        work: Callable[[], Awaitable[bool | None]],
        *,
        interval_s: float | Callable[[], float],
        log: logging.Logger,
        failure: str,
        level: int = logging.ERROR,
    ) -> None:
        self._work = work
        self._interval_s = interval_s
        self._log = log
        self._failure = failure
        self._level = level
        self.wakeup = asyncio.Event()
        """Set to end the current wait (``wake()``); cleared after every wait."""
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (a long pass may give up early on it)."""
        return self._stopping.is_set()

    def wake(self) -> None:
        """Run the next pass now rather than at the end of the interval."""
        self.wakeup.set()

    def stop(self) -> None:
        """Let :meth:`run` return after the pass in hand, ending any wait at once."""
        self._stopping.set()
        self.wakeup.set()

    async def run(self) -> None:
        """Pass, wait, pass... until :meth:`stop`; a failed pass never ends the loop."""
        while not self._stopping.is_set():
            again = False
            try:
                again = bool(await self._work())
            except Exception:
                self._log.log(self._level, self._failure, exc_info=True)
            if again:
                continue
            interval_s = self._interval_s() if callable(self._interval_s) else self._interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), interval_s)
            # A wake() during the pass ended this wait at once; one during the wait
            # is spent by it. Either way the next wait starts unset.
            self.wakeup.clear()
