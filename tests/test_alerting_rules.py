"""The alerting rules file and engine, without a broker or database (pure functions)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from churnwatch.cli import app as cli
from services.alerting.rule_engine import (
    PAYMENTS_KEPT,
    Alert,
    Effects,
    Facts,
    Profile,
    RuleEngine,
    Silence,
    SubscriberView,
    allocate,
    capacity_day,
    in_control_group,
)
from services.alerting.rules import (
    DEFAULT_RULES_FILE,
    RulesError,
    RulesFile,
    load_rules,
    parse_duration,
    parse_rules,
)
from shared.events import (
    Channel,
    Event,
    OutreachTask,
    RiskScore,
    ScoreReason,
    TaskAction,
    TaskKind,
    TaskUpdate,
    Tier,
    UpdateCause,
    parse_event,
)
from tests.helpers import event

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
SUB = "S-rules-1"
DEFAULT_TEXT = DEFAULT_RULES_FILE.read_text()


def rules(*replace: tuple[str, str]) -> RulesFile:
    """The default rules with text replacements (each must apply)."""
    text = DEFAULT_TEXT
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    return parse_rules(text)


NO_DWELL = rules(("dwell: 30m", "dwell: 0s"), ("dwell: 2h", "dwell: 0s"))


def ev(event_type: str, payload: dict[str, Any], at: datetime, sub: str = SUB) -> Event:
    return parse_event(event(event_type, sub, payload, at=at), check_clock=False)


def sc(
    value: float, at: datetime, sub: str = SUB, codes: tuple[str, ...] = ("COMPLAINTS_UP",)
) -> RiskScore:
    return RiskScore(
        score_id=uuid.uuid4(),
        subscriber_id=sub,
        score=value,
        band="high" if value >= 0.7 else "medium" if value >= 0.5 else "low",
        model_version="test",
        reasons=[
            ScoreReason(code=c, text_en=f"{c} text", text_zh="原因", contribution=1.0)
            for c in codes
        ],
        cause_event_id=uuid.uuid4(),
        event_time=at,
        scored_at=at,
    )


def view(
    *,
    tier: str = "standard",
    value: str = "20",
    manager: str | None = None,
    phone: str | None = "+15550001111",
    opt_out: bool = False,
    sub: str = SUB,
) -> SubscriberView:
    return SubscriberView(
        subscriber_id=sub,
        profile=Profile(
            tier=Tier(tier),
            monthly_value=Decimal(value),
            account_manager_id=manager,
            phone=phone,
            marketing_opt_out=opt_out,
        ),
    )


def run(
    engine: RuleEngine,
    v: SubscriberView,
    messages: list[Event | RiskScore],
    *,
    silences: list[Silence] | None = None,
    now: datetime = T0,
) -> Effects:
    effects = Effects()
    for m in messages:
        engine.handle(m, v, effects, silences=silences or [], now=now)
    return effects


def tasks_of(effects: Effects) -> list[OutreachTask]:
    return [m for m in effects.outbound if isinstance(m, OutreachTask)]


def updates_of(effects: Effects) -> list[TaskUpdate]:
    return [m for m in effects.outbound if isinstance(m, TaskUpdate)]


def stop(at: datetime, amount: str = "50.00", in_hours: float = 48) -> Event:
    return ev(
        "stop_notice",
        {"suspension_at": (at + timedelta(hours=in_hours)).isoformat(), "amount_to_pay": amount},
        at,
    )


def pay(at: datetime, amount: str) -> Event:
    return ev("payment", {"amount": amount}, at)


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- the rules file ---------------------------------------------------------------


def test_the_default_rules_file_covers_every_trigger_and_kind() -> None:
    loaded = load_rules()
    assert {r.trigger.on for r in loaded.rules} == {
        "stop_notice",
        "score",
        "churn",
        "arrears",
        "billing",
    }
    assert {r.kind for r in loaded.rules} == set(TaskKind)
    assert loaded.capacity.default_daily_calls == 10


@pytest.mark.parametrize(
    ("old", "new", "line", "expected"),
    [
        (
            "threshold: 0.7,",
            "threshold: 1.7,",
            44,
            "rules.1.trigger.threshold: Input should be less than 1",
        ),
        (
            "        capacity: true\n      - match: {min",
            "        capcity: true\n      - match: {min",
            53,
            "rules.1.routes.0.capcity: Extra inputs are not permitted",
        ),
        ("delay: 3d,", "delay: 3 days,", 84, "'3 days' is not a duration"),
        ("rearm_below: 0.6,", "rearm_below: 0.8,", 44, "rearm_below must be lower than threshold"),
        (
            "  - on: reactivation",
            "  - on: reactivaton",
            134,
            "cancel.1.on: Input should be 'churn' or 'reactivation'",
        ),
        ("    kind: win_back\n", "    kind: winback\n", 83, "rules.3.kind: Input should be"),
        ("  timezone: UTC", "  timezone: Mars/Olympus", 10, "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_rules_file_names_the_line_and_field(
    old: str, new: str, line: int, expected: str
) -> None:
    text = DEFAULT_TEXT.replace(old, new, 1)
    with pytest.raises(RulesError) as err:
        parse_rules(text, source="mine.yaml")
    assert f"mine.yaml:{line_of(text, new.strip().splitlines()[0])}: " in str(err.value)
    assert expected in str(err.value)


def test_duplicate_rule_names_and_broken_yaml_are_refused() -> None:
    twice = DEFAULT_TEXT.replace("name: bill_shock", "name: early_arrears")
    with pytest.raises(RulesError, match="'early_arrears' is used twice"):
        parse_rules(twice)
    with pytest.raises(RulesError, match=r"x.yaml:3: not valid YAML"):
        parse_rules("version: 1\nrules: [\n", source="x.yaml")
    with pytest.raises(RulesError, match="a rules file is a mapping"):
        parse_rules("- just a list\n")


def test_on_is_a_key_not_a_yaml_boolean() -> None:
    # YAML 1.1 reads `on` as true; the loader keeps it a string.
    assert NO_DWELL.rules[0].trigger.on == "stop_notice"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), (15, 15)],
)
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_rules_check_command(tmp_path: Any) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["rules", "check", str(DEFAULT_RULES_FILE)])
    assert ok.exit_code == 0, ok.output
    assert "6 rules" in ok.output
    bad = tmp_path / "bad.yaml"
    text = DEFAULT_TEXT.replace("threshold: 0.5,", "threshold: five,")
    bad.write_text(text)
    failed = runner.invoke(cli, ["rules", "check", str(bad)])
    assert failed.exit_code == 1
    assert f"{bad}:{line_of(text, 'five')}: rules.2.trigger.threshold" in failed.output


# --- pre-suspension reminder --------------------------------------------------------


def test_stop_notice_reminds_every_tier_and_calls_vips_through_their_manager() -> None:
    engine = RuleEngine(NO_DWELL)
    standard = tasks_of(run(engine, view(), [stop(T0)]))
    assert [t.channel for t in standard] == [Channel.SMS]
    vip = tasks_of(run(engine, view(tier="gold", manager="am-7", value="120"), [stop(T0)]))
    assert [(t.channel, t.queue) for t in vip] == [(Channel.SMS, None), (Channel.CALL, "am:am-7")]
    # Due two hours (the rule's lead) before the suspension; reminders outrank retention.
    assert {t.due_at for t in vip} == {T0 + timedelta(hours=46)}
    assert vip[1].priority == 10_120
    assert vip[0].params["amount"] == "50.00" and vip[0].template == "pre_suspension_reminder"
    # Same cause, same ids: a replay cannot open a second task.
    notice = stop(T0)
    first = tasks_of(run(engine, view(tier="gold", manager="am-7"), [notice]))
    second = tasks_of(run(engine, view(tier="gold", manager="am-7"), [notice]))
    assert [t.task_id for t in first] == [t.task_id for t in second]


def test_a_vip_without_a_manager_goes_to_the_general_queue() -> None:
    tasks = tasks_of(run(RuleEngine(NO_DWELL), view(tier="silver"), [stop(T0)]))
    assert tasks[1].queue == "general"


def test_a_payment_covering_the_amount_cancels_the_reminder() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view(tier="diamond", manager="am-1")
    opened = tasks_of(run(engine, v, [stop(T0, amount="50.00")]))
    assert len(opened) == 2
    part = run(engine, v, [pay(T0 + timedelta(hours=1), "20.00")])
    assert part.outbound == []
    rest = run(engine, v, [pay(T0 + timedelta(hours=2), "30.00")])
    cancels = updates_of(rest)
    assert {u.task_id for u in cancels} == {t.task_id for t in opened}
    assert {u.action for u in cancels} == {TaskAction.CANCEL}
    assert "paid 50.00 of 50.00" in cancels[0].reason
    assert v.alerts[0].status == "cancelled"


def test_a_payment_before_the_notice_or_after_the_suspension_cancels_nothing() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view()
    run(engine, v, [stop(T0, in_hours=10)])
    assert run(engine, v, [pay(T0 - timedelta(hours=1), "100")]).outbound == []
    assert run(engine, v, [pay(T0 + timedelta(hours=11), "100")]).outbound == []
    assert v.alerts[0].status == "open"


def test_a_payment_handled_before_its_notice_still_clears_it() -> None:
    # Arrival order is not event order (the notice came through the Kafka landing
    # topic, the payment 50 ms later over HTTP, and alerting saw the payment first).
    engine = RuleEngine(NO_DWELL)
    v = view(tier="diamond", manager="am-1")
    assert run(engine, v, [pay(T0 + timedelta(seconds=1), "50.00")]).outbound == []
    effects = run(engine, v, [stop(T0, amount="50.00")])
    assert effects.outbound == [] and effects.suppressed == [("pre_suspension_reminder", "paid")]
    assert v.alerts == []


def test_a_part_paid_before_its_notice_counts_towards_it() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view(tier="diamond", manager="am-1")
    run(engine, v, [pay(T0 + timedelta(seconds=1), "20.00")])
    run(engine, v, [pay(T0 - timedelta(hours=1), "500.00")])  # before the notice: not for it
    opened = tasks_of(run(engine, v, [stop(T0, amount="50.00")]))
    assert len(opened) == 2 and v.alerts[0].paid == Decimal("20.00")
    cancels = updates_of(run(engine, v, [pay(T0 + timedelta(hours=1), "30.00")]))
    assert {u.task_id for u in cancels} == {t.task_id for t in opened}
    # Payments after the suspension clear nothing, whenever they are handled.
    w = view(tier="diamond", manager="am-1")
    run(engine, w, [pay(T0 + timedelta(hours=49), "50.00")])
    assert len(tasks_of(run(engine, w, [stop(T0, amount="50.00", in_hours=48)]))) == 2


def test_a_subscriber_remembers_only_recent_payments() -> None:
    facts = Facts()
    for day in range(100):
        facts.remember_payment(T0 + timedelta(days=day), Decimal(1))
    assert len(facts.payments) == PAYMENTS_KEPT
    assert facts.payments[0][0] == T0 + timedelta(days=100 - PAYMENTS_KEPT)
    assert facts.paid_between(T0, T0 + timedelta(days=1000)) == Decimal(PAYMENTS_KEPT)


def test_a_notice_for_a_suspension_already_past_is_not_reminded() -> None:
    effects = run(RuleEngine(NO_DWELL), view(), [stop(T0, in_hours=-1)])
    assert effects.outbound == [] and effects.suppressed == [
        ("pre_suspension_reminder", "too_late")
    ]


# --- retention: hysteresis, dwell, repeat, dedup --------------------------------------


def test_a_score_oscillating_around_the_threshold_fires_once() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view()
    scores: list[Event | RiskScore] = []
    for i in range(10):
        scores.append(sc(0.69, T0 + timedelta(minutes=20 * i)))
        scores.append(sc(0.71, T0 + timedelta(minutes=20 * i + 10)))
    effects = run(engine, v, scores)
    high = [t for t in tasks_of(effects) if t.rule == "retention_high"]
    assert len(high) == 1
    # 0.69 also crossed into medium first: the medium task was superseded by high.
    assert [t.rule for t in tasks_of(effects)] == ["retention_medium", "retention_high"]


def test_re_armed_only_below_the_lower_bound_and_then_subject_to_repeat() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view()
    first = run(engine, v, [sc(0.75, T0)])
    assert [t.rule for t in tasks_of(first)] == ["retention_high"]
    # Down to 0.65 (above rearm_below 0.6) and back: still disarmed, nothing.
    assert (
        tasks_of(
            run(engine, v, [sc(0.65, T0 + timedelta(days=1)), sc(0.8, T0 + timedelta(days=2))])
        )
        == []
    )
    # Below 0.6 re-arms, but the task is still open (7 days): dedup.
    again = run(engine, v, [sc(0.3, T0 + timedelta(days=3)), sc(0.8, T0 + timedelta(days=4))])
    assert tasks_of(again) == []
    assert ("retention_high", "dedup") in again.suppressed
    # After the open window but inside the 14-day repeat interval: repeat.
    later = run(engine, v, [sc(0.3, T0 + timedelta(days=9)), sc(0.8, T0 + timedelta(days=10))])
    assert tasks_of(later) == [] and ("retention_high", "repeat") in later.suppressed
    # After the repeat interval it fires again.
    after = run(engine, v, [sc(0.3, T0 + timedelta(days=15)), sc(0.8, T0 + timedelta(days=16))])
    assert [t.rule for t in tasks_of(after)] == ["retention_high"]


def test_dwell_fires_only_when_the_score_stays_up() -> None:
    engine = RuleEngine(load_rules())  # retention_high dwells 30 minutes
    v = view()
    crossing = run(engine, v, [sc(0.72, T0)])
    assert [t.rule for t in tasks_of(crossing)] == []  # medium dwells 2h, high 30m
    # A blip: back under 0.7 within the dwell, then up again: the clock restarts.
    blip = run(
        engine, v, [sc(0.65, T0 + timedelta(minutes=10)), sc(0.72, T0 + timedelta(minutes=20))]
    )
    assert tasks_of(blip) == []
    held = run(engine, v, [sc(0.74, T0 + timedelta(minutes=51))])
    assert [t.rule for t in tasks_of(held)] == ["retention_high"]


def test_the_sweep_fires_a_dwell_that_elapsed_without_a_newer_score() -> None:
    engine = RuleEngine(load_rules())
    v = view()
    run(engine, v, [sc(0.9, T0, codes=("COMPETITOR_CALLS_UP",))])
    early = Effects()
    engine.tick(v, early, silences=[], now=T0 + timedelta(minutes=29))
    assert early.outbound == []
    due = Effects()
    engine.tick(v, due, silences=[], now=T0 + timedelta(minutes=31))
    [task] = tasks_of(due)
    assert task.rule == "retention_high" and task.created_at == T0 + timedelta(minutes=30)
    assert task.reason_codes == ["COMPETITOR_CALLS_UP"] and task.risk == 0.9
    # Ticking again fires nothing more; medium (2h) is then suppressed as dedup.
    more = Effects()
    engine.tick(v, more, silences=[], now=T0 + timedelta(hours=3))
    assert more.outbound == [] and ("retention_medium", "dedup") in more.suppressed


def test_high_risk_supersedes_an_open_medium_task_but_not_the_reverse() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view()
    medium = tasks_of(run(engine, v, [sc(0.55, T0)]))
    assert [t.rule for t in medium] == ["retention_medium"]
    escalated = run(engine, v, [sc(0.8, T0 + timedelta(hours=1))])
    [cancel] = updates_of(escalated)
    assert cancel.task_id == medium[0].task_id and "superseded by retention_high" in cancel.reason
    assert [t.rule for t in tasks_of(escalated)] == ["retention_high"]


def test_the_task_carries_the_reasons_and_a_value_weighted_priority() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view(tier="gold", manager="am-2", value="200")
    [task] = tasks_of(run(engine, v, [sc(0.8, T0, codes=("COMPETITOR_CALLS_UP", "USAGE_DOWN"))]))
    assert task.reason_codes == ["COMPETITOR_CALLS_UP", "USAGE_DOWN"]
    assert task.reasons[0] == "COMPETITOR_CALLS_UP: COMPETITOR_CALLS_UP text"
    assert task.priority == pytest.approx(0.8 * 200 * 1.5)  # the largest weight counts


# --- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "channel", "queue", "template"),
    [
        ({"tier": "diamond", "manager": "am-1"}, Channel.CALL, "am:am-1", None),
        ({"tier": "vip_guest", "manager": None}, Channel.CALL, "general", None),
        ({"tier": "standard", "value": "80", "manager": "am-4"}, Channel.CALL, "am:am-4", None),
        ({"tier": "standard", "value": "80"}, Channel.CALL, "general", None),
        ({"tier": "standard", "value": "20"}, Channel.SMS, None, "retention_offer"),
    ],
)
def test_retention_routes_by_tier_and_value(
    profile: dict[str, Any], channel: Channel, queue: str | None, template: str | None
) -> None:
    [task] = tasks_of(run(RuleEngine(NO_DWELL), view(**profile), [sc(0.9, T0)]))
    assert (task.channel, task.queue, task.template) == (channel, queue, template)
    assert task.marketing is (channel is Channel.SMS)


def test_a_marketing_sms_is_not_opened_for_an_opted_out_subscriber() -> None:
    effects = run(RuleEngine(NO_DWELL), view(opt_out=True), [sc(0.9, T0)])
    assert effects.outbound == [] and ("retention_high", "opted_out") in effects.suppressed
    # Service messages still go: the reminder is not marketing.
    assert len(tasks_of(run(RuleEngine(NO_DWELL), view(opt_out=True), [stop(T0)]))) == 1


# --- inhibition and silences ---------------------------------------------------------------


def test_an_open_reminder_inhibits_care_and_offer_sms_but_not_a_vip_call() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view()
    run(engine, v, [stop(T0, in_hours=72)])
    inhibited = run(engine, v, [sc(0.9, T0 + timedelta(hours=1))])
    assert tasks_of(inhibited) == [] and ("retention_high", "inhibited") in inhibited.suppressed
    arrears = ev("arrears", {"overdue_amount": "30", "days_overdue": 10}, T0 + timedelta(hours=2))
    assert tasks_of(run(engine, v, [arrears])) == []
    vip = view(tier="gold", manager="am-1")
    run(engine, vip, [stop(T0, in_hours=72)])
    assert [t.channel for t in tasks_of(run(engine, vip, [sc(0.9, T0 + timedelta(hours=1))]))] == [
        Channel.CALL
    ]
    # After the suspension time the reminder is no longer open: care goes out again.
    after = ev("arrears", {"overdue_amount": "30", "days_overdue": 10}, T0 + timedelta(hours=73))
    assert len(tasks_of(run(engine, v, [after]))) == 1


def _silence(**match: str | None) -> Silence:
    return Silence(
        silence_id=uuid.uuid4(),
        starts_at=T0 - timedelta(hours=1),
        ends_at=T0 + timedelta(hours=1),
        **match,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("match", "silenced"),
    [
        ({"rule": "retention_high"}, True),
        ({"rule": "bill_shock"}, False),
        ({"tier": "standard"}, True),
        ({"tier": "gold"}, False),
        ({"subscriber_id": SUB}, True),
        ({"subscriber_id": "S-other"}, False),
        ({"rule": "retention_high", "tier": "gold"}, False),  # every matcher must hold
    ],
)
def test_silences_match_by_rule_tier_or_subscriber(match: dict[str, str], silenced: bool) -> None:
    effects = run(RuleEngine(NO_DWELL), view(), [sc(0.9, T0)], silences=[_silence(**match)])
    assert (("retention_high", "silenced") in effects.suppressed) is silenced
    assert ("retention_high" not in {t.rule for t in tasks_of(effects)}) is silenced


def test_an_expired_or_future_silence_does_not_match() -> None:
    s = _silence(subscriber_id=SUB)
    assert s.matches(rule="x", tier=Tier.GOLD, subscriber_id=SUB, now=T0)
    assert not s.matches(rule="x", tier=Tier.GOLD, subscriber_id=SUB, now=T0 + timedelta(hours=1))
    assert not s.matches(rule="x", tier=Tier.GOLD, subscriber_id=SUB, now=T0 - timedelta(hours=2))
    effects = run(
        RuleEngine(NO_DWELL), view(), [sc(0.9, T0)], silences=[s], now=T0 + timedelta(hours=2)
    )
    assert len(tasks_of(effects)) == 1


# --- churn, win-back, reactivation ---------------------------------------------------------------


def churn(at: datetime) -> Event:
    return ev("churn", {"kind": "port_out", "competitor": "RivalTel"}, at)


def test_churn_cancels_retention_and_schedules_a_win_back_after_the_delay() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view(value="45")
    [retention] = tasks_of(run(engine, v, [sc(0.9, T0)]))
    effects = run(engine, v, [churn(T0 + timedelta(days=1))])
    [cancel] = updates_of(effects)
    assert cancel.task_id == retention.task_id and cancel.action is TaskAction.CANCEL
    [win_back] = tasks_of(effects)
    assert win_back.kind is TaskKind.WIN_BACK and win_back.template == "win_back_offer"
    assert win_back.not_before == T0 + timedelta(days=4)  # 3-day delay
    # Scores after the churn open nothing.
    late = run(engine, v, [sc(0.2, T0 + timedelta(days=2)), sc(0.95, T0 + timedelta(days=3))])
    assert tasks_of(late) == [] and ("retention_high", "churned") in late.suppressed


def test_win_back_only_above_the_value_threshold_and_once_per_period() -> None:
    engine = RuleEngine(NO_DWELL)
    assert tasks_of(run(engine, view(value="10"), [churn(T0)])) == []
    v = view(value="45")
    assert len(tasks_of(run(engine, v, [churn(T0)]))) == 1
    back = ev("reactivation", {}, T0 + timedelta(days=40))
    run(engine, v, [back])
    again = run(engine, v, [churn(T0 + timedelta(days=60))])
    assert tasks_of(again) == [] and ("win_back", "repeat") in again.suppressed
    later = run(
        engine,
        v,
        [ev("reactivation", {}, T0 + timedelta(days=100)), churn(T0 + timedelta(days=200))],
    )
    assert len(tasks_of(later)) == 1


def test_a_reactivation_closes_the_win_back_as_won_back() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view(tier="gold", manager="am-3", value="90")
    [task] = tasks_of(run(engine, v, [churn(T0)]))
    assert task.channel is Channel.CALL and task.queue == "am:am-3"
    effects = run(engine, v, [ev("reactivation", {"channel": "store"}, T0 + timedelta(days=5))])
    [close] = updates_of(effects)
    assert (close.task_id, close.action, close.outcome) == (
        task.task_id,
        TaskAction.CLOSE,
        "won_back",
    )
    assert v.facts.churned_at is None
    # Back as a subscriber: retention rules work again.
    assert len(tasks_of(run(engine, v, [sc(0.9, T0 + timedelta(days=6))]))) == 1


# --- arrears and bill shock ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "days", "fires"),
    [("30", 10, True), ("30", 30, True), ("30", 45, False), ("3", 10, False)],
)
def test_early_arrears_open_a_care_task(amount: str, days: int, fires: bool) -> None:
    effects = run(
        RuleEngine(NO_DWELL),
        view(),
        [ev("arrears", {"overdue_amount": amount, "days_overdue": days}, T0)],
    )
    tasks = tasks_of(effects)
    assert (len(tasks) == 1) is fires
    if fires:
        assert tasks[0].kind is TaskKind.CARE and tasks[0].template == "arrears_care"
        assert tasks[0].params["days_overdue"] == str(days)


def bill(at: datetime, amount: str) -> Event:
    return ev(
        "billing", {"period": at.strftime("%Y-%m"), "amount_due": amount, "plan_id": "P1"}, at
    )


def test_an_unusually_high_bill_opens_a_care_task() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view(tier="silver", manager="am-5")
    history = [bill(T0 + timedelta(days=30 * i), "40") for i in range(3)]
    assert tasks_of(run(engine, v, history)) == []
    ordinary = run(engine, v, [bill(T0 + timedelta(days=90), "50")])
    assert tasks_of(ordinary) == []
    [task] = tasks_of(run(engine, v, [bill(T0 + timedelta(days=120), "110")]))
    assert task.kind is TaskKind.CARE and task.channel is Channel.CALL and task.rule == "bill_shock"
    assert task.reason_codes == ["BILL_SHOCK"]


def test_a_high_bill_without_history_is_not_a_shock() -> None:
    v = view()
    assert (
        tasks_of(
            run(RuleEngine(NO_DWELL), v, [bill(T0, "40"), bill(T0 + timedelta(days=30), "400")])
        )
        == []
    )
    assert v.facts.bills_seen == 2


# --- control group ----------------------------------------------------------------------------


def test_the_control_group_is_deterministic_and_the_configured_share() -> None:
    ids = [f"S-{i}" for i in range(4000)]
    held = [s for s in ids if in_control_group(s, percent=20, salt="x")]
    assert 0.17 < len(held) / len(ids) < 0.23
    assert held == [s for s in ids if in_control_group(s, percent=20, salt="x")]
    assert not any(in_control_group(s, percent=0, salt="x") for s in ids)
    assert held != [s for s in ids if in_control_group(s, percent=20, salt="y")]


def test_a_held_out_retention_alert_is_recorded_but_not_sent() -> None:
    engine = RuleEngine(NO_DWELL, control_percent=100, control_salt="x")
    v = view()
    effects = run(engine, v, [sc(0.9, T0)])
    assert effects.outbound == [] and len(effects.held_out) == 1
    assert ("retention_high", "control_group") in effects.suppressed
    assert v.alerts[0].held_out
    # Held-out subscribers keep the same cadence: the next crossing is dedup.
    assert ("retention_high", "dedup") in run(
        engine, v, [sc(0.3, T0 + timedelta(days=1)), sc(0.9, T0 + timedelta(days=2))]
    ).suppressed
    # Reminders are service messages, never held out.
    assert len(tasks_of(run(engine, view(), [stop(T0)]))) == 1
    # Cancelling a held-out alert sends nothing (nothing was sent).
    assert updates_of(run(engine, v, [churn(T0 + timedelta(days=3))])) == []


# --- capacity ----------------------------------------------------------------------------------


def test_allocate_fills_the_day_then_keeps_the_most_urgent() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert allocate([], capacity=2, priority=5) == (True, None)
    assert allocate([(a, 5.0)], capacity=2, priority=1) == (True, None)
    assert allocate([(a, 5.0), (b, 9.0)], capacity=2, priority=7) == (True, a)
    assert allocate([(a, 5.0), (b, 9.0)], capacity=2, priority=5) == (False, None)
    assert allocate([], capacity=0, priority=100) == (False, None)


def test_capacity_days_follow_the_configured_time_zone() -> None:
    shanghai = rules(("  timezone: UTC", "  timezone: Asia/Shanghai"))
    late_utc = datetime(2026, 6, 1, 20, 0, tzinfo=UTC)  # 04:00 on 2 June in Shanghai
    assert capacity_day(late_utc, shanghai).isoformat() == "2026-06-02"
    assert capacity_day(late_utc, load_rules()).isoformat() == "2026-06-01"
    assert shanghai.capacity.daily_calls("am-x") == 10


def test_only_calls_to_the_managers_own_queue_count_against_capacity() -> None:
    engine = RuleEngine(NO_DWELL)
    vip = run(engine, view(tier="gold", manager="am-1"), [sc(0.9, T0)])
    assert len(vip.capacity_tasks) == 1
    no_manager = run(engine, view(tier="gold"), [sc(0.9, T0)])
    assert no_manager.capacity_tasks == set()
    reminder = run(engine, view(tier="gold", manager="am-1"), [stop(T0)])
    assert reminder.capacity_tasks == set()


def test_alerts_know_when_they_are_open() -> None:
    alert = Alert(
        alert_id=uuid.uuid4(),
        subscriber_id=SUB,
        rule="r",
        kind=TaskKind.CARE,
        severity=0,
        fired_at=T0,
        open_until=T0 + timedelta(days=1),
        cause_id=uuid.uuid4(),
    )
    assert alert.is_open(T0) and not alert.is_open(T0 + timedelta(days=1))
    alert.status = "cancelled"
    assert not alert.is_open(T0)


def test_reason_weights_name_real_scoring_reason_codes() -> None:
    from services.scoring.features import FEATURES

    codes = {c for f in FEATURES.values() for c in (f.up[0], f.down[0])}
    unknown = set(load_rules().capacity.reason_weights) - codes
    assert not unknown, f"reason_weights names codes scoring never gives: {sorted(unknown)}"


def test_updates_carry_a_stable_cause() -> None:
    engine = RuleEngine(NO_DWELL)
    v = view(tier="gold", manager="am-1", value="45")
    run(engine, v, [stop(T0), sc(0.9, T0)])
    paid = updates_of(run(engine, v, [pay(T0 + timedelta(hours=1), "50")]))
    assert {u.cause for u in paid} == {UpdateCause.PAID}
    churned = run(engine, v, [churn(T0 + timedelta(days=1))])
    assert {u.cause for u in updates_of(churned)} == {UpdateCause.CHURNED}
    won = run(engine, v, [ev("reactivation", {}, T0 + timedelta(days=5))])
    assert {u.cause for u in updates_of(won)} == {UpdateCause.REACTIVATED}
