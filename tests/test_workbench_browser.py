"""The workbench in a real Chromium (Debian's ``chromium``, driven by Playwright).

The outreach app is served by uvicorn in this process on a free 127.0.0.1 port
(routes only, no background loops), on the session PostgreSQL. Without
``/usr/bin/chromium`` these tests skip, unless ``CHURNWATCH_REQUIRE_BROWSER=1``
(CI), where they fail. Synchronisation is Playwright's auto-waiting, never a
sleep. With ``WORKBENCH_SCREENSHOTS=<dir>`` (``make screenshots``) they save
PNGs of My day, the subscriber card and the team page there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn

from churnwatch.embedded import free_port
from services.outreach.directory import ActivityView, ReasonView, RiskView, SubscriberDirectory
from services.outreach.settings import OutreachSettings
from services.outreach.workbench.accounts import Person, Role
from tests.conftest import Stack, fresh_env
from tests.helpers import eventually
from tests.test_workbench import PASSWORD, Bench, base_time, workbench

CHROMIUM = os.environ.get("CHURNWATCH_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("CHURNWATCH_REQUIRE_BROWSER") == "1"
SHOTS = os.environ.get("WORKBENCH_SCREENSHOTS")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
    if REQUIRED:
        raise RuntimeError(
            f"CHURNWATCH_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM} "
            "(apt-get install chromium)"
        )
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium; CI sets "
        "CHURNWATCH_REQUIRE_BROWSER=1 and installs it)",
        allow_module_level=True,
    )

from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402

if SHOTS:
    Path(SHOTS).mkdir(parents=True, exist_ok=True)


class FakeDirectory(SubscriberDirectory):
    """Scoring's and alerting's answers for the card (risk trend, recent activity)."""

    def __init__(self, bench: Bench) -> None:
        super().__init__(scoring=None, alerting=None)
        self.bench = bench

    async def risk(self, subscriber_id: str) -> RiskView | None:
        """A rising risk with two reasons."""
        now = self.bench.clock.now()
        return RiskView(
            score=0.86,
            band="high",
            reasons=[
                ReasonView(
                    code="COMPETITOR_CALLS_UP",
                    text_en="Calls to other networks up 40 %",
                    text_zh="与其他网络的通话增加40%",
                ),
                ReasonView(code="BILL_UP", text_en="Bill up 35 %", text_zh="账单上涨35%"),
            ],
            trend=[
                (now - timedelta(days=d), s)
                for d, s in ((28, 0.31), (21, 0.38), (14, 0.52), (7, 0.71), (0, 0.86))
            ],
        )

    async def activity(self, subscriber_id: str) -> ActivityView | None:
        """A bill, a late payment, a stop-notice and a complaint."""
        now = self.bench.clock.now()
        return ActivityView.model_validate(
            {
                "bills": [
                    {"at": now - timedelta(days=9), "period": "2026-11", "amount_due": "412.50"}
                ],
                "payments": [{"at": now - timedelta(days=40), "amount": "298.00", "late": True}],
                "stop_notices": [
                    {
                        "at": now - timedelta(hours=1),
                        "reason": "arrears",
                        "suspension_at": now + timedelta(hours=5),
                        "amount_to_pay": "412.50",
                    }
                ],
                "complaints": [
                    {"at": now - timedelta(days=3), "category": "billing", "severity": "high"}
                ],
            }
        )


@dataclass
class Served:
    """The served workbench, its data, and a Chromium."""

    bench: Bench
    url: str
    browser: Browser
    lead: Person
    manager: Person
    other: Person

    async def page(self, *, locale: str = "en-US", width: int = 1280) -> Page:
        """A new page in a fresh context (its own cookies)."""
        context = await self.browser.new_context(
            locale=locale, viewport={"width": width, "height": 900}, base_url=self.url
        )
        return await context.new_page()

    async def signed_in(self, person: Person, **kwargs: Any) -> Page:
        """A page signed in as ``person``, on My day."""
        page = await self.page(**kwargs)
        await page.goto("/ui/")
        await page.get_by_label("Sign-in name").fill(person.person_id)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="My day")).to_be_visible()
        return page


async def shot(page: Page, name: str) -> None:
    """Save a full-page screenshot when ``WORKBENCH_SCREENSHOTS`` names a directory."""
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(stack: Stack) -> AsyncIterator[Served]:
    settings = OutreachSettings(**fresh_env(stack), workbench_lockout_failures=3)
    async with workbench(settings, base_time()) as bench:
        bench.app.state.directory = FakeDirectory(bench)
        lead = await bench.person(Role.TEAM_LEAD, name="Zhang Wei")
        manager = await bench.person(team_lead=lead.person_id, name="Li Na")
        other = await bench.person(team_lead=lead.person_id, name="Chen Jie")
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                bench.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
            )
        )
        serving = asyncio.create_task(server.serve())
        await eventually(lambda: asyncio.sleep(0, server.started), what="uvicorn started")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                yield Served(bench, f"http://127.0.0.1:{port}", browser, lead, manager, other)
            finally:
                await browser.close()
                server.should_exit = True
                await serving


async def test_a_manager_works_a_vip_reminder_and_the_team_kpi_moves(served: Served) -> None:
    bench, manager = served.bench, served.manager
    bench.clock.at = base_time()
    reminder = bench.reminder(manager, in_hours=5.2, monthly_value=Decimal("388.00"))
    later = bench.reminder(manager, in_hours=28, tier="gold")
    calls = [
        bench.retention(manager, priority=p, risk=r, monthly_value=Decimal(v), reason_codes=codes)
        for p, r, v, codes in (
            (80, 0.86, "420.00", ["COMPETITOR_CALLS_UP", "BILL_SHOCK"]),
            (60, 0.64, "260.00", ["USAGE_DOWN"]),
            (40, 0.52, "180.00", ["COMPLAINTS_UP"]),
        )
    ]
    await bench.store(reminder, later, *calls)

    lead = await served.signed_in(served.lead)
    await lead.goto("/ui/team")
    row = lead.locator(f'tr[data-manager="{manager.manager_id}"][data-tier="diamond"]')
    await expect(row.locator(".reminders-ahead")).to_have_text("0/1")

    page = await served.signed_in(manager)
    due = page.locator(f"#reminder-{reminder.task_id}")
    await expect(due).to_contain_text(reminder.subscriber_id)
    await expect(due.locator(".countdown")).to_have_text("in 5 h 12 min")
    await shot(page, "my-day")
    await due.get_by_role("button", name="Claim").click()

    # Claiming opens the subscriber card at the call: script, masked phone, outcome form.
    await expect(page.get_by_role("status")).to_have_text("The call is yours now.")
    await expect(page.locator("#phone .masked")).to_have_text("*********123")
    await page.get_by_role("button", name="Reveal to call").click()
    await expect(page.locator("#phone a.phone")).to_have_text("+15550007123")
    await expect(page.locator("svg.trend")).to_be_visible()
    await shot(page, "subscriber-card")
    task = page.locator(f"#task-{reminder.task_id}")
    await task.get_by_role("button", name="Start call").click()
    await expect(page.get_by_role("status")).to_have_text("Call started.")
    task = page.locator(f"#task-{reminder.task_id}")
    await task.get_by_label("Reached", exact=True).check()
    await task.get_by_label("Note").fill("Reminded; will pay today")
    await task.get_by_role("button", name="Save outcome").click()
    await expect(page.get_by_role("status")).to_have_text("Outcome recorded.")
    await expect(page.locator("#history")).to_contain_text("Reached")

    await lead.reload()
    await expect(row.locator(".reminders-ahead")).to_have_text("1/1")
    await expect(row.locator(".calls-today")).to_have_text("1/10")
    bench.clock.at += timedelta(hours=6)  # the suspension has happened: the KPI counts it
    await lead.reload()
    await expect(row.locator(".reminder-rate")).to_have_text("100% (1/1)")
    await shot(lead, "team")
    phone = await served.signed_in(manager, width=390)
    await shot(phone, "my-day-phone")


async def test_a_form_without_a_valid_csrf_token_is_refused(served: Served) -> None:
    bench = served.bench
    task = bench.reminder(served.other, in_hours=3)
    await bench.store(task)
    page = await served.signed_in(served.other)
    row = page.locator(f"#reminder-{task.task_id}")
    await row.locator('input[name="csrf_token"]').evaluate("e => e.value = 'forged'")
    await row.get_by_role("button", name="Claim").click()
    await expect(page.locator("#error-message")).to_contain_text("no valid security token")
    await expect(page.locator(".status")).to_have_text("HTTP 400")
    assert (await bench.task(task.task_id))["status"] == "queued"
    await page.go_back()
    await page.reload()
    row = page.locator(f"#reminder-{task.task_id}")
    await row.locator('input[name="csrf_token"]').evaluate("e => e.remove()")
    await row.get_by_role("button", name="Claim").click()
    await expect(page.locator(".status")).to_have_text("HTTP 400")
    assert (await bench.task(task.task_id))["status"] == "queued"


async def test_manager_a_gets_403_on_manager_bs_subscriber(served: Served) -> None:
    bench = served.bench
    theirs = bench.reminder(served.other, in_hours=4)
    await bench.store(theirs)
    page = await served.signed_in(served.manager)
    response = await page.goto(f"/ui/subscribers/{theirs.subscriber_id}")
    assert response is not None and response.status == 403
    await expect(page.locator("#error-message")).to_have_text(
        "This subscriber or task belongs to another account manager."
    )
    await expect(page.locator(f"#reminder-{theirs.task_id}")).to_have_count(0)


async def test_the_language_toggle_and_accept_language(served: Served) -> None:
    page = await served.signed_in(served.manager)
    await page.locator("#lang-toggle").click()
    await expect(page.get_by_role("heading", name="我的一天")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
    await shot(page, "my-day-zh")
    await page.locator("#lang-toggle").click()
    await expect(page.get_by_role("heading", name="My day")).to_be_visible()

    chinese = await served.page(locale="zh-CN")
    await chinese.goto("/ui/")
    await expect(chinese.get_by_role("heading", name="登录")).to_be_visible()


async def test_lockout_after_failed_sign_ins(served: Served) -> None:
    person = await served.bench.person(name="Locked Out")
    page = await served.page()
    await page.goto("/ui/sign-in")
    for attempt in range(3):
        await page.get_by_label("Sign-in name").fill(person.person_id)
        await page.get_by_label("Password").fill(f"wrong-{attempt}")
        await page.get_by_role("button", name="Sign in").click()
        expected = "locked" if attempt == 2 else "the name or the password is wrong"
        await expect(page.locator("#sign-in-message")).to_contain_text(expected)
    # Even the right password is refused while the lock lasts.
    await page.get_by_label("Sign-in name").fill(person.person_id)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#sign-in-message")).to_contain_text("locked")
    await expect(page.get_by_role("heading", name="My day")).to_have_count(0)


async def test_sign_out_ends_the_session(served: Served) -> None:
    page = await served.signed_in(served.manager)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.goto("/ui/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
