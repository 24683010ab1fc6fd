"""The alerting rules file: its schema, and loading it with errors that name the line.

A rules file (YAML, ``ALERTING_RULES_FILE``; the default ships as
``services/alerting/default_rules.yaml`` and is documented in
``docs/alerting.md``) lists:

- ``rules``: what fires (a trigger on an event type or on a risk score), which
  task kind it opens, how long that task stays open, how soon the same kind
  may fire again, how urgent it is, and where it goes (``routes``, first match
  wins unless a route says ``continue``);
- ``inhibit``: while a task of one kind is open, tasks of other kinds/channels
  are not opened;
- ``cancel``: events that cancel (or close with an outcome) open tasks;
- ``capacity``: how many retention calls an account manager takes a day, and
  where the rest spill.

Everything is validated by pydantic at start-up; ``load_rules`` turns a
validation error into one naming the file, line and field, so a typo in a
3 a.m. hot-fix stops the service with a message an operator can act on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from shared.events import Channel, TaskKind, Tier
from shared.yamlconf import load_model

T = TypeVar("T")

DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.yaml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_duration(value: object) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` (or a number of seconds) as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration such as 30m, 12h, 7d or 2w")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
"""A duration written as ``30m``, ``12h``, ``7d``, ``2w`` or seconds."""

RuleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- triggers -----------------------------------------------------------------


class ScoreTrigger(_Strict):
    """Fires when the risk score crosses ``threshold`` upward.

    Hysteresis: after firing, the rule is re-armed for that subscriber only when
    a score falls below ``rearm_below``, so a score hovering around the
    threshold fires once. ``dwell``: the score must stay at or above the
    threshold this long before the rule fires (checked on the next score and
    by a periodic sweep).
    """

    on: Literal["score"]
    threshold: float = Field(gt=0, lt=1)
    rearm_below: float = Field(gt=0, lt=1)
    dwell: Duration = timedelta(0)

    @model_validator(mode="after")
    def _rearm_below_threshold(self) -> ScoreTrigger:
        if self.rearm_below >= self.threshold:
            raise ValueError("rearm_below must be lower than threshold")
        return self


class StopNoticeTrigger(_Strict):
    """Fires on a ``stop_notice``; the task is due ``lead`` before the suspension.

    With ``cancel_when_paid``, payments after the notice that add up to the
    amount to pay cancel the reminder before it goes out.
    """

    on: Literal["stop_notice"]
    lead: Duration = timedelta(0)
    cancel_when_paid: bool = True


class ChurnTrigger(_Strict):
    """Fires on a ``churn`` event for subscribers worth at least ``min_monthly_value``.

    The task may not be acted on before ``delay`` after the churn (a win-back
    offer the day someone ports out is wasted).
    """

    on: Literal["churn"]
    delay: Duration = timedelta(0)
    min_monthly_value: Decimal = Field(default=Decimal(0), ge=0)


class ArrearsTrigger(_Strict):
    """Fires on early ``arrears``: at least ``min_amount`` overdue, at most ``max_days_overdue``."""

    on: Literal["arrears"]
    min_amount: Decimal = Field(default=Decimal(0), ge=0)
    max_days_overdue: int = Field(default=30, ge=0)


class BillShockTrigger(_Strict):
    """Fires on a ``billing`` event unusually high against the subscriber's usual bill.

    Usual = the exponentially weighted mean of their earlier bills (after
    ``min_history`` of them); unusual = at least ``ratio`` times it and at least
    ``min_increase`` more.
    """

    on: Literal["billing"]
    ratio: float = Field(default=1.5, gt=1)
    min_increase: Decimal = Field(default=Decimal(0), ge=0)
    min_history: int = Field(default=3, ge=1)


Trigger = Annotated[
    ScoreTrigger | StopNoticeTrigger | ChurnTrigger | ArrearsTrigger | BillShockTrigger,
    Field(discriminator="on"),
]

# --- routes -------------------------------------------------------------------

VIP_TIERS = frozenset(t for t in Tier if t.is_vip)


def _tiers(value: object) -> object:
    # "vip" is shorthand for the four account-managed tiers.
    if isinstance(value, list):
        out: list[object] = []
        for item in value:
            out.extend(sorted(VIP_TIERS) if item == "vip" else [item])
        return out
    return value


class Match(_Strict):
    """Conditions on the subscriber's profile; every one given must hold."""

    tiers: Annotated[frozenset[Tier] | None, BeforeValidator(_tiers)] = None
    min_monthly_value: Decimal | None = Field(default=None, ge=0)
    max_monthly_value: Decimal | None = Field(default=None, ge=0)
    has_account_manager: bool | None = None


