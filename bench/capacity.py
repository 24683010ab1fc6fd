"""``python -m bench.capacity``: write docs/capacity.md, a capacity plan, from bench/results.json.

Issue 20: a plan for a 100-million-subscriber operator in which every measured
figure is printed with its ``results.json`` key and every derived figure with
its arithmetic. The inputs that are not measurements are the constants below;
the document lists them as assumptions. A key missing from the results file is
reported as "not measured in this results.json", never filled in.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import capacity_text as text
from bench.capacity_text import X, num, size
from bench.capacity_wal import KEYS as WAL_KEYS
from bench.capacity_wal import steady_wal

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
OUT = ROOT / "docs" / "capacity.md"
MISSING = "not measured in this results.json"

# --- Assumptions (issue 20, and choices justified in the document) -----------------
SUBSCRIBERS = 100_000_000
EVENTS_PER_DAY = 3_000_000_000
PEAK_FACTOR = 5.0  # peak over the daily mean
HEADROOM = 0.7  # share of a process's measured rate planned for at the peak
MIN_REPLICAS = 2  # per service, for availability
KAFKA_REPLICATION = 3
KAFKA_RETENTION_DAYS = 7  # Kafka's default retention.ms
RETENTION_DAYS = 30  # RETENTION_DAYS default: processed-id rows kept this long
PARTITION_GROWTH = 2.0  # partitions for twice the consumers needed today
PARTITION_STEP = 60  # partition counts are multiples of 60 (divisible by 2, 3, 4, 5, 6, 10, 12)
PARTITION_LIMIT = 1024  # KAFKA_TOPIC_PARTITIONS' upper bound in shared/settings.py
LANDING_SHARE = 1.0  # share of events arriving on the landing topic (worst case for disk)
NON_CDR_SHARE = 14_590 / 558_686  # docs/simulator.md, 90-day mix: what alerting parses
SCORES_PER_EVENT = 0.25  # RiskScores published per event (only when the score moved)
TASKS_PER_EVENT = 0.0005  # OutreachTasks and TaskUpdates per event
OUTCOMES_PER_TASK = 1.5  # final states and call outcomes per task
DLQ_PER_EVENT = 0.0001
SCORE_RECORD_BYTES = 1_200  # a RiskScore with three reasons in English and Chinese
TASK_RECORD_BYTES = 1_500
OUTCOME_RECORD_BYTES = 400
DLQ_RECORD_BYTES = 1_000
SCORING_CACHE_SIZE = 50_000  # SCORING_STATE_CACHE_SIZE default
SNAPSHOTS_PENDING = 31  # (SCORING_HORIZON_DAYS 30 + lateness 1 day) / interval 1 day
PROCESSED_ROW_BYTES = 90  # estimate: uuid + timestamptz heap tuple, uuid btree, BRIN
PG_WAL_CEILING = 100e6  # bytes/s one primary sustains with standbys replaying
PG_SIZE_CEILING = 4e12  # bytes: beyond it, restore time and vacuum dominate

# results.json keys read: key -> (unit, decimals, what it is)
KEYS: dict[str, tuple[str, int, str]] = {
    "ingest_batch_eps": ("events/s", 0, "one ingest process, NDJSON batches of 1,000"),
    "ingest_landing_eps": ("events/s", 0, "one ingest process relaying the landing topic"),
    "scoring_eps": ("events/s", 0, "one scoring process with PostgreSQL, the synthetic population"),
    "scoring_two_process_eps": ("events/s", 0, "two scoring processes in one group"),
    "scoring_two_process_ratio": ("", 4, "two processes over one, same repetition"),
    "scoring_two_process_ratio_min": ("", 4, "the same, its lowest repetition"),
    "scoring_peak_rss_bytes": ("bytes", 0, "peak RSS of one scoring process"),
    "scoring_rss_bytes_per_subscriber": ("bytes", 0, "scoring RSS per cached subscriber"),
    "pg_bytes_per_subscriber": ("bytes", 0, "PostgreSQL, scoring schema, per subscriber"),
    "pg_bytes_per_subscriber_alerting_outreach": (
        "bytes",
        0,
        "PostgreSQL, alerting and outreach schemas, per subscriber sent (e2e run)",
    ),
    "scoring_wal_bytes_per_event": (
        "bytes",
        0,
        "PostgreSQL WAL per scoring event, the run after a checkpoint (largest size)",
    ),
    **WAL_KEYS,
    "kafka_event_bytes": ("bytes", 0, "mean bytes of one record on the events topic"),
    "e2e_achieved_eps": ("events/s", 0, "end-to-end load the four services kept up with"),
    "e2e_task_p99_s": ("s", 3, "end-to-end accepted -> stored task, p99"),
    "e2e_sms_p99_s": ("s", 3, "end-to-end stop_notice accepted -> SMS at gateway, p99"),
}
LOWEST = "scoring_two_process_ratio_min"  # cited only when present
GROWTH_KEY = re.compile(r"^scoring_eps_(\d+)([km])$")
GROWTH_RATIO_KEY = re.compile(r"^scoring_growth_ratio_\w+$")


def spec(key: str) -> tuple[str, int, str]:
    """Unit, decimals and description of a results.json key."""
    if key in KEYS:
        return KEYS[key]
    if GROWTH_RATIO_KEY.match(key):
        return ("", 4, "growth ratio: throughput at the larger size over the smaller")
    n = growth_size(key)
    return ("events/s", 0, f"one scoring process, {n or 0:,} stored subscribers")


def prose(template: str, **values: Any) -> list[str]:
    """A template of ``bench.capacity_text`` filled in, one line per paragraph or list item."""
    out: list[str] = []
    for paragraph in template.format(X=X, **values).strip().split("\n\n"):
        items: list[str] = []
        for line in paragraph.split("\n"):
            if not items or re.match(r"^(- |\d+\. )", line):
                items.append(line.strip())
            else:
                items[-1] += " " + line.strip()
        out += [*items, ""]
    return out[:-1]


def growth_size(key: str) -> int | None:
    """The stored subscribers of a growth key (``scoring_eps_1m`` -> 1,000,000), else None."""
    match = GROWTH_KEY.match(key)
    if match is None:
        return None
    return int(match.group(1)) * (1_000 if match.group(2) == "k" else 1_000_000)


@dataclass
class Figures:
    """The measured figures of one results.json, and which of them the plan read."""

    results: Mapping[str, Any]
    read: dict[str, float | None] = field(default_factory=dict)

    def get(self, key: str) -> float | None:
        """The figure under ``key``, or None when absent or not a number; remembered."""
        value = self.results.get(key)
        number = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
        self.read[key] = number
        return number

    def fmt(self, key: str) -> str:
        """The figure as printed, with its unit."""
        unit, decimals, _ = spec(key)
        value = self.get(key)
        shown = num(value, decimals) if value is not None else "?"
        return f"{shown} {unit}".rstrip()

    def cite(self, key: str) -> str:
        """``key`` = value unit, or that it was not measured."""
        if self.get(key) is None:
            return f"`{key}`: {MISSING}"
        return f"`{key}` = {self.fmt(key)}"

    def ref(self, key: str) -> str:
        """The figure inside arithmetic: value (`key`)."""
        _, decimals, _ = spec(key)
        value = self.get(key)
        return f"{num(value, decimals)} (`{key}`)" if value is not None else f"`{key}` ({MISSING})"

    def ratio_keys(self) -> list[str]:
        """The growth ratio keys present (``scoring_growth_ratio_1m_10k``...)."""
        keys = [k for k in self.results if GROWTH_RATIO_KEY.match(k)]
        return sorted(keys, key=lambda k: growth_size("scoring_eps_" + k.split("_")[3]) or 0)

    def growth(self) -> list[tuple[int, str]]:
        """The growth figures present: (stored subscribers, key), smallest first."""
        found = [(growth_size(k), k) for k in self.results if growth_size(k) is not None]
        return sorted((n, k) for n, k in found if n is not None and self.get(k) is not None)


@dataclass(frozen=True)
class Consumer:
    """A consumer service's sizing: planned events/s per replica and the replicas."""

    name: str
    per_replica: float  # planned events/s one replica carries at the peak
    continuous: float  # peak / per_replica
    carry: int = 0  # partitions one replica carries at the peak
    replicas: int = 0


