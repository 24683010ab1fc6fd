"""The call queue: claims under concurrency, order, start, outcomes, callbacks, timeouts, expiry.

Real PostgreSQL (the session fixtures). Every test works in queues of its own
(``am:<fresh id>``), so tests never claim each other's calls.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from services.outreach.queue import QueueKeeper, claim_call
from services.outreach.scripts import _TEXTS, ALERTING_CODES, CODE_TOPICS, GENERIC, scripts_for
from services.outreach.settings import OutreachSettings
from services.outreach.tables import outbox
from services.outreach.tables import tasks as tasks_table
from services.scoring.features import FEATURES
from shared.events import Channel, OutreachTask, TaskKind, Tier
from tests.conftest import REPO
from tests.helpers import eventually, sid
from tests.outreach_api import OutreachApi, outreach_api

pytestmark = pytest.mark.asyncio(loop_scope="session")

TIMEOUT_S = 60.0


def call(queue: str | None, **fields: Any) -> OutreachTask:
    """A call task in ``queue``, due in a day."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "task_id": uuid.uuid4(),
        "kind": TaskKind.RETENTION,
        "channel": Channel.CALL,
        "subscriber_id": sid(),
        "tier": Tier.GOLD,
        "queue": queue,
        "due_at": now + timedelta(days=1),
        "cause_event_id": uuid.uuid4(),
        "created_at": now,
    }
    return OutreachTask(**(values | fields))


def fresh_queue() -> str:
    return f"am:AM-{uuid.uuid4().hex[:10]}"


