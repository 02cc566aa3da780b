"""Per-minute, per-hour and all-time rollups of the ledger's events.

A short periodic task (tasks_app.fold_rollups, every few seconds) reads the
TaskEvent rows written since the last fold, in id order, and adds them to
TaskRollup rows keyed by (span, slot start, task name, queue, outcome), with
histograms of run time (for the events that end a run) and of wait time, queued
to started (for "started"). The dashboard, the stats API and /metrics read these
rows, never the records, so their cost does not follow the table's size, and no
transition writes anything more than before.

Exactly once: the rollups and the watermark (RollupWatermark.last_id) change in
one transaction, under a lock on the watermark row. A fold whose process dies
before COMMIT leaves nothing behind, and the next fold reads the same events
again. A second fold running at the same time skips its turn instead of waiting.

Other domains fold their own ledgers the same way (register_ledger): an
append-only table read by id, with its own watermark row, its own rollup
writer, and the same transaction, gap and kill guarantees. A ledger whose rows
are written before they are final (an AI reply inserted pending, finished
later) returns the ids of the rows not final yet; they are kept with the gaps
and read again on every fold until they are.

No gap: ids come from a sequence when a row is inserted, but commit in any
order, so an event with a lower id can become visible after a higher one was
folded (submit() writes its "queued" event in the caller's transaction). The
fold remembers every id it stepped over (RollupWatermark.gaps) and looks for it
again on each fold, until CLAW_ROLLUP_GAP_SECONDS have passed (an id that never
appears was a rolled-back insert).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from tasks_app.models import RollupWatermark, TaskEvent, TaskRecord, TaskRollup

Outcome = TaskRollup.Outcome
Kind = TaskEvent.Kind

# Upper bounds (seconds) of the histogram slots, as Prometheus' "le"; the last
# slot of every histogram is +Inf. From a 5 ms tiny task to an hour-long job.
BOUNDS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
    600, 1800, 3600,
)  # fmt: skip
MINUTE, HOUR, TOTAL = 60, 3600, 0
SPANS = (MINUTE, HOUR, TOTAL)
# The slot start of the all-time rows.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BATCH = 5000
# Gaps remembered at most; past it the oldest are given up first.
MAX_GAPS = 20000

# Which outcome each event kind counts as (progress events count as nothing).
OUTCOMES = {
    Kind.QUEUED: Outcome.SENT,
    Kind.STARTED: Outcome.STARTED,
    Kind.SUCCEEDED: Outcome.SUCCEEDED,
    Kind.FAILED: Outcome.FAILED,
    Kind.RETRY: Outcome.RETRIED,
    Kind.CANCELLED: Outcome.REVOKED,
    Kind.LOST: Outcome.LOST,
}
ENDS_RUN = {Kind.SUCCEEDED, Kind.FAILED, Kind.RETRY, Kind.CANCELLED, Kind.LOST}
TIMELINE_KINDS = [k for k in OUTCOMES]


def slot(at: datetime, span: int) -> datetime:
    if span == TOTAL:
        return EPOCH
    seconds = int(at.timestamp()) // span * span
    return datetime.fromtimestamp(seconds, tz=UTC)


def bucket_index(seconds: float) -> int:
    """The histogram slot of a duration: the first bound it does not pass."""
    return bisect.bisect_left(BOUNDS, seconds)


def empty_buckets() -> list[int]:
    return [0] * (len(BOUNDS) + 1)


# --- folding ---------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """An append-only table folded by id watermark.

    watermark: the pk of its RollupWatermark row (1 is TaskEvent's).
    add(rows): adds the rows (dicts of `fields`) to the domain's rollups, in the
    fold's transaction, and returns the ids of rows not final yet (read again
    by the next folds until they are).
    """

    watermark: int
    model: type[models.Model]
    fields: tuple[str, ...]
    add: Callable[[list[dict]], Iterable[int]]


_ledgers: dict[int, Ledger] = {}


def register_ledger(ledger: Ledger) -> None:
    """Fold a domain's ledger in fold_rollups (from its AppConfig.ready)."""
    known = _ledgers.get(ledger.watermark)
    if known is not None and known.model is not ledger.model:
        raise ValueError(f"rollup watermark {ledger.watermark} is already taken")
    _ledgers[ledger.watermark] = ledger


def fold(batch: int = BATCH, max_batches: int = 20) -> int:
    """Fold the rows written since the last fold, TaskEvent's and every
    registered ledger's; return how many were read."""
    return sum(
        fold_ledger(ledger, batch, max_batches)
        for ledger in (EVENTS, *_ledgers.values())
    )


def fold_ledger(ledger: Ledger, batch: int = BATCH, max_batches: int = 20) -> int:
    """Batches of `batch` rows, each its own transaction, so a long backlog
    commits progress as it goes; 0 when another fold holds the watermark."""
    done = 0
    for n in range(max_batches):
        # The skipped ids are looked for once per fold, not once per batch.
        read = fold_batch(batch, with_gaps=n == 0, ledger=ledger)
        done += max(read, 0)
        if read < batch:
            break
    return done


