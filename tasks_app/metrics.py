"""GET /metrics: Prometheus text format, for operators who ran Flower or
celery-exporter with Prometheus.

Every number is read at scrape time from what all processes share: the task
counters and histograms from the all-time rollups (tasks_app.rollups), queue
lengths from the broker, ages from the ledger's indexes, live workers from a
ping. No per-process registry, so the totals are the cluster's whatever number
of workers, hosts and web processes there are, and a restart resets nothing.

Names follow celery-exporter where it has one (celery_task_*_total,
celery_task_runtime_seconds, celery_queue_length, celery_worker_up,
celery_active_worker_count; label queue_name as there); CLAW's own start with
claw_. A domain adds its own through register_collector (the conversations
domain: LLM tokens and reply times), so the platform imports no domain.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections import defaultdict

from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tasks_app import dashboard, rollups, workers
from tasks_app.models import BeatLease, StaffAlert, TaskRollup

logger = logging.getLogger("tasks_app.metrics")
Outcome = TaskRollup.Outcome
TASK_LABELS = ["name", "queue_name"]

COUNTERS = (
    (Outcome.SENT, "celery_task_sent", "Tasks published (submitted, beat, canvas)."),
    (Outcome.STARTED, "celery_task_started", "Runs started by a worker."),
    (Outcome.SUCCEEDED, "celery_task_succeeded", "Runs that succeeded."),
    (Outcome.FAILED, "celery_task_failed", "Runs that failed for good."),
    (Outcome.RETRIED, "celery_task_retried", "Runs that ended in a retry."),
    (Outcome.REVOKED, "celery_task_revoked", "Tasks cancelled (revoked)."),
    (Outcome.LOST, "claw_tasks_lost", "Runs whose worker vanished (health check)."),
)
# Seconds a worker ping is reused across scrapes (a ping waits for replies).
PING_CACHE_SECONDS = 10
PING_KEY = "claw:metrics:workers"


def bounds_and_counts(buckets: list[int]) -> list[tuple[str, int]]:
    """A rollup histogram as Prometheus' cumulative (le, count) pairs."""
    cumulative, pairs = 0, []
    padded = list(buckets) + [0] * (len(rollups.BOUNDS) + 1 - len(buckets))
    for bound, n in zip((*rollups.BOUNDS, math.inf), padded, strict=True):
        cumulative += n
        pairs.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
    return pairs


