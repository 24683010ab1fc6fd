"""A small monitor of the running pipeline: scrape each service's ``/metrics``, keep a series.

Every ``every_s`` seconds :class:`Monitor` reads each source's Prometheus
exposition and records one :class:`Sample` per service: its resident memory
(``process_resident_memory_bytes``), its consumer lag (``churnwatch_consumer_lag``,
summed over topics and partitions) and the events per second it processed since
its previous successful sample (from the counter in :data:`THROUGHPUT`). A
source that does not answer gives a sample marked down, with no figures: a gap
in the series, never an exception. ``churnwatch simulate --monitor`` shows the
latest samples while it streams and writes them as CSV (docs/simulator.md,
"Operator-scale run").
"""

from __future__ import annotations

import csv
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "CSV_COLUMNS",
    "MONITORED",
    "THROUGHPUT",
    "Monitor",
    "Reading",
    "Sample",
    "Throughput",
    "read_exposition",
    "write_csv_rows",
]

MONITORED = ("ingest", "scoring", "alerting", "outreach")
"""The services of a stack that serve ``/metrics`` (the SMS gateway stand-in does not)."""

LAG = "churnwatch_consumer_lag"
RSS = "process_resident_memory_bytes"

CSV_COLUMNS = ("elapsed_s", "service", "events_per_s", "lag", "rss_bytes")
"""The CSV's header; a service that did not answer has its three figures empty."""


@dataclass(frozen=True, slots=True)
class Throughput:
    """The counter whose increase is the events a service processed.

    ``sample`` is the sample's full name (``..._total``); the values of every
    sample of that name whose labels include ``labels`` are added up.
    """

    sample: str
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether a sample counts towards this throughput."""
        return name == self.sample and all(labels.get(k) == v for k, v in self.labels)


THROUGHPUT: dict[str, Throughput] = {
    # Events ingest took in (rejected ones never reach the pipeline).
    "ingest": Throughput("churnwatch_ingest_events_total", (("result", "accepted"),)),
    # Events scoring consumed, applied or dropped as duplicates: both drain its lag.
    "scoring": Throughput("churnwatch_scoring_events_total"),
    # Scores (and profile events) alerting consumed, handled or duplicate.
    "alerting": Throughput("churnwatch_alerting_messages_total"),
    # ``churnwatch simulate``'s own registry: the events it posted.
    "simulate": Throughput("churnwatch_simulate_events_posted_total"),
}
"""Per service name; any other name (outreach, a replica) counts the records it consumed."""

DEFAULT_THROUGHPUT = Throughput("churnwatch_consumer_records_total")


@dataclass(frozen=True, slots=True)
class Reading:
    """What one exposition says; None where it says nothing."""

    processed: float
    """The throughput counter's value (0 before its first event: a labelled counter
    has no samples until then)."""
    lag: float | None
    """Consumer lag summed over every topic and partition (None: no consumer assigned)."""
    rss_bytes: float | None


def read_exposition(text: str, throughput: Throughput) -> Reading:
    """Pick the processed count, the summed lag and the RSS out of an exposition's text."""
    processed = 0.0
    lag: float | None = None
    rss: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value):
                continue
            if throughput.matches(sample.name, sample.labels):
                processed += sample.value
            elif sample.name == LAG:
                # One process, one consumer loop: every lag sample is this service's.
                lag = (lag or 0.0) + sample.value
            elif sample.name == RSS:
                rss = sample.value
    return Reading(processed, lag, rss)


@dataclass(frozen=True, slots=True)
class Sample:
    """One service at one moment of the run."""

    elapsed_s: float
    """Seconds since the monitor's first sample."""
    service: str
    up: bool
    """False when ``/metrics`` did not answer: the figures are None (a gap)."""
    events_per_s: float | None
    """Processed since this service's previous successful sample (None for the first)."""
    lag: float | None
    rss_bytes: float | None
    error: str = ""
    """Why it is down."""


Source = str | Callable[[], str]
"""A base URL (``/metrics`` is appended), or a function returning exposition text."""


