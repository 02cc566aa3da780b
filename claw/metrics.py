"""The conversations domain's metrics on /metrics (tasks_app.metrics): tokens
used and reply times per model.

The assistant messages are the usage ledger (model, tokens, latency of every
reply), but a scrape must not add up millions of them: fold_replies, run by
tasks_app's rollup fold (registered in claw.apps as a rollup ledger with its own
watermark), adds each finished reply once to LlmRollup, and the collector reads
those few rows. A reply is inserted pending and finished later, so the fold
keeps the ids of the replies still pending or generating and reads them again
until they end; a done reply never changes again (begin_reply and finish_reply
skip it), so it is counted once, in the transaction that moves the watermark.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from claw.models import LlmRollup, Message
from tasks_app import rollups
from tasks_app.metrics import bounds_and_counts

# The RollupWatermark row of the messages' fold (1 is TaskEvent's).
WATERMARK = 2


def fold_replies(rows: list[dict]) -> Iterable[int]:
    """Add the finished replies among `rows` to LlmRollup; return the ids of the
    replies not finished yet."""
    still_open, sums = [], {}
    for row in rows:
        if row["role"] != Message.Role.ASSISTANT:
            continue
        if row["status"] in Message.ACTIVE_STATUSES:
            still_open.append(row["id"])
            continue
        if not row["model"]:
            continue  # failed before a model answered: no usage
        delta = sums.setdefault(row["model"], _empty(row["model"]))
        delta.prompt_tokens += row["prompt_tokens"]
        delta.completion_tokens += row["completion_tokens"]
        if row["latency_ms"] is not None:
            delta.timed += 1
            delta.latency_ms += row["latency_ms"]
            delta.buckets[rollups.bucket_index(row["latency_ms"] / 1000)] += 1
    if sums:
        _add(sums)
    return still_open


def _empty(model: str) -> LlmRollup:
    return LlmRollup(model=model, buckets=rollups.empty_buckets())


def _add(sums: dict[str, LlmRollup]) -> None:
    """Read, add, write: the watermark's lock makes the fold the only writer."""
    existing = {row.model: row for row in LlmRollup.objects.filter(model__in=sums)}
    added = []
    for model, delta in sums.items():
        row = existing.get(model)
        if row is None:
            added.append(delta)
            continue
        row.prompt_tokens += delta.prompt_tokens
        row.completion_tokens += delta.completion_tokens
        row.timed += delta.timed
        row.latency_ms += delta.latency_ms
        row.buckets = rollups.merged([row.buckets, delta.buckets])
    LlmRollup.objects.bulk_create(added)
    fields = ["prompt_tokens", "completion_tokens", "timed", "latency_ms", "buckets"]
    if existing:
        LlmRollup.objects.bulk_update(list(existing.values()), fields)


FIELDS = (
    "id", "role", "status", "model", "prompt_tokens", "completion_tokens",
    "latency_ms",
)  # fmt: skip
LEDGER = rollups.Ledger(
    watermark=WATERMARK, model=Message, fields=FIELDS, add=fold_replies
)


class LlmCollector:
    def collect(self):
        tokens = CounterMetricFamily(
            "claw_llm_tokens",
            "Tokens of the AI replies, by model and kind (prompt or completion).",
            labels=["model", "kind"],
        )
        seconds = HistogramMetricFamily(
            "claw_llm_reply_seconds",
            "Time from the start of a reply's generation to its end.",
            labels=["model"],
        )
        for row in LlmRollup.objects.order_by("model"):
            tokens.add_metric([row.model, "prompt"], row.prompt_tokens)
            tokens.add_metric([row.model, "completion"], row.completion_tokens)
            if not row.timed:
                continue
            seconds.add_metric(
                [row.model], bounds_and_counts(row.buckets), row.latency_ms / 1000
            )
        yield tokens
        yield seconds