def load() -> tuple[float, float]:
    """Mean and peak events/s."""
    mean = EVENTS_PER_DAY / 86_400
    return mean, mean * PEAK_FACTOR


def scale_out_efficiency(f: Figures) -> float:
    """Per-process efficiency of scale-out from the measured two-process ratio, at most 1."""
    ratio = f.get("scoring_two_process_ratio")
    return 1.0 if ratio is None else min(1.0, ratio / 2)


def choose_partitions(need: float, consumers: list[Consumer], peak: float) -> int:
    """The partition count: a multiple of PARTITION_STEP from ``need`` to twice that.

    The one needing the fewest replicas of the first consumer (scoring, the one measured),
    then the fewest processes in all, then the smallest; at most PARTITION_LIMIT.
    """
    low = max(PARTITION_STEP, math.ceil(need / PARTITION_STEP) * PARTITION_STEP)
    candidates = range(low, min(2 * low, PARTITION_LIMIT) + 1, PARTITION_STEP)
    if not candidates or not consumers:
        return min(low, PARTITION_LIMIT)

    def cost(p: int) -> tuple[int, int, int]:
        sized = [assign(c, p, peak).replicas for c in consumers]
        return (sized[0], sum(sized), p)

    return min(candidates, key=cost)


def assign(c: Consumer, partitions: int, peak: float) -> Consumer:
    """Replicas so that no replica's partitions carry more than its planned rate at the peak."""
    carry = max(1, math.floor(c.per_replica * partitions / peak))
    replicas = max(MIN_REPLICAS, math.ceil(partitions / carry))
    return Consumer(c.name, c.per_replica, c.continuous, carry, replicas)


