"""``python -m bench [--quick] [--only NAME ...]``: run benchmarks, write bench/results.{json,md}.

Sections: ingest, scoring-limit, scoring, scale-out, e2e, footprint, growth,
workbench (all by default). Each figure is the median of ``--repeat`` repetitions and stands
beside the limit it is measured against in the same run, because absolute
times on a shared machine drift. See bench/README.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import e2e, ingest, scoring, workbench
from bench.common import (
    ROOT,
    Stack,
    commit,
    fresh_prefix,
    machine,
    median,
    run,
    stack,
    start,
    wait_ready,
)
from bench.report import table, write
from bench.scoring import Templates
from churnwatch.embedded import stop_processes
from churnwatch.synth import generate
from shared.events import parse_event

SECTIONS = (
    "ingest",
    "scoring-limit",
    "scoring",
    "scale-out",
    "e2e",
    "footprint",
    "growth",
    "workbench",
)
NEEDS_STACK = set(SECTIONS) - {"scoring-limit"}


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: full (``make bench``) or ``--quick``."""

    scoring_population: tuple[int, int]  # subscribers, days
    ingest_events: int
    ingest_singles: int
    e2e_seconds: float
    e2e_rate: int
    footprint_subscribers: int
    growth_sizes: tuple[int, ...]
    growth_events: int
    templates: tuple[int, int]  # subscribers, days of the template history
    workbench_open_tasks: int = 10_000
    workbench_managers: int = 20
    workbench_requests: int = 100  # per page and repetition


FULL = Plan(
    scoring_population=(2000, 40),
    ingest_events=100_000,
    ingest_singles=5_000,
    e2e_seconds=60,
    e2e_rate=2000,
    footprint_subscribers=100_000,
    growth_sizes=(10_000, 100_000, 1_000_000, 5_000_000, 10_000_000),
    growth_events=60_000,
    templates=(500, 40),
)
QUICK = Plan(
    scoring_population=(600, 35),
    ingest_events=20_000,
    ingest_singles=1_000,
    e2e_seconds=10,
    e2e_rate=2000,
    footprint_subscribers=10_000,
    growth_sizes=(10_000, 100_000, 1_000_000),
    growth_events=10_000,
    templates=(200, 35),
    workbench_open_tasks=10_000,
    workbench_requests=20,
)
GROWTH_KEYS = {
    10_000: "scoring_eps_10k",
    100_000: "scoring_eps_100k",
    1_000_000: "scoring_eps_1m",
    5_000_000: "scoring_eps_5m",
    10_000_000: "scoring_eps_10m",
}


