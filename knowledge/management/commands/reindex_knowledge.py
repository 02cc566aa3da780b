from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from knowledge import services
from knowledge.models import KnowledgeBase
from tasks_app.services import UnknownTask


class Command(BaseCommand):
    help = (
        "Queue a re-index of a knowledge base: incremental (changed documents), full "
        "(every document) or rebuild (drop vectors, then everything)."
    )

    def add_arguments(self, parser):
        parser.add_argument("kb", type=int, help="Knowledge base id")
        parser.add_argument(
            "--mode", choices=services.MODES, default=services.INCREMENTAL
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Validate, queue nothing."
        )

    def handle(self, *args, kb, mode=services.INCREMENTAL, dry_run=False, **options):
        knowledge_base = KnowledgeBase.objects.filter(pk=kb).first()
        if knowledge_base is None:
            raise CommandError(f"kb: no knowledge base with id {kb}")
        if dry_run:
            self.stdout.write(f"Would queue {services.UPDATE}({kb}, {mode!r}).")
            return
        try:
            # through knowledge's services: the record targets the knowledge base,
            # so its admin page lists the task
            record = services.submit_update(knowledge_base, mode)
        except UnknownTask as exc:
            raise CommandError(f"{exc}: is the knowledge app installed?") from exc
        self.stdout.write(
            f"Queued {services.UPDATE} for knowledge base {kb} ({mode}) as task "
            f"#{record.pk}."
        )
