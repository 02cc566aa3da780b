"""Drive the admin in a real headless Chromium against a live server and worker.

Fails on any 5xx response or missing element; screenshots go to
TEST_ARTIFACTS/screenshots (printed).
"""

from __future__ import annotations

import os
import shutil

import pytest

from knowledge.tests.conftest import add_ready
from tasks_app import rollups, services
from tasks_app.models import TaskRecord
from tests.harness import wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
State = TaskRecord.State


@pytest.fixture
def browser_page(artifacts_dir):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Chromium is not installed (CI=true: .ci/run installs it)")
        pytest.skip("Chromium is not installed")
    # Playwright's sync API runs an event loop; Django must allow ORM calls here.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    shots = artifacts_dir / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {shots}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on(
            "response",
            lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 500 else None,
        )
        page.shots = shots
        page.server_errors = errors
        yield page
        browser.close()
    assert errors == [], f"server errors: {errors}"


def log_in(page, base: str, username: str, password: str, then: str = "") -> None:
    page.goto(f"{base}/admin/login/" + (f"?next={then}" if then else ""))
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


def shot(page, name: str) -> None:
    page.screenshot(path=str(page.shots / f"{name}.png"), full_page=True)


def wait_state(record: TaskRecord, state: str) -> None:
    def reached():
        record.refresh_from_db()
        return record.state == state

    wait_for(reached, 30, message=f"{record} to be {state}")


@pytest.mark.browser
@pytest.mark.worker
def test_staff_operate_tasks_from_the_admin_in_a_real_browser(
    transactional_db, live_server, celery_worker, browser_page, django_user_model
):
    django_user_model.objects.create_superuser("ops", password="ops-browser-pass-1")
    failed = services.submit("tests.fail", args=["browser"])
    queued = services.submit("tests.add", args=[1, 2], countdown=3600)
    wait_state(failed, State.FAILURE)
    page = browser_page
    base = live_server.url

    log_in(page, base, "ops", "ops-browser-pass-1")
    page.wait_for_selector("#claw-links")
    shot(page, "01-index")

    # filter the list by state
    page.goto(f"{base}/admin/tasks_app/taskrecord/")
    page.click("#changelist-filter a[href*='state__exact=FAILURE']")
    page.wait_for_selector(f"#result_list input[value='{failed.pk}']")
    assert page.locator("#result_list tbody tr").count() == 1
    shot(page, "02-failed-filter")

    # retry the failed task
    page.check(f"#result_list input[value='{failed.pk}']")
    page.select_option("select[name=action]", "retry_selected")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist li")
    assert "Retried 1 task(s)" in page.inner_text("ul.messagelist")
    shot(page, "03-retried")

    # cancel the queued one
    page.goto(f"{base}/admin/tasks_app/taskrecord/?state__exact=PENDING")
    page.check(f"#result_list input[value='{queued.pk}']")
    page.select_option("select[name=action]", "cancel_selected")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist li")
    assert "Cancelled 1 task(s)" in page.inner_text("ul.messagelist")
    queued.refresh_from_db()
    assert queued.state == State.REVOKED

    # open a timeline
    wait_state(failed, State.FAILURE)  # the retry ran and failed again
    page.goto(f"{base}/admin/tasks_app/taskrecord/{failed.pk}/change/")
    timeline = page.inner_text("table.claw-timeline")
    assert timeline.count("failed") == 2 and "started" in timeline
    shot(page, "04-timeline")

    # the workers page and the dashboard
    page.goto(f"{base}/admin/tasks_app/taskrecord/workers/")
    page.wait_for_selector("#workers")
    assert celery_worker.hostname in page.inner_text("#workers")
    shot(page, "05-workers")
    rollups.fold()  # what the periodic fold does every CLAW_ROLLUP_SECONDS
    page.goto(f"{base}/admin/tasks_app/taskrecord/dashboard/")
    page.wait_for_selector("svg.claw-chart")
    page.hover("#chart-hour .claw-slot >> nth=-1")  # values on hover (a tooltip)
    assert "finished" in page.text_content("#chart-hour .claw-slot >> nth=-1")
    assert "tests.fail" in page.inner_text("#types")
    assert "Times in" in page.inner_text("#claw-time-zone")
    assert celery_worker.hostname in page.inner_text("#live-workers")
    shot(page, "06-dashboard")


@pytest.mark.browser
def test_staff_search_a_knowledge_base_from_its_admin_page(
    transactional_db, live_server, browser_page, django_user_model
):
    from knowledge import services as knowledge

    staff = django_user_model.objects.create_superuser("kb", password="kb-pass-12345")
    kb = knowledge.create_knowledge_base(staff, name="Travel")
    add_ready(
        kb, "Great Wall", "长城是中国古代的军事防御工程。The Great Wall is very long."
    )
    add_ready(
        kb, "Fjords", "Fjords are narrow sea inlets carved by glaciers in Norway."
    )
    page = browser_page
    base = live_server.url
    log_in(
        page,
        base,
        "kb",
        "kb-pass-12345",
        f"/admin/knowledge/knowledgebase/{kb.pk}/change/",
    )

    page.fill("#kb-search input[name=q]", "glaciers carved the inlets")
    page.click("#kb-search input[type=submit]")
    page.wait_for_selector("#search-results")

    rows = page.locator("#search-results tbody tr")
    assert rows.count() == 2
    assert "Fjords" in rows.nth(0).inner_text()
    shot(page, "07-knowledge-search")


