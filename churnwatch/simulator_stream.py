"""Streaming a simulation to ingest, day by day, with outreach feedback.

:func:`stream_to_ingest` posts a :class:`~churnwatch.simulation.Simulation`'s
events to ingest in batches (paced to a rate, a 503 resent after its
``Retry-After``), and after each day feeds back the subscribers a retention
task reached (:func:`poll_reached`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from churnwatch.keys import api_headers
from churnwatch.resend import post_with_resend
from churnwatch.simulation import Simulation

REACHED_STATUSES = ("delivered", "completed")  # retention tasks that reached the subscriber


@dataclass
class StreamStats:
    """What a stream to ingest did."""

    events: int = 0
    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    seconds: float = 0.0
    saved: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """Events per second, end to end."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def poll_reached(client: httpx.Client, outreach_url: str) -> set[str]:
    """Subscribers with a retention task that was delivered (SMS) or completed (call)."""
    reached: set[str] = set()
    for status in REACHED_STATUSES:
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"kind": "retention", "status": status, "limit": 200}
            if cursor:
                params["cursor"] = cursor
            response = client.get(outreach_url + "/v1/tasks", params=params)
            response.raise_for_status()
            body = response.json()
            reached.update(item["subscriber_id"] for item in body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
    return reached


def _post(
    client: httpx.Client, url: str, batch: list[dict[str, Any]], sleep: Callable[[float], None]
) -> Any:
    # A 503 means the broker did not acknowledge: resending is safe (same event ids).
    response = post_with_resend(lambda: client.post(url, json=batch), sleep=sleep)
    response.raise_for_status()
    return response.json()


def stream_to_ingest(
    sim: Simulation,
    ingest_url: str,
    *,
    rate: float | None = None,
    batch_size: int = 1000,
    outreach_url: str | None = None,
    on_day: Callable[[int, StreamStats], None] | None = None,
    on_batch: Callable[[StreamStats, int, int], None] | None = None,
    client: httpx.Client | None = None,
    api_key: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StreamStats:
    """POST the simulation to ``{ingest_url}/v1/events`` day by day, in batches.

    ``rate`` (events/s) paces the batches: batch k is sent no earlier than the
    moment the events before it would have taken at that rate, so the average
    rate never exceeds it (a slow ingest only makes it lower). With
    ``outreach_url``, retention tasks that reached a subscriber are polled after
    each day and fed back with :meth:`Simulation.reach`. ``on_day(day, stats)`` is
    called after each day (the progress bar); ``on_batch(stats, done, total)`` after
    each POST, with the events of the current day posted so far and in all (a
    one-day run of a million subscribers is a single day). A 503 is resent after
    its ``Retry-After`` (:mod:`churnwatch.resend`); ``clock`` and ``sleep`` are the
    time the pacing and those waits use.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    stats = StreamStats()
    own = client is None
    http = client or httpx.Client(timeout=60, headers=api_headers(api_key))
    url = ingest_url.rstrip("/") + "/v1/events"
    t0 = clock()
    try:
        for batch in sim.days():
            for k in range(0, len(batch), batch_size):
                chunk = batch[k : k + batch_size]
                if rate is not None:
                    wait = t0 + stats.events / rate - clock()
                    if wait > 0:
                        sleep(wait)
                body = _post(http, url, chunk, sleep)
                stats.accepted += int(body.get("accepted", 0))
                stats.rejected += len(body.get("rejected", []))  # [{index, error}, ...]
                stats.events += len(chunk)
                stats.batches += 1
                if on_batch is not None:
                    stats.seconds = clock() - t0
                    on_batch(stats, k + len(chunk), len(batch))
            if outreach_url is not None:
                stats.saved += sim.reach(sorted(poll_reached(http, outreach_url.rstrip("/"))))
            stats.seconds = clock() - t0
            if on_day is not None:
                on_day(sim.day, stats)
    finally:
        if own:
            http.close()
    stats.seconds = clock() - t0
    return stats
