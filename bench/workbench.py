"""The workbench's pages under load: server time with 10,000 open tasks (issue 19).

Outreach, scoring and alerting run as processes (as ``churnwatch up`` runs
them; outreach asks scoring and alerting for the subscriber card). Before
outreach starts, the benchmark fills outreach's database through outreach's
own code (``service.store_tasks``, ``queue.claim_call``/``record_outcome``):

- ``open_tasks`` queued calls (10,000; quick 2,000) over ``managers`` account
  managers (20) of one team lead: per manager 30 % VIP pre-suspension
  reminder calls (suspensions from 1 h to 5 days ahead; half of them with the
  reminder SMS already delivered), 60 % retention calls (risk x value, with
  reasons), 10 % care calls;
- this month's history: per manager, earlier VIP reminders whose suspension
  has passed (reminded or missed), and calls worked through the queue with an
  outcome (the team lead's calls-per-day and saves);
- alerting's activity (bills, payments, a stop-notice, complaints) for the
  subscribers whose cards are opened. Scoring knows none of them (its answer
  is a 404 round trip).

Then a manager and the team lead sign in (``POST /ui/sign-in``, as a browser
does) and each page is requested ``requests`` times, one at a time:
My day (``/ui/``, as a manager), the subscriber card
(``/ui/subscribers/{id}``, a different subscriber of that manager each time)
and the team lead page (``/ui/team``). Server time is the request's time as
the client measures it on the same machine (keep-alive, loopback: the floor is
``GET /healthz``, measured the same way and reported beside).
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from bench.common import Stack, fresh_prefix, run, start, wait_ready
from churnwatch.embedded import stop_processes
from services.alerting.tables import subscriber_facts
from services.outreach import queue, service
from services.outreach.settings import OutreachSettings
from services.outreach.tables import tasks
from services.outreach.workbench.accounts import Role, create_person
from shared.crypto import use_phone_keyring
from shared.db import create_engine
from shared.events import CallOutcome, Channel, OutreachTask, TaskKind, Tier

PASSWORD = "bench-password-2026"  # noqa: S105 - throw-away accounts of a benchmark database
PAGES = ("my_day", "card", "team")
"""The pages timed, in the figures' names: ``workbench_<page>_p50_ms`` / ``_p95_ms``."""

VIP = (Tier.DIAMOND, Tier.GOLD, Tier.SILVER)
REASONS = [
    ("COMPETITOR_CALLS_UP", "calls to competitor networks up"),
    ("USAGE_DOWN", "usage down"),
    ("COMPLAINTS_UP", "complaints up"),
    ("SPEND_DROP", "spend down"),
]
STORE_CHUNK = 500  # tasks per INSERT (bind parameters stay well under PostgreSQL's limit)
CARD_MARKER = "123.45"  # the newest bill's amount in alerting's activity of every card
WORKED_PER_MANAGER = 30  # calls worked through the queue this month, per manager
PAST_NOTICES_PER_MANAGER = 20  # VIP suspensions already passed this month, per manager


@dataclass
class Population:
    """What was made: who signs in, and whose cards are opened."""

    prefix: str
    lead: str
    managers: list[str] = field(default_factory=list)  # person ids; manager id = person id
    subscribers: dict[str, list[str]] = field(default_factory=dict)  # manager -> subscribers
    open_tasks: int = 0


def _task(
    rng: random.Random,
    *,
    kind: TaskKind,
    channel: Channel,
    manager: str,
    subscriber: str,
    now: datetime,
    tier: Tier,
    suspension_at: datetime | None = None,
    cause: uuid.UUID | None = None,
    rule: str,
) -> OutreachTask:
    value = Decimal(rng.randrange(40, 400))
    risk = round(rng.uniform(0.5, 0.97), 3)
    params: dict[str, str] = {}
    codes = [c for c, _ in rng.sample(REASONS, 2)]
    reasons = [f"{c}: {text}" for c, text in REASONS if c in codes]
    due_at = now + timedelta(days=7)
    priority = risk * float(value)
    if kind is TaskKind.PRE_SUSPENSION_REMINDER:
        assert suspension_at is not None
        params = {"amount": "80.00", "suspension_at": suspension_at.isoformat()}
        codes, reasons = ["STOP_NOTICE"], ["suspension scheduled (arrears); 80.00 to pay"]
        due_at = suspension_at - timedelta(hours=2)
        priority = 10_000 + float(value)
    return OutreachTask(
        task_id=uuid.uuid4(),
        kind=kind,
        channel=channel,
        rule=rule,
        subscriber_id=subscriber,
        tier=tier,
        monthly_value=value,
        phone=f"+1555{rng.randrange(10_000_000):07d}",
        language=rng.choice(("en", "zh")),
        account_manager_id=manager,
        queue=f"am:{manager}" if channel is Channel.CALL else None,
        template=kind.value if channel is Channel.SMS else None,
        priority=priority,
        risk=risk if kind is not TaskKind.PRE_SUSPENSION_REMINDER else None,
        due_at=due_at,
        reasons=reasons,
        reason_codes=codes,
        params=params,
        cause_event_id=cause or uuid.uuid4(),
        created_at=now - timedelta(hours=rng.uniform(0, 20)),
    )


