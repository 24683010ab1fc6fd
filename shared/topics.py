"""Every Kafka topic churnwatch uses, named in one place.

All topics are keyed by ``subscriber_id`` and created with the same partition
count (``KAFKA_TOPIC_PARTITIONS``), so they are co-partitioned: with the
default partitioner, one subscriber's usage, account events, scores and tasks
land on the same partition number, and therefore on the same scoring replica.
Never change the partition count of a live topic: keys would move.
"""

from __future__ import annotations

from dataclasses import dataclass

# Which topic carries which event type. CDRs are by far the largest stream and get
# a topic of their own; everything else about the account shares one topic, so
# per-subscriber order holds between, say, a profile and its stop-notice.
USAGE_EVENT_TYPES = frozenset({"cdr"})


@dataclass(frozen=True, slots=True)
class Topics:
    """The concrete topic names for one prefix (``KAFKA_TOPIC_PREFIX``)."""

    prefix: str = "churnwatch"

    @property
    def usage(self) -> str:
        """CDRs (calls, SMS, data sessions). Key: subscriber_id. Read by scoring."""
        return f"{self.prefix}.events.usage"

    @property
    def account(self) -> str:
        """Billing, payments, arrears, stop-notices, profiles, complaints, churn.

        Key: subscriber_id. Read by scoring and alerting.
        """
        return f"{self.prefix}.events.account"

    @property
    def scores(self) -> str:
        """RiskScore messages from scoring. Key: subscriber_id. Read by alerting."""
        return f"{self.prefix}.scores"

    @property
    def tasks(self) -> str:
        """OutreachTask messages from alerting. Key: subscriber_id. Read by outreach."""
        return f"{self.prefix}.tasks"

    @property
    def dlq(self) -> str:
        """Dead letters: messages no consumer could parse, with the reason in headers."""
        return f"{self.prefix}.dlq"

    def for_event_type(self, event_type: str) -> str:
        """The topic an ingested event of this type goes to."""
        return self.usage if event_type in USAGE_EVENT_TYPES else self.account

    def all(self) -> list[str]:
        """Every topic, for creation at start-up."""
        return [self.usage, self.account, self.scores, self.tasks, self.dlq]
