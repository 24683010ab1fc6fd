"""The ``churnwatch import-table`` command: write, post and summarise an import."""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING

import httpx
import orjson

from churnwatch.importer.checks import load_mapping
from churnwatch.importer.convert import import_table
from churnwatch.importer.model import MappingError
from churnwatch.importer.result import ImportResult
from churnwatch.keys import api_headers
from churnwatch.resend import post_with_resend

if TYPE_CHECKING:
    from rich.console import Console


def write_events(result: ImportResult, out: IO[bytes]) -> None:
    """Write the events as NDJSON, one per line, in time order."""
    for line in result.events:
        out.write(line)
        out.write(b"\n")


def write_truth(result: ImportResult, path: Path) -> None:
    """Write the ground truth: one CSV line per subscriber, churned or not, and when."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subscriber_id", "churned", "churn_at", "kind"])
        for sid in sorted(result.subscribers):
            at, kind = result.churned.get(sid, ("", ""))
            writer.writerow([sid, 1 if at else 0, at, kind])


def write_summary(result: ImportResult, path: Path) -> None:
    """Write the import's figures as JSON: rows read and rejected (by reason), events, labels."""
    path.write_bytes(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2) + b"\n")


def post_events(
    lines: Sequence[bytes],
    ingest_url: str,
    *,
    batch_size: int = 1000,
    client: httpx.Client | None = None,
    attempts: int = 5,
    api_key: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, int]:
    """POST the events to ingest's ``/v1/events`` as NDJSON in batches; return (accepted, rejected).

    ``api_key`` (else ``CHURNWATCH_API_KEY``) needs the ``events:write`` scope.

    A 503 (the broker did not acknowledge) is resent after its ``Retry-After``
    (at most 30 s; :mod:`churnwatch.resend`, ``sleep`` waits) for ``attempts`` in
    all: resending is safe, the event ids make repeats harmless. Any other error
    status, or a 503 on the last attempt, raises ``httpx.HTTPStatusError``.
    """
    url = ingest_url.rstrip("/")
    if not url.endswith("/v1/events"):
        url += "/v1/events"
    own = client is None
    http = client or httpx.Client(timeout=60)
    headers = {"Content-Type": "application/x-ndjson", **api_headers(api_key)}
    accepted = rejected = 0
    try:
        for start in range(0, len(lines), batch_size):
            body = b"\n".join(lines[start : start + batch_size]) + b"\n"
            response = post_with_resend(
                partial(http.post, url, content=body, headers=headers),
                attempts=attempts,
                sleep=sleep,
            )
            response.raise_for_status()
            answer = response.json()
            accepted += int(answer.get("accepted", 0))
            rejected += len(answer.get("rejected", []))
    finally:
        if own:
            http.close()
    return accepted, rejected


def run(
    file: Path,
    mapping: Path,
    *,
    out: Path | None,
    truth: Path | None,
    post: str | None,
    limit: int | None,
    as_of: str | datetime | None,
    console: Console,
    summary: Path | None = None,
) -> int:
    """The ``churnwatch import-table`` command; returns the exit code.

    ``summary`` also writes the import's figures as JSON (:meth:`ImportResult.summary`).

    0: imported (rows may have been rejected; the summary says how many).
    1: the table had rows but none could be imported, or posting failed.
    2: the mapping or the table cannot be used (nothing was written).
    """
    if isinstance(as_of, str):
        try:
            as_of = datetime.fromisoformat(as_of)
        except ValueError:
            console.print(f"--as-of {as_of!r} is not an ISO date or time", highlight=False)
            return 2
    try:
        loaded = load_mapping(mapping)
        result = import_table(file, loaded, limit=limit, as_of=as_of)
    except MappingError as exc:
        console.print(f"[red]cannot import[/red]\n{exc}", markup=True, highlight=False)
        return 2
    shown = 20
    for rejection in result.rejections[:shown]:
        console.print(f"{file}: {rejection}", markup=False, highlight=False)
    if len(result.rejections) > shown:
        console.print(f"... and {len(result.rejections) - shown} more rejected rows", markup=False)
    if out is not None or post is None:
        if out is None or str(out) == "-":
            write_events(result, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with out.open("wb") as handle:
                write_events(result, handle)
    if truth is not None:
        write_truth(result, truth)
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.by_type.items()))
    console.print(
        f"{result.table}: {result.rows_read} rows read, {len(result.rejections)} rejected, "
        f"{len(result.subscribers)} subscribers ({len(result.churned)} churned), "
        f"{len(result.events)} events written ({types or 'none'}) in {result.seconds:.1f}s",
        markup=False,
        highlight=False,
    )
    if result.rejections:
        reasons = ", ".join(f"{kind} {n}" for kind, n in result.rejected_by_reason().items())
        console.print(f"rejected rows by reason: {reasons}", markup=False, highlight=False)
    if summary is not None:
        write_summary(result, summary)
    if result.latest is not None and result.latest > datetime.now(UTC) + timedelta(hours=1):
        console.print(
            f"[yellow]warning[/yellow]: events run up to {result.latest.isoformat()}, in the "
            "future; ingest refuses those (use --as-of or timeline.as_of)",
            markup=True,
            highlight=False,
        )
    if post is not None:
        try:
            accepted, refused = post_events(result.events, post)
        except (httpx.HTTPError, ValueError) as exc:
            console.print(f"[red]posting to {post} failed[/red]: {exc}", highlight=False)
            return 1
        console.print(f"posted to {post}: {accepted} accepted, {refused} refused", highlight=False)
        if refused:
            return 1
    if result.rows_read and not result.events:
        return 1
    return 0
