from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from tasks_app import services

TASK = "knowledge.update_knowledge_base"
MODES = ("incremental", "full", "rebuild")


class Command(BaseCommand):
    help = (
        "Queue a re-index of a knowledge base: incremental (changed documents), full "
        "(every document) or rebuild (drop vectors, then everything)."
    )

    def add_arguments(self, parser):
        parser.add_argument("kb", type=int, help="Knowledge base id")
        parser.add_argument("--mode", choices=MODES, default="incremental")
        parser.add_argument(
            "--dry-run", action="store_true", help="Validate, queue nothing."
        )

    def handle(self, *args, kb, mode="incremental", dry_run=False, **options):
        try:
            from knowledge.models import KnowledgeBase
        except ImportError:
            KnowledgeBase = None
        if (
            KnowledgeBase is not None
            and not KnowledgeBase.objects.filter(pk=kb).exists()
        ):
            raise CommandError(f"kb: no knowledge base with id {kb}")
        if dry_run:
            self.stdout.write(f"Would queue {TASK}({kb}, {mode!r}).")
            return
        try:
            record = services.submit(TASK, args=[kb, mode])
        except services.UnknownTask as exc:
            raise CommandError(f"{exc}: is the knowledge app installed?") from exc
        self.stdout.write(
            f"Queued {TASK} for knowledge base {kb} ({mode}) as task #{record.pk}."
        )
