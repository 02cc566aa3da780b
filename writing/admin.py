"""Writing jobs in the admin: outline, document, sections and their tasks, cancel."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from tasks_app.admin_widgets import TaskRecordInline, state_badge
from writing import jobs
from writing.models import WritingJob, WritingSection

# Job states and section statuses drawn with the badge of the matching task state.
BADGES = {
    "pending": "PENDING",
    "running": "STARTED",
    "writing": "STARTED",
    "succeeded": "SUCCESS",
    "done": "SUCCESS",
    "failed": "FAILURE",
    "cancelled": "REVOKED",
}


def document_link(document_id: int, label: str) -> str:
    url = reverse("admin:knowledge_document_change", args=[document_id])
    return format_html('<a href="{}">{}</a>', url, label)


def passages_html(passages: list[dict]) -> str:
    if not passages:
        return "–"
    return format_html_join(
        "",
        "<div>{} (chunk {}): {}</div>",
        (
            (
                document_link(p["document_id"], p["document_title"]),
                p["chunk_id"],
                p["text"][:200],
            )
            for p in passages
        ),
    )


def live_block(key: str, content) -> str:
    """A block the job's page refreshes in place (tasks_app's live script swaps
    every data-claw-swap element with the same one of a fresh copy of the page);
    on the list the block is inert."""
    return format_html('<div data-claw-swap="{}">{}</div>', key, content)


class JobTaskInline(TaskRecordInline):
    """The job's task and the chord's section tasks, each linking to its timeline."""

    verbose_name_plural = "Tasks (the job's, then one per section)"
    ordering = ("id",)


@admin.register(WritingJob)
class WritingJobAdmin(admin.ModelAdmin):
    list_display = (
        "job_id",
        "kind",
        "state_",
        "progress_",
        "owner",
        "title",
        "created_at",
        "finished_at",
    )
    list_filter = ("kind", "state", "created_at")
    search_fields = ("=job_id", "title", "owner__username")
    list_select_related = ("owner",)
    date_hierarchy = "created_at"
    readonly_fields = [
        *(f.name for f in WritingJob._meta.fields if f.name != "id"),
        "knowledge_bases",
        "context_documents",
        "state_",
        "progress_",
        "outline_",
        "document_",
        "references_",
        "sections_",
    ]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "job_id",
                    "kind",
                    "state_",
                    "owner",
                    "progress_",
                    "error",
                    "task",
                    "created_at",
                    "started_at",
                    "finished_at",
                )
            },
        ),
        (
            "Request",
            {
                "fields": (
                    "task_prompt",
                    "knowledge_bases",
                    "context_documents",
                    "outline_job",
                    "target_knowledge_base",
                    "allow_missing_sections",
                )
            },
        ),
        ("Outline", {"fields": ("outline_",)}),
        ("Sections", {"fields": ("sections_",)}),
        (
            "Document",
            {
                "fields": (
                    "title",
                    "document_",
                    "references_",
                    "missing_sections",
                    "result_document",
                )
            },
        ),
    )
    inlines = (JobTaskInline,)
    actions = ("cancel_selected", "retry_selected")

    def has_add_permission(self, request) -> bool:
        return False  # jobs come from the API (writing.jobs)

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # written by writing.jobs only; the detail page is a view

    def delete_model(self, request, obj: WritingJob) -> None:
        jobs.delete_job(obj)

    def delete_queryset(self, request, queryset) -> None:
        for job in queryset:
            jobs.delete_job(job)

    @admin.display(description="State", ordering="state")
    def state_(self, job: WritingJob) -> str:
        return live_block(
            f"state-{job.pk}", state_badge(BADGES[job.state], job.get_state_display())
        )

    @admin.display(description="Progress")
    def progress_(self, job: WritingJob) -> str:
        unit = "sections" if job.kind == WritingJob.Kind.DOCUMENT else "steps"
        return live_block(
            f"progress-{job.pk}", f"{job.progress_done} of {job.progress_total} {unit}"
        )

    @admin.display(description="Outline")
    def outline_(self, job: WritingJob) -> str:
        if not job.outline:
            return "–"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td><strong>{}</strong></td><td>{}</td><td>{}</td></tr>",
            (
                (
                    position,
                    section["heading"],
                    format_html_join(
                        "", "<div>{}</div>", ((p,) for p in section["key_points"])
                    ),
                    passages_html(section["passages"]),
                )
                for position, section in enumerate(job.outline["sections"], 1)
            ),
        )
        return format_html(
            '<div class="claw-outline"><h3>{}</h3><table><tr><th>#</th>'
            "<th>heading</th><th>key points</th><th>supporting passages</th></tr>"
            "{}</table></div>",
            job.outline["title"],
            rows,
        )

    @admin.display(description="Sections")
    def sections_(self, job: WritingJob) -> str:
        records = jobs.section_records(job)
        rows = [
            format_html(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                section.position + 1,
                section.heading,
                state_badge(BADGES[section.status], section.get_status_display()),
                section.error[:300],
                self._record_link(records.get(section.position)),
            )
            for section in job.sections.order_by("position")
        ]
        if not rows:
            return live_block(f"sections-{job.pk}", "–")
        return live_block(
            f"sections-{job.pk}",
            format_html(
                '<table class="claw-sections"><tr><th>#</th><th>heading</th>'
                "<th>status</th><th>error</th><th>task</th></tr>{}</table>",
                format_html_join("", "{}", ((row,) for row in rows)),
            ),
        )

    @staticmethod
    def _record_link(record) -> str:
        if record is None:
            return "–"
        url = reverse("admin:tasks_app_taskrecord_change", args=[record.pk])
        return format_html('<a href="{}">#{} ({})</a>', url, record.pk, record.state)

    @admin.display(description="Document")
    def document_(self, job: WritingJob) -> str:
        if not job.content:
            return "–"
        return format_html(
            '<pre class="claw-document" style="white-space:pre-wrap">{}</pre>',
            job.content,
        )

    @admin.display(description="References")
    def references_(self, job: WritingJob) -> str:
        if not job.references:
            return "–"
        rows = format_html_join(
            "",
            "<tr><td>[{}]</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    r["n"],
                    document_link(r["document_id"], r["document_title"]),
                    r["chunk_id"] if r["chunk_id"] is not None else "(gone)",
                    r["text"][:200],
                )
                for r in job.references
            ),
        )
        return format_html(
            '<table class="claw-references"><tr><th>n</th><th>document</th>'
            "<th>chunk</th><th>text</th></tr>{}</table>",
            rows,
        )

    @admin.action(description="Cancel selected jobs (and every task working on them)")
    def cancel_selected(self, request, queryset) -> None:
        cancelled, skipped = 0, {}
        for job in queryset:
            try:
                jobs.cancel_job(job)
                cancelled += 1
            except jobs.JobFinished:
                skipped[job.state] = skipped.get(job.state, 0) + 1
        reasons = ", ".join(f"{n} {state}" for state, n in sorted(skipped.items()))
        self.message_user(
            request,
            f"Cancelled {cancelled} job(s); skipped {sum(skipped.values())}"
            + (f" already finished ({reasons})." if skipped else "."),
            messages.SUCCESS if cancelled else messages.WARNING,
        )

    @admin.action(description="Retry selected failed jobs (from where they failed)")
    def retry_selected(self, request, queryset) -> None:
        retried, refused = 0, {}
        for job in queryset.select_related("task"):
            try:
                jobs.retry_job(job)
                retried += 1
            except jobs.NotRetryable as exc:
                refused[str(exc)] = refused.get(str(exc), 0) + 1
        self.message_user(
            request,
            f"Retried {retried} job(s); skipped {sum(refused.values())}.",
            messages.SUCCESS if retried else messages.WARNING,
        )
        for reason, n in list(refused.items())[:5]:
            self.message_user(request, f"Skipped {n}: {reason}", messages.WARNING)


@admin.register(WritingSection)
class WritingSectionAdmin(admin.ModelAdmin):
    list_display = ("job", "position", "heading", "status", "finished_at")
    list_filter = ("status",)
    search_fields = ("=job__job_id", "heading")
    list_select_related = ("job",)
    readonly_fields = [f.name for f in WritingSection._meta.fields] + ["passages_"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Supporting passages")
    def passages_(self, section: WritingSection) -> str:
        return passages_html(section.passages)
