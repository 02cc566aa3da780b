"""The cluster-wide rate limit of knowledge.vectorize_document with real workers.

Celery's own rate_limit would count per worker; the shared counter
(tasks_app/ratelimit.py) holds across them. A small window (3 starts per 2 s) keeps the
test to seconds; the default is 5 starts a minute (KNOWLEDGE_VECTORIZE_RATE_LIMIT).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from django_celery_results.models import TaskResult

from knowledge import services
from knowledge.models import Document
from tasks_app import services as ledger
from tasks_app.models import TaskEvent, TaskRecord
from tests.harness import least_deferrals, wait_for

pytestmark = pytest.mark.worker
QUEUE = "kb_rate"


def test_two_workers_together_start_no_more_than_the_limit_per_window(
    transactional_db, start_worker, alice
):
    limit, period = 3, 2.0
    env = {"KNOWLEDGE_VECTORIZE_RATE_LIMIT": f"{limit}/{period:g}"}
    # one reserved message per process, as on knowledge_default (CLAW_SLOW_QUEUES)
    args = ("-Q", QUEUE, "-c", "2", "--prefetch-multiplier", "1")
    workers = [start_worker(*args, env=env, wait=False) for _ in range(2)]
    from claw.celery import app

    for worker in workers:
        worker.wait_ready(app)
    kb = services.create_knowledge_base(alice, name="Rated")
    documents = [
        services.add_document(kb, title=f"D{n}", content=f"Note {n}.", vectorize=False)
        for n in range(9)
    ]
    records = [
        ledger.submit(services.VECTORIZE, args=[d.pk], queue=QUEUE, target=d)
        for d in documents
    ]
    ids = [r.celery_id for r in records]

    def finished():
        rows = TaskRecord.objects.filter(celery_id__in=ids)
        return all(r.is_final for r in rows)

    wait_for(finished, 45, interval=0.2, message="every vectorize to finish")

    # every start is the moment its slot was taken, on the clock that chose the
    # window (the outcome's started_at)
    outcomes = [
        json.loads(r.result) for r in TaskResult.objects.filter(task_id__in=ids)
    ]
    per_window = Counter(math.floor(o["started_at"] / period) for o in outcomes)
    print(f"\n[vectorize rate limit] starts per window: {sorted(per_window.items())}")
    rows = TaskRecord.objects.filter(celery_id__in=ids)
    assert set(rows.values_list("state", flat=True)) == {"SUCCESS"}
    assert len(outcomes) == 9
    assert max(per_window.values()) <= limit
    assert len(per_window) >= math.ceil(9 / limit)
    assert len(set(rows.values_list("worker", flat=True))) == 2  # both took part
    deferred = TaskEvent.objects.filter(
        record__in=rows, kind="retry", data__error__icontains="rate limit"
    )
    assert deferred.count() >= max(
        1, least_deferrals(list(rows), limit=limit, period=period)
    )
    assert not Document.objects.exclude(status=Document.Status.READY).exists()