def assumptions() -> list[str]:
    """The assumptions section."""
    rows = [
        ("Subscribers", num(SUBSCRIBERS), "issue 20"),
        ("Events a day", num(EVENTS_PER_DAY), "issue 20 (30 per subscriber)"),
        ("Peak over mean", f"{PEAK_FACTOR:g}{X}", "issue 20"),
        ("Headroom", f"{HEADROOM:g}", "share of a process's measured rate planned at the peak"),
        ("Minimum replicas per service", str(MIN_REPLICAS), "one can fail or restart"),
        ("Kafka replication factor", str(KAFKA_REPLICATION), "`KAFKA_REPLICATION_FACTOR`"),
        ("Kafka retention", f"{KAFKA_RETENTION_DAYS} days", "Kafka's default `retention.ms`"),
        ("Processed-id retention", f"{RETENTION_DAYS} days", "`RETENTION_DAYS` default"),
        ("Partition growth room", f"{PARTITION_GROWTH:g}{X}", "partitions are fixed for life"),
        ("Landing topic share", f"{LANDING_SHARE:g}", "all billing systems publish to Kafka"),
        ("Non-CDR share", f"{NON_CDR_SHARE:.4f}", "14,590 / 558,686, docs/simulator.md"),
        ("Scores per event", f"{SCORES_PER_EVENT:g}", "published only when the score moved"),
        ("Tasks and updates per event", f"{TASKS_PER_EVENT:g}", "alerting's output"),
        ("Outcomes per task", f"{OUTCOMES_PER_TASK:g}", "final state plus call outcomes"),
        ("Dead letters per event", f"{DLQ_PER_EVENT:g}", ""),
        (
            "Record bytes: score, task, outcome, DLQ",
            f"{SCORE_RECORD_BYTES:,}, "
            f"{TASK_RECORD_BYTES:,}, {OUTCOME_RECORD_BYTES:,}, {DLQ_RECORD_BYTES:,}",
            "estimates",
        ),
        ("State cache per scoring replica", num(SCORING_CACHE_SIZE), "`SCORING_STATE_CACHE_SIZE`"),
        ("Pending snapshots per subscriber", str(SNAPSHOTS_PENDING), "(30 + 1) days / 1 day"),
        ("Bytes per processed-id row", str(PROCESSED_ROW_BYTES), "estimate from column types"),
        ("One primary's sustained WAL", size(PG_WAL_CEILING) + "/s", "planning ceiling"),
        ("One primary's size", size(PG_SIZE_CEILING), "planning ceiling"),
    ]
    lines = ["## Assumptions", "", "Constants at the top of `bench/capacity.py`; not measured.", ""]
    lines += ["| Assumption | Value | Source or reason |", "|---|---|---|"]
    lines += [f"| {a} | {v} | {s} |" for a, v, s in rows]
    drain = 10 * HEADROOM / (1 - HEADROOM)
    notes = prose(
        text.NOTES,
        h=f"{HEADROOM:g}",
        spare=f"{1 / HEADROOM - 1:.2f}",
        drain=f"{drain:.1f}",
        wal=size(PG_WAL_CEILING),
        db=size(PG_SIZE_CEILING),
    )
    return [*lines, "", *notes]


