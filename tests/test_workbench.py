"""The workbench's pages over ASGI on the session PostgreSQL: auth, access, actions, errors.

Every test makes its own people and manager ids, so tests never see each other's
tasks. Task times run on a clock the test sets (``app.state.clock``); sessions and
lockouts on the wall clock, as in the service.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from services.outreach import service
from services.outreach.app import create_app
from services.outreach.feedback import month_bounds, reminder_counts
from services.outreach.settings import OutreachSettings
from services.outreach.tables import outbox, people, phone_reveals, web_sessions
from services.outreach.tables import tasks as tasks_table
from services.outreach.workbench import i18n
from services.outreach.workbench.accounts import Person, Role, create_person
from services.outreach.workbench.web import MAX_FORM_BYTES
from shared.events import Channel, OutreachTask, TaskKind, Tier
from tests.helpers import sid

PASSWORD = "correct horse battery"
PHONE = "+15550007123"


class TestClock:
    """A clock the test moves (outreach's ``app.state.clock``)."""

    __test__ = False

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        """The time the test set."""
        return self.at


def base_time() -> datetime:
    """The 10th of this month, 09:00 UTC: a reminder 5 h ahead stays in the month."""
    today = datetime.now(UTC)
    return datetime(today.year, today.month, 10, 9, 0, tzinfo=UTC)


def fresh(prefix: str) -> str:
    """A fresh id."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Bench:
    """The outreach app with the workbench, its engine, settings and clock."""

    app: Any
    transport: httpx.ASGITransport
    engine: AsyncEngine
    settings: OutreachSettings
    clock: TestClock
    made: list[str] = field(default_factory=list)

    @asynccontextmanager
    async def browser(self, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
        """A client with its own cookie jar (one person's browser)."""
        async with httpx.AsyncClient(
            transport=self.transport, base_url="http://outreach", headers=headers
        ) as client:
            yield client

    async def person(
        self,
        role: Role = Role.MANAGER,
        *,
        manager_id: str | None = None,
        team_lead: str | None = None,
        name: str | None = None,
    ) -> Person:
        """A new person with ``PASSWORD``; a manager gets a fresh manager id."""
        if role is Role.MANAGER and manager_id is None:
            manager_id = fresh("AM")
        async with self.engine.begin() as conn:
            return await create_person(
                conn,
                person_id=fresh(role.value),
                password=PASSWORD,
                role=role,
                now=datetime.now(UTC),
                display_name=name,
                manager_id=manager_id,
                team_lead_id=team_lead,
            )

    async def store(self, *new: OutreachTask) -> None:
        """Store tasks as the consumer would, at the clock's time."""
        async with self.engine.begin() as conn:
            await service.store_tasks(conn, new_tasks=list(new), now=self.clock.now())

    async def task(self, task_id: uuid.UUID) -> dict[str, Any]:
        """A task with its audit trail."""
        async with self.engine.connect() as conn:
            row = await service.get_task(conn, task_id=task_id)
        assert row is not None
        return row

    def reminder(self, manager: Person, *, in_hours: float = 5, **fields: Any) -> OutreachTask:
        """A VIP pre-suspension reminder call for ``manager``, the suspension ``in_hours`` ahead."""
        now = self.clock.now()
        suspension = now + timedelta(hours=in_hours)
        values: dict[str, Any] = {
            "task_id": uuid.uuid4(),
            "kind": TaskKind.PRE_SUSPENSION_REMINDER,
            "channel": Channel.CALL,
            "subscriber_id": sid(),
            "tier": Tier.DIAMOND,
            "phone": PHONE,
            "account_manager_id": manager.manager_id,
            "queue": f"am:{manager.manager_id}",
            "priority": 90,
            "due_at": suspension,
            "params": {"suspension_at": suspension.isoformat()},
            "reason_codes": ["STOP_NOTICE"],
            "rule": "stop_notice_vip",
            "cause_event_id": uuid.uuid4(),
            "created_at": now,
        }
        return OutreachTask(**(values | fields))

    def retention(self, manager: Person, **fields: Any) -> OutreachTask:
        """A retention call for ``manager``."""
        now = self.clock.now()
        values: dict[str, Any] = {
            "task_id": uuid.uuid4(),
            "kind": TaskKind.RETENTION,
            "channel": Channel.CALL,
            "subscriber_id": sid(),
            "tier": Tier.GOLD,
            "phone": PHONE,
            "account_manager_id": manager.manager_id,
            "queue": f"am:{manager.manager_id}",
            "priority": 50,
            "risk": 0.8,
            "due_at": now + timedelta(days=3),
            "reason_codes": ["COMPETITOR_CALLS_UP"],
            "reasons": ["calls to competitor networks up"],
            "rule": "risk_high",
            "cause_event_id": uuid.uuid4(),
            "created_at": now,
        }
        return OutreachTask(**(values | fields))


@asynccontextmanager
async def workbench(settings: OutreachSettings, at: datetime) -> AsyncIterator[Bench]:
    """The outreach app (routes only, no background loops) with a test clock at ``at``."""
    app = create_app(settings)
    clock = TestClock(at)
    app.state.clock = clock
    engine = app.state.runtime.engine
    try:
        yield Bench(app, httpx.ASGITransport(app=app), engine, settings, clock)
    finally:
        await engine.dispose()


@pytest.fixture
async def bench(env: dict[str, Any]) -> AsyncIterator[Bench]:
    settings = OutreachSettings(**env, workbench_lockout_failures=3)
    async with workbench(settings, base_time()) as b:
        yield b


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token in a page's forms."""
    match = CSRF.search(html)
    assert match, "no csrf_token field on the page"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, person_id: str, password: str = PASSWORD) -> str:
    """Sign in through the form; return the session's CSRF token (from My day)."""
    form = await client.get("/ui/sign-in")
    assert form.status_code == 200
    answer = await client.post(
        "/ui/sign-in",
        data={"csrf_token": csrf_of(form.text), "person_id": person_id, "password": password},
    )
    assert answer.status_code == 303, answer.text
    day = await client.get("/ui/")
    assert day.status_code == 200
    return csrf_of(day.text)


# --- sign-in, sessions, cookies ---------------------------------------------------------


async def test_signed_out_pages_redirect_to_sign_in(bench: Bench) -> None:
    async with bench.browser() as client:
        for path in ("/ui/", "/ui/team", "/ui/subscribers/S-1", "/ui/nowhere"):
            answer = await client.get(path)
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/ui/sign-in?next=")
        # A POST without a session changes nothing and says why.
        answer = await client.post(f"/ui/tasks/{uuid.uuid4()}/claim", data={"csrf_token": "x"})
        assert answer.status_code == 403 and "not signed in" in answer.text


async def test_sign_in_sets_a_hardened_cookie_and_stores_only_the_tokens_hash(
    bench: Bench,
) -> None:
    manager = await bench.person(name="Wang Fang")
    async with bench.browser() as client:
        form = await client.get("/ui/sign-in")
        answer = await client.post(
            "/ui/sign-in",
            data={
                "csrf_token": csrf_of(form.text),
                "person_id": manager.person_id,
                "password": PASSWORD,
                "next": "/ui/team?period=2026-01",
            },
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/team?period=2026-01"
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("cw_session=")
        )
        attributes = cookie.lower()
        assert "httponly" in attributes and "samesite=lax" in attributes
        assert "path=/ui" in attributes and "secure" not in attributes  # plain http here
        token = client.cookies["cw_session"]
        async with bench.engine.connect() as conn:
            stored = (
                await conn.execute(
                    select(web_sessions).where(web_sessions.c.person_id == manager.person_id)
                )
            ).one()
        assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
        day = await client.get("/ui/")
        assert "Wang Fang" in day.text

    # Behind a TLS-terminating ingress the cookies are Secure.
    async with bench.browser(**{"x-forwarded-proto": "https"}) as client:
        form = await client.get("/ui/sign-in")
        assert "secure" in form.headers["set-cookie"].lower()


async def test_open_redirects_are_refused(bench: Bench) -> None:
    manager = await bench.person()
    async with bench.browser() as client:
        form = await client.get("/ui/sign-in")
        answer = await client.post(
            "/ui/sign-in",
            data={
                "csrf_token": csrf_of(form.text),
                "person_id": manager.person_id,
                "password": PASSWORD,
                "next": "https://evil.example/",
            },
        )
        assert answer.headers["location"] == "/ui/"
        toggle = await client.get("/ui/lang", params={"to": "zh", "next": "//evil.example"})
        assert toggle.headers["location"] == "/ui/"


async def test_sign_in_form_needs_its_csrf_token(bench: Bench) -> None:
    manager = await bench.person()
    async with bench.browser() as client:
        await client.get("/ui/sign-in")
        answer = await client.post(
            "/ui/sign-in",
            data={"csrf_token": "forged", "person_id": manager.person_id, "password": PASSWORD},
        )
        assert answer.status_code == 400 and "security token" in answer.text
        assert "cw_session" not in client.cookies


async def test_wrong_password_and_unknown_name_get_the_same_answer(bench: Bench) -> None:
    manager = await bench.person()
    async with bench.browser() as client:
        answers = []
        for name, password in ((manager.person_id, "wrong password"), ("nobody-here", PASSWORD)):
            form = await client.get("/ui/sign-in")
            answers.append(
                await client.post(
                    "/ui/sign-in",
                    data={
                        "csrf_token": csrf_of(form.text),
                        "person_id": name,
                        "password": password,
                    },
                )
            )
        assert [a.status_code for a in answers] == [401, 401]
        assert all("the name or the password is wrong" in a.text for a in answers)


async def test_lockout_after_repeated_failures_then_unlock(bench: Bench) -> None:
    manager = await bench.person()
    async with bench.browser() as client:

        async def attempt(password: str) -> httpx.Response:
            form = await client.get("/ui/sign-in")
            return await client.post(
                "/ui/sign-in",
                data={
                    "csrf_token": csrf_of(form.text),
                    "person_id": manager.person_id,
                    "password": password,
                },
            )

        assert "is wrong" in (await attempt("nope-1")).text
        assert "is wrong" in (await attempt("nope-2")).text
        third = await attempt("nope-3")  # the lockout threshold in this test is 3
        assert third.status_code == 401 and "locked" in third.text
        right = await attempt(PASSWORD)
        assert right.status_code == 401 and "locked" in right.text, "locked even when right"
        async with bench.engine.connect() as conn:
            row = (
                await conn.execute(select(people).where(people.c.person_id == manager.person_id))
            ).one()
        assert row.locked_until > datetime.now(UTC) + timedelta(seconds=800)

        # The lock ends by itself (moved into the past here), or by `churnwatch people unlock`.
        async with bench.engine.begin() as conn:
            await conn.execute(
                update(people)
                .where(people.c.person_id == manager.person_id)
                .values(locked_until=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert (await attempt(PASSWORD)).status_code == 303


async def test_sign_out_deletes_the_session_and_its_csrf_token_is_stale(bench: Bench) -> None:
    manager = await bench.person()
    task = bench.reminder(manager)
    await bench.store(task)
    async with bench.browser() as client:
        csrf = await sign_in(client, manager.person_id)
        token = client.cookies["cw_session"]
        out = await client.post("/ui/sign-out", data={"csrf_token": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in"
        async with bench.engine.connect() as conn:
            left = await conn.scalar(
                select(func.count())
                .select_from(web_sessions)
                .where(web_sessions.c.person_id == manager.person_id)
            )
        assert left == 0
        # The old cookie and its token no longer work.
        client.cookies.set("cw_session", token, path="/ui")
        assert (await client.get("/ui/")).status_code == 303
        stale = await client.post(f"/ui/tasks/{task.task_id}/claim", data={"csrf_token": csrf})
        assert stale.status_code == 403
    # A new session's forms refuse the old session's token.
    async with bench.browser() as client:
        await sign_in(client, manager.person_id)
        refused = await client.post(f"/ui/tasks/{task.task_id}/claim", data={"csrf_token": csrf})
        assert refused.status_code == 400
    assert (await bench.task(task.task_id))["status"] == "queued"


async def test_idle_and_absolute_session_expiry(bench: Bench) -> None:
    manager = await bench.person()
    async with bench.browser() as client:
        await sign_in(client, manager.person_id)
        async with bench.engine.begin() as conn:
            await conn.execute(
                update(web_sessions)
                .where(web_sessions.c.person_id == manager.person_id)
                .values(last_seen_at=datetime.now(UTC) - timedelta(hours=9))
            )
        assert (await client.get("/ui/")).status_code == 303  # idle > 8 h
        await sign_in(client, manager.person_id)
        async with bench.engine.begin() as conn:
            await conn.execute(
                update(web_sessions)
                .where(web_sessions.c.person_id == manager.person_id)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert (await client.get("/ui/")).status_code == 303


# --- My day and the call actions -------------------------------------------------------------


async def test_my_day_lists_reminders_by_suspension_with_a_countdown(bench: Bench) -> None:
    manager = await bench.person()
    other = await bench.person()
    late = bench.reminder(manager, in_hours=30)
    soon = bench.reminder(manager, in_hours=5.2)
    theirs = bench.reminder(other, in_hours=1)
    calls = [bench.retention(manager, priority=p) for p in (10, 90, 50)]
    await bench.store(late, soon, theirs, *calls)
    async with bench.browser() as client:
        await sign_in(client, manager.person_id)
        page = (await client.get("/ui/")).text
    assert page.index(str(soon.task_id)) < page.index(str(late.task_id))
    assert str(theirs.task_id) not in page, "another manager's reminder"
    assert "in 5 h 12 min" in page and "in 1 d 6 h 0 min" in page
    # Today's calls in the queue's order, with band and the reasons in the page's language.
    order = [page.index(f"call-{c.task_id}") for c in (calls[1], calls[2], calls[0])]
    assert order == sorted(order)
    assert "Calls to another network" in page and ">high<" in page
    assert "0 of 10 done" in page
    # Today's warnings by type.
    assert re.search(r'<span class="count">2</span> Pre-suspension reminder', page)
    assert re.search(r'<span class="count">3</span> Retention', page)


async def test_calls_are_capped_by_the_daily_norm(env: dict[str, Any]) -> None:
    settings = OutreachSettings(**env, workbench_daily_calls=2)
    async with workbench(settings, base_time()) as b:
        manager = await b.person()
        calls = [b.retention(manager, priority=p) for p in (1, 2, 3)]
        await b.store(*calls)
        async with b.browser() as client:
            await sign_in(client, manager.person_id)
            page = (await client.get("/ui/")).text
        assert f"call-{calls[2].task_id}" in page and f"call-{calls[1].task_id}" in page
        assert f"call-{calls[0].task_id}" not in page


async def test_claim_start_and_outcome_go_through_the_call_queue(bench: Bench) -> None:
    manager = await bench.person()
    task = bench.reminder(manager)
    await bench.store(task)
    async with bench.browser() as client:
        csrf = await sign_in(client, manager.person_id)
        claimed = await client.post(f"/ui/tasks/{task.task_id}/claim", data={"csrf_token": csrf})
        assert claimed.status_code == 303
        assert claimed.headers["location"] == (
            f"/ui/subscribers/{task.subscriber_id}?done=claimed#task-{task.task_id}"
        )
        card = await client.get(claimed.headers["location"])
        assert "The call is yours now." in card.text and f"outcome-{task.task_id}" in card.text
        row = await bench.task(task.task_id)
        assert (row["status"], row["assigned_to"]) == ("assigned", manager.manager_id)

        started = await client.post(f"/ui/tasks/{task.task_id}/start", data={"csrf_token": csrf})
        assert started.status_code == 303
        done = await client.post(
            f"/ui/tasks/{task.task_id}/outcome",
            data={
                "csrf_token": csrf,
                "outcome": "reached",
                "note": "will pay today",
                "next": "/ui/",
            },
        )
        assert done.status_code == 303 and done.headers["location"] == "/ui/?done=recorded"
    row = await bench.task(task.task_id)
    assert (row["status"], row["outcome"]) == ("completed", "reached")
    assert [(t["to_status"], t["actor"]) for t in row["transitions"]][-3:] == [
        ("assigned", manager.manager_id),
        ("in_progress", manager.manager_id),
        ("completed", manager.manager_id),
    ]
    async with bench.engine.connect() as conn:
        published = (
            await conn.execute(
                select(outbox.c.payload).where(
                    outbox.c.payload["task_id"].astext == str(task.task_id)
                )
            )
        ).all()
        assert len(published) == 1
        # The KPI sees it once the suspension has passed.
        start, end = month_bounds(bench.clock.now().strftime("%Y-%m"), bench.settings.zone)
        later = bench.clock.now() + timedelta(hours=6)
        counts = await reminder_counts(conn, start=start, end=end, now=later)
    assert counts.get("diamond", (0, 0))[0] >= 1


async def test_a_call_claimed_by_someone_else_is_a_409_and_changes_nothing(bench: Bench) -> None:
    lead = await bench.person(Role.TEAM_LEAD)
    first = await bench.person(team_lead=lead.person_id)
    task = bench.reminder(first)
    await bench.store(task)
    async with bench.browser() as a, bench.browser() as b:
        csrf_a = await sign_in(a, first.person_id)
        csrf_b = await sign_in(b, lead.person_id)
        assert (
            await a.post(f"/ui/tasks/{task.task_id}/claim", data={"csrf_token": csrf_a})
        ).status_code == 303
        again = await b.post(f"/ui/tasks/{task.task_id}/claim", data={"csrf_token": csrf_b})
        assert again.status_code == 409 and "already assigned" in again.text
        outcome = await b.post(
            f"/ui/tasks/{task.task_id}/outcome", data={"csrf_token": csrf_b, "outcome": "reached"}
        )
        assert outcome.status_code == 409
    row = await bench.task(task.task_id)
    assert (row["status"], row["assigned_to"]) == ("assigned", first.manager_id)


async def test_outcome_form_choices_map_to_the_outcome_path(bench: Bench) -> None:
    manager = await bench.person()
    async with bench.browser() as client:
        csrf = await sign_in(client, manager.person_id)

        async def work(**form: str) -> tuple[httpx.Response, uuid.UUID]:
            task = bench.retention(manager)
            await bench.store(task)
            await client.post(f"/ui/tasks/{task.task_id}/claim", data={"csrf_token": csrf})
            answer = await client.post(
                f"/ui/tasks/{task.task_id}/outcome", data={"csrf_token": csrf, **form}
            )
            return answer, task.task_id

        answer, task_id = await work(outcome="offer_accepted", offer="data_bundle")
        row = await bench.task(task_id)
        assert answer.status_code == 303 and row["outcome"] == "offer_accepted"
        assert "data_bundle" in row["transitions"][-1]["reason"]

        answer, task_id = await work(outcome="offer_accepted")  # which offer?
        assert answer.status_code == 422 and (await bench.task(task_id))["status"] == "assigned"

        local = bench.clock.now() + timedelta(hours=2)
        answer, task_id = await work(
            outcome="callback", callback_at=local.strftime("%Y-%m-%dT%H:%M")
        )
        row = await bench.task(task_id)
        assert answer.status_code == 303
        assert (row["status"], row["callback_at"]) == ("queued", local.replace(second=0))

        answer, task_id = await work(outcome="callback", callback_at="tomorrow-ish")
        assert answer.status_code == 422

        answer, task_id = await work(outcome="do_not_contact")
        row = await bench.task(task_id)
        assert answer.status_code == 303 and row["outcome"] == "do_not_contact"
        async with bench.engine.connect() as conn:
            assert await service.get_opt_out(conn, subscriber_id=row["subscriber_id"])

        answer, task_id = await work(outcome="won_the_lottery")
        assert answer.status_code == 422 and "Choose an outcome" in answer.text


async def test_missing_or_forged_csrf_token_is_refused_and_changes_nothing(bench: Bench) -> None:
    manager = await bench.person()
    task = bench.reminder(manager)
    await bench.store(task)
    async with bench.browser() as client:
        await sign_in(client, manager.person_id)
        for form in ({}, {"csrf_token": ""}, {"csrf_token": "forged"}):
            answer = await client.post(f"/ui/tasks/{task.task_id}/claim", data=form)
            assert answer.status_code == 400, form
            assert "text/html" in answer.headers["content-type"]
            assert "no valid security token" in answer.text and "Nothing was changed" in answer.text
    assert (await bench.task(task.task_id))["status"] == "queued"


async def test_another_managers_subscriber_and_task_are_403(bench: Bench) -> None:
    a, b = await bench.person(), await bench.person()
    theirs = bench.reminder(b)
    await bench.store(theirs)
    async with bench.browser() as client:
        csrf = await sign_in(client, a.person_id)
        card = await client.get(f"/ui/subscribers/{theirs.subscriber_id}")
        assert card.status_code == 403 and "another account manager" in card.text
        for action, form in (
            ("claim", {}),
            ("start", {}),
            ("outcome", {"outcome": "reached"}),
        ):
            answer = await client.post(
                f"/ui/tasks/{theirs.task_id}/{action}", data={"csrf_token": csrf, **form}
            )
            assert answer.status_code == 403, action
        reveal = await client.post(
            f"/ui/subscribers/{theirs.subscriber_id}/reveal", data={"csrf_token": csrf}
        )
        assert reveal.status_code == 403 and PHONE not in reveal.text
    assert (await bench.task(theirs.task_id))["status"] == "queued"


async def test_unknown_task_and_subscriber_are_404_pages(bench: Bench) -> None:
    manager = await bench.person()
    async with bench.browser() as client:
        csrf = await sign_in(client, manager.person_id)
        for path in (f"/ui/tasks/{uuid.uuid4()}/claim", "/ui/tasks/not-a-uuid/outcome"):
            answer = await client.post(path, data={"csrf_token": csrf, "outcome": "reached"})
            assert answer.status_code == 404 and "text/html" in answer.headers["content-type"]
        assert (await client.get("/ui/subscribers/S-nobody-at-all")).status_code == 404
        assert (await client.get(f"/ui/tasks/{uuid.uuid4()}")).status_code == 404
        assert (await client.get("/ui/no/such/page")).status_code == 404


async def test_oversize_and_non_form_bodies_are_refused(bench: Bench) -> None:
    manager = await bench.person()
    task = bench.reminder(manager)
    await bench.store(task)
    async with bench.browser() as client:
        csrf = await sign_in(client, manager.person_id)
        await client.post(f"/ui/tasks/{task.task_id}/claim", data={"csrf_token": csrf})
        big = await client.post(
            f"/ui/tasks/{task.task_id}/outcome",
            data={"csrf_token": csrf, "outcome": "reached", "note": "x" * MAX_FORM_BYTES},
        )
        assert big.status_code == 413 and "too large" in big.text
        # Over the service's own 1 MiB limit too: still the page, not the API's JSON.
        huge = await client.post(
            f"/ui/tasks/{task.task_id}/outcome",
            data={"csrf_token": csrf, "outcome": "reached", "note": "x" * (2 * 1024 * 1024)},
        )
        assert huge.status_code == 413 and "text/html" in huge.headers["content-type"]
        assert "too large" in huge.text
        as_json = await client.post(
            f"/ui/tasks/{task.task_id}/outcome", json={"csrf_token": csrf, "outcome": "reached"}
        )
        assert as_json.status_code == 422
        long_note = await client.post(
            f"/ui/tasks/{task.task_id}/outcome",
            data={"csrf_token": csrf, "outcome": "reached", "note": "x" * 501},
        )
        assert long_note.status_code == 422
    assert (await bench.task(task.task_id))["status"] == "assigned"


# --- the subscriber card ----------------------------------------------------------------------


async def test_card_shows_history_script_and_reveals_the_phone_audited(bench: Bench) -> None:
    manager = await bench.person()
    task = bench.retention(manager, language="zh")
    await bench.store(task)
    async with bench.browser() as client:
        csrf = await sign_in(client, manager.person_id)
        card = (await client.get(f"/ui/subscribers/{task.subscriber_id}")).text
        assert PHONE not in card and "*********123" in card
        assert "Calls to another network" in card  # the script for the top reason
        assert "not available" in card  # no directory in this test
        assert "Contact history" in card and "Retention" in card
        shown = await client.post(
            f"/ui/subscribers/{task.subscriber_id}/reveal",
            data={"csrf_token": csrf, "task_id": str(task.task_id)},
        )
        assert shown.status_code == 200 and f'href="tel:{PHONE}"' in shown.text
    async with bench.engine.connect() as conn:
        audit = (
            await conn.execute(
                select(phone_reveals).where(phone_reveals.c.subscriber_id == task.subscriber_id)
            )
        ).all()
    assert [(r.person_id, r.task_id) for r in audit] == [(manager.person_id, task.task_id)]


async def test_card_uses_the_directory_when_there_is_one(bench: Bench) -> None:
    from services.outreach.directory import (
        ActivityView,
        ReasonView,
        RiskView,
        SubscriberDirectory,
    )

    manager = await bench.person()
    task = bench.retention(manager)
    await bench.store(task)
    now = bench.clock.now()

    class Directory(SubscriberDirectory):
        def __init__(self) -> None:
            super().__init__(scoring=None, alerting=None)

        async def risk(self, subscriber_id: str) -> RiskView | None:
            return RiskView(
                score=0.82,
                band="high",
                reasons=[ReasonView(code="BILL_UP", text_en="Bill went up", text_zh="账单上涨")],
                trend=[(now - timedelta(days=d), 0.3 + d / 100) for d in (9, 5, 1)],
            )

        async def activity(self, subscriber_id: str) -> ActivityView | None:
            return ActivityView.model_validate(
                {
                    "complaints": [
                        {"at": now, "category": "billing", "severity": "high", "resolved": False}
                    ]
                }
            )

    bench.app.state.directory = Directory()
    async with bench.browser() as client:
        await sign_in(client, manager.person_id)
        card = (await client.get(f"/ui/subscribers/{task.subscriber_id}")).text
        assert "82%" in card and "Bill went up" in card and "<polyline" in card
        assert "billing" in card
        client.cookies.set("cw_lang", "zh", path="/ui")
        card = (await client.get(f"/ui/subscribers/{task.subscriber_id}")).text
        assert "账单上涨" in card and "客户卡片" in card


# --- the team lead's page ---------------------------------------------------------------------


async def test_team_page_per_manager_and_tier_with_misses_and_csv(bench: Bench) -> None:
    lead = await bench.person(Role.TEAM_LEAD)
    mine = await bench.person(team_lead=lead.person_id, name="Li Na")
    outsider = await bench.person()
    done = bench.reminder(mine, in_hours=2)
    missed = bench.reminder(mine, in_hours=1)
    ahead = bench.reminder(mine, in_hours=48)
    elsewhere = bench.reminder(outsider, in_hours=1)
    await bench.store(done, missed, ahead, elsewhere)
    async with bench.browser() as manager, bench.browser() as boss:
        csrf = await sign_in(manager, mine.person_id)
        assert (await manager.get("/ui/team")).status_code == 403
        for action, form in (("claim", {}), ("outcome", {"outcome": "retained"})):
            await manager.post(
                f"/ui/tasks/{done.task_id}/{action}", data={"csrf_token": csrf, **form}
            )
        await sign_in(boss, lead.person_id)
        before = (await boss.get("/ui/team")).text
        assert "Li Na" in before and str(outsider.manager_id) not in before
        assert re.search(r'class="reminders-ahead">1/3<', before)
        assert re.search(r'class="saves">1<', before)
        bench.clock.at += timedelta(hours=3)  # both near suspensions have happened
        after = (await boss.get("/ui/team")).text
        assert re.search(r'class="reminder-rate">50% \(1/2\)<', after)
        assert missed.subscriber_id in after.split('id="misses"')[1]
        exported = await boss.get("/ui/team.csv")
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        row = next(r for r in rows if r["manager_id"] == mine.manager_id)
        assert (row["tier"], row["reminded_before_suspension"], row["suspended"]) == (
            "diamond",
            "1",
            "2",
        )
        assert (row["saves"], row["calls_today"], row["daily_norm"]) == ("1", "1", "10")
        assert (await boss.get("/ui/team", params={"period": "2026-13"})).status_code == 422


async def test_escalated_reminders_show_on_the_team_page(bench: Bench) -> None:
    lead = await bench.person(Role.TEAM_LEAD)
    mine = await bench.person(team_lead=lead.person_id)
    task = bench.reminder(mine, in_hours=2)
    await bench.store(task)
    async with bench.engine.begin() as conn:
        await conn.execute(
            update(tasks_table)
            .where(tasks_table.c.task_id == task.task_id)
            .values(escalated_at=bench.clock.now())
        )
    async with bench.browser() as boss:
        await sign_in(boss, lead.person_id)
        page = (await boss.get("/ui/team")).text
    assert task.subscriber_id in page.split('id="escalations"')[1].split("</section>")[0]


async def test_ensure_person_is_idempotent(bench: Bench) -> None:
    from services.outreach.workbench import ensure_person

    name = fresh("demo")
    async with bench.engine.begin() as conn:
        made = await ensure_person(
            conn, person_id=name, password=PASSWORD, role="admin", now=datetime.now(UTC)
        )
        again = await ensure_person(
            conn, person_id=name, password="another-password", role="admin", now=datetime.now(UTC)
        )
    assert made == again
    async with bench.browser() as client:
        await sign_in(client, name)


async def test_an_admin_sees_every_manager(bench: Bench) -> None:
    admin = await bench.person(Role.ADMIN)
    manager = await bench.person()
    task = bench.reminder(manager)
    await bench.store(task)
    async with bench.browser() as client:
        await sign_in(client, admin.person_id)
        assert (await client.get(f"/ui/subscribers/{task.subscriber_id}")).status_code == 200


# --- language ---------------------------------------------------------------------------------


async def test_language_from_accept_language_and_the_toggle(bench: Bench) -> None:
    manager = await bench.person()
    async with bench.browser(**{"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"}) as client:
        assert "登录" in (await client.get("/ui/sign-in")).text
        await sign_in(client, manager.person_id)
        page = await client.get("/ui/")
        assert "我的一天" in page.text and 'lang="zh-Hans"' in page.text
        toggle = await client.get("/ui/lang", params={"to": "en", "next": "/ui/"})
        assert toggle.status_code == 303 and toggle.headers["location"] == "/ui/"
        assert "My day" in (await client.get("/ui/")).text
        forbidden = await client.get("/ui/team")
        assert forbidden.status_code == 403 and "This page is for team leads." in forbidden.text


def test_accept_language_parsing() -> None:
    assert i18n.from_accept_language("") == "en"
    assert i18n.from_accept_language("fr-FR,zh;q=0.5,en;q=0.4") == "zh"
    assert i18n.from_accept_language("en-GB,zh-TW;q=0.9") == "en"
    assert i18n.from_accept_language("zh;q=0, en;q=0.1") == "en"
    assert i18n.from_accept_language("zh;q=bogus") == "en"


def test_every_string_has_both_languages_and_every_template_key_exists() -> None:
    for key, (en, zh) in i18n.STRINGS.items():
        assert en and zh, key
        assert re.findall(r"\{(\w+)\}", en) == re.findall(r"\{(\w+)\}", zh), key
    from services.outreach.workbench.web import HERE

    used = set()
    for template in (HERE / "templates").glob("*.html"):
        text = template.read_text(encoding="utf-8")
        used.update(re.findall(r"\bt\('([a-z0-9_]+)'\s*[,)]", text))
    for module in HERE.glob("*.py"):
        text = module.read_text(encoding="utf-8")
        used.update(re.findall(r'PageError\(\s*\d+, "([a-z0-9_]+)"', text))
        used.update(re.findall(r'key = "([a-z0-9_]+)" if', text))
    assert used and not {key for key in used if key not in i18n.STRINGS}


# --- the CLI ----------------------------------------------------------------------------------


def test_people_cli_create_list_unlock(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from churnwatch.cli import app

    monkeypatch.setenv("DATABASE_URL", env["database_url"])
    runner = CliRunner()
    lead, manager = fresh("lead"), fresh("am")
    made = runner.invoke(
        app,
        ["people", "create", lead, "--role", "team_lead", "--name", "Zhang Wei"],
        input="pw-12345678\n",
    )
    assert made.exit_code == 0, made.output
    made = runner.invoke(
        app,
        [
            "people",
            "create",
            manager,
            "--role",
            "manager",
            "--manager-id",
            fresh("AM"),
            "--team-lead",
            lead,
            "--password-stdin",
        ],
        input="pw-12345678\n",
    )
    assert made.exit_code == 0, made.output
    short = runner.invoke(app, ["people", "create", fresh("x"), "--role", "admin"], input="short\n")
    assert short.exit_code != 0 and "at least 8" in short.output
    listed = runner.invoke(app, ["people", "list"])
    assert manager in listed.output and "Zhang Wei" in listed.output
    assert "argon2" not in listed.output
    assert runner.invoke(app, ["people", "unlock", manager]).exit_code == 0
    assert runner.invoke(app, ["people", "unlock", "nobody-" + manager]).exit_code == 1