class LedgerCollector:
    """The platform's metrics, read at scrape time (see the module docstring)."""

    def collect(self):
        yield from self.task_metrics()
        yield from self.queue_metrics()
        yield from self.worker_metrics()
        yield self.beat_age()
        yield GaugeMetricFamily(
            "claw_staff_alerts_active",
            "Staff alerts raised by the health check and not resolved.",
            value=StaffAlert.objects.filter(active=True).count(),
        )

    def task_metrics(self):
        rows = list(TaskRollup.objects.filter(span=rollups.TOTAL))
        counters = {
            outcome: CounterMetricFamily(metric, doc, labels=TASK_LABELS)
            for outcome, metric, doc in COUNTERS
        }
        runtime = HistogramMetricFamily(
            "celery_task_runtime_seconds",
            "Run time of the runs that ended with a result (succeeded or failed).",
            labels=TASK_LABELS,
        )
        wait = HistogramMetricFamily(
            "claw_task_wait_seconds",
            "Time from queued (or a retry's countdown end) to started.",
            labels=TASK_LABELS,
        )
        histograms = defaultdict(lambda: {"buckets": [], "seconds": 0.0})
        for row in rows:
            labels = [row.name, row.queue]
            counters[row.outcome].add_metric(labels, row.count)
            kind = (
                "run" if row.outcome in dashboard.RAN
                else "wait" if row.outcome == Outcome.STARTED
                else None
            )  # fmt: skip
            if kind:
                entry = histograms[(kind, row.name, row.queue)]
                entry["buckets"].append(row.buckets)
                entry["seconds"] += row.seconds
        for (kind, name, queue), entry in sorted(histograms.items()):
            family = runtime if kind == "run" else wait
            family.add_metric(
                [name, queue],
                bounds_and_counts(rollups.merged(entry["buckets"])),
                entry["seconds"],
            )
        yield from counters.values()
        yield runtime
        yield wait

    def queue_metrics(self):
        length = GaugeMetricFamily(
            "celery_queue_length",
            "Messages waiting in the broker.",
            labels=["queue_name"],
        )
        try:
            lengths = workers.queue_lengths()
        except Exception as exc:  # the broker being down must not break /metrics
            logger.warning("metrics: queue lengths unavailable: %r", exc)
            lengths = {}
        for queue, n in sorted(lengths.items()):
            length.add_metric([queue], n)
        yield length
        oldest = GaugeMetricFamily(
            "claw_queue_oldest_age_seconds",
            "Age of the oldest record waiting to start (0: none waiting).",
            labels=["queue_name"],
        )
        now = timezone.now()
        queues = sorted(set(lengths) | set(settings.CLAW_QUEUES))
        for queue, created in dashboard.oldest_waiting(queues).items():
            age = (now - created).total_seconds() if created else 0.0
            oldest.add_metric([queue], max(age, 0.0))
        yield oldest

    def worker_metrics(self):
        names = live_workers()
        up = GaugeMetricFamily(
            "celery_worker_up", "1 for each worker that answered a ping.",
            labels=["hostname"],
        )  # fmt: skip
        for name in names:
            up.add_metric([name], 1)
        yield up
        yield GaugeMetricFamily(
            "celery_active_worker_count",
            "Workers that answered a ping.",
            value=len(names),
        )

    def beat_age(self):
        lease = BeatLease.objects.filter(pk=1).values_list("last_tick_at", flat=True)
        last = lease.first()
        age = (timezone.now() - last).total_seconds() if last else math.inf
        return GaugeMetricFamily(
            "claw_beat_last_tick_age_seconds",
            "Seconds since beat last ticked (+Inf: never).",
            value=age,
        )


def live_workers() -> list[str]:
    """Names of the workers that answer a ping, at most PING_CACHE_SECONDS old.

    A ping waits out its whole timeout (it cannot know how many workers there
    are), so a scrape or a page view does not wait for it: past its age the
    cached answer is served once more while a thread of this process pings
    again. Only the very first call (nothing cached) waits.
    """
    cached = cache.get(PING_KEY)
    if cached is None:
        return _ping_and_keep()
    if time.time() - cached["at"] > PING_CACHE_SECONDS and _refresh.acquire(False):
        threading.Thread(target=_refresh_in_background, daemon=True).start()
    return cached["names"]


_refresh = threading.Lock()  # one background ping per process at a time


def _refresh_in_background() -> None:
    try:
        _ping_and_keep()
    finally:
        _refresh.release()
        connections.close_all()  # the cache may be the database


def _ping_and_keep() -> list[str]:
    try:
        names = workers.ping(workers.QUICK_TIMEOUT)
    except Exception as exc:
        logger.warning("metrics: worker ping failed: %r", exc)
        names = []
    # Kept well past its age: a stale answer is served while a fresh one comes.
    cache.set(PING_KEY, {"names": names, "at": time.time()}, PING_CACHE_SECONDS * 30)
    return names


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(LedgerCollector())


def register_collector(collector) -> None:
    """Expose a domain's own metrics on /metrics too (its AppConfig.ready).

    collector.collect() yields prometheus_client metric families, read at
    scrape time from shared storage, as LedgerCollector does. One of each
    class: a second ready() (tests) must not expose it twice.
    """
    if type(collector) not in _registered:
        _registered.add(type(collector))
        REGISTRY.register(collector)


_registered: set[type] = {LedgerCollector}


def allowed(request) -> bool:
    """A staff session, or the bearer token METRICS_TOKEN (compared in constant
    time, so the time taken says nothing about how much of it matched)."""
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    expected = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


@require_GET
def metrics_view(request):
    if not allowed(request):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
