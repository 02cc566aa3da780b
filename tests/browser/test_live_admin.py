"""Live admin pages in a real Chromium: a running task's progress bar and
timeline move without a reload; the pause switch and a hidden tab fetch nothing;
a selected row stays selected while the list updates."""

from __future__ import annotations

import pytest

from tasks_app import rollups, services
from tasks_app.models import TaskRecord
from tasks_app.tests.ledger_runs import run
from tests.browser import test_admin_browser as admin_browser
from tests.browser.test_admin_browser import log_in, shot
from tests.harness import wait_for

browser_page = admin_browser.browser_page  # the same Chromium fixture

State = TaskRecord.State
LIVE = "/admin/tasks_app/taskrecord/live/"


def live_requests(page) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if LIVE in r.url else None)
    return seen


def wait_requests(page, requests: list, more_than: int, seconds: float) -> None:
    """Wait, letting Playwright deliver its events, until more requests came."""
    for _ in range(int(seconds * 10)):
        if len(requests) > more_than:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"no request to {LIVE} within {seconds} s")


def progress(page) -> int:
    bar = page.locator("#content-main .claw-progress").first
    return int(bar.get_attribute("aria-valuenow") or 0)


@pytest.mark.browser
@pytest.mark.worker
def test_a_running_task_moves_on_its_page_without_a_reload(
    transactional_db, live_server, celery_worker, browser_page, django_user_model
):
    django_user_model.objects.create_superuser("ops", password="ops-live-pass-1")
    record = services.submit("tests.progress_loop", args=[60, 0.25])  # ~15 s
    wait_for(
        lambda: TaskRecord.objects.filter(
            pk=record.pk, progress_current__gt=0
        ).exists(),
        30,
        message="the task to report progress",
    )
    page = browser_page
    base = live_server.url
    requests = live_requests(page)
    log_in(page, base, "ops", "ops-live-pass-1", then="/admin/")
    page.goto(f"{base}/admin/tasks_app/taskrecord/{record.pk}/change/")
    page.evaluate("window.__sameDocument = true")
    first, rows = progress(page), page.locator("table.claw-timeline tr").count()

    page.wait_for_function(
        "first => Number(document.querySelector('#content-main .claw-progress')"
        ".getAttribute('aria-valuenow')) > first",
        arg=first,
        timeout=15_000,
    )
    assert progress(page) > first
    assert page.locator("table.claw-timeline tr").count() > rows  # new events
    assert page.evaluate("window.__sameDocument") is True  # no reload
    shot(page, "live-01-progress-moving")

    # paused: nothing fetched, the bar stands still
    page.click("#claw-live-toggle")
    assert page.inner_text("#claw-live-toggle") == "Resume live updates"
    page.wait_for_timeout(500)  # a request already in flight may finish
    before, held = len(requests), progress(page)
    page.wait_for_timeout(4000)  # more than one polling interval (3 s)
    assert len(requests) == before and progress(page) == held
    page.click("#claw-live-toggle")
    wait_requests(page, requests, before, 5)

    # a hidden tab fetches nothing; shown again, it catches up at once
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    page.wait_for_timeout(500)  # a request already in flight may finish
    before = len(requests)
    page.wait_for_timeout(4000)
    assert len(requests) == before
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    wait_requests(page, requests, before, 2)  # at once, not after an interval

    # the list: a selected row stays selected while its state changes in place
    page.goto(f"{base}/admin/tasks_app/taskrecord/?name=tests.progress_loop")
    page.evaluate("window.__sameDocument = true")
    box = f"#result_list input[value='{record.pk}']"
    page.check(box)
    cell = f"[data-claw-record='{record.pk}'][data-claw-field='state']"
    page.wait_for_function(
        f"document.querySelector(\"{cell}\").textContent.includes('Succeeded')",
        timeout=30_000,
    )
    assert page.is_checked(box)
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "live-02-list-updated")

    # the dashboard, with data
    rollups.fold()
    page.goto(f"{base}/admin/tasks_app/taskrecord/dashboard/")
    page.wait_for_selector("#chart-hour")
    assert "tests.progress_loop" in page.inner_text("#types")
    page.evaluate("window.__sameDocument = true")
    run("succeeded", name="tests.add")  # new work, folded as beat would
    rollups.fold()
    page.wait_for_function(
        "document.querySelector('#types').textContent.includes('tests.add')",
        timeout=25_000,
    )  # the dashboard's blocks refresh in place (every 10 s)
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "live-03-dashboard")


@pytest.mark.browser
def test_the_task_list_fits_a_1366_px_screen_with_rows_of_one_height(
    transactional_db, live_server, browser_page, django_user_model
):
    django_user_model.objects.create_superuser("ops", password="ops-live-pass-1")
    for outcome in ("succeeded", "failed", "retried", "revoked", "started"):
        run(outcome, name="tests.progress_loop")
    owner = django_user_model.objects.create_user("a-rather-long-user-name-of-ops")
    failed = run(
        "failed", name="tests.always_flaky", queue="notification_default", owner=owner
    )
    TaskRecord.objects.filter(pk=failed.pk).update(
        worker="a-very-long-worker-hostname-for-the-knowledge-queue@host-0042",
        progress_current=3,
        progress_total=7,
    )
    page = browser_page
    page.set_viewport_size({"width": 1366, "height": 800})
    log_in(page, live_server.url, "ops", "ops-live-pass-1", then="/admin/")
    page.goto(f"{live_server.url}/admin/tasks_app/taskrecord/")
    page.wait_for_selector("#result_list")
    shot(page, "live-04-list-1366")

    # neither the page nor the results table (a scroll box of its own) scrolls
    overflow = page.evaluate(
        "[document.documentElement, document.querySelector('#changelist .results')]"
        ".map(e => e.scrollWidth - e.clientWidth)"
    )
    assert max(overflow) <= 0, f"{overflow} px of horizontal scrolling"
    heights = page.evaluate(
        "Array.from(document.querySelectorAll('#result_list tbody tr'))"
        ".map(r => Math.round(r.getBoundingClientRect().height))"
    )
    assert len(heights) == 6 and len(set(heights)) == 1, heights
