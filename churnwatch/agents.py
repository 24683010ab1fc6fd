"""Simulated account managers: they work outreach's call queues during ``make run``.

Without them nobody works the queue in a simulation: every VIP reminder call
expires, and the reminder-before-suspension KPI reads 0. Each simulated
manager works their own queue (``am:<id>``), a call-centre agent the general
one, through outreach's public HTTP API — the same claim, start and outcome
endpoints a CRM or the workbench uses, never the database — so the audit
trail, the outcomes topic, scoring's censoring and the KPIs see their work.

What happens on a call comes from the simulation's truth:

- the subscriber answers with probability ``answer_rate`` (a churner in their
  warning weeks with ``churner_answer_rate``); one who does not is called back
  ``CALLBACK_AFTER`` later (outreach's time) while that is an hour before the
  call's deadline, else the call ends ``unreachable``;
- a reminder that is answered is ``reached``;
- a retention or care call to a churner whose churn is still ahead ends
  ``retained`` when the simulation's own draw says the contact keeps them
  (:meth:`Simulation.persuaded`, the draw its feedback then applies), else
  ``not_interested``; anyone else was ``reached``;
- a win-back offer is declined (``not_interested``): the simulation has no
  reactivations.

Outreach runs on the stream's time in a simulation (``OUTREACH_CLOCK=stream``),
so the callback time is reckoned from the time outreach stamped on the claim.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from random import Random
from typing import Any

import httpx

from churnwatch.simulation import Simulation

log = logging.getLogger(__name__)

CALL_CENTRE = "call-centre"
"""The agent id of the simulated call centre (the general queue)."""

CALLBACK_AFTER = timedelta(hours=3)
"""An unanswered call is tried again this much later (stream time), if still in time."""


@dataclass
class AgentStats:
    """What the simulated managers did."""

    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0  # a claim lost meanwhile (timed out, cancelled): left alone


@dataclass(frozen=True)
class AgentConfig:
    """How the simulated managers behave."""

    answer_rate: float = 0.85
    churner_answer_rate: float = 0.7
    poll_s: float = 0.2
    """How long an idle sweep waits before looking at the queues again."""


class CallAgents:
    """Simulated account managers and a call-centre agent, on a thread of their own."""

    def __init__(
        self,
        sim: Simulation,
        outreach_url: str,
        *,
        headers: dict[str, str],
        config: AgentConfig | None = None,
        general_queue: str = "general",
    ) -> None:
        """Work ``outreach_url``'s queues for ``sim``'s managers once started."""
        self.sim = sim
        self.url = outreach_url.rstrip("/")
        self.headers = headers
        self.config = config or AgentConfig()
        self.queues = {f"am:{m}": m for m in sim.manager_ids} | {general_queue: CALL_CENTRE}
        self.stats = AgentStats()
        self._attempts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin working the queues in the background."""
        self._thread = threading.Thread(target=self._run, name="simulated-managers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the call in hand and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    worked = self.sweep(client)
                except httpx.HTTPError as exc:
                    # Outreach restarting (the supervisor brings it back): try again.
                    log.warning("simulated managers: outreach unreachable (%s)", exc)
                    worked = 0
                if worked == 0:
                    self._stop.wait(self.config.poll_s)

    def sweep(self, client: httpx.Client) -> int:
        """Claim and work every due call of every queue once; how many were worked."""
        worked = 0
        for queue, agent in self.queues.items():
            while not self._stop.is_set():
                claimed = client.post(f"/v1/call-queues/{queue}/claim", json={"agent_id": agent})
                if claimed.status_code == 204:
                    break
                claimed.raise_for_status()
                self.stats.claimed += 1
                self._work(client, claimed.json(), agent)
                worked += 1
        return worked

    def _work(self, client: httpx.Client, task: dict[str, Any], agent: str) -> None:
        task_id = task["task_id"]
        started = client.post(f"/v1/tasks/{task_id}/start", json={"agent_id": agent})
        if started.status_code == 409:
            self.stats.conflicts += 1
            return
        started.raise_for_status()
        outcome = self.outcome(task)
        # Outreach's time at the claim (the stream's, in a simulation) sets the callback.
        now = datetime.fromisoformat(started.json()["assigned_at"])
        deadline = task.get("due_at")
        last = datetime.fromisoformat(deadline) - timedelta(hours=1) if deadline else None
        after = CALLBACK_AFTER
        while True:
            body: dict[str, str] = {"agent_id": agent, "outcome": outcome}
            if outcome == "callback":
                if last is not None and now + after >= last:
                    body["outcome"] = "unreachable"  # no time left to try again
                else:
                    body["callback_at"] = (now + after).isoformat()
            done = client.post(f"/v1/tasks/{task_id}/outcome", json=body)
            if done.status_code == 422 and body["outcome"] == "callback":
                # The stream moved past the callback time meanwhile: book a later one.
                after *= 2
                continue
            if done.status_code == 409:
                self.stats.conflicts += 1
                return
            done.raise_for_status()
            self.stats.outcomes[body["outcome"]] += 1
            return

    def outcome(self, task: dict[str, Any]) -> str:
        """The outcome of this attempt at the call (see the module docstring)."""
        sid, task_id = task["subscriber_id"], task["task_id"]
        self._attempts[task_id] += 1
        attempt = self._attempts[task_id]
        churning = self.sim.churning(sid)
        rate = self.config.churner_answer_rate if churning else self.config.answer_rate
        seed = self.sim.config.seed
        if Random(f"{seed}|{task_id}|{attempt}|answer").random() >= rate:
            return "callback"
        kind = task["kind"]
        if kind in ("retention", "care"):
            if churning:
                return "retained" if self.sim.persuaded(sid) else "not_interested"
            return "reached"
        if kind == "win_back":
            return "not_interested"
        return "reached"
