"""GET /v1/subscribers on the real PostgreSQL: filters, keyset walks while rows change,
the NDJSON and CSV exports, the scope, and every kind of bad input."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from churnwatch.migrate import alembic_config, upgrade_async
from services.scoring import listing as listing_module
from services.scoring import service
from services.scoring.app import create_app
from services.scoring.codec import encode
from services.scoring.consumer import ScoringHandler
from services.scoring.features import new_state
from services.scoring.settings import ScoringSettings
from shared.auth import create_key
from shared.consumer import Inbound
from shared.events import Event, parse_event
from shared.kafka import ensure_topics, make_producer
from shared.outbox import Outbox
from shared.topics import Topics
from tests.conftest import Stack
from tests.helpers import calls, event, profile, scratch_database, sid

pytestmark = pytest.mark.asyncio(loop_scope="session")

TIERS = ("diamond", "gold", "silver", "standard")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an error with this status and stable code; returns the body.

    Reads the code from the body as it is now (``{"error": {"code": ...}}``) or as
    RFC 9457 problem+json (a ``code`` member, else the last segment of ``type``),
    so the assertion survives the change of body shape.
    """
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    found = body.get("code") or (body.get("error") or {}).get("code")
    if found is None and isinstance(body.get("type"), str):
        found = body["type"].rstrip("/").rsplit("/", 1)[-1]
    assert found == code, body
    return body


@dataclass
class Listing:
    """A scoring app on a database of its own (the listing walks every row)."""

    engine: AsyncEngine
    client: httpx.AsyncClient
    settings: ScoringSettings
    app: Any

    async def put(self, rows: list[dict[str, Any]]) -> None:
        """Write feature rows through the service's own upsert, in one transaction."""
        now = datetime.now(UTC)
        full = [
            {
                "blob": None,
                "events_applied": 1,
                "updated_at": now,
                "band": "high",
                "tier": "standard",
                "account_manager_id": None,
                **row,
            }
            for row in rows
        ]
        async with self.engine.begin() as conn:
            await service.save_features(conn, rows=full)

    async def get(self, **params: Any) -> httpx.Response:
        """GET /v1/subscribers with these query parameters (lists repeat the parameter)."""
        return await self.client.get("/v1/subscribers", params=params)

    async def walk(self, **params: Any) -> tuple[list[list[dict[str, Any]]], str]:
        """Every page of a walk (its items) and its as_of."""
        pages, cursor, as_of = [], None, ""
        while True:
            response = await self.get(**params, **({"cursor": cursor} if cursor else {}))
            assert response.status_code == 200, response.text
            body = response.json()
            pages.append(body["items"])
            as_of = as_of or body["as_of"]
            cursor = body["next_cursor"]
            if cursor is None:
                return pages, as_of


@pytest.fixture(scope="module")
async def database(stack: Stack) -> AsyncIterator[str]:
    async with scratch_database(stack.database_url, prefix="listing") as url:
        await upgrade_async(url)
        yield url


@pytest.fixture
async def listing(env: dict[str, Any], database: str) -> AsyncIterator[Listing]:
    settings = ScoringSettings(**{**env, "database_url": database})
    app = create_app(settings)
    engine = app.state.runtime.engine
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE scoring.features"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://scoring"
    ) as client:
        yield Listing(engine, client, settings, app)
    await engine.dispose()


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["subscriber_id"] for i in items]


def _norm(item: dict[str, Any]) -> dict[str, Any]:
    """A listed row as values: the time parsed (Z or +00:00), an empty CSV cell as None."""
    return {
        **item,
        "account_manager_id": item["account_manager_id"] or None,
        "changed_at": datetime.fromisoformat(item["changed_at"]),
    }