def measured(f: Figures) -> list[str]:
    """The table of every figure the plan reads, and where the results come from."""
    lines = ["## Measured figures", "", "| Key | Value | What |", "|---|---|---|"]
    keys = [k for k in KEYS if k != LOWEST or k in f.results]
    keys += [k for _, k in f.growth()] + f.ratio_keys()
    lines += [
        f"| `{k}` | {f.fmt(k) if f.get(k) is not None else MISSING} | {spec(k)[2]} |" for k in keys
    ]
    runs = f.results.get("runs", {}).get("scoring_eps")
    eps = f.get("scoring_eps")
    if isinstance(runs, list) and runs and eps:
        lines += [
            "",
            f"Spread: the slowest repetition of `scoring_eps` (`runs.scoring_eps` min "
            f"= {num(min(runs))} events/s) was {min(runs) / eps:.2f} of the median.",
        ]
    if f.results.get("commit"):
        cores = f.results.get("machine", {}).get("cores", "?")
        lines += [
            "",
            f"Results of commit `{f.results['commit']}` on {cores} cores "
            "(`commit`, `machine.cores`).",
        ]
    return lines


def scoring(f: Figures, peak: float, eff: float) -> tuple[list[str], Consumer | None]:
    """The scoring subsection; its consumer sizing, if there is a growth figure."""
    lines = ["### Scoring", ""]
    growth = f.growth()
    consumer = None
    if not growth:
        lines.append(f"No growth figure (`scoring_eps_10k`, `_100k`, `_1m`...): {MISSING}.")
    else:
        n, key = growth[-1]
        per = (f.get(key) or 0.0) * eff * HEADROOM
        consumer = Consumer("scoring", per, peak / per)
        reps = math.ceil(peak / per)
        cited = [f.cite(k) for _, k in growth] + [f.cite(k) for k in f.ratio_keys()]
        lines += [f"Growth measured: {', '.join(cited)}.", ""]
        lines += prose(
            text.PER_REPLICA,
            key=key,
            n=num(n),
            subscribers=num(SUBSCRIBERS),
            cache=num(SCORING_CACHE_SIZE),
        )
        lines += [
            "",
            f"- Planned per replica: {f.ref(key)} {X} {eff:.3f} {X} {HEADROOM:g} = "
            f"{num(per)} events/s.",
            f"- Without partitions: {num(peak)} ÷ {num(per)} = {peak / per:.2f} → {reps} "
            f"replicas, whose caches hold {reps} {X} {num(SCORING_CACHE_SIZE)} = "
            f"{num(reps * SCORING_CACHE_SIZE)} states, "
            f"{reps * SCORING_CACHE_SIZE / SUBSCRIBERS:.1%} of the subscribers.",
        ]
        if n < SUBSCRIBERS:
            lines.append(
                f"- {num(n)} is below the {num(SUBSCRIBERS)} stored here: the figure "
                "is optimistic by however much throughput falls from there to 100 "
                "million (not measured)."
            )
    cached, rss = f.get("scoring_eps_10k"), f.get("scoring_rss_bytes_per_subscriber")
    if cached and rss:
        per_c = cached * eff * HEADROOM
        reps = math.ceil(peak / per_c)
        lines += [
            "",
            *prose(
                text.CACHE_TRADE,
                peak=num(peak),
                eps=f.ref("scoring_eps_10k"),
                eff=f"{eff:.3f}",
                h=f"{HEADROOM:g}",
                cont=f"{peak / per_c:.2f}",
                reps=reps,
                subscribers=num(SUBSCRIBERS),
                each=num(SUBSCRIBERS / reps),
                rss=f.ref("scoring_rss_bytes_per_subscriber"),
                per=size(SUBSCRIBERS / reps * rss),
                all=size(SUBSCRIBERS * rss),
            ),
        ]
    base = f.get("scoring_peak_rss_bytes")
    if base and rss:
        lines += [
            "",
            f"Memory per replica at the default cache: "
            f"{f.ref('scoring_peak_rss_bytes')} + {num(SCORING_CACHE_SIZE)} {X} "
            f"{f.ref('scoring_rss_bytes_per_subscriber')} = "
            f"{size(base + SCORING_CACHE_SIZE * rss)}.",
        ]
    return lines, consumer


