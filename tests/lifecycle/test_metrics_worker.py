"""/metrics after real work on two worker processes: the counters and
histograms are the known numbers of a known mix, whichever worker ran what."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tasks_app import metrics, services
from tasks_app.models import TaskRecord
from tests.harness import wait_for

pytestmark = [pytest.mark.worker]


def scrape(token: str) -> dict:
    body = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert body.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.content.decode())
        for s in family.samples
    }


def test_counters_and_histograms_equal_a_known_mix_over_two_workers(
    transactional_db, start_worker, settings
):
    settings.METRICS_TOKEN = "scrape-me"
    start_worker("-c", "1")
    start_worker("-c", "1")
    records = [services.submit("tests.sleep", args=[0.2]) for _ in range(6)]
    records += [services.submit("tests.fail") for _ in range(3)]
    records += [services.submit("tests.always_flaky") for _ in range(2)]
    cancelled = [
        services.submit("tests.effect", args=["metrics"], countdown=3600)
        for _ in range(2)
    ]
    for record in cancelled:
        services.cancel(record)

    def all_final():
        return all(
            TaskRecord.objects.get(pk=r.pk).is_final for r in records + cancelled
        )

    wait_for(all_final, 60, message="the mix to finish")
    ran_on = set(
        TaskRecord.objects.filter(name="tests.sleep").values_list("worker", flat=True)
    )
    # the fold, as beat runs it every CLAW_ROLLUP_SECONDS: a task on a worker
    fold = services.submit("tasks_app.fold_rollups")
    wait_for(lambda: TaskRecord.objects.get(pk=fold.pk).is_final, 30, message="fold")
    assert TaskRecord.objects.get(pk=fold.pk).state == "SUCCESS"

    cache.delete(metrics.PING_KEY)  # a ping now, not one of an earlier test
    samples = scrape("scrape-me")

    def value(metric: str, name: str, **labels) -> float:
        key = tuple(sorted({"name": name, "queue_name": "default", **labels}.items()))
        return samples.get((metric, key), 0)

    counts = {
        (metric, name): value(f"celery_task_{metric}_total", name)
        for metric in ("sent", "started", "succeeded", "failed", "retried", "revoked")
        for name in ("tests.sleep", "tests.fail", "tests.always_flaky", "tests.effect")
    }
    assert {k: v for k, v in counts.items() if v} == {
        ("sent", "tests.sleep"): 6,
        ("started", "tests.sleep"): 6,
        ("succeeded", "tests.sleep"): 6,
        ("sent", "tests.fail"): 3,
        ("started", "tests.fail"): 3,
        ("failed", "tests.fail"): 3,
        # each: the first run and two automatic retries, then a failure
        ("sent", "tests.always_flaky"): 2,
        ("started", "tests.always_flaky"): 6,
        ("retried", "tests.always_flaky"): 4,
        ("failed", "tests.always_flaky"): 2,
        ("sent", "tests.effect"): 2,
        ("revoked", "tests.effect"): 2,
    }
    runtime = "celery_task_runtime_seconds"
    assert value(runtime + "_count", "tests.sleep") == 6
    assert value(runtime + "_bucket", "tests.sleep", le="0.1") == 0  # slept 0.2 s
    assert value(runtime + "_bucket", "tests.sleep", le="2.5") == 6
    assert 6 * 0.2 <= value(runtime + "_sum", "tests.sleep") < 6 * 2.5
    assert value(runtime + "_count", "tests.always_flaky") == 2
    assert value("claw_task_wait_seconds_count", "tests.sleep") == 6
    assert value("claw_task_wait_seconds_count", "tests.always_flaky") == 6
    assert samples[("celery_active_worker_count", ())] >= 2
    # two worker processes (three when the session's shared worker is up) took part
    assert len(ran_on) >= 2, ran_on