async def _asgi_bodies(app: Any, path: str, query: bytes) -> list[bytes]:
    """Call the app as a server would; the body parts it sends, one per ``send``."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"scoring")],
        "client": ("127.0.0.1", 1),
        "server": ("scoring", 80),
    }
    bodies: list[bytes] = []
    requested, done = False, asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the client stays connected until the response ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body" and message.get("body"):
            bodies.append(message["body"])

    await app(scope, receive, send)
    done.set()
    return bodies


def _order_key(item: dict[str, Any]) -> tuple[float, str]:
    return (item["score"], item["subscriber_id"])


async def test_filters_and_order(listing: Listing) -> None:
    rows = [
        {"subscriber_id": "a", "score": 0.91, "band": "high", "tier": "gold"},
        {"subscriber_id": "b", "score": 0.91, "band": "high", "tier": "diamond"},
        {"subscriber_id": "c", "score": 0.6, "band": "medium", "tier": "gold"},
        {"subscriber_id": "d", "score": 0.2, "band": "low", "tier": "standard"},
        {"subscriber_id": "e", "score": 0.75, "band": "high", "account_manager_id": "am-1"},
        {"subscriber_id": "f", "score": 0.55, "band": "medium", "account_manager_id": "am-1"},
        # No served score (a warm-started state): never listed.
        {"subscriber_id": "g", "score": 0.99, "band": None, "tier": "gold"},
    ]
    await listing.put(rows)
    everyone = (await listing.get()).json()
    # Highest first; a tie (a, b at 0.91) in subscriber id order, descending.
    assert _ids(everyone["items"]) == ["b", "a", "e", "c", "f", "d"]
    assert everyone["next_cursor"] is None
    assert set(everyone["items"][0]) == {
        "subscriber_id",
        "score",
        "band",
        "tier",
        "account_manager_id",
        "changed_at",
    }

    async def ids(**params: Any) -> list[str]:
        response = await listing.get(**params)
        assert response.status_code == 200, response.text
        return _ids(response.json()["items"])

    assert await ids(band="high") == ["b", "a", "e"]
    assert await ids(band=["medium", "low"]) == ["c", "f", "d"]
    assert await ids(tier="gold") == ["a", "c"]
    assert await ids(manager="am-1") == ["e", "f"]
    assert await ids(manager="am-1", band="medium") == ["f"]
    assert await ids(min_score=0.6, max_score=0.8) == ["e", "c"]
    assert await ids(min_score=0.91) == ["b", "a"]
    assert await ids(tier="silver") == []

    before = datetime.now(UTC)
    await listing.put([{"subscriber_id": "d", "score": 0.3, "band": "low", "tier": "standard"}])
    # A write that changes nothing listed leaves changed_at (and the walk) alone.
    await listing.put([{"subscriber_id": "a", "score": 0.91, "band": "high", "tier": "gold"}])
    assert await ids(changed_since=before.isoformat()) == ["d"]
    assert await ids(changed_since=(before + timedelta(hours=1)).isoformat()) == []


async def test_a_walk_lists_every_unchanged_row_once_while_rows_change(listing: Listing) -> None:
    rng = random.Random(21)
    # Ties on purpose: 300 rows over 60 distinct scores.
    # Scores from 0.1 to 0.69: a move to 0.0 or 1.0 below always changes a row.
    scores = {f"S-{n:04d}": round(0.1 + rng.randrange(60) / 100, 4) for n in range(300)}
    await listing.put([{"subscriber_id": s, "score": v} for s, v in scores.items()])

    # At rest: the pages, end to end, are the whole set in order, with no gap.
    pages, _ = await listing.walk(limit=37)
    flat = [i for page in pages for i in page]
    assert len(flat) == len(scores) == len({i["subscriber_id"] for i in flat})
    assert flat == sorted(flat, key=_order_key, reverse=True)
    assert all(len(p) == 37 for p in pages[:-1])

    # Now rows move up and down, are added, and are rewritten unchanged between pages.
    seen: list[str] = []
    changed: set[str] = set()
    cursor: str | None = None
    as_of = ""
    step = 0
    while True:
        params: dict[str, Any] = {"limit": 25, **({"cursor": cursor} if cursor else {})}
        body = (await listing.get(**params)).json()
        as_of = as_of or body["as_of"]
        seen += _ids(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        step += 1
        unseen = [s for s in scores if s not in seen and s not in changed]
        passed = [s for s in seen if s not in changed]
        # An unseen row jumps above the cursor (keyset alone would skip it), a seen one
        # drops below (keyset alone would list it twice), a new one arrives, and an
        # unchanged rewrite (events applied, score the same) must not hide a row.
        moves = {rng.choice(unseen): 1.0, rng.choice(passed): 0.0, f"N-{step:03d}": 0.5}
        for subscriber, score in moves.items():
            scores[subscriber] = score
        changed.update(moves)
        same = [s for s in unseen if s not in moves][:1]
        await listing.put(
            [{"subscriber_id": s, "score": v} for s, v in moves.items()]
            + [{"subscriber_id": s, "score": scores[s], "events_applied": 2} for s in same]
        )
    assert len(seen) == len(set(seen)), "a row was listed twice"
    unchanged = set(scores) - changed
    assert unchanged <= set(seen), f"unchanged rows missed: {sorted(unchanged - set(seen))}"
    # What changed during the walk is what changed_since as_of gives afterwards.
    follow_up, _ = await listing.walk(changed_since=as_of)
    caught = {i["subscriber_id"] for page in follow_up for i in page}
    assert caught == changed
    assert set(seen) | caught == set(scores)


async def test_a_write_running_when_the_walk_begins_is_not_listed_twice(
    listing: Listing,
) -> None:
    """A change committed mid-walk by a transaction already running at the first page."""
    scores = {f"S-{n:03d}": round(0.9 - n / 100, 4) for n in range(60)}
    await listing.put([{"subscriber_id": s, "score": v} for s, v in scores.items()])
    now = datetime.now(UTC)
    async with listing.engine.connect() as writer:
        transaction = await writer.begin()
        # The top row drops to the bottom and a bottom row jumps to the top, uncommitted.
        await service.save_features(
            writer,
            rows=[
                {
                    "subscriber_id": sid_,
                    "score": score,
                    "blob": None,
                    "events_applied": 2,
                    "updated_at": now,
                    "band": "high",
                    "tier": "standard",
                    "account_manager_id": None,
                }
                for sid_, score in (("S-000", 0.01), ("S-059", 0.99))
            ],
        )
        first = (await listing.get(limit=10)).json()
        assert _ids(first["items"])[0] == "S-000"  # the old value: not committed yet
        await transaction.commit()
    seen = _ids(first["items"])
    cursor = first["next_cursor"]
    while cursor:
        body = (await listing.get(limit=10, cursor=cursor)).json()
        seen += _ids(body["items"])
        cursor = body["next_cursor"]
    assert len(seen) == len(set(seen)), "a row was listed twice"
    assert set(scores) - set(seen) == {"S-059"}  # changed during the walk
    # The writer's rows carry its start time, which as_of takes into account: what
    # changed during the walk is exactly what changed_since=as_of gives afterwards.
    assert datetime.fromisoformat(first["as_of"]) <= datetime.now(UTC)
    caught = _ids((await listing.get(changed_since=first["as_of"])).json()["items"])
    assert set(caught) == {"S-000", "S-059"}


async def test_a_walk_too_busy_to_list_its_writers_still_lists_every_row_once(
    listing: Listing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the snapshot's size limit the cursor keeps only xmin: the walk stays whole."""
    monkeypatch.setattr(listing_module, "_SNAPSHOT_MAX_CHARS", 0)
    await listing.put([{"subscriber_id": f"S-{n:03d}", "score": 0.5} for n in range(30)])
    pages, _ = await listing.walk(limit=7)
    flat = [i["subscriber_id"] for page in pages for i in page]
    assert sorted(flat) == [f"S-{n:03d}" for n in range(30)]
    token = (await listing.get(limit=7)).json()["next_cursor"]
    xmin, xmax, running = listing_module.Cursor.decode(
        token, filters=listing_module.Filters()
    ).snapshot.split(":")
    assert xmin == xmax and running == ""