def _plan(rng: random.Random, manager: str, prefix: str, n: int, now: datetime) -> list[Any]:
    """One manager's open tasks: (task, what to do with it after storing) pairs."""
    made: list[Any] = []
    for i in range(n):
        subscriber = f"{prefix}-{manager[-5:]}-{i:05d}"
        share = i / n
        if share < 0.3:  # a VIP reminder: the call, and the SMS (delivered for half)
            suspension = now + timedelta(hours=rng.uniform(1, 120))
            cause, tier = uuid.uuid4(), rng.choice(VIP)
            common: dict[str, Any] = {
                "manager": manager,
                "subscriber": subscriber,
                "now": now,
                "tier": tier,
            }
            call = _task(
                rng,
                kind=TaskKind.PRE_SUSPENSION_REMINDER,
                channel=Channel.CALL,
                suspension_at=suspension,
                cause=cause,
                rule="pre_suspension_reminder",
                **common,
            )
            sms = _task(
                rng,
                kind=TaskKind.PRE_SUSPENSION_REMINDER,
                channel=Channel.SMS,
                suspension_at=suspension,
                cause=cause,
                rule="pre_suspension_reminder",
                **common,
            )
            made += [(call, None), (sms, "delivered" if i % 2 else "expired")]
        else:
            kind = TaskKind.RETENTION if share < 0.9 else TaskKind.CARE
            rule = "retention_high" if kind is TaskKind.RETENTION else "bill_shock"
            tier = rng.choice((*VIP, Tier.STANDARD))
            made.append(
                (
                    _task(
                        rng,
                        kind=kind,
                        channel=Channel.CALL,
                        manager=manager,
                        subscriber=subscriber,
                        now=now,
                        tier=tier,
                        rule=rule,
                    ),
                    None,
                )
            )
    return made


def _past_notices(rng: random.Random, manager: str, prefix: str, now: datetime) -> list[Any]:
    """VIP suspensions already passed this month: reminded (SMS delivered) or missed."""
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    span = max((now - start).total_seconds() - 3600, 3600)
    made: list[Any] = []
    for i in range(PAST_NOTICES_PER_MANAGER):
        suspension = start + timedelta(seconds=rng.uniform(0, span))
        common: dict[str, Any] = {
            "manager": manager,
            "subscriber": f"{prefix}-{manager[-5:]}-past-{i:03d}",
            "now": suspension - timedelta(days=2),
            "tier": rng.choice(VIP),
            "suspension_at": suspension,
            "cause": uuid.uuid4(),
            "rule": "pre_suspension_reminder",
        }
        call = _task(rng, kind=TaskKind.PRE_SUSPENSION_REMINDER, channel=Channel.CALL, **common)
        sms = _task(rng, kind=TaskKind.PRE_SUSPENSION_REMINDER, channel=Channel.SMS, **common)
        made += [(call, "expired"), (sms, "delivered" if i % 4 else "expired")]
    return made


async def _finish(conn: Any, task: OutreachTask, state: str) -> None:
    """Put a stored task in a final state as its dispatcher or keeper would have."""
    at = min(task.due_at or task.created_at, datetime.now(UTC))
    values: dict[str, Any] = {"status": state, "finished_at": at, "updated_at": at}
    if state == "delivered":
        values |= {"sent_at": at - timedelta(minutes=1), "delivered_at": at}
    await conn.execute(update(tasks).where(tasks.c.task_id == task.task_id).values(**values))