def fold_batch(
    batch: int = BATCH, *, with_gaps: bool = True, ledger: Ledger | None = None
) -> int:
    """One transaction: read, add to rollups, move the watermark. -1 if another
    fold holds the watermark."""
    ledger = ledger or EVENTS
    RollupWatermark.objects.get_or_create(pk=ledger.watermark)
    with transaction.atomic():
        mark = (
            RollupWatermark.objects.select_for_update(skip_locked=True)
            .filter(pk=ledger.watermark)
            .first()
        )
        if mark is None:
            return -1  # another fold has it; it will read these rows
        rows = _read(ledger, mark, batch, with_gaps)
        still_open = set(ledger.add(rows))
        _move(mark, rows, still_open)
    return len(rows)


def _read(ledger: Ledger, mark: RollupWatermark, batch: int, with_gaps: bool):
    table = ledger.model.objects
    rows = list(
        table.filter(id__gt=mark.last_id).order_by("id").values(*ledger.fields)[:batch]
    )
    gap_ids = [int(i) for i in mark.gaps] if with_gaps else []
    for chunk in _chunks(gap_ids, 500):
        rows += list(table.filter(id__in=chunk).values(*ledger.fields))
    return rows


def _move(
    mark: RollupWatermark, events: list[dict], still_open: Iterable[int] = ()
) -> None:
    """Advance the watermark past the rows read; remember the ids skipped, and
    the rows not final yet (stamped now: they do not expire while open).

    Called last in fold_batch's transaction: a fold that dies before it leaves
    no rollup behind either.
    """
    now = timezone.now()
    stamp = now.timestamp()
    gaps = dict(mark.gaps)
    for event in events:
        gaps.pop(str(event["id"]), None)
    for open_id in still_open:
        gaps[str(open_id)] = stamp
    new_ids = sorted(e["id"] for e in events if e["id"] > mark.last_id)
    if new_ids:
        seen = set(new_ids)
        # The first fold starts after cleanup deleted the oldest events: what
        # is missing below its first id was never a gap.
        low = max(mark.last_id + 1, new_ids[-1] - MAX_GAPS) if mark.last_id else 0
        for missing in range(low or new_ids[-1], new_ids[-1]):
            if missing not in seen:
                gaps.setdefault(str(missing), stamp)
        mark.last_id = new_ids[-1]
    expiry = stamp - settings.CLAW_ROLLUP_GAP_SECONDS
    gaps = {k: v for k, v in gaps.items() if v >= expiry}
    if len(gaps) > MAX_GAPS:
        gaps = dict(sorted(gaps.items(), key=lambda kv: kv[1])[-MAX_GAPS:])
    mark.gaps = gaps
    mark.folded_at = now
    mark.save(update_fields=["last_id", "gaps", "folded_at"])


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _observations(events: list[dict]) -> list[tuple]:
    """(at, name, queue, outcome, seconds or None) for each event that counts.

    Durations need the event before it in its record's timeline: the "queued"
    or "retry" a start waited after, the "started" a run ended. Those may be in
    an earlier batch, so the timelines of the batch's records are read (without
    progress events, which are most of the rows and carry no transition).
    """
    counted = [e for e in events if e["kind"] in OUTCOMES]
    if not counted:
        return []
    record_ids = sorted({e["record_id"] for e in counted})
    last_id = max(e["id"] for e in counted)
    records: dict[int, tuple[str, str]] = {}
    timelines: dict[int, list[dict]] = defaultdict(list)
    for chunk in _chunks(record_ids, 500):
        records.update(
            (pk, (name, queue))
            for pk, name, queue in TaskRecord.objects.filter(pk__in=chunk).values_list(
                "pk", "name", "queue"
            )
        )
        for row in (
            TaskEvent.objects.filter(
                record_id__in=chunk, id__lte=last_id, kind__in=TIMELINE_KINDS
            )
            .order_by("id")
            .values("id", "record_id", "kind", "at", "data")
        ):
            timelines[row["record_id"]].append(row)
    durations: dict[int, float | None] = {}
    for timeline in timelines.values():
        durations.update(_durations(timeline))
    observations = []
    for event in counted:
        name, queue = records.get(event["record_id"], (None, None))
        if name is None:
            continue  # its record was deleted (cleanup) before the fold saw it
        outcome = OUTCOMES[event["kind"]]
        observations.append(
            (event["at"], name, queue, outcome, durations.get(event["id"]))
        )
    return observations