class Bench:
    """Runs the chosen sections, collecting each figure's repetitions."""

    def __init__(self, plan: Plan, repeat: int, stack_: Stack | None) -> None:
        self.plan = plan
        self.repeat = repeat
        self.stack = stack_
        self.runs: dict[str, list[float]] = {}
        self.extra: dict[str, Any] = {}
        self._blob: bytes | None = None
        self._population: list[dict[str, Any]] | None = None

    @property
    def blob(self) -> bytes:
        """The trained model every section scores with (trained once per invocation)."""
        if self._blob is None:
            self._blob = scoring.trained_model()
        return self._blob

    @property
    def population(self) -> list[dict[str, Any]]:
        """The synthetic population (raw events) the throughput sections use."""
        if self._population is None:
            subscribers, days = self.plan.scoring_population
            self._population = generate(subscribers=subscribers, days=days, seed=5).events
        return self._population

    def add(self, key: str, value: float) -> None:
        """Record one repetition's value of a figure and print it."""
        self.runs.setdefault(key, []).append(value)
        print(f"  {key}: {value:,.3f}", flush=True)

    def need_stack(self) -> Stack:
        """The stack (sections that need it are only run with one)."""
        assert self.stack is not None
        return self.stack

    # --- sections ----------------------------------------------------------------

    def scoring_limit(self) -> None:
        """Bare limit and the engine alone, in this process (no Kafka, no database)."""
        events = [parse_event(e) for e in self.population]
        self.extra["scoring_events"] = len(events)
        for _ in range(self.repeat):
            self.add("scoring_limit_eps", scoring.bare_limit(events, self.blob))
            self.add("scoring_engine_alone_eps", scoring.engine_alone(events, self.blob))

    def scoring(self) -> None:
        """One scoring process with Kafka and PostgreSQL, beside the bare limit."""
        if "scoring_limit_eps" not in self.runs:
            self.scoring_limit()
        for n in range(self.repeat):
            raw = scoring.relabel(self.population, fresh_prefix(f"s{n}"))
            result = scoring.service_run(self.need_stack(), raw, self.blob)
            self.add("scoring_eps", result.eps)
            self.add("scoring_peak_rss_bytes", result.peak_rss)

    def scale_out(self) -> None:
        """Two scoring processes in one consumer group, beside one (same events)."""
        for n in range(self.repeat):
            if len(self.runs.get("scoring_eps", [])) <= n:
                raw = scoring.relabel(self.population, fresh_prefix(f"s{n}"))
                one = scoring.service_run(self.need_stack(), raw, self.blob)
                self.add("scoring_eps", one.eps)
            raw = scoring.relabel(self.population, fresh_prefix(f"t{n}"))
            two = scoring.service_run(self.need_stack(), raw, self.blob, processes=2)
            self.add("scoring_two_process_eps", two.eps)
            self.add("scoring_two_process_ratio", two.eps / self.runs["scoring_eps"][n])

    def ingest(self) -> None:
        """NDJSON batches and single events through ingest, beside the bare producer."""
        st = self.need_stack()
        raw = scoring.relabel(self.population[: self.plan.ingest_events], "ingest")
        while len(raw) < self.plan.ingest_events:  # a small population is repeated
            raw += scoring.relabel(raw[: self.plan.ingest_events - len(raw)], str(len(raw)))
        singles = raw[: self.plan.ingest_singles]
        prefix = fresh_prefix("ingest")
        proc = start(st, "ingest", st.environ(prefix))
        try:
            wait_ready([proc])
            ingest.batch_eps(proc.url, raw[:2000])  # warm-up: connections, first requests
            for _ in range(self.repeat):
                self.add("ingest_batch_limit_eps", ingest.limit_eps(st, prefix, raw))
                self.add("ingest_batch_eps", ingest.batch_eps(proc.url, raw))
                self.add("ingest_single_rps", ingest.single_rps(proc.url, singles))
        finally:
            stop_processes([proc])
        for _ in range(self.repeat):
            landing = fresh_prefix("landing")
            self.add("ingest_landing_eps", ingest.landing_eps(st, landing, raw))
        # What one event costs on the events topic (the capacity plan's Kafka disk):
        # the record's value as ingest writes it, and its key.
        sizes = [len(parse_event(e).model_dump_json()) + len(e["subscriber_id"]) for e in raw]
        self.add("kafka_event_bytes", sum(sizes) / len(sizes))

    def e2e(self) -> None:
        """Latency through the whole pipeline at a fixed offered load."""
        need = int(self.plan.e2e_rate * self.plan.e2e_seconds)
        background = self.population[:need]
        if len(background) < need:
            raise RuntimeError("the population is too small for the offered load")
        for _ in range(self.repeat):
            result = e2e.e2e_run(
                self.need_stack(),
                background,
                self.blob,
                rate=self.plan.e2e_rate,
                seconds=self.plan.e2e_seconds,
            )
            for name in ("task", "sms", "sms_beyond_hold"):
                for p in ("p50", "p95", "p99"):
                    self.add(f"e2e_{name}_{p}_s", result[name][p])
            self.add("e2e_sms_hold_s", result["sms_hold_s"])
            self.add("e2e_achieved_eps", result["achieved_eps"])
            self.add("e2e_tasks", result["tasks"])
            self.add("e2e_sms", result["sms_count"])
            self.add("e2e_sms_missing", result["sms_missing"])
            self.add("e2e_failed_requests", result["failed_requests"])
            self.add(
                "pg_bytes_per_subscriber_alerting_outreach",
                result["alerting_outreach_bytes"] / max(result["subscribers"], 1),
            )
        self.extra["e2e_offered_eps"] = self.plan.e2e_rate
        self.extra["e2e_seconds"] = self.plan.e2e_seconds

    def _templates(self) -> Templates:
        if "templates" not in self.extra:
            subscribers, days = self.plan.templates
            self.extra["templates"] = scoring.make_templates(
                self.need_stack(), self.blob, subscribers=subscribers, days=days
            )
        templates: Templates = self.extra["templates"]
        return templates

    def footprint(self) -> None:
        """Scoring RSS and PostgreSQL bytes per tracked subscriber."""
        templates = self._templates()
        n = self.plan.footprint_subscribers
        for _ in range(self.repeat):
            result = scoring.footprint_run(self.need_stack(), self.blob, templates, subscribers=n)
            self.add("scoring_rss_bytes_per_subscriber", result["rss_bytes_per_subscriber"])
            self.add("pg_bytes_per_subscriber", result["pg_bytes_per_subscriber"])
        self.extra["footprint_subscribers"] = n

    def growth(self) -> None:
        """Scoring throughput with 10k to 10M stored subscribers, and its WAL per event.

        Sizes in ascending order, each stored just before its runs: a size's runs
        see the table as big as that size (and the smaller ones), not the largest.
        """
        st = self.need_stack()
        templates = self._templates()
        populate_s = 0.0
        for size in self.plan.growth_sizes:
            begin = time.monotonic()
            copies = scoring.growth_populate(st, templates, size)
            populate_s += time.monotonic() - begin
            key = GROWTH_KEYS.get(size, f"scoring_eps_{size}")
            for n in range(self.repeat):
                raw = self._growth_events(templates, copies, size, seed=n)
                before = run(scoring.wal_counters(st, checkpoint=True))
                result = scoring.service_run(st, raw, self.blob, label=f"g{size}")
                wal = run(scoring.wal_counters(st)) - before
                self.add(key, result.eps)
                for name, value in (
                    ("scoring_wal_bytes_per_event_", wal.position / len(raw)),
                    ("scoring_wal_full_pages_per_event_", wal.full_pages / len(raw)),
                    ("scoring_peak_rss_bytes_", result.peak_rss),
                ):
                    self.add(key.replace("scoring_eps_", name), value)
        self._wal_records(templates, copies, size)
        self.extra["growth_populate_s"] = round(populate_s, 1)
        self.extra["growth_events"] = self.plan.growth_events

    def _growth_events(
        self, templates: Templates, copies: str, size: int, *, seed: int
    ) -> list[dict[str, Any]]:
        """One growth run's events: to subscribers drawn uniformly from ``size`` copies."""
        return scoring.growth_events(
            templates,
            copies=copies,
            population=size,
            events=self.plan.growth_events,
            seed=seed,
        )

    def _wal_records(self, templates: Templates, copies: str, size: int) -> None:
        """WAL per event without full-page images, at the largest size, once per repetition.

        With ``full_page_writes`` off the WAL holds only the records: with the
        full-page images the growth runs count, the capacity plan splits a run's
        WAL into what every event writes and what the first touch of a page after
        a checkpoint adds. Only on the benchmark's own server (it needs ALTER SYSTEM).
        """
        st = self.need_stack()
        if os.environ.get("DATABASE_URL"):
            return
        run(scoring.set_full_page_writes(st, on=False))
        try:
            for n in range(self.repeat):
                raw = self._growth_events(templates, copies, size, seed=1000 + n)
                before = run(scoring.wal_counters(st, checkpoint=True))
                scoring.service_run(st, raw, self.blob, label=f"g{size}r")
                wal = run(scoring.wal_counters(st)) - before
                self.add("scoring_wal_record_bytes_per_event", wal.position / len(raw))
        finally:
            run(scoring.set_full_page_writes(st, on=True))

    def workbench(self) -> None:
        """The workbench's pages' server time with 10,000 open tasks (bench/workbench.py)."""
        for _ in range(self.repeat):
            result = workbench.workbench_run(
                self.need_stack(),
                open_tasks=self.plan.workbench_open_tasks,
                managers=self.plan.workbench_managers,
                requests=self.plan.workbench_requests,
            )
            for key, value in result.items():
                self.add(key, value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks and write the results; return them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions (median reported); 3, or 1 quick"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--population",
        type=int,
        default=None,
        help="subscribers in the scoring population (default 2,000; 600 quick)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where results go")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.population:
        plan = replace(plan, scoring_population=(args.population, plan.scoring_population[1]))
    repeat = args.repeat or (1 if args.quick else 3)
    chosen = [s for s in SECTIONS if not args.only or s in args.only]
    started = time.monotonic()
    with ExitStack() as stack_cm:
        st = stack_cm.enter_context(stack()) if NEEDS_STACK & set(chosen) else None
        bench = Bench(plan, repeat, st)
        steps: dict[str, Callable[[], None]] = {
            "ingest": bench.ingest,
            "scoring-limit": bench.scoring_limit,
            "scoring": bench.scoring,
            "scale-out": bench.scale_out,
            "e2e": bench.e2e,
            "footprint": bench.footprint,
            "growth": bench.growth,
            "workbench": bench.workbench,
        }
        for name in chosen:
            if name == "scoring-limit" and "scoring" in chosen:
                continue  # the scoring section measures its limit itself
            print(f"== {name}", flush=True)
            section_begin = time.monotonic()
            steps[name]()
            print(f"   ({time.monotonic() - section_begin:.0f} s)", flush=True)
    results: dict[str, Any] = {k: round(median(v), 6) for k, v in bench.runs.items()}
    for key in (
        "e2e_tasks",
        "e2e_sms",
        "e2e_sms_missing",
        "e2e_failed_requests",
        "workbench_open_tasks",
    ):
        if key in results:
            results[key] = int(results[key])
    if "scoring_eps" in results and "scoring_limit_eps" in results:
        results["scoring_ratio"] = results["scoring_eps"] / results["scoring_limit_eps"]
    if "ingest_batch_eps" in results:
        results["ingest_ratio"] = results["ingest_batch_eps"] / results["ingest_batch_limit_eps"]
    for size in ("1m", "5m", "10m"):
        if f"scoring_eps_{size}" in results and "scoring_eps_10k" in results:
            results[f"scoring_growth_ratio_{size}_10k"] = (
                results[f"scoring_eps_{size}"] / results["scoring_eps_10k"]
            )
    largest = [GROWTH_KEYS[n] for n in sorted(GROWTH_KEYS) if GROWTH_KEYS[n] in results]
    if largest:  # the capacity plan's per-event WAL: at the most subscribers measured
        for name in ("scoring_wal_bytes_per_event", "scoring_wal_full_pages_per_event"):
            results[name] = results[largest[-1].replace("scoring_eps_", f"{name}_")]
    if bench.runs.get("scoring_two_process_ratio"):
        # Issue 20 asks for the scale-out in every run, not only its median.
        results["scoring_two_process_ratio_min"] = min(bench.runs["scoring_two_process_ratio"])
    if "scoring_rss_bytes_per_subscriber" in results:
        results["scoring_rss_bytes_per_100k_subscribers"] = (
            results["scoring_rss_bytes_per_subscriber"] * 100_000
        )
    results = {
        k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else v)
        for k, v in results.items()
    }
    results.update(
        {
            "runs": {k: [round(x, 4) for x in v] for k, v in bench.runs.items()},
            "sections": chosen,
            "repetitions": repeat,
            "quick": args.quick,
            "plan": asdict(plan),
            "scoring_events": bench.extra.get("scoring_events"),
            "footprint_subscribers": bench.extra.get("footprint_subscribers"),
            "growth_events": bench.extra.get("growth_events"),
            "growth_populate_s": bench.extra.get("growth_populate_s"),
            "e2e_offered_eps": bench.extra.get("e2e_offered_eps"),
            "e2e_seconds": bench.extra.get("e2e_seconds"),
            "wall_seconds": round(time.monotonic() - started, 1),
            "machine": machine(),
            "commit": commit(),
            "before": _before(),
        }
    )
    write(results, args.out)
    print(table(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return results


def _before() -> dict[str, Any] | None:
    """bench/before.json: the figures the open performance issue was filed with."""
    path = ROOT / "bench" / "before.json"
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


if __name__ == "__main__":
    main()