def _activity(rng: random.Random, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """What alerting remembers of a subscriber (services/alerting/activity.py's shape)."""

    def item(days: float, **fields: Any) -> dict[str, Any]:
        at = now - timedelta(days=days)
        return {"event_id": str(uuid.uuid4()), "at": at.isoformat(), **fields}

    return {
        "bills": [
            item(
                30 * m,
                period=(now - timedelta(days=30 * m)).strftime("%Y-%m"),
                # The newest bill's amount is the card's sign that alerting answered.
                amount_due=CARD_MARKER if m == 1 else f"{rng.randrange(60, 200)}.00",
                amount_paid="0.00",
                plan_id="P-100",
                plan_change="none",
                due_date=None,
            )
            for m in range(10, 0, -1)
        ],
        "payments": [
            item(30 * m + 3, amount="80.00", method="card", period=None, late=False)
            for m in range(3, 0, -1)
        ],
        "stop_notices": [
            item(
                1,
                reason="arrears",
                suspension_at=(now + timedelta(days=2)).isoformat(),
                amount_to_pay="80.00",
            )
        ],
        "complaints": [
            item(d, category="network", severity="high", resolved=False) for d in (20, 4)
        ],
    }


async def populate(
    stack: Stack, *, open_tasks: int, managers: int, cards: int, seed: int = 19
) -> Population:
    """Fill outreach's (and alerting's) tables for one run; see the module."""
    rng = random.Random(seed)
    prefix = fresh_prefix("wb")
    settings = OutreachSettings(database_url=stack.database_url)
    use_phone_keyring(settings.phone_keyring())
    now = datetime.now(UTC)
    population = Population(prefix=prefix, lead=f"{prefix}-lead")
    engine = create_engine(stack.settings())
    try:
        async with engine.begin() as conn:
            await create_person(
                conn, person_id=population.lead, password=PASSWORD, role=Role.TEAM_LEAD, now=now
            )
            for m in range(managers):
                person = f"{prefix}-am{m:02d}"
                await create_person(
                    conn,
                    person_id=person,
                    password=PASSWORD,
                    role=Role.MANAGER,
                    now=now,
                    manager_id=person,
                    team_lead_id=population.lead,
                )
                population.managers.append(person)
        # The calls worked through the queue below are no longer open.
        per_manager = open_tasks // managers + WORKED_PER_MANAGER
        for manager in population.managers:
            made = _plan(rng, manager, prefix, per_manager, now)
            made += _past_notices(rng, manager, prefix, now)
            async with engine.begin() as conn:
                for i in range(0, len(made), STORE_CHUNK):
                    chunk = [t for t, _ in made[i : i + STORE_CHUNK]]
                    await service.store_tasks(conn, new_tasks=chunk, now=now)
                for task, state in made:
                    if state is not None:
                        await _finish(conn, task, state)
            population.subscribers[manager] = sorted(
                {t.subscriber_id for t, state in made if state is None}
            )
        population.open_tasks = await _work_the_queues(engine, population, now)
        facts = [
            {
                "subscriber_id": subscriber,
                "bills_seen": 10,
                "activity": _activity(rng, now),
                "updated_at": now,
            }
            for subscriber in population.subscribers[population.managers[0]][:cards]
        ]
        async with engine.begin() as conn:
            await conn.execute(insert(subscriber_facts).on_conflict_do_nothing(), facts)
    finally:
        await engine.dispose()
    return population


async def _work_the_queues(engine: Any, population: Population, now: datetime) -> int:
    """Each manager claims and finishes some calls (the real queue path); open calls left."""
    outcomes = [CallOutcome.REACHED, CallOutcome.RETAINED, CallOutcome.UNREACHABLE]
    worked = 0
    for manager in population.managers:
        for n in range(WORKED_PER_MANAGER):
            at = now - timedelta(minutes=WORKED_PER_MANAGER - n)
            async with engine.begin() as conn:
                call = await queue.claim_call(
                    conn, queue=f"am:{manager}", agent_id=manager, now=at, general_queue=None
                )
                if call is None:
                    break
                await queue.record_outcome(
                    conn,
                    task_id=call["task_id"],
                    agent_id=manager,
                    outcome=outcomes[n % len(outcomes)],
                    callback_at=None,
                    note=None,
                    now=at,
                )
                worked += 1
    async with engine.connect() as conn:
        total = await conn.scalar(
            select(func.count()).where(
                tasks.c.account_manager_id.in_(population.managers),
                tasks.c.channel == Channel.CALL.value,
                tasks.c.status == "queued",
            )
        )
    return int(total or 0)


# --- the timed part ------------------------------------------------------------------------


def sign_in(client: httpx.Client, person: str) -> str:
    """Sign ``person`` in as a browser does; return the session cookie.

    The client's cookie jar is emptied before and after: each request names
    its session itself (a sign-in with another session's cookie ends it).
    """
    client.cookies.clear()
    form = client.get("/ui/sign-in")
    token = form.cookies.get("cw_signin")
    if form.status_code != 200 or not token:
        raise RuntimeError(f"no sign-in form: {form.status_code} {form.text[:300]}")
    answer = client.post(
        "/ui/sign-in",
        data={"person_id": person, "password": PASSWORD, "csrf_token": token, "next": "/ui/"},
        headers={"Cookie": f"cw_signin={token}"},
    )
    session = answer.cookies.get("cw_session")
    client.cookies.clear()
    if answer.status_code != 303 or not session:
        raise RuntimeError(f"sign-in failed: {answer.status_code} {answer.text[:300]}")
    return session


def _timed(client: httpx.Client, path: str, session: str | None) -> float:
    """Milliseconds for one GET; the page must be a 200."""
    headers = {"Cookie": f"cw_session={session}"} if session else None
    begin = time.perf_counter()
    response = client.get(path, headers=headers)
    elapsed = (time.perf_counter() - begin) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return elapsed


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (inclusive method); NaN with fewer than two values."""
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def measure(url: str, population: Population, *, requests: int) -> dict[str, list[float]]:
    """Each page ``requests`` times, one at a time; milliseconds per page (and the floor)."""
    manager = population.managers[0]
    cards = population.subscribers[manager]
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as client:
        as_manager = sign_in(client, manager)
        as_lead = sign_in(client, population.lead)
        paths: dict[str, Callable[[int], tuple[str, str | None]]] = {
            "my_day": lambda i: ("/ui/", as_manager),
            "card": lambda i: (f"/ui/subscribers/{cards[i % len(cards)]}", as_manager),
            "team": lambda i: ("/ui/team", as_lead),
            "floor": lambda i: ("/healthz", None),
        }
        for page in paths:  # warm-up: first renders, template compilation, pools
            for i in range(3):
                _timed(client, *paths[page](i))
        card = client.get(paths["card"](0)[0], headers={"Cookie": f"cw_session={as_manager}"})
        if CARD_MARKER not in card.text:
            raise RuntimeError("the subscriber card shows no activity: is alerting reachable?")
        times: dict[str, list[float]] = {page: [] for page in paths}
        # Interleaved, so a disturbance on the machine hits every page alike.
        for i in range(requests):
            for page, path in paths.items():
                times[page].append(_timed(client, *path(i)))
    return times


def workbench_run(
    stack: Stack, *, open_tasks: int, managers: int, requests: int
) -> dict[str, float]:
    """One run: fill the database, start the services, sign in, time the pages, stop."""
    population = run(populate(stack, open_tasks=open_tasks, managers=managers, cards=requests))
    environ = stack.environ(population.prefix)
    procs = [start(stack, "scoring", environ), start(stack, "alerting", environ)]
    environ["OUTREACH_SCORING_URL"] = procs[0].url
    environ["OUTREACH_ALERTING_URL"] = procs[1].url
    try:
        procs.append(start(stack, "outreach", environ))
        wait_ready(procs)
        times = measure(procs[2].url, population, requests=requests)
    finally:
        stop_processes(procs)
    result = {"workbench_open_tasks": float(population.open_tasks)}
    for page, values in times.items():
        result[f"workbench_{page}_p50_ms"] = statistics.median(values)
        result[f"workbench_{page}_p95_ms"] = percentile(values, 95)
    return result


if __name__ == "__main__":  # a quick look without the harness: python -m bench.workbench
    from bench.common import stack as start_stack

    with start_stack() as st:
        print(workbench_run(st, open_tasks=2000, managers=20, requests=20))
