"""The conversations domain's metrics on /metrics (tasks_app.metrics):
tokens used and reply times per model, read from the assistant messages, which
are the usage ledger (model, tokens, latency of every reply)."""

from __future__ import annotations

from django.db.models import Count, Q, Sum
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from claw.models import Message
from tasks_app import rollups
from tasks_app.metrics import bounds_and_counts


class LlmCollector:
    def collect(self):
        replies = Message.objects.filter(role=Message.Role.ASSISTANT).exclude(model="")
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
        # One GROUP BY model: the token sums and, per histogram bound, how many
        # replies took at most that long (latency is stored in milliseconds).
        bounds = {
            f"le_{i}": Count("id", filter=Q(latency_ms__lte=bound * 1000))
            for i, bound in enumerate(rollups.BOUNDS)
        }
        rows = (
            replies.values("model")
            .annotate(
                prompt=Sum("prompt_tokens"),
                completion=Sum("completion_tokens"),
                timed=Count("latency_ms"),
                total_ms=Sum("latency_ms"),
                **bounds,
            )
            .order_by("model")
        )
        for row in rows:
            tokens.add_metric([row["model"], "prompt"], row["prompt"] or 0)
            tokens.add_metric([row["model"], "completion"], row["completion"] or 0)
            if not row["timed"]:
                continue
            cumulative = [row[f"le_{i}"] for i in range(len(rollups.BOUNDS))]
            per_slot = [
                b - a for a, b in zip([0, *cumulative[:-1]], cumulative, strict=True)
            ]
            per_slot.append(row["timed"] - (cumulative[-1] if cumulative else 0))
            seconds.add_metric(
                [row["model"]],
                bounds_and_counts(per_slot),
                (row["total_ms"] or 0) / 1000,
            )
        yield tokens
        yield seconds