def sizing(f: Figures) -> tuple[list[str], dict[str, Any]]:
    """Load, replicas per service and partitions; the lines and the figures derived."""
    mean, peak = load()
    eff = scale_out_efficiency(f)
    unverified = f.get("scoring_two_process_ratio") is None
    lines = [
        "## Load",
        "",
        f"- Mean: {num(EVENTS_PER_DAY)} events ÷ 86,400 s = **{num(mean)} events/s**.",
        f"- Peak: {num(mean)} {X} {PEAK_FACTOR:g} = **{num(peak)} events/s**.",
        "",
        "## Replicas per service",
        "",
        "### Scale-out",
        "",
        *prose(
            text.SCALE_OUT,
            two_eps=f.cite("scoring_two_process_eps"),
            two_ratio=f.cite("scoring_two_process_ratio"),
            lowest=f" (lowest repetition: {f.cite(LOWEST)})" if LOWEST in f.results else "",
            eff=f"{eff:.3f}",
            note=" (no two-process figure: assumed linear, unverified)." if unverified else ".",
        ),
        "",
    ]
    section, scorer = scoring(f, peak, eff)
    lines += section
    consumers = [scorer] if scorer else []
    lines += ["", "### Alerting", ""]
    e2e = f.get("e2e_achieved_eps")
    if e2e:
        per = e2e * HEADROOM
        consumers.append(Consumer("alerting (an upper bound)", per, peak / per))
        lines += prose(
            text.ALERTING,
            e2e=f.ref("e2e_achieved_eps"),
            peak=num(peak),
            h=f"{HEADROOM:g}",
            cont=f"{peak / per:.2f}",
            reps=math.ceil(peak / per),
            non_cdr=f"{NON_CDR_SHARE:.4f}",
        )
    else:
        lines.append(f"No per-process figure for alerting, and `e2e_achieved_eps`: {MISSING}.")
    lines += ["", "### Outreach", ""]
    lines += prose(
        text.OUTREACH,
        peak=num(peak),
        ratio=f"{TASKS_PER_EVENT:g}",
        tasks=num(peak * TASKS_PER_EVENT, 1),
        reps=MIN_REPLICAS,
    )
    most = max((c.continuous for c in consumers), default=1.0)
    need = most * PARTITION_GROWTH
    partitions = choose_partitions(need, consumers, peak)
    per_partition = peak / partitions
    lines += ["", "### Partitions and the final counts", ""]
    lines += prose(
        text.PARTITIONS,
        most=f"{most:.2f}",
        growth=f"{PARTITION_GROWTH:g}",
        need=f"{need:.2f}",
        step=PARTITION_STEP,
        limit=PARTITION_LIMIT,
        partitions=partitions,
    )
    lines.append(
        f"- Per partition at the peak: {num(peak)} ÷ {partitions} = {num(per_partition)} "
        f"events/s. 6 topics {X} {partitions} = {num(6 * partitions)} partitions, {X} "
        f"{KAFKA_REPLICATION} = {num(6 * partitions * KAFKA_REPLICATION)} partition replicas "
        "across the brokers (a few thousand per broker is the usual guidance)."
    )
    sized = {c.name: assign(c, partitions, peak) for c in consumers}
    for c in sized.values():
        lines.append(
            f"- {c.name}: floor({num(c.per_replica)} ÷ {num(per_partition)}) = {c.carry} "
            f"partitions per replica at the peak; {partitions} ÷ {c.carry} → **{c.replicas} "
            f"replicas**. Room: {partitions} replicas {X} {num(c.per_replica)} = "
            f"{num(partitions * c.per_replica)} events/s of peak."
        )
    ingest = f.get("ingest_batch_eps")
    if ingest:
        reps = max(MIN_REPLICAS, math.ceil(peak / (ingest * HEADROOM)))
        sized["ingest"] = Consumer("ingest", ingest * HEADROOM, peak / ingest, 0, reps)
        lines.append(
            f"- ingest (HTTP, stateless, not bound by partitions): {num(peak)} ÷ "
            f"({f.ref('ingest_batch_eps')} {X} {HEADROOM:g}) = "
            f"{peak / (ingest * HEADROOM):.2f} → **{reps} replicas**."
        )
    else:
        lines.append(f"- ingest (HTTP): {f.cite('ingest_batch_eps')}.")
    landing = f.get("ingest_landing_eps")
    if landing:
        relay = assign(Consumer("landing", landing * HEADROOM, 0.0), partitions, peak)
        sized["landing"] = relay
        lines.append(
            f"- ingest (landing relay): floor({f.ref('ingest_landing_eps')} {X} "
            f"{HEADROOM:g} ÷ {num(per_partition)}) = {relay.carry} partitions each "
            f"→ **{relay.replicas} relay replicas**."
        )
    else:
        lines.append(f"- ingest (landing relay): {f.cite('ingest_landing_eps')}.")
    lines.append(f"- outreach: **{MIN_REPLICAS} replicas** (above).")
    facts = {"mean": mean, "peak": peak, "eff": eff, "partitions": partitions, "sized": sized}
    return lines, facts


