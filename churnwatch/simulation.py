"""The simulated operator: its population, its days of events, outreach feedback, the truth.

:class:`Simulation` plans the population from a :class:`SimulationConfig` and
generates it one day at a time (:mod:`churnwatch.synth`, plus recoverers);
:meth:`Simulation.reach` is the outreach feedback; the ground truth is written
as CSV, and file mode writes the events as NDJSON. The generative story and the
determinism rules are in :mod:`churnwatch.simulator`'s docstring and
``docs/simulator.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import IO, Any

from churnwatch import synth
from shared.events import TASK_NAMESPACE

ID_TAG = "sim|"
"""Event ids are ``derive_id("sim", seed, subscriber_id, n)`` (shared.events)."""

SOURCE = "simulator"
"""The events' ``source``."""

RECOVERY_DAYS = 14  # a subscriber saved by outreach returns to normal over two weeks


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. The defaults are sized for ``make run``."""

    subscribers: int = 2000
    days: int = 60
    seed: int = 7
    churn_rate: float = 0.08
    """Share of subscribers who would churn during the period without outreach."""
    silent_churn_share: float = 0.10
    """Share of churners who give no warning at all."""
    recovery_share: float = 0.04
    """Share of non-churners who show a churner's full warning signs, then recover."""
    outreach_effect: float = 0.5
    """Probability that a churner reached by a retention task stays (streaming only)."""
    id_prefix: str = "SIM"
    warning_days: tuple[int, int] = (28, 56)
    """How many days before their churn a churner's warning signs begin (low, high)."""
    ramp_power: float = 0.5
    """Shape of the warning ramp: intensity = (share of the ramp elapsed) ** ramp_power."""
    churn_from_day: int = synth.CHURN_AFTER_DAY
    """The first day (0-based) a churner may churn; earlier churns began warning before day 0."""

    def __post_init__(self) -> None:
        for name in ("recovery_share", "outreach_effect"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


def default_streaming_end(now: datetime | None = None) -> datetime:
    """The last midnight (UTC) at or before ``now``: a streamed period ends there.

    Ingest refuses events more than an hour ahead of its clock, and the last day's
    usage is stamped up to 23:59, so the period ends at the start of today.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth about one subscriber."""

    subscriber_id: str
    tier: str
    account_manager_id: str | None
    churn_at: datetime | None
    churn_kind: str
    warned: bool
    """A churner whose warning signs ramped up before the churn (not a silent one)."""
    warning_from: datetime | None
    """When the warning ramp (or a recoverer's dip) began."""
    recovered: bool
    """Showed strong warning signs and stayed: a recoverer, or saved by outreach."""
    saved_by_outreach: bool
    late_payer: bool


class Simulation:
    """One simulated operator; :meth:`days` generates it one day at a time.

    Between two days the caller may report subscribers reached by outreach with
    :meth:`reach`; that changes what the following days hold.
    """

    def __init__(self, config: SimulationConfig, *, end: datetime | None = None) -> None:
        """Plan the population. ``end`` (aware) is where the period ends.

        Without ``end`` the period starts at ``synth.DEFAULT_START`` (2026-01-01),
        so files are the same on every run and every day.
        """
        self.config = config
        start = None if end is None else end.astimezone(UTC) - timedelta(days=config.days)
        plan = synth._make_plan(
            subscribers=config.subscribers,
            days=config.days,
            seed=config.seed,
            start=start,
            churn_rate=config.churn_rate,
            silent_churn_share=config.silent_churn_share,
            id_prefix=config.id_prefix,
            warning_days=config.warning_days,
            ramp_power=config.ramp_power,
            churn_from_day=config.churn_from_day,
        )
        self._plan = dataclasses.replace(
            plan, id_namespace=TASK_NAMESPACE, id_tag=ID_TAG, source=SOURCE
        )
        self.start: datetime = plan.start
        self.end: datetime = plan.start + timedelta(days=config.days)
        self._index = {s.sid: i for i, s in enumerate(plan.subs)}
        self._recoverers: set[str] = set()
        self._saved: dict[str, int] = {}  # saved subscriber -> first day of their warning ramp
        self._mild: set[str] = {s.sid for s in plan.subs if s.false_alarm}
        self._add_recoverers()
        self._day = 0
        self.events_by_type: Counter[str] = Counter()

    def _add_recoverers(self) -> None:
        # A generator of its own, so that the synth population is the same with or
        # without recoverers; the day-by-day draws come after, from the plan's.
        rng = Random(f"{self.config.seed}|recoverers")
        low, high = self.config.warning_days
        for sub in self._plan.subs:
            if sub.churn_day is not None or sub.false_alarm:
                continue
            if rng.random() >= self.config.recovery_share:
                continue
            # The same signs as a churner's ramp (synth._intensity's triangle for a
            # false alarm): up for half the dip, back down for the other half.
            sub.false_alarm = True
            sub.ramp_len = 2 * rng.randint(low, high)
            sub.ramp_start = rng.randint(0, max(0, self.config.days - sub.ramp_len))
            sub.voice_floor = rng.uniform(0.3, 0.5)
            sub.comp_target = rng.uniform(0.3, 0.6)
            self._recoverers.add(sub.sid)

    @property
    def subscriber_ids(self) -> list[str]:
        """Every subscriber id, in generation order."""
        return [s.sid for s in self._plan.subs]

    @property
    def day(self) -> int:
        """The index of the next day :meth:`days` will generate."""
        return self._day

    def days(self) -> Iterator[list[dict[str, Any]]]:
        """Each day's events (JSON-ready dicts of the contract), sorted by time."""
        for batch in synth._days(self._plan):
            self.events_by_type.update(e["event_type"] for e in batch)
            self._day += 1
            yield batch

    def events(self) -> Iterator[dict[str, Any]]:
        """All events, in time order (no feedback)."""
        for batch in self.days():
            yield from batch

    def reach(self, subscriber_ids: Iterable[str]) -> list[str]:
        """Outreach reached these subscribers (before the next day); return those saved.

        A churner in their warning weeks whose churn is still ahead stays with
        probability ``outreach_effect``: their churn is called off and the warning
        signs fade over ``RECOVERY_DAYS``. Reporting a subscriber again changes
        nothing; the decision is drawn from (seed, subscriber), so it does not
        depend on the order or the moment of the reports.
        """
        saved: list[str] = []
        d = self._day
        for sid in subscriber_ids:
            if sid in self._saved or not self.churning(sid) or not self.persuaded(sid):
                continue
            sub = self._plan.subs[self._index[sid]]
            # Freeze the signs where they are today, then fade them: a false-alarm
            # triangle peaking today with today's level as its height.
            k = synth._intensity(sub, d)
            sub.voice_floor = 1.0 - k * (1.0 - sub.voice_floor)
            sub.comp_target = sub.comp_share + k * (sub.comp_target - sub.comp_share)
            self._saved[sid] = sub.ramp_start
            sub.ramp_start = d - RECOVERY_DAYS
            sub.ramp_len = 2 * RECOVERY_DAYS
            sub.false_alarm = True
            sub.churn_day = None
            sub.downgrades = sub.arrears = False
            saved.append(sid)
        return saved

    def churning(self, subscriber_id: str) -> bool:
        """True for a churner whose churn is still ahead and who shows warning signs."""
        i = self._index.get(subscriber_id)
        if i is None:
            return False
        sub = self._plan.subs[i]
        return sub.churn_day is not None and not sub.silent and sub.churn_day >= self._day

    def persuaded(self, subscriber_id: str) -> bool:
        """Whether a retention contact keeps this subscriber (the draw :meth:`reach` makes)."""
        draw = Random(f"{self.config.seed}|{subscriber_id}|saved").random()
        return draw < self.config.outreach_effect

    @property
    def manager_ids(self) -> list[str]:
        """The account managers' ids (the VIP profiles' ``account_manager_id``)."""
        return [f"AM-{n:03d}" for n in range(1, synth.manager_count(self.config.subscribers) + 1)]

    def truth(self) -> list[Truth]:
        """Ground truth for every subscriber, as it stands (feedback so far included)."""
        out = []
        for sub, profile in zip(self._plan.subs, self._plan.profiles, strict=True):
            churned = sub.churn_day is not None
            churn_at = (
                self.start + timedelta(days=sub.churn_day, seconds=sub.churn_offset)
                if sub.churn_day is not None
                else None
            )
            warned = churned and not sub.silent and sub.ramp_len > 0
            strong = warned or sub.sid in self._recoverers or sub.sid in self._saved
            ramp_start = self._saved.get(sub.sid, sub.ramp_start)
            out.append(
                Truth(
                    subscriber_id=sub.sid,
                    tier=sub.tier,
                    account_manager_id=profile.get("account_manager_id"),
                    churn_at=churn_at,
                    churn_kind=sub.churn_payload.get("kind", "") if churned else "",
                    warned=warned,
                    warning_from=self.start + timedelta(days=ramp_start) if strong else None,
                    recovered=sub.sid in self._recoverers or sub.sid in self._saved,
                    saved_by_outreach=sub.sid in self._saved,
                    late_payer=sub.late_payer,
                )
            )
        return out


TRUTH_COLUMNS = (
    "subscriber_id",
    "churned",
    "churn_at",
    "kind",
    "tier",
    "account_manager_id",
    "warned",
    "warning_from",
    "recovered",
    "saved_by_outreach",
    "late_payer",
)


def write_truth(truth: Iterable[Truth], out: IO[str]) -> None:
    """Ground truth as CSV; the first four columns are ``import-table --truth``'s."""

    def flag(x: bool) -> int:
        return 1 if x else 0

    writer = csv.writer(out)
    writer.writerow(TRUTH_COLUMNS)
    for t in truth:
        writer.writerow(
            [
                t.subscriber_id,
                flag(t.churn_at is not None),
                t.churn_at.isoformat() if t.churn_at else "",
                t.churn_kind,
                t.tier,
                t.account_manager_id or "",
                flag(t.warned),
                t.warning_from.isoformat() if t.warning_from else "",
                flag(t.recovered),
                flag(t.saved_by_outreach),
                flag(t.late_payer),
            ]
        )


def write_files(sim: Simulation, out: IO[str], truth: IO[str] | None = None) -> int:
    """Write the events as NDJSON to ``out`` (and the truth as CSV); return the count.

    File mode has no outreach feedback: nobody is reached, nobody is saved.
    """
    n = 0
    for batch in sim.days():
        out.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in batch)
        n += len(batch)
    if truth is not None:
        write_truth(sim.truth(), truth)
    return n


def write_truth_file(sim: Simulation, path: Path) -> None:
    """Write the ground truth CSV to ``path``."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        write_truth(sim.truth(), handle)
