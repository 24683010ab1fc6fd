"""The compact state encoding (services/scoring/codec.py): lossless, smaller, strict."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from churnwatch.migrate import alembic_config
from churnwatch.synth import generate
from services.scoring.batch import run_in_memory
from services.scoring.codec import StateFormatError, decode, encode
from services.scoring.features import State, apply_event, new_state
from services.scoring.model import ChurnModel
from services.scoring.scorer import DAY, Scorer
from services.scoring.settings import ScoringSettings
from shared.events import parse_event
from tests.conftest import Stack
from tests.helpers import calls, scratch_database


def as_json(state: State) -> Any:
    """What the state was before the codec: its JSON round trip."""
    return orjson.loads(orjson.dumps(state))


@pytest.fixture(scope="module")
def engine_states() -> list[State]:
    """Real states: a synthetic operator's 40 days through the batch core."""
    settings = ScoringSettings(scoring_min_history_days=2)
    raw = generate(subscribers=120, days=40, seed=3).events
    scorer = Scorer(settings.engine_params(), ChurnModel(settings.model_params()))
    states = run_in_memory(scorer, [parse_event(orjson.dumps(e)) for e in raw])
    return list(states.values())


def test_engine_states_round_trip_exactly_and_take_under_half_the_bytes(
    engine_states: list[State],
) -> None:
    assert len(engine_states) == 120
    assert any(len(s["pending"]) > 10 for s in engine_states)  # the bulky part is there
    for state in engine_states:
        blob = encode(state)
        assert decode(blob) == as_json(state)
        assert len(blob) < len(orjson.dumps(state)) / 2, (len(blob), len(orjson.dumps(state)))


def test_the_irregular_parts_round_trip_too() -> None:
    state = new_state()
    for e in calls("S-codec", n=30, competitor=True, days_ago=5):
        apply_event(state, parse_event(e, check_clock=False))
    wm = state["watermark"]
    state["contacts"] = {f"{n:010x}": wm - n * 3_600.5 for n in range(64)}
    state["pending"] = [wm - d * DAY + 0.123456 for d in range(40, 0, -1)]  # not whole seconds
    state["stepping"] = [state["pending"][3], state["pending"][-1]]  # not a suffix
    state["treated_at"] = wm - 0.5
    state["last_score"] = 0.4242
    state["scored"] = {"score": 0.4242, "band": "high", "scored_at": "2026-12-07T10:00:00+00:00"}
    state["latest"]["profile"] = (("gold", 88.5, None), wm)
    state["future_key"] = {"added": [1, 2, 3]}  # a key a later version adds: kept as JSON
    assert decode(encode(state)) == as_json(state)

    state["contacts"] = {"not-hex": wm}  # a contact key the codec cannot pack: kept as JSON
    state["stepping"] = state["pending"][-5:]
    assert decode(encode(state)) == as_json(state)


@pytest.mark.parametrize(
    ("event_time", "cause"),
    [
        ("2026-02-09T22:22:00+00:00", "3f2b7a3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"),
        ("2026-02-09T22:22:00.000123+08:00", "3f2b7a3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"),
        ("1969-12-31T23:59:59.999999-05:30", "00000000-0000-0000-0000-000000000000"),
        ("2026-02-09T22:22:00Z", "3f2b7a3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"),  # not isoformat()'s
        ("2026-02-09T22:22:00.000000+00:00", "3f2b7a3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"),
        ("2026-02-09T22:22:00", "3f2b7a3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"),  # no offset
        ("2026-02-09T22:22:00+00:00", "3F2B7A3C-1D2E-4F5A-9B8C-7D6E5F4A3B2C"),  # upper case
        ("2026-02-09T22:22:00+00:00", "not-a-uuid"),
    ],
)
def test_the_served_score_record_comes_back_as_written(event_time: str, cause: str) -> None:
    """Binary when it comes back exactly, else kept as JSON: either way, as written."""
    state = new_state() | {"pending": [], "watermark": 1.77e9}
    for previous, published in ((None, None), (0.25, 0.5)):
        state["scored"] = {
            "score": 0.5,
            "previous_score": previous,
            "band": "高",
            "model_version": "blend-v3",
            "cause_event_id": cause,
            "event_time": event_time,
            "scored_at": "2026-12-07T11:22:33.123456+00:00",
            "published_score": published,
        }
        assert decode(encode(state)) == as_json(state)
    state["scored"]["extra"] = 1  # another shape: JSON
    assert decode(encode(state)) == as_json(state)


def test_an_empty_state_and_random_times_round_trip() -> None:
    assert decode(encode(new_state() | {"pending": []})) == as_json(new_state() | {"pending": []})
    rng = random.Random(9)
    for _ in range(200):
        state = new_state()
        wm = rng.uniform(0, 4e9)
        state["watermark"] = state["first_seen"] = state["last_activity"] = wm
        state["pending"] = sorted(rng.uniform(wm - 1e8, wm) for _ in range(rng.randrange(41)))
        state["decayed"] = {"calls_7d": (rng.random() * 1e6, rng.uniform(wm - 1e9, wm))}
        state["payments"] = [(rng.random() * 100, rng.uniform(0, 4e9)) for _ in range(8)]
        assert decode(encode(state)) == as_json(state)


def test_bad_bytes_and_unknown_sums_are_refused() -> None:
    with pytest.raises(StateFormatError):
        decode(b"")
    with pytest.raises(StateFormatError):
        decode(b"\x07" + bytes(40))
    state = new_state()
    state["decayed"] = {"no_such_sum": (1.0, 2.0)}
    with pytest.raises(StateFormatError, match="no_such_sum"):
        encode(state)


async def test_migration_0011_keeps_old_json_rows_and_the_downgrade_restores_json(
    stack: Stack, engine_states: list[State]
) -> None:
    """Upgrade leaves JSONB rows as they are; downgrade turns bytes back into JSONB."""
    async with scratch_database(stack.database_url, prefix="state") as url:
        await _migrate_0011(url, engine_states[0], engine_states[1])


async def _migrate_0011(url: str, old: State, new: State) -> None:
    config = alembic_config(url)
    # No pool: a connection's cached plans would outlive the migrations' column changes.
    engine = create_async_engine(url, poolclass=NullPool)
    insert = (
        "INSERT INTO scoring.features (subscriber_id, state, events_applied, updated_at)"
        " VALUES (:s, CAST(:state AS jsonb), 1, now())"
    )
    try:
        await asyncio.to_thread(command.upgrade, config, "0010")
        async with engine.begin() as conn:
            await conn.execute(text(insert), {"s": "old", "state": orjson.dumps(old).decode()})
        await asyncio.to_thread(command.upgrade, config, "0011")
        async with engine.begin() as conn:
            row = (await conn.execute(text(_ROW), {"s": "old"})).one()
            assert row.blob is None and row.state == as_json(old)  # left for its next event
            await conn.execute(
                text(
                    "INSERT INTO scoring.features (subscriber_id, blob, events_applied,"
                    " updated_at) VALUES ('new', :blob, 1, now())"
                ),
                {"blob": encode(new)},
            )
        await asyncio.to_thread(command.downgrade, config, "0010")
        async with engine.connect() as conn:
            restored = {r.subscriber_id: r.state for r in await conn.execute(text(_STATES))}
        assert restored == {"old": as_json(old), "new": as_json(new)}
    finally:
        await engine.dispose()


_ROW = "SELECT blob, state FROM scoring.features WHERE subscriber_id = :s"
_STATES = "SELECT subscriber_id, state FROM scoring.features"