class Harness(OutreachApi):
    """The outreach API plus this module's shortcuts."""

    async def outcomes(self, task_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """The TaskOutcome messages written to the outbox for the task, oldest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.payload)
                .where(outbox.c.payload["task_id"].astext == str(task_id))
                .order_by(outbox.c.id)
            )
            return [r.payload for r in rows]

    async def claim(self, queue: str, agent: str = "AM-07") -> httpx.Response:
        return await self.api.post(f"/v1/call-queues/{queue}/claim", json={"agent_id": agent})


@pytest.fixture
async def harness(env: dict[str, Any]) -> AsyncIterator[Harness]:
    # The routes need only the engine create_app makes; no consumer or dispatcher.
    # A pool big enough for the concurrent claimers, so they really overlap.
    settings = OutreachSettings(
        **env, database_pool_size=25, outreach_assignment_timeout_s=TIMEOUT_S
    )
    async with outreach_api(Harness, settings) as h:
        yield h


async def test_concurrent_claimers_never_get_the_same_task(harness: Harness) -> None:
    queue = fresh_queue()
    calls = [call(queue, priority=i) for i in range(10)]
    await harness.store(*calls)

    answers = await asyncio.gather(*(harness.claim(queue, f"agent-{i}") for i in range(20)))

    claimed = [a.json() for a in answers if a.status_code == 200]
    assert sorted(a.status_code for a in answers) == [200] * 10 + [204] * 10
    assert sorted(c["task_id"] for c in claimed) == sorted(str(c.task_id) for c in calls)
    # Each call went to exactly one agent, and the audit trail says so once.
    assert len({c["assigned_to"] for c in claimed}) == 10
    for c in claimed:
        row = await harness.task(c["task_id"])
        assert (row["status"], row["assigned_to"]) == ("assigned", c["assigned_to"])
        claims = [t for t in row["transitions"] if t["to_status"] == "assigned"]
        assert len(claims) == 1 and claims[0]["actor"] == c["assigned_to"]


async def test_claims_take_the_most_urgent_due_call_first(harness: Harness) -> None:
    queue, now = fresh_queue(), datetime.now(UTC)
    same_due = now + timedelta(days=1)
    low = call(queue, priority=10, due_at=same_due)
    high_late = call(queue, priority=90, due_at=now + timedelta(hours=5))
    high_soon = call(queue, priority=90, due_at=now + timedelta(hours=1))
    high_no_due = call(queue, priority=90, due_at=None)
    older_twin = call(queue, priority=10, due_at=same_due, created_at=now - timedelta(minutes=5))
    deferred = call(queue, priority=99, not_before=now + timedelta(hours=1))
    elsewhere = call(fresh_queue(), priority=100)
    await harness.store(low, high_late, high_soon, high_no_due, older_twin, deferred, elsewhere)

    order = []
    while (answer := await harness.claim(queue)).status_code == 200:
        order.append(answer.json()["task_id"])
    assert answer.status_code == 204 and answer.content == b""
    assert order == [
        str(t.task_id) for t in (high_soon, high_late, high_no_due, older_twin, low)
    ], "priority first, then the earliest due time (none last), then the oldest"
    assert (await harness.task(deferred.task_id))["status"] == "queued"


async def test_a_claim_shows_the_subscriber_and_a_script_per_reason(harness: Harness) -> None:
    queue = fresh_queue()
    vip = call(
        queue,
        tier=Tier.DIAMOND,
        monthly_value=Decimal("250.5"),
        risk=0.87,
        reasons=["calls to competitor networks up", "recent complaints", "something new"],
        reason_codes=["COMPETITOR_CALLS_UP", "COMPLAINTS_UP", "COMPETITOR_SHIFT", "NEW_CODE"],
        language="zh",
    )
    await harness.store(vip)
    answer = await harness.claim(queue, "AM-42")
    assert answer.status_code == 200
    got = answer.json()
    assert (got["tier"], got["monthly_value"], got["risk"]) == ("diamond", "250.5000", 0.87)
    assert got["reasons"] == vip.reasons and got["reason_codes"] == vip.reason_codes
    assert (got["status"], got["assigned_to"]) == ("assigned", "AM-42")
    assert got["assigned_at"] is not None
    # One script per topic, in the reasons' order; codes of one topic share it; an
    # unknown code gets the generic script; the subscriber's language is used.
    assert [(s["topic"], s["reason_codes"]) for s in got["scripts"]] == [
        ("competitor", ["COMPETITOR_CALLS_UP", "COMPETITOR_SHIFT"]),
        ("complaints", ["COMPLAINTS_UP"]),
        (GENERIC, ["NEW_CODE"]),
    ]
    assert got["scripts"][0]["text"] == _TEXTS["competitor"]["zh"][1]


async def test_the_general_queue_also_takes_calls_without_a_queue(harness: Harness) -> None:
    general = harness.settings.outreach_general_queue
    # Top priority, so that calls other tests left in the general queue come after it.
    no_queue = call(None, priority=1e9, due_at=datetime.now(UTC) + timedelta(minutes=1))
    await harness.store(no_queue)
    listed = (await harness.api.get("/v1/call-queue", params={"queue": general})).json()
    assert listed[0]["task_id"] == str(no_queue.task_id)
    answer = await harness.claim(general)
    assert answer.status_code == 200 and answer.json()["task_id"] == str(no_queue.task_id)


async def test_any_queue_name_alerting_can_make_can_be_claimed(harness: Harness) -> None:
    # Manager ids are free text up to 64 characters: spaces, slashes.
    queue = f"am:Jane Doe/{uuid.uuid4().hex[:6]}"
    target = call(queue)
    await harness.store(target)
    answer = await harness.claim(queue)
    assert answer.status_code == 200 and answer.json()["queue"] == queue


async def test_start_then_outcome_completes_the_call_audited_and_published(
    harness: Harness,
) -> None:
    queue = fresh_queue()
    target = call(queue)
    await harness.store(target)
    labels = {"event": "completed", "outcome": "retained"}
    before = REGISTRY.get_sample_value("churnwatch_outreach_calls_total", labels) or 0
    task_id = (await harness.claim(queue, "AM-07")).json()["task_id"]

    other = await harness.api.post(f"/v1/tasks/{task_id}/start", json={"agent_id": "AM-99"})
    assert other.status_code == 409 and other.json()["code"] == "conflict"
    started = await harness.api.post(f"/v1/tasks/{task_id}/start", json={"agent_id": "AM-07"})
    assert started.status_code == 200 and started.json()["status"] == "in_progress"
    again = await harness.api.post(f"/v1/tasks/{task_id}/start", json={"agent_id": "AM-07"})
    assert again.status_code == 200  # a retried start changes nothing

    done = await harness.api.post(
        f"/v1/tasks/{task_id}/outcome",
        json={"agent_id": "AM-07", "outcome": "retained", "note": "took the 12-month offer"},
    )
    assert done.status_code == 200
    assert (done.json()["status"], done.json()["outcome"]) == ("completed", "retained")
    row = await harness.task(task_id)
    assert row["finished_at"] is not None
    assert [
        (t["from_status"], t["to_status"], t["actor"], t["reason"]) for t in row["transitions"]
    ] == [
        (None, "queued", "alerting", "task created"),
        ("queued", "assigned", "AM-07", f"claimed from queue {queue}"),
        ("assigned", "in_progress", "AM-07", "call started"),
        ("in_progress", "completed", "AM-07", "outcome retained: took the 12-month offer"),
    ]
    [published] = await harness.outcomes(task_id)
    assert (published["status"], published["outcome"], published["channel"]) == (
        "completed",
        "retained",
        "call",
    )
    after = REGISTRY.get_sample_value("churnwatch_outreach_calls_total", labels)
    assert after == before + 1

    # A finished call takes no more outcomes, and the error says why.
    late = await harness.api.post(
        f"/v1/tasks/{task_id}/outcome", json={"agent_id": "AM-07", "outcome": "not_interested"}
    )
    assert late.status_code == 409
    error = late.json()
    assert error["code"] == "conflict" and error["details"] == {"status": "completed"}
    assert error["request_id"] == late.headers["x-request-id"]


async def test_an_outcome_needs_a_claimed_call_by_the_same_agent(harness: Harness) -> None:
    queue = fresh_queue()
    target = call(queue)
    await harness.store(target)
    url = f"/v1/tasks/{target.task_id}/outcome"
    queued = await harness.api.post(url, json={"agent_id": "AM-07", "outcome": "retained"})
    assert queued.status_code == 409 and queued.json()["details"]["status"] == "queued"
    await harness.claim(queue, "AM-07")
    someone_else = await harness.api.post(url, json={"agent_id": "AM-08", "outcome": "retained"})
    assert someone_else.status_code == 409
    unknown = await harness.api.post(
        f"/v1/tasks/{uuid.uuid4()}/outcome", json={"agent_id": "AM-07", "outcome": "retained"}
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    bad = await harness.api.post(url, json={"agent_id": "AM-07", "outcome": "delighted"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    # Assigned (not started) is enough to record an outcome.
    ok = await harness.api.post(url, json={"agent_id": "AM-07", "outcome": "unreachable"})
    assert ok.status_code == 200 and ok.json()["outcome"] == "unreachable"


async def test_do_not_contact_puts_the_subscriber_on_the_list_with_the_outcome(
    harness: Harness,
) -> None:
    queue = fresh_queue()
    target = call(queue)
    await harness.store(target)
    await harness.claim(queue, "AM-07")
    done = await harness.api.post(
        f"/v1/tasks/{target.task_id}/outcome",
        json={"agent_id": "AM-07", "outcome": "do_not_contact"},
    )
    assert done.status_code == 200 and done.json()["outcome"] == "do_not_contact"
    contact = await harness.api.get(f"/v1/contacts/{target.subscriber_id}")
    assert contact.status_code == 200
    assert (contact.json()["opted_out"], contact.json()["source"]) == (True, "call")
    [published] = await harness.outcomes(target.task_id)
    assert published["outcome"] == "do_not_contact"


async def test_an_accepted_offer_is_named_in_the_audit_and_only_with_that_outcome(
    harness: Harness,
) -> None:
    queue = fresh_queue()
    target = call(queue)
    await harness.store(target)
    await harness.claim(queue, "AM-07")
    url = f"/v1/tasks/{target.task_id}/outcome"
    wrong = await harness.api.post(
        url, json={"agent_id": "AM-07", "outcome": "retained", "offer": "DATA-10GB"}
    )
    assert wrong.status_code == 422
    assert (await harness.task(target.task_id))["status"] == "assigned"  # unchanged
    done = await harness.api.post(
        url, json={"agent_id": "AM-07", "outcome": "offer_accepted", "offer": "DATA-10GB"}
    )
    assert done.status_code == 200
    last = (await harness.task(target.task_id))["transitions"][-1]
    assert last["reason"] == "outcome offer_accepted (offer DATA-10GB)"


async def test_an_sms_task_is_not_worked_in_the_call_queue(harness: Harness) -> None:
    # Not due for a month: the SMS tests' dispatcher passes must not pick it up.
    later = datetime.now(UTC) + timedelta(days=30)
    sms = call(
        None,
        channel=Channel.SMS,
        phone="+15550004000",
        not_before=later,
        due_at=later + timedelta(days=1),
    )
    await harness.store(sms)
    answer = await harness.api.post(f"/v1/tasks/{sms.task_id}/start", json={"agent_id": "AM-07"})
    assert answer.status_code == 409


async def test_a_callback_returns_the_call_to_its_queue_at_the_callback_time(
    harness: Harness,
) -> None:
    queue = fresh_queue()
    target = call(queue, priority=70)
    await harness.store(target)
    task_id = (await harness.claim(queue, "AM-07")).json()["task_id"]
    at = datetime.now(UTC) + timedelta(hours=2)
    url = f"/v1/tasks/{task_id}/outcome"

    missing = await harness.api.post(url, json={"agent_id": "AM-07", "outcome": "callback"})
    assert missing.status_code == 422
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    too_early = await harness.api.post(
        url, json={"agent_id": "AM-07", "outcome": "callback", "callback_at": past}
    )
    assert too_early.status_code == 422
    after_due = (target.due_at + timedelta(hours=1)).isoformat()  # type: ignore[operator]
    too_late = await harness.api.post(
        url, json={"agent_id": "AM-07", "outcome": "callback", "callback_at": after_due}
    )
    assert too_late.status_code == 422
    assert too_late.json()["code"] == "unprocessable_entity"

    answer = await harness.api.post(
        url, json={"agent_id": "AM-07", "outcome": "callback", "callback_at": at.isoformat()}
    )
    assert answer.status_code == 200
    row = await harness.task(task_id)
    assert (row["status"], row["queue"], row["outcome"]) == ("queued", queue, "callback")
    assert row["callback_at"] == at and row["not_before"] == at
    assert row["assigned_to"] is None and row["finished_at"] is None
    last = row["transitions"][-1]
    assert (last["from_status"], last["to_status"], last["actor"]) == (
        "assigned",
        "queued",
        "AM-07",
    )
    # The callback is published like every other outcome.
    [published] = await harness.outcomes(task_id)
    assert (published["status"], published["outcome"]) == ("queued", "callback")

    # Hidden until the callback time, then claimable again (by anyone in the queue).
    assert (await harness.claim(queue)).status_code == 204
    async with harness.engine.begin() as conn:
        assert (
            await claim_call(
                conn,
                queue=queue,
                agent_id="AM-08",
                now=at - timedelta(seconds=1),
                general_queue=None,
            )
            is None
        )
        again = await claim_call(
            conn, queue=queue, agent_id="AM-08", now=at + timedelta(seconds=1), general_queue=None
        )
    assert again is not None and again["task_id"] == target.task_id


async def test_an_unfinished_claim_times_out_back_to_the_queue(harness: Harness) -> None:
    queue = fresh_queue()
    assigned, working = call(queue, priority=2), call(queue, priority=1)
    await harness.store(assigned, working)
    first = (await harness.claim(queue, "AM-07")).json()
    second = (await harness.claim(queue, "AM-08")).json()
    started = await harness.api.post(
        f"/v1/tasks/{second['task_id']}/start", json={"agent_id": "AM-08"}
    )
    assert started.status_code == 200
    claimed_at = datetime.fromisoformat(first["assigned_at"])
    keeper = QueueKeeper(harness.settings, harness.engine)

    # Not yet: within the timeout nothing moves.
    await keeper.keep_once(now=claimed_at + timedelta(seconds=TIMEOUT_S - 1))
    assert (await harness.task(first["task_id"]))["status"] == "assigned"

    labels = {"event": "requeued", "outcome": ""}
    before = REGISTRY.get_sample_value("churnwatch_outreach_calls_total", labels) or 0
    done = await keeper.keep_once(now=claimed_at + timedelta(seconds=TIMEOUT_S + 1))
    assert done.requeued >= 2  # ours; other tests' stale claims may come along
    for claim, was, agent in ((first, "assigned", "AM-07"), (second, "in_progress", "AM-08")):
        row = await harness.task(claim["task_id"])
        assert (row["status"], row["assigned_to"], row["assigned_at"]) == ("queued", None, None)
        last = row["transitions"][-1]
        assert (last["from_status"], last["to_status"], last["actor"]) == (
            was,
            "queued",
            "queue_keeper",
        )
        assert last["reason"] == f"claim by {agent} not finished within 60 s"
    assert (REGISTRY.get_sample_value("churnwatch_outreach_calls_total", labels) or 0) >= before + 2

    # The late agent can no longer record an outcome; the call is someone else's to claim.
    late = await harness.api.post(
        f"/v1/tasks/{first['task_id']}/outcome", json={"agent_id": "AM-07", "outcome": "retained"}
    )
    assert late.status_code == 409
    again = await harness.claim(queue, "AM-09")
    assert again.status_code == 200 and again.json()["task_id"] == first["task_id"]


async def test_a_queued_call_past_its_due_time_expires(harness: Harness) -> None:
    queue, now = fresh_queue(), datetime.now(UTC)
    reminder = call(queue, kind=TaskKind.PRE_SUSPENSION_REMINDER, due_at=now + timedelta(hours=1))
    await harness.store(reminder)
    keeper = QueueKeeper(harness.settings, harness.engine)
    await keeper.keep_once(now=now + timedelta(minutes=30))
    assert (await harness.task(reminder.task_id))["status"] == "queued"

    later = now + timedelta(hours=1, seconds=1)
    async with harness.engine.begin() as conn:  # past its due time it is not handed out...
        assert (
            await claim_call(conn, queue=queue, agent_id="AM-07", now=later, general_queue=None)
            is None
        )
    done = await keeper.keep_once(now=later)  # ...and the keeper expires it
    assert done.expired >= 1
    row = await harness.task(reminder.task_id)
    assert (row["status"], row["finished_at"]) == ("expired", later)
    last = row["transitions"][-1]
    assert (last["from_status"], last["actor"], last["reason"]) == (
        "queued",
        "queue_keeper",
        "past due time",
    )
    [published] = await harness.outcomes(reminder.task_id)
    assert published["status"] == "expired"


async def test_the_keeper_loop_runs_until_stopped_and_sets_the_queue_age(
    harness: Harness,
) -> None:
    queue = fresh_queue()
    waiting = call(queue, created_at=datetime.now(UTC) - timedelta(minutes=10))
    await harness.store(waiting)
    # 1 s timeout: a pass every 0.1 s.
    settings = harness.settings.model_copy(update={"outreach_assignment_timeout_s": 1.0})
    keeper = QueueKeeper(settings, harness.engine)
    running = asyncio.create_task(keeper.run())

    async def two_passes() -> bool:
        return keeper.passes >= 2

    try:
        await eventually(two_passes, timeout_s=10, what="two keeper passes")
    finally:
        keeper.stop()
        await running
    age = REGISTRY.get_sample_value("churnwatch_outreach_call_queue_oldest_seconds")
    assert age is not None and age >= 600


async def test_the_keeper_leaves_final_calls_alone(harness: Harness) -> None:
    # A cancelled call is final: it does not expire, even past its due time.
    queue, now = fresh_queue(), datetime.now(UTC)
    gone = call(queue, due_at=now + timedelta(minutes=5))
    await harness.store(gone)
    async with harness.engine.begin() as conn:
        await conn.execute(
            update(tasks_table)
            .where(tasks_table.c.task_id == gone.task_id)
            .values(status="cancelled")
        )
    await QueueKeeper(harness.settings, harness.engine).keep_once(now=now + timedelta(hours=1))
    assert (await harness.task(gone.task_id))["status"] == "cancelled"


# --- scripts ------------------------------------------------------------------------------


async def test_every_reason_code_has_a_script_in_english_and_chinese() -> None:
    codes = {f.up[0] for f in FEATURES.values()} | {f.down[0] for f in FEATURES.values()}
    missing = sorted((codes | ALERTING_CODES) - set(CODE_TOPICS))
    assert not missing, f"add these reason codes to CODE_TOPICS in scripts.py: {missing}"
    for topic, texts in _TEXTS.items():
        assert set(texts) == {"en", "zh"}, topic
    assert set(CODE_TOPICS.values()) <= set(_TEXTS)


async def test_the_alerting_codes_are_the_ones_alerting_uses() -> None:
    source = (REPO / "services" / "alerting" / "rule_engine.py").read_text(encoding="utf-8")
    used = set(re.findall(r'reason_codes=\["([A-Z_]+)"\]', source))
    assert used == ALERTING_CODES, "update ALERTING_CODES (and CODE_TOPICS) in scripts.py"


async def test_a_call_without_reasons_gets_the_generic_script() -> None:
    [(codes, script)] = scripts_for([], "fr")
    assert codes == [] and script.topic == GENERIC
    assert script.text == _TEXTS[GENERIC]["en"][1]  # no French: English
