"""Every SMS reaches a final state: the reconciler against the real stand-in gateway over HTTP.

The gateway runs under uvicorn on a free port; outreach is its real app (its
routes served for the signed receipts) or, for the crash, a real
``python -m services.outreach`` process killed with SIGKILL mid-send and a
new one started. Nothing is mocked: the counts are read at the far end, the
gateway's stored messages (over its token-guarded API) and the tasks' rows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from churnwatch.embedded import free_port
from churnwatch.gateway import Faults, GatewaySettings, create_gateway_app, gateway_headers
from services.outreach import policy, service
from services.outreach.app import create_app
from services.outreach.reconcile import Reconciler
from services.outreach.settings import OutreachSettings
from services.outreach.sms import Dispatcher, ProviderError, SmsClient
from services.outreach.tables import task_transitions
from tests.conftest import REPO, as_environ
from tests.helpers import eventually, serve
from tests.test_sms import sms_task

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "reconcile-test-token"
SECRET = "reconcile-test-receipt-secret"
AUTH = gateway_headers(TOKEN)
FINAL = {"delivered", "failed", "expired", "cancelled", "unknown"}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Rig:
    env: dict[str, Any]
    settings: OutreachSettings
    engine: AsyncEngine
    gateway_url: str
    outreach_url: str
    clients: list[httpx.AsyncClient]

    def sms(self, timeout_s: float = 5.0) -> SmsClient:
        http = httpx.AsyncClient(base_url=self.gateway_url, timeout=timeout_s)
        self.clients.append(http)
        return SmsClient(http, TOKEN, "Test")

    def reconciler(self, **overrides: Any) -> Reconciler:
        return Reconciler(self.settings.model_copy(update=overrides), self.engine, self.sms())

    async def faults(self, **faults: Any) -> None:
        async with httpx.AsyncClient(base_url=self.gateway_url, headers=AUTH) as client:
            answer = await client.put("/v1/faults", json=faults)
            assert answer.status_code == 200, answer.text

    async def messages_per_key(self, keys: set[str]) -> Counter[str]:
        """How many messages the gateway stored per idempotency key (of ``keys``)."""
        async with httpx.AsyncClient(base_url=self.gateway_url, headers=AUTH) as client:
            answer = await client.get("/v1/messages", params={"limit": 10_000})
        assert answer.status_code == 200, answer.text
        return Counter(
            m["idempotency_key"] for m in answer.json()["messages"] if m["idempotency_key"] in keys
        )

    async def statuses(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = [await service.get_task(conn, task_id=t) for t in ids]
        return {r["task_id"]: r for r in rows if r is not None}

    async def all_final(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]] | None:
        rows = await self.statuses(ids)
        return rows if all(r["status"] in FINAL for r in rows.values()) else None

    async def store(self, n: int) -> list[uuid.UUID]:
        new = [sms_task() for _ in range(n)]
        async with self.engine.begin() as conn:
            await service.store_tasks(conn, new_tasks=new, now=datetime.now(UTC))
        return [t.task_id for t in new]

    async def send_all(self, ids: list[uuid.UUID]) -> None:
        """Dispatch until every task is ``sent`` (receipts are dropped: nothing moves them on)."""
        dispatcher = Dispatcher(self.settings, self.engine, self.sms())

        async def sent() -> bool:
            await dispatcher.dispatch_once()
            rows = await self.statuses(ids)
            return all(r["status"] == "sent" for r in rows.values())

        await eventually(sent, timeout_s=30, what="every SMS sent")


@pytest.fixture
async def rig(env: dict[str, Any]) -> AsyncIterator[Rig]:
    gateway_port, outreach_port = free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    outreach_url = f"http://127.0.0.1:{outreach_port}"
    settings = OutreachSettings(
        **env,
        sms_gateway_url=gateway_url,
        sms_gateway_token=TOKEN,
        sms_receipt_secret=SECRET,
        sms_rate_limit_per_s=1000,
        outreach_dispatch_batch=1000,
        sms_reconcile_interval_s=0.1,
        sms_reconcile_after_s=0.3,
    )
    gateway_app = create_gateway_app(
        GatewaySettings(
            sms_gateway_port=gateway_port,
            sms_gateway_token=TOKEN,
            sms_receipt_secret=SECRET,
            sms_gateway_receipt_url=f"{outreach_url}/v1/sms/receipts",
            # The provider gave up on every receipt: only the status query tells.
            sms_gateway_faults=Faults(drop_receipts=True),
        )
    )
    outreach_app = create_app(settings)  # routes only: the tests run the loops themselves
    servers = [await serve(gateway_app, gateway_port), await serve(outreach_app, outreach_port)]
    clients: list[httpx.AsyncClient] = []
    engine = outreach_app.state.runtime.engine
    yield Rig(env, settings, engine, gateway_url, outreach_url, clients)
    for server, _ in servers:
        server.should_exit = True
    await asyncio.gather(*(serving for _, serving in servers))
    await gateway_app.state.gateway.aclose()
    for client in clients:
        await client.aclose()
    await engine.dispose()


async def transitions_since(engine: AsyncEngine, since: datetime, to_status: str) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).where(
                task_transitions.c.at >= since, task_transitions.c.to_status == to_status
            )
        )
    return int(count or 0)


# --- the status query --------------------------------------------------------------------


async def test_the_status_query_reports_the_providers_state(rig: Rig) -> None:
    (task_id,) = await rig.store(1)
    sms = rig.sms()
    assert await sms.status(idempotency_key=str(task_id)) is None  # never taken: 404
    await rig.send_all([task_id])
    found = await sms.status(idempotency_key=str(task_id))
    assert found is not None and found.state == "delivered" and found.final
    row = (await rig.statuses([task_id]))[task_id]
    assert found.message_id == row["provider_message_id"]
    await rig.faults(drop_receipts=True, status_unknown=True)
    unsure = await sms.status(idempotency_key=str(task_id))
    assert unsure is not None and unsure.state == "unknown" and not unsure.final
    await rig.faults(drop_receipts=True, status_error_500=True)
    with pytest.raises(ProviderError, match="answered 500") as raised:
        await sms.status(idempotency_key=str(task_id))
    assert raised.value.retryable
    # By message id too, and never without the token.
    async with httpx.AsyncClient(base_url=rig.gateway_url) as client:
        await rig.faults()
        by_id = await client.get(
            "/v1/status", params={"message_id": found.message_id}, headers=AUTH
        )
        assert by_id.json()["idempotency_key"] == str(task_id)
        assert (await client.get("/v1/status", params={"message_id": "x"})).status_code == 401


# --- (a) receipts dropped ------------------------------------------------------------------


async def test_dropped_receipts_are_made_up_for_by_the_status_query(rig: Rig) -> None:
    """Receipts never come; two reconcilers (two replicas) bring every SMS to its final state."""
    delivered = await rig.store(20)
    await rig.send_all(delivered)
    await rig.faults(drop_receipts=True, fail_deliveries=True)
    failed = await rig.store(10)
    await rig.send_all(failed)
    ids = delivered + failed
    assert {r["status"] for r in (await rig.statuses(ids)).values()} == {"sent"}
    before = {r: metric("churnwatch_outreach_sms_reconciled_total", result=r) for r in FINAL}

    replicas = [rig.reconciler(), rig.reconciler()]
    loops = [asyncio.create_task(r.run()) for r in replicas]
    try:
        rows = await eventually(lambda: rig.all_final(ids), timeout_s=30, what="final states")
    finally:
        for replica in replicas:
            replica.stop()
        await asyncio.gather(*loops)

    assert Counter(rows[t]["status"] for t in delivered) == {"delivered": 20}
    assert Counter(rows[t]["status"] for t in failed) == {"failed": 10}
    for row in rows.values():
        # One final transition each, from the status query, though two replicas asked.
        finals = [t for t in row["transitions"] if t["to_status"] in FINAL]
        assert len(finals) == 1, row["transitions"]
        assert "provider status query" in finals[0]["reason"]
    for failure in failed:
        assert rows[failure]["last_error"] == (
            "delivery failed (provider status query): fault mode fail_deliveries"
        )
    gained = {
        r: metric("churnwatch_outreach_sms_reconciled_total", result=r) - before[r] for r in FINAL
    }
    assert gained["delivered"] == 20 and gained["failed"] == 10
    # One SMS per task at the far end.
    assert await rig.messages_per_key({str(t) for t in ids}) == {str(t): 1 for t in ids}

    # The receipt the provider gave up on, arriving now after all, changes nothing twice.
    late = rows[delivered[0]]
    raw = orjson.dumps(
        {
            "message_id": late["provider_message_id"],
            "reference": str(late["task_id"]),
            "status": "delivered",
            "at": datetime.now(UTC).isoformat(),
        }
    )
    async with httpx.AsyncClient(base_url=rig.outreach_url) as client:
        answer = await client.post(
            "/v1/sms/receipts",
            content=raw,
            headers={
                "Content-Type": "application/json",
                "X-Signature": policy.sign(raw, SECRET, timestamp=int(time.time())),
            },
        )
    assert answer.status_code == 200 and answer.json()["changed"] is False
    after = (await rig.statuses([late["task_id"]]))[late["task_id"]]
    assert after["transitions"] == late["transitions"]


# --- (c) a provider that never answers the status ---------------------------------------


@pytest.mark.parametrize("fault", ["status_error_500", "status_unknown"])
async def test_a_provider_that_never_tells_makes_the_sms_unknown_after_the_deadline(
    rig: Rig, fault: str
) -> None:
    ids = await rig.store(5)
    await rig.send_all(ids)
    await rig.faults(drop_receipts=True, **{fault: True})
    started = datetime.now(UTC)
    unknown_before = metric("churnwatch_outreach_sms_final_unknown_total")
    deadline_s = 2.0
    reconciler = rig.reconciler(sms_final_state_deadline_s=deadline_s)

    # Before the deadline: asked, no answer that counts, still 'sent'.
    unanswered = "error" if fault == "status_error_500" else "waiting"
    seen: Counter[str] = Counter()

    async def asked() -> bool:
        seen.update(await reconciler.reconcile_once())
        rows = await rig.statuses(ids)
        # Asked: its next question is booked (next_attempt_at), at most at the deadline.
        return all(r["next_attempt_at"] is not None for r in rows.values())

    await eventually(asked, timeout_s=10, what="the first question")
    assert seen[unanswered] >= len(ids), seen
    rows = await rig.statuses(ids)
    assert {r["status"] for r in rows.values()} == {"sent"}

    loop = asyncio.create_task(reconciler.run())
    try:
        rows = await eventually(lambda: rig.all_final(ids), timeout_s=30, what="unknown")
    finally:
        reconciler.stop()
        await loop
    why = "did not answer" if fault == "status_error_500" else "still says unknown"
    for row in rows.values():
        assert row["status"] == "unknown"
        assert "no final state within 2 s" in row["last_error"] and why in row["last_error"]
        assert (row["finished_at"] - row["sent_at"]).total_seconds() >= deadline_s
    # The metric counts every SMS made unknown (other tests' leftovers included), once.
    made_unknown = await transitions_since(rig.engine, started, "unknown")
    assert made_unknown >= len(ids)
    assert metric("churnwatch_outreach_sms_final_unknown_total") - unknown_before == made_unknown
    assert await rig.messages_per_key({str(t) for t in ids}) == {str(t): 1 for t in ids}


# --- (b) outreach killed mid-send ------------------------------------------------------------


def start_outreach(rig: Rig, log: Path, **overrides: Any) -> tuple[subprocess.Popen[bytes], str]:
    """A real outreach process on a free port, on the test's gateway and database."""
    port = free_port()
    environ = {
        **os.environ,
        **as_environ(rig.env),
        "PYTHONPATH": str(REPO),
        "OUTREACH_PORT": str(port),
        "SMS_GATEWAY_URL": rig.gateway_url,
        "SMS_GATEWAY_TOKEN": TOKEN,
        "SMS_RECEIPT_SECRET": SECRET,
        "OUTREACH_DISPATCH_INTERVAL_S": "0.2",
        # The dispatcher's own blind resend of 'sending' must not do the job here.
        "OUTREACH_SENDING_STALE_S": "3600",
        **{k.upper(): str(v) for k, v in overrides.items()},
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.outreach"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    return process, f"http://127.0.0.1:{port}"


async def ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    async def up() -> bool:
        if process.poll() is not None:
            tail = await asyncio.to_thread(log.read_text, errors="replace")
            raise AssertionError(f"outreach exited early:\n{tail[-3000:]}")
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url + "/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(up, timeout_s=60, what=f"outreach at {url}")


async def test_outreach_killed_mid_send_every_sms_final_and_sent_once(
    rig: Rig, tmp_path: Path
) -> None:
    ids = await rig.store(30)
    keys = {str(t) for t in ids}
    # The gateway takes each SMS and holds its answer: outreach is left in 'sending'.
    await rig.faults(drop_receipts=True, timeout_after_accept=None, hang_s=5)
    log = tmp_path / "outreach.log"
    first, _ = start_outreach(
        rig,
        log,
        sms_rate_limit_per_s=5,  # slow enough that most never reach the gateway before the kill
        sms_timeout_s=30,
        outreach_dispatch_batch=30,
        sms_reconcile_after_s=3600,
    )
    try:

        async def mid_send() -> bool:
            rows = await rig.statuses(ids)
            taken = sum((await rig.messages_per_key(keys)).values())
            return taken >= 3 and all(r["status"] == "sending" for r in rows.values())

        await eventually(mid_send, timeout_s=60, what="SMS in flight")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    rows = await rig.statuses(ids)
    assert {r["status"] for r in rows.values()} == {"sending"}
    # The provider answers promptly again, but the receipts of what it took were given
    # up while outreach was down (and it posts none now): only its status tells.
    await rig.faults(drop_receipts=True)
    taken_before_kill = set(await rig.messages_per_key(keys))
    assert 3 <= len(taken_before_kill) < len(ids)
    second, url = start_outreach(
        rig,
        log,
        sms_reconcile_after_s=0.5,
        sms_reconcile_interval_s=0.2,
        sms_timeout_s=2,
        sms_rate_limit_per_s=100,  # a 'sending' task is asked about after 2 + 50/100 s
    )
    try:
        await ready(second, url, log)
        rows = await eventually(lambda: rig.all_final(ids), timeout_s=60, what="final states")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) in (0, -signal.SIGTERM)
    assert Counter(r["status"] for r in rows.values()) == {"delivered": 30}
    # Each SMS exactly once at the gateway, whether it got there before the kill or after.
    assert await rig.messages_per_key(keys) == dict.fromkeys(keys, 1)
    for task_id, row in rows.items():
        moves = [(t["from_status"], t["to_status"], t["actor"]) for t in row["transitions"]]
        if str(task_id) in taken_before_kill:
            # The provider had it: adopted from the status query, never sent again.
            assert ("sending", "sent", "provider") in moves, moves
            assert ("sending", "pending", "reconciler") not in moves, moves
        else:
            # Never taken: put back by the reconciler, sent again with the same key.
            assert ("sending", "pending", "reconciler") in moves, moves
            assert ("sending", "sent", "dispatcher") in moves, moves
