"""A drill's load: a simulated operator posted to ingest, as the billing system does.

The billing system's side of the contract: each batch is posted until ingest
acknowledges it (a 2xx); a 503, a timeout or a refused connection means
"nothing was accepted, retry" and the same batch is sent again with the same
event ids. The load records every event id ingest acknowledged: that is what
the drill then looks for at the far end.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from churnwatch.simulator import Simulation, SimulationConfig, default_streaming_end


@dataclass
class LoadStats:
    """What the load sent and what ingest acknowledged."""

    acknowledged: set[str] = field(default_factory=set)
    for_alerting: set[str] = field(default_factory=set)  # acknowledged, not call records
    rejected: int = 0  # refused by ingest as invalid (4xx per event): not expected here
    retries: int = 0  # batches sent again after a 503, a timeout or a refused connection
    answers: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    subscribers: set[str] = field(default_factory=set)


class Load:
    """Posts one simulated operator to ingest in a thread, paced, until done or stopped."""

    def __init__(
        self,
        ingest_url: str,
        api_key: str,
        *,
        subscribers: int,
        seed: int,
        id_prefix: str,
        rate: float,
        batch_size: int = 100,
        days: int = 31,
    ) -> None:
        self.url = ingest_url.rstrip("/") + "/v1/events"
        self.api_key = api_key
        self.rate = rate
        self.batch_size = batch_size
        self.sim = Simulation(
            SimulationConfig(
                subscribers=subscribers,
                days=days,
                seed=seed,
                id_prefix=id_prefix,
                churn_from_day=1,
            ),
            end=default_streaming_end(),
        )
        self.batches = [
            day[k : k + batch_size]
            for day in self.sim.days()
            for k in range(0, len(day), batch_size)
        ]
        self.total = sum(len(b) for b in self.batches)
        self.stats = LoadStats()
        self.sent = 0  # events whose batch got its answer (acknowledged or rejected)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{id_prefix}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Load:
        """Start posting."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the batch in hand (which is still posted until acknowledged)."""
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the load to finish; True if it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        """Every batch was acknowledged (or the load was stopped)."""
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            with httpx.Client(
                timeout=15, headers={"Authorization": f"Bearer {self.api_key}"}
            ) as client:
                start = time.monotonic()
                for batch in self.batches:
                    if self._stop.is_set():
                        return
                    wait = start + self.sent / self.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)  # pacing, not synchronisation
                    self._post_until_acknowledged(client, batch)
        except BaseException as exc:  # reported by the drill, not lost in a thread
            self.error = exc

    def _post_until_acknowledged(self, client: httpx.Client, batch: list[dict[str, Any]]) -> None:
        delay = 0.2
        while True:
            try:
                response = client.post(self.url, json=batch)
            except httpx.TransportError:
                status = 0
            else:
                status = response.status_code
            self.stats.answers[status] = self.stats.answers.get(status, 0) + 1
            if 200 <= status < 300:
                body = response.json()
                refused = {int(r["index"]) for r in body.get("rejected", [])}
                self.stats.rejected += len(refused)
                for index, event in enumerate(batch):
                    if index not in refused:
                        self.stats.acknowledged.add(str(event["event_id"]))
                        if event["event_type"] != "cdr":  # alerting skips call records
                            self.stats.for_alerting.add(str(event["event_id"]))
                        self.stats.subscribers.add(str(event["subscriber_id"]))
                self.sent += len(batch)
                return
            if status not in (0, 429, 502, 503, 504):
                raise RuntimeError(f"ingest answered {status}: {response.text[:500]}")
            # The billing system's retry: the same events, after a capped backoff.
            self.stats.retries += 1
            time.sleep(delay)
            delay = min(5.0, delay * 2)
