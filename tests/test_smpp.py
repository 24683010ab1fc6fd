"""SMPP 3.4 transport (services/outreach/smpp.py) against a real SMSC we did not write.

The SMSC is the npm ``smpp`` package's server (its PDU codec and sessions are
node-smpp's), run by tests/smsc/smsc.js, which only accepts the bind,
acknowledges submit_sm, records what it took as the package decoded it (UDH and
text by data_coding) and sends delivery receipts, kept across its restarts.
Jasmin was not used: it is a gateway that routes MT traffic to an upstream SMSC
and makes no receipts of its own. The package is installed by .ci/run (``npm
ci`` in tests/smsc), or here on first use; without Node the tests fail, not skip.

Outreach's side is real too: the dispatcher claims tasks from PostgreSQL, the
transport submits them, and receipts move the tasks to their final states.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY

from churnwatch.embedded import free_port
from services.outreach import service
from services.outreach.app import create_app
from services.outreach.settings import OutreachSettings
from services.outreach.smpp import SmppTransport, receipt_sink
from services.outreach.smpp_text import GSM7, UCS2, encode, prepare, segment_count
from services.outreach.sms import Dispatcher
from services.outreach.templates import render
from shared.clock import WallClock
from shared.events import Channel, OutreachTask, TaskKind, Tier
from tests.helpers import eventually, sid

pytestmark = pytest.mark.asyncio(loop_scope="session")

SMSC_DIR = Path(__file__).resolve().parent / "smsc"
PASSWORD = "s3cret"
ZH_PARAMS = {"amount": "人民币11,268.50元", "usual_amount": "人民币398.00元"}
EN_PARAMS = {"amount": "€1,268.50", "usual_amount": "€398.00"}


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for the test SMSC (tests/smsc); .ci/run installs it")
    if not (SMSC_DIR / "node_modules" / "smpp").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install the test SMSC (tests/smsc)"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=SMSC_DIR, check=True, timeout=300
        )
    return node


class Smsc:
    """The node-smpp SMSC as a child process on a fixed port: started, stopped, restarted."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.node = _node()
        self.port = free_port()
        self.workdir = workdir
        self.env = {**os.environ, "SMSC_PASSWORD": PASSWORD, **env}
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with (self.workdir / "smsc.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                self.node,
                str(SMSC_DIR / "smsc.js"),
                str(self.port),
                str(self.workdir),
                stdout=log,
                stderr=log,
                env=self.env,
            )

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await eventually(listening, timeout_s=30, what="the SMSC to listen")

    async def stop(self) -> None:
        """SIGTERM: a planned restart (the SMSC unbinds every session, then exits)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.process.wait(), 10)
        self.process = None

    async def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()

    def received(self) -> list[dict[str, Any]]:
        """Every submit_sm the SMSC took, as the npm package decoded it."""
        path = self.workdir / "received.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def messages(self) -> dict[str, list[str]]:
        """Texts per destination, segments put together by (reference, sequence)."""
        parts: dict[tuple[str, str], dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        for pdu in self.received():
            udh = bytes.fromhex(pdu["udh"][0]) if pdu["udh"] else b""
            ref, seq = (f"{udh[2]}/{udh[3]}", udh[4]) if udh else ("single", 1)
            parts[(pdu["destination_addr"], ref)][seq].append(pdu["text"])
        texts: dict[str, list[str]] = defaultdict(list)
        for (destination, _), segments in parts.items():
            for seq in sorted(segments):
                assert len(segments[seq]) == 1, f"segment {seq} to one destination taken twice"
            texts[destination].append("".join(segments[s][0] for s in sorted(segments)))
        return texts


def task(phone: str, *, language: str, params: dict[str, str]) -> OutreachTask:
    now = datetime.now(UTC)
    return OutreachTask(
        task_id=uuid.uuid4(),
        kind=TaskKind.RETENTION,
        channel=Channel.SMS,
        subscriber_id=sid(),
        tier=Tier.STANDARD,
        phone=phone,
        language=language,
        template="bill_shock_care",
        marketing=False,
        due_at=now + timedelta(days=1),
        params=params,
        priority=1e6,
        cause_event_id=uuid.uuid4(),
        created_at=now,
    )


def text_of(t: OutreachTask) -> str:
    return render(t.template or "", t.language, t.params, zone=ZoneInfo("UTC"), marketing=False)


@dataclass
class Rig:
    settings: OutreachSettings
    engine: Any
    smsc: Smsc
    transport: SmppTransport

    async def store(self, *new: OutreachTask) -> None:
        async with self.engine.begin() as conn:
            await service.store_tasks(conn, new_tasks=list(new), now=datetime.now(UTC))

    async def statuses(self, tasks: list[OutreachTask]) -> dict[uuid.UUID, dict[str, Any]]:
        rows = {}
        async with self.engine.connect() as conn:
            for t in tasks:
                row = await service.get_task(conn, task_id=t.task_id)
                assert row is not None
                rows[t.task_id] = row
        return rows


@pytest.fixture
async def rig(
    env: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    smsc_env: dict[str, str] = getattr(request, "param", {})
    smsc = Smsc(tmp_path, **smsc_env)
    await smsc.start()
    settings = OutreachSettings(
        **env,
        sms_transport="smpp",
        smpp_port=smsc.port,
        smpp_password=PASSWORD,
        smpp_window=4,
        smpp_enquire_link_s=5.0,
        smpp_response_timeout_s=5.0,
        smpp_throttle_backoff_s=0.05,
        smpp_reconnect_max_s=1.0,
        sms_rate_limit_per_s=20,
        sms_retry_base_s=0.05,
        outreach_sms_hold_s=0,
    )
    app = create_app(settings)  # its engine; no lifespan, so no loops of its own
    engine = app.state.runtime.engine
    transport = SmppTransport(settings, sink=receipt_sink(engine, WallClock()))
    await transport.start()
    try:
        yield Rig(settings, engine, smsc, transport)
    finally:
        await transport.aclose()
        await smsc.kill()
        await engine.dispose()


# --- text: alphabets and segments (pure) --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "coding", "segments"),
    [
        ("a" * 160, GSM7, 1),
        ("a" * 161, GSM7, 2),  # 153 + 8
        ("€" * 80, GSM7, 1),  # 160 septets: each is escape + e
        ("€" * 81, GSM7, 2),
        ("a" * 306, GSM7, 2),
        ("a" * 307, GSM7, 3),
        ("你" * 70, UCS2, 1),
        ("你" * 71, UCS2, 2),  # 67 + 4
        ("你" * 134, UCS2, 2),
        ("你" * 135, UCS2, 3),
        ("😀" * 35, UCS2, 1),  # surrogate pairs: 70 code units
        ("😀" * 36, UCS2, 2),
    ],
)
async def test_segments_are_counted_in_septets_and_code_units(
    text: str, coding: int, segments: int
) -> None:
    assert encode(text)[0] == coding
    assert segment_count(text) == segments


async def test_segments_never_split_a_character_and_carry_one_reference() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the escape would be septet 153
    parts = prepare(text, key="k").parts
    assert [len(p) for p in parts] == [6 + 152, 6 + 12]  # the € went whole to part 2
    assert {p[:4] for p in parts} == {bytes([5, 0, 3, prepare(text, key="k").parts[0][3]])}
    assert [(p[4], p[5]) for p in parts] == [(2, 1), (2, 2)]
    emoji = prepare("😀" * 36, key="k").parts  # 72 code units: 66 then 6, pairs whole
    assert [len(p) - 6 for p in emoji] == [132, 12]
    assert prepare("x", key="k").esm_class == 0 and prepare("x" * 200, key="k").esm_class == 0x40


# --- against the SMSC -----------------------------------------------------------------------


# 0.3 s: a slow database. Storing receipts must not hold back the SMSC's answers to
# submit_sm (read on the same connection): answers read late, or left unread when the
# SMSC closes, would have their segments submitted again (an SMS twice).
@pytest.mark.parametrize("receipt_delay_s", [0.0, 0.3], ids=["fast-db", "slow-db"])
async def test_chinese_and_english_sms_survive_an_smsc_restart(
    rig: Rig, caplog: pytest.LogCaptureFixture, receipt_delay_s: float
) -> None:
    """2-segment Chinese and English SMS, receipts, an SMSC restart: none lost, none twice."""
    if receipt_delay_s:
        store = rig.transport.sink

        async def slow_store(**receipt: Any) -> None:
            await asyncio.sleep(receipt_delay_s)
            await store(**receipt)

        rig.transport.sink = slow_store
    chinese = task("+8613800000001", language="zh", params=ZH_PARAMS)
    english = task("+447700900001", language="en", params=EN_PARAMS)
    assert segment_count(text_of(chinese)) == 2 and segment_count(text_of(english)) == 1
    others = [
        task(f"+4477009{n:05d}", language="zh" if n % 3 == 0 else "en", params=EN_PARAMS)
        for n in range(2, 42)
    ]
    everything = [chinese, english, *others]
    # The database is the session's: SMS tasks other tests left due go out too.
    destinations = {t.phone.removeprefix("+") for t in everything}

    def taken() -> list[dict[str, Any]]:
        return [p for p in rig.smsc.received() if p["destination_addr"] in destinations]

    await rig.store(*everything)
    dispatcher = Dispatcher(rig.settings, rig.engine, rig.transport)
    running = asyncio.create_task(dispatcher.run())
    try:
        await eventually(
            lambda: asyncio.sleep(0, len(taken()) >= 8),
            what="some SMS taken before the restart",
        )
        await rig.smsc.stop()  # mid-run: the dispatcher is still sending
        taken_before = len(taken())
        assert taken_before < len(everything), "the restart came after the last SMS"
        await rig.smsc.start()

        async def all_final() -> bool:
            rows = await rig.statuses(everything)
            return all(r["status"] == "delivered" for r in rows.values())

        try:
            await eventually(all_final, timeout_s=60, what="every SMS delivered")
        except AssertionError:
            rows = await rig.statuses(everything)
            left = [(r["status"], r["attempts"], r["last_error"]) for r in rows.values()]
            raise AssertionError(f"not all delivered: {left}, taken {taken()}") from None
    finally:
        dispatcher.stop()
        await running
    assert rig.transport.binds >= 2, "the transport did not bind again by itself"

    # What the SMSC took: each SMS exactly once, whole, in the right alphabet.
    texts = rig.smsc.messages()
    for t in everything:
        assert texts[t.phone.removeprefix("+")] == [text_of(t)], t.phone
    assert len(taken()) == sum(segment_count(text_of(t)) for t in everything)
    by_destination = defaultdict(list)
    for pdu in taken():
        by_destination[pdu["destination_addr"]].append(pdu)
    zh = by_destination["8613800000001"]
    assert [(p["data_coding"], p["esm_class"], p["registered_delivery"]) for p in zh] == [
        (UCS2, 0x40, 1),
        (UCS2, 0x40, 1),
    ]
    [en] = by_destination["447700900001"]
    assert (en["data_coding"], en["esm_class"], en["udh"]) == (GSM7, 0, [])

    # PostgreSQL: delivered, under the first segment's message id, receipts applied.
    rows = await rig.statuses(everything)
    assert rows[chinese.task_id]["provider_message_id"] == zh[0]["message_id"]
    assert rows[english.task_id]["provider_message_id"] == en["message_id"]
    assert all(r["delivered_at"] is not None for r in rows.values())
    spool = json.loads((rig.smsc.workdir / "receipts.json").read_text())
    assert not [r for r in spool.values() if r["to"] in destinations]  # ours all acknowledged
    # No phone number in any log line (aiosmpplib's own lines carry whole PDUs: scrubbed).
    logged = caplog.text
    assert "SMPP session lost" in logged
    assert not [t.phone for t in everything if t.phone.removeprefix("+") in logged]


async def test_an_idle_session_is_kept_alive_with_enquire_link(rig: Rig) -> None:
    await rig.transport.aclose()
    settings = rig.settings.model_copy(update={"smpp_enquire_link_s": 0.2})
    transport = SmppTransport(settings, sink=receipt_sink(rig.engine, WallClock()))
    await transport.start()
    links = rig.smsc.workdir / "enquire_link.log"

    async def linked() -> bool:
        return links.exists() and len(links.read_text().splitlines()) >= 3

    try:
        await eventually(linked, timeout_s=30, what="three enquire_link answered")
        assert transport.bound and transport.binds == 1  # never dropped meanwhile
    finally:
        await transport.aclose()


@pytest.mark.parametrize(
    "rig", [{"SMSC_THROTTLE_EVERY": "3", "SMSC_UNDELIV_PREFIX": "4479"}], indirect=True
)
async def test_throttling_backs_off_and_undelivered_receipts_fail_the_task(rig: Rig) -> None:
    delivered = [task(f"+4477009{n:05d}", language="en", params=EN_PARAMS) for n in range(6)]
    undelivered = task("+447900000001", language="zh", params=ZH_PARAMS)  # 2 segments
    await rig.store(*delivered, undelivered)
    throttled = REGISTRY.get_sample_value("churnwatch_outreach_smpp_throttled_total") or 0.0
    dispatcher = Dispatcher(rig.settings, rig.engine, rig.transport)
    running = asyncio.create_task(dispatcher.run())
    try:

        async def final() -> bool:
            rows = await rig.statuses([*delivered, undelivered])
            return all(r["status"] in ("delivered", "failed") for r in rows.values())

        await eventually(final, timeout_s=60, what="every SMS final")
    finally:
        dispatcher.stop()
        await running
    rows = await rig.statuses([*delivered, undelivered])
    assert {rows[t.task_id]["status"] for t in delivered} == {"delivered"}
    failed = rows[undelivered.task_id]
    assert failed["status"] == "failed" and "UNDELIV" in failed["last_error"]
    # Throttled submissions were made again: every SMS taken exactly once anyway.
    assert (REGISTRY.get_sample_value("churnwatch_outreach_smpp_throttled_total") or 0) > throttled
    texts = rig.smsc.messages()
    for t in [*delivered, undelivered]:
        assert texts[t.phone.removeprefix("+")] == [text_of(t)]


@pytest.mark.parametrize("rig", [{"SMSC_DROP_AT": "4"}], indirect=True)
async def test_a_segment_written_and_unanswered_when_the_session_drops_is_sent_again(
    rig: Rig,
) -> None:
    """The SMSC drops the connection on reading one submit_sm, unanswered and not taken."""
    tasks = [task(f"+4477009{n:05d}", language="zh", params=ZH_PARAMS) for n in range(4)]
    await rig.store(*tasks)
    dispatcher = Dispatcher(rig.settings, rig.engine, rig.transport)
    running = asyncio.create_task(dispatcher.run())
    try:

        async def delivered() -> bool:
            rows = await rig.statuses(tasks)
            return all(r["status"] == "delivered" for r in rows.values())

        await eventually(delivered, timeout_s=60, what="every SMS delivered")
    finally:
        dispatcher.stop()
        await running
    assert rig.transport.binds >= 2
    texts = rig.smsc.messages()  # each segment taken once, the dropped one too
    for t in tasks:
        assert texts[t.phone.removeprefix("+")] == [text_of(t)]
    # Only ours: SMS tasks other tests left due in the session's database go out too.
    ours = {t.phone.removeprefix("+") for t in tasks}
    assert len([p for p in rig.smsc.received() if p["destination_addr"] in ours]) == 2 * len(tasks)
    rows = await rig.statuses(tasks)
    assert {r["attempts"] for r in rows.values()} == {1}  # resubmitted within the one send


async def test_the_outreach_app_sends_over_smpp_when_configured(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """SMS_TRANSPORT=smpp in the app's lifespan: its dispatcher sends, its receipts apply."""
    smsc = Smsc(tmp_path)
    await smsc.start()
    settings = OutreachSettings(
        **env,
        sms_transport="smpp",
        smpp_port=smsc.port,
        smpp_password=PASSWORD,
        outreach_sms_hold_s=0,
        outreach_dispatch_interval_s=0.2,
    )
    app = create_app(settings)
    sms = task("+8613800000077", language="zh", params=ZH_PARAMS)
    try:
        async with app.router.lifespan_context(app):
            assert isinstance(app.state.sms, SmppTransport)
            engine = app.state.runtime.engine
            async with engine.begin() as conn:
                await service.store_tasks(conn, new_tasks=[sms], now=datetime.now(UTC))
            app.state.dispatcher.wakeup.set()

            async def delivered() -> bool:
                async with engine.connect() as conn:
                    row = await service.get_task(conn, task_id=sms.task_id)
                return row is not None and row["status"] == "delivered"

            await eventually(delivered, timeout_s=60, what="the SMS delivered")
        assert smsc.messages()["8613800000077"] == [text_of(sms)]
    finally:
        await smsc.kill()