@pytest.mark.browser
def test_staff_read_a_writing_job_and_cancel_another_in_a_real_browser(
    transactional_db, live_server, browser_page, django_user_model
):
    from unittest.mock import patch

    from knowledge import services as knowledge
    from writing import jobs, sections

    staff = django_user_model.objects.create_superuser("jobs", password="jobs-pass-123")
    kb = knowledge.create_knowledge_base(staff, name="Teas")
    chunks = [
        add_ready(kb, title, text).chunks.get()
        for title, text in [
            ("Green tea", "Green tea is steamed. Steaming keeps it green."),
            ("Black tea", "Black tea is oxidised. It brews a strong cup."),
        ]
    ]
    outline = {
        "title": "Teas",
        "sections": [
            {
                "heading": c.document.title,
                "key_points": ["Made how"],
                "passages": [{"chunk_id": c.pk}],
            }
            for c in chunks
        ],
    }
    with patch.object(services, "publish", return_value=True):  # no worker here
        written = jobs.start_document_job(staff, outline=outline, job_id="teas").job
        running = jobs.start_document_job(staff, outline=outline, job_id="later").job
    for position in sections.plan_sections(written.pk).positions:
        sections.write_section(written.pk, position, final_attempt=True)
    sections.finish_document(written.pk, celery_id=written.task.celery_id)
    page = browser_page
    base = live_server.url
    log_in(page, base, "jobs", "jobs-pass-123", "/admin/writing/writingjob/")

    # the list, then the written job: outline, sections, document, references, tasks
    page.wait_for_selector("#result_list")
    assert "2 of 2 sections" in page.inner_text("#result_list")
    shot(page, "08-writing-jobs")
    page.goto(f"{base}/admin/writing/writingjob/{written.pk}/change/")
    assert "Made how" in page.inner_text(".claw-outline")
    assert page.locator("table.claw-sections tr").count() == 3
    assert "## References" in page.inner_text("pre.claw-document")
    assert page.locator("table.claw-references tr").count() == 3
    shot(page, "09-writing-job")

    # cancel the one still pending
    page.goto(f"{base}/admin/writing/writingjob/")
    page.check(f"#result_list input[value='{running.pk}']")
    page.select_option("select[name=action]", "cancel_selected")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist li")
    assert "Cancelled 1 job(s); skipped 0." in page.inner_text("ul.messagelist")
    running.refresh_from_db()
    assert running.state == "cancelled"


@pytest.mark.browser
@pytest.mark.worker
def test_staff_follow_a_reply_its_usage_and_resend_a_notification_in_a_browser(
    transactional_db, live_server, celery_worker, browser_page, django_user_model
):
    from claw import conversations
    from claw import services as claw_services
    from claw.models import Message, Notification
    from knowledge import services as knowledge

    staff = django_user_model.objects.create_superuser("ai", password="ai-pass-12345")
    kb = knowledge.create_knowledge_base(staff, name="Teas")
    add_ready(
        kb, "Oolong", "Oolong tea is partly oxidised, between green and black tea."
    )
    conversation = conversations.create_conversation(
        staff, title="Tea talk", knowledge_bases=[kb]
    )
    reply = conversations.post_message(
        conversation, "What is oolong?"
    ).assistant_message
    # the push channel has no webhook here: the worker fails it for good
    notification = claw_services.notify(staff, "push", "Your reply is ready")

    def finished():
        reply.refresh_from_db()
        notification.refresh_from_db()
        return reply.status == Message.Status.DONE and notification.status == "failed"

    wait_for(finished, 30, message="the reply and the notification to finish")
    page = browser_page
    base = live_server.url
    log_in(
        page,
        base,
        "ai",
        "ai-pass-12345",
        f"/admin/claw/conversation/{conversation.pk}/change/",
    )

    # the conversation with its messages inline, the reply's task linked
    inline = page.locator("#messages-group tbody tr.form-row:not(.empty-form)")
    inline.first.wait_for()
    assert inline.count() == 2
    row = inline.nth(1).inner_text()
    assert "Assistant" in row and "Done" in row and "Succeeded" in row
    assert "Retrieved passages" in row  # extractive: labelled, not generated text
    shot(page, "10-conversation")
    inline.nth(1).locator(f"a[href$='/taskrecord/{reply.task_id}/change/']").click()
    page.wait_for_selector("text=claw.generate_ai_response")
    assert "Succeeded" in page.inner_text("#content")

    # the usage ledger: totals over the messages list
    page.goto(f"{base}/admin/claw/message/")
    overall = page.inner_text("#usage-overall tbody")
    assert overall.split()[0] == "1"  # one reply
    assert "ai" in page.inner_text("#usage-per-user tbody")
    shot(page, "11-usage")

    # resend the failed notification: a second attempt reaches the worker
    page.goto(f"{base}/admin/claw/notification/")
    page.check(f"#result_list input[value='{notification.pk}']")
    page.select_option("select[name=action]", "resend_selected")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist li")
    assert "Resent 1 notification(s); skipped 0 still pending." in page.inner_text(
        "ul.messagelist"
    )

    def attempted_again():
        notification.refresh_from_db()
        return notification.attempts == 2 and notification.status == "failed"

    wait_for(attempted_again, 30, message="the resent notification to be tried")
    assert "not configured" in Notification.objects.get(pk=notification.pk).error
