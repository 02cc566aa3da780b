"""The rollups: counted once, durations in the right slot, nothing lost to a
fold that dies or to an event that commits late."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from tasks_app import rollups, services
from tasks_app.models import RollupWatermark, TaskEvent, TaskRecord, TaskRollup
from tasks_app.tests.ledger_runs import run
from tests.harness import kill_fold_midway

Outcome = TaskRollup.Outcome


def totals(name: str = "tests.add", span: int = rollups.TOTAL) -> dict[str, int]:
    rows = TaskRollup.objects.filter(span=span, name=name)
    found: dict[str, int] = {}
    for row in rows:
        found[row.outcome] = found.get(row.outcome, 0) + row.count
    return found


def total_row(outcome: str, name: str = "tests.add") -> TaskRollup:
    return TaskRollup.objects.get(span=rollups.TOTAL, name=name, outcome=outcome)


@pytest.mark.django_db
def test_a_fold_counts_each_outcome_once_in_every_span():
    for outcome in ("succeeded", "succeeded", "failed", "retried", "revoked", "lost"):
        run(outcome)

    assert rollups.fold() > 0
    assert rollups.fold() == 0  # nothing new: nothing read, nothing added

    expected = {
        Outcome.SENT: 6,
        Outcome.STARTED: 6,  # the retried one started twice; revoked never
        Outcome.SUCCEEDED: 3,
        Outcome.FAILED: 1,
        Outcome.RETRIED: 1,
        Outcome.REVOKED: 1,
        Outcome.LOST: 1,
    }
    assert totals() == expected
    assert totals(span=rollups.MINUTE) == expected
    assert totals(span=rollups.HOUR) == expected


@pytest.mark.django_db
def test_run_and_wait_times_land_in_their_histogram_slots():
    run("succeeded", wait=2.0, runtime=0.3)
    run("failed", wait=0.02, runtime=45)
    rollups.fold()

    started = total_row(Outcome.STARTED)
    assert started.observed == 2
    assert started.buckets[rollups.bucket_index(2.0)] == 1  # le 2.5
    assert started.buckets[rollups.bucket_index(0.02)] == 1  # le 0.025
    assert started.seconds == pytest.approx(2.02)
    succeeded = total_row(Outcome.SUCCEEDED)
    assert succeeded.buckets[rollups.BOUNDS.index(0.5)] == 1
    assert succeeded.seconds == pytest.approx(0.3)
    assert total_row(Outcome.FAILED).buckets[rollups.BOUNDS.index(60)] == 1


@pytest.mark.django_db
def test_a_revoked_record_that_never_ran_has_no_run_time():
    run("revoked")
    rollups.fold()
    revoked = total_row(Outcome.REVOKED)
    assert (revoked.count, revoked.observed, sum(revoked.buckets)) == (1, 0, 0)


def test_quantiles_interpolate_inside_a_slot_as_prometheus_does():
    buckets = rollups.empty_buckets()
    buckets[rollups.BOUNDS.index(1)] = 10  # ten runs in (0.5, 1]
    assert rollups.quantile(0.5, buckets) == pytest.approx(0.75)
    assert rollups.quantile(0.5, rollups.empty_buckets()) is None
    buckets[-1] = 100  # past the last bound
    assert rollups.quantile(0.95, buckets) == rollups.BOUNDS[-1]


@pytest.mark.django_db(transaction=True)
def test_a_fold_killed_before_commit_leaves_nothing_and_the_next_counts_all(
    worker_env,
):
    """A worker that dies mid-fold: the rollups it had written roll back with its
    watermark; the next fold counts every event once (no double count, no gap)."""
    for outcome in ("succeeded", "failed", "succeeded"):
        run(outcome)
    kill_fold_midway(worker_env, "tasks_app.TaskRollup", 1)
    assert not TaskRollup.objects.exists()
    assert RollupWatermark.objects.get(pk=1).last_id == 0

    rollups.fold()
    run("failed")  # after the recovery fold: counted by the next one
    rollups.fold()

    assert totals() == {
        Outcome.SENT: 4,
        Outcome.STARTED: 4,
        Outcome.SUCCEEDED: 2,
        Outcome.FAILED: 2,
    }


@pytest.mark.django_db(transaction=True)
def test_an_event_that_commits_after_a_later_one_was_folded_is_counted_once():
    """Ids are taken at INSERT but commit in any order: the fold that steps over
    an uncommitted id looks for it again, and counts it when it appears."""
    early = run("started")
    rollups.fold()
    inserted, release = threading.Event(), threading.Event()

    def slow_transaction():
        with transaction.atomic():
            services.mark_succeeded(early.celery_id)  # takes the lower event id
            inserted.set()
            release.wait(20)
        connection.close()

    thread = threading.Thread(target=slow_transaction)
    thread.start()
    assert inserted.wait(20)
    run("failed")  # a higher id, committed first
    rollups.fold()
    assert totals().get(Outcome.SUCCEEDED) is None
    assert RollupWatermark.objects.get(pk=1).gaps  # the skipped id is remembered
    release.set()
    thread.join(20)

    rollups.fold()
    rollups.fold()

    assert totals() == {
        Outcome.SENT: 2,
        Outcome.STARTED: 2,
        Outcome.SUCCEEDED: 1,
        Outcome.FAILED: 1,
    }
    assert RollupWatermark.objects.get(pk=1).gaps == {}


@pytest.mark.django_db
def test_a_gap_never_filled_is_given_up_after_its_grace(settings):
    run("succeeded")
    rollups.fold()
    mark = RollupWatermark.objects.get(pk=1)
    stale = (timezone.now() - timedelta(seconds=10)).timestamp()
    mark.gaps = {str(mark.last_id + 10_000): stale}
    mark.save()
    settings.CLAW_ROLLUP_GAP_SECONDS = 5

    rollups.fold()

    assert RollupWatermark.objects.get(pk=1).gaps == {}


@pytest.mark.django_db
def test_progress_events_move_the_watermark_but_count_nothing():
    record = run("started")
    services.record_progress(record.celery_id, 1, 2)
    rollups.fold()
    last = TaskEvent.objects.order_by("-id").values_list("id", flat=True).first()
    assert RollupWatermark.objects.get(pk=1).last_id == last
    assert totals() == {Outcome.SENT: 1, Outcome.STARTED: 1}


@pytest.mark.django_db
def test_old_minute_rows_are_pruned_and_all_time_rows_kept(settings):
    run("succeeded", at=timezone.now() - timedelta(days=5))
    rollups.fold()
    assert TaskRollup.objects.filter(span=rollups.MINUTE).exists()

    rollups.prune()

    assert not TaskRollup.objects.filter(span=rollups.MINUTE).exists()
    assert TaskRollup.objects.filter(span=rollups.HOUR).exists()
    assert totals()[Outcome.SUCCEEDED] == 1
    assert TaskRecord.objects.count() == 1


@pytest.mark.django_db
def test_small_batches_add_up_to_the_same_rows_as_one():
    for outcome in ("succeeded", "failed", "retried", "revoked", "succeeded"):
        run(outcome)
    run("succeeded", at=timezone.now() - timedelta(hours=3))  # another slot

    while rollups.fold_batch(batch=2) == 2:
        pass
    in_small_batches = {
        (r.span, r.start, r.outcome): (r.count, r.observed, r.buckets)
        for r in TaskRollup.objects.all()
    }
    TaskRollup.objects.all().delete()
    RollupWatermark.objects.all().delete()
    rollups.fold()

    assert in_small_batches == {
        (r.span, r.start, r.outcome): (r.count, r.observed, r.buckets)
        for r in TaskRollup.objects.all()
    }
    assert totals()[Outcome.SUCCEEDED] == 4
