"""Data protection and input bounds: TLS settings, masking in logs, bad input, body limits.

TLS needs no TLS server here: the tests check that the settings become the
arguments aiokafka and asyncpg are given, on a real connection for asyncpg.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import certifi
import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import event, text

from churnwatch.migrate import upgrade_async
from churnwatch.phonekeys import phone_key_status, reseal_phones
from services.outreach import service as outreach_service
from services.outreach.app import create_app as outreach_app
from services.outreach.settings import OutreachSettings
from shared.crypto import (
    DEV_PHONE_KEY,
    PhoneCipher,
    PhoneKeyring,
    PhoneKeySettings,
    UnknownPhoneKey,
    is_sealed,
    key_id_of,
    sealed_event_json,
    use_phone_key,
    use_phone_keyring,
)
from shared.db import connect_args, create_engine
from shared.errors import API_MAX_BODY_BYTES
from shared.events import Channel, OutreachTask, TaskKind, Tier, parse_event
from shared.kafka import client_options
from shared.logging import JsonFormatter, PiiFilter, PlainFormatter, mask_subscriber, mask_text
from shared.settings import BaseServiceSettings
from tests.helpers import profile, scratch_database, sid, stop_notice

session_loop = pytest.mark.asyncio(loop_scope="session")


# --- TLS and SASL settings ------------------------------------------------------------


def test_kafka_plaintext_by_default() -> None:
    opts = client_options(BaseServiceSettings())
    assert opts["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in opts and "sasl_mechanism" not in opts


def test_kafka_sasl_ssl_options() -> None:
    settings = BaseServiceSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="churnwatch",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile=certifi.where(),
    )
    opts = client_options(settings)
    assert opts["security_protocol"] == "SASL_SSL"
    assert isinstance(opts["ssl_context"], ssl.SSLContext)
    assert opts["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert opts["ssl_context"].check_hostname
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "churnwatch"
    assert opts["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(settings)  # a SecretStr: not in a settings dump or log


def test_kafka_ssl_with_a_missing_ca_file_fails_at_start() -> None:
    settings = BaseServiceSettings(
        kafka_security_protocol="SSL", kafka_ssl_cafile="/nonexistent/ca.pem"
    )
    with pytest.raises(FileNotFoundError):
        client_options(settings)


def test_database_tls_arguments() -> None:
    assert connect_args(BaseServiceSettings()) == {}
    assert connect_args(BaseServiceSettings(database_sslmode="require")) == {"ssl": "require"}
    assert connect_args(BaseServiceSettings(database_sslmode="verify-full")) == {
        "ssl": "verify-full"
    }
    full = connect_args(
        BaseServiceSettings(database_sslmode="verify-full", database_ssl_rootcert=certifi.where())
    )["ssl"]
    assert isinstance(full, ssl.SSLContext)
    assert full.check_hostname and full.verify_mode == ssl.CERT_REQUIRED
    ca = connect_args(
        BaseServiceSettings(database_sslmode="verify-ca", database_ssl_rootcert=certifi.where())
    )["ssl"]
    assert not ca.check_hostname and ca.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValidationError):
        BaseServiceSettings(database_sslmode="sometimes")


@session_loop
async def test_database_sslmode_reaches_the_driver(env: dict[str, Any]) -> None:
    # The session's PostgreSQL listens on a Unix socket only, where libpq and
    # asyncpg skip TLS; so the test checks what the engine hands asyncpg's
    # connect(), on a real connection.
    engine = create_engine(BaseServiceSettings(**{**env, "database_sslmode": "require"}))
    given: dict[str, Any] = {}

    @event.listens_for(engine.sync_engine, "do_connect")
    def _capture(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        given.update(params)

    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert given["ssl"] == "require"


# --- masking in logs ------------------------------------------------------------------


def _log(formatter: logging.Formatter, emit: Any) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PiiFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test-security-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    emit(logger)
    return stream.getvalue()


def test_nested_extras_args_keys_and_tracebacks_are_masked() -> None:
    key = "cw_0123456789ab_SECRETSECRETSECRETSECRET"

    def emit(logger: logging.Logger) -> None:
        logger.warning(
            "sent to %s with %s (%d tries) %s",
            "+447700900123",
            key,
            3,
            {"to": "+447700900124"},
            extra={
                "task": {"phone": "+447700900125", "subscriber_id": "S-1"},
                "subscriber_ids": ["S-2", "S-3"],
                "header": "Authorization: Bearer abc.def.ghi",
            },
        )
        try:
            raise RuntimeError("gateway refused +447700900126")
        except RuntimeError:
            logger.exception("failed for %(who)s", {"who": "+447700900127"})

    line, exc_line = _log(JsonFormatter(), emit).strip().split("\n", 1)
    record = json.loads(line)
    for secret in ("7700900123", "7700900124", "7700900125", "SECRETSECRET", "abc.def", "S-2"):
        assert secret not in line, secret
    assert "cw_0123456789ab_***" in record["msg"] and "(3 tries)" in record["msg"]
    assert record["task"]["subscriber_id"] == mask_subscriber("S-1")
    assert record["subscriber_ids"] == [mask_subscriber("S-2"), mask_subscriber("S-3")]
    assert record["header"] == "Authorization: Bearer ***"
    assert "7700900126" not in exc_line and "7700900127" not in exc_line
    assert "***26" in json.loads(exc_line)["exc"]

    plain = _log(PlainFormatter("%(message)s"), emit)
    assert "7700900126" not in plain and "***26" in plain  # the text traceback too


def test_mask_text_keeps_ordinary_text() -> None:
    kept = "task 2f1e0c4a-9b7d-4e21-8f3a-0c5d6e7f8a9b at 2026-11-25T10:00:00Z, 42 SMS"
    assert mask_text(kept) == kept


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["account_manager_id", "name", "plan_id"],
)
@pytest.mark.parametrize("bad", ["a\x00b", "line\nforged", "\x1b[31mred"])
def test_control_characters_in_text_fields_are_refused(field: str, bad: str) -> None:
    body = profile(sid())
    body["payload"][field] = bad
    with pytest.raises(ValidationError, match=field):
        parse_event(body)


def test_control_characters_in_the_source_are_refused() -> None:
    body = profile(sid())
    body["source"] = "billing\x00"
    with pytest.raises(ValidationError, match="source"):
        parse_event(body)


def test_unicode_names_are_fine() -> None:
    body = profile(sid())
    body["payload"]["name"] = "Zoë 李小龍"
    assert parse_event(body).payload.name == "Zoë 李小龍"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("occurred_at", "0001-01-01T00:00:00Z"),
        ("occurred_at", "1969-12-31T23:59:59Z"),
        ("suspension_at", "9999-12-31T23:59:59Z"),
        ("suspension_at", "2100-01-01T00:00:00Z"),
    ],
)
def test_implausible_times_are_refused(where: str, value: str) -> None:
    body = stop_notice(sid())
    if where == "occurred_at":
        body["occurred_at"] = value
    else:
        body["payload"][where] = value
    with pytest.raises(ValidationError, match="implausible_time"):
        parse_event(body)


def test_negative_amounts_bad_phones_and_ids_are_refused() -> None:
    cases: list[tuple[str, Any]] = [
        ("payload.amount_to_pay", "-1"),
        ("subscriber_id", "has space"),
        ("subscriber_id", "x" * 65),
    ]
    for path, value in cases:
        body = stop_notice(sid())
        target = body["payload"] if path.startswith("payload.") else body
        target[path.removeprefix("payload.")] = value
        with pytest.raises(ValidationError):
            parse_event(body)
    for phone in ("07700900123", "+0123456789", "+1 555 0100", "+1234567890123456"):
        body = profile(sid())
        body["payload"]["phone"] = phone
        with pytest.raises(ValidationError, match="phone"):
            parse_event(body)


# --- body limits on the APIs ----------------------------------------------------------


@pytest.fixture
async def outreach(env: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    app = outreach_app(OutreachSettings(**env))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://outreach"
    ) as client:
        yield client
    await app.state.runtime.engine.dispose()


@session_loop
async def test_a_declared_oversized_body_is_refused_before_it_is_read(
    outreach: httpx.AsyncClient,
) -> None:
    big = b"{" + b" " * API_MAX_BODY_BYTES + b"}"
    response = await outreach.post(
        "/v1/tasks", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert response.json()["request_id"] == response.headers["X-Request-ID"]


@session_loop
async def test_a_chunked_oversized_body_is_refused(outreach: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"{"
        for _ in range(API_MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536
        yield b"}"

    response = await outreach.post(
        "/v1/tasks", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


@session_loop
async def test_a_normal_body_still_reaches_the_route(outreach: httpx.AsyncClient) -> None:
    response = await outreach.post("/v1/tasks", json={"kind": "nonsense"})
    assert response.status_code == 422  # validated by the route, not cut off


# --- phone numbers encrypted at rest --------------------------------------------------


async def _forget(engine: Any, task_id: uuid.UUID) -> None:
    # The tasks table is shared by the session: a pending SMS left behind would be
    # picked up by later tests' dispatchers (and this one is under another key).
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM outreach.task_transitions WHERE task_id = :id"), {"id": task_id}
        )
        await conn.execute(text("DELETE FROM outreach.tasks WHERE task_id = :id"), {"id": task_id})


def _sms(subscriber_id: str, number: str) -> OutreachTask:
    now = datetime.now(UTC)
    return OutreachTask(
        task_id=uuid.uuid4(),
        kind=TaskKind.PRE_SUSPENSION_REMINDER,
        channel=Channel.SMS,
        subscriber_id=subscriber_id,
        tier=Tier.STANDARD,
        phone=number,
        params={"amount": "12.00", "suspension_at": "soon"},
        cause_event_id=uuid.uuid4(),
        created_at=now,
    )


@session_loop
async def test_phones_are_stored_encrypted_and_found_by_their_hash(env: dict[str, Any]) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    app = outreach_app(OutreachSettings(**env, outreach_phone_key=key))
    engine = app.state.runtime.engine
    number, subscriber = f"+1555{uuid.uuid4().int % 10**7:07d}", sid()
    task = _sms(subscriber, number)
    try:
        async with engine.begin() as conn:
            await outreach_service.store_tasks(conn, new_tasks=[task], now=datetime.now(UTC))
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    text("SELECT phone, phone_hash FROM outreach.tasks WHERE task_id = :id"),
                    {"id": task.task_id},
                )
            ).one()
            row = await outreach_service.get_task(conn, task_id=task.task_id)
            found = await outreach_service.subscribers_with_phone(conn, phone=number)
        # On disk: no digits of the number, and a hash only this key makes.
        assert stored.phone.startswith("v2:") and number[1:] not in stored.phone
        assert stored.phone_hash == PhoneCipher(base64.b64decode(key)).hash(number)
        assert stored.phone_hash != PhoneCipher(base64.b64decode(DEV_PHONE_KEY)).hash(number)
        # To the code: the plain number, and the inbound-reply lookup works.
        assert row is not None and row["phone"] == number
        assert found == [subscriber]
        # Another key cannot read it.
        with pytest.raises(ValueError, match="OUTREACH_PHONE_KEY"):
            PhoneCipher(os.urandom(32)).decrypt(stored.phone)
        with pytest.raises(UnknownPhoneKey, match="PHONE_OLD_KEYS"):
            PhoneKeyring(os.urandom(32)).decrypt(stored.phone)
    finally:
        await _forget(engine, task.task_id)
        use_phone_key(DEV_PHONE_KEY)  # the process-wide key, back for the other tests
        await engine.dispose()


@session_loop
async def test_phones_stored_before_encryption_are_encrypted_at_start(env: dict[str, Any]) -> None:
    app = outreach_app(OutreachSettings(**env))
    engine = app.state.runtime.engine
    number, subscriber = f"+1555{uuid.uuid4().int % 10**7:07d}", sid()
    task = _sms(subscriber, number)
    task = task.model_copy(update={"channel": Channel.CALL, "queue": "security-test"})
    async with engine.begin() as conn:
        await outreach_service.store_tasks(conn, new_tasks=[task], now=datetime.now(UTC))
        # As a row written before migration 0005: plain number, no hash.
        await conn.execute(
            text("UPDATE outreach.tasks SET phone = :p, phone_hash = NULL WHERE task_id = :id"),
            {"p": number, "id": task.task_id},
        )
    async with engine.connect() as conn:
        legacy = await outreach_service.get_task(conn, task_id=task.task_id)
        assert legacy is not None and legacy["phone"] == number  # still readable
    # The start encrypts what is left.
    async with app.router.lifespan_context(app), engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT phone, phone_hash FROM outreach.tasks WHERE task_id = :id"),
                {"id": task.task_id},
            )
        ).one()
        found = await outreach_service.subscribers_with_phone(conn, phone=number)
    await _forget(engine, task.task_id)
    await engine.dispose()
    assert stored.phone.startswith("v2:") and stored.phone_hash is not None
    assert found == [subscriber]


def test_phone_key_settings() -> None:
    with pytest.raises(ValidationError, match="32 bytes"):
        OutreachSettings(outreach_phone_key=base64.b64encode(b"short").decode())
    with pytest.raises(ValidationError, match="base64"):
        OutreachSettings(outreach_phone_key="not base64!")
    production: dict[str, Any] = {
        "environment": "production",
        "kafka_bootstrap_servers": "kafka:9092",
        "database_url": "postgresql://u:p@db/churnwatch",
        "sms_gateway_token": "real-token",
        "sms_receipt_secret": "real-secret",
    }
    with pytest.raises(ValidationError, match="OUTREACH_PHONE_KEY"):
        OutreachSettings(**production)
    key = base64.b64encode(os.urandom(32)).decode()
    assert OutreachSettings(**production, outreach_phone_key=key).phone_key


# --- phone keyring and rotation ------------------------------------------------------


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_the_keyring_reads_old_keys_writes_the_current_and_names_an_unknown_one() -> None:
    old, new, stranger = _key(), _key(), _key()
    before = PhoneKeyring.from_base64(old)
    sealed_old = before.encrypt("+447700900123")
    assert is_sealed(sealed_old) and key_id_of(sealed_old) == before.current.key_id
    assert "447700900123" not in sealed_old
    assert sealed_old != before.encrypt("+447700900123")  # a fresh nonce each time
    after = PhoneKeyring.from_base64(new, [old])
    assert after.key_ids == [after.current.key_id, before.current.key_id]
    assert after.decrypt(sealed_old) == "+447700900123"  # written before the rotation
    assert key_id_of(after.encrypt("+447700900123")) == after.current.key_id
    moved = after.reseal(sealed_old)
    assert moved is not None and key_id_of(moved) == after.current.key_id
    assert after.reseal(moved) is None  # already under the current key
    assert PhoneKeyring.from_base64(new).decrypt(moved) == "+447700900123"
    # Old rows' lookup hashes are still found, under any key of the ring.
    assert before.hash("+447700900123") in after.hashes("+447700900123")
    with pytest.raises(UnknownPhoneKey, match=before.current.key_id) as unknown:
        PhoneKeyring.from_base64(stranger).decrypt(sealed_old)
    assert "447700900123" not in str(unknown.value) and "PHONE_OLD_KEYS" in str(unknown.value)
    # A v1 value (before the keyring) is read by trying each key.
    legacy = "v1:" + base64.urlsafe_b64encode(b"\0" * 40).decode()
    with pytest.raises(ValueError, match="no key"):
        after.decrypt(legacy)
    tampered = sealed_old[:-4] + ("AAAA" if not sealed_old.endswith("AAAA") else "BBBB")
    with pytest.raises(ValueError, match="does not decrypt"):
        before.decrypt(tampered)


def test_phone_key_settings_read_the_old_name_and_the_old_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = _key(), _key()
    monkeypatch.setenv("OUTREACH_PHONE_KEY", old)
    assert (
        PhoneKeySettings().phone_keyring().current.key_id
        == PhoneKeyring.from_base64(old).current.key_id
    )
    monkeypatch.setenv("PHONE_KEY", new)  # the new name wins over the old one
    monkeypatch.setenv("PHONE_OLD_KEYS", f"{old}, ")
    ring = PhoneKeySettings().phone_keyring()
    assert ring.key_ids == [
        PhoneKeyring.from_base64(new).current.key_id,
        PhoneKeyring.from_base64(old).current.key_id,
    ]
    monkeypatch.setenv("PHONE_OLD_KEYS", "not base64!")
    with pytest.raises(ValidationError, match="PHONE_OLD_KEYS must be base64"):
        PhoneKeySettings()
    monkeypatch.delenv("PHONE_KEY")
    monkeypatch.delenv("OUTREACH_PHONE_KEY")
    monkeypatch.delenv("PHONE_OLD_KEYS")
    with pytest.raises(ValidationError, match="needs an explicit PHONE_KEY"):
        PhoneKeySettings(environment="production")


def test_ingest_seals_the_phone_it_produces_and_refuses_a_sealed_one() -> None:
    ring = PhoneKeyring.from_base64(_key())
    use_phone_keyring(ring)
    try:
        event = parse_event(profile(sid(), phone="+447700900124"))
        on_kafka = json.loads(sealed_event_json(event))
        assert is_sealed(on_kafka["payload"]["phone"]) and "447700900124" not in str(on_kafka)
        assert ring.decrypt(on_kafka["payload"]["phone"]) == "+447700900124"
        # Consumers read it (no clock check) ...
        assert parse_event(json.dumps(on_kafka), check_clock=False) is not None
        # ... but ingest does not take a sealed value from a client.
        with pytest.raises(ValidationError, match=r"plain E\.164"):
            parse_event(on_kafka)
        stop = parse_event(stop_notice(sid()))
        assert sealed_event_json(stop) == stop.model_dump_json().encode()
    finally:
        use_phone_key(DEV_PHONE_KEY)


@session_loop
async def test_rotation_moves_every_stored_phone_to_the_new_key(env: dict[str, Any]) -> None:
    # A database of its own at head: rotation walks every row, others' keys included.
    async with scratch_database(env["database_url"], prefix="rotation") as url:
        await upgrade_async(url)
        await _rotate(env | {"database_url": url})


async def _rotate(env: dict[str, Any]) -> None:
    old, new = _key(), _key()
    app = outreach_app(OutreachSettings(**env, phone_key=old))  # installs the old key
    engine = app.state.runtime.engine
    number, subscriber = f"+4479{uuid.uuid4().int % 10**8:08d}", sid()
    task = _sms(subscriber, number)
    old_ring, new_ring = PhoneKeyring.from_base64(old), PhoneKeyring.from_base64(new, [old])
    try:
        async with engine.begin() as conn:
            await outreach_service.store_tasks(conn, new_tasks=[task], now=datetime.now(UTC))
            await conn.execute(
                text(
                    "INSERT INTO alerting.subscribers (subscriber_id, tier, monthly_value, phone,"
                    " language, preferred_channel, marketing_opt_out, profile_at)"
                    " VALUES (:s, 'standard', 0, :p, 'en', 'sms', false, now())"
                ),
                {"s": subscriber, "p": old_ring.encrypt(number)},
            )
        before = await phone_key_status(engine)
        assert before == {
            "alerting.subscribers.phone": {old_ring.current.key_id: 1},
            "outreach.tasks.phone": {old_ring.current.key_id: 1},
        }
        use_phone_keyring(new_ring)  # the services restarted with PHONE_KEY=new, old kept
        async with engine.connect() as conn:
            assert await outreach_service.subscribers_with_phone(conn, phone=number) == [subscriber]
        moved = await reseal_phones(engine, new_ring)
        assert moved == {"alerting.subscribers.phone": 1, "outreach.tasks.phone": 1}
        assert await reseal_phones(engine, new_ring) == dict.fromkeys(moved, 0)  # idempotent
        after = await phone_key_status(engine)
        assert after == {
            "alerting.subscribers.phone": {new_ring.current.key_id: 1},
            "outreach.tasks.phone": {new_ring.current.key_id: 1},
        }
        # The old key can go: everything opens and is found with the new one alone.
        use_phone_keyring(PhoneKeyring.from_base64(new))
        async with engine.connect() as conn:
            row = await outreach_service.get_task(conn, task_id=task.task_id)
            found = await outreach_service.subscribers_with_phone(conn, phone=number)
            stored = await conn.scalar(
                text("SELECT phone FROM alerting.subscribers WHERE subscriber_id = :s"),
                {"s": subscriber},
            )
        assert row is not None and row["phone"] == number and found == [subscriber]
        assert PhoneKeyring.from_base64(new).decrypt(stored) == number
    finally:
        use_phone_key(DEV_PHONE_KEY)
        await _forget(engine, task.task_id)
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM alerting.subscribers WHERE subscriber_id = :s"), {"s": subscriber}
            )
        await engine.dispose()
