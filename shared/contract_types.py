"""The value types every contract model is built from: ids, money, times, labels, tiers.

``shared.events`` (subscriber events) and ``shared.messages`` (messages between
services) both use them; ``shared.events`` re-exports them, so code imports
them from there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

SubscriberId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"),
]
"""Operator subscriber id: opaque, 1-64 chars of letters, digits and ``._:-``."""

PhoneNumber = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]
"""A phone number in E.164 form (``+`` then 7-15 digits)."""

Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4)]
"""A non-negative amount in the operator's currency."""

Period = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
"""A billing period as ``YYYY-MM``."""

_NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"

Label = Annotated[str, StringConstraints(pattern=_NO_CONTROL_CHARACTERS)]
"""Free text from the billing system without control characters: a NUL cannot be
stored by PostgreSQL, and a newline or an escape sequence has no business in an id
or a name (it would forge log lines and break CSV exports)."""

Category = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=_NO_CONTROL_CHARACTERS)
]
"""An open categorical value (credit class, region, handset model, ...): 1-64 chars
of free text without control characters. Any value is accepted: operators name
their classes their own way, and a new class must not make ingest refuse events
(the features give an unseen value its own bucket)."""

# Times outside this range are typos or sentinels (0001-01-01, 9999-12-31): they
# would poison time-decayed features, and date arithmetic near the ends overflows.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def _plausible(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise PydanticCustomError(
            "implausible_time",
            "time must be from {earliest} up to {latest}",
            {"earliest": EARLIEST.date().isoformat(), "latest": LATEST.date().isoformat()},
        )
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_plausible)]
"""A timezone-aware time between 1970 and 2100."""


class ContractModel(BaseModel):
    """Base for contract models: strict about unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Tier(StrEnum):
    """Customer value tier; every tier but ``standard`` has an account manager."""

    DIAMOND = "diamond"
    GOLD = "gold"
    SILVER = "silver"
    VIP_GUEST = "vip_guest"
    STANDARD = "standard"

    @property
    def is_vip(self) -> bool:
        """True for the tiers served by an account manager."""
        return self is not Tier.STANDARD


class Channel(StrEnum):
    """How outreach reaches a subscriber."""

    SMS = "sms"
    CALL = "call"