async def test_bad_credentials_never_bind_and_sends_fail_retryable(
    env: dict[str, Any], tmp_path: Path
) -> None:
    smsc = Smsc(tmp_path)
    await smsc.start()
    settings = OutreachSettings(
        **env,
        sms_transport="smpp",
        smpp_port=smsc.port,
        smpp_password="wrong",
        smpp_response_timeout_s=1.0,
        smpp_reconnect_max_s=1.0,
    )
    transport = SmppTransport(settings, sink=receipt_sink(None, WallClock()))  # type: ignore[arg-type]
    await transport.start()
    try:
        from services.outreach.sms import ProviderError

        with pytest.raises(ProviderError) as caught:
            await transport.send(to="+447700900999", text="hello", idempotency_key="k")
        assert caught.value.retryable and not transport.bound
        assert smsc.received() == []
    finally:
        await transport.aclose()
        await smsc.kill()


async def test_smpp_settings_need_a_password_within_smpp_limits(env: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SMPP_PASSWORD"):
        OutreachSettings(**env, sms_transport="smpp")
    with pytest.raises(ValueError, match="8 characters"):
        OutreachSettings(**env, sms_transport="smpp", smpp_password="123456789")
    settings = OutreachSettings(**env, sms_transport="smpp", smpp_password="pw")
    assert "pw" not in repr(settings)