class Route(_Strict):
    """Where a fired rule's task goes: a channel, and a queue or a template."""

    match: Match = Match()
    channel: Channel
    queue: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_:-]{0,63}$",
        description="Calls: 'account_manager' (the subscriber's, else the overflow queue) "
        "or a named shared queue.",
    )
    template: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    marketing: bool = False
    capacity: bool = Field(
        default=False, description="Counts against the account manager's daily call capacity."
    )
    continue_: bool = Field(default=False, alias="continue")

    @model_validator(mode="after")
    def _channel_fields(self) -> Route:
        if self.channel is Channel.CALL and self.queue is None:
            raise ValueError("a call route needs a queue")
        if self.channel is Channel.SMS and (self.queue is not None or self.capacity):
            raise ValueError("an sms route takes a template, not a queue or capacity")
        return self


# --- rules --------------------------------------------------------------------


class Rule(_Strict):
    """One alerting rule."""

    name: RuleName
    kind: TaskKind
    trigger: Trigger
    severity: int = Field(
        default=0,
        ge=0,
        description="A rule of higher severity replaces an open task of the same kind "
        "opened by a lower one (medium risk escalating to high).",
    )
    open_for: Duration = Field(
        default=timedelta(days=7),
        description="How long the task counts as open for deduplication and inhibition "
        "(reminders: until their due time).",
    )
    repeat_interval: Duration = Field(
        default=timedelta(0),
        description="After the kind fired for a subscriber, it does not fire again for them "
        "within this time.",
    )
    priority: Literal["fixed", "value", "risk_value"] = "fixed"
    priority_base: float = Field(default=0, ge=0)
    control_group: bool = Field(default=False, description="Subject to the hold-out control group.")
    routes: list[Route] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> Rule:
        if self.priority == "risk_value" and not isinstance(self.trigger, ScoreTrigger):
            raise ValueError("priority risk_value needs a score trigger")
        return self


class Inhibit(_Strict):
    """While a task of a ``while_open`` kind is open, matching new tasks are not opened."""

    while_open: list[TaskKind] = Field(min_length=1)
    kinds: list[TaskKind] = Field(min_length=1)
    channels: list[Channel] = Field(default_factory=lambda: list(Channel))


class Cancel(_Strict):
    """An event that ends open tasks of some kinds: cancels them, or closes with an outcome."""

    on: Literal["churn", "reactivation"]
    kinds: list[TaskKind] = Field(min_length=1)
    outcome: str | None = Field(default=None, pattern=r"^[a-z_]{1,32}$")
    reason: str = Field(min_length=1, max_length=200)


class Capacity(_Strict):
    """Account managers' daily call capacity, and where calls over it go."""

    timezone: str = "UTC"
    default_daily_calls: int = Field(default=10, ge=0)
    managers: dict[str, int] = Field(default_factory=dict)
    overflow_queue: str = Field(default="general", pattern=r"^[a-z][a-z0-9_:-]{0,63}$")
    reason_weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("managers")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [k for k, v in value.items() if v < 0]
        if bad:
            raise ValueError(f"daily calls must be at least 0 (managers {bad})")
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The zone whose calendar day the capacity counts."""
        return ZoneInfo(self.timezone)

    def daily_calls(self, manager_id: str) -> int:
        """How many capacity-limited calls this manager takes a day."""
        return self.managers.get(manager_id, self.default_daily_calls)

    def weight(self, reason_codes: Iterable[str]) -> float:
        """The largest weight among these reasons (1 when none is weighted)."""
        return max((self.reason_weights.get(code, 1.0) for code in reason_codes), default=1.0)


class RulesFile(_Strict):
    """A whole rules file."""

    version: Literal[1]
    capacity: Capacity = Capacity()
    rules: list[Rule] = Field(min_length=1)
    inhibit: list[Inhibit] = Field(default_factory=list)
    cancel: list[Cancel] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> RulesFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self

    def triggered(self, trigger_type: type[T]) -> list[tuple[Rule, T]]:
        """The rules with this trigger type, in file order, with their typed trigger."""
        return [(r, r.trigger) for r in self.rules if isinstance(r.trigger, trigger_type)]


# --- loading ------------------------------------------------------------------


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file and line."""


def parse_rules(text: str, *, source: str = "<rules>") -> RulesFile:
    """Parse and validate a rules document; raise ``RulesError`` naming the line."""
    rules, _ = load_model(
        RulesFile,
        text,
        source=source,
        error=RulesError,
        not_mapping="a rules file is a mapping with 'version' and 'rules'",
    )
    return rules


def load_rules(path: Path | None = None) -> RulesFile:
    """Load a rules file (the default one when ``path`` is None)."""
    path = path or DEFAULT_RULES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from exc
    return parse_rules(text, source=str(path))
