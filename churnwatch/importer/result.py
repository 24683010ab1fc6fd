"""What an import produced: the events, and every row it refused with the reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson


@dataclass(frozen=True)
class Rejection:
    """A row that could not be mapped, and why.

    ``reason`` is the message for a person (the row's field and value);
    ``kind`` is its stable *reason class* for counting (``blank:<column>``,
    ``not_a_number:<column>``, ``contract:<type>.<field>``, ``short_row``...;
    docs/import.md lists them).
    """

    row: int
    line: int
    reason: str
    kind: str = "other"

    def __str__(self) -> str:
        return f"row {self.row} (line {self.line}): {self.reason}"


@dataclass
class ImportResult:
    """What an import produced: events (NDJSON lines, sorted by time) and what was refused.

    Every data row read is either imported (``rows_imported``, its events
    written; a row may rightly make none) or rejected (one ``Rejection``):
    ``rows_read == rows_imported + len(rejections)``.
    """

    table: str
    rows_read: int = 0
    rows_imported: int = 0
    events: list[bytes] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    subscribers: set[str] = field(default_factory=set)
    churned: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (time, kind)
    by_type: Counter[str] = field(default_factory=Counter)
    latest: datetime | None = None
    seconds: float = 0.0

    def dicts(self) -> Iterator[dict[str, Any]]:
        """The events as dicts (decoded from their NDJSON lines)."""
        for line in self.events:
            yield orjson.loads(line)

    def rejected_by_reason(self) -> dict[str, int]:
        """Rejected rows per reason class, the most frequent first (ties by name)."""
        counts = Counter(r.kind for r in self.rejections)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def summary(self) -> dict[str, Any]:
        """The import's figures as JSON-ready data (``import-table --summary``)."""
        return {
            "table": self.table,
            "rows_read": self.rows_read,
            "rows_imported": self.rows_imported,
            "rejected": len(self.rejections),
            "rejected_by_reason": self.rejected_by_reason(),
            "subscribers": len(self.subscribers),
            "churned": len(self.churned),
            "events": len(self.events),
            "events_by_type": dict(sorted(self.by_type.items())),
        }
