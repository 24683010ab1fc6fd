"""End to end: the four services and the SMS gateway as separate processes.

Real broker, real PostgreSQL, real HTTP between outreach and the gateway.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import calls, event, eventually, profile, sid, stop_notice
from tests.pipeline import Pipeline, get_json, list_tasks, post_events, sms_to

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]


async def test_vip_stop_notice_sends_a_reminder_sms_and_queues_a_call(pipeline: Pipeline) -> None:
    subscriber, phone = sid(), "+15550002001"
    notice = stop_notice(subscriber, amount="86.40")
    await post_events(
        pipeline,
        [
            profile(subscriber, tier="gold", phone=phone, manager="AM-E2E", monthly_value="150"),
            notice,
        ],
    )

    [sms] = await eventually(lambda: sms_to(pipeline, phone), what="the reminder SMS")
    assert "86.40" in sms["text"]

    async def both_tasks() -> list[dict[str, Any]] | None:
        tasks = await list_tasks(pipeline, subscriber_id=subscriber)
        # The gateway posts a signed delivery receipt back to outreach.
        done = [t for t in tasks if t["channel"] == "sms" and t["status"] == "delivered"]
        return tasks if done and len(tasks) == 2 else None

    tasks = await eventually(both_tasks, what="the SMS task delivered and the call task queued")
    assert {t["kind"] for t in tasks} == {"pre_suspension_reminder"}
    [call] = [t for t in tasks if t["channel"] == "call"]
    assert call["status"] == "queued" and call["account_manager_id"] == "AM-E2E"
    assert call["phone_masked"].endswith("001") and phone not in str(tasks)
    queue = await get_json(
        pipeline.urls["outreach"] + "/v1/call-queue", account_manager_id="AM-E2E"
    )
    assert [t["task_id"] for t in queue] == [call["task_id"]]
    detail = await get_json(pipeline.urls["outreach"] + f"/v1/tasks/{sms['reference']}")
    assert [t["to_status"] for t in detail["transitions"]] == [
        "pending",
        "sending",
        "sent",
        "delivered",
    ]


async def test_warning_signs_push_the_score_over_the_threshold(pipeline: Pipeline) -> None:
    subscriber = sid()
    await post_events(
        pipeline,
        [profile(subscriber, phone="+15550002002")]
        + calls(subscriber, n=40, competitor=False, days_ago=10),
    )

    async def score() -> dict[str, Any] | None:
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(pipeline.urls["scoring"] + f"/v1/subscribers/{subscriber}/risk")
        return r.json() if r.status_code == 200 else None

    baseline = await eventually(score, what="a first score")
    assert baseline["score"] < 0.7
    assert await list_tasks(pipeline, subscriber_id=subscriber, kind="retention") == []

    await post_events(
        pipeline,
        calls(subscriber, n=30, competitor=True, days_ago=1)
        + [
            event("complaint", subscriber, {"category": "network", "severity": "high"}),
            event("arrears", subscriber, {"overdue_amount": "45", "days_overdue": 35}),
        ],
    )
    [task] = await eventually(
        lambda: list_tasks(pipeline, subscriber_id=subscriber, kind="retention"),
        what="a retention task",
    )
    assert task["channel"] == "sms"  # standard tier, low value: care SMS with an offer
    assert any(reason.startswith("COMPETITOR_CALLS_UP") for reason in task["reasons"])
    latest = await score()
    assert latest is not None and latest["score"] >= 0.7
    assert latest["previous_score"] is not None


async def _duplicates_seen(pipeline: Pipeline) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(pipeline.urls["alerting"] + "/metrics")).text
    for line in text.splitlines():
        if line.startswith('churnwatch_alerting_messages_total{result="duplicate"}'):
            return float(line.split()[-1])
    return 0.0


async def test_the_same_event_twice_makes_one_task_and_one_sms(pipeline: Pipeline) -> None:
    subscriber, phone = sid(), "+15550002003"
    notice = stop_notice(subscriber)
    await post_events(pipeline, [profile(subscriber, phone=phone), notice])
    await eventually(lambda: sms_to(pipeline, phone), what="the first SMS")
    before = await _duplicates_seen(pipeline)

    await post_events(pipeline, [notice])  # the billing system retries

    async def duplicate_handled() -> bool:
        return await _duplicates_seen(pipeline) > before

    await eventually(duplicate_handled, what="alerting to see the duplicate")
    assert len(await list_tasks(pipeline, subscriber_id=subscriber)) == 1
    assert len(await sms_to(pipeline, phone)) == 1
