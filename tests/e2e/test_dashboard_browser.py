"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against Django's live server."""
from __future__ import annotations

import importlib
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group, User
from django.db import connections

from jobs import services
from portico.ports.job import Job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get update && apt-get install -y chromium  (scripts/test.sh does this)"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery staple"


@pytest.fixture
def operator_login(empty_store) -> tuple[str, str]:
    importlib.import_module("jobs.migrations.0004_dashboard").create_roles(django_apps, None)
    user = User.objects.create_user(f"ops-{uuid4().hex[:6]}", password=PASSWORD)
    user.groups.add(Group.objects.get(name="operator"))
    return user.username, PASSWORD


@pytest.fixture
def seeded(empty_store) -> dict:
    """A running job in "emails" and two dead letters in "payments"."""
    queue = services.job_queue()
    running = Job(id=uuid4(), queue_name="emails", job_type="email.send", payload={"to": "a@example.com"})
    queue.enqueue_sync(running)
    (claim,) = queue.dequeue_many_sync("emails", 1)
    dead = [dead_letter(queue, "payments", f"TimeoutError: gateway timed out after {n}s") for n in (30, 45)]
    return {"claim": claim, "dead": dead}


@pytest.fixture
def db_thread() -> Iterator[ThreadPoolExecutor]:
    """One thread for the test's own database calls, its connection closed at the end."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="test-db")
    try:
        yield executor
    finally:
        executor.submit(connections.close_all).result()
        executor.shutdown()


@pytest.fixture
def browser_page(live_server, operator_login, seeded) -> Iterator:
    """A fresh page of a headless chromium; the test fails, never skips, without chromium.

    Playwright's sync API keeps an event loop on this thread, where Django refuses
    database calls: data is seeded before it starts, and the test reaches the database
    through ``db_thread`` while it runs.
    """
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.fail(f"chromium is not installed at {CHROMIUM}; install it with: {INSTALL}", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(10_000)
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
                    if message.type == "error" else None)
            yield page, problems
        finally:
            browser.close()


def sign_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/")
    assert "/accounts/login/" in page.url  # every page needs a login
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def dead_letter(queue, queue_name: str, error: str) -> UUID:
    job = Job(id=uuid4(), queue_name=queue_name, job_type="payments.charge", payload={"order": 7},
              max_retries=0)
    queue.enqueue_sync(job)
    (claim,) = queue.dequeue_many_sync(queue_name, 1)
    queue.reject_sync(job.id, requeue=True, error_message=error, claim=claim)
    return job.id


def test_an_operator_watches_counts_change_live_and_requeues_a_dead_letter_job(browser_page, live_server,
                                                                               operator_login, seeded, db_thread):
    page, problems = browser_page
    base = live_server.url
    queue = services.job_queue()
    claim, dead = seeded["claim"], seeded["dead"]

    sign_in(page, base, *operator_login)
    completed = page.locator('tr[data-queue="emails"] td[data-status="completed"]')
    assert completed.inner_text() == "0"
    assert page.locator('tr[data-queue="emails"] td[data-status="running"]').inner_text() == "1"
    ARTIFACTS.mkdir(exist_ok=True)

    # The job completes (through the queue, as a worker would); the page shows it by itself.
    db_thread.submit(queue.acknowledge_sync, claim.id, {"sent": True}, claim=claim).result()
    page.wait_for_function(
        "() => document.querySelector('tr[data-queue=\"emails\"] td[data-status=\"completed\"]')"
        ".textContent.trim() === '1'", timeout=3_000)
    assert page.locator('tr[data-queue="emails"] td[data-status="running"]').inner_text() == "0"
    assert page.locator('tr[data-queue="payments"] .badge-error').inner_text() == "2 dead"
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

    page.click("nav.mainnav >> text=Dead letter")
    page.wait_for_url(re.compile(r".*/dead-letter/$"))
    assert page.locator("[data-total]").inner_text() == "2"
    assert page.locator("table.groups tbody tr").count() == 1  # one fingerprint for both timeouts
    assert "TimeoutError: gateway timed out after <n>s" in page.locator("table.groups").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-dead-letter.png"), full_page=True)

    row = page.locator(f"tr#job-{dead[0]}")
    assert row.get_attribute("data-status") == "dead_letter"
    row.locator("button", has_text="Requeue").click()
    page.wait_for_selector(f'tr#job-{dead[0]}[data-status="pending"]')
    assert page.locator(f'tr#job-{dead[0]}[data-status="dead_letter"]').count() == 0
    assert "Requeued" in page.locator(f"tr#job-{dead[0]}").inner_text()
    page.wait_for_function("() => document.querySelector('[data-total]').textContent.trim() === '1'")
    # The group table was swapped out of band, in its place above the jobs, with the new count.
    assert page.locator("#failure-summary table.groups tbody td.num").inner_text() == "1"
    assert page.locator("table.jobs #failure-summary, table.jobs table.groups").count() == 0
    assert page.locator(f'tr#job-{dead[1]}[data-status="dead_letter"]').count() == 1
    assert db_thread.submit(queue.get_job_sync, dead[0]).result().status.value == "pending"
    page.screenshot(path=str(ARTIFACTS / "dashboard-dead-letter-requeued.png"), full_page=True)

    page.goto(f"{base}/")
    page.wait_for_function(
        "() => document.querySelector('tr[data-queue=\"payments\"] td[data-status=\"pending\"]')"
        ".textContent.trim() === '1'")
    assert problems == []  # no CSP violation, no script error