async def test_exports_stream_the_filtered_set(listing: Listing) -> None:
    rows = [
        {
            "subscriber_id": f"X-{n:05d}",
            "score": round(0.5 + (n % 500) / 1000, 4),
            "band": "high" if n % 3 else "medium",
            "tier": TIERS[n % 4],
            "account_manager_id": None if n % 5 else f"am-{n % 7}",
        }
        for n in range(2600)
    ]
    await listing.put(rows)
    pages, _ = await listing.walk(band="high", limit=1000)
    expected = [i for page in pages for i in page]
    assert len(expected) == sum(1 for r in rows if r["band"] == "high")

    for how in ({"params": {"format": "ndjson"}}, {"headers": {"Accept": "application/x-ndjson"}}):
        response = await listing.client.get(
            "/v1/subscribers",
            params={"band": "high", **how.get("params", {})},
            headers=how.get("headers"),
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.text.splitlines()
        assert [_norm(orjson.loads(line)) for line in lines] == [_norm(i) for i in expected]

    # Streamed: the app sends the body a chunk of rows at a time, not built whole.
    bodies = await _asgi_bodies(listing.app, "/v1/subscribers", b"format=ndjson")
    assert len(bodies) >= 3 and all(len(b) < 400_000 for b in bodies)
    assert b"".join(bodies).count(b"\n") == len(rows)

    for how in ({"params": {"format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
        response = await listing.client.get(
            "/v1/subscribers",
            params={"band": "high", **how.get("params", {})},
            headers=how.get("headers"),
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        parsed = list(csv.DictReader(io.StringIO(response.text)))
        assert list(parsed[0]) == list(expected[0])
        assert [
            _norm({**r, "score": float(r["score"]), "account_manager_id": r["account_manager_id"]})
            for r in parsed
        ] == [_norm(i) for i in expected]
    # No phone number in any shape: scoring holds none, and no column carries one.
    assert "phone" not in response.text and "+1555" not in response.text

    # A spreadsheet does not run a manager id as a formula; NDJSON keeps it as it is.
    await listing.put([{"subscriber_id": "Z-1", "score": 0.1, "account_manager_id": "=1+2"}])
    as_csv = (await listing.get(format="csv", manager="=1+2")).text.splitlines()
    assert as_csv[1].split(",")[:5] == ["Z-1", "0.1", "high", "standard", "'=1+2"]
    as_ndjson = orjson.loads((await listing.get(format="ndjson", manager="=1+2")).text)
    assert as_ndjson["account_manager_id"] == "=1+2"


async def test_the_scope_is_enforced(env: dict[str, Any], database: str) -> None:
    settings = ScoringSettings(
        **{**env, "database_url": database, "auth_enabled": True, "auth_cache_ttl_s": 0}
    )
    app = create_app(settings)
    engine = app.state.runtime.engine
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        _, reader = await create_key(conn, name="t-list-read", scopes=["scores:read"], now=now)
        _, other = await create_key(conn, name="t-list-other", scopes=["tasks:read"], now=now)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://scoring"
        ) as client:
            for params in ({}, {"format": "csv"}, {"format": "ndjson"}):
                url = "/v1/subscribers"
                assert_error(await client.get(url, params=params), 401, "unauthorized")
                bad = {"X-API-Key": "cw_nope_nope"}
                assert_error(await client.get(url, params=params, headers=bad), 401, "unauthorized")
                denied = await client.get(url, params=params, headers={"X-API-Key": other})
                assert_error(denied, 403, "forbidden")
                allowed = await client.get(url, params=params, headers={"X-API-Key": reader})
                assert allowed.status_code == 200, allowed.text
    finally:
        await engine.dispose()


async def test_bad_input_is_a_4xx_with_a_stable_code(listing: Listing) -> None:
    await listing.put([{"subscriber_id": s, "score": 0.5 + n / 100} for n, s in enumerate("pqrs")])
    first = (await listing.get(limit=2)).json()
    cursor = first["next_cursor"]
    assert cursor

    body = assert_error(await listing.get(colour="red", region="x"), 422, "validation_error")
    assert "colour" in str(body) and "region" in str(body)  # named
    assert_error(await listing.get(limit=1001), 422, "validation_error")
    assert_error(await listing.get(limit=0), 422, "validation_error")
    assert_error(await listing.get(band="extreme"), 422, "validation_error")
    assert_error(await listing.get(tier="platinum"), 422, "validation_error")
    assert_error(await listing.get(min_score=1.5), 422, "validation_error")
    assert_error(await listing.get(min_score=0.8, max_score=0.2), 422, "validation_error")
    assert_error(await listing.get(changed_since="2026-12-01T00:00:00"), 422, "validation_error")
    assert_error(await listing.get(changed_since="yesterday"), 422, "validation_error")
    assert_error(await listing.get(format="xml"), 422, "validation_error")
    assert_error(await listing.get(cursor="x" * 8001), 422, "validation_error")

    # One character changed, as a hand-edited cursor would be.
    tampered = cursor[:12] + ("B" if cursor[12] == "A" else "A") + cursor[13:]
    outreach_cursor = base64.urlsafe_b64encode(
        f"{datetime.now(UTC).isoformat()}|{uuid.uuid4()}".encode()
    ).decode()
    for bad in ("not a cursor!", "%%%", "AAAA", tampered, outreach_cursor, cursor[:-4]):
        assert_error(await listing.get(limit=2, cursor=bad), 400, "bad_request")
    # A cursor belongs to its filters.
    assert_error(await listing.get(limit=2, cursor=cursor, band="high"), 400, "bad_request")
    # An export is the whole set: no cursor, no page size.
    assert_error(await listing.get(format="csv", cursor=cursor), 400, "bad_request")
    assert_error(await listing.get(format="ndjson", limit=5), 400, "bad_request")
    # The genuine cursor still works.
    assert (await listing.get(limit=2, cursor=cursor)).status_code == 200


async def test_events_reach_the_listing_with_tier_manager_and_band(
    listing: Listing, env: dict[str, Any], database: str
) -> None:
    """The real handler on real events: the profile's tier and manager, the served band."""
    settings = ScoringSettings(
        **{**env, "database_url": database, "scoring_model_name": f"m-{uuid.uuid4().hex[:8]}"}
    )
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    handler = ScoringHandler(settings, Topics(settings.kafka_topic_prefix))
    await handler.load(listing.engine)

    async def handle(items: list[dict[str, Any]]) -> None:
        batch: list[Inbound[Event]] = [
            Inbound(parse_event(i), "t", 0, n, 0) for n, i in enumerate(items)
        ]
        async with listing.engine.begin() as conn:
            outbox = Outbox(producer)
            await handler(conn, batch, outbox)
            await outbox.flush()

    risky, calm = sid(), sid()
    try:
        await handle(
            [profile(risky, tier="gold", manager="am-7"), profile(calm)]
            + calls(risky, n=30, competitor=True, days_ago=1)
            + [event("complaint", risky, {"severity": "high"})]
            + calls(calm, n=3, competitor=False, days_ago=1)
        )
        listed = {i["subscriber_id"]: i for i in (await listing.get()).json()["items"]}
        assert listed[risky]["tier"] == "gold" and listed[risky]["account_manager_id"] == "am-7"
        assert listed[risky]["band"] == settings.band(listed[risky]["score"]) == "high"
        assert listed[calm]["tier"] == "standard" and listed[calm]["account_manager_id"] is None
        assert _ids((await listing.get(manager="am-7")).json()["items"]) == [risky]
        # A newer profile moves the subscriber to another manager.
        await handle([profile(risky, tier="gold", manager="am-8", at=datetime.now(UTC))])
        assert _ids((await listing.get(manager="am-8")).json()["items"]) == [risky]
        assert (await listing.get(manager="am-7")).json()["items"] == []
    finally:
        await producer.stop()


async def test_the_listing_migration_fills_the_listed_columns_of_stored_rows(stack: Stack) -> None:
    state = new_state()
    state["watermark"] = 1_770_000_000.0
    state["latest"]["profile"] = (("silver", 30.0, None), 1_769_000_000.0)
    state["last_score"] = 0.8
    state["scored"] = {
        "score": 0.8,
        "previous_score": None,
        "band": "high",
        "model_version": "prior-v1",
        "cause_event_id": str(uuid.uuid4()),
        "event_time": "2026-02-02T00:00:00+00:00",
        "scored_at": "2026-02-02T00:00:01+00:00",
        "published_score": 0.8,
    }
    async with scratch_database(stack.database_url, prefix="listmig") as url:
        config = alembic_config(url)
        # By its file, not its number: the revision before it is whatever it revises.
        mine = next(
            r
            for r in ScriptDirectory.from_config(config).walk_revisions()
            if r.path.endswith("_scoring_listing.py")
        )
        before = str(mine.down_revision)
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            await asyncio.to_thread(command.upgrade, config, before)
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO scoring.features (subscriber_id, blob, events_applied, "
                        "score, updated_at) VALUES ('old', :blob, 1, 0.8, now()), "
                        "('cold', :cold, 1, 0.4, now())"
                    ),
                    {"blob": encode(state), "cold": encode(new_state())},
                )
            await asyncio.to_thread(command.upgrade, config, mine.revision)
            async with engine.connect() as conn:
                got = {
                    r.subscriber_id: (r.band, r.tier, r.changed_xid is not None)
                    for r in await conn.execute(
                        text("SELECT subscriber_id, band, tier, changed_xid FROM scoring.features")
                    )
                }
            assert got == {"old": ("high", "silver", True), "cold": (None, None, True)}
            await asyncio.to_thread(command.downgrade, config, before)
            await asyncio.to_thread(command.upgrade, config, "head")
        finally:
            await engine.dispose()
