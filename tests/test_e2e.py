"""End to end: the four services and the SMS gateway as separate processes.

Real broker, real PostgreSQL, real HTTP between outreach and the gateway.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from churnwatch.embedded import free_port
from churnwatch.gateway import GatewaySettings, gateway_headers
from services.alerting.rules import DEFAULT_RULES_FILE
from tests.conftest import REPO, Stack, as_environ, fresh_env
from tests.helpers import calls, event, eventually, profile, sid, stop_notice

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.e2e]

SERVICES = {
    "sms-gateway": (["-m", "churnwatch", "sms-gateway"], "sms_gateway_port", "/healthz"),
    "ingest": (["-m", "services.ingest"], "ingest_port", "/readyz"),
    "scoring": (["-m", "services.scoring"], "scoring_port", "/readyz"),
    "alerting": (["-m", "services.alerting"], "alerting_port", "/readyz"),
    "outreach": (["-m", "services.outreach"], "outreach_port", "/readyz"),
}


@dataclass
class Pipeline:
    urls: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: Path


def _wait_ready(pipeline: Pipeline, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(pipeline.urls)
    with httpx.Client(timeout=2) as client:
        while pending:
            for name, url in list(pending.items()):
                if pipeline.processes[name].poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{_log(pipeline, name)}")
                try:
                    if client.get(url + SERVICES[name][2]).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"not ready: {sorted(pending)}")
            time.sleep(0.2)


def _log(pipeline: Pipeline, name: str) -> str:
    return (pipeline.logs / f"{name}.log").read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def pipeline(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    settings = fresh_env(stack)
    ports = {name: free_port() for name in SERVICES}
    environ = {**os.environ, **as_environ(settings), "PYTHONPATH": str(REPO)}
    environ.update({SERVICES[name][1].upper(): str(port) for name, port in ports.items()})
    environ["SMS_GATEWAY_URL"] = f"http://127.0.0.1:{ports['sms-gateway']}"
    outreach_url = f"http://127.0.0.1:{ports['outreach']}"
    environ["SMS_GATEWAY_RECEIPT_URL"] = f"{outreach_url}/v1/sms/receipts"
    environ["SMS_GATEWAY_INBOUND_URL"] = f"{outreach_url}/v1/sms/inbound"
    environ["OUTREACH_DISPATCH_INTERVAL_S"] = "0.2"
    logs = tmp_path_factory.mktemp("logs")
    # The default rules, without the retention dwell (30 min of wall time here).
    rules = logs / "rules.yaml"
    rules.write_text(
        DEFAULT_RULES_FILE.read_text()
        .replace("dwell: 30m", "dwell: 0s")
        .replace("dwell: 2h", "dwell: 0s")
    )
    environ["ALERTING_RULES_FILE"] = str(rules)
    processes = {}
    for name, (args, _, _) in SERVICES.items():
        with open(logs / f"{name}.log", "wb") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, *args], env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
    result = Pipeline({n: f"http://127.0.0.1:{p}" for n, p in ports.items()}, processes, logs)
    try:
        _wait_ready(result)
        yield result
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in processes.items():
            try:
                codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = "killed"
    # Graceful shutdown on SIGTERM: uvicorn runs the lifespan shutdown (the consumer
    # finishes its batch and commits), then re-raises the signal, hence -SIGTERM.
    assert codes == dict.fromkeys(SERVICES, -signal.SIGTERM), codes
    for name in SERVICES:
        assert "Application shutdown complete" in _log(result, name), name


async def _get(url: str, **params: Any) -> Any:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url, params=params)
        response.raise_for_status()
        return response.json()


async def _post(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(pipeline.urls["ingest"] + "/v1/events", json=events)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)


async def _tasks(pipeline: Pipeline, **filters: str) -> list[dict[str, Any]]:
    page = await _get(pipeline.urls["outreach"] + "/v1/tasks", **filters)
    return list(page["items"])


async def _sms_to(pipeline: Pipeline, phone: str) -> list[dict[str, Any]]:
    # The stand-in's listing wants its token; the pipeline runs it with the default one.
    url = pipeline.urls["sms-gateway"] + "/v1/messages"
    headers = gateway_headers(GatewaySettings().sms_gateway_token)
    async with httpx.AsyncClient(timeout=5, headers=headers) as client:
        response = await client.get(url, params={"to": phone})
        response.raise_for_status()
        return list(response.json()["messages"])


async def test_vip_stop_notice_sends_a_reminder_sms_and_queues_a_call(pipeline: Pipeline) -> None:
    subscriber, phone = sid(), "+15550002001"
    notice = stop_notice(subscriber, amount="86.40")
    await _post(
        pipeline,
        [
            profile(subscriber, tier="gold", phone=phone, manager="AM-E2E", monthly_value="150"),
            notice,
        ],
    )

    [sms] = await eventually(lambda: _sms_to(pipeline, phone), what="the reminder SMS")
    assert "86.40" in sms["text"]

    async def both_tasks() -> list[dict[str, Any]] | None:
        tasks = await _tasks(pipeline, subscriber_id=subscriber)
        # The gateway posts a signed delivery receipt back to outreach.
        done = [t for t in tasks if t["channel"] == "sms" and t["status"] == "delivered"]
        return tasks if done and len(tasks) == 2 else None

    tasks = await eventually(both_tasks, what="the SMS task delivered and the call task queued")
    assert {t["kind"] for t in tasks} == {"pre_suspension_reminder"}
    [call] = [t for t in tasks if t["channel"] == "call"]
    assert call["status"] == "queued" and call["account_manager_id"] == "AM-E2E"
    assert call["phone_masked"].endswith("001") and phone not in str(tasks)
    queue = await _get(pipeline.urls["outreach"] + "/v1/call-queue", account_manager_id="AM-E2E")
    assert [t["task_id"] for t in queue] == [call["task_id"]]
    detail = await _get(pipeline.urls["outreach"] + f"/v1/tasks/{sms['reference']}")
    assert [t["to_status"] for t in detail["transitions"]] == [
        "pending",
        "sending",
        "sent",
        "delivered",
    ]


async def test_warning_signs_push_the_score_over_the_threshold(pipeline: Pipeline) -> None:
    subscriber = sid()
    await _post(
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
    assert await _tasks(pipeline, subscriber_id=subscriber, kind="retention") == []

    await _post(
        pipeline,
        calls(subscriber, n=30, competitor=True, days_ago=1)
        + [
            event("complaint", subscriber, {"category": "network", "severity": "high"}),
            event("arrears", subscriber, {"overdue_amount": "45", "days_overdue": 35}),
        ],
    )
    [task] = await eventually(
        lambda: _tasks(pipeline, subscriber_id=subscriber, kind="retention"),
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
    await _post(pipeline, [profile(subscriber, phone=phone), notice])
    await eventually(lambda: _sms_to(pipeline, phone), what="the first SMS")
    before = await _duplicates_seen(pipeline)

    await _post(pipeline, [notice])  # the billing system retries

    async def duplicate_handled() -> bool:
        return await _duplicates_seen(pipeline) > before

    await eventually(duplicate_handled, what="alerting to see the duplicate")
    assert len(await _tasks(pipeline, subscriber_id=subscriber)) == 1
    assert len(await _sms_to(pipeline, phone)) == 1
