"""How the admin writes durations, rates, times and state names, and that its
pages use them (one time zone, named; a progress bar; one set of state names)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from tasks_app import display, rollups
from tasks_app.charts import bar_chart
from tasks_app.tests.ledger_runs import run


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.00917, "9 ms"),
        (0.0004, "0 ms"),
        (0.9996, "1.0 s"),
        (1.0, "1.0 s"),  # today's "0.0s" for a 1 s update
        (2.1, "2.1 s"),
        (59.9, "59.9 s"),
        (59.97, "1 min"),
        (184, "3 min 4 s"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
        (90000, "1 d 1 h"),
        (timedelta(milliseconds=9, microseconds=170), "9 ms"),
        (None, ""),
        (-2.1, "-2.1 s"),
    ],
)
def test_durations_read_as_people_write_them(seconds, text):
    assert display.duration(seconds) == text


@pytest.mark.parametrize(
    ("ratio", "text"), [(0.5, "50%"), (1 / 3, "33.3%"), (0, "0%"), (None, "")]
)
def test_rates_are_percentages(ratio, text):
    assert display.percent(ratio) == text


def test_times_are_in_the_one_admin_time_zone(settings):
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    with timezone.override("Asia/Shanghai"):
        assert display.local(at) == "2026-01-02 11:04:05"
        assert display.local(at, ms=True) == "2026-01-02 11:04:05.678"
    assert display.local(None) == ""


def test_one_name_per_state_for_celery_and_ledger_names():
    assert display.state_label("SUCCESS") == "Succeeded"
    assert display.state_label("REVOKED") == "Cancelled"
    assert display.state_label("RECEIVED") == "RECEIVED"  # not ours: as it is


def test_a_chart_has_axes_time_labels_a_legend_and_values_on_hover():
    start = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    rows = [
        {"start": start + timedelta(minutes=i), "finished": i, "failed": i // 2}
        for i in range(6)
    ]
    with timezone.override("UTC"):
        svg = bar_chart(rows, label_format="%H:%M", every=2)
    assert svg.count('class="claw-slot"') == 6
    assert "<title>03:05: 5 finished, 2 failed</title>" in svg
    assert svg.count('class="claw-x"') == 3  # every 2nd slot labelled
    assert ">03:00<" in svg and ">03:04<" in svg
    assert 'class="claw-y">5<' in svg and 'class="claw-y">0<' in svg  # y axis
    assert "finished</text>" in svg and "failed or lost</text>" in svg  # legend
    assert bar_chart([], label_format="%H", every=1) == ""


def test_a_bar_escapes_its_label_and_prints_whole_numbers():
    """Bars are built as plain strings (a dashboard draws ~250): the label is
    still escaped, and a count cannot carry markup."""
    rows = [{"start": datetime(2026, 5, 1, 3, 0, tzinfo=UTC), "finished": 2.0,
             "failed": 1}]  # fmt: skip
    with timezone.override("UTC"):
        svg = bar_chart(rows, label_format="<b>%H&", every=1)
    assert "<title>&lt;b&gt;03&amp;: 2 finished, 1 failed</title>" in svg
    assert "<b>" not in svg


@pytest.mark.django_db
def test_task_page_has_a_progress_bar_one_zone_and_readable_duration(admin_client):
    from tasks_app import services

    record = run("started", runtime=0)
    services.record_progress(record.celery_id, 3, 4, "third of four")
    html = admin_client.get(
        reverse("admin:tasks_app_taskrecord_change", args=[record.pk])
    ).content.decode()
    assert 'role="progressbar" aria-valuenow="75"' in html
    assert "75% (3 of 4: third of four)" in html
    assert "Times in Asia/Shanghai" in html
    started = record.events.get(kind="started").at
    assert display.local(started, ms=True) in html  # the timeline, in that zone
    assert ".timezonewarning { display: none; }" in html


@pytest.mark.django_db
def test_task_list_writes_durations_and_one_set_of_state_names(admin_client):
    run("succeeded", runtime=2.1)
    run("revoked")
    html = admin_client.get(reverse("admin:tasks_app_taskrecord_changelist")).content
    html = html.decode()
    assert "2.1 s" in html
    assert "Succeeded" in html and "Cancelled" in html
    assert ">SUCCESS<" not in html and ">REVOKED<" not in html


@pytest.mark.django_db
def test_dashboard_and_failures_pages_render(admin_client, settings):
    settings.CLAW_STATS_CACHE_SECONDS = 0
    run("failed")
    rollups.fold()
    for name in ("admin:tasks_app_dashboard", "admin:tasks_app_failures"):
        response = admin_client.get(reverse(name))
        assert response.status_code == 200
        assert "Times in" in response.content.decode()