def kafka(f: Figures, facts: Mapping[str, Any]) -> list[str]:
    """Kafka retention and disk."""
    nbytes = f.get("kafka_event_bytes")
    days = KAFKA_REPLICATION * KAFKA_RETENTION_DAYS
    lines = ["## Kafka retention and disk", ""]
    lines += prose(text.KAFKA_INTRO, rf=KAFKA_REPLICATION, days=KAFKA_RETENTION_DAYS, factor=days)
    lines += ["", "| Topic | Messages a day | Bytes each | Disk |", "|---|---|---|---|"]
    total = 0.0
    for topic, share in (("events", 1.0), ("events.in", LANDING_SHARE)):
        msgs = EVENTS_PER_DAY * share
        if nbytes is None:
            disk = f"{num(msgs)} {X} {days} = {num(msgs * days)} {X} `kafka_event_bytes`"
        else:
            total += msgs * nbytes * days
            ref = f.ref("kafka_event_bytes")
            disk = f"{num(msgs)} {X} {ref} {X} {days} = {size(msgs * nbytes * days)}"
        lines.append(f"| {topic} | {num(msgs)} | {f.ref('kafka_event_bytes')} | {disk} |")
    for topic, msgs, each in (
        ("scores", EVENTS_PER_DAY * SCORES_PER_EVENT, SCORE_RECORD_BYTES),
        ("tasks", EVENTS_PER_DAY * TASKS_PER_EVENT, TASK_RECORD_BYTES),
        ("outcomes", EVENTS_PER_DAY * TASKS_PER_EVENT * OUTCOMES_PER_TASK, OUTCOME_RECORD_BYTES),
        ("dlq", EVENTS_PER_DAY * DLQ_PER_EVENT, DLQ_RECORD_BYTES),
    ):
        total += msgs * each * days
        lines.append(
            f"| {topic} | {num(msgs)} | {each:,} (assumed) | {num(msgs)} {X} {each:,} "
            f"{X} {days} = {size(msgs * each * days)} |"
        )
    without = " without the two event topics, whose record size is not measured"
    lines += [
        "",
        f"Total broker disk: **{size(total)}**{without if nbytes is None else ''}; "
        f"at most 70 % full: {size(total)} ÷ 0.7 = {size(total / 0.7)} of disk. The "
        "scores topic's share rests on two assumptions (scores per event, bytes per "
        "score).",
    ]
    if nbytes is not None:
        peak = facts["peak"]
        lines += [
            "",
            *prose(
                text.KAFKA_PEAK,
                peak=num(peak),
                nbytes=f.ref("kafka_event_bytes"),
                landing=f"{LANDING_SHARE:g}",
                rate=size(peak * nbytes * (1 + LANDING_SHARE)),
                rf=KAFKA_REPLICATION,
                per_partition=size(peak / facts["partitions"] * nbytes),
            ),
        ]
    return lines


