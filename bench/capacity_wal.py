"""The capacity plan's PostgreSQL WAL per event in steady state, from the benchmark's worst case.

The growth section measures, at its largest size, the WAL a run writes right
after a checkpoint (``scoring_wal_bytes_per_event``), the full-page images in
it (``scoring_wal_full_pages_per_event``) and the WAL of the same kind of run
without full-page images (``scoring_wal_record_bytes_per_event``). A run of
60,000 events over millions of stored subscribers touches nearly every page
for the first time since its checkpoint, and the first change of a page after
a checkpoint writes the whole page (``full_page_writes``): the worst case. An
operator's primary changes the same pages again and again within one
checkpoint cycle; only the first change of each pays the image. This module
works out that share for the operator's event rate and checkpoint interval,
showing the arithmetic, so the plan is not sized on the worst case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from bench.capacity_text import X, num, size

CHECKPOINT_TIMEOUT_S = 900.0
"""docs/deploy.md's ``checkpoint_timeout`` (15 minutes), with ``max_wal_size`` large
enough that the timeout, not the WAL volume, starts each checkpoint."""
PAGE_BYTES = 8192
PROCESSED_INDEX_BYTES = 32
"""A processed-id's btree entry: a 16-byte uuid, an 8-byte index tuple header, a
4-byte line pointer, aligned (an estimate from the column type, not measured)."""

KEYS: dict[str, tuple[str, int, str]] = {
    "scoring_wal_full_pages_per_event": (
        "",
        3,
        "full-page images per scoring event, the run after a checkpoint (largest size)",
    ),
    "scoring_wal_record_bytes_per_event": (
        "bytes",
        0,
        "PostgreSQL WAL per scoring event without full-page images (largest size)",
    ),
}
"""The results.json keys this module reads, as ``bench.capacity.KEYS`` lists them."""


class Figures(Protocol):
    """The measured figures, as ``bench.capacity.Figures`` reads and cites them."""

    def get(self, key: str) -> float | None:
        """The figure under ``key``, or None when it was not measured."""

    def ref(self, key: str) -> str:
        """The figure inside arithmetic: value (`key`)."""


def first_touch_share(touches: float, pages: float) -> float:
    """Of ``touches`` spread uniformly over ``pages``, the share that is a page's first.

    ``pages x (1 - e^(-touches/pages))`` distinct pages are touched (balls into
    bins), each paying one full-page image per checkpoint cycle.
    """
    if touches <= 0 or pages <= 0:
        return 1.0
    return min(1.0, pages * -math.expm1(-touches / pages) / touches)


@dataclass(frozen=True)
class SteadyWal:
    """WAL bytes per scoring event at the peak, in steady state, and the lines that derive it."""

    per_event: float
    lines: list[str]


def steady_wal(
    f: Figures, *, subscribers: float, peak: float, processed_rows: float
) -> SteadyWal | None:
    """Steady-state WAL per event at ``peak`` events/s, or None when a figure is missing.

    ``processed_rows``: the processed-id rows kept (their index takes one random
    insert per event, on an index far larger than a checkpoint cycle's inserts).
    """
    worst = f.get("scoring_wal_bytes_per_event")
    images = f.get("scoring_wal_full_pages_per_event")
    records = f.get("scoring_wal_record_bytes_per_event")
    per_subscriber = f.get("pg_bytes_per_subscriber")
    if worst is None or images is None or records is None or per_subscriber is None:
        return None
    if images <= 0 or worst <= records:
        return None
    # An image is at most a page; WAL beyond the records and a page per counted image
    # is WAL the counter did not attribute to images (autovacuum's, among others,
    # whose counts reach pg_stat_wal when its worker exits): carried whole.
    image_bytes = min((worst - records) / images, PAGE_BYTES)
    unattributed = worst - records - images * image_bytes
    cycle = peak * CHECKPOINT_TIMEOUT_S
    state_pages = subscribers * per_subscriber / PAGE_BYTES
    state_share = first_touch_share(cycle * images, state_pages)
    id_pages = processed_rows * PROCESSED_INDEX_BYTES / PAGE_BYTES
    id_share = first_touch_share(cycle, id_pages)
    per_event = records + unattributed + image_bytes * (images * state_share + id_share)
    w, r, i = (
        f.ref("scoring_wal_bytes_per_event"),
        f.ref("scoring_wal_record_bytes_per_event"),
        f.ref("scoring_wal_full_pages_per_event"),
    )
    lines = [
        "The benchmark's WAL per event is a worst case: each growth run starts right after "
        "a checkpoint and touches nearly every page for the first time in its cycle, and "
        "the first change of a page after a checkpoint writes the whole page "
        "(`full_page_writes`). In steady state:",
        "",
        f"- One full-page image: ({w} - {r}) ÷ {i}, at most a page ({PAGE_BYTES}) = "
        f"{num(image_bytes)} bytes; the records, {r}, every event writes whatever the cycle"
        + (
            f", and so does the WAL the counter did not attribute to images (autovacuum's, "
            f"among others): {w} - {r} - {i} {X} {num(image_bytes)} = {num(unattributed)} bytes."
            if unattributed > 0
            else "."
        ),
        f"- A checkpoint every {CHECKPOINT_TIMEOUT_S / 60:g} minutes (docs/deploy.md) at the "
        f"peak: {num(peak)} {X} {CHECKPOINT_TIMEOUT_S:g} s = {num(cycle)} events a cycle.",
        f"- State pages (rows, their indexes, snapshots): {num(subscribers)} {X} "
        f"{f.ref('pg_bytes_per_subscriber')} ÷ {PAGE_BYTES} = {num(state_pages)} pages, "
        f"touched {num(cycle)} {X} {i} = {num(cycle * images)} times a cycle; "
        f"the share that is a page's first touch, pages {X} (1 - e^(-touches ÷ pages)) ÷ "
        f"touches = **{state_share:.3f}**.",
        f"- The processed-id index: {num(processed_rows)} rows {X} {PROCESSED_INDEX_BYTES} "
        f"bytes (estimate) ÷ {PAGE_BYTES} = {num(id_pages)} leaf pages, one random insert "
        f"an event: first-touch share **{id_share:.3f}** (its uuid keys land anywhere; "
        "in the benchmark the index is small and this term is mostly absent).",
        f"- WAL per event at the peak: {r}"
        + (f" + {num(unattributed)}" if unattributed > 0 else "")
        + f" + {num(image_bytes)} {X} ({i} {X} {state_share:.3f} + {id_share:.3f}) = "
        f"**{num(per_event)} bytes**, against {size(worst)} in the worst case.",
        "",
        "Longer checkpoint intervals lower it (more changes per image) and lengthen crash "
        "recovery; processed ids in time order (not random uuids) would remove most of the "
        "index term.",
    ]
    return SteadyWal(per_event, lines)
