"""The fast paths of issue 9 keep their behaviour: the admin search and its
trigram index, the cached stats, per-queue prefetch, worker connections kept
between tasks and reconnected after the server dropped them."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tasks_app import connections, dashboard, rollups, services, workers
from tasks_app.admin import search_records
from tasks_app.models import TaskRecord
from tasks_app.tests.ledger_runs import run

State = TaskRecord.State


def record(name: str, state: str = State.SUCCESS, **fields) -> TaskRecord:
    now = timezone.now()
    times = {"started_at": now - timedelta(seconds=2), "finished_at": now}
    return TaskRecord.objects.create(
        name=name,
        state=state,
        celery_id=f"{name}-{TaskRecord.objects.count()}",
        **{**times, **fields},
    )


@pytest.mark.django_db
def test_search_finds_a_name_part_in_any_case_and_an_exact_celery_id(admin_client):
    vectorize = record("knowledge.vectorize_document")
    ping = record("tasks_app.ping")

    assert list(search_records(TaskRecord.objects, "VECTORIZE")) == [vectorize]
    assert list(search_records(TaskRecord.objects, ping.celery_id)) == [ping]
    assert not search_records(TaskRecord.objects, "no-such-task").exists()
    url = reverse("admin:tasks_app_taskrecord_changelist") + "?q=vectorize"
    html = admin_client.get(url).content.decode()
    change = "admin:tasks_app_taskrecord_change"
    assert reverse(change, args=[vectorize.pk]) in html
    assert reverse(change, args=[ping.pk]) not in html


@pytest.mark.django_db
def test_the_name_search_has_a_trigram_index_on_postgresql():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'taskrecord_name_trgm'"
        )
        (definition,) = cursor.fetchone()
    assert "gin" in definition and "gin_trgm_ops" in definition
    assert "upper((name)::text)" in definition  # what icontains compares


@pytest.mark.django_db
def test_summary_reads_no_record_and_is_served_from_the_cache(settings):
    run("succeeded", name="tests.add")
    run("failed", name="tests.add")
    run("succeeded", name="tests.sleep", runtime=9)
    rollups.fold()
    settings.CLAW_STATS_CACHE_SECONDS = 30
    # A memory cache, so that "served from the cache" is visible as no query at
    # all (the default database cache would answer with one of its own).
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    }
    cache.delete("claw:stats:24")

    with CaptureQueriesContext(connection) as queries:
        first = dashboard.summary(24)
    assert all("tasks_app_taskrecord" not in q["sql"] for q in queries)
    assert all("tasks_app_taskevent" not in q["sql"] for q in queries)
    assert first["by_state"]["SUCCESS"] == 2 and first["by_state"]["FAILURE"] == 1
    assert first["by_name"]["tests.sleep"]["run_p50"] > 5
    with CaptureQueriesContext(connection) as queries:
        again = dashboard.summary(24)
    run("succeeded", name="tests.add")  # not seen until the cache entry expires
    rollups.fold()

    assert len(queries) == 0 and again == first
    assert dashboard.summary(24)["by_state"]["SUCCESS"] == 2
    cache.delete("claw:stats:24")
    assert dashboard.summary(24)["by_state"]["SUCCESS"] == 3


def test_only_a_worker_on_short_task_queues_prefetches_more(settings):
    settings.CELERY_WORKER_PREFETCH_MULTIPLIER = 1
    settings.CLAW_SHORT_QUEUE_PREFETCH = 4

    assert workers.prefetch_multiplier_for({"default", "notification_default"}, 1) == 4
    assert workers.prefetch_multiplier_for({"default", "ai_high_priority"}, 1) == 1
    assert workers.prefetch_multiplier_for(set(), 1) == 1  # every queue
    assert workers.prefetch_multiplier_for({"default"}, 2) == 2  # given on the CLI


@pytest.mark.django_db(transaction=True)
def test_a_worker_keeps_its_connection_and_drops_one_left_in_a_transaction():
    TaskRecord.objects.exists()
    kept = connection.connection
    connections.recycle()
    assert connection.connection is kept  # no reconnect, and no SELECT 1 either
    with CaptureQueriesContext(connection) as queries:
        TaskRecord.objects.exists()
    assert len(queries) == 1

    connection.set_autocommit(False)  # what a careless task body might leave
    connections.recycle()
    assert connection.connection is None


@pytest.mark.django_db(transaction=True)
def test_a_transition_reconnects_after_the_server_dropped_the_connection():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    settings = connection.settings_dict
    admin = psycopg.connect(
        host=settings["HOST"], port=settings["PORT"] or 5432,
        user=settings["USER"], dbname=settings["NAME"], autocommit=True,
    )  # fmt: skip
    # A record without a message: the session's worker must not run it meanwhile.
    celery_id = "reconnect-1"
    services.record_published(
        {"id": celery_id, "task": "tests.add"}, ([1, 2], {}, {}), "default", {}
    )
    with admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    # The worker's STARTED write meets a dead connection, reconnects and applies.
    assert services.mark_started(celery_id, name="tests.add", worker="w1") is None

    started = TaskRecord.objects.get(celery_id=celery_id)
    assert started.state == State.STARTED and started.deliveries == 1


@pytest.mark.django_db
def test_a_search_or_a_filter_stops_counting_at_its_own_limit(
    admin_client, monkeypatch
):
    from tasks_app import admin as task_admin

    monkeypatch.setattr(task_admin, "FILTERED_COUNT_LIMIT", 5)
    TaskRecord.objects.bulk_create(
        TaskRecord(name="tests.add", celery_id=f"count-{i}") for i in range(8)
    )
    changelist = reverse("admin:tasks_app_taskrecord_changelist")

    searched = admin_client.get(changelist + "?q=tests.add")
    filtered = admin_client.get(changelist + "?state__exact=PENDING&p=1")
    listed = admin_client.get(changelist + "?o=1")

    assert searched.context["cl"].result_count == 6  # stopped after 5
    assert "more than 5 task records" in searched.content.decode()
    assert filtered.context["cl"].result_count == 6
    assert listed.context["cl"].result_count == 8  # paging and order filter nothing
    assert "8 task records" in listed.content.decode()


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db
def test_the_ledgers_per_task_statements_are_prepared_once_per_connection(
    django_capture_on_commit_callbacks,
):
    """Parsing and planning each ledger write was about 40 % of PostgreSQL's CPU
    for a tiny task (issue 21): its statements bind on the server, and psycopg
    prepares them after DB_PREPARE_THRESHOLD runs; Django's own queries do not."""
    threshold = connection.settings_dict["OPTIONS"]["prepare_threshold"]
    assert threshold == 5  # the default
    with django_capture_on_commit_callbacks(execute=False):
        records = [services.submit("tests.add", args=[i, 1]) for i in range(6)]
    for record in records:
        services.mark_started(record.celery_id, name=record.name, worker="w1")
        services.mark_succeeded(record.celery_id)
    TaskRecord.objects.filter(pk__in=[r.pk for r in records]).count()

    prepared = prepared_statements()
    inserts = [
        s for s in prepared if 'WITH added AS (INSERT INTO "tasks_app_taskrecord"' in s
    ]
    updates = [
        s for s in prepared if 'WITH moved AS (UPDATE "tasks_app_taskrecord"' in s
    ]
    assert len(inserts) == 1  # the submit
    assert len(updates) == 2  # STARTED and SUCCESS, each one statement
    assert "$1" in updates[0] and "%s" not in updates[0]  # bound on the server
    assert not [s for s in prepared if "COUNT(*)" in s.upper()]  # the ORM's: not
    assert TaskRecord.objects.filter(state=State.SUCCESS).count() == 6
