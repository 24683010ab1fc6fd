"""Every Kafka topic churnwatch uses, named in one place.

All topics but the landing topic (``events.in``, written by billing systems,
read only by ingest) are keyed by ``subscriber_id`` and created with the same partition
count (``KAFKA_TOPIC_PARTITIONS``), so they are co-partitioned: with the
default partitioner, one subscriber's events, scores and tasks land on the
same partition number, and therefore on the same scoring replica. Never change
the partition count of a live topic: keys would move.

All subscriber events share one topic on purpose. Kafka orders messages only
within a partition; with usage and account events on separate topics a
consumer catching up could read a port-out before the calls that preceded it,
and the labels the model learns from depend on that order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    """The concrete topic names for one prefix (``KAFKA_TOPIC_PREFIX``)."""

    prefix: str = "churnwatch"

    @property
    def events(self) -> str:
        """Every subscriber event from ingest. Key: subscriber_id. Read by scoring, alerting."""
        return f"{self.prefix}.events"

    @property
    def landing(self) -> str:
        """Events from billing systems that publish to Kafka (docs/kafka-producers.md).

        Any key and partitioner; ingest validates every record and writes the valid
        ones to ``events``. Read by ingest only; any partition count.
        """
        return f"{self.prefix}.events.in"

    @property
    def scores(self) -> str:
        """RiskScore messages from scoring. Key: subscriber_id. Read by alerting."""
        return f"{self.prefix}.scores"

    @property
    def tasks(self) -> str:
        """OutreachTask messages from alerting. Key: subscriber_id. Read by outreach."""
        return f"{self.prefix}.tasks"

    @property
    def outcomes(self) -> str:
        """Final task states and call outcomes (outreach → scoring, reports)."""
        return f"{self.prefix}.outcomes"

    @property
    def dlq(self) -> str:
        """Dead letters: messages no consumer could parse, with the reason in headers."""
        return f"{self.prefix}.dlq"

    def all(self) -> list[str]:
        """Every topic, for creation at start-up."""
        return [self.landing, self.events, self.scores, self.tasks, self.outcomes, self.dlq]

    def free_partitioning(self) -> tuple[str, ...]:
        """Topics whose partition count need not be ``KAFKA_TOPIC_PARTITIONS``."""
        return (self.landing, self.dlq)
