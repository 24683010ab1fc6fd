"""The dead-letter topic: where messages no consumer can parse go, with the reason.

A dead letter keeps the original key and value byte for byte; the reason and
the source coordinates travel in headers, so an operator can inspect it and
produce it back to its source topic once the cause is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message to dead-letter, with why and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    reason_class: str
    service: str

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers that describe the failure and the source offset."""
        return [
            ("dlq.reason", self.reason[:2000].encode()),
            ("dlq.reason_class", self.reason_class.encode()),
            ("dlq.service", self.service.encode()),
            ("dlq.source_topic", self.topic.encode()),
            ("dlq.source_partition", str(self.partition).encode()),
            ("dlq.source_offset", str(self.offset).encode()),
            ("dlq.failed_at", datetime.now(UTC).isoformat().encode()),
        ]