class Monitor:
    """Samples every source in rounds; :meth:`start` does so every ``every_s`` in a thread.

    Thread-safe: the background thread appends, the caller reads :attr:`rounds`,
    :meth:`latest` and the peaks at any time.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        *,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Watch ``sources`` (service name -> source); ``timeout_s`` bounds each scrape."""
        self.sources = dict(sources)
        self.clock = clock
        self._client = httpx.Client(timeout=timeout_s)
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._last: dict[str, tuple[float, float]] = {}  # service -> (time, processed)
        self._ever_lagged: set[str] = set()
        self._rounds: list[list[Sample]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_round: Callable[[list[Sample]], None] | None = None
        """Called (in the sampling thread) with each new round, e.g. to write CSV rows."""

    # --- sampling ---------------------------------------------------------------------

    def _scrape(self, source: Source) -> str:
        if callable(source):
            return source()
        response = self._client.get(source.rstrip("/") + "/metrics")
        response.raise_for_status()
        return response.text

    def _one(self, service: str, source: Source, now: float, elapsed: float) -> Sample:
        try:
            reading = read_exposition(
                self._scrape(source), THROUGHPUT.get(service, DEFAULT_THROUGHPUT)
            )
        except Exception as exc:
            # Down, restarting, answering garbage: whatever it is, a gap and not a
            # crash of the run it watches. The rate resumes from the last good sample.
            return Sample(elapsed, service, False, None, None, None, error=str(exc) or repr(exc))
        rate = None
        last = self._last.get(service)
        if last is not None and now > last[0]:
            done = reading.processed - last[1]
            if done < 0:  # the counter went back: the process restarted from zero
                done = reading.processed
            rate = done / (now - last[0])
        self._last[service] = (now, reading.processed)
        if reading.lag is not None:
            self._ever_lagged.add(service)
        return Sample(elapsed, service, True, rate, reading.lag, reading.rss_bytes)

    def sample(self) -> list[Sample]:
        """Scrape every source once now; record and return the round."""
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        elapsed = now - self._t0
        found = [self._one(name, source, now, elapsed) for name, source in self.sources.items()]
        with self._lock:
            self._rounds.append(found)
        if self.on_round is not None:
            self.on_round(found)
        return found

    def start(self, every_s: float) -> None:
        """Sample now, then every ``every_s`` seconds in a daemon thread until :meth:`stop`.

        The first round is taken before this returns: the time axis starts there.
        """
        if every_s <= 0:
            raise ValueError("every_s must be > 0")
        next_at = self.clock()
        self.sample()

        def run() -> None:
            nonlocal next_at
            while True:
                next_at += every_s
                # A slow round does not pile up rounds: the next starts on the grid.
                while next_at <= self.clock():
                    next_at += every_s
                if self._stop.wait(next_at - self.clock()):
                    return
                self.sample()

        self._thread = threading.Thread(target=run, name="churnwatch-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after the round in hand) and close the HTTP client."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._client.close()

    # --- reading the series -----------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since the first sample (0 before it): the time axis of the samples."""
        return 0.0 if self._t0 is None else self.clock() - self._t0

    @property
    def rounds(self) -> list[list[Sample]]:
        """Every round so far, oldest first."""
        with self._lock:
            return list(self._rounds)

    @property
    def samples(self) -> list[Sample]:
        """Every sample so far, round by round."""
        return [s for r in self.rounds for s in r]

    def latest(self) -> dict[str, Sample]:
        """Each service's most recent sample."""
        rounds = self.rounds
        return {s.service: s for s in rounds[-1]} if rounds else {}

    def caught_up(self, found: list[Sample]) -> bool:
        """Whether a round shows the pipeline drained: every service up, every lag 0.

        A service that never reported a lag has no consumer and counts as drained;
        one that did and reports none now (restarted, not yet assigned) does not.
        """
        for s in found:
            if not s.up:
                return False
            if s.lag is None and s.service in self._ever_lagged:
                return False
            if s.lag:
                return False
        return bool(found)

    def peak(self, service: str, figure: str) -> float | None:
        """The highest ``figure`` (``lag``, ``rss_bytes``, ``events_per_s``) a service had."""
        values = [
            getattr(s, figure)
            for s in self.samples
            if s.service == service and getattr(s, figure) is not None
        ]
        return max(values) if values else None


def write_csv_rows(out: IO[str], found: list[Sample], *, header: bool = False) -> None:
    """Append a round to a CSV (:data:`CSV_COLUMNS`); a down service's figures are empty."""

    def cell(x: float | None, digits: int) -> str:
        return "" if x is None else f"{x:.{digits}f}"

    writer = csv.writer(out)
    if header:
        writer.writerow(CSV_COLUMNS)
    for s in found:
        writer.writerow(
            [
                f"{s.elapsed_s:.3f}",
                s.service,
                cell(s.events_per_s, 1),
                cell(s.lag, 0),
                cell(s.rss_bytes, 0),
            ]
        )