def _durations(timeline: list[dict]) -> dict[int, float]:
    """Event id -> wait (for a start) or run time (for an end of a run)."""
    found: dict[int, float] = {}
    waiting_since: datetime | None = None
    running_since: datetime | None = None
    for event in timeline:
        kind, at = event["kind"], event["at"]
        if kind == Kind.STARTED:
            if waiting_since is not None:
                found[event["id"]] = max(0.0, (at - waiting_since).total_seconds())
            # A redelivered start (the run before it died) has no wait of its own.
            waiting_since, running_since = None, at
            continue
        if kind in ENDS_RUN and running_since is not None:
            found[event["id"]] = max(0.0, (at - running_since).total_seconds())
            running_since = None
        if kind in (Kind.QUEUED, Kind.RETRY):
            # A retry waits from its countdown's end, not from the failure.
            waiting_since = max(at, _eta(event) or at)
    return found


def _eta(event: dict) -> datetime | None:
    value = (event.get("data") or {}).get("eta")
    try:
        return datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


def _add(observations: list[tuple]) -> None:
    """Add observations to their rows of every span (read, add, write: the
    watermark lock makes this fold the rows' only writer)."""
    if not observations:
        return
    sums: dict[tuple, dict] = {}
    for at, name, queue, outcome, seconds in observations:
        for span in SPANS:
            key = (span, slot(at, span), name, queue, outcome)
            row = sums.setdefault(
                key, {"count": 0, "observed": 0, "seconds": 0.0, "buckets": None}
            )
            row["count"] += 1
            if seconds is not None:
                row["observed"] += 1
                row["seconds"] += seconds
                row["buckets"] = row["buckets"] or empty_buckets()
                row["buckets"][bucket_index(seconds)] += 1
    existing = _existing(sums)
    changed, added = [], []
    for key, delta in sums.items():
        row = existing.get(key)
        if row is None:
            span, start, name, queue, outcome = key
            row = TaskRollup(
                span=span, start=start, name=name, queue=queue, outcome=outcome,
                buckets=empty_buckets(),
            )  # fmt: skip
            added.append(row)
        else:
            changed.append(row)
        row.count += delta["count"]
        row.observed += delta["observed"]
        row.seconds += delta["seconds"]
        if delta["buckets"]:
            row.buckets = [
                a + b
                for a, b in zip(_padded(row.buckets), delta["buckets"], strict=True)
            ]
    TaskRollup.objects.bulk_create(added, batch_size=500)
    TaskRollup.objects.bulk_update(
        changed, ["count", "observed", "seconds", "buckets"], batch_size=500
    )


def _fold_events(events: list[dict]) -> tuple[int, ...]:
    _add(_observations(events))
    return ()  # an event is final once written


EVENTS = Ledger(
    watermark=1,
    model=TaskEvent,
    fields=("id", "record_id", "kind", "at", "data"),
    add=_fold_events,
)


def _padded(buckets: list[int]) -> list[int]:
    return list(buckets) + [0] * (len(BOUNDS) + 1 - len(buckets))


def _existing(sums: dict[tuple, dict]) -> dict[tuple, TaskRollup]:
    """The rollup rows the keys already have, by key: one query per span (a
    superset, by slot starts and names, narrowed here)."""
    found = {}
    for span in SPANS:
        keys = [key for key in sums if key[0] == span]
        if not keys:
            continue
        starts = {key[1] for key in keys}
        names = {key[2] for key in keys}
        for chunk in _chunks(sorted(starts), 500):
            rows = TaskRollup.objects.filter(span=span, start__in=chunk, name__in=names)
            for row in rows:
                key = (row.span, row.start, row.name, row.queue, row.outcome)
                if key in sums:
                    found[key] = row
    return found


def prune(now: datetime | None = None) -> int:
    """Delete minute rows past CLAW_ROLLUP_MINUTES_DAYS and hour rows past
    CLAW_ROLLUP_HOURS_DAYS; the all-time rows stay."""
    now = now or timezone.now()
    deleted = 0
    for span, days in (
        (MINUTE, settings.CLAW_ROLLUP_MINUTES_DAYS),
        (HOUR, settings.CLAW_ROLLUP_HOURS_DAYS),
    ):
        deleted += TaskRollup.objects.filter(
            span=span, start__lt=now - timedelta(days=days)
        ).delete()[0]
    return deleted


# --- reading ---------------------------------------------------------------


def rows(span: int, start: datetime | None = None, **filters) -> list[TaskRollup]:
    queryset = TaskRollup.objects.filter(span=span, **filters)
    if start is not None:
        queryset = queryset.filter(start__gte=slot(start, span))
    return list(queryset)


def quantile(q: float, buckets: list[int]) -> float | None:
    """The q-quantile of a histogram, interpolated inside its slot as Prometheus'
    histogram_quantile does; None for an empty one. A quantile in the +Inf slot
    is reported as the last finite bound."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i == len(BOUNDS):
                return float(BOUNDS[-1])
            low = BOUNDS[i - 1] if i else 0.0
            return low + (BOUNDS[i] - low) * (rank - seen) / n
        seen += n
    return float(BOUNDS[-1])


def merged(buckets_list) -> list[int]:
    total = empty_buckets()
    for buckets in buckets_list:
        for i, n in enumerate(_padded(buckets)):
            total[i] += n
    return total