def postgres(f: Figures, facts: Mapping[str, Any]) -> list[str]:
    """PostgreSQL size, write rate, and what to do when one primary is not enough."""
    peak, partitions = facts["peak"], facts["partitions"]
    lines = ["## PostgreSQL", "", "### Size", ""]
    total = 0.0
    for key, what in (
        ("pg_bytes_per_subscriber", "scoring (state rows, indexes, one processed-id row)"),
        ("pg_bytes_per_subscriber_alerting_outreach", "alerting and outreach"),
    ):
        value = f.get(key)
        if value is None:
            lines.append(f"- {what}: {f.cite(key)}.")
        else:
            total += SUBSCRIBERS * value
            lines.append(
                f"- {what}: {num(SUBSCRIBERS)} {X} {f.ref(key)} = **{size(SUBSCRIBERS * value)}**."
            )
    rows = EVENTS_PER_DAY * RETENTION_DAYS
    processed = rows * PROCESSED_ROW_BYTES
    messages = EVENTS_PER_DAY * (NON_CDR_SHARE + SCORES_PER_EVENT) * RETENTION_DAYS
    messages *= PROCESSED_ROW_BYTES
    total += processed + messages
    lines += [
        f"- `scoring.processed_events`: {num(EVENTS_PER_DAY)} {X} {RETENTION_DAYS} days = "
        f"{num(rows)} rows {X} {PROCESSED_ROW_BYTES} bytes (estimate, not measured) = "
        f"**{size(processed)}**. The purge deletes {num(EVENTS_PER_DAY)} rows a day.",
        f"- `alerting.processed_messages` (non-CDR events and scores): ({num(EVENTS_PER_DAY)} "
        f"{X} {NON_CDR_SHARE:.4f} + {num(EVENTS_PER_DAY)} {X} {SCORES_PER_EVENT:g}) {X} "
        f"{RETENTION_DAYS} days {X} {PROCESSED_ROW_BYTES} bytes (estimate) = "
        f"**{size(messages)}**.",
        f"- `scoring.snapshots`: {num(SUBSCRIBERS)} {X} {SNAPSHOTS_PENDING} = "
        f"{num(SUBSCRIBERS * SNAPSHOTS_PENDING)} pending rows; bytes per snapshot row not "
        "measured (the footprint copies states, not snapshots).",
        f"- Total known: **{size(total)}** (the processed-id rows are estimates), against a "
        f"ceiling of {size(PG_SIZE_CEILING)}.",
        "",
        "### Write rate",
        "",
    ]
    steady = steady_wal(f, subscribers=SUBSCRIBERS, peak=peak, processed_rows=rows)
    wal = planned_wal(f, peak)
    if wal is None:
        lines += prose(
            text.WAL_UNKNOWN,
            cite=f.cite("scoring_wal_bytes_per_event"),
            ceiling=size(PG_WAL_CEILING),
            peak=num(peak),
            threshold=num(PG_WAL_CEILING / peak),
        )
    else:
        if steady is not None:
            lines += [*steady.lines, ""]
            wal_ref = divisor = f"{num(wal)} (steady state)"
        else:
            divisor = f.ref("scoring_wal_bytes_per_event")
            wal_ref = f"{divisor} (worst case: the full-page figures {MISSING})"
        lines.append(
            f"Peak WAL: {num(peak)} {X} {wal_ref} = "
            f"**{size(peak * wal)}/s** (scoring alone), {peak * wal / PG_WAL_CEILING:.2f}{X} "
            f"the {size(PG_WAL_CEILING)}/s ceiling; one primary carries "
            f"{size(PG_WAL_CEILING)}/s ÷ {divisor} = "
            f"{num(PG_WAL_CEILING / wal)} events/s."
        )
    lines += [
        "",
        f"Row operations at the peak (from the code: one lock-and-load, one state "
        "write and one processed-id insert per event, since a batch rarely holds two "
        f"events of one of {num(SUBSCRIBERS)} subscribers): {num(peak)} {X} 3 = "
        f"{num(3 * peak)} a second.",
    ]
    by_wal = peak * wal / PG_WAL_CEILING if wal else 0.0
    groups = max(1, math.ceil(total / PG_SIZE_CEILING), math.ceil(by_wal))
    groups = next((d for d in range(groups, partitions + 1) if partitions % d == 0), groups)
    wal_text = (
        f"; WAL {size(peak * wal)}/s ÷ {size(PG_WAL_CEILING)}/s = {by_wal:.2f}"
        if wal
        else " (WAL not measured)"
    )
    lines += [
        "",
        "### When one PostgreSQL is not enough",
        "",
        f"Shard groups needed: size {size(total)} ÷ {size(PG_SIZE_CEILING)} = "
        f"{total / PG_SIZE_CEILING:.2f}{wal_text}; the larger, rounded up to a divisor of "
        f"{partitions} partitions: **{groups}**.",
        "",
        *prose(text.SHARDING, partitions=partitions, groups=groups, each=partitions // groups),
    ]
    return lines


def planned_wal(f: Figures, peak: float) -> float | None:
    """WAL bytes per event the plan sizes on: the steady state, else the measured worst case."""
    steady = steady_wal(
        f, subscribers=SUBSCRIBERS, peak=peak, processed_rows=EVENTS_PER_DAY * RETENTION_DAYS
    )
    return steady.per_event if steady is not None else f.get("scoring_wal_bytes_per_event")


def verdict(f: Figures, facts: Mapping[str, Any]) -> list[str]:
    """Which part stops scaling linearly first, and why."""
    peak, scorer = facts["peak"], facts["sized"].get("scoring")
    wal = planned_wal(f, peak)
    lines = ["## What stops scaling linearly first", ""]
    lines += prose(
        text.VERDICT_SCALE, ratio=f.ref("scoring_two_process_ratio"), eff=f"{facts['eff']:.3f}"
    )
    if f.ratio_keys():
        lines += prose(text.VERDICT_GROWTH, ratios=", ".join(f.ref(k) for k in f.ratio_keys()))
    lines += prose(text.VERDICT_KAFKA, room=f"{PARTITION_GROWTH:g}")
    if wal is not None and peak * wal > PG_WAL_CEILING:
        first = prose(
            text.FIRST_WAL,
            eps=num(PG_WAL_CEILING / wal),
            share=f"{PG_WAL_CEILING / wal / peak:.0%}",
            replicas=f"{PG_WAL_CEILING / wal / scorer.per_replica:.1f}" if scorer else "?",
        )
    elif wal is not None:
        first = prose(text.FIRST_SIZE, wal=size(peak * wal))
    else:
        first = prose(text.FIRST_UNKNOWN, missing=MISSING, threshold=num(PG_WAL_CEILING / peak))
    return [*lines, "", *first]


def gaps(f: Figures) -> list[str]:
    """What was not measured: the keys missing, then what no key measures."""
    lines = ["## What was not measured", ""]
    lines += [f"- `{k}`: {MISSING}." for k, v in f.read.items() if v is None]
    return lines + prose(
        text.GAPS,
        task=f.cite("e2e_task_p99_s"),
        sms=f.cite("e2e_sms_p99_s"),
        e2e=f.ref("e2e_achieved_eps"),
    )


def build(results: Mapping[str, Any]) -> str:
    """The capacity plan, as Markdown, from one results.json's contents."""
    f = Figures(results)
    sized, facts = sizing(f)
    sections = [sized, kafka(f, facts), postgres(f, facts), verdict(f, facts)]
    body = prose(text.HEADER)
    # gaps() comes last: it lists every key the other sections found missing.
    for section in [assumptions(), measured(f), *sections, gaps(f)]:
        body += ["", *section]
    return "\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Read a results.json, write the plan, return it."""
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS, help="a results.json")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the plan")
    args = parser.parse_args(argv)
    plan = build(json.loads(args.results.read_text()))
    args.out.write_text(plan)
    return plan


if __name__ == "__main__":
    main()
