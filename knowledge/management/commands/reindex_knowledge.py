from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from knowledge import embeddings, services, vectorizing
from knowledge.models import KnowledgeBase
from tasks_app import services as ledger

SHOWN = 50  # documents a dry run lists by name; the rest are counted


class Command(BaseCommand):
    help = (
        "Queue a re-index of a knowledge base: incremental (changed documents), full "
        "(every document) or rebuild (drop vectors, then everything). --provider "
        "moves it to another embedding provider first (always a rebuild)."
    )

    def add_arguments(self, parser):
        parser.add_argument("kb", type=int, help="Knowledge base id")
        parser.add_argument("--mode", choices=services.MODES, default="incremental")
        parser.add_argument(
            "--provider",
            choices=list(embeddings.PROVIDERS),
            help="Switch to this embedding provider (its default model) and rebuild.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List the documents it would vectorize; queue nothing.",
        )

    def handle(
        self, *args, kb, mode="incremental", provider=None, dry_run=False, **options
    ):
        knowledge_base = KnowledgeBase.objects.filter(pk=kb).first()
        if knowledge_base is None:
            raise CommandError(f"kb: no knowledge base with id {kb}")
        if provider is not None:
            if mode not in (services.INCREMENTAL, services.REBUILD):
                raise CommandError("--provider always rebuilds; drop --mode")
            mode = services.REBUILD
        if dry_run:
            if provider is not None:
                self.stdout.write(
                    f"Would switch knowledge base {kb} from "
                    f"{knowledge_base.embedding_provider} to {provider}."
                )
            self._list(knowledge_base, mode)
            return
        try:
            if provider is not None:
                record = services.change_provider(knowledge_base, provider)
                self.stdout.write(
                    f"Knowledge base {kb} now uses {provider} "
                    f"({knowledge_base.embedding_model}, "
                    f"{knowledge_base.embedding_dimension} dimensions, "
                    f"hybrid {'on' if knowledge_base.hybrid else 'off'})."
                )
            else:
                record = services.submit_update(knowledge_base, mode)
        except services.InvalidInput as exc:
            raise CommandError(str(exc)) from None
        except ledger.UnknownTask as exc:
            raise CommandError(
                f"{exc}: is the knowledge worker code installed?"
            ) from exc
        self.stdout.write(
            f"Queued {services.UPDATE} for knowledge base {kb} ({mode}) as task "
            f"#{record.pk}."
        )

    def _list(self, knowledge_base: KnowledgeBase, mode: str) -> None:
        documents = vectorizing.update_candidates(knowledge_base.pk, mode)
        total = documents.count()
        drop = " after deleting every vector" if mode == services.REBUILD else ""
        self.stdout.write(
            f"Would queue {services.UPDATE}({knowledge_base.pk}, {mode!r}) for "
            f"'{knowledge_base.name}': {total} document(s) to vectorize{drop}."
        )
        for document in documents[:SHOWN]:
            changed = (
                ", changed since vectorized"
                if document.vectorized_hash
                and document.vectorized_hash != document.content_hash
                else ""
            )
            self.stdout.write(
                f"  #{document.pk} {document.title!r} ({document.status}{changed})"
            )
        if total > SHOWN:
            self.stdout.write(f"  ... and {total - SHOWN} more")
